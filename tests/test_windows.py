"""WindowDataset: numba windows against a plain numpy reference, fill/observed/delta rules, counts,
and DataLoader workers.

The processed directory is written by hand here in the on-disk format of docs/DESIGN.md, and read
with a small stand-in for `open_processed` (the real one is used when it is importable)."""
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.utils.data import DataLoader

from ehrjepa.data.windows import WindowDataset, fill_window

NAN = np.nan


class StandInProcessed:
    """What open_processed(OUT) returns, enough for WindowDataset."""

    def __init__(self, out):
        self.path = out
        self.stays = pq.read_table(out / "stays.parquet")
        self.mean = np.load(out / "mean.npy", mmap_mode="r")
        self.count = np.load(out / "count.npy", mmap_mode="r")
        meta = json.loads((out / "features.json").read_text())
        self.features = meta["features"]
        self.norm_mean = np.asarray(meta["norm"]["mean"], np.float32)
        self.norm_std = np.asarray(meta["norm"]["std"], np.float32)
        self.manifest = json.loads((out / "manifest.json").read_text())

    def split_indices(self, split):
        return np.flatnonzero(self.stays.column("split").to_numpy(zero_copy_only=False) == split)


def write_processed(out, stay_hours, mean, splits, norm_mean, norm_std):
    """Write OUT/{stays.parquet, mean.npy, count.npy, features.json, manifest.json}."""
    out.mkdir(parents=True, exist_ok=True)
    n = len(stay_hours)
    n_hours = np.asarray(stay_hours, np.int32)
    offset = np.concatenate([[0], np.cumsum(n_hours)[:-1]]).astype(np.int64)
    intime = np.arange(n, dtype=np.int64) * 86400 * 30 + 4_000_000_000
    stays = pa.table({
        "stay_id": pa.array(30000000 + np.arange(n), pa.int64()),
        "subject_id": pa.array(10000000 + np.arange(n), pa.int64()),
        "hadm_id": pa.array(20000000 + np.arange(n), pa.int64()),
        "intime": pa.array(intime, pa.timestamp("s")),
        "outtime": pa.array(intime + n_hours.astype(np.int64) * 3600, pa.timestamp("s")),
        "n_hours": pa.array(n_hours, pa.int32()),
        "offset": pa.array(offset, pa.int64()),
        "split": pa.array(splits, pa.string()),
        "death_hosp": pa.array(np.zeros(n, np.int8), pa.int8()),
        "los_days": pa.array(n_hours / 24.0, pa.float64()),
    })
    pq.write_table(stays, out / "stays.parquet")
    mean = np.asarray(mean, np.float32)
    np.save(out / "mean.npy", mean)
    np.save(out / "count.npy", (~np.isnan(mean)).astype(np.uint16))
    F = mean.shape[1]
    (out / "features.json").write_text(json.dumps({
        "features": [f"f{j}" for j in range(F)],
        "norm": {"mean": list(map(float, norm_mean)), "std": list(map(float, norm_std))},
        "split": {"seed": 0, "fractions": [0.8, 0.1, 0.1]}}))
    (out / "manifest.json").write_text(json.dumps({
        "tables": {}, "warnings": [], "n_stays": n, "total_hours": int(n_hours.sum())}))
    return out


def open_dir(out):
    try:
        from ehrjepa.data.processed import open_processed
    except ImportError:
        return StandInProcessed(out)
    return open_processed(out)


def reference_window(mean, offset, start, length, norm_mean, norm_std, max_delta):
    """Plain numpy: forward fill from the stay's hour 0 up to the window end."""
    F = mean.shape[1]
    last = np.full(F, np.nan)
    last_hour = np.full(F, -1)
    values, observed, delta = (np.zeros((length, F), np.float32) for _ in range(3))
    for hour in range(start + length):
        x = mean[offset + hour].astype(np.float64)
        seen = ~np.isnan(x)
        last = np.where(seen, x, last)
        last_hour = np.where(seen, hour, last_hour)
        if hour < start:
            continue
        t = hour - start
        observed[t] = seen
        delta[t] = np.where(last_hour < 0, max_delta, np.minimum(hour - last_hour, max_delta))
        values[t] = np.where(last_hour < 0, 0.0, (last - norm_mean) / norm_std)
    return values, observed, delta


