"""RUN/metrics.csv, the training log's file format: its columns and its reader.

`ehrjepa.train.metrics.MetricsLog` writes it; the probe reads it for the training curves. It
lives apart from both, without torch, so that evaluation does not import the training app.
One row per step; validation columns (val_loss, rankme, target_std) are filled on validation
steps and empty elsewhere.
"""
from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ["step", "loss", "lr", "wd", "momentum", "grad_norm", "seq_per_s",
           "val_loss", "rankme", "target_std"]


def read_metrics(path: str | Path) -> list[dict]:
    """RUN/metrics.csv as one dict per row: step an int, other cells floats, None when empty.

    A file without a `step` column or with a cell that is not a number is a ValueError naming the
    file, line and column. `metric_series` turns the rows into curves for plots.
    """
    path = Path(path)
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{path}: no 'step' column in the header")
        for line, r in enumerate(reader, start=2):
            row = {}
            for k, v in r.items():
                if v in ("", None):
                    row[k] = None
                    continue
                try:
                    row[k] = int(v) if k == "step" else float(v)
                except ValueError:
                    raise ValueError(f"{path}, line {line}: column {k!r} is not a number: {v!r}") from None
            out.append(row)
    return out


def metric_series(rows: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{column: (steps, values)} of every column of `read_metrics` rows, empty cells left out
    (e.g. val_loss only on validation steps); columns with no value at all are absent."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k != "step" and v is not None and r.get("step") is not None:
                steps, values = series.setdefault(k, ([], []))
                steps.append(r["step"])
                values.append(v)
    return series
