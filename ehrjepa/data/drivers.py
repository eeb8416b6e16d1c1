"""The drivers that stream an event table through the kernels of events.py, on two threads.

One entry point, `aggregate_table`, picks by format and options: parquet through scan_arrow,
csv / csv.gz through the fused scan_events, or (ScanOptions.fused_csv False) the reference path,
parse_block columns + aggregate_events, that tests compare the fused kernels against. Events are
added in file order whatever the threading, so saturation and the accounting are those of one
sequential pass. Memory stays bounded: the input is read in 64 MB blocks and the pages of the
output maps are released after each block once they are big.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .events import (REASONS, TABLES, aggregate_events, apply_events, apply_events_in, finalize_hours,
                     scan_arrow, scan_events, scan_meds)
from .readers import MISSING, TableStats, iter_parquet_arrow, iter_table, table_format
from .readers.csv_stream import BLOCK_BYTES, PARALLEL_BYTES, CsvBytes, _column_plan, _raise_bad
from .readers.files import Progress
from .readers.tokenizer import NEED_MORE, _next_newline
from .stays import Stays

RELEASE_BYTES = 64 << 20  # release output-map pages after each block once the maps are this big


@dataclass(frozen=True)
class ScanOptions:
    """How event tables are scanned; the defaults are what users run, tests vary the rest."""
    fused_csv: bool = True  # csv through scan_events; False: parse_block columns + aggregate_events
    block_bytes: int = BLOCK_BYTES  # csv bytes per block
    parallel_bytes: int = PARALLEL_BYTES  # a csv block is scanned by two threads from this size
    events_cap: int = 1 << 20  # events one scan_events call may emit (rows per call are capped)
    parquet_block_rows: int = 1 << 20  # rows per parquet batch handed to scan_arrow
    parallel_rows: int = 1 << 14  # a parquet batch is scanned by two threads from twice this


def aggregate_table(name: str, path: Path, lk, stays: Stays, sums: np.ndarray,
                    counts: np.ndarray, on_bad_lines: str, st: TableStats, dropped: np.ndarray,
                    progress: bool, opt: ScanOptions) -> int:
    """Fold event table `name` (chartevents or labevents) at `path` into sums/counts
    [total_hours, F]; returns the rows kept, dropped[reason] counts the others."""
    n_features = sums.shape[1]
    big = sums.nbytes + counts.nbytes >= RELEASE_BYTES
    if table_format(path) == "parquet":  # numba over the Arrow buffers, reading ahead
        return _aggregate_parquet(name, path, lk, stays, sums, counts, n_features, st, dropped,
                                  progress, big, opt)
    if opt.fused_csv:  # tokenize + aggregate, two threads
        return _scan_csv_events(name, path, lk, stays, sums, counts, n_features, on_bad_lines,
                                st, dropped, progress, big, opt)
    return _aggregate_columns(name, path, lk, stays, sums, counts, on_bad_lines, st, dropped,
                              progress, big)


def _aggregate_columns(name: str, path: Path, lk, stays: Stays, sums: np.ndarray,
                       counts: np.ndarray, on_bad_lines: str, st: TableStats, dropped: np.ndarray,
                       progress: bool, big: bool) -> int:
    """The reference path: parsed column blocks (readers.iter_table) + aggregate_events."""
    lab = name == "labevents"
    key = "subject_id" if lab else "stay_id"
    key_ids = stays.subjects if lab else stays.stay_id
    kept = 0
    for block in iter_table(path, TABLES[name][1], on_bad_lines, st, progress=progress, desc=name):
        kept += aggregate_events(
            lab, block[key], block["charttime"], block["itemid"], block["valuenum"], key_ids,
            stays.subj_start, stays.subj_end, stays.by_subject, stays.intime, stays.outtime,
            stays.offset, stays.n_hours, lk.feature, lk.add, lk.mul, lk.low, lk.high,
            sums.reshape(-1), counts.reshape(-1), dropped)
        if big:
            _release(sums, counts)
    return kept


def _release(*arrays) -> None:
    """Drop the pages of memory-mapped outputs from this process (they stay in the page cache)."""
    for a in arrays:
        mm = getattr(a, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass


def finish_hours(sums: np.ndarray, counts: np.ndarray, hour_train: np.ndarray,
                 agg: np.ndarray | None = None):
    """Turn the folded hours into each feature's hourly value in place (agg: uint8 per feature,
    events.AGG_*; default all means), chunk by chunk, and return (norm_mean, norm_std,
    kept_by_feature): the per-feature mean and std of the hourly values over train hours only
    (std 1 where 0 or undefined; mean 0 where never observed)."""
    if agg is None:
        agg = np.zeros(sums.shape[1], np.uint8)
    n_features = sums.shape[1]
    total_hours = sums.shape[0]
    stats = np.zeros((3, n_features), np.float64)
    kept_by_feature = np.zeros(n_features, np.int64)
    step = max(1, (16 << 20) // max(1, n_features * 6))
    for r0 in range(0, total_hours, step):
        r1 = min(r0 + step, total_hours)
        kept_by_feature += counts[r0:r1].sum(axis=0, dtype=np.int64)
        finalize_hours(sums, counts, r0, r1, hour_train, agg, stats)
        if sums.nbytes + counts.nbytes >= RELEASE_BYTES:
            _release(sums, counts)
    n, s1, s2 = stats
    with np.errstate(invalid="ignore", divide="ignore"):
        norm_mean = np.where(n > 0, s1 / np.maximum(n, 1), 0.0)
        var = np.where(n > 0, s2 / np.maximum(n, 1) - norm_mean ** 2, 0.0)
    norm_std = np.sqrt(np.maximum(var, 0.0))
    norm_std = np.where((norm_std > 1e-12) & np.isfinite(norm_std), norm_std, 1.0)
    return norm_mean, norm_std, kept_by_feature


def _aggregate_parquet(name: str, path: Path, lk, stays: Stays, sums: np.ndarray,
                       counts: np.ndarray, n_features: int, st: TableStats, dropped: np.ndarray,
                       progress: bool, big: bool, opt: ScanOptions) -> int:
    """Stream a parquet event table through scan_arrow + apply_events; returns rows kept.

    While a background thread decodes the next batch (iter_parquet_arrow), each batch is cut in
    two halves scanned by two threads (numba releases the GIL); their events are then added in
    file order, so saturation and the accounting are those of one sequential pass."""

    lab = name == "labevents"
    key = "subject_id" if lab else "stay_id"
    key_ids = stays.subjects if lab else stays.stay_id
    sums_flat = sums.reshape(-1)
    counts_flat = counts.reshape(-1)
    halves = [_Half(0), _Half(0)]
    bar = Progress(path, "parquet", name) if progress else None
    pool = None
    if (os.cpu_count() or 1) > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)

    def scan(h: _Half, b: dict, lo: int, hi: int) -> int:
        h.reserve(hi - lo)
        k, t, i, v = b[key], b["charttime"], b["itemid"], b["valuenum"]
        return scan_arrow(
            lo, hi, lab, k.data, k.valid, k.bit0, t.data, t.valid, t.bit0, t.div, i.data, i.valid,
            i.bit0, v.data, v.valid, v.bit0, key_ids, stays.subj_start, stays.subj_end,
            stays.by_subject, stays.intime, stays.outtime, stays.offset, stays.n_hours,
            lk.feature, lk.add, lk.mul, lk.low, lk.high, n_features, h.idx, h.val, h.dropped)

    kept = 0
    try:
        for b in iter_parquet_arrow(path, TABLES[name][1], st, opt.parquet_block_rows, bar):
            kept += _scan_and_add(pool, halves, lambda h, lo, hi: scan(h, b, lo, hi),
                                  len(b[key].data), sums_flat, counts_flat, dropped, opt)
            if big:
                _release(sums, counts)
    finally:
        _close(pool, bar)
    return kept


def _scan_and_add(pool, halves: list, scan, n: int, sums_flat: np.ndarray,
                  counts_flat: np.ndarray, dropped: np.ndarray, opt: ScanOptions) -> int:
    """Scan the n rows of one batch (scan(half, lo, hi) -> events written to half.idx / .val)
    and add the events in file order; returns the rows kept. From 2 * opt.parallel_rows rows
    (and with a pool) the two halves of the batch are scanned by two threads, then each thread
    adds both halves' events, in order, for its own index range: a cut at the second half's
    first event balances rows sorted by stay."""
    if pool is None or n < 2 * opt.parallel_rows:
        n_out = scan(halves[0], 0, n)
        kept = apply_events(halves[0].idx, halves[0].val, n_out, sums_flat, counts_flat, dropped)
    else:
        def add(h: _Half, ns: tuple[int, int], lo: int, hi: int) -> int:
            return sum(apply_events_in(g.idx, g.val, m, lo, hi, sums_flat, counts_flat, h.dropped)
                       for g, m in zip(halves, ns))

        fut = pool.submit(scan, halves[1], n // 2, n)
        ns = (scan(halves[0], 0, n // 2), fut.result())
        cut = int(halves[1].idx[0]) if ns[1] else sums_flat.shape[0]
        fut = pool.submit(add, halves[1], ns, cut, sums_flat.shape[0])
        kept = add(halves[0], ns, 0, cut) + fut.result()
    for h in halves:
        dropped[:] += h.dropped
        h.dropped[:] = 0
    return kept


def aggregate_meds(path: Path, batches, lk, chart: np.ndarray, stays: Stays, sums: np.ndarray,
                   counts: np.ndarray, dropped: np.ndarray, opt: ScanOptions) -> int:
    """Fold the batches of one MEDS shard (meds.iter_batches: ArrowColumns subject_id, time,
    code with code_of, numeric_value, icustay_id) into sums/counts through scan_meds +
    apply_events, two threads as for parquet tables; returns the rows kept. A row that goes back
    in (subject, time) is an error naming the file and the row."""
    n_features = sums.shape[1]
    big = sums.nbytes + counts.nbytes >= RELEASE_BYTES
    sums_flat, counts_flat = sums.reshape(-1), counts.reshape(-1)
    halves = [_Half(0), _Half(0)]
    pool = None
    if (os.cpu_count() or 1) > 1:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1)
    last = [MISSING, MISSING]  # (subject, time) of the shard's previous row
    row0 = 0  # the batch's first row in the shard

    def unsorted(r: int, before) -> ValueError:
        return ValueError(f"{path}: not sorted by subject_id, then time: row {row0 + r} goes back "
                          f"from subject {before[0]} at {_when(before[1])} (MEDS wants each "
                          "subject's rows together, in time order)")

    def scan(h: _Half, b: dict, lo: int, hi: int) -> int:
        h.reserve(hi - lo)
        s, t, c, v, k = b["subject_id"], b["time"], b["code"], b["numeric_value"], b["icustay_id"]
        n = scan_meds(lo, hi, s.data, s.valid, s.bit0, t.data, t.valid, t.bit0, t.div, c.data,
                      c.valid, c.bit0, b["code_of"], v.data, v.valid, v.bit0, k.data, k.valid,
                      k.bit0, chart, stays.stay_id, stays.subjects, stays.subj_start,
                      stays.subj_end, stays.by_subject, stays.intime, stays.outtime,
                      stays.offset, stays.n_hours, lk.feature, lk.add, lk.mul, lk.low, lk.high,
                      n_features, h.idx, h.val, h.dropped, h.order)
        if n < 0:
            raise unsorted(-1 - n, h.order[:2])
        return n

    kept = 0
    try:
        for b in batches:
            n = len(b["subject_id"].data)
            kept += _scan_and_add(pool, halves, lambda h, lo, hi: scan(h, b, lo, hi), n,
                                  sums_flat, counts_flat, dropped, opt)
            # the joins: the batch's first row after the shard's last, the second half's after the first's
            parts = [halves[0]] if pool is None or n < 2 * opt.parallel_rows else halves
            for j, h in enumerate(parts):
                first = (h.order[2], h.order[3])
                if first < tuple(last):
                    raise unsorted(n // 2 if j else 0, last)
                last = [h.order[0], h.order[1]]
            row0 += n
            if big:
                _release(sums, counts)
    finally:
        _close(pool, None)
    return kept


def _when(t: int) -> str:
    """A time in seconds (MISSING: null) as text, for errors."""
    return "a null time" if t == MISSING else str(np.datetime64(int(t), "s"))


class _Half:
    """Output buffers of one scan_events call (one per thread)."""

    def __init__(self, cap: int):
        self.idx = np.empty(cap, np.int64)
        self.val = np.empty(cap, np.float64)
        self.dropped = np.zeros(len(REASONS), np.int64)
        self.bad = np.zeros(2, np.int64)
        self.lastlen = None
        self.order = np.zeros(4, np.int64)  # scan_meds: (subject, time) of the last, first row

    def reserve(self, n: int) -> None:
        """Room for n events."""
        if self.idx.shape[0] < n:
            self.idx = np.empty(n, np.int64)
            self.val = np.empty(n, np.float64)


def _scan_csv_events(name: str, path: Path, lk, stays: Stays, sums: np.ndarray,
                     counts: np.ndarray, n_features: int, on_bad_lines: str, st: TableStats,
                     dropped: np.ndarray, progress: bool, big: bool, opt: ScanOptions) -> int:
    """Stream a csv / csv.gz event table through scan_events + apply_events; returns rows kept.

    Each 64 MB block is cut at a newline near its middle and the halves are scanned by two
    threads (numba releases the GIL). The second half's results are used only when the first
    half ends exactly at the cut (a quoted newline could straddle it); else the rest of the block
    is scanned again by one thread. Events are then added in file order, so saturation and the
    accounting are those of one sequential pass.
    """

    columns = TABLES[name][1]
    key = "subject_id" if name == "labevents" else "stay_id"
    lab = name == "labevents"
    key_ids = stays.subjects if lab else stays.stay_id
    skip_bad = on_bad_lines == "skip"
    sums_flat = sums.reshape(-1)
    counts_flat = counts.reshape(-1)
    bar = Progress(path, "csv", name) if progress else None
    pool = None
    kept = 0
    with CsvBytes(path, opt.block_bytes) as src:
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
        a, b = _Half(opt.events_cap), _Half(opt.events_cap)
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
                    if split_ok and filled - pos >= opt.parallel_bytes:
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
            _close(pool, bar)
    return kept


def _close(pool, bar) -> None:
    """Stop a driver's helper thread and progress bar (either may be None)."""
    if pool is not None:
        pool.shutdown()
    if bar is not None:
        bar.close()
