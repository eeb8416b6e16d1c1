"""Parquet tables through pyarrow, needed columns only, one row group at a time.

A column comes to the kernels as an ArrowColumn: numpy views of the Arrow buffers themselves
(no copy, no pandas), the validity bitmap, and for timestamps the units per second. Null slots
hold arbitrary values in `data`; readers check the bitmap (see arrow_valid). iter_parquet gives
plain numpy columns with the CSV conventions (fields.py) instead.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, NamedTuple

import numba as nb
import numpy as np

from .fields import BAD, KIND_FLOAT, KIND_INT, MISSING, parse_float, parse_time
from .files import BLOCK_ROWS, TableStats


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
    if pa.types.is_null(t):  # a column with no value at all (pyarrow's type for it)
        empty = np.full(len(arr), np.nan) if kind == KIND_FLOAT else np.full(len(arr), MISSING)
        return ArrowColumn(empty, _NO_BITS, 0, 1)
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
    if kind == KIND_INT:
        return _text_ints(arr)
    values = arr.to_pylist()
    if kind == KIND_FLOAT:
        return np.array([_py_float(v) for v in values], np.float64)
    out = np.empty(len(values), np.int64)
    for j, v in enumerate(values):
        if v is None or v == "":
            out[j] = MISSING
        else:
            b = np.frombuffer(v.encode(), np.uint8)
            out[j] = parse_time(b, 0, len(b))
    return out


def _text_ints(arr) -> np.ndarray:
    """Text as int64, vectorised (tables such as diagnoses_icd hold millions of rows): MISSING
    where null or empty, BAD where the text (trimmed, an optional sign) is not an integer that
    fits in int64."""
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pc.replace_substring_regex(pc.utf8_trim_whitespace(arr).fill_null(""), r"^\+", "")
    out = np.full(len(arr), BAD, np.int64)
    out[pc.equal(text, "").to_numpy(zero_copy_only=False)] = MISSING
    ok = pc.match_substring_regex(text, r"^-?[0-9]{1,18}$").to_numpy(zero_copy_only=False)
    if ok.any():
        out[ok] = pc.filter(text, pa.array(ok)).cast(pa.int64()).to_numpy()
    return out


def arrow_numpy(arr, kind: int, path: Path, name: str) -> np.ndarray:
    """An Arrow array as a plain numpy column with the CSV kernel's conventions."""
    return _plain(arrow_column(arr, kind, path, name), kind)


def _plain(col: ArrowColumn, kind: int) -> np.ndarray:
    """An ArrowColumn as plain numpy: MISSING / NaN at nulls, timestamps in seconds."""
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
    """Yield blocks {column: array} of a parquet table (needed columns only), as plain numpy with
    the CSV conventions."""
    for block in iter_parquet_arrow(path, columns, stats, block_rows, progress):
        yield {name: _plain(block[name], kind) for name, kind in columns.items()}


def parquet_rows(path: Path) -> int:
    return _open_parquet(path, ()).metadata.num_rows
