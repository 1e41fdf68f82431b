"""``ExportConfig``: every option of an export, with its default, checked in one place.

``export_bundle(config)`` reads nothing else. A config made of files and plain values (an ONNX path, a calibration
path) round-trips through JSON (``to_json`` / ``from_json``, with a format version); one holding a torch module,
an example tensor or calibration arrays is for the Python API only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from edgeft.bundle import Defaults, Preprocessing
from edgeft.errors import EdgeftError
from edgeft.export import head as head_graph
from edgeft.export.quantize import check_request

CONFIG_FORMAT_VERSION = 1
TASK_LOSSES = {"classification": ("cross_entropy",), "multilabel": ("bce_with_logits",), "regression": ("mse", "l1")}
OPTIMIZERS = ("adamw", "sgd")
# Fields that hold objects JSON cannot (a torch module, an example tensor, calibration arrays) when not paths.
_PATH_FIELDS = ("model", "out", "calibration")


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how; see ``export_bundle`` for what each option does.

    ``model``: an ONNX file, or a torch.nn.Module with ``example_input``. ``out``: the bundle directory.
    Where to cut: found automatically, ``cut`` (a tensor name) or ``remove_layers`` (layers with weights, counted
    back from ``output``). ``pool`` turns N-D features into vectors; ``head`` is ``linear`` or ``mlp:H1,H2``;
    ``unfreeze_from`` / ``unfreeze_last`` make original layers before the cut trainable too; ``keep_head`` starts
    from the original classifier. ``classes`` names the outputs (or ``num_classes`` numbers them); ``max_classes``
    reserves outputs for classes that do not exist yet. ``quantize="int8"`` quantises the backbone with
    ``calibration`` (a path in a format ``adapt`` reads, an array ``x`` or ``(x, y)``); ``keep_float``,
    ``target_cpu``, ``float_fallback`` and ``int8_speed_rounds`` tune it (edgeft.export.quantize). ``ort_artifacts`` adds ONNX Runtime
    training artifacts (None: when ORT training is installed). Construction raises EdgeftError on an option that
    cannot work, alone or with the others.
    """

    model: str | Path | Any
    out: str | Path
    classes: Sequence[str] | None = None
    num_classes: int | None = None
    max_classes: int | None = None
    cut: str | None = None
    remove_layers: int | None = None
    output: str | None = None
    input_shape: Sequence[int] | None = None
    example_input: Any = None
    pool: str | None = None
    head: str = "linear"
    activation: str = "relu"
    dropout: float = 0.0
    unfreeze_from: str | None = None
    unfreeze_last: int | None = None
    keep_head: bool = False
    task: str = "classification"
    loss: str | None = None
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.0
    ort_artifacts: bool | None = None
    preprocessing: Preprocessing | dict[str, Any] | None = None
    defaults: Defaults | None = None
    seed: int = 0
    quantize: str | None = None
    calibration: str | Path | np.ndarray | tuple[np.ndarray, np.ndarray] | None = None
    keep_float: int | str | None = None
    target_cpu: str | None = None
    float_fallback: bool | None = None
    int8_speed_rounds: int | None = None
    force: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise EdgeftError naming the option(s) when this config cannot export, whatever the model."""
        _ = self.resolved_loss
        _ = self.float_layers
        _ = self.hidden_layers
        if self.activation not in head_graph.ACTIVATIONS:
            choices = ", ".join(head_graph.ACTIVATIONS)
            raise EdgeftError(f"unknown activation '{self.activation}'; choose one of {choices}")
        if not 0.0 <= self.dropout < 1.0:
            raise EdgeftError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.cut is not None and self.remove_layers is not None:
            raise EdgeftError("give either --cut or --remove-layers, not both")
        if not self.derives_classes:
            output_names(self.classes, self.num_classes, self.max_classes, self.task)
        if self.optimizer not in OPTIMIZERS:
            raise EdgeftError(f"unknown optimizer '{self.optimizer}'; choose adamw or sgd")
        if self.optimizer == "sgd" and self.weight_decay:
            raise EdgeftError("the SGD optimizer has no weight decay; use --optimizer adamw or --weight-decay 0")
        if self.momentum and self.optimizer != "sgd":
            raise EdgeftError("--momentum applies to --optimizer sgd (AdamW has its own moments)")
        if self.momentum and self.ort_artifacts:
            raise EdgeftError(
                "ORT training's SGD has no momentum: export with --no-ort-artifacts, or without --momentum"
            )

    @property
    def resolved_loss(self) -> str:
        """``loss``, or the task's default loss when None; EdgeftError for an unknown task or a loss that does not
        fit it."""
        if self.task not in TASK_LOSSES:
            raise EdgeftError(f"unknown task '{self.task}'; choose one of {', '.join(TASK_LOSSES)}")
        allowed = TASK_LOSSES[self.task]
        if self.loss is None:
            return allowed[0]
        if self.loss not in allowed:
            raise EdgeftError(f"loss '{self.loss}' does not fit task '{self.task}'; it takes {' or '.join(allowed)}")
        return self.loss

    @property
    def float_layers(self) -> int | str:
        """``keep_float`` as quantize_backbone takes it, after checking the quantisation options together."""
        return check_request(
            self.quantize,
            self.calibration,
            self.keep_float,
            self.target_cpu,
            self.float_fallback,
            self.int8_speed_rounds,
        )

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """``linear`` -> (), ``mlp:64,32`` -> (64, 32)."""
        if self.head == "linear":
            return ()
        kind, _, sizes = self.head.partition(":")
        try:
            hidden = tuple(int(s) for s in sizes.split(",")) if kind == "mlp" and sizes else ()
        except ValueError:
            hidden = ()
        if not hidden or min(hidden) < 1:
            raise EdgeftError(
                f"unknown head '{self.head}'; use linear or mlp:H1,H2 (hidden layer sizes, e.g. mlp:128,64)"
            )
        return hidden

    @property
    def derives_classes(self) -> bool:
        """True when ``keep_head`` takes the number of outputs from the original classifier (none given here)."""
        return self.keep_head and self.classes is None and self.num_classes is None and self.max_classes is None

    def to_json(self) -> str:
        """The config as stable JSON with its format version; EdgeftError when it holds a torch module, an example
        tensor or calibration arrays (JSON holds paths and plain values only)."""
        data: dict[str, Any] = {"format_version": CONFIG_FORMAT_VERSION}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in _PATH_FIELDS and value is not None:
                if not isinstance(value, (str, os.PathLike)):
                    raise EdgeftError(f"ExportConfig.to_json: '{item.name}' is a {type(value).__name__}, not a path")
                value = str(value)
            elif item.name == "example_input" and value is not None:
                raise EdgeftError("ExportConfig.to_json: 'example_input' is a tensor; JSON holds an ONNX model's path")
            elif isinstance(value, (Preprocessing, Defaults)):
                value = asdict(value)
            elif isinstance(value, (list, tuple)):
                value = list(value)
            data[item.name] = value
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "export config") -> ExportConfig:
        """A config from ``to_json``'s output; EdgeftError naming ``origin`` for bad JSON, another format version,
        unknown options or values that do not validate."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgeftError(f"{origin}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise EdgeftError(f"{origin}: an export config is a JSON object")
        version = data.pop("format_version", None)
        if version != CONFIG_FORMAT_VERSION:
            raise EdgeftError(f"{origin}: export config format {version!r}; this edgeft reads {CONFIG_FORMAT_VERSION}")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EdgeftError(f"{origin}: unknown export option(s) {', '.join(unknown)}")
        try:
            if data.get("preprocessing") is not None:
                data["preprocessing"] = Preprocessing(**data["preprocessing"])
            if data.get("defaults") is not None:
                data["defaults"] = Defaults(**data["defaults"])
            return cls(**data)
        except (TypeError, EdgeftError) as exc:
            raise EdgeftError(f"{origin}: {exc}") from None


def output_names(
    classes: Sequence[str] | None, num_classes: int | None, max_classes: int | None, task: str
) -> list[str]:
    """The initial output names (classes, labels or targets); with ``max_classes`` there may be fewer, never more."""
    if classes is not None and num_classes is not None:
        raise EdgeftError("give either --classes or --num-classes, not both")
    if classes is None:
        if num_classes is None and max_classes is None:
            raise EdgeftError("say what the new head predicts: --classes a,b,c, --num-classes N or --max-classes N")
        classes = [str(i) for i in range(num_classes or 0)]
    names = [c.strip() for c in classes]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise EdgeftError(f"class names must be non-empty and distinct, got {names}")
    least = 2 if task == "classification" else 1
    if max_classes is None:
        if len(names) < least:
            noun = "a classifier" if task == "classification" else f"a {task} head"
            raise EdgeftError(f"{noun} needs at least {least} classes, got {len(names)}")
    elif task == "regression":
        raise EdgeftError("--max-classes reserves classes; a regression head has a fixed set of targets")
    elif max_classes < max(least, len(names)):
        raise EdgeftError(
            f"--max-classes {max_classes} must be at least {least} and at least the {len(names)} classes given"
        )
    return names
