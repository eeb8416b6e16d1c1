"""Training logs: RUN/metrics.csv, TensorBoard (optional), RankMe and the collapse check.

metrics.csv has one row per step. Validation columns (val_loss, rankme, target_std) are filled
on validation steps and empty elsewhere. validation.csv has one row per validation step: those
columns, the validation probe's AUROC (train.select=probe; empty otherwise) and whether best.pt
was written there (1/0), so the measures that could choose best.pt can be compared afterwards.
"""
from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path

import torch

from ehrjepa.metrics_csv import COLUMNS

VALIDATION_COLUMNS = ["step", "val_loss", "rankme", "target_std", "val_probe", "best"]


def rankme(embeddings: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank of a [N, D] embedding matrix: exp of the entropy of its normalised
    singular values (RankMe, Garrido et al. 2023, "RankMe: Assessing the downstream performance
    of pretrained self-supervised representations by their rank"). Between 1 and min(N, D)."""
    z = embeddings.detach().float().reshape(-1, embeddings.shape[-1])
    s = torch.linalg.svdvals(z)
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def target_std(embeddings: torch.Tensor) -> float:
    """Mean over dimensions of the per-dimension std across all rows (0 when collapsed)."""
    z = embeddings.detach().float().reshape(-1, embeddings.shape[-1])
    return float(z.std(dim=0).mean())


def collapse_warning(rank: float, std: float, width: int, rows: int,
                     min_rank_fraction: float, min_std: float) -> str | None:
    """A message when RankMe or the target std says the representation has collapsed."""
    problems = []
    limit = min_rank_fraction * min(width, rows)
    if rank < limit:
        problems.append(f"RankMe {rank:.1f} < {limit:.1f} ({min_rank_fraction:g} x "
                        f"min(width {width}, rows {rows}))")
    if std < min_std:
        problems.append(f"target std {std:.2e} < {min_std:g}")
    if not problems:
        return None
    return "possible representation collapse: " + "; ".join(problems)


class MetricsLog:
    """metrics.csv plus TensorBoard under a run folder; only rank 0 makes one."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None,
                 tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        self.val_path = self.run_dir / "validation.csv"
        if resume_step is not None:
            for path, columns in ((self.csv_path, COLUMNS), (self.val_path, VALIDATION_COLUMNS)):
                if path.exists():
                    _truncate(path, columns, resume_step)
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS)
        if new:
            self._csv.writeheader()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # tensorboard is an optional extra
                warnings.warn(f"TensorBoard logging off ({e}); pip install tensorboard",
                              stacklevel=2)
            else:
                purge = None if resume_step is None else resume_step + 1
                self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)

    def write(self, row: dict) -> None:
        """One step's row; keys not in COLUMNS go to TensorBoard only."""
        self._csv.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
        if self.tb is not None:
            step = int(row["step"])
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    group = "val" if k in ("val_loss", "rankme", "target_std", "val_probe") else "train"
                    self.tb.add_scalar(f"{group}/{k}", v, step)

    def write_validation(self, row: dict, best: bool) -> None:
        """One validation step's row of validation.csv (opened, appended and closed: rare)."""
        new = not self.val_path.exists() or self.val_path.stat().st_size == 0
        with open(self.val_path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=VALIDATION_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in VALIDATION_COLUMNS} | {"best": int(best)})

    def flush(self) -> None:
        self._file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()


def _truncate(path: Path, columns: list[str], resume_step: int) -> None:
    """Drop rows past the step a resumed run restarts from (they will be logged again)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # full precision: the resume test compares losses bit for bit
    return str(v)
