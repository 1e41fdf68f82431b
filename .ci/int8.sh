#!/usr/bin/env bash
# CI step for issue #17 (int8 that holds on the device's own CPU): the int8 tests on an x86 CPU without AVX-512
# VNNI (qemu-x86_64-static -cpu Haswell: AVX2, saturating uint8×int8 kernels), where the kernel probe must see
# saturation and the tests' per-CPU-family bounds must still hold. Every Python process runs on that CPU, the CLI
# subprocesses the tests start too: the tests run from a venv of their own whose interpreter tools/cpu-venv made a
# qemu wrapper. (Natively, CI's first step runs the same tests.) Run from the repository root with the runtime venv
# active (PYTHON overrides the interpreter; its venv's base interpreter makes the Haswell venv); needs Debian's
# qemu-user-static on x86_64 hosts. About 1 min to install and 15-25 min emulated on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
TESTS=(tests/test_int8_check.py tests/test_quantize.py)

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
venv="$(mktemp -d /tmp/edgeft-haswell-XXXXXX)"
trap 'rm -rf "$venv"' EXIT
"$("$PYTHON" -c 'import sys; print(sys._base_executable)')" -m venv "$venv"
"$venv/bin/pip" install -q -e '.[dev]'
"$venv/bin/python" -m compileall -q "$venv/lib" >/dev/null  # once natively, not at every emulated start
tools/cpu-venv "$venv"
family="$("$venv/bin/python" -c '
import subprocess, sys
code = "from edgeft.common.int8_probe import cpu_family; print(cpu_family())"
print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip())')"
if [[ "$family" != "x86-saturating" ]]; then
    echo "int8: a child of the emulated Haswell python says '$family', expected x86-saturating" >&2
    exit 1
fi
echo "int8: Haswell (AVX2, no VNNI) emulated, children too: $family"
"$venv/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
