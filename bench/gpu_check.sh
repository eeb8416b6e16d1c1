#!/usr/bin/env bash
# GPU check for the kernels and the trainer, in one go, within a time budget (default 470 s):
#   1. python3 -m bench kernels at the target shapes (attention 32x1024 and 8x4096, EMA 21.3 M and
#      302 M), alone on the device, with torch.profiler tables -> $OUT/kernels.json, kernels.png,
#      profile_*.txt;
#   2. then, at the same time: the CUDA tests (kernels, model, backend parity), synthetic
#      stays for the whole-stay case (synth + preprocess), and one untimed step of every
#      train-step case and mode in parallel processes, which fills torch.compile's and Triton's
#      on-disk caches (a cold compile is ~45 s a mode; 16 cores do them side by side);
#   3. the timed train steps, one case at a time, alone on the device (warm caches): the rival
#      (compile + CUDA graphs) and ours at small-256x20, small-64x256, base-64x256, then the
#      whole-stay case (token-budget batches of the stays' lengths, padded SDPA vs our kernel).
# Each step has its own time limit, cut to what the budget has left (a step with under 15 s left
# is skipped and says so), so one failure or a slow compile does not hide the rest. Every measured
# row is appended to $OUT/results.csv as soon as it exists; each step's log goes to
# $OUT/<step>.log and its exit status to $OUT/steps.csv.
# Afterwards: append $OUT/results.csv (without its header) to bench/results.csv, then
# `python3 -m bench render`.
#
#   bash bench/gpu_check.sh            # on the GPU machine (GPU_CHECK_BUDGET_S=470 by default)
#   bash bench/gpu_check.sh --dry-run  # on a CPU: the same steps on tiny shapes, to check the
#                                      # plumbing; nothing it measures is a GPU number
# The checkout need not be installed: if `ehrjepa.kernels` does not import, kernels/ is linked
# in as ehrjepa/kernels for the run (and unlinked at the end) with the checkout on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
BUDGET=${GPU_CHECK_BUDGET_S:-470}
OUT="${OUT:-bench/out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d)"
export EHRJEPA_RESULTS="$OUT/results.csv"
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}  # several compiles at once
# the attention launch configs tuned on this device, kept across the runs below (and brought back)
export EHRJEPA_TRITON_TUNE_CACHE="$OUT/tune_cache.json"
LINKED=0
cleanup() {
    [ $LINKED -eq 1 ] && rm -f ehrjepa/kernels
    jobs -p | xargs -r kill 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ $DRY -eq 0 ] && ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible to torch; nothing to check here." >&2
    echo "  On CPU: bash bench/gpu_check.sh --dry-run, or python3 -m pytest -q tests" >&2
    exit 3
fi
if ! python3 -c "import ehrjepa.kernels" 2>/dev/null; then
    if [ -e ehrjepa/kernels ]; then
        echo "gpu_check.sh: ehrjepa.kernels does not import and ehrjepa/kernels exists" >&2; exit 3
    fi
    ln -s ../kernels ehrjepa/kernels && LINKED=1
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    python3 -c "import ehrjepa.kernels" || { echo "gpu_check.sh: ehrjepa.kernels still does not import" >&2; exit 3; }
fi
python3 - <<'PY' | tee "$OUT/versions.txt"
import platform, torch
try:
    import triton; tv = triton.__version__
except ImportError:
    tv = "absent"
dev = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (dry run)"
print(f"# {dev} | torch {torch.__version__} | triton {tv} | CUDA {torch.version.cuda} | "
      f"Python {platform.python_version()} | {platform.processor() or platform.machine()}")
