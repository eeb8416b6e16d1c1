"""The numba CSV tokenizer and field parsers against plain-Python references, and the catalog."""
import csv
import datetime as dt
import gzip
import io
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrjepa.data.catalog import load_catalog, parse_catalog
from ehrjepa.data.readers import csv_stream, parquet
from ehrjepa.data.readers import (BAD, KIND_FLOAT, KIND_INT, KIND_TIME, MISSING, TableStats,
                                 iter_csv, iter_table, parse_float, parse_int, parse_time,
                                 read_table)

FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
INT_RE = re.compile(r"[+-]?\d{1,18}", re.ASCII)


def ref_int(s: str) -> int:
    if s == "":
        return MISSING
    return int(s) if INT_RE.fullmatch(s) else BAD


def ref_float(s: str) -> float:
    return float(s) if FLOAT_RE.fullmatch(s) else float("nan")


def ref_time(s: str) -> int:
    if s == "":
        return MISSING
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            t = dt.datetime.strptime(s, fmt)
        except ValueError:
            continue
        if not re.fullmatch(r"\d{4}-\d\d-\d\d([ T]\d\d:\d\d(:\d\d)?)?", s, re.ASCII):
            continue  # strptime also takes single-digit fields
        return int((t - dt.datetime(1970, 1, 1)).total_seconds())
    return BAD


def _b(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), np.uint8).copy()


def _same_float(a: float, b: float) -> bool:
    return (np.isnan(a) and np.isnan(b)) or a == b or abs(a - b) <= 1e-12 * abs(b) + 1e-300


@given(st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr),
                 st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
                 st.from_regex(r"[+-]?[0-9]{0,6}(\.[0-9]{0,6})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
                 st.text("0123456789.-+eE ax", max_size=8)))
@settings(max_examples=400, deadline=None)
def test_parse_float_matches_python(s):
    b = _b(s)
    assert _same_float(parse_float(b, 0, len(b)), ref_float(s)), s


@given(st.one_of(st.integers(-10**18 + 1, 10**18 - 1).map(str), st.text("0123456789-+ x", max_size=6)))
@settings(max_examples=300, deadline=None)
def test_parse_int_matches_python(s):
    b = _b(s)
    assert parse_int(b, 0, len(b)) == ref_int(s), s


@given(st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2300, 12, 31)),
       st.sampled_from(["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]))
@settings(max_examples=300, deadline=None)
def test_parse_time_matches_datetime(t, fmt):
    s = t.strftime(fmt)
    b = _b(s)
    assert parse_time(b, 0, len(b)) == ref_time(s), s


@pytest.mark.parametrize("s", ["2021-02-29 00:00:00", "2021-13-01 00:00:00", "2021-01-01 24:00:00",
                               "2021-01-01 00:60:00", "2021-1-01", "20210101", "x", "2021-01-01 00"])
def test_parse_time_rejects(s):
    b = _b(s)
    assert parse_time(b, 0, len(b)) == BAD


def test_parse_time_leap_day_and_fraction():
    for s, want in [("2020-02-29 12:00:00", "2020-02-29 12:00:00"),
                    ("2180-07-01 10:11:12.5", "2180-07-01 10:11:12")]:
        b = _b(s)
        assert parse_time(b, 0, len(b)) == ref_time(want)


# ---- the tokenizer on random CSV text

FIELD = st.one_of(
    st.integers(-10**6, 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda x: repr(float(x))),
    st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2200, 1, 1)).map(
        lambda t: t.strftime("%Y-%m-%d %H:%M:%S")),
    st.just(""),
    st.text(st.sampled_from('ab ,"\n.-1'), max_size=6),  # commas, quotes, newlines
)


def _csv_text(header, rows, quote_all, crlf):
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL,
                   lineterminator="\r\n" if crlf else "\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


@given(rows=st.lists(st.lists(FIELD, min_size=4, max_size=4), max_size=25),
       quote_all=st.booleans(), crlf=st.booleans(), block=st.sampled_from([16, 64, 1 << 20]),
       block_rows=st.sampled_from([1, 3, 1 << 10]), trailing_newline=st.booleans(),
       parallel_bytes=st.sampled_from([8, 1 << 20]))
@settings(max_examples=300, deadline=None)
def test_tokenizer_matches_csv_module(tmp_path_factory, rows, quote_all, crlf, block, block_rows,
                                      trailing_newline, parallel_bytes):
    """Also with blocks split between two threads (parallel_bytes=8), quoted newlines included."""
    header = ["a", "t", "x", "v"]
    text = _csv_text(header, rows, quote_all, crlf)
    if not trailing_newline:
        text = text.rstrip("\r\n") if rows else text
    # the csv module drops rows that are one empty unquoted field: so do we (empty lines)
    want = [r for r in csv.reader(io.StringIO(text))][1:]
    path = tmp_path_factory.mktemp("tok") / "t.csv"
    path.write_bytes(text.encode())
    cols = {"a": KIND_INT, "t": KIND_TIME, "v": KIND_FLOAT}
    got = {c: [] for c in cols}
    stats = TableStats(str(path))
    saved, csv_stream.PARALLEL_BYTES = csv_stream.PARALLEL_BYTES, parallel_bytes
    try:
        for blk in iter_csv(path, cols, stats=stats, block_bytes=block, block_rows=block_rows,
                            parallel=True):
            for c in cols:
                got[c].extend(blk[c].tolist())
    finally:
        csv_stream.PARALLEL_BYTES = saved
    want = [r for r in want if r != [] and r != [""]]
    assert stats.rows_read == len(want)
    assert got["a"] == [ref_int(r[0]) for r in want]
    assert got["t"] == [ref_time(r[1]) for r in want]
    assert all(_same_float(g, ref_float(r[3])) for g, r in zip(got["v"], want))


