#!/usr/bin/env bash
# CI step for issue #17 on a whole non-VNNI machine: the int8 tests (those of .ci/int8.sh) in a KVM guest with
# -cpu Haswell-noTSX (AVX2, no AVX-512, no VNNI) through tools/cpu-vm, where every process, the CLI subprocesses
# too, runs that CPU's kernels near-natively (.ci/int8.sh emulates every process, far slower). Skipped, exit 0 and
# the reason, where there is no usable KVM for that CPU model (no /dev/kvm, or one such as the kvm_pvm of nested
# cloud sandboxes that offers guests no AVX) or the Debian packages cannot be had. Run from the repository root
# with the runtime venv active (PYTHON overrides); apt-get needs root. The guest is stopped after 280 s (never
# measured with KVM: none here could offer the CPU; the same tests take about 1 min natively).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
TESTS=(tests/test_int8_check.py tests/test_quantize.py)
CPU=Haswell-noTSX
skip() { echo "kvm: skipped: $*"; exit 0; }

[[ "$(uname -m)" == x86_64 ]] || skip "not an x86_64 host"
[[ -e /dev/kvm ]] || skip "no /dev/kvm"
# Before any install: kvm_pvm (software nested virtualisation in cloud sandboxes) offers guests no AVX at all.
[[ ! -d /sys/module/kvm_pvm ]] || skip "this /dev/kvm is kvm_pvm, which offers guests no AVX: no -cpu $CPU guest here"
if ! command -v qemu-system-x86_64 >/dev/null || ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            qemu-system-x86 busybox-static >/dev/null || skip "apt-get install qemu-system-x86 busybox-static failed"
    else
        skip "qemu-system-x86 and busybox-static are missing and cannot be installed here"
    fi
fi
ready="$(tools/cpu-vm --check --cpu "$CPU" 2>&1)" || skip "$ready"
python_bin="$("$PYTHON" -c 'import sys; print(sys.executable)')"
# One guest: the kernel probe must see saturation, then the tests.
# shellcheck disable=SC2016  # expanded in the guest
tools/cpu-vm --cpu "$CPU" --mem 4G --timeout 280 -- bash -c '
    family="$("$1" -c "from edgeft.common.int8_probe import cpu_family; print(cpu_family())")"
    if [[ "$family" != x86-saturating ]]; then
        echo "kvm: in the -cpu '"$CPU"' guest the kernel probe says \"$family\", expected x86-saturating" >&2
        exit 1
    fi
    echo "kvm: -cpu '"$CPU"' guest (AVX2, no VNNI): $family"
    exec "$1" -m pytest -q -p no:cacheprovider "${@:2}"' _ "$python_bin" "${TESTS[@]}"
