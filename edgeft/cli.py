"""The ``edgeft`` command line: thin commands over the Python API.

Exit codes: 0 success; 1 an error edgeft explains (bad file, bad bundle, state in use, ...);
2 a usage error (unknown option, missing argument); 70 an unexpected internal error (a bug: rerun
with --debug and report the traceback).
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from edgeft import __version__
from edgeft.errors import EdgeftError
from edgeft.fleet.cli import fleet
from edgeft.runtime import guard
from edgeft.runtime.attempts import KEEP_ERRORS, MAX_ATTEMPTS
from edgeft.runtime.budget import detect_budget
from edgeft.runtime.learn_options import LearnOptions
from edgeft.runtime.limits import MAX_ARRIVAL_SAMPLES, ArrivalLimits
from edgeft.runtime.schedule import SCHEDULES
from edgeft.runtime.slda import DEFAULT_SHRINKAGE
from edgeft.runtime.store import KEEP_VERSIONS

if TYPE_CHECKING:
    from edgeft.runtime.watch import EntryPolicy

app = typer.Typer(
    help="Fine-tune a frozen model's new head on edge devices, with any onnxruntime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"auto_envvar_prefix": "EDGEFT"},
)
config_app = typer.Typer(help="Show the configuration a command would run with.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(fleet, name="fleet")
inbox_app = typer.Typer(
    help="See and steer a watch inbox: entries waiting, retrying and quarantined (with reasons).", no_args_is_help=True
)
app.add_typer(inbox_app, name="inbox")

EXIT_ERROR = 1
EXIT_INTERNAL = 70
_debug = {"on": False}
_output = {"quiet": False, "verbose": False}

BundleArg = Annotated[Path, typer.Argument(help="Bundle directory (from edgeft export).")]
StateOpt = Annotated[Path, typer.Option("--state", "-s", help="State directory of this device (created if missing).")]
EpOpt = Annotated[
    str,
    typer.Option(
        "--provider",
        "--ep",
        help="Execution provider(s) for the backbone and the train step: auto, cpu, cuda, any provider name the "
        "installed onnxruntime offers, or a comma-separated list in order of preference.",
    ),
]
TrainerOpt = Annotated[
    str,
    typer.Option(
        help="auto (the portable ONNX trainer when the bundle carries it), onnx (plain onnxruntime, any CPU or "
        "provider) or ort (ONNX Runtime training: pip install 'edgeft[ort]', x86_64, Python <= 3.12)."
    ),
]
HeadLearnerOpt = Annotated[
    str,
    typer.Option(
        help="How the head learns: sgd (epochs of the train step over the arrival and replay), slda (streaming LDA: "
        "class means and one shared covariance, one pass, no replay), ncm (nearest class mean) or slda+sgd (the "
        "LDA head, then sgd). slda/ncm/slda+sgd need a linear single-label head."
    ),
]
ShrinkageOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=1.0,
        help="slda: covariance shrinkage toward its mean variance (0..1; the paper's 1e-4 overfits below ~D samples).",
    ),
]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, help="Intra-op threads (default: ORT's choice).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
KeepOpt = Annotated[
    int, typer.Option(min=1, help="How many committed versions stay on disk (and can be rolled back to).")
]
InboxOpt = Annotated[
    Path, typer.Option("--inbox", "-i", envvar="EDGEFT_INBOX", help="The inbox folder that adapt --watch learns from.")
]


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    typer.echo(f"edgeft: error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def _reported() -> Iterator[None]:
    """Turn EdgeftError into one line on stderr and exit 1; anything else into exit 70 (traceback with --debug)."""
    try:
        yield
    except EdgeftError as exc:
        raise _fail(str(exc)) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        if _debug["on"]:
            raise
        raise _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)", EXIT_INTERNAL) from None


def _warning_line(message: Warning | str, *_: object, **__: object) -> str:
    """Warnings (e.g. an int8 bundle falling back to its float backbone) as one ``edgeft: warning:`` line."""
    return f"edgeft: warning: {message}\n"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeft {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", envvar="EDGEFT_CONFIG", help="TOML file of option defaults, one [command] table each."
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also debug events (watch mode).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of unexpected errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """edgeft: export a bundle on a workstation, adapt its head on the device, predict."""
    _debug["on"] = debug
    _output.update(quiet=quiet, verbose=verbose)
    warnings.formatwarning = _warning_line
    if config is not None:
        from edgeft.service.config import load_config

        with _reported():
            ctx.default_map = load_config(config, ctx.command.commands)


def _csv_floats(text: str | None, name: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got '{text}'", param_hint=name) from None


def _csv_ints(text: str | None, name: str) -> list[int] | None:
    values = _csv_floats(text, name)
    return None if values is None else [int(v) for v in values]


@app.command()
def export(
    ctx: typer.Context,
    model: Annotated[Path | None, typer.Argument(help="Pretrained ONNX model (or use --torch).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Bundle directory to write.")] = None,
    list_cuts: Annotated[
        bool, typer.Option(help="List the tensors MODEL can be cut at, with shapes, and exit.")
    ] = False,
    torch_factory: Annotated[
        str | None, typer.Option("--torch", help="PyTorch model: package.module:factory returning an nn.Module.")
    ] = None,
    classes: Annotated[str | None, typer.Option(help="New class (or target) names, comma-separated.")] = None,
    num_classes: Annotated[int | None, typer.Option(min=2, help="Number of new classes (named 0..N-1).")] = None,
    max_classes: Annotated[
        int | None, typer.Option(min=2, help="Head outputs to reserve; new label names take free ones on the device.")
    ] = None,
    cut: Annotated[str | None, typer.Option(help="Cut at this tensor instead of finding the head.")] = None,
    remove_layers: Annotated[
        int | None, typer.Option(min=1, help="Cut off the last N layers with weights instead of finding the head.")
    ] = None,
    output: Annotated[str | None, typer.Option(help="Model output to follow when it has several.")] = None,
    input_shape: Annotated[
        str | None, typer.Option(help="Concrete input shape for validation (and --torch), e.g. 1,3,224,224.")
    ] = None,
    pool: Annotated[str | None, typer.Option(help="N-D features to vectors: avg, max, cls or flatten.")] = None,
    head: Annotated[str, typer.Option(help="New head: linear, or mlp:H1,H2 (hidden layer sizes).")] = "linear",
    activation: Annotated[str, typer.Option(help="mlp head: relu, gelu or silu.")] = "relu",
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="mlp head: dropout after each hidden layer.")] = 0.0,
    unfreeze_from: Annotated[
        str | None, typer.Option(help="Also train the original layers after this tensor (up to the cut).")
    ] = None,
    unfreeze_last: Annotated[
        int | None, typer.Option(min=1, help="Also train the last K original layers with weights before the cut.")
    ] = None,
    keep_head: Annotated[bool, typer.Option(help="Start the new head from the original classifier's weights.")] = False,
    task: Annotated[str, typer.Option(help="classification, multilabel or regression.")] = "classification",
    loss: Annotated[str | None, typer.Option(help="regression: mse (default) or l1.")] = None,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd.")] = "adamw",
    weight_decay: Annotated[float, typer.Option(min=0.0, help="AdamW weight decay, fixed in the artifacts.")] = 0.0,
    momentum: Annotated[
        float, typer.Option(min=0.0, max=0.999, help="sgd: heavy-ball momentum (portable trainer only).")
    ] = 0.0,
    ort_artifacts: Annotated[
        bool | None,
        typer.Option(
            "--ort-artifacts/--no-ort-artifacts",
            help="Also write ONNX Runtime training artifacts (--trainer ort); default: when ORT training is installed.",
        ),
    ] = None,
    color: Annotated[
        str | None, typer.Option(help="Image files: L or RGB (default from the input's channels).")
    ] = None,
    pixel_scale: Annotated[float, typer.Option(help="Image files: multiply pixels (0..255) by this.")] = 1.0 / 255.0,
    mean: Annotated[str | None, typer.Option(help="Image files: per-channel mean subtracted after scaling.")] = None,
    std: Annotated[str | None, typer.Option(help="Image files: per-channel std divided by after the mean.")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Default epochs per update, recorded in the manifest.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Default batch size.")] = 16,
    lr: Annotated[float, typer.Option(min=0.0, help="Default learning rate.")] = 1e-3,
    replay_per_class: Annotated[int, typer.Option(min=0, help="Default replay buffer size per class.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the new head's initial weights.")] = 0,
    quantize: Annotated[
        str | None, typer.Option(help="Quantise the frozen backbone: int8 (static, needs --calibration).")
    ] = None,
    calibration: Annotated[
        Path | None, typer.Option(help="--quantize: calibration samples (.npz/.csv/.jsonl, folder or image folders).")
    ] = None,
    keep_float: Annotated[
        str | None,
        typer.Option(
            help="--quantize: weight layers (Conv/Gemm/MatMul) from the input kept float: auto, the default (as few "
            "as bring the int8 features to mean cosine 0.995, within a quarter of the compute), or a number "
            "(0: all int8; fewer than the backbone's weight layers)."
        ),
    ] = None,
    target_cpu: Annotated[
        str | None,
        typer.Option(
            help="--quantize: the device CPU: auto (the default: the kind of CPU the export runs on, found by "
            "running ORT's int8 kernel); vnni (x86 with AVX-512 VNNI) or arm64 keep full 8-bit weights; avx2 (x86 "
            "without VNNI) uses 7-bit weights that its int8 kernels cannot saturate, and that hold on every CPU."
        ),
    ] = None,
    int8_fallback: Annotated[
        bool | None,
        typer.Option(
            "--int8-fallback/--no-int8-fallback",
            help="--quantize: also ship the float backbone (the default; the bundle grows by its size), which "
            "devices whose int8 kernels fail the bundle's self-check use instead; without it they refuse the bundle.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cut the head off MODEL, attach a new trainable head, write a validated bundle."""
    from edgeft.bundle import Defaults
    from edgeft.export import export_bundle

    shape = _csv_ints(input_shape, "--input-shape")
    if quantize is None:  # int8-only options set in a config file or the environment do not apply to float exports
        calibration = _from_command_line(ctx, "calibration", calibration)
        keep_float = _from_command_line(ctx, "keep_float", keep_float)
        target_cpu = _from_command_line(ctx, "target_cpu", target_cpu)
        int8_fallback = _from_command_line(ctx, "int8_fallback", int8_fallback)
    float_layers = _keep_float(keep_float)
    if (model is None) == (torch_factory is None):
        raise typer.BadParameter("give an ONNX MODEL or --torch package.module:factory (one of them)")
    if torch_factory is not None and shape is None:
        raise typer.BadParameter("--torch needs --input-shape, e.g. 1,3,224,224", param_hint="--input-shape")
    if list_cuts:
        with _reported():
            _print_cuts(model, torch_factory, shape, output)
        return
    if out is None:
        raise typer.BadParameter("missing --out (the bundle directory to write)", param_hint="--out")
    image_options = {
        "color": color,
        "scale": pixel_scale,
        "mean": _csv_floats(mean, "--mean"),
        "std": _csv_floats(std, "--std"),
    }
    with _reported():
        source, example = _export_source(model, torch_factory, shape)
        bundle = export_bundle(
            source,
            out,
            classes=classes.split(",") if classes else None,
            num_classes=num_classes,
            max_classes=max_classes,
            cut=cut,
            remove_layers=remove_layers,
            output=output,
            input_shape=shape,
            example_input=example,
            pool=pool,
            head=head,
            activation=activation,
            dropout=dropout,
            unfreeze_from=unfreeze_from,
            unfreeze_last=unfreeze_last,
            keep_head=keep_head,
            task=task,
            loss=loss,
            optimizer=optimizer,
            weight_decay=weight_decay,
            momentum=momentum,
            ort_artifacts=ort_artifacts,
            preprocessing={k: v for k, v in image_options.items() if v is not None},
            defaults=Defaults(
                epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, replay_per_class=replay_per_class
            ),
            seed=seed,
            quantize=quantize,
            calibration=calibration,
            keep_float=float_layers,
            target_cpu=target_cpu,
            float_fallback=int8_fallback,
            force=force,
        )
        m = bundle.manifest
        if as_json:
            typer.echo(json.dumps({"bundle": str(bundle.path), "manifest": json.loads(m.to_json())}))
            return
        typer.echo(
            f"wrote {bundle.path}: cut at '{m.source['cut_tensor']}' ({m.head.feature_dim} features), "
            f"new head for {len(m.classes)} classes ({m.head.num_outputs} outputs, {m.head.kind}, {m.head.task}); "
            f"backbone matches the original (max abs diff {m.validation['cut_max_abs_diff']:.2g})"
        )
        if m.quantization:
            typer.echo(f"backbone quantised: {_quantization_summary(m.quantization)}")


