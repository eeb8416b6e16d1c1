"""The processed-data format written by `ehrjepa preprocess` (see docs/DESIGN.md).

    OUT/stays.parquet   one row per stay, in offset order
    OUT/mean.npy        float32 [total_hours, F], NaN where a feature was not observed that hour
    OUT/count.npy       uint16  [total_hours, F], events averaged into that hour (saturating)
    OUT/features.json   feature names, train-only normalisation, split seed and fractions
    OUT/manifest.json   per input table: rows read, kept, dropped by reason; warnings
    OUT/hour_labels.npy int8 [total_hours, K], 1 / 0 / -1 unknown: hourly labels, named by
                        features.json's "hour_labels" (only for sources that have them)

`open_processed(OUT)` memory-maps the arrays, so opening is cheap whatever their size. The
writing side lives here too (`open_outputs`, `finish_outputs`, `write_stays`, `write_meta`), so
that the format has one owner; `ehrjepa preprocess` calls it on a temporary folder (staging.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .staging import reserve_space

SPLITS = ("train", "val", "test")
FRACTIONS = (0.8, 0.1, 0.1)
STAY_COLUMNS = ("stay_id", "subject_id", "hadm_id", "intime", "outtime", "n_hours", "offset",
                "split", "death_hosp", "los_days")
# outcome columns after them (int8, 1 / 0 / -1; outcomes.py): readmit_icu and readmit_30d always,
# phenotype_<name> where the data has diagnoses. Folders written before them lack these columns:
# readers treat a missing column as "task unavailable".
OUTCOME_COLUMNS = ("readmit_icu", "readmit_30d")
# static descriptors of a stay, null where unknown: age (years at ICU admission), sex (0 female,
# 1 male), height_cm, weight_kg (the first weight), icu_type (the 2012 challenge's 1 coronary care,
# 2 cardiac surgery recovery, 3 medical, 4 surgical; the 2019 challenge's unit as 3 medical,
# 4 surgical). `ehrjepa probe --static` appends them to every method's inputs.
STATIC_COLUMNS = ("age", "sex", "height_cm", "weight_kg", "icu_type")
HOUR_LABELS = "hour_labels.npy"  # hourly labels, where the source has them


@dataclass
class Processed:
    path: Path
    features: list[str]
    stays: "pyarrow.Table"  # noqa: F821
    mean: np.ndarray  # float32 [total_hours, F], memory-mapped
    count: np.ndarray  # uint16 [total_hours, F], memory-mapped
    norm_mean: np.ndarray  # float32 [F]
    norm_std: np.ndarray  # float32 [F]
    manifest: dict
    split_seed: int = 0
    aggregation: list[str] | None = None  # per feature: mean, sum or last (older folders: None)
    # hourly labels (docs/DESIGN.md, "Hourly labels"): int8 [total_hours, K] memory-mapped, 1 /
    # 0 / -1 unknown, column k named hour_label_names[k]; None (and no names) where the folder
    # has none
    hour_labels: np.ndarray | None = None
    hour_label_names: list[str] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def n_stays(self) -> int:
        return self.stays.num_rows

    @property
    def offset(self) -> np.ndarray:
        return self.stays.column("offset").to_numpy()

    @property
    def n_hours(self) -> np.ndarray:
        return self.stays.column("n_hours").to_numpy()

    def split_indices(self, split: str) -> np.ndarray:
        """Row indices (into .stays) of the stays in `split` (train, val or test)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        col = self.stays.column("split").to_numpy(zero_copy_only=False)
        return np.flatnonzero(col == split).astype(np.int64)

    def hour_label(self, name: str) -> np.ndarray:
        """Hourly label `name`: int8 [total_hours] (rows as mean/count), 1 / 0 / -1 unknown."""
        if name not in self.hour_label_names:
            have = ", ".join(self.hour_label_names) or "none"
            raise KeyError(f"{self.path}: no hourly label {name!r} (hourly labels: {have})")
        return self.hour_labels[:, self.hour_label_names.index(name)]

    def stay_hours(self, i: int) -> slice:
        """The rows of mean/count that hold stay i's hours."""
        off = int(self.stays.column("offset")[i].as_py())
        return slice(off, off + int(self.stays.column("n_hours")[i].as_py()))


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # zero-size arrays cannot be memory-mapped
        return np.load(path)


