"""`ehrjepa synth`: synthetic ICU data in the exact MIMIC-IV v2.2 schema.

    ehrjepa synth --out DIR --patients N [--seed S] [--format csv.gz|csv|parquet]

writes DIR/hosp/{patients,admissions,labevents,d_labitems}.EXT and
DIR/icu/{icustays,chartevents,d_items}.EXT with MIMIC-IV v2.2's column names, order and types
(the types pyarrow infers from the public demo's CSV files; chartevents as in the v2.2 docs).
CSV timestamps read "YYYY-MM-DD HH:MM:SS", dates "YYYY-MM-DD", empty fields are empty and only
fields that need it are quoted, as in the real files. Parquet holds the same columns with
timestamp[ms] times (Parquet has no seconds unit) and date32 `dod`. Output is deterministic:
the same seed, patient count and format give the same bytes. Patients are simulated in batches
of BATCH_PATIENTS with their own random streams, so a run of k full batches is the start of any
longer run with the same seed. Generation is vectorised numpy (loops over hours of the latent
path only); tables are streamed out batch by batch (pyarrow.csv, ISA-L igzip level 1 for csv.gz,
pyarrow.parquet with zstd and one row group per batch), so memory stays bounded.

The latent state
----------------
Each ICU stay s has a severity x_s(t) at hours t = 0, 1, ... since ICU intime (0 is a typical
ICU patient, higher is sicker):

    x_s(t) = b_s + m_s * t + J_s(t) + e_s(t)

    b_s   initial severity ~ Normal(0.2 + 0.015 * (age - 65), 0.8)
    m_s   drift per hour   ~ Normal(-0.04, 0.03): most patients improve, some worsen
    J_s   shocks: Bernoulli(1/60) per hour, size ~ Exponential(mean 0.8), each decaying as
          exp(-(t - t_shock) / r_s) with a per-stay recovery time r_s ~ LogNormal(log 8 h, 0.5)
    e_s   AR(1) noise: e(t) = 0.9 e(t-1) + Normal(0, 0.1)

The outcomes are decided hour by hour along this path, so they depend on the whole trajectory
(its level, slope and how fast shocks fade), not on any single hour:

    damage     D_s(t) = sum over u <= t of max(x_s(u) - 1, 0)   (area of the curve above 1)
    ICU death  at the first hour with D_s(t) >= K_s, tolerance
               K_s = 40 * exp(Normal(0, 0.3) - 0.02 * (age - 65))
    discharge  ready at the first hour t >= 8 whose 6-hour mean of x_s is below -1, then out
               after a further delay ~ Uniform{0..23} h (death during the delay still counts);
               stays last at most MAX_HOURS (40 days)
    ward death after an alive ICU discharge, with probability 0.5 * (D_s(end) / K_s) ** 2,
               2 h to 7 days later in the same admission

so in-hospital death (hospital_expire_flag) and ICU length of stay are functions of the area
and slope of x_s over the first 24 h and later. A second ICU stay in the same admission gets
its own path; the admission's death may come from it. Tuned to about 12 % deaths per stay and
an ICU length of stay with median about 2 days and a long tail (see tests/test_synth.py).
Measured on 10,000 patients (seed 0, stays >= 24 h, logistic regression on hourly means of the
charted HR, SBP, RR and SpO2 over hours 0-23, AUROC for in-hospital death on a held-out half):
last hour 0.79, summary statistics (mean, min, max, last) 0.82, last hour + slope 0.85, all 24
hours 0.87: reading the sequence beats a snapshot.

What is observed: vitals are linear in x_s(hour) plus per-stay offsets and noise (heart rate
and respiratory rate rise, blood pressure and SpO2 fall, temperature rises, GCS falls); sicker
stays get arterial lines, ventilation (FiO2, total respiratory rate) and extra sub-hourly
readings; labs are drawn every 4-24 h (more often when sicker) in panels with about a third of
the items missing per draw, with values driven by x_s at the draw (clamped to the stay for draws
on the ward or in the ED before the ICU) and per-patient baselines.

Dirty rows, as in the real data: out-of-range values (decimal slips, Fahrenheit charted as
Celsius, FiO2 as a fraction), text in `value` with an empty `valuenum`, labs without hadm_id
(ED draws just before ICU intime, outpatient draws, a few others), chart rows just before intime
and just after outtime, and unrelated itemids (alarms, assessments) that a pipeline must drop.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

FORMATS = ("csv.gz", "csv", "parquet")
BATCH_PATIENTS = 500  # patients simulated per batch: bounds memory, fixes the random streams
MAX_HOURS = 960  # longest ICU stay simulated (40 days)
HOUR = 3600
MINUTE = 60
DAY = 86400

# ---------------------------------------------------------------------------------------------
# Schemas: MIMIC-IV v2.2 column order; types as pyarrow infers them from the demo's CSV files.

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
}
MODULE_OF = {"patients": "hosp", "admissions": "hosp", "labevents": "hosp", "d_labitems": "hosp",
             "icustays": "icu", "chartevents": "icu", "d_items": "icu"}

# ---------------------------------------------------------------------------------------------
# Items. Labels, categories and units are those of the MIMIC-IV v2.2 d_items / d_labitems tables
# (public demo, doi 10.13026/dp1f-ex47).

# itemid, label, abbreviation, category, unitname, param_type, lownormalvalue, highnormalvalue
D_ITEMS = [
    (220045, "Heart Rate", "HR", "Routine Vital Signs", "bpm", "Numeric", None, None),
    (220050, "Arterial Blood Pressure systolic", "ABPs", "Routine Vital Signs", "mmHg", "Numeric", 90, 140.0),
    (220051, "Arterial Blood Pressure diastolic", "ABPd", "Routine Vital Signs", "mmHg", "Numeric", 60, 90.0),
    (220052, "Arterial Blood Pressure mean", "ABPm", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (220179, "Non Invasive Blood Pressure systolic", "NBPs", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (220180, "Non Invasive Blood Pressure diastolic", "NBPd", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (220181, "Non Invasive Blood Pressure mean", "NBPm", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (225309, "ART BP Systolic", "ART BP Systolic", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (225310, "ART BP Diastolic", "ART BP Diastolic", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (225312, "ART BP Mean", "ART BP Mean", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (220210, "Respiratory Rate", "RR", "Respiratory", "insp/min", "Numeric", None, None),
    (224690, "Respiratory Rate (Total)", "Respiratory Rate (Total)", "Respiratory", "insp/min", "Numeric", None, 36.0),
    (220277, "O2 saturation pulseoxymetry", "SpO2", "Respiratory", "%", "Numeric", None, None),
    (223762, "Temperature Celsius", "Temperature C", "Routine Vital Signs", "°C", "Numeric", 36, 37.5),
    (223761, "Temperature Fahrenheit", "Temperature F", "Routine Vital Signs", "°F", "Numeric", None, None),
    (220739, "GCS - Eye Opening", "Eye Opening", "Neurological", None, "Text", None, None),
    (223900, "GCS - Verbal Response", "Verbal Response", "Neurological", None, "Text", None, None),
    (223901, "GCS - Motor Response", "Motor Response", "Neurological", None, "Text", None, None),
    (223835, "Inspired O2 Fraction", "FiO2", "Respiratory", "None", "Numeric", None, None),
    # unrelated items: a pipeline that only knows the features above must drop them
    (220048, "Heart Rhythm", "Heart Rhythm", "Routine Vital Signs", None, "Text", None, None),
    (224650, "Ectopy Type 1", "Ectopy Type 1", "Routine Vital Signs", None, "Text", None, None),
    (220046, "Heart rate Alarm - High", "HR Alarm - High", "Alarms", "bpm", "Numeric", None, None),
    (220047, "Heart Rate Alarm - Low", "HR Alarm - Low", "Alarms", "bpm", "Numeric", None, None),
    (223751, "Non-Invasive Blood Pressure Alarm - High", "NBP Alarm - High", "Alarms", "mmHg", "Numeric", None, None),
    (223752, "Non-Invasive Blood Pressure Alarm - Low", "NBP Alarm - Low", "Alarms", "mmHg", "Numeric", None, None),
    (223770, "O2 Saturation Pulseoxymetry Alarm - Low", "SpO2 Alarm - Low", "Alarms", "%", "Numeric", None, None),
    (224161, "Resp Alarm - High", "Resp Alarm - High", "Alarms", "insp/min", "Numeric", None, None),
    (224162, "Resp Alarm - Low", "Resp Alarm - Low", "Alarms", "insp/min", "Numeric", None, None),
    (226253, "SpO2 Desat Limit", "SpO2 Desat Limit", "Alarms", "%", "Numeric", None, None),
    (224641, "Alarms On", "Alarms On", "Alarms", None, "Checkbox", None, None),
    (224168, "Parameters Checked", "Parameters Checked", "Alarms", None, "Checkbox", None, None),
    (226512, "Admission Weight (Kg)", "Admission Weight (Kg)", "General", "kg", "Numeric", None, None),
    (223834, "O2 Flow", "O2 Flow", "Respiratory", "L/min", "Numeric", None, None),
    (226732, "O2 Delivery Device(s)", "O2 Delivery Device(s)", "Respiratory", None, "Text", None, None),
    (228096, "Richmond-RAS Scale", "Richmond-RAS Scale", "Pain/Sedation", None, "Text", None, None),
    (223781, "Pain Present", "Pain Present", "Pain/Sedation", None, "Text", None, None),
    (223991, "Cough Effort", "Cough Effort", "Pulmonary", None, "Text", None, None),
    (224080, "Head of Bed", "HOB", "Treatments", None, "Text", None, None),
    (224086, "Activity Tolerance", "Activity Tolerance", "Treatments", None, "Text", None, None),
    (224082, "Turn", "Turn", "Treatments", None, "Text", None, None),
    (226168, "Oral Care", "Oral Care", "Treatments", None, "Text", None, None),
    (224026, "Skin Integrity", "Skin Integrity", "Skin - Assessment", None, "Text", None, None),
    (224054, "Braden Sensory Perception", "Braden Sensory Perception", "Skin - Assessment", None, "Text", None, None),
]
ITEM_IDS = np.array([r[0] for r in D_ITEMS], np.int64)
ITEM = {r[0]: i for i, r in enumerate(D_ITEMS)}  # itemid -> item code (row of D_ITEMS)
IS_FEATURE = np.isin(ITEM_IDS, [220045, 220050, 220051, 220052, 220179, 220180, 220181, 225309,
                                225310, 225312, 220210, 224690, 220277, 223762, 223761, 223835])
# valueuom written in chartevents (unitname, except FiO2 which is charted in percent)
ITEM_UOM = [r[4] if r[0] != 223835 else None for r in D_ITEMS]

# Text values. GCS rows carry the text in `value` and the score in `valuenum`, as in MIMIC.
GCS_TEXT = {
    220739: ["No Response", "To Pain", "To Speech", "Spontaneously"],
    223900: ["No Response", "Incomprehensible sounds", "Inappropriate Words", "Confused", "Oriented"],
    223901: ["No response", "Abnormal extension", "Abnormal Flexion", "Flex-withdraws",
             "Localizes Pain", "Obeys Commands"],
}
TEXT_ITEMS = {  # unrelated text items charted every 4 h (assessments) or hourly (rhythm)
    224650: ["None", "PVC's", "PAC's"],
    226732: ["Nasal cannula", "Endotracheal tube", "Face tent", "None"],
    228096: ["0  Alert and calm", "-1 Drowsy", "-2 Light sedation", "-3 Moderate sedation",
             "-4 Deep sedation", "+1 Restless"],
    223781: ["No", "Yes"],
    223991: ["Strong", "Weak", "Absent"],
    224080: ["30 degrees", "45 degrees", "Flat"],
    224086: ["Tolerated well", "Fatigues easily"],
    224082: ["Side to side", "Supine", "Refused"],
    226168: ["Done", "Refused"],
    224026: ["Intact", "Not intact"],
    224054: ["No Impairment", "Slightly Limited", "Very Limited", "Completely Limited"],
}
RHYTHM_TEXT = ["SB (Sinus Bradycardia)", "SR (Sinus Rhythm)", "ST (Sinus Tachycardia)",
               "AF (Atrial Fibrillation)"]
DIRTY_TEXT = ["UTA", "Error", "see note", "___"]  # text where a number belongs
CHECKBOX_TEXT = ["Yes"]
ALARMS = [(220046, 120.0), (220047, 50.0), (223751, 160.0), (223752, 90.0), (223770, 90.0),
          (224161, 35.0), (224162, 8.0), (226253, 88.0)]


def _vocab() -> tuple[list[str], dict]:
    """One list of every text value charted, and the offset of each group in it."""
    words, start = [], {}
    groups = [("rhythm", RHYTHM_TEXT), ("dirty", DIRTY_TEXT), ("check", CHECKBOX_TEXT)]
    groups += [(k, v) for k, v in GCS_TEXT.items()] + [(k, v) for k, v in TEXT_ITEMS.items()]
    for key, values in groups:
        start[key] = len(words)
        words += values
    return words, start


TEXT_VOCAB, TEXT_AT = _vocab()

# Labs: itemid, label, fluid, category, valueuom, ref_range_lower, ref_range_upper, decimals
D_LABITEMS = [
    (50912, "Creatinine", "Blood", "Chemistry", "mg/dL", 0.5, 1.2, 1),
    (51006, "Urea Nitrogen", "Blood", "Chemistry", "mg/dL", 6.0, 20.0, 0),
    (50983, "Sodium", "Blood", "Chemistry", "mEq/L", 133.0, 145.0, 0),
    (50971, "Potassium", "Blood", "Chemistry", "mEq/L", 3.3, 5.1, 1),
    (50902, "Chloride", "Blood", "Chemistry", "mEq/L", 96.0, 108.0, 0),
    (50882, "Bicarbonate", "Blood", "Chemistry", "mEq/L", 22.0, 32.0, 0),
    (50931, "Glucose", "Blood", "Chemistry", "mg/dL", 70.0, 100.0, 0),
    (50868, "Anion Gap", "Blood", "Chemistry", "mEq/L", 10.0, 18.0, 0),  # unrelated
    (50960, "Magnesium", "Blood", "Chemistry", "mg/dL", 1.6, 2.6, 1),  # unrelated
    (51222, "Hemoglobin", "Blood", "Hematology", "g/dL", 13.7, 17.5, 1),
    (51221, "Hematocrit", "Blood", "Hematology", "%", 40.0, 51.0, 1),
    (51301, "White Blood Cells", "Blood", "Hematology", "K/uL", 4.0, 10.0, 1),
    (51265, "Platelet Count", "Blood", "Hematology", "K/uL", 150.0, 400.0, 0),
    (50813, "Lactate", "Blood", "Blood Gas", "mmol/L", 0.5, 2.0, 1),
    (50820, "pH", "Blood", "Blood Gas", "units", 7.35, 7.45, 2),
]
LAB_IDS = np.array([r[0] for r in D_LABITEMS], np.int64)
LAB = {r[0]: i for i, r in enumerate(D_LABITEMS)}
PANELS = {  # lab panels drawn together: item codes
    "chem": [LAB[i] for i in (50912, 51006, 50983, 50971, 50902, 50882, 50931, 50868, 50960)],
    "cbc": [LAB[i] for i in (51222, 51221, 51301, 51265)],
    "gas": [LAB[i] for i in (50813, 50820)],
}
GLUCOSE_COMMENT = "IF FASTING, 70-100 NORMAL, >125 PROVISIONAL DIABETES."
LAB_COMMENTS = [None, GLUCOSE_COMMENT, "VERIFIED.", "HEMOLYZED SPECIMEN, RESULT MAY BE AFFECTED."]
LAB_DIRTY_TEXT = ["___", "ERROR", "UNABLE TO REPORT", "HEMOLYZED"]

# Admission vocabularies (values seen in the demo)
ICU_ADMISSION_TYPES = (["EW EMER.", "URGENT", "DIRECT EMER.", "SURGICAL SAME DAY ADMISSION",
                        "ELECTIVE", "OBSERVATION ADMIT"], [0.55, 0.17, 0.08, 0.1, 0.05, 0.05])
WARD_ADMISSION_TYPES = (["EW EMER.", "OBSERVATION ADMIT", "EU OBSERVATION", "URGENT", "ELECTIVE",
                         "DIRECT OBSERVATION", "AMBULATORY OBSERVATION"],
                        [0.3, 0.22, 0.15, 0.1, 0.1, 0.08, 0.05])
ED_TYPES = {"EW EMER.", "EU OBSERVATION", "DIRECT EMER."}
ADMISSION_LOCATIONS = (["PHYSICIAN REFERRAL", "TRANSFER FROM HOSPITAL", "CLINIC REFERRAL",
                        "PROCEDURE SITE", "WALK-IN/SELF REFERRAL", "PACU"],
                       [0.45, 0.3, 0.08, 0.07, 0.05, 0.05])
DISCHARGE_LOCATIONS = ([None, "HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB",
                        "CHRONIC/LONG TERM ACUTE CARE", "HOSPICE", "AGAINST ADVICE"],
                       [0.15, 0.3, 0.27, 0.15, 0.05, 0.04, 0.02, 0.02])
INSURANCE = ["Medicare", "Medicaid", "Other"]
MARITAL = ([None, "SINGLE", "MARRIED", "WIDOWED", "DIVORCED"], [0.05, 0.38, 0.3, 0.17, 0.1])
RACE = (["WHITE", "BLACK/AFRICAN AMERICAN", "UNKNOWN", "HISPANIC/LATINO - PUERTO RICAN",
         "ASIAN", "OTHER", "UNABLE TO OBTAIN", "BLACK/CAPE VERDEAN", "WHITE - OTHER EUROPEAN",
         "PATIENT DECLINED TO ANSWER"], [0.62, 0.15, 0.06, 0.04, 0.04, 0.03, 0.02, 0.02, 0.01,
                                         0.01])
CAREUNITS = (["Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
              "Cardiac Vascular Intensive Care Unit (CVICU)",
              "Medical/Surgical Intensive Care Unit (MICU/SICU)", "Trauma SICU (TSICU)",
              "Coronary Care Unit (CCU)", "Neuro Surgical Intensive Care Unit (Neuro SICU)",
              "Neuro Stepdown", "Neuro Intermediate"],
             [0.21, 0.18, 0.18, 0.16, 0.11, 0.09, 0.03, 0.02, 0.02])
YEAR_GROUPS = ["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019"]


def _choice(rng, options, n):
    """n draws of (values, probabilities) as a pyarrow string array (None stays null)."""
    values, p = options
    idx = rng.choice(len(values), size=n, p=np.asarray(p) / np.sum(p))
    return pa.array(values, pa.string()).take(pa.array(idx))


def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of sizes `counts`: the group of each element and its position in the group."""
    counts = np.asarray(counts, np.int64)
    group = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return group, np.arange(len(group)) - starts[group]


