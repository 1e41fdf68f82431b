"""``edgeft export`` (a bundle from a pretrained model, or the list of cut points) and ``edgeft export-inference``
(one merged ONNX model of the backbone and the current head)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from edgeft.cli.options import BundleArg, JsonOpt, StateOpt, csv_floats, csv_ints, from_command_line
from edgeft.cli.output import reported


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
    int8_speed_rounds: Annotated[
        int | None,
        typer.Option(
            help="--quantize: rounds timing int8 backbones against the float one on this machine (default 3): "
            "--keep-float auto ships the fastest of those that agree, and the manifest records each one's speed; 0: "
            "not timed, auto keeps the fewest float layers, so that rebuilds are byte-identical.",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Cut the head off MODEL, attach a new trainable head, write a validated bundle."""
    from edgeft.bundle import Defaults
    from edgeft.export import ExportConfig, export_bundle

    shape = csv_ints(input_shape, "--input-shape")
    if quantize is None:  # int8-only options set in a config file or the environment do not apply to float exports
        calibration = from_command_line(ctx, "calibration", calibration)
        keep_float = from_command_line(ctx, "keep_float", keep_float)
        target_cpu = from_command_line(ctx, "target_cpu", target_cpu)
        int8_fallback = from_command_line(ctx, "int8_fallback", int8_fallback)
        int8_speed_rounds = from_command_line(ctx, "int8_speed_rounds", int8_speed_rounds)
    float_layers = _keep_float(keep_float)
    if (model is None) == (torch_factory is None):
        raise typer.BadParameter("give an ONNX MODEL or --torch package.module:factory (one of them)")
    if torch_factory is not None and shape is None:
        raise typer.BadParameter("--torch needs --input-shape, e.g. 1,3,224,224", param_hint="--input-shape")
    if list_cuts:
        with reported(ctx):
            _print_cuts(model, torch_factory, shape, output)
        return
    if out is None:
        raise typer.BadParameter("missing --out (the bundle directory to write)", param_hint="--out")
    image_options = {
        "color": color,
        "scale": pixel_scale,
        "mean": csv_floats(mean, "--mean"),
        "std": csv_floats(std, "--std"),
    }
    with reported(ctx):
        source, example = _export_source(model, torch_factory, shape)
        config = ExportConfig(
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
            int8_speed_rounds=int8_speed_rounds,
            force=force,
        )
        bundle = export_bundle(config)
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
            typer.echo(f"backbone quantised: {quantization_summary(m.quantization)}")


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


def quantization_summary(record: dict) -> str:
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
        f"mean cosine {v['mean_cosine']:.4f} to the float features{probe}{_speed(record)}{_probe_rule(record)}"
    )


def _speed(record: dict) -> str:
    """Text like '; at export 1.8x the float backbone's speed (CPU time, x86-exact/onnxruntime-1.32.0), the
    fastest of 3 agreeing candidates timed'."""
    speed = record.get("speed")
    if not speed:
        return ""
    choice = record.get("float_layers", {}).get("speed_choice")
    timed = len(choice["candidates"]) if choice else 0
    chosen = f", the fastest of {timed} agreeing candidates timed" if timed > 1 else ""
    return (
        f"; at export {speed['int8_over_float_cpu_time']}x the float backbone's speed (CPU time, {speed['cpu']})"
        f"{chosen}"
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
    """The tensors MODEL can be cut at, one tab-separated line each, the detected head marked."""
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


def export_inference(
    ctx: typer.Context,
    bundle: BundleArg,
    state: StateOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")],
    as_json: JsonOpt = False,
) -> None:
    """Write one ONNX model (backbone + current head) that runs in plain onnxruntime."""
    from edgeft.runtime.adapter import Adapter
    from edgeft.runtime.merge import write_merged_model

    with reported(ctx):
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
