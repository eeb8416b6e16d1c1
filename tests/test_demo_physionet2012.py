"""`ehrjepa demo --physionet2012 DIR` on a small challenge-shaped download made here: the four
stages run through the CLI with the challenge's split (set-a train/val, set-b test)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ehrjepa.data.processed import open_processed

from test_physionet2012 import descriptors, write_set

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_demo_on_a_downloaded_challenge_set(tmp_path):
    rng = np.random.default_rng(11)
    src = tmp_path / "download"
    for name, first in (("a", 180000), ("b", 190000)):
        stays, outcomes = {}, []
        for k in range(60):
            rid = first + k
            died = int(rng.random() < 0.3)
            lines = descriptors(rid, age=int(rng.integers(30, 90)), icu=int(rng.integers(1, 5)))
            lines += [(f"{h:02d}:30", "HR", 70 + 40 * died + float(rng.normal(0, 8)))
                      for h in range(0, 48, 3)]
            stays[rid] = lines
            outcomes.append((rid, int(rng.integers(5, 25)), 2, 9, -1, died))
        write_set(src, name, stays, outcomes, tarball=True)
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "ehrjepa", "demo", "--physionet2012", str(src),
                           "--out", str(out), "--steps", "3", "--config",
                           str(REPO / "configs" / "micro.yaml")],
                          capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1/4 splits: the challenge's protocol" in done.stdout
    p = open_processed(out / "processed")
    split = dict(zip(p.stays["stay_id"].to_pylist(), p.stays["split"].to_pylist()))
    assert all(split[190000 + k] == "test" for k in range(60))
    assert {split[180000 + k] for k in range(60)} == {"train", "val"}
    report = json.loads((out / "probe" / "report.json").read_text())
    assert report["hours"] == 48 and "clinical_score" in report["methods"]
    assert report["static"][0] == "age"
