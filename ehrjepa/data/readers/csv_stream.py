"""Streaming csv / csv.gz tables: block by block into typed columns (iter_csv), or as a sliding
window of raw bytes for kernels that tokenize themselves (CsvBytes).

csv.gz is inflated by ISA-L in a background thread (`isal.igzip_threaded`) so inflating overlaps
parsing; its read errors (a truncated download) name the file. Blocks are 64 MB by default.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .fields import KIND_FLOAT
from .files import BLOCK_ROWS, TableStats
from .tokenizer import BAD_ROW, NEED_MORE, _next_newline, parse_block

BLOCK_BYTES = 64 << 20
PARALLEL_BYTES = 1 << 20  # blocks at least this big are parsed by two threads


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
