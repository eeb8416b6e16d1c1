"""The online task sepsis_hourly (ehrjepa/probe/online.py): causal attention, one-pass causal
embeddings that later hours cannot move, the causal per-hour features, the task end to end on a
small generated set of the 2019 challenge's files, and the stay-level sepsis_after_24h labels."""
from __future__ import annotations

import io
import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ehrjepa.data.build import build
from ehrjepa.data.physionet2019 import COLUMNS, Physionet2019Source
from ehrjepa.data.processed import open_processed
from ehrjepa.models.attention import attention, reference_attention

HEADER = "|".join(COLUMNS)


def _row(iculos, label, **values):
    cells = dict(values, Age=60.0, Gender=1, Unit1=1, Unit2=0, HospAdmTime=-2.0, ICULOS=iculos, SepsisLabel=label)
    return "|".join("NaN" if cells.get(c) is None or (isinstance(cells.get(c), float) and math.isnan(cells[c]))
                    else str(cells[c]) for c in COLUMNS)


def generated_files(n_stays: int = 240, seed: int = 0) -> dict:
    """{stay id: .psv text}: stays of 8-60 hours, a quarter septic; heart rate and lactate rise
    in the hours before a septic stay's labels start (a signal a probe can find)."""
    rng = np.random.default_rng(seed)
    files = {}
    for sid in range(1, n_stays + 1):
        n = int(rng.integers(8, 61))
        first_label = int(rng.integers(2, n + 4)) if rng.random() < 0.25 else None
        rows = []
        for h in range(n):
            ramp = 0.0 if first_label is None else max(0.0, 1.0 - (first_label - h) / 12.0)
            values = {"HR": round(float(rng.normal(80 + 30 * ramp, 5)), 1), "Resp": round(float(rng.normal(18, 2)), 1)}
            if rng.random() < 0.2:
                values["Lactate"] = round(float(rng.normal(1.5 + 3 * ramp, 0.3)), 2)
            label = int(first_label is not None and h >= first_label)
            rows.append(_row(h + 1, label, **values))
        files[sid] = HEADER + "\n" + "".join(r + "\n" for r in rows)
    return files


def write_tar(path: Path, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for sid, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"training_setA/p{sid:06d}.psv")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def p19(tmp_path_factory):
    root = tmp_path_factory.mktemp("p19")
    archive = write_tar(root / "set.tar.gz", generated_files())
    out = build(Physionet2019Source([str(archive)]), root / "out", progress=False)
    return open_processed(out)


def tiny_model(max_hours: int = 64, seed: int = 0):
    from ehrjepa.config import load_config
    from ehrjepa.models import build_model

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "micro.yaml")
    cfg.data.max_hours = max_hours
    torch.manual_seed(seed)
    return build_model(cfg, 34).eval()


