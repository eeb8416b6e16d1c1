"""The preprocessing benchmark's baselines do the same aggregation as `ehrjepa preprocess`.

Each baseline (DuckDB, polars, pandas) runs on hand-written tables whose expected groups are
worked out below, and ehrjepa's output is checked group by group against DuckDB's on a tiny
generated input; the same for the MEDS baselines, with ehrjepa's `preprocess --meds` on a
hand-written MEDS dataset too. Timing lives in bench/, not here."""
import importlib.util

import numpy as np
import pytest

from bench.preprocess import (aggregation_dict, compare_aggregations, catalog_rows, make_input,
                              run_child)

BASELINES = [t for t in ("duckdb", "polars", "pandas") if importlib.util.find_spec(t)]

ICUSTAYS = """\
subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los
1,11,100,MICU,MICU,2150-01-01 10:00:00,2150-01-01 13:30:00,0.1458
1,12,101,MICU,MICU,2150-01-01 17:00:00,2150-01-02 00:00:00,0.2917
1,13,102,MICU,MICU,2150-01-02 03:00:00,2150-01-02 03:00:00,0
2,21,200,MICU,MICU,2150-02-01 00:00:00,2150-02-01 05:00:00,0.2083
2,21,201,MICU,MICU,2150-02-01 08:00:00,2150-02-01 08:30:00,0.0208
2,21,202,MICU,MICU,2150-02-01 10:00:00,2150-02-01 12:00:00,0.0833
"""
# (stay_id, charttime, itemid, valuenum, why)
CHART = [
    (100, "2150-01-01 03:59:59", 220045, "70", "before the 6 h look-back: dropped"),
    (100, "2150-01-01 04:00:00", 220045, "90", "look-back edge: hour 0"),
    (100, "2150-01-01 09:00:00", 220045, "80", "look-back: hour 0"),
    (100, "2150-01-01 10:00:00", 220045, "100", "hour 0"),
    (100, "2150-01-01 10:59:59", 220045, "60", "hour 0"),
    (100, "2150-01-01 11:00:00", 220045, "50", "hour 1"),
    (100, "2150-01-01 12:00:00", 220045, "390", "range edge, inclusive: hour 2"),
    (100, "2150-01-01 12:01:00", 220045, "390.5", "out of range: dropped"),
    (100, "2150-01-01 12:30:00", 220045, "", "empty valuenum: dropped"),
    (100, "2150-01-01 12:10:00", 999999, "5", "unknown itemid: dropped"),
    (100, "2150-01-01 13:00:00", 223762, "37.4", "temperature C: hour 3"),
    (100, "2150-01-01 13:29:59", 223761, "98.6", "temperature F -> 37.0 C: hour 3"),
    (100, "2150-01-01 13:30:00", 220045, "40", "at outtime: dropped"),
    (999, "2150-01-01 12:00:00", 220045, "40", "unknown stay: dropped"),
]
# (labevent_id, subject_id, hadm_id, itemid, charttime, valuenum, why)
LABS = [
    (1, 1, "", 50912, "2150-01-01 12:00:00", "1.0", "no hadm_id; inside stay 100 and in 101's look-back: 100 hour 2"),
    (2, 1, "12", 50912, "2150-01-01 14:00:00", "2.0", "after 100's outtime, in 101's look-back: 101 hour 0"),
    (3, 1, "11", 50912, "2150-01-01 00:00:00", "3.0", "before any window: dropped"),
    (4, 2, "21", 50912, "2150-02-01 01:00:00", "", "text only: dropped"),
    (5, 2, "21", 50983, "2150-02-01 01:30:00", "140", "stay 200 hour 1"),
    (6, 3, "31", 50983, "2150-02-01 01:30:00", "140", "subject without ICU stay: dropped"),
    (7, 1, "13", 50983, "2150-01-02 02:00:00", "140", "look-back of a zero-length stay: dropped"),
    (8, 2, "21", 50983, "2150-02-01 07:00:00", "130", "in 201's and 202's look-back: 201 hour 0"),
    (9, 2, "21", 50983, "2150-02-01 09:00:00", "135", "after 201, in 202's look-back: 202 hour 0"),
]
EXPECTED = {  # (stay_id, hour, feature): (n, mean)
    (100, 0, "heart_rate"): (4, 82.5),
    (100, 1, "heart_rate"): (1, 50.0),
    (100, 2, "heart_rate"): (1, 390.0),
    (100, 3, "temperature"): (2, 37.2),
    (100, 2, "creatinine"): (1, 1.0),
    (101, 0, "creatinine"): (1, 2.0),
    (200, 1, "sodium"): (1, 140.0),
    (201, 0, "sodium"): (1, 130.0),
    (202, 0, "sodium"): (1, 135.0),
}


