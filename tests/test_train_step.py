"""The portable train step: gradients against finite differences, optimizers against numpy and ORT training."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from helpers import CLI, SUBPROCESS_TIMEOUT, initial_parameters, make_dataset, needs_ort, run_cli
from tiny_models import save
from zoo.onnx_families import FAMILIES

from edgeft.bundle import TRAIN_STEP_FILE, Bundle
from edgeft.common.ort import resolve_placement
from edgeft.errors import EdgeftError
from edgeft.export import ExportConfig, export_bundle
from edgeft.export import head as head_graph
from edgeft.export.artifacts import ort_training_installed
from edgeft.export.train_step import LOSSES, Optimizer, build_train_step, new_name
from edgeft.head_state import HeadState
from edgeft.runtime.adapter import Adapter
from edgeft.runtime.onnx_trainer import OnnxTrainer
from edgeft.runtime.trainer import open_trainer

DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "artifacts" / "default"
HEADS = {
    "linear": head_graph.HeadSpec(feature_dim=5, num_outputs=3),
    "mlp-relu": head_graph.HeadSpec(feature_dim=5, num_outputs=3, hidden=(4,), activation="relu"),
    "mlp-gelu": head_graph.HeadSpec(feature_dim=5, num_outputs=3, hidden=(4, 3), activation="gelu"),
    "mlp-silu": head_graph.HeadSpec(feature_dim=5, num_outputs=3, hidden=(4,), activation="silu"),
}


def _parameters(spec: head_graph.HeadSpec) -> dict[str, np.ndarray]:
    parameters = head_graph.initial_parameters(spec, seed=0)
    rng = np.random.default_rng(1)
    if spec.normalise:  # a normaliser that really acts
        parameters[head_graph.FEATURE_MEAN] = rng.normal(size=spec.feature_dim).astype(np.float32)
        parameters[head_graph.FEATURE_SCALE] = np.full(spec.feature_dim, 0.7, np.float32)
    return parameters


def _batch(rng: np.random.Generator, loss: str, dim: int, outputs: int, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    features = rng.normal(size=(n, dim)).astype(np.float32)
    if loss == "cross_entropy":
        return features, rng.integers(0, outputs, n)
    targets = rng.random((n, outputs)).astype(np.float32)
    return features, (targets > 0.5).astype(np.float32) if loss == "bce_with_logits" else targets


class Step:
    """A train-step graph in a plain InferenceSession, fed from numpy."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, values: dict[str, np.ndarray], features: np.ndarray, labels: np.ndarray, lr: float, step: int):
        feeds = {
            "features": features,
            "labels": labels,
            "lr": np.array(lr, np.float32),
            "step": np.array(step, np.float32),
        }
        feeds.update({i.name: values[i.name] for i in self.session.get_inputs() if i.name not in feeds})
        return dict(zip(self.names, self.session.run(None, feeds), strict=True))


def _gradient_check(step: Step, values: dict[str, np.ndarray], trainable: list[str], features, labels) -> None:
    """Plain SGD at learning rate 1 moves each parameter by exactly minus its gradient: compare that with central
    finite differences of the step's own loss (float32, so a relative tolerance of a few 1e-3)."""
    analytic = {name: values[name] - step(values, features, labels, 1.0, 1)[new_name(name)] for name in trainable}
    rng = np.random.default_rng(3)
    for name in trainable:
        grad = analytic[name]
        scale = max(float(np.abs(grad).max()), 1e-3)
        coordinates = list(np.ndindex(grad.shape))
        for index in rng.permutation(len(coordinates))[:12]:
            coordinate = coordinates[index]
            # A step of 1e-2 can cross a kink (ReLU, Clip); a true gradient then still matches the smaller step.
            assert any(
                abs(_central_difference(step, values, name, coordinate, features, labels, h) - grad[coordinate])
                <= tolerance * scale + 1e-4
                for h, tolerance in ((1e-2, 5e-3), (1e-3, 1e-2))
            ), (name, coordinate, grad[coordinate])


