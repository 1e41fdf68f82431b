"""The fleet's Flower ServerApp: pool a normaliser, align classes, run federated rounds, save each global head.

Run config (``flwr run ... --run-config``): ``bundle`` (the devices' bundle, as the server sees it), ``out`` (the
server's fleet folder), ``rounds``, ``min-devices``, ``strategy`` (``auto``, ``statistics``,
``statistics+fedavg``, ``fedavg`` or ``fedadam``), ``server-lr`` (FedAdam's step), ``epochs``, ``batch-size``,
``lr`` and ``seed`` (local training), ``shrinkage`` (the statistics strategy's LDA), ``timeout`` (seconds to
wait for devices and replies).

``statistics`` (what ``auto`` picks when every device learns with ``slda`` or ``ncm``): each round, every device
sends its class statistics (``edgeft.fleet.pooled_statistics``), the server adds them and writes the closed-form
head, exactly the head of one device that had every device's samples; devices then adopt it through their guard.
``statistics+fedavg`` (what ``auto`` picks for other devices when the head is linear): one statistics round (an
``sgd`` device sends the statistics of its replay buffer's samples), then FedAvg rounds from that head for the
rest of ``rounds``. ``auto`` picks ``fedavg`` otherwise.

When a device reports the ``overall`` fleet policy (``edgeft.fleet.policy``), each round's global head is first
scored by every device on its own holdout (per-class correct and total counts); the sums go to every device with
the head, so that device can judge the head on all the fleet's classes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO, WARNING

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, Strategy
from flwr.supercore import log

from edgeft.bundle import Bundle
from edgeft.errors import EdgeftError
from edgeft.fleet.alignment import extend_registry
from edgeft.fleet.normaliser import Moments, pooled_normaliser
from edgeft.fleet.policy import ClassScores
from edgeft.fleet.pooled_statistics import STATISTICS_LEARNERS, global_head, pooled
from edgeft.fleet.records import (
    ARRAYS,
    CONFIG,
    METRICS,
    PREVIOUS_SCORES,
    SCORES,
    STATISTICS,
    from_record,
    read_report,
    read_scores,
    read_statistics,
    reported_learner,
    reported_policy,
    scores_record,
    statistics_record,
    to_record,
)
from edgeft.fleet.store import GlobalStore
from edgeft.runtime.slda import DEFAULT_SHRINKAGE, closed_form_head
from edgeft.runtime.trainer import Parameters, stored_state

app = ServerApp()
STRATEGIES = ("auto", "statistics", "statistics+fedavg", "fedavg", "fedadam")


@dataclass(frozen=True)
class FleetSettings:
    """What one federation run does (from the run config)."""

    bundle: str
    out: str
    rounds: int
    min_devices: int
    strategy: str
    server_lr: float
    epochs: int
    batch_size: int
    lr: float
    seed: int
    timeout: float
    shrinkage: float = DEFAULT_SHRINKAGE

    @classmethod
    def from_run_config(cls, config: dict) -> FleetSettings:
        """Read the run config; bundle and out are required, training options default to the bundle's."""
        if not config.get("bundle") or not config.get("out"):
            raise EdgeftError('the run config needs bundle="PATH" and out="FOLDER" (flwr run ... --run-config)')
        strategy = str(config.get("strategy", "auto"))
        if strategy not in STRATEGIES:
            raise EdgeftError(f"unknown strategy '{strategy}' in the run config; choose one of {', '.join(STRATEGIES)}")
        defaults = Bundle.load(str(config["bundle"])).manifest.defaults
        return cls(
            bundle=str(config["bundle"]),
            out=str(config["out"]),
            rounds=int(config.get("rounds", 3)),
            min_devices=int(config.get("min-devices", 2)),
            strategy=strategy,
            server_lr=float(config.get("server-lr", 0.01)),
            epochs=int(config.get("epochs") or defaults.epochs),
            batch_size=int(config.get("batch-size") or defaults.batch_size),
            lr=float(config.get("lr") or defaults.lr),
            seed=int(config.get("seed", defaults.seed)),
            timeout=float(config.get("timeout", 600)),
            shrinkage=float(config.get("shrinkage") or DEFAULT_SHRINKAGE),
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """One federation run over the devices connected to this SuperLink."""
    run_fleet(grid, FleetSettings.from_run_config(dict(context.run_config)))


def run_fleet(grid: Grid, settings: FleetSettings) -> GlobalStore:
    """Ask devices for reports, fix the label map and starting head, then federate for ``settings.rounds``."""
    bundle = Bundle.load(settings.bundle)
    store = GlobalStore(settings.out, bundle)
    reports = _reports(grid, settings, bundle.fingerprint)
    classes = extend_registry(store.registry(), [r.classes for r in reports], bundle.manifest.head.num_outputs)
    store.save_registry(classes)
    scored = any(r.fleet_policy == "overall" for r in reports)
    strategy = _chosen_strategy(settings.strategy, {r.head_learner for r in reports}, bundle)
    log(INFO, "strategy %s (asked: %s)", strategy, settings.strategy)
    previous = None
    if strategy.startswith("statistics"):
        rounds = 1 if "+" in strategy else settings.rounds
        previous = _statistics_rounds(grid, settings, bundle, store, classes, scored, rounds)
        if strategy == "statistics" or settings.rounds == 1:
            return store
    start = _starting_head(bundle, store, [r.moments for r in reports])
    first = (store.versions() or [0])[-1] + 1
    shared = {"classes": classes, "fingerprint": bundle.fingerprint}
    train_config = ConfigRecord(
        {
            **shared,
            "epochs": settings.epochs,
            "batch-size": settings.batch_size,
            "lr": settings.lr,
            "seed": settings.seed,
        }
    )

    def save(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        info = {"round": server_round, "strategy": "fedadam" if strategy == "fedadam" else "fedavg"}
        store.save(first + server_round - 1, from_record(arrays), classes, info)
        return MetricRecord({"version": first + server_round - 1})

    _strategy(settings, bundle.manifest.head.num_outputs if scored else 0, previous).start(
        grid,
        to_record(start),
        num_rounds=settings.rounds - 1 if strategy == "statistics+fedavg" else settings.rounds,
        timeout=settings.timeout,
        train_config=train_config,
        evaluate_config=ConfigRecord({**shared, "first-version": first}),
        evaluate_fn=save,
    )
    return store


def _chosen_strategy(asked: str, learners: set[str], bundle: Bundle) -> str:
    """``asked``, or for ``auto``: ``statistics`` when every device keeps class statistics (slda/ncm),
    ``statistics+fedavg`` when the head is linear, else ``fedavg``."""
    if asked != "auto":
        return asked
    if learners <= set(STATISTICS_LEARNERS):
        return "statistics"
    try:
        closed_form_head(bundle, "slda")
    except EdgeftError:
        return "fedavg"
    return "statistics+fedavg"


class _Scored:
    """Mixin for a Flower strategy: each evaluate message also carries the fleet's holdout scores of the head."""

    rows: int
    timeout: float
    previous: tuple[int, ClassScores] | None = None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]
        scores = _fleet_scores(grid, arrays, config, self.rows, self.timeout)
        for message in messages:
            _attach_scores(message.content, scores, self.previous)
        self.previous = (int(config["first-version"]) + server_round - 1, scores)
        return messages


class _ScoredFedAvg(_Scored, FedAvg):
    """FedAvg whose evaluate messages carry the fleet's holdout scores."""


class _ScoredFedAdam(_Scored, FedAdam):
    """FedAdam whose evaluate messages carry the fleet's holdout scores."""


def _strategy(settings: FleetSettings, scored_rows: int, previous: tuple[int, ClassScores] | None) -> Strategy:
    """The Flower strategy of ``settings``; with ``scored_rows`` (head outputs), one that sends holdout scores
    (starting from ``previous``: the last global head's version and scores)."""
    nodes = {
        "min_train_nodes": settings.min_devices,
        "min_evaluate_nodes": settings.min_devices,
        "min_available_nodes": settings.min_devices,
    }
    fedadam = settings.strategy == "fedadam"
    options = {"eta": settings.server_lr, **nodes} if fedadam else nodes
    if not scored_rows:
        return (FedAdam if fedadam else FedAvg)(**options)
    strategy = (_ScoredFedAdam if fedadam else _ScoredFedAvg)(**options)
    strategy.rows, strategy.timeout, strategy.previous = scored_rows, settings.timeout, previous
    return strategy


def _attach_scores(content: RecordDict, scores: ClassScores, previous: tuple[int, ClassScores] | None) -> None:
    """Add a head's fleet-wide holdout scores to an evaluate message, and the previous global head's, if any."""
    content[SCORES] = scores_record(scores)
    if previous is not None:
        content[PREVIOUS_SCORES] = scores_record(previous[1])
        content.config_records[CONFIG]["previous-version"] = previous[0]


def _fleet_scores(grid: Grid, arrays: ArrayRecord, config: ConfigRecord, rows: int, timeout: float) -> ClassScores:
    """Ask every device to score a global head on its holdout; the per-class counts summed over the fleet."""
    query = ConfigRecord({"mode": "score", "classes": config["classes"], "fingerprint": config["fingerprint"]})
    total: ClassScores | None = None
    for reply in _ask(grid, RecordDict({CONFIG: query, ARRAYS: arrays}), MessageType.QUERY, timeout):
        origin = f"device {reply.metadata.src_node_id}"
        try:
            scores = read_scores(reply.content.array_records[SCORES], rows, origin)
        except EdgeftError as exc:
            log(WARNING, "%s; its holdout left out of the fleet's scores", exc)
            continue
        total = scores if total is None else total.plus(scores)
    if total is None:
        raise EdgeftError("no device scored the global head on its holdout")
    judged = total.total > 0
    balanced = float((total.correct[judged] / total.total[judged]).mean()) if judged.any() else float("nan")
    log(INFO, "the fleet scored the global head on %d holdout samples of %d classes: class-balanced accuracy %.3f",
        int(total.total.sum()), int(judged.sum()), balanced)  # fmt: skip
    return total


def _statistics_rounds(
    grid: Grid,
    settings: FleetSettings,
    bundle: Bundle,
    store: GlobalStore,
    classes: list[str],
    scored: bool,
    rounds: int,
) -> tuple[int, ClassScores] | None:
    """Each of ``rounds``: collect every device's class statistics, add them, save the closed-form head, have it
    adopted. Returns the last head's version and fleet-wide holdout scores (None unless ``scored``)."""
    head = bundle.manifest.head
    first = (store.versions() or [0])[-1] + 1
    shared = {"classes": classes, "fingerprint": bundle.fingerprint, "first-version": first}
    previous: tuple[int, ClassScores] | None = None
    for server_round in range(1, rounds + 1):
        config = ConfigRecord({**shared, "mode": "statistics", "server-round": server_round})
        parts, pooled_nodes = [], []
        for reply in _ask(grid, RecordDict({CONFIG: config}), MessageType.TRAIN, settings.timeout):
            origin = f"device {reply.metadata.src_node_id}"
            try:
                parts.append(
                    read_statistics(reply.content.array_records[ARRAYS], head.num_outputs, head.feature_dim, origin)
                )
                pooled_nodes.append(reply.metadata.src_node_id)
            except EdgeftError as exc:
                log(WARNING, "%s; left out of round %d", exc, server_round)
        if len(parts) < settings.min_devices:
            raise EdgeftError(
                f"round {server_round}: {len(parts)} of {settings.min_devices} devices sent class statistics"
            )
        total = pooled(parts)
        version = first + server_round - 1
        info = {"round": server_round, "strategy": "statistics", "devices": len(parts), "samples": total.total}
        store.save(version, global_head(bundle, total, settings.shrinkage), classes, info)
        log(INFO, "[ROUND %d/%d] global head %d from %d devices' statistics (%d samples)", server_round,
            settings.rounds, version, len(parts), total.total)  # fmt: skip
        arrays = to_record(store.load(version).parameters)
        evaluate = RecordDict(
            {
                STATISTICS: statistics_record(total),
                ARRAYS: arrays,
                CONFIG: ConfigRecord({**shared, "server-round": server_round}),
            }
        )
        if scored:
            scores = _fleet_scores(grid, arrays, ConfigRecord(shared), head.num_outputs, settings.timeout)
            _attach_scores(evaluate, scores, previous)
            previous = (version, scores)
        verdicts = [
            reply.content.metric_records[METRICS]
            # Only to the devices whose statistics are in the total: another would keep the total minus its own
            # statistics as "the others'", which are not in it.
            for reply in _ask(grid, evaluate, MessageType.EVALUATE, settings.timeout, pooled_nodes)
        ]
        log(
            INFO,
            "global head %d promoted on %d of %d devices",
            version,
            sum(int(v["promoted"]) for v in verdicts),
            len(verdicts),
        )
    return previous


def _ask(
    grid: Grid, content: RecordDict, message_type: str, timeout: float, nodes: Iterable[int] | None = None
) -> list[Message]:
    """Send ``content`` to ``nodes`` (default: every connected device); return the replies without errors (errors
    are logged)."""
    targets = grid.get_node_ids() if nodes is None else nodes
    messages = [Message(content, dst_node_id=node, message_type=message_type) for node in targets]
    replies = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            log(WARNING, "device %s: %s", reply.metadata.src_node_id, reply.error.reason)
        else:
            replies.append(reply)
    return replies


@dataclass(frozen=True)
class _Reported:
    """What one device reported: label map, feature moments, head learner and fleet policy."""

    classes: list[str]
    moments: Moments
    head_learner: str
    fleet_policy: str


def _reports(grid: Grid, settings: FleetSettings, fingerprint: str) -> list[_Reported]:
    """Label maps, feature moments, head learners and fleet policies of the connected devices on this bundle."""
    deadline = time.monotonic() + settings.timeout
    while len(nodes := list(grid.get_node_ids())) < settings.min_devices:
        if time.monotonic() > deadline:
            raise EdgeftError(
                f"only {len(nodes)} of {settings.min_devices} devices connected within {settings.timeout} s"
            )
        time.sleep(1.0)
    query = RecordDict({CONFIG: ConfigRecord({"fingerprint": fingerprint})})
    messages = [Message(query, dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    reports = []
    for reply in grid.send_and_receive(messages, timeout=settings.timeout):
        if reply.has_error():
            log(WARNING, "device %s sent no report: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        classes, device_fingerprint, parts = read_report(reply.content)
        if device_fingerprint != fingerprint:
            log(WARNING, "device %s runs another bundle; left out", reply.metadata.src_node_id)
            continue
        reports.append(_Reported(classes, parts, reported_learner(reply.content), reported_policy(reply.content)))
    samples = sum(r.moments.count for r in reports)
    log(INFO, "%d devices reported, %d samples in their replay buffers", len(reports), samples)
    return reports


def _starting_head(bundle: Bundle, store: GlobalStore, parts: list[Moments]) -> Parameters:
    """The newest saved global head (normaliser included); else the bundle's head with the pooled normaliser."""
    latest = store.latest()
    if latest is not None:
        return latest.parameters
    head = stored_state(bundle, None).parameters
    names = bundle.manifest.head.normaliser
    pooled = pooled_normaliser(parts)
    if names and pooled is not None:
        head[names["mean"]], head[names["scale"]] = pooled
    elif names:
        log(WARNING, "no device has data yet: the first global head keeps the bundle's identity normaliser")
    return head
