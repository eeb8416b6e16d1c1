"""The synthetic cohort as a MEDS dataset (Medical Event Data Standard, the `meds` 0.4 schemas).

    DIR/data/{train,tuning,held_out}/K.parquet   subject_id, time, code, numeric_value,
                                                 text_value, hadm_id, icustay_id
    DIR/metadata/codes.parquet                   code, description, parent_codes
    DIR/metadata/subject_splits.parquet          subject_id, split
    DIR/metadata/dataset.json

The events are derived from the very tables `simulate_batch` builds for the MIMIC-IV files, so
the same seed gives the same events in both layouts. Codes, times and values follow the event
configuration of MIMIC_IV_MEDS (the MEDS-Extract pipeline for MIMIC-IV), table by table:

    patients     GENDER//{gender} (static, time null); MEDS_BIRTH on 1 January of
                 anchor_year - anchor_age; MEDS_DEATH at the earliest admissions.deathtime,
                 else at dod (midnight)
    admissions   HOSPITAL_ADMISSION//{admission_type}//{admission_location} at admittime,
                 HOSPITAL_DISCHARGE//{discharge_location} at dischtime, ED_REGISTRATION at
                 edregtime, ED_OUT at edouttime
    icustays     ICU_ADMISSION//{first_careunit} at intime, ICU_DISCHARGE//{last_careunit} at
                 outtime
    diagnoses_icd  DIAGNOSIS//ICD//{icd_version}//{icd_code} at the admission's dischtime (the
                 codes are known at discharge), in seq_num order
    chartevents  LAB//{itemid}//{valueuom} at charttime, numeric_value valuenum, text_value value
    labevents    LAB//SPECIMEN_COLLECTED//{itemid} at charttime, and
                 LAB//RESULT//{itemid}//{valueuom} at storetime with valuenum and value

A null code component is written UNK; events whose time is null are dropped (only GENDER is
static). hadm_id and icustay_id are kept as extra columns, as MIMIC_IV_MEDS keeps them.

Each batch's events are sorted by subject, then time (static rows first; ties keep the order
above), and split by subject with the same hash as `ehrjepa preprocess` at its default split
seed (train, val, test -> train, tuning, held_out). Shard K of a split holds the subjects of
batches K * BATCHES_PER_SHARD .. + BATCHES_PER_SHARD - 1, one row group per batch, so a
subject's rows are contiguous in one file and memory stays bounded. The dataset is written into
a temporary folder beside DIR and renamed to DIR at the end: DIR is complete or absent.
dataset.json has no creation time, so the same seed and patient count give the same bytes.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrjepa import __version__
from ehrjepa.data.processed import split_of_subjects
from ehrjepa.synth import batches
from ehrjepa.synth.dictionaries import D_ITEMS, D_LABITEMS, ICD10

MEDS_VERSION = "0.4.1"  # the `meds` package whose schemas these files follow
SPLITS = ("train", "tuning", "held_out")  # MEDS's names of preprocess's train, val, test
SPLIT_SEED = 0  # `ehrjepa preprocess --split-seed` default
BATCHES_PER_SHARD = 100  # 50,000 patients' subjects per shard of each split
US = pa.timestamp("us")
DATA_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64(), nullable=False), pa.field("time", US),
    pa.field("code", pa.string(), nullable=False), pa.field("numeric_value", pa.float32()),
    pa.field("text_value", pa.large_string()), pa.field("hadm_id", pa.int64()),
    pa.field("icustay_id", pa.int64())])
CODES_SCHEMA = pa.schema([
    pa.field("code", pa.string(), nullable=False), pa.field("description", pa.string()),
    pa.field("parent_codes", pa.list_(pa.string()))])
SPLITS_SCHEMA = pa.schema([pa.field("subject_id", pa.int64(), nullable=False),
                           pa.field("split", pa.string(), nullable=False)])


def _code(*parts) -> pa.Array:
    """Components (strings, and at least one array) joined with '//'; a null reads UNK."""
    parts = [p if isinstance(p, str) else pc.fill_null(p.cast(pa.string()), "UNK")
             for p in parts]
    return pc.binary_join_element_wise(*parts, "//")


def _events(subject_id, t, code, numeric_value=None, text_value=None, hadm_id=None,
            icustay_id=None) -> pa.Table:
    """MEDS rows, the ones whose time is null dropped unless t is None (static rows)."""
    n = len(subject_id)
    columns = [subject_id, pa.nulls(n, US) if t is None else t, code, numeric_value, text_value,
               hadm_id, icustay_id]
    columns = [pa.nulls(n, f.type) if c is None else
               pa.array([c] * n, f.type) if isinstance(c, str) else c.cast(f.type)
               for c, f in zip(columns, DATA_SCHEMA)]
    table = pa.table(columns, schema=DATA_SCHEMA)
    return table if t is None else table.filter(pc.is_valid(table["time"]))


def batch_events(tables: dict) -> pa.Table:
    """The MEDS rows of one batch's MIMIC tables, sorted by subject then time, static first."""
    pat, adm, icu = tables["patients"], tables["admissions"], tables["icustays"]
    chart, lab, dx = tables["chartevents"], tables["labevents"], tables["diagnoses_icd"]
    dx_time = adm["dischtime"].take(pc.index_in(dx["hadm_id"], adm["hadm_id"]))

    birth_year = pc.subtract(pat["anchor_year"], pat["anchor_age"]).to_numpy()
    birth = (birth_year - 1970).astype("datetime64[Y]").astype("datetime64[us]")
    # death: the earliest deathtime of the subject's admissions, else dod
    subjects = pat["subject_id"].to_numpy()
    died = pc.is_valid(adm["deathtime"]).to_numpy(zero_copy_only=False)
    death = np.full(len(subjects), np.iinfo(np.int64).max)
    np.minimum.at(death, np.searchsorted(subjects, adm["subject_id"].to_numpy()[died]),
                  adm["deathtime"].filter(pa.array(died)).cast(pa.int64()).to_numpy())
    dod = pat["dod"].cast(pa.timestamp("s")).cast(pa.int64())
    death = pc.if_else(pa.array(death < np.iinfo(np.int64).max), pa.array(death), dod)
    death = death.cast(pa.timestamp("s"))

    parts = [
        _events(pat["subject_id"], None, _code("GENDER", pat["gender"])),
        _events(pat["subject_id"], pa.array(birth, US), "MEDS_BIRTH"),
        _events(pat["subject_id"], death, "MEDS_DEATH"),
        _events(adm["subject_id"], adm["edregtime"], "ED_REGISTRATION"),
        _events(adm["subject_id"], adm["edouttime"], "ED_OUT"),
        _events(adm["subject_id"], adm["admittime"],
                _code("HOSPITAL_ADMISSION", adm["admission_type"], adm["admission_location"]),
                hadm_id=adm["hadm_id"]),
        _events(adm["subject_id"], adm["dischtime"],
                _code("HOSPITAL_DISCHARGE", adm["discharge_location"]), hadm_id=adm["hadm_id"]),
        _events(dx["subject_id"], dx_time, _code("DIAGNOSIS//ICD", dx["icd_version"],
                                                 dx["icd_code"]), hadm_id=dx["hadm_id"]),
        _events(icu["subject_id"], icu["intime"], _code("ICU_ADMISSION", icu["first_careunit"]),
                hadm_id=icu["hadm_id"], icustay_id=icu["stay_id"]),
        _events(icu["subject_id"], icu["outtime"], _code("ICU_DISCHARGE", icu["last_careunit"]),
                hadm_id=icu["hadm_id"], icustay_id=icu["stay_id"]),
        _events(chart["subject_id"], chart["charttime"],
                _code("LAB", chart["itemid"], chart["valueuom"]), chart["valuenum"],
                chart["value"], chart["hadm_id"], chart["stay_id"]),
        _events(lab["subject_id"], lab["charttime"],
                _code("LAB", "SPECIMEN_COLLECTED", lab["itemid"]), hadm_id=lab["hadm_id"]),
        _events(lab["subject_id"], lab["storetime"],
                _code("LAB", "RESULT", lab["itemid"], lab["valueuom"]), lab["valuenum"],
                lab["value"], lab["hadm_id"]),
    ]
    events = pa.concat_tables(parts)
    # a stable sort on (subject, time), a static row's null time read as the earliest time
    when = pc.fill_null(events["time"].cast(pa.int64()), np.iinfo(np.int64).min)
    order = pc.sort_indices(pa.table({"s": events["subject_id"], "t": when}),
                            [("s", "ascending"), ("t", "ascending")])
    return events.take(order)