def _central_difference(step: Step, values, name: str, coordinate, features, labels, h: float) -> float:
    losses = []
    for sign in (1, -1):
        moved = dict(values)
        moved[name] = values[name].copy()
        moved[name][coordinate] += sign * h
        losses.append(float(step(moved, features, labels, 0.0, 1)["loss"]))
    return (losses[0] - losses[1]) / (2 * h)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("head", sorted(HEADS))
def test_gradients_match_finite_differences(head: str, loss: str) -> None:
    spec = HEADS[head]
    parameters = _parameters(spec)
    step = Step(build_train_step(spec, parameters, loss, Optimizer("sgd")))
    features, labels = _batch(np.random.default_rng(0), loss, spec.feature_dim, spec.num_outputs)
    _gradient_check(step, parameters, spec.trainable, features, labels)


# Zoo exports whose unfrozen original layers the portable trainer differentiates: Conv (1-D, 2-D, depthwise),
# BatchNormalization, residual Add, global pools, LayerNormalization, attention-free MLP blocks, cls Gather.
UNFROZEN = {
    "resnet": {"unfreeze_last": 1},
    "efficientnet": {"unfreeze_from": "mb.bn2", "head": "mlp:8", "activation": "silu"},
    "transformer": {"cut": "encoded", "pool": "cls", "unfreeze_from": "res1"},
    "conv1d": {"cut": "relu2", "pool": "max", "unfreeze_last": 1},
    "mobilenet_v2": {"unfreeze_last": 2},
}


@pytest.mark.parametrize("family", sorted(UNFROZEN))
def test_unfrozen_layers_gradients_match_finite_differences(family: str, tmp_path: Path) -> None:
    path = save(FAMILIES[family](), tmp_path / f"{family}.onnx")
    bundle = export_bundle(
        ExportConfig(
            path, tmp_path / "b", classes=["a", "b", "c"], optimizer="sgd", ort_artifacts=False, **UNFROZEN[family]
        )
    )
    head = bundle.manifest.head
    assert head.trainers == ["onnx"] and head.unfrozen
    values = initial_parameters(bundle.path)
    step = Step(onnx.load(str(bundle.train_path(TRAIN_STEP_FILE))))
    x = np.random.default_rng(0).normal(size=(6, *bundle.manifest.input.shape[1:])).astype(np.float32)
    features = onnxruntime.InferenceSession(str(bundle.backbone_path)).run(None, {bundle.manifest.input.name: x})[0]
    labels = np.arange(len(features)) % 3
    _gradient_check(step, values, head.trainable, features, labels)


def _gradient(plain: Step, values: dict[str, np.ndarray], name: str, features, labels) -> np.ndarray:
    """The gradient from a plain SGD step at a huge learning rate (no float32 cancellation against the value)."""
    lr = 1e4
    return (values[name].astype(np.float64) - plain(values, features, labels, lr, 1)[new_name(name)]) / lr


