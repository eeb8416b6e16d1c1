"""bench/gpu_check.sh keeps to its time budget: a step that does not fit in what is left is
skipped and recorded, never started, and the script then says so and exits non-zero. (The whole
dry run, `bash bench/gpu_check.sh --dry-run`, takes minutes: it is a manual check.)"""
import csv
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_steps_that_do_not_fit_the_budget_are_skipped_and_recorded(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "GPU_CHECK_BUDGET_S": "10"}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(tmp_path / "steps.csv", newline="") as f:
        steps = {r["step"]: r["rc"] for r in csv.DictReader(f)}
    assert steps["bench kernels"] == "skipped" and steps["tests"] == "skipped"
    assert steps["train_step small-8x20"] == "skipped"
    assert "SOME STEPS FAILED OR WERE SKIPPED" in proc.stdout
    assert not (tmp_path / "results.csv").exists()  # nothing ran, nothing recorded
    assert (tmp_path / "versions.txt").read_text().startswith("# CPU (dry run)")


def test_unknown_option_is_an_error():
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--bogus"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage: bash bench/gpu_check.sh" in proc.stderr