def _write(tmp_path, text, name="t.csv"):
    p = tmp_path / name
    if name.endswith(".gz"):
        p.write_bytes(gzip.compress(text.encode()))
    else:
        p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
@pytest.mark.parametrize("parallel_bytes", [4, 1 << 20])
def test_bad_line_error_names_line(tmp_path, name, parallel_bytes, monkeypatch):
    monkeypatch.setattr(csv_stream, "PARALLEL_BYTES", parallel_bytes)
    p = _write(tmp_path, 'a,b\n1,2\n"x\ny",3\n4\n5,6\n', name)
    with pytest.raises(ValueError, match=r"t\.csv(\.gz)?: line 5: malformed CSV row \(1 fields, expected 2\)"):
        read_table(p, {"a": KIND_INT})
    stats = TableStats(str(p))
    cols = read_table(p, {"a": KIND_INT, "b": KIND_INT}, on_bad_lines="skip", stats=stats)
    assert cols["a"].tolist() == [1, BAD, 5] and cols["b"].tolist() == [2, 3, 6]
    assert stats.rows_read == 4 and stats.bad_line == 1


def test_bad_quoting_is_a_bad_line(tmp_path):
    p = _write(tmp_path, 'a,b\n1,"2"x\n3,4\n5,"unterminated\n')
    with pytest.raises(ValueError, match="line 2: malformed CSV row"):
        read_table(p, {"a": KIND_INT})
    stats = TableStats(str(p))
    cols = read_table(p, {"a": KIND_INT}, on_bad_lines="skip", stats=stats)
    assert cols["a"].tolist() == [3] and stats.bad_line == 2 and stats.rows_read == 3


