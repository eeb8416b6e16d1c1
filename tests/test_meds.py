"""`ehrjepa preprocess --meds`: agreement with the MIMIC path on the synthetic cohort, a hand-built
dataset with known hourly answers, and bad MEDS input."""
import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrjepa.data import open_processed
from ehrjepa.data.drivers import ScanOptions
from ehrjepa.data.meds import preprocess_meds
from ehrjepa.data.preprocess import preprocess
from ehrjepa.synth import write_synthetic

PATIENTS = 80  # enough for a few 30-day readmissions


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The synthetic cohort (one seed) preprocessed from its MEDS copy and from its MIMIC tables;
    the MIMIC labevents once as written and once timed at storetime, which is when MIMIC_IV_MEDS
    times a lab result (LAB//RESULT//...)."""
    tmp = tmp_path_factory.mktemp("agree")
    write_synthetic(tmp / "meds", PATIENTS, seed=4, fmt="meds", progress=False)
    write_synthetic(tmp / "mimic", PATIENTS, seed=4, fmt="parquet", progress=False)
    shutil.copytree(tmp / "mimic", tmp / "stored")
    lab_path = tmp / "stored" / "hosp" / "labevents.parquet"
    lab = pq.read_table(lab_path)
    pq.write_table(lab.set_column(lab.schema.get_field_index("charttime"), "charttime",
                                  lab["storetime"]), lab_path)
    # small batches, split over two threads: the joins of the sortedness check are exercised
    preprocess_meds(tmp / "meds", tmp / "out_meds", progress=False,
                    options=ScanOptions(parquet_block_rows=5000, parallel_rows=1000))
    for name in ("mimic", "stored"):
        preprocess(tmp / name, tmp / f"out_{name}", progress=False)
    return {name: open_processed(tmp / f"out_{name}") for name in ("meds", "mimic", "stored")}


def test_same_stays_labels_and_splits(both):
    a, b = both["meds"], both["mimic"]
    assert a.n_stays > 50
    for column in b.stays.column_names:  # stay ids, times, hours, split, death_hosp, los_days
        assert a.stays[column].equals(b.stays[column]), column
    assert 0 < int(np.sum(a.stays["death_hosp"].to_numpy() == 1)) < a.n_stays
    assert a.stays.column_names == b.stays.column_names  # the outcome columns too
    for column in ("readmit_icu", "readmit_30d"):  # 1, 0 and -1 all occur
        assert set(a.stays[column].to_pylist()) == {1, 0, -1}, column
    phenotypes = [c for c in a.stays.column_names if c.startswith("phenotype_")]
    assert phenotypes == ["phenotype_sepsis", "phenotype_aki", "phenotype_arf",
                          "phenotype_heart_failure", "phenotype_shock"]
    for column in phenotypes:
        assert {0, 1} <= set(a.stays[column].to_pylist()), column
    assert a.manifest["labels"] == b.manifest["labels"]
    assert a.manifest["split_source"].endswith("subject_splits.parquet")


def test_same_hourly_means_and_counts(both):
    a, b, plain = both["meds"], both["stored"], both["mimic"]
    assert a.features == b.features
    assert np.array_equal(a.count, b.count)
    assert a.count.sum() > 1000
    # numeric_value is float32 in MEDS, valuenum float64 in the MIMIC tables
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(a.norm_mean, b.norm_mean, rtol=1e-5)
    # the vital signs (charttime in both layouts) agree with the unchanged MIMIC run too
    chart = [i for i, f in enumerate(a.features) if f in ("heart_rate", "sbp", "temperature")]
    assert np.array_equal(a.count[:, chart], plain.count[:, chart])


def test_same_accounting_of_kept_rows(both):
    a, b = both["meds"].manifest, both["stored"].manifest
    dx = b["tables"]["diagnoses_icd"]
    assert a["diagnoses"]["rows_read"] == dx["rows_read"] > 0
    assert a["diagnoses"]["rows_kept"] == dx["rows_kept"] > 0
    assert a["total"]["kept_by_table"] == {t: b["tables"][t]["rows_kept"]
                                           for t in ("chartevents", "labevents")}
    assert a["total"]["rows_kept"] == sum(t["rows_kept"] for t in a["tables"].values())
    for entry in list(a["tables"].values()) + [a["total"]]:
        assert entry["rows_kept"] + sum(entry["dropped"].values()) == entry["rows_read"]
    assert a["icu_stays"]["rows_kept"] == 2 * a["n_stays"]


# -------------------------------------------------------------------------------------------------
# a hand-built dataset


def T(text):
    return datetime.fromisoformat(text)


def write_shard(path, rows, schema=None, drop=()):
    """rows: (subject_id, time text or None, code, numeric_value or None)."""
    cols = {"subject_id": pa.array([r[0] for r in rows], pa.int64()),
            "time": pa.array([T(r[1]) if r[1] else None for r in rows], pa.timestamp("us")),
            "code": pa.array([r[2] for r in rows], pa.string()),
            "numeric_value": pa.array([r[3] for r in rows], pa.float32())}
    table = pa.table({k: v for k, v in cols.items() if k not in drop})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table if schema is None else table.cast(schema), path)