def test_sgd_momentum_follows_the_heavy_ball_rule() -> None:
    spec = HEADS["mlp-relu"]
    parameters = _parameters(spec)
    plain = Step(build_train_step(spec, parameters, "cross_entropy", Optimizer("sgd")))
    heavy = Step(build_train_step(spec, parameters, "cross_entropy", Optimizer("sgd", momentum=0.9)))
    rng = np.random.default_rng(0)
    values = dict(parameters) | {f"sgd.velocity.{n}": np.zeros_like(parameters[n]) for n in spec.trainable}
    expected = {n: parameters[n].astype(np.float64) for n in spec.trainable}
    velocity = {n: np.zeros_like(expected[n]) for n in spec.trainable}
    for t in range(1, 6):
        features, labels = _batch(rng, "cross_entropy", spec.feature_dim, spec.num_outputs)
        gradients = {n: _gradient(plain, values, n, features, labels) for n in spec.trainable}
        out = heavy(values, features, labels, 0.1, t)
        for n in spec.trainable:
            velocity[n] = 0.9 * velocity[n] + gradients[n]
            expected[n] = values[n] - 0.1 * velocity[n]
            np.testing.assert_allclose(out[new_name(n)], expected[n], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(out[new_name(f"sgd.velocity.{n}")], velocity[n], rtol=1e-5, atol=1e-6)
            values[n], values[f"sgd.velocity.{n}"] = out[new_name(n)], out[new_name(f"sgd.velocity.{n}")]


def test_adamw_follows_ort_training_formula_in_numpy() -> None:
    """AdamW as ORT's AdamWOptimizer (mode 1) computes it, written out in numpy, for 20 steps with decay."""
    spec = HEADS["linear"]
    parameters = _parameters(spec)
    plain = Step(build_train_step(spec, parameters, "mse", Optimizer("sgd")))
    adam = Step(build_train_step(spec, parameters, "mse", Optimizer("adamw", weight_decay=0.05)))
    values = dict(parameters)
    for n in spec.trainable:
        values[f"adamw.m.{n}"] = np.zeros_like(parameters[n])
        values[f"adamw.v.{n}"] = np.zeros_like(parameters[n])
    rng = np.random.default_rng(0)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-6
    for t in range(1, 21):
        features, labels = _batch(rng, "mse", spec.feature_dim, spec.num_outputs)
        out = adam(values, features, labels, lr, t)
        gradients = {n: _gradient(plain, values, n, features, labels) for n in spec.trainable}
        for n in spec.trainable:
            g = gradients[n]
            m = b1 * values[f"adamw.m.{n}"] + (1 - b1) * g
            v = b2 * values[f"adamw.v.{n}"] + (1 - b2) * g * g
            p = values[n] - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
            p = p - lr * 0.05 * p
            np.testing.assert_allclose(out[new_name(n)], p, rtol=1e-5, atol=1e-7)
            values[n], values[f"adamw.m.{n}"], values[f"adamw.v.{n}"] = (
                out[new_name(n)],
                out[new_name(f"adamw.m.{n}")],
                out[new_name(f"adamw.v.{n}")],
            )


def _float64_linear_adamw_step(values: dict, moments: dict, features, labels, loss: str, t: int, decay: float) -> None:
    """One AdamW step (ORT's mode 1) of the normalised linear head in float64 numpy, in place. Products by einsum,
    not BLAS: numpy's OpenBLAS miscomputes small matrix products under qemu's arm64 emulation (measured: errors of
    order 1 where onnxruntime there agrees with x86 to 1e-7), and this reference must hold wherever the suite runs."""
    x = (features.astype(np.float64) - values[head_graph.FEATURE_MEAN]) * values[head_graph.FEATURE_SCALE]
    logits = np.einsum("nd,kd->nk", x, values[head_graph.WEIGHT]) + values[head_graph.BIAS]
    n, k = logits.shape
    if loss == "cross_entropy":
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        dlogits = (e / e.sum(axis=1, keepdims=True) - np.eye(k)[labels]) / n
    elif loss == "mse":
        dlogits = 2 * (logits - labels) / (n * k)
    elif loss == "l1":
        dlogits = np.sign(logits - labels) / (n * k)
    else:
        dlogits = (1 / (1 + np.exp(-logits)) - labels) / (n * k)
    lr, b1, b2 = 0.01, 0.9, 0.999
    for name, g in ((head_graph.WEIGHT, np.einsum("nk,nd->kd", dlogits, x)), (head_graph.BIAS, dlogits.sum(axis=0))):
        m, v = moments.get(name, (0.0, 0.0))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        moments[name] = (m, v)
        values[name] = values[name] - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + 1e-6)
        values[name] = values[name] - lr * decay * values[name]


