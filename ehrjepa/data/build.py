"""One preprocessing run, whatever the source: the part every source shares.

A source (`mimic.py`: MIMIC-IV tables, `meds.py`: a MEDS dataset, `physionet2012.py`,
`physionet2019.py`: the PhysioNet/CinC challenges) is one module with one class of this shape:

    class XSource:
        name = "x"                 # its name in the catalog (catalog.SOURCES)
        inputs: list[Path]         # what it reads (OUT may be none of them, nor hold or lie in one)
        def read_stays(self, catalog, run) -> StayTable
        def fold_events(self, catalog, stays: StayTable, sums, counts, run) -> None

`read_stays` gives the stay table (ids, hours, outcome labels, stay columns, and hourly labels
where the source has them); `fold_events` then
folds every event into the [total_hours, F] sums and counts (`events.fold_events` for sources
that place events themselves, the fused scan kernels of drivers.py for the MIMIC and MEDS
tables). Both record the accounting of what they read in `run` (a `Run`): per file group rows
read = kept + dropped by reason, warnings, seconds. Everything else is here, once: the feature
catalog of the source, OUT built beside its place and moved in whole (staging.py), the split (a
`--splits` file, else the source's own, else the seeded subject hash), hourly values under each
feature's aggregation, train-only normalisation, the files of processed.py, and the manifest.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .catalog import Catalog, load_catalog
from .drivers import finish_hours
from .processed import (SPLITS, finish_outputs, open_outputs, split_of_subjects,
                        write_hour_labels, write_manifest, write_meta, write_stays)
from .staging import pause_point, staged_output
from .stays import Stays


@dataclass
class StayTable:
    """What a source's `read_stays` gives: the stays and their per-stay columns."""
    stays: Stays
    death: np.ndarray  # int8 per stay: in-hospital death, 1 / 0 / -1 unknown
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # int8 outcome columns
    # more stay columns (processed.STATIC_COLUMNS and source-specific ones): float64 with NaN for
    # null, int64, or a list of str
    columns: dict[str, object] = field(default_factory=dict)
    los_days: np.ndarray | None = None  # float64 per stay (NaN unknown); default (outtime - intime)
    split: np.ndarray | None = None  # the source's own split codes (0 train, 1 val, 2 test)
    split_source: str | None = None
    # hourly labels (docs/DESIGN.md, "Hourly labels"): {name: int8 [total_hours] in the stays'
    # row order, 1 / 0 / -1 unknown}; written to OUT/hour_labels.npy, none: no such file
    hour_labels: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Run:
    """The accounting of one preprocessing run, filled by the source and by `build`."""
    progress: bool = True
    seed: int = 0  # the split seed (a source's own split falls back to the subject hash)
    tables: dict[str, dict] = field(default_factory=dict)  # file group -> read/kept/dropped
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)  # source-specific manifest entries

    def warn(self, msg: str, echo: bool = False) -> None:
        self.warnings.append(msg)
        if echo:
            print(f"ehrjepa preprocess: warning: {msg}", file=sys.stderr)

    def account(self, name: str, path, rows_read: int, kept: int, dropped: dict) -> dict:
        """Record file group `name`: rows read = kept + dropped by reason (else an AssertionError:
        an accounting bug, never bad input)."""
        dropped = {k: int(v) for k, v in dropped.items()}
        if kept + sum(dropped.values()) != rows_read:
            raise AssertionError(f"{path}: rows kept {kept} + dropped {dropped} != read {rows_read}")
        entry = {"path": str(path), "rows_read": int(rows_read), "rows_kept": int(kept),
                 "dropped": dropped}
        self.tables[name] = entry
        return entry


def build(source, out: str | Path, features: str | Path | Catalog | None = None, seed: int = 0,
          splits: str | Path | None = None, progress: bool = True) -> Path:
    """Preprocess `source` into OUT (processed.py's format); returns OUT.

    features: the feature catalog (default: the shipped configs/features.yaml); the processed
    columns are the features the source measures. splits: a file of (stay_id or subject_id,
    split), read_splits_file. OUT is built beside its place and moved in whole, so a failed or
    killed run leaves the previous OUT, or none, never a partial one."""
    t_start = time.perf_counter()
    out = Path(out)
    catalog = features if isinstance(features, Catalog) else load_catalog(features)
    catalog = catalog.for_source(source.name)
    assigned = read_splits_file(splits) if splits is not None else None
    with staged_output(out, inputs=source.inputs) as tmp:
        run = Run(progress=progress, seed=seed)
        t0 = time.perf_counter()
        table = source.read_stays(catalog, run)
        run.seconds.setdefault("stays", time.perf_counter() - t0)
        stays = table.stays
        if assigned is not None:  # before the events: a bad splits file fails fast
            split, split_source = apply_splits_file(assigned, stays), str(os.path.abspath(splits))
        elif table.split is not None:
            split, split_source = table.split, table.split_source
        else:
            split = split_of_subjects(stays.subject_id, seed)
            split_source = f"ehrjepa subject hash, seed {seed}"
        sums, counts = open_outputs(tmp, stays.total_hours, len(catalog.names))
        t0 = time.perf_counter()
        source.fold_events(catalog, table, sums, counts, run)
        run.seconds.setdefault("events", time.perf_counter() - t0)
        pause_point("scan")

        t0 = time.perf_counter()
        kept_by_feature = finish_and_write(tmp, table, split, catalog, seed, sums, counts)
        del sums, counts
        run.seconds["finalize"] = time.perf_counter() - t0
        if "total" in run.manifest and any(f.table for f in catalog.features):
            # MIMIC-IV items' events kept by their table (MEDS: the codes of each table's templates)
            run.manifest["total"]["kept_by_table"] = {
                t: int(sum(k for k, f in zip(kept_by_feature, catalog.features) if f.table == t))
                for t in sorted({f.table for f in catalog.features if f.table})}
        manifest = {"source": source.name, "tables": run.tables} | run.manifest | {
            "warnings": run.warnings, "n_stays": len(stays), "total_hours": stays.total_hours,
            "labels": label_counts(table.labels | {"death_hosp": table.death}),
            **({"hour_labels": label_counts(table.hour_labels)} if table.hour_labels else {}),
            "split_source": split_source,
            "split_counts": {s: int((split == k).sum()) for k, s in enumerate(SPLITS)},
            "kept_by_feature": dict(zip(catalog.names, (int(k) for k in kept_by_feature))),
            "config": os.path.abspath(catalog.path) if catalog.path else None,
            "seconds": {k: round(v, 3) for k, v in run.seconds.items()}
            | {"total": round(time.perf_counter() - t_start, 3)}}
        write_manifest(tmp, manifest)
    return out