def open_processed(out: str | Path) -> Processed:
    """Open a preprocessed directory; arrays are memory-mapped, not loaded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    for name in ("stays.parquet", "mean.npy", "count.npy", "features.json", "manifest.json"):
        if not (out / name).exists():
            raise FileNotFoundError(f"{out / name} not found: is {out} the --out of `ehrjepa preprocess`?")
    meta = json.loads((out / "features.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    stays = pq.read_table(out / "stays.parquet")
    for name in ("intime", "outtime"):  # parquet has no second unit: it comes back as ms
        i = stays.schema.get_field_index(name)
        if i >= 0 and stays.schema.field(i).type != pa.timestamp("s"):
            stays = stays.set_column(i, name, stays.column(i).cast(pa.timestamp("s")))
    mean = _load_array(out / "mean.npy")
    count = _load_array(out / "count.npy")
    names = list(meta["features"])
    if mean.shape != count.shape or mean.ndim != 2 or mean.shape[1] != len(names):
        raise ValueError(f"{out}: mean {mean.shape} / count {count.shape} do not match "
                         f"{len(names)} features")
    label_names = list(meta.get("hour_labels") or [])
    hour_labels = None
    if label_names:
        if not (out / HOUR_LABELS).exists():
            raise FileNotFoundError(f"{out / HOUR_LABELS} not found, but {out / 'features.json'} "
                                    f"names hourly labels ({', '.join(label_names)})")
        hour_labels = _load_array(out / HOUR_LABELS)
        if hour_labels.shape != (mean.shape[0], len(label_names)) or hour_labels.dtype != np.int8:
            raise ValueError(f"{out / HOUR_LABELS}: {hour_labels.dtype} {hour_labels.shape}, "
                             f"expected int8 ({mean.shape[0]}, {len(label_names)}): "
                             f"{len(label_names)} hourly labels of {mean.shape[0]} hours")
    return Processed(path=out, features=names, stays=stays, mean=mean, count=count,
                     norm_mean=np.asarray(meta["norm"]["mean"], np.float32),
                     norm_std=np.asarray(meta["norm"]["std"], np.float32),
                     manifest=manifest, split_seed=int(meta["split"]["seed"]),
                     hour_labels=hour_labels, hour_label_names=label_names,
                     aggregation=meta.get("aggregation"))


def split_of_subjects(subject_id: np.ndarray, seed: int,
                      fractions: tuple[float, float, float] = FRACTIONS) -> np.ndarray:
    """Deterministic train/val/test split by subject: a splitmix64 hash of (subject_id, seed).

    Returns int8 codes (0 train, 1 val, 2 test); every stay of a subject lands in the same split.
    """
    mask = (1 << 64) - 1
    x = subject_id.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & mask)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    u = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    cut = np.cumsum(fractions)
    return np.where(u < cut[0], 0, np.where(u < cut[1], 1, 2)).astype(np.int8)


# -------------------------------------------------------------------------------------------------
# writing


def open_outputs(out: Path, total_hours: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """(sums, counts): OUT/mean.npy float32 and OUT/count.npy uint16 [total_hours, F], zeroed and
    memory-mapped for the event kernels to add into; finish_outputs turns sums into means."""
    shape = (total_hours, n_features)
    return _open_output(out / "mean.npy", shape, np.float32), \
        _open_output(out / "count.npy", shape, np.uint16)


def finish_outputs(out: Path, means: np.ndarray, counts: np.ndarray) -> None:
    _finish_array(out / "mean.npy", means)
    _finish_array(out / "count.npy", counts)


def write_meta(out: Path, names: list[str], norm_mean: np.ndarray, norm_std: np.ndarray,
               seed: int, aggregations: list[str] | None = None,
               hour_labels: list[str] | None = None) -> None:
    """OUT/features.json: feature names, their hourly aggregations, train-only normalisation,
    split seed and fractions, and the names of the hourly labels (the columns of
    hour_labels.npy) where there are any."""
    meta = {"features": names, "aggregation": aggregations or ["mean"] * len(names),
            "norm": {"mean": [float(x) for x in norm_mean], "std": [float(x) for x in norm_std]},
            "split": {"seed": int(seed), "fractions": list(FRACTIONS)}}
    if hour_labels:
        meta["hour_labels"] = list(hour_labels)
    (out / "features.json").write_text(json.dumps(meta, indent=1))


def write_hour_labels(out: Path, labels: dict[str, np.ndarray], total_hours: int) -> None:
    """OUT/hour_labels.npy: int8 [total_hours, K], column k the k-th of `labels` ({name: int8
    [total_hours] in the stays' row order, 1 / 0 / -1 unknown}); write_meta names them."""
    for name, v in labels.items():
        v = np.asarray(v)
        if v.shape != (total_hours,) or not np.isin(v, (-1, 0, 1)).all():
            raise AssertionError(f"hourly label {name!r}: {v.dtype} {v.shape}, expected "
                                 f"({total_hours},) of 1 / 0 / -1")
    arr = np.empty((total_hours, len(labels)), np.int8)
    for k, v in enumerate(labels.values()):
        arr[:, k] = v
    np.save(out / HOUR_LABELS, arr)


def write_manifest(out: Path, manifest: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _open_output(path: Path, shape: tuple[int, int], dtype) -> np.ndarray:
    """A zero-filled .npy file opened as a writable memory map (plain array when empty).

    Its blocks are allocated up front: a full disk is then an error here, not a SIGBUS when a
    page of the map is first written."""
    if shape[0] * shape[1] == 0:
        return np.zeros(shape, dtype)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    reserve_space(path)
    return arr


def _finish_array(path: Path, arr: np.ndarray) -> None:
    """Finish an output array. A memory map needs nothing: its pages are the file's pages in the
    page cache, written back by the kernel like any file write (a flush would msync, i.e. wait for
    the disk, which np.save does not either). Empty outputs are plain arrays: save them."""
    if not isinstance(arr, np.memmap):
        np.save(path, arr)


def write_stays(out: Path, stays, split: np.ndarray, death: np.ndarray,
                labels: dict[str, np.ndarray] | None = None, columns: dict | None = None,
                los_days: np.ndarray | None = None) -> None:
    """OUT/stays.parquet from a stays.Stays, their split codes, in-hospital death, the outcome
    labels {column: int8 per stay} (outcomes.py; 1 yes, 0 no, -1 unknown or excluded) and more
    stay columns {name: float64 per stay, NaN null; int64; or a list of str} (STATIC_COLUMNS and
    a source's own). los_days: default (outtime - intime) in days; NaN is null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .readers import BAD, MISSING

    # arrays are built from buffers: pa.array() makes pyarrow import pandas (0.3 s of start-up)
    missing = (stays.hadm_id == MISSING) | (stays.hadm_id == BAD)
    table = pa.table({
        "stay_id": _arrow(pa, stays.stay_id, pa.int64()),
        "subject_id": _arrow(pa, stays.subject_id, pa.int64()),
        "hadm_id": _arrow(pa, stays.hadm_id, pa.int64(), valid=~missing),
        "intime": _arrow(pa, stays.intime, pa.timestamp("s")),
        "outtime": _arrow(pa, stays.outtime, pa.timestamp("s")),
        "n_hours": _arrow(pa, stays.n_hours.astype(np.int32), pa.int32()),
        "offset": _arrow(pa, stays.offset, pa.int64()),
        "split": _arrow_strings(pa, split, SPLITS),
        "death_hosp": _arrow(pa, death.astype(np.int8), pa.int8()),
        "los_days": _floats(pa, (stays.outtime - stays.intime) / 86400.0 if los_days is None
                            else np.asarray(los_days, np.float64)),
    } | {name: _arrow(pa, np.asarray(v).astype(np.int8), pa.int8())
         for name, v in (labels or {}).items()}
      | {name: _column(pa, v) for name, v in (columns or {}).items()})
    pq.write_table(table, out / "stays.parquet")


def _arrow(pa, values: np.ndarray, type_, valid: np.ndarray | None = None):
    """A pyarrow array over the bytes of a numpy array (nulls where `valid` is False)."""
    values = np.ascontiguousarray(values)
    bitmap = None
    if valid is not None and not valid.all():
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(type_, len(values), [bitmap, pa.py_buffer(values)])


def _floats(pa, values: np.ndarray):
    """float64 with nulls where NaN."""
    values = np.asarray(values, np.float64)
    return _arrow(pa, values, pa.float64(), valid=~np.isnan(values))


def _column(pa, values):
    """A stay column: float (NaN null), integer, or a list of str."""
    if isinstance(values, list):  # strings: through their distinct words (pa.array imports pandas)
        words = tuple(sorted(set(values)))
        index = {w: k for k, w in enumerate(words)}
        return _arrow_strings(pa, np.array([index[v] for v in values], np.int64), words)
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return _floats(pa, values)
    return _arrow(pa, values.astype(np.int64), pa.int64())


def _arrow_strings(pa, codes: np.ndarray, words: tuple[str, ...]):
    """A pyarrow string array of words[codes]."""
    enc = [w.encode() for w in words]
    lengths = np.array([len(w) for w in enc], np.int32)
    offsets = np.zeros(len(codes) + 1, np.int32)
    np.cumsum(lengths[codes], out=offsets[1:])
    data = b"".join(enc[c] for c in codes.tolist())
    return pa.Array.from_buffers(pa.string(), len(codes),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])