def test_missing_column_names_file_and_column(tmp_path):
    p = _write(tmp_path, "a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"t\.csv: missing required column 'stay_id'"):
        read_table(p, {"a": KIND_INT, "stay_id": KIND_INT})


def test_header_only_and_long_rows(tmp_path):
    p = _write(tmp_path, "a,b\n")
    assert read_table(p, {"a": KIND_INT})["a"].size == 0
    # a row longer than the block grows the buffer
    long = "x" * 5000
    p = _write(tmp_path, f'a,b\n1,"{long}"\n2,{long}\n', "long.csv")
    got = []
    for blk in iter_table(p, {"a": KIND_INT}, block_bytes=64):
        got.extend(blk["a"].tolist())
    assert got == [1, 2]


def test_parquet_columns_follow_csv_conventions(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({"a": pa.array([1, None, 3], pa.int64()),
                  "t": pa.array([0, None, 3_600_000], pa.timestamp("ms")),
                  "v": pa.array([1.5, None, 2.0])})
    pq.write_table(t, tmp_path / "t.parquet")
    cols = read_table(tmp_path / "t.parquet", {"a": KIND_INT, "t": KIND_TIME, "v": KIND_FLOAT})
    assert cols["a"].tolist() == [1, MISSING, 3]
    assert cols["t"].tolist() == [0, MISSING, 3600]
    assert cols["v"][0] == 1.5 and np.isnan(cols["v"][1])


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_parquet_arrow_columns_nulls_units_and_offsets(tmp_path, unit):
    """Typed columns of any width, nulls, timestamp units (floor to seconds, before 1970 too),
    slices (a bitmap that starts mid-byte) and row groups: all read as the CSV kernel would."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    per_s = {"s": 1, "ms": 1000, "us": 10 ** 6, "ns": 10 ** 9}[unit]
    n = 37
    ids = [None if i % 5 == 3 else i * 11 for i in range(n)]
    vals = [None if i % 4 == 1 else i / 4 for i in range(n)]
    # whole seconds plus a fraction (truncated toward the earlier second), some before 1970
    secs = [(i - 9) * 3601 for i in range(n)]
    times = [None if i % 7 == 2 else s * per_s + (per_s // 2 if per_s > 1 else 0)
             for i, s in enumerate(secs)]
    t = pa.table({"a": pa.array(ids, pa.int32()), "v": pa.array(vals, pa.float32()),
                  "t": pa.array(times, pa.timestamp(unit)),
                  "d": pa.array([None if x is None else x // 86400 for x in secs], pa.date32())})
    path = tmp_path / "t.parquet"
    pq.write_table(t, path, row_group_size=10)
    want_a = [MISSING if x is None else x for x in ids]
    want_t = [MISSING if x is None else secs[i] for i, x in enumerate(times)]
    want_d = [MISSING if x is None else x // 86400 * 86400 for x in secs]
    for block_rows in (1 << 20, 6):  # one batch per row group, or batches within row groups
        got = {"a": [], "v": [], "t": [], "d": []}
        for blk in parquet.iter_parquet(path, {"a": KIND_INT, "v": KIND_FLOAT, "t": KIND_TIME,
                                              "d": KIND_TIME}, block_rows=block_rows):
            for k in got:
                got[k].extend(blk[k].tolist())
        assert got["a"] == want_a and got["t"] == want_t and got["d"] == want_d
        assert [math.isnan(x) for x in got["v"]] == [x is None for x in vals]
        assert [x for x in got["v"] if x == x] == [x for x in vals if x is not None]
    # a slice: data and validity bitmap start at row 3 (bit 3 of the first byte)
    a64 = pa.array(ids, pa.int64()).slice(3, 20)  # int64: read in place, no cast
    col = parquet.arrow_column(a64, KIND_INT, path, "a")
    assert col.bit0 == 3 and len(col.data) == 20
    assert parquet.arrow_numpy(a64, KIND_INT, path, "a").tolist() == want_a[3:23]
    sliced = t.column("t").combine_chunks().slice(3, 20)
    assert parquet.arrow_column(sliced, KIND_TIME, path, "t").bit0 == 3
    assert parquet.arrow_numpy(sliced, KIND_TIME, path, "t").tolist() == want_t[3:23]


def test_parquet_text_and_wrong_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({"a": pa.array(["1", "", None, "x"]), "v": pa.array(["1.5", "abc", None, "2"]),
                  "t": pa.array(["2000-01-01 00:00:01", "bad", None, "1970-01-01"]),
                  "s": pa.array([1.0, 2.0, 3.0, 4.0])})
    pq.write_table(t, tmp_path / "t.parquet")
    cols = read_table(tmp_path / "t.parquet", {"a": KIND_INT, "v": KIND_FLOAT, "t": KIND_TIME})
    assert cols["a"].tolist() == [1, MISSING, MISSING, BAD]
    assert cols["v"][0] == 1.5 and np.isnan(cols["v"][1]) and np.isnan(cols["v"][2])
    assert cols["t"].tolist() == [946684801, BAD, MISSING, 0]
    with pytest.raises(ValueError, match=r"t\.parquet: column 's' has type double, expected a timestamp"):
        read_table(tmp_path / "t.parquet", {"s": KIND_TIME})


# ---- catalog


def test_catalog_has_the_issue_itemids():
    cat = load_catalog()
    by = {f.name: f for f in cat.features}
    assert by["heart_rate"].itemids == (220045,) and by["heart_rate"].valid == (0.0, 390.0)
    assert set(by["sbp"].itemids) == {220050, 220179, 225309}
    assert set(by["temperature"].itemids) == {223762, 223761}
    assert by["temperature"].convert == {223761: "fahrenheit_to_celsius"}
    assert by["ph"].itemids == (50820,) and by["ph"].table == "labevents"
    lk = cat.lookup("chartevents")
    col = cat.names.index("temperature")
    assert lk.feature[223761] == col
    assert (98.6 + lk.add[223761]) * lk.mul[223761] == pytest.approx(37.0)
    assert lk.feature[50820] == -1  # a lab itemid is unknown to chartevents


def _cat(**over):
    f = {"name": "hr", "table": "chartevents", "itemids": [1], "valid": [0, 1]}
    f.update(over)
    return {"features": [f, {"name": "x", "table": "labevents", "itemids": [2], "valid": [0, 1]}]}


@pytest.mark.parametrize("data, msg", [
    (_cat(colour="red"), r"feature #0 \('hr'\): unknown keys \['colour'\]"),
    (_cat(itemids=[2]), r"feature #1 \('x'\): duplicate itemid 2 \(also in 'hr'\)"),
    (_cat(table="icu"), "table must be one of"),
    (_cat(valid=[2, 1]), "low <= high"),
    (_cat(convert={1: "kelvin"}), "unknown conversion 'kelvin'"),
    (_cat(convert={7: "fahrenheit_to_celsius"}), "not in its itemids"),
    ({"features": [], "extra": 1}, r"unknown top-level keys \['extra'\]"),
])
def test_catalog_validation_names_the_entry(data, msg):
    with pytest.raises(ValueError, match=msg):
        parse_catalog(data, "cat.yaml")


def test_text_integers_from_arrow(tmp_path):
    """Integer columns stored as text (a CSV read by pyarrow, a parquet of strings) convert like
    the CSV reader's: MISSING where empty, BAD where not an int64, a sign and spaces allowed."""
    import pyarrow as pa

    from ehrjepa.data.readers import BAD, MISSING, parquet

    text = pa.array(["12", " +7 ", "-3", "", None, "1.5", "x1", "1" * 19, "007"])
    got = parquet.arrow_numpy(text, KIND_INT, tmp_path / "t.parquet", "hadm_id").tolist()
    assert got == [12, 7, -3, MISSING, MISSING, BAD, BAD, BAD, 7]
