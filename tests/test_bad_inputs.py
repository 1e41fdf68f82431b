"""The bad-input corpus: every kind of broken, hostile or unusable inbox entry, one case each.

Each case drops one bad entry into an inbox (before a good file) and runs the watch loop: the bad entry must be
quarantined with a one-line reason naming it, the good file learned, and nothing of the bad one journaled.
Labels beyond the head's capacity are not bad: those samples wait in ``pending/`` and the rest is learned.
The last test feeds the whole corpus at once to a real ``edgeft adapt --watch --once`` process.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import zipfile
import zlib
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from helpers import CLASSES, CLI, SUBPROCESS_TIMEOUT, edgeft_lines, make_dataset
from PIL import Image

from edgeft.bundle import Bundle
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.guard import GuardPolicy
from edgeft.runtime.history import JOURNAL_FILE, read_lines
from edgeft.runtime.inbox import Inbox
from edgeft.runtime.watch import StopFlag, WatchSummary, watch

Builder = Callable[[Path, Path], str]  # (inbox, a folder outside it) -> the entry's name


def _npz(path: Path, n: int = 6, **arrays: object) -> Path:
    x, y = make_dataset(n, seed=len(path.name))
    with path.open("wb") as handle:
        np.savez(handle, **{"x": x, "y": np.array(CLASSES)[y], **arrays})
    return path


def _png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _image_bytes(kind: str) -> bytes:
    buffer = BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, kind)
    return buffer.getvalue()


def _photos(inbox: Path, name: str, files: dict[str, bytes | None]) -> str:
    """An image-folder entry ``name/LABEL/FILE``; None makes a named pipe."""
    for relative, data in files.items():
        path = inbox / name / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            os.mkfifo(path)
        else:
            path.write_bytes(data)
    (inbox / name / "blue").mkdir(exist_ok=True)
    (inbox / name / "blue" / "ok.png").write_bytes(_image_bytes("PNG"))
    return name


def _write(name: str, data: bytes) -> Builder:
    def build(inbox: Path, _outside: Path) -> str:
        (inbox / name).write_bytes(data)
        return name

    return build


def _arrays(name: str, n: int = 6, **arrays: object) -> Builder:
    def build(inbox: Path, _outside: Path) -> str:
        _npz(inbox / name, n, **arrays)
        return name

    return build


def _damaged_npz(name: str, damage: Callable[[bytes], bytes], compressed: bool = False) -> Builder:
    def build(inbox: Path, _outside: Path) -> str:
        x, y = make_dataset(6, seed=1)
        save = np.savez_compressed if compressed else np.savez
        with (inbox / name).open("wb") as handle:
            save(handle, x=x, y=np.array(CLASSES)[y])
        (inbox / name).write_bytes(damage((inbox / name).read_bytes()))
        return name

    return build


def _zip(name: str, members: dict[str, bytes]) -> Builder:
    def build(inbox: Path, _outside: Path) -> str:
        with zipfile.ZipFile(inbox / name, "w") as archive:
            for member, data in members.items():
                archive.writestr(member, data)
        return name

    return build


def _npy_bytes(header: dict, body: bytes) -> bytes:
    buffer = BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + body


def _flip_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 8]) + data[middle + 8 :]


def _claim_huge(data: bytes) -> bytes:
    """Patch the zip's central directory: the first member now says it unpacks to 4 GB."""
    at = data.index(b"PK\x01\x02")
    return data[: at + 24] + struct.pack("<I", 0xF0000000) + data[at + 28 :]


def _csv_rows(rows: list[str], header: str | None = None) -> bytes:
    values = ",".join(f"v{i}" for i in range(192))
    return ((header or f"{values},label") + "\n" + "".join(r + "\n" for r in rows)).encode()


ROW = ",".join(["0.5"] * 192)
# A hand-written protocol-0 pickle that would create the folder MARKER if anything ever unpickled it.
HOSTILE_PICKLE = b"cos\nmkdir\n(S'MARKER'\ntR."


