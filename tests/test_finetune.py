"""Tests of fine-tuning (jepa_finetune, scratch, `ehrjepa finetune`) and of the aki_24_72h task."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from ehrjepa.data import WindowDataset, open_processed
from ehrjepa.data.processed import SPLITS
from ehrjepa.probe import finetune as ft
from ehrjepa.probe.aki import aki_from_creatinine, aki_labels
from ehrjepa.probe.fit import evaluate_task
from ehrjepa.probe.label_efficiency import label_efficiency, subsample_masks
from ehrjepa.probe.tasks import task_labels
from ehrjepa.schedules import lr_at

from test_probe import FEATURES, make_run, write_processed

TINY = ft.Settings(max_steps=60, batch_size=32, lr=2e-3, min_lr=2e-4, warmup_steps=10, eval_every=20, patience=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- aki_24_72h on hand-built stays ----------------------------------------------------------

def creatinine(points: dict[int, float], hours: int = 72) -> np.ndarray:
    c = np.full(hours, np.nan)
    for h, v in points.items():
        c[h] = v
    return c


STAYS = {  # name: (hourly creatinine in mg/dL, expected label)
    "0.3 mg/dL within 48 h": (creatinine({2: 1.0, 20: 1.0, 40: 1.3}), 1.0),
    "1.5x baseline, slowly": (creatinine({0: 1.0, 30: 1.25, 71: 1.5}), 1.0),
    "AKI in the first 24 h": (creatinine({2: 1.0, 10: 1.4, 40: 1.4}), np.nan),
    "no creatinine in the first 24 h": (creatinine({30: 1.0, 40: 2.5}), np.nan),
    "stable": (creatinine({0: 1.0, 23: 1.1, 47: 1.05, 70: 1.2}), 0.0),
    "0.3 mg/dL over more than 48 h": (creatinine({0: 1.0, 5: 1.0, 30: 1.29, 60: 1.31}), 0.0),
    "below 0.3 mg/dL and 1.5x": (creatinine({0: 1.0, 50: 1.29}), 0.0),
}


def test_aki_definitions_on_hand_built_stays():
    labels = aki_from_creatinine(np.stack([c for c, _ in STAYS.values()]).astype(np.float32))
    for (name, (_, expected)), got in zip(STAYS.items(), labels):
        assert (np.isnan(got) and np.isnan(expected)) or got == expected, name


def hand_processed(path: Path, manifest: dict | None = None):
    """A processed-data stand-in: the stays of STAYS plus one of 60 hours, features [heart_rate, creatinine]."""
    series = [c for c, _ in STAYS.values()] + [creatinine({0: 1.0, 50: 3.0}, hours=60)]
    n_hours = np.array([len(c) for c in series])
    mean = np.full((n_hours.sum(), 2), 80.0, dtype=np.float32)
    mean[:, 1] = np.concatenate(series)
    stays = pa.table({"offset": pa.array(np.r_[0, np.cumsum(n_hours)[:-1]], pa.int64()),
                      "n_hours": pa.array(n_hours, pa.int32())})
    return SimpleNamespace(path=path, features=["heart_rate", "creatinine"], stays=stays, mean=mean,
                           manifest=manifest or {})


def test_aki_labels_from_the_processed_labs(tmp_path):
    processed = hand_processed(tmp_path)
    labels = aki_labels(processed, np.arange(len(STAYS) + 1))
    expected = [e for _, e in STAYS.values()] + [np.nan]  # the 60-hour stay is too short: excluded
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(aki_labels(processed, np.array([1, 0])), [1.0, 1.0])
    # another unit in the catalog that built the data, or no creatinine at all: one-line errors
    from conftest import REPO

    catalog = (REPO / "configs" / "features.yaml").read_text()
    assert "{name: creatinine, table: labevents, unit: mg/dL" in catalog
    other = tmp_path / "umol.yaml"
    other.write_text(catalog.replace("{name: creatinine, table: labevents, unit: mg/dL",
                                     "{name: creatinine, table: labevents, unit: umol/L"))
    with pytest.raises(ValueError, match="creatinine in umol/L; aki_24_72h's KDIGO thresholds are in mg/dL"):
        aki_labels(hand_processed(tmp_path, {"config": str(other)}), np.arange(3))
    no_creatinine = hand_processed(tmp_path)
    no_creatinine.features = ["heart_rate", "urea"]
    with pytest.raises(ValueError, match="no 'creatinine' feature for aki_24_72h"):
        aki_labels(no_creatinine, np.arange(3))


# --- fine-tuning on a planted signal ---------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    write_processed(root / "data", n_stays=600, seed=2)
    cfg = make_run(root / "run", len(FEATURES))
    processed = open_processed(root / "data")
    datasets = {s: WindowDataset.for_hours(processed, s, 24) for s in SPLITS}
    rows = {s: datasets[s].window_index[:, 0] for s in SPLITS}
    windows, positions = ft.StayWindows.from_datasets(datasets)
    y = {s: task_labels(processed.stays, rows[s])["mortality_hosp"] for s in SPLITS}
    subjects = {s: processed.stays.column("subject_id").to_numpy()[rows[s]] for s in SPLITS}
    return SimpleNamespace(root=root, cfg=cfg, windows=windows, positions=positions, y=y, subjects=subjects)


def finetuners(planted, settings=TINY):
    from ehrjepa.models import load_model

    from ehrjepa.probe.run import random_init_like

    model, cfg, _ = load_model(planted.root / "run" / "checkpoints" / "best.pt")
    return {"jepa_finetune": ft.Finetuner(model.target_encoder, 64, planted.windows, settings),
            "scratch": ft.Finetuner(random_init_like(cfg, len(FEATURES)).encoder, 64, planted.windows, settings)}


def test_finetuning_finds_the_planted_signal_with_the_same_budget_and_subsamples(planted, monkeypatch):
    calls = []
    real = ft.finetune

    def recording(encoder, width, windows, train_rows, y_train, val_rows, y_val, settings, seed, *args, **kwargs):
        fitted = real(encoder, width, windows, train_rows, y_train, val_rows, y_val, settings, seed, *args, **kwargs)
        calls.append({"train": np.asarray(train_rows), "val": np.asarray(val_rows), "settings": settings,
                      "seed": seed, "steps": fitted.steps_run, "first": next(encoder.parameters()).detach().clone()})
        return fitted

    monkeypatch.setattr(ft, "finetune", recording)
    fitters = finetuners(planted)
    x = {m: planted.positions for m in fitters}
    results, comparisons, _ = evaluate_task(x, planted.y, n_bootstrap=50, finetuners=fitters)
    # the planted signal (death follows lactate) is found end to end
    assert results["jepa_finetune"]["auroc"] > 0.8 and results["scratch"]["auroc"] > 0.8
    assert set(results["scratch"]) >= {"best_step", "steps_run", "val_auroc", "auroc_ci"}
    assert "jepa_finetune - scratch" in comparisons
    out = label_efficiency(x, {"mortality_hosp": planted.y}, planted.subjects, [0.5], repeats=1, finetuners=fitters)
    assert out["mortality_hosp"]["scratch"]["0.5"]["repeats"] == 1
    assert len(calls) == 4
    masks = subsample_masks(planted.subjects, [0.5], 1)[(0.5, 0)]
    half = {s: planted.positions[s][masks[s] & ~np.isnan(planted.y[s])] for s in ("train", "val")}
    for a, b, want in ((calls[0], calls[1], planted.positions), (calls[2], calls[3], half)):
        for split in ("train", "val"):   # both methods: the same stays, budget and seed
            assert np.array_equal(a[split], b[split]) and np.array_equal(a[split], want[split])
        assert a["settings"] == b["settings"] == TINY and a["seed"] == b["seed"]
        assert not np.array_equal(a["first"], b["first"])  # from different starting weights
    assert len(half["train"]) < len(planted.positions["train"])


def test_finetune_is_seeded_and_leaves_its_encoder_alone(planted):
    fitters = finetuners(planted, ft.Settings(max_steps=6, batch_size=16, warmup_steps=2, eval_every=3))
    encoder = fitters["jepa_finetune"].encoder
    before = [p.detach().clone() for p in encoder.parameters()]
    args = (planted.positions["train"], planted.y["train"], planted.positions["val"], planted.y["val"])
    one, two, other = (fitters["jepa_finetune"](*args, seed=s)[0] for s in (0, 0, 1))
    test = planted.positions["test"]
    assert np.array_equal(one.decision_function(test), two.decision_function(test))
    assert not np.array_equal(one.decision_function(test), other.decision_function(test))
    assert all(np.array_equal(a, b) for a, b in zip(before, encoder.parameters()))
    def lr(step):  # the schedule fine-tuning runs under these settings
        return lr_at(step, TINY.lr, TINY.min_lr, TINY.warmup_steps, TINY.max_steps)

    assert lr(0) == pytest.approx(TINY.lr / 10) and lr(60) == pytest.approx(TINY.min_lr)


def test_the_budget_is_in_epochs_between_min_and_max_steps():
    s = ft.Settings()  # 30 epochs of 64-stay batches, 200 to 1,200 steps
    assert s.steps_for(1650) == 30 * 26        # 2,000 patients at fraction 1: 780 steps, not 400
    assert s.steps_for(80) == 200              # a small fraction: min_steps
    assert s.steps_for(16_500) == 1200         # 20,000 patients: capped, early stopping decides
    assert ft.Settings(max_steps=60).steps_for(10_000) == 60 and ft.Settings(max_steps=60).steps_for(5) == 60
    with pytest.raises(ValueError, match="max_epochs must be > 0"):
        ft.Settings(max_epochs=0)


def test_probe_report_and_finetune_cli(planted, tmp_path, capsys):
    import torch

    from ehrjepa.probe import run_probe
    from ehrjepa.probe import finetune_cli

    tiny = ft.Settings(max_steps=8, batch_size=32, warmup_steps=2, eval_every=4, patience=1)
    report = run_probe(planted.root / "run", planted.root / "data", tmp_path / "report", n_bootstrap=20,
                       progress=False, methods=["scratch", "raw_features", "jepa_finetune"], finetune_settings=tiny)
    for task in ("mortality_hosp", "los_gt_3d", "los_gt_7d"):
        assert list(report["tasks"][task]) == ["raw_features", "jepa_finetune", "scratch"]
        assert set(report["comparisons"][task]) == {"jepa_finetune - scratch"}
    assert "no 'creatinine' feature" in report["skipped"]["aki_24_72h"]
    assert "(8 to 8 steps)" in report["methods"]["scratch"] and "target encoder" in report["methods"]["jepa_finetune"]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| mortality_hosp | jepa_finetune |" in md and "| aki_24_72h | (skipped) |" in md

    parser = argparse.ArgumentParser(prog="ehrjepa finetune")
    finetune_cli.configure(parser)
    base = ["--run", str(planted.root / "run"), "--data", str(planted.root / "data"), "--no-progress",
            "--device", "cpu", "--steps", "8", "--eval-every", "4"]
    rc = finetune_cli.main(parser.parse_args(base + ["--task", "mortality_hosp", "--out", str(tmp_path / "ft"),
                                                     "--from", "scratch", "--fraction", "0.5", "--seed", "3"]))
    assert rc == 0 and "scratch on mortality_hosp: test AUROC" in capsys.readouterr().out
    result = json.loads((tmp_path / "ft" / "result.json").read_text())
    assert result["method"] == "scratch" and result["fraction"] == 0.5 and result["settings"]["max_steps"] == 8
    assert 1 <= result["best_step"] <= result["steps_run"] <= result["steps_budget"] == 8 and 0 <= result["test_auroc"] <= 1
    assert result["n_test"] == int((~np.isnan(planted.y["test"])).sum())
    masks = subsample_masks(planted.subjects, [0.5], 1, seed=3)[(0.5, 0)]
    assert result["n_train"] == int((masks["train"] & ~np.isnan(planted.y["train"])).sum())
    saved = torch.load(tmp_path / "ft" / "model.pt", weights_only=True)
    assert saved["task"] == "mortality_hosp" and "head.weight" in saved["model"] and saved["step"] == result["best_step"]
    assert not list((tmp_path / "ft").glob(".*.tmp"))
    from ehrjepa.probe.metrics import ranked_metrics

    loaded, _ = ft.load_finetuned(tmp_path / "ft" / "model.pt")   # the saved weights give the saved result
    known = planted.positions["test"][~np.isnan(planted.y["test"])]
    y_test = planted.y["test"][~np.isnan(planted.y["test"])]
    assert ranked_metrics(y_test, ft.scores(loaded, planted.windows, known, "cpu"))[0][0] == pytest.approx(
        result["test_auroc"])
    for bad, rc_want, message in ((["--task", "aki_24_72h"], 1, "no 'creatinine' feature"),
                                  (["--task", "readmit_30d"], 1, "stays.parquet has no readmit_30d column"),
                                  (["--task", "phenotype_sepsis"], 1, "no task 'phenotype_sepsis' in this data"),
                                  (["--task", "mortality"], 1, "unknown task 'mortality': choose from mortality_hosp"),
                                  (["--task", "los_gt_3d", "--fraction", "0"], 2, "--fraction must lie in (0, 1]")):
        rc = finetune_cli.main(parser.parse_args(base + ["--out", str(tmp_path / "bad")] + bad))
        err = capsys.readouterr().err
        assert rc == rc_want and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_the_head_learns_at_its_own_rate():
    """train_loop gives the head lr x head_lr_scale and the encoder lr: Adam's first step moves each
    weight by about its rate."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Module()
    model.encoder, model.head = nn.Linear(4, 3, bias=False), nn.Linear(3, 1, bias=False)
    x, y = torch.randn(16, 4), torch.rand(16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = ft.Settings(lr=1e-3, min_lr=1e-3, warmup_steps=0, weight_decay=0.0, grad_clip=1e9, eval_every=1,
                    head_lr_scale=10.0)
    best_step, steps_run, auroc = ft.train_loop(
        model, s, 1, lambda: ((model.head(model.encoder(x)).squeeze(-1) - y) ** 2).mean(), lambda: 0.5)
    assert (best_step, steps_run, auroc) == (1, 1, 0.5)
    moved = {k: (v - before[k]).abs() for k, v in model.state_dict().items()}
    np.testing.assert_allclose(moved["encoder.weight"].numpy(), 1e-3, rtol=1e-2)
    np.testing.assert_allclose(moved["head.weight"].numpy(), 1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="head_lr_scale"):
        ft.Settings(head_lr_scale=0.0)
