"""Token-budget batching (ehrjepa.data.batches) and whole-stay crops (StayCropDataset)."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ehrjepa.data.batches import (TokenBudgetBatchSampler, budget_batches, padded_fraction,
                                  share_evenly)
from ehrjepa.data.windows import StayCropDataset
from ehrjepa.masks import MaskCollator, MaskConfig


def skewed_lengths(n=3000, seed=0, cap=168):
    """Stay lengths like the synthetic ones: median about two days, a long tail, capped."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(rng.lognormal(np.log(48), 0.8, n)), 6, cap).astype(np.int64)


def test_budget_respected_every_sample_once_and_little_padding():
    lengths = skewed_lengths()
    batches = budget_batches(lengths, 2048, np.random.default_rng(0))
    assert all(len(b) * lengths[b].max() <= 2048 for b in batches)
    seen = np.sort(np.concatenate(batches))
    np.testing.assert_array_equal(seen, np.arange(len(lengths)))
    assert padded_fraction(batches, lengths) < 0.10
    sizes = {len(b) for b in batches}
    assert len(sizes) > 3  # the batch size in samples varies with the lengths


def test_without_bucketing_the_padding_would_be_large():
    # the check above can fail: batches of random samples pad far more than 10 %
    lengths = skewed_lengths()
    rng = np.random.default_rng(0)
    batches = np.array_split(rng.permutation(len(lengths)), len(lengths) // 20)
    assert padded_fraction(batches, lengths) > 0.3


def test_sampler_is_deterministic_shares_ranks_and_resumes_mid_epoch():
    lengths = skewed_lengths(600)
    one = TokenBudgetBatchSampler(lengths, 1024, seed=3)
    again = TokenBudgetBatchSampler(lengths, 1024, seed=3)
    one.set_epoch(2), again.set_epoch(2)
    assert list(one) == list(again)
    other_epoch = TokenBudgetBatchSampler(lengths, 1024, seed=3)
    other_epoch.set_epoch(3)
    assert list(other_epoch) != list(one)
    # two ranks: disjoint shares of one epoch, as many batches each
    ranks = [TokenBudgetBatchSampler(lengths, 1024, 2, r, seed=3) for r in range(2)]
    shares = [list(s) for s in ranks]
    assert len(shares[0]) == len(shares[1]) > 0
    flat = [i for share in shares for b in share for i in b]
    assert len(flat) == len(set(flat)) == len(lengths)  # disjoint, and every sample once
    # resume: skipping k batches gives the rest of the same epoch
    whole = list(one)
    one.set_position(2, 5)
    assert list(one) == whole[5:] and len(one) == len(whole) - 5



@pytest.mark.parametrize("ranks", [2, 3, 4])
def test_every_rank_gets_as_many_batches_and_no_sample_is_dropped(ranks):
    lengths = skewed_lengths(500, seed=ranks)
    for epoch in range(6):  # epochs whose batch count is not a multiple of the ranks, too
        samplers = [TokenBudgetBatchSampler(lengths, 700, ranks, r, seed=1) for r in range(ranks)]
        for s in samplers:
            s.set_epoch(epoch)
        shares = [s.epoch_batches() for s in samplers]
        assert len({len(share) for share in shares}) == 1
        flat = np.concatenate([b for share in shares for b in share])
        np.testing.assert_array_equal(np.sort(flat), np.arange(len(lengths)))
        assert all(len(b) * lengths[b].max() <= 700 for share in shares for b in share)
        assert padded_fraction([b for share in shares for b in share], lengths) < 0.10


def test_share_evenly_halves_the_largest_batches_and_drops_only_when_it_must():
    batches = [np.arange(0, 4), np.arange(4, 6), np.arange(6, 7)]
    got = share_evenly(batches, 2)
    assert [b.tolist() for b in got] == [[0, 1], [2, 3], [4, 5], [6]]
    assert [b.tolist() for b in share_evenly(batches, 3)] == [[0, 1, 2, 3], [4, 5], [6]]
    assert [b.tolist() for b in share_evenly(got, 3)] == [[0], [1], [2], [3], [4, 5], [6]]
    # three single-sample batches cannot become four: the third is dropped, as drop_last would
    singles = [np.array([0]), np.array([1]), np.array([2])]
    assert [b.tolist() for b in share_evenly(singles, 2)] == [[0], [1]]

class _Processed:
    """The attributes of open_processed's result that the datasets read."""

    def __init__(self, hours, n_features=3, seed=0):
        import pyarrow as pa

        rng = np.random.default_rng(seed)
        offsets = np.concatenate([[0], np.cumsum(hours)[:-1]])
        self.stays = pa.table({"offset": offsets, "n_hours": np.asarray(hours)})
        mean = rng.normal(size=(int(np.sum(hours)), n_features))
        mean[rng.random(mean.shape) < 0.6] = np.nan
        self.mean = mean
        self.features = [f"f{i}" for i in range(n_features)]
        self.norm_mean = np.zeros(n_features, np.float32)
        self.norm_std = np.ones(n_features, np.float32)

    def split_indices(self, split):
        return np.arange(len(self.stays))


def test_stay_crops_lengths_random_starts_and_a_padded_loader_with_workers():
    hours = [3, 10, 40, 7, 25, 2, 60]
    data = StayCropDataset(_Processed(hours), "train", length=24, min_length=3, crop="random", seed=1)
    assert len(data) == 6 and data.n_short_stays == 1  # the 2-hour stay is too short
    np.testing.assert_array_equal(data.sample_lengths, [3, 10, 24, 7, 24, 24])
    starts = []
    for epoch in range(4):
        data.set_epoch(epoch)
        item = data[2]
        assert item["values"].shape == (24, 3)
        assert 0 <= int(item["start"]) <= 40 - 24
        starts.append(int(item["start"]))
        assert int(data[1]["start"]) == 0  # a stay shorter than length is taken whole
    assert len(set(starts)) > 1
    data.set_epoch(1)
    sampler = TokenBudgetBatchSampler(data.sample_lengths, 48, seed=0)
    collate = MaskCollator(MaskConfig(kind="future", context_fraction=0.75, target_hours=24), 24, seed=0)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=2)
    got = list(loader)
    assert sum(len(b["lengths"]) for b in got) == len(data)
    for batch in got:
        L = int(batch["lengths"].max())
        assert batch["values"].shape[1] == L and batch["values"].shape[0] * L <= 48
        for b, n in enumerate(batch["lengths"].tolist()):
            assert int(batch["context_lengths"][b]) + int(batch["target_lengths"][b]) == n
            i = int(np.flatnonzero(data.stay_rows == int(batch["stay"][b]))[0])
            torch.testing.assert_close(batch["values"][b, :n], data[i]["values"])  # same crop in a worker
            assert not batch["observed"][b, n:].any()
