"""data.extra: pretraining samples from other processed folders (issue 23, item 5).

Features aligned by name and normalised with the primary folder's statistics, the counts of
windows and whole-stay crops, the samplers over the combined samples, the errors, and a short
`ehrjepa train --extra-data` run that resumes. The folders are written by hand with
test_windows' writer (in the format of docs/DESIGN.md), their features renamed.
"""
import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ehrjepa.cli import main as ehrjepa
from ehrjepa.config import ConfigError, load_config
from ehrjepa.data import open_processed
from ehrjepa.data.extra import AlignedProcessed, TrainSamples
from ehrjepa.data.windows import StayCropDataset, WindowDataset
from ehrjepa.train import loop
from ehrjepa.train.loop import ResumableSampler, make_budget_sampler, make_collator
from test_windows import write_processed

from pathlib import Path

MICRO = Path(__file__).resolve().parents[1] / "configs" / "micro.yaml"
NAN = np.nan


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def folder(out, names, stay_hours, splits, norm_mean, norm_std, mean=None, seed=0):
    """A processed folder with features `names`; random hourly values (about half observed)
    unless `mean` is given."""
    if mean is None:
        rng = np.random.default_rng(seed)
        shape = (int(sum(stay_hours)), len(names))
        mean = np.where(rng.random(shape) < 0.5, rng.normal(50, 10, shape), NAN)
    write_processed(out, stay_hours, mean, splits, norm_mean, norm_std)
    meta = json.loads((out / "features.json").read_text())
    meta["features"] = list(names)
    (out / "features.json").write_text(json.dumps(meta))
    return out


@pytest.fixture()
def pair(tmp_path):
    """A primary folder (a, b, c) and an extra one (c, x, a): x is not the primary's, b is not
    the extra's; the extra's own normalisation differs from the primary's."""
    primary = folder(tmp_path / "primary", ["a", "b", "c"], [6, 8, 4, 6],
                     ["train", "train", "val", "test"], [1.0, 10.0, 100.0], [2.0, 4.0, 8.0])
    mean = np.array([
        # stay 0 (train, 5 h): columns c, x, a
        [NAN, 7.0, 3.0], [104.0, NAN, NAN], [NAN, NAN, NAN], [NAN, 9.0, 5.0], [116.0, NAN, NAN],
        # stay 1 (val, 2 h)
        [92.0, NAN, -1.0], [NAN, NAN, NAN],
        # stay 2 (train, 7 h)
        [NAN, NAN, NAN], [NAN, NAN, 7.0], [NAN, NAN, NAN], [NAN, 1.0, NAN], [NAN, NAN, NAN],
        [108.0, NAN, NAN], [NAN, NAN, NAN],
    ], np.float32)
    extra = folder(tmp_path / "extra", ["c", "x", "a"], [5, 2, 7], ["train", "val", "train"],
                   [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], mean=mean)
    return primary, extra


def config(primary, *overrides, length=4):
    """micro with `length`-hour windows (a future mask of length - 1 context hours + 1 target)."""
    base = [f"data.path={primary}", f"data.length={length}", "data.stride=1", "data.batch_size=4",
            f"mask.context_hours={length - 1}", "mask.target_hours=1", "train.select=loss"]
    return load_config(MICRO, base + list(overrides))