@pytest.fixture()
def tiny(tmp_path):
    """Three stays (5, 2, 7 hours), two features; hand-made values."""
    mean = np.array([
        # stay 0: 5 hours
        [NAN, 10.0], [1.0, NAN], [NAN, NAN], [NAN, NAN], [3.0, 14.0],
        # stay 1: 2 hours
        [2.0, NAN], [NAN, NAN],
        # stay 2: 7 hours
        [NAN, NAN], [NAN, NAN], [5.0, NAN], [NAN, NAN], [NAN, NAN], [NAN, NAN], [NAN, 20.0],
    ], np.float32)
    out = write_processed(tmp_path / "proc", [5, 2, 7], mean, ["train", "train", "val"],
                          norm_mean=[1.0, 10.0], norm_std=[2.0, 4.0])
    return open_dir(out)


def test_window_counts_and_short_stays(tiny):
    ds = WindowDataset(tiny, "train", length=3, stride=1)
    # stay 0 (5 h): starts 0, 1, 2; stay 1 (2 h) is short
    assert ds.window_index.tolist() == [[0, 0], [0, 1], [0, 2]]
    assert ds.n_short_stays == 1 and len(ds) == 3 and ds.n_features == 2
    ds = WindowDataset(tiny, None, length=2, stride=2)
    # starts: stay 0 -> 0, 2; stay 1 -> 0; stay 2 (7 h) -> 0, 2, 4
    assert ds.window_index.tolist() == [[0, 0], [0, 2], [1, 0], [2, 0], [2, 2], [2, 4]]
    assert ds.n_short_stays == 0
    ds = WindowDataset(tiny, "val", length=8, stride=1)
    assert len(ds) == 0 and ds.n_short_stays == 1


def test_for_hours(tiny):
    ds = WindowDataset.for_hours(tiny, None, hours=5)
    assert ds.window_index.tolist() == [[0, 0], [2, 0]]
    assert ds.n_short_stays == 1
    item = ds[1]
    assert item["values"].shape == (5, 2) and int(item["stay"]) == 2 and int(item["start"]) == 0


def test_fill_observed_delta_by_hand(tiny):
    ds = WindowDataset(tiny, None, length=3, stride=1, max_delta=2.0)
    # stay 0, window [2, 5): feature 0 last seen at hour 1 (value 1.0), feature 1 at hour 0 (10.0)
    item = ds[int(np.flatnonzero((ds.window_index == [0, 2]).all(1))[0])]
    assert item["values"].dtype == torch.float32 and item["stay"].dtype == torch.int64
    np.testing.assert_allclose(item["observed"].numpy(), [[0, 0], [0, 0], [1, 1]])
    # carried in across the window start: (1 - 1) / 2 = 0 and (10 - 10) / 4 = 0; then observed
    np.testing.assert_allclose(item["values"].numpy(), [[0, 0], [0, 0], [1.0, 1.0]])
    # feature 0: 1, 2 hours since hour 1; feature 1: 2, 3 -> capped at 2
    np.testing.assert_allclose(item["delta"].numpy(), [[1, 2], [2, 2], [0, 0]])
    assert int(item["start"]) == 2 and int(item["stay"]) == 0


