"""The static descriptors of a stay as probe inputs (`ehrjepa probe --static`).

The stay columns of processed.STATIC_COLUMNS that the data has: age, sex, height_cm, weight_kg
as numbers, each with a 0/1 column saying it is unknown (the unknown value itself is the train
split's median, so no test value leaks into it), and icu_type one-hot (one column per type seen
in the train split; an unknown or unseen type is all zeros). The published models of the 2012
challenge's table use these descriptors; `--static` appends them to every method's inputs alike,
so the comparison between methods stays fair.
"""
from __future__ import annotations

import numpy as np

from ehrjepa.data.processed import SPLITS, STATIC_COLUMNS

NUMERIC = ("age", "sex", "height_cm", "weight_kg")


def static_features(processed, rows: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """({split: float32 [len(rows[split]), K]}, the K column names) for the stay rows of each
    split; an error naming stays.parquet where the data has none of the static columns."""
    have = [c for c in STATIC_COLUMNS if c in processed.stays.column_names]
    if not have:
        raise ValueError(f"--static: {processed.path / 'stays.parquet'} has none of the static "
                         f"columns ({', '.join(STATIC_COLUMNS)}): preprocess the data again")
    column = {c: processed.stays.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
              for c in have}
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    names: list[str] = []
    for c in (c for c in NUMERIC if c in column):
        train = column[c][rows["train"]]
        fill = float(np.nanmedian(train)) if np.isfinite(train).any() else 0.0
        for s in SPLITS:
            v = column[c][rows[s]]
            parts[s] += [np.where(np.isnan(v), fill, v), np.isnan(v).astype(np.float64)]
        names += [c, f"{c}_unknown"]
    if "icu_type" in column:
        kinds = np.unique(column["icu_type"][rows["train"]])
        kinds = kinds[np.isfinite(kinds)]
        for k in kinds.tolist():
            for s in SPLITS:
                parts[s].append((column["icu_type"][rows[s]] == k).astype(np.float64))
            names.append(f"icu_type_{int(k)}")
    out = {s: (np.stack(parts[s], axis=1) if parts[s] else np.zeros((len(rows[s]), 0)))
           .astype(np.float32) for s in SPLITS}
    return out, names


def with_static(x: dict[str, dict[str, np.ndarray]], static: dict[str, np.ndarray],
                methods) -> None:
    """Append the static columns to the inputs of `methods` in x ({method: {split: [n, d]}}), in
    place."""
    for m in methods:
        if m in x:
            for s in SPLITS:
                x[m][s] = np.concatenate([np.asarray(x[m][s], np.float32), static[s]], axis=1)