def _from_command_line(ctx: typer.Context, name: str, value: object) -> object:
    """``value`` if the option was given on the command line, else None."""
    source = ctx.get_parameter_source(name)
    return value if source is not None and source.name == "COMMANDLINE" else None


def _keep_float(value: str | None) -> int | str | None:
    """--keep-float: None, "auto" or a whole number (export_bundle checks the range)."""
    from edgeft.export.float_prefix import AUTO

    if value is None or value == AUTO:
        return value
    try:
        return int(value)
    except ValueError:
        message = f"takes {AUTO} or a number of layers, not '{value}'"
        raise typer.BadParameter(message, param_hint="--keep-float") from None


def _quantization_summary(record: dict) -> str:
    """One line: scheme, size, calibration and how well the int8 features agree with the float ones."""
    v = record["validation"]
    probe = (
        f", linear probe {v['probe_accuracy_int8']:.3f} (float {v['probe_accuracy_float']:.3f})"
        if "probe_accuracy_int8" in v
        else ""
    )
    return (
        f"{record['scheme']} {record['format']}, {record['backbone_bytes'] / 1e6:.1f} MB "
        f"(float {record['float_backbone']['bytes'] / 1e6:.1f} MB), calibrated on {record['calibration']['samples']} "
        f"samples{_float_layers(record.get('float_layers'))}; on {v['held_out_samples']} held-out samples "
        f"mean cosine {v['mean_cosine']:.4f} to the float features{probe}{_probe_rule(record)}"
    )


