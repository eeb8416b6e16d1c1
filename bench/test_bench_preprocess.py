"""pytest-benchmark cases for preprocessing at a small size (not part of `pytest tests`).

    python -m pytest bench/test_bench_preprocess.py --benchmark-group-by=param:fmt
    BENCH_ROWS=5000000 python -m pytest bench/test_bench_preprocess.py   # a larger size

Each tool runs in this process on the same generated input (kept in BENCH_WORKDIR, default
/tmp/ehrjepa-bench, and reused), after one warm-up round (numba compiles, file cache). For wall
time of a whole process and peak RSS, use `python -m bench preprocess`. test_preprocess_meds
times the MEDS runners (`--formats meds`) on the cohort written as MEDS.
"""
import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from bench.preprocess import FORMATS, TOOLS, make_input, run_child
from bench.preprocess_meds import RUNNERS as MEDS_RUNNERS, make_meds_input

ROWS = int(float(os.environ.get("BENCH_ROWS", "200000")))
WORKDIR = Path(os.environ.get("BENCH_WORKDIR", "/tmp/ehrjepa-bench"))


def _available(tool: str) -> bool:
    module = "ehrjepa.data.preprocess" if tool == "ehrjepa" else tool
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="session", params=FORMATS)
def fmt(request):
    return request.param


@pytest.mark.parametrize("tool", TOOLS)
def test_preprocess(benchmark, tool, fmt, tmp_path, capsys):
    if not _available(tool):
        pytest.skip(f"{tool} is not installed / not in this checkout")
    mimic_dir, info = make_input(WORKDIR, ROWS, fmt, log=lambda *a: None)
    out = tmp_path / tool
    benchmark.extra_info.update(rows=info["rows"].get("chartevents"), input_bytes=info["chartevents_bytes"])

    def clean():
        shutil.rmtree(out, ignore_errors=True)
        return (tool, mimic_dir, out, None), {}

    benchmark.pedantic(run_child, setup=clean, rounds=3, iterations=1, warmup_rounds=1)
    assert out.exists()


@pytest.mark.parametrize("tool", list(MEDS_RUNNERS))
def test_preprocess_meds(benchmark, tool, tmp_path, capsys):
    if not _available(tool):
        pytest.skip(f"{tool} is not installed / not in this checkout")
    meds_dir, info = make_meds_input(WORKDIR, ROWS, log=lambda *a: None)
    out = tmp_path / tool
    benchmark.extra_info.update(rows=info["rows"]["events"], input_bytes=info["input_bytes"])

    def clean():
        shutil.rmtree(out, ignore_errors=True)
        return (tool, meds_dir, out, None, "meds"), {}

    benchmark.pedantic(run_child, setup=clean, rounds=3, iterations=1, warmup_rounds=1)
    assert out.exists()
