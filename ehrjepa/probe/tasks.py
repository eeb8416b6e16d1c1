"""Downstream tasks: labels from the processed stays, and the hours the probe embeds.

Every task uses the same cohort: the stays with at least `hours` hours of data, which the probe
embeds over hours [0, hours). With the default HOURS = 24, `mortality_hosp` is in-hospital death
for stays of 24 h or more, so that a death during the observed hours cannot leak into the label.

- `mortality_hosp`: `death_hosp` (hospital_expire_flag of the stay's admission) is 1.
- `los_gt_3d`, `los_gt_7d`: ICU length of stay `los_days` is over 3 or 7 days.
- `aki_24_72h`: acute kidney injury, KDIGO stage >= 1 by creatinine, in hours [24, 72) of the stay,
  among stays without it in hours [0, 24); computed from the processed creatinine itself
  (OUT/mean.npy), so it works on any data (`aki.py` holds the definition).

A label is NaN where its source is missing (a null column, a stay excluded from the AKI cohort);
such stays are left out of that task and counted.
"""
from __future__ import annotations

import numpy as np

from ehrjepa.data.processed import SPLITS

# The hours [0, HOURS) of each stay that the probe embeds and summarises: the first day, as in the
# ICU benchmarks docs/results.md compares with (mortality at 24 h in YAIB) and the severity scores
# (APACHE, SAPS); long enough to carry signal, short enough that most stays have it. Every shipped
# config's context covers it (a test), so the encoder saw these hour positions in pretraining.
HOURS = 24

# Tasks labelled from the stays table alone, and those that read the hourly labs too.
STAY_TASKS = ("mortality_hosp", "los_gt_3d", "los_gt_7d")
LAB_TASKS = ("aki_24_72h",)
TASKS = STAY_TASKS + LAB_TASKS

# What label 0 and label 1 mean, in words (plot legends).
OUTCOMES = {
    "mortality_hosp": ("survived", "died in hospital"),
    "los_gt_3d": ("ICU stay <= 3 days", "ICU stay > 3 days"),
    "los_gt_7d": ("ICU stay <= 7 days", "ICU stay > 7 days"),
    "aki_24_72h": ("no AKI in hours 24-72", "AKI (KDIGO >= 1) in hours 24-72"),
}

# A task is skipped when a split has fewer positives (or negatives) than this: logistic regression
# needs a few of each class to fit, and AUROC needs both classes to exist.
MIN_CLASS_COUNT = {"train": 5, "val": 2, "test": 2}


def _float_column(stays, name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if name not in stays.column_names:
        raise ValueError(f"no column {name!r} in the stays table (columns: {stays.column_names})")
    col = pc.cast(stays.column(name), pa.float64())
    return col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN


def task_labels(stays, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Labels of stay rows `rows` of the stays table for every task of STAY_TASKS: float64 0/1, NaN
    where unknown. (The lab tasks need the hourly data: `labels_by_split`.)"""
    rows = np.asarray(rows, dtype=np.int64)
    death = _float_column(stays, "death_hosp")[rows]
    los = _float_column(stays, "los_days")[rows]
    labels = {
        "mortality_hosp": np.where(np.isnan(death), np.nan, (death > 0).astype(np.float64)),
        "los_gt_3d": np.where(np.isnan(los), np.nan, (los > 3.0).astype(np.float64)),
        "los_gt_7d": np.where(np.isnan(los), np.nan, (los > 7.0).astype(np.float64)),
    }
    return labels


def labels_by_split(processed, rows: dict[str, np.ndarray], hours: int = HOURS):
    """({task: {split: labels}}, {task: why it cannot be labelled}) for every task of TASKS.

    rows: {split: stay rows}. A lab task that cannot be computed on this data (no creatinine, another
    unit) or whose label hours overlap the `hours` embedded (aki_24_72h looks from hour 24 on) is
    left out of the labels and given a reason instead."""
    from ehrjepa.probe import aki

    labels = {task: {} for task in STAY_TASKS}
    for split, r in rows.items():
        for task, y in task_labels(processed.stays, r).items():
            labels[task][split] = y
    unavailable = {}
    if hours > aki.OBSERVED_HOURS:
        unavailable["aki_24_72h"] = (f"the {hours} hours embedded overlap its label hours [{aki.OBSERVED_HOURS}, "
                                     f"{aki.END_HOUR}); use --hours {aki.OBSERVED_HOURS} or fewer")
        return labels, unavailable
    try:
        labels["aki_24_72h"] = {split: aki.aki_labels(processed, r) for split, r in rows.items()}
    except ValueError as e:
        unavailable["aki_24_72h"] = str(e)
    return labels, unavailable


def class_counts(y: np.ndarray) -> tuple[int, int, int]:
    """(n known, positives, unknown) of a label array."""
    known = ~np.isnan(y)
    return int(known.sum()), int((y[known] == 1).sum()), int((~known).sum())


def skip_reason(y_by_split: dict[str, np.ndarray], min_count: dict[str, int] = MIN_CLASS_COUNT,
                splits=SPLITS) -> str | None:
    """Why a task cannot be probed (too few positives or negatives in one of `splits`), else None."""
    problems = []
    for split in splits:
        n, pos, _ = class_counts(y_by_split[split])
        need = min_count[split]
        if pos < need:
            problems.append(f"{split} has {pos} positives (need >= {need})")
        if n - pos < need:
            problems.append(f"{split} has {n - pos} negatives (need >= {need})")
    return "; ".join(problems) if problems else None
