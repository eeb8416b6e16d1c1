"""`python -m bench train_step --lengths stays`: a smoke run on a tiny processed folder (three
steps per case) whose JSON must hold real tokens/s, padded tokens/s and the padded fraction for
sdpa (padded) and triton (packed), on the stays' lengths and on 29-hour windows. Speeds are not
judged here (bench/ is for that), only that they are measured and agree with each other."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_train_step_on_stay_lengths_reports_real_and_padded_tokens(tmp_path):
    from ehrjepa.data.preprocess import preprocess
    from ehrjepa.synth import write_synthetic

    write_synthetic(tmp_path / "mimic", 30, seed=2, progress=False)
    data = preprocess(tmp_path / "mimic", tmp_path / "processed", progress=False)
    out, record = tmp_path / "ts.json", tmp_path / "results.csv"
    cmd = [sys.executable, "-m", "bench", "train_step", "--lengths", "stays", "--data", str(data),
           "--size", "micro", "--json", str(out), "--device", "cpu", "--threads", "1",
           "--steps", "2", "--warmup", "1", "--hours", "48", "--min-length", "6", "--tokens", "384",
           "--results", str(record)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| stays | sdpa |" in done.stdout and "| windows-29 | triton |" in done.stdout

    report = json.loads(out.read_text())
    assert report["tokens"] == 384 and report["device"].startswith("CPU")
    rows = {(r["case"], r["attention"]): r for r in report["results"]}
    assert set(rows) == {(c, a) for c in ("stays", "windows-29") for a in ("sdpa", "triton")}
    for (case, attention), r in rows.items():
        assert "error" not in r, r
        assert r["size"] == "micro" and r["batches"] == 2 and r["s"] > 0
        assert 0 < r["real_tokens_s"] <= r["padded_tokens_s"]
        assert 0 <= r["padded_fraction"] < 1
        # real / padded tokens is what is left after the padding (both rounded in the JSON)
        assert r["real_tokens_s"] / r["padded_tokens_s"] == pytest.approx(1 - r["padded_fraction"],
                                                                          abs=2e-3)
    for case in ("stays", "windows-29"):  # both backends ran the same batches
        assert rows[case, "sdpa"]["padded_fraction"] == rows[case, "triton"]["padded_fraction"]
        assert rows[case, "sdpa"]["mean_batch"] == rows[case, "triton"]["mean_batch"]
    assert rows["windows-29", "sdpa"]["padded_fraction"] == 0  # every window has 29 hours
    assert rows["windows-29", "sdpa"]["mean_batch"] == 384 // 29

    with open(record, newline="") as f:  # each case's row, as the results table shows it
        tools = sorted((r["case"], r["tool"]) for r in csv.DictReader(f))
    assert tools == [("micro-stays", "sdpa-padded"), ("micro-stays", "triton-packed"),
                     ("micro-windows-29", "sdpa-padded"), ("micro-windows-29", "triton-packed")]
