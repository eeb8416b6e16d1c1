"""Tests of `ehrjepa synth`: schema, determinism, intervals, dirty rows, the latent outcome model,
formats. Small runs (tens to a few hundred patients) so that the whole file takes seconds."""
import gzip

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from ehrjepa import synth
from ehrjepa.synth import SCHEMAS, batches, diagnoses, write_synthetic
from ehrjepa.synth.chartevents import chartevents
from ehrjepa.synth.severity import sickness
from ehrjepa.synth.stays import draw_patients, stays_and_admissions

TABLES = ["hosp/patients", "hosp/admissions", "hosp/labevents", "hosp/d_labitems",
          "hosp/diagnoses_icd", "hosp/d_icd_diagnoses", "icu/icustays", "icu/chartevents",
          "icu/d_items"]
# MIMIC-IV v2.2 chartevents columns (the demo has no chartevents; from the v2.2 documentation)
CHARTEVENTS_COLUMNS = ["subject_id", "hadm_id", "stay_id", "caregiver_id", "charttime",
                       "storetime", "itemid", "value", "valuenum", "valueuom", "warning"]
LAB_FEATURES = [50912, 51006, 50983, 50971, 50902, 50882, 50931, 51222, 51221, 51301, 51265,
                50813, 50820]


def read(root, table, fmt="csv.gz"):
    path = root / f"{table}.{fmt}"
    return pq.read_table(path) if fmt == "parquet" else pcsv.read_csv(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One csv.gz run shared by the read-only tests below: 150 patients."""
    root = tmp_path_factory.mktemp("synth")
    counts = write_synthetic(root, 150, seed=3, fmt="csv.gz", progress=False)
    tables = {t.split("/")[1]: read(root, t) for t in TABLES}
    return root, counts, tables


def test_counts_match_files(run):
    _, counts, tables = run
    assert set(counts) == set(tables)
    for name, table in tables.items():
        assert counts[name] == table.num_rows > 0, name
    assert counts["patients"] == 150


def test_headers_and_types_match_demo(run, demo_dir):
    root, _, ours = run
    for table in TABLES:
        name = table.split("/")[1]
        with gzip.open(root / f"{table}.csv.gz", "rt") as f:
            header = f.readline()
        if name == "chartevents":
            assert header.rstrip("\n").split(",") == CHARTEVENTS_COLUMNS
            continue
        with gzip.open(demo_dir / f"{table}.csv.gz", "rt") as f:
            assert header == f.readline(), table  # same names, order, and unquoted
        demo_schema = pcsv.read_csv(demo_dir / f"{table}.csv.gz").schema
        assert SCHEMAS[name] == demo_schema, name  # what parquet files are written with
        # every column parses as the demo's type, and where a column has values, pyarrow
        # infers the same type from our file as from the demo
        pcsv.read_csv(root / f"{table}.csv.gz",
                      convert_options=pcsv.ConvertOptions(column_types=demo_schema))
        for field in ours[name].schema:
            if ours[name][field.name].null_count < ours[name].num_rows:
                assert field.type == demo_schema.field(field.name).type, (table, field.name)


def test_chartevents_types(run):
    _, _, t = run
    assert t["chartevents"].schema == SCHEMAS["chartevents"]
    assert SCHEMAS["chartevents"].names == CHARTEVENTS_COLUMNS


def test_deterministic(tmp_path):
    for fmt in ("csv.gz", "parquet"):
        a, b, c = (tmp_path / f"{fmt}_{k}" for k in "abc")
        write_synthetic(a, 20, seed=7, fmt=fmt, progress=False)
        write_synthetic(b, 20, seed=7, fmt=fmt, progress=False)
        write_synthetic(c, 20, seed=8, fmt=fmt, progress=False)
        for table in TABLES:
            name = f"{table}.{fmt}"
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
        name = f"icu/chartevents.{fmt}"
        assert (a / name).read_bytes() != (c / name).read_bytes()


def test_full_batches_do_not_depend_on_total(tmp_path, monkeypatch):
    """Batches have their own random streams: a longer run starts with a shorter one's batches."""
    monkeypatch.setattr(batches, "BATCH_PATIENTS", 8)
    write_synthetic(tmp_path / "small", 16, seed=1, fmt="csv", progress=False)
    write_synthetic(tmp_path / "large", 21, seed=1, fmt="csv", progress=False)
    for table in ("icu/icustays", "icu/chartevents", "hosp/labevents"):
        small = read(tmp_path / "small", table, "csv")
        large = read(tmp_path / "large", table, "csv")
        assert large.num_rows > small.num_rows
        assert large.slice(0, small.num_rows).equals(small), table


def test_intervals(run):
    _, _, t = run
    adm = t["admissions"].to_pandas()
    icu = t["icustays"].to_pandas()
    pat = t["patients"].to_pandas()
    m = icu.merge(adm, on="hadm_id", suffixes=("", "_adm"), validate="many_to_one")
    assert len(m) == len(icu)
    assert (m.subject_id == m.subject_id_adm).all()
    assert (m.intime >= m.admittime).all() and (m.outtime <= m.dischtime).all()
    assert (m.intime < m.outtime).all()
    los = (icu.outtime - icu.intime).dt.total_seconds() / 86400
    assert np.allclose(icu.los, los)
    assert (icu.groupby("hadm_id").size() == 2).any(), "some admissions have two ICU stays"
    # stays of a subject do not overlap; admissions of a subject do not overlap
    for df, start, end in ((icu, "intime", "outtime"), (adm, "admittime", "dischtime")):
        df = df.sort_values(["subject_id", start])
        same = df.subject_id.values[1:] == df.subject_id.values[:-1]
        assert (df[start].values[1:][same] >= df[end].values[:-1][same]).all()
    # death: deathtime set exactly when hospital_expire_flag is 1, at discharge
    dead = adm.hospital_expire_flag == 1
    assert set(adm.hospital_expire_flag) <= {0, 1} and dead.any() and (~dead).any()
    assert adm.deathtime.notna().eq(dead).all()
    assert (adm.deathtime[dead] == adm.dischtime[dead]).all()
    assert (adm.discharge_location[dead] == "DIED").all()
    # an ICU death (the last stay ends under 2 h before the death; ward deaths come later) dies
    # at its outtime exactly, so a window ending at the ICU discharge sees the death
    last_out = icu.groupby("hadm_id").outtime.max()
    wait = adm.deathtime[dead] - adm.hadm_id[dead].map(last_out)
    icu_death = wait < np.timedelta64(2, "h")
    assert icu_death.any() and (wait[icu_death] == np.timedelta64(0)).all()
    # a fatal admission is the patient's last one, and dod is the day of death
    last = adm.sort_values("admittime").groupby("subject_id").tail(1)
    assert set(adm.hadm_id[dead]) <= set(last.hadm_id)
    dod = pat.set_index("subject_id").dod
    for _, row in adm[dead].iterrows():
        assert str(dod[row.subject_id]) == str(row.deathtime.date())
    # ED times only for emergency admissions
    assert adm.edregtime.notna().any() and adm.edregtime.isna().any()
    assert (adm.edregtime.dropna() <= adm.admittime[adm.edregtime.notna()]).all()


def test_events_sorted_and_linked(run):
    _, _, t = run
    ce = t["chartevents"]
    stay = ce["stay_id"].to_numpy()
    time = ce["charttime"].cast(pa.int64()).to_numpy()
    assert (np.diff(stay) >= 0).all()
    same = stay[1:] == stay[:-1]
    assert (np.diff(time)[same] >= 0).all()
    icu = t["icustays"].to_pandas().set_index("stay_id")
    ids = ce.select(["stay_id", "hadm_id", "subject_id"]).to_pandas().drop_duplicates()
    assert set(ids.stay_id) == set(icu.index)  # every stay is charted
    assert (icu.loc[ids.stay_id, "hadm_id"].values == ids.hadm_id.values).all()
    assert (icu.loc[ids.stay_id, "subject_id"].values == ids.subject_id.values).all()
    le = t["labevents"]
    subj = le["subject_id"].to_numpy()
    time = le["charttime"].cast(pa.int64()).to_numpy()
    assert (np.diff(subj) >= 0).all()
    assert (np.diff(time)[subj[1:] == subj[:-1]] >= 0).all()
    assert (np.diff(le["labevent_id"].to_numpy()) == 1).all()
    assert (le["storetime"].cast(pa.int64()).to_numpy() >= time).all()


def test_itemids_and_dictionaries(run):
    _, _, t = run
    chart_items = set(t["chartevents"]["itemid"].to_pylist())
    lab_items = set(t["labevents"]["itemid"].to_pylist())
    wanted = {220045, 220050, 220179, 225309, 220051, 220180, 225310, 220052, 220181, 225312,
              220210, 224690, 220277, 223762, 223761, 220739, 223900, 223901, 223835}
    assert wanted <= chart_items
    assert len(chart_items - wanted) >= 3  # unrelated items a pipeline must drop
    assert set(LAB_FEATURES) <= lab_items and len(lab_items - set(LAB_FEATURES)) >= 2
    assert chart_items <= set(t["d_items"]["itemid"].to_pylist())
    assert lab_items <= set(t["d_labitems"]["itemid"].to_pylist())
    d = t["d_items"].to_pandas().set_index("itemid")
    assert d.loc[223761, "unitname"] == "°F" and d.loc[223762, "unitname"] == "°C"
    # GCS rows: text in value, score in valuenum
    ce = t["chartevents"].to_pandas()
    gcs = ce[ce.itemid == 220739]
    assert set(gcs.value) <= {"No Response", "To Pain", "To Speech", "Spontaneously"}
    assert gcs.valuenum.between(1, 4).all()


def test_vitals_hourly_with_gaps_and_labs_sparse(run):
    _, _, t = run
    ce = t["chartevents"].to_pandas()
    hr = ce[ce.itemid == 220045]
    gaps = hr.groupby("stay_id").charttime.diff().dt.total_seconds().dropna() / 3600
    assert 0.5 <= gaps.median() <= 1.0
    assert (gaps > 2).any()  # missed hours
    assert (gaps < 1).any()  # extra readings
    minutes = hr.charttime.dt.minute
    assert (minutes == 0).mean() > 0.5 and (minutes != 0).any()  # on the hour, with jitter
    # labs in the ICU every 4-24 h, with at least 30 % of the lab features missing per draw
    icu = t["icustays"].to_pandas()
    le = t["labevents"].to_pandas()
    le = le.merge(icu[["subject_id", "intime", "outtime"]], on="subject_id")
    le = le[(le.charttime >= le.intime) & (le.charttime < le.outtime)]
    le["feature"] = le.itemid.isin(LAB_FEATURES)
    draws = le.groupby(["subject_id", "intime", "charttime"]).feature.sum()
    assert 1 - draws.mean() / len(LAB_FEATURES) >= 0.3
    times = draws.reset_index().groupby(["subject_id", "intime"]).charttime.diff()
    hours = times.dt.total_seconds().dropna() / 3600
    assert hours.min() >= 4 - 1e-9 and hours.max() <= 24 + 1e-9


def test_dirty_rows_present(run):
    _, _, t = run
    ce = t["chartevents"].to_pandas()
    le = t["labevents"].to_pandas()
    icu = t["icustays"].to_pandas()
    features = [220045, 220050, 220051, 220052, 220179, 220180, 220181, 225309, 225310, 225312,
                220210, 224690, 220277, 223762, 223761, 223835]
    # out-of-range numbers, flagged with warning = 1
    warned = ce[ce.warning == 1]
    assert len(warned) >= 3 and warned.itemid.isin(features).all()
    # text where a number belongs
    text = ce[ce.itemid.isin(features) & ce.valuenum.isna()]
    assert len(text) >= 2 and text.value.notna().all()
    assert pd_to_float(text.value).isna().all()
    lab_text = le[le.valuenum.isna() & le.value.notna()]
    assert len(lab_text) >= 2 and pd_to_float(lab_text.value).isna().all()
    # a lab decimal slip far outside the reference range
    assert (le.valuenum > 5 * le.ref_range_upper).any()
    # labs without hadm_id, some of them just before an ICU intime of the same subject
    no_hadm = le[le.hadm_id.isna()].merge(icu[["subject_id", "intime"]], on="subject_id")
    before = (no_hadm.charttime < no_hadm.intime) & (
        no_hadm.charttime >= no_hadm.intime - np.timedelta64(6, "h"))
    assert before.any()
    # chart rows just before intime and just after outtime
    m = ce.merge(icu[["stay_id", "intime", "outtime"]], on="stay_id")
    assert (m.charttime < m.intime).any() and (m.charttime >= m.outtime).any()
    assert ((m.charttime >= m.intime - np.timedelta64(6, "h")) | (m.charttime >= m.intime)).all()


def pd_to_float(series):
    import pandas as pd

    return pd.to_numeric(series, errors="coerce")


def test_outcome_depends_on_trajectory():
    """In-hospital death is better predicted from the first 24 h path (last value + slope)
    than from the last hour alone: the outcome is not a function of one hour."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    age = np.clip(np.round(rng.normal(64, 17, 6000)), 18, 91)
    sim = synth.simulate_stays(rng, age)
    # rates like an ICU: deaths ~10-15 %, median length of stay ~2 days with a long tail
    los_days = (sim["hours"] + 0.5) / 24
    assert 0.06 <= sim["died"].mean() <= 0.18
    assert 1.4 <= np.median(los_days) <= 2.8
    assert np.percentile(los_days, 95) >= 3 * np.median(los_days)
    assert (los_days >= 1).mean() >= 0.6
    long = sim["hours"] >= 24
    x, y = sim["x"][long, :24], sim["died"][long]
    centred = np.arange(24) - 11.5
    slope = x @ centred / (centred ** 2).sum()
    half = len(y) // 2

    def auc(features):
        model = LogisticRegression(max_iter=1000).fit(features[:half], y[:half])
        return roc_auc_score(y[half:], model.predict_proba(features[half:])[:, 1])

    snapshot = auc(x[:, [23]])
    trajectory = auc(np.c_[x[:, 23], slope, x.mean(1)])
    assert trajectory > snapshot + 0.02, (snapshot, trajectory)


def test_vitals_follow_severity():
    """Heart rate rises and blood pressure falls with the latent severity."""
    rng = np.random.default_rng(1)
    pat = draw_patients(rng, 0, 60)
    stays, _ = stays_and_admissions(rng, pat)
    ce = chartevents(rng, stays).to_pandas()
    ce["hour"] = ((ce.charttime - ce.stay_id.map(dict(zip(stays["stay_id"], stays["intime"].astype(
        "datetime64[s]"))))).dt.total_seconds() // 3600).clip(lower=0).astype(int)
    row = {s: i for i, s in enumerate(stays["stay_id"])}
    ce["x"] = [stays["x"][row[s], min(h, stays["hours"][row[s]])]
               for s, h in zip(ce.stay_id, ce.hour)]
    hr = ce[(ce.itemid == 220045) & (ce.warning == 0)].dropna(subset=["valuenum"])
    sbp = ce[(ce.itemid == 220179) & (ce.warning == 0)].dropna(subset=["valuenum"])
    assert np.corrcoef(hr.x, hr.valuenum)[0, 1] > 0.3
    assert np.corrcoef(sbp.x, sbp.valuenum)[0, 1] < -0.2


def course_of_batches(n_batches=4, patients=500):
    """Stays and admissions of a few batches, with each stay's sickness (severity.sickness)."""
    out = []
    for k in range(n_batches):
        rng = np.random.default_rng([11, k])
        pat = draw_patients(rng, k * patients, patients)
        stays, adms = stays_and_admissions(rng, pat)
        stays["sick"] = sickness(stays)
        out.append((pat, stays, adms))
    return out


def tercile_rates(score, outcome):
    lo, hi = np.percentile(score, [100 / 3, 200 / 3])
    return outcome[score <= lo].mean(), outcome[score >= hi].mean()


def test_readmissions_follow_severity():
    """A second ICU stay, and a new admission within 30 days of a discharge alive, come more
    often after sicker stays; both stay rare overall."""
    first_sick, second, last_sick, back = [], [], [], []
    for _, stays, adms in course_of_batches():
        first = np.r_[True, stays["adm"][1:] != stays["adm"][:-1]]
        alive1 = first & ~stays["died"]
        first_sick.append(stays["sick"][alive1])
        second.append(np.r_[stays["adm"][1:] == stays["adm"][:-1], False][alive1])
        last = np.r_[stays["adm"][1:] != stays["adm"][:-1], True]
        adm = stays["adm"][last]
        alive = ~adms["fatal"][adm]
        same_pat = np.r_[adms["pat"][1:] == adms["pat"][:-1], False]
        wait = np.r_[adms["admittime"][1:], 0] - adms["dischtime"]
        within = same_pat & (wait > 0) & (wait <= 30 * 86400)
        last_sick.append(stays["sick"][last][alive])
        back.append(within[adm][alive])
    first_sick, second = np.concatenate(first_sick), np.concatenate(second)
    last_sick, back = np.concatenate(last_sick), np.concatenate(back)
    assert 0.06 <= second.mean() <= 0.15
    low, high = tercile_rates(first_sick, second)
    assert high > 2 * low + 0.03, (low, high)
    assert 0.05 <= back.mean() <= 0.25
    low, high = tercile_rates(last_sick, back)
    assert high > 1.5 * low + 0.03, (low, high)


# configs/phenotypes.yaml's prefixes (the contract), written out so the test can fail on its own
PHENOTYPES = {"sepsis": ("A40", "A41", "R652"), "aki": ("N17",), "arf": ("J960", "J962"),
              "heart_failure": ("I50",), "shock": ("R57", "R6521")}


def test_diagnoses_table(run):
    """Every admission has 1 to MAX_CODES diagnoses, seq_num 1, 2, ..., ICD-10 codes without the
    dot that d_icd_diagnoses describes; the contract's columns in MIMIC-IV v2.2 order."""
    _, _, t = run
    dx, d = t["diagnoses_icd"], t["d_icd_diagnoses"]
    assert dx.schema.names == ["subject_id", "hadm_id", "seq_num", "icd_code", "icd_version"]
    assert d.schema.names == ["icd_code", "icd_version", "long_title"]
    assert dx.schema == SCHEMAS["diagnoses_icd"] and d.schema == SCHEMAS["d_icd_diagnoses"]
    df, adm = dx.to_pandas(), t["admissions"].to_pandas()
    assert set(df.hadm_id) == set(adm.hadm_id)
    n = df.groupby("hadm_id").size()
    assert n.min() >= 1 and n.max() <= diagnoses.MAX_CODES
    assert (df.groupby("hadm_id").seq_num.apply(lambda s: list(s) == list(range(1, len(s) + 1)))
            ).all()
    assert not df.duplicated(["hadm_id", "icd_code"]).any()
    subject = adm.set_index("hadm_id").subject_id
    assert (df.subject_id.values == subject[df.hadm_id].values).all()
    assert (df.icd_version == 10).all() and not df.icd_code.str.contains(r"\.").any()
    assert set(df.icd_code) <= set(d["icd_code"].to_pylist())
    titles = dict(zip(d["icd_code"].to_pylist(), d["long_title"].to_pylist()))
    assert titles["A419"] == "Sepsis, unspecified organism"
    assert titles["N179"] == "Acute kidney failure, unspecified"
    for prefixes in PHENOTYPES.values():
        assert df.icd_code.str.startswith(prefixes).any(), prefixes


def test_phenotypes_follow_severity():
    """Each phenotype is coded more often in the sickest third of ICU admissions (by peak
    severity) than in the healthiest; AKI more often where the creatinine drawn rose 1.5x."""
    from ehrjepa.synth.batches import provider_pool
    from ehrjepa.synth.labevents import labevents

    peak, hit, kdigo = [], {name: [] for name in PHENOTYPES}, []
    for k, (pat, stays, adms) in enumerate(course_of_batches(3)):
        rng = np.random.default_rng([12, k])
        lab = labevents(rng, pat, stays, adms, 1, 0, provider_pool(0))
        dx = diagnoses.diagnoses(rng, pat, stays, adms, lab).to_pandas()
        course = diagnoses.admission_course(rng, pat, stays, adms)
        icu = np.flatnonzero(course["icu"])
        peak.append(course["peak"][icu])
        kdigo.append(diagnoses.creatinine_ratio(lab, adms["hadm_id"])[icu] >= 1.5)
        for name, prefixes in PHENOTYPES.items():
            coded = dx[dx.icd_code.str.startswith(prefixes)].hadm_id
            hit[name].append(np.isin(adms["hadm_id"][icu], coded))
    peak, kdigo = np.concatenate(peak), np.concatenate(kdigo)
    for name in PHENOTYPES:
        y = np.concatenate(hit[name])
        low, high = tercile_rates(peak, y)
        assert 0.03 <= y.mean() <= 0.6 and high > 1.5 * low + 0.05, (name, low, high)
    aki = np.concatenate(hit["aki"])
    assert aki[kdigo].mean() > aki[~kdigo].mean() + 0.1


def test_all_formats_readable_and_equal(tmp_path):
    tables = {}
    for fmt in ("csv", "csv.gz", "parquet"):
        counts = write_synthetic(tmp_path / fmt.replace(".", "_"), 25, seed=5, fmt=fmt,
                                 progress=False)
        for table in TABLES:
            name = table.split("/")[1]
            root = tmp_path / fmt.replace(".", "_")
            if fmt == "parquet":
                got = pq.read_table(root / f"{table}.parquet")
                assert got.schema.remove_metadata() == synth.parquet_schema(SCHEMAS[name]), name
            else:
                got = pcsv.read_csv(root / f"{table}.{fmt}", convert_options=pcsv.ConvertOptions(
                    column_types=SCHEMAS[name], strings_can_be_null=True))
            assert got.num_rows == counts[name]
            tables.setdefault(name, []).append(got.cast(SCHEMAS[name]))
    for name, (csv, gz, parquet) in tables.items():
        assert csv.equals(gz), name
        # empty strings in CSV read back as null, as in the real files
        assert csv.equals(parquet), name


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="format"):
        write_synthetic(tmp_path, 5, fmt="xlsx", progress=False)
    with pytest.raises(ValueError, match="patients"):
        write_synthetic(tmp_path, 0, progress=False)


def test_cli(tmp_path, capsys):
    from ehrjepa.cli import main

    assert main(["synth", "--out", str(tmp_path), "--patients", "5", "--seed", "2",
                 "--format", "csv", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "icu/chartevents.csv" in out and "rows/s" in out
    assert (tmp_path / "hosp" / "labevents.csv").exists()


def test_help_shows_every_default():
    """Each option's help says its default, or that it is required."""
    import argparse

    parser = argparse.ArgumentParser()
    synth.configure(parser)
    for action in parser._actions:
        if action.dest != "help":
            text = action.help % {"default": action.default}
            assert "default" in text or ("required" in text and action.required), action.dest
