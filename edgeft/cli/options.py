"""Options and arguments several commands share, and the parsers of comma-separated values."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
        "provider) or ort (ONNX Runtime training: pip install 'edgeft\\[ort]', x86_64, Python <= 3.12)."
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


def csv_floats(text: str | None, name: str) -> list[float] | None:
    """``"0.5,0.25"`` as numbers; a usage error naming option ``name`` when one is not a number."""
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers, got '{text}'", param_hint=name) from None


def csv_ints(text: str | None, name: str) -> list[int] | None:
    """``"1,3,224,224"`` as whole numbers."""
    values = csv_floats(text, name)
    return None if values is None else [int(v) for v in values]


def from_command_line(ctx: typer.Context, name: str, value: object) -> object:
    """``value`` if the option was given on the command line, else None."""
    source = ctx.get_parameter_source(name)
    return value if source is not None and source.name == "COMMANDLINE" else None
