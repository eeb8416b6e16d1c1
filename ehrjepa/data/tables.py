"""Reading MIMIC-IV tables (csv, csv.gz, parquet) as streamed blocks of typed numpy columns.

Only the columns a caller asks for are parsed. CSV goes through a numba tokenizer that works on
raw byte blocks (64 MB by default): it follows RFC 4180 quoting (quoted fields may hold commas,
newlines and doubled quotes), splits blocks at row ends, counts physical lines for error messages,
and converts the wanted fields straight to int64 / float64 / int64 seconds (timestamps) without
building Python strings. csv.gz is inflated by ISA-L in a background thread (`isal.igzip_threaded`)
so inflating overlaps parsing. Parquet goes through pyarrow's `iter_batches` with the needed
columns only.

Every block is a dict {column name: numpy array}, the same for all three formats:
- KIND_INT columns: int64, MISSING where the field is empty, BAD where it is not an integer;
- KIND_FLOAT columns: float64, NaN where the field is empty or not a number;
- KIND_TIME columns: int64 seconds since 1970-01-01, MISSING where empty, BAD where unparseable.
The arrays of one block are only valid until the next block is requested (buffers are reused).
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numba as nb
import numpy as np

KIND_INT, KIND_FLOAT, KIND_TIME = 0, 1, 2
MISSING = np.iinfo(np.int64).min  # empty field
BAD = MISSING + 1  # field present but not parseable
FORMATS = (".csv.gz", ".csv", ".parquet")  # searched in this order
BLOCK_BYTES = 64 << 20
BLOCK_ROWS = 1 << 20  # rows per parsed block (bounds the column arrays)
PARALLEL_BYTES = 1 << 20  # blocks at least this big are parsed by two threads

# parse status codes returned by the kernel
OK, NEED_MORE, BAD_ROW = 0, 1, 2


# -------------------------------------------------------------------------------------------------
# finding and opening tables


def find_table(mimic_dir: str | Path, module: str, name: str) -> Path | None:
    """MIMIC_DIR/module/name.{csv.gz,csv,parquet} if exactly one exists, None if none does.

    Two of them (say a csv beside the csv.gz it was inflated from) are an error: which one is
    current is the user's call, not ours."""
    found = [p for p in (Path(mimic_dir) / module / f"{name}{ext}" for ext in FORMATS) if p.exists()]
    if len(found) > 1:
        raise ValueError(f"{' and '.join(map(str, found))} both exist: keep one of them "
                         f"(remove or move the other) so that {name} is read from one file")
    return found[0] if found else None


def table_format(path: Path) -> str:
    name = path.name
    for ext in FORMATS:
        if name.endswith(ext):
            return ext[1:]
    raise ValueError(f"{path}: unknown table format (expected one of {', '.join(FORMATS)})")


@dataclass
class TableStats:
    """What reading a table saw: data rows (bad lines included) and bad lines skipped."""
    path: str
    rows_read: int = 0
    bad_line: int = 0
    extra: dict = field(default_factory=dict)


# -------------------------------------------------------------------------------------------------
# numba field converters


