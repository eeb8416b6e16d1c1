"""Context/target masks over the hours of a window, drawn in the DataLoader's collate function.

Samples may differ in length (whole-stay crops, `lengths` [B]): every mask is relative to each
sample's own length L, with its own counts, and only hours [0, L) are ever chosen.

Masks are index tensors plus lengths (see docs/DESIGN.md, "Batches and masks"):
`context_index` int64 [B, Lc] and `target_index` int64 [B, Lt] hold ascending hours of the window,
padded with 0 past `context_lengths[b]` / `target_lengths[b]`. Each sample keeps its own counts;
nothing is truncated to the batch minimum.

Kinds:
- `future`: hours [0, C) are context, [C, C + P) targets (the default: 24 + 5 on 29-hour windows,
  so the context covers the 24 hours `ehrjepa probe` embeds). C is `context_hours`, or
  round(`context_fraction` x L) when that is set; P is `target_hours`. Both shrink to fit a short
  sample: 1 <= C <= L - 1, P = min(target_hours, L - C).
- `multiblock`: target blocks at random starts, each `target_scale` (a sampled fraction of L)
  long, `n_targets` of them; or, with `target_block_hours` (lo, hi), each lo..hi hours long and
  ceil(n_targets x L / data.length) of them (the count scales with the sample's length). The
  context is a sampled block (`context_scale` of L) minus the targets, or all non-target hours
  when no such block leaves min(min_context, L - 1) hours.
A 1-hour sample has its hour as context and no target (the loss skips it).

Masks over variables (`hide_features` = f > 0, off by default, either kind): each sample also
hides round(f x F) of its F features (at least 1, at most F - 1, drawn per sample) from the
context encoder: `feature_mask` float [B, F], 1 where seen. Its targets then also include every
context hour in which a hidden feature was observed: from the hour's seen features the predictor
predicts the hour's whole latent, hidden measurements included. Only then may a target hour also
be a context hour (the hour is seen without the hidden features).

Seeding: the masks of a batch are drawn from numpy's generator seeded by
(seed, epoch, stay, start of the batch's first window), which identifies the batch's first window.
So the masks depend only on the seed, the epoch and the batch's content, never on which worker
collates it: the same seed gives the same masks with any number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MASK_KINDS = ("future", "multiblock")


@dataclass
class MaskConfig:
    """The `mask:` section of a run config."""

    kind: str = "future"  # future | multiblock
    # future
    context_hours: int = 24
    context_fraction: float | None = None  # set: C = round(fraction x each sample's length)
    target_hours: int = 5
    # multiblock
    n_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)  # (min, max) fraction of the window per block
    context_scale: tuple[float, float] = (0.85, 1.0)  # (min, max) fraction for the context block
    target_block_hours: tuple[int, int] | None = None  # set: block lengths in hours, counts scale
    min_context: int = 1
    pad_multiple: int = 8  # multiblock: pad index tensors to a multiple of this (fewer shapes to compile)
    # masks over variables: the fraction of features hidden from the context encoder per sample
    # (0: off); context hours where a hidden feature was observed become targets as well
    hide_features: float = 0.0

    def __post_init__(self):
        self.target_scale = tuple(float(x) for x in self.target_scale)
        self.context_scale = tuple(float(x) for x in self.context_scale)
        if self.kind not in MASK_KINDS:
            raise ValueError(f"mask.kind: unknown kind {self.kind!r}; choose one of {list(MASK_KINDS)}")
        for name in ("target_scale", "context_scale"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0.0 < lo_hi[0] <= lo_hi[1] <= 1.0:
                raise ValueError(f"mask.{name} must be (min, max) with 0 < min <= max <= 1, got {lo_hi}")
        for name in ("context_hours", "target_hours", "n_targets", "min_context", "pad_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"mask.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.hide_features < 1.0:
            raise ValueError(f"mask.hide_features must be in [0, 1), got {self.hide_features}")
        if self.context_fraction is not None and not 0.0 < self.context_fraction < 1.0:
            raise ValueError(f"mask.context_fraction must be in (0, 1), got {self.context_fraction}")
        if self.target_block_hours is not None:
            self.target_block_hours = tuple(int(x) for x in self.target_block_hours)
            lo_hi = self.target_block_hours
            if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"mask.target_block_hours must be (min, max) with 1 <= min <= max, "
                                 f"got {lo_hi}")

    def check(self, length: int) -> None:
        """Raise a ValueError naming the field when the masks cannot fit a window of `length`."""
        if self.kind == "future":
            if self.context_fraction is None and self.context_hours + self.target_hours > length:
                raise ValueError(f"mask: context_hours + target_hours = "
                                 f"{self.context_hours + self.target_hours} exceeds the window length {length}")
        elif self.target_block_hours is not None:
            if self.target_block_hours[1] > length - self.min_context:
                raise ValueError(f"mask.target_block_hours max {self.target_block_hours[1]} leaves fewer "
                                 f"than min_context={self.min_context} of {length} hours")
        else:
            longest = max(1, round(self.target_scale[1] * length))
            if longest > length - self.min_context:
                raise ValueError(f"mask.target_scale max {self.target_scale[1]} gives a {longest}-hour block, "
                                 f"which leaves fewer than min_context={self.min_context} of {length} hours")


def _to_index(keep: np.ndarray, pad_multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean [B, T] -> (ascending hours where True, padded with 0, int64 [B, L]; counts [B])."""
    B, T = keep.shape
    lengths = keep.sum(1)
    width = int(lengths.max()) if B else 0
    width = min(T, -(-width // pad_multiple) * pad_multiple)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :width]  # True hours first, in order
    order = np.where(np.arange(width)[None, :] < lengths[:, None], order, 0)
    return torch.from_numpy(order.astype(np.int64)), torch.from_numpy(lengths.astype(np.int64))


def _to_bool(index: torch.Tensor, lengths: torch.Tensor, T: int) -> np.ndarray:
    """The inverse of _to_index: (int64 [B, L] padded hours, counts [B]) -> boolean [B, T]."""
    index, lengths = index.numpy(), lengths.numpy()
    real = np.arange(index.shape[1])[None, :] < lengths[:, None]
    out = np.zeros((index.shape[0], T), bool)
    out[np.nonzero(real)[0], index[real]] = True
    return out


def _blocks(rng: np.random.Generator, B: int, K: int, T: int, lengths: np.ndarray,
            scale: tuple[float, float], max_len: np.ndarray) -> np.ndarray:
    """K random blocks per sample as a boolean [B, K, T]: lengths a sampled fraction of each
    sample's own length, clipped to [1, max_len[b]], inside hours [0, lengths[b])."""
    L = lengths[:, None]
    sizes = np.rint(rng.uniform(scale[0], scale[1], size=(B, K)) * L).astype(np.int64)
    sizes = np.clip(sizes, 1, max_len[:, None])
    starts = np.floor(rng.random(size=(B, K)) * (L - sizes + 1)).astype(np.int64)
    t = np.arange(T)
    return (t >= starts[..., None]) & (t < (starts + sizes)[..., None])


def _hour_blocks(rng: np.random.Generator, B: int, T: int, lengths: np.ndarray, hours: tuple[int, int],
                 n_targets: int, reference: int, max_len: np.ndarray) -> np.ndarray:
    """ceil(n_targets x L / reference) blocks of hours[0]..hours[1] hours per sample (clipped to
    max_len[b]), as a boolean [B, K, T] whose blocks past a sample's count are empty."""
    counts = np.maximum(1, np.ceil(n_targets * lengths / reference).astype(np.int64))
    K = int(counts.max()) if B else 1
    sizes = np.minimum(rng.integers(hours[0], hours[1] + 1, size=(B, K)), max_len[:, None])
    sizes = np.maximum(sizes, 1)
    starts = np.floor(rng.random(size=(B, K)) * (lengths[:, None] - sizes + 1)).astype(np.int64)
    t = np.arange(T)
    blocks = (t >= starts[..., None]) & (t < (starts + sizes)[..., None])
    return blocks & (np.arange(K)[None, :] < counts[:, None])[..., None]


def _future(cfg: MaskConfig, lengths: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean [B, T] context and target of the future mask, per sample."""
    if cfg.context_fraction is None:
        C = np.full_like(lengths, cfg.context_hours)
    else:
        C = np.rint(cfg.context_fraction * lengths).astype(np.int64)
    C = np.clip(C, 1, np.maximum(lengths - 1, 1))
    P = np.minimum(cfg.target_hours, lengths - C)
    t = np.arange(T)[None, :]
    return t < C[:, None], (t >= C[:, None]) & (t < (C + P)[:, None])


def sample_masks(cfg: MaskConfig, length: int, batch_size: int,
                 rng: np.random.Generator | None = None,
                 lengths=None) -> dict[str, torch.Tensor]:
    """Masks for one batch: context_index, context_lengths, target_index, target_lengths.

    `length`: the configured window length (data.length). `lengths`: each sample's own hours
    (int [batch_size], each in [1, length]); None means every sample has `length` hours."""
    cfg.check(length)
    B = batch_size
    if lengths is None:
        lengths = np.full(B, length, np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.shape != (B,) or (B and (lengths.min() < 1 or lengths.max() > length)):
        raise ValueError(f"sample_masks: lengths must be {B} values in [1, {length}], got {lengths}")
    T = int(lengths.max()) if B else length
    if cfg.kind == "future":
        context, target = _future(cfg, lengths, T)
        context_index, context_lengths = _to_index(context)
        target_index, target_lengths = _to_index(target)
        return {"context_index": context_index, "context_lengths": context_lengths,
                "target_index": target_index, "target_lengths": target_lengths}
    if rng is None:
        raise ValueError("sample_masks: multiblock masks need a numpy Generator")
    valid = np.arange(T)[None, :] < lengths[:, None]
    min_context = np.minimum(cfg.min_context, np.maximum(lengths - 1, 1))
    # Targets: the union of the first k blocks, for the largest k that leaves min_context hours
    # (k >= 1 always: each block leaves min_context hours).
    if cfg.target_block_hours is None:
        blocks = _blocks(rng, B, cfg.n_targets, T, lengths, cfg.target_scale, lengths - min_context)
    else:
        blocks = _hour_blocks(rng, B, T, lengths, cfg.target_block_hours, cfg.n_targets, length,
                              lengths - min_context)
    union = np.logical_or.accumulate(blocks, axis=1)  # [B, K, T]
    fits = (lengths[:, None] - union.sum(-1)) >= min_context[:, None]  # [B, K], True then False
    last = fits.sum(1) - 1
    target = union[np.arange(B), last]  # [B, T]
    # Context: the first of a few sampled blocks that keeps min_context hours after removing the
    # targets; else every non-target hour.
    tries = 4
    candidates = _blocks(rng, B, tries, T, lengths, cfg.context_scale, lengths) & ~target[:, None, :]
    ok = candidates.sum(-1) >= min_context[:, None]  # [B, tries]
    pick = candidates[np.arange(B), ok.argmax(1)]
    context = np.where(ok.any(1)[:, None], pick, valid & ~target)
    one = lengths == 1  # a 1-hour sample: its hour is context, no target
    target[one] = False
    context[one] = valid[one]
    context_index, context_lengths = _to_index(context, cfg.pad_multiple)
    target_index, target_lengths = _to_index(target, cfg.pad_multiple)
    return {"context_index": context_index, "context_lengths": context_lengths,
            "target_index": target_index, "target_lengths": target_lengths}


def hide_features(cfg: MaskConfig, rng: np.random.Generator, observed: np.ndarray,
                  masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks over variables (cfg.hide_features > 0): `feature_mask` float [B, F] (1 = seen by the
    context encoder) and the targets widened by the context hours in which a hidden feature was
    observed. observed: [B, T, F] (0/1); masks: sample_masks' output, whose targets it replaces."""
    B, T, F = observed.shape
    n_hidden = min(max(1, round(cfg.hide_features * F)), F - 1) if F > 1 else 0
    ranks = rng.random((B, F)).argsort(1).argsort(1)
    hidden = ranks < n_hidden  # [B, F], n_hidden True per row
    context = _to_bool(masks["context_index"], masks["context_lengths"], T)
    target = _to_bool(masks["target_index"], masks["target_lengths"], T)
    hidden_seen = ((observed > 0) & hidden[:, None, :]).any(-1)  # [B, T]
    target |= context & hidden_seen
    pad = cfg.pad_multiple if cfg.kind == "multiblock" else 1
    target_index, target_lengths = _to_index(target, pad)
    return {**masks, "target_index": target_index, "target_lengths": target_lengths,
            "feature_mask": torch.from_numpy((~hidden).astype(np.float32))}


class MaskCollator:
    """DataLoader collate_fn: stacks WindowDataset items (dicts of tensors) and adds the masks.

    Items of different lengths (StayCropDataset) are padded to the batch's longest item, not to
    `length`, and the batch gets `lengths` int64 [B], each item's hours (fixed windows: all
    `length`, the arrays stacked as they are).

    The generator is seeded by (seed, epoch, stay, start of the batch's first item). Call
    `set_epoch(e)` before each epoch's iterator is created: workers receive a copy of the collator
    when the iterator starts, so with `persistent_workers=True` a later set_epoch does not reach
    them (the masks would then repeat across epochs)."""

    def __init__(self, cfg: MaskConfig, length: int, seed: int = 0):
        cfg.check(length)
        if seed < 0:
            raise ValueError(f"MaskCollator: seed must be >= 0, got {seed}")
        self.cfg = cfg
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, first_item: dict) -> np.random.Generator:
        stay, start = int(first_item["stay"]), int(first_item["start"])
        return np.random.default_rng([self.seed, self.epoch, stay, start])

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        if not items:
            raise ValueError("MaskCollator: empty batch")
        lengths = [item["values"].shape[0] for item in items]
        longest = max(lengths)
        if longest > self.length or min(lengths) < 1:
            raise ValueError(f"MaskCollator: windows have {min(lengths)} to {longest} hours, "
                             f"the collator was built for at most length={self.length}")
        batch = {}
        for key in items[0]:
            if items[0][key].ndim >= 1 and longest != min(lengths):  # pad [L, F] to the longest
                batch[key] = torch.nn.utils.rnn.pad_sequence([item[key] for item in items],
                                                             batch_first=True)
            else:
                batch[key] = torch.stack([item[key] for item in items])
        batch["lengths"] = torch.tensor(lengths, dtype=torch.int64)
        rng = self.generator(items[0])
        masks = sample_masks(self.cfg, self.length, len(items), rng, lengths=np.asarray(lengths))
        if self.cfg.hide_features > 0:
            masks = hide_features(self.cfg, rng, batch["observed"].numpy(), masks)
        batch.update(masks)
        return batch
