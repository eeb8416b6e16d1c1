"""Training-time augmentation of a stay's hourly observations (`data.augment`), off by default.

Each augmentation works on the raw hourly means of the stay (NaN = not observed) before the
window is filled, so the observed indicator, the hours since the last observation and the
forward-filled values are re-derived from what is left, exactly as for real data:
- `jitter`: every observation moves by a uniform whole number of hours in [-jitter, jitter]
  (kept inside the stay; where two land in one hour, the later one in time order wins);
- `drop`: each remaining observation is removed with probability `drop`;
- `noise`: Gaussian noise of standard deviation `noise` (in units of the feature's train
  standard deviation) is added to each remaining observation.
They run in the DataLoader workers (inside the dataset's __getitem__), from a generator seeded
by (seed, epoch, stay, start), so a run and its exact resume augment identically.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class AugmentConfig:
    """The `data.augment:` section of a run config; all zero (the default) is no augmentation."""

    noise: float = 0.0  # std of Gaussian noise on observed values, in train standard deviations
    drop: float = 0.0  # fraction of observations dropped
    jitter: int = 0  # observations move by up to this many hours

    def __post_init__(self):
        if self.noise < 0:
            raise ValueError(f"data.augment.noise must be >= 0, got {self.noise}")
        if not 0.0 <= self.drop < 1.0:
            raise ValueError(f"data.augment.drop must be in [0, 1), got {self.drop}")
        if self.jitter < 0:
            raise ValueError(f"data.augment.jitter must be >= 0, got {self.jitter}")

    @property
    def active(self) -> bool:
        return self.noise > 0 or self.drop > 0 or self.jitter > 0


def augment_hours(raw: np.ndarray, cfg: AugmentConfig, norm_std: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """A new [hours, F] array of raw hourly means (NaN where unobserved) with `cfg` applied."""
    out = np.array(raw, dtype=np.float64, copy=True)
    if cfg.jitter > 0:
        hour, feature = np.nonzero(~np.isnan(out))  # row-major: ascending hour
        values = out[hour, feature]
        shift = rng.integers(-cfg.jitter, cfg.jitter + 1, size=len(hour))
        moved = np.clip(hour + shift, 0, len(out) - 1)
        out[:] = np.nan
        out[moved, feature] = values  # numpy assigns in order: the later observation wins
    if cfg.drop > 0:
        out[rng.random(out.shape) < cfg.drop] = np.nan
    if cfg.noise > 0:
        out += rng.normal(0.0, cfg.noise, size=out.shape) * norm_std[None, :]  # NaN stays NaN
    return out