def split_names(subject_id: np.ndarray) -> np.ndarray:
    """The MEDS split of each subject (train, tuning, held_out): preprocess's split."""
    return np.array(SPLITS)[split_of_subjects(np.asarray(subject_id), SPLIT_SEED)]


_LABELS = {str(r[0]): r[1] for r in D_ITEMS}
_LAB_LABELS = {str(r[0]): f"{r[1]} ({r[2]}, {r[3]})" for r in D_LABITEMS}


def describe(code: str) -> str:
    """A human-readable description of one of our codes."""
    head, *rest = code.split("//")
    if head == "LAB" and rest[0] == "RESULT":
        return f"{_LAB_LABELS[rest[1]]}, result in {rest[2]}"
    if head == "LAB" and rest[0] == "SPECIMEN_COLLECTED":
        return f"{_LAB_LABELS[rest[1]]}, specimen collected"
    if head == "LAB":
        return f"{_LABELS[rest[0]]} (chartevents), in {rest[1]}"
    if head == "DIAGNOSIS":
        return f"{ICD10[rest[2]]} (ICD-10-CM {rest[2]}, diagnoses_icd)"
    return {"GENDER": "Gender {}", "MEDS_BIRTH": "Birth (1 January of anchor_year - anchor_age)",
            "MEDS_DEATH": "Death", "ED_REGISTRATION": "Registered in the emergency department",
            "ED_OUT": "Left the emergency department",
            "HOSPITAL_ADMISSION": "Hospital admission, {} from {}",
            "HOSPITAL_DISCHARGE": "Hospital discharge to {}",
            "ICU_ADMISSION": "ICU admission to {}",
            "ICU_DISCHARGE": "ICU discharge from {}"}[head].format(*rest)


