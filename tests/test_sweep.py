"""`ehrjepa sweep`: bad spaces fail before any trial, kill -9 and rerun ends with exactly the study's
trials, pruning stops a planted bad trial, and the probe objective never opens the test split.

Tiny synthetic data (60 patients; split seed 2 puts both classes of los_gt_3d in val) and micro
runs of 4 steps with a validation step every 2.
"""
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ehrjepa.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "train.max_steps=4", "--set", "train.val_every=2", "--set", "train.log_every=2",
        "--set", "train.ckpt_every=4", "--set", "train.warmup_steps=1", "--set", "data.batch_size=16",
        "--set", "data.val_batches=1"]
SPACE = {"train.lr": {"log_uniform": [1.0e-4, 3.0e-3]}, "train.momentum": {"uniform": [0.99, 0.999]},
         "mask.context_hours": {"choice": [12, 24]}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_data")
    assert cli_main(["synth", "--patients", "60", "--out", str(root / "raw"), "--no-progress"]) == 0
    assert cli_main(["preprocess", "--mimic-dir", str(root / "raw"), "--out", str(root / "out"), "--seed", "2",
                     "--no-progress"]) == 0
    return root / "out"


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space), encoding="utf-8")
    return path


def sweep_args(data, space, study_dir, trials=4, *extra):
    return ["sweep", "--config", str(REPO / "configs" / "micro.yaml"), "--data", str(data), "--space", str(space),
            "--trials", str(trials), "--study-dir", str(study_dir), *TINY, *extra]


def trial_states(study_dir: Path) -> dict[int, str]:
    """{trial number: state} straight from the SQLite file ({} while Optuna is still creating it)."""
    if not (study_dir / "study.db").exists():
        return {}
    try:
        with sqlite3.connect(study_dir / "study.db") as db:
            return dict(db.execute("SELECT number, state FROM trials ORDER BY number").fetchall())
    except sqlite3.OperationalError:  # no tables yet, or locked for a moment
        return {}


def load(study_dir: Path):
    import optuna

    return optuna.load_study(study_name="sweep", storage=f"sqlite:///{study_dir / 'study.db'}")


