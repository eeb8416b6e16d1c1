"""The CSV tokenizer: RFC 4180 rows of a byte buffer to typed columns (parse_block), and the fast
path for plain rows that the fused event scan uses (fast_row).

Quoted fields may hold commas, newlines and doubled quotes; blocks are split at row ends and
physical lines are counted for error messages.
"""
from __future__ import annotations

import numba as nb

from .fields import parse_float, parse_int, parse_time

# parse status codes returned by the kernels
OK, NEED_MORE, BAD_ROW = 0, 1, 2


@nb.njit(cache=True, inline="always", error_model="numpy")
def _store_field(buf, fs, fe, quoted, nf, ncols, rows, col_slot, col_kind, ints, floats):
    """Convert field nf of the current row (bytes buf[fs:fe], quotes still on) if it is wanted.

    Returns False for a quoting error (a quoted field that does not end with its quote)."""
    if quoted:
        if fe - fs < 2 or buf[fe - 1] != 34:
            return False
        fs += 1
        fe -= 1
    if nf < ncols:
        slot = col_slot[nf]
        if slot >= 0:
            k = col_kind[nf]
            if k == 0:
                ints[slot, rows] = parse_int(buf, fs, fe)
            elif k == 1:
                floats[slot, rows] = parse_float(buf, fs, fe)
            else:
                ints[slot, rows] = parse_time(buf, fs, fe)
    return True


@nb.njit(cache=True, inline="always", error_model="numpy")
def _row_verdict(nf, ncols, bad, skip_bad, bad_info):
    """A finished row of nf fields: 1 good; 0 bad, skipped and counted in bad_info[0]; -1 bad and
    parsing stops (bad_info[1]: its field count, -1 for a quoting error)."""
    if nf == ncols and not bad:
        return 1
    if not skip_bad:
        bad_info[1] = -1 if bad else nf
        return -1
    bad_info[0] += 1
    return 0


@nb.njit(cache=True, nogil=True, error_model="numpy")
def parse_block(buf, pos, end, final, ncols, col_slot, col_kind, ints, floats, skip_bad, bad_info):
    """Parse CSV rows of buf[pos:end] into typed columns.

    col_slot[c] is the output row (of `ints` for KIND_INT/KIND_TIME, of `floats` for KIND_FLOAT)
    for file column c, or -1 to skip it. Rows go to columns [0, n_rows) of ints/floats; parsing
    stops when they are full. A row with a field count other than ncols, an unterminated quote at
    the end of the input, or a quoted field with text after its closing quote is a bad row: skipped
    and counted in bad_info[0] when skip_bad, else parsing stops with status BAD_ROW. Empty lines
    are ignored. Without `final`, a row not ended by a newline is left for the next call.

    One pass over the bytes with a small state machine: bytes above ',' (digits, letters, '-', ':',
    '.') cannot end a field, so they cost one compare.

    Returns (status, new_pos, n_rows, n_lines): new_pos is the start of the first row not parsed,
    n_lines the newlines before new_pos (before the bad row on BAD_ROW; then bad_info[1] holds the
    bad row's field count, -1 for a quoting error).
    """
    cap = ints.shape[1]
    rows = 0
    lines = 0
    row_start = pos
    row_lines = 0  # newlines inside quoted fields of the current row
    fs = pos  # current field start
    nf = 0  # fields finished in the current row
    inq = False  # inside a quoted field
    quoted = False  # the current field started with a quote
    bad = False  # quoting error in the current row
    if rows >= cap:
        return OK, pos, 0, 0
    for i in range(pos, end):
        c = buf[i]
        if c > 44:
            continue
        if inq:
            if c == 34:
                inq = False
            elif c == 10:
                row_lines += 1
            continue
        if c == 34:
            if i == fs:
                quoted = True
                inq = True
            elif quoted and buf[i - 1] == 34:
                inq = True  # a doubled quote inside a quoted field
            else:
                bad = True  # a quote inside an unquoted field
            continue
        if c == 44:
            if nf < ncols and col_slot[nf] >= 0:
                if not _store_field(buf, fs, i, quoted, nf, ncols, rows, col_slot, col_kind, ints,
                                    floats):
                    bad = True
            elif quoted and (i - fs < 2 or buf[i - 1] != 34):
                bad = True
            nf += 1
            fs = i + 1
            quoted = False
            continue
        if c == 10:
            fe = i
            if fe > fs and buf[fe - 1] == 13:
                fe -= 1
            if nf == 0 and fe == fs and not quoted:  # empty line
                lines += 1
                row_start = i + 1
                fs = i + 1
                continue
            if not _store_field(buf, fs, fe, quoted, nf, ncols, rows, col_slot, col_kind, ints,
                                floats):
                bad = True
            nf += 1
            ok = _row_verdict(nf, ncols, bad, skip_bad, bad_info)
            if ok < 0:
                return BAD_ROW, row_start, rows, lines
            rows += ok
            lines += row_lines + 1
            row_lines = 0
            row_start = i + 1
            fs = i + 1
            nf = 0
            quoted = False
            bad = False
            if rows >= cap:
                return OK, row_start, rows, lines
    if not final or row_start >= end:
        return (NEED_MORE if row_start < end else OK), row_start, rows, lines
    # the last row of the input has no newline
    fe = end
    if fe > fs and buf[fe - 1] == 13:
        fe -= 1
    if inq:
        bad = True
    elif not _store_field(buf, fs, fe, quoted, nf, ncols, rows, col_slot, col_kind, ints, floats):
        bad = True
    nf += 1
    if nf == 1 and fe == fs and not quoted:
        return OK, end, rows, lines
    ok = _row_verdict(nf, ncols, bad, skip_bad, bad_info)
    if ok < 0:
        return BAD_ROW, row_start, rows, lines
    rows += ok
    lines += row_lines
    return OK, end, rows, lines


