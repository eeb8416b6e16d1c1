"""Tests of `ehrjepa probe --label-fractions` and of raw_gbdt: subsampling by subject, the report, skips.

The data is test_probe's hand-built processed directory (death planted in lactate's values), or
tiny arrays of subject ids.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from ehrjepa.data import open_processed
from ehrjepa.data.processed import SPLITS
from ehrjepa.probe import label_efficiency as le
from ehrjepa.probe.fit import evaluate_all, fit_gbdt
from ehrjepa.probe.report import label_efficiency_notes, markdown, write_report
from test_probe import FEATURES, cli, make_run, probe_inputs, write_processed


def stay_subjects(n_subjects, seed):
    """Subject id of each stay: 1 to 4 stays per subject, shuffled."""
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(n_subjects) * 7 + 1000, rng.integers(1, 5, n_subjects)))


def test_subsampling_is_by_subject_seeded_nested_and_leaves_test_whole():
    subjects = {"train": stay_subjects(200, 0), "val": stay_subjects(50, 1), "test": stay_subjects(60, 2)}
    fractions = [0.05, 0.25, 1.0]
    masks = le.subsample_masks(subjects, fractions, repeats=3, seed=0)
    assert set(masks) == {(f, r) for f in fractions for r in range(3)}
    for (f, r), m in masks.items():
        assert m["test"].all() and len(m["test"]) == len(subjects["test"])  # test never subsampled
        for split in ("train", "val"):
            chosen = np.unique(subjects[split][m[split]])
            assert len(chosen) == math.ceil(f * len(np.unique(subjects[split])))  # train and val alike
            assert np.array_equal(m[split], np.isin(subjects[split], chosen))  # every stay of a chosen subject
    for r in range(3):  # nested within a repeat; the full split at 1
        for split in ("train", "val"):
            assert not (masks[(0.05, r)][split] & ~masks[(0.25, r)][split]).any()
            assert masks[(1.0, r)][split].all()
    # seeded: the same seed draws the same subjects, another seed or repeat others
    again = le.subsample_masks(subjects, [0.25], repeats=3, seed=0)
    other = le.subsample_masks(subjects, [0.25], repeats=3, seed=1)
    assert all(np.array_equal(again[(0.25, r)]["train"], masks[(0.25, r)]["train"]) for r in range(3))
    assert not np.array_equal(other[(0.25, 0)]["train"], masks[(0.25, 0)]["train"])
    assert not np.array_equal(masks[(0.25, 0)]["val"], masks[(0.25, 1)]["val"])


def test_parse_fractions():
    assert le.parse_fractions("1,0.05, 0.01,0.05") == [0.01, 0.05, 1.0]
    assert le.fraction_key(0.05) == "0.05" and le.fraction_key(1.0) == "1"
    with pytest.raises(ValueError, match="'x' is not a number"):
        le.parse_fractions("0.1,x")
    with pytest.raises(ValueError, match=r"1.5 is not in \(0, 1\]"):
        le.parse_fractions("0.1,1.5")
    with pytest.raises(ValueError, match=r"0 is not in \(0, 1\]"):
        le.parse_fractions("0")


def test_fits_see_subsampled_train_and_val_and_the_full_test(monkeypatch):
    """Every fit gets only the chosen subjects' train and val rows; every score is on the whole test split."""
    subjects = {"train": stay_subjects(100, 3), "val": stay_subjects(40, 4), "test": stay_subjects(40, 5)}
    rng = np.random.default_rng(0)
    y = {s: (rng.random(len(subjects[s])) < 0.4).astype(float) for s in SPLITS}
    x = {"m": {s: np.c_[subjects[s], np.arange(len(subjects[s]))].astype(float) for s in SPLITS}}
    seen = []

    class Model:
        def decision_function(self, xt):
            seen[-1]["test"] = xt
            return rng.random(len(xt))

    def fake_fit(method, xt, yt, xv, yv, c_grid, seed, finetuners=None):
        seen.append({"train": xt, "val": xv, "y_train": yt})
        return Model(), {}, 0.5, True

    monkeypatch.setattr(le, "fit_method", fake_fit)
    out = le.label_efficiency(x, {"t": y}, subjects, [0.2, 1.0], repeats=2, seed=0)
    masks = le.subsample_masks(subjects, [0.2, 1.0], repeats=2, seed=0)
    assert len(seen) == 3  # at fraction 1 every repeat is the same full-split fit: made once, counted twice
    for fit, (f, r) in zip(seen, [(0.2, 0), (0.2, 1), (1.0, 0)]):
        for split in ("train", "val"):
            rows = fit[split][:, 1].astype(int)
            assert np.array_equal(rows, np.flatnonzero(masks[(f, r)][split]))
        assert len(fit["test"]) == len(subjects["test"])
    small = out["t"]["m"]["0.2"]
    assert small["n_train"] == np.mean([len(s["train"]) for s in seen[:2]]) < len(subjects["train"])
    assert small["positives_train"] == np.mean([s["y_train"].sum() for s in seen[:2]])
    assert out["t"]["m"]["1"]["n_train"] == len(subjects["train"])
    assert out["t"]["m"]["1"]["n_val"] == len(subjects["val"])
    assert out["t"]["m"]["1"]["repeats"] == 2 and out["t"]["m"]["1"]["auroc_sd"] == 0.0
    # the default probe's full-split fit is reused, not refit: only the subsamples are fit
    seen.clear()
    out = le.label_efficiency(x, {"t": y}, subjects, [0.2, 1.0], repeats=2, seed=0,
                              full={"t": {"m": {"auroc": 0.625, "auprc": 0.5}}})
    assert len(seen) == 2 and out["t"]["m"]["1"]["auroc_mean"] == 0.625 and out["t"]["m"]["1"]["repeats"] == 2


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("processed")
    write_processed(out)
    return open_processed(out)


