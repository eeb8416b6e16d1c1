#!/usr/bin/env bash
# GPU check for the kernels, in one go (time limits add up to 7.5 minutes):
#   1. install the checkout (no dependency changes),
#   2. the kernel and model tests on CUDA (the CUDA-only ones included),
#   3. python3 -m bench kernels at the target shapes (attention 32x1024 and 8x4096, EMA 21.3 M and
#      302 M) -> $OUT/kernels.json, $OUT/kernels.png,
#   4. python3 -m bench train_step, the rival (compile + CUDA graphs) and ours, every case
#      -> $OUT/train_step.json.
# Every measured row is appended to $OUT/results.csv as soon as it exists, and each step's log
# and exit status to $OUT/<step>.log and $OUT/steps.csv, so a kill loses only the step it hit.
# Append $OUT/results.csv (without its header) to bench/results.csv, then `python3 -m bench render`.
#
#   bash bench/gpu_check.sh            # on the GPU machine
#   bash bench/gpu_check.sh --dry-run  # on a CPU: every step with --quick (no install), to check
#                                      # the plumbing; nothing it measures is a GPU number
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
export EHRJEPA_RESULTS="$OUT/results.csv"

if [ $DRY -eq 0 ] && ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible to torch; nothing to check here." >&2
    echo "  On CPU: bash bench/gpu_check.sh --dry-run, or python3 -m pytest -q tests" >&2
    exit 3
fi
python3 - <<'PY' | tee "$OUT/versions.txt"
import torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = "absent"
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run)"
print(f"# {dev} | torch {torch.__version__} | triton {tv} | CUDA {torch.version.cuda}")
PY
[ $DRY -eq 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

status=0
[ -f "$OUT/steps.csv" ] || echo "step,rc,seconds,limit_s" > "$OUT/steps.csv"
step() {  # step NAME SECONDS CMD...: run with a time limit, log it, keep going on failure
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS log="$OUT/${name// /_}.log"
    echo; echo "=== $name (limit $limit s)"
    timeout "$limit" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: rc=$rc, $((SECONDS - t0)) s"
    echo "$name,$rc,$((SECONDS - t0)),$limit" >> "$OUT/steps.csv"
    [ $rc -eq 0 ] || status=1
}

tests=()
for f in tests/test_kernels_attention.py tests/test_kernels_ema.py tests/test_models.py; do
    [ -f "$f" ] && tests+=("$f")
done
if [ $DRY -eq 1 ]; then
    echo "=== install: skipped (dry run: the checkout is already installed here)"
    step tests 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels_attention.py \
        tests/test_kernels_ema.py
    step "bench kernels" 120 python3 -m bench kernels --quick --json "$OUT/kernels.json" \
        --png "$OUT/kernels.png" --results "$OUT/results.csv"
    # the micro model: the plumbing, not the small model's CPU speed
    step "bench train_step" 120 python3 -m bench train_step --quick --device cpu --size micro \
        --steps 2 --warmup 1 --json "$OUT/train_step.json" --results "$OUT/results.csv"
else
    step install 60 python3 -m pip install -q -e . --no-deps --no-build-isolation
    # untuned launch configs keep the test run short; the benchmark below tunes
    step tests 150 env EHRJEPA_TRITON_TUNE=0 python3 -m pytest -q -x -m "cuda or not cuda" \
        -p no:cacheprovider "${tests[@]}"
    step "bench kernels" 120 python3 -m bench kernels --attn 32x1024 --attn 8x4096 \
        --json "$OUT/kernels.json" --png "$OUT/kernels.png" --results "$OUT/results.csv"
    step "bench train_step" 120 python3 -m bench train_step --mode compile_bf16_ro --mode ours \
        --json "$OUT/train_step.json" --results "$OUT/results.csv"
fi
echo; echo "gpu_check.sh: $([ $status -eq 0 ] && echo all steps passed || echo SOME STEPS FAILED); rows in $OUT/results.csv"
exit $status