# -------------------------------------------------------------------------------------------------
# causal attention and the causal encoder


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_causal_attention_matches_the_reference(backend):
    """sdpa with causal=True against the plain math in float64; triton falls back to sdpa for causal."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 4, generator=g, dtype=torch.float64) for _ in range(3))
    lengths = torch.tensor([7, 4, 0])
    got = attention(q, k, v, lengths, backend=backend, causal=True)
    want = reference_attention(q, k, v, lengths, causal=True)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the first query sees only the first key: its output is v[0]
    torch.testing.assert_close(got[:2, :, 0], v[:2, :, 0], rtol=1e-10, atol=1e-10)
    # without causal the outputs differ (later keys count)
    assert not torch.allclose(attention(q, k, v, lengths, backend="sdpa"), got)


def test_causal_embed_ignores_later_hours():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    values, observed, delta = torch.randn(2, 20, 34, generator=g), torch.ones(2, 20, 34), torch.zeros(2, 20, 34)
    lengths = torch.tensor([20, 13])
    with torch.inference_mode():
        before = model.embed(values, observed, delta, lengths=lengths, causal=True)
        changed = values.clone()
        changed[:, 10:] += 5.0
        after = model.embed(changed, observed, delta, lengths=lengths, causal=True)
        bidirectional = model.embed(changed, observed, delta, lengths=lengths)
        bidirectional_before = model.embed(values, observed, delta, lengths=lengths)
    torch.testing.assert_close(after[:, :10], before[:, :10], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, 10:13], before[:, 10:13])
    assert not torch.allclose(bidirectional[:, :10], bidirectional_before[:, :10], atol=1e-4)
    # the output at hour t is the last token of the stay's first t + 1 hours, embedded alone
    with torch.inference_mode():
        prefix = model.embed(values[:1, :6], observed[:1, :6], delta[:1, :6], causal=True)
    torch.testing.assert_close(prefix[0, 5], before[0, 5], rtol=1e-5, atol=1e-5)


# -------------------------------------------------------------------------------------------------
# the inputs of each hour: later hours cannot move them


def _with_later_hours_changed(p19, tmp_path, cut: int):
    """A copy of the processed folder in which every stay's hours from `cut` on hold other values."""
    copy = tmp_path / "changed"
    shutil.copytree(p19.path, copy)
    mean = np.load(copy / "mean.npy")
    offset = p19.stays.column("offset").to_numpy()
    n_hours = p19.stays.column("n_hours").to_numpy()
    rng = np.random.default_rng(5)
    for o, n in zip(offset, n_hours):
        if n > cut:
            block = mean[o + cut:o + n]
            mean[o + cut:o + n] = np.where(rng.random(block.shape) < 0.5, np.nan, rng.normal(100, 30, block.shape))
    np.save(copy / "mean.npy", mean)
    return open_processed(copy)


def test_earlier_hours_do_not_move_when_later_hours_change(p19, tmp_path):
    from ehrjepa.probe.hourly_features import hourly_features, stay_hours
    from ehrjepa.probe.online import causal_embeddings

    cut = 9
    changed = _with_later_hours_changed(p19, tmp_path, cut)
    rows = p19.split_indices("train")
    _, hour = stay_hours(p19, rows)
    early, late = hour < cut, hour >= cut
    model = tiny_model()
    a = causal_embeddings(model, p19, rows, tokens_per_batch=256)
    b = causal_embeddings(model, changed, rows, tokens_per_batch=256)
    np.testing.assert_allclose(a[early], b[early], rtol=0, atol=1e-5)
    assert not np.allclose(a[late], b[late], atol=1e-3)
    fa, fb = hourly_features(p19, rows), hourly_features(changed, rows)
    np.testing.assert_array_equal(fa[early], fb[early])
    assert not np.array_equal(fa[late], fb[late])
    # the embeddings do not depend on how the stays are batched
    c = causal_embeddings(model, p19, rows, tokens_per_batch=10**6)
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-5)


def test_probe_predictions_before_the_change_do_not_move(p19, tmp_path):
    """Fit the frozen probe and the trees once; their predictions at hours before `cut` are the same
    on the data whose later hours were changed."""
    from ehrjepa.probe.online import Hours, online_inputs, score_one

    cut = 9
    changed = _with_later_hours_changed(p19, tmp_path, cut)
    hours = {s: Hours(p19, s, "sepsis_label") for s in ("train", "val", "test")}
    models = {"jepa": tiny_model()}
    x = online_inputs(p19, hours, models, ["jepa", "raw_gbdt"], "target", "cpu", False)
    x2 = online_inputs(changed, hours, models, ["jepa", "raw_gbdt"], "target", "cpu", False)
    from ehrjepa.probe.online import _fit

    h = hours["train"]
    idx = np.flatnonzero(h.known)
    early = h.hour[idx] < cut
    for method in ("jepa", "raw_gbdt"):
        model, _, _, _ = _fit(method, x[method]["train"][idx], h.y[idx].astype(np.int64),
                              x[method]["val"][hours["val"].known], hours["val"].y[hours["val"].known].astype(np.int64), 0)
        s1 = model.decision_function(x[method]["train"][idx])
        s2 = model.decision_function(x2[method]["train"][idx])
        np.testing.assert_allclose(s1[early], s2[early], rtol=1e-5, atol=1e-5)
    assert callable(score_one)


