#!/usr/bin/env bash
# The ACES round trip on the synthetic MEDS data: synth a MEDS cohort, preprocess it, pretrain the
# micro model briefly (or take a finished run), let ACES (es-aces) make the labels of every task
# config in configs/tasks/ over every shard, then score them with `ehrjepa probe --labels`.
#
#   scripts/aces_round_trip.sh [WORKDIR]          (default WORKDIR: ./aces_round_trip)
#
# Environment (all optional):
#   ACES_CLI   the aces-cli to run (default: aces-cli on PATH); ACES needs an older polars than
#              ehrjepa, so it usually lives in its own venv, e.g. ACES_CLI=/tmp/acesenv/bin/aces-cli
#   PATIENTS   synthetic patients (default 2000)     SEED   synth, split and training seed (default 0)
#   STEPS      micro pretraining steps (default 1000)  HOURS  probe --hours (default 24)
#   RUN        a finished `ehrjepa train` run folder to probe instead of pretraining one (it must
#              have been trained on this data's feature catalog)
#   METHODS    probe --methods (default: the probe's own default)
#   BOOTSTRAP  probe --bootstrap resamples (default 1000)
#
# WORKDIR gets meds/ (the MEDS dataset), processed/, run/ (unless RUN), labels/TASK/SPLIT/K.parquet
# (ACES's layout: one file per shard of data/), aces.log and aces_logs/ (ACES's), label_counts.tsv,
# report/ (report.md, report.json) and times.tsv (seconds per stage).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-aces_round_trip}"
ACES_CLI="${ACES_CLI:-aces-cli}"
PATIENTS="${PATIENTS:-2000}"
SEED="${SEED:-0}"
STEPS="${STEPS:-1000}"
HOURS="${HOURS:-24}"
BOOTSTRAP="${BOOTSTRAP:-1000}"
ehrjepa() { PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python -m ehrjepa "$@"; }
die() { echo "aces_round_trip: $*" >&2; exit 1; }

command -v "$ACES_CLI" >/dev/null || die "ACES not found: '$ACES_CLI' (set ACES_CLI to an aces-cli, e.g. from a venv with es-aces installed)"
TASKS=("$REPO"/configs/tasks/*.yaml)
[ -e "${TASKS[0]}" ] || die "no task configs in $REPO/configs/tasks/"
if [ -n "${RUN:-}" ]; then [ -d "$RUN" ] || die "RUN folder not found: $RUN"; fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
TIMES="$WORK/times.tsv"
printf 'stage\tseconds\n' > "$TIMES"
stage() {  # stage NAME COMMAND...: run it, say what it is, record its wall seconds
    local name="$1"; shift
    echo "== $name" >&2
    local t0=$SECONDS
    "$@" || die "stage '$name' failed (exit $?)"
    printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >> "$TIMES"
}

rm -rf "$WORK/meds" "$WORK/labels" "$WORK/aces_logs" "$WORK/report"
stage "synth ($PATIENTS patients, MEDS)" \
    ehrjepa synth --format meds --out "$WORK/meds" --patients "$PATIENTS" --seed "$SEED" --no-progress
stage "preprocess --meds" \
    ehrjepa preprocess --meds "$WORK/meds" --out "$WORK/processed" --seed "$SEED" --no-progress
if [ -n "${RUN:-}" ]; then
    echo "== pretraining skipped: probing RUN=$RUN" >&2
else
    RUN="$WORK/run"
    rm -rf "$RUN"
    stage "train micro ($STEPS steps)" \
        ehrjepa train --config "$REPO/configs/micro.yaml" --data "$WORK/processed" --run-dir "$RUN" \
            --set train.device=cpu --set "train.seed=$SEED" --set "train.max_steps=$STEPS" --no-progress
fi

# ACES: one Hydra multirun over every task x every shard of data/, in one process (ACES starts
# slowly); data/train/0.parquet -> labels/TASK/train/0.parquet. Hydra fills ${cohort_name} in
# config_path per job. Hydra's logs go to WORKDIR/aces_logs/, not labels/ (probe --labels takes
# every folder under labels/ for a task).
SHARDS="$(cd "$WORK/meds/data" && find . -name '*.parquet' | sed 's|^\./||; s|\.parquet$||' | sort | paste -sd, -)"
[ -n "$SHARDS" ] || die "no parquet shards under $WORK/meds/data"
NAMES="$(for config in "${TASKS[@]}"; do basename "$config" .yaml; done | paste -sd, -)"
aces() {  # ACES's log goes to WORKDIR/aces.log
    "$ACES_CLI" -m data=sharded data.standard=meds "data.root=$WORK/meds/data" "data.shard=$SHARDS" \
        "cohort_dir=$WORK/labels" "cohort_name=$NAMES" "config_path=$REPO/configs/tasks/\${cohort_name}.yaml" \
        "log_dir=$WORK/aces_logs" > "$WORK/aces.log" 2>&1 || die "ACES failed; its log: $WORK/aces.log"
}
stage "aces (${#TASKS[@]} tasks x $(tr ',' '\n' <<< "$SHARDS" | wc -l) shards)" aces
for config in "${TASKS[@]}"; do
    task="$(basename "$config" .yaml)"
    [ -d "$WORK/labels/$task" ] || die "ACES wrote no labels for $task; log: $WORK/aces.log"
    n_files="$(find "$WORK/labels/$task" -name '*.parquet' | wc -l)"
    [ "$n_files" -eq "$(tr ',' '\n' <<< "$SHARDS" | wc -l)" ] \
        || die "ACES wrote $n_files label files for $task, expected one per shard ($SHARDS); log: $WORK/aces.log"
done

# what ACES wrote: per task and split, labels and positives (and the columns probe --labels reads)
PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" python - "$WORK/labels" <<'PY' | tee "$WORK/label_counts.tsv"
import sys
from pathlib import Path
import pyarrow.parquet as pq
print("task\tshard\tlabels\tpositives")
for f in sorted(Path(sys.argv[1]).glob("*/**/*.parquet")):
    t = pq.read_table(f)
    missing = {"subject_id", "prediction_time", "boolean_value"} - set(t.column_names)
    if missing:
        sys.exit(f"aces_round_trip: {f}: ACES output lacks {', '.join(sorted(missing))}")
    task, shard = f.relative_to(sys.argv[1]).parts[0], "/".join(f.relative_to(sys.argv[1]).parts[1:])
    print(f"{task}\t{shard[:-len('.parquet')]}\t{t.num_rows}\t{sum(t['boolean_value'].to_pylist())}")
PY

PROBE=(probe --run "$RUN" --data "$WORK/processed" --out "$WORK/report" --labels "$WORK/labels"
       --hours "$HOURS" --bootstrap "$BOOTSTRAP" --seed "$SEED" --device cpu --no-progress)
[ -n "${METHODS:-}" ] && PROBE+=(--methods "$METHODS")
stage "probe --labels" ehrjepa "${PROBE[@]}"

echo "== seconds per stage ($TIMES)" >&2
column -t -s $'\t' "$TIMES" >&2 || cat "$TIMES" >&2
echo "aces_round_trip: done; report: $WORK/report/report.md (and report.json), labels: $WORK/labels"
