"""The trainer: schedules, metrics, loss going down, exact resume, NaN stop, checkpoints, CLI."""
import csv
import math

import numpy as np
import pytest
import torch

from ehrjepa.config import load_config
from ehrjepa.models import load_model
from ehrjepa.train import loop
from ehrjepa.models.checkpoint import load_checkpoint, save_checkpoint
from ehrjepa.train.rng import rng_state, set_rng_state
from ehrjepa.train.loop import TrainingDiverged, train
from ehrjepa.metrics_csv import COLUMNS, metric_series, read_metrics
from ehrjepa.train.metrics import collapse_warning, rankme, target_std
from ehrjepa.schedules import cosine, linear, lr_at

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MICRO = REPO / "configs" / "micro.yaml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic MIMIC-IV (60 patients), preprocessed: about 900 train and 25 val windows."""
    from ehrjepa.data.preprocess import preprocess
    from ehrjepa.synth import write_synthetic

    root = tmp_path_factory.mktemp("data")
    write_synthetic(root / "mimic", 60, seed=0, progress=False)
    return preprocess(root / "mimic", root / "processed", progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores shared by many processes: one intra-op thread is faster and steadier."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def micro(data_dir, *overrides):
    base = [f"data.path={data_dir}", "data.batch_size=16", "data.val_batches=1", "train.log_every=1",
            "train.val_every=1000", "train.ckpt_every=1000", "train.warmup_steps=2"]
    return load_config(MICRO, base + list(overrides))


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.csv")}


# ---- schedules and metrics --------------------------------------------------------------------


def test_lr_schedule_warms_up_then_decays_to_min():
    lr = [lr_at(s, 1.0, 0.1, 10, 100) for s in range(120)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lr[:10], lr[1:10]))  # rising
    assert all(a >= b for a, b in zip(lr[10:100], lr[11:101]))  # falling
    assert lr[55] == pytest.approx(0.55)  # halfway down the cosine
    assert lr[100] == lr[119] == 0.1


def test_weight_decay_and_momentum_schedules():
    assert cosine(0, 0.04, 0.4, 100) == pytest.approx(0.04)
    assert cosine(50, 0.04, 0.4, 100) == pytest.approx(0.22)
    assert cosine(100, 0.04, 0.4, 100) == cosine(500, 0.04, 0.4, 100) == pytest.approx(0.4)
    assert linear(0, 0.996, 1.0, 100) == 0.996
    assert linear(25, 0.996, 1.0, 100) == pytest.approx(0.997)
    assert linear(100, 0.996, 1.0, 100) == linear(200, 0.996, 1.0, 100) == 1.0