class _Shards:
    """data/{split}/{K}.parquet writers: one open file per split, a new one every
    BATCHES_PER_SHARD batches, opened at the first rows it gets."""

    def __init__(self, root: Path):
        self.root, self.open, self.rows = root, {}, {s: 0 for s in SPLITS}

    def write(self, split: str, shard: int, table: pa.Table):
        if not table.num_rows:
            return
        path = self.root / "data" / split / f"{shard}.parquet"
        if split not in self.open or self.open[split][0] != path:
            self.close(split)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.open[split] = (path, pq.ParquetWriter(path, DATA_SCHEMA, compression="zstd"))
        self.open[split][1].write_table(table, row_group_size=1 << 24)
        self.rows[split] += table.num_rows

    def close(self, split: str | None = None):
        for s in [split] if split else list(self.open):
            if s in self.open:
                self.open.pop(s)[1].close()


def _write_dataset(root: Path, patients: int, seed: int, progress: bool) -> dict:
    """Every file of the dataset under root (a fresh folder); returns rows per file group."""
    from tqdm import tqdm

    shards, codes, splits = _Shards(root), set(), []
    bar = tqdm(total=-(-patients // batches.BATCH_PATIENTS), desc="synth meds", unit="batch",
               disable=not progress)
    try:
        for batch, tables in enumerate(batches.simulate_batches(patients, seed)):
            events = batch_events(tables)
            codes.update(pc.unique(events["code"]).to_pylist())
            subjects = tables["patients"]["subject_id"].to_numpy()
            split = split_names(subjects)
            splits.append(pa.table([pa.array(subjects), pa.array(split)], schema=SPLITS_SCHEMA))
            of_row = split[np.searchsorted(subjects, events["subject_id"].to_numpy())]
            for name in SPLITS:
                shards.write(name, batch // BATCHES_PER_SHARD,
                             events.filter(pa.array(of_row == name)))
            bar.update()
    finally:
        shards.close()
        bar.close()
    (root / "metadata").mkdir()
    codes = sorted(codes)
    pq.write_table(pa.table([pa.array(codes), pa.array([describe(c) for c in codes]),
                             pa.nulls(len(codes), pa.list_(pa.string()))], schema=CODES_SCHEMA),
                   root / "metadata" / "codes.parquet", compression="zstd")
    pq.write_table(pa.concat_tables(splits), root / "metadata" / "subject_splits.parquet",
                   compression="zstd")
    meta = {"dataset_name": "ehrjepa synthetic MIMIC-IV",
            "dataset_version": f"seed {seed}, {patients} patients",
            "etl_name": "ehrjepa synth --format meds", "etl_version": __version__,
            "meds_version": MEDS_VERSION, "raw_source_id_columns": ["hadm_id", "icustay_id"]}
    (root / "metadata" / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    rows = {f"data/{s}/": n for s, n in shards.rows.items()}
    rows.update({"metadata/codes.parquet": len(codes), "metadata/subject_splits.parquet": patients})
    return rows


def write_meds(out, patients: int, seed: int = 0, progress: bool = True) -> tuple[dict, dict]:
    """Writes the MEDS dataset to `out` (a new or empty folder) through a temporary folder beside
    it; returns (rows per file group, {"seconds": wall clock, "cpu": CPU seconds})."""
    batches.check_arguments(patients, "meds", ("meds",))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: exists and is not an empty folder (MEDS output needs a "
                         "new or empty one)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.meds-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run with this pid
    tmp.mkdir()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        rows = _write_dataset(tmp, patients, seed, progress)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rows, {"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}