def _hostile(kind: str) -> Builder:
    def build(inbox: Path, outside: Path) -> str:
        payload = HOSTILE_PICKLE.replace(b"MARKER", str(outside / "pwned").encode())
        if kind == "file":
            (inbox / "pickle.npz").write_bytes(payload)
            return "pickle.npz"
        header = {"descr": "|O", "fortran_order": False, "shape": (6,)}
        return _zip("pickle-inside.npz", {"x.npy": _npy_bytes(header, payload)})(inbox, outside)

    return build


def _symlink_entry(inbox: Path, outside: Path) -> str:
    _npz(outside / "elsewhere.npz")
    (inbox / "link.npz").symlink_to(outside / "elsewhere.npz")
    return "link.npz"


def _symlink_inside(inbox: Path, outside: Path) -> str:
    _npz(outside / "elsewhere.npz")
    (inbox / "folder").mkdir()
    _npz(inbox / "folder" / "fine.npz")
    (inbox / "folder" / "sneaky.npz").symlink_to(outside / "elsewhere.npz")
    return "folder"


def _traversing_label(inbox: Path, outside: Path) -> str:
    (outside / "secret").mkdir()
    (outside / "secret" / "1.png").write_bytes(_image_bytes("PNG"))
    (inbox / "photos").mkdir()
    (inbox / "photos" / "evil").symlink_to(Path(os.path.relpath(outside, inbox / "photos")))
    return _photos(inbox, "photos", {})


def _fifo(inbox: Path, _outside: Path) -> str:
    os.mkfifo(inbox / "pipe.npz")
    return "pipe.npz"


def _folder(name: str, files: dict[str, Builder]) -> Builder:
    def build(inbox: Path, outside: Path) -> str:
        (inbox / name).mkdir()
        for builder in files.values():
            builder(inbox / name, outside)
        return name

    return build


def _empty_folder(inbox: Path, _outside: Path) -> str:
    (inbox / "nothing").mkdir()
    return "nothing"


