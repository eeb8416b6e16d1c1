"""`ehrjepa preprocess`: MIMIC-IV tables -> hourly per-stay arrays (format in processed.py).

Rules (docs/DESIGN.md, issue 2):
- One series per ICU stay (icu/icustays). n_hours = ceil((outtime - intime) / 1 h); hour h holds
  events with intime + h <= charttime < intime + h + 1 h. Events in [intime - 6 h, intime) count
  in hour 0; earlier events and events at or after outtime are dropped as outside the stay.
- chartevents belong to their stay_id. labevents belong to the ICU stay of the same subject whose
  window [intime - 6 h, outtime) holds charttime, whatever hadm_id says; where two windows hold
  it, a stay whose [intime, outtime) holds it wins, then the earlier intime.
- Values are converted (catalog `convert`), then dropped outside the feature's valid range;
  empty or non-numeric values and itemids outside the catalog are dropped.
- Per hour and feature: mean and count of the kept events.
Every input row is either kept or dropped for a named reason in OUT/manifest.json.

Speed: stays are known up front, so the [total_hours, F] sum/count arrays are preallocated (as
memory maps of the output files) and each streamed block of events is folded into them by one
numba loop: itemid -> feature through a dense array, stay_id -> stay row by binary search with a
last-hit cache (events come sorted by stay), hour by integer arithmetic. Memory stays bounded:
the input is read in 64 MB blocks and the pages of the output maps are released after each block.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
import time
from pathlib import Path

import numba as nb
import numpy as np

from .catalog import Catalog, load_catalog
from .staging import pause_point, reserve_space, staged_output
from .processed import FRACTIONS, SPLITS, split_of_subjects
from .tables import (BAD, BAD_ROW, BLOCK_BYTES, KIND_FLOAT, KIND_INT, KIND_TIME, MISSING, NEED_MORE,
                     OK, PARALLEL_BYTES, CsvBytes, TableStats, _column_plan, _next_newline,
                     _Progress, _raise_bad, arrow_valid, fast_row, find_table, iter_parquet_arrow,
                     iter_table, parse_block,
                     parse_float, parse_int, parse_time_fast, read_table, table_format)

HOUR = 3600
LOOKBACK = 6 * HOUR
COUNT_MAX = 65535
# drop reasons of the event tables, in kernel code order
REASONS = ("unknown_itemid", "no_value", "out_of_range", "bad_timestamp", "unknown_stay",
           "no_stay_for_subject", "outside_stay", "count_saturated")
(R_ITEMID, R_VALUE, R_RANGE, R_TIME, R_STAY, R_SUBJECT, R_OUTSIDE, R_SATURATED) = range(len(REASONS))
CHART_REASONS = ("unknown_itemid", "no_value", "out_of_range", "bad_timestamp", "unknown_stay",
                 "outside_stay", "count_saturated")
LAB_REASONS = ("unknown_itemid", "no_value", "out_of_range", "bad_timestamp",
               "no_stay_for_subject", "outside_stay", "count_saturated")
RELEASE_BYTES = 64 << 20  # release output-map pages after each block once the maps are this big

TABLES = {  # name -> (module, {column: kind}) of what is read
    "patients": ("hosp", {"subject_id": KIND_INT}),
    "admissions": ("hosp", {"hadm_id": KIND_INT, "hospital_expire_flag": KIND_INT}),
    "icustays": ("icu", {"subject_id": KIND_INT, "hadm_id": KIND_INT, "stay_id": KIND_INT,
                         "intime": KIND_TIME, "outtime": KIND_TIME}),
    "labevents": ("hosp", {"subject_id": KIND_INT, "itemid": KIND_INT, "charttime": KIND_TIME,
                           "valuenum": KIND_FLOAT}),
    "chartevents": ("icu", {"stay_id": KIND_INT, "itemid": KIND_INT, "charttime": KIND_TIME,
                            "valuenum": KIND_FLOAT}),
}


# -------------------------------------------------------------------------------------------------
# numba kernels


@nb.njit(cache=True, inline="always", error_model="numpy")
def _feature_value(itemid, value, feat, add, mul, low, high):
    """(feature column, converted value), or (-1 - reason, 0) for a dropped event."""
    if itemid < 0 or itemid >= feat.shape[0]:
        return -1 - R_ITEMID, 0.0
    f = feat[itemid]
    if f < 0:
        return -1 - R_ITEMID, 0.0
    if value != value:
        return -1 - R_VALUE, 0.0
    v = (value + add[itemid]) * mul[itemid]
    if not (v >= low[f] and v <= high[f]):
        return -1 - R_RANGE, 0.0
    return f, v


@nb.njit(cache=True, inline="always", error_model="numpy")
def _hour(t, t_in, t_out, n_hours):
    """Hour of the stay that holds time t, or -1 when t is outside [t_in - 6 h, t_out)."""
    if t >= t_in:
        if t < t_out:
            return (t - t_in) // HOUR
        return -1
    if t >= t_in - LOOKBACK and n_hours > 0:
        return 0
    return -1


@nb.njit(cache=True, inline="always", error_model="numpy")
def _add(sums, counts, row, f, v, dropped):
    c = counts[row, f]
    if c >= COUNT_MAX:
        dropped[R_SATURATED] += 1
        return 0
    counts[row, f] = c + 1
    sums[row, f] += v
    return 1


@nb.njit(cache=True, inline="always", error_model="numpy")
def _find(sorted_ids, x):
    """Index of x in sorted_ids, or -1."""
    lo = 0
    hi = sorted_ids.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if sorted_ids[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    if lo < sorted_ids.shape[0] and sorted_ids[lo] == x:
        return lo
    return -1


@nb.njit(cache=True, nogil=True, error_model="numpy")
def aggregate_chartevents(stay_id, charttime, itemid, value, stay_ids, intime, outtime, offset,
                          n_hours, feat, add, mul, low, high, sums, counts, dropped):
    """Fold chartevents rows into sums/counts [total_hours, F]; stays sorted by stay_id.

    Returns the number of rows kept; dropped[reason] counts the others."""
    kept = 0
    last_id = MISSING
    row = -1
    for r in range(stay_id.shape[0]):
        f, v = _feature_value(itemid[r], value[r], feat, add, mul, low, high)
        if f < 0:
            dropped[-1 - f] += 1
            continue
        t = charttime[r]
        if t == MISSING or t == BAD:
            dropped[R_TIME] += 1
            continue
        sid = stay_id[r]
        if sid != last_id:
            last_id = sid
            row = _find(stay_ids, sid) if sid != MISSING and sid != BAD else -1
        if row < 0:
            dropped[R_STAY] += 1
            continue
        h = _hour(t, intime[row], outtime[row], n_hours[row])
        if h < 0:
            dropped[R_OUTSIDE] += 1
            continue
        kept += _add(sums, counts, offset[row] + h, f, v, dropped)
    return kept


@nb.njit(cache=True, inline="always", error_model="numpy")
def _lab_row(t, k, subj_start, subj_end, by_subject, intime, outtime, offset, n_hours):
    """Hour row of subject k's stay that holds lab time t, or -1 (outside every stay).

    by_subject[subj_start[k]:subj_end[k]] are subject k's stay rows ordered by intime: a stay whose
    [intime, outtime) holds t wins, else the first whose [intime - 6 h, intime) does (hour 0)."""
    core = -1
    look = -1
    for j in range(subj_start[k], subj_end[k]):
        st = by_subject[j]
        if t >= intime[st]:
            if t < outtime[st]:
                core = st
                break
        elif look < 0 and n_hours[st] > 0 and t >= intime[st] - LOOKBACK:
            look = st
    if core >= 0:
        return offset[core] + (t - intime[core]) // HOUR
    if look >= 0:
        return offset[look]
    return -1


@nb.njit(cache=True, inline="always", error_model="numpy")
def _event_row(lab, k, t, subj_start, subj_end, by_subject, intime, outtime, offset, n_hours):
    """Hour row of an event at time t whose key was found at k (-1: not found), or -1 - reason.

    lab False: k is a stay (the rules of aggregate_chartevents); lab True: k is a subject, and
    `_lab_row` picks the stay (the rules of aggregate_labevents)."""
    if k < 0:
        return -1 - (R_SUBJECT if lab else R_STAY)
    if lab:
        row = _lab_row(t, k, subj_start, subj_end, by_subject, intime, outtime, offset, n_hours)
        return row if row >= 0 else -1 - R_OUTSIDE
    h = _hour(t, intime[k], outtime[k], n_hours[k])
    return offset[k] + h if h >= 0 else -1 - R_OUTSIDE


@nb.njit(cache=True, nogil=True, error_model="numpy")
def aggregate_labevents(subject_id, charttime, itemid, value, subjects, subj_start, subj_end,
                        by_subject, intime, outtime, offset, n_hours, feat, add, mul, low, high,
                        sums, counts, dropped):
    """Fold labevents rows into sums/counts, each to the stay of its subject that holds it
    (`_lab_row`)."""
    kept = 0
    last_subject = MISSING
    k = -1
    for r in range(subject_id.shape[0]):
        f, v = _feature_value(itemid[r], value[r], feat, add, mul, low, high)
        if f < 0:
            dropped[-1 - f] += 1
            continue
        t = charttime[r]
        if t == MISSING or t == BAD:
            dropped[R_TIME] += 1
            continue
        s = subject_id[r]
        if s != last_subject:
            last_subject = s
            k = _find(subjects, s) if s != MISSING and s != BAD else -1
        if k < 0:
            dropped[R_SUBJECT] += 1
            continue
        row = _lab_row(t, k, subj_start, subj_end, by_subject, intime, outtime, offset, n_hours)
        if row < 0:
            dropped[R_OUTSIDE] += 1
            continue
        kept += _add(sums, counts, row, f, v, dropped)
    return kept


@nb.njit(cache=True, nogil=True, error_model="numpy")
def scan_arrow(lo, hi, lab, key, key_bits, key_bit0, time, time_bits, time_bit0, time_div, item,
               item_bits, item_bit0, value, value_bits, value_bit0, key_ids, subj_start, subj_end,
               by_subject, intime, outtime, offset, n_hours, feat, add, mul, low, high,
               n_features, out_idx, out_val, dropped):
    """The rows [lo, hi) of a parquet batch, read straight from its Arrow buffers
    (tables.ArrowColumn: data, validity bitmap and bit offset; timestamps in units of
    1 / time_div s), as events for apply_events: the checks of aggregate_chartevents (lab False,
    key = stay_id) or aggregate_labevents (lab True, key = subject_id). Null slots read as empty
    fields do in CSV, so the drops and their order are the same. Emitting events rather than
    adding them lets two threads scan halves of a batch (see scan_events).

    Returns the number of events written to out_idx / out_val (flat index hour_row * n_features
    + feature, value); dropped[reason] counts the other rows."""
    n_out = 0
    last_key = MISSING
    k = -1
    for r in range(lo, hi):
        itemid = item[r] if arrow_valid(item_bits, item_bit0, r) else MISSING
        x = value[r] if arrow_valid(value_bits, value_bit0, r) else np.nan
        f, v = _feature_value(itemid, x, feat, add, mul, low, high)
        if f < 0:
            dropped[-1 - f] += 1
            continue
        if not arrow_valid(time_bits, time_bit0, r):
            dropped[R_TIME] += 1
            continue
        t = time[r]
        if time_div == 1000:  # constant divisors compile to a multiply and a shift
            t = t // 1000
        elif time_div == 1_000_000:
            t = t // 1_000_000
        elif time_div != 1:
            t = t // time_div
        s = key[r] if arrow_valid(key_bits, key_bit0, r) else MISSING
        if s != last_key:
            last_key = s
            k = _find(key_ids, s) if s != MISSING else -1
        row = _event_row(lab, k, t, subj_start, subj_end, by_subject, intime, outtime, offset,
                         n_hours)
        if row < 0:
            dropped[-1 - row] += 1
            continue
        out_idx[n_out] = row * n_features + f
        out_val[n_out] = v
        n_out += 1
    return n_out


PARQUET_BLOCK_ROWS = 1 << 20  # rows per parquet batch handed to scan_arrow
PARALLEL_ROWS = 1 << 14  # a parquet batch is scanned by two threads from twice this many rows
EVENTS_CAP = 1 << 20  # events one scan_events call may emit (rows per call are capped by it)
FUSED_CSV = True  # csv event tables through scan_events; False: parse_block columns + aggregate_*


@nb.njit(cache=True, nogil=True, error_model="numpy")
def scan_events(buf, pos, end, final, ncols, want, col_slot, col_kind, skip_bad, lab, key_ids,
                subj_start, subj_end, by_subject, intime, outtime, offset, n_hours, feat, add, mul,
                low, high, n_features, out_idx, out_val, dropped, bad_info, lastlen):
    """Tokenize CSV rows of buf[pos:end] and turn each into an event or a drop, in one pass.

    The fused form of parse_block + aggregate_chartevents / aggregate_labevents: no column is
    materialised. want[c] is 0 key (stay_id, or subject_id when `lab`), 1 charttime, 2 itemid,
    3 valuenum, -1 for other columns. Fields are converted only as far as needed: the itemid
    first, so rows of items outside the catalog cost no float or timestamp parsing. Kept events
    go to out_idx (flat index hour_row * n_features + feature) and out_val; apply_events adds them
    (so two threads can scan halves of a block without racing on the sums). Rows fast_row cannot
    handle are re-read by parse_block with its full quoting rules and bad-line handling.

    Returns (status, new_pos, rows, lines, n_out) like parse_block.
    """
    fstart = np.zeros(4, np.int64)
    fend = np.zeros(4, np.int64)
    ints = np.empty((3, 1), np.int64)
    floats = np.empty((1, 1), np.float64)
    cap = out_idx.shape[0]
    n_out = 0
    rows = 0
    lines = 0
    last_key = MISSING
    k = -1
    i = pos
    while i < end and rows < cap:
        nxt = fast_row(buf, i, end, ncols, want, fstart, fend, lastlen)
        slow = nxt < 0
        if slow:
            status, new_pos, nr, nl = parse_block(buf, i, end, final, ncols, col_slot, col_kind,
                                                  ints, floats, skip_bad, bad_info)
            lines += nl
            if status == BAD_ROW or nr == 0:
                return status, new_pos, rows, lines, n_out
            i = new_pos
            itemid = ints[2, 0]
        else:
            lines += 1
            i = nxt
            itemid = parse_int(buf, fstart[2], fend[2])
        rows += 1
        # itemid -> feature, value, range (same order of reasons as aggregate_chartevents)
        if itemid < 0 or itemid >= feat.shape[0]:
            dropped[R_ITEMID] += 1
            continue
        f = feat[itemid]
        if f < 0:
            dropped[R_ITEMID] += 1
            continue
        value = floats[0, 0] if slow else parse_float(buf, fstart[3], fend[3])
        if value != value:
            dropped[R_VALUE] += 1
            continue
        v = (value + add[itemid]) * mul[itemid]
        if not (v >= low[f] and v <= high[f]):
            dropped[R_RANGE] += 1
            continue
        t = ints[1, 0] if slow else parse_time_fast(buf, fstart[1], fend[1])
        if t == MISSING or t == BAD:
            dropped[R_TIME] += 1
            continue
        key = ints[0, 0] if slow else parse_int(buf, fstart[0], fend[0])
        if key != last_key:
            last_key = key
            k = _find(key_ids, key) if key != MISSING and key != BAD else -1
        row = _event_row(lab, k, t, subj_start, subj_end, by_subject, intime, outtime, offset,
                         n_hours)
        if row < 0:
            dropped[-1 - row] += 1
            continue
        out_idx[n_out] = row * n_features + f
        out_val[n_out] = v
        n_out += 1
    return OK, i, rows, lines, n_out


@nb.njit(cache=True, nogil=True, error_model="numpy")
def apply_events(idx, val, n, sums, counts, dropped):
    """Add events (flat index, value) to the flat sums/counts; returns how many were kept."""
    kept = 0
    for e in range(n):
        j = idx[e]
        c = counts[j]
        if c >= COUNT_MAX:
            dropped[R_SATURATED] += 1
            continue
        counts[j] = c + 1
        sums[j] += val[e]
        kept += 1
    return kept


@nb.njit(cache=True, nogil=True, error_model="numpy")
def apply_events_in(idx, val, n, lo, hi, sums, counts, dropped):
    """apply_events for the events whose flat index is in [lo, hi) only: two threads that own
    disjoint ranges can add the same events in file order without racing."""
    kept = 0
    for e in range(n):
        j = idx[e]
        if j < lo or j >= hi:
            continue
        c = counts[j]
        if c >= COUNT_MAX:
            dropped[R_SATURATED] += 1
            continue
        counts[j] = c + 1
        sums[j] += val[e]
        kept += 1
    return kept


@nb.njit(cache=True, nogil=True, error_model="numpy")
def finalize_hours(sums, counts, row0, row1, hour_train, stats):
    """In place: sums -> means (NaN where count is 0) for rows [row0, row1); accumulate the train
    rows' per-feature n, sum and sum of squares of hourly means into stats [3, F]."""
    n_features = sums.shape[1]
    for r in range(row0, row1):
        train = hour_train[r]
        for f in range(n_features):
            c = counts[r, f]
            if c == 0:
                sums[r, f] = np.nan
            else:
                m = np.float32(sums[r, f] / np.float32(c))
                sums[r, f] = m
                if train:
                    x = np.float64(m)
                    stats[0, f] += 1.0
                    stats[1, f] += x
                    stats[2, f] += x * x