def _ts(seconds: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """int64 epoch seconds -> timestamp[s] array, null where not valid."""
    mask = None if valid is None else ~np.asarray(valid, bool)
    return pa.array(np.asarray(seconds, np.int64).view("datetime64[s]"), TS, mask=mask)


def _int(values: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    mask = None if valid is None else ~np.asarray(valid, bool)
    return pa.array(np.asarray(values, np.int64), pa.int64(), mask=mask)


def _float(values: np.ndarray) -> pa.Array:
    """float64 array, NaN written as null."""
    values = np.asarray(values, np.float64)
    return pa.array(values, pa.float64(), mask=np.isnan(values))


def _num_text(values: np.ndarray) -> pa.Array:
    """Numbers as MIMIC writes them in `value`: shortest form, no trailing '.0'."""
    return pa.array(np.asarray(values, np.float64)).cast(pa.string())


NUM_TEXT_TENTHS = 40_000  # "0", "0.1", ..., "3999.9": the numbers charted, looked up not printed
_TENTHS = _num_text(np.arange(NUM_TEXT_TENTHS) / 10)


def _dict(codes: np.ndarray, words: list, valid: np.ndarray | None = None) -> pa.Array:
    """Dictionary-encoded strings words[codes]; null where words[code] is None or not valid."""
    codes = np.asarray(codes, np.int32)
    mask = np.array([w is None for w in words])[codes]
    if valid is not None:
        mask |= ~np.asarray(valid, bool)
    return pa.DictionaryArray.from_arrays(pa.array(codes, mask=mask),
                                          pa.array([w or "" for w in words], pa.string()))


def _value_text(valuenum: np.ndarray, text: np.ndarray, vocab: list = None) -> pa.Array:
    """The `value` column: vocab[text] where text >= 0, else the number as text.

    Dictionary-encoded: numbers in tenths from 0 to 3999.9 are looked up, any other number is
    printed once per distinct value."""
    vocab = TEXT_VOCAB if vocab is None else vocab
    tenths = np.rint(valuenum * 10)
    ok = (text < 0) & (np.abs(valuenum * 10 - tenths) < 1e-6) & (tenths >= 0) & (
        tenths < NUM_TEXT_TENTHS)
    idx = np.where(text >= 0, text, len(vocab) + np.where(ok, tenths, 0)).astype(np.int64)
    other = (text < 0) & ~ok & ~np.isnan(valuenum)
    dictionary = pa.concat_arrays([pa.array(vocab, pa.string()), _TENTHS])
    if other.any():
        distinct, inverse = np.unique(valuenum[other], return_inverse=True)
        idx[other] = len(dictionary) + inverse
        dictionary = pa.concat_arrays([dictionary, _num_text(distinct)])
    return pa.DictionaryArray.from_arrays(
        pa.array(idx.astype(np.int32), mask=(text < 0) & np.isnan(valuenum)), dictionary)


# ---------------------------------------------------------------------------------------------
# The latent severity and the outcomes (see the module docstring)


def simulate_stays(rng: np.random.Generator, age: np.ndarray) -> dict:
    """Severity paths x [n, MAX_HOURS] and outcomes of n ICU stays of patients aged `age`.

    Returns x, the smooth part (without the AR noise) `x_smooth`, the parameters b, m, r, K,
    `hours` (index of the last hour of the stay; its length is in (hours, hours + 1] h),
    `died` (in the ICU) and `damage_frac` (D(end) / K).
    """
    n, H = len(age), MAX_HOURS
    age = np.asarray(age, np.float64)
    b = rng.normal(0.2 + 0.015 * (age - 65), 0.8)
    m = rng.normal(-0.04, 0.03, n)
    r = np.exp(rng.normal(np.log(8.0), 0.5, n))
    K = 40.0 * np.exp(rng.normal(0.0, 0.3, n) - 0.02 * (age - 65))
    # hour-major [H, n] so that each step of the recursions reads contiguous memory
    shock = np.zeros((H, n))
    hit = rng.random((H, n)) < 1 / 60
    shock[hit] = rng.exponential(0.8, int(hit.sum()))
    J = shock
    e = rng.normal(0.0, 0.1, (H, n))
    decay = np.exp(-1.0 / r)
    e[0] /= np.sqrt(1 - 0.81)  # start the AR(1) noise in its stationary distribution
    for t in range(1, H):  # recursions over hours, vectorised over stays, in place
        J[t] += decay * J[t - 1]
        e[t] += 0.9 * e[t - 1]
    J, e = J.T, e.T
    x_smooth = b[:, None] + m[:, None] * np.arange(H) + J
    x = x_smooth + e

    damage = np.cumsum(np.maximum(x - 1.0, 0.0), axis=1)
    dead = damage >= K[:, None]
    death_hour = np.where(dead.any(1), dead.argmax(1), H)
    csum = np.concatenate([np.zeros((n, 1)), np.cumsum(x, axis=1)], axis=1)
    mean6 = (csum[:, 6:] - csum[:, :-6]) / 6.0  # mean6[:, j] = mean of hours j .. j + 5
    ready = np.zeros((n, H), bool)
    ready[:, 8:] = mean6[:, 3:] < -1.0  # trailing 6-hour mean at hours 8 ..
    ready_hour = np.where(ready.any(1), ready.argmax(1), H)
    discharge_hour = ready_hour + rng.integers(0, 24, n)
    hours = np.minimum(np.minimum(death_hour, discharge_hour), H - 1)
    died = death_hour <= np.minimum(discharge_hour, H - 1)
    damage_frac = damage[np.arange(n), hours] / K
    return dict(x=x, x_smooth=x_smooth, b=b, m=m, r=r, K=K, hours=hours, died=died,
                damage_frac=damage_frac)


# ---------------------------------------------------------------------------------------------
# One batch of patients -> rows of every table


def _patients(rng, first: int, n: int) -> dict:
    """Demographics of patients first .. first + n - 1."""
    age = np.clip(np.round(rng.normal(64, 17, n)), 18, 91).astype(np.int64)
    year = rng.integers(2110, 2190, n)
    return dict(
        subject_id=10_000_000 + first + np.arange(n, dtype=np.int64),
        gender=pa.array(np.where(rng.random(n) < 0.45, "F", "M")),
        age=age, anchor_year=year,
        year_group=pa.array(YEAR_GROUPS).take(pa.array(rng.integers(0, len(YEAR_GROUPS), n))),
        # admissions of a patient start within 3 years of 1 January of anchor_year
        start=(year - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype(np.int64)
        + rng.integers(0, 3 * 365 * 24 * 60, n) * MINUTE,
        marital=_choice(rng, MARITAL, n), race=_choice(rng, RACE, n))


def _stays_and_admissions(rng, pat: dict) -> tuple[dict, dict]:
    """ICU stays (with their severity paths) and hospital admissions of a batch of patients.

    Each patient has 1 (88 %) or 2 ICU admissions and Poisson(0.6) admissions without an ICU
    stay; 10 % of ICU admissions whose first stay survives have a second ICU stay. A patient
    dies at most once: further fatal admissions are dropped, and the fatal one comes last.
    """
    n = len(pat["age"])
    n_icu = 1 + (rng.random(n) < 0.12)
    icu_pat = np.repeat(np.arange(n), n_icu)
    sim1 = simulate_stays(rng, pat["age"][icu_pat])
    second = ~sim1["died"] & (rng.random(len(icu_pat)) < 0.10)
    sim2 = simulate_stays(rng, pat["age"][icu_pat[second]])
    last_frac = sim1["damage_frac"].copy()
    last_frac[second] = sim2["damage_frac"]
    died_icu = sim1["died"].copy()
    died_icu[second] = sim2["died"]
    ward_death = ~died_icu & (rng.random(len(icu_pat)) < 0.5 * np.minimum(last_frac, 1.0) ** 2)
    fatal = died_icu | ward_death
    fatal_before = np.cumsum(fatal) - fatal  # fatal ICU admissions earlier in the batch ...
    first_of_pat = np.searchsorted(icu_pat, icu_pat)
    fatal_before = fatal_before - fatal_before[first_of_pat]  # ... of the same patient
    keep_adm = ~(fatal & (fatal_before > 0))

    # stays: stay 1 of every ICU admission, then the second stays
    s_adm = np.concatenate([np.arange(len(icu_pat)), np.flatnonzero(second)])
    s_order = np.concatenate([np.zeros(len(icu_pat), np.int64), np.ones(second.sum(), np.int64)])
    keep_stay = keep_adm[s_adm]
    x = np.concatenate([sim1["x"], sim2["x"]])[keep_stay]
    x_smooth = np.concatenate([sim1["x_smooth"], sim2["x_smooth"]])[keep_stay]
    hours = np.concatenate([sim1["hours"], sim2["hours"]])[keep_stay]
    b = np.concatenate([sim1["b"], sim2["b"]])[keep_stay]
    s_adm, s_order = s_adm[keep_stay], s_order[keep_stay]
    S = len(hours)
    los = hours * HOUR + rng.integers(60, HOUR + 1, S)  # seconds; ceil(los / 1 h) = hours + 1

    # ICU admissions: ward time before the first stay, between stays and after the last one
    A_icu = len(icu_pat)
    pre = rng.exponential(8 * HOUR, A_icu) + rng.integers(10 * MINUTE, HOUR, A_icu)
    pre = pre.astype(np.int64)
    gap = (6 * HOUR + rng.exponential(48 * HOUR, A_icu)).astype(np.int64)
    post = np.exp(rng.normal(np.log(3 * DAY), 0.7, A_icu)).astype(np.int64) + 2 * HOUR
    ward_death_wait = (2 * HOUR + rng.random(A_icu) * 7 * DAY).astype(np.int64)
    post = np.where(died_icu, 0, np.where(ward_death, ward_death_wait, post))
    los1 = np.zeros(A_icu, np.int64)
    los2 = np.zeros(A_icu, np.int64)
    los1[s_adm[s_order == 0]] = los[s_order == 0]
    los2[s_adm[s_order == 1]] = los[s_order == 1]
    has2 = np.zeros(A_icu, bool)
    has2[s_adm[s_order == 1]] = True
    stay_offset = np.where(s_order == 0, pre[s_adm], pre[s_adm] + los1[s_adm] + gap[s_adm])
    icu_len = pre + los1 + np.where(has2, gap + los2, 0) + post
    icu_len = -(-icu_len // MINUTE) * MINUTE  # dischtime on a whole minute

    # admissions without an ICU stay
    n_ward = np.minimum(rng.poisson(0.6, n), 5)
    ward_pat = np.repeat(np.arange(n), n_ward)
    A_ward = len(ward_pat)
    ward_len = (np.exp(rng.normal(np.log(2.5 * DAY), 0.8, A_ward)) // MINUTE * MINUTE
                ).astype(np.int64) + 4 * HOUR

    # all admissions of the batch, in time order per patient, a fatal one last
    a_pat = np.concatenate([icu_pat[keep_adm], ward_pat])
    a_icu = np.concatenate([np.flatnonzero(keep_adm), -np.ones(A_ward, np.int64)])  # ICU adm row
    a_fatal = np.concatenate([fatal[keep_adm], np.zeros(A_ward, bool)])
    order = np.lexsort((rng.random(len(a_pat)), a_fatal, a_pat))
    a_pat, a_icu, a_fatal = a_pat[order], a_icu[order], a_fatal[order]
    A = len(a_pat)
    a_len = np.where(a_icu >= 0, icu_len[np.maximum(a_icu, 0)],
                     np.concatenate([np.zeros(int(keep_adm.sum()), np.int64), ward_len])[order])
    a_gap = (DAY + np.exp(rng.normal(np.log(150 * DAY), 1.0, A))) // MINUTE * MINUTE
    step = a_len + a_gap.astype(np.int64)
    first_adm = np.searchsorted(a_pat, a_pat)
    csum = np.cumsum(step) - step
    admittime = pat["start"][a_pat] + csum - csum[first_adm]
    dischtime = admittime + a_len
    a_j = np.arange(A) - first_adm  # position of the admission among the patient's
    hadm_id = 20_000_000 + 10 * (pat["subject_id"][a_pat] - 10_000_000) + a_j

    adm_of_icu = np.full(A_icu, -1, np.int64)
    adm_of_icu[a_icu[a_icu >= 0]] = np.flatnonzero(a_icu >= 0)
    s_a = adm_of_icu[s_adm]  # admission row of each stay
    intime = admittime[s_a] + stay_offset
    outtime = intime + los
    s_order_key = np.lexsort((intime, a_pat[s_a]))  # stays in (patient, time) order
    stays = dict(adm=s_a, pat=a_pat[s_a], intime=intime, outtime=outtime, hours=hours, x=x,
                 x_smooth=x_smooth, b=b)
    stays = {k: v[s_order_key] for k, v in stays.items()}
    first_stay = np.searchsorted(stays["pat"], stays["pat"])
    stays["stay_id"] = (30_000_000 + 10 * (pat["subject_id"][stays["pat"]] - 10_000_000)
                        + np.arange(S) - first_stay)
    stays["hadm_id"] = hadm_id[stays["adm"]]
    stays["subject_id"] = pat["subject_id"][stays["pat"]]

    # times of death: ICU deaths at outtime rounded up to the minute, ward deaths at discharge
    deathtime = np.where(a_fatal, dischtime, 0)
    adms = dict(pat=a_pat, hadm_id=hadm_id, admittime=admittime, dischtime=dischtime,
                fatal=a_fatal, is_icu=a_icu >= 0,
                pre=np.where(a_icu >= 0, pre[np.maximum(a_icu, 0)], 3 * HOUR),
                deathtime=deathtime)
    return stays, adms


def _pick_dirty(rng, candidates: np.ndarray, rate: float, at_least: int) -> np.ndarray:
    """A random subset of `candidates` (indices): about `rate` of them, at least `at_least`."""
    k = min(len(candidates), max(at_least, rng.binomial(len(candidates), rate)))
    return np.sort(rng.choice(candidates, size=k, replace=False)) if k else candidates[:0]


class _Rows:
    """Collects chart rows as parallel arrays: stay, time, item code, valuenum, text code."""

    def __init__(self):
        self.parts = []

    def add(self, stay, t, itemid, valuenum, text=None):
        n = len(stay)
        text = np.full(n, -1, np.int32) if text is None else np.asarray(text, np.int32)
        valuenum = np.broadcast_to(np.asarray(valuenum, np.float64), (n,))
        self.parts.append((stay, t, np.full(n, ITEM[itemid], np.int16), valuenum, text))

    def arrays(self):
        return [np.concatenate(c) for c in zip(*self.parts)]


def _chartevents(rng, stays: dict) -> pa.Table:
    """Bedside charting of every stay: vitals about hourly with jitter, gaps, extra readings when
    sick, GCS and temperature every 4 h, ventilator settings, alarms and assessments."""
    S = len(stays["hours"])
    intime, outtime, X, Xs = stays["intime"], stays["outtime"], stays["x"], stays["x_smooth"]
    n_hours = stays["hours"] + 1

    # charting slots: one on arrival, then on every clock hour before outtime; some stays have
    # their first reading just before intime and one just after outtime
    first_hour = (intime // HOUR + 1) * HOUR
    n_grid = np.maximum(0, -(-(outtime - first_hour) // HOUR))
    late = rng.random(S) < 0.05
    slot_s, k = _ragged(1 + n_grid + late)
    t = first_hour[slot_s] + (k - 1) * HOUR
    jitter = rng.random(len(t)) < 0.3
    t = t + np.where(jitter, rng.integers(-15, 16, len(t)) * MINUTE, 0)
    arrive = intime + rng.integers(1, 21, S) * MINUTE
    early = rng.random(S) < 0.15
    arrive = np.where(early, intime - rng.integers(5, 61, S) * MINUTE, arrive) // MINUTE * MINUTE
    t = np.where(k == 0, arrive[slot_s], t)
    is_late = late[slot_s] & (k == 1 + n_grid[slot_s])
    t = np.where(is_late, outtime[slot_s] + rng.integers(1, 31, len(t)) * MINUTE, t)
    t = t // MINUTE * MINUTE
    # gaps: single missed hours, and for 30 % of stays one block of 2-6 h off the unit
    gap_start = rng.random(S) * n_hours * HOUR
    gap_len = np.where(rng.random(S) < 0.3, rng.integers(2, 7, S) * HOUR, 0)
    rel = t - intime[slot_s]
    off = (rel >= gap_start[slot_s]) & (rel < gap_start[slot_s] + gap_len[slot_s])
    kept = ~off & (rng.random(len(t)) >= 0.05) | (k == 0)
    slot_s, k, t = slot_s[kept], k[kept], t[kept]
    hour = np.clip((t - intime[slot_s]) // HOUR, 0, n_hours[slot_s] - 1)
    x, xs = X[slot_s, hour], Xs[slot_s, hour]

    # extra readings at +15/30/45 min in the first 2 hours and when sick (x > 0.3)
    n_extra = np.where(k <= 2, 3, rng.binomial(3, np.clip(0.3 * (x - 0.3), 0.0, 0.8)))
    parent, j = _ragged(n_extra)
    e_s, e_t, e_x = slot_s[parent], t[parent] + (j + 1) * 15 * MINUTE, x[parent]

    # per-stay charting habits and physiology offsets
    art = rng.random(S) < 1 / (1 + np.exp(-(1.5 * stays["b"] - 0.3)))
    art_alt = rng.random(S) < 0.1  # the other arterial line item family (225309/225310/225312)
    fahrenheit = rng.random(S) < 0.7
    af = rng.random(S) < 0.1
    phase = rng.integers(0, 4, (S, 4))  # hours of temperature, GCS, assessments, alarms
    hr0, sbp0 = rng.normal(85, 10, S), rng.normal(120, 14, S)
    dbp_ratio, rr0 = rng.normal(0.52, 0.04, S), rng.normal(18, 3, S)
    spo2_0, temp0 = rng.normal(97.5, 1.0, S), rng.normal(37.0, 0.3, S)

    rows = _Rows()
    # monitor and blood pressure: on every kept slot and every extra reading
    ms = np.concatenate([slot_s, e_s])
    mt = np.concatenate([t, e_t])
    mx = np.concatenate([x, e_x])
    base = np.arange(len(ms)) < len(slot_s)
    n = len(ms)

    def noise(sd):
        return rng.normal(0.0, sd, n)

    hr = np.clip(np.round(hr0[ms] + 12 * mx + noise(5)), 25, 250)
    rr = np.clip(np.round(rr0[ms] + 3 * mx + noise(2.5)), 4, 60)
    spo2 = np.clip(np.round(spo2_0[ms] - 1.8 * np.maximum(mx - 0.3, 0) + noise(1.2)), 60, 100)
    sbp = sbp0[ms] - 12 * mx + noise(7)
    dbp = sbp * dbp_ratio[ms] + noise(4)
    mbp = (sbp + 2 * dbp) / 3 + noise(2)
    for itemid, v, p in ((220045, hr, 0.98), (220277, spo2, 0.97), (220210, rr, 0.96)):
        m = rng.random(n) < p
        rows.add(ms[m], mt[m], itemid, v[m])
    on_art = art[ms] & (rng.random(n) < 0.95)
    nibp = np.where(art[ms], base & (rng.random(n) < 0.2), rng.random(n) < 0.95)
    alt = art_alt[ms]
    for items, m, sd in (((220050, 220051, 220052), on_art & ~alt, 0.0),
                         ((225309, 225310, 225312), on_art & alt, 0.0),
                         ((220179, 220180, 220181), nibp, 5.0)):
        for itemid, v in zip(items, (sbp, dbp, mbp)):
            rows.add(ms[m], mt[m], itemid, np.round(v[m] + rng.normal(0, sd + 1e-9, m.sum())))

    # temperature and GCS every 4 h, assessments every 2 h, alarm settings every 4 h
    n = len(slot_s)
    kk = k - 1  # clock hour index
    temp_due = ((kk % 4 == phase[slot_s, 0]) & (rng.random(n) < 0.9)) | (rng.random(n) < 0.03)
    temp_c = np.round(temp0[slot_s] + 0.35 * x + rng.normal(0, 0.2, n), 1)
    in_f = fahrenheit[slot_s] ^ (rng.random(n) < 0.05)
    m = temp_due & in_f
    rows.add(slot_s[m], t[m], 223761, np.round(temp_c[m] * 1.8 + 32, 1))
    m = temp_due & ~in_f
    rows.add(slot_s[m], t[m], 223762, temp_c[m])
    gcs_due = ((kk % 4 == phase[slot_s, 1]) & (rng.random(n) < 0.85)) | (
        (x > 1.5) & (rng.random(n) < 0.15))
    for itemid, top, slope in ((220739, 4, 0.9), (223900, 5, 1.1), (223901, 6, 1.0)):
        score = np.clip(np.round(top - slope * np.maximum(x - 0.5, 0) + rng.normal(0, 0.35, n)),
                        1, top)
        m = gcs_due & (rng.random(n) < 0.97)
        rows.add(slot_s[m], t[m], itemid, score[m], TEXT_AT[itemid] + score[m] - 1)

    # ventilation while the smooth severity is above 0.8: FiO2 and total respiratory rate
    vent = xs > 0.8
    fio2 = np.clip(np.round((40 + 15 * (xs - 0.8) + rng.normal(0, 6, n)) / 5) * 5, 21, 100)
    fio2_low = np.clip(np.round((25 + rng.normal(0, 5, n)) / 5) * 5, 21, 40)
    m = vent & (rng.random(n) < 0.6)
    rows.add(slot_s[m], t[m], 223835, fio2[m])
    m = ~vent & (rng.random(n) < 0.03)
    rows.add(slot_s[m], t[m], 223835, fio2_low[m])
    m = vent & (rng.random(n) < 0.85)
    rr_total = rr0[slot_s[m]] + 3 * x[m] + rng.normal(0, 2, m.sum())
    rows.add(slot_s[m], t[m], 224690, np.round(rr_total))
    m = ~vent & (rng.random(n) < 0.25)
    rows.add(slot_s[m], t[m], 223834, rng.integers(1, 7, m.sum()))

    # unrelated items a pipeline must drop: rhythm, alarms, assessments, admission weight
    m = rng.random(n) < 0.8
    hr_now = hr[:n]
    rhythm = np.where(af[slot_s], 3, (hr_now >= 60).astype(np.int32) + (hr_now >= 100))
    rows.add(slot_s[m], t[m], 220048, np.nan, TEXT_AT["rhythm"] + rhythm[m])
    due = (kk % 4 == phase[slot_s, 3]) & (rng.random(n) < 0.9)
    for itemid, setting in ALARMS:
        rows.add(slot_s[due], t[due], itemid, setting)
    for itemid in (224641, 224168):
        rows.add(slot_s[due], t[due], itemid, np.nan, np.full(due.sum(), TEXT_AT["check"]))
    due = kk % 2 == phase[slot_s, 2] % 2
    for itemid, words in TEXT_ITEMS.items():
        m = due & (rng.random(n) < 0.7)
        rows.add(slot_s[m], t[m], itemid, np.nan,
                 TEXT_AT[itemid] + rng.integers(0, len(words), m.sum()))
    m = (k == 0) & (rng.random(n) < 0.9)
    rows.add(slot_s[m], t[m], 226512, np.round(np.exp(rng.normal(np.log(80), 0.2, m.sum())), 1))

    st, ct, code, valuenum, text = rows.arrays()
    order = np.argsort((st.astype(np.int64) << 40) | ((ct - intime[st] + 2 * DAY) << 6) | code)
    st, ct, code, valuenum, text = st[order], ct[order], code[order], valuenum[order], text[order]
    N = len(st)

    # dirty rows: out-of-range numbers (warning = 1) and text where a number belongs
    warning = np.zeros(N, np.int64)
    numeric = np.flatnonzero(IS_FEATURE[code])
    bad = _pick_dirty(rng, numeric, 5e-4, 3)
    valuenum[bad] = np.where(code[bad] == ITEM[223762], np.round(valuenum[bad] * 1.8 + 32, 1),
                             np.where(code[bad] == ITEM[223835], valuenum[bad] / 100,
                                      valuenum[bad] * 10))
    warning[bad] = 1
    bad = _pick_dirty(rng, numeric, 2e-4, 2)
    valuenum[bad] = np.nan
    text[bad] = TEXT_AT["dirty"] + rng.integers(0, len(DIRTY_TEXT), len(bad))

    caregivers = rng.integers(10_000, 100_000, (S, 4))
    shift = ((ct - intime[st]) // (12 * HOUR)) % 4
    storetime = ct + (1 + rng.exponential(10, N).astype(np.int64)) * MINUTE
    return pa.table([
        _int(stays["subject_id"][st]), _int(stays["hadm_id"][st]), _int(stays["stay_id"][st]),
        _int(caregivers[st, shift], rng.random(N) >= 0.01), _ts(ct), _ts(storetime),
        _int(ITEM_IDS[code]), _value_text(valuenum, text), _float(valuenum),
        _dict(code, ITEM_UOM),
        _int(warning)], schema=SCHEMAS["chartevents"])


def _daily(rng, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """About one time a day in each interval [start, end): (interval index, time)."""
    n = np.maximum(0, (end - start) // DAY)
    g, j = _ragged(n)
    minute = rng.integers(0, DAY // MINUTE, len(g))
    return g, start[g] // MINUTE * MINUTE + j * DAY + minute * MINUTE


def _labevents(rng, pat: dict, stays: dict, adms: dict, first_id: int, first_specimen: int,
               providers: list) -> pa.Table:
    """Lab draws every 4-24 h in the ICU (more often when sicker), in the ED just before ICU
    intime, daily on the ward, and a few outpatient draws; panels with ~1/3 of items missing."""
    S, P = len(stays["hours"]), len(pat["age"])
    intime, outtime, X, Xs = stays["intime"], stays["outtime"], stays["x"], stays["x_smooth"]
    n_hours = stays["hours"] + 1
    parts = []  # (patient, hadm_id or -1, time, severity, ventilated, setting 0 ICU 1 ward 2 out)

    # ICU: gaps of I_s * U(0.6, 1.4) h clipped to [4, 24], I_s shorter for sicker stays
    every = np.clip(10 * np.exp(-0.35 * stays["b"] + rng.normal(0, 0.3, S)), 4, 24)
    g, j = _ragged(n_hours // 4 + 2)
    gap = np.clip(every[g] * rng.uniform(0.6, 1.4, len(g)), 4, 24) * HOUR
    gap = np.where(j == 0, rng.uniform(0, 3, len(g)) * HOUR, gap).astype(np.int64)
    csum = np.cumsum(gap)
    rel = csum - (csum - gap)[np.searchsorted(g, g)]  # within-stay running sum
    m = rel < outtime[g] - intime[g]
    g, t = g[m], (intime[g[m]] + rel[m]) // MINUTE * MINUTE
    h = np.clip((t - intime[g]) // HOUR, 0, n_hours[g] - 1)
    parts.append((stays["pat"][g], stays["hadm_id"][g], t, X[g, h], Xs[g, h] > 0.8, 0))
    # ED / pre-ICU draw within 6 h before intime; most are not linked to the admission
    m = rng.random(S) < 0.7
    t = (intime[m] - rng.integers(15, 6 * 60, m.sum()) * MINUTE) // MINUTE * MINUTE
    linked = (rng.random(m.sum()) < 0.4) & (t >= adms["admittime"][stays["adm"][m]])
    parts.append((stays["pat"][m], np.where(linked, stays["hadm_id"][m], -1), t, X[m, 0],
                  np.zeros(m.sum(), bool), 0))
    # ward, after each ICU stay until the next stay or discharge, at the stay's last severity
    nxt = np.append(intime[1:], 0)
    same = np.append(stays["adm"][1:] == stays["adm"][:-1], False)
    end = np.where(same, nxt, adms["dischtime"][stays["adm"]])
    g, t = _daily(rng, outtime, end)
    last = X[g, n_hours[g] - 1]
    parts.append((stays["pat"][g], stays["hadm_id"][g], t, last, np.zeros(len(g), bool), 1))
    # admissions without an ICU stay: daily draws at a mild, constant severity
    ward = np.flatnonzero(~adms["is_icu"])
    g, t = _daily(rng, adms["admittime"][ward], adms["dischtime"][ward])
    sev = rng.normal(-1.0, 0.4, len(ward))[g]
    parts.append((adms["pat"][ward[g]], adms["hadm_id"][ward[g]], t, sev,
                  np.zeros(len(g), bool), 1))
    # outpatient draws weeks before the first admission, not linked to any admission
    m = rng.random(P) < 0.4
    first_adm = np.searchsorted(adms["pat"], np.flatnonzero(m))
    t = (adms["admittime"][first_adm] - rng.integers(3 * 24 * 60, 120 * 24 * 60, m.sum()) * MINUTE)
    parts.append((np.flatnonzero(m), np.full(m.sum(), -1), t, np.full(m.sum(), -1.2),
                  np.zeros(m.sum(), bool), 2))

    d_pat = np.concatenate([p[0] for p in parts])
    d_hadm = np.concatenate([p[1] for p in parts]).astype(np.int64)
    d_t = np.concatenate([p[2] for p in parts]).astype(np.int64)
    d_x = np.concatenate([p[3] for p in parts])
    d_vent = np.concatenate([p[4] for p in parts])
    d_set = np.concatenate([np.full(len(p[0]), p[5]) for p in parts])
    D = len(d_pat)
    # a few more draws without hadm_id, as in the real data
    d_hadm[rng.random(D) < 0.05] = -1

    # panels per draw: chemistry, blood count, blood gas (more on the ventilator)
    p_panel = np.stack([np.where(d_set == 0, 0.85, 0.8), np.where(d_set == 0, 0.7, 0.6),
                        np.where(d_set == 0, 0.15 + 0.6 * d_vent, 0.03)], 1)
    has = rng.random((D, 3)) < p_panel
    has[:, 0] |= ~has.any(1)  # every draw has at least one panel
    panel_items = [PANELS["chem"], PANELS["cbc"], PANELS["gas"]]
    sp_draw, sp_panel = np.nonzero(has)  # one specimen per (draw, panel)
    n_items = np.array([len(p) for p in panel_items])[sp_panel]
    sp, j = _ragged(n_items)
    item_table = np.full((3, max(len(p) for p in panel_items)), -1)
    for i, p in enumerate(panel_items):
        item_table[i, :len(p)] = p
    code = item_table[sp_panel[sp], j]
    keep = rng.random(len(sp)) >= 0.08  # single results missing from a panel ...
    empty = np.bincount(sp, keep, len(sp_draw)) == 0
    keep[np.searchsorted(sp, np.flatnonzero(empty))] = True  # ... but never all of them
    sp, code = sp[keep], code[keep]
    dr = sp_draw[sp]

    # values from the draw's severity and the patient's own baselines
    n = len(dr)
    pid = d_pat[dr]
    x = d_x[dr]
    base = {
        50912: np.exp(rng.normal(np.log(0.9), 0.35, P)),
        51006: np.exp(rng.normal(np.log(18), 0.4, P)),
        50983: rng.normal(139, 2.5, P), 50971: rng.normal(4.1, 0.3, P),
        50902: rng.normal(103, 2.5, P),
        50882: rng.normal(24, 2, P), 50931: rng.normal(125, 20, P), 50868: rng.normal(13, 2, P),
        50960: rng.normal(2.0, 0.2, P), 51222: rng.normal(11, 1.5, P),
        51301: np.exp(rng.normal(np.log(9), 0.3, P)),
        51265: np.exp(rng.normal(np.log(210), 0.35, P)),
    }

    def noise(sd):
        return rng.normal(0, sd, n)

    hgb = base[51222][pid] - 0.4 * x + noise(0.4)
    formulas = {
        50912: base[50912][pid] * np.exp(0.25 * x + noise(0.08)),
        51006: base[51006][pid] * np.exp(0.2 * x + noise(0.08)),
        50983: base[50983][pid] + 0.8 * x + noise(1.5),
        50971: base[50971][pid] + 0.15 * x + noise(0.25),
        50902: base[50902][pid] + noise(1.5),
        50882: np.clip(base[50882][pid] - 2 * x + noise(1.2), 5, 50),
        50931: np.clip(base[50931][pid] + 15 * x + noise(20), 20, 800),
        50868: np.clip(base[50868][pid] + 1.5 * x + noise(1.0), 3, 40),
        50960: base[50960][pid] + noise(0.15),
        51222: hgb,
        51221: 3 * hgb + noise(1.0),
        51301: base[51301][pid] * np.exp(0.15 * x + noise(0.1)),
        51265: base[51265][pid] * np.exp(-0.12 * x + noise(0.06)),
        50813: 1.4 * np.exp(0.45 * x + noise(0.15)),
        50820: 7.40 - 0.04 * x + noise(0.025),
    }
    valuenum = np.zeros(n)
    for itemid, v in formulas.items():
        m = code == LAB[itemid]
        valuenum[m] = np.round(np.maximum(v[m], 0.01), D_LABITEMS[LAB[itemid]][7])
    lo = np.array([r[5] for r in D_LABITEMS])[code]
    hi = np.array([r[6] for r in D_LABITEMS])[code]

    # sort by subject, then time, then item
    t_draw = d_t[dr]
    order = np.argsort((pid.astype(np.int64) << 42)
                       | ((t_draw - pat["start"][pid] + 400 * DAY) << 6) | code)
    sp, code, dr, pid, valuenum, lo, hi = (a[order] for a in (sp, code, dr, pid, valuenum, lo, hi))
    n_rows = len(code)

    # dirty rows: a decimal slip (out of range) and text where a number belongs
    bad = _pick_dirty(rng, np.arange(n_rows), 5e-4, 2)
    valuenum[bad] = valuenum[bad] * 10
    text = np.full(n_rows, -1)
    bad = _pick_dirty(rng, np.arange(n_rows), 3e-3, 2)
    text[bad] = rng.integers(0, len(LAB_DIRTY_TEXT), len(bad))
    valuenum[bad] = np.nan
    flag = ~np.isnan(valuenum) & ((valuenum < lo) | (valuenum > hi))
    comment = np.where((code == LAB[50931]) & (rng.random(n_rows) < 0.6), 1, 0)
    comment = np.where(rng.random(n_rows) < 0.005, 2, comment)
    comment = np.where(text == 3, 3, comment)

    t = d_t[dr]
    store = t + rng.integers(20, 150, len(sp_draw))[sp] * MINUTE  # one storetime per specimen
    # per-draw order provider (mostly empty) and priority
    provider = np.where(rng.random(D) < 0.15, rng.integers(0, len(providers), D), -1)[dr]
    prio_p = np.array([[0.6, 0.35, 0.05], [0.25, 0.7, 0.05], [0.0, 0.6, 0.4]])[d_set]
    priority = (rng.random(D)[:, None] > np.cumsum(prio_p, 1)).sum(1)[dr]
    specimen = (first_specimen + sp) * 2654435761 % 90_000_000 + 10_000_000
    return pa.table([
        _int(first_id + np.arange(n_rows)), _int(pat["subject_id"][pid]),
        _int(d_hadm[dr], d_hadm[dr] >= 0), _int(specimen), _int(LAB_IDS[code]),
        _dict(np.maximum(provider, 0), providers, provider >= 0), _ts(t), _ts(store),
        _value_text(valuenum, text, LAB_DIRTY_TEXT), _float(valuenum),
        _dict(code, [r[4] for r in D_LABITEMS]), _float(lo), _float(hi),
        _dict(np.zeros(n_rows, np.int32), ["abnormal"], flag),
        _dict(priority, ["STAT", "ROUTINE", None]),
        _dict(comment, LAB_COMMENTS)], schema=SCHEMAS["labevents"])


def _small_tables(rng, pat: dict, stays: dict, adms: dict, providers: list) -> dict:
    """patients, admissions and icustays of a batch."""
    A, S, P = len(adms["pat"]), len(stays["hours"]), len(pat["age"])
    # death date: in-hospital deaths, and 10 % of the others within a year of their last discharge
    last_adm = np.searchsorted(adms["pat"], np.arange(P), side="right") - 1
    fatal_adm = np.zeros(P, bool)
    fatal_adm[adms["pat"][adms["fatal"]]] = True
    later = rng.random(P) < 0.10
    dod = np.where(fatal_adm, adms["deathtime"][last_adm],
                   adms["dischtime"][last_adm] + rng.integers(1, 366, P) * DAY) // DAY
    patients = pa.table([
        _int(pat["subject_id"]), pat["gender"], _int(pat["age"]), _int(pat["anchor_year"]),
        pat["year_group"],
        pa.array(dod.astype(np.int32), pa.int32(), mask=~(fatal_adm | later)).cast(pa.date32()),
    ], schema=SCHEMAS["patients"])

    is_icu = adms["is_icu"]
    atype = pc.if_else(pa.array(is_icu), _choice(rng, ICU_ADMISSION_TYPES, A),
                       _choice(rng, WARD_ADMISSION_TYPES, A))
    ed = np.isin(np.array(atype.to_pylist(), object), list(ED_TYPES))
    location = pc.if_else(pa.array(ed), pa.scalar("EMERGENCY ROOM"),
                          _choice(rng, ADMISSION_LOCATIONS, A))
    discharge = pc.if_else(pa.array(adms["fatal"]), pa.scalar("DIED"),
                           _choice(rng, DISCHARGE_LOCATIONS, A))
    age = pat["age"][adms["pat"]]
    insurance = np.where(age >= 65, np.where(rng.random(A) < 0.8, 0, 2),
                         np.where(rng.random(A) < 0.25, 1, 2))
    provider = np.where(rng.random(A) < 0.97, rng.integers(0, len(providers), A), -1)
    admit = adms["admittime"]
    edreg = (admit - rng.integers(60, 10 * 60, A) * MINUTE)
    edout = admit + (rng.random(A) * np.minimum(3 * HOUR, adms["pre"])) // MINUTE * MINUTE
    admissions = pa.table([
        _int(pat["subject_id"][adms["pat"]]), _int(adms["hadm_id"]), _ts(admit),
        _ts(adms["dischtime"]), _ts(adms["deathtime"], adms["fatal"]), atype,
        _dict(np.maximum(provider, 0), providers, provider >= 0), location, discharge,
        _dict(insurance, INSURANCE),
        _dict((rng.random(A) < 0.07).astype(np.int32), ["ENGLISH", "?"]),
        pat["marital"].take(pa.array(adms["pat"])), pat["race"].take(pa.array(adms["pat"])),
        _ts(edreg, ed), _ts(edout, ed), _int(adms["fatal"].astype(np.int64)),
    ], schema=SCHEMAS["admissions"])

    first = _choice(rng, CAREUNITS, S)
    last = pc.if_else(pa.array(rng.random(S) < 0.85), first, _choice(rng, CAREUNITS, S))
    icustays = pa.table([
        _int(stays["subject_id"]), _int(stays["hadm_id"]), _int(stays["stay_id"]), first, last,
        _ts(stays["intime"]), _ts(stays["outtime"]),
        pa.array((stays["outtime"] - stays["intime"]) / DAY, pa.float64()),
    ], schema=SCHEMAS["icustays"])
    return dict(patients=patients, admissions=admissions, icustays=icustays)


def _dictionary_tables() -> dict:
    d_items = pa.table([
        _int([r[0] for r in D_ITEMS]), pa.array([r[1] for r in D_ITEMS]),
        pa.array([r[2] for r in D_ITEMS]), pa.array(["chartevents"] * len(D_ITEMS)),
        pa.array([r[3] for r in D_ITEMS]), pa.array([r[4] for r in D_ITEMS], pa.string()),
        pa.array([r[5] for r in D_ITEMS]), pa.array([r[6] for r in D_ITEMS], pa.int64()),
        pa.array([r[7] for r in D_ITEMS], pa.float64())], schema=SCHEMAS["d_items"])
    d_labitems = pa.table([
        _int([r[0] for r in D_LABITEMS]), pa.array([r[1] for r in D_LABITEMS]),
        pa.array([r[2] for r in D_LABITEMS]), pa.array([r[3] for r in D_LABITEMS])],
        schema=SCHEMAS["d_labitems"])
    return dict(d_items=d_items, d_labitems=d_labitems)


def simulate_batch(seed: int, batch: int, n: int, first_labevent_id: int,
                   first_specimen: int, providers: list) -> dict:
    """All tables' rows for patients batch * BATCH_PATIENTS .. + n - 1, from their own stream."""
    rng = np.random.default_rng([seed, batch])
    pat = _patients(rng, batch * BATCH_PATIENTS, n)
    stays, adms = _stays_and_admissions(rng, pat)
    tables = _small_tables(rng, pat, stays, adms, providers)
    tables["chartevents"] = _chartevents(rng, stays)
    tables["labevents"] = _labevents(rng, pat, stays, adms, first_labevent_id, first_specimen,
                                     providers)
    return tables


# ---------------------------------------------------------------------------------------------
# Writing


def parquet_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of a parquet table: timestamps in ms, as Parquet has no seconds unit (pyarrow
    would read timestamp[s] columns back as timestamp[ms] anyway)."""
    return pa.schema([pa.field(f.name, pa.timestamp("ms")) if f.type == TS else f
                      for f in schema])


class _TableWriter:
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


def _providers(seed: int) -> list:
    """A pool of provider ids like MIMIC's (P + 5 letters or digits)."""
    rng = np.random.default_rng([seed, 1 << 30])
    chars = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    return ["P" + "".join(c) for c in chars[rng.integers(0, 36, (400, 5))]]


def _write(out, patients: int, seed: int, fmt: str, progress: bool) -> tuple[dict, dict]:
    """Writes every table; returns (rows per table, seconds spent generating and writing, wall
    clock and CPU time of this process)."""
    from tqdm import tqdm

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if patients < 1:
        raise ValueError(f"--patients must be at least 1, got {patients}")
    out = Path(out)
    writers = {}
    for name, schema in SCHEMAS.items():
        (out / MODULE_OF[name]).mkdir(parents=True, exist_ok=True)
        writers[name] = _TableWriter(out / MODULE_OF[name] / f"{name}.{fmt}", schema, fmt)
    providers = _providers(seed)
    seconds = {"generate": 0.0, "write": 0.0, "generate_cpu": 0.0, "write_cpu": 0.0}
    n_batches = -(-patients // BATCH_PATIENTS)
    next_labevent, next_specimen = 1, 0
    try:
        for name, table in _dictionary_tables().items():
            writers[name].write(table)
        bar = tqdm(range(n_batches), desc="synth", unit="batch", disable=not progress)
        for batch in bar:
            t0, c0 = time.perf_counter(), time.process_time()
            n = min(BATCH_PATIENTS, patients - batch * BATCH_PATIENTS)
            tables = simulate_batch(seed, batch, n, next_labevent, next_specimen, providers)
            next_labevent += tables["labevents"].num_rows
            next_specimen += tables["labevents"].num_rows  # an upper bound on specimens
            t1, c1 = time.perf_counter(), time.process_time()
            for name, table in tables.items():
                writers[name].write(table)
            t2, c2 = time.perf_counter(), time.process_time()
            seconds["generate"] += t1 - t0
            seconds["write"] += t2 - t1
            seconds["generate_cpu"] += c1 - c0
            seconds["write_cpu"] += c2 - c1
            bar.set_postfix(chartevents=writers["chartevents"].rows)
    finally:
        t2, c2 = time.perf_counter(), time.process_time()
        for w in writers.values():
            w.close()
        seconds["write"] += time.perf_counter() - t2
        seconds["write_cpu"] += time.process_time() - c2
    return {name: w.rows for name, w in writers.items()}, seconds


def write_synthetic(out, patients: int, seed: int = 0, fmt: str = "csv.gz",
                    progress: bool = True) -> dict:
    """Writes `patients` synthetic patients in the MIMIC-IV v2.2 layout under `out`.

    Returns the number of rows written per table (name -> rows)."""
    return _write(out, patients, seed, fmt, progress)[0]


# ---------------------------------------------------------------------------------------------
# CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (gets hosp/ and icu/)")
    parser.add_argument("--patients", type=int, required=True, help="number of patients")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--format", choices=FORMATS, default="csv.gz",
                        help="table file format (default csv.gz)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    t0, c0 = time.perf_counter(), time.process_time()
    rows, sec = _write(args.out, args.patients, args.seed, args.format, not args.no_progress)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    for name, n in rows.items():
        print(f"{MODULE_OF[name]}/{name}.{args.format}: {n:,} rows")
    n_all = sum(rows.values())
    print(f"{n_all:,} rows in {total:.1f} s, {n_all / max(total, 1e-9):,.0f} rows/s "
          f"(generate {sec['generate']:.1f} s, write {sec['write']:.1f} s; "
          f"CPU time: {cpu:.1f} s, generate {sec['generate_cpu']:.1f} s, "
          f"write {sec['write_cpu']:.1f} s)")
    return 0
