"""Tests of `ehrjepa probe`: metrics, bootstrap, raw features, probes on planted labels, report.

The data here is a tiny processed directory built by hand in the on-disk format of DESIGN.md
(read back with the real `open_processed`), with outcomes planted in one feature so that a linear
model must find them.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ehrjepa.data import open_processed
from ehrjepa.data.processed import SPLITS
from ehrjepa.probe.baselines import STATS, raw_feature_names, raw_features
from ehrjepa.probe.fit import evaluate_all
from ehrjepa.probe.metrics import bootstrap, percentile_ci, ranked_metrics
from ehrjepa.probe.report import markdown, results_table, write_report
from ehrjepa.probe.run import unseen_positions_note
from ehrjepa.probe.tasks import HOURS, STAY_TASKS, skip_reason, task_labels

FEATURES = ["heart_rate", "lactate", "sodium"]


# --- a hand-built processed directory --------------------------------------------------------

def write_processed(out, n_stays=900, seed=0, death_rate=None):
    """Write OUT/{stays.parquet, mean.npy, count.npy, features.json, manifest.json}.

    Each stay has a latent severity z. Lactate's hourly mean is 2 + z + noise and in-hospital
    death is z + noise > 1, so a linear model on lactate's mean finds death. LOS is independent
    of z. With `death_rate`, death is drawn at that rate independent of everything instead.
    """
    rng = np.random.default_rng(seed)
    los_days = np.exp(rng.normal(1.1, 0.7, n_stays))
    n_hours = np.clip(np.ceil(los_days * 24), 1, 72).astype(np.int32)
    n_hours[rng.random(n_stays) < 0.1] = 10  # some stays too short for the 24 h cohort
    z = rng.normal(0, 1, n_stays)
    if death_rate is None:
        death = (z + rng.normal(0, 0.4, n_stays) > 1.0).astype(np.int8)
    else:
        death = (rng.random(n_stays) < death_rate).astype(np.int8)
    offset = np.r_[0, np.cumsum(n_hours)[:-1]].astype(np.int64)
    total = int(n_hours.sum())
    stay_of_hour = np.repeat(np.arange(n_stays), n_hours)
    mean = np.full((total, len(FEATURES)), np.nan, dtype=np.float32)
    count = np.zeros((total, len(FEATURES)), dtype=np.uint16)
    seen = rng.random((total, len(FEATURES))) < np.array([0.9, 0.4, 0.2])
    seen[np.arange(n_stays)[stay_of_hour] % 4 == 0, 2] = False  # every 4th stay never has sodium
    values = np.stack([80 + 10 * rng.normal(size=total),
                       2 + z[stay_of_hour] + 0.5 * rng.normal(size=total),
                       140 + 3 * rng.normal(size=total)], axis=1).astype(np.float32)
    mean[seen] = values[seen]
    count[seen] = rng.integers(1, 4, size=seen.sum())
    split = np.array(SPLITS)[rng.choice(3, size=n_stays, p=[0.6, 0.2, 0.2])]
    base = np.datetime64("2150-01-01T00:00:00", "s")
    intime = base + (np.arange(n_stays) * 86400).astype("timedelta64[s]")
    outtime = intime + (los_days * 86400).astype("timedelta64[s]")
    stays = pa.table({
        "stay_id": pa.array(30_000_000 + np.arange(n_stays), pa.int64()),
        "subject_id": pa.array(10_000_000 + np.arange(n_stays), pa.int64()),
        "hadm_id": pa.array(20_000_000 + np.arange(n_stays), pa.int64()),
        "intime": pa.array(intime, pa.timestamp("s")),
        "outtime": pa.array(outtime, pa.timestamp("s")),
        "n_hours": pa.array(n_hours, pa.int32()),
        "offset": pa.array(offset, pa.int64()),
        "split": pa.array(split, pa.string()),
        "death_hosp": pa.array(death, pa.int8()),
        "los_days": pa.array(los_days, pa.float64()),
    })
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(stays, out / "stays.parquet")
    np.save(out / "mean.npy", mean)
    np.save(out / "count.npy", count)
    train_hours = np.isin(stay_of_hour, np.flatnonzero(split == "train"))
    norm_mean = np.nanmean(mean[train_hours], axis=0)
    norm_std = np.nanstd(mean[train_hours], axis=0)
    (out / "features.json").write_text(json.dumps({
        "features": FEATURES, "norm": {"mean": norm_mean.tolist(), "std": norm_std.tolist()},
        "split": {"seed": seed, "fractions": [0.8, 0.1, 0.1]}}))
    (out / "manifest.json").write_text(json.dumps({"tables": {}, "warnings": [], "n_stays": n_stays,
                                                   "total_hours": total}))
    return SimpleNamespace(z=z, death=death, n_hours=n_hours)


def cohort_rows(processed, split, hours=HOURS):
    rows = processed.split_indices(split)
    return rows[processed.stays.column("n_hours").to_numpy()[rows] >= hours]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("processed")
    truth = write_processed(out)
    return open_processed(out), truth


def probe_inputs(processed, hours=HOURS):
    """x {method: {split: X}} with raw_features and a fake 'embedding', and labels {task: {split: y}}."""
    rows = {s: cohort_rows(processed, s, hours) for s in SPLITS}
    raw = {s: raw_features(processed, rows[s], hours) for s in SPLITS}
    rng = np.random.default_rng(1)
    noise = {s: rng.normal(size=(len(rows[s]), 8)).astype(np.float32) for s in SPLITS}
    per_split = {s: task_labels(processed.stays, rows[s]) for s in SPLITS}
    labels = {t: {s: per_split[s][t] for s in SPLITS} for t in STAY_TASKS}
    return {"raw_features": raw, "noise": noise}, labels, rows


# --- metrics and the bootstrap ---------------------------------------------------------------

def test_ranked_metrics_match_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(float)
    score = np.round(y + rng.normal(size=300), 1)  # rounding makes many ties
    weights = rng.integers(0, 4, size=(3, 300))
    auroc, auprc, valid = ranked_metrics(y, score, weights)
    assert valid.all()
    for b in range(3):
        assert auroc[b] == pytest.approx(roc_auc_score(y, score, sample_weight=weights[b]), abs=1e-12)
        assert auprc[b] == pytest.approx(average_precision_score(y, score, sample_weight=weights[b]), abs=1e-12)
    auroc1, auprc1, _ = ranked_metrics(y, score)
    assert auroc1[0] == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert auprc1[0] == pytest.approx(average_precision_score(y, score), abs=1e-12)


def test_bootstrap_interval_contains_estimate_and_narrows_with_n():
    widths = []
    for n in (120, 3000):
        rng = np.random.default_rng(n)
        y = (rng.random(n) < 0.25).astype(float)
        score = y + rng.normal(size=n)
        point_auroc, point_auprc, _ = ranked_metrics(y, score)
        boot = bootstrap(y, {"m": score}, n_bootstrap=500, seed=0)
        auroc_s, auprc_s = boot["samples"]["m"]
        lo, hi = percentile_ci(auroc_s)
        plo, phi = percentile_ci(auprc_s)
        assert lo < point_auroc[0] < hi and plo < point_auprc[0] < phi
        assert boot["skipped"] == 0 and len(auroc_s) == 500
        widths.append(hi - lo)
    assert widths[1] < 0.5 * widths[0], widths  # ~sqrt(25) = 5x narrower in theory


def test_bootstrap_is_seeded_paired_and_counts_single_class_resamples():
    y = np.zeros(12)
    y[0] = 1  # one positive: about (11/12)^12 = 35 % of resamples miss it
    score = np.linspace(1, 0, 12)
    a = bootstrap(y, {"m": score, "neg": -score}, n_bootstrap=400, seed=3)
    b = bootstrap(y, {"m": score, "neg": -score}, n_bootstrap=400, seed=3, chunk_elems=100)
    assert 80 < a["skipped"] < 220
    assert len(a["samples"]["m"][0]) == 400 - a["skipped"]
    np.testing.assert_allclose(a["samples"]["m"][0], b["samples"]["m"][0], rtol=1e-12)  # chunking changes nothing
    # same resamples for every method: the reversed score has AUROC 1 - AUROC on each resample
    np.testing.assert_allclose(a["samples"]["neg"][0], 1 - a["samples"]["m"][0])


# --- tasks and raw features ------------------------------------------------------------------

def test_task_labels_and_nulls():
    stays = pa.table({"death_hosp": pa.array([0, 1, None, 0], pa.int8()),
                      "los_days": pa.array([1.0, 3.5, 8.0, None], pa.float64())})
    lab = task_labels(stays, np.array([3, 2, 1, 0]))
    np.testing.assert_array_equal(lab["mortality_hosp"], [0, np.nan, 1, 0])
    np.testing.assert_array_equal(lab["los_gt_3d"], [np.nan, 1, 1, 0])
    np.testing.assert_array_equal(lab["los_gt_7d"], [np.nan, 1, 0, 0])


def test_raw_features_match_a_loop(planted):
    processed, _ = planted
    rows = cohort_rows(processed, "val")[:25]
    assert (rows % 4 == 0).any()  # some stays without sodium: the never-observed branch
    hours = 24
    x = raw_features(processed, rows, hours, chunk=7)  # chunks that do not divide the stays
    n_f = len(FEATURES)
    assert x.shape == (len(rows), len(STATS) * n_f) and len(raw_feature_names(FEATURES)) == x.shape[1]
    offsets = processed.stays.column("offset").to_numpy()
    for i, row in enumerate(rows):
        block = np.asarray(processed.mean[offsets[row]:offsets[row] + hours])
        counts = np.asarray(processed.count[offsets[row]:offsets[row] + hours])
        for f in range(n_f):
            v = block[:, f]
            seen = ~np.isnan(v)
            z = (v[seen] - processed.norm_mean[f]) / processed.norm_std[f]
            want = [z[-1], z.mean(), z.min(), z.max()] if seen.any() else [0, 0, 0, 0]
            want.append((counts[:, f] > 0).mean())
            want.append(z[0] if seen.any() else 0)
            want.append(np.log1p(counts[:, f].sum()))
            np.testing.assert_allclose(x[i, f::n_f], want, rtol=1e-5, atol=1e-5)


def test_raw_features_of_a_summed_feature_use_the_window_total(planted):
    """A feature aggregated by sum (urine output) has as its mean the window's total per hour,
    unobserved hours counting 0, normalised like the hourly values."""
    import copy

    processed, _ = planted
    rows = cohort_rows(processed, "val")[:10]
    summed = copy.copy(processed)
    summed.aggregation = ["sum"] + ["mean"] * (len(FEATURES) - 1)
    x = raw_features(summed, rows, 24)
    y = raw_features(processed, rows, 24)
    offsets = processed.stays.column("offset").to_numpy()
    n_f = len(FEATURES)
    for i, row in enumerate(rows):
        v = np.asarray(processed.mean[offsets[row]:offsets[row] + 24, 0])
        if np.isnan(v).all():
            continue
        want = (np.nansum(v) / 24 - processed.norm_mean[0]) / processed.norm_std[0]
        assert x[i, n_f] == pytest.approx(want, rel=1e-5, abs=1e-5)
    # the other statistics and features are the mean-aggregated ones
    np.testing.assert_array_equal(np.delete(x, n_f, axis=1), np.delete(y, n_f, axis=1))


def test_raw_features_rejects_short_stays(planted):
    processed, truth = planted
    short = np.flatnonzero(truth.n_hours < 24)[:3]
    with pytest.raises(ValueError, match="fewer than hours=24"):
        raw_features(processed, short, 24)


# --- probes ----------------------------------------------------------------------------------

def test_probe_finds_planted_signal_and_shuffled_labels_do_not(planted):
    processed, _ = planted
    x, labels, _ = probe_inputs(processed)
    tasks, skipped, comparisons, curves = evaluate_all(x, labels, n_bootstrap=200, seed=0)
    assert skipped == {}
    death = tasks["mortality_hosp"]
    assert death["raw_features"]["auroc"] > 0.85, death
    assert death["raw_features"]["auroc_ci"][0] > 0.75
    assert abs(death["noise"]["auroc"] - 0.5) < 0.15  # features with no signal
    # each method reports its own C and validation AUROC
    assert death["raw_features"]["val_auroc"] > 0.8 > death["noise"]["val_auroc"]
    assert comparisons["mortality_hosp"] == {}  # comparisons are of jepa, absent here
    y, score = curves["mortality_hosp"]["raw_features"]
    assert len(y) == death["raw_features"]["n"] and y.sum() == death["raw_features"]["positives"]

    # control: the same features with labels shuffled within each split are not predictable
    rng = np.random.default_rng(7)
    shuffled = {"mortality_hosp": {s: rng.permutation(labels["mortality_hosp"][s]) for s in SPLITS}}
    control, _, _, _ = evaluate_all({"raw_features": x["raw_features"]}, shuffled, n_bootstrap=200, seed=0)
    r = control["mortality_hosp"]["raw_features"]
    assert abs(r["auroc"] - 0.5) < 0.12, r
    assert r["auroc_ci"][0] < 0.5 < r["auroc_ci"][1]


def test_task_skipped_when_positives_are_too_few(tmp_path):
    write_processed(tmp_path, n_stays=300, seed=2, death_rate=0.01)
    processed = open_processed(tmp_path)
    x, labels, _ = probe_inputs(processed)
    reason = skip_reason(labels["mortality_hosp"])
    assert reason is not None and "positives" in reason
    tasks, skipped, _, _ = evaluate_all(x, labels, n_bootstrap=50)
    assert set(skipped) == {"mortality_hosp"} and "positives (need >= " in skipped["mortality_hosp"]
    assert "mortality_hosp" not in tasks and "los_gt_3d" in tasks
    table = results_table({"tasks": tasks, "skipped": skipped})
    assert "| mortality_hosp | (skipped) |" in table


# --- the report ------------------------------------------------------------------------------

def test_report_json_markdown_and_pngs(planted, tmp_path):
    processed, _ = planted
    x, labels, rows = probe_inputs(processed)
    x = {"jepa": x["raw_features"], "random_init": x["noise"], "raw_features": x["raw_features"]}
    tasks, skipped, comparisons, curves = evaluate_all(x, labels, n_bootstrap=100, seed=0)
    report = {"tasks": tasks, "skipped": {"made_up": "test split has 0 positives (need >= 2)"},
              "comparisons": comparisons, "encoder": "target", "pooling": "mean over hours [0, 24)",
              "hours": 24, "n_bootstrap": 100, "seed": 0, "c_grid": [1e-4, 100.0]}
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,loss,lr,val_loss,rankme,target_std\n"
                       "1,1.0,0.001,,,\n2,0.8,0.001,0.9,3.5,0.2\n3,0.7,0.001,,,\n4,0.6,0.001,0.7,4.1,0.3\n")
    emb = {m: np.concatenate([x[m][s] for s in SPLITS]) for m in ("jepa", "random_init")}
    lab = {t: np.concatenate([labels[t][s] for s in SPLITS]) for t in STAY_TASKS}
    out = tmp_path / "report"
    write_report(report, out, curves=curves, embeddings=emb, labels=lab, metrics_csv=metrics)

    loaded = json.loads((out / "report.json").read_text())
    assert set(loaded["tasks"]) == set(STAY_TASKS)
    for task in STAY_TASKS:
        assert set(loaded["tasks"][task]) == {"jepa", "random_init", "raw_features"}
        for r in loaded["tasks"][task].values():
            assert {"auroc", "auroc_ci", "auprc", "auprc_ci", "n", "positives"} <= set(r)
            assert r["auroc_ci"][0] <= r["auroc"] <= r["auroc_ci"][1]
            assert 0 < r["positives"] < r["n"] == len(rows["test"])
    assert loaded["skipped"] == {"made_up": "test split has 0 positives (need >= 2)"}
    assert set(loaded["comparisons"]["mortality_hosp"]) == {"jepa - random_init", "jepa - raw_features"}
    assert loaded["comparisons"]["mortality_hosp"]["jepa - raw_features"]["auroc_diff"] == 0.0
    assert loaded["comparisons"]["mortality_hosp"]["jepa - random_init"]["auroc_diff_ci"][0] > 0
    assert loaded["encoder"] == "target" and loaded["hours"] == 24
    expected = [f"roc_{t}.png" for t in STAY_TASKS] + ["pca.png", "training_curves.png"]
    assert loaded["plots"] == expected
    for name in expected:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (out / "report.md").read_text()
    assert "n is small for mortality_hosp" in md  # the test split here has ~170 stays
    assert "made_up was skipped" in md and "| los_gt_7d | raw_features |" in md


def test_pca_plot_draws_a_subset_of_many_stays(tmp_path, monkeypatch):
    """More stays than PCA_MAX_POINTS: a subset is drawn (unknown labels left out), the file is written."""
    from matplotlib.axes import Axes

    from ehrjepa.probe import report as report_module

    monkeypatch.setattr(report_module, "PCA_MAX_POINTS", 50)
    drawn = []
    original = Axes.scatter
    monkeypatch.setattr(Axes, "scatter",
                        lambda ax, x, y, **kw: drawn.append(len(x)) or original(ax, x, y, **kw))
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(float)
    y[:100] = np.nan
    report_module.plot_pca({"jepa": rng.normal(size=(300, 8))}, {"mortality_hosp": y}, tmp_path / "pca.png")
    assert (tmp_path / "pca.png").is_file()
    assert len(drawn) == 1 and 25 <= drawn[0] < 50  # 50 drawn at random, about a third of them unknown


def test_report_notes_a_missing_metrics_file_and_writes_strict_json(tmp_path):
    report = {"tasks": {"t": {"m": {"auroc": float("nan"), "auroc_ci": [float("nan")] * 2, "auprc": 0.5,
                                    "auprc_ci": [0.4, 0.6], "n": np.int64(1000), "positives": 300}}},
              "skipped": {}, "encoder": "context", "pooling": "p", "hours": 12}
    write_report(report, tmp_path, metrics_csv=tmp_path / "nope.csv")
    loaded = json.loads((tmp_path / "report.json").read_text())  # strict: NaN became null
    assert loaded["tasks"]["t"]["m"]["auroc"] is None and loaded["tasks"]["t"]["m"]["n"] == 1000
    assert any("nope.csv not found" in n for n in loaded["notes"])
    # a damaged metrics.csv costs the training curves, not the report
    damaged = tmp_path / "metrics.csv"
    damaged.write_bytes(b"step,loss\n1,\xff\xfe\x00\n")
    report.pop("notes")
    write_report(report, tmp_path / "r2", metrics_csv=damaged)
    loaded = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert loaded["plots"] == [] and [n for n in loaded["notes"] if f"{damaged} cannot be read" in n]
    assert not list((tmp_path / "r2").glob(".*.tmp"))  # the atomic writes left no temp file
    assert "n is tiny" not in markdown(report) and "n is small" not in markdown(report)
    report["tasks"]["t"]["m"]["n"] = 14
    assert "**n is tiny for t**: the test split has n = 14 stays with 300 positives" in markdown(report)


# --- end to end: run_probe and the CLI on a real (tiny) JEPA checkpoint -----------------------

def make_run(run_dir, n_features, seed=0):
    """RUN/checkpoints/best.pt of a micro JEPA whose weights differ from random_init, and a metrics.csv."""
    import torch

    from ehrjepa.config import config_to_dict, load_config
    from ehrjepa.models import build_model, save_checkpoint

    from conftest import REPO

    cfg = load_config(REPO / "configs" / "micro.yaml")
    torch.manual_seed(seed + 1)
    model = build_model(cfg, n_features)
    state = {"model": model.state_dict(), "optimizer": {}, "step": 42, "config": config_to_dict(cfg),
             "n_features": n_features, "best_val_loss": 0.5}
    save_checkpoint(state, run_dir / "checkpoints" / "best.pt")
    (run_dir / "metrics.csv").write_text("step,loss,lr,val_loss,rankme,target_std\n"
                                         "10,1.0,0.001,,,\n20,0.8,0.001,0.9,3.0,0.2\n")
    return cfg


def cli(argv):
    """`ehrjepa probe ARGV` through the probe's own configure/main."""
    import argparse

    from ehrjepa.probe import cli as probe_cli

    parser = argparse.ArgumentParser(prog="ehrjepa probe")
    probe_cli.configure(parser)
    return probe_cli.main(parser.parse_args(argv))