@nb.njit(cache=True, error_model="numpy")
def _days_from_civil(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's public algorithm)."""
    if m <= 2:
        y -= 1
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


@nb.njit(cache=True, error_model="numpy")
def _digits(buf, i, n):
    """Value of n ASCII digits at buf[i:i+n], or -1 if any is not a digit."""
    v = 0
    for k in range(n):
        c = buf[i + k] - 48
        if c < 0 or c > 9:
            return -1
        v = v * 10 + c
    return v


@nb.njit(cache=True, error_model="numpy")
def parse_int(buf, s, e):
    """int64 of buf[s:e]: optional sign and digits; MISSING if empty, BAD otherwise."""
    if s >= e:
        return MISSING
    neg = False
    if buf[s] == 45 or buf[s] == 43:  # - +
        neg = buf[s] == 45
        s += 1
        if s >= e or e - s > 18:
            return BAD
    elif e - s > 18:
        return BAD
    v = 0
    for i in range(s, e):
        c = buf[i] - 48
        if c < 0 or c > 9:
            return BAD
        v = v * 10 + c
    return -v if neg else v


_POW10 = np.array([10.0 ** k for k in range(23)])


@nb.njit(cache=True, error_model="numpy")
def parse_float(buf, s, e):
    """float64 of buf[s:e] ([+-]digits[.digits][(e|E)[+-]digits]); NaN if empty or not a number.

    Correctly rounded for up to 15-16 significant digits with small exponents (the mantissa and the
    power of ten are exact, so one multiply or divide rounds once); longer inputs are truncated to
    18 significant digits.
    """
    if s >= e:
        return np.nan
    neg = False
    if buf[s] == 45 or buf[s] == 43:
        neg = buf[s] == 45
        s += 1
    mant = 0
    exp10 = 0
    nd = 0  # significant digits taken
    seen = 0  # digits seen at all
    i = s
    while i < e:
        c = buf[i] - 48
        if c < 0 or c > 9:
            break
        seen += 1
        if nd < 18:
            if mant != 0 or c != 0:
                nd += 1
            mant = mant * 10 + c
        else:
            exp10 += 1
        i += 1
    if i < e and buf[i] == 46:  # .
        i += 1
        while i < e:
            c = buf[i] - 48
            if c < 0 or c > 9:
                break
            seen += 1
            if nd < 18:
                if mant != 0 or c != 0:
                    nd += 1
                mant = mant * 10 + c
                exp10 -= 1
            i += 1
    if seen == 0:
        return np.nan
    if i < e and (buf[i] == 101 or buf[i] == 69):  # e E
        i += 1
        eneg = False
        if i < e and (buf[i] == 45 or buf[i] == 43):
            eneg = buf[i] == 45
            i += 1
        if i >= e:
            return np.nan
        ev = 0
        while i < e:
            c = buf[i] - 48
            if c < 0 or c > 9:
                return np.nan
            if ev < 100000:
                ev = ev * 10 + c
            i += 1
        exp10 += -ev if eneg else ev
    if i != e:
        return np.nan
    v = float(mant)
    if exp10 == 0:
        pass
    elif 0 < exp10 <= 22:
        v = v * _POW10[exp10]
    elif -22 <= exp10 < 0:
        v = v / _POW10[-exp10]
    elif mant == 0:
        v = 0.0
    else:  # rare: scale to one digit before the point so the power of ten stays finite
        p = exp10 + nd - 1
        v = v / 10.0 ** (nd - 1)
        if p > 308:
            v = np.inf
        elif p < -340:
            v = 0.0
        elif p < -300:
            v = v * 10.0 ** (p + 300) * 1e-300
        elif p > 300:
            v = v * 10.0 ** (p - 300) * 1e300
        else:
            v = v * 10.0 ** p
    return -v if neg else v


@nb.njit(cache=True, error_model="numpy")
def parse_time(buf, s, e):
    """Seconds since 1970 of 'YYYY-MM-DD[( |T)HH:MM[:SS[.fff]]]'; MISSING if empty, BAD otherwise.

    Fractional seconds are truncated (the data are in whole seconds).
    """
    n = e - s
    if n <= 0:
        return MISSING
    if n < 10 or buf[s + 4] != 45 or buf[s + 7] != 45:
        return BAD
    y = _digits(buf, s, 4)
    mo = _digits(buf, s + 5, 2)
    d = _digits(buf, s + 8, 2)
    if y < 0 or mo < 1 or mo > 12 or d < 1:
        return BAD
    mdays = 31
    if mo == 4 or mo == 6 or mo == 9 or mo == 11:
        mdays = 30
    elif mo == 2:
        mdays = 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    if d > mdays:
        return BAD
    hh = 0
    mi = 0
    ss = 0
    if n > 10:
        if n < 16 or (buf[s + 10] != 32 and buf[s + 10] != 84) or buf[s + 13] != 58:
            return BAD
        hh = _digits(buf, s + 11, 2)
        mi = _digits(buf, s + 14, 2)
        if hh < 0 or hh > 23 or mi < 0 or mi > 59:
            return BAD
        if n > 16:
            if n < 19 or buf[s + 16] != 58:
                return BAD
            ss = _digits(buf, s + 17, 2)
            if ss < 0 or ss > 59:
                return BAD
            if n > 19:
                if buf[s + 19] != 46 or n == 20:
                    return BAD
                if _digits(buf, s + 20, n - 20) < 0:
                    return BAD
    return _days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss


_MDAYS = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


@nb.njit(cache=True, inline="always", error_model="numpy")
def parse_time_fast(buf, s, e):
    """parse_time for the common 19-byte 'YYYY-MM-DD HH:MM:SS' with few branches; others go to
    parse_time. Digits are checked all at once ((d | (9 - d)) < 0 for any byte outside '0'-'9')."""
    if e - s != 19 or buf[s + 4] != 45 or buf[s + 7] != 45 or buf[s + 13] != 58 \
            or buf[s + 16] != 58 or (buf[s + 10] != 32 and buf[s + 10] != 84):
        return parse_time(buf, s, e)
    y0 = np.int64(buf[s]) - 48
    y1 = np.int64(buf[s + 1]) - 48
    y2 = np.int64(buf[s + 2]) - 48
    y3 = np.int64(buf[s + 3]) - 48
    m0 = np.int64(buf[s + 5]) - 48
    m1 = np.int64(buf[s + 6]) - 48
    d0 = np.int64(buf[s + 8]) - 48
    d1 = np.int64(buf[s + 9]) - 48
    h0 = np.int64(buf[s + 11]) - 48
    h1 = np.int64(buf[s + 12]) - 48
    i0 = np.int64(buf[s + 14]) - 48
    i1 = np.int64(buf[s + 15]) - 48
    s0 = np.int64(buf[s + 17]) - 48
    s1 = np.int64(buf[s + 18]) - 48
    chk = (y0 | y1 | y2 | y3 | m0 | m1 | d0 | d1 | h0 | h1 | i0 | i1 | s0 | s1
           | (9 - y0) | (9 - y1) | (9 - y2) | (9 - y3) | (9 - m0) | (9 - m1) | (9 - d0) | (9 - d1)
           | (9 - h0) | (9 - h1) | (9 - i0) | (9 - i1) | (9 - s0) | (9 - s1))
    y = y0 * 1000 + y1 * 100 + y2 * 10 + y3
    mo = m0 * 10 + m1
    d = d0 * 10 + d1
    hh = h0 * 10 + h1
    mi = i0 * 10 + i1
    ss = s0 * 10 + s1
    if chk < 0 or mo < 1 or mo > 12 or hh > 23 or mi > 59 or ss > 59 or d < 1:
        return BAD
    leap = 1 if (mo == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 0
    if d > _MDAYS[mo] + leap:
        return BAD
    # days from civil (Hinnant), years >= 0 so the era is y // 400
    yy = y - 1 if mo <= 2 else y
    era = yy // 400
    yoe = yy - era * 400
    mp = mo - 3 if mo > 2 else mo + 9
    doe = yoe * 365 + yoe // 4 - yoe // 100 + (153 * mp + 2) // 5 + d - 1
    return (era * 146097 + doe - 719468) * 86400 + hh * 3600 + mi * 60 + ss


# -------------------------------------------------------------------------------------------------
# the tokenizer


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
            if nf != ncols or bad:
                if not skip_bad:
                    bad_info[1] = -1 if bad else nf
                    return BAD_ROW, row_start, rows, lines
                bad_info[0] += 1
            else:
                rows += 1
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
    if nf != ncols or bad:
        if not skip_bad:
            bad_info[1] = -1 if bad else nf
            return BAD_ROW, row_start, rows, lines
        bad_info[0] += 1
    else:
        rows += 1
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


class CsvBytes:
    """The header and a window of bytes of a csv / csv.gz file, for kernels that tokenize the bytes
    themselves: rows to parse lie in `buf[begin:filled]` and `line` is the 1-based line number of
    buf[begin]. After consuming up to `pos`, `refill(pos, lines)` moves on.

    Plain csv is memory-mapped and the window slides over the map: no copy, and the pages
    behind the window are released so memory stays flat however big the file. csv.gz is inflated
    by ISA-L in a background thread into a reused buffer (the unfinished row is carried over)."""

    def __init__(self, path: Path, block_bytes: int = BLOCK_BYTES):
        import mmap

        self.path = Path(path)
        self.block_bytes = block_bytes
        self.line = 2
        self.mm = None
        if not self.path.name.endswith(".gz") and self.path.stat().st_size > 0:
            self.raw = self.f = open(self.path, "rb")
            self.mm = mmap.mmap(self.raw.fileno(), 0, access=mmap.ACCESS_COPY)
            self.buf = np.frombuffer(self.mm, np.uint8)
            nl = _next_newline(self.buf, 0, min(len(self.buf), 1 << 20))
            if nl >= min(len(self.buf), 1 << 20):
                nl = _next_newline(self.buf, 0, len(self.buf))
            self.names = _header_names(bytes(self.buf[:nl]), self.path)
            self.begin = min(nl + 1, len(self.buf))
            self.filled = min(len(self.buf), self.begin + block_bytes)
            self.eof = self.filled == len(self.buf)
            return
        self.f, self.raw = _open_bytes(self.path)
        try:
            self.names, rest = _read_header(self.f, self.path)
        except BaseException:
            self.close()
            raise
        self.buf = np.empty(max(block_bytes, 2 * len(rest) + 1), np.uint8)
        self.buf[:len(rest)] = np.frombuffer(rest, np.uint8)
        self.begin = 0
        self.filled = len(rest)
        self.eof = False
        self._fill()

    def _fill(self) -> None:
        buf = memoryview(self.buf)
        while not self.eof and self.filled < len(self.buf):
            n = self.f.readinto(buf[self.filled:])
            if not n:
                self.eof = True
                break
            self.filled += n

    def done(self, pos: int) -> bool:
        return self.eof and pos >= self.filled

    def refill(self, pos: int, lines: int) -> None:
        """Drop the bytes before `pos` (holding `lines` newlines), keep the unfinished row, read
        more."""
        self.line += lines
        if self.mm is not None:
            import mmap

            page = mmap.PAGESIZE
            lo, hi = self.begin // page * page, pos // page * page
            if hi > lo and hasattr(self.mm, "madvise"):
                self.mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            self.begin = pos
            filled = min(len(self.buf), pos + self.block_bytes)
            if filled <= self.filled:  # one row longer than the window: widen it
                filled = min(len(self.buf), self.filled + self.block_bytes)
            self.filled = filled
            self.eof = filled == len(self.buf)
            return
        left = self.filled - pos
        if left:
            self.buf[:left] = self.buf[pos:self.filled]
        self.filled = left
        if left == len(self.buf):  # one row fills the buffer: grow it
            if self.eof:
                raise AssertionError("parser made no progress at end of input")
            bigger = np.empty(2 * len(self.buf), np.uint8)
            bigger[:left] = self.buf[:left]
            self.buf = bigger
        self._fill()

    def tell(self) -> int:
        return self.begin if self.mm is not None else self.raw.tell()

    def close(self) -> None:
        if self.mm is not None:
            self.buf = None
            try:
                self.mm.close()
            except BufferError:  # a block still refers to the map: leave it to the collector
                pass
        self.f.close()
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -------------------------------------------------------------------------------------------------
# streaming a CSV file block by block


def _open_bytes(path: Path):
    """(reader of the CSV bytes, raw file): .gz is inflated by ISA-L in a background thread."""
    raw = open(path, "rb", buffering=0)
    if path.name.endswith(".gz"):
        from isal import igzip_threaded

        return _GzipReader(path, igzip_threaded.open(raw, "rb", threads=1, block_size=4 << 20)), raw
    return raw, raw


class _GzipReader:
    """A gzip stream whose read errors (a truncated download, corrupt bytes) name the file in
    one line instead of surfacing as a bare EOFError or zlib error from the inflating thread."""

    def __init__(self, path: Path, f):
        self.path, self.f = path, f

    def _fail(self, e: BaseException):
        return ValueError(f"{self.path}: truncated or corrupt gzip file ({e}); "
                          "download or compress it again")

    def read(self, n: int = -1) -> bytes:
        try:
            return self.f.read(n)
        except _GZIP_ERRORS as e:
            raise self._fail(e) from e

    def readinto(self, b) -> int:
        try:
            return self.f.readinto(b)
        except _GZIP_ERRORS as e:
            raise self._fail(e) from e

    def close(self) -> None:
        try:
            self.f.close()
        except _GZIP_ERRORS:
            pass


def _gzip_errors() -> tuple:
    import zlib

    from isal.isal_zlib import error as IsalError

    return EOFError, OSError, zlib.error, IsalError  # gzip.BadGzipFile is an OSError


_GZIP_ERRORS = _gzip_errors()


def _read_header(f, path: Path) -> tuple[list[str], bytes]:
    """Column names of the first line, and the bytes read past it."""
    head = b""
    while b"\n" not in head:
        chunk = f.read(1 << 16)
        if not chunk:
            break
        head += chunk
    line, _, rest = head.partition(b"\n")
    return _header_names(line, path), rest


def _header_names(line: bytes, path: Path) -> list[str]:
    text = line.decode("utf-8", "replace").rstrip("\r").lstrip("\ufeff")
    names = next(csv.reader([text]), [])
    if not names or names == [""]:
        raise ValueError(f"{path}: no header line (empty file?)")
    return [n.strip() for n in names]


def _column_plan(names: list[str], columns: dict[str, int], path: Path):
    """Per file column: output slot and kind; raises naming the first missing column."""
    for col in columns:
        if col not in names:
            raise ValueError(f"{path}: missing required column {col!r} "
                             f"(columns: {', '.join(names)})")
    col_slot = np.full(len(names), -1, np.int64)
    col_kind = np.zeros(len(names), np.int64)
    n_int = n_float = 0
    slots = {}
    for c, name in enumerate(names):
        if name in columns and name not in slots:
            kind = columns[name]
            col_kind[c] = kind
            if kind == KIND_FLOAT:
                col_slot[c] = n_float
                slots[name] = ("f", n_float)
                n_float += 1
            else:
                col_slot[c] = n_int
                slots[name] = ("i", n_int)
                n_int += 1
    return col_slot, col_kind, n_int, n_float, slots


def iter_csv(path: Path, columns: dict[str, int], on_bad_lines: str = "error",
             stats: TableStats | None = None, block_bytes: int = BLOCK_BYTES,
             block_rows: int = BLOCK_ROWS, progress=None, parallel: bool | None = None
             ) -> Iterator[dict[str, np.ndarray]]:
    """Yield blocks {column: array} of a CSV/CSV.GZ table; see the module docstring.

    parallel: parse each half of a block in its own thread (default: when 2+ CPUs)."""
    if parallel is None:
        parallel = (os.cpu_count() or 1) > 1
    path = Path(path)
    stats = stats if stats is not None else TableStats(str(path))
    skip_bad = on_bad_lines == "skip"
    f, raw = _open_bytes(path)
    pool = None
    try:
        names, rest = _read_header(f, path)
        col_slot, col_kind, n_int, n_float, slots = _column_plan(names, columns, path)
        ints = np.empty((n_int, block_rows), np.int64)
        floats = np.empty((n_float, block_rows), np.float64)
        bad_info = np.zeros(2, np.int64)
        if parallel:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(1)
            ints2, floats2 = np.empty_like(ints), np.empty_like(floats)
            bad2 = np.zeros(2, np.int64)
        buf = np.empty(max(block_bytes, 2 * len(rest) + 1), np.uint8)
        buf[:len(rest)] = np.frombuffer(rest, np.uint8)
        filled = len(rest)
        line = 2  # line number (1-based) of buf[0]
        eof = False
        while True:
            # fill the buffer behind the carried-over bytes
            while not eof and filled < len(buf):
                n = f.readinto(memoryview(buf)[filled:])
                if not n:
                    eof = True
                    break
                filled += n
            if progress is not None:
                progress.update_to(raw.tell())
            pos = 0
            split_ok = True
            while True:
                if pool is not None and split_ok and filled - pos >= PARALLEL_BYTES:
                    # two threads: the second half starts at a newline after the middle; its rows
                    # are used only if the first half ends exactly there (no quoted newline across)
                    split = _next_newline(buf, pos + (filled - pos) // 2, filled) + 1
                    if 0 < split < filled:
                        bad2[:] = 0
                        fut = pool.submit(parse_block, buf, split, filled, eof, len(names),
                                          col_slot, col_kind, ints2, floats2, skip_bad, bad2)
                        a = parse_block(buf, pos, split, False, len(names), col_slot, col_kind,
                                        ints, floats, skip_bad, bad_info)
                        b = fut.result()
                        _raise_bad(a, line, path, len(names), bad_info)
                        line += a[3]
                        stats.rows_read += a[2]
                        if a[2]:
                            yield _block(slots, ints, floats, a[2])
                        if a[1] != split:  # stopped early: parse the rest sequentially
                            pos = a[1]
                            split_ok = False
                            continue
                        _raise_bad(b, line, path, len(names), bad2)
                        bad_info[0] += bad2[0]
                        line += b[3]
                        stats.rows_read += b[2]
                        if b[2]:
                            yield _block(slots, ints2, floats2, b[2])
                        status, pos = b[0], b[1]
                        if status == NEED_MORE or pos >= filled:
                            break
                        continue
                res = parse_block(buf, pos, filled, eof, len(names), col_slot, col_kind, ints,
                                  floats, skip_bad, bad_info)
                _raise_bad(res, line, path, len(names), bad_info)
                status, pos, n_rows, n_lines = res
                line += n_lines
                stats.rows_read += n_rows
                if n_rows:
                    yield _block(slots, ints, floats, n_rows)
                if status == NEED_MORE or pos >= filled:
                    break
            if eof and pos >= filled:
                break
            # carry the unfinished row over; grow the buffer if one row fills it
            left = filled - pos
            if left:
                buf[:left] = buf[pos:filled]
            filled = left
            if left == len(buf):
                if eof:
                    raise AssertionError("parser made no progress at end of input")
                bigger = np.empty(2 * len(buf), np.uint8)
                bigger[:left] = buf[:left]
                buf = bigger
        stats.bad_line += int(bad_info[0])
        stats.rows_read += int(bad_info[0])
    finally:
        if pool is not None:
            pool.shutdown()
        f.close()
        raw.close()


def _block(slots, ints, floats, n_rows):
    return {name: (ints[s, :n_rows] if k == "i" else floats[s, :n_rows])
            for name, (k, s) in slots.items()}


def _raise_bad(res, line, path, ncols, bad_info):
    if res[0] == BAD_ROW:
        got = int(bad_info[1])
        what = "malformed quoting" if got < 0 else f"{got} fields, expected {ncols}"
        raise ValueError(f"{path}: line {line + res[3]}: malformed CSV row ({what}); "
                         "use --on-bad-lines skip to skip and count such rows")


@nb.njit(cache=True, nogil=True)
def _next_newline(buf, i, end):
    while i < end and buf[i] != 10:
        i += 1
    return i


# -------------------------------------------------------------------------------------------------
# parquet
#
# A parquet column comes to the kernels as an ArrowColumn: numpy views of the Arrow buffers
# themselves (no copy, no pandas), the validity bitmap, and for timestamps the units per second.
# Null slots hold arbitrary values in `data`; readers check the bitmap (see arrow_valid).


class ArrowColumn(NamedTuple):
    """One column of a record batch as the kernels read it.

    data: int64 (KIND_INT, KIND_TIME) or float64 (KIND_FLOAT) values, one per row;
    valid: uint8 Arrow validity bitmap (bit bit0 + r is row r), empty when every row is valid;
    div: units per second of a KIND_TIME column (1 s, 1000 ms, ...), else 1."""
    data: np.ndarray
    valid: np.ndarray
    bit0: int
    div: int


_NO_BITS = np.zeros(0, np.uint8)
_TIME_DIV = {"s": 1, "ms": 1000, "us": 1_000_000, "ns": 1_000_000_000}


@nb.njit(cache=True, inline="always")
def arrow_valid(bits, bit0, r):
    """Row r of a column with validity bitmap `bits` (empty: all valid) is not null."""
    if bits.shape[0] == 0:
        return True
    j = bit0 + r
    return (bits[j >> 3] >> (j & 7)) & 1 == 1


@nb.njit(cache=True, nogil=True)
def _arrow_to_int(data, bits, bit0, div, out):
    """out[r] = data[r] // div, or MISSING where null (the CSV kernel's conventions)."""
    for r in range(out.shape[0]):
        if not arrow_valid(bits, bit0, r):
            out[r] = MISSING
        elif div == 1:
            out[r] = data[r]
        else:
            out[r] = data[r] // div


@nb.njit(cache=True, nogil=True)
def _arrow_to_float(data, bits, bit0, out):
    for r in range(out.shape[0]):
        out[r] = data[r] if arrow_valid(bits, bit0, r) else np.nan


def _is_text(t) -> bool:
    import pyarrow as pa

    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _buffer_view(arr, dtype) -> np.ndarray:
    """The values of a fixed-width Arrow array as a numpy view of its data buffer."""
    n = len(arr)
    if n == 0:
        return np.empty(0, dtype)
    return np.frombuffer(arr.buffers()[1], dtype, count=arr.offset + n)[arr.offset:]


def arrow_column(arr, kind: int, path: Path, name: str) -> ArrowColumn:
    """An Arrow array as an ArrowColumn of `kind`; raises naming the file and column when the
    type cannot be one. Text columns are parsed like CSV fields (slow, but correct)."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if _is_text(t):  # parsed to plain numpy with MISSING / NaN
        return ArrowColumn(_text_column(arr, kind), _NO_BITS, 0, 1)
    div = 1
    if kind == KIND_FLOAT:
        if not (pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)
                or pa.types.is_decimal(t)):
            raise ValueError(f"{path}: column {name!r} has type {t}, expected a number")
        if not pa.types.is_float64(t):
            arr = arr.cast(pa.float64())
        data = _buffer_view(arr, np.float64)
    elif kind == KIND_INT:
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise ValueError(f"{path}: column {name!r} has type {t}, expected an integer")
        if not pa.types.is_int64(t):
            arr = arr.cast(pa.int64(), safe=False)
        data = _buffer_view(arr, np.int64)
    else:
        if pa.types.is_date(t):
            arr = arr.cast(pa.timestamp("s"))
        elif not pa.types.is_timestamp(t):
            raise ValueError(f"{path}: column {name!r} has type {t}, expected a timestamp")
        div = _TIME_DIV[arr.type.unit]
        data = _buffer_view(arr, np.int64)  # timestamps are int64 counts of their unit
    bits = _NO_BITS
    if arr.null_count:
        bits = np.frombuffer(arr.buffers()[0], np.uint8)
    return ArrowColumn(data, bits, arr.offset, div)


def _text_column(arr, kind: int) -> np.ndarray:
    values = arr.to_pylist()
    if kind == KIND_FLOAT:
        return np.array([_py_float(v) for v in values], np.float64)
    if kind == KIND_INT:
        return np.array([_py_int(v) for v in values], np.int64)
    out = np.empty(len(values), np.int64)
    for j, v in enumerate(values):
        if v is None or v == "":
            out[j] = MISSING
        else:
            b = np.frombuffer(v.encode(), np.uint8)
            out[j] = parse_time(b, 0, len(b))
    return out


def _arrow_column(arr, kind: int, path: Path, name: str) -> np.ndarray:
    """An Arrow array as a plain numpy column with the CSV kernel's conventions."""
    col = arrow_column(arr, kind, path, name)
    if kind == KIND_FLOAT:
        if len(col.valid) == 0:
            return col.data
        out = np.empty(len(col.data), np.float64)
        _arrow_to_float(col.data, col.valid, col.bit0, out)
        return out
    if len(col.valid) == 0 and col.div == 1:
        return col.data
    out = np.empty(len(col.data), np.int64)
    _arrow_to_int(col.data, col.valid, col.bit0, col.div, out)
    return out


def _py_int(v) -> int:
    if v is None or v == "":
        return MISSING
    try:
        return int(v)
    except ValueError:
        return BAD


def _py_float(v) -> float:
    if v is None or v == "":
        return np.nan
    b = np.frombuffer(str(v).encode(), np.uint8)
    return parse_float(b, 0, len(b))


def _parquet_error(path: Path, e: BaseException) -> ValueError:
    return ValueError(f"{path}: not a readable parquet file, truncated or corrupt? ({e})")


def _open_parquet(path: Path, columns) -> "pyarrow.parquet.ParquetFile":  # noqa: F821
    """The parquet file, checked to hold every wanted column; errors name the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(path, e) from e
    names = pf.schema_arrow.names
    for col in columns:
        if col not in names:
            raise ValueError(f"{path}: missing required column {col!r} (columns: {', '.join(names)})")
    return pf


def _parquet_batches(pf, path: Path, block_rows: int, columns: list[str]):
    """Record batches of at most block_rows rows, one row group at a time: a reader over the
    whole file buffers every row group's column chunks (600 MB for 50 M rows), one per row group
    holds only its own. A batch that cannot be decoded is an error naming the file."""
    import pyarrow as pa

    try:
        for g in range(pf.num_row_groups):
            yield from pf.iter_batches(batch_size=block_rows, row_groups=[g], columns=columns,
                                       use_threads=False)
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(path, e) from e


def iter_parquet_arrow(path: Path, columns: dict[str, int], stats: TableStats | None = None,
                       block_rows: int = BLOCK_ROWS, progress=None
                       ) -> Iterator[dict[str, ArrowColumn]]:
    """Yield blocks {column: ArrowColumn} of a parquet table (needed columns only).

    A background thread decodes the next batch while the caller works on this one (pyarrow and
    the numba kernels both release the GIL), so reading overlaps aggregating on two cores."""
    from concurrent.futures import ThreadPoolExecutor

    path = Path(path)
    stats = stats if stats is not None else TableStats(str(path))
    pf = _open_parquet(path, columns)
    batches = _parquet_batches(pf, path, block_rows, list(columns))
    done = 0
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(next, batches, None)
        while True:
            batch = fut.result()
            if batch is None:
                break
            fut = pool.submit(next, batches, None)
            stats.rows_read += batch.num_rows
            done += batch.num_rows
            if progress is not None:
                progress.update_to(done)
            if batch.num_rows:
                yield {name: arrow_column(batch.column(name), kind, path, name)
                       for name, kind in columns.items()}


def iter_parquet(path: Path, columns: dict[str, int], stats: TableStats | None = None,
                 block_rows: int = BLOCK_ROWS, progress=None) -> Iterator[dict[str, np.ndarray]]:
    """Yield blocks {column: array} of a parquet table (needed columns only)."""
    path = Path(path)
    stats = stats if stats is not None else TableStats(str(path))
    pf = _open_parquet(path, columns)
    done = 0
    for batch in _parquet_batches(pf, path, block_rows, list(columns)):
        stats.rows_read += batch.num_rows
        done += batch.num_rows
        if progress is not None:
            progress.update_to(done)
        if batch.num_rows:
            yield {name: _arrow_column(batch.column(name), kind, path, name)
                   for name, kind in columns.items()}


def parquet_rows(path: Path) -> int:
    return _open_parquet(path, ()).metadata.num_rows


# -------------------------------------------------------------------------------------------------
# one entry point


def iter_table(path: Path, columns: dict[str, int], on_bad_lines: str = "error",
               stats: TableStats | None = None, progress: bool = False, desc: str | None = None,
               block_bytes: int = BLOCK_BYTES, block_rows: int = BLOCK_ROWS
               ) -> Iterator[dict[str, np.ndarray]]:
    """Blocks of the wanted columns of a csv / csv.gz / parquet table.

    progress: show a tqdm bar (bytes for csv, rows for parquet) when the table takes a while.
    """
    if on_bad_lines not in ("error", "skip"):
        raise ValueError(f"on_bad_lines must be 'error' or 'skip', not {on_bad_lines!r}")
    path = Path(path)
    fmt = table_format(path)
    bar = _Progress(path, fmt, desc) if progress else None
    try:
        if fmt == "parquet":
            yield from iter_parquet(path, columns, stats, block_rows, bar)
        else:
            yield from iter_csv(path, columns, on_bad_lines, stats, block_bytes, block_rows, bar)
    finally:
        if bar is not None:
            bar.close()


def read_table(path: Path, columns: dict[str, int], on_bad_lines: str = "error",
               stats: TableStats | None = None) -> dict[str, np.ndarray]:
    """A whole (small) table's wanted columns, concatenated."""
    parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
    for block in iter_table(path, columns, on_bad_lines, stats, block_rows=1 << 18):
        for c in columns:
            parts[c].append(block[c].copy())
    out = {}
    for c, kind in columns.items():
        dtype = np.float64 if kind == KIND_FLOAT else np.int64
        out[c] = np.concatenate(parts[c]) if parts[c] else np.empty(0, dtype)
    return out


class _Progress:
    """A tqdm bar that only appears when a table takes more than half a second."""

    def __init__(self, path: Path, fmt: str, desc: str | None):
        from tqdm.auto import tqdm

        if fmt == "parquet":
            total, unit, scale = parquet_rows(path), "rows", False
        else:  # bytes of the file as stored (compressed for csv.gz)
            total, unit, scale = path.stat().st_size, "B", True
        self.bar = tqdm(total=total, unit=unit, unit_scale=scale, delay=0.5, leave=False,
                        desc=desc or path.name)
        self.done = 0

    def update_to(self, n: int) -> None:
        if n > self.done:
            self.bar.update(n - self.done)
            self.done = n

    def close(self) -> None:
        self.bar.close()


def compile_kernels() -> None:
    """Compile (or load from the cache) the tokenizer, so that timings exclude compilation."""
    b = np.frombuffer(b"1,2.5,2000-01-01 00:00:00\n", np.uint8).copy()
    parse_block(b, 0, len(b), True, 3, np.array([0, 0, 1]), np.array([0, 1, 2]),
                np.empty((2, 4), np.int64), np.empty((1, 4), np.float64), False,
                np.zeros(2, np.int64))
    _next_newline(b, 0, len(b))


__all__ = ["KIND_INT", "KIND_FLOAT", "KIND_TIME", "MISSING", "BAD", "TableStats", "find_table",
           "table_format", "iter_table", "iter_csv", "iter_parquet", "iter_parquet_arrow",
           "ArrowColumn", "arrow_column", "arrow_valid", "read_table", "parse_block",
           "parse_int", "parse_float", "parse_time", "compile_kernels"]