def test_rankme_and_collapse_check():
    g = torch.Generator().manual_seed(0)
    full = torch.randn(512, 32, generator=g)
    rank1 = torch.randn(512, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert 25 < rankme(full) <= 32
    assert rankme(rank1) < 1.5
    assert rankme(torch.eye(16)) == pytest.approx(16, rel=1e-4)
    assert target_std(full) == pytest.approx(1.0, abs=0.1)
    assert target_std(torch.ones(100, 8)) == 0.0
    assert collapse_warning(rankme(full), 1.0, 32, 512, 0.05, 1e-3) is None
    assert "RankMe" in collapse_warning(rankme(rank1), 1.0, 32, 512, 0.05, 1e-3)
    assert "std" in collapse_warning(30.0, 1e-5, 32, 512, 0.05, 1e-3)


def test_metrics_log_truncates_on_resume_and_works_without_tensorboard(tmp_path, monkeypatch):
    import sys

    from ehrjepa.train.metrics import MetricsLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.warns(UserWarning, match="TensorBoard"):
        log = MetricsLog(tmp_path)
    for s in range(1, 6):
        log.write({"step": s, "loss": 1.0 / s, "lr": 0.1})
    log.close()
    # a run that crashed after step 5 and resumes from its step-3 checkpoint logs 4 and 5 again
    with pytest.warns(UserWarning, match="TensorBoard"):
        log = MetricsLog(tmp_path, resume_step=3)
    log.write({"step": 4, "loss": 0.2, "val_loss": 0.3})
    log.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["loss"] == 0.5 and rows[3]["loss"] == 0.2 and rows[3]["val_loss"] == 0.3
    assert rows[0]["val_loss"] is None and not (tmp_path / "tb").exists()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    save_checkpoint({"rng": rng_state()}, tmp_path / "r.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed


# ---- training ----------------------------------------------------------------------------------


def test_loss_goes_down_and_logs(tmp_path, data_dir):
    run = tmp_path / "run"
    cfg = micro(data_dir, "train.max_steps=150", "train.warmup_steps=15", "train.val_every=50",
                "train.ckpt_every=50", "train.log_every=10")
    summary = train(cfg, run, progress=False)
    assert summary["steps"] == 150 and not summary["stopped_early"]
    rows = read_metrics(run / "metrics.csv")
    assert [r["step"] for r in rows] == list(range(1, 151))  # one row per step, read back in tens
    first = np.mean([r["loss"] for r in rows[:10]])
    last = np.mean([r["loss"] for r in rows[-10:]])
    assert last < 0.5 * first, (first, last)
    val = [r for r in rows if r["val_loss"] is not None]
    assert [r["step"] for r in val] == [50, 100, 150]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert all(r["rankme"] >= 1 and r["target_std"] > 0 for r in val)
    assert rows[0]["lr"] == pytest.approx(cfg.train.lr / 15)
    t = cfg.train
    assert rows[-1]["momentum"] == pytest.approx(linear(149, t.momentum, t.momentum_end, 150))
    assert rows[-1]["wd"] == pytest.approx(cosine(149, t.weight_decay, t.weight_decay_end, 150))
    assert not summary["warnings"]  # no collapse
    assert list(csv.reader(open(run / "metrics.csv")))[0] == COLUMNS
    assert list((run / "tb").iterdir())  # TensorBoard events
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["best.pt", "last.pt", "step_0000100.pt", "step_0000150.pt"]  # keep_ckpts=2
    assert summary["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in val))
    assert load_config(run / "config.yaml") == cfg


def test_weight_decay_skips_biases_and_norms(tmp_path, data_dir):
    run = tmp_path / "run"
    cfg = micro(data_dir, "train.max_steps=3")
    t = cfg.train
    train(cfg, run, progress=False)
    groups = load_checkpoint(run / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    by_name = {g["name"]: g for g in groups}
    assert by_name["decay"]["weight_decay"] > 0
    assert by_name["decay"]["weight_decay"] == pytest.approx(
        cosine(2, t.weight_decay, t.weight_decay_end, 3))
    assert by_name["no_decay"]["weight_decay"] == 0.0
    assert by_name["decay"]["lr"] == by_name["no_decay"]["lr"] == pytest.approx(
        lr_at(2, t.lr, t.min_lr, t.warmup_steps, 3))


def test_checkpoint_loads_weights_only_into_a_model(tmp_path, data_dir):
    from ehrjepa.data import WindowDataset, open_processed

    run = tmp_path / "run"
    train(micro(data_dir, "train.max_steps=4"), run, progress=False)
    ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    processed = open_processed(data_dir)
    assert ckpt["step"] == 4 and ckpt["n_features"] == len(processed.features)
    assert ckpt["data_position"] == {"epoch": 0, "batches": 4}
    keys = set(ckpt["model"])
    for part in ("encoder.", "predictor.", "target_encoder."):
        assert any(k.startswith(part) for k in keys), part
    model, cfg, _ = load_model(run / "checkpoints" / "last.pt")
    assert cfg.model.size == "micro" and not model.training and model.max_hours == 48
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    x = WindowDataset.for_hours(processed, "test", 24)[0]  # the probe's 24 hours fit max_hours
    emb = model.embed(x["values"][None], x["observed"][None], x["delta"][None])
    assert emb.shape[:2] == (1, 24) and torch.isfinite(emb).all()


def test_resume_is_exact(tmp_path, data_dir):
    """Stop at N (train.stop_after) and resume to 2N: the same per-step losses and final weights
    as 2N steps straight. Random multiblock masks, and an epoch boundary (batches of 32 windows of
    20 hours; about 30 batches per epoch on the test data) crossed after the resume."""
    n = 20
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = [f"train.max_steps={2 * n}", "data.batch_size=32", "data.length=20", "mask.kind=multiblock",
              "model.dropout=0.1"]
    train(micro(data_dir, *common), straight, progress=False)
    first = train(micro(data_dir, *common, f"train.stop_after={n}"), split, progress=False)
    assert first["steps"] == n and first["stopped_early"]
    assert load_checkpoint(split / "checkpoints" / "last.pt")["step"] == n
    second = train(micro(data_dir, *common, f"train.stop_after={n}"), split, resume=True,
                   progress=False)
    assert second["steps"] == 2 * n and not second["stopped_early"]
    a, b = losses(straight), losses(split)
    assert list(a) == list(b) == list(range(1, 2 * n + 1))
    np.testing.assert_allclose([b[s] for s in b], [a[s] for s in a], rtol=0, atol=1e-6)
    sa = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    sb = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    assert sa["data_position"] == sb["data_position"]
    assert sa["data_position"]["epoch"] == 1
    per_epoch = 2 * n - sa["data_position"]["batches"]
    assert n < per_epoch < 2 * n, per_epoch  # the boundary lies after the resume
    for k in sa["model"]:
        torch.testing.assert_close(sb["model"][k], sa["model"][k], rtol=0, atol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    build = loop.build_model
    calls = {"n": 0}

    def build_with_nan_at_step_7(cfg, n_features):
        model = build(cfg, n_features)
        forward = model.forward

        def poisoned(batch):
            loss, stats = forward(batch)
            calls["n"] += 1
            return (loss * math.nan if calls["n"] == 7 else loss), stats

        model.forward = poisoned
        return model

    monkeypatch.setattr(loop, "build_model", build_with_nan_at_step_7)
    run = tmp_path / "run"
    # losses are read back every 10 steps: the NaN at step 7 is found at step 10, before the
    # step-10 checkpoint would be written
    cfg = micro(data_dir, "train.max_steps=20", "train.log_every=10", "train.ckpt_every=5")
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 7.*last\.pt \(step 5\)"):
        train(cfg, run, progress=False)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["step"] == 5
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt", "step_0000005.pt"]
    assert max(losses(run)) == 6  # rows up to the last finite step


def test_a_finished_run_is_not_overwritten(tmp_path, data_dir):
    run = tmp_path / "run"
    train(micro(data_dir, "train.max_steps=2"), run, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(micro(data_dir, "train.max_steps=2"), run, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(micro(data_dir, "train.max_steps=2"), tmp_path / "other", resume=True, progress=False)


def test_cli_train_and_resume(tmp_path, data_dir, capsys):
    from ehrjepa.cli import main

    run = tmp_path / "run"
    argv = ["train", "--config", str(MICRO), "--data", str(data_dir), "--run-dir", str(run),
            "--set", "data.batch_size=16", "--set", "train.max_steps=6", "--set", "train.stop_after=3",
            "--set", "train.warmup_steps=2",
            "--set", "train.log_every=1", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "parameters: encoder" in out and str(run) in out and "3 of 6 steps" in out
    # the run's saved config (stop_after=3 steps per invocation) takes it from 3 to 6
    assert main(["train", "--run-dir", str(run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and "6 of 6 steps" in out and "last.pt" in out
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 6
    assert main(["train", "--config", str(MICRO), "--run-dir", str(tmp_path / "r2"),
                 "--set", "train.lrr=1"]) == 2
    assert "train.lrr" in capsys.readouterr().err
    assert main(["train", "--config", str(MICRO), "--run-dir", str(tmp_path / "r3")]) == 2
    assert "--data" in capsys.readouterr().err


def test_read_metrics_errors_name_the_line_and_series_skip_blanks(tmp_path):

    path = tmp_path / "metrics.csv"
    path.write_text("step,loss,val_loss\n1,0.5,\n2,0.25,0.4\n")
    assert metric_series(read_metrics(path)) == {"loss": ([1, 2], [0.5, 0.25]), "val_loss": ([2], [0.4])}
    path.write_text("step,loss\n1,0.5\n2,abc\n")
    with pytest.raises(ValueError, match=r"line 3: column 'loss'"):
        read_metrics(path)
    path.write_text("loss\n0.5\n")
    with pytest.raises(ValueError, match="no 'step' column"):
        read_metrics(path)


def test_on_validation_sees_each_validation_step_and_can_stop_the_run(tmp_path, data_dir):
    seen = []

    class Stop(Exception):
        pass

    def hook(step, model, row):
        seen.append((step, row["val_loss"], model.training))
        if step == 4:
            raise Stop

    cfg = micro(data_dir, "train.max_steps=8", "train.val_every=2", "train.ckpt_every=2")
    with pytest.raises(Stop):
        train(cfg, tmp_path / "run", progress=False, on_validation=hook)
    assert [s for s, _, _ in seen] == [2, 4]
    assert all(math.isfinite(v) and training for _, v, training in seen)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4


def whole_stays(data_dir, *overrides):
    """micro on whole-stay crops of up to 48 hours, batched by a 384-token budget."""
    return micro(data_dir, "data.length=48", "data.min_length=6", "data.max_hours=48",
                 "data.tokens_per_batch=384", "mask.context_fraction=0.75", "mask.target_hours=12",
                 *overrides)


def test_whole_stay_loss_goes_down(tmp_path, data_dir):
    run = tmp_path / "run"
    summary = train(whole_stays(data_dir, "train.max_steps=60", "train.warmup_steps=6",
                                "train.val_every=30"), run, progress=False)
    rows = read_metrics(run / "metrics.csv")
    assert summary["steps"] == 60 and len(rows) == 60
    first = np.mean([r["loss"] for r in rows[:6]])
    last = np.mean([r["loss"] for r in rows[-6:]])
    assert last < 0.8 * first, (first, last)
    val = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    assert len(val) == 2 and all(math.isfinite(v) for v in val)


def test_whole_stay_resume_is_exact_across_an_epoch(tmp_path, data_dir):
    """Random crops, hour-block multiblock masks, token-budget batches, augmentation: stop and
    resume give the same losses as a straight run, across an epoch boundary."""
    common = ["train.max_steps=14", "data.crop=random", "mask.kind=multiblock",
              "mask.target_block_hours=[2,6]", "mask.min_context=4", "data.tokens_per_batch=1536",
              "data.augment.drop=0.2", "data.augment.jitter=1", "data.augment.noise=0.05"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(whole_stays(data_dir, *common), straight, progress=False)
    train(whole_stays(data_dir, *common, "train.stop_after=7"), split, progress=False)
    train(whole_stays(data_dir, *common, "train.stop_after=7"), split, resume=True, progress=False)
    a, b = losses(straight), losses(split)
    assert list(a) == list(b) == list(range(1, 15))
    np.testing.assert_allclose([b[s] for s in b], [a[s] for s in a], rtol=0, atol=1e-6)
    position = torch.load(split / "checkpoints" / "last.pt", weights_only=True)["data_position"]
    assert position["epoch"] >= 1  # the run crossed an epoch (new crops, new batches)


# ---- checkpoint selection (train.select) and the collapse guard --------------------------------


def _validation(run):
    with open(run / "validation.csv", newline="") as f:
        return [{k: (float(v) if v else None) for k, v in r.items()} for r in csv.DictReader(f)]


def _best_step(run):
    return load_checkpoint(run / "checkpoints" / "best.pt")["step"]


@pytest.mark.parametrize("select", ["loss", "rankme"])
def test_best_pt_is_the_validation_step_with_the_best_measure(tmp_path, data_dir, select):
    run = tmp_path / "run"
    cfg = micro(data_dir, "train.max_steps=80", "train.warmup_steps=5", "train.val_every=20",
                f"train.select={select}")
    summary = train(cfg, run, progress=False)
    rows = _validation(run)
    assert [r["step"] for r in rows] == [20, 40, 60, 80]
    assert all(r["val_probe"] is None for r in rows)  # no probe unless select=probe
    key = (lambda r: -r["val_loss"]) if select == "loss" else (lambda r: r["rankme"])
    best = max(rows, key=key)
    assert _best_step(run) == int(best["step"])
    # best marks each step where best.pt was written: every new best so far
    running = -math.inf
    for r in rows:
        assert r["best"] == float(key(r) > running)
        running = max(running, key(r))
    assert summary["best_select"] == {"by": select, "value": pytest.approx(key(best))}
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["best_select"]["by"] == select


def test_select_probe_keeps_the_best_validation_auroc_of_the_sweeps_probe(tmp_path, data_dir, monkeypatch):
    """train.select=probe scores each validation step with the sweep's ProbeScorer (train and val
    splits only); planted values make the choice known."""
    from ehrjepa.sweep import objective

    made, planted = [], iter([0.61, 0.74, 0.70, 0.72])

    class Planted:
        def __init__(self, data_dir_, task, hours, **kw):
            made.append((str(data_dir_), task, hours))

        def score(self, model):
            assert model.training is False or model.training is True
            return next(planted)

    monkeypatch.setattr(objective, "ProbeScorer", Planted)
    run = tmp_path / "run"
    cfg = micro(data_dir, "train.max_steps=80", "train.warmup_steps=5", "train.val_every=20",
                "train.select=probe")
    summary = train(cfg, run, progress=False)
    assert made == [(str(data_dir), "mortality_hosp", cfg.data.length)]  # built once; hours = length
    assert [r["val_probe"] for r in _validation(run)] == [0.61, 0.74, 0.70, 0.72]
    assert _best_step(run) == 40
    assert summary["best_select"] == {"by": "probe", "value": 0.74}


def test_select_probe_scores_a_real_probe_or_falls_back_to_rankme(tmp_path, data_dir, capsys):
    """The real ProbeScorer where the data has the label; a task the data lacks: one line, RankMe."""
    run = tmp_path / "run"
    cfg = micro(data_dir, "train.max_steps=40", "train.warmup_steps=5", "train.val_every=20",
                "train.select=probe", "train.select_hours=24")
    train(cfg, run, progress=True)
    rows = _validation(run)
    out = capsys.readouterr().out
    if "best.pt is chosen by RankMe" in out:  # too few positives in this small synthetic set
        assert all(r["val_probe"] is None for r in rows)
    else:
        assert all(0.0 <= r["val_probe"] <= 1.0 for r in rows)
        assert _best_step(run) == int(max(rows, key=lambda r: r["val_probe"])["step"])
    run = tmp_path / "run2"
    cfg = micro(data_dir, "train.max_steps=40", "train.warmup_steps=5", "train.val_every=20",
                "train.select=probe", "train.select_task=phenotype_nothing_like_it")
    train(cfg, run, progress=True)
    out = capsys.readouterr().out
    assert out.count("best.pt is chosen by RankMe instead") == 1
    rows = _validation(run)
    assert _best_step(run) == int(max(rows, key=lambda r: r["rankme"])["step"])
    assert load_config(run / "config.yaml").train.select == "probe"  # the config as asked


def test_select_config_is_checked():
    from ehrjepa.config import ConfigError

    assert load_config(MICRO).train.select == "probe"
    with pytest.raises(ConfigError, match="train.select"):
        load_config(MICRO, ["train.select=best"])
    with pytest.raises(ConfigError, match="collapse_rankme"):
        load_config(MICRO, ["train.collapse_rankme=5"])


def test_collapse_guard_says_so_on_stderr_once_per_drop(capsys):
    state, t = loop.RunState(), load_config(MICRO).train  # collapse_rankme 0.15: 9.6 of 64
    v = lambda rank: {"rankme": rank, "target_std": 0.5, "_width": 64, "_rows": 1000}  # noqa: E731
    for step, rank in [(100, 30.0), (200, 8.0), (300, 5.0), (400, 4.0), (500, 20.0), (600, 9.0)]:
        loop.collapse_guard(state, step, v(rank), t)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert len(lines) == 2  # the drop at 200 and, after the recovery at 500, the one at 600
    assert lines[0].startswith("warning: step 200: possible representation collapse: RankMe 8.0 < 9.6")
    assert lines[1].startswith("warning: step 600:")
    assert [w.split(":")[0] for w in state.warnings] == ["step 200", "step 600"]


def test_a_collapsing_run_says_so_while_it_trains(tmp_path, data_dir, capfd):
    """A threshold no micro run reaches: the first validation warns on stderr, the later ones
    (still below) do not repeat it."""
    cfg = micro(data_dir, "train.max_steps=60", "train.warmup_steps=5", "train.val_every=20",
                "train.collapse_rankme=0.99", "train.select=rankme")
    summary = train(cfg, tmp_path / "run", progress=False)
    err = capfd.readouterr().err
    assert err.count("possible representation collapse") == 1
    assert "warning: step 20:" in err
    assert len(summary["warnings"]) == 1
