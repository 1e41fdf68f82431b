#!/usr/bin/env bash
# CI: power cuts (tests/test_powercut.py): the simulator's filesystem model, 30 power cuts under a real
# `edgeft adapt --watch` on a FUSE mount (plus 3 each inside export and export-inference), and proof that the harness
# catches a commit that renames without fsyncing its directory. Run from the repository root; its own venv.
# Needs /dev/fuse and the right to mount FUSE filesystems (root here); installs Debian's fuse3 when missing and root.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v fusermount3 >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
    else
        echo "CI error: fusermount3 is missing; install Debian's fuse3 (libfuse3-3)" >&2
        exit 1
    fi
fi
if [ ! -e /dev/fuse ]; then
    echo "CI error: /dev/fuse is missing; the power-cut tests need FUSE" >&2
    exit 1
fi
python3.11 -m venv .venv-ci-powercut
# shellcheck disable=SC1091
. .venv-ci-powercut/bin/activate
python -m pip install -q --upgrade pip
pip install -q -e '.[dev,powercut]'
# EDGEFT_REQUIRE_FUSE: the FUSE tests fail instead of skipping when FUSE is not usable
EDGEFT_REQUIRE_FUSE=1 pytest -q tests/test_powercut.py