def _probe_rule(record: dict) -> str:
    """Text like '; for vnni CPUs, self-check: probe mean cosine >= 0.9866'; nothing for exports before the probe."""
    if "probe" not in record:
        return ""
    fallback = record["float_backbone"].get("file")
    otherwise = f"else the float backbone ({fallback}) is used" if fallback else "else the bundle is refused"
    return (
        f"; for {record['target_cpu']} CPUs, self-check on first use: {record['probe']['samples']} probe samples "
        f"must reach mean cosine {record['probe']['min_mean_cosine']} (`edgeft check`), {otherwise}"
    )


def _float_layers(record: dict | None) -> str:
    """Text like ', first 5 weight layers float (11% of the compute)'; nothing when all layers are int8."""
    if not record or not record["count"]:
        return ""
    count, share = record["count"], record["compute_share"]
    return f", first {count} weight layer{'' if count == 1 else 's'} float ({share:.0%} of the compute)"


def _export_source(model: Path | None, torch_factory: str | None, shape: list[int] | None):  # noqa: ANN202
    """(model file or nn.Module, example input or None)."""
    if torch_factory is None:
        return model, None
    from edgeft.export.torch_source import example_from_shape, module_from_spec

    return module_from_spec(torch_factory), example_from_shape(shape)


def _print_cuts(model: Path | None, torch_factory: str | None, shape: list[int] | None, output: str | None) -> None:
    from edgeft.export.cuts import list_cuts
    from edgeft.export.sources import load_onnx

    if torch_factory is None:
        onnx_model = load_onnx(model)
    else:
        from edgeft.export.torch_source import torch_to_onnx

        source, example = _export_source(model, torch_factory, shape)
        with tempfile.TemporaryDirectory() as tmp:
            torch_to_onnx(source, example, Path(tmp) / "model.onnx")
            onnx_model = load_onnx(Path(tmp) / "model.onnx")
    typer.echo("tensor\tshape\top\tlayers after")
    for point in list_cuts(onnx_model, output):
        mark = "\t<- head found here" if point.detected_head else ""
        typer.echo(f"{point.tensor}\t{point.shape}\t{point.op}\t{point.layers_after}{mark}")


def _load_samples(path: Path, bundle, need_labels: bool):  # noqa: ANN001, ANN202
    from edgeft.runtime.sources import read_path

    return read_path(path, bundle.manifest, need_labels)


