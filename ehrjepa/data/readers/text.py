"""Small tables with text columns (hosp/diagnoses_icd's icd_code), read whole through pyarrow:
the numba readers parse numbers and times only. The same formats (csv, csv.gz, parquet), the
same accounting (TableStats: rows read, bad lines) and the same one-line errors as the others;
`parquet.arrow_numpy` turns a column into numpy with the numeric readers' conventions.
"""
from __future__ import annotations

from pathlib import Path

from .files import TableStats, table_format


def table_columns(path: Path) -> list[str]:
    """The column names of a csv, csv.gz or parquet table (its header or schema)."""
    path = Path(path)
    if table_format(path) == "parquet":
        from .parquet import _open_parquet

        return list(_open_parquet(path, ()).schema_arrow.names)
    from .csv_stream import _open_bytes, _read_header

    f, raw = _open_bytes(path)
    try:
        return _read_header(f, path)[0]
    finally:
        f.close()
        raw.close()


def read_text_table(path: Path, columns: list[str], on_bad_lines: str = "error",
                    stats: TableStats | None = None) -> dict:
    """{column: pyarrow array} of a whole table, csv columns as strings (parquet as stored)."""
    import pyarrow as pa

    path = Path(path)
    stats = stats if stats is not None else TableStats(str(path))
    names = table_columns(path)
    for col in columns:
        if col not in names:
            raise ValueError(f"{path}: missing required column {col!r} (columns: {', '.join(names)})")
    if table_format(path) == "parquet":
        from .parquet import _open_parquet, _parquet_error

        try:
            table = _open_parquet(path, columns).read(columns=columns, use_threads=False)
        except (pa.ArrowException, OSError) as e:
            raise _parquet_error(path, e) from e
        stats.rows_read += table.num_rows
        return {c: table.column(c).combine_chunks() for c in columns}
    return _read_csv(path, names, columns, on_bad_lines, stats)


def _read_csv(path: Path, names: list[str], columns: list[str], on_bad_lines: str,
              stats: TableStats) -> dict:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    bad = []

    def handler(row):  # pyarrow calls this for a row with the wrong number of fields
        bad.append(row)
        return "skip"

    try:
        table = pcsv.read_csv(
            path, read_options=pcsv.ReadOptions(use_threads=False, column_names=names,
                                                skip_rows=1),
            parse_options=pcsv.ParseOptions(invalid_row_handler=handler),
            convert_options=pcsv.ConvertOptions(include_columns=columns,
                                                column_types={c: pa.string() for c in columns},
                                                strings_can_be_null=False))
    except (pa.ArrowException, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable CSV table ({' '.join(str(e).split())})") from e
    if bad and on_bad_lines == "error":
        row = bad[0]
        line = f"line {row.number}: " if row.number is not None else ""
        raise ValueError(f"{path}: {line}malformed CSV row ({row.actual_columns} fields, expected "
                         f"{row.expected_columns}); use --on-bad-lines skip to skip and count "
                         "such rows")
    stats.rows_read += table.num_rows + len(bad)
    stats.bad_line += len(bad)
    return {c: table.column(c).combine_chunks() for c in columns}