@pytest.fixture(scope="module")
def hand_tables(tmp_path_factory):
    d = tmp_path_factory.mktemp("mimic")
    (d / "icu").mkdir()
    (d / "hosp").mkdir()
    (d / "icu" / "icustays.csv").write_text(ICUSTAYS)
    lines = ["subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,"
             "valueuom,warning"]
    for stay, t, item, v, _ in CHART:
        lines.append(f"{stay // 100},{stay // 100}1,{stay},7,{t},{t},{item},{v},{v},bpm,0")
    (d / "icu" / "chartevents.csv").write_text("\n".join(lines) + "\n")
    lines = ["labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,"
             "storetime,value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments"]
    for lid, subj, hadm, item, t, v, _ in LABS:
        lines.append(f"{lid},{subj},{hadm},9,{item},,{t},{t},{v or 'see note'},{v},mg/dL,,,,ROUTINE,")
    (d / "hosp" / "labevents.csv").write_text("\n".join(lines) + "\n")
    return d


def test_catalog_rows_have_the_required_features():
    def rows(table):
        return {r[0]: dict(zip(("feature", "add", "mul", "lo", "hi"), r[1:]))
                for r in zip(*catalog_rows(None, table))}

    chart, labs = rows("chartevents"), rows("labevents")
    assert chart[220045]["feature"] == "heart_rate"
    assert (chart[220045]["lo"], chart[220045]["hi"]) == (0, 390)
    f = chart[223761]  # the catalog's convention: (value + add) * mul
    assert f["feature"] == "temperature" and abs((98.6 + f["add"]) * f["mul"] - 37.0) < 1e-9
    assert chart[223762]["add"] == 0 and chart[223762]["mul"] == 1
    for itemid in (220050, 220179, 225309):
        assert chart[itemid]["feature"] == "sbp"
    assert labs[50912]["feature"] == "creatinine" and 50912 not in chart
    assert labs[50820]["feature"] == "ph"


@pytest.mark.parametrize("tool", BASELINES)
def test_baseline_on_hand_written_tables(tool, hand_tables, tmp_path, capsys):
    assert run_child(tool, hand_tables, tmp_path / tool, None) == 0
    got = aggregation_dict(tmp_path / tool / "agg.parquet")
    assert set(got) == set(EXPECTED)
    for key, (n, mean) in EXPECTED.items():
        assert got[key][0] == n, key
        assert got[key][1] == pytest.approx(mean, rel=1e-9), key


@pytest.fixture(scope="module")
def tiny_input(tmp_path_factory):
    """A tiny input from ehrjepa synth (its dirty rows cover many cases)."""
    from ehrjepa.synth import write_synthetic

    out = tmp_path_factory.mktemp("gen") / "mimic"
    write_synthetic(out, 30, seed=1, fmt="csv", progress=False)
    return out


