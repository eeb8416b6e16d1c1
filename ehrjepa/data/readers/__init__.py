"""Reading MIMIC-IV tables (csv, csv.gz, parquet) as streamed blocks of typed numpy columns.

Only the columns a caller asks for are parsed. Every block is a dict {column name: numpy array},
the same for all three formats (conventions in fields.py). The arrays of one block are only valid
until the next block is requested (buffers are reused).

    fields.py      numba converters of one field (int, float, timestamp)
    tokenizer.py   the CSV tokenizer (parse_block) and its fast path for plain rows
    csv_stream.py  csv / csv.gz streamed block by block (iter_csv) or as raw bytes (CsvBytes)
    parquet.py     parquet through pyarrow (iter_parquet, iter_parquet_arrow)
    files.py       find_table, table_format, TableStats, the progress bar
    table.py       iter_table and read_table over every format
    text.py        small tables with text columns (diagnoses_icd) through pyarrow; table_columns

Names are imported lazily (module __getattr__), so that finding a table (files.py) does not pull
in numba: the benchmark's baselines use it and are timed from process start.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    **dict.fromkeys(("KIND_INT", "KIND_FLOAT", "KIND_TIME", "MISSING", "BAD", "parse_int",
                     "parse_float", "parse_time"), "fields"),
    **dict.fromkeys(("FORMATS", "BLOCK_ROWS", "TableStats", "Progress", "find_table",
                     "table_format"), "files"),
    **dict.fromkeys(("BLOCK_BYTES", "CsvBytes", "iter_csv"), "csv_stream"),
    **dict.fromkeys(("ArrowColumn", "arrow_column", "arrow_numpy", "arrow_valid", "iter_parquet",
                     "iter_parquet_arrow"), "parquet"),
    **dict.fromkeys(("parse_block",), "tokenizer"),
    **dict.fromkeys(("table_columns", "read_text_table"), "text"),
    **dict.fromkeys(("iter_table", "read_table", "compile_kernels"), "table"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ehrjepa.data.readers' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
