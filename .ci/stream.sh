#!/usr/bin/env bash
# CI step for issue #19 (streamed arrivals): tools/bench_stream.py on one small arrival, so the benchmark (the default
# backbone at 224x224, whole-process adapt against plain inference) keeps running. Its figures are not judged here
# (speed goals live in BENCHMARKS.md); the streaming tests run in the main suite. Run from the repository root with
# the runtime venv active (PYTHON overrides the interpreter); about 1 min on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
"$PYTHON" tools/bench_stream.py --sizes 16 --rounds 1 --threads 2
