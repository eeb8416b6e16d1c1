"""Faults a user hit with `ehrjepa sweep` (issue 21), each through the real CLI in a subprocess:
an extended study replaying its points, Ctrl-C, a second --study-name in one folder, a bad
--storage, a failing trial's traceback on the terminal, plots that cannot be drawn."""
import importlib.util
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
TINY = ["train.max_steps=2", "train.val_every=2", "train.log_every=2", "train.ckpt_every=2",
        "train.warmup_steps=1", "train.cpu_threads=1", "data.batch_size=16", "data.val_batches=1"]
SPACE = {"train.lr": {"log_uniform": [1.0e-4, 3.0e-3]}, "train.momentum": {"uniform": [0.99, 0.999]}}


def ehrjepa(*args, env=ENV, timeout=300):
    return subprocess.run([sys.executable, "-m", "ehrjepa", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=timeout)


def ok(done):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def sweep_args(data, space, study_dir, trials, *extra):
    sets = [x for o in TINY for x in ("--set", o)]
    return ["sweep", "--config", REPO / "configs" / "micro.yaml", "--data", data, "--space", space,
            "--trials", trials, "--study-dir", study_dir, "--objective", "val_loss", *sets, *extra]


def trials(study_dir: Path, name: str = "sweep") -> list[tuple[int, str, dict]]:
    """[(number, state, {param: value})] of study `name`, straight from the SQLite file."""
    with sqlite3.connect(study_dir / "study.db") as db:
        rows = db.execute("SELECT t.trial_id, t.number, t.state FROM trials t JOIN studies s "
                          "ON t.study_id = s.study_id WHERE s.study_name = ? ORDER BY t.number",
                          (name,)).fetchall()
        out = []
        for trial_id, number, state in rows:
            params = dict(db.execute("SELECT param_name, param_value FROM trial_params "
                                     "WHERE trial_id = ?", (trial_id,)).fetchall())
            out.append((number, state, params))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_faults")
    ok(ehrjepa("synth", "--out", root / "mimic", "--patients", 60, "--no-progress"))
    ok(ehrjepa("preprocess", "--mimic-dir", root / "mimic", "--out", root / "processed",
               "--seed", 2, "--no-progress"))  # split seed 2: the val split has windows
    space = root / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    return root / "processed", space


@pytest.fixture(scope="module")
def extended(data, tmp_path_factory):
    """A study of 2 trials, then the same command with --trials 4."""
    processed, space = data
    study = tmp_path_factory.mktemp("extended") / "study"
    ok(ehrjepa(*sweep_args(processed, space, study, 2)))
    ok(ehrjepa(*sweep_args(processed, space, study, 4)))
    return study


def test_an_extended_study_proposes_new_points(extended):
    got = trials(extended)
    assert [(n, s) for n, s, _ in got] == [(i, "COMPLETE") for i in range(4)]
    points = [tuple(round(v, 12) for _, v in sorted(p.items())) for _, _, p in got]
    assert len(set(points)) == 4, points  # trials 2-3 are not trials 0-1 again

    from ehrjepa.sweep.study import sampler_seed

    seeds = {sampler_seed(seed, n) for seed in range(3) for n in range(20)}
    assert len(seeds) == 60  # each process seed and study size its own sampler seed


def test_another_study_name_keeps_its_trials_apart_and_plots_that_fail_are_notes(
        data, extended, tmp_path):
    processed, space = data
    study = tmp_path / "study"
    shutil.copytree(extended, study)
    # a matplotlib that cannot be imported: the plots are lost, not the study's other outputs
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib is broken here')\n")
    env = {**ENV, "PYTHONPATH": f"{fake}{os.pathsep}{REPO}"}
    done = ok(ehrjepa(*sweep_args(processed, space, study, 1, "--study-name", "other"), env=env))
    assert "Traceback" not in done.stderr and "FileExistsError" not in done.stdout + done.stderr
    assert [(n, s) for n, s, _ in trials(study, "other")] == [(0, "COMPLETE")]
    assert (study / "other" / "trial_0000" / "checkpoints" / "last.pt").is_file()
    assert (study / "other" / "best.yaml").is_file() and (study / "other" / "trials.csv").is_file()
    assert "note: no plots drawn" in done.stdout and "matplotlib is broken here" in done.stdout
    assert [(n, s) for n, s, _ in trials(study)] == [(i, "COMPLETE") for i in range(4)]  # untouched
    assert (study / "best.yaml").read_text() == (extended / "best.yaml").read_text()

    bad = ehrjepa(*sweep_args(processed, space, study, 1, "--study-name", "../x"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--study-name '../x'" in bad.stderr


@pytest.mark.parametrize("url, named", [
    ("foo://bar", "--storage foo://bar: unknown database kind 'foo'"),
    ("not a url", "--storage not a url: not a database URL"),
    ("mysql+nosuchdriver://u@h/db", "--storage mysql+nosuchdriver://u@h/db: unknown database kind"),
])
def test_a_bad_storage_is_one_line_naming_it(data, tmp_path, url, named):
    processed, space = data
    done = ehrjepa(*sweep_args(processed, space, tmp_path / "study", 1, "--storage", url))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and named in done.stderr, done.stderr
    assert not (tmp_path / "study").exists()


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg is installed")
def test_a_postgresql_storage_without_its_driver_says_what_to_install(data, tmp_path):
    processed, space = data
    url = "postgresql://me:secret@db.example/ehrjepa"
    done = ehrjepa(*sweep_args(processed, space, tmp_path / "study", 1, "--storage", url))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "--storage postgresql://me:***@db.example/ehrjepa" in done.stderr
    assert "pip install 'psycopg[binary]'" in done.stderr and "secret" not in done.stderr
    assert not (tmp_path / "study").exists()


def test_a_failing_trial_prints_its_one_line_and_optuna_logs_to_the_study_log(data, tmp_path):
    processed, space = data
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"data.batch_size": {"choice": [100000]}}))
    study = tmp_path / "study"
    done = ehrjepa(*sweep_args(processed, space, study, 1))
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr == "", done.stderr  # no Optuna warning, no traceback
    failed = [x for x in done.stdout.splitlines() if x.startswith("trial 0: fail")]
    assert len(failed) == 1 and "fewer than one batch" in failed[0], done.stdout
    log = (study / "study.log").read_text()
    assert "Trial 0 failed" in log and "TrialFailed" in log


def test_ctrl_c_in_a_sweep_is_one_line_and_the_rerun_ends_with_the_trials_asked(data, tmp_path):
    processed, space = data
    study = tmp_path / "study"
    longer = ["--set", "train.max_steps=40"]  # trial 1 still trains when Ctrl-C comes
    proc = subprocess.Popen([sys.executable, "-m", "ehrjepa",
                             *map(str, sweep_args(processed, space, study, 2, *longer))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=REPO)
    try:
        for line in proc.stdout:  # trial 1 is training
            if line.startswith("run: ") and "trial_0001" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert lines[0].startswith("ehrjepa sweep: interrupted;") and "ehrjepa sweep --config" in lines[0]
    assert [(n, s) for n, s, _ in trials(study)] == [(0, "COMPLETE"), (1, "FAIL")]
    log = (study / "study.log").read_text()  # Optuna's account of it, with its traceback
    assert "Trial 1 failed" in log and "Traceback" in log and "interrupted" in log

    command = shlex.split(lines[0].split("run the missing trials with: ", 1)[1])
    assert command[:2] == ["ehrjepa", "sweep"]
    done = ok(ehrjepa(*command[1:]))
    assert [(n, s) for n, s, _ in trials(study)] == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE")]
    assert "2 complete" in done.stdout