def test_before_first_observation(tiny):
    ds = WindowDataset(tiny, "val", length=7, stride=1, max_delta=48.0)
    item = ds[0]
    v, m, d = item["values"].numpy(), item["observed"].numpy(), item["delta"].numpy()
    # feature 0 first seen at hour 2: value 0 and delta max_delta before it, then 0, 1, 2, ...
    np.testing.assert_allclose(d[:, 0], [48, 48, 0, 1, 2, 3, 4])
    np.testing.assert_allclose(v[:, 0], [0, 0, 2, 2, 2, 2, 2])  # (5 - 1) / 2
    np.testing.assert_allclose(m[:, 1], [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(d[:, 1], [48] * 6 + [0])
    np.testing.assert_allclose(v[:, 1], [0] * 6 + [2.5])  # (20 - 10) / 4


def test_does_not_read_other_stays(tiny):
    # stay 1 starts right after stay 0, whose last hour is fully observed: nothing carries over
    ds = WindowDataset(tiny, None, length=2, stride=1)
    item = ds[int(np.flatnonzero((ds.window_index == [1, 0]).all(1))[0])]
    np.testing.assert_allclose(item["observed"].numpy(), [[1, 0], [0, 0]])
    np.testing.assert_allclose(item["delta"].numpy()[:, 1], [48, 48])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 5), st.floats(0.0, 1.0), st.integers(0, 2**31 - 1),
       st.floats(0.5, 30.0))