@pytest.fixture()
def hand(tmp_path):
    rows = [
        (1, None, "GENDER//F", None),
        (1, "2150-01-01 03:00", "LAB//RESULT//50912//mg/dL", 9.0),  # 7 h before intime: outside
        (1, "2150-01-01 08:00", "HOSPITAL_ADMISSION//EW EMER.//ER", None),
        (1, "2150-01-01 08:00", "LAB//RESULT//50912//mg/dL", 2.0),  # lookback: hour 0
        (1, "2150-01-01 10:00", "ICU_ADMISSION//MICU", None),
        (1, "2150-01-01 10:10", "LAB//220045//bpm", 80.0),
        (1, "2150-01-01 10:50", "LAB//220045//bpm", 90.0),
        (1, "2150-01-01 10:50", "LAB//223761//°F", 98.6),  # 37 C
        (1, "2150-01-01 11:00", "LAB//220045//bpm", 500.0),  # out of range
        (1, "2150-01-01 12:59", "LAB//220045//bpm", None),  # no value
        (1, "2150-01-01 13:00", "LAB//RESULT//50912//mg/dL", 4.0),  # hour 3
        (1, "2150-01-01 13:00", "LAB//SPECIMEN_COLLECTED//50912", None),  # not a feature
        (1, "2150-01-01 13:30", "ICU_DISCHARGE//MICU", None),
        (1, "2150-01-01 13:30", "LAB//220045//bpm", 70.0),  # at outtime: outside
        (1, "2150-01-02 09:00", "MEDS_DEATH", None),
        (1, "2150-01-02 09:00", "HOSPITAL_DISCHARGE//DIED", None),
        (2, "2151-05-01 00:00", "ICU_ADMISSION//SICU", None),
        (2, "2151-05-01 01:15", "LAB//RESULT//50912//mg/dL", 1.5),
        (2, "2151-05-01 02:00", "ICU_DISCHARGE//SICU", None),
    ]
    write_shard(tmp_path / "meds" / "data" / "0.parquet", rows)
    return tmp_path


def test_hand_built_hourly_answers(hand):
    out = preprocess_meds(hand / "meds", hand / "out", progress=False)
    p = open_processed(out)
    assert p.stays["stay_id"].to_pylist() == [1, 2]  # no icustay_id: numbered in order
    assert p.stays["n_hours"].to_pylist() == [4, 2]
    assert p.stays["death_hosp"].to_pylist() == [1, -1]  # subject 2 has no hospital admission
    assert p.stays["los_days"].to_pylist() == [3.5 / 24, 2 / 24]
    hr, temp, cr = (p.features.index(f) for f in ("heart_rate", "temperature", "creatinine"))
    assert p.count[:, hr].tolist() == [2, 0, 0, 0, 0, 0]
    assert p.mean[0, hr] == 85.0 and np.isnan(p.mean[1, hr])
    assert p.mean[0, temp] == pytest.approx(37.0)
    assert p.count[:, cr].tolist() == [1, 0, 0, 1, 0, 1]
    assert p.mean[[0, 3, 5], cr].tolist() == [2.0, 4.0, 1.5]
    m = p.manifest
    assert m["total"]["rows_read"] == 19 and m["total"]["rows_kept"] == 6
    d = m["total"]["dropped"]
    assert (d["not_a_feature"], d["out_of_range"], d["no_value"], d["outside_stay"]) == (9, 1, 1, 2)
    assert m["icu_stays"]["paired_by"] == "time order per subject"
    assert m["split_source"].startswith("ehrjepa subject hash")
    assert any("stays lie in no HOSPITAL_ADMISSION" in w for w in m["warnings"])
    assert any("'LAB//220050//*' (sbp) matches no code" in w for w in m["warnings"])