X = make_dataset(6, seed=1)[0]
# id -> (builder, a fragment the reason must contain)
CORPUS: dict[str, tuple[Builder, str]] = {
    "wrong-shape": (_arrays("shape.npz", x=np.zeros((6, 3, 5, 5), np.float32)), "shape"),
    "wrong-rank": (_arrays("rank.npz", x=np.zeros((6, 7), np.float32)), "shape"),
    "string-inputs": (_arrays("strings.npz", x=np.full((6, 3, 8, 8), "a")), "dtype"),
    "complex-inputs": (_arrays("complex.npz", x=X.astype(np.complex64)), "dtype"),
    "nan-inputs": (_arrays("nan.npz", x=np.where(X > 0.9, np.nan, X)), "NaN"),
    "inf-inputs": (_arrays("inf.npz", x=np.where(X > 0.9, -np.inf, X)), "infinite"),
    "float64-overflow": (_arrays("overflow.npz", x=X.astype(np.float64) * 1e300), "infinite"),
    "object-labels": (_arrays("objects.npz", y=np.array(["red", {"a": 1}] * 3, dtype=object)), "object arrays"),
    "object-inputs": (_arrays("objectx.npz", x=np.array([None] * 6, dtype=object)), "object arrays"),
    "pickle-file": (_hostile("file"), "not a readable .npz"),
    "pickle-inside-npz": (_hostile("member"), "object arrays"),
    "negative-label": (_arrays("negative.npz", y=np.array([0, 1, -1, 2, 0, 1])), "negative"),
    "float-labels": (_arrays("floaty.npz", y=np.linspace(0, 1, 6)), "dtype"),
    "empty-label": (_arrays("blank.npz", y=np.array(["red", ""] * 3)), "empty"),
    "label-count": (_arrays("count.npz", y=np.array(["red"] * 7)), "one label per sample"),
    "two-dim-labels": (_arrays("labels2d.npz", y=np.zeros((6, 2), np.int64)), "one label per sample"),
    "non-ascii-byte-labels": (_arrays("bytes.npz", y=np.array([b"\xff"] * 6)), "not ASCII"),
    "label-path-traversal": (_arrays("traversal.npz", y=np.array(["../../etc/passwd"] * 6)), "not a usable class"),
    "label-control-chars": (_arrays("control.npz", y=np.array(["red\nfake"] * 6)), "not a usable class"),
    "no-samples": (_arrays("none.npz", x=np.zeros((0, 3, 8, 8), np.float32), y=np.array([], str)), "no samples"),
    "scalar-inputs": (_arrays("scalar.npz", x=np.float32(1.0)), "no samples"),
    "missing-x": (_zip("nox.npz", {}), "missing array 'x'"),
    "missing-y": (
        _zip(
            "noy.npz",
            {"x.npy": _npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (1, 3, 8, 8)}, b"\0" * 768)},
        ),
        "missing array 'y'",
    ),
    "zero-byte-npz": (_write("zero.npz", b""), "not a readable .npz"),
    "random-bytes-npz": (_write("random.npz", bytes(range(256)) * 4), "not a readable .npz"),
    "truncated-npz": (_damaged_npz("truncated.npz", lambda d: d[: len(d) // 2]), "not a readable .npz"),
    "corrupt-npz": (_damaged_npz("corrupt.npz", _flip_middle), "not a readable .npz"),
    "corrupt-compressed-npz": (_damaged_npz("squashed.npz", _flip_middle, compressed=True), "not a readable .npz"),
    "npz-bomb": (_damaged_npz("bomb.npz", _claim_huge), "more than edgeft reads"),
    "npz-header-lies": (
        _zip(
            "lies.npz", {"x.npy": _npy_bytes({"descr": "<f4", "fortran_order": False, "shape": (10**6, 3, 8, 8)}, b"")}
        ),
        "declares shape",
    ),
    "npz-raw-member": (_zip("raw.npz", {"x": b"\0" * 64}), "not a .npy array"),
    "png-truncated": (
        lambda i, o: _photos(i, "cut-png", {"red/1.png": _image_bytes("PNG")[:40]}),
        "not a readable image",
    ),
    "png-garbage": (lambda i, o: _photos(i, "junk-png", {"red/1.png": b"\x89PNG\r\n\x1a\n" + b"x" * 50}), "image"),
    "jpeg-truncated": (lambda i, o: _photos(i, "cut-jpg", {"red/1.jpg": _image_bytes("JPEG")[:100]}), "image"),
    "text-named-jpeg": (lambda i, o: _photos(i, "text-jpg", {"red/1.jpg": b"just some text\n"}), "image"),
    "zero-byte-png": (lambda i, o: _photos(i, "empty-png", {"red/1.png": b""}), "not a readable image"),
    "png-bomb": (lambda i, o: _photos(i, "bomb-png", {"red/1.png": _png(100_000, 100_000)}), "decompression bomb"),
    "png-too-many-pixels": (lambda i, o: _photos(i, "big-png", {"red/1.png": _png(8000, 8000)}), "decompression bomb"),
    "label-folder-newline": (lambda i, o: _photos(i, "odd-label", {"re\nd/1.png": _image_bytes("PNG")}), "usable"),
    "label-folder-traversal-link": (_traversing_label, "symbolic link"),
    "symlink-entry": (_symlink_entry, "symbolic link"),
    "symlink-inside-folder": (_symlink_inside, "symbolic link"),
    "fifo-entry": (_fifo, "not a regular file"),
    "fifo-in-image-folder": (lambda i, o: _photos(i, "pipe-png", {"red/1.png": None}), "not a regular file"),
    "csv-missing-label-column": (_write("nolabel.csv", _csv_rows([ROW], header=",".join(["v"] * 192))), "no 'label'"),
    "csv-missing-cells": (_write("short.csv", _csv_rows([ROW + ",red", "0.5,0.5,red"])), "columns"),
    "csv-not-numbers": (_write("words.csv", _csv_rows([ROW.replace("0.5", "abc", 1) + ",red"])), "not a number"),
    "csv-wrong-width": (_write("narrow.csv", b"a,b,label\n1,2,red\n"), "needs"),
    "csv-header-only": (_write("header.csv", _csv_rows([])), "no rows"),
    "csv-zero-byte": (_write("zero.csv", b""), "empty CSV"),
    "csv-not-utf8": (_write("latin1.csv", _csv_rows([ROW + ",r\xe9d"]).decode().encode("latin-1")), "not UTF-8"),
    "csv-nan": (_write("nan.csv", _csv_rows([ROW.replace("0.5", "nan", 1) + ",red"])), "NaN"),
    "jsonl-not-utf8": (_write("latin1.jsonl", '{"x": [1], "y": "r\xe9d"}\n'.encode("latin-1")), "not UTF-8"),
    "jsonl-garbage-line": (_write("garbage.jsonl", b'{"x": [1, 2\n'), "not an object"),
    "jsonl-ragged": (_write("ragged.jsonl", b'{"x": [1, 2], "y": "red"}\n{"x": [1], "y": "red"}\n'), "shape"),
    "jsonl-bool-label": (_write("bool.jsonl", b'{"x": [1, 2], "y": true}\n'), "neither a name nor an index"),
    "jsonl-zero-byte": (_write("zero.jsonl", b""), "no samples"),
    "npy-without-labels": (lambda i, o: np.save(i / "bare.npy", X) or "bare.npy", "no labels"),
    "unsupported-type": (_write("notes.txt", b"hello\n"), "unsupported file type"),
    "single-image": (_write("photo.png", _image_bytes("PNG")), "a single image has no label"),
    "empty-folder": (_empty_folder, "no .npz"),
    "folder-mixed-shapes": (
        _folder("shapes", {"a": _arrays("a.npz"), "b": _arrays("b.npz", x=np.zeros((6, 3, 4, 4), np.float32))}),
        "different shapes",
    ),
    "folder-mixed-label-kinds": (
        _folder("kinds", {"a": _arrays("a.npz"), "b": _arrays("b.npz", y=np.array([0, 1, 2, 0, 1, 2]))}),
        "one kind",
    ),
}


def _inbox_with(tmp_path: Path, builders: list[Builder]) -> tuple[Path, list[str]]:
    """An inbox holding the built entries (oldest first) and then one good file, ``good.npz`` (new samples each time)."""
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    names = [build(inbox, outside) for build in builders]
    for age, name in enumerate(reversed(names), start=1):
        os.utime(inbox / name, (1e9 - age, 1e9 - age), follow_symlinks=False)
    x, y = make_dataset(30, seed=zlib.crc32(tmp_path.name.encode()))
    with (inbox / "good.npz").open("wb") as handle:
        np.savez(handle, x=x, y=np.array(CLASSES)[y])
    return inbox, names


@pytest.fixture(scope="module")
def adapter(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Adapter]:
    """One learner for the whole corpus (opening ONNX Runtime sessions per case would dominate the run time).

    Its promotion guard is off: whether a good file improves the head is not what these tests are about.
    """
    policy = GuardPolicy(enabled=False)
    with Adapter(Bundle.load(bundle_dir), tmp_path_factory.mktemp("state"), policy=policy) as shared:
        yield shared


def _watch_once(adapter: Adapter, inbox: Path) -> tuple[WatchSummary, list[tuple[str, dict]], list[dict]]:
    """Run the watch loop over the inbox once; its summary, events and the journal lines it added."""
    seen: list[tuple[str, dict]] = []
    journal = adapter.store.root / JOURNAL_FILE
    before = len(list(read_lines(journal)))
    summary = watch(
        adapter, Inbox(inbox), emit=lambda e, **f: seen.append((e, f)), stop=StopFlag(), poll_seconds=0.01, once=True
    )
    return summary, seen, list(read_lines(journal))[before:]


def test_the_corpus_is_large() -> None:
    assert len(CORPUS) >= 60


@pytest.mark.parametrize("case", list(CORPUS))
def test_bad_entry_is_quarantined_with_its_reason_and_the_rest_learned(
    case: str, adapter: Adapter, tmp_path: Path
) -> None:
    build, fragment = CORPUS[case]
    inbox, (name,) = _inbox_with(tmp_path, [build])
    summary, seen, journaled = _watch_once(adapter, inbox)

    assert (summary.quarantined, summary.learned, summary.errors) == (1, 1, 0), seen
    quarantined = inbox / "quarantine" / name
    assert quarantined.exists() or quarantined.is_symlink()
    reason = (inbox / "quarantine" / f"{name}.reason.txt").read_text()
    assert reason.count("\n") == 1 and reason.endswith("\n")
    assert str(inbox / name) in reason and fragment in reason, reason
    assert [e for e, _ in seen] == ["watching", "quarantined", "learned", "stopped"]
    assert [r["name"] for r in journaled] == ["good.npz"]
    assert (inbox / "done" / "good.npz").is_file()
    assert not (tmp_path / "outside" / "pwned").exists()  # no pickle was ever unpickled


@pytest.mark.parametrize(
    ("labels", "unknown"),
    [
        (np.array(["red", "green", "violet", "blue", "violet", "red"]), ["violet"]),
        (np.array([0, 1, 7, 2, 7, 1]), ["7"]),
    ],
    ids=["unknown-name", "index-beyond-capacity"],
)
def test_labels_beyond_the_head_wait_in_pending_and_the_rest_is_learned(
    labels: np.ndarray, unknown: list[str], adapter: Adapter, tmp_path: Path
) -> None:
    inbox, _ = _inbox_with(tmp_path, [_arrays(f"more-{unknown[0]}.npz", y=labels)])
    received = adapter.meta.get("samples_received", 0)
    summary, seen, journaled = _watch_once(adapter, inbox)
    assert (summary.quarantined, summary.learned, summary.pending_samples) == (0, 2, 2), seen
    with np.load(inbox / "pending" / f"more-{unknown[0]}.npz", allow_pickle=False) as kept:
        assert kept["y"].tolist() == unknown * 2
    # The entry's journal line counts what it held; the head received only the samples that fit.
    assert {r["name"]: r["samples"] for r in journaled} == {f"more-{unknown[0]}.npz": 6, "good.npz": 30}
    assert adapter.meta["samples_received"] == received + 4 + 30


def test_inputs_with_unknown_labels_are_checked_before_they_are_kept_pending(adapter: Adapter, tmp_path: Path) -> None:
    labels = np.array(["red", "violet"] * 3)
    inbox, _ = _inbox_with(tmp_path, [_arrays("bad.npz", x=np.full((6, 3, 8, 8), np.nan, np.float32), y=labels)])
    summary, seen, _ = _watch_once(adapter, inbox)
    assert (summary.quarantined, summary.learned, summary.pending_samples) == (1, 1, 0), seen
    assert list((inbox / "pending").iterdir()) == []


@pytest.mark.slow
def test_the_whole_corpus_at_once_in_a_real_process(bundle_dir: Path, tmp_path: Path) -> None:
    inbox, names = _inbox_with(tmp_path, [build for build, _ in CORPUS.values()])
    state = tmp_path / "state"
    done = subprocess.run(
        [*CLI, "adapt", str(bundle_dir), "-s", str(state), "--watch", str(inbox), "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in edgeft_lines(done.stderr)]
    assert [e["event"] for e in events] == ["watching"] + ["quarantined"] * len(CORPUS) + ["learned", "stopped"]
    assert json.loads(done.stdout)["quarantined"] == len(CORPUS)
    assert sorted(p.name for p in (inbox / "quarantine").iterdir() if not p.name.endswith(".reason.txt")) == sorted(
        names
    )
