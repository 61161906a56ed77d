#!/usr/bin/env bash
# GPU benchmark + GPU-only tests, one prepared script (< 9 min), offline.
#
#   bash bench/gpu.sh            # from the repo root, on a machine with an NVIDIA GPU + JAX
#
# Needs no internet: missing pure-python deps (flax, optax, ml_collections, pytest, tiktoken,
# ...) are installed with `pip --no-index --no-deps` from bench/wheels/ (git-ignored; fill it
# with `pip download` as in bench/README.md and carry it to the machine) into a temporary
# folder on PYTHONPATH; JAX itself is never installed or changed. What cannot be installed is
# reported and the parts that need it are skipped. Writes $OUT/gpu_report.txt and
# $OUT/gpu_bench.json when $OUT is set, else prints only. GPU_BENCH_ARGS adds arguments to
# bench/gpu_bench.py (e.g. "--n_layer=1 --block=64" for a smoke run of this script on CPU).
set -u
cd "$(dirname "$0")/.." || exit 1
OUT_DIR="${OUT:-}"
REPORT="${OUT_DIR:+$OUT_DIR/gpu_report.txt}"
REPORT="${REPORT:-/dev/null}"
DEPS_DIR="${GPT2JAX_DEPS_DIR:-/tmp/gpt2jax_deps}"
START=$(date +%s)
PY="${PYTHON:-$(command -v python3 || command -v python)}"  # the image may have no `python`

say() { echo "$@" | tee -a "$REPORT"; }
run() {  # run <seconds> <label> <command...>: output to stdout + report, never aborts the script
  local limit=$1 label=$2; shift 2
  say "=== $label (limit ${limit}s, t=$(( $(date +%s) - START ))s)"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$REPORT"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 124 ] && say "!!! $label: TIMED OUT after ${limit}s"
  say "=== $label: exit $rc"
  return 0
}

say "gpt2jax bench/gpu.sh  $(date -u +%FT%TZ)  commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
run 20 "nvidia-smi" nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
run 30 "python/jax" "$PY" -c "import sys, jax; print(sys.version); print('jax', jax.__version__, jax.devices())"

# Dependencies: report, then install missing ones from local wheels into $DEPS_DIR.
mkdir -p "$DEPS_DIR"
export PYTHONPATH="$DEPS_DIR:.${PYTHONPATH:+:$PYTHONPATH}"
run 120 "dependencies" "$PY" bench/gpu_bench.py --check_deps --wheels=bench/wheels --target="$DEPS_DIR"
run 60 "dependencies after install" "$PY" bench/gpu_bench.py --check_deps --wheels=/nonexistent --target="$DEPS_DIR"

# Benchmarks: 124M training (cudnn/xla attention, unrolled/scanned), decode vs HF.
JSON_ARG=""
[ -n "$OUT_DIR" ] && JSON_ARG="--json=$OUT_DIR/gpu_bench.json"
run 360 "gpu_bench.py" env XLA_PYTHON_CLIENT_PREALLOCATE=false "$PY" -u bench/gpu_bench.py $JSON_ARG ${GPU_BENCH_ARGS:-}

# GPU-only tests (marked @pytest.mark.gpu), only the files that hold such tests.
GPU_TEST_FILES=$(grep -l "pytest.mark.gpu" tests/test_*.py 2>/dev/null | tr '\n' ' ')
if [ -n "$GPU_TEST_FILES" ]; then
  run 100 "pytest -m gpu" env JAX_PLATFORMS=cuda GPT2JAX_DATA_DIR="${GPT2JAX_DATA_DIR:-$PWD/../shared/data}" \
    "$PY" -m pytest -m gpu -rs -q -p no:cacheprovider $GPU_TEST_FILES
else
  say "no tests marked gpu found"
fi
say "total $(( $(date +%s) - START ))s"
