"""The fleet's Flower ServerApp: pool a normaliser, align classes, run federated rounds, save each global head.

Run config (``flwr run ... --run-config``): ``bundle`` (the devices' bundle, as the server sees it), ``out`` (the
server's fleet folder), ``rounds``, ``min-devices``, ``strategy`` (``fedavg`` or ``fedadam``), ``server-lr``
(FedAdam's step), ``epochs``, ``batch-size``, ``lr`` and ``seed`` (local training), ``timeout`` (seconds to wait
for devices and replies).
"""

from __future__ import annotations

import time
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
from edgeft.fleet.records import CONFIG, from_record, read_report, to_record
from edgeft.fleet.store import GlobalStore
from edgeft.runtime.trainer import Parameters, stored_state

app = ServerApp()
STRATEGIES = ("fedavg", "fedadam")


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

    @classmethod
    def from_run_config(cls, config: dict) -> FleetSettings:
        """Read the run config; bundle and out are required, training options default to the bundle's."""
        if not config.get("bundle") or not config.get("out"):
            raise EdgeftError('the run config needs bundle="PATH" and out="FOLDER" (flwr run ... --run-config)')
        strategy = str(config.get("strategy", "fedavg"))
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
    classes = extend_registry(store.registry(), [names for names, _ in reports], bundle.manifest.head.num_outputs)
    store.save_registry(classes)
    start = _starting_head(bundle, store, [parts for _, parts in reports])
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
        store.save(first + server_round - 1, from_record(arrays), classes, {"round": server_round})
        return MetricRecord({"version": first + server_round - 1})

    _strategy(settings).start(
        grid,
        to_record(start),
        num_rounds=settings.rounds,
        timeout=settings.timeout,
        train_config=train_config,
        evaluate_config=ConfigRecord({**shared, "first-version": first}),
        evaluate_fn=save,
    )
    return store


def _strategy(settings: FleetSettings) -> Strategy:
    nodes = {
        "min_train_nodes": settings.min_devices,
        "min_evaluate_nodes": settings.min_devices,
        "min_available_nodes": settings.min_devices,
    }
    if settings.strategy == "fedadam":
        return FedAdam(eta=settings.server_lr, **nodes)
    return FedAvg(**nodes)


def _reports(grid: Grid, settings: FleetSettings, fingerprint: str) -> list[tuple[list[str], Moments]]:
    """Label maps and feature moments of the connected devices that run this bundle."""
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
        reports.append((classes, parts))
    log(INFO, "%d devices reported, %d samples in their replay buffers", len(reports), sum(p.count for _, p in reports))
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
