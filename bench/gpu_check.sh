#!/usr/bin/env bash
# GPU check for the kernels, in one go (under 8 minutes on an H100):
#   1. install the checkout (no dependency changes),
#   2. the kernel and model tests on CUDA (the CUDA-only ones included),
#   3. python -m bench kernels  -> $OUT/kernels.json, $OUT/kernels.png (table on stdout),
#   4. python -m bench train_step (sdpa vs triton attention, EMA kernel) -> $OUT/train_step.json.
# Without CUDA it refuses (exit 3): the CPU checks are `python -m pytest -q tests` and
# `python -m bench kernels --quick`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible to torch; nothing to check here." >&2
    echo "  On CPU run: python -m pytest -q tests && python -m bench kernels --quick" >&2
    exit 3
fi
python - <<'PY'
import torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = "absent"
print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {tv} | "
      f"CUDA {torch.version.cuda}")
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

status=0
step() {  # step NAME SECONDS CMD...: run with a time limit, report, keep going on failure
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo; echo "=== $name"
    timeout "$limit" "$@"
    local rc=$?
    echo "=== $name: rc=$rc, $((SECONDS - t0)) s"
    [ $rc -eq 0 ] || status=1
}

step install 120 python -m pip install -q -e . --no-deps --no-build-isolation
tests=()
for f in tests/test_kernels_attention.py tests/test_kernels_ema.py tests/test_models.py; do
    [ -f "$f" ] && tests+=("$f")
done
# untuned launch configs keep the test run short; the benchmark below tunes
step tests 200 env EHRJEPA_TRITON_TUNE=0 python -m pytest -q -x -m "cuda or not cuda" \
    -p no:cacheprovider "${tests[@]}"
step "bench kernels" 240 python -m bench kernels --json "$OUT/kernels.json" --png "$OUT/kernels.png"
if [ -f bench/train_step.py ]; then
    step "bench train_step" 150 python -m bench train_step --json "$OUT/train_step.json"
else
    echo "bench/train_step.py not in this checkout: skipped"
fi
echo; echo "gpu_check.sh: $([ $status -eq 0 ] && echo all steps passed || echo SOME STEPS FAILED)"
exit $status
