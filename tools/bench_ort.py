"""The torch-free benchmark contenders, one per process (run by ``tools/bench.py``; prints one JSON line).

- ``inference``: plain onnxruntime ``InferenceSession`` over ``backbone.onnx``, ``--batch`` samples a run.
- ``edgeft``: the public API, ``Adapter(bundle, fresh_state, threads=...).learn(x, y)`` once per arrival, with the
  bundle's defaults (10 head epochs over new + replayed features, batch 16, one committed version per call).
- ``ort-whole``: ORT training artifacts over the whole graph (backbone + a new 10-class Gemm head, every backbone
  parameter frozen), generated at setup; one epoch over each arrival, batch ``--batch``; a checkpoint per arrival.
- ``replay``: head steps of the bundle's trainer (``--trainer onnx``: the portable train step; ``ort``: ORT
  training's Module) on cached features (no backbone), batch 16.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from bench_common import BUNDLE, Arrival, batches, common_args, cpu_seconds, emit, timed_run, workload

import edgeft  # noqa: F401  (first: keeps torch out of the process)
from edgeft.bundle import Bundle
from edgeft.common.ort import resolve_placement, training_api, training_artifacts
from edgeft.runtime import features as features_module
from edgeft.runtime import onnx_trainer, ort_trainer
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.features import session_options
from edgeft.runtime.replay_store import BUFFERS_FILE
from edgeft.runtime.trainer import HEAD_STATE_FILE, choose_trainer, open_trainer

CONTENDERS = ["inference", "edgeft", "ort-whole", "replay"]
REPLAY_SAMPLES, REPLAY_EPOCHS = 2000, 10
HEAD_WEIGHT, HEAD_BIAS, LOGITS = "bench.head.weight", "bench.head.bias", "bench.logits"


def run_inference(args, warm: list[Arrival], arrivals: list[Arrival]) -> dict:  # noqa: ANN001
    """Backbone features only: the limit any learner that runs the backbone once per sample is held to."""
    import onnxruntime  # after edgeft, whose import keeps torch out

    start = time.perf_counter()
    placement = resolve_placement(args.ep)
    options = session_options(args.threads)
    options.graph_optimization_level = getattr(
        onnxruntime.GraphOptimizationLevel, f"ORT_ENABLE_{args.opt_level.upper()}"
    )
    session = onnxruntime.InferenceSession(
        str(BUNDLE / "backbone.onnx"), sess_options=options, providers=list(placement.providers)
    )
    name = session.get_inputs()[0].name
    setup = time.perf_counter() - start
    if args.dump:
        np.save(args.dump, session.run(None, {name: arrivals[0][0][:4].astype(np.float32)})[0])

    def absorb(x: np.ndarray, y: np.ndarray) -> None:
        x = x.astype(np.float32)
        for idx in batches(len(x), args.batch):
            session.run(None, {name: x[idx]})

    return timed_run(setup, arrivals, absorb)


def run_edgeft(args, warm: list[Arrival], arrivals: list[Arrival]) -> dict:  # noqa: ANN001
    """edgeft's public API with the bundle's defaults; the embedding batch is set to ``--batch``."""
    features_module.EMBED_BATCH = args.batch
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        adapter = Adapter(BUNDLE, Path(tmp) / "state", ep=args.ep, threads=args.threads, trainer=args.trainer)
        adapter.consumed_inputs()  # opens the lock and the training session, as watch mode does at startup
        setup = time.perf_counter() - start
        for x, y in warm:
            adapter.learn(x, y)
        extractor = adapter._features  # bench-only instrumentation: count backbone rows, time commits
        rows, commit_s = [0], []
        run, commit = extractor._session.run, adapter.store.commit

        def counting_run(outputs, feeds):  # noqa: ANN001, ANN202
            rows[0] += len(next(iter(feeds.values())))
            return run(outputs, feeds)

        def timed_commit(*a, **k):  # noqa: ANN002, ANN003, ANN202
            t = time.perf_counter()
            version = commit(*a, **k)
            commit_s.append(time.perf_counter() - t)
            return version

        extractor._session.run, adapter.store.commit = counting_run, timed_commit
        replayed = []

        def absorb(x: np.ndarray, y: np.ndarray) -> None:
            replayed.append(adapter.learn(x, y).replayed)

        result = timed_run(setup, arrivals, absorb)
        version = adapter.store.current()
        assert version is not None
        result.update(
            backbone_rows_per_sample=rows[0] / result["samples"],
            replayed_per_arrival_mean=float(np.mean(replayed)),
            commit_s_median=float(np.median(commit_s)),
            checkpoint_bytes=version.files[HEAD_STATE_FILE].stat().st_size,
            replay_bytes=sum(adapter.store.segment_path(name).stat().st_size for name in version.meta["segments"])
            + version.files[BUFFERS_FILE].stat().st_size,  # the buffers' segments and index
            version=version.number,
        )
        adapter.close()
    return result


def whole_graph_model(bundle: Bundle, classes: int, seed: int = 0):  # noqa: ANN201 - onnx.ModelProto
    """``backbone.onnx`` followed by a new Gemm head (PyTorch's Linear initialisation), output ``bench.logits``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(bundle.backbone_path))
    graph = model.graph
    dim = bundle.manifest.head.feature_dim
    bound = 1.0 / np.sqrt(dim)
    weight = np.random.default_rng(seed).uniform(-bound, bound, (classes, dim)).astype(np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array(weight, HEAD_WEIGHT),
            numpy_helper.from_array(np.zeros(classes, np.float32), HEAD_BIAS),
        ]
    )
    graph.node.append(helper.make_node("Gemm", [graph.output[0].name, HEAD_WEIGHT, HEAD_BIAS], [LOGITS], transB=1))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["N", classes]))
    return model


