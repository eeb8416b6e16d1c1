"""Output folders a user can lose (issue 21, items 1 and 2), each through the real CLI in a child
process: `preprocess --out` that is, holds or lies inside an input, or is a folder of the user's,
refuses before touching anything; two runs into one OUT or one run folder at the same time: the
second refuses at once, naming the first's PID, and a killed run (kill -9) leaves no stuck lock.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAUSE_ENV = "EHRJEPA_TEST_PAUSE"  # ehrjepa.data.staging.PAUSE_ENV
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
ENV.pop(PAUSE_ENV, None)
MICRO = REPO / "configs" / "micro.yaml"
TINY = ["data.batch_size=16", "data.val_batches=1", "train.warmup_steps=2", "train.log_every=1",
        "train.cpu_threads=1", "train.max_steps=2", "train.val_every=2"]


def ehrjepa(*args, cwd=None, env=ENV):
    return subprocess.run([sys.executable, "-m", "ehrjepa", *map(str, args)], capture_output=True,
                          text=True, env=env, cwd=cwd or REPO, timeout=300)


def tree(root: Path) -> dict:
    """Every file under root, by relative path: sha256 (what a refused run must leave as it was)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(done, command, *texts):
    err = done.stderr.strip()
    assert done.returncode != 0, done.stdout[-1000:]
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"ehrjepa {command}: "), err
    for text in texts:
        assert str(text) in err, err
    return err


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    from ehrjepa.synth import write_synthetic

    root = tmp_path_factory.mktemp("sources")
    write_synthetic(root / "mimic", 30, seed=0, fmt="csv.gz", progress=False)
    write_synthetic(root / "meds", 30, seed=0, fmt="meds", progress=False)
    return root


@pytest.fixture
def user(sources, tmp_path):
    """A user's folder: the MIMIC tables and a MEDS dataset, each with a file of the user's."""
    import shutil

    for name in ("mimic", "meds"):
        shutil.copytree(sources / name, tmp_path / "user" / name)
    (tmp_path / "user" / "notes.txt").write_text("the user's own file\n")
    return tmp_path / "user"


def preprocess(user, source, out, cwd=None):
    flag = "--meds" if source == "meds" else "--mimic-dir"
    return ehrjepa("preprocess", flag, user / source if cwd is None else source, "--out", out,
                   "--no-progress", cwd=cwd)


# ---- item 1: an OUT whose replacement would lose the user's data is refused -------------------


@pytest.mark.parametrize("source,out,says", [
    ("mimic", "mimic", "is the input"),
    ("mimic", ".", "holds the input"),  # OUT a parent of the input
    ("mimic", "mimic/processed", "lies inside the input"),
    ("mimic", "mimic/icu", "lies inside the input"),
    ("mimic", "link", "is the input"),  # a symlink to the input
    ("mimic", "mimic/hosp/patients.csv.gz", "lies inside the input"),
    ("meds", "meds/data", "lies inside the input"),
    ("meds", "meds", "is the input"),
])
def test_an_out_that_is_holds_or_lies_inside_the_input_is_refused(user, source, out, says):
    (user / "link").symlink_to(user / source, target_is_directory=True)
    before = tree(user)
    err = one_line_error(preprocess(user, source, user / out), "preprocess", says, "--out")
    assert tree(user) == before, err  # nothing touched: no file lost, none added


@pytest.mark.parametrize("source", ["mimic", "meds"])
def test_a_non_empty_folder_that_is_not_processed_is_refused(user, tmp_path, source):
    theirs = tmp_path / "results"
    (theirs / "figures").mkdir(parents=True)
    (theirs / "figures" / "auroc.png").write_bytes(b"\x89PNG")
    (theirs / "manifest.json").write_text('{"not": "ours"}')
    before = tree(theirs)
    err = one_line_error(preprocess(user, source, theirs), "preprocess", theirs,
                         "not a processed folder")
    assert tree(theirs) == before, err


def test_out_dot_in_a_users_folder_is_refused(user, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "analysis.py").write_text("print('mine')\n")
    before = tree(work)
    err = one_line_error(preprocess(user, str(user / "mimic"), ".", cwd=work), "preprocess",
                         work, "not a processed folder")
    assert tree(work) == before and tree(user / "mimic"), err


def test_an_out_that_is_a_file_is_refused_before_the_work(user):
    target = user / "notes.txt"
    before = tree(user)
    done = preprocess(user, "mimic", target)
    one_line_error(done, "preprocess", target, "not a folder")
    assert tree(user) == before


def test_an_empty_folder_and_a_processed_one_are_written(user, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert preprocess(user, "mimic", out).returncode == 0
    done = preprocess(user, "meds", out)  # a processed folder of ours is replaced
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "manifest.json").read_text())["source"] == "meds"


# ---- item 2: one run at a time per OUT and per run folder -------------------------------------


def start_paused(args, point):
    """`ehrjepa ARGS` held at pause_point(point); returns the child once it is there."""
    child = subprocess.Popen([sys.executable, "-m", "ehrjepa", *map(str, args)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env={**ENV, PAUSE_ENV: point}, cwd=REPO)
    for line in iter(child.stderr.readline, ""):
        if f"paused at {point}" in line:
            return child
    child.wait()
    pytest.fail(f"the run never reached {point} (rc {child.returncode})")


def kill_9(child):
    child.kill()  # SIGKILL: the child's own cleanup does not run
    child.wait()
    child.stderr.close()


def test_two_preprocess_into_one_out_the_second_refuses_and_a_killed_first_frees_it(user,
                                                                                    tmp_path):
    out = tmp_path / "out"
    assert preprocess(user, "mimic", out).returncode == 0
    before = tree(out)
    first = start_paused(["preprocess", "--mimic-dir", user / "mimic", "--out", out,
                          "--no-progress"], "scan")
    try:
        for source in ("mimic", "meds"):
            one_line_error(preprocess(user, source, out), "preprocess",
                           f"{out} is in use by process {first.pid}")
    finally:
        kill_9(first)
    assert tree(out) == before
    done = preprocess(user, "mimic", out)  # not stuck after kill -9
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == []


@pytest.fixture(scope="module")
def data(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "processed"
    done = ehrjepa("preprocess", "--mimic-dir", sources / "mimic", "--out", out, "--no-progress")
    assert done.returncode == 0, done.stderr
    return out


def train(run, data=None, *extra):
    args = ["train", "--run-dir", run, "--no-progress"]
    args += ["--resume"] if data is None else ["--config", MICRO, "--data", data]
    for o in TINY if data is not None else []:
        args += ["--set", o]
    return [*args, *extra]


def test_two_trains_into_one_run_folder_the_second_refuses(data, tmp_path):
    run = tmp_path / "run"
    first = start_paused(train(run, data), "run_locked")
    try:
        one_line_error(ehrjepa(*train(run, data)), "train",
                       f"{run} is in use by process {first.pid}", "--run-dir")
        link = tmp_path / "link"
        link.symlink_to(run, target_is_directory=True)  # the same folder by another name
        one_line_error(ehrjepa(*train(link, data)), "train", f"is in use by process {first.pid}")
    finally:
        kill_9(first)
    done = ehrjepa(*train(run, data))  # not stuck after kill -9
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    # two --resume: the same
    first = start_paused(train(run), "run_locked")
    try:
        one_line_error(ehrjepa(*train(run)), "train", f"{run} is in use by process {first.pid}")
    finally:
        kill_9(first)
    done = ehrjepa(*train(run))
    assert done.returncode == 0 and "already finished at step 2" in done.stdout, done.stderr
    assert not (tmp_path / ".run.lock").exists()
