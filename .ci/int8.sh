#!/usr/bin/env bash
# CI step for issue #17 (int8 that holds on the device's own CPU): the int8 tests natively, then again on an x86 CPU
# without AVX-512 VNNI (qemu-x86_64-static -cpu Haswell: AVX2, saturating uint8×int8 kernels), where the kernel
# probe must see saturation and the tests' per-CPU-family bounds must still hold. pytest runs inside qemu itself:
# a child process that the emulated program execs runs natively, so the CLI subprocess tests are native there.
# Run from the repository root with the runtime venv active (PYTHON overrides the interpreter); needs Debian's
# qemu-user-static on x86_64 hosts. About 1 min native + 3 min emulated on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
TESTS=(tests/test_int8_check.py tests/test_quantize.py)

"$PYTHON" -m pytest -q -p no:cacheprovider "${TESTS[@]}"

if [[ "$(uname -m)" != "x86_64" ]]; then
    echo "int8: not an x86_64 host; the Haswell (non-VNNI) run is skipped"
    exit 0
fi
if ! command -v qemu-x86_64-static >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static >/dev/null
    else
        echo "int8: qemu-x86_64-static is missing: apt-get install -y qemu-user-static" >&2
        exit 1
    fi
fi
python_bin="$("$PYTHON" -c 'import sys; print(sys.executable)')"
haswell() { qemu-x86_64-static -cpu Haswell "$python_bin" "$@" 2> >(grep -v "TCG doesn't support" >&2); }
family="$(haswell -c 'from edgeft.common.int8_probe import cpu_family; print(cpu_family())')"
if [[ "$family" != "x86-saturating" ]]; then
    echo "int8: under qemu -cpu Haswell the kernel probe says '$family', expected x86-saturating" >&2
    exit 1
fi
echo "int8: Haswell (AVX2, no VNNI) emulated: $family"
haswell -m pytest -q -p no:cacheprovider "${TESTS[@]}"
