"""Outcome labels of a stay beyond death and length of stay, from plain arrays, for both pipelines
(preprocess.py from MIMIC-IV tables, meds.py from MEDS events): the columns readmit_icu,
readmit_30d and phenotype_<name> of stays.parquet, int8 with 1 yes, 0 no, -1 unknown or excluded.

- readmit_icu: 1 if the stay's hospital admission has another ICU stay whose intime is at or after
  this stay's outtime; otherwise -1 if the patient died in this stay (the admission's death time
  is at or before outtime + 6 h), else 0. -1 also where the stay's admission is unknown. A death
  in the stay is no "no": the patient could not come back.
- readmit_30d (a property of the stay's admission): -1 if the admission ended in death or is
  unknown; 1 if the subject has another admission with admittime in (dischtime, dischtime + 30 d];
  0 if not and the subject has a later record after dischtime + 30 d (a later admittime, or the
  subject's death time); -1 otherwise. The last rule is MEDS-DEV's censoring window for its 30-day
  readmission task: a patient seen for less than 30 days after discharge may have been readmitted
  elsewhere or after the data end, so "no readmission" is not known and the stay is excluded.
- phenotype_<name>: 1 if the admission has an ICD-10 diagnosis starting with one of the
  phenotype's prefixes (configs/phenotypes.yaml), 0 if it has ICD-10 diagnoses but none matching,
  -1 if it has none (or is unknown).

Times are int64 seconds since 1970, ids int64; `MISSING` (readers.fields) marks a missing value.
Everything is vectorised numpy (sorts and searchsorted): 35,000 admissions and 24,000 stays take
under 0.1 s per label.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .readers.fields import BAD, MISSING

DAY = 86400
DEATH_GRACE = 6 * 3600  # a death this soon after ICU discharge is a death in the stay
READMIT_WINDOW = 30 * DAY
LABELS = ("readmit_icu", "readmit_30d")


def default_phenotypes_path() -> Path:
    """The repository's configs/phenotypes.yaml (found as the feature catalog is)."""
    from .catalog import shipped_config

    return shipped_config("phenotypes.yaml")


def load_phenotypes(path: str | Path | None = None) -> tuple[dict[str, tuple[str, ...]], Path]:
    """({phenotype name: ICD-10 prefixes}, the file read); errors name the file and the entry."""
    import yaml

    path = Path(path) if path is not None else default_phenotypes_path()
    if not path.exists():
        raise FileNotFoundError(f"phenotype file not found: {path}")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("phenotypes"), dict) \
            or not doc["phenotypes"]:
        raise ValueError(f"{path}: expected a mapping 'phenotypes: {{name: [ICD-10 prefixes]}}'")
    out = {}
    for name, prefixes in doc["phenotypes"].items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{path}: phenotype name {name!r} is not a plain identifier")
        if not isinstance(prefixes, list) or not prefixes or \
                not all(isinstance(p, str) and p.strip() for p in prefixes):
            raise ValueError(f"{path}: phenotype {name!r}: expected a non-empty list of ICD-10 "
                             "prefixes (strings)")
        out[name] = tuple(normalise_code(p) for p in prefixes)
    return out, path


def normalise_code(code: str) -> str:
    """An ICD code as MIMIC writes it: no dot, no spaces, upper case ('a41.9 ' -> 'A419')."""
    return code.replace(".", "").strip().upper()


def normalise_codes(codes):
    """normalise_code over a pyarrow string array (or a list of str); nulls become ""."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(codes, (pa.Array, pa.ChunkedArray)):
        codes = pa.array(list(codes), pa.string())
    codes = pc.replace_substring(codes.cast(pa.string()), ".", "")
    return pc.utf8_upper(pc.utf8_trim_whitespace(codes)).fill_null("")


def known(x: np.ndarray) -> np.ndarray:
    return (x != MISSING) & (x != BAD)


def admission_rows(adm_hadm: np.ndarray, hadm: np.ndarray) -> np.ndarray:
    """Row in the admissions arrays of each hadm id (the first row of a repeated id), -1 where
    the id is missing or not among the admissions."""
    rows = np.full(len(hadm), -1, np.int64)
    if len(adm_hadm) == 0:
        return rows
    order = np.argsort(adm_hadm, kind="stable")
    ids = adm_hadm[order]
    pos = np.clip(np.searchsorted(ids, hadm), 0, len(ids) - 1)
    hit = (ids[pos] == hadm) & known(hadm)
    rows[hit] = order[pos[hit]]
    return rows


def holding_admission(adm_subject: np.ndarray, admittime: np.ndarray, dischtime: np.ndarray,
                      subject: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Row of the subject's admission holding time t (admittime <= t <= dischtime; of two, the
    later admitted), -1 where none does."""
    rows = np.full(len(subject), -1, np.int64)
    ok = known(admittime) & known(dischtime)
    if len(subject) == 0 or not ok.any():
        return rows
    cand = np.flatnonzero(ok)
    key_adm, key_t = _subject_time_keys(np.concatenate([adm_subject[cand], subject]),
                                        np.concatenate([admittime[cand], t]), len(cand))
    order = np.argsort(key_adm, kind="stable")
    pos = np.searchsorted(key_adm[order], key_t, side="right") - 1  # latest admittime <= t
    row = cand[order[np.maximum(pos, 0)]]
    hit = (pos >= 0) & (adm_subject[row] == subject) & (t <= dischtime[row]) & known(t)
    rows[hit] = row[hit]
    return rows


