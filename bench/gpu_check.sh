#!/usr/bin/env bash
# The GPU machine's one check: bench/gpu_step.py (checks and times MOPO's LM training step), then
# bench/gpu_paths.py (CLI train/resume, a dataset job through the queue's worker, the memory
# estimate and unload, DDP). Both always run; the exit status is 1 when either fails.
# Run from anywhere: bench/gpu_check.sh [--compile] [--budget SECONDS] [--out DIR]; PYTHON overrides the
# interpreter. --budget (whole seconds, default 450: 8 minutes on one H100 with start-up) is shared:
# gpu_step.py gets 45% of it, gpu_paths.py what is left after it. --out (default $OUT) gets both
# scripts' JSON and Markdown. --compile goes to gpu_step.py only.
# The GPU image lacks two of the project's dependencies (platformdirs, moocore with cffi): when they
# do not import, the wheels in $WHEELS (default build/wheels; see bench/README.md) are installed
# into a temporary folder put on PYTHONPATH. Without them gpu_paths.py skips its parts, naming them.
# Smoke run on a CPU (tiny configs; tests/test_bench_quick.py runs it): bench/gpu_check.sh --cpu --tiny
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1

budget=450
step_args=() paths_args=()
while (($#)); do
  case "$1" in
    --budget) budget="$2"; shift 2 ;;
    --out) step_args+=(--out "$2"); paths_args+=(--out "$2"); shift 2 ;;
    --cpu | --tiny) step_args+=("$1"); paths_args+=("$1"); shift ;;
    *) step_args+=("$1"); shift ;;
  esac
done

WHEELS="${WHEELS:-build/wheels}"
if ! "$PY" -c "import platformdirs, moocore" 2>/dev/null && compgen -G "$WHEELS/*.whl" >/dev/null; then
  site="$(mktemp -d)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$WHEELS"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "# installed $(ls "$WHEELS" | tr '\n' ' ')into $site"
fi

start=$SECONDS
step_rc=0 paths_rc=0
"$PY" bench/gpu_step.py --budget $((budget * 45 / 100)) "${step_args[@]}" || step_rc=$?
"$PY" bench/gpu_paths.py --budget $((budget - (SECONDS - start))) "${paths_args[@]}" || paths_rc=$?
echo "gpu_check: gpu_step.py exit $step_rc, gpu_paths.py exit $paths_rc, $((SECONDS - start)) s"
((step_rc == 0 && paths_rc == 0))
