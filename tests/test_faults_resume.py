"""Faults of `ehrjepa train --resume` and Ctrl-C (issue 21), each through the real CLI in a
subprocess: data with other features or another split seed, an edited or missing
RUN/config.yaml, a model the checkpoint does not fit, a damaged checkpoint's message, Ctrl-C."""
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "configs" / "micro.yaml"
TINY = ["data.batch_size=16", "data.val_batches=1", "train.warmup_steps=2", "train.log_every=1",
        "train.cpu_threads=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def ehrjepa(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "ehrjepa", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=REPO, timeout=timeout)


def train_args(data, run, *overrides, resume=False):
    args = ["train", "--run-dir", run, "--no-progress"]
    args += ["--resume"] if resume else ["--config", MICRO, "--data", data]
    for o in ([] if resume else TINY) + list(overrides):
        args += ["--set", o]
    return args


def ok(done):
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def one_line_error(done, rc=2):
    assert done.returncode == rc, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    ok(ehrjepa("synth", "--out", root / "mimic", "--patients", 40, "--no-progress"))
    ok(ehrjepa("preprocess", "--mimic-dir", root / "mimic", "--out", root / "processed",
               "--no-progress"))
    return root / "processed"


@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory):
    """A run of 8 steps stopped after 2 (train.stop_after=2 is saved: each resume runs 2 more)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    ok(ehrjepa(*train_args(data, run, "train.max_steps=8", "train.stop_after=2",
                           "train.ckpt_every=2", "train.val_every=2")))
    return run


def edited_copy(data: Path, out: Path, edit) -> Path:
    """A copy of processed `data` whose features.json `edit(meta)` changed."""
    shutil.copytree(data, out)
    meta = json.loads((out / "features.json").read_text())
    edit(meta)
    (out / "features.json").write_text(json.dumps(meta))
    return out


def test_checkpoints_keep_the_features_and_split_seed_and_resume_refuses_other_features(
        data, stopped_run, tmp_path):
    from ehrjepa.data import open_processed
    from ehrjepa.models import load_checkpoint

    processed = open_processed(data)
    ckpt = load_checkpoint(stopped_run / "checkpoints" / "last.pt")
    assert ckpt["features"] == list(processed.features) and ckpt["split_seed"] == processed.split_seed

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    names = list(processed.features)

    def swap(meta):  # two features swapped: the same count, other columns
        meta["features"][1], meta["features"][2] = meta["features"][2], meta["features"][1]

    swapped = edited_copy(data, tmp_path / "swapped", swap)
    line = one_line_error(ehrjepa(*train_args(None, run, resume=True), "--data", swapped))
    assert f"feature 1 is '{names[1]}' in the checkpoint but '{names[2]}' in {swapped}" in line, line
    assert "last.pt" in line

    def rename_last(meta):
        meta["features"][-1] = "lactate_venous"

    renamed = edited_copy(data, tmp_path / "renamed", rename_last)
    line = one_line_error(ehrjepa(*train_args(None, run, resume=True), "--data", renamed))
    assert f"feature {len(names) - 1} is '{names[-1]}' in the checkpoint but 'lactate_venous'" in line
    assert f"the checkpoint's '{names[-1]}' is missing from {renamed}" in line, line
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2  # nothing changed

    def other_seed(meta):
        meta["split"]["seed"] = processed.split_seed + 7

    reseeded = edited_copy(data, tmp_path / "reseeded", other_seed)
    done = ok(ehrjepa(*train_args(None, run, resume=True), "--data", reseeded))
    warned = [x for x in done.stdout.splitlines() if "split with seed" in x]
    assert len(warned) == 1 and f"seed {processed.split_seed + 7}" in warned[0], done.stdout
    assert "pretraining stays" in warned[0] and "4 of 8 steps" in done.stdout


def test_an_old_checkpoint_without_features_is_checked_by_count(data, stopped_run, tmp_path):
    from ehrjepa.models.checkpoint import check_data

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    for path in (run / "checkpoints").glob("*.pt"):  # as written before the names were kept
        ckpt = torch.load(path, weights_only=True)
        del ckpt["features"], ckpt["split_seed"]
        torch.save(ckpt, path)

    def swap(meta):
        meta["features"][0], meta["features"][1] = meta["features"][1], meta["features"][0]

    swapped = edited_copy(data, tmp_path / "swapped", swap)  # same count: not detectable, runs
    ok(ehrjepa(*train_args(None, run, resume=True), "--data", swapped))
    with pytest.raises(ValueError, match=r"trained on 3 features, but the data in D has 2"):
        check_data({"n_features": 3}, ["a", "b"], 0, "D")
    assert check_data({"n_features": 2}, ["a", "b"], 5, "D") == []


def test_an_edited_or_missing_config_is_said_on_resume(stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    saved = yaml.safe_load((run / "config.yaml").read_text())

    # a model the checkpoint does not fit: refused in one line naming the key, nothing changed
    bigger = json.loads(json.dumps(saved))
    bigger["model"]["size"] = "small"
    (run / "config.yaml").write_text(yaml.safe_dump(bigger))
    line = one_line_error(ehrjepa(*train_args(None, run, resume=True)))
    assert "does not fit this config" in line and "model.size" in line, line

    edited = json.loads(json.dumps(saved))
    edited["train"]["lr"] = saved["train"]["lr"] / 2
    (run / "config.yaml").write_text(yaml.safe_dump(edited))
    done = ok(ehrjepa(*train_args(None, run, "train.seed=5", resume=True)))
    changed = [x for x in done.stdout.splitlines() if x.startswith("config: ")]
    assert len(changed) == 2, done.stdout
    assert f"config: train.lr {saved['train']['lr']:g} -> {saved['train']['lr'] / 2:g}" in changed[0]
    assert "config: train.seed 0 -> 5" in changed[1]
    assert "4 of 8 steps" in done.stdout

    (run / "config.yaml").unlink()
    done = ok(ehrjepa(*train_args(None, run, resume=True)))
    assert f"{run / 'config.yaml'} is missing; using the config saved in" in done.stdout, done.stdout
    assert "last.pt" in done.stdout and "6 of 8 steps" in done.stdout
    assert not [x for x in done.stdout.splitlines() if x.startswith("config: ")], done.stdout
    assert (run / "config.yaml").is_file()  # written again, from the checkpoint's config
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 5


def test_a_damaged_checkpoint_does_not_advise_an_unsafe_load(stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    ckpts = sorted((run / "checkpoints").glob("*.pt"))
    ckpts[0].write_bytes(random.Random(1).randbytes(4096))  # random bytes
    ckpts[1].write_bytes(b"\x80\x02" + b"garbage" * 200)  # a pickle stream that is no checkpoint
    import datetime

    for path in ckpts[2:]:  # a file of unknown origin: pickled objects beyond plain data
        torch.save({"model": {}, "when": datetime.datetime(2020, 1, 1)}, path)
    line = one_line_error(ehrjepa(*train_args(None, run, resume=True)))
    assert "no checkpoint in" in line and all(p.name in line for p in ckpts), line
    assert "weights_only" not in line and "safe_globals" not in line and "trust" not in line, line


def test_ctrl_c_in_train_is_one_line_with_the_resume_command(data, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ehrjepa",
                             *map(str, train_args(data, run, "train.max_steps=1000",
                                                  "train.ckpt_every=2", "train.val_every=1000"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            cwd=REPO)
    try:
        for line in proc.stdout:  # the loop has started ...
            if line.startswith("run: "):
                break
        deadline = time.monotonic() + 90
        while not (run / "checkpoints" / "last.pt").is_file():  # ... and saved a checkpoint
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    command = f"ehrjepa train --run-dir {run} --resume"
    assert lines[0].startswith("ehrjepa train: interrupted at step ") and lines[0].endswith(command)
    assert "the newest checkpoint is" in lines[0]

    # the command it gives continues the run (two more steps, then it stops as asked)
    argv = shlex.split(command)[1:] + ["--set", "train.stop_after=2", "--no-progress"]
    done = ok(ehrjepa(*argv))
    assert "resumed from" in done.stdout and "config: train.stop_after 0 -> 2" in done.stdout