def _subject_time_keys(subject: np.ndarray, t: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One int64 key per (subject, time) that sorts by subject, then time (their ranks), split
    into the first n and the rest."""
    _, s_idx = np.unique(subject, return_inverse=True)
    times, t_idx = np.unique(t, return_inverse=True)
    key = s_idx.astype(np.int64) * np.int64(len(times) + 1) + t_idx
    return key[:n], key[n:]


def readmit_icu(stay_hadm: np.ndarray, intime: np.ndarray, outtime: np.ndarray,
                adm_hadm: np.ndarray, adm_deathtime: np.ndarray) -> np.ndarray:
    """int8 per stay (module docstring). adm_deathtime: the admission's death time (MIMIC's
    admissions.deathtime, MEDS_DEATH within the admission), MISSING when it did not end in death."""
    n = len(stay_hadm)
    out = np.zeros(n, np.int8)
    if n == 0:
        return out
    # the latest intime among the admission's OTHER stays: sort by (hadm, intime); the last stay
    # of a group compares with the one before it, every other stay with the last
    order = np.lexsort((intime, stay_hadm))
    h, t_in = stay_hadm[order], intime[order]
    last = np.ones(n, bool)
    last[:-1] = h[1:] != h[:-1]
    last_pos = np.flatnonzero(last)
    group_last = last_pos[np.searchsorted(last_pos, np.arange(n))]  # each row's group's last row
    prev_same = np.zeros(n, bool)
    prev_same[1:] = h[1:] == h[:-1]
    other = np.where(last, np.where(prev_same, np.roll(t_in, 1), np.iinfo(np.int64).min),
                     t_in[group_last])
    later = np.empty(n, bool)
    later[order] = other >= outtime[order]
    row = admission_rows(adm_hadm, stay_hadm)
    death = np.where(row >= 0, adm_deathtime[np.maximum(row, 0)] if len(adm_hadm) else MISSING,
                     MISSING)
    died = known(death) & (death <= outtime + DEATH_GRACE)
    out[later] = 1
    out[~later & died] = -1
    out[row < 0] = -1
    return out


def readmit_30d(stay_hadm: np.ndarray, adm_subject: np.ndarray, adm_hadm: np.ndarray,
                admittime: np.ndarray, dischtime: np.ndarray, adm_died: np.ndarray,
                death_subject: np.ndarray, death_time: np.ndarray) -> np.ndarray:
    """int8 per stay (module docstring). adm_died: 1 where the admission ended in death (MIMIC's
    hospital_expire_flag); death_subject, death_time: each subject's death time outside the
    admissions (MIMIC's patients.dod at midnight, MEDS_DEATH), one row per subject that died."""
    row = admission_rows(adm_hadm, stay_hadm)
    label = admission_readmit_30d(adm_subject, admittime, dischtime, adm_died, death_subject,
                                  death_time)
    return np.where(row >= 0, label[np.maximum(row, 0)] if len(label) else -1, -1).astype(np.int8)


def admission_readmit_30d(subject: np.ndarray, admittime: np.ndarray, dischtime: np.ndarray,
                          died: np.ndarray, death_subject: np.ndarray,
                          death_time: np.ndarray) -> np.ndarray:
    """readmit_30d of each admission (int8)."""
    n = len(subject)
    if n == 0:
        return np.zeros(0, np.int8)
    subjects, s_idx = np.unique(subject, return_inverse=True)
    ok_in = known(admittime)
    ok_out = known(dischtime) & ok_in & (dischtime >= admittime)
    end = dischtime + READMIT_WINDOW
    key_in, key_out = _subject_time_keys(np.concatenate([subject, subject]),
                                         np.concatenate([admittime, dischtime]), n)
    cand = np.flatnonzero(ok_in)
    order = cand[np.argsort(key_in[cand], kind="stable")]
    keys = key_in[order]
    # the first admission of the same subject with admittime > dischtime
    pos = np.searchsorted(keys, key_out, side="right")
    has = pos < len(keys)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    nxt = order[pos] if len(keys) else np.zeros(n, np.int64)
    has &= (s_idx[nxt] == s_idx) if len(keys) else False
    next_in = np.where(has, admittime[nxt], MISSING)
    # the subject's last record: its latest admittime, or its death
    last = np.full(len(subjects), np.iinfo(np.int64).min, np.int64)
    np.maximum.at(last, s_idx[cand], admittime[cand])
    ok_death = known(death_time)
    d_idx = np.searchsorted(subjects, death_subject[ok_death])
    inside = d_idx < len(subjects)
    d_idx, d_time = d_idx[inside], death_time[ok_death][inside]
    hit = subjects[d_idx] == death_subject[ok_death][inside]
    np.maximum.at(last, d_idx[hit], d_time[hit])
    label = np.full(n, -1, np.int8)
    followed = last[s_idx] > end
    label[followed] = 0
    label[has & (next_in <= end)] = 1
    label[~ok_out | (died == 1) | (died < 0)] = -1
    return label


def phenotypes(stay_hadm: np.ndarray, dx_hadm: np.ndarray, dx_code,
               prefixes: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
    """{"phenotype_<name>": int8 per stay} from ICD-10 diagnosis rows (hadm id, code as a pyarrow
    string array or a list of str, normalised by normalise_codes; rows of other ICD versions must
    be left out by the caller, which accounts for them)."""
    import pyarrow.compute as pc

    codes = normalise_codes(dx_code)
    has_dx = np.isin(stay_hadm, dx_hadm) & known(stay_hadm)
    out = {}
    for name, pre in prefixes.items():
        match = np.zeros(len(dx_hadm), bool)
        for p in pre:
            match |= pc.starts_with(codes, p).fill_null(False).to_numpy(zero_copy_only=False)
        yes = np.isin(stay_hadm, dx_hadm[match]) & has_dx
        out[f"phenotype_{name}"] = np.where(yes, 1, np.where(has_dx, 0, -1)).astype(np.int8)
    return out
