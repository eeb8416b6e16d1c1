"""Mask invariants, the collate function and seeding across DataLoader workers."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ehrjepa.masks import MaskCollator, MaskConfig, sample_masks


def check_invariants(m: dict, length: int, batch_size: int, pad_multiple: int | None = None):
    ci, cl, ti, tl = m["context_index"], m["context_lengths"], m["target_index"], m["target_lengths"]
    for t in (ci, cl, ti, tl):
        assert t.dtype == torch.int64
    assert ci.shape[0] == ti.shape[0] == cl.shape[0] == tl.shape[0] == batch_size
    assert int(cl.max()) <= ci.shape[1] <= length and int(tl.max()) <= ti.shape[1] <= length
    if pad_multiple is not None:
        for idx in (ci, ti):
            assert idx.shape[1] % pad_multiple == 0 or idx.shape[1] == length
    for b in range(batch_size):
        nc, nt = int(cl[b]), int(tl[b])
        assert nc >= 1 and nt >= 1
        c, t = ci[b, :nc], ti[b, :nt]
        for hours in (c, t):
            assert int(hours.min()) >= 0 and int(hours.max()) < length  # within the window
            assert bool((hours[1:] > hours[:-1]).all())  # strictly ascending
        assert not set(c.tolist()) & set(t.tolist())  # disjoint
        assert bool((ci[b, nc:] == 0).all()) and bool((ti[b, nt:] == 0).all())  # padding is 0


def test_future_masks():
    cfg = MaskConfig(kind="future", context_hours=15, target_hours=5)
    m = sample_masks(cfg, 20, 3)
    check_invariants(m, 20, 3)
    assert m["context_index"].tolist() == [list(range(15))] * 3
    assert m["target_index"].tolist() == [list(range(15, 20))] * 3
    assert m["context_lengths"].tolist() == [15] * 3 and m["target_lengths"].tolist() == [5] * 3


@pytest.mark.parametrize("length", [5, 20, 64, 256])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiblock_invariants(length, seed):
    cfg = MaskConfig(kind="multiblock", n_targets=4, target_scale=(0.1, 0.4),
                     context_scale=(0.5, 1.0), min_context=2)
    m = sample_masks(cfg, length, 32, np.random.default_rng(seed))
    check_invariants(m, length, 32, cfg.pad_multiple)
    assert int(m["context_lengths"].min()) >= 2


def test_multiblock_large_targets_keep_min_context():
    # Four blocks of up to 80 % of the window would cover it: blocks are dropped to keep context.
    cfg = MaskConfig(kind="multiblock", n_targets=4, target_scale=(0.5, 0.8), min_context=3)
    m = sample_masks(cfg, 20, 64, np.random.default_rng(0))
    check_invariants(m, 20, 64)
    assert int(m["context_lengths"].min()) >= 3


def test_multiblock_lengths_differ_per_sample():
    cfg = MaskConfig(kind="multiblock")
    m = sample_masks(cfg, 64, 16, np.random.default_rng(0))
    assert len(set(m["context_lengths"].tolist())) > 1
    assert len(set(m["target_lengths"].tolist())) > 1
    # Not truncated to the batch minimum: the index width fits the longest sample.
    assert m["context_index"].shape[1] >= int(m["context_lengths"].max())


def test_multiblock_full_context_block_is_the_rest():
    cfg = MaskConfig(kind="multiblock", context_scale=(1.0, 1.0))
    m = sample_masks(cfg, 30, 8, np.random.default_rng(0))
    assert (m["context_lengths"] + m["target_lengths"]).tolist() == [30] * 8


def test_config_errors():
    with pytest.raises(ValueError, match="mask.kind"):
        MaskConfig(kind="random")
    with pytest.raises(ValueError, match="target_scale"):
        MaskConfig(target_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="exceeds the window length 10"):
        MaskCollator(MaskConfig(context_hours=8, target_hours=5), length=10)
    with pytest.raises(ValueError, match="min_context"):
        MaskCollator(MaskConfig(kind="multiblock", target_scale=(0.5, 1.0)), length=10)
    assert MaskConfig(target_scale=[0.1, 0.2]).target_scale == (0.1, 0.2)  # YAML lists


class FakeWindows(Dataset):
    """Stand-in for WindowDataset: dicts of tensors with stay and start."""

    def __init__(self, n=40, length=24, n_features=3):
        g = torch.Generator().manual_seed(0)
        self.values = torch.randn(n, length, n_features, generator=g)
        self.length = length

    def __len__(self):
        return len(self.values)

    def __getitem__(self, i):
        v = self.values[i]
        return {"values": v, "observed": (v > 0).float(), "delta": v.abs(),
                "stay": torch.tensor(i // 4), "start": torch.tensor(i % 4)}


def _masks(num_workers, epoch=0, seed=7):
    ds = FakeWindows()
    collator = MaskCollator(MaskConfig(kind="multiblock"), length=ds.length, seed=seed)
    collator.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=8, shuffle=False, num_workers=num_workers, collate_fn=collator)
    return [b for b in loader]


def test_collate_stacks_items_and_adds_masks():
    batches = _masks(0)
    b = batches[0]
    assert b["values"].shape == (8, 24, 3) and b["stay"].shape == (8,)
    assert torch.equal(b["values"], FakeWindows().values[:8])
    check_invariants(b, 24, 8)


def test_same_seed_same_masks_any_number_of_workers():
    keys = ["context_index", "context_lengths", "target_index", "target_lengths"]
    single = _masks(0)
    multi = _masks(2)
    assert len(single) == len(multi) == 5
    for a, b in zip(single, multi):
        for k in keys:
            assert torch.equal(a[k], b[k]), k
    # Batches differ from each other, and the epoch and the seed change the masks.
    assert not torch.equal(single[0]["target_index"], single[1]["target_index"])
    other_epoch, other_seed = _masks(0, epoch=1), _masks(0, seed=8)
    assert any(not torch.equal(a["target_index"], b["target_index"]) for a, b in zip(single, other_epoch))
    assert any(not torch.equal(a["target_index"], b["target_index"]) for a, b in zip(single, other_seed))


def check_ragged(m: dict, lengths: np.ndarray, cfg: MaskConfig):
    """Each sample's masks lie inside its own hours, are disjoint, and have its own counts."""
    ci, cl, ti, tl = m["context_index"], m["context_lengths"], m["target_index"], m["target_lengths"]
    for b, L in enumerate(lengths.tolist()):
        nc, nt = int(cl[b]), int(tl[b])
        c, t = set(ci[b, :nc].tolist()), set(ti[b, :nt].tolist())
        assert len(c) == nc >= 1 and len(t) == nt and (nt >= 1 or L == 1), (L, nc, nt)
        assert max(c | t) < L and min(c | t) >= 0 and not c & t, (L, c, t)
        if cfg.kind == "future":
            C = cfg.context_hours if cfg.context_fraction is None else round(cfg.context_fraction * L)
            C = min(max(C, 1), max(L - 1, 1))
            assert c == set(range(C)) and t == set(range(C, C + min(cfg.target_hours, L - C)))
        elif L > 1:
            assert L - nt >= min(cfg.min_context, L - 1)  # targets leave room for the context
    return cl, tl


