"""``edgeft report``: a state directory's learning curve, versions and promotions, per-class accuracy and confusion
matrix, as a self-contained HTML page or one PNG figure. Drawing needs the optional extra ``edgeft[report]``.

    collect.py   read the state (metrics log, current version, its holdout; --eval data through an Adapter)
    data.py      the Report and its computations, from plain rows and arrays
    figure.py    the four-panel figure (matplotlib, imported lazily)
    page.py      the HTML page: summary, embedded figure, tables
"""

from __future__ import annotations

from pathlib import Path

from edgeft.bundle import Bundle
from edgeft.common.atomic import SHARED_FILE_MODE, write_bytes_atomic
from edgeft.errors import EdgeftError
from edgeft.report.collect import collect
from edgeft.report.data import Report
from edgeft.report.figure import render_png, require_matplotlib
from edgeft.report.page import render_html

FORMATS = (".html", ".htm", ".png")

__all__ = ["Report", "collect", "write_report"]


def write_report(
    bundle: Bundle | str | Path,
    state: str | Path,
    out: str | Path,
    eval_path: str | Path | None = None,
    *,
    ep: str = "auto",
    threads: int | None = None,
) -> Report:
    """Write the report of ``state`` to ``out`` (HTML or PNG by its suffix); return what it shows."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise EdgeftError(f"{out}: unknown report format '{out.suffix}'; name it .html or .png")
    if not out.parent.is_dir():
        raise EdgeftError(f"{out}: its folder {out.parent} does not exist")
    require_matplotlib()
    report = collect(bundle, state, eval_path, ep=ep, threads=threads)
    png = render_png(report)
    data = png if out.suffix.lower() == ".png" else render_html(report, png).encode("utf-8")
    write_bytes_atomic(out, data, mode=SHARED_FILE_MODE)
    return report
