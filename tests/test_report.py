"""``edgeft report``: the data it collects from a real state, the HTML page, the PNG figure, the command line."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, SUBPROCESS_TIMEOUT, copy_tree, make_dataset, one_error_line, run_cli
from PIL import Image

from edgeft.bundle import Bundle
from edgeft.errors import EdgeftError
from edgeft.report import collect, write_report
from edgeft.report.data import Evaluation, Report, arrivals, confusion_matrix
from edgeft.report.figure import DPI, REFUSED, SIZE_INCHES
from edgeft.runtime import replay_store
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.features import FeatureExtractor
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.replay import ReplayBuffer
from edgeft.runtime.store import StateStore

FIGURE_SIZE = (int(SIZE_INCHES[0] * DPI), int(SIZE_INCHES[1] * DPI))


@pytest.fixture(scope="module")
def learned_state(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state of four arrivals: two good ones, a refused flood of wrong labels, and a good one after it."""
    state = tmp_path_factory.mktemp("report") / "state"
    x, y = make_dataset(240, seed=11)
    flood_x, flood_y = make_dataset(400, seed=12)
    with Adapter(bundle_dir, state, policy=GuardPolicy(holdout_fraction=0.25)) as adapter:
        adapter.learn(x[:120], y[:120], origin="first.npz")
        adapter.learn(x[120:], y[120:], origin="second.npz")
        flood = adapter.learn(flood_x, (flood_y + 1) % 3, origin="flood.npz")
        assert not flood.promoted  # the report must show a refusal
        adapter.learn(*make_dataset(60, seed=13), origin="third.npz")
    return state


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    x, y = make_dataset(90, seed=2)
    path = tmp_path_factory.mktemp("eval") / "eval.npz"
    np.savez(path, x=x, y=np.array(CLASSES)[y])
    return path


@pytest.fixture(scope="module")
def report(bundle_dir: Path, learned_state: Path) -> Report:
    return collect(bundle_dir, learned_state, ep="cpu")


def _holdout(bundle_dir: Path, state: Path) -> ReplayBuffer:
    """Version 4's holdout reservoir, read from its segments without the lock (as the report reads it)."""
    store = StateStore(state, Bundle.load(bundle_dir).fingerprint)
    head = Bundle.load(bundle_dir).manifest.head
    holdout = ReplayBuffer(head.feature_dim, head.num_outputs, 10**6)
    replay_store.load(store, store.load(4), {"holdout": holdout})
    return holdout


def test_arrivals_keep_one_row_per_version_in_order_and_name_each_verdict() -> None:
    rows = [
        {"version": 2, "samples": 10, "promoted": False, "guard": {"current_accuracy": 0.9, "candidate_accuracy": 0.4}},
        {"version": 1, "samples": 20, "promoted": True, "prequential": {"accuracy": None}, "new_classes": ["a"]},
        {"version": 3, "samples": 0, "promoted": True, "adopted": True, "guard": {"candidate_accuracy": 0.95}},
        {"version": 2, "samples": 10, "promoted": False, "guard": {"current_accuracy": 0.8, "candidate_accuracy": 0.3}},
        {"time": "a torn line without a version"},
    ]
    found = arrivals(rows)
    assert [a.version for a in found] == [1, 2, 3]
    assert [a.verdict for a in found] == ["promoted", "refused", "adopted"]
    assert found[1].holdout_accuracy == 0.8  # refused: the head that stayed current
    assert found[2].holdout_accuracy == 0.95  # promoted: the candidate that became current
    assert found[0].holdout_accuracy is None and found[0].prequential_accuracy is None
    assert found[0].new_classes == ["a"] and found[0].head_version == 1


