"""The snapshot baseline: per-feature summary statistics over the first hours of each stay.

For each feature, over hours [0, hours): the last observed value, the mean, min and max of the
hourly values, the fraction of hours with an observation, the first observed value and the
number of events (log1p of the counts' sum): the summaries of the strong tabular baselines of
the ICU benchmarks (last, mean, min, max, count, first). A feature aggregated by `sum` (urine
output: the hour's volume) has as its mean the total over the window per hour, unobserved hours
counting 0 (its min and max stay over observed hours). Values are normalised with the train-split
statistics from preprocessing; a feature never observed in those hours gets 0 (the train mean)
for its value statistics and 0 for its observed fraction and count, so missingness stays visible
to the linear model. Computed straight from the processed mean/count arrays, in chunks of stays,
with no Python loop over stays or features.
"""
from __future__ import annotations

import numpy as np

from ehrjepa.probe.tasks import HOURS

STATS = ("last", "mean", "min", "max", "observed", "first", "count")


def raw_feature_names(features: list[str]) -> list[str]:
    """Column names of `raw_features`, in order: statistic-major, then feature."""
    return [f"{name}.{stat}" for stat in STATS for name in features]


def raw_features(processed, rows: np.ndarray, hours: int = HOURS, chunk: int = 2048) -> np.ndarray:
    """float32 [len(rows), len(STATS) * F] summary statistics over hours [0, hours) of stay rows
    `rows` (statistic-major, as raw_feature_names)."""
    rows = np.asarray(rows, dtype=np.int64)
    offset = processed.stays.column("offset").to_numpy()[rows].astype(np.int64)
    n_hours = processed.stays.column("n_hours").to_numpy()[rows].astype(np.int64)
    short = np.flatnonzero(n_hours < hours)
    if len(short):
        i = rows[short[0]]
        raise ValueError(f"raw_features: stay row {i} has {n_hours[short[0]]} hours, fewer than "
                         f"hours={hours} ({len(short)} such stays); select stays with n_hours >= hours")
    n_features = processed.mean.shape[1]
    norm_mean = np.asarray(processed.norm_mean, dtype=np.float32)
    norm_std = np.asarray(processed.norm_std, dtype=np.float32)
    summed = np.array([a == "sum" for a in getattr(processed, "aggregation", None)
                       or ["mean"] * n_features])
    out = np.zeros((len(rows), len(STATS) * n_features), dtype=np.float32)
    hour = np.arange(hours, dtype=np.int64)
    for lo in range(0, len(rows), chunk):
        hi = min(lo + chunk, len(rows))
        index = (offset[lo:hi, None] + hour[None, :]).ravel()           # [n * hours]
        mean = np.asarray(processed.mean[index], dtype=np.float32).reshape(hi - lo, hours, n_features)
        count = np.asarray(processed.count[index]).reshape(hi - lo, hours, n_features)
        seen = ~np.isnan(mean)                                           # [n, hours, F]
        z = np.where(seen, (mean - norm_mean) / norm_std, 0.0).astype(np.float32)
        n_seen = seen.sum(axis=1)                                        # [n, F]
        any_seen = n_seen > 0
        stat_mean = z.sum(axis=1) / np.maximum(n_seen, 1)
        if summed.any():  # the window's total per hour, unobserved hours 0 (then normalised)
            total = np.where(seen, mean, 0.0).sum(axis=1) / hours
            stat_mean = np.where(summed, np.where(any_seen, (total - norm_mean) / norm_std, 0.0),
                                 stat_mean).astype(np.float32)
        stat_min = np.where(any_seen, np.where(seen, z, np.inf).min(axis=1), 0.0)
        stat_max = np.where(any_seen, np.where(seen, z, -np.inf).max(axis=1), 0.0)
        last_hour = np.where(seen, hour[None, :, None], -1).max(axis=1)  # [n, F], -1 if never
        stat_last = np.take_along_axis(z, np.maximum(last_hour, 0)[:, None, :], axis=1)[:, 0, :]
        stat_last = np.where(any_seen, stat_last, 0.0)
        observed = (count > 0).mean(axis=1)
        first_hour = np.where(seen, hour[None, :, None], hours).min(axis=1)  # hours if never
        stat_first = np.take_along_axis(z, np.minimum(first_hour, hours - 1)[:, None, :],
                                        axis=1)[:, 0, :]
        stat_first = np.where(any_seen, stat_first, 0.0)
        events = np.log1p(count.sum(axis=1, dtype=np.float64)).astype(np.float32)
        out[lo:hi] = np.concatenate([stat_last, stat_mean, stat_min, stat_max, observed,
                                     stat_first, events], axis=1)
    return out