def test_icustay_id_places_chart_codes(hand):
    """With an icustay_id column a chart code goes to its own stay, as chartevents' stay_id."""
    path = hand / "meds" / "data" / "0.parquet"
    t = pq.read_table(path)
    sid = [None] * t.num_rows
    sid[4] = sid[12] = 30  # subject 1's ICU events
    sid[16] = sid[18] = 31
    sid[5] = 31  # a heart rate filed under subject 2's stay, at subject 1's time: outside
    pq.write_table(t.append_column("icustay_id", pa.array(sid, pa.int64())), path)
    p = open_processed(preprocess_meds(hand / "meds", hand / "out", progress=False))
    assert p.stays["stay_id"].to_pylist() == [30, 31]
    hr = p.features.index("heart_rate")
    assert p.count[0, hr] == 1 and p.mean[0, hr] == 90.0
    assert p.manifest["total"]["dropped"]["outside_stay"] == 3


def test_splits_file_maps_meds_names(hand):
    (hand / "meds" / "metadata").mkdir()
    pq.write_table(pa.table({"subject_id": pa.array([1, 2], pa.int64()),
                             "split": ["held_out", "tuning"]}),
                   hand / "meds" / "metadata" / "subject_splits.parquet")
    p = open_processed(preprocess_meds(hand / "meds", hand / "out", progress=False))
    assert p.stays["split"].to_pylist() == ["test", "val"]


# -------------------------------------------------------------------------------------------------
# bad input: one-line errors naming the file, and no OUT left behind


def expect_error(root, match):
    with pytest.raises(ValueError, match=match) as e:
        preprocess_meds(root / "meds", root / "out", progress=False)
    assert "\n" not in str(e.value)
    assert not (root / "out").exists()


def test_missing_column(tmp_path):
    write_shard(tmp_path / "meds" / "data" / "0.parquet", [(1, "2150-01-01 00:00", "X", 1.0)],
                drop=("numeric_value",))
    expect_error(tmp_path, r"0\.parquet: missing MEDS column 'numeric_value'")


def test_wrong_dtypes(tmp_path):
    path = tmp_path / "meds" / "data" / "0.parquet"
    write_shard(path, [(1, "2150-01-01 00:00", "X", 1.0)])
    t = pq.read_table(path)
    pq.write_table(t.set_column(1, "time", t["time"].cast(pa.string())), path)
    expect_error(tmp_path, r"0\.parquet: column 'time' has type string, expected a timestamp")
    pq.write_table(t.set_column(2, "code", pa.array([7], pa.int64())), path)
    expect_error(tmp_path, r"column 'code' has type int64, expected a string")


@pytest.mark.parametrize("threads", [False, True])
def test_unsorted_shard(hand, threads):
    path = hand / "meds" / "data" / "0.parquet"
    t = pq.read_table(path)
    pq.write_table(pa.concat_tables([t.slice(10), t.slice(0, 10)]), path)  # subject 2 first
    options = ScanOptions(parallel_rows=2) if threads else ScanOptions()
    with pytest.raises(ValueError, match=r"0\.parquet: not sorted by subject_id, then time: "
                                         r"row 9 goes back from subject 2 at 2151-05-01T02:00:00"):
        preprocess_meds(hand / "meds", hand / "out", progress=False, options=options)
    # subjects in order, times not: rows 1 and 2 swapped
    pq.write_table(t.take([0, 2, 1] + list(range(3, t.num_rows))), path)
    with pytest.raises(ValueError, match=r"row 2 goes back from subject 1 at 2150-01-01T08:00:00"):
        preprocess_meds(hand / "meds", hand / "out", progress=False)


