"""Causal per-hour features for online prediction: at hour t of a stay, from hours [0, t] only.

The approach of the 2019 sepsis challenge's winning entries (gradient-boosted trees on
hand-made running summaries; Reyna et al., Crit Care Med 2020, "Discussion"): for every feature,
at every hour t,
- `last`: the last observed value at or before t (normalised with the train statistics),
- `since`: hours since that observation (t - its hour; 0 where observed at t),
- `mean`, `min`, `max`: the running mean, minimum and maximum of the observed hourly values of
  hours [0, t],
- `count`: the number of hours with an observation in [0, t];
NaN where the feature has not been observed yet (the trees route missing values themselves),
then the stay's `age`, `sex`, `icu_type`, `hosp_adm_hours` (stays.parquet) and `hour` (t) and
`iculos` (the challenge's ICULOS at t: the first row's ICULOS + t). One numba pass over the hours
of the stays asked for; nothing reads an hour after t.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

STATS = ("last", "since", "mean", "min", "max", "count")
STAY_COLUMNS = ("age", "sex", "icu_type", "hosp_adm_hours")
TIME_COLUMNS = ("hour", "iculos")


def hourly_feature_names(features: list[str]) -> list[str]:
    """Column names of `hourly_features`, in order: statistic-major per feature, then the stay and time columns."""
    return [f"{name}.{stat}" for stat in STATS for name in features] + list(STAY_COLUMNS) + list(TIME_COLUMNS)


@njit(parallel=True, cache=True)
def _running(z, starts, lengths, out_starts, out):
    n_features = z.shape[1]
    for s in prange(len(starts)):
        base, length, o = starts[s], lengths[s], out_starts[s]
        for f in range(n_features):
            last_hour = -1
            total = 0.0
            n = 0
            lo = np.inf
            hi = -np.inf
            last = np.nan
            for t in range(length):
                v = z[base + t, f]
                if not np.isnan(v):
                    last_hour = t
                    last = v
                    total += v
                    n += 1
                    lo = min(lo, v)
                    hi = max(hi, v)
                row = o + t
                if n == 0:
                    out[row, f] = np.nan
                    out[row, n_features + f] = np.nan
                    out[row, 2 * n_features + f] = np.nan
                    out[row, 3 * n_features + f] = np.nan
                    out[row, 4 * n_features + f] = np.nan
                else:
                    out[row, f] = last
                    out[row, n_features + f] = t - last_hour
                    out[row, 2 * n_features + f] = total / n
                    out[row, 3 * n_features + f] = lo
                    out[row, 4 * n_features + f] = hi
                out[row, 5 * n_features + f] = n


def stay_hours(processed, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in `rows` of each hour's stay, hour) int64 [sum of n_hours]: every hour of the stays
    `rows`, stay by stay, in hour order (the rows of `hourly_features`)."""
    n_hours = processed.stays.column("n_hours").to_numpy()[np.asarray(rows, dtype=np.int64)].astype(np.int64)
    which = np.repeat(np.arange(len(rows)), n_hours)
    starts = np.cumsum(n_hours) - n_hours
    return which, np.arange(int(n_hours.sum()), dtype=np.int64) - np.repeat(starts, n_hours)


def _stay_column(stays, name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if name not in stays.column_names:
        return np.full(stays.num_rows, np.nan)
    return pc.cast(stays.column(name), pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def hourly_features(processed, rows: np.ndarray) -> np.ndarray:
    """float32 [sum of n_hours of `rows`, len(hourly_feature_names)]: row k is hour `stay_hours`[1][k]
    of stay row rows[`stay_hours`[0][k]], from that stay's hours up to and including it."""
    rows = np.asarray(rows, dtype=np.int64)
    stays = processed.stays
    offset = stays.column("offset").to_numpy()[rows].astype(np.int64)
    n_hours = stays.column("n_hours").to_numpy()[rows].astype(np.int64)
    n_features = len(processed.features)
    norm_mean = np.asarray(processed.norm_mean, dtype=np.float32)
    norm_std = np.asarray(processed.norm_std, dtype=np.float32)
    out_starts = np.cumsum(n_hours) - n_hours
    total = int(n_hours.sum())
    out = np.empty((total, len(STATS) * n_features + len(STAY_COLUMNS) + len(TIME_COLUMNS)), dtype=np.float32)
    # the stays' hours, read in one gather and normalised (NaN stays NaN)
    index = np.repeat(offset - out_starts, n_hours) + np.arange(total)
    z = (np.asarray(processed.mean[index], dtype=np.float32) - norm_mean) / norm_std
    _running(z, out_starts, n_hours, out_starts, out)
    which, hour = stay_hours(processed, rows)
    col = len(STATS) * n_features
    for name in STAY_COLUMNS:
        out[:, col] = _stay_column(stays, name)[rows][which]
        col += 1
    first = _stay_column(stays, "iculos_first")[rows]
    first = np.where(np.isnan(first), 1.0, first)
    out[:, col] = hour
    out[:, col + 1] = first[which] + hour
    return out
