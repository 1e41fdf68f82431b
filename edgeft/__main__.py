"""``python -m edgeft``: the same as the ``edgeft`` console script."""

import sys

from edgeft.cli import run

sys.exit(run())
