"""Context/target masks over the hours of a window, drawn in the DataLoader's collate function.

Masks are index tensors plus lengths (see docs/DESIGN.md, "Batches and masks"):
`context_index` int64 [B, Lc] and `target_index` int64 [B, Lt] hold ascending hours of the window,
padded with 0 past `context_lengths[b]` / `target_lengths[b]`. Each sample keeps its own counts;
nothing is truncated to the batch minimum.

Kinds:
- `future`: hours [0, C) are context, [C, C + P) targets (the default: 24 + 5 on 29-hour windows,
  so the context covers the 24 hours `ehrjepa probe` embeds).
- `multiblock`: `n_targets` target blocks, each `target_scale` (a fraction of the window, sampled)
  long at a random start; the context is a sampled block (`context_scale`) minus the targets, or
  all non-target hours when no such block leaves `min_context` hours.

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
    target_hours: int = 5
    # multiblock
    n_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)  # (min, max) fraction of the window per block
    context_scale: tuple[float, float] = (0.85, 1.0)  # (min, max) fraction for the context block
    min_context: int = 1
    pad_multiple: int = 8  # multiblock: pad index tensors to a multiple of this (fewer shapes to compile)

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

    def check(self, length: int) -> None:
        """Raise a ValueError naming the field when the masks cannot fit a window of `length`."""
        if self.kind == "future":
            if self.context_hours + self.target_hours > length:
                raise ValueError(f"mask: context_hours + target_hours = "
                                 f"{self.context_hours + self.target_hours} exceeds the window length {length}")
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


def _blocks(rng: np.random.Generator, B: int, K: int, length: int, scale: tuple[float, float],
            max_len: int) -> np.ndarray:
    """K random blocks per sample as a boolean [B, K, T]: lengths a sampled fraction of the window."""
    sizes = np.rint(rng.uniform(scale[0], scale[1], size=(B, K)) * length).astype(np.int64)
    sizes = np.clip(sizes, 1, max_len)
    starts = np.floor(rng.random(size=(B, K)) * (length - sizes + 1)).astype(np.int64)
    t = np.arange(length)
    return (t >= starts[..., None]) & (t < (starts + sizes)[..., None])


def sample_masks(cfg: MaskConfig, length: int, batch_size: int,
                 rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
    """Masks for one batch: context_index, context_lengths, target_index, target_lengths."""
    cfg.check(length)
    B, T = batch_size, length
    if cfg.kind == "future":
        C, P = cfg.context_hours, cfg.target_hours
        return {
            "context_index": torch.arange(C).expand(B, C).contiguous(),
            "context_lengths": torch.full((B,), C, dtype=torch.int64),
            "target_index": torch.arange(C, C + P).expand(B, P).contiguous(),
            "target_lengths": torch.full((B,), P, dtype=torch.int64),
        }
    if rng is None:
        raise ValueError("sample_masks: multiblock masks need a numpy Generator")
    # Targets: the union of the first k blocks, for the largest k that leaves min_context hours
    # (k >= 1 always: MaskConfig.check bounds one block).
    blocks = _blocks(rng, B, cfg.n_targets, T, cfg.target_scale, T - cfg.min_context)
    union = np.logical_or.accumulate(blocks, axis=1)  # [B, K, T]
    fits = (T - union.sum(-1)) >= cfg.min_context  # [B, K], True then False
    last = fits.sum(1) - 1
    target = union[np.arange(B), last]  # [B, T]
    # Context: the first of a few sampled blocks that keeps min_context hours after removing the
    # targets; else every non-target hour.
    tries = 4
    candidates = _blocks(rng, B, tries, T, cfg.context_scale, T) & ~target[:, None, :]
    ok = candidates.sum(-1) >= cfg.min_context  # [B, tries]
    pick = candidates[np.arange(B), ok.argmax(1)]
    context = np.where(ok.any(1)[:, None], pick, ~target)
    context_index, context_lengths = _to_index(context, cfg.pad_multiple)
    target_index, target_lengths = _to_index(target, cfg.pad_multiple)
    return {"context_index": context_index, "context_lengths": context_lengths,
            "target_index": target_index, "target_lengths": target_lengths}


class MaskCollator:
    """DataLoader collate_fn: stacks WindowDataset items (dicts of tensors) and adds the masks.

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
        batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        if batch["values"].shape[1] != self.length:
            raise ValueError(f"MaskCollator: windows have {batch['values'].shape[1]} hours, "
                             f"the collator was built for length={self.length}")
        batch.update(sample_masks(self.cfg, self.length, len(items), self.generator(items[0])))
        return batch
