"""Tests of `ehrjepa synth --format meds`: the MEDS schemas, subject order and sharding, the events
against the MIMIC-format tables of the same seed, splits, codes, determinism, atomic writes.
40 patients in batches of 8 (3 shards per split), so the whole file takes seconds."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrjepa.data.processed import split_of_subjects
from ehrjepa.synth import batches, meds, write_synthetic

PATIENTS = 40


def small_batches(mp):
    mp.setattr(batches, "BATCH_PATIENTS", 8)
    mp.setattr(meds, "BATCHES_PER_SHARD", 2)


def data_files(root):
    return sorted((root / "data").glob("*/*.parquet"))


def read_data(root):
    return pa.concat_tables(pq.read_table(f) for f in data_files(root))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One MEDS run and the parquet MIMIC tables of the same seed and batches."""
    tmp = tmp_path_factory.mktemp("meds")
    with pytest.MonkeyPatch.context() as mp:
        small_batches(mp)
        counts = write_synthetic(tmp / "meds", PATIENTS, seed=2, fmt="meds", progress=False)
        write_synthetic(tmp / "mimic", PATIENTS, seed=2, fmt="parquet", progress=False)
    mimic = {p.stem: pq.read_table(p) for p in (tmp / "mimic").glob("*/*.parquet")}
    return tmp / "meds", counts, mimic


def test_layout_and_counts(run):
    root, counts, _ = run
    assert sorted(p.relative_to(root).as_posix() for p in (root / "metadata").iterdir()) == [
        "metadata/codes.parquet", "metadata/dataset.json", "metadata/subject_splits.parquet"]
    # 5 batches of 8, 2 batches per shard: shards 0, 1, 2 of every split that has subjects
    assert {f.stem for f in data_files(root)} == {"0", "1", "2"}
    for split in meds.SPLITS:
        n = sum(pq.read_metadata(f).num_rows for f in (root / "data" / split).glob("*.parquet"))
        assert counts[f"data/{split}/"] == n
    assert counts["metadata/subject_splits.parquet"] == PATIENTS


def test_meds_package_validates(run):
    """The `meds` package's own schemas accept every file."""
    schemas = pytest.importorskip("meds")
    root = run[0]
    for f in data_files(root):
        schemas.DataSchema.validate(pq.read_table(f))
    schemas.CodeMetadataSchema.validate(pq.read_table(root / "metadata" / "codes.parquet"))
    schemas.SubjectSplitSchema.validate(pq.read_table(root / "metadata" /
                                                      "subject_splits.parquet"))
    schemas.DatasetMetadataSchema.validate(json.loads((root / "metadata" /
                                                       "dataset.json").read_text()))
    with pytest.raises(Exception, match="text_value"):  # the check can fail: plain string
        t = pq.read_table(data_files(root)[0])
        schemas.DataSchema.validate(t.set_column(4, "text_value", t["text_value"].cast(
            pa.string())))


def test_schema_written_out(run):
    """MEDS 0.4.1's types, by hand, for when the `meds` package is not installed."""
    root = run[0]
    want = {"subject_id": pa.int64(), "time": pa.timestamp("us"), "code": pa.string(),
            "numeric_value": pa.float32(), "text_value": pa.large_string()}
    for f in data_files(root):
        t = pq.read_table(f)
        assert {n: t.schema.field(n).type for n in want} == want, f
        assert t["subject_id"].null_count == t["code"].null_count == 0
    codes = pq.read_table(root / "metadata" / "codes.parquet")
    assert codes.schema.field("parent_codes").type == pa.list_(pa.string())
    splits = pq.read_table(root / "metadata" / "subject_splits.parquet")
    assert splits.schema.names == ["subject_id", "split"]


def test_subjects_contiguous_and_sorted(run):
    root = run[0]
    seen = set()
    for f in data_files(root):
        t = pq.read_table(f)
        sid = t["subject_id"].to_numpy()
        starts = np.flatnonzero(np.diff(sid)) + 1
        runs = np.split(np.arange(len(sid)), starts)
        ids = [sid[r[0]] for r in runs]
        assert len(ids) == len(set(ids)), f"{f}: a subject in two runs"
        assert not seen & set(ids), f"{f}: a subject in two files"
        seen |= set(ids)
        when = t["time"].cast(pa.int64()).to_numpy(zero_copy_only=False)
        static = t["time"].is_null().to_numpy(zero_copy_only=False)
        for r in runs:
            s = static[r]
            assert not np.any(s[1:] & ~s[:-1]), "static rows first"
            assert np.all(np.diff(when[r][~s]) >= 0), "sorted by time"
    assert len(seen) == PATIENTS


