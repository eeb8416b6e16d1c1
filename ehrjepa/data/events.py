"""The event rules as numba kernels: which hour row of which stay an event of chartevents or
labevents lands in, or the named reason it is dropped, and the folding of kept events into the
[total_hours, F] sums and counts.

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

The drop rules live once, in `_event` (feature, value, range, timestamp, key, stay window; in
that order): `aggregate_events` is the plain reference over parsed columns, and the fused kernels
(`scan_events` over CSV bytes, `scan_arrow` over Arrow buffers) must agree with it row for row
(tests/test_preprocess.py compares them). Emitting events rather than adding them lets two threads
scan halves of a block; `apply_events` then adds them in file order.
"""
from __future__ import annotations

import numba as nb
import numpy as np

from .readers import BAD, KIND_FLOAT, KIND_INT, KIND_TIME, MISSING, arrow_valid, parse_block
from .readers.fields import parse_float, parse_int, parse_time_fast
from .readers.tokenizer import BAD_ROW, OK, fast_row

HOUR = 3600
LOOKBACK = 6 * HOUR
COUNT_MAX = 65535
# drop reasons of the event tables, in kernel code order
REASONS = ("unknown_itemid", "no_value", "out_of_range", "bad_timestamp", "unknown_stay",
           "no_stay_for_subject", "outside_stay", "count_saturated")
(R_ITEMID, R_VALUE, R_RANGE, R_TIME, R_STAY, R_SUBJECT, R_OUTSIDE, R_SATURATED) = range(len(REASONS))
# hourly aggregations (catalog.AGGREGATIONS order)
AGG_MEAN, AGG_SUM, AGG_LAST = 0, 1, 2
CHART_REASONS = ("unknown_itemid", "no_value", "out_of_range", "bad_timestamp", "unknown_stay",
                 "outside_stay", "count_saturated")
LAB_REASONS = ("unknown_itemid", "no_value", "out_of_range", "bad_timestamp",
               "no_stay_for_subject", "outside_stay", "count_saturated")

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
def _add(sums, counts, j, v, dropped):
    """Add value v to flat cell j (hour_row * F + feature); 0 and a drop once its count is full."""
    c = counts[j]
    if c >= COUNT_MAX:
        dropped[R_SATURATED] += 1
        return 0
    counts[j] = c + 1
    sums[j] += v
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

    lab False: k is a stay (chartevents: the stay_id of the row); lab True: k is a subject, and
    `_lab_row` picks the stay (labevents)."""
    if k < 0:
        return -1 - (R_SUBJECT if lab else R_STAY)
    if lab:
        row = _lab_row(t, k, subj_start, subj_end, by_subject, intime, outtime, offset, n_hours)
        return row if row >= 0 else -1 - R_OUTSIDE
    h = _hour(t, intime[k], outtime[k], n_hours[k])
    return offset[k] + h if h >= 0 else -1 - R_OUTSIDE


@nb.njit(cache=True, inline="always", error_model="numpy")
def _locate(lab, s, t, last_key, k, key_ids, subj_start, subj_end, by_subject, intime, outtime,
            offset, n_hours):
    """(hour row or -1 - reason, last_key, k) of an event with key s (stay_id, or subject_id when
    `lab`) at time t. k is the index of last_key in key_ids, kept between rows: events come
    sorted by key, so the binary search runs once per key."""
    if t == MISSING or t == BAD:
        return -1 - R_TIME, last_key, k
    if s != last_key:
        last_key = s
        k = _find(key_ids, s) if s != MISSING and s != BAD else -1
    row = _event_row(lab, k, t, subj_start, subj_end, by_subject, intime, outtime, offset, n_hours)
    return row, last_key, k


@nb.njit(cache=True, inline="always", error_model="numpy")
def _emit(lab, s, t, f, v, last_key, k, key_ids, subj_start, subj_end, by_subject, intime, outtime,
          offset, n_hours, n_features, out_idx, out_val, n_out, dropped):
    """The fused kernels' last step: locate the event (feature f, value v) and write it to
    out_idx / out_val, or count its drop. Returns (n_out, last_key, k)."""
    row, last_key, k = _locate(lab, s, t, last_key, k, key_ids, subj_start, subj_end, by_subject,
                               intime, outtime, offset, n_hours)
    if row < 0:
        dropped[-1 - row] += 1
    else:
        out_idx[n_out] = row * n_features + f
        out_val[n_out] = v
        n_out += 1
    return n_out, last_key, k


@nb.njit(cache=True, nogil=True, error_model="numpy")
def aggregate_events(lab, key, charttime, itemid, value, key_ids, subj_start, subj_end,
                     by_subject, intime, outtime, offset, n_hours, feat, add, mul, low, high,
                     sums, counts, dropped):
    """The reference: fold parsed columns of chartevents (key = stay_id) or labevents (lab,
    key = subject_id) into the flat sums/counts [total_hours * F]; returns the rows kept,
    dropped[reason] counts the others. The fused kernels below must give the same."""
    n_features = low.shape[0]
    kept = 0
    last_key = MISSING
    k = -1
    for r in range(key.shape[0]):
        f, v = _feature_value(itemid[r], value[r], feat, add, mul, low, high)
        if f < 0:
            dropped[-1 - f] += 1
            continue
        row, last_key, k = _locate(lab, key[r], charttime[r], last_key, k, key_ids, subj_start,
                                   subj_end, by_subject, intime, outtime, offset, n_hours)
        if row < 0:
            dropped[-1 - row] += 1
            continue
        kept += _add(sums, counts, row * n_features + f, v, dropped)
    return kept


@nb.njit(cache=True, nogil=True, error_model="numpy")
def scan_arrow(lo, hi, lab, key, key_bits, key_bit0, time, time_bits, time_bit0, time_div, item,
               item_bits, item_bit0, value, value_bits, value_bit0, key_ids, subj_start, subj_end,
               by_subject, intime, outtime, offset, n_hours, feat, add, mul, low, high,
               n_features, out_idx, out_val, dropped):
    """The rows [lo, hi) of a parquet batch, read straight from its Arrow buffers
    (readers.parquet.ArrowColumn: data, validity bitmap and bit offset; timestamps in units of
    1 / time_div s), as events for apply_events: the checks of aggregate_events (lab False,
    key = stay_id; lab True, key = subject_id). Null slots read as empty
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
        t = MISSING
        if arrow_valid(time_bits, time_bit0, r):
            t = time[r]
            if time_div == 1000:  # constant divisors compile to a multiply and a shift
                t = t // 1000
            elif time_div == 1_000_000:
                t = t // 1_000_000
            elif time_div != 1:
                t = t // time_div
        s = key[r] if arrow_valid(key_bits, key_bit0, r) else MISSING
        n_out, last_key, k = _emit(lab, s, t, f, v, last_key, k, key_ids, subj_start, subj_end,
                                   by_subject, intime, outtime, offset, n_hours, n_features,
                                   out_idx, out_val, n_out, dropped)
    return n_out