@pytest.mark.parametrize("cfg", [
    MaskConfig(kind="future", context_hours=24, target_hours=5),
    MaskConfig(kind="future", context_fraction=0.75, target_hours=168),
    MaskConfig(kind="multiblock"),
    MaskConfig(kind="multiblock", target_block_hours=(4, 12), n_targets=4, min_context=8),
])
def test_masks_on_random_lengths(cfg):
    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(1, 169, size=16)
        lengths[0] = 1
        check_ragged(sample_masks(cfg, 168, 16, np.random.default_rng(1), lengths=lengths), lengths, cfg)


def test_counts_are_per_sample_and_scale_with_length():
    lengths = np.array([168, 24, 168, 24] * 8)
    cfg = MaskConfig(kind="multiblock", target_block_hours=(6, 6), n_targets=4, min_context=4)
    m = sample_masks(cfg, 168, len(lengths), np.random.default_rng(0), lengths=lengths)
    tl = m["target_lengths"].numpy()
    # four 6-hour blocks in 168 hours; one in 24 (ceil(4 x 24 / 168)): never cut to the shortest
    assert tl[lengths == 24].max() <= 6 and tl[lengths == 168].mean() > 12
    future = sample_masks(MaskConfig(kind="future", context_fraction=0.5, target_hours=100), 168,
                          4, lengths=np.array([168, 24, 10, 2]))
    assert future["context_lengths"].tolist() == [84, 12, 5, 1]
    assert future["target_lengths"].tolist() == [84, 12, 5, 1]
    assert future["context_index"].shape[1] == 84  # padded to the batch's longest, not beyond


