"""Faults a user hit with `ehrjepa train` (issue 10), each through the real CLI in a subprocess:
kill -9 and resume, damaged last.pt, a full disk while saving, an empty config, --resume on an
empty folder and on a finished run, --help defaults."""
import argparse
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "configs" / "micro.yaml"
TINY = ["data.batch_size=16", "data.val_batches=1", "train.warmup_steps=2", "train.log_every=1",
        "train.cpu_threads=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def ehrjepa(*args, preexec_fn=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "ehrjepa", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=REPO, preexec_fn=preexec_fn, timeout=timeout)


def train_args(data, run, *overrides, resume=False):
    args = ["train", "--run-dir", run, "--no-progress"]
    args += ["--resume"] if resume else ["--config", MICRO, "--data", data]
    for o in ([] if resume else TINY) + list(overrides):
        args += ["--set", o]
    return args


def ok(done):
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def losses(run):
    from ehrjepa.metrics_csv import read_metrics

    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.csv")]


def temporaries(run):
    return sorted(p.name for p in [*run.glob("checkpoints/.*.tmp"), *run.glob("*.tmp")])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    ok(ehrjepa("synth", "--out", root / "mimic", "--patients", 40, "--no-progress"))
    ok(ehrjepa("preprocess", "--mimic-dir", root / "mimic", "--out", root / "processed",
               "--no-progress"))
    return root / "processed"


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory):
    """A run of 6 steps stopped after 4: step_0000002.pt, step_0000004.pt, last.pt (step 4)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    ok(ehrjepa(*train_args(data, run, "train.max_steps=6", "train.stop_after=4",
                           "train.ckpt_every=2", "train.keep_ckpts=3", "train.val_every=2")))
    return run


def test_kill_9_at_three_steps_then_resume_matches_one_run(data, tmp_path):
    common = ["train.max_steps=10", "train.ckpt_every=1", "train.keep_ckpts=2", "train.val_every=4"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # the uninterrupted run goes alongside the interrupted one (the kills mostly wait)
    reference = subprocess.Popen([sys.executable, "-m", "ehrjepa",
                                  *map(str, train_args(data, straight, *common))],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=ENV, cwd=REPO)

    kill_at = sorted(random.Random(7).sample(range(2, 10), 3))
    for i, k in enumerate(kill_at):
        started = time.time_ns()
        proc = subprocess.Popen([sys.executable, "-m", "ehrjepa",
                                 *map(str, train_args(data, killed, *common, resume=i > 0))],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO)
        try:
            _wait_for_step(killed, k, started, proc)
            # the first kill lands inside a checkpoint write (while its temp file exists)
            deadline = time.monotonic() + (5 if i == 0 else 0)
            while time.monotonic() < deadline and not temporaries(killed) and proc.poll() is None:
                time.sleep(0.0005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    done = ok(ehrjepa(*train_args(data, killed, *common, resume=True)))
    assert "10 of 10 steps" in done.stdout
    out = reference.communicate(timeout=120)[0]
    assert reference.returncode == 0, out[-3000:]
    assert losses(killed) == losses(straight)  # every step once, bit for bit
    assert [s for s, _ in losses(killed)] == list(range(1, 11))
    assert temporaries(killed) == []


def _wait_for_step(run, step, started_ns, proc, timeout=90):
    """Until this process has logged `step` to metrics.csv (rows of earlier processes don't count)."""
    csv = run / "metrics.csv"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "train ended before it could be killed"
        try:
            if csv.stat().st_mtime_ns > started_ns:
                rows = [line.split(",", 1)[0] for line in csv.read_text().splitlines()[1:]]
                if any(r.isdigit() and int(r) >= step for r in rows):
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise AssertionError(f"step {step} never logged")


def test_a_damaged_last_pt_resumes_from_the_newest_checkpoint_that_loads(stopped_run, tmp_path):
    from ehrjepa.models import load_checkpoint

    ckpts = stopped_run / "checkpoints"
    files = [ckpts / n for n in ("last.pt", "step_0000002.pt", "step_0000004.pt")]
    assert all(p.stat().st_nlink == 1 for p in files)  # no shared storage between them
    last, size = ckpts / "last.pt", (ckpts / "last.pt").stat().st_size
    good = last.read_bytes()
    runs = {}
    for damage in ("truncated", "zero-length", "random bytes"):
        # damage in place (the same inode), as a failing disk or a bad copy would
        with open(last, "r+b") as f:
            if damage == "random bytes":
                f.write(random.Random(0).randbytes(size))
            else:
                f.truncate(size // 2 if damage == "truncated" else 0)
        assert load_checkpoint(ckpts / "step_0000004.pt")["step"] == 4, damage
        runs[damage] = tmp_path / damage.replace(" ", "_")
        shutil.copytree(stopped_run, runs[damage])
        last.write_bytes(good)
    # the three resumes run side by side (each is mostly start-up)
    procs = {damage: subprocess.Popen([sys.executable, "-m", "ehrjepa",
                                       *map(str, train_args(None, run, resume=True))],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=ENV, cwd=REPO)
             for damage, run in runs.items()}
    for damage, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"{damage}: {out[-2000:]}{err[-2000:]}"
        lines = [line for line in out.splitlines() if " is damaged " in line]
        assert len(lines) == 1 and "last.pt is damaged (" in lines[0], f"{damage}: {out}"
        assert lines[0].endswith("resuming from step_0000004.pt"), lines[0]
        assert "6 of 6 steps" in out and "Traceback" not in err, damage
        assert load_checkpoint(runs[damage] / "checkpoints" / "last.pt")["step"] == 6, damage

    # resuming a finished run says so and exits 0
    done = ok(ehrjepa(*train_args(None, runs["truncated"], resume=True)))
    assert "already finished at step 6 of 6" in done.stdout
    assert "final loss     -" not in done.stdout and "final loss" in done.stdout


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(stopped_run, tmp_path):
    from ehrjepa.models import load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    limit = (run / "checkpoints" / "last.pt").stat().st_size // 2  # logs fit, a checkpoint does not

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = ehrjepa(*train_args(None, run, resume=True), preexec_fn=small_files)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot write checkpoint" in err[0] and "step_0000006.pt" in err[0]
    assert "last good checkpoint" in err[0] and "last.pt (step 4)" in err[0]
    assert temporaries(run) == [] and not (run / "checkpoints" / "step_0000006.pt").exists()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4


def test_an_empty_config_is_an_error_naming_the_file(data, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    done = ehrjepa("train", "--config", empty, "--data", data, "--run-dir", tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and str(empty) in done.stderr and "empty" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, named", [
    (["train.lr=1e-4", "train.min_lr=1e-3"], "train.min_lr (0.001) must be <= train.lr (0.0001)"),
    (["train.max_steps=50", "train.warmup_steps=100"],
     "train.warmup_steps (100) must be <= train.max_steps (50)"),
])
def test_schedules_that_cannot_be_meant_are_config_errors(tmp_path, overrides, named):
    sets = [x for o in overrides for x in ("--set", o)]
    done = ehrjepa("train", "--config", MICRO, "--data", tmp_path / "nodata", "--run-dir",
                   tmp_path / "run", *sets)  # refused before the data is even opened
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and named in done.stderr and str(MICRO) in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_resume_on_an_empty_folder_says_there_is_no_run(tmp_path):
    (tmp_path / "run").mkdir()
    done = ehrjepa("train", "--run-dir", tmp_path / "run", "--resume")
    assert done.returncode == 2
    assert f"no run to resume in {tmp_path / 'run'}" in done.stderr and done.stderr.count("\n") == 1


def test_train_help_shows_every_default():
    from ehrjepa.train.cli import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    for action in parser._actions:
        if action.dest != "help":
            assert "default" in (action.help or "") or "required" in (action.help or ""), action.dest
