"""Faults a user can hit in `ehrjepa preprocess` (issue 10), each through the real CLI in a child
process: killed runs, truncated inputs, a full disk, and the quiet choices made loud.

What must hold whatever happens: OUT is the previous complete output, a new complete one, or
absent; never partial. Errors are one line naming the file.
"""
import argparse
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
PAUSE_ENV = "EHRJEPA_TEST_PAUSE"  # ehrjepa.data.staging.PAUSE_ENV
OUT_FILES = ("count.npy", "features.json", "manifest.json", "mean.npy", "stays.parquet")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from ehrjepa.synth import write_synthetic

    d = tmp_path_factory.mktemp("synth") / "mimic"
    write_synthetic(d, 30, seed=0, fmt="csv.gz", progress=False)
    return d


@pytest.fixture
def mimic(synth_dir, tmp_path):
    d = tmp_path / "mimic"
    shutil.copytree(synth_dir, d)
    return d


def _cmd(mimic, out, *extra):
    return [sys.executable, "-m", "ehrjepa", "preprocess", "--mimic-dir", str(mimic), "--out",
            str(out), "--no-progress", *extra]


def run_cli(mimic, out, *extra, cwd=None, preexec_fn=None):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop(PAUSE_ENV, None)
    return subprocess.run(_cmd(mimic, out, *extra), capture_output=True, text=True, cwd=cwd,
                          env=env, preexec_fn=preexec_fn, timeout=300)


def snapshot(out: Path) -> dict:
    """sha256 of every file in OUT (the complete-output check)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def leftovers(out: Path) -> list:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def one_line_error(done, *names):
    err = done.stderr.strip()
    assert done.returncode != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("ehrjepa preprocess: "), err
    for name in names:
        assert str(name) in err, err
    return err


@pytest.mark.parametrize("point,previous", [("scan", False), ("scan", True), ("write", True),
                                            ("swap", True)])
def test_killed_run_leaves_previous_output_or_none(mimic, tmp_path, point, previous):
    out = tmp_path / "out"
    before = None
    if previous:
        assert run_cli(mimic, out).returncode == 0
        before = snapshot(out)
    env = dict(os.environ, PYTHONPATH=str(REPO), **{PAUSE_ENV: point})
    child = subprocess.Popen(_cmd(mimic, out), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             text=True, env=env)
    try:
        for line in iter(child.stderr.readline, ""):  # "" at the end of the child's stderr
            if f"paused at {point}" in line:
                break
        else:
            pytest.fail(f"the run never reached {point}")
    finally:
        child.kill()  # SIGKILL: nothing of the child's own cleanup runs
        child.wait()
        child.stderr.close()
    if previous:
        assert out.is_dir() and snapshot(out) == before or not out.exists()
    else:
        assert not out.exists()
    done = run_cli(mimic, out)
    assert done.returncode == 0, done.stderr
    assert sorted(snapshot(out)) == list(OUT_FILES) and leftovers(out) == []
    if previous:  # the same output again (the manifest holds timings)
        assert {k: v for k, v in snapshot(out).items() if k != "manifest.json"} == \
            {k: v for k, v in before.items() if k != "manifest.json"}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_truncated_csv_gz_is_one_line_naming_the_file(mimic, tmp_path):
    target = mimic / "icu" / "chartevents.csv.gz"
    _truncate(target)
    out = tmp_path / "out"
    err = one_line_error(run_cli(mimic, out), target)
    assert "truncated" in err
    assert not out.exists() and leftovers(out) == []


def test_truncated_parquet_is_one_line_naming_the_file(mimic, tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    src = mimic / "icu" / "chartevents.csv.gz"
    target = src.with_name("chartevents.parquet")
    pq.write_table(pacsv.read_csv(src), target)
    src.unlink()
    _truncate(target)
    out = tmp_path / "out"
    err = one_line_error(run_cli(mimic, out), target)
    assert "parquet" in err
    assert not out.exists() and leftovers(out) == []


def test_full_disk_is_an_error_and_keeps_the_previous_output(mimic, tmp_path):
    out = tmp_path / "out"
    assert run_cli(mimic, out).returncode == 0
    before = snapshot(out)
    limit = 16 << 10  # smaller than mean.npy: writing it fails like a full disk (EFBIG)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process

    err = one_line_error(run_cli(mimic, out, preexec_fn=small_files), out)
    assert "cannot write" in err
    assert snapshot(out) == before and leftovers(out) == []


def test_header_only_chartevents_warns(mimic, tmp_path):
    import gzip

    target = mimic / "icu" / "chartevents.csv.gz"
    with gzip.open(target, "rt") as f:
        header = f.readline()
    with gzip.open(target, "wt") as f:
        f.write(header)
    done = run_cli(mimic, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "warning" in done.stderr and str(target) in done.stderr and "no data rows" in done.stderr


def test_two_formats_of_one_table_is_an_error_naming_both(mimic, tmp_path):
    import gzip

    gz = mimic / "icu" / "chartevents.csv.gz"
    plain = gz.with_name("chartevents.csv")
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    out = tmp_path / "out"
    one_line_error(run_cli(mimic, out), gz, plain)
    assert not out.exists()


def test_manifest_paths_are_absolute(mimic, tmp_path):
    import json

    done = run_cli("mimic", "out", cwd=tmp_path)  # relative to the caller's directory
    assert done.returncode == 0, done.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    paths = [t["path"] for t in m["tables"].values()] + [m["config"]]
    assert all(os.path.isabs(p) and os.path.exists(p) for p in paths), paths


def test_features_option_config_alias_and_defaults_in_help(mimic, tmp_path):
    catalog = REPO / "configs" / "features.yaml"
    done = run_cli(mimic, tmp_path / "a", "--features", str(catalog))
    assert done.returncode == 0 and "deprecated" not in done.stderr, done.stderr
    done = run_cli(mimic, tmp_path / "b", "--config", str(catalog))
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "deprecated" in line] == [
        "ehrjepa preprocess: warning: --config is deprecated here, use --features"]
    assert snapshot(tmp_path / "a")["mean.npy"] == snapshot(tmp_path / "b")["mean.npy"]
    from ehrjepa.data.preprocess import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    for action in parser._actions:  # every option of `--help` says its default
        if action.required or action.dest == "help":
            continue
        assert "(default: " in action.help, action.option_strings
