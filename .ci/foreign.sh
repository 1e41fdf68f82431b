#!/usr/bin/env bash
# The portable path on a platform this machine is not: `foreign.sh ARCH SUITE` (arm64 bookworm = Python 3.11 on
# aarch64 under qemu; amd64 trixie = Python 3.13). In that Debian root: `pip install .[dev]` (plain onnxruntime,
# no ORT training wheel exists there), the CLI end to end (tools/platform_smoke.py: export, adapt, predict,
# export-inference), then a fast subset of the tests. Prints what it measured; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=$1 suite=$2
shift 2
tests=${*:-tests/test_train_step.py tests/test_runtime.py tests/test_export.py}
# Under qemu's arm64 emulation, numpy's OpenBLAS (0.3.34 in the Python 3.13 wheels) picks its Neoverse V2 kernels
# and miscomputes small matrix products (errors of order 1, measured; onnxruntime there agrees with x86 to 1e-7);
# its generic ARMv8 kernels are right. An emulation artifact, so the emulated runs take the generic kernels.
blas=""
[ "$arch" = arm64 ] && blas="export OPENBLAS_CORETYPE=ARMV8 EDGEFT_TEST_TIME_SCALE=30"  # and the tests' hang guards x30
../shared/tools/foreign-root run --arch "$arch" --suite "$suite" -- "
set -euo pipefail
$blas
python3 -m venv /tmp/v
/tmp/v/bin/pip install -q --upgrade pip
start=\$(date +%s)
/tmp/v/bin/pip install -q '.[dev]'
echo \"foreign $arch $suite: pip install .[dev] took \$((\$(date +%s) - start)) s; \$(du -sm /tmp/v | cut -f1) MiB venv\"
/tmp/v/bin/python -c 'import onnxruntime, platform, sys; print(platform.machine(), sys.version.split()[0], \"onnxruntime\", onnxruntime.__version__)'
PATH=/tmp/v/bin:\$PATH /tmp/v/bin/python tools/platform_smoke.py /tmp/smoke
# The tests run from a copy beside the shipped artifacts, so that they import the installed package, not the tree.
cd /tmp && cp -r \"\$OLDPWD/tests\" \"\$OLDPWD/pyproject.toml\" /tmp/ && ln -s \"\$OLDPWD/artifacts\" /tmp/artifacts
/tmp/v/bin/pytest -q -p no:cacheprovider $tests
"