def test_hourly_features_by_hand(p19):
    from ehrjepa.probe.hourly_features import hourly_feature_names, hourly_features, stay_hours

    rows = np.array([0])
    x = hourly_features(p19, rows)
    names = hourly_feature_names(p19.features)
    n = int(p19.stays.column("n_hours").to_numpy()[0])
    assert x.shape == (n, len(names))
    f = p19.features.index("heart_rate")
    raw = np.asarray(p19.mean[:n, f], dtype=np.float64)
    z = (raw - p19.norm_mean[f]) / p19.norm_std[f]
    col = {name: names.index(f"heart_rate.{name}") for name in ("last", "since", "mean", "min", "max", "count")}
    for t in range(n):
        seen = z[:t + 1][~np.isnan(z[:t + 1])]
        if len(seen):
            assert x[t, col["mean"]] == pytest.approx(seen.mean(), rel=1e-4, abs=1e-4)
            assert x[t, col["min"]] == pytest.approx(seen.min(), rel=1e-4, abs=1e-4)
            assert x[t, col["max"]] == pytest.approx(seen.max(), rel=1e-4, abs=1e-4)
            last = max(i for i in range(t + 1) if not np.isnan(z[i]))
            assert x[t, col["last"]] == pytest.approx(z[last], rel=1e-4, abs=1e-4)
            assert x[t, col["since"]] == t - last
        assert x[t, col["count"]] == len(seen)
    assert np.array_equal(x[:, names.index("hour")], np.arange(n))
    assert np.array_equal(x[:, names.index("iculos")], np.arange(n) + 1)
    assert np.all(x[:, names.index("age")] == 60.0)
    which, hour = stay_hours(p19, np.array([1, 0]))
    n1 = int(p19.stays.column("n_hours").to_numpy()[1])
    assert list(which) == [0] * n1 + [1] * n and list(hour) == list(range(n1)) + list(range(n))


def test_hours_and_onsets(p19):
    from ehrjepa.probe.online import Hours

    h = Hours(p19, "train", "sepsis_label")
    onset = p19.stays.column("sepsis_onset_hour").to_numpy(zero_copy_only=False)[h.rows]
    np.testing.assert_array_equal(np.isnan(h.onset), np.isnan(onset))
    np.testing.assert_allclose(h.onset[~np.isnan(onset)], onset[~np.isnan(onset)])
    assert len(h) == int(p19.stays.column("n_hours").to_numpy()[h.rows].sum())


# -------------------------------------------------------------------------------------------------
# the task end to end


def test_run_online_end_to_end(p19):
    from ehrjepa.probe.online import run_online

    models = {"jepa": tiny_model(seed=0), "random_init": tiny_model(seed=1)}
    out = run_online(p19, models, ["jepa", "random_init", "raw_features", "raw_gbdt"], n_bootstrap=20,
                     label_fractions=[0.5, 1.0], repeats=2)
    assert not out["skipped"], out["skipped"]
    res = out["tasks"]["sepsis_hourly"]
    assert set(res) == {"jepa", "random_init", "raw_gbdt"}
    for r in res.values():
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["auprc"] <= 1.0
        assert r["utility"] <= 1.0 + 1e-9
        assert r["auroc_ci"][0] <= r["auroc_ci"][1] and r["utility_ci"][0] <= r["utility_ci"][1]
        assert {"warned_6_12h", "false_alarms_per_100_stay_days"} <= set(r["stay_view"])
        assert r["n"] == out["labels"]["sepsis_hourly"]["test"]["hours"]
    # the generated signal is easy: the trees find it
    assert res["raw_gbdt"]["auroc"] > 0.8
    assert "raw_features not fit" in out["notes"][0]
    eff = out["label_efficiency"]["sepsis_hourly"]
    for method in res:
        for key in ("0.5", "1"):
            row = eff[method][key]
            assert {"auroc_mean", "auroc_sd", "utility_mean", "utility_sd", "auprc_mean"} <= set(row)
        # at fraction 1 every repeat is the same full fit
        assert eff[method]["1"]["auroc_mean"] == pytest.approx(res[method]["auroc"])
        assert eff[method]["1"]["utility_mean"] == pytest.approx(res[method]["utility"])
    paired = out["label_efficiency_comparisons"]["sepsis_hourly"]["jepa - raw_gbdt"]["0.5"]
    assert paired["utility_diff_ci"][0] <= paired["utility_diff"] + 1e-9 or np.isnan(paired["utility_diff"])


