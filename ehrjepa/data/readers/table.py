"""One entry point over every format: iter_table streams the wanted columns of a csv, csv.gz or
parquet table as blocks, read_table reads a small one whole."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .csv_stream import BLOCK_BYTES, iter_csv
from .fields import KIND_FLOAT
from .files import BLOCK_ROWS, Progress, TableStats, table_format
from .parquet import iter_parquet
from .tokenizer import _next_newline, parse_block


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
    bar = Progress(path, fmt, desc) if progress else None
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


def compile_kernels() -> None:
    """Compile (or load from the cache) the tokenizer, so that timings exclude compilation."""
    b = np.frombuffer(b"1,2.5,2000-01-01 00:00:00\n", np.uint8).copy()
    parse_block(b, 0, len(b), True, 3, np.array([0, 0, 1]), np.array([0, 1, 2]),
                np.empty((2, 4), np.int64), np.empty((1, 4), np.float64), False,
                np.zeros(2, np.int64))
    _next_newline(b, 0, len(b))