@pytest.mark.parametrize("space, named", [
    ({"train.lrr": {"log_uniform": [1.0e-4, 1.0e-3]}}, "train.lrr: unknown config key"),
    ({"optim.lr": {"uniform": [0.1, 0.2]}}, "optim.lr: unknown config key"),
    ({"train.lr": {"gaussian": [1.0e-3, 1.0e-4]}}, "train.lr: unknown distribution 'gaussian'"),
    ({"train.lr": {"log_uniform": [3.0e-3, 1.0e-4]}}, "train.lr: need low < high"),
    ({"train.lr": {"log_uniform": [0.0, 1.0e-3]}}, "train.lr: a log scale needs low > 0"),
    ({"train.lr": {"uniform": [1.0e-3]}}, "train.lr: uniform takes [low, high]"),
    ({"train.lr": {"uniform": [-1.0, 1.0e-3]}}, "train.lr: value -1.0 does not fit the config"),
    ({"data.batch_size": {"uniform": [16, 64]}}, "data.batch_size: is an integer key"),
    ({"data.batch_size": {"int": [16.5, 64]}}, "data.batch_size: int bounds must be integers"),
    ({"data.batch_size": {"int": [16, 64, "log2"]}}, "data.batch_size: int takes [low, high] or [low, high, log]"),
    ({"mask.context_hours": {"choice": [12, "x"]}}, "mask.context_hours: value 'x' does not fit the config"),
    ({"mask.context_hours": {"choice": [12, 40]}}, "mask.context_hours: value 40 does not fit the config"),
    ({"train.lr": 0.001}, "train.lr: expected one distribution"),
])
def test_bad_space_is_one_line_naming_it_before_any_trial(tmp_path, capsys, data, space, named):
    path = write_space(tmp_path / "space.yaml", space)
    assert cli_main(sweep_args(data, path, tmp_path / "study")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err and str(path) in err, err
    assert not (tmp_path / "study").exists()  # checked before the study or any trial


def no_plots(monkeypatch):
    """Skip the PNGs (seconds each: fANOVA importances, matplotlib) where a test does not look at them."""
    import ehrjepa.sweep.study

    monkeypatch.setattr(ehrjepa.sweep.study, "write_plots", lambda study, study_dir: [])


def test_killed_sweep_reruns_only_the_missing_trials(tmp_path, capsys, monkeypatch, data):
    space = write_space(tmp_path / "space.yaml", SPACE)
    study_dir = tmp_path / "study"
    args = sweep_args(data, space, study_dir, 4, "--objective", "val_loss")
    proc = subprocess.Popen([sys.executable, "-m", "ehrjepa", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:  # kill -9 while the third trial (number 2) trains
        while time.monotonic() < deadline and proc.poll() is None:
            if trial_states(study_dir).get(2) == "RUNNING" and (study_dir / "trial_0002").is_dir():
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert trial_states(study_dir) == {0: "COMPLETE", 1: "COMPLETE", 2: "RUNNING"}

    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "trial 2: marked failed" in out
    # the killed trial does not count toward --trials: the rerun ends with 4 complete ones
    assert trial_states(study_dir) == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "COMPLETE", 4: "COMPLETE"}
    study = load(study_dir)
    for t in study.trials:  # every trial is an ordinary train run folder
        run = Path(t.user_attrs["run_dir"])
        assert run == (study_dir / f"trial_{t.number:04d}").resolve()
        if t.state.name == "COMPLETE":
            assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
            assert sorted(t.intermediate_values) == [2, 4] and (run / "checkpoints" / "last.pt").is_file()
            assert t.value == t.intermediate_values[4]
    # the outputs: best.yaml is the best trial's full config, which loads as one
    from ehrjepa.config import load_config

    best = load_config(study_dir / "best.yaml")
    for key, value in study.best_trial.params.items():
        section, name = key.split(".")
        assert getattr(getattr(best, section), name) == pytest.approx(value)
    assert best.train.max_steps == 4 and Path(best.data.path) == Path(data).resolve()
    assert len((study_dir / "trials.csv").read_text().strip().splitlines()) == 1 + 5
    for png in ("history.png", "importances.png", "parallel_coordinates.png", "intermediate_values.png"):
        assert (study_dir / png).read_bytes()[:4] == b"\x89PNG", png

    # a finished study runs nothing more; one that searched something else refuses
    no_plots(monkeypatch)
    assert cli_main(args) == 0
    assert "done: 0 trial(s) run now" in capsys.readouterr().out
    assert cli_main(sweep_args(data, space, study_dir, 4, "--objective", "probe", "--task", "los_gt_3d")) == 2
    assert "was started with another objective" in capsys.readouterr().err
    assert len(load(study_dir).trials) == 5


def test_pruning_stops_a_planted_bad_trial(tmp_path, capsys, monkeypatch, data):
    from ehrjepa.sweep.objective import Objective

    # trials 0-2 score 1.0 at every validation step; trial 3 scores 100 (val_loss: lower is better)
    monkeypatch.setattr(Objective, "value", lambda self, trial, step, model, row: 100.0 if trial.number == 3 else 1.0)
    no_plots(monkeypatch)
    space = write_space(tmp_path / "space.yaml", SPACE)
    study_dir = tmp_path / "study"
    assert cli_main(sweep_args(data, space, study_dir, 4, "--objective", "val_loss", "--prune-after", "3")) == 0
    assert "trial 3: pruned at step 2" in capsys.readouterr().out
    study = load(study_dir)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 + ["PRUNED"]
    assert sorted(study.trials[3].intermediate_values) == [2]
    steps = (study_dir / "trial_0003" / "metrics.csv").read_text().strip().splitlines()[1:]
    assert int(float(steps[-1].split(",")[0])) == 2  # training stopped at the pruned step, of 4


def test_probe_objective_never_opens_the_test_split(tmp_path, capsys, monkeypatch, data):
    from ehrjepa.data.processed import Processed
    from ehrjepa.data.windows import WindowDataset

    asked = []
    init, indices = WindowDataset.__init__, Processed.split_indices

    def window_init(self, processed, split, *a, **k):
        asked.append(split)
        init(self, processed, split, *a, **k)

    def split_indices(self, split):
        asked.append(split)
        return indices(self, split)

    monkeypatch.setattr(WindowDataset, "__init__", window_init)
    monkeypatch.setattr(Processed, "split_indices", split_indices)
    no_plots(monkeypatch)
    space = write_space(tmp_path / "space.yaml", SPACE)
    study_dir = tmp_path / "study"
    # dropout draws from the global RNG and differs in eval mode: the probe must leave both as it found them
    assert cli_main(sweep_args(data, space, study_dir, 2, "--objective", "probe", "--task", "los_gt_3d",
                               "--set", "model.dropout=0.1")) == 0
    assert set(asked) == {"train", "val"}, asked
    study = load(study_dir)
    assert study.direction.name == "MAXIMIZE"
    for t in study.trials:
        assert t.state.name == "COMPLETE" and sorted(t.intermediate_values) == [2, 4]
        assert all(0.0 <= v <= 1.0 for v in t.intermediate_values.values())  # validation AUROCs

    # the probe under a forked RNG leaves the training as `ehrjepa train` makes it, step for step
    from ehrjepa.config import load_config
    from ehrjepa.train import train

    trial_dir = study_dir / "trial_0001"
    train(load_config(trial_dir / "config.yaml"), tmp_path / "plain", progress=False)
    losses = [[line.split(",")[1] for line in (run / "metrics.csv").read_text().splitlines()]
              for run in (trial_dir, tmp_path / "plain")]
    assert losses[0] == losses[1] and len(losses[0]) > 2


def test_a_trial_that_cannot_run_fails_alone_with_its_reason(tmp_path, capsys, monkeypatch, data):
    no_plots(monkeypatch)
    space = write_space(tmp_path / "space.yaml", {"data.batch_size": {"choice": [100000]}})
    study_dir = tmp_path / "study"
    assert cli_main(sweep_args(data, space, study_dir, 2, "--objective", "val_loss")) == 1  # no trial completed
    out = capsys.readouterr().out
    assert out.count("fewer than one batch") == 2 and "no trial completed: no best.yaml" in out
    assert trial_states(study_dir) == {0: "FAIL", 1: "FAIL"} and not (study_dir / "best.yaml").exists()


def test_every_option_says_its_default_or_required():
    import argparse

    from ehrjepa.sweep.cli import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    for action in parser._actions:
        if action.option_strings != ["-h", "--help"]:
            assert "(default: " in action.help or "(required)" in action.help, action.option_strings


def test_the_probe_objective_labels_every_probe_task(data):
    """aki_24_72h is labelled from the hourly labs, not the stays table: the objective must get it
    (or a one-line reason) through the probe's own labels_by_split, never a KeyError."""
    from ehrjepa.probe.tasks import TASKS
    from ehrjepa.sweep.objective import ProbeScorer

    for task in TASKS + ("phenotype_sepsis", "phenotype_gout"):
        try:
            ProbeScorer(data, task, hours=24)
        except ValueError as e:
            assert str(e).count("\n") == 0 and task in str(e)
    with pytest.raises(ValueError, match="no phenotype_gout column"):
        ProbeScorer(data, "phenotype_gout", hours=24)