@nb.njit(cache=True, nogil=True, error_model="numpy")
def scan_meds(lo, hi, subj, subj_bits, subj_bit0, time, time_bits, time_bit0, time_div, code,
              code_bits, code_bit0, code_of, value, value_bits, value_bit0, stay, stay_bits,
              stay_bit0, chart, stay_ids, key_ids, subj_start, subj_end, by_subject, intime,
              outtime, offset, n_hours, feat, add, mul, low, high, n_features, out_idx, out_val,
              dropped, order):
    """The rows [lo, hi) of a MEDS batch as events for apply_events: scan_arrow's checks, with
    the feature found from the code (code_of maps the batch's dictionary index to a position in
    the dataset's codes, which index feat/add/mul) and the stay by the rules of the code's table:
    a chartevents code by its icustay_id where the row has one (stay is empty when the data has
    no such column), else, like labevents, by subject and time.

    Rows must not go back in (subject, time) (null times read as MISSING, the earliest: static
    rows first). order [4] gets the (subject, time) of the last and of the first row, so that
    the caller checks the joins between halves and batches. Returns the number of events, or
    -1 - r for the first row r that goes back (order[:2] then holds the row before it)."""
    n_out = 0
    last_subj = MISSING
    k_subj = -1
    last_stay = MISSING
    k_stay = -1
    has_stay = stay.shape[0] > 0
    for r in range(lo, hi):
        s = subj[r] if arrow_valid(subj_bits, subj_bit0, r) else MISSING
        t = MISSING
        if arrow_valid(time_bits, time_bit0, r):
            t = time[r]
            if time_div == 1_000_000:  # MEDS's microseconds: a multiply and a shift
                t = t // 1_000_000
            elif time_div != 1:
                t = t // time_div
        if r == lo:
            order[2] = s
            order[3] = t
        elif s < order[0] or (s == order[0] and t < order[1]):
            return -1 - r
        order[0] = s
        order[1] = t
        c = code_of[code[r]] if arrow_valid(code_bits, code_bit0, r) else -1
        x = value[r] if arrow_valid(value_bits, value_bit0, r) else np.nan
        f, v = _feature_value(c, x, feat, add, mul, low, high)
        if f < 0:
            dropped[-1 - f] += 1
            continue
        if chart[c] and has_stay and arrow_valid(stay_bits, stay_bit0, r):
            n_out, last_stay, k_stay = _emit(False, stay[r], t, f, v, last_stay, k_stay, stay_ids,
                                             subj_start, subj_end, by_subject, intime, outtime,
                                             offset, n_hours, n_features, out_idx, out_val, n_out,
                                             dropped)
        else:
            n_out, last_subj, k_subj = _emit(True, s, t, f, v, last_subj, k_subj, key_ids,
                                             subj_start, subj_end, by_subject, intime, outtime,
                                             offset, n_hours, n_features, out_idx, out_val, n_out,
                                             dropped)
    return n_out