def test_confusion_matrix_per_class_accuracy_and_most_confused_class() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 0, 0])
    matrix = confusion_matrix(labels, predicted, 4)
    np.testing.assert_array_equal(matrix, [[2, 1, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    evaluation = Evaluation("test", ["a", "b", "c", "d"], matrix)
    assert evaluation.samples == 6 and evaluation.accuracy == pytest.approx(3 / 6)
    assert evaluation.per_class == [pytest.approx(2 / 3), 0.5, 0.0, None]
    assert evaluation.support == [3, 2, 1, 0]
    assert evaluation.most_confused(0) == ("b", 1) and evaluation.most_confused(2) == ("a", 1)
    assert evaluation.most_confused(3) is None


def test_collect_reads_every_arrival_and_marks_the_refusal(report: Report) -> None:
    assert report.version == 4 and report.head_version == 4 and report.classes == list(CLASSES)
    assert [a.version for a in report.arrivals] == [1, 2, 3, 4]
    assert [a.verdict for a in report.arrivals] == ["promoted", "promoted", "refused", "promoted"]
    assert [a.origin for a in report.arrivals] == ["first.npz", "second.npz", "flood.npz", "third.npz"]
    (flood,) = report.refused
    assert flood.version == 3 and flood.head_version == 2 and "would fall" in flood.reason
    assert flood.candidate_accuracy < flood.current_accuracy == flood.holdout_accuracy
    assert [a.samples for a in report.arrivals] == [120, 120, 400, 60]
    assert all(a.trained + a.held_out == a.samples for a in report.arrivals)


def test_holdout_evaluation_is_the_current_head_on_the_holdout_reservoir(
    report: Report, bundle_dir: Path, learned_state: Path
) -> None:
    holdout = _holdout(bundle_dir, learned_state)
    labels = holdout.labels
    evaluation = report.evaluation
    assert evaluation is not None and "holdout reservoir of version 4" in evaluation.source
    assert evaluation.samples == len(labels) > 20
    assert evaluation.support == np.bincount(labels, minlength=3).tolist()
    predicted = Adapter(bundle_dir, learned_state, ep="cpu").predict_proba_features(holdout.features).argmax(axis=1)
    assert evaluation.accuracy == pytest.approx(float((predicted == labels).mean()))
    assert evaluation.accuracy > 0.8  # a head that learned the task, not a constant


def test_report_without_eval_data_runs_no_backbone(
    report: Report, bundle_dir: Path, learned_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_backbone(*args: object, **kwargs: object) -> None:
        raise AssertionError("the report opened a backbone session")

    monkeypatch.setattr(FeatureExtractor, "__init__", no_backbone)
    found = collect(bundle_dir, learned_state, ep="cpu")
    assert found.evaluation is not None and report.evaluation is not None
    assert found.evaluation.matrix.tolist() == report.evaluation.matrix.tolist()
    assert (found.arrivals, found.classes, found.head_version) == (report.arrivals, report.classes, report.head_version)


def test_eval_file_evaluation_matches_adapter_evaluate(bundle_dir: Path, learned_state: Path, eval_file: Path) -> None:
    found = collect(bundle_dir, learned_state, eval_file, ep="cpu")
    assert found.evaluation is not None and found.evaluation.samples == 90
    with np.load(eval_file, allow_pickle=False) as data:
        x, y = data["x"], data["y"]
    expected = Adapter(bundle_dir, learned_state, ep="cpu").evaluate(x, y)
    assert found.evaluation.accuracy == pytest.approx(expected)
    assert found.evaluation.support == [int((y == name).sum()) for name in CLASSES]


def test_versions_missing_from_the_metrics_log_are_read_from_the_state(
    bundle_dir: Path, learned_state: Path, tmp_path: Path
) -> None:
    state = copy_tree(learned_state, tmp_path / "state")
    lines = (state / "metrics.jsonl").read_text().splitlines(keepends=True)
    (state / "metrics.jsonl").write_text("".join(lines[:2]))  # a crash lost the last two lines
    found = collect(bundle_dir, state, ep="cpu")
    assert [a.verdict for a in found.arrivals] == ["promoted", "promoted", "refused", "promoted"]


def test_a_state_without_versions_is_a_clear_error(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match="has no versions yet; learn from data with edgeft adapt first"):
        collect(bundle_dir, tmp_path / "empty", ep="cpu")
    assert not (tmp_path / "empty").exists()  # reading only


class _Page(HTMLParser):
    """Tables (by id: rows of cell texts, header first) and image sources of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(str(attributes.get("id")), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(str(attributes["src"]))

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def html_page(bundle_dir: Path, learned_state: Path, tmp_path_factory: pytest.TempPathFactory) -> _Page:
    out = tmp_path_factory.mktemp("html") / "report.html"
    write_report(bundle_dir, learned_state, out, ep="cpu")
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    page.close()
    return page


@pytest.fixture(scope="module")
def png_image(bundle_dir: Path, learned_state: Path, tmp_path_factory: pytest.TempPathFactory) -> Image.Image:
    out = tmp_path_factory.mktemp("png") / "report.png"
    write_report(bundle_dir, learned_state, out, ep="cpu")
    with Image.open(out) as image:
        assert image.format == "PNG"
        return image.convert("RGB")


@pytest.mark.slow
def test_html_has_the_versions_table_with_the_refusal(html_page: _Page) -> None:
    header, *rows = html_page.tables["versions"]
    assert header[0] == "Version" and "Verdict" in header
    verdict = header.index("Verdict")
    assert [row[0] for row in rows] == ["1", "2", "3", "4"]
    assert [row[verdict] for row in rows] == ["promoted", "promoted", "refused", "promoted"]
    assert "would fall" in rows[2][header.index("Guard")]
    assert rows[2][header.index("Input")] == "flood.npz"


def test_html_per_class_and_confusion_tables_count_the_holdout(
    html_page: _Page, bundle_dir: Path, learned_state: Path
) -> None:
    holdout = _holdout(bundle_dir, learned_state)
    labels = holdout.labels
    header, *rows = html_page.tables["per-class"]
    assert header[:4] == ["Class", "Samples", "Correct", "Accuracy"]
    assert [row[0] for row in rows] == list(CLASSES)
    assert [int(row[1]) for row in rows] == np.bincount(labels, minlength=3).tolist()
    for _name, samples, correct, accuracy, *_ in rows:
        assert float(accuracy) == pytest.approx(int(correct) / int(samples), abs=5e-4)
    header, *rows = html_page.tables["confusion"]
    assert header[1:] == list(CLASSES) and [row[0] for row in rows] == list(CLASSES)
    matrix = np.array([[int(v) for v in row[1:]] for row in rows])
    assert matrix.sum() == len(labels)
    assert matrix.sum(axis=1).tolist() == np.bincount(labels, minlength=3).tolist()


def test_html_embeds_the_figure_as_a_decodable_png(html_page: _Page) -> None:
    (source,) = html_page.images
    prefix = "data:image/png;base64,"
    assert source.startswith(prefix)
    data = base64.b64decode(source[len(prefix) :], validate=True)
    assert len(data) > 20_000  # four panels of lines, bars and text, not an empty canvas
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == FIGURE_SIZE


@pytest.mark.slow
def test_png_is_a_full_figure_not_a_blank_canvas(png_image: Image.Image) -> None:
    assert png_image.size == FIGURE_SIZE
    pixels = np.asarray(png_image, dtype=np.float64)
    assert pixels.std() > 30
    assert (pixels.min(axis=2) < 200).mean() > 0.05  # a good share of the canvas is drawn on


def _red_pixels(pixels: np.ndarray) -> int:
    red = np.array([int(REFUSED[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - red).sum(axis=2) < 40).sum())


@pytest.mark.slow
def test_png_marks_the_refused_update_on_the_learning_curve(
    png_image: Image.Image, bundle_dir: Path, tmp_path: Path
) -> None:
    width, height = FIGURE_SIZE
    curve = (slice(0, height // 2), slice(0, width // 2))  # the learning curve's panel, top left
    assert _red_pixels(np.asarray(png_image)[curve]) > 30
    clean = tmp_path / "state"
    with Adapter(bundle_dir, clean, policy=GuardPolicy(holdout_fraction=0.25)) as adapter:
        adapter.learn(*make_dataset(120, seed=11))
    write_report(bundle_dir, clean, tmp_path / "clean.png", ep="cpu")
    with Image.open(tmp_path / "clean.png") as image:
        assert _red_pixels(np.asarray(image.convert("RGB"))[curve]) == 0


def test_unknown_report_format_is_refused(bundle_dir: Path, learned_state: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeftError, match=r"unknown report format '\.pdf'; name it \.html or \.png"):
        write_report(bundle_dir, learned_state, tmp_path / "report.pdf")
    assert not (tmp_path / "report.pdf").exists()


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_cli_writes_a_report_with_eval_data(
    bundle_dir: Path, learned_state: Path, eval_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    before = _snapshot(learned_state)
    result = run_cli("report", bundle_dir, "--state", learned_state, "-o", out, "--eval", eval_file, "--ep", "cpu")
    assert result.returncode == 0, result.stderr
    assert _snapshot(learned_state) == before  # the report only reads the state
    assert "4 arrivals (1 refused), version 4" in result.stdout and "eval data" in result.stdout
    assert out.stat().st_mode & 0o777 == 0o644  # a report is for sharing
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    assert sum(int(row[1]) for row in page.tables["per-class"][1:]) == 90
    # the accuracy matrix over tasks, as edgeft eval --tasks computes it
    evaluated = run_cli("eval", bundle_dir, "--state", learned_state, "--data", eval_file, "--tasks", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    matrix = json.loads(evaluated.stdout)["task_matrix"]["matrix"]
    shown = [[None if cell == "–" else float(cell) for cell in row[1:]] for row in page.tables["accuracy-matrix"][1:]]
    assert shown == [[None if v is None else round(v, 3) for v in row] for row in matrix] and matrix


@pytest.mark.slow
def test_cli_without_versions_fails_in_one_line(bundle_dir: Path, tmp_path: Path) -> None:
    result = run_cli("report", bundle_dir, "--state", tmp_path / "state", "-o", tmp_path / "r.png")
    assert result.returncode == 1
    assert "has no versions yet" in one_error_line(result.stderr)
    assert not (tmp_path / "r.png").exists()


MATPLOTLIB_BLOCKED = """
import sys
sys.modules["matplotlib"] = None  # any import of matplotlib now raises ImportError
from edgeft.cli import run
sys.argv = ["edgeft", *sys.argv[1:]]
run()
"""


@pytest.mark.slow
def test_cli_without_matplotlib_says_how_to_install_it(bundle_dir: Path, learned_state: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MATPLOTLIB_BLOCKED,
            "report",
            str(bundle_dir),
            "--state",
            str(learned_state),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert result.returncode == 1
    assert "pip install 'edgeft[report]'" in one_error_line(result.stderr)
    assert not out.exists()
