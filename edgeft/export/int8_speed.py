"""int8 backbones' speed against the float one, measured at export on the export machine.

The float backbone and each int8 candidate embed the same held-out samples in batches, in rounds whose order
alternates (float first, then the last candidate first, ...), so that a change in the machine's load hits all of
them alike; each round's ratio is taken within the round and the median over rounds is reported, by CPU time
(user + system of this process, all threads: robust to other processes' load) and by wall time. The figures
describe the export machine's CPU (common.int8_probe cpu_signature), not the device's; ``--keep-float auto``
chooses the fastest of the candidates that agree with the float backbone by them (speed_choice).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from edgeft.common.int8_probe import cpu_signature

BATCH = 16  # the runtime's embedding batch (runtime.features.EMBED_BATCH)
MAX_SAMPLES = 256
FLOAT = "float"


def measure(float_model: Path, int8_model: bytes, input_name: str, x: np.ndarray, rounds: int) -> dict[str, Any]:
    """The manifest's ``speed`` record: int8 over float samples per second over ``rounds`` alternating rounds on
    (at most MAX_SAMPLES of) ``x``."""
    return measure_candidates(float_model, {"int8": int8_model}, input_name, x, rounds)["int8"]


def measure_candidates(
    float_model: Path, candidates: dict[str, bytes], input_name: str, x: np.ndarray, rounds: int
) -> dict[str, dict[str, Any]]:
    """Each int8 candidate's ``speed`` record (as measure), timed in the same ``rounds`` as the float backbone,
    the order of all of them reversed every other round."""
    x = x[:MAX_SAMPLES]
    sessions = {FLOAT: _session(str(float_model))} | {name: _session(model) for name, model in candidates.items()}
    wall: dict[str, list[float]] = {name: [] for name in sessions}
    cpu: dict[str, list[float]] = {name: [] for name in sessions}
    order = list(sessions)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            session = sessions[name]
            session.run(None, {input_name: x[:BATCH]})  # warm-up
            start, cpu_start = time.perf_counter(), time.process_time()
            for i in range(0, len(x), BATCH):
                session.run(None, {input_name: x[i : i + BATCH]})
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(max(time.process_time() - cpu_start, 1e-9))
    return {name: _record(cpu, wall, name, rounds, len(x)) for name in candidates}


def _record(
    cpu: dict[str, list[float]], wall: dict[str, list[float]], name: str, rounds: int, samples: int
) -> dict[str, Any]:
    cpu_ratios = [f / i for f, i in zip(cpu[FLOAT], cpu[name], strict=True)]
    wall_ratios = [f / i for f, i in zip(wall[FLOAT], wall[name], strict=True)]
    return {
        "int8_over_float_cpu_time": round(statistics.median(cpu_ratios), 2),
        "int8_over_float_wall_time": round(statistics.median(wall_ratios), 2),
        "per_round_cpu_time": [round(v, 2) for v in cpu_ratios],
        "rounds": rounds,
        "samples": int(samples),
        "batch": BATCH,
        "cpu": cpu_signature(),
        "what": "backbone inference speed, int8 over float samples per second, measured at export on the export "
        "machine",
    }


def _session(model: str | bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
