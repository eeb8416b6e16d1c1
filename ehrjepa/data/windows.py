"""Fixed-length windows of hourly stays, as a torch Dataset (see docs/DESIGN.md, "Windows").

A window is `length` consecutive hours of one stay. Each item holds, per hour and feature:
- `values`: the hourly mean, forward-filled within the stay and normalised with the train
  statistics; the fill starts at the stay's hour 0, so an observation made before the window
  start carries into it. Before the first observation the value is 0 (the train mean).
- `observed`: 1 where the feature was observed in that hour.
- `delta`: hours since the last observation in the stay (0 where observed), capped at
  `max_delta`; `max_delta` before any observation.

`StayCropDataset` is the whole-stay variant: one sample per stay, a crop of up to `length` hours
(at least `min_length`), so a short stay gives a short sample (see its docstring).

`augment` (an AugmentConfig, training only) perturbs the stay's observations before the fill,
seeded by (seed, epoch, stay, start); see ehrjepa/data/augment.py.

The arrays are filled by one numba function reading straight from the memory-mapped
`processed.mean`. The dataset pickles without the arrays (each DataLoader worker reopens the
memory map from its file), so `DataLoader(num_workers>0)` costs no copy of the data.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from torch.utils.data import Dataset

from ehrjepa.data.augment import AugmentConfig, augment_hours


@numba.njit(cache=True, nogil=True)
def fill_window(mean, offset, start, length, norm_mean, norm_std, max_delta, values, observed, delta):
    """Fill values/observed/delta [length, F] for hours [start, start + length) of the stay whose
    first row in `mean` is `offset`. Hours before `start` are scanned backwards only as far as
    needed to find each feature's last observation."""
    n_features = mean.shape[1]
    last = np.empty(n_features, np.float64)  # last observed raw value, NaN if none yet
    last_hour = np.empty(n_features, np.int64)  # hour of that observation, -1 if none
    for f in range(n_features):
        last[f] = np.nan
        last_hour[f] = -1
    # carry-in: walk back from start - 1 until every feature is found or hour 0 is passed
    missing = n_features
    h = start - 1
    while h >= 0 and missing > 0:
        row = offset + h
        for f in range(n_features):
            if last_hour[f] < 0:
                x = mean[row, f]
                if not np.isnan(x):
                    last[f] = x
                    last_hour[f] = h
                    missing -= 1
        h -= 1
    for t in range(length):
        hour = start + t
        row = offset + hour
        for f in range(n_features):
            x = mean[row, f]
            if not np.isnan(x):
                last[f] = x
                last_hour[f] = hour
                observed[t, f] = 1.0
                delta[t, f] = 0.0
                values[t, f] = (x - norm_mean[f]) / norm_std[f]
            else:
                observed[t, f] = 0.0
                if last_hour[f] < 0:
                    delta[t, f] = max_delta
                    values[t, f] = 0.0
                else:
                    delta[t, f] = min(float(hour - last_hour[f]), max_delta)
                    values[t, f] = (last[f] - norm_mean[f]) / norm_std[f]


@numba.njit(cache=True)
def _count_windows(n_hours, length, stride):
    total = 0
    for n in n_hours:
        if n >= length:
            total += (n - length) // stride + 1
    return total


@numba.njit(cache=True)
def _window_index(stay_rows, n_hours, length, stride, total):
    index = np.empty((total, 2), np.int64)
    k = 0
    for i in range(len(stay_rows)):
        n = n_hours[i]
        if n >= length:
            for start in range(0, n - length + 1, stride):
                index[k, 0] = stay_rows[i]
                index[k, 1] = start
                k += 1
    return index


