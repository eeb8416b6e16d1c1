"""Frozen-encoder embeddings of stays: one vector per stay, mean-pooled over its first hours."""
from __future__ import annotations

import numpy as np


def pooling_description(encoder: str, hours: int) -> str:
    return (f"mean over hours [0, {hours}) of the frozen {encoder} encoder's hour embeddings "
            f"(every hour is context)")


def embed_stays(model, dataset, encoder: str = "target", device: str = "cpu", batch_size: int = 256,
                progress: bool = True, desc: str = "embed") -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled embeddings of every window in `dataset`, in dataset order.

    model: anything with `embed(values, observed, delta, encoder=...) -> [B, T, D]` (a JEPA);
    dataset: items with `values`, `observed`, `delta` [T, F] and `stay` (WindowDataset.for_hours).
    Returns (float32 [N, D], stay row indices int64 [N]). The model is put in eval mode on `device`.
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    if hasattr(model, "to"):
        model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    pooled, stays = [], []
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
            hidden = model.embed(batch["values"].to(device), batch["observed"].to(device),
                                 batch["delta"].to(device), encoder=encoder)
            pooled.append(hidden.float().mean(dim=1).cpu().numpy())
            stays.append(np.asarray(batch["stay"], dtype=np.int64))
    if not pooled:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(pooled).astype(np.float32), np.concatenate(stays)