@nb.njit(cache=True, inline="always", error_model="numpy")
def fast_row(buf, pos, end, ncols, want, fstart, fend, lastlen):
    """Tokenize the plain row at buf[pos:]: field bounds of wanted columns, or -1 to fall back.

    For the common case only: every field is unquoted, or quoted without quotes or newlines
    inside; exactly ncols fields; a newline ends the row. Anything else (empty line, doubled
    quotes, quoted newlines, a wrong field count, the end of the buffer) returns -1 and the caller
    re-reads the row with parse_block, which knows every rule. Field bounds go to
    fstart/fend[want[c]] for columns with want[c] >= 0 (quotes removed, a final CR dropped).

    Speed: a field usually has the same length as in the previous row (ids, timestamps), so we
    first try lastlen[c]: check the separator after it and that no ',', '"' or newline lies inside
    (a branch-free loop). That avoids a mispredicted branch at the end of every field.
    Returns the start of the next row.
    """
    fs = pos
    e = pos
    if pos >= end or buf[pos] == 10 or buf[pos] == 13:
        return -1
    for c in range(ncols):
        sep = 10 if c == ncols - 1 else 44
        q = 0
        e = fs + lastlen[c]
        ok = False
        if e < end and buf[e] == sep:
            if buf[fs] == 34:
                q = 1
            a = fs + q
            b = e - q
            if b >= a and (q == 0 or buf[b] == 34):
                hit = 0
                for j in range(a, b):
                    x = buf[j]
                    hit |= (x == 44) | (x == 34) | (x == 10)
                ok = hit == 0
        if not ok:
            if fs < end and buf[fs] == 34:  # quoted: up to the next quote, then the separator
                q = 1
                j = fs + 1
                while j < end and buf[j] != 34 and buf[j] != 10:
                    j += 1
                if j + 1 >= end or buf[j] != 34 or buf[j + 1] != sep:
                    return -1
                e = j + 1
            else:
                q = 0
                j = fs
                while j < end:
                    x = buf[j]
                    if x <= 44 and (x == 44 or x == 34 or x == 10):
                        break
                    j += 1
                if j >= end or buf[j] != sep:
                    return -1
                e = j
            lastlen[c] = e - fs
        w = want[c]
        if w >= 0:
            fstart[w] = fs + q
            fend[w] = e - q
        fs = e + 1
    w = want[ncols - 1]
    if w >= 0 and q == 0 and fend[w] > fstart[w] and buf[fend[w] - 1] == 13:
        fend[w] -= 1
    return fs


@nb.njit(cache=True, nogil=True)
def _next_newline(buf, i, end):
    while i < end and buf[i] != 10:
        i += 1
    return i