def subjects_of(processed, rows):
    return {s: processed.stays.column("subject_id").to_numpy()[rows[s]] for s in SPLITS}


def test_raw_gbdt_finds_the_planted_signal_and_is_seeded(planted):
    x, labels, _ = probe_inputs(planted)
    tasks, skipped, _, _ = evaluate_all({"raw_gbdt": x["raw_features"]}, labels, n_bootstrap=50, seed=0)
    assert skipped == {}
    death = tasks["mortality_hosp"]["raw_gbdt"]
    assert death["auroc"] > 0.85 and death["auroc_ci"][0] > 0.75, death
    assert death["max_leaf_nodes"] in (7, 31) and 1 <= death["n_trees"] <= 300
    assert abs(tasks["los_gt_7d"]["raw_gbdt"]["auroc"] - 0.5) < 0.15  # LOS is independent of the features
    y = {s: labels["mortality_hosp"][s].astype(int) for s in ("train", "val")}
    fits = [fit_gbdt(x["raw_features"]["train"], y["train"], x["raw_features"]["val"], y["val"], seed=3)
            for _ in range(2)]
    test = x["raw_features"]["test"]
    assert np.array_equal(fits[0][0].decision_function(test), fits[1][0].decision_function(test))


def test_label_efficiency_report_shape_json_markdown_png(planted, tmp_path):
    x, labels, rows = probe_inputs(planted)
    out = le.label_efficiency(x, {"mortality_hosp": labels["mortality_hosp"]}, subjects_of(planted, rows),
                              [0.3, 1.0], repeats=2, seed=0)
    assert list(out) == ["mortality_hosp"] and list(out["mortality_hosp"]) == ["raw_features", "noise"]
    keys = {"auroc_mean", "auroc_sd", "auprc_mean", "auprc_sd", "n_train", "positives_train", "n_val",
            "positives_val", "repeats", "repeats_skipped", "skip_reasons"}
    for method, fractions in out["mortality_hosp"].items():
        assert list(fractions) == ["0.3", "1"]
        for r in fractions.values():
            assert set(r) == keys and r["repeats"] == 2 and r["repeats_skipped"] == 0
    full, part = out["mortality_hosp"]["raw_features"]["1"], out["mortality_hosp"]["raw_features"]["0.3"]
    assert full["auroc_sd"] == 0.0 and full["auroc_mean"] > 0.85  # both repeats are the whole split
    assert full["n_train"] == np.sum(~np.isnan(labels["mortality_hosp"]["train"]))
    assert part["n_train"] < 0.4 * full["n_train"] and part["auroc_mean"] > 0.75 and part["auroc_sd"] > 0

    report = {"tasks": {}, "skipped": {}, "pooling": "p", "hours": 24, "label_efficiency": out,
              "label_efficiency_setup": {"fractions": [0.3, 1.0], "repeats": 2}}
    write_report(report, tmp_path)
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert loaded["label_efficiency"]["mortality_hosp"]["noise"]["1"]["repeats"] == 2
    assert loaded["plots"] == ["label_efficiency_mortality_hosp.png"]
    assert (tmp_path / "label_efficiency_mortality_hosp.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "report.md").read_text()
    assert "## Label efficiency" in md and "| mortality_hosp | raw_features | 0.3 |" in md


def test_fractions_with_too_few_positives_are_skipped_and_reported(tmp_path):
    write_processed(tmp_path, n_stays=600, seed=4, death_rate=0.06)
    processed = open_processed(tmp_path)
    x, labels, rows = probe_inputs(processed)
    out = le.label_efficiency({"raw_features": x["raw_features"]}, {"mortality_hosp": labels["mortality_hosp"]},
                              subjects_of(processed, rows), [0.02, 1.0], repeats=3, seed=0)
    tiny, full = out["mortality_hosp"]["raw_features"]["0.02"], out["mortality_hosp"]["raw_features"]["1"]
    assert tiny["repeats"] == 0 and tiny["repeats_skipped"] == 3 and math.isnan(tiny["auroc_mean"])
    assert len(tiny["skip_reasons"]) == 3 and "positives (need >= 5)" in tiny["skip_reasons"][0]
    assert full["repeats"] == 3 and full["repeats_skipped"] == 0
    report = {"tasks": {}, "skipped": {}, "pooling": "p", "hours": 24, "label_efficiency": out}
    notes = label_efficiency_notes(report)
    assert len(notes) == 1 and notes[0].startswith("label fraction 0.02 of mortality_hosp: 3 of 3 repeats skipped")
    assert "| mortality_hosp | raw_features | 0.02 | nan | nan | - | - | - | - | 0 | 3 |" in markdown(report)


def test_cli_label_fractions_end_to_end(tmp_path, capsys):
    data_dir = tmp_path / "processed"
    write_processed(data_dir, n_stays=300, seed=5)
    make_run(tmp_path / "run", len(FEATURES))
    base = ["--run", str(tmp_path / "run"), "--data", str(data_dir), "--bootstrap", "20", "--device", "cpu",
            "--no-progress", "--methods", "raw_features"]
    rc = cli(base + ["--out", str(tmp_path / "r"), "--label-fractions", "0.5,1", "--repeats", "2"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "label efficiency (test AUROC, mean over 2 repeats" in printed and "AUROC at 0.5 | AUROC at 1 |" in printed
    assert re.search(r"\| los_gt_3d \| raw_features \| \d\.\d{3} \| \d\.\d{3} \|", printed)
    loaded = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(loaded["label_efficiency"]) == set(loaded["tasks"])
    r = loaded["label_efficiency"]["mortality_hosp"]["raw_features"]
    assert list(r) == ["0.5", "1"] and r["1"]["repeats"] == 2
    # at fraction 1 the refit is the default fit: the same test AUROC
    assert r["1"]["auroc_mean"] == pytest.approx(loaded["tasks"]["mortality_hosp"]["raw_features"]["auroc"])
    assert loaded["label_efficiency_setup"] == {"fractions": [0.5, 1.0], "repeats": 2, "tasks": list(loaded["tasks"]),
                                                "subsampled": ["train", "val"], "by": "subject_id"}
    assert (tmp_path / "r" / "label_efficiency_los_gt_3d.png").is_file()
    # --label-tasks: only those are refit at the fractions; the default table keeps every task
    rc = cli(base + ["--out", str(tmp_path / "r1"), "--label-fractions", "0.5,1", "--repeats", "1",
                     "--label-tasks", "los_gt_3d,phenotypes"])
    assert rc == 0
    loaded = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert list(loaded["label_efficiency"]) == ["los_gt_3d"] and "mortality_hosp" in loaded["tasks"]
    capsys.readouterr()

    for bad, message in ((["--label-fractions", "0.5,2"], "2 is not in (0, 1]"),
                         (["--methods", "jepa,gbdt"], "--methods: gbdt: choose from"),
                         (["--repeats", "0"], "--repeats must be >= 1"),
                         (["--label-tasks", "death"], "--label-tasks: death: choose from")):
        rc = cli(base + ["--out", str(tmp_path / "bad")] + bad)
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_paired_differences_at_a_fraction_share_the_resamples():
    """paired_differences: the point difference of repeat-mean AUROCs, and an interval that excludes
    0 for a method that is better on every resample-sized chunk and includes it for a copy."""
    from ehrjepa.probe.label_efficiency import paired_differences
    from ehrjepa.probe.metrics import ranked_metrics

    rng = np.random.default_rng(4)
    y = (rng.random(600) < 0.3).astype(np.int64)
    good = [y + rng.normal(0, 0.8, len(y)) for _ in range(3)]
    weak = [y + rng.normal(0, 2.5, len(y)) for _ in range(3)]
    d = paired_differences(y, {"jepa": good, "random_init": weak, "raw_gbdt": good}, 300, seed=1)
    want = np.mean([ranked_metrics(y, s)[0][0] for s in good]) - np.mean([ranked_metrics(y, s)[0][0] for s in weak])
    assert d["jepa - random_init"]["auroc_diff"] == pytest.approx(want, abs=1e-9)
    assert d["jepa - random_init"]["auroc_diff_ci"][0] > 0
    same = d["jepa - raw_gbdt"]
    assert same["auroc_diff"] == pytest.approx(0.0, abs=1e-12) and same["auroc_diff_ci"] == [0.0, 0.0]
    assert "jepa - raw_features" not in d and d["jepa - random_init"]["repeats"] == 3