def test_features_are_aligned_by_name_and_normalised_with_the_primarys_statistics(pair):
    primary, extra = pair
    view = AlignedProcessed(open_processed(extra), open_processed(primary))
    assert view.features == ["a", "b", "c"] and view.n_features == 3
    assert view.shared == ["a", "c"] and view.missing == ["b"] and view.dropped == ["x"]
    raw = open_processed(extra).mean
    np.testing.assert_array_equal(view.mean[:, 0], raw[:, 2])  # a
    assert np.isnan(view.mean[:, 1]).all()  # b: never observed in the extra folder
    np.testing.assert_array_equal(view.mean[:, 2], raw[:, 0])  # c
    np.testing.assert_array_equal(view.norm_mean, [1.0, 10.0, 100.0])
    np.testing.assert_array_equal(view.split_indices("train"), [0, 2])

    ds = WindowDataset(view, None, length=3, stride=1, max_delta=10.0)
    item = ds[int(np.flatnonzero((ds.window_index == [0, 2]).all(1))[0])]  # stay 0, hours 2-4
    v, o, dl = item["values"].numpy(), item["observed"].numpy(), item["delta"].numpy()
    # a: 3.0 at hour 0, 5.0 at hour 3; c: 104 at hour 1, 116 at hour 4; b never
    np.testing.assert_allclose(v[:, 0], [(3 - 1) / 2, (5 - 1) / 2, (5 - 1) / 2], rtol=1e-6)
    np.testing.assert_allclose(v[:, 2], [(104 - 100) / 8, (104 - 100) / 8, (116 - 100) / 8], rtol=1e-6)
    np.testing.assert_array_equal(o, [[0, 0, 0], [1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(v[:, 1], 0.0)
    np.testing.assert_array_equal(dl[:, 1], 10.0)  # max_delta: before any observation
    np.testing.assert_array_equal(dl[:, 0], [2, 0, 1])


def test_the_same_features_keep_the_memory_map(tmp_path, pair):
    primary, _ = pair
    same = folder(tmp_path / "same", ["a", "b", "c"], [5, 5], ["train", "val"], [0, 0, 0], [1, 1, 1])
    view = AlignedProcessed(open_processed(same), open_processed(primary))
    assert isinstance(view.mean, np.memmap) and view.missing == [] and view.dropped == []


def test_open_data_joins_the_extra_samples_to_the_train_split_only(pair):
    primary, extra = pair
    plain, val_plain, _ = loop.open_data(config(primary))
    train_set, val_set, n_features = loop.open_data(config(primary, f"data.extra=[{extra}]"))
    # windows of 4 hours: primary train stays of 6 and 8 hours give 3 + 5; the extra's train
    # stays (5 and 7 hours) 2 + 4
    assert len(plain) == 8 and len(train_set) == 8 + 6 and train_set.n_primary == 8
    assert n_features == 3 and len(val_set) == len(val_plain) == 1  # validation: the primary's
    assert train_set.data_identity == (["a", "b", "c"], 0)
    (line,) = train_set.extra_lines
    assert line == (f"extra data {extra}: 2 of 2 train stays used, 6 samples, 0 stays too short; "
                    "shared features 2 of 3; lacks 1: b; 1 of its own unused")
    for i in range(len(plain)):  # the primary's samples first, as they were
        assert torch.equal(train_set[i]["values"], plain[i]["values"])
    item = train_set[8]  # the extra's first: its stay 0, shifted past the primary's 4 stays
    assert int(item["stay"]) == 4 + 0 and int(item["start"]) == 0
    np.testing.assert_allclose(item["values"][0].numpy(), [(3 - 1) / 2, 0, 0])

    everything, _, _ = loop.open_data(config(primary, f"data.extra=[{extra}]",
                                             "data.extra_split=all"))
    (line,) = everything.extra_lines  # the 2-hour val stay is too short for 4-hour windows
    assert "2 of 3 stays (all splits) used, 6 samples, 1 stays too short" in line

    crops, _, _ = loop.open_data(config(primary, f"data.extra=[{extra}]", "data.extra_split=all",
                                        "data.min_length=2", "data.tokens_per_batch=8"))
    # whole stays: one crop each, of min(n_hours, 4) hours; now the 2-hour stay counts
    assert isinstance(crops.parts[1], StayCropDataset) and len(crops) == 2 + 3
    np.testing.assert_array_equal(crops.sample_lengths, [4, 4, 4, 2, 4])
    assert [crops[i]["values"].shape[0] for i in range(len(crops))] == [4, 4, 4, 2, 4]
    assert "3 of 3 stays (all splits) used, 3 samples, 0 stays too short" in crops.extra_lines[0]


def test_samplers_loader_and_pickling_over_the_combined_samples(pair):
    primary, extra = pair
    cfg = config(primary, f"data.extra=[{extra}]", "data.extra_split=all", "data.min_length=2",
                 "data.crop=random")
    train_set, _, _ = loop.open_data(cfg)
    assert isinstance(train_set, TrainSamples) and len(train_set) == 5
    budget = make_budget_sampler(train_set, 8, 1, 0, seed=0)
    batches = budget.epoch_batches(0)
    assert sorted(int(i) for b in batches for i in b) == list(range(5))  # each sample once
    assert all(len(b) * train_set.sample_lengths[b].max() <= 8 for b in batches)
    sampler = ResumableSampler(train_set, 1, 0, seed=0)
    sampler.set_position(1, 2)
    assert len(list(sampler)) == 3
    train_set.set_epoch(3)
    assert all(p.epoch == 3 for p in train_set.parts)
    copy = pickle.loads(pickle.dumps(train_set))  # the primary's memory map travels as its path
    assert copy.parts[0]._mean is None and copy.parts[1]._mean is not None
    for i in range(len(train_set)):
        a, b = train_set[i], copy[i]
        assert all(torch.equal(a[k], b[k]) for k in a)
    loader = DataLoader(train_set, batch_sampler=budget, collate_fn=make_collator(cfg, 0),
                        num_workers=1)
    seen = [int(s) for batch in loader for s in batch["stay"]]
    assert sorted(seen) == [0, 1, 4, 5, 6]  # primary train stays 0 and 1; the extra's 0-2 as 4-6


def test_errors_name_the_extra_folder(tmp_path, pair):
    primary, extra = pair

    def error(*overrides, length=4):
        with pytest.raises(ValueError) as e:
            loop.open_data(config(primary, *overrides, length=length))
        return str(e.value)

    missing = tmp_path / "nowhere"
    assert error(f"data.extra=[{missing}]") == f"data.extra: {missing} does not exist (or is not a folder)"
    (tmp_path / "empty").mkdir()
    assert error(f"data.extra=[{tmp_path / 'empty'}]").startswith(
        f"data.extra: {tmp_path / 'empty'}: {tmp_path / 'empty' / 'stays.parquet'} not found")
    other = folder(tmp_path / "other", ["y", "z"], [6, 6], ["train", "train"], [0, 0], [1, 1])
    assert error(f"data.extra=[{other}]") == (
        f"data.extra: {other} shares no feature with {primary} (its features: y, z)")
    assert error(f"data.extra=[{extra}]", length=8) == (
        f"data.extra: {extra} gives no training sample: none of its 2 stays has 8 hours "
        "(data.length; whole-stay crops, data.min_length < data.length, take shorter stays)")
    assert error(f"data.extra=[{extra}]", "data.min_length=8", length=10) == (
        f"data.extra: {extra} gives no training sample: none of its 2 stays has 8 hours "
        "(data.min_length)")
    no_train = folder(tmp_path / "no_train", ["a"], [6, 6], ["val", "test"], [0], [1])
    assert error(f"data.extra=[{no_train}]") == (
        f"data.extra: {no_train} gives no training sample: it has no train stays "
        "(data.extra_split=all takes all 2 of its stays)")
    assert error(f"data.extra=[{primary}]") == f"data.extra: {primary} is data.path itself"
    assert error(f"data.extra=[{extra}, {extra}]") == f"data.extra: {extra} is listed twice"


def test_config_checks_the_extra_options(pair):
    primary, extra = pair
    cfg = config(primary)
    assert cfg.data.extra == [] and cfg.data.extra_split == "train"
    cfg = config(primary, f"data.extra=[{extra}, /some/other dir]", "data.extra_split=all")
    assert cfg.data.extra == [str(extra), "/some/other dir"] and cfg.data.extra_split == "all"
    with pytest.raises(ConfigError, match=r"data.extra_split: unknown 'val'; choose train or all"):
        config(primary, "data.extra_split=val")
    with pytest.raises(ConfigError, match=r"data.extra\[1\]: expected str, got 3"):
        config(primary, "data.extra=[a, 3]")
    with pytest.raises(ConfigError, match=r"data.extra: expected a list"):
        config(primary, f"data.extra={extra}")


def test_train_with_extra_data_then_resume(tmp_path, capsys):
    """A few micro steps through the CLI with --extra-data; --resume keeps the extra folder
    (RUN/config.yaml), and a change of data.extra is said."""
    hours = list(np.random.default_rng(1).integers(10, 30, 40))
    splits = ["val" if i % 5 == 0 else "train" for i in range(40)]
    primary = folder(tmp_path / "primary", ["heart_rate", "lactate", "sodium"], hours, splits,
                     [50, 50, 50], [10, 10, 10], seed=1)
    extra = folder(tmp_path / "extra", ["sodium", "heart_rate", "spo2"], [8, 12, 20] * 10,
                   ["train", "train", "val"] * 10, [0, 0, 0], [1, 1, 1], seed=2)
    run = tmp_path / "run"
    sets = ["data.length=12", "data.min_length=6", "data.batch_size=8", "data.val_batches=1",
            "mask.context_hours=8", "mask.target_hours=4", "train.select=loss",
            "train.max_steps=6", "train.stop_after=2", "train.warmup_steps=1", "train.log_every=1",
            "train.val_every=2", "train.ckpt_every=2"]
    args = ["train", "--config", str(MICRO), "--data", str(primary), "--extra-data", str(extra),
            "--run-dir", str(run), "--no-progress"] + [a for s in sets for a in ("--set", s)]
    assert ehrjepa(args) == 0
    out = capsys.readouterr().out
    assert (f"extra data {extra}: 20 of 20 train stays used, 20 samples, 0 stays too short; "
            "shared features 2 of 3; lacks 1: lactate; 1 of its own unused" in out)
    assert f"data: 52 train crops of whole stays, 32 from {primary} and 20 from data.extra (" in out
    assert "done: 2 of 6 steps" in out

    assert ehrjepa(["train", "--run-dir", str(run), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"extra data {extra}: 20 of 20 train stays used" in out and "config:" not in out
    assert "done: 4 of 6 steps" in out

    assert ehrjepa(["train", "--run-dir", str(run), "--resume", "--no-progress",
                    "--set", "data.extra_split=all"]) == 0
    out = capsys.readouterr().out
    assert "config: data.extra_split 'train' -> 'all' (changed since last.pt)" in out
    assert f"extra data {extra}: 30 of 30 stays (all splits) used, 30 samples" in out
    assert "done: 6 of 6 steps" in out
