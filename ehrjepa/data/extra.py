"""More unlabelled pretraining data from other processed folders (`data.extra`, issue 23).

`AlignedProcessed(extra, primary)` shows an extra processed folder as `open_processed` would if
it had been written with the primary folder's features and normalisation, so WindowDataset and
StayCropDataset read it unchanged:
- features are matched by name: the extra's columns that the primary lacks are dropped; the
  primary's features that the extra lacks are NaN in every hour (never observed there);
- `norm_mean` / `norm_std` are the PRIMARY's, so one value means the same input in both (the
  sources share names and units through the catalog);
- `stays`, `split_indices` and `split_seed` are the extra folder's own.
Where the feature lists are identical the extra's memory map is used as it is; otherwise the
realigned `mean` is one float32 array in memory (hours x primary features x 4 bytes: 117 MB for
the 2019 challenge under the 2012 challenge's 37 features). A dataset over it pickles that array
with it (a memory map would travel as its path), which forked DataLoader workers never do.

`TrainSamples(parts)` concatenates the primary's training dataset and the extras' ones into one
dataset with what the trainer asks of it (`sample_lengths`, `set_epoch`, `n_features`, and the
primary's `data_identity`). An item's `stay` is its row in the stay tables taken one after the
other (the primary's first, then each extra's), so items of different folders never share the
(stay, start) that seeds the masks.
"""
from __future__ import annotations

import bisect
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

EXTRA_SPLITS = ("train", "all")  # data.extra_split: the extra folder's train split, or every stay
_ROWS = 1 << 16  # hours copied per block when realigning


class AlignedProcessed:
    """An extra processed folder under the primary's feature list and normalisation (above)."""

    def __init__(self, extra, primary):
        self.path = Path(extra.path)
        self.source_features = list(extra.features)
        self.features = list(primary.features)
        have = {name: j for j, name in enumerate(self.source_features)}
        self.shared = [f for f in self.features if f in have]
        self.missing = [f for f in self.features if f not in have]  # primary features it lacks
        wanted = set(self.features)
        self.dropped = [f for f in self.source_features if f not in wanted]  # its own, unused
        self.stays = extra.stays
        self.split_seed = int(getattr(extra, "split_seed", 0))
        self.norm_mean = np.asarray(primary.norm_mean, np.float32)
        self.norm_std = np.asarray(primary.norm_std, np.float32)
        self.manifest = getattr(extra, "manifest", {})
        self._extra = extra
        # shared features whose hourly aggregation (mean / sum / last) differs between the folders
        a, b = getattr(primary, "aggregation", None), getattr(extra, "aggregation", None)
        self.other_aggregation = [] if a is None or b is None else [
            f for f, how in zip(self.features, a) if f in have and b[have[f]] != how]
        if self.source_features == self.features:
            self.mean = extra.mean  # the same columns: the memory map as it is
        else:
            self.mean = realign(extra.mean, [have.get(f, -1) for f in self.features])

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_stays(self) -> int:
        return self.stays.num_rows

    def split_indices(self, split: str) -> np.ndarray:
        return self._extra.split_indices(split)


def realign(mean: np.ndarray, columns: list[int]) -> np.ndarray:
    """float32 [hours, len(columns)]: column k is `mean`'s column columns[k], all NaN where -1.
    Read in row blocks, so a memory map is read front to back once."""
    columns = np.asarray(columns, np.int64)
    keep = np.flatnonzero(columns >= 0)
    out = np.full((mean.shape[0], len(columns)), np.nan, np.float32)
    for r in range(0, mean.shape[0], _ROWS):
        block = np.asarray(mean[r:r + _ROWS])
        out[r:r + _ROWS, keep] = block[:, columns[keep]]
    out.flags.writeable = False  # a view of data, like a memory map (and the same numba type)
    return out


class TrainSamples(Dataset):
    """The samples of several datasets (the primary's first) as one, for the trainer."""

    def __init__(self, parts: list, stay_counts: list[int]):
        if not parts:
            raise ValueError("TrainSamples needs at least one dataset")
        self.parts = list(parts)
        self.n_features = parts[0].n_features
        if any(p.n_features != self.n_features for p in parts):
            raise ValueError("TrainSamples: the datasets have different numbers of features")
        self.length = parts[0].length
        self.ends = np.cumsum([len(p) for p in parts]).tolist()
        # an item's stay row, shifted past the stay tables before its own
        self.stay_base = np.concatenate([[0], np.cumsum(stay_counts)[:-1]]).astype(np.int64).tolist()

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} of {len(self)}")
        k = bisect.bisect_right(self.ends, i)
        item = self.parts[k][i - (self.ends[k - 1] if k else 0)]
        if self.stay_base[k]:
            item["stay"] = item["stay"] + self.stay_base[k]
        return item

    @property
    def sample_lengths(self) -> np.ndarray:
        return np.concatenate([p.sample_lengths for p in self.parts])

    def set_epoch(self, epoch: int) -> None:
        for p in self.parts:
            p.set_epoch(epoch)

    def __repr__(self) -> str:
        return f"TrainSamples({len(self)} samples: {' + '.join(repr(p) for p in self.parts)})"


def extra_summary(folder: str, data, aligned: AlignedProcessed, split: str) -> str:
    """The line `ehrjepa train` prints for one extra folder."""
    n = aligned.n_features
    lacks = (f"; lacks {len(aligned.missing)}: {', '.join(aligned.missing)}" if aligned.missing
             else "")
    which = "train stays" if split == "train" else "stays (all splits)"
    line = (f"extra data {folder}: {data.n_stays - data.n_short_stays} of {data.n_stays} {which} "
            f"used, {len(data)} samples, {data.n_short_stays} stays too short; shared features "
            f"{len(aligned.shared)} of {n}{lacks}")
    if aligned.dropped:
        line += f"; {len(aligned.dropped)} of its own unused"
    if aligned.other_aggregation:
        line += f"; aggregated differently: {', '.join(aligned.other_aggregation)}"
    return line