def test_uniform_lengths_give_the_fixed_window_masks():
    cfg = MaskConfig(kind="multiblock")
    fixed = sample_masks(cfg, 29, 8, np.random.default_rng(5))
    same = sample_masks(cfg, 29, 8, np.random.default_rng(5), lengths=np.full(8, 29))
    for k in fixed:
        assert torch.equal(fixed[k], same[k]), k


# ---- masks over variables (mask.hide_features) -----------------------------------------------


def _items(B=6, T=24, F=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(B):
        observed = (torch.rand(T, F, generator=g) < 0.3).float()
        items.append({"values": torch.randn(T, F, generator=g), "observed": observed,
                      "delta": torch.zeros(T, F), "stay": torch.tensor(i), "start": torch.tensor(0)})
    return items


def _hours(index, lengths, b):
    return set(index[b, :int(lengths[b])].tolist())


@pytest.mark.parametrize("kind", ["future", "multiblock"])
def test_hide_features_hides_a_fraction_and_targets_the_hidden_measurements(kind):
    base = dict(kind=kind, context_hours=18, target_hours=6, target_block_hours=(3, 5), min_context=4)
    items = _items()
    plain = MaskCollator(MaskConfig(**base), 24, seed=3)(items)
    hidden = MaskCollator(MaskConfig(**base, hide_features=0.5), 24, seed=3)(items)
    assert "feature_mask" not in plain  # off by default: the batch is as before
    fm = hidden["feature_mask"]
    assert fm.shape == (6, 10) and fm.dtype == torch.float32
    assert (fm.sum(1) == 5).all()  # round(0.5 x 10) hidden per sample ...
    assert len({tuple(r.tolist()) for r in fm}) > 1  # ... drawn per sample
    # the hour masks are the ones without hide_features; the targets grow by exactly the context
    # hours in which a hidden feature was observed
    assert torch.equal(plain["context_index"], hidden["context_index"])
    for b in range(6):
        context = _hours(plain["context_index"], plain["context_lengths"], b)
        seen_hidden = {t for t in range(24)
                       if bool((items[b]["observed"][t] * (1 - fm[b])).sum() > 0)}
        want = _hours(plain["target_index"], plain["target_lengths"], b) | (context & seen_hidden)
        assert _hours(hidden["target_index"], hidden["target_lengths"], b) == want
        t = hidden["target_index"][b, :int(hidden["target_lengths"][b])]
        assert bool((t[1:] > t[:-1]).all())  # ascending, as every index
    again = MaskCollator(MaskConfig(**base, hide_features=0.5), 24, seed=3)(items)
    assert torch.equal(again["feature_mask"], fm)  # seeded like the hour masks
    assert torch.equal(again["target_index"], hidden["target_index"])


def test_hide_features_keeps_one_feature_and_is_checked():
    fm = MaskCollator(MaskConfig(hide_features=0.99, context_hours=18), 24, seed=0)(_items(F=3))["feature_mask"]
    assert (fm.sum(1) == 1).all()  # at most F - 1 hidden
    fm = MaskCollator(MaskConfig(hide_features=0.01, context_hours=18), 24, seed=0)(_items(F=3))["feature_mask"]
    assert (fm.sum(1) == 2).all()  # at least one hidden
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="hide_features"):
            MaskConfig(hide_features=bad)