@pytest.mark.parametrize("loss", LOSSES)
def test_adamw_stays_within_float32_rounding_of_float64_over_50_steps(loss: str) -> None:
    """The whole trajectory, not one step: a systematic error (such as 1 - beta rounded differently from the bias
    correction's beta, 6e-6 a step) accumulates and shows; float32 rounding alone stayed below 2.4e-6 here."""
    spec = HEADS["linear"]
    parameters = _parameters(spec)
    step = Step(build_train_step(spec, parameters, loss, Optimizer("adamw", weight_decay=0.01)))
    values = dict(parameters)
    for n in spec.trainable:
        values.update({s: np.zeros_like(parameters[n]) for s in Optimizer("adamw").state_names(n)})
    exact = {name: value.astype(np.float64) for name, value in parameters.items()}
    moments: dict = {}
    rng = np.random.default_rng(0)
    for t in range(1, 51):
        features, labels = _batch(rng, loss, spec.feature_dim, spec.num_outputs)
        out = step(values, features, labels, 0.01, t)
        values.update({name[len("new.") :]: value for name, value in out.items() if name.startswith("new.")})
        _float64_linear_adamw_step(exact, moments, features, labels, loss, t, 0.01)
        for name in spec.trainable:
            scale = max(float(np.linalg.norm(exact[name])), 0.01)
            assert np.linalg.norm(values[name] - exact[name]) <= 5e-6 * scale, (t, name)


# Both sides compute in float32 with different operation orders; over 50 steps the worst case measured here was
# 2.5e-7 (loss) and 1.6e-6 (parameters, an MLP's hidden bias).
RTOL_VS_ORT = 1e-5


@needs_ort
@pytest.mark.parametrize(
    "optimizer", [Optimizer("adamw"), Optimizer("adamw", weight_decay=0.01), Optimizer("sgd")], ids=str
)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("head", ["linear", "mlp-gelu", "mlp-silu"])
def test_steps_match_ort_training_for_50_steps(head: str, loss: str, optimizer: Optimizer, tmp_path: Path) -> None:
    from edgeft.common.ort import training_api
    from edgeft.export.artifacts import Training, generate_head_artifacts

    spec = HEADS[head]
    parameters = _parameters(spec)
    training = Training(spec.trainable, spec.frozen, loss, optimizer.kind, optimizer.weight_decay)
    generate_head_artifacts(head_graph.training_head(spec, parameters), tmp_path, training)
    api = training_api()
    state = api.CheckpointState.load_checkpoint(str(tmp_path / "checkpoint"))
    module = api.Module(str(tmp_path / "training_model.onnx"), state, str(tmp_path / "eval_model.onnx"))
    ort_optimizer = api.Optimizer(str(tmp_path / "optimizer_model.onnx"), module)
    module.train()
    step = Step(build_train_step(spec, parameters, loss, optimizer))
    values = dict(parameters)
    for n in spec.trainable:
        values.update({s: np.zeros_like(parameters[n]) for s in optimizer.state_names(n)})
    rng = np.random.default_rng(0)
    for t in range(1, 51):
        features, labels = _batch(rng, loss, spec.feature_dim, spec.num_outputs)
        ort_loss, _ = module(features, labels)
        ort_optimizer.set_learning_rate(0.01)
        ort_optimizer.step()
        module.lazy_reset_grad()
        out = step(values, features, labels, 0.01, t)
        values.update({name[len("new.") :]: value for name, value in out.items() if name.startswith("new.")})
        np.testing.assert_allclose(out["loss"], ort_loss, rtol=RTOL_VS_ORT, atol=1e-6)
        for name, parameter in state.parameters:
            if parameter.requires_grad:
                # Norm-wise relative error, floored at one step's size (the learning rate) for biases that start at
                # zero, where Adam's first steps are sign-like and amplify float32 rounding.
                scale = max(float(np.linalg.norm(parameter.data)), 0.01)
                assert np.linalg.norm(values[name] - parameter.data) <= RTOL_VS_ORT * scale, (t, name)