def finish_and_write(out: Path, table: StayTable, split: np.ndarray, catalog: Catalog, seed: int,
                     sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Hourly values under each feature's aggregation, normalisation statistics from train
    hours only, and mean.npy, count.npy, stays.parquet and features.json written into `out`.
    Returns the events kept per feature."""
    stays = table.stays
    hour_train = np.repeat(split == 0, stays.n_hours).astype(np.uint8)
    norm_mean, norm_std, kept_by_feature = finish_hours(sums, counts, hour_train,
                                                        catalog.aggregation_codes())
    finish_outputs(out, sums, counts)
    write_stays(out, stays, split, table.death, table.labels, table.columns, table.los_days)
    if table.hour_labels:
        write_hour_labels(out, table.hour_labels, stays.total_hours)
    write_meta(out, catalog.names, norm_mean, norm_std, seed,
               [f.aggregation for f in catalog.features], list(table.hour_labels))
    pause_point("write")
    return kept_by_feature


def label_counts(labels: dict[str, np.ndarray]) -> dict[str, dict[str, int]]:
    """{label: {"1": stays, "0": stays, "-1": stays}} for the manifest."""
    return {k: {str(v): int((x == v).sum()) for v in (1, 0, -1)} for k, x in labels.items()}


# -------------------------------------------------------------------------------------------------
# --splits FILE


@dataclass
class AssignedSplits:
    path: Path
    key: str  # "stay_id" or "subject_id"
    ids: np.ndarray  # int64, sorted
    codes: np.ndarray  # int8 per id (processed.SPLITS index)


def read_splits_file(path: str | Path) -> AssignedSplits:
    """A CSV or parquet file with columns `stay_id` (or `subject_id`) and `split` (train, val,
    test); errors name the file and the first bad row."""
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--splits {path}: no such file")
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={"split": pa.string(), "stay_id": pa.int64(),
                              "subject_id": pa.int64()}))
    except (pa.ArrowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"--splits {path}: cannot read it as {'parquet' if path.suffix == '.parquet' else 'CSV'} ({first})") from None
    key = next((k for k in ("stay_id", "subject_id") if k in table.column_names), None)
    if key is None or "split" not in table.column_names:
        raise ValueError(f"--splits {path}: needs columns stay_id (or subject_id) and split; "
                         f"it has {', '.join(table.column_names) or 'none'}")
    ids = table[key].cast(pa.int64())
    if ids.null_count:
        row = ids.is_null().to_numpy(zero_copy_only=False).argmax()
        raise ValueError(f"--splits {path}: row {row + 1}: empty {key}")
    ids = ids.to_numpy()
    names = table["split"].cast(pa.string()).to_pylist()
    codes = np.empty(len(names), np.int8)
    for r, name in enumerate(names):
        if name not in SPLITS:
            raise ValueError(f"--splits {path}: row {r + 1}: split {name!r} is not one of "
                             f"{', '.join(SPLITS)}")
        codes[r] = SPLITS.index(name)
    order = np.argsort(ids, kind="stable")
    ids, codes = ids[order], codes[order]
    twice = np.flatnonzero(ids[1:] == ids[:-1])
    if len(twice):
        raise ValueError(f"--splits {path}: {key} {ids[twice[0]]} is listed twice")
    return AssignedSplits(path, key, ids, codes)


def apply_splits_file(assigned: AssignedSplits, stays: Stays) -> np.ndarray:
    """Split codes per stay from the file; stays whose id the file lacks are an error naming the
    first few (a subject's stays share its split when the file is by subject_id)."""
    want = stays.stay_id if assigned.key == "stay_id" else stays.subject_id
    pos = np.clip(np.searchsorted(assigned.ids, want), 0, max(len(assigned.ids) - 1, 0))
    found = assigned.ids[pos] == want if len(assigned.ids) else np.zeros(len(want), bool)
    if not found.all():
        missing = np.unique(want[~found])
        shown = ", ".join(str(x) for x in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"--splits {assigned.path}: {len(missing)} {assigned.key}s of the data "
                         f"are not in it ({shown})")
    return assigned.codes[pos].astype(np.int8)