# -------------------------------------------------------------------------------------------------
# stays


class Stays:
    """ICU stays sorted by stay_id, with their hour rows and lookup arrays for the kernels."""

    def __init__(self, cols: dict[str, np.ndarray], stats: TableStats, dropped: dict):
        ok = np.ones(len(cols["stay_id"]), bool)
        for name in ("stay_id", "subject_id"):
            bad = ok & ((cols[name] == MISSING) | (cols[name] == BAD))
            dropped["bad_id"] += int(bad.sum())
            ok &= ~bad
        for name in ("intime", "outtime"):
            bad = ok & ((cols[name] == MISSING) | (cols[name] == BAD))
            dropped["bad_timestamp"] += int(bad.sum())
            ok &= ~bad
        bad = ok & (cols["outtime"] < cols["intime"])
        dropped["outtime_before_intime"] += int(bad.sum())
        ok &= ~bad
        idx = np.flatnonzero(ok)
        order = idx[np.argsort(cols["stay_id"][idx], kind="stable")]
        sid = cols["stay_id"][order]
        first = np.ones(len(sid), bool)
        first[1:] = sid[1:] != sid[:-1]
        dropped["duplicate_stay"] += int((~first).sum())
        order = order[first]
        self.stay_id = cols["stay_id"][order]
        self.subject_id = cols["subject_id"][order]
        self.hadm_id = cols["hadm_id"][order]
        self.intime = cols["intime"][order]
        self.outtime = cols["outtime"][order]
        self.n_hours = ((self.outtime - self.intime + HOUR - 1) // HOUR).astype(np.int64)
        self.offset = np.zeros(len(order), np.int64)
        if len(order):
            self.offset[1:] = np.cumsum(self.n_hours)[:-1]
        self.total_hours = int(self.n_hours.sum())
        # per subject: stay rows ordered by (intime, stay_id)
        by = np.lexsort((self.stay_id, self.intime, self.subject_id))
        self.by_subject = by.astype(np.int64)
        subj_sorted = self.subject_id[by]
        self.subjects, self.subj_start = np.unique(subj_sorted, return_index=True)
        self.subj_start = self.subj_start.astype(np.int64)
        self.subj_end = np.append(self.subj_start[1:], len(by)).astype(np.int64)
        stats.extra["kept"] = len(order)

    def __len__(self) -> int:
        return len(self.stay_id)


# -------------------------------------------------------------------------------------------------
# the pipeline


def _table_entry(path, stats: TableStats, kept: int, dropped: dict) -> dict:
    dropped = {k: int(v) for k, v in dropped.items()}
    if stats.bad_line or "bad_line" in dropped:
        dropped["bad_line"] = dropped.get("bad_line", 0) + stats.bad_line
    entry = {"path": str(path), "rows_read": int(stats.rows_read), "rows_kept": int(kept),
             "dropped": dropped}
    if kept + sum(dropped.values()) != stats.rows_read:  # an accounting bug, never bad input
        raise AssertionError(f"{path}: rows kept {kept} + dropped {dropped} != read {stats.rows_read}")
    return entry


def _require(mimic_dir: Path, name: str) -> Path:
    module = TABLES[name][0]
    p = find_table(mimic_dir, module, name)
    if p is None:
        raise FileNotFoundError(f"{mimic_dir}/{module}/{name}.csv.gz (or .csv, .parquet) not found")
    return p


def _release(*arrays) -> None:
    """Drop the pages of memory-mapped outputs from this process (they stay in the page cache)."""
    for a in arrays:
        mm = getattr(a, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass


def _open_output(path: Path, shape: tuple[int, int], dtype) -> np.ndarray:
    """A zero-filled .npy file opened as a writable memory map (plain array when empty).

    Its blocks are allocated up front: a full disk is then an error here, not a SIGBUS when a
    page of the map is first written."""
    if shape[0] * shape[1] == 0:
        return np.zeros(shape, dtype)
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    reserve_space(path)
    return arr


def _import_numba_math_without_scipy() -> None:
    """Import numba.np.arraymath with scipy hidden: saves 0.1-0.3 s of start-up.

    numba imports numba.np.arraymath on the first compiled call, and that module probes for BLAS
    by importing scipy.linalg, which is slow and which none of our kernels use. With scipy hidden
    the probe fails fast (numba then uses a plain loop for np.dot-free inner products only); the
    entry is removed right after, so later `import scipy` and numba's np.dot work as usual.
    """
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    key = "scipy" if "scipy" not in sys.modules else "scipy.linalg"
    sys.modules[key] = None
    try:
        import numba.np.arraymath  # noqa: F401
    finally:
        del sys.modules[key]


def preprocess(mimic_dir: str | Path, out: str | Path, config: str | Path | Catalog | None = None,
               on_bad_lines: str = "error", progress: bool = True, seed: int = 0) -> Path:
    """Turn MIMIC_DIR/{hosp,icu} tables into OUT (see processed.py); returns OUT.

    OUT is built in a temporary folder beside it and moved into place at the end (staging.py), so
    a run that fails or is killed leaves the previous OUT, or none, never a partial one."""
    if on_bad_lines not in ("error", "skip"):
        raise ValueError(f"on_bad_lines must be 'error' or 'skip', not {on_bad_lines!r}")
    t_start = time.perf_counter()
    mimic_dir, out = Path(os.path.abspath(mimic_dir)), Path(out)
    if not mimic_dir.is_dir():
        raise FileNotFoundError(f"MIMIC-IV directory not found: {mimic_dir}")
    _import_numba_math_without_scipy()
    catalog = config if isinstance(config, Catalog) else load_catalog(config)
    with staged_output(out) as tmp:
        _build(mimic_dir, tmp, catalog, on_bad_lines, progress, seed, t_start)
    return out


def _build(mimic_dir: Path, out: Path, catalog: Catalog, on_bad_lines: str, progress: bool,
           seed: int, t_start: float) -> None:
    """Write the processed format into the (empty, temporary) folder `out`."""
    names = catalog.names
    n_features = len(names)
    paths = {name: _require(mimic_dir, name) for name in ("patients", "admissions", "icustays",
                                                            "labevents")}
    paths["chartevents"] = find_table(mimic_dir, "icu", "chartevents")
    warnings: list[str] = []
    if paths["chartevents"] is None:
        msg = (f"{mimic_dir}/icu/chartevents.csv.gz (or .csv, .parquet) not found: "
               "no vital signs, labs only")
        warnings.append(msg)
        print(f"ehrjepa preprocess: warning: {msg}", file=sys.stderr)
        del paths["chartevents"]
    manifest_tables: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    # ---- stays
    t0 = time.perf_counter()
    st = TableStats(str(paths["icustays"]))
    cols = read_table(paths["icustays"], TABLES["icustays"][1], on_bad_lines, st)
    stay_drops = {"bad_id": 0, "bad_timestamp": 0, "outtime_before_intime": 0, "duplicate_stay": 0}
    stays = Stays(cols, st, stay_drops)
    manifest_tables["icustays"] = _table_entry(paths["icustays"], st, len(stays), stay_drops)
    seconds["icustays"] = time.perf_counter() - t0

    # ---- admissions: in-hospital death of each stay's admission
    t0 = time.perf_counter()
    st = TableStats(str(paths["admissions"]))
    adm = read_table(paths["admissions"], TABLES["admissions"][1], on_bad_lines, st)
    order = np.argsort(adm["hadm_id"], kind="stable")
    hadm_sorted = adm["hadm_id"][order]
    pos = np.clip(np.searchsorted(hadm_sorted, stays.hadm_id), 0, max(len(order) - 1, 0))
    found = (len(order) > 0) & (hadm_sorted[pos] == stays.hadm_id) if len(order) else \
        np.zeros(len(stays), bool)
    flag = adm["hospital_expire_flag"][order][pos] if len(order) else np.zeros(len(stays), np.int64)
    death = np.where(found & (flag >= 0) & (flag <= 1), flag, -1).astype(np.int8)
    n_unknown = int((death < 0).sum())
    if n_unknown:
        warnings.append(f"{n_unknown} stays have no admission with a 0/1 hospital_expire_flag "
                        "in admissions: death_hosp = -1 (unknown)")
    used = np.isin(adm["hadm_id"], stays.hadm_id)
    manifest_tables["admissions"] = _table_entry(paths["admissions"], st, int(used.sum()),
                                                 {"no_icu_stay": int((~used).sum())})
    seconds["admissions"] = time.perf_counter() - t0

    # ---- patients: count who has an ICU stay; warn about stays of unknown subjects
    st = TableStats(str(paths["patients"]))
    pat = read_table(paths["patients"], TABLES["patients"][1], on_bad_lines, st)
    used = np.isin(pat["subject_id"], stays.subject_id)
    manifest_tables["patients"] = _table_entry(paths["patients"], st, int(used.sum()),
                                               {"no_icu_stay": int((~used).sum())})
    n_orphans = int((~np.isin(stays.subject_id, pat["subject_id"])).sum())
    if n_orphans:
        warnings.append(f"{n_orphans} stays belong to subjects missing from patients")

    # ---- events
    sums = _open_output(out / "mean.npy", (stays.total_hours, n_features), np.float32)
    counts = _open_output(out / "count.npy", (stays.total_hours, n_features), np.uint16)
    big = sums.nbytes + counts.nbytes >= RELEASE_BYTES
    for name in ("chartevents", "labevents"):
        if name not in paths:
            continue
        t0 = time.perf_counter()
        path = paths[name]
        lk = catalog.lookup(name)
        st = TableStats(str(path))
        dropped = np.zeros(len(REASONS), np.int64)
        kept = 0
        if table_format(path) == "parquet":  # numba over the Arrow buffers, reading ahead
            kept = _aggregate_parquet(name, path, lk, stays, sums, counts, n_features, st,
                                      dropped, progress, big)
            blocks = ()
        elif FUSED_CSV:  # tokenize + aggregate, two threads
            kept = _scan_csv_events(name, path, lk, stays, sums, counts, n_features, on_bad_lines,
                                    st, dropped, progress, big)
            blocks = ()
        else:
            blocks = iter_table(path, TABLES[name][1], on_bad_lines, st, progress=progress,
                                desc=name)
        for block in blocks:
            if name == "chartevents":
                kept += aggregate_chartevents(
                    block["stay_id"], block["charttime"], block["itemid"], block["valuenum"],
                    stays.stay_id, stays.intime, stays.outtime, stays.offset, stays.n_hours,
                    lk.feature, lk.add, lk.mul, lk.low, lk.high, sums, counts, dropped)
            else:
                kept += aggregate_labevents(
                    block["subject_id"], block["charttime"], block["itemid"], block["valuenum"],
                    stays.subjects, stays.subj_start, stays.subj_end, stays.by_subject,
                    stays.intime, stays.outtime, stays.offset, stays.n_hours,
                    lk.feature, lk.add, lk.mul, lk.low, lk.high, sums, counts, dropped)
            if big:
                _release(sums, counts)
        if st.rows_read == 0:
            msg = f"{path}: no data rows (header only?): no {name} events"
            warnings.append(msg)
            print(f"ehrjepa preprocess: warning: {msg}", file=sys.stderr)
        pause_point("scan")
        reasons = CHART_REASONS if name == "chartevents" else LAB_REASONS
        manifest_tables[name] = _table_entry(path, st, kept,
                                             {r: int(dropped[REASONS.index(r)]) for r in reasons})
        seconds[name] = time.perf_counter() - t0

    # ---- split, means, train-only normalisation
    t0 = time.perf_counter()
    split = split_of_subjects(stays.subject_id, seed)
    hour_train = np.repeat(split == 0, stays.n_hours).astype(np.uint8)
    stats = np.zeros((3, n_features), np.float64)
    step = max(1, (16 << 20) // max(1, n_features * 6))
    for r0 in range(0, stays.total_hours, step):
        finalize_hours(sums, counts, r0, min(r0 + step, stays.total_hours), hour_train, stats)
        if big:
            _release(sums, counts)
    n, s1, s2 = stats
    with np.errstate(invalid="ignore", divide="ignore"):
        norm_mean = np.where(n > 0, s1 / np.maximum(n, 1), 0.0)
        var = np.where(n > 0, s2 / np.maximum(n, 1) - norm_mean ** 2, 0.0)
    norm_std = np.sqrt(np.maximum(var, 0.0))
    norm_std = np.where((norm_std > 1e-12) & np.isfinite(norm_std), norm_std, 1.0)
    _save_array(out / "mean.npy", sums)
    _save_array(out / "count.npy", counts)
    del sums, counts
    seconds["finalize"] = time.perf_counter() - t0

    # ---- stays.parquet, features.json, manifest.json
    _write_stays(out / "stays.parquet", stays, split, death)
    meta = {"features": names,
            "norm": {"mean": [float(x) for x in norm_mean], "std": [float(x) for x in norm_std]},
            "split": {"seed": int(seed), "fractions": list(FRACTIONS)}}
    (out / "features.json").write_text(json.dumps(meta, indent=1))
    pause_point("write")
    manifest = {"tables": manifest_tables, "warnings": warnings, "n_stays": len(stays),
                "total_hours": stays.total_hours,
                "config": os.path.abspath(catalog.path) if catalog.path else None,
                "seconds": {k: round(v, 3) for k, v in seconds.items()}
                | {"total": round(time.perf_counter() - t_start, 3)}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _aggregate_parquet(name: str, path: Path, lk, stays: Stays, sums: np.ndarray,
                       counts: np.ndarray, n_features: int, st: TableStats, dropped: np.ndarray,
                       progress: bool, big: bool) -> int:
    """Stream a parquet event table through scan_arrow + apply_events; returns rows kept.

    While a background thread decodes the next batch (iter_parquet_arrow), each batch is cut in
    two halves scanned by two threads (numba releases the GIL); their events are then added in
    file order, so saturation and the accounting are those of one sequential pass."""
    import os

    lab = name == "labevents"
    key = "subject_id" if lab else "stay_id"
    key_ids = stays.subjects if lab else stays.stay_id
    sums_flat = sums.reshape(-1)
    counts_flat = counts.reshape(-1)
    halves = [_Half(0), _Half(0)]
    bar = _Progress(path, "parquet", name) if progress else None
    pool = None
    if (os.cpu_count() or 1) > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)

    def scan(h: _Half, b: dict, lo: int, hi: int) -> int:
        if h.idx.shape[0] < hi - lo:
            h.idx = np.empty(hi - lo, np.int64)
            h.val = np.empty(hi - lo, np.float64)
        k, t, i, v = b[key], b["charttime"], b["itemid"], b["valuenum"]
        return scan_arrow(
            lo, hi, lab, k.data, k.valid, k.bit0, t.data, t.valid, t.bit0, t.div, i.data, i.valid,
            i.bit0, v.data, v.valid, v.bit0, key_ids, stays.subj_start, stays.subj_end,
            stays.by_subject, stays.intime, stays.outtime, stays.offset, stays.n_hours,
            lk.feature, lk.add, lk.mul, lk.low, lk.high, n_features, h.idx, h.val, h.dropped)

    def add(h: _Half, ns: tuple[int, int], lo: int, hi: int) -> int:
        return sum(apply_events_in(g.idx, g.val, m, lo, hi, sums_flat, counts_flat, h.dropped)
                   for g, m in zip(halves, ns))

    kept = 0
    try:
        for b in iter_parquet_arrow(path, TABLES[name][1], st, PARQUET_BLOCK_ROWS, bar):
            n = len(b[key].data)
            if pool is None or n < 2 * PARALLEL_ROWS:
                n_out = scan(halves[0], b, 0, n)
                kept += apply_events(halves[0].idx, halves[0].val, n_out, sums_flat, counts_flat,
                                     dropped)
            else:
                fut = pool.submit(scan, halves[1], b, n // 2, n)
                ns = (scan(halves[0], b, 0, n // 2), fut.result())
                # adding: each thread takes both halves' events, in order, for its own index
                # range; a cut at the second half's first event balances rows sorted by stay
                cut = int(halves[1].idx[0]) if ns[1] else sums_flat.shape[0]
                fut = pool.submit(add, halves[1], ns, cut, sums_flat.shape[0])
                kept += add(halves[0], ns, 0, cut) + fut.result()
            for h in halves:
                dropped[:] += h.dropped
                h.dropped[:] = 0
            if big:
                _release(sums, counts)
    finally:
        if pool is not None:
            pool.shutdown()
        if bar is not None:
            bar.close()
    return kept


class _Half:
    """Output buffers of one scan_events call (one per thread)."""

    def __init__(self, cap: int):
        self.idx = np.empty(cap, np.int64)
        self.val = np.empty(cap, np.float64)
        self.dropped = np.zeros(len(REASONS), np.int64)
        self.bad = np.zeros(2, np.int64)
        self.lastlen = None


def _scan_csv_events(name: str, path: Path, lk, stays: Stays, sums: np.ndarray,
                     counts: np.ndarray, n_features: int, on_bad_lines: str, st: TableStats,
                     dropped: np.ndarray, progress: bool, big: bool) -> int:
    """Stream a csv / csv.gz event table through scan_events + apply_events; returns rows kept.

    Each 64 MB block is cut at a newline near its middle and the halves are scanned by two
    threads (numba releases the GIL). The second half's results are used only when the first
    half ends exactly at the cut (a quoted newline could straddle it); else the rest of the block
    is scanned again by one thread. Events are then added in file order, so saturation and the
    accounting are those of one sequential pass.
    """
    import os

    columns = TABLES[name][1]
    key = "subject_id" if name == "labevents" else "stay_id"
    lab = name == "labevents"
    key_ids = stays.subjects if lab else stays.stay_id
    skip_bad = on_bad_lines == "skip"
    sums_flat = sums.reshape(-1)
    counts_flat = counts.reshape(-1)
    bar = _Progress(path, "csv", name) if progress else None
    pool = None
    kept = 0
    with CsvBytes(path, BLOCK_BYTES) as src:
        names = src.names
        ncols = len(names)
        col_slot, col_kind, _, _, slots = _column_plan(names, columns, path)
        # parse_block's slots for the slow path: ints 0 key, 1 charttime, 2 itemid; floats 0 value
        want = np.full(ncols, -1, np.int64)
        order = {key: 0, "charttime": 1, "itemid": 2, "valuenum": 3}
        for c, col in enumerate(names):
            if col in order and col_slot[c] >= 0:
                want[c] = order[col]
                col_slot[c] = min(order[col], 2) if col != "valuenum" else 0
        a, b = _Half(EVENTS_CAP), _Half(EVENTS_CAP)
        a.lastlen = np.zeros(ncols, np.int64)
        b.lastlen = np.zeros(ncols, np.int64)
        if (os.cpu_count() or 1) > 1:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(1)

        def scan(h: _Half, lo: int, hi: int, final: bool):
            return scan_events(src.buf, lo, hi, final, ncols, want, col_slot, col_kind, skip_bad,
                               lab, key_ids, stays.subj_start, stays.subj_end, stays.by_subject,
                               stays.intime, stays.outtime, stays.offset, stays.n_hours,
                               lk.feature, lk.add, lk.mul, lk.low, lk.high, n_features,
                               h.idx, h.val, h.dropped, h.bad, h.lastlen)

        def account(h: _Half, res, line: int) -> None:
            _raise_bad(res[:4], line, path, ncols, h.bad)
            st.rows_read += res[2]
            dropped[:] += h.dropped
            h.dropped[:] = 0
            st.bad_line += int(h.bad[0])
            st.rows_read += int(h.bad[0])
            h.bad[:] = 0

        def take(h: _Half, res, line: int) -> int:
            account(h, res, line)
            return apply_events(h.idx, h.val, res[4], sums_flat, counts_flat, dropped)

        def take_both(ra, rb, line: int) -> int:
            """Both halves' events, added by two threads that each own an index range (the cut
            at the second half's first event balances rows sorted by stay)."""
            account(a, ra, line)
            account(b, rb, line + ra[3])
            size = sums_flat.shape[0]
            cut = int(b.idx[0]) if rb[4] else size

            def add(h: _Half, lo: int, hi: int) -> int:
                return (apply_events_in(a.idx, a.val, ra[4], lo, hi, sums_flat, counts_flat,
                                        h.dropped)
                        + apply_events_in(b.idx, b.val, rb[4], lo, hi, sums_flat, counts_flat,
                                          h.dropped))

            fut = pool.submit(add, b, cut, size)
            n = add(a, 0, cut) + fut.result()
            for h in (a, b):  # their saturation counts
                dropped[:] += h.dropped
                h.dropped[:] = 0
            return n

        try:
            while True:
                pos, lines, filled, eof = src.begin, 0, src.filled, src.eof
                split_ok = pool is not None
                while pos < filled:
                    if split_ok and filled - pos >= PARALLEL_BYTES:
                        cut = _next_newline(src.buf, pos + (filled - pos) // 2, filled) + 1
                        if pos < cut < filled:
                            fut = pool.submit(scan, b, cut, filled, eof)
                            ra = scan(a, pos, cut, False)
                            rb = fut.result()
                            if ra[1] != cut:  # stopped early: redo the rest in one thread
                                kept += take(a, ra, src.line + lines)
                                lines += ra[3]
                                b.dropped[:] = 0
                                b.bad[:] = 0
                                pos = ra[1]
                                split_ok = False
                                continue
                            kept += take_both(ra, rb, src.line + lines)
                            lines += ra[3] + rb[3]
                            pos = rb[1]
                            if rb[0] == NEED_MORE:
                                break
                            continue
                    res = scan(a, pos, filled, eof)
                    kept += take(a, res, src.line + lines)
                    lines += res[3]
                    pos = res[1]
                    if res[0] == NEED_MORE:
                        break
                if big:
                    _release(sums, counts)
                if bar is not None:
                    bar.update_to(src.tell())
                if src.done(pos):
                    break
                src.refill(pos, lines)
        finally:
            if pool is not None:
                pool.shutdown()
            if bar is not None:
                bar.close()
    return kept


def _save_array(path: Path, arr: np.ndarray) -> None:
    """Finish an output array. A memory map needs nothing: its pages are the file's pages in the
    page cache, written back by the kernel like any file write (a flush would msync, i.e. wait for
    the disk, which np.save does not either). Empty outputs are plain arrays: save them."""
    if not isinstance(arr, np.memmap):
        np.save(path, arr)


def _write_stays(path: Path, stays: Stays, split: np.ndarray, death: np.ndarray) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

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
        "los_days": _arrow(pa, (stays.outtime - stays.intime) / 86400.0, pa.float64()),
    })
    pq.write_table(table, path)


def _arrow(pa, values: np.ndarray, type_, valid: np.ndarray | None = None):
    """A pyarrow array over the bytes of a numpy array (nulls where `valid` is False)."""
    values = np.ascontiguousarray(values)
    bitmap = None
    if valid is not None and not valid.all():
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(type_, len(values), [bitmap, pa.py_buffer(values)])


def _arrow_strings(pa, codes: np.ndarray, words: tuple[str, ...]):
    """A pyarrow string array of words[codes]."""
    enc = [w.encode() for w in words]
    lengths = np.array([len(w) for w in enc], np.int32)
    offsets = np.zeros(len(codes) + 1, np.int32)
    np.cumsum(lengths[codes], out=offsets[1:])
    data = b"".join(enc[c] for c in codes.tolist())
    return pa.Array.from_buffers(pa.string(), len(codes),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def compile_kernels() -> None:
    """Compile (or load from numba's cache) every kernel preprocessing uses, with the argument
    types of a real run: preprocess a tiny MIMIC-shaped directory once from csv (the fused
    scan_events path and the column path) and once from parquet (scan_arrow)."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from .tables import compile_kernels as compile_tables

    compile_tables()
    _import_numba_math_without_scipy()
    tables = {
        ("hosp", "patients"): "subject_id,gender\n1,F\n",
        ("hosp", "admissions"): "subject_id,hadm_id,hospital_expire_flag\n1,100,0\n",
        ("icu", "icustays"): "subject_id,hadm_id,stay_id,intime,outtime\n"
                             "1,100,10,2150-01-01 00:00:00,2150-01-01 05:00:00\n",
        ("hosp", "labevents"): "subject_id,itemid,charttime,valuenum\n"
                               "1,50912,2150-01-01 01:00:00,1.5\n",
        ("icu", "chartevents"): "stay_id,itemid,charttime,valuenum\n"
                                "10,220045,2150-01-01 01:00:00,80\n",
    }
    global FUSED_CSV, PARALLEL_ROWS
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mimic"
        for (module, name), text in tables.items():
            (root / module).mkdir(parents=True, exist_ok=True)
            (root / module / f"{name}.csv").write_text(text)
        fused = FUSED_CSV
        try:
            for FUSED_CSV in (True, False):
                preprocess(root, Path(tmp) / "out", progress=False)
        finally:
            FUSED_CSV = fused
        ts = pa.timestamp("ms")
        for module, name, key in (("icu", "chartevents", "stay_id"),
                                  ("hosp", "labevents", "subject_id")):
            (root / module / f"{name}.csv").unlink()
            pq.write_table(pa.table({key: pa.array([10 if key == "stay_id" else 1, None]),
                                     "itemid": pa.array([220045, 50912]),
                                     "charttime": pa.array([7_574_256_000_000, None], ts),
                                     "valuenum": pa.array([80.0, None])}),
                           root / module / f"{name}.parquet")
        parallel_rows = PARALLEL_ROWS
        try:  # and with each 2-row batch split over two threads (apply_events_in)
            PARALLEL_ROWS = 1
            preprocess(root, Path(tmp) / "out", progress=False)
        finally:
            PARALLEL_ROWS = parallel_rows


# -------------------------------------------------------------------------------------------------
# CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mimic-dir", required=True, help="MIMIC-IV directory holding hosp/ and icu/")
    parser.add_argument("--out", required=True,
                        help="output directory (replaced whole when the run succeeds)")
    parser.add_argument("--features", default=None,
                        help="feature catalog (default: the repository's configs/features.yaml)")
    parser.add_argument("--config", default=None,
                        help="deprecated alias of --features (default: none)")
    parser.add_argument("--on-bad-lines", choices=("error", "skip"), default="error",
                        help="malformed CSV rows: stop with the line number, or skip and count "
                             "them (default: error)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the subject-level split (default: 0)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (default: bars for tables that take a while)")


def main(args: argparse.Namespace) -> int:
    features = args.features
    if args.config is not None:
        if features is not None:
            print("ehrjepa preprocess: give --features only (--config is its deprecated alias)",
                  file=sys.stderr)
            return 2
        print("ehrjepa preprocess: warning: --config is deprecated here, use --features",
              file=sys.stderr)
        features = args.config
    try:
        out = preprocess(args.mimic_dir, args.out, config=features,
                         on_bad_lines=args.on_bad_lines, progress=not args.no_progress,
                         seed=args.seed)
    except (OSError, ValueError) as e:
        print(f"ehrjepa preprocess: {e}", file=sys.stderr)
        return 1
    m = json.loads((out / "manifest.json").read_text())
    print(f"{out}: {m['n_stays']} stays, {m['total_hours']} hours, "
          f"{m['seconds']['total']:.2f} s")
    for name, t in m["tables"].items():
        drops = ", ".join(f"{k} {v}" for k, v in t["dropped"].items() if v) or "none"
        print(f"  {name:12s} read {t['rows_read']:>12,d}  kept {t['rows_kept']:>12,d}  dropped: {drops}")
    for w in m["warnings"]:
        print(f"  warning: {w}")
    return 0
