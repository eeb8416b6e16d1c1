"""One table streamed to a file: csv, csv.gz (ISA-L igzip, level 1) or parquet (zstd), with the
CSV written as MIMIC writes it."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from ehrjepa.synth.schemas import TS

FORMATS = ("csv.gz", "csv", "parquet")


def parquet_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of a parquet table: timestamps in ms, as Parquet has no seconds unit (pyarrow
    would read timestamp[s] columns back as timestamp[ms] anyway)."""
    return pa.schema([pa.field(f.name, pa.timestamp("ms")) if f.type == TS else f
                      for f in schema])


class TableWriter:
    """Streams one table to csv, csv.gz (ISA-L igzip, level 1) or parquet (zstd, row groups)."""

    def __init__(self, path: Path, schema: pa.Schema, fmt: str):
        self.path, self.schema, self.fmt = path, schema, fmt
        self.rows = 0
        if fmt == "parquet":
            self.schema = parquet_schema(schema)
            self.writer = pq.ParquetWriter(path, self.schema, compression="zstd")
            return
        self.raw = open(path, "wb")
        self.sink = self.raw
        if fmt == "csv.gz":
            from isal import igzip
            # no file name and mtime 0 in the header: the same rows give the same bytes
            self.sink = igzip.IGzipFile(filename="", mode="wb", fileobj=self.raw,
                                        compresslevel=1, mtime=0)
        # pyarrow quotes the header: write it as MIMIC does, unquoted
        self.sink.write((",".join(schema.names) + "\n").encode())

    def write(self, table: pa.Table):
        self.rows += table.num_rows
        if self.fmt == "parquet":
            self.writer.write_table(table.cast(self.schema), row_group_size=1 << 20)
            return
        self.sink.write(_csv_bytes(table))

    def close(self):
        if self.fmt == "parquet":
            self.writer.close()
            return
        if self.sink is not self.raw:
            self.sink.close()
        self.raw.close()


_QUOTE, _COMMA = "\x02", "\x01"  # stand-ins for '"' and ',' inside fields that need quoting


def _csv_bytes(table: pa.Table) -> memoryview:
    """Rows as MIMIC's CSV: no header, fields quoted only where they hold ',' '"' or a newline.

    pyarrow's writer either quotes every string or refuses such fields, so a field that needs
    quotes is written quoted with stand-in bytes, which are swapped back afterwards."""
    columns, swapped = [], False
    for col in table.columns:
        if pa.types.is_dictionary(col.type):
            col = col.cast(pa.string())
        needs = pc.match_substring_regex(col, '[,"\n\r]') if pa.types.is_string(col.type) else None
        if needs is not None and pc.any(needs).as_py():
            quoted = pc.replace_substring(pc.replace_substring(col, '"', _QUOTE * 2), ",", _COMMA)
            quoted = pc.binary_join_element_wise(_QUOTE, quoted, _QUOTE, "")
            col = pc.if_else(needs, quoted, col)
            swapped = True
        columns.append(col)
    buf = pa.BufferOutputStream()
    pcsv.write_csv(pa.table(columns, names=table.column_names), buf,
                   pcsv.WriteOptions(include_header=False, quoting_style="none",
                                     batch_size=1 << 16))
    data = buf.getvalue()
    if swapped:
        data = data.to_pybytes().replace(_QUOTE.encode(), b'"').replace(_COMMA.encode(), b",")
    return memoryview(data)
