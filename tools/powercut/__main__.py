"""``PYTHONPATH=.:tools python -m powercut --cuts 200 [--seed 0] [--workdir DIR] [--json]``: see harness.py.

Needs ``/dev/fuse``, ``fusermount3`` (Debian: ``fuse3``) and mfusepy (``pip install -e '.[powercut]'``); run as a
user allowed to mount FUSE filesystems. Exit status 1 if any invariant was ever violated.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from powercut.harness import power_cuts


def main() -> int:
    parser = argparse.ArgumentParser(description="Cut the power under a watching edgeft learner, check after each cut.")
    parser.add_argument("--cuts", type=int, default=200, help="power cuts to survive (default 200)")
    parser.add_argument("--export-cuts", type=int, default=20, help="cuts inside export and export-inference, each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the image, outbox and event log here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        report = power_cuts(args.cuts, args.seed, workdir, export_cuts=args.export_cuts)
    if args.json:
        print(json.dumps(asdict(report)))
    else:
        by = ", ".join(f"{k} {v}" for k, v in sorted(report.by.items()))
        print(
            f"{report.cuts} power cuts ({by}); {report.files_fed} files and {report.corpus_fed} bad-corpus entries fed, "
            f"{report.versions} versions, {report.samples_learned} of {report.samples_fed} samples learned; "
            f"dropped by the cuts: {report.lost}; head vs a run without cuts: "
            f"max |diff| {report.head_max_diff}; {report.export_cuts} cuts each inside export and export-inference; "
            f"{report.seconds} s: {len(report.violations)} invariant violations"
        )
        for problem in report.violations:
            print(f"  {problem}")
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