@nb.njit(cache=True, nogil=True, error_model="numpy")
def scan_events(buf, pos, end, final, ncols, want, col_slot, col_kind, skip_bad, lab, key_ids,
                subj_start, subj_end, by_subject, intime, outtime, offset, n_hours, feat, add, mul,
                low, high, n_features, out_idx, out_val, dropped, bad_info, lastlen):
    """Tokenize CSV rows of buf[pos:end] and turn each into an event or a drop, in one pass.

    The fused form of parse_block + aggregate_events: no column is
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
        # the chain of aggregate_events; each field is parsed only when the rules need it
        if itemid < 0 or itemid >= feat.shape[0] or feat[itemid] < 0:
            dropped[R_ITEMID] += 1
            continue
        value = floats[0, 0] if slow else parse_float(buf, fstart[3], fend[3])
        f, v = _feature_value(itemid, value, feat, add, mul, low, high)
        if f < 0:
            dropped[-1 - f] += 1
            continue
        t = ints[1, 0] if slow else parse_time_fast(buf, fstart[1], fend[1])
        key = MISSING
        if t != MISSING and t != BAD:
            key = ints[0, 0] if slow else parse_int(buf, fstart[0], fend[0])
        n_out, last_key, k = _emit(lab, key, t, f, v, last_key, k, key_ids, subj_start, subj_end,
                                   by_subject, intime, outtime, offset, n_hours, n_features,
                                   out_idx, out_val, n_out, dropped)
    return OK, i, rows, lines, n_out


@nb.njit(cache=True, nogil=True, error_model="numpy")
def apply_events_in(idx, val, n, lo, hi, sums, counts, dropped):
    """Add the events (flat index, value) whose index is in [lo, hi) to the flat sums/counts, in
    order; returns how many were kept. Two threads that own disjoint ranges can add the same
    events in file order without racing."""
    kept = 0
    for e in range(n):
        j = idx[e]
        if lo <= j < hi:
            kept += _add(sums, counts, j, val[e], dropped)
    return kept


@nb.njit(cache=True, nogil=True, error_model="numpy")
def apply_events(idx, val, n, sums, counts, dropped):
    """Add every event to the flat sums/counts (one thread); returns how many were kept."""
    return apply_events_in(idx, val, n, 0, sums.shape[0], sums, counts, dropped)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def fold_events(row, feature, value, n, agg, low, high, sums, counts, dropped):
    """Fold n events (hour row, feature column, converted value) into the [total_hours, F]
    sums/counts of a source that places events itself (the challenges); values outside the
    feature's [low, high] are dropped (out_of_range). A feature aggregated by `last` keeps the
    hour's last event in the order given. Returns how many were kept."""
    n_features = sums.shape[1]
    sums_flat = sums.reshape(-1)
    counts_flat = counts.reshape(-1)
    kept = 0
    for e in range(n):
        f = feature[e]
        v = value[e]
        if not (v >= low[f] and v <= high[f]):
            dropped[R_RANGE] += 1
            continue
        j = row[e] * n_features + f
        if agg[f] == AGG_LAST and counts_flat[j] > 0:
            sums_flat[j] = 0.0
        kept += _add(sums_flat, counts_flat, j, v, dropped)
    return kept


@nb.njit(cache=True, nogil=True, error_model="numpy")
def finalize_hours(sums, counts, row0, row1, hour_train, agg, stats):
    """In place: sums -> each feature's hourly value under its aggregation `agg` (AGG_MEAN: sum /
    count; AGG_SUM, AGG_LAST: as folded), NaN where count is 0, for rows [row0, row1); accumulate
    the train rows' per-feature n, sum and sum of squares of hourly values into stats [3, F]."""
    n_features = sums.shape[1]
    for r in range(row0, row1):
        train = hour_train[r]
        for f in range(n_features):
            c = counts[r, f]
            if c == 0:
                sums[r, f] = np.nan
            else:
                m = np.float32(sums[r, f] / np.float32(c)) if agg[f] == AGG_MEAN else sums[r, f]
                sums[r, f] = m
                if train:
                    x = np.float64(m)
                    stats[0, f] += 1.0
                    stats[1, f] += x
                    stats[2, f] += x * x