@app.command()
def adapt(
    bundle: BundleArg,
    state: StateOpt,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data", "-d", help="Data to learn now: .npz/.csv/.jsonl file, folder, or - for JSON lines on stdin."
        ),
    ] = None,
    watch: Annotated[
        Path | None, typer.Option(help="Inbox folder: learn each entry dropped into it, until SIGTERM/SIGINT.")
    ] = None,
    once: Annotated[bool, typer.Option(help="With --watch: learn what is in the inbox now, then exit.")] = False,
    poll: Annotated[float, typer.Option(min=0.05, help="With --watch: seconds between inbox scans.")] = 1.0,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per arrival (default: bundle's).")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Batch size (default: bundle's).")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0, help="Learning rate (default: bundle's).")] = None,
    schedule: Annotated[str, typer.Option(help="Learning-rate schedule per arrival: constant or cosine.")] = "constant",
    seed: Annotated[int | None, typer.Option(help="Shuffling seed (default: bundle's).")] = None,
    replay_per_class: Annotated[
        int | None, typer.Option(min=0, help="Replay buffer size per class (default: bundle's; 0: off).")
    ] = None,
    replay_mb: Annotated[float | None, typer.Option(min=0.0, help="Cap on the replay buffer's memory, MiB.")] = None,
    holdout_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.9, help="Share of each arrival kept as holdout, never trained on.")
    ] = guard.HOLDOUT_FRACTION,
    holdout: Annotated[
        Path | None, typer.Option(help="A fixed labelled holdout set instead of a share of each arrival.")
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Largest holdout-accuracy (multi-label: micro-F1) drop a new head may have and still be promoted; "
            "for regression, the largest relative rise of the error.",
        ),
    ] = guard.TOLERANCE,
    no_guard: Annotated[bool, typer.Option("--no-guard", help="Promote every new head; hold nothing out.")] = False,
    tune_thresholds: Annotated[
        bool, typer.Option(help="Multi-label: tune each label's threshold on the holdout after each promotion.")
    ] = False,
    relearn: Annotated[bool, typer.Option(help="Learn inputs even if the journal says they were learned.")] = False,
    eval_data: Annotated[
        Path | None, typer.Option("--eval", help="Labelled held-out data to report accuracy on.")
    ] = None,
    log_format: Annotated[
        str, typer.Option(help="Watch-mode events: auto (text on a terminal, else JSON lines), json or text.")
    ] = "auto",
    log_file: Annotated[
        Path | None, typer.Option(help="Write watch-mode events to this file (rotated at 10 MiB, 3 kept).")
    ] = None,
    metrics_file: Annotated[
        Path | None, typer.Option(help="Prometheus textfile to rewrite atomically after every update.")
    ] = None,
    memory_budget: Annotated[
        str,
        typer.Option(
            help="Memory this process may use: a size (1500M, 1.5G) or auto (the cgroup's memory limit, else "
            "RLIMIT_AS, else half of MemAvailable). Arrivals that would not fit are refused up front."
        ),
    ] = "auto",
    max_arrival_samples: Annotated[
        int, typer.Option(min=0, help="Most samples one arrival may hold; larger ones are refused (0: no cap).")
    ] = MAX_ARRIVAL_SAMPLES,
    max_attempts: Annotated[
        int,
        typer.Option(
            min=1,
            max=KEEP_ERRORS,
            help="With --watch: an entry that killed the learner (or failed alike) this often is quarantined.",
        ),
    ] = MAX_ATTEMPTS,
    keep_versions: KeepOpt = KEEP_VERSIONS,
    ep: EpOpt = "auto",
    trainer: TrainerOpt = "auto",
    head_learner: HeadLearnerOpt = "sgd",
    shrinkage: ShrinkageOpt = DEFAULT_SHRINKAGE,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Learn the head from new labelled data (--data now, or --watch an inbox) and commit versions to STATE."""
    from edgeft.bundle import Bundle
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.sources import concatenated
    from edgeft.runtime.watch import EntryPolicy

    if (data is None) == (watch is None):
        raise typer.BadParameter("give exactly one of --data or --watch", param_hint="--data/--watch")
    if schedule not in SCHEDULES:
        raise typer.BadParameter(f"choose one of {', '.join(SCHEDULES)}", param_hint="--schedule")
    if log_format not in ("auto", "json", "text"):
        raise typer.BadParameter("choose one of auto, json, text", param_hint="--log-format")
    policy = guard.GuardPolicy(
        holdout_fraction=0.0 if holdout else holdout_fraction, tolerance=tolerance, enabled=not no_guard
    )
    learn_options = LearnOptions(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    try:
        budget = detect_budget(memory_budget)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--memory-budget") from None
    entries = EntryPolicy(budget, max_arrival_samples or None, max_attempts)
    with _reported():
        loaded = Bundle.load(bundle)  # verified once, for the holdout's reader and the Adapter
        fixed = concatenated(_load_samples(holdout, loaded, need_labels=True), str(holdout)) if holdout else None
        with Adapter(
            loaded,
            state,
            ep=ep,
            threads=threads,
            replay_per_class=replay_per_class,
            replay_mb=replay_mb,
            policy=policy,
            holdout=fixed,
            schedule=schedule,
            trainer=trainer,
            keep_versions=keep_versions,
            head_learner=head_learner,
            shrinkage=shrinkage,
            tune_thresholds=tune_thresholds,
        ) as adapter:
            if watch is not None:
                logs = {"format": log_format, "file": log_file, "metrics": metrics_file}
                _watch(adapter, watch, once, poll, learn_options, as_json, logs, entries)
            else:
                _adapt_once(adapter, data or [], relearn, learn_options, eval_data, as_json, entries.limits())
                if metrics_file is not None:
                    from edgeft.service.metrics import write_textfile

                    write_textfile(metrics_file, adapter.store.root)


def _adapt_once(  # noqa: ANN202
    adapter,  # noqa: ANN001
    data: list[str],
    relearn: bool,
    learn_options: LearnOptions,
    eval_data: Path | None,
    as_json: bool,
    limits: ArrivalLimits,
):
    from edgeft.progress import progress_bar
    from edgeft.runtime.arrivals import learn_arrival, read_arrival

    held_out = _load_samples(eval_data, adapter.bundle, need_labels=True) if eval_data else []
    before = _accuracy(adapter, held_out)
    with progress_bar(f"learning on {adapter.placement.name}", None, enabled=not _output["quiet"]) as advance:
        arrival = read_arrival(adapter, data, sys.stdin.buffer, relearn, limits, advance)
        outcome = learn_arrival(adapter, arrival, learn_options, advance)
    after = _accuracy(adapter, held_out)
    result = outcome.result
    report = {
        "version": adapter.version,
        "learned": result is not None,
        "samples": result.samples if result else 0,
        "held_out": result.held_out if result else 0,
        "epochs": result.epochs if result else 0,
        "loss": result.loss if result else None,
        "promoted": result.promoted if result else None,
        "reason": result.reason if result else None,
        "prequential_accuracy": result.prequential_accuracy if result else None,
        "new_classes": result.new_classes if result else [],
        "skipped": outcome.skipped,
        "pending": outcome.pending,
        "provider": adapter.placement.name,
        "trainer": adapter.trainer_kind,
        "head_learner": adapter.head_learner,
        "metric": adapter.metric,
        "accuracy_before": before,
        "accuracy_after": after,
    }
    if as_json:
        typer.echo(json.dumps(report))
    else:
        for skipped in outcome.skipped:
            typer.echo(f"skipped {skipped}; pass --relearn to learn it again")
        if result is not None:
            verdict = "promoted" if result.promoted else f"refused, the previous head stays current: {result.reason}"
            typer.echo(
                f"learned {result.samples} samples ({result.held_out} kept as holdout, {result.epochs} epochs, "
                f"loss {_number(result.loss)}) on {adapter.placement.name}; version {result.version} {verdict}"
            )
            if result.new_classes:
                typer.echo(f"new classes: {', '.join(result.new_classes)}")
        elif not outcome.pending:
            typer.echo(f"nothing new to learn; version {adapter.version} stays current")
        if before is not None:
            typer.echo(f"held-out {adapter.metric}: {before:.3f} before, {after:.3f} after")
    if outcome.pending:
        raise _fail(
            f"{', '.join(data or [])}: {outcome.pending} samples with unknown label(s) {outcome.overflow[:5]} do not "
            f"fit the head's {adapter.capacity} outputs; they were not learned and are kept in {outcome.pending_path}"
        )


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _watch(
    adapter,  # noqa: ANN001
    inbox_dir: Path,
    once: bool,
    poll: float,
    learn_options: LearnOptions,
    as_json: bool,
    logs: dict,
    entries: EntryPolicy,
) -> None:
    from edgeft.runtime.int8_check import describe as describe_int8
    from edgeft.service.daemon import run_watch
    from edgeft.service.logs import event_logger
    from edgeft.service.notify import Notifier

    level = "warning" if _output["quiet"] else "debug" if _output["verbose"] else "info"
    log_format = "json" if as_json and logs["format"] == "auto" else logs["format"]
    log = event_logger(log_format, logs["file"], level=level)
    log(
        "started",
        bundle=str(adapter.bundle.path),
        state=str(adapter.store.root),
        provider=adapter.placement.name,
        guard=adapter.policy.__dict__,
        memory_budget=entries.budget.describe(),
        max_arrival_samples=entries.max_samples,
        max_attempts=entries.max_attempts,
        backbone=adapter.backbone_path.name,
        int8_check=adapter.int8_check,
    )
    if adapter.int8_check is not None:  # int8 bundles: the self-check's verdict on this CPU (a warning if it failed)
        event = "int8_checked" if adapter.int8_check["ok"] else "int8_fallback"
        log(event, reason=describe_int8(adapter.int8_check), **adapter.int8_check)
    summary = run_watch(
        adapter,
        inbox_dir,
        log=log,
        notifier=Notifier(),
        metrics_file=logs["metrics"],
        once=once,
        poll_seconds=poll,
        options=learn_options,
        policy=entries,
    )
    if as_json:
        typer.echo(json.dumps(summary.__dict__))
    elif not _output["quiet"]:
        typer.echo(
            f"learned {summary.learned}, refused {summary.refused}, skipped {summary.skipped}, "
            f"quarantined {summary.quarantined}, pending samples {summary.pending_samples}; "
            f"version {adapter.version}"
        )
    if summary.errors and once:
        raise typer.Exit(EXIT_ERROR)


def _accuracy(adapter, held_out) -> float | None:  # noqa: ANN001
    """The task's metric (accuracy, micro-F1, MAE or RMSE) of the current head on labelled held-out data."""
    if not held_out:
        return None
    if len(held_out) > 1 and adapter.metric != "accuracy":  # micro-F1 and RMSE do not average over files
        from edgeft.runtime.sources import concatenated

        x, y = concatenated(held_out, ", ".join(s.origin for s in held_out))
        return adapter.score(x, y, "held-out data")
    correct = sum(adapter.score(s.x, s.y, s.origin) * len(s.x) for s in held_out)
    return correct / sum(len(s.x) for s in held_out)