def test_without_hourly_labels_the_task_is_skipped(p19, monkeypatch):
    from ehrjepa.probe.online import run_online

    monkeypatch.setattr(type(p19), "hour_label_names", property(lambda self: []), raising=False)
    out = run_online(p19, {}, ["raw_gbdt"], n_bootstrap=10)
    assert "sepsis_label" in out["skipped"]["sepsis_hourly"]


def test_positions_past_the_table_are_extended(p19):
    from ehrjepa.models.embedding import sinusoid
    from ehrjepa.probe.online import causal_embeddings

    model = tiny_model(max_hours=16)
    rows = p19.split_indices("val")
    x = causal_embeddings(model, p19, rows)
    assert np.isfinite(x).all()
    pos = model.target_encoder.embed.pos
    assert pos.shape[0] >= 16
    torch.testing.assert_close(pos[:16], sinusoid(16, pos.shape[1]))


# -------------------------------------------------------------------------------------------------
# the stay-level task


def test_sepsis_after_24h_labels(p19):
    from ehrjepa.probe.tasks import labels_by_split, parse_tasks

    rows = {s: p19.split_indices(s) for s in ("train", "val", "test")}
    labels, unavailable = labels_by_split(p19, rows, 24)
    assert "sepsis_after_24h" in labels and "sepsis_after_24h" not in unavailable
    offset = p19.stays.column("offset").to_numpy()
    n_hours = p19.stays.column("n_hours").to_numpy()
    hourly = np.asarray(p19.hour_label("sepsis_label"))
    seen = {0.0: 0, 1.0: 0, "nan": 0}
    for split, r in rows.items():
        for i, y in zip(r, labels["sepsis_after_24h"][split]):
            h = hourly[offset[i]:offset[i] + n_hours[i]]
            if h[:24].any():
                assert np.isnan(y)          # labelled in the hours embedded: left out
                seen["nan"] += 1
            else:
                assert y == float(h[24:].any())
                seen[y] += 1
    assert min(seen.values()) > 0
    # embedding past hour 24 would see the label hours
    _, unavailable = labels_by_split(p19, rows, 30)
    assert "--hours 24" in unavailable["sepsis_after_24h"]
    assert parse_tasks("sepsis_hourly,sepsis_after_24h") == ["sepsis_hourly", "sepsis_after_24h"]


# -------------------------------------------------------------------------------------------------
# through `ehrjepa probe`


def _make_run(run_dir: Path, n_features: int):
    from ehrjepa.config import config_to_dict, load_config
    from ehrjepa.models import build_model, save_checkpoint

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "physionet2019.yaml")
    torch.manual_seed(3)
    model = build_model(cfg, n_features)
    save_checkpoint({"model": model.state_dict(), "optimizer": {}, "step": 7, "config": config_to_dict(cfg),
                     "n_features": n_features, "best_val_loss": 0.5}, run_dir / "checkpoints" / "last.pt")


def _cli(argv):
    import argparse

    from ehrjepa.probe import cli as probe_cli

    parser = argparse.ArgumentParser(prog="ehrjepa probe")
    probe_cli.configure(parser)
    return probe_cli.main(parser.parse_args(argv))