@pytest.fixture
def one_torch_thread():
    """Tiny matmuls on a shared 2-core box: one thread is several times faster than two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_note_on_hours_the_context_never_covered():
    def cfg(kind, context_hours, length):
        return SimpleNamespace(mask=SimpleNamespace(kind=kind, context_hours=context_hours, target_hours=5),
                               data=SimpleNamespace(length=length))

    note = unseen_positions_note(cfg("future", 15, 20), 24)
    assert "[0, 15)" in note and "hours 15-23" in note and "data.length=29, mask.context_hours=24" in note
    assert unseen_positions_note(cfg("future", 15, 20), 15) is None
    assert unseen_positions_note(cfg("future", 24, 29), 24) is None
    # multiblock draws context anywhere in the window
    note = unseen_positions_note(cfg("multiblock", 15, 20), 24)
    assert "[0, 20)" in note and "(data.length=24)" in note
    assert unseen_positions_note(cfg("multiblock", 15, 20), 20) is None
    # whole stays: the future context is a fraction of each crop, up to data.length hours
    long = cfg("future", 24, 168)
    long.mask.context_fraction = 0.75
    assert unseen_positions_note(long, 72) is None
    assert "[0, 126)" in unseen_positions_note(long, 140)


@pytest.mark.parametrize("name", ["micro", "small", "base", "large"])
def test_shipped_configs_cover_the_probe_hours(name):
    """A run of any shipped config has seen every one of the HOURS hours the probe embeds as context."""
    from ehrjepa.config import load_config

    from conftest import REPO

    assert unseen_positions_note(load_config(REPO / "configs" / f"{name}.yaml"), HOURS) is None


def test_run_probe_and_cli_end_to_end(tmp_path, capsys, one_torch_thread):
    from ehrjepa.probe import run_probe

    data_dir = tmp_path / "processed"
    write_processed(data_dir, n_stays=300, seed=5)
    processed = open_processed(data_dir)
    run = tmp_path / "run"
    make_run(run, len(FEATURES))
    report = run_probe(run, data_dir, tmp_path / "report", n_bootstrap=50, progress=False, batch_size=64)
    assert report["checkpoint"].endswith("best.pt") and report["step"] == 42
    assert report["encoder"] == "target" and f"mean over hours [0, {HOURS})" in report["pooling"]
    n_test = len(cohort_rows(processed, "test"))
    assert report["cohort"]["test"]["with_hours"] == n_test
    for task in STAY_TASKS:
        assert list(report["tasks"][task]) == ["jepa", "random_init", "raw_features", "raw_gbdt"]
        assert report["tasks"][task]["jepa"]["n"] == n_test
        assert set(report["comparisons"][task]) == {"jepa - random_init", "jepa - raw_features", "jepa - raw_gbdt"}
    # the default report's keys: label efficiency only on request
    assert set(report) == {"tasks", "skipped", "comparisons", "encoder", "pooling", "hours", "methods",
                           "checkpoint", "step", "run", "data", "device", "cohort", "labels", "n_bootstrap",
                           "seed", "c_grid", "notes", "plots"}
    assert set(report["tasks"]["mortality_hosp"]["raw_features"]) == {
        "auroc", "auroc_ci", "auprc", "auprc_ci", "n", "positives", "C", "val_auroc", "converged", "n_train",
        "bootstrap_skipped"}
    assert "Label efficiency" not in (tmp_path / "report" / "report.md").read_text()
    # the planted signal is in lactate's values, which raw_features and raw_gbdt see directly
    assert report["tasks"]["mortality_hosp"]["raw_features"]["auroc"] > 0.8
    assert report["tasks"]["mortality_hosp"]["raw_gbdt"]["auroc"] > 0.8
    # even an untrained transformer keeps some of it: embeddings carry the values
    assert report["tasks"]["mortality_hosp"]["random_init"]["auroc"] > 0.6
    for name in ["report.json", "report.md", "pca.png", "training_curves.png"] + [f"roc_{t}.png" for t in STAY_TASKS]:
        assert (tmp_path / "report" / name).is_file(), name
    assert not any("never learned" in n for n in report["notes"])  # micro.yaml's context covers 24 hours

    # the CLI: context encoder, other hours, its own output dir; prints the table
    rc = cli(["--run", str(run), "--data", str(data_dir), "--out", str(tmp_path / "r2"),
              "--encoder", "context", "--hours", "12", "--bootstrap", "20", "--device", "cpu", "--no-progress",
              "--methods", "raw_features,jepa"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| mortality_hosp | jepa |" in printed and "context encoder" in printed
    loaded = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert list(loaded["tasks"]["mortality_hosp"]) == ["jepa", "raw_features"]  # METHODS order
    assert set(loaded["methods"]) == {"jepa", "raw_features"}
    assert set(loaded["comparisons"]["mortality_hosp"]) == {"jepa - raw_features"}
    assert loaded["hours"] == 12 and loaded["encoder"] == "context"
    assert not any("never learned" in n for n in loaded["notes"])  # 12 hours: all seen as context
    assert loaded["cohort"]["test"]["with_hours"] == len(cohort_rows(processed, "test", hours=12))

    # a run without checkpoints is a clear error
    (tmp_path / "empty").mkdir()
    rc = cli(["--run", str(tmp_path / "empty"), "--data", str(data_dir), "--out", str(tmp_path / "r3")])
    assert rc == 1 and "no checkpoint in" in capsys.readouterr().err


def test_checkpoint_defaults_to_best_then_last(tmp_path):
    from ehrjepa.probe.run import resolve_checkpoint

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "last.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path, None) == ckpts / "last.pt"
    (ckpts / "best.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path, None) == ckpts / "best.pt"
    assert resolve_checkpoint(tmp_path, ckpts / "last.pt") == ckpts / "last.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        resolve_checkpoint(tmp_path, tmp_path / "nope.pt")


def test_help_shows_every_default():
    import argparse

    from ehrjepa.probe import cli as probe_cli

    parser = argparse.ArgumentParser(prog="ehrjepa probe")
    probe_cli.configure(parser)
    text = " ".join(parser.format_help().split())
    for option, default in (("--hours HOURS", HOURS), ("--batch-size BATCH_SIZE", 256),
                            ("--bootstrap BOOTSTRAP", 1000), ("--seed SEED", 0), ("--device DEVICE", "auto"),
                            ("--encoder {target,context}", "target"), ("--repeats REPEATS", 5),
                            ("--methods METHODS", "jepa,random_init,raw_features,raw_gbdt"),
                            ("--label-fractions F,...", "none")):
        shown = text.split(option, 2)[2].split(" --")[0]  # the option's help, after the usage line
        assert f"(default: {default})" in shown, (option, shown)
    assert "(default: RUN/checkpoints/best.pt, else last.pt)" in text


def test_pca_legend_names_the_outcome(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from ehrjepa.probe.report import plot_pca

    legends = []
    original = Axes.legend
    monkeypatch.setattr(Axes, "legend", lambda ax, handles, **kw: legends.append(
        [h.get_label() for h in handles]) or original(ax, handles=handles, **kw))
    y = np.array([0, 1, 1, 0, 0, np.nan])
    plot_pca({"jepa": np.random.default_rng(0).normal(size=(6, 4))},
             {"mortality_hosp": y, "los_gt_3d": y}, tmp_path / "pca.png")
    assert legends == [["survived (n=3)", "died in hospital (n=2)"],
                       ["ICU stay <= 3 days (n=3)", "ICU stay > 3 days (n=2)"]]


def damage(kind, run, data_dir, tmp_path):
    """Break one input of a probe the way `kind` says; returns the CLI arguments and the file the
    error must name."""
    import torch

    best = run / "checkpoints" / "best.pt"
    args = {"--run": run, "--data": data_dir, "--out": tmp_path / "report"}
    if kind == "missing run dir":
        args["--run"] = named = tmp_path / "no_such_run"
    elif kind == "empty checkpoint":
        best.write_bytes(b"")
        named = best
    elif kind == "truncated checkpoint":
        best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
        named = best
    elif kind == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, best)
        named = best
    elif kind == "weights of another model":
        state = torch.load(best, weights_only=True)
        state["model"] = {k: v for i, (k, v) in enumerate(state["model"].items()) if i % 2}
        torch.save(state, best)
        named = best
    elif kind == "other features":
        make_run(run, len(FEATURES) + 1)
        named = best
    elif kind == "missing data dir":
        args["--data"] = named = tmp_path / "no_such_data"
    elif kind == "damaged features.json":
        (data_dir / "features.json").write_text('{"features": [')
        named = data_dir
    elif kind == "stays without death_hosp":
        stays = pq.read_table(data_dir / "stays.parquet")
        pq.write_table(stays.drop_columns(["death_hosp"]), data_dir / "stays.parquet")
        named = data_dir / "stays.parquet"
    elif kind == "report dir is a file":
        args["--out"] = named = tmp_path / "report.txt"
        named.write_text("not a folder")
    return [str(v) for item in args.items() for v in item] + ["--no-progress", "--device", "cpu"], named


FAULTS = ["missing run dir", "empty checkpoint", "truncated checkpoint", "not a checkpoint",
          "weights of another model", "other features", "missing data dir", "damaged features.json",
          "stays without death_hosp", "report dir is a file"]


@pytest.mark.parametrize("kind", FAULTS)
def test_a_fault_is_one_line_naming_the_file(kind, tmp_path, capsys):
    data_dir = tmp_path / "processed"
    write_processed(data_dir, n_stays=60, seed=5)
    run = tmp_path / "run"
    make_run(run, len(FEATURES))
    argv, named = damage(kind, run, data_dir, tmp_path)
    rc = cli(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("ehrjepa probe: "), captured.err
    assert str(named) in lines[0], lines[0]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "report" / "report.json").exists()