@app.command()
def predict(
    bundle: BundleArg,
    inputs: Annotated[list[Path], typer.Argument(help="Image files, .npy or .npz (x) files.")],
    state: StateOpt,
    top: Annotated[int, typer.Option(min=1, help="How many classes to show per sample.")] = 1,
    ep: EpOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict labels with the current head of the state directory (label sets or values for multi-label and
    regression heads)."""
    from edgeft.progress import progress_bar
    from edgeft.runtime.adapter import Adapter

    with _reported():
        adapter = Adapter(bundle, state, ep=ep, threads=threads)
        loaded = [s for path in inputs for s in _load_samples(path, adapter.bundle, need_labels=False)]
        rows = []
        total = sum(len(s.x) for s in loaded)
        if adapter.metric != "accuracy":
            _predict_targets(adapter, loaded, total, as_json)
            return
        with progress_bar("predicting", total, enabled=not _output["quiet"]) as advance:
            predicted = [(s, adapter.predict_proba_features(adapter.embed(s.x, s.origin, advance))) for s in loaded]
        for samples, probs in predicted:
            for i, p in enumerate(probs):
                order = np.argsort(-p)[:top]
                rows.append(
                    {
                        "input": samples.origin if len(probs) == 1 else f"{samples.origin}#{i}",
                        "label": adapter.classes[int(order[0])],
                        "probability": float(p[order[0]]),
                        "top": [{"label": adapter.classes[int(k)], "probability": float(p[k])} for k in order],
                    }
                )
        if as_json:
            typer.echo(json.dumps({"version": adapter.version, "predictions": rows}))
        else:
            for row in rows:
                shown = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top"])
                typer.echo(f"{row['input']}\t{shown}")


def _predict_targets(adapter, loaded: list, total: int, as_json: bool) -> None:  # noqa: ANN001
    """``predict`` for a multi-label head (label set and per-label scores) or a regression head (values)."""
    from edgeft.progress import progress_bar
    from edgeft.runtime.tasks import prediction, prediction_text

    head, thresholds = adapter.bundle.manifest.head, adapter.thresholds
    rows = []
    with progress_bar("predicting", total, enabled=not _output["quiet"]) as advance:
        for samples in loaded:
            scores = adapter.outputs_features(adapter.embed(samples.x, samples.origin, advance))
            for i, row in enumerate(scores):
                name = samples.origin if len(scores) == 1 else f"{samples.origin}#{i}"
                rows.append({"input": name, **prediction(head, row, thresholds, adapter.classes)})
    if as_json:
        typer.echo(json.dumps({"version": adapter.version, "task": head.task, "predictions": rows}))
    else:
        for row in rows:
            typer.echo(f"{row['input']}\t{prediction_text(row)}")


@app.command("export-inference")
def export_inference(
    bundle: BundleArg,
    state: StateOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")],
    as_json: JsonOpt = False,
) -> None:
    """Write one ONNX model (backbone + current head) that runs in plain onnxruntime."""
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.merge import write_merged_model

    with _reported():
        adapter = Adapter(bundle, state, ep="cpu")
        thresholds = adapter.thresholds.tolist() if adapter.task == "multilabel" else None
        write_merged_model(
            adapter.bundle, adapter.parameters(), adapter.classes, out, thresholds, backbone=adapter.backbone_path
        )
        if as_json:
            typer.echo(json.dumps({"out": str(out), "version": adapter.version, "classes": adapter.classes}))
        else:
            outputs = "'values'" if adapter.task == "regression" else "'logits', 'probabilities'"
            typer.echo(f"wrote {out}: backbone + head version {adapter.version}; outputs {outputs}")


@app.command()
def info(bundle: BundleArg, as_json: JsonOpt = False) -> None:
    """Show a bundle's manifest: input, preprocessing, cut, head, classes, files."""
    from edgeft.bundle import Bundle

    with _reported():
        loaded = Bundle.load(bundle)
        m = loaded.manifest
        if as_json:
            typer.echo(m.to_json().rstrip())
            return
        p = m.preprocessing
        lines = [
            f"bundle      {loaded.path} (format {m.format_version}, made by edgeft {m.producer['version']})",
            f"source      {m.source['file']} (sha256 {m.source['sha256'][:12]}...)",
            f"input       {m.input.name} {m.input.shape} {m.input.dtype}",
            f"images      {p.color} {p.layout}, pixels*{p.scale:g}, mean {p.mean}, std {p.std}"
            + (f"; {p.note}" if p.note else ""),
            f"cut         '{m.source['cut_tensor']}' -> features '{m.feature.name}' [{m.head.feature_dim}]"
            + (f"; unfrozen from '{m.source['freeze_tensor']}'" if m.source.get("freeze_tensor") else ""),
            f"head        {m.head.kind} {m.head.feature_dim} -> {m.head.num_outputs} ({m.head.task}), "
            f"trainable {m.head.trainable}, {m.head.loss}, {m.head.optimizer} (weight decay {m.head.weight_decay:g}"
            + (f", momentum {m.head.momentum:g})" if m.head.momentum else ")"),
            f"trainers    {', '.join(m.head.trainers)}"
            + (f", pool {m.head.pool}" if m.head.pool != "none" else "")
            + (f", hidden {m.head.hidden} {m.head.activation} dropout {m.head.dropout:g}" if m.head.hidden else ""),
            f"defaults    epochs {m.defaults.epochs}, batch {m.defaults.batch_size}, lr {m.defaults.lr}, seed {m.defaults.seed}",
            f"classes     {', '.join(m.classes)}",
            f"validated   cut max abs diff {m.validation['cut_max_abs_diff']:.3g} "
            f"(atol {m.validation['cut_atol']}, rtol {m.validation['cut_rtol']})",
            f"backbone    {_quantization_summary(m.quantization) if m.quantization else 'float'}",
            "files       " + "\n            ".join(f"{name}  {digest[:12]}..." for name, digest in m.files.items()),
        ]
        typer.echo("\n".join(lines))


@app.command()
def check(bundle: BundleArg, as_json: JsonOpt = False) -> None:
    """Run an int8 bundle's probe through its backbone on this CPU; exit 1 when the int8 features disagree and
    the bundle ships no float backbone to fall back to."""
    from edgeft.bundle import Bundle
    from edgeft.runtime.int8_check import check_bundle, describe, refusal

    with _reported():
        loaded = Bundle.load(bundle)
        result = check_bundle(loaded)
        if as_json:
            typer.echo(json.dumps({"bundle": str(loaded.path), "int8_check": result}))
        elif result is None:
            typer.echo(
                f"{loaded.path}: no int8 probe to run (a float backbone, or an int8 export older than the probe)"
            )
        else:
            typer.echo(describe(result))
        if result is not None and result["backbone"] == "none":
            raise refusal(loaded, result)


@app.command()
def status(
    state: StateOpt,
    inbox: Annotated[
        Path | None, typer.Option(help="Also count the watch inbox's waiting, retrying and quarantined entries.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Summarise a device's state: versions, classes, counts, the last arrival, recent accuracy, the learner."""
    from edgeft.service.status import collect_status, format_status

    with _reported():
        summary = collect_status(state, inbox)
        typer.echo(json.dumps(summary) if as_json else format_status(summary))


@app.command("eval")
def eval_command(
    bundle: BundleArg,
    state: StateOpt,
    data: Annotated[Path, typer.Option("--data", "-d", help="Labelled test data (any format adapt reads).")],
    per_version: Annotated[
        bool, typer.Option("--per-version", help="Also score every retained version's head (overall and per task).")
    ] = False,
    tasks: Annotated[
        bool,
        typer.Option(
            "--tasks",
            help="Split TEST into tasks by the order classes were met: accuracy matrix, average accuracy, "
            "forgetting, backward transfer.",
        ),
    ] = False,
    ep: EpOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy of the current head on TEST (per-class and confusion matrix in --json); continual metrics."""
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.evaluation import evaluate_path
    from edgeft.service.evaluation import format_evaluation

    with _reported():
        adapter = Adapter(bundle, state, ep=ep, threads=threads)
        result = evaluate_path(adapter, data, per_version=per_version, tasks=tasks)
        typer.echo(json.dumps(result) if as_json else format_evaluation(result))


@app.command()
def history(state: StateOpt, as_json: JsonOpt = False) -> None:
    """List every version: time, origin, samples, prequential and holdout accuracy, promoted or refused and why."""
    from edgeft.runtime.versions import collect_history
    from edgeft.service.versions import format_history

    with _reported():
        rows = collect_history(state)
        typer.echo(json.dumps({"versions": rows}) if as_json else format_history(rows))


@app.command()
def rollback(
    bundle: BundleArg,
    state: StateOpt,
    version: Annotated[
        int | None,
        typer.Argument(min=1, help="The version whose head to restore (default: the previous promoted one)."),
    ] = None,
    keep_versions: KeepOpt = KEEP_VERSIONS,
    metrics_file: Annotated[
        Path | None, typer.Option(help="Prometheus textfile to rewrite atomically after the rollback.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Make an earlier version's head (with its replay buffer and holdout) current again, as a new version."""
    from edgeft.runtime.adapter import Adapter

    with _reported():
        with Adapter(bundle, state, ep="cpu", keep_versions=keep_versions) as adapter:
            done = adapter.rollback(version)
            if metrics_file is not None:
                from edgeft.service.metrics import write_textfile

                write_textfile(metrics_file, adapter.store.root)
        report = {
            "version": adapter.version,
            "to": done.target.number,
            "head_source": done.head_source,
            "undone_versions": done.undone_versions,
            "undone_inputs": done.undone_inputs,
        }
        if as_json:
            typer.echo(json.dumps(report))
            return
        typer.echo(
            f"version {adapter.version}: rolled back to version {done.target.number} (head trained at version "
            f"{done.head_source}); undid versions {done.undone_versions or 'none'}"
        )
        if done.undone_inputs:
            typer.echo(
                f"{len(done.undone_inputs)} input(s) learned since stay consumed in the journal (status rolled_back); "
                "learn them again with adapt --relearn"
            )


@inbox_app.command("list")
def inbox_list(inbox: InboxOpt, as_json: JsonOpt = False) -> None:
    """List the entries waiting, retrying (tried before without finishing) and quarantined, with reasons."""
    from edgeft.service.queue import collect_inbox, format_inbox

    with _reported():
        listing = collect_inbox(inbox)
        typer.echo(json.dumps(listing) if as_json else format_inbox(listing))


@inbox_app.command("requeue")
def inbox_requeue(
    name: Annotated[str, typer.Argument(help="The entry's name in INBOX/quarantine/.")],
    inbox: InboxOpt,
    new_name: Annotated[str | None, typer.Option("--as", help="Put it back under this name (default: NAME).")] = None,
) -> None:
    """Move a quarantined entry back into the inbox, where it is learned with a fresh set of attempts."""
    from edgeft.runtime.inbox import requeue

    with _reported():
        target = requeue(inbox, name, new_name)
        typer.echo(f"requeued {name} as {target}; the watch learns it with fresh attempts")


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    command: Annotated[str, typer.Argument(help="The command whose options to show, e.g. adapt.")] = "adapt",
    as_json: JsonOpt = False,
) -> None:
    """Print each option of COMMAND with its effective value and where it comes from (--config, env, default)."""
    from edgeft.service.config import effective

    root = ctx.find_root()
    target = root.command.commands.get(command)
    if target is None or command == "config":
        raise typer.BadParameter(f"no command '{command}'", param_hint="COMMAND")
    rows = effective(target, root)
    if as_json:
        typer.echo(json.dumps(rows))
        return
    for row in rows:
        env = f"  (env {row['envvar']})" if row["envvar"] else ""
        typer.echo(f"{row['name']:<20} {row['value']!s:<30} {row['source']}{env}")


def _artifacts_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "artifacts"


@app.command()
def demo(
    state: Annotated[
        Path | None, typer.Option("--state", "-s", help="Keep the state here (default: a temp dir).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per arriving chunk (default: bundle's).")] = None,
    ep: EpOpt = "auto",
    trainer: TrainerOpt = "auto",
    head_learner: HeadLearnerOpt = "sgd",
    shrinkage: ShrinkageOpt = DEFAULT_SHRINKAGE,
    threads: ThreadsOpt = None,
) -> None:
    """The main job: adapt the shipped default bundle on the demo stream, report held-out accuracy."""
    from edgeft.progress import progress_bar
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.labels import encode_known
    from edgeft.runtime.sources import read_path

    root = _artifacts_dir()
    bundle_dir, stream_dir, test_file = root / "default", root / "demo" / "stream", root / "demo" / "test.npz"
    with _reported():
        if not bundle_dir.is_dir():
            raise EdgeftError(f"the demo needs {root} from the edgeft source tree (install with pip install -e .)")
        workdir = Path(tempfile.mkdtemp(prefix="edgeft-demo-")) if state is None else state
        try:
            options = {"trainer": trainer, "head_learner": head_learner, "shrinkage": shrinkage}
            with Adapter(bundle_dir, workdir, ep=ep, threads=threads, **options) as adapter:
                if adapter.version:
                    raise EdgeftError(f"{workdir} already holds a learned head; give the demo a fresh --state")
                manifest = adapter.bundle.manifest
                chunks = [s for p in sorted(stream_dir.glob("*.npz")) for s in read_path(p, manifest)]
                test = read_path(test_file, manifest)[0]
                test_labels = encode_known(test.y, adapter.classes, test.origin)
                typer.echo(
                    f"edgeft demo: {manifest.source['file']} backbone, {len(adapter.classes)} new classes, "
                    f"{len(chunks)} arriving chunks, {len(test.x)} held-out samples, on {adapter.placement.name}"
                )
                test_features = adapter.embed(test.x, test.origin)

                def accuracy() -> float:
                    return float((adapter.predict_proba_features(test_features).argmax(1) == test_labels).mean())

                before = accuracy()
                typer.echo(f"held-out accuracy before adaptation: {before:.3f}")
                n_epochs = epochs or manifest.defaults.epochs
                work = sum(len(c.x) for c in chunks) + n_epochs * len(chunks)
                with progress_bar("adapting", work, enabled=not _output["quiet"]) as advance:
                    for chunk in chunks:
                        result = adapter.learn(chunk.x, chunk.y, epochs=epochs, origin=chunk.origin, progress=advance)
                        verdict = "promoted" if result.promoted else f"refused ({result.reason})"
                        typer.echo(
                            f"  {Path(chunk.origin).name}: {result.samples} samples ({result.held_out} kept as "
                            f"holdout), loss {_number(result.loss)}, version {result.version} {verdict}, "
                            f"held-out accuracy {accuracy():.3f}"
                        )
                typer.echo(f"held-out accuracy after adaptation: {accuracy():.3f} (before: {before:.3f})")
        finally:
            if state is None:
                shutil.rmtree(workdir, ignore_errors=True)


@app.command()
def report(
    bundle: BundleArg,
    state: Annotated[Path, typer.Option("--state", "-s", help="State directory to report on (read only).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write: .html (figure and tables) or .png.")],
    eval_data: Annotated[
        Path | None,
        typer.Option("--eval", help="Labelled data for per-class accuracy (default: the state's holdout reservoir)."),
    ] = None,
    ep: EpOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw STATE's learning curve, versions and promotions, per-class accuracy and confusion matrix."""
    from edgeft.report import write_report

    with _reported():
        shown = write_report(bundle, state, out, eval_data, ep=ep, threads=threads)
        if as_json:
            evaluation = shown.evaluation
            typer.echo(
                json.dumps(
                    {
                        "out": str(out),
                        "version": shown.version,
                        "arrivals": len(shown.arrivals),
                        "refused": len(shown.refused),
                        "accuracy": evaluation.accuracy if evaluation else None,
                        "evaluated_on": evaluation.source if evaluation else None,
                    }
                )
            )
            return
        typer.echo(
            f"wrote {out}: {len(shown.arrivals)} arrivals ({len(shown.refused)} refused), version {shown.version}"
            + (f", accuracy {shown.evaluation.accuracy:.3f} on {shown.evaluation.source}" if shown.evaluation else "")
        )


def run() -> None:
    """Console-script entry point; a closed pipe (``edgeft predict ... | head``) ends it quietly."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app(prog_name="edgeft")


if __name__ == "__main__":
    sys.exit(run())