def test_probe_cli_sepsis_tasks(p19, tmp_path, capsys):
    import json

    _make_run(tmp_path / "run", len(p19.features))
    rc = _cli(["--run", str(tmp_path / "run"), "--data", str(p19.path), "--out", str(tmp_path / "rep"),
               "--tasks", "sepsis_hourly,sepsis_after_24h", "--methods", "jepa,random_init,raw_gbdt",
               "--label-fractions", "0.5,1", "--repeats", "2", "--bootstrap", "20", "--no-progress", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert "sepsis_hourly" in report["tasks"]
    # the small generated set has few septic stays unlabelled by hour 24 in val: scored or skipped as such
    assert "sepsis_after_24h" in report["tasks"] or "too few" in report["skipped"]["sepsis_after_24h"]
    for method in ("jepa", "random_init", "raw_gbdt"):
        row = report["label_efficiency"]["sepsis_hourly"][method]["0.5"]
        assert {"utility_mean", "utility_sd", "auroc_mean"} <= set(row)
        assert "utility" in report["tasks"]["sepsis_hourly"][method]
    assert "sepsis_hourly" in report["label_efficiency_setup"]["tasks"]
    assert report["labels"]["sepsis_hourly"]["test"]["n"] == report["tasks"]["sepsis_hourly"]["jepa"]["n"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "sepsis_hourly: the challenge's utility" in md and "jepa - raw_gbdt at 0.5" in md
    assert "warned 6-12 h" in out.out


def test_probe_cli_sepsis_hourly_on_data_without_hourly_labels(tmp_path, capsys, monkeypatch, p19):
    monkeypatch.setattr(type(p19), "hour_label_names", property(lambda self: []), raising=False)
    import ehrjepa.probe.run as run

    monkeypatch.setattr(run, "open_data", lambda d: p19)
    _make_run(tmp_path / "run", len(p19.features))
    rc = _cli(["--run", str(tmp_path / "run"), "--data", str(p19.path), "--out", str(tmp_path / "rep"),
               "--tasks", "sepsis_hourly", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "hour_labels.npy: no task 'sepsis_hourly'" in err[0]


# -------------------------------------------------------------------------------------------------
# jepa_finetune and scratch on the online task


def _tiny_settings():
    from ehrjepa.probe.finetune import Settings

    return Settings(max_epochs=5, min_steps=10, max_steps=20, batch_size=16, lr=2e-3, min_lr=2e-4, warmup_steps=4,
                    eval_every=10, patience=2)


@pytest.mark.parametrize("standardize", [False, True])
def test_finetuned_predictions_before_the_change_do_not_move(p19, tmp_path, monkeypatch, standardize):
    """Train the hourly classifier a few steps; scored on the data whose hours from `cut` on hold
    other values, its predictions at hours before `cut` are the same (and later ones move)."""
    import ehrjepa.probe.online as online
    from ehrjepa.probe.online import Hours, HourlyFinetuned, HourlyStays, hourly_finetuners

    monkeypatch.setattr(online, "HOURLY_STANDARDIZE", standardize)

    cut = 9
    changed = _with_later_hours_changed(p19, tmp_path, cut)
    hours = {s: Hours(p19, s, "sepsis_label") for s in ("train", "val", "test")}
    fitters, x = hourly_finetuners({"jepa_finetune": tiny_model()}, ["jepa_finetune"], p19, hours, "target",
                                   _tiny_settings())
    tr, va = hours["train"], hours["val"]
    ids = {s: x["jepa_finetune"][s][hours[s].known] for s in ("train", "val", "test")}
    fitted, params, val_auroc, _ = fitters["jepa_finetune"](ids["train"], tr.y[tr.known], ids["val"],
                                                            va.y[va.known].astype(np.int64), 0)
    assert 1 <= params["best_step"] <= params["steps_run"] <= params["steps_budget"] == 20
    assert 0.0 <= val_auroc <= 1.0
    on_changed = HourlyFinetuned(fitted.model, HourlyStays(changed, hours), "cpu")
    te = hours["test"]
    early, late = te.hour[te.known] < cut, te.hour[te.known] >= cut
    a, b = fitted.decision_function(ids["test"]), on_changed.decision_function(ids["test"])
    np.testing.assert_allclose(a[early], b[early], rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[late], b[late], atol=1e-3)
    # a stay's predictions do not depend on which other stays are scored with it (batching)
    one = np.flatnonzero(HourlyStays(p19, hours).stay[ids["test"]] == HourlyStays(p19, hours).stay[ids["test"][0]])
    np.testing.assert_allclose(fitted.decision_function(ids["test"][one]), a[one], rtol=1e-4, atol=1e-5)


def test_finetune_hourly_is_seeded_and_leaves_its_encoder_alone(p19):
    from ehrjepa.probe.online import Hours, hourly_finetuners

    hours = {s: Hours(p19, s, "sepsis_label") for s in ("train", "val", "test")}
    model = tiny_model()
    before = {k: v.clone() for k, v in model.target_encoder.state_dict().items()}
    fitters, x = hourly_finetuners({"scratch": model}, ["scratch"], p19, hours, "target", _tiny_settings())
    ids = {s: x["scratch"][s][hours[s].known] for s in ("train", "val", "test")}
    args = (ids["train"], hours["train"].y[hours["train"].known], ids["val"],
            hours["val"].y[hours["val"].known].astype(np.int64))
    s1 = fitters["scratch"](*args, seed=3)[0].decision_function(ids["test"])
    s2 = fitters["scratch"](*args, seed=3)[0].decision_function(ids["test"])
    np.testing.assert_allclose(s1, s2, rtol=1e-6, atol=1e-6)
    for k, v in model.target_encoder.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_probe_cli_sepsis_hourly_finetuned(p19, tmp_path, capsys, monkeypatch):
    """jepa_finetune and scratch through `ehrjepa probe --tasks sepsis_hourly`: utility, the per-stay
    view, label fractions with utility_mean/sd and the paired jepa_finetune - scratch differences."""
    import json

    import ehrjepa.probe.online as online

    monkeypatch.setattr(online, "HOURLY_SETTINGS", _tiny_settings())
    _make_run(tmp_path / "run", len(p19.features))
    rc = _cli(["--run", str(tmp_path / "run"), "--data", str(p19.path), "--out", str(tmp_path / "rep"),
               "--tasks", "sepsis_hourly", "--methods", "jepa_finetune,scratch", "--label-fractions", "0.5,1",
               "--repeats", "1", "--bootstrap", "20", "--no-progress", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    res = report["tasks"]["sepsis_hourly"]
    assert set(res) == {"jepa_finetune", "scratch"}
    for method, r in res.items():
        assert 0.0 <= r["auroc"] <= 1.0 and r["utility"] <= 1.0 + 1e-9
        assert r["utility_ci"][0] <= r["utility_ci"][1]
        assert 1 <= r["best_step"] <= r["steps_run"] <= r["steps_budget"] == 20
        assert "warned_6_12h" in r["stay_view"]
        row = report["label_efficiency"]["sepsis_hourly"][method]
        assert {"utility_mean", "utility_sd", "auroc_mean"} <= set(row["0.5"])
        assert row["1"]["utility_mean"] == pytest.approx(r["utility"], abs=1e-9)
        assert "early-stopped on the validation hourly AUROC" in report["online_methods"]["sepsis_hourly"][method]
    assert "jepa_finetune - scratch" in report["comparisons"]["sepsis_hourly"]
    assert "0.5" in report["label_efficiency_comparisons"]["sepsis_hourly"]["jepa_finetune - scratch"]
    assert not any("not fit on the online task" in n for n in report["notes"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| jepa_finetune |" in md and "jepa_finetune - scratch at 0.5" in md
    assert "warned 6-12 h" in out.out
