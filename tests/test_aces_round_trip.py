"""The ACES round trip (scripts/aces_round_trip.sh) on a tiny synthetic MEDS cohort: ACES makes the
labels of configs/tasks/*.yaml over every shard, `ehrjepa probe --labels` scores them. Runs only
where ACES is installed (ACES_CLI, or aces-cli on PATH; it needs its own venv for its polars)."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
TASKS = sorted(p.stem for p in (REPO / "configs" / "tasks").glob("*.yaml"))
ACES_CLI = os.environ.get("ACES_CLI") or shutil.which("aces-cli")

pytestmark = pytest.mark.skipif(
    not (ACES_CLI and shutil.which(ACES_CLI)),
    reason="ACES not installed: set ACES_CLI to an aces-cli (es-aces in its own venv) or put "
           "aces-cli on PATH")


@pytest.fixture(scope="module")
def round_trip(tmp_path_factory):
    work = tmp_path_factory.mktemp("aces") / "work"
    env = dict(os.environ, ACES_CLI=ACES_CLI, PATIENTS="300", STEPS="10", BOOTSTRAP="20",
               METHODS="jepa")
    res = subprocess.run(["bash", str(REPO / "scripts" / "aces_round_trip.sh"), str(work)],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return work, res.stdout


def test_label_files_per_task_and_shard_with_both_classes(round_trip):
    work, _ = round_trip
    shards = sorted(p.relative_to(work / "meds" / "data")
                    for p in (work / "meds" / "data").rglob("*.parquet"))
    assert TASKS == ["icu_mortality_24h", "icu_readmission_30d"]
    for task in TASKS:
        files = sorted(p.relative_to(work / "labels" / task)
                       for p in (work / "labels" / task).rglob("*.parquet"))
        assert files == shards, task  # ACES writes labels/TASK/<shard>.parquet, one per data shard
        values = []
        for f in files:
            t = pq.read_table(work / "labels" / task / f)
            assert {"subject_id", "prediction_time", "boolean_value"} <= set(t.column_names)
            values += t["boolean_value"].to_pylist()
        assert set(values) == {False, True}, f"{task}: {sum(values)} of {len(values)} positive"


def test_probe_report_has_every_task(round_trip):
    work, stdout = round_trip
    report = json.loads((work / "report" / "report.json").read_text())
    assert sorted(report["label_files"]["tasks"]) == TASKS
    for task in TASKS:
        placed = report["label_files"]["tasks"][task]
        assert placed["placed"] > 0 and placed["positives"] > 0, (task, placed)
        assert task in report["tasks"] or task in report["skipped"], task
    assert any(0 <= m["auroc"] <= 1 for t in report["tasks"].values() for m in t.values())
    assert f"report: {work}/report/report.md" in stdout
    times = (work / "times.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in times][-1] == "probe --labels"