def run_ort_whole(args, warm: list[Arrival], arrivals: list[Arrival]) -> dict:  # noqa: ANN001
    """ORT training over the whole graph with the base frozen, as ORT's transfer-learning example does."""
    start = time.perf_counter()
    bundle = Bundle.load(BUNDLE)
    model = whole_graph_model(bundle, len(bundle.manifest.classes))
    frozen = [init.name for init in model.graph.initializer if init.name not in (HEAD_WEIGHT, HEAD_BIAS)]
    artifacts, api = training_artifacts(), training_api()
    placement = resolve_placement(args.ep)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        artifacts.generate_artifacts(
            model,
            requires_grad=[HEAD_WEIGHT, HEAD_BIAS],
            frozen_params=frozen,
            loss=artifacts.LossType.CrossEntropyLoss,
            optimizer=artifacts.OptimType.AdamW,
            artifact_directory=str(out),
        )
        generate_s = time.perf_counter() - start
        state = api.CheckpointState.load_checkpoint(str(out / "checkpoint"))
        module = api.Module(
            str(out / "training_model.onnx"),
            state,
            str(out / "eval_model.onnx"),
            device=placement.training_device,
            session_options=session_options(args.threads),
        )
        optimizer = api.Optimizer(str(out / "optimizer_model.onnx"), module)
        optimizer.set_learning_rate(bundle.manifest.defaults.lr)
        module.train()
        setup = time.perf_counter() - start
        rng = np.random.default_rng(0)
        saves = []

        def absorb(x: np.ndarray, y: np.ndarray) -> None:
            x, y = x.astype(np.float32), y.astype(np.int64)
            for idx in batches(len(x), args.batch, rng):
                module(x[idx], y[idx])
                optimizer.step()
                module.lazy_reset_grad()
            t = time.perf_counter()
            api.CheckpointState.save_checkpoint(state, str(out / "ckpt"), include_optimizer_state=True)
            saves.append(time.perf_counter() - t)

        result = timed_run(setup, arrivals, absorb)
        result.update(
            generate_s=generate_s,
            commit_s_median=float(np.median(saves)),
            checkpoint_bytes=(out / "ckpt").stat().st_size,
        )
    return result


def _head_rate(bundle: Bundle, args, threads: int, feats: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:  # noqa: ANN001
    """(samples/s, samples per CPU-second, save seconds) of 10 epochs of the trainer's ``fit`` with its session on
    ``threads`` threads. CPU seconds are this process's: they hold still when other jobs share the cores."""
    module = onnx_trainer if args.trainer == "onnx" else ort_trainer
    module.HEAD_TRAINING_THREADS = threads  # bench-only: compare the pinned default with --threads
    trainer = open_trainer(bundle, None, resolve_placement(args.ep), choose_trainer(bundle, args.trainer))
    d = bundle.manifest.defaults

    def constant(_step: int) -> float:  # the runtime's default schedule
        return d.lr

    trainer.fit(feats[:64], labels[:64], epochs=1, batch_size=d.batch_size, schedule=constant, seed=0)  # warm-up
    start, cpu = time.perf_counter(), cpu_seconds()
    trainer.fit(feats, labels, epochs=REPLAY_EPOCHS, batch_size=d.batch_size, schedule=constant, seed=0)
    rate = len(feats) * REPLAY_EPOCHS / (time.perf_counter() - start)
    cpu_rate = len(feats) * REPLAY_EPOCHS / (cpu_seconds() - cpu)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for kind, write in trainer.writers().items():
            write(Path(tmp) / kind)
        return rate, cpu_rate, time.perf_counter() - start


def run_replay(args, warm: list[Arrival], arrivals: list[Arrival]) -> dict:  # noqa: ANN001
    """Head steps per second on cached features: 10 epochs over 2,000 feature vectors (a full replay buffer).

    Alternates the pinned head thread count with ``--threads`` three times each; medians.
    """
    bundle = Bundle.load(BUNDLE)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((REPLAY_SAMPLES, bundle.manifest.head.feature_dim)).astype(np.float32)
    labels = rng.integers(0, len(bundle.manifest.classes), REPLAY_SAMPLES)
    module = onnx_trainer if args.trainer == "onnx" else ort_trainer
    pinned = module.HEAD_TRAINING_THREADS
    rates: dict[int, list[float]] = {pinned: [], args.threads: []}
    cpu_rates: list[float] = []
    saves = []
    for _ in range(3):
        for threads in rates:
            rate, cpu_rate, save_s = _head_rate(bundle, args, threads, feats, labels)
            rates[threads].append(rate)
            saves.append(save_s)
            if threads == pinned:
                cpu_rates.append(cpu_rate)
    module.HEAD_TRAINING_THREADS = pinned
    rate = float(np.median(rates[pinned]))
    return {
        "samples": REPLAY_SAMPLES * REPLAY_EPOCHS,
        "samples_per_s": rate,
        "steps_per_s": rate / bundle.manifest.defaults.batch_size,
        "samples_per_s_at_threads": float(np.median(rates[args.threads])),
        "samples_per_cpu_s": float(np.median(cpu_rates)),
        "head_threads": pinned,
        "trainer": args.trainer,
        "head_save_s": float(np.median(saves)),
    }


def main() -> None:
    args = common_args(__doc__.splitlines()[0], CONTENDERS)
    warm, arrivals = workload(args)
    run = {"inference": run_inference, "edgeft": run_edgeft, "ort-whole": run_ort_whole, "replay": run_replay}
    result = run[args.contender](args, warm, arrivals)
    emit({"contender": args.contender, "batch": args.batch, "threads": args.threads, "ep": args.ep, **result})


if __name__ == "__main__":
    main()
