"""Ranking metrics of a probe's test scores: AUROC, AUPRC and their percentile bootstrap.

The bootstrap draws the same resamples of the test stays for every method of a task, so the
intervals of paired differences (e.g. jepa minus random_init) come for free. AUROC and AUPRC are
computed for all resamples at once, as weighted sums over tie groups of the sorted scores.
"""
from __future__ import annotations

import numpy as np


def ranked_metrics(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None):
    """AUROC and average precision of `score` for 0/1 labels `y`, under per-sample weights.

    weights: [B, n] (e.g. bootstrap counts) or None for one unweighted evaluation. Returns
    (auroc [B], auprc [B], valid [B]); valid is False where a row has a single class. Ties in the
    score count half for AUROC and form one threshold for average precision, as in scikit-learn.
    """
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if weights is None:
        weights = np.ones((1, len(y)))
    order = np.argsort(-score, kind="stable")                    # descending score
    s, yy, w = score[order], y[order], weights[:, order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])       # first index of each tie group
    pos = np.add.reduceat(w * yy, starts, axis=1)                # [B, groups]
    neg = np.add.reduceat(w * (1.0 - yy), starts, axis=1)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    valid = (n_pos > 0) & (n_neg > 0)
    # a positive beats every negative in a lower group, and half of those tied with it
    beaten = pos * (n_neg[:, None] - fp + 0.5 * neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = beaten.sum(axis=1) / (n_pos * n_neg)
        precision = tp / np.maximum(tp + fp, 1e-300)
        auprc = (pos * precision).sum(axis=1) / n_pos
    return np.where(valid, auroc, np.nan), np.where(valid, auprc, np.nan), valid


def bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], n_bootstrap: int = 1000, seed: int = 0,
              chunk_elems: int = 4_000_000) -> dict:
    """Percentile bootstrap of AUROC and AUPRC over the test stays, shared across methods.

    Returns {"samples": {method: (auroc [kept], auprc [kept])}, "skipped": k}: resamples that drew
    a single class are skipped (same ones for every method) and counted.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, chunk_elems // max(n, 1))
    aurocs = {m: [] for m in scores}
    auprcs = {m: [] for m in scores}
    skipped = 0
    for lo in range(0, n_bootstrap, per_chunk):
        b = min(per_chunk, n_bootstrap - lo)
        draw = rng.integers(0, n, size=(b, n))
        counts = np.bincount((draw + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        for method, score in scores.items():
            auroc, auprc, valid = ranked_metrics(y, score, counts)
            aurocs[method].append(auroc[valid])
            auprcs[method].append(auprc[valid])
        skipped += int((~valid).sum())
    samples = {m: (np.concatenate(aurocs[m]), np.concatenate(auprcs[m])) for m in scores}
    return {"samples": samples, "skipped": skipped}


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """[lo, hi] percentile interval; NaNs when there are no samples."""
    if len(samples) == 0:
        return [float("nan"), float("nan")]
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return [float(lo), float(hi)]