def test_numba_matches_numpy_reference(n_hours, n_features, observed, seed, max_delta):
    rng = np.random.default_rng(seed)
    pad = 3  # rows of other stays before and after, fully observed
    mean = rng.normal(50, 10, (pad + n_hours + pad, n_features)).astype(np.float32)
    stay = mean[pad:pad + n_hours]
    stay[rng.random(stay.shape) >= observed] = np.nan
    norm_mean = rng.normal(50, 5, n_features).astype(np.float32)
    norm_std = rng.uniform(0.5, 20, n_features).astype(np.float32)
    length = int(rng.integers(1, n_hours + 1))
    start = int(rng.integers(0, n_hours - length + 1))
    got = [np.full((length, n_features), -7.0, np.float32) for _ in range(3)]
    fill_window(mean, pad, start, length, norm_mean, norm_std, max_delta, *got)
    want = reference_window(mean, pad, start, length, norm_mean, norm_std, max_delta)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_dataset_matches_reference_on_random_stays(tmp_path):
    rng = np.random.default_rng(3)
    hours = rng.integers(0, 30, 12)
    mean = rng.normal(0, 1, (hours.sum(), 4)).astype(np.float32)
    mean[rng.random(mean.shape) < 0.7] = np.nan
    proc = open_dir(write_processed(tmp_path / "p", hours, mean, ["train"] * 12, [0.1] * 4,
                                    [2.0] * 4))
    ds = WindowDataset(proc, "train", length=6, stride=4, max_delta=10.0)
    assert ds.n_short_stays == int((hours < 6).sum())
    assert len(ds) == sum((h - 6) // 4 + 1 for h in hours if h >= 6)
    offset = np.concatenate([[0], np.cumsum(hours)[:-1]])
    norm_mean, norm_std = np.full(4, 0.1, np.float32), np.full(4, 2.0, np.float32)
    for i in range(len(ds)):
        item = ds[i]
        stay, start = ds.window_index[i]
        want = reference_window(mean, offset[stay], start, 6, norm_mean, norm_std, 10.0)
        for key, w in zip(("values", "observed", "delta"), want):
            np.testing.assert_allclose(item[key].numpy(), w, rtol=1e-5, atol=1e-6)


def test_pickles_without_the_array_and_loads_in_workers(tmp_path):
    rng = np.random.default_rng(5)
    hours = rng.integers(10, 40, 20)
    mean = rng.normal(0, 1, (hours.sum(), 3)).astype(np.float32)
    mean[rng.random(mean.shape) < 0.5] = np.nan
    proc = open_dir(write_processed(tmp_path / "p", hours, mean, ["train"] * 20, [0] * 3,
                                    [1] * 3))
    ds = WindowDataset(proc, "train", length=8, stride=3)
    assert len(pickle.dumps(ds)) < mean.nbytes  # the memmap is reopened, not copied
    copy = pickle.loads(pickle.dumps(ds))  # as a spawned worker gets it
    for i in (0, len(ds) // 2, len(ds) - 1):
        for key, value in ds[i].items():
            assert torch.equal(copy[i][key], value), key
    batches0 = list(DataLoader(ds, batch_size=16, num_workers=0))
    batches2 = list(DataLoader(ds, batch_size=16, num_workers=2))
    assert len(batches0) == len(batches2) > 1
    for a, b in zip(batches0, batches2):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_bad_arguments(tiny):
    with pytest.raises(ValueError, match="length"):
        WindowDataset(tiny, "train", length=0, stride=1)
    with pytest.raises(ValueError, match="max_delta"):
        WindowDataset(tiny, "train", length=2, stride=1, max_delta=0)


def _random_stays(tmp_path, seed=4):
    rng = np.random.default_rng(seed)
    hours = rng.integers(20, 40, 6)
    mean = rng.normal(0, 1, (hours.sum(), 3)).astype(np.float32)
    mean[rng.random(mean.shape) < 0.5] = np.nan
    proc = open_dir(write_processed(tmp_path / "p", hours, mean, ["train"] * 6, [0.0] * 3, [1.0] * 3))
    return proc, mean, np.concatenate([[0], np.cumsum(hours)[:-1]])


@pytest.mark.parametrize("aug", [dict(drop=0.5), dict(jitter=3), dict(noise=0.5),
                                 dict(drop=0.3, jitter=2, noise=0.1)])
def test_augment_rederives_observed_and_delta_and_is_seeded(tmp_path, aug):
    from ehrjepa.data.augment import AugmentConfig, augment_hours

    proc, mean, offset = _random_stays(tmp_path)
    cfg = AugmentConfig(**aug)
    ds = WindowDataset(proc, "train", length=12, stride=5, augment=cfg, seed=9)
    plain = WindowDataset(proc, "train", length=12, stride=5)
    changed = 0
    for i in range(0, len(ds), 3):
        stay, start = ds.window_index[i]
        item, base = ds[i], plain[i]
        # the item is the plain fill of the augmented raw hours: observed/delta/values re-derived
        rng = np.random.default_rng([9, 0, int(stay), int(start)])
        end = min(int(proc.stays.column("n_hours")[int(stay)].as_py()), start + 12 + cfg.jitter)
        raw = augment_hours(mean[offset[stay]:offset[stay] + end], cfg, np.ones(3, np.float32), rng)
        want = reference_window(raw, 0, start, 12, np.zeros(3), np.ones(3), 48.0)
        for key, w in zip(("values", "observed", "delta"), want):
            np.testing.assert_allclose(item[key].numpy(), w, rtol=1e-5, atol=1e-5)
        if cfg.drop and not cfg.jitter:
            assert (item["observed"] <= base["observed"]).all()  # dropping only removes
        changed += not torch.equal(item["values"], base["values"])
        torch.testing.assert_close(ds[i]["values"], item["values"])  # same seed, same epoch
    assert changed
    epoch0 = [ds[i]["values"] for i in range(len(ds))]
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i]["values"], epoch0[i]) for i in range(len(ds)))  # a new draw


def test_augment_off_is_the_plain_window(tmp_path):
    from ehrjepa.data.augment import AugmentConfig

    proc, _, _ = _random_stays(tmp_path)
    ds = WindowDataset(proc, "train", length=12, stride=5, augment=AugmentConfig(), seed=9)
    plain = WindowDataset(proc, "train", length=12, stride=5)
    assert ds.augment is None
    for key in ("values", "observed", "delta"):
        assert torch.equal(ds[3][key], plain[3][key])
    with pytest.raises(ValueError, match="drop"):
        AugmentConfig(drop=1.0)