@pytest.mark.skipif(len(BASELINES) < 2, reason="needs two of duckdb, polars, pandas")
def test_baselines_agree_on_generated_input(tiny_input, tmp_path, capsys):
    for tool in BASELINES:
        run_child(tool, tiny_input, tmp_path / tool, None)
    for tool in BASELINES[1:]:
        check = compare_aggregations(tmp_path / tool / "agg.parquet",
                                     tmp_path / BASELINES[0] / "agg.parquet")
        assert check["agree"], check
        assert check["groups_baseline"] > 100


@pytest.mark.skipif("duckdb" not in BASELINES, reason="duckdb not installed")
def test_ehrjepa_agrees_with_duckdb(tiny_input, tmp_path, capsys):
    if importlib.util.find_spec("ehrjepa.data.preprocess") is None:
        pytest.skip("ehrjepa.data.preprocess not in this checkout yet")
    run_child("ehrjepa", tiny_input, tmp_path / "ehrjepa", None)
    run_child("duckdb", tiny_input, tmp_path / "duckdb", None)
    check = compare_aggregations(tmp_path / "ehrjepa", tmp_path / "duckdb" / "agg.parquet")
    assert check["agree"], check
    assert check["groups_ehrjepa"] > 100


def test_make_input_reuses_generated_data(tmp_path):
    d, info = make_input(tmp_path, rows=3000, fmt="csv", log=lambda *a: None)
    assert info["rows"]["chartevents"] > 1000 and (d / "icu" / "icustays.csv").exists()
    header = (d / "icu" / "chartevents.csv").read_text().splitlines()[0]
    assert header == ("subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,"
                      "valuenum,valueuom,warning")
    stamp = (d / "bench_input.json").stat().st_mtime_ns
    d2, info2 = make_input(tmp_path, rows=3000, fmt="csv", log=lambda *a: None)
    assert d2 == d and info2 == info and (d / "bench_input.json").stat().st_mtime_ns == stamp