class WindowDataset(Dataset):
    """One window per `start in range(0, n_hours - length + 1, stride)` of each stay in `split`.

    `processed` is what `open_processed(OUT)` returns (anything with .stays, .mean,
    .norm_mean, .norm_std, .features, .split_indices). `split` is "train", "val", "test" or
    None for all stays. Stays shorter than `length` give no window; they are counted in
    `.n_short_stays`.
    """

    def __init__(self, processed, split: str | None, length: int, stride: int,
                 max_delta: float = 48.0, _for_hours: bool = False,
                 augment: AugmentConfig | None = None, seed: int = 0):
        if length < 1 or stride < 1:
            raise ValueError(f"length and stride must be >= 1, got length={length}, stride={stride}")
        stay_rows, n_hours = self._open(processed, split, length, max_delta, augment, seed)
        self.stride = int(stride)
        self.n_short_stays = int((n_hours < self.length).sum())
        if _for_hours:  # one window per stay, at hour 0
            keep = stay_rows[n_hours >= self.length]
            self.window_index = np.stack([keep, np.zeros_like(keep)], axis=1).reshape(-1, 2)
        else:
            total = _count_windows(n_hours, self.length, self.stride)
            self.window_index = _window_index(stay_rows, n_hours, self.length, self.stride, total)

    def _open(self, processed, split: str | None, length: int, max_delta: float,
              augment: AugmentConfig | None, seed: int):
        """Check and keep the processed arrays; (stay rows of `split`, their n_hours)."""
        if max_delta <= 0:
            raise ValueError(f"max_delta must be > 0, got {max_delta}")
        self.augment = augment if augment is not None and augment.active else None
        self.seed = int(seed)
        self.epoch = 0
        self.split = split
        self.length = int(length)
        self.max_delta = float(max_delta)
        self.features = list(processed.features)
        self.n_features = len(self.features)
        stays = processed.stays
        self._offset = np.ascontiguousarray(stays.column("offset").to_numpy(), dtype=np.int64)
        n_hours_all = np.ascontiguousarray(stays.column("n_hours").to_numpy(), dtype=np.int64)
        self._n_hours = n_hours_all
        if split is None:
            stay_rows = np.arange(len(self._offset), dtype=np.int64)
        else:
            stay_rows = np.asarray(processed.split_indices(split), dtype=np.int64)
        self.n_stays = len(stay_rows)
        self.norm_mean = np.ascontiguousarray(processed.norm_mean, dtype=np.float32)
        self.norm_std = np.ascontiguousarray(processed.norm_std, dtype=np.float32)
        if self.norm_mean.shape != (self.n_features,) or self.norm_std.shape != (self.n_features,):
            raise ValueError(f"norm_mean/norm_std must have shape ({self.n_features},), got "
                             f"{self.norm_mean.shape} and {self.norm_std.shape}")
        if np.any(self.norm_std <= 0) or not np.all(np.isfinite(self.norm_std)):
            raise ValueError("norm_std must be finite and > 0 for every feature")
        self._mean = processed.mean
        if self._mean.ndim != 2 or self._mean.shape[1] != self.n_features:
            raise ValueError(f"mean must be [total_hours, {self.n_features}], got {self._mean.shape}")
        # a memmap is reopened from its file after pickling; a plain array travels as is
        filename = getattr(self._mean, "filename", None)
        self._mean_path = str(filename) if isinstance(self._mean, np.memmap) and filename else None
        return stay_rows, n_hours_all[stay_rows]

    def set_epoch(self, epoch: int) -> None:
        """The epoch seeds the augmentation (and StayCropDataset's random crops); set it before
        each epoch's iterator, which copies the dataset to the workers."""
        self.epoch = int(epoch)

    @property
    def sample_lengths(self) -> np.ndarray:
        """Hours of every sample (all `length` here), for token-budget batching."""
        return np.full(len(self), self.length, np.int64)

    @classmethod
    def for_hours(cls, processed, split: str | None, hours: int, max_delta: float = 48.0):
        """One window per stay with n_hours >= `hours`, covering hours [0, hours) (for probes)."""
        return cls(processed, split, length=hours, stride=hours, max_delta=max_delta,
                   _for_hours=True)

    # pickling for DataLoader workers: drop the memmap, reopen it lazily from its file
    def __getstate__(self):
        state = self.__dict__.copy()
        if self._mean_path is not None:
            state["_mean"] = None
        return state

    def _mean_array(self) -> np.ndarray:
        if self._mean is None:
            self._mean = np.load(self._mean_path, mmap_mode="r")
        return self._mean

    def __len__(self) -> int:
        return len(self.window_index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < 0:
            i += len(self)
        stay, start = self.window_index[i]
        return self._item(stay, start, self.length)

    def _item(self, stay: int, start: int, length: int) -> dict[str, torch.Tensor]:
        shape = (length, self.n_features)
        values = np.empty(shape, np.float32)
        observed = np.empty(shape, np.float32)
        delta = np.empty(shape, np.float32)
        mean, offset = self._mean_array(), self._offset[stay]
        if self.augment is not None:  # a perturbed copy of the hours the window reads
            end = min(int(self._n_hours[stay]), start + length + self.augment.jitter)
            rng = np.random.default_rng([self.seed, self.epoch, int(stay), int(start)])
            mean = augment_hours(mean[offset:offset + end], self.augment, self.norm_std, rng)
            offset = 0
        fill_window(mean, offset, start, length, self.norm_mean, self.norm_std, self.max_delta,
                    values, observed, delta)
        return {
            "values": torch.from_numpy(values),
            "observed": torch.from_numpy(observed),
            "delta": torch.from_numpy(delta),
            "stay": torch.tensor(stay, dtype=torch.int64),
            "start": torch.tensor(start, dtype=torch.int64),
        }

    def __repr__(self) -> str:
        return (f"WindowDataset(split={self.split!r}, length={self.length}, stride={self.stride}, "
                f"windows={len(self)}, stays={self.n_stays}, short_stays={self.n_short_stays}, "
                f"features={self.n_features})")


CROPS = ("start", "random")


class StayCropDataset(WindowDataset):
    """One sample per stay of `split` with n_hours >= `min_length`: a crop of
    min(n_hours, `length`) consecutive hours, so a stay shorter than `length` gives a shorter
    sample (the collator pads a batch only to its own longest sample).

    `crop="start"` takes hours [0, L); `crop="random"` starts at an hour drawn from a generator
    seeded by (seed, epoch, stay): `set_epoch(e)` before each epoch's iterator (workers copy the
    dataset when the iterator starts), so a resumed run crops exactly as the first one did.

    Positions are hours since the crop start (the sample's own hour 0, 1, ...), as in the fixed
    windows: the position table then needs only `length` rows however long a stay is, and the
    probe, which embeds hours [0, H) of each stay (`for_hours`), reads positions 0..H-1 that
    every crop trained on. Hours since ICU admission would leave the positions of a random crop
    beyond `length` unbounded (stays run to weeks) and rarely seen.

    Items are those of WindowDataset with [L, F] arrays, L varying; `start` is the crop's first
    hour of the stay.
    """

    def __init__(self, processed, split: str | None, length: int, min_length: int,
                 crop: str = "start", seed: int = 0, max_delta: float = 48.0,
                 augment: AugmentConfig | None = None):
        if not 1 <= min_length <= length:
            raise ValueError(f"need 1 <= min_length <= length, got min_length={min_length}, "
                             f"length={length}")
        if crop not in CROPS:
            raise ValueError(f"crop: unknown crop {crop!r}; choose one of {list(CROPS)}")
        stay_rows, n_hours = self._open(processed, split, length, max_delta, augment, seed)
        self.min_length = int(min_length)
        self.crop = crop
        keep = n_hours >= self.min_length
        self.n_short_stays = int((~keep).sum())
        self.stay_rows = stay_rows[keep]
        self.stay_hours = n_hours[keep]
        # (stay row, 0): the crop's start depends on the epoch when crop="random"
        self.window_index = np.stack([self.stay_rows, np.zeros_like(self.stay_rows)], axis=1)

    @property
    def sample_lengths(self) -> np.ndarray:
        return np.minimum(self.stay_hours, self.length)

    def crop_start(self, i: int) -> int:
        """First hour of sample i's crop this epoch."""
        spare = int(self.stay_hours[i]) - min(int(self.stay_hours[i]), self.length)
        if self.crop == "start" or spare == 0:
            return 0
        rng = np.random.default_rng([self.seed, self.epoch, int(self.stay_rows[i])])
        return int(rng.integers(0, spare + 1))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < 0:
            i += len(self)
        length = min(int(self.stay_hours[i]), self.length)
        return self._item(int(self.stay_rows[i]), self.crop_start(i), length)

    def __repr__(self) -> str:
        return (f"StayCropDataset(split={self.split!r}, length={self.length}, "
                f"min_length={self.min_length}, crop={self.crop!r}, samples={len(self)}, "
                f"stays={self.n_stays}, short_stays={self.n_short_stays}, features={self.n_features})")