def test_onnx_trainer_with_io_binding_equals_plain_runs_and_hands_out_snapshots(bundle: Bundle) -> None:
    """The trainer keeps its state in swapped OrtValue banks: it must compute exactly what feeding the step graph
    from numpy computes, and parameters() must be a snapshot that later steps do not change."""
    trainer = OnnxTrainer(bundle, HeadState(initial_parameters(bundle.path)), resolve_placement("cpu"))
    step = Step(onnx.load(str(bundle.train_path(TRAIN_STEP_FILE))))
    rng = np.random.default_rng(0)
    mean, scale = rng.normal(size=6).astype(np.float32), np.full(6, 0.5, np.float32)
    trainer.set_normaliser(mean, scale)
    values = {**initial_parameters(bundle.path), "head.feature_mean": mean, "head.feature_scale": scale}
    values.update({f"adamw.{k}.{n}": np.zeros_like(values[n]) for n in ("head.weight", "head.bias") for k in "mv"})
    before = trainer.parameters()
    kept = {n: v.copy() for n, v in before.items()}
    for t in range(1, 8):
        features, labels = _batch(rng, "cross_entropy", 6, 3, n=5)
        loss = trainer.step(features, labels, 0.05)
        out = step(values, features, labels, 0.05, t)
        values.update({name[len("new.") :]: value for name, value in out.items() if name.startswith("new.")})
        assert loss == pytest.approx(float(out["loss"]), rel=1e-6)
    after = trainer.parameters()
    for name in ("head.weight", "head.bias"):
        np.testing.assert_array_equal(after[name], values[name])
        np.testing.assert_array_equal(before[name], kept[name])  # the early snapshot did not move
        assert not np.array_equal(after[name], kept[name])
    state = trainer.state()
    assert state.step == 7 and set(state.optimizer) == {
        f"adamw.{k}.{n}" for n in ("head.weight", "head.bias") for k in "mv"
    }


@needs_ort
@pytest.mark.parametrize("order", [("ort", "onnx", "ort"), ("onnx", "ort", "onnx")])
def test_a_state_switched_between_trainers_keeps_learning(
    order: tuple[str, ...], bundle: Bundle, tmp_path: Path
) -> None:
    """Each arrival under another trainer: both trainers reopen every committed state at exactly its head, and
    learning goes on."""
    x, y = make_dataset(360, seed=5)
    test_x, test_y = make_dataset(120, seed=6)
    accuracies = []
    for arrival, trainer in enumerate(order):
        with Adapter(bundle, tmp_path / "state", trainer=trainer) as adapter:
            result = adapter.learn(x[arrival * 120 : (arrival + 1) * 120], y[arrival * 120 : (arrival + 1) * 120])
            assert result.promoted and adapter.trainer_kind == trainer, result
            accuracies.append(adapter.evaluate(test_x, test_y))
            committed = adapter.parameters()
            files = adapter.store.current().files
        for kind in ("onnx", "ort"):  # either trainer opens what this one committed at exactly its head
            reopened = open_trainer(bundle, files, resolve_placement("cpu"), kind).parameters()
            for name, value in committed.items():
                np.testing.assert_array_equal(reopened[name], value, err_msg=f"{kind} after {trainer}: {name}")
    assert accuracies[-1] >= 0.85 and accuracies[-1] >= accuracies[0] - 0.02, accuracies