def test_compare_finds_every_kind_of_difference(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(name, rows):
        stay, hour, feature, mean, n = zip(*rows)
        pq.write_table(pa.table({"stay_id": pa.array(stay, pa.int64()), "hour": pa.array(hour, pa.int64()),
                                 "feature": list(feature), "mean": list(mean),
                                 "n": pa.array(n, pa.int64())}), tmp_path / name)
        return tmp_path / name

    base = [(1, 0, "sodium", 140.0, 2), (1, 3, "heart_rate", 80.0, 1), (2, 0, "ph", 7.4, 1)]
    a = write("a.parquet", base)
    assert compare_aggregations(a, write("same.parquet", base[::-1]))["agree"]
    for changed, field in [(base[:2], "only_ehrjepa"), (base + [(2, 1, "ph", 7.3, 1)], "only_baseline"),
                           ([base[0], (1, 3, "heart_rate", 80.0, 2), base[2]], "count_mismatches"),
                           ([base[0], base[1], (2, 0, "ph", 7.5, 1)], "mean_mismatches")]:
        check = compare_aggregations(a, write(f"{field}.parquet", changed))
        assert not check["agree"] and check[field] == 1, (field, check)


# ----------------------------------------------------------------------------------------------
# MEDS (`python -m bench preprocess --formats meds`): the same cases as MEDS rows

MEDS_TOOLS = ["ehrjepa"] + [t for t in ("duckdb", "polars") if t in BASELINES]
HR, RESP = "LAB//220045//bpm", "LAB//220210//insp/min"
TEMP_C, TEMP_F = "LAB//223762//°C", "LAB//223761//°F"
CREAT, SODIUM = "LAB//RESULT//50912//mg/dL", "LAB//RESULT//50983//mEq/L"
# (subject_id, time, code, numeric_value, icustay_id, why); None: null
MEDS_ROWS = [
    (1, None, "GENDER//F", None, None, "static row: dropped"),
    (1, "2150-01-01 10:00:00", "ICU_ADMISSION//MICU", None, 100, "stay 100 [10:00, 13:30)"),
    (1, "2150-01-01 13:30:00", "ICU_DISCHARGE//MICU", None, 100, ""),
    (1, "2150-01-01 17:00:00", "ICU_ADMISSION//MICU", None, 101, "stay 101 [17:00, 24:00)"),
    (1, "2150-01-02 00:00:00", "ICU_DISCHARGE//MICU", None, 101, ""),
    (1, "2150-01-02 03:00:00", "ICU_ADMISSION//MICU", None, 102, "stay 102: zero length"),
    (1, "2150-01-02 03:00:00", "ICU_DISCHARGE//MICU", None, 102, ""),
    (1, "2150-01-01 03:59:59", HR, 70, 100, "before the 6 h look-back: dropped"),
    (1, "2150-01-01 04:00:00", HR, 90, 100, "look-back edge: hour 0"),
    (1, "2150-01-01 09:00:00", HR, 80, 100, "look-back: hour 0"),
    (1, "2150-01-01 10:00:00", HR, 100, 100, "hour 0"),
    (1, "2150-01-01 10:59:59", HR, 60, 100, "hour 0"),
    (1, "2150-01-01 11:00:00", HR, 50, 100, "hour 1"),
    (1, "2150-01-01 12:00:00", HR, 390, 100, "range edge, inclusive: hour 2"),
    (1, "2150-01-01 12:00:00", HR, 40, 999, "unknown icustay_id: dropped, not placed by subject"),
    (1, "2150-01-01 12:01:00", HR, 390.5, 100, "out of range: dropped"),
    (1, "2150-01-01 12:10:00", "LAB//999999//bpm", 5, 100, "itemid outside the catalog: dropped"),
    (1, "2150-01-01 12:30:00", HR, float("nan"), 100, "NaN value: dropped"),
    (1, "2150-01-01 12:40:00", HR, None, 100, "null value: dropped"),
    (1, "2150-01-01 13:00:00", TEMP_C, 37.4, 100, "temperature C: hour 3"),
    (1, "2150-01-01 13:29:59", TEMP_F, 98.6, 100, "temperature F -> 37.0 C: hour 3"),
    (1, "2150-01-01 13:30:00", HR, 40, 100, "at outtime: dropped"),
    (1, "2150-01-01 14:00:00", HR, 77, None, "chart code without icustay_id: like a lab, 101 hour 0"),
    (1, "2150-01-01 12:00:00", CREAT, 1.0, None, "inside 100 and in 101's look-back: 100 hour 2"),
    (1, "2150-01-01 14:00:00", CREAT, 2.0, 100, "a lab's icustay_id is ignored: 101 hour 0"),
    (1, "2150-01-01 00:00:00", CREAT, 3.0, None, "before any window: dropped"),
    (1, "2150-01-01 13:10:00", "LAB//50912//mg/dL", 1.5, 100,
     "a lab in the older convention (LAB//{itemid}, before April 2026): placed like a lab, 100 hour 3"),
    (1, "2150-01-02 02:00:00", SODIUM, 140, None, "look-back of a zero-length stay: dropped"),
    (2, "2150-02-01 00:00:00", "ICU_ADMISSION//SICU", None, 200, "stay 200 [00:00, 05:00)"),
    (2, "2150-02-01 05:00:00", "ICU_DISCHARGE//SICU", None, 200, ""),
    (2, "2150-02-01 08:00:00", "ICU_ADMISSION//SICU", None, 201, "stay 201 [08:00, 08:30)"),
    (2, "2150-02-01 08:30:00", "ICU_DISCHARGE//SICU", None, 201, ""),
    (2, "2150-02-01 10:00:00", "ICU_ADMISSION//SICU", None, 202, "stay 202 [10:00, 12:00)"),
    (2, "2150-02-01 12:00:00", "ICU_DISCHARGE//SICU", None, 202, ""),
    (2, "2150-02-01 01:00:00", CREAT, None, None, "text only: dropped"),
    (2, "2150-02-01 01:30:00", SODIUM, 140, None, "stay 200 hour 1"),
    (2, "2150-02-01 04:30:00", RESP, 20, 201, "by icustay_id, in 201's look-back: 201 hour 0"),
    (2, "2150-02-01 07:00:00", SODIUM, 130, None, "in 201's and 202's look-back: 201 hour 0"),
    (2, "2150-02-01 09:00:00", SODIUM, 135, None, "after 201, in 202's look-back: 202 hour 0"),
    (2, "2150-02-01 11:00:00", "LAB//RESULT//220045//bpm", 80, None, "lab form, chart itemid: dropped"),
    (2, "2150-02-01 11:30:00", HR, 70, 202, "202 hour 1"),
    (3, "2150-02-01 01:30:00", SODIUM, 140, None, "subject without ICU stay: dropped"),
    (3, "2150-02-01 01:40:00", HR, 90, None, "subject without ICU stay: dropped"),
]
MEDS_EXPECTED = {  # (stay_id, hour, feature): (n, mean)
    (100, 0, "heart_rate"): (4, 82.5),
    (100, 1, "heart_rate"): (1, 50.0),
    (100, 2, "heart_rate"): (1, 390.0),
    (100, 3, "temperature"): (2, 37.2),
    (101, 0, "heart_rate"): (1, 77.0),
    (100, 2, "creatinine"): (1, 1.0),
    (100, 3, "creatinine"): (1, 1.5),
    (100, 3, "creatinine"): (1, 1.5),
    (101, 0, "creatinine"): (1, 2.0),
    (200, 1, "sodium"): (1, 140.0),
    (201, 0, "resp_rate"): (1, 20.0),
    (201, 0, "sodium"): (1, 130.0),
    (202, 0, "sodium"): (1, 135.0),
    (202, 1, "heart_rate"): (1, 70.0),
}


@pytest.fixture(scope="module")
def hand_meds(tmp_path_factory):
    """MEDS_ROWS as one shard, sorted by subject then time (the static row first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("meds")
    (d / "data" / "train").mkdir(parents=True)
    rows = sorted(MEDS_ROWS, key=lambda r: (r[0], r[1] or ""))
    subject, when, code, value, stay, _ = zip(*rows)
    pq.write_table(pa.table({
        "subject_id": pa.array(subject, pa.int64()),
        "time": pa.array([None if t is None else np.datetime64(t, "us") for t in when],
                         pa.timestamp("us")),
        "code": pa.array(code, pa.string()), "numeric_value": pa.array(value, pa.float32()),
        "icustay_id": pa.array(stay, pa.int64())}), d / "data" / "train" / "0.parquet")
    return d


@pytest.mark.parametrize("tool", MEDS_TOOLS)
def test_meds_tool_on_hand_written_dataset(tool, hand_meds, tmp_path, capsys):
    assert run_child(tool, hand_meds, tmp_path / tool, None, "meds") == 0
    got = aggregation_dict(tmp_path / tool if tool == "ehrjepa" else tmp_path / tool / "agg.parquet")
    assert set(got) == set(MEDS_EXPECTED)
    for key, (n, mean) in MEDS_EXPECTED.items():
        assert got[key][0] == n, key
        assert got[key][1] == pytest.approx(mean, rel=1e-6), key


@pytest.mark.skipif(len(MEDS_TOOLS) < 2, reason="needs duckdb or polars")
def test_meds_baselines_agree_with_ehrjepa_on_generated_input(tmp_path, capsys):
    from ehrjepa.synth.meds import write_meds

    meds = tmp_path / "meds"
    write_meds(meds, 30, seed=1, progress=False)
    for tool in MEDS_TOOLS:
        run_child(tool, meds, tmp_path / tool, None, "meds")
    for tool in MEDS_TOOLS[1:]:
        check = compare_aggregations(tmp_path / "ehrjepa", tmp_path / tool / "agg.parquet")
        assert check["agree"], (tool, check)
        assert check["groups_ehrjepa"] > 100
