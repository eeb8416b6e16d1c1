"""The challenge benchmarks' baselines agree with `ehrjepa preprocess --physionet2019` on a
small random archive (values, counts and hourly labels) and with `--physionet2012` on small
random set tarballs (means, sums, last values, counts), and the CLI's challenge formats.

    python -m pytest -q bench/test_bench_physionet.py
"""
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bench.preprocess import compare_aggregations
from bench.preprocess_physionet import RUNNERS, compare_labels
from ehrjepa.data.build import build
from ehrjepa.data.physionet2019 import COLUMNS, MEASURED, Physionet2019Source

REPO = Path(__file__).resolve().parents[1]


def random_archive(path: Path, seed: int = 0, n_stays: int = 40) -> Path:
    rng = np.random.default_rng(seed)
    with tarfile.open(path, "w:gz") as tar:
        for sid in rng.choice(10**5, n_stays, replace=False).tolist():
            n, first = int(rng.integers(1, 20)), int(rng.integers(1, 4))
            onset = int(rng.integers(0, n)) if rng.random() < 0.3 else n
            lines = ["|".join(COLUMNS)]
            for h in range(n):
                cells = {c: (f"{rng.normal(0.5, 0.3) * (1 if c == 'FiO2' else 150):.2f}"
                             if rng.random() < 0.3 else "NaN") for c in MEASURED}
                cells |= {"Age": "63.5", "Gender": "1", "Unit1": "NaN", "Unit2": "NaN",
                          "HospAdmTime": "-3.2", "ICULOS": str(first + h),
                          "SepsisLabel": str(int(h >= onset))}
                lines.append("|".join(cells[c] for c in COLUMNS))
            data = ("\n".join(lines) + "\n").encode()
            info = tarfile.TarInfo(f"training_setA/p{sid:06d}.psv")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("tool", sorted(RUNNERS["physionet2019"]))
def test_baseline_agrees(tmp_path, tool):
    pytest.importorskip(tool)
    archive = random_archive(tmp_path / "a.tar.gz")
    ours = build(Physionet2019Source([archive]), tmp_path / "ours", progress=False)
    theirs = tmp_path / tool
    theirs.mkdir()
    info = RUNNERS["physionet2019"][tool](archive, theirs, None)
    check = compare_aggregations(ours, theirs / "agg.parquet")
    assert check["agree"], check
    assert check["groups_ehrjepa"] == info["groups"] > 0
    labels = compare_labels(ours, theirs / "labels.parquet")
    assert labels["agree"], labels
    stays = pq.read_table(theirs / "stays.parquet")
    assert stays.num_rows == 40


def test_challenge_format_cli(tmp_path):
    def bench(*args):
        return subprocess.run([sys.executable, "-m", "bench", "preprocess", *args,
                               "--workdir", str(tmp_path)], capture_output=True, text=True,
                              cwd=REPO, timeout=120)

    r = bench("--format", "physionet2012", "--input", str(tmp_path / "nope"))
    assert r.returncode == 2 and "nope: not found" in r.stderr
    r = bench("--format", "physionet2019,csv")
    assert r.returncode == 2 and "runs on its own" in r.stderr
    r = bench("--format", "physionet2019", "--input", str(tmp_path / "nope.tar.gz"))
    assert r.returncode == 2 and "nope.tar.gz: not found" in r.stderr
    archive = random_archive(tmp_path / "a.tar.gz")
    r = bench("--format", "physionet2019", "--input", str(archive), "--tools", "ehrjepa,duckdb")
    assert r.returncode == 2 and "unknown tool 'duckdb' for physionet2019" in r.stderr


def test_benchmark_end_to_end(tmp_path):
    """The whole benchmark on a small archive: three timed processes, agreement, rows recorded
    in the results file it is given (never bench/results.csv)."""
    import csv
    import os

    pytest.importorskip("polars")
    pytest.importorskip("pandas")
    archive = random_archive(tmp_path / "a.tar.gz", seed=3)
    results = tmp_path / "results.csv"
    r = subprocess.run([sys.executable, "-m", "bench", "preprocess", "--format", "physionet2019",
                        "--input", str(archive), "--workdir", str(tmp_path / "work")],
                       capture_output=True, text=True, cwd=REPO, timeout=300,
                       env={**os.environ, "EHRJEPA_RESULTS": str(results)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("agree:") == 2 and "DISAGREE" not in r.stdout
    rows = list(csv.DictReader(results.open()))
    assert sorted(row["tool"] for row in rows) == ["ehrjepa", "pandas", "polars"]
    assert all(row["case"] == "physionet2019" and row["status"] == "ok" for row in rows)


@pytest.mark.parametrize("tool", sorted(RUNNERS["physionet2012"]))
def test_baseline_agrees_2012(tmp_path, tool):
    """Random 2012 stays (every parameter, 48:00, Weight descriptors and Weight lines) in two set
    tarballs: the baseline's hourly aggregation is ehrjepa's, group by group."""
    pytest.importorskip(tool)
    sys.path.insert(0, str(REPO / "tests"))
    from test_physionet2012 import descriptors, write_set

    from ehrjepa.data.catalog import load_catalog
    from ehrjepa.data.physionet2012 import Physionet2012Source

    rng = np.random.default_rng(3)
    params = list(load_catalog().params("physionet2012"))
    src = tmp_path / "src"
    for name, first in (("a", 110000), ("b", 120000)):
        stays = {}
        for rid in range(first, first + 15):
            lines = descriptors(rid, weight=float(rng.choice([-1, 70.5])))
            for m in np.sort(rng.integers(0, 48 * 60 + 1, 60)).tolist():
                lines.append((f"{m // 60:02d}:{m % 60:02d}", str(rng.choice(params)),
                              float(np.round(rng.normal(40, 50), 2))))
            stays[rid] = lines
        write_set(src, name, stays, tarball=True)
    ours = build(Physionet2012Source([src]), tmp_path / "ours", progress=False)
    theirs = tmp_path / tool
    theirs.mkdir()
    info = RUNNERS["physionet2012"][tool](src, theirs, None)
    check = compare_aggregations(ours, theirs / "agg.parquet")
    assert check["agree"], check
    assert check["groups_ehrjepa"] == info["groups"] > 0
