"""`ehrjepa preprocess` rules on tiny hand-written MIMIC-format tables, a plain-Python reference,
and an end-to-end run on the MIMIC-IV demo."""
import gzip
import json
import math
from collections import defaultdict
from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ehrjepa.data import open_processed
from ehrjepa.data.preprocess import preprocess
from ehrjepa.data.catalog import load_catalog
from ehrjepa.data.drivers import ScanOptions

T0 = datetime(2150, 1, 1, 10, 0, 0)
PAT = "subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod"
ADM = "subject_id,hadm_id,admittime,dischtime,hospital_expire_flag"
ICU = "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los"
LAB = ("labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,"
       "value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments")
DX = "subject_id,hadm_id,seq_num,icd_code,icd_version"
CHART = ("subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,"
         "valueuom,warning")
HR, TEMP_C, TEMP_F, SBP_ART = 220045, 223762, 223761, 220050
CREAT, SODIUM = 50912, 50983


def ts(hours: float = 0.0, seconds: int = 0) -> str:
    return (T0 + timedelta(hours=hours, seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")


def stay(subject, hadm, stay_id, t_in, t_out):
    return f"{subject},{hadm},{stay_id},MICU,MICU,{t_in},{t_out},0"


def chart(stay_id, t, itemid, value, subject=1, hadm=100):
    return f"{subject},{hadm},{stay_id},7,{t},{t},{itemid},\"{value}\",{value},u,0"


def lab(subject, t, itemid, value, hadm="", row=1):
    return f"{row},{subject},{hadm},5,{itemid},,{t},{t},{value},{value},mg/dL,,,,ROUTINE,\"a, comment\""


def write_mimic(root, icustays, chartevents=None, labevents=(), patients=None, admissions=None,
                fmt="csv", adm_header=ADM, diagnoses=None):
    """A MIMIC-IV-shaped directory from row strings (chartevents=None: no chartevents file,
    diagnoses=None: no diagnoses_icd)."""
    subjects = sorted({int(r.split(",")[0]) for r in icustays}) or [1]
    patients = patients if patients is not None else [f"{s},F,60,2150,2011 - 2013," for s in subjects]
    hadms = sorted({(int(r.split(",")[0]), int(r.split(",")[1])) for r in icustays})
    admissions = admissions if admissions is not None else [
        f"{s},{h},{ts(-24)},{ts(400)},{int(h % 2 == 1)}" for s, h in hadms]
    tables = {("hosp", "patients"): (PAT, patients), ("hosp", "admissions"): (adm_header, admissions),
              ("icu", "icustays"): (ICU, icustays), ("hosp", "labevents"): (LAB, labevents)}
    if chartevents is not None:
        tables[("icu", "chartevents")] = (CHART, chartevents)
    if diagnoses is not None:
        tables[("hosp", "diagnoses_icd")] = (DX, diagnoses)
    for (module, name), (header, rows) in tables.items():
        d = root / module
        d.mkdir(parents=True, exist_ok=True)
        text = header + "\n" + "".join(r + "\n" for r in rows)
        if fmt == "csv":
            (d / f"{name}.csv").write_text(text)
        elif fmt == "csv.gz":
            (d / f"{name}.csv.gz").write_bytes(gzip.compress(text.encode()))
        else:
            import pyarrow as pa
            import pyarrow.csv as pacsv
            import pyarrow.parquet as pq

            (d / f"{name}.csv").write_text(text)
            t = pacsv.read_csv(d / f"{name}.csv", convert_options=pacsv.ConvertOptions(
                column_types={"valuenum": pa.float64(), "hadm_id": pa.int64(),
                              "value": pa.string(), "comments": pa.string(), "dod": pa.string(),
                              "charttime": pa.timestamp("s"), "intime": pa.timestamp("s"),
                              "outtime": pa.timestamp("s")}))
            pq.write_table(t, d / f"{name}.parquet")
            (d / f"{name}.csv").unlink()
    return root


def run(tmp_path, **kw):
    opts = {k: kw.pop(k) for k in ("on_bad_lines", "seed") if k in kw}
    root = write_mimic(tmp_path / "mimic", **kw)
    out = preprocess(root, tmp_path / "out", progress=False, **opts)
    return open_processed(out)


def cell(p, stay_row, hour, feature):
    i = p.features.index(feature)
    r = int(p.stays.column("offset")[stay_row].as_py()) + hour
    return float(p.mean[r, i]), int(p.count[r, i])


def dropped(p, table):
    return p.manifest["tables"][table]["dropped"]


ONE_STAY = [stay(1, 100, 10, ts(0), ts(3, 30 * 60))]  # 3.5 h -> 4 hours


def test_hour_boundaries_and_n_hours(tmp_path):
    rows = [chart(10, ts(0), HR, 60), chart(10, ts(0, 3599), HR, 70), chart(10, ts(1), HR, 80),
            chart(10, ts(3, 30 * 60 - 1), HR, 90), chart(10, ts(3, 30 * 60), HR, 100)]
    p = run(tmp_path, icustays=ONE_STAY, chartevents=rows)
    assert p.stays.column("n_hours").to_pylist() == [4]
    assert cell(p, 0, 0, "heart_rate") == (65.0, 2)
    assert cell(p, 0, 1, "heart_rate") == (80.0, 1)
    assert cell(p, 0, 3, "heart_rate") == (90.0, 1)
    assert math.isnan(cell(p, 0, 2, "heart_rate")[0]) and cell(p, 0, 2, "heart_rate")[1] == 0
    assert dropped(p, "chartevents")["outside_stay"] == 1  # at outtime


def test_six_hour_look_back(tmp_path):
    rows = [chart(10, ts(-6), HR, 50), chart(10, ts(0, -1), HR, 70),
            chart(10, ts(-6, -1), HR, 99)]
    p = run(tmp_path, icustays=ONE_STAY, chartevents=rows)
    assert cell(p, 0, 0, "heart_rate") == (60.0, 2)
    assert dropped(p, "chartevents")["outside_stay"] == 1


def test_fahrenheit_to_celsius_and_range_after_conversion(tmp_path):
    rows = [chart(10, ts(0), TEMP_F, 98.6), chart(10, ts(0.5), TEMP_C, 37.4),
            chart(10, ts(1), TEMP_F, 120),  # 48.9 C: above 47 C, dropped
            chart(10, ts(1), TEMP_C, 98.6)]  # Fahrenheit charted as Celsius: dropped
    p = run(tmp_path, icustays=ONE_STAY, chartevents=rows)
    m, n = cell(p, 0, 0, "temperature")
    assert n == 2 and m == pytest.approx((37.0 + 37.4) / 2, abs=1e-5)
    assert dropped(p, "chartevents")["out_of_range"] == 2


def test_range_drops_are_inclusive(tmp_path):
    rows = [chart(10, ts(0), HR, 0), chart(10, ts(0), HR, 390), chart(10, ts(0), HR, 390.5),
            chart(10, ts(0), HR, -1), chart(10, ts(1), SBP_ART, 376)]
    p = run(tmp_path, icustays=ONE_STAY, chartevents=rows)
    assert cell(p, 0, 0, "heart_rate") == (195.0, 2)
    assert dropped(p, "chartevents")["out_of_range"] == 3


def test_values_itemids_and_stays_dropped_for_a_reason(tmp_path):
    rows = [chart(10, ts(0), HR, ""), f'1,100,10,7,{ts(0)},{ts(0)},{HR},"text",,u,0',
            f'1,100,10,7,{ts(0)},{ts(0)},{HR},"x",abc,u,0',
            chart(10, ts(0), 999999, 5), chart(10, ts(0), "", 5), chart(77, ts(0), HR, 60),
            chart("", ts(0), HR, 60), chart(10, "2150-13-01 00:00:00", HR, 60),
            chart(10, "", HR, 60), chart(10, ts(0), HR, 61)]
    p = run(tmp_path, icustays=ONE_STAY, chartevents=rows)
    d = dropped(p, "chartevents")
    assert d["no_value"] == 3 and d["unknown_itemid"] == 2 and d["unknown_stay"] == 2
    assert d["bad_timestamp"] == 2
    t = p.manifest["tables"]["chartevents"]
    assert t["rows_read"] == 10 and t["rows_kept"] == 1


def test_labs_go_to_the_stay_of_the_subject_whatever_hadm_id(tmp_path):
    # subject 1: stay 10 [0 h, 10 h), stay 11 [12 h, 20 h); subject 2: stay 20 [0 h, 5 h)
    stays = [stay(1, 100, 10, ts(0), ts(10)), stay(1, 101, 11, ts(12), ts(20)),
             stay(2, 200, 20, ts(0), ts(5))]
    labs = [lab(1, ts(2.5), CREAT, 1.0),  # stay 10 hour 2, no hadm_id
            lab(1, ts(9.5), CREAT, 2.0, hadm=101),  # in 10's stay and 11's look-back: 10 wins
            lab(1, ts(11), CREAT, 3.0),  # only 11's look-back: 11 hour 0
            lab(1, ts(-7), CREAT, 4.0),  # before any window
            lab(2, ts(1), SODIUM, 140, hadm=999),  # wrong hadm_id: still stay 20
            lab(3, ts(1), SODIUM, 140)]  # subject without a stay
    p = run(tmp_path, icustays=stays, chartevents=[], labevents=labs)
    assert p.stays.column("stay_id").to_pylist() == [10, 11, 20]
    assert cell(p, 0, 2, "creatinine") == (1.0, 1)
    assert cell(p, 0, 9, "creatinine") == (2.0, 1)
    assert cell(p, 1, 0, "creatinine") == (3.0, 1)
    assert cell(p, 2, 1, "sodium") == (140.0, 1)
    d = dropped(p, "labevents")
    assert d["outside_stay"] == 1 and d["no_stay_for_subject"] == 1
    assert p.manifest["tables"]["labevents"]["rows_kept"] == 4


def test_overlapping_windows_prefer_the_stay_that_holds_the_time(tmp_path):
    # stay 11's look-back [4 h, 10 h) overlaps stay 10 [0 h, 6 h); a lab at 5 h is in both
    stays = [stay(1, 100, 11, ts(10), ts(12)), stay(1, 100, 10, ts(0), ts(6))]
    labs = [lab(1, ts(5), CREAT, 1.0), lab(1, ts(7), CREAT, 2.0)]
    p = run(tmp_path, icustays=stays, chartevents=[], labevents=labs)
    assert cell(p, 0, 5, "creatinine") == (1.0, 1)  # stay 10 (row 0) holds 5 h
    assert cell(p, 1, 0, "creatinine") == (2.0, 1)  # 7 h: only 11's look-back


def test_accounting_adds_up_for_every_table(tmp_path):
    stays = [stay(1, 100, 10, ts(0), ts(5)), stay(1, 100, 10, ts(0), ts(5)),  # duplicate
             stay(2, 200, 20, ts(5), ts(1)),  # outtime before intime
             stay(3, 300, 30, "yesterday", ts(1))]
    rows = [chart(10, ts(h / 3), HR, 60 + h) for h in range(12)] + [chart(20, ts(1), HR, 60)]
    labs = [lab(1, ts(1), CREAT, 1), lab(1, ts(1), 12345, 1), lab(9, ts(1), CREAT, 1)]
    p = run(tmp_path, icustays=stays, chartevents=rows, labevents=labs,
            admissions=[f"1,100,{ts(-1)},{ts(9)},0", f"4,400,{ts(-1)},{ts(9)},1"])
    tables = p.manifest["tables"]
    assert set(tables) == {"patients", "admissions", "icustays", "labevents", "chartevents"}
    for name, t in tables.items():
        assert t["rows_kept"] + sum(t["dropped"].values()) == t["rows_read"], name
    assert tables["icustays"]["dropped"] == {"bad_id": 0, "bad_timestamp": 1,
                                             "outtime_before_intime": 1, "duplicate_stay": 1}
    assert tables["chartevents"]["rows_kept"] == 12 and tables["chartevents"]["dropped"]["unknown_stay"] == 1
    assert tables["admissions"]["rows_kept"] == 1
    assert p.manifest["n_stays"] == 1 and p.manifest["total_hours"] == 5


def test_missing_column_names_file_and_column(tmp_path):
    root = write_mimic(tmp_path / "m", icustays=ONE_STAY, chartevents=[])
    text = (root / "icu" / "chartevents.csv").read_text().replace("valuenum", "valnum")
    (root / "icu" / "chartevents.csv").write_text(text)
    with pytest.raises(ValueError, match=r"chartevents\.csv: missing required column 'valuenum'"):
        preprocess(root, tmp_path / "out", progress=False)


def test_missing_required_table_is_an_error(tmp_path):
    root = write_mimic(tmp_path / "m", icustays=ONE_STAY, chartevents=[])
    (root / "hosp" / "labevents.csv").unlink()
    with pytest.raises(FileNotFoundError, match="labevents"):
        preprocess(root, tmp_path / "out", progress=False)


def test_bad_line_error_or_skip(tmp_path):
    rows = [chart(10, ts(0), HR, 60), "1,100,10,oops", chart(10, ts(0), HR, 80)]
    root = write_mimic(tmp_path / "m", icustays=ONE_STAY, chartevents=rows)
    with pytest.raises(ValueError, match=r"chartevents\.csv: line 3: malformed CSV row"):
        preprocess(root, tmp_path / "out", progress=False)
    p = open_processed(preprocess(root, tmp_path / "out", progress=False, on_bad_lines="skip"))
    t = p.manifest["tables"]["chartevents"]
    assert t["dropped"]["bad_line"] == 1 and t["rows_read"] == 3 and t["rows_kept"] == 2
    assert cell(p, 0, 0, "heart_rate") == (70.0, 2)


def test_empty_tables_give_valid_empty_output(tmp_path):
    p = run(tmp_path, icustays=[], chartevents=[], labevents=[], patients=[], admissions=[])
    assert p.n_stays == 0 and p.mean.shape == (0, len(load_catalog().for_source("mimic").names))
    assert p.count.shape == p.mean.shape and p.manifest["total_hours"] == 0
    assert p.split_indices("train").size == 0
    assert p.norm_std.tolist() == [1.0] * p.n_features


def test_missing_chartevents_is_labs_only_with_a_warning(tmp_path, capsys):
    p = run(tmp_path, icustays=ONE_STAY, chartevents=None, labevents=[lab(1, ts(1), CREAT, 1.5)])
    assert "chartevents" not in p.manifest["tables"]
    assert any("chartevents" in w and "labs only" in w for w in p.manifest["warnings"])
    assert "labs only" in capsys.readouterr().err
    assert cell(p, 0, 1, "creatinine") == (1.5, 1)


def _stays_and_events(n_subjects=6):
    stays, rows, labs = [], [], []
    for s in range(1, n_subjects + 1):
        stays.append(stay(s, 100 + s, 10 * s, ts(s), ts(s + 5.5)))
        for k in range(20):
            rows.append(chart(10 * s, ts(s - 1 + k * 0.37), [HR, TEMP_F, SBP_ART][k % 3],
                              round(60 + 17.3 * ((k * s) % 5), 1), subject=s))
        labs.append(lab(s, ts(s + 2), CREAT, 1 + s / 10))
    return stays, rows, labs


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_csv_gz_and_parquet_match_csv(tmp_path, fmt):
    stays, rows, labs = _stays_and_events()
    outs = {}
    for f in ("csv", fmt):
        root = write_mimic(tmp_path / f / "m", icustays=stays, chartevents=rows, labevents=labs, fmt=f)
        outs[f] = open_processed(preprocess(root, tmp_path / f / "out", progress=False))
    a, b = outs["csv"], outs[fmt]
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.count, b.count)
    assert a.stays.equals(b.stays)
    for name, t in a.manifest["tables"].items():
        assert {k: v for k, v in t.items() if k != "path"} == \
            {k: v for k, v in b.manifest["tables"][name].items() if k != "path"}


def _csv_to_parquet(csv_path, unit, id_type, row_group_size):
    """Rewrite a csv table as parquet: timestamps in `unit`, integer ids as `id_type`, values as
    float32 or float64, small row groups; empty fields become nulls."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    text = {"value": pa.string(), "comments": pa.string(), "dod": pa.string(),
            "valueuom": pa.string(), "flag": pa.string(), "priority": pa.string(),
            "order_provider_id": pa.string(), "ref_range_lower": pa.string(),
            "ref_range_upper": pa.string()}
    t = pacsv.read_csv(csv_path, convert_options=pacsv.ConvertOptions(column_types=text))
    cols = {}
    for name in t.column_names:
        c = t.column(name)
        if name in ("charttime", "storetime", "intime", "outtime"):
            c = c.cast(pa.timestamp("s")).cast(pa.timestamp(unit))
        elif name.endswith("_id") and name not in text or name == "itemid":
            c = c.cast(id_type)
        elif name == "valuenum":
            c = c.cast(pa.float32() if id_type == pa.int32() else pa.float64())
        cols[name] = c
    pq.write_table(pa.table(cols), csv_path.with_suffix(".parquet"), row_group_size=row_group_size)
    csv_path.unlink()


@pytest.mark.parametrize("unit, id_bits", [("s", 64), ("ms", 64), ("us", 32), ("ns", 64)])
def test_parquet_nulls_row_groups_and_units_match_csv(tmp_path, unit, id_bits):
    """The parquet path (aggregate_arrow over Arrow buffers) keeps and drops exactly what the csv
    path does: nulls (valuenum, stay_id, subject_id, hadm_id, charttime, itemid), timestamps in
    any unit, ids of any width, several row groups and batches."""
    import pyarrow as pa

    stays, rows, labs = _stays_and_events()
    rows += [chart(10, ts(0.5), HR, ""), chart("", ts(0.5), HR, 61), chart(10, "", HR, 62),
             chart(10, ts(0.5), "", 63), chart(10, ts(0.5, 1), TEMP_F, 98.6),
             chart(99, ts(0.5), HR, 64), chart(10, ts(-7), HR, 65)]
    labs += [lab(2, ts(3), SODIUM, 140), lab(2, ts(3), SODIUM, ""), lab("", ts(3), SODIUM, 141),
             lab(2, "", SODIUM, 142), lab(77, ts(3), SODIUM, 143), lab(3, ts(-30), SODIUM, 144)]
    id_type = pa.int32() if id_bits == 32 else pa.int64()
    outs = {}
    for fmt in ("csv", "parquet"):
        root = write_mimic(tmp_path / fmt / "m", icustays=stays, chartevents=rows, labevents=labs)
        if fmt == "parquet":
            for module, name in (("icu", "chartevents"), ("hosp", "labevents"), ("icu", "icustays")):
                _csv_to_parquet(root / module / f"{name}.csv", unit, id_type, row_group_size=16)
        # parquet: batches inside row groups, each split over two threads
        opt = ScanOptions(parquet_block_rows=7, parallel_rows=2)
        outs[fmt] = open_processed(preprocess(root, tmp_path / fmt / "out", progress=False,
                                              options=opt))
    a, b = outs["csv"], outs["parquet"]
    assert b.manifest["tables"]["chartevents"]["path"].endswith(".parquet")
    np.testing.assert_array_equal(a.count, b.count)
    if id_bits == 64:
        np.testing.assert_array_equal(a.mean, b.mean)
    else:  # float32 valuenum: the values themselves differ in the last bits
        np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6)
    assert a.stays.equals(b.stays)
    for name, t in a.manifest["tables"].items():
        assert {k: v for k, v in t.items() if k != "path"} == \
            {k: v for k, v in b.manifest["tables"][name].items() if k != "path"}, name
    d = dropped(b, "chartevents")
    assert d["no_value"] >= 1 and d["unknown_stay"] >= 2 and d["bad_timestamp"] >= 1
    assert d["unknown_itemid"] >= 1
    assert dropped(b, "labevents")["no_stay_for_subject"] >= 2


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_count_saturates_on_the_first_events_in_file_order(tmp_path, fmt):
    """Past 65535 events an hour's cell keeps the first ones in file order and counts the rest
    as saturated, also when two threads scan halves of a parquet batch and add by index range."""
    # parquet: batch halves in two threads; csv: many blocks, each split in halves
    opt = ScanOptions(parallel_rows=1000, block_bytes=1 << 20, parallel_bytes=1 << 12)
    n = 65535 + 5  # per hour; hours 0 and 1 interleaved so both halves hold both hours
    late = 150  # the value of the events past the limit: a wrong pick changes the mean
    rows = [chart(10, ts(i % 2, 60), HR, late if i // 2 >= 65535 else 60 + i % 7)
            for i in range(2 * n)]
    root = write_mimic(tmp_path / "m", icustays=ONE_STAY, chartevents=rows, fmt=fmt)
    p = open_processed(preprocess(root, tmp_path / "out", progress=False, options=opt))
    f = int(load_catalog().for_source("mimic").lookup("chartevents").feature[HR])
    for hour in (0, 1):
        kept = [60 + i % 7 for i in range(hour, 2 * n, 2) if i // 2 < 65535]
        assert p.count[hour, f] == 65535
        assert p.mean[hour, f] == np.float32(np.float32(sum(kept)) / np.float32(65535))
    assert dropped(p, "chartevents")["count_saturated"] == 10
    assert p.manifest["tables"]["chartevents"]["rows_kept"] == 2 * 65535


def test_stays_columns_split_and_train_only_norm(tmp_path):
    import pyarrow as pa

    stays = [stay(s, 100 + s, 10 * s, ts(0), ts(2)) for s in range(1, 41)]
    rows = [chart(10 * s, ts(0.5), HR, 50 + s) for s in range(1, 41)]
    p = run(tmp_path, icustays=stays, chartevents=rows, seed=3)
    schema = p.stays.schema
    # no diagnoses_icd: no phenotype columns
    assert schema.names == ["stay_id", "subject_id", "hadm_id", "intime", "outtime", "n_hours",
                            "offset", "split", "death_hosp", "los_days", "readmit_icu",
                            "readmit_30d", "age", "sex"]
    assert schema.field("intime").type == pa.timestamp("s") and schema.field("n_hours").type == pa.int32()
    for name in ("death_hosp", "readmit_icu", "readmit_30d"):
        assert schema.field(name).type == pa.int8()
    assert "diagnoses_icd" in p.manifest["phenotypes"]["note"]
    assert p.stays.column("death_hosp").to_pylist() == [int((100 + s) % 2 == 1) for s in range(1, 41)]
    assert p.stays.column("los_days").to_pylist() == pytest.approx([2 / 24] * 40)
    train = p.split_indices("train")
    assert 20 <= len(train) < 40 and len(train) + len(p.split_indices("val")) + len(p.split_indices("test")) == 40
    hr = np.array([50 + s for s in range(1, 41)], float)
    i = p.features.index("heart_rate")
    assert p.norm_mean[i] == pytest.approx(hr[train].mean(), rel=1e-6)
    assert p.norm_std[i] == pytest.approx(hr[train].std(), rel=1e-5)
    assert p.norm_std[p.features.index("creatinine")] == 1.0 and p.norm_mean[p.features.index("creatinine")] == 0
    # the same seed gives the same split, another seed another one
    again = open_processed(preprocess(tmp_path / "mimic", tmp_path / "again", progress=False, seed=3))
    other = open_processed(preprocess(tmp_path / "mimic", tmp_path / "other", progress=False, seed=4))
    assert again.stays.column("split").equals(p.stays.column("split"))
    assert not other.stays.column("split").equals(p.stays.column("split"))


# ---- the numba aggregation against a plain-Python reference on random events


def reference(stays, chart_events, lab_events, catalog):
    """{(stay_id, hour, feature): (count, mean)} by the rules, one event at a time."""
    by_item = {}
    for f in catalog.features:
        for i in f.itemids:
            by_item[(f.table, i)] = f
    sums = defaultdict(lambda: [0, 0.0])

    def accept(table, itemid, value):
        f = by_item.get((table, itemid))
        if f is None or value is None:
            return None
        if f.convert.get(itemid) == "fahrenheit_to_celsius":
            value = (value - 32.0) * 5.0 / 9.0
        return (f, value) if f.valid[0] <= value <= f.valid[1] else None

    def hour_of(st, t):
        sid, subj, t_in, t_out = st
        n_hours = math.ceil((t_out - t_in) / 3600)
        if t_in <= t < t_out:
            return (t - t_in) // 3600
        if t_in - 6 * 3600 <= t < t_in and n_hours > 0:
            return 0
        return None

    for sid, t, itemid, value in chart_events:
        fv = accept("chartevents", itemid, value)
        st_ = next((s for s in stays if s[0] == sid), None)
        if fv and st_ and hour_of(st_, t) is not None:
            c = sums[(sid, hour_of(st_, t), fv[0].name)]
            c[0] += 1
            c[1] += fv[1]
    for subj, t, itemid, value in lab_events:
        fv = accept("labevents", itemid, value)
        mine = sorted((s for s in stays if s[1] == subj), key=lambda s: (s[2], s[0]))
        core = [s for s in mine if s[2] <= t < s[3]]
        look = [s for s in mine if hour_of(s, t) is not None]
        pick = (core or look or [None])[0]
        if fv and pick:
            c = sums[(pick[0], hour_of(pick, t), fv[0].name)]
            c[0] += 1
            c[1] += fv[1]
    return {k: (n, s / n) for k, (n, s) in sums.items()}


ITEMS = [HR, TEMP_F, TEMP_C, SBP_ART, 220179, 999, CREAT, SODIUM, 51006]


@given(st.data())
@settings(max_examples=25, deadline=None)
def test_aggregation_matches_reference(tmp_path_factory, data):
    n_stays = data.draw(st.integers(0, 5))
    stays = []
    for k in range(n_stays):
        t_in = data.draw(st.integers(0, 40)) * 1800
        stays.append((10 + k, data.draw(st.integers(1, 3)), t_in,
                      t_in + data.draw(st.integers(0, 12 * 3600))))
    event = st.tuples(st.integers(-8 * 3600, 50 * 3600), st.sampled_from(ITEMS),
                      st.one_of(st.none(), st.floats(-10, 400).map(lambda x: round(x, 2))))
    chart_ev = [(data.draw(st.integers(9, 15)),) + e for e in data.draw(st.lists(event, max_size=40))]
    lab_ev = [(data.draw(st.integers(1, 4)),) + e for e in data.draw(st.lists(event, max_size=40))]

    def iso(t):
        return ts(0, t)

    def val(v):
        return "" if v is None else repr(v)

    icu = [stay(subj, 100 + sid, sid, iso(a), iso(b)) for sid, subj, a, b in stays]
    rows = [f"1,100,{sid},7,{iso(t)},{iso(t)},{i},\"{val(v)}\",{val(v)},u,0" for sid, t, i, v in chart_ev]
    labs = [f"{j},{s},,5,{i},,{iso(t)},{iso(t)},{val(v)},{val(v)},u,,,,," for j, (s, t, i, v) in enumerate(lab_ev)]
    tmp = tmp_path_factory.mktemp("prop")
    p = run(tmp, icustays=icu, chartevents=rows, labevents=labs)
    want = reference(stays, chart_ev, lab_ev, load_catalog().for_source("mimic"))
    got = {}
    sid_of = p.stays.column("stay_id").to_pylist()
    for r, sid in enumerate(sid_of):
        for h in range(p.stays.column("n_hours")[r].as_py()):
            row = p.stays.column("offset")[r].as_py() + h
            for i, name in enumerate(p.features):
                if p.count[row, i]:
                    got[(sid, h, name)] = (int(p.count[row, i]), float(p.mean[row, i]))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k][0] == want[k][0]
        assert got[k][1] == pytest.approx(want[k][1], rel=1e-5, abs=1e-4)
    for t in p.manifest["tables"].values():
        assert t["rows_kept"] + sum(t["dropped"].values()) == t["rows_read"]


# ---- the MIMIC-IV demo


def test_demo_end_to_end(demo_dir, tmp_path):
    p = open_processed(preprocess(demo_dir, tmp_path / "out", progress=False))
    tables = p.manifest["tables"]
    assert tables["labevents"]["rows_read"] == 107_727
    assert tables["icustays"]["rows_read"] == 140 and p.n_stays == 140
    assert tables["patients"]["rows_read"] == 100 and tables["admissions"]["rows_read"] == 275
    for t in tables.values():
        assert t["rows_kept"] + sum(t["dropped"].values()) == t["rows_read"]
    assert "chartevents" not in tables
    assert any("chartevents" in w for w in p.manifest["warnings"])
    assert p.mean.shape == (p.manifest["total_hours"], p.n_features)
    assert int(p.count.sum()) == tables["labevents"]["rows_kept"]
    deaths = p.stays.column("death_hosp").to_numpy()
    assert set(np.unique(deaths)) <= {0, 1} and deaths.sum() > 0
    assert (p.stays.column("n_hours").to_numpy() > 0).all()
    json.dumps(p.manifest)


# ---- the fused csv path (scan_events) against the column path (parse_block + aggregate_*)

def _messy_chart_row(draw, stay_ids):
    """A chartevents line exercising the tokenizer: quoting, CRLF, odd values, bad rows."""
    sid = draw(st.sampled_from(stay_ids + [999]))
    t = ts(draw(st.floats(-8, 30)))
    kind = draw(st.sampled_from(["plain", "plain", "plain", "quoted_comma", "doubled_quote",
                                 "quoted_newline", "crlf", "empty_line", "short_row", "long_row",
                                 "quoted_num", "bad_time", "t_sep", "no_value", "text_value",
                                 "bad_quote"]))
    item = draw(st.sampled_from([HR, TEMP_C, TEMP_F, SBP_ART, 220210, 12345]))
    v = draw(st.sampled_from(["72", "98.6", "101.25", "37", "-3", "1e2", "400", "0.5"]))
    value, valuenum, end, stime = f'"{v}"', v, "\n", t
    if kind == "quoted_comma":
        value = '"1,5"'
    elif kind == "doubled_quote":
        value = '"say ""hi"""'
    elif kind == "quoted_newline":
        value = '"two\nlines"'
    elif kind == "crlf":
        end = "\r\n"
    elif kind == "empty_line":
        return "\n"
    elif kind == "quoted_num":
        valuenum = f'"{v}"'
    elif kind == "bad_time":
        t = "2150-13-01 00:00:00"
    elif kind == "t_sep":
        t = t.replace(" ", "T") + ".5"
    elif kind == "no_value":
        valuenum = ""
    elif kind == "text_value":
        valuenum = "abc"
    line = f"1,100,{sid},{draw(st.integers(1, 99999))},{t},{stime},{item},{value},{valuenum},u,0"
    if kind == "short_row":
        line = line.rsplit(",", 2)[0]
    elif kind == "long_row":
        line += ",x"
    elif kind == "bad_quote":
        line = line.replace(f",{item},", f',{item}"x,', 1)
    return line + end


@given(st.data())
@settings(max_examples=15, deadline=None)
def test_fused_csv_path_matches_column_path(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("fused")
    icustays = [stay(1, 100, 10 + k, ts(24 * k), ts(24 * k + 20)) for k in range(3)]
    rows = [_messy_chart_row(data.draw, [10, 11, 12]) for _ in range(data.draw(st.integers(0, 60)))]
    fmt = data.draw(st.sampled_from(["csv", "csv.gz"]))
    write_mimic(root / "in", icustays, chartevents=[], fmt=fmt)
    text = (CHART + "\n" + "".join(rows)).encode()
    if data.draw(st.booleans()) and text.endswith(b"\n"):
        text = text[:-1]  # last row without a newline
    ce = root / "in" / "icu" / f"chartevents.{fmt}"
    ce.write_bytes(gzip.compress(text) if fmt == "csv.gz" else text)
    fused = ScanOptions(block_bytes=data.draw(st.integers(16, 400)),  # rows across blocks
                        parallel_bytes=data.draw(st.sampled_from([8, 64, 1 << 20])),  # halves
                        events_cap=data.draw(st.sampled_from([2, 7, 1 << 20])))
    fused = preprocess(root / "in", root / "fused", on_bad_lines="skip", progress=False,
                       options=fused)
    plain = preprocess(root / "in", root / "plain", on_bad_lines="skip", progress=False,
                       options=ScanOptions(fused_csv=False))  # the reference path
    a, b = open_processed(fused), open_processed(plain)
    np.testing.assert_array_equal(a.count, b.count)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert a.manifest["tables"]["chartevents"] == b.manifest["tables"]["chartevents"]


def test_fused_csv_path_reports_the_bad_line(tmp_path):
    rows = [chart(10, ts(1), HR, 70), chart(10, ts(2), HR, 71) + ",extra", chart(10, ts(3), HR, 72)]
    write_mimic(tmp_path / "in", [stay(1, 100, 10, ts(0), ts(10))], chartevents=rows)
    with pytest.raises(ValueError, match=r"chartevents\.csv: line 3: malformed CSV row"):
        preprocess(tmp_path / "in", tmp_path / "out", progress=False)


# ---- outcome labels: readmissions from admissions and patients.dod, phenotypes from diagnoses

ADM_FULL = "subject_id,hadm_id,admittime,dischtime,deathtime,hospital_expire_flag"


def test_readmission_labels_and_diagnoses_accounted(tmp_path):
    def day(d):
        return ts(24 * d)

    stays = [stay(1, 100, 10, day(0), day(1)), stay(1, 100, 11, day(2), day(3)),  # 2 ICU stays
             stay(2, 200, 20, day(0), day(1)),  # dies in the stay
             stay(3, 300, 30, day(0), day(1))]  # readmitted 29 days after discharge
    admissions = [f"1,100,{day(0)},{day(5)},,0", f"1,101,{day(36)},{day(38)},,0",  # 31 days
                  f"2,200,{day(0)},{day(1)},{day(1)},1",
                  f"3,300,{day(0)},{day(4)},,0", f"3,301,{day(33)},{day(34)},,0"]
    diagnoses = ["1,100,1,A419,10", "1,100,2,N179,10", "1,100,3,0389,9",  # ICD-9: not_icd10
                 "1,101,1,I5023,10",  # an admission without an ICU stay: no_icu_stay
                 "2,,1,R570,10",  # no hadm_id: bad_id
                 "2,200,1,,10",  # no code
                 "2,200,2,R6521,10"]
    p = run(tmp_path, icustays=stays, chartevents=[], admissions=admissions, adm_header=ADM_FULL,
            diagnoses=diagnoses)
    col = {c: p.stays[c].to_pylist() for c in p.stays.column_names}
    assert col["stay_id"] == [10, 11, 20, 30]
    assert col["readmit_icu"] == [1, 0, -1, 0]
    # subject 1: next admission 31 days after discharge; subject 2 died; subject 3: 29 days
    assert col["readmit_30d"] == [0, 0, -1, 1]
    assert col["phenotype_sepsis"] == [1, 1, 1, -1]  # R6521 is severe sepsis with septic shock
    assert col["phenotype_aki"] == [1, 1, 0, -1]
    assert col["phenotype_shock"] == [0, 0, 1, -1]
    assert col["phenotype_heart_failure"] == [0, 0, 0, -1]  # I5023 is admission 101's
    t = p.manifest["tables"]["diagnoses_icd"]
    assert t["rows_read"] == 7 and t["rows_kept"] == 3
    assert t["dropped"] == {"bad_id": 1, "not_icd10": 1, "no_code": 1, "no_icu_stay": 1}
    assert p.manifest["phenotypes"]["names"] == ["sepsis", "aki", "arf", "heart_failure", "shock"]
    assert p.manifest["labels"]["readmit_30d"] == {"1": 1, "0": 2, "-1": 1}
    assert not any("deathtime" in w for w in p.manifest["warnings"])


def test_dod_is_a_later_record_and_missing_columns_warn(tmp_path):
    stays = [stay(1, 100, 10, ts(0), ts(24)), stay(2, 200, 20, ts(0), ts(24))]
    patients = ["1,F,60,2150,2011 - 2013,2150-03-01", "2,F,60,2150,2011 - 2013,2150-01-20"]
    admissions = [f"1,100,{ts(0)},{ts(48)},0", f"2,200,{ts(0)},{ts(48)},0"]
    p = run(tmp_path, icustays=stays, chartevents=[], patients=patients, admissions=admissions)
    # subject 1 died 2 months after discharge: followed up, not readmitted; subject 2 died
    # within the 30 days: excluded
    assert p.stays["readmit_30d"].to_pylist() == [0, -1]
    assert any("no column deathtime" in w for w in p.manifest["warnings"])


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_diagnoses_in_every_format(tmp_path, fmt):
    stays = [stay(1, 100, 10, ts(0), ts(5))]
    p = run(tmp_path, icustays=stays, chartevents=[], fmt=fmt,
            diagnoses=["1,100,1,J9601,10", "1,100,2,4280,9"])
    assert p.stays["phenotype_arf"].to_pylist() == [1]
    assert p.manifest["tables"]["diagnoses_icd"]["dropped"]["not_icd10"] == 1


def test_bad_diagnoses_line_and_phenotypes_option(tmp_path):
    from ehrjepa.cli import main

    stays = [stay(1, 100, 10, ts(0), ts(5))]
    root = write_mimic(tmp_path / "m", icustays=stays, chartevents=[],
                       diagnoses=["1,100,1,N179,10", "1,100", "1,100,3,Z99,10"])
    with pytest.raises(ValueError, match=r"diagnoses_icd\.csv: line 3: malformed CSV row"):
        preprocess(root, tmp_path / "out", progress=False)
    (tmp_path / "p.yaml").write_text("phenotypes:\n  dependence: [Z99]\n")
    assert main(["preprocess", "--mimic-dir", str(root), "--out", str(tmp_path / "out"),
                 "--on-bad-lines", "skip", "--phenotypes", str(tmp_path / "p.yaml"),
                 "--no-progress"]) == 0
    p = open_processed(tmp_path / "out")
    assert [c for c in p.stays.column_names if c.startswith("phenotype_")] == ["phenotype_dependence"]
    assert p.stays["phenotype_dependence"].to_pylist() == [1]
    t = p.manifest["tables"]["diagnoses_icd"]
    assert (t["rows_read"], t["rows_kept"], t["dropped"]["bad_line"]) == (3, 2, 1)