def test_events_are_the_mimic_tables(run):
    """The same seed gives the same events: chart and lab values row for row, and the counts."""
    root, _, mimic = run
    data = read_data(root)
    code = data["code"]
    chart_rows = pc.and_(pc.starts_with(code, "LAB//"),
                         pc.invert(pc.starts_with(code, "LAB//RESULT//")))
    chart_rows = pc.and_(chart_rows, pc.invert(pc.starts_with(code, "LAB//SPECIMEN_COLLECTED")))
    chart, lab = mimic["chartevents"], mimic["labevents"]
    for meds_rows, table, time_col in ((data.filter(chart_rows), chart, "charttime"),
                                       (data.filter(pc.starts_with(code, "LAB//RESULT//")), lab,
                                        "storetime")):
        assert meds_rows.num_rows == table.num_rows
        assert meds_rows["numeric_value"].null_count == table["valuenum"].null_count
        ours = sorted(zip(meds_rows["subject_id"].to_pylist(),
                          meds_rows["time"].cast(pa.int64()).to_pylist(),
                          meds_rows["numeric_value"].to_pylist()), key=str)
        theirs = sorted(zip(table["subject_id"].to_pylist(),
                            table[time_col].cast(pa.timestamp("us")).cast(pa.int64()).to_pylist(),
                            table["valuenum"].cast(pa.float32()).to_pylist()), key=str)
        assert ours == theirs
    heart = data.filter(pc.equal(code, "LAB//220045//bpm"))
    assert heart.num_rows == pc.sum(pc.equal(chart["itemid"], 220045)).as_py() > 0
    creat = data.filter(pc.equal(code, "LAB//RESULT//50912//mg/dL"))
    assert creat["numeric_value"].null_count < creat.num_rows
    assert (creat.num_rows - creat["numeric_value"].null_count
            == pc.sum(pc.and_(pc.equal(lab["itemid"], 50912),
                              pc.is_valid(lab["valuenum"]))).as_py())

    def n(prefix):
        return pc.sum(pc.starts_with(code, prefix)).as_py()
    assert n("LAB//SPECIMEN_COLLECTED//") == lab.num_rows
    assert n("ICU_ADMISSION//") == n("ICU_DISCHARGE//") == mimic["icustays"].num_rows
    assert n("HOSPITAL_ADMISSION//") == mimic["admissions"].num_rows
    assert n("GENDER//") == n("MEDS_BIRTH") == PATIENTS
    dod = mimic["patients"]["dod"]
    assert n("MEDS_DEATH") == len(dod) - dod.null_count > 0


def test_icu_death_at_icu_discharge(run):
    """An ICU death's MEDS_DEATH is at its ICU_DISCHARGE, so in-ICU mortality windows that end
    at the discharge (configs/tasks/icu_mortality_24h.yaml) see it."""
    root, _, mimic = run
    data = read_data(root)
    death = data.filter(pc.equal(data["code"], "MEDS_DEATH"))
    death = dict(zip(death["subject_id"].to_pylist(),
                     death["time"].cast(pa.int64()).to_pylist()))
    out = data.filter(pc.starts_with(data["code"], "ICU_DISCHARGE//"))
    last_out = {}
    for s, t in zip(out["subject_id"].to_pylist(), out["time"].cast(pa.int64()).to_pylist()):
        last_out[s] = max(t, last_out.get(s, t))
    adm = mimic["admissions"].filter(pc.equal(mimic["admissions"]["hospital_expire_flag"], 1))
    icu_deaths = 0
    for s in adm["subject_id"].to_pylist():  # ward deaths come at least 2 h after the ICU
        if s in last_out and death[s] - last_out[s] < 2 * 3600 * 10**6:
            assert death[s] == last_out[s], s
            icu_deaths += 1
    assert icu_deaths > 0


