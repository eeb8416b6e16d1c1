"""Embeddings and raw summaries of stay prefixes of varying length: one per label of a label task.

A label placed at hour h of its stay (`labels.place_labels`) is described by hours [0, h) of that
stay only. The encoder attends over every hour it is given, so embedding the first H hours and
pooling the first h would let hours h..H-1 leak in; instead the labels are grouped by h and each
group is embedded from windows of exactly h hours (at most H groups). The raw baselines summarise
the same hours, group by group.
"""
from __future__ import annotations

import numpy as np


def prefix_groups(hours: np.ndarray):
    """(h, positions of the labels with that h) for every distinct h, in increasing h."""
    hours = np.asarray(hours, dtype=np.int64)
    for h in np.unique(hours):
        yield int(h), np.flatnonzero(hours == h)


def embed_prefixes(model, processed, stay: np.ndarray, hours: np.ndarray, encoder: str = "target",
                   device: str = "cpu", batch_size: int = 256, progress: bool = True,
                   desc: str = "embed") -> np.ndarray:
    """float32 [N, D]: row i is the mean over hours [0, hours[i]) of stay row stay[i], embedded from
    those hours alone by `model`'s frozen `encoder`."""
    from torch.utils.data import Subset

    from ehrjepa.data import WindowDataset
    from ehrjepa.probe.embeddings import embed_stays

    stay, hours = np.asarray(stay, dtype=np.int64), np.asarray(hours, dtype=np.int64)
    out = None
    for h, at in prefix_groups(hours):
        dataset = WindowDataset.for_hours(processed, None, h)  # one window [0, h) per stay with >= h hours
        position = np.full(len(processed.stays), -1, dtype=np.int64)
        position[dataset.window_index[:, 0]] = np.arange(len(dataset))
        picked = position[stay[at]]
        if (picked < 0).any():
            i = stay[at][picked < 0][0]
            raise ValueError(f"embed_prefixes: stay row {i} has fewer than {h} hours")
        emb, got = embed_stays(model, Subset(dataset, picked.tolist()), encoder, device, batch_size, progress,
                               desc=f"{desc} {h}h")
        if not np.array_equal(got, stay[at]):
            raise RuntimeError(f"{desc}: prefix embeddings came back in another order than the labels")
        if out is None:
            out = np.zeros((len(stay), emb.shape[1]), dtype=np.float32)
        out[at] = emb
    return out if out is not None else np.zeros((0, 0), dtype=np.float32)


def raw_prefix_features(processed, stay: np.ndarray, hours: np.ndarray) -> np.ndarray:
    """float32 [N, len(STATS) * F]: `baselines.raw_features` of stay row stay[i] over hours [0, hours[i])."""
    from ehrjepa.probe.baselines import STATS, raw_features

    stay, hours = np.asarray(stay, dtype=np.int64), np.asarray(hours, dtype=np.int64)
    out = np.zeros((len(stay), len(STATS) * len(processed.features)), dtype=np.float32)
    for h, at in prefix_groups(hours):
        out[at] = raw_features(processed, stay[at], h)
    return out