def _ort_only_copy(tmp_path: Path) -> Path:
    """The shipped default bundle as an edgeft without the portable trainer wrote it: ORT artifacts only."""
    copy = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "old")
    manifest = json.loads((copy / "manifest.json").read_text())
    for name in ("train/train_step.onnx", "train/initial_head.npz"):
        (copy / name).unlink()
        del manifest["files"][name]
    del manifest["head"]["trainers"], manifest["head"]["momentum"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_bundle_from_before_the_portable_trainer_needs_ort_training_or_says_so(tmp_path: Path) -> None:
    old = Bundle.load(_ort_only_copy(tmp_path))
    assert old.manifest.head.trainers == ["ort"]  # what a manifest without the field means
    x = np.random.default_rng(0).uniform(0, 255, (8, 1, 8, 8)).astype(np.float32)  # the default bundle's 8x8 scans
    y = np.arange(8) % 10
    with Adapter(old, tmp_path / "state") as adapter:
        if not ort_training_installed():
            with pytest.raises(EdgeftError, match="re-export the bundle with this edgeft"):
                adapter.learn(x, y)
        else:
            assert adapter.learn(x, y).version == 1 and adapter.trainer_kind == "ort"
    with Adapter(old, tmp_path / "state", trainer="onnx") as adapter:
        with pytest.raises(EdgeftError, match="carries no portable train step"):
            adapter.learn(x, y)


@pytest.mark.slow
def test_cli_trainer_option_and_its_environment_variable(bundle_dir: Path, tmp_path: Path) -> None:
    x, y = make_dataset(40, seed=2)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    done = run_cli(
        "adapt", bundle_dir, "--data", tmp_path / "a.npz", "-s", tmp_path / "s", "--trainer", "onnx", "--json"
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["trainer"] == "onnx"
    wrong = run_cli("adapt", bundle_dir, "--data", tmp_path / "a.npz", "-s", tmp_path / "t", "--trainer", "torch")
    # onnxruntime may add a line of its own on some platforms (an unknown CPU vendor under qemu): look for ours
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "edgeft: error: unknown trainer 'torch'; choose one of auto, onnx, ort" in wrong.stderr.splitlines()
    env = {**os.environ, "EDGEFT_ADAPT_TRAINER": "ort"}
    by_env = subprocess.run(
        [*CLI, "adapt", str(bundle_dir), "--data", str(tmp_path / "a.npz"), "-s", str(tmp_path / "u"), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=SUBPROCESS_TIMEOUT,
    )
    if ort_training_installed():
        assert by_env.returncode == 0 and json.loads(by_env.stdout)["trainer"] == "ort", by_env.stderr
    else:
        assert by_env.returncode != 0 and "Traceback" not in by_env.stderr
        assert "carries no ORT training artifacts" in by_env.stderr  # the variable chose ort; this bundle has none


def test_providers_are_a_preference_list_with_the_cpu_last() -> None:
    assert resolve_placement("cpu").providers == ("CPUExecutionProvider",)
    assert resolve_placement("cpu, cpu").providers == ("CPUExecutionProvider",)
    with pytest.raises(EdgeftError, match=r"execution provider 'warp' is not offered.*available: .*cpu"):
        resolve_placement("cpu,warp")


def test_an_unfrozen_layer_the_portable_trainer_cannot_differentiate_is_named(tmp_path: Path) -> None:
    """Unfreezing the attention block: softmax(q k^T) v multiplies two activations, which the autodiff refuses."""
    path = save(FAMILIES["transformer"](), tmp_path / "t.onnx")
    options = {"classes": ["a", "b", "c"], "cut": "encoded", "pool": "cls", "unfreeze_from": "embed"}
    with pytest.raises(EdgeftError, match="MatMul only by a 2-D right operand.*edgeft\\[ort\\]"):
        export_bundle(ExportConfig(path, tmp_path / "b", ort_artifacts=False, **options))
    assert not (tmp_path / "b").exists()
    if ort_training_installed():  # ORT can: the bundle is written for the ORT trainer alone, with a warning
        with pytest.warns(UserWarning, match="ORT training artifacts only"):
            bundle = export_bundle(ExportConfig(path, tmp_path / "c", **options))
        assert bundle.manifest.head.trainers == ["ort"]
        with Adapter(bundle, tmp_path / "state") as adapter:
            assert adapter.trainer_kind == "ort"


@needs_ort
def test_a_state_written_before_the_head_state_format_continues_under_the_portable_trainer(
    bundle: Bundle, tmp_path: Path
) -> None:
    """Versions that hold only ORT's checkpoint (older edgeft): the portable trainer starts from their head."""
    x, y = make_dataset(240, seed=3)
    with Adapter(bundle, tmp_path / "state", trainer="ort") as adapter:
        adapter.learn(x[:120], y[:120])
        committed = adapter.parameters()
    meta_path = tmp_path / "state" / "versions" / "000001.json"
    meta = json.loads(meta_path.read_text())
    del meta["sha256"]["head.npz"]
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "state" / "versions" / "000001.head.npz").unlink()
    with Adapter(bundle, tmp_path / "state", trainer="onnx") as adapter:
        for name, value in committed.items():
            np.testing.assert_array_equal(adapter.parameters()[name], value)
        assert adapter.learn(x[120:], y[120:]).version == 2
        assert adapter.evaluate(x, y) >= 0.8
