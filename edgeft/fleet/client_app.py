"""The fleet's Flower ClientApp: one per device, run by ``flower-supernode`` next to the device's state.

The SuperNode's node config names the device's files: ``bundle`` and ``state`` (required), ``inbox`` (a folder of
new arrivals, learned before each round), ``threads``, ``ep``, ``head-learner`` (how arrivals are learned) and
``fleet-policy`` (when a global head is adopted: ``edgeft.fleet.policy``). Every message opens the device's
``Adapter`` (taking its state lock) and closes it again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgeft.errors import EdgeftError
from edgeft.fleet.device import FleetDevice
from edgeft.fleet.records import (
    ARRAYS,
    CONFIG,
    METRICS,
    PREVIOUS_SCORES,
    SCORES,
    STATISTICS,
    from_record,
    read_scores,
    read_statistics,
    report_content,
    scores_record,
    statistics_record,
    to_record,
)
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.learn_options import LearnOptions

app = ClientApp()


@contextmanager
def _device(context: Context) -> Iterator[FleetDevice]:
    config = context.node_config
    missing = [key for key in ("bundle", "state") if not config.get(key)]
    if missing:
        raise EdgeftError(f'the SuperNode\'s --node-config lacks {", ".join(missing)} (e.g. bundle="..." state="...")')
    threads = int(config["threads"]) if config.get("threads") else None
    learner = str(config.get("head-learner", "sgd"))
    with Adapter(
        str(config["bundle"]),
        str(config["state"]),
        ep=str(config.get("ep", "auto")),
        threads=threads,
        head_learner=learner,
    ) as adapter:
        inbox = str(config["inbox"]) if config.get("inbox") else None
        yield FleetDevice(adapter, inbox, threads, str(config.get("fleet-policy", "guard")))


def _checked(device: FleetDevice, config: ConfigRecord) -> list[str]:
    """The fleet's label map from a round's config, after checking the fleet runs this device's bundle."""
    if config["fingerprint"] != device.adapter.bundle.fingerprint:
        raise EdgeftError(
            f"the fleet runs another bundle than this device's {device.adapter.bundle.path}; not taking part"
        )
    return list(config["classes"])


@app.query()
def report(message: Message, context: Context) -> Message:
    """Ingest new arrivals, then tell the server this device's label map and feature moments; or, asked to score a
    global head, its per-class correct and total counts on this device's holdout."""
    config = message.content.config_records[CONFIG]
    with _device(context) as device:
        if config.get("mode") == "score":
            scores = device.score(from_record(message.content.array_records[ARRAYS]), _checked(device, config))
            return Message(RecordDict({SCORES: scores_record(scores)}), reply_to=message)
        result = device.report()
    content = report_content(
        result.classes, result.fingerprint, result.moments, result.head_learner, result.fleet_policy
    )
    return Message(content, reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Ingest new arrivals, train the received global head on the replay buffer, return it with the sample count;
    in a statistics round, return this device's class statistics instead."""
    config = message.content.config_records[CONFIG]
    with _device(context) as device:
        classes = _checked(device, config)
        ingested = device.ingest()
        if config.get("mode") == "statistics":
            statistics = device.statistics(classes)
            metrics = MetricRecord({"num-examples": statistics.total, **ingested})
            return Message(RecordDict({ARRAYS: statistics_record(statistics), METRICS: metrics}), reply_to=message)
        options = LearnOptions(
            epochs=int(config["epochs"]),
            batch_size=int(config["batch-size"]),
            lr=float(config["lr"]),
            seed=int(config["seed"]) + int(config["server-round"]),
        )
        outcome = device.train(from_record(message.content.array_records[ARRAYS]), classes, options)
    metrics = MetricRecord({"num-examples": outcome.samples, "train-loss": outcome.loss, **ingested})
    return Message(RecordDict({ARRAYS: to_record(outcome.parameters), METRICS: metrics}), reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Adopt the round's global head if the device's fleet policy agrees; report the verdict and holdout accuracy.

    A statistics round also sends every device's statistics together: the device keeps the others' part. When a
    device uses the ``overall`` policy, the head comes with the fleet's per-class holdout counts for it."""
    config = message.content.config_records[CONFIG]
    version = int(config["first-version"]) + int(config["server-round"]) - 1
    records = message.content.array_records
    with _device(context) as device:
        classes = _checked(device, config)
        total = None
        if STATISTICS in records:
            head = device.adapter.bundle.manifest.head
            total = read_statistics(records[STATISTICS], head.num_outputs, head.feature_dim, "the fleet's statistics")
        scores = previous = None
        if SCORES in records:
            scores = read_scores(records[SCORES], device.adapter.capacity, "the fleet's holdout scores")
        if PREVIOUS_SCORES in records:
            counts = read_scores(records[PREVIOUS_SCORES], device.adapter.capacity, "the fleet's previous scores")
            previous = (int(config["previous-version"]), counts)
        result = device.adopt(from_record(records[ARRAYS]), classes, version, total, scores, previous)
        samples = len(device.replay())
    accuracy = result.holdout_accuracy if result.holdout_accuracy is not None else float("nan")
    metrics = MetricRecord(
        {
            "num-examples": samples,
            "promoted": int(result.promoted),
            "holdout-accuracy": accuracy,
            "device-version": result.version,
            "global-version": version,
        }
    )
    return Message(RecordDict({METRICS: metrics}), reply_to=message)
