"""MIMIC-IV v2.2 tables: column order and types (as pyarrow infers them from the public demo's
CSV files; chartevents as in the v2.2 docs), the folder of each table, and the time units.

Times are int64 seconds since the epoch throughout the generator."""
from __future__ import annotations

import pyarrow as pa

MINUTE = 60
HOUR = 3600
DAY = 86400

TS = pa.timestamp("s")
SCHEMAS = {
    "patients": pa.schema([
        ("subject_id", pa.int64()), ("gender", pa.string()), ("anchor_age", pa.int64()),
        ("anchor_year", pa.int64()), ("anchor_year_group", pa.string()), ("dod", pa.date32())]),
    "admissions": pa.schema([
        ("subject_id", pa.int64()), ("hadm_id", pa.int64()), ("admittime", TS),
        ("dischtime", TS), ("deathtime", TS), ("admission_type", pa.string()),
        ("admit_provider_id", pa.string()), ("admission_location", pa.string()),
        ("discharge_location", pa.string()), ("insurance", pa.string()),
        ("language", pa.string()), ("marital_status", pa.string()), ("race", pa.string()),
        ("edregtime", TS), ("edouttime", TS), ("hospital_expire_flag", pa.int64())]),
    "labevents": pa.schema([
        ("labevent_id", pa.int64()), ("subject_id", pa.int64()), ("hadm_id", pa.int64()),
        ("specimen_id", pa.int64()), ("itemid", pa.int64()), ("order_provider_id", pa.string()),
        ("charttime", TS), ("storetime", TS), ("value", pa.string()), ("valuenum", pa.float64()),
        ("valueuom", pa.string()), ("ref_range_lower", pa.float64()),
        ("ref_range_upper", pa.float64()), ("flag", pa.string()), ("priority", pa.string()),
        ("comments", pa.string())]),
    "d_labitems": pa.schema([
        ("itemid", pa.int64()), ("label", pa.string()), ("fluid", pa.string()),
        ("category", pa.string())]),
    "icustays": pa.schema([
        ("subject_id", pa.int64()), ("hadm_id", pa.int64()), ("stay_id", pa.int64()),
        ("first_careunit", pa.string()), ("last_careunit", pa.string()), ("intime", TS),
        ("outtime", TS), ("los", pa.float64())]),
    "chartevents": pa.schema([
        ("subject_id", pa.int64()), ("hadm_id", pa.int64()), ("stay_id", pa.int64()),
        ("caregiver_id", pa.int64()), ("charttime", TS), ("storetime", TS),
        ("itemid", pa.int64()), ("value", pa.string()), ("valuenum", pa.float64()),
        ("valueuom", pa.string()), ("warning", pa.int64())]),
    "d_items": pa.schema([
        ("itemid", pa.int64()), ("label", pa.string()), ("abbreviation", pa.string()),
        ("linksto", pa.string()), ("category", pa.string()), ("unitname", pa.string()),
        ("param_type", pa.string()), ("lownormalvalue", pa.int64()),
        ("highnormalvalue", pa.float64())]),
    "diagnoses_icd": pa.schema([
        ("subject_id", pa.int64()), ("hadm_id", pa.int64()), ("seq_num", pa.int64()),
        ("icd_code", pa.string()), ("icd_version", pa.int64())]),
    "d_icd_diagnoses": pa.schema([
        ("icd_code", pa.string()), ("icd_version", pa.int64()), ("long_title", pa.string())]),
}
MODULE_OF = {"patients": "hosp", "admissions": "hosp", "labevents": "hosp", "d_labitems": "hosp",
             "icustays": "icu", "chartevents": "icu", "d_items": "icu",
             "diagnoses_icd": "hosp", "d_icd_diagnoses": "hosp"}
