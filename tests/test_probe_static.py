"""`ehrjepa probe --static` and the `clinical_score` method, on a small 2012-challenge set made
here: the static columns' encoding, the score ranking without fitting, and the CLI end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ehrjepa.data.processed import open_processed
from ehrjepa.probe.fit import ScoreRanker, fit_method
from ehrjepa.probe.static import static_features

from test_physionet2012 import descriptors, write_set

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ehrjepa", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """120 stays whose death follows their SAPS-I and heart rate; some descriptors unknown."""
    root = tmp_path_factory.mktemp("static")
    rng = np.random.default_rng(5)
    stays, outcomes = {}, []
    for k in range(120):
        rid = 170000 + k
        saps = int(rng.integers(5, 30))
        died = int(rng.random() < 1 / (1 + np.exp(-(saps - 20) / 3)))
        lines = descriptors(rid, age=-1 if k % 10 == 0 else int(rng.integers(20, 90)),
                            gender=int(rng.integers(0, 2)), height=-1 if k % 3 else 170,
                            icu=int(rng.integers(1, 5)), weight=80)
        for h in range(0, 48, 4):
            lines.append((f"{h:02d}:15", "HR", 80 + 30 * died + float(rng.normal(0, 10))))
        stays[rid] = lines
        outcomes.append((rid, saps if k % 7 else -1, 3, 10, -1, died))
    write_set(root / "src", "a", stays, outcomes)
    done = cli("preprocess", "--physionet2012", root / "src", "--out", root / "p12", "--no-progress")
    assert done.returncode == 0, done.stderr
    return root


def test_static_columns_encoding(data):
    p = open_processed(data / "p12")
    rows = {s: p.split_indices(s) for s in ("train", "val", "test")}
    x, names = static_features(p, rows)
    assert names[:8] == ["age", "age_unknown", "sex", "sex_unknown", "height_cm",
                         "height_cm_unknown", "weight_kg", "weight_kg_unknown"]
    assert all(n.startswith("icu_type_") for n in names[8:]) and len(names) > 8
    age = p.stays["age"].to_numpy(zero_copy_only=False)
    train_median = np.nanmedian(age[rows["train"]])
    for s in rows:
        a = age[rows[s]]
        np.testing.assert_allclose(x[s][:, 0], np.where(np.isnan(a), train_median, a))
        np.testing.assert_array_equal(x[s][:, 1], np.isnan(a))
        # one-hot: at most one icu_type column set per stay
        assert (x[s][:, 8:].sum(axis=1) <= 1).all()


def test_clinical_score_ranks_by_the_score_itself():
    x_train = np.array([[1.0], [np.nan], [3.0], [5.0]])
    model, params, val_auroc, _ = fit_method("clinical_score", x_train, np.array([0, 0, 1, 1]),
                                             np.array([[2.0], [9.0]]), np.array([0, 1]))
    assert isinstance(model, ScoreRanker) and params == {"unknown_as": 3.0} and val_auroc == 1.0
    np.testing.assert_array_equal(model.decision_function(np.array([[7.0], [np.nan]])), [7.0, 3.0])


def test_probe_static_and_clinical_score_through_the_cli(data):
    run = data / "run"
    done = cli("train", "--config", REPO / "configs" / "micro.yaml", "--data", data / "p12",
               "--run-dir", run, "--no-progress", "--set", "train.max_steps=3",
               "--set", "train.warmup_steps=1", "--set", "data.batch_size=8",
               "--set", "data.val_batches=1", "--set", "data.length=48",
               "--set", "data.stride=48", "--set", "mask.context_hours=36",
               "--set", "mask.target_hours=12", "--set", "train.cpu_threads=1")
    assert done.returncode == 0, done.stderr[-2000:]
    done = cli("probe", "--run", run, "--data", data / "p12", "--out", data / "rep", "--hours", "48",
               "--tasks", "mortality_hosp", "--static", "--bootstrap", "20", "--no-progress",
               "--methods", "jepa,raw_features,clinical_score")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((data / "rep" / "report.json").read_text())
    assert report["static"][0] == "age"
    assert "static descriptors" in report["methods"]["jepa"]
    assert "static" not in report["methods"]["clinical_score"]
    score = report["tasks"]["mortality_hosp"]["clinical_score"]
    assert score["auroc"] > 0.6 and "unknown_as" in score
    # data without a clinical score column: an error naming stays.parquet
    from ehrjepa.probe.run import clinical_scores

    mimic = data / "mimic"
    assert cli("synth", "--out", mimic, "--patients", "30", "--no-progress").returncode == 0
    assert cli("preprocess", "--mimic-dir", mimic, "--out", data / "pm", "--no-progress").returncode == 0
    with pytest.raises(ValueError, match=r"pm/stays.parquet has no clinical score column \(saps1"):
        clinical_scores(open_processed(data / "pm"), data / "pm")