PY
[ $DRY -eq 1 ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    | tee -a "$OUT/versions.txt" || true

status=0
[ -f "$OUT/steps.csv" ] || echo "step,rc,seconds,limit_s" > "$OUT/steps.csv"
limit_for() {  # limit_for WANTED: WANTED cut to what the budget has left (0: skip)
    local left=$((BUDGET - SECONDS - 5))
    local want=$1
    [ $left -lt 15 ] && { echo 0; return; }
    echo $((want < left ? want : left))
}
step() {  # step NAME SECONDS CMD...: run with a time limit, log it, keep going on failure
    local name=$1 limit; limit=$(limit_for "$2"); shift 2
    local t0=$SECONDS log="$OUT/${name// /_}.log"
    if [ "$limit" -eq 0 ]; then
        echo "=== $name: skipped, the ${BUDGET} s budget is spent"
        echo "$name,skipped,0,0" >> "$OUT/steps.csv"; status=1; return
    fi
    echo; echo "=== $name (limit $limit s, $SECONDS s into the ${BUDGET} s budget)"
    timeout "$limit" "$@" > "$log" 2>&1
    local rc=$?
    tail -n 40 "$log"
    echo "=== $name: rc=$rc, $((SECONDS - t0)) s"
    echo "$name,$rc,$((SECONDS - t0)),$limit" >> "$OUT/steps.csv"
    [ $rc -eq 0 ] || status=1
}

if [ $DRY -eq 1 ]; then  # tiny shapes on CPU: the plumbing, not a speed
    KERNELS=(--quick)
    TESTS=(tests/test_kernels_attention.py tests/test_kernels_ema.py)
    TEST_MARK="not cuda"  # the interpreter runs
    CASES=(small-8x20)
    MODE_NAMES=(eager_fp32 eager_bf16)
    RUN=(--device cpu --size micro --steps 2 --warmup 1)
    PATIENTS=60
    STAYS=(--device cpu --size micro --tokens 512 --hours 48 --steps 2 --warmup 1)
else
    KERNELS=(--attn 32x1024 --attn 8x4096)
    TEST_MARK=cuda
    TESTS=()
    for f in tests/test_kernels_attention.py tests/test_kernels_ema.py tests/test_models.py \
             tests/test_backend_parity.py; do
        [ -f "$f" ] && TESTS+=("$f")
    done
    CASES=(small-256x20 small-64x256 base-64x256)
    MODE_NAMES=(compile_bf16_ro ours)
    RUN=()
    PATIENTS=1000
    STAYS=(--steps 20 --warmup 3)
fi
MODES=()
for mode in "${MODE_NAMES[@]}"; do MODES+=(--mode "$mode"); done

# 1. the kernels, alone on the device
step "bench kernels" 130 python3 -m bench kernels "${KERNELS[@]}" --profile "$OUT" \
    --json "$OUT/kernels.json" --png "$OUT/kernels.png" --results "$OUT/results.csv"

# 2. warm the compile caches in parallel (untimed, nothing recorded) while the tests run
warm_limit=$(limit_for 200)
if [ "$warm_limit" -gt 0 ]; then
    for case in "${CASES[@]}"; do
        # rows of these one-step runs go to $WORK, not $OUT; so do their tuned configs, timed
        # while other processes share the device (Triton's compile cache keeps every candidate)
        for mode in "${MODE_NAMES[@]}"; do
            EHRJEPA_TRITON_TUNE_CACHE="$WORK/warm_tune.json" \
            timeout "$warm_limit" python3 -m bench train_step --case "$case" --mode "$mode" \
                "${RUN[@]}" --steps 1 --warmup 1 --results "$WORK/warm.csv" \
                > "$OUT/warm_${case}_${mode}.log" 2>&1 &
        done
    done
    EHRJEPA_TRITON_TUNE_CACHE="$WORK/warm_tune.json" \
    timeout "$warm_limit" bash -c "python3 -m ehrjepa synth --out $WORK/raw --patients $PATIENTS \
        --format parquet --no-progress && python3 -m ehrjepa preprocess --mimic-dir $WORK/raw \
        --out $WORK/stays --no-progress && python3 -m bench train_step --lengths stays \
        --data $WORK/stays ${STAYS[*]} --steps 1 --warmup 1 --results $WORK/warm.csv" \
        > "$OUT/warm_stays.log" 2>&1 &
fi
# the CUDA tests (CI runs the others); untuned launch configs keep them short
step tests 120 env EHRJEPA_TRITON_TUNE=0 python3 -m pytest -q -m "$TEST_MARK" \
    -p no:cacheprovider "${TESTS[@]}"
t0=$SECONDS
wait
echo "=== warm-up processes done after $((SECONDS - t0)) s more; logs $OUT/warm_*.log"

# 3. the timed train steps, one case at a time (warm caches)
for case in "${CASES[@]}"; do
    step "train_step $case" 120 python3 -m bench train_step --case "$case" "${MODES[@]}" "${RUN[@]}" --profile "$OUT" \
        --json "$OUT/train_step_$case.json" --results "$OUT/results.csv"
done
if [ -d "$WORK/stays" ]; then
    step "train_step stays" 150 python3 -m bench train_step --lengths stays --data "$WORK/stays" \
        "${STAYS[@]}" --json "$OUT/train_step_stays.json" --results "$OUT/results.csv"
else
    echo "=== train_step stays: skipped, no stays were made (see $OUT/warm_stays.log)"
    echo "train_step stays,skipped,0,0" >> "$OUT/steps.csv"; status=1
fi
echo; cat "$OUT/steps.csv"
echo "gpu_check.sh: $([ $status -eq 0 ] && echo all steps passed || echo SOME STEPS FAILED OR WERE SKIPPED) in $SECONDS s; rows in $OUT/results.csv"
exit $status
