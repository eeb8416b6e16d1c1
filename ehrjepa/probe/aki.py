"""`aki_24_72h`: acute kidney injury in hours 24-72 of a stay, from its hourly creatinine.

The thresholds are KDIGO's stage 1 by serum creatinine (KDIGO Clinical Practice Guideline for
Acute Kidney Injury, Kidney Int Suppl 2012;2:1-138, section 2.1.1): a rise of >= 0.3 mg/dL within
48 hours, or >= 1.5 times baseline. Urine output, KDIGO's other criterion, is not used.

On the processed data (OUT/mean.npy holds each hour's mean creatinine, in the catalog's mg/dL):
- baseline: the lowest creatinine of hours [0, 24) (KDIGO's baseline is a known or presumed value
  of the prior 7 days; ICU data rarely has one, so the first day's lowest stands in for it);
- AKI at hour t: creatinine(t) >= 1.5 x baseline, or creatinine(t) - min(creatinine over the
  48 hours before t, from hour 0 on) >= 0.3 mg/dL;
- label 1: AKI at some hour in [24, 72); label 0: at none.
Excluded (label NaN, counted as unknown): stays shorter than 72 hours (their hours 24-72 are not
all observed, and a label would depend on when they ended), stays without creatinine in hours
[0, 24) (no baseline), and stays with AKI already in hours [0, 24) (the task is new AKI).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

FEATURE = "creatinine"
UNIT = "mg/dL"
OBSERVED_HOURS = 24          # the baseline and exclusion window [0, 24), and the most a probe may embed
END_HOUR = 72                # AKI is looked for in hours [OBSERVED_HOURS, END_HOUR)
RISE_MG_DL = 0.3             # KDIGO stage 1: +0.3 mg/dL within 48 hours ...
RISE_HOURS = 48
RATIO = 1.5                  # ... or >= 1.5 x baseline
_TOL = 1e-6                  # hourly means are float32: 1.3 - 1.0 must count as a 0.3 rise


def aki_from_creatinine(creatinine: np.ndarray) -> np.ndarray:
    """Labels float64 [n] from creatinine [n, >= END_HOUR] (mg/dL, NaN where not measured) of
    stays with at least END_HOUR hours: 1 AKI in hours [24, 72), 0 none, NaN excluded (no
    creatinine in hours [0, 24), or AKI there already)."""
    c = np.asarray(creatinine, dtype=np.float64)[:, :END_HOUR]
    if c.ndim != 2 or c.shape[1] < END_HOUR:
        raise ValueError(f"creatinine must be [stays, >= {END_HOUR} hours], got {c.shape}")
    first = c[:, :OBSERVED_HOURS]
    has_baseline = ~np.isnan(first).all(axis=1)
    baseline = np.full(len(c), np.nan)
    baseline[has_baseline] = np.nanmin(first[has_baseline], axis=1)
    aki = np.zeros(c.shape, dtype=bool)
    for t in range(END_HOUR):
        low = np.full(len(c), np.nan)   # the lowest creatinine of the 48 hours before t
        if t:
            prior = c[:, max(0, t - RISE_HOURS):t]
            seen = ~np.isnan(prior).all(axis=1)
            low[seen] = np.nanmin(prior[seen], axis=1)
        with np.errstate(invalid="ignore"):
            aki[:, t] = (c[:, t] >= RATIO * baseline - _TOL) | (c[:, t] - low >= RISE_MG_DL - _TOL)
    early = aki[:, :OBSERVED_HOURS].any(axis=1)
    late = aki[:, OBSERVED_HOURS:].any(axis=1)
    return np.where(has_baseline & ~early, late.astype(np.float64), np.nan)


def creatinine_unit(processed) -> str | None:
    """The unit of the creatinine feature in the catalog that built `processed` (its manifest's
    "config", else the repository's default catalog), or None when no catalog names one."""
    from ehrjepa.data.catalog import default_catalog_path, load_catalog

    config = (processed.manifest or {}).get("config")
    path = Path(config) if config and Path(config).is_file() else default_catalog_path()
    try:
        catalog = load_catalog(path)
    except (OSError, ValueError):
        return None
    spec = next((f for f in catalog.features if f.name == FEATURE), None)
    if spec is None or not spec.unit:
        return None
    return spec.unit


def aki_labels(processed, rows: np.ndarray) -> np.ndarray:
    """aki_24_72h labels float64 [len(rows)] of stay rows `rows` of `processed` (NaN: excluded).

    ValueError, one line naming the data folder, when it has no creatinine feature or the
    catalog gives creatinine in a unit other than mg/dL (the thresholds are in mg/dL)."""
    if FEATURE not in processed.features:
        raise ValueError(f"{processed.path}: no {FEATURE!r} feature for aki_24_72h "
                         f"(features: {', '.join(processed.features)})")
    unit = creatinine_unit(processed)
    if unit is not None and unit.lower() != UNIT.lower():
        raise ValueError(f"{processed.path}: the catalog gives {FEATURE} in {unit}; aki_24_72h's KDIGO "
                         f"thresholds are in {UNIT}")
    rows = np.asarray(rows, dtype=np.int64)
    offset = processed.stays.column("offset").to_numpy()[rows].astype(np.int64)
    n_hours = processed.stays.column("n_hours").to_numpy()[rows].astype(np.int64)
    long_enough = np.flatnonzero(n_hours >= END_HOUR)
    labels = np.full(len(rows), np.nan)
    if len(long_enough):
        col = processed.features.index(FEATURE)
        index = (offset[long_enough, None] + np.arange(END_HOUR)[None, :]).ravel()
        creatinine = np.asarray(processed.mean[index, col], dtype=np.float64).reshape(-1, END_HOUR)
        labels[long_enough] = aki_from_creatinine(creatinine)
    return labels


def describe() -> str:
    """The definition in one line (report.json "task_definitions")."""
    return (f"KDIGO stage >= 1 by creatinine (>= {RATIO}x baseline, or +{RISE_MG_DL} mg/dL within {RISE_HOURS} h; "
            f"KDIGO 2012) in hours [{OBSERVED_HOURS}, {END_HOUR}), baseline the lowest creatinine of hours "
            f"[0, {OBSERVED_HOURS}); excluded: stays under {END_HOUR} h, without creatinine in hours "
            f"[0, {OBSERVED_HOURS}), or with AKI there")