def test_diagnoses_are_the_mimic_table(run):
    """DIAGNOSIS//ICD//10//{icd_code} at the admission's dischtime with its hadm_id, one per
    diagnoses_icd row, described in codes.parquet by the ICD-10-CM title."""
    root, _, mimic = run
    data = read_data(root)
    ours = data.filter(pc.starts_with(data["code"], "DIAGNOSIS//"))
    dx, adm = mimic["diagnoses_icd"], mimic["admissions"]
    disch = dict(zip(adm["hadm_id"].to_pylist(),
                     adm["dischtime"].cast(pa.timestamp("us")).cast(pa.int64()).to_pylist()))
    theirs = sorted(zip(dx["subject_id"].to_pylist(), dx["hadm_id"].to_pylist(),
                        [f"DIAGNOSIS//ICD//10//{c}" for c in dx["icd_code"].to_pylist()],
                        [disch[h] for h in dx["hadm_id"].to_pylist()]))
    assert sorted(zip(ours["subject_id"].to_pylist(), ours["hadm_id"].to_pylist(),
                      ours["code"].to_pylist(),
                      ours["time"].cast(pa.int64()).to_pylist())) == theirs
    assert len(theirs) > 0
    codes = pq.read_table(root / "metadata" / "codes.parquet").to_pandas().set_index("code")
    assert codes.description["DIAGNOSIS//ICD//10//A419"].startswith(
        "Sepsis, unspecified organism")


def test_splits_cover_every_subject(run):
    root, _, mimic = run
    splits = pq.read_table(root / "metadata" / "subject_splits.parquet")
    sid = splits["subject_id"].to_numpy()
    assert sorted(sid) == sorted(mimic["patients"]["subject_id"].to_pylist())
    assert set(splits["split"].to_pylist()) <= set(meds.SPLITS)
    # preprocess's split (train, val, test) under MEDS's names
    want = np.array(meds.SPLITS)[split_of_subjects(sid, 0)]
    assert splits["split"].to_pylist() == want.tolist()
    of = dict(zip(sid.tolist(), splits["split"].to_pylist()))
    for f in data_files(root):
        assert {of[s] for s in pc.unique(pq.read_table(f)["subject_id"]).to_pylist()} == {
            f.parent.name}


def test_codes_cover_the_data(run):
    root = run[0]
    codes = pq.read_table(root / "metadata" / "codes.parquet")
    data_codes = set(pc.unique(read_data(root)["code"]).to_pylist())
    assert set(codes["code"].to_pylist()) == data_codes
    assert codes["description"].null_count == 0
    assert {"MEDS_BIRTH", "LAB//220045//bpm", "LAB//RESULT//50912//mg/dL",
            "LAB//SPECIMEN_COLLECTED//50912"} <= data_codes
    assert any(c.startswith("ICU_ADMISSION//") for c in data_codes)


def test_same_seed_same_bytes(run, tmp_path, monkeypatch):
    small_batches(monkeypatch)
    root = run[0]
    write_synthetic(tmp_path / "again", PATIENTS, seed=2, fmt="meds", progress=False)
    write_synthetic(tmp_path / "other", PATIENTS, seed=3, fmt="meds", progress=False)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again")
                           for p in (tmp_path / "again").rglob("*") if p.is_file())
    for f in files:
        assert (root / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f
    f = data_files(root)[0].relative_to(root)
    assert (root / f).read_bytes() != (tmp_path / "other" / f).read_bytes()


def test_atomic(tmp_path, monkeypatch):
    """A failed run leaves neither DIR nor its temporary folder; a full DIR is refused as is."""
    small_batches(monkeypatch)
    calls = []

    def fail_second(tables):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(tables)
    real = meds.batch_events
    monkeypatch.setattr(meds, "batch_events", fail_second)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic(tmp_path / "out", 20, fmt="meds", progress=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(meds, "batch_events", real)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        write_synthetic(tmp_path / "full", 5, fmt="meds", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["full"]
    (tmp_path / "empty").mkdir()
    write_synthetic(tmp_path / "empty", 5, fmt="meds", progress=False)
    assert (tmp_path / "empty" / "metadata" / "dataset.json").exists()


def test_cli(tmp_path, capsys):
    from ehrjepa.cli import main

    assert main(["synth", "--out", str(tmp_path / "m"), "--patients", "5", "--format", "meds",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "data/train/" in out and "events/s" in out
    assert main(["synth", "--out", str(tmp_path / "m"), "--patients", "5", "--format", "meds",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an empty folder" in err
