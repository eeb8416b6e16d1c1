"""Tests of `ehrjepa embed`: the rows and columns, the probe's embedding, and that a row at hour h
never reads an hour at or after h."""
from __future__ import annotations

import argparse
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrjepa.data import WindowDataset, open_processed
from ehrjepa.embed import configure, hours_grid, main, run_embed
from ehrjepa.models import load_model
from ehrjepa.probe.embeddings import embed_stays

from test_probe import FEATURES, make_run, write_processed


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("embed")
    write_processed(root / "data", n_stays=80, seed=3)
    make_run(root / "run", len(FEATURES))
    return root


def embedding_matrix(table) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)


def test_one_row_per_stay_is_the_probes_embedding(setup, tmp_path):
    info = run_embed(setup / "run", setup / "data", tmp_path / "e.parquet", hours=24, progress=False)
    table = pq.read_table(tmp_path / "e.parquet")
    processed = open_processed(setup / "data")
    n_hours = processed.stays.column("n_hours").to_numpy()
    assert table.num_rows == info["rows"] == int((n_hours >= 24).sum()) > 0
    assert table.column_names == ["subject_id", "stay_id", "split", "hour", "embedding"]
    kind = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 64 and kind.value_type == pa.float32()
    assert set(table.column("hour").to_pylist()) == {24}
    rows = np.flatnonzero(n_hours >= 24)
    assert table.column("stay_id").to_pylist() == processed.stays.column("stay_id").to_numpy()[rows].tolist()
    assert table.column("split").to_pylist() == processed.stays.column("split").to_numpy()[rows].tolist()
    model, _, _ = load_model(setup / "run" / "checkpoints" / "best.pt")
    expected, stays = embed_stays(model, WindowDataset.for_hours(processed, None, 24), progress=False)
    assert np.array_equal(stays, rows)
    np.testing.assert_allclose(embedding_matrix(table), expected, rtol=1e-5, atol=1e-5)
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_row_uses_only_the_hours_before_it(setup, tmp_path):
    run_embed(setup / "run", setup / "data", tmp_path / "a.parquet", hours=24, every=6, progress=False)
    # the same data with every hour from 12 on changed
    changed = tmp_path / "changed"
    shutil.copytree(setup / "data", changed)
    processed = open_processed(changed)
    mean = np.load(changed / "mean.npy")
    offset, n_hours = processed.offset, processed.n_hours
    for off, n in zip(offset, n_hours):
        mean[off + 12:off + n] = mean[off + 12:off + n] * 3 + 1
    np.save(changed / "mean.npy", mean)
    run_embed(setup / "run", changed, tmp_path / "b.parquet", hours=24, every=6, progress=False)
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    hour = np.asarray(a.column("hour").to_pylist())
    assert a.num_rows == int(sum(min(n, 24) // 6 for n in n_hours))  # rows up to each stay's own length
    assert sorted(set(hour)) == [6, 12, 18, 24]
    assert a.column("stay_id").to_pylist() == b.column("stay_id").to_pylist()
    ea, eb = embedding_matrix(a), embedding_matrix(b)
    early, late = hour <= 12, hour > 12
    np.testing.assert_allclose(ea[early], eb[early], rtol=1e-5, atol=1e-5)  # hours [0, 12) are unchanged
    assert np.abs(ea[late] - eb[late]).max(axis=1).min() > 1e-4  # every later row saw the change


def test_hours_grid_and_cli_errors(setup, tmp_path, capsys):
    assert hours_grid(24, None) == [24] and hours_grid(24, 6) == [6, 12, 18, 24] and hours_grid(10, 4) == [4, 8]
    parser = argparse.ArgumentParser(prog="ehrjepa embed")
    configure(parser)
    base = ["--run", str(setup / "run"), "--data", str(setup / "data"), "--no-progress", "--device", "cpu"]
    assert main(parser.parse_args(base + ["--out", str(tmp_path / "x.parquet"), "--hours", "12"])) == 0
    assert "rows" in capsys.readouterr().out and pq.read_table(tmp_path / "x.parquet").num_rows > 0
    for bad, rc, message in ((["--every", "0"], 2, "--every must be >= 1"),
                             (["--hours", "60"], 1, "longer than the model's max_hours 48"),
                             (["--out", str(tmp_path / "no" / "x.parquet")], 1, "does not exist")):
        args = parser.parse_args(base + ["--out", str(tmp_path / "y.parquet")] + bad)
        assert main(args) == rc
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "y.parquet").exists()


def documented_reading() -> str:
    """The reading snippet of `ehrjepa.embed`'s docstring (docs/usage.md shows the same)."""
    import textwrap

    import ehrjepa.embed

    doc = ehrjepa.embed.__doc__
    start = doc.index("    import pyarrow.parquet as pq")
    block = doc[start:].split("\n\n")[0]
    return textwrap.dedent(block)


def test_the_documented_reading_works_on_a_file_of_0_rows(setup, tmp_path, monkeypatch):
    from ehrjepa.embed import write_embeddings

    processed = open_processed(setup / "data")
    monkeypatch.chdir(tmp_path)
    assert write_embeddings(tmp_path / "emb.parquet", processed, iter([]), 64) == 0  # a valid file of 0 rows
    found = {}
    exec(documented_reading(), found)
    assert found["x"].shape == (0, 64) and found["x"].dtype == np.float32
    run_embed(setup / "run", setup / "data", tmp_path / "emb.parquet", hours=24, progress=False)
    exec(documented_reading(), found)
    table = pq.read_table(tmp_path / "emb.parquet")
    assert found["x"].shape == (table.num_rows, 64) and table.num_rows > 0
    np.testing.assert_array_equal(found["x"], embedding_matrix(table))
