#!/usr/bin/env bash
# The GPU machine's one check: checks and times MOPO's LM training step (see bench/gpu_step.py).
# Run from anywhere: bench/gpu_check.sh [--compile] [--budget SECONDS]; PYTHON overrides the interpreter.
# Smoke run on a CPU in seconds (tiny configs; tests/test_bench_quick.py runs it): bench/gpu_check.sh --cpu --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONUNBUFFERED=1 exec "${PYTHON:-python3}" bench/gpu_step.py "$@"
