"""The main job end to end: adapt the shipped default bundle (artifacts/default) on the demo stream of digits
(artifacts/demo/stream) chunk by chunk, scoring the head on the held-out digits (artifacts/demo/test.npz)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.data.readers import Samples, read_path
from edgeft.errors import EdgeftError
from edgeft.runtime.adapter import Adapter, LearnResult, Progress
from edgeft.runtime.labels import encode_known

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


@dataclass(frozen=True)
class ChunkOutcome:
    """One arriving chunk learned: its file name, the learner's result and the held-out accuracy after it."""

    name: str
    result: LearnResult
    accuracy: float


class DemoRun:
    """The demo's open Adapter with its stream and held-out set read; ``adapt`` learns the stream."""

    def __init__(self, adapter: Adapter, chunks: list[Samples], test: Samples) -> None:
        self.adapter = adapter
        self.chunks = chunks
        self.test = test
        self._test_labels = encode_known(test.y, adapter.classes, test.origin)

    @property
    def backbone(self) -> str:
        """The file name of the model the bundle was exported from."""
        return self.adapter.bundle.manifest.source["file"]

    @property
    def classes(self) -> list[str]:
        """The bundle's class names."""
        return self.adapter.classes

    @property
    def test_samples(self) -> int:
        """How many held-out digits the accuracy is measured on."""
        return len(self.test.x)

    @property
    def provider(self) -> str:
        """The execution provider the backbone runs on."""
        return self.adapter.placement.name

    @cached_property
    def _test_features(self) -> np.ndarray:
        return self.adapter.embed(self.test.x, self.test.origin)

    def accuracy(self) -> float:
        """The current head's accuracy on the held-out digits (their features computed once)."""
        predicted = self.adapter.predict_proba_features(self._test_features).argmax(1)
        return float((predicted == self._test_labels).mean())

    def work(self, epochs: int | None) -> int:
        """Units of progress ``adapt`` reports: every sample embedded once, plus one per epoch of each chunk."""
        n_epochs = epochs or self.adapter.bundle.manifest.defaults.epochs
        return sum(len(c.x) for c in self.chunks) + n_epochs * len(self.chunks)

    def adapt(self, epochs: int | None, progress: Progress | None = None) -> Iterator[ChunkOutcome]:
        """Learn each chunk in turn (``epochs`` each, default the bundle's), yielding the outcome after each."""
        for chunk in self.chunks:
            result = self.adapter.learn(chunk.x, chunk.y, epochs=epochs, origin=chunk.origin, progress=progress)
            yield ChunkOutcome(Path(chunk.origin).name, result, self.accuracy())


@contextmanager
def demo_run(state: Path | None, **adapter_options: Any) -> Iterator[DemoRun]:
    """Open the default bundle on a fresh state directory (``state``, or a temporary one removed afterwards) and
    read the demo data; ``adapter_options`` go to the Adapter (ep, threads, trainer, head_learner, shrinkage)."""
    bundle_dir, stream_dir = ARTIFACTS / "default", ARTIFACTS / "demo" / "stream"
    if not bundle_dir.is_dir():
        raise EdgeftError(f"the demo needs {ARTIFACTS} from the edgeft source tree (install with pip install -e .)")
    workdir = Path(tempfile.mkdtemp(prefix="edgeft-demo-")) if state is None else state
    try:
        with Adapter(bundle_dir, workdir, **adapter_options) as adapter:
            if adapter.version:
                raise EdgeftError(f"{workdir} already holds a learned head; give the demo a fresh --state")
            manifest = adapter.bundle.manifest
            chunks = [s for p in sorted(stream_dir.glob("*.npz")) for s in read_path(p, manifest)]
            yield DemoRun(adapter, chunks, read_path(ARTIFACTS / "demo" / "test.npz", manifest)[0])
    finally:
        if state is None:
            shutil.rmtree(workdir, ignore_errors=True)