def test_cli(hand, capsys):
    from ehrjepa.cli import main

    assert main(["preprocess", "--meds", str(hand / "meds"), "--out", str(hand / "out"),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "2 stays, 6 hours" in text and "stays paired by time order per subject" in text
    assert main(["preprocess", "--meds", str(hand / "nothing"), "--out", str(hand / "o2")]) == 1
    assert json.loads((hand / "out" / "manifest.json").read_text())["source"] == "meds"


# -------------------------------------------------------------------------------------------------
# outcome labels from MEDS events, and the one-shard-per-subject rule


def test_outcome_labels_from_events(tmp_path):
    d1 = [
        (1, "2150-01-01 00:00", "HOSPITAL_ADMISSION//EW EMER.//ER", None),
        (1, "2150-01-01 02:00", "ICU_ADMISSION//MICU", None),
        (1, "2150-01-01 08:00", "ICU_DISCHARGE//MICU", None),
        (1, "2150-01-02 00:00", "ICU_ADMISSION//MICU", None),  # a second ICU stay
        (1, "2150-01-02 06:00", "ICU_DISCHARGE//MICU", None),
        (1, "2150-01-05 00:00", "HOSPITAL_DISCHARGE//HOME", None),
        (1, "2150-01-05 00:00", "DIAGNOSIS//ICD//10//A419", None),
        (1, "2150-01-05 00:00", "DIAGNOSIS//ICD//9//5849", None),  # not ICD-10
        (1, "2150-02-03 00:00", "HOSPITAL_ADMISSION//URGENT//ER", None),  # 29 days later
        (1, "2150-02-04 00:00", "HOSPITAL_DISCHARGE//HOME", None),
        (1, "2150-02-04 00:00", "DIAGNOSIS//ICD//10//N179", None),
    ]
    d2 = [
        (2, "2151-01-01 00:00", "HOSPITAL_ADMISSION//EW EMER.//ER", None),
        (2, "2151-01-01 01:00", "ICU_ADMISSION//SICU", None),
        (2, "2151-01-01 05:00", "ICU_DISCHARGE//SICU", None),
        (2, "2151-01-01 05:00", "MEDS_DEATH", None),
        (2, "2151-01-01 05:00", "HOSPITAL_DISCHARGE//DIED", None),
        (2, "2151-01-01 05:00", "DIAGNOSIS//ICD//10//R6521", None),
    ]
    write_shard(tmp_path / "meds" / "data" / "a.parquet", d1)
    write_shard(tmp_path / "meds" / "data" / "b.parquet", d2)
    p = open_processed(preprocess_meds(tmp_path / "meds", tmp_path / "out", progress=False))
    col = {c: p.stays[c].to_pylist() for c in p.stays.column_names}
    assert col["subject_id"] == [1, 1, 2]
    assert col["readmit_icu"] == [1, 0, -1]
    assert col["readmit_30d"] == [1, 1, -1]
    assert col["phenotype_sepsis"] == [1, 1, 1] and col["phenotype_aki"] == [0, 0, 0]
    assert col["phenotype_shock"] == [0, 0, 1]
    dx = p.manifest["diagnoses"]
    assert (dx["rows_read"], dx["rows_kept"], dx["dropped"]) == \
        (4, 2, {"not_icd10": 1, "no_admission": 0, "no_icu_stay": 1})  # N179: 2nd admission
    # without any DIAGNOSIS// event: no phenotype columns, and the manifest says why
    write_shard(tmp_path / "meds" / "data" / "a.parquet", [r for r in d1 if "DIAG" not in r[2]])
    write_shard(tmp_path / "meds" / "data" / "b.parquet", [r for r in d2 if "DIAG" not in r[2]])
    p = open_processed(preprocess_meds(tmp_path / "meds", tmp_path / "out", progress=False))
    assert not [c for c in p.stays.column_names if c.startswith("phenotype_")]
    assert p.manifest["phenotypes"]["note"] == "no DIAGNOSIS// events: no phenotype columns"


def test_subject_in_two_shards(hand):
    path = hand / "meds" / "data" / "0.parquet"
    t = pq.read_table(path)
    pq.write_table(t.slice(0, 5), hand / "meds" / "data" / "a.parquet")  # subject 1's first rows
    pq.write_table(t.slice(5), hand / "meds" / "data" / "b.parquet")
    path.unlink()
    expect_error(hand, r"subject 1 has rows in \S+a\.parquet and in \S+b\.parquet: MEDS keeps "
                       "each subject's rows in one shard")


# -------------------------------------------------------------------------------------------------
# through the CLI in a child process (issue 21, item 8): a shard without `code` is one line, files
# that are not MEDS shards under data/ are passed over with a note


def run_cli(meds, out):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    env.pop("EHRJEPA_TEST_PAUSE", None)
    return subprocess.run([sys.executable, "-m", "ehrjepa", "preprocess", "--meds", str(meds),
                           "--out", str(out), "--no-progress"], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_a_shard_without_code_is_one_line_naming_file_and_column(tmp_path):
    path = tmp_path / "meds" / "data" / "0.parquet"
    write_shard(path, [(1, "2150-01-01 00:00", "X", 1.0)], drop=("code",))
    done = run_cli(tmp_path / "meds", tmp_path / "out")
    err = done.stderr.strip()
    assert done.returncode == 1 and len(err.splitlines()) == 1, err
    assert err == (f"ehrjepa preprocess: {path}: missing MEDS column 'code' (columns: "
                   "subject_id, time, numeric_value)")
    assert not (tmp_path / "out").exists()


def test_cli_files_under_data_that_are_not_shards_are_skipped_with_a_note(hand):
    meds = hand / "meds"
    first = run_cli(meds, hand / "first")
    assert first.returncode == 0, first.stderr
    shutil.move(hand / "first", meds / "data" / "processed")  # as an earlier version let one write
    stray = meds / "data" / "lookup" / "units.parquet"
    stray.parent.mkdir()
    pq.write_table(pa.table({"unit": ["mg/dL"], "factor": [1.0]}), stray)
    done = run_cli(meds, hand / "out")
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "not a MEDS shard" in line]
    inside = sorted(str(p) for p in (meds / "data" / "processed").glob("*.parquet"))
    assert inside == [str(meds / "data" / "processed" / "stays.parquet")]
    assert [n.split(": ")[2] for n in notes] == [str(stray), inside[0]], notes  # path order
    assert all(n.startswith("ehrjepa preprocess: note: ") for n in notes), notes
    m = json.loads((hand / "out" / "manifest.json").read_text())
    assert list(m["tables"]) == ["data/0.parquet"]
    skipped = [w for w in m["warnings"] if "not a MEDS shard" in w]
    assert len(skipped) == 2 and "no time or code" in skipped[0] and "a processed folder" in \
        skipped[1], skipped
    assert "2 stays, 6 hours" in first.stdout and "2 stays, 6 hours" in done.stdout
    # and such an OUT is refused now (tests/test_faults_out.py has the other cases)
    done = run_cli(meds, meds / "data" / "again")
    assert done.returncode == 1 and "lies inside the input" in done.stderr, done.stderr
    assert not (meds / "data" / "again").exists()


def test_cli_only_files_that_are_not_shards_is_an_error_saying_so(tmp_path):
    stray = tmp_path / "meds" / "data" / "units.parquet"
    stray.parent.mkdir(parents=True)
    pq.write_table(pa.table({"unit": ["mg/dL"]}), stray)
    done = run_cli(tmp_path / "meds", tmp_path / "out")
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 2, err  # the note, then the error
    assert "no MEDS data shards found (1 parquet file(s) skipped, not MEDS shards)" in err[1]


SHARED_MEDS = Path(__file__).resolve().parents[2] / "shared" / "mimic-iv-demo-meds"


@pytest.mark.skipif(not SHARED_MEDS.is_dir(), reason="../shared/mimic-iv-demo-meds is absent")
def test_real_demo_in_the_older_lab_convention(tmp_path):
    """The MIMIC-IV demo as MEDS codes labs LAB//{itemid}//{unit} (before April 2026): its labs
    are found, and the manifest says which convention matched (issue 21, item 19)."""
    p = open_processed(preprocess_meds(SHARED_MEDS, tmp_path / "out", progress=False))
    conv = p.manifest["meds_conventions"]
    assert conv.get("labevents LAB//{itemid}//*", 0) > 0 and conv.get("chartevents LAB//{itemid}//*", 0) > 0
    assert "labevents LAB//RESULT//{itemid}//*" not in conv
    assert p.n_stays == 140  # NOTE.md
    assert p.manifest["total"]["kept_by_table"]["labevents"] > 10000
    assert not any("creatinine" in w for w in p.manifest["warnings"])


def test_synthetic_meds_in_the_current_lab_convention(both):
    """synth --format meds codes labs LAB//RESULT//{itemid}//{unit}, as MIMIC_IV_MEDS does since
    April 2026: the manifest names that convention."""
    conv = both["meds"].manifest["meds_conventions"]
    assert conv.get("labevents LAB//RESULT//{itemid}//*", 0) > 0
    assert "labevents LAB//{itemid}//*" not in conv
