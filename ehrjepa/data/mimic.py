"""The MIMIC-IV source: hosp/ and icu/ tables -> the stay table and the hourly event folds.

Stays (stays.py) from icustays; in-hospital death from admissions; readmissions from
admissions and patients, phenotypes from diagnoses_icd where present (outcomes.py); age and sex
from patients (anchor_age moved to the stay's year, gender). Then chartevents and labevents are
streamed through the fused scan kernels (events.py holds the rules, drivers.py the threaded
streaming) into the memory-mapped sums and counts. Every input row is kept or dropped for a
named reason. The rest of the run (staging, split, format, manifest) is build.py's.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .build import Run, StayTable
from .catalog import Catalog
from .drivers import ScanOptions, aggregate_table
from .events import CHART_REASONS, LAB_REASONS, REASONS, TABLES
from .outcomes import (admission_rows, known, load_phenotypes, normalise_codes, phenotypes,
                       readmit_30d, readmit_icu)
from .readers import (KIND_INT, KIND_TIME, MISSING, TableStats, arrow_numpy, find_table,
                      read_table, read_text_table, table_columns)
from .staging import pause_point
from .stays import Stays

# columns read when the table has them: without them the outcomes they feed are -1 (a warning),
# and age / sex are null
OPTIONAL = {"admissions": {"subject_id": KIND_INT, "admittime": KIND_TIME, "dischtime": KIND_TIME,
                           "deathtime": KIND_TIME},
            "patients": {"dod": KIND_TIME, "anchor_age": KIND_INT, "anchor_year": KIND_INT}}
DIAGNOSES = ("hadm_id", "icd_code", "icd_version")
DIAGNOSIS_REASONS = ("bad_id", "not_icd10", "no_code", "no_icu_stay")


def _table_entry(run: Run, name: str, path, stats: TableStats, kept: int, dropped: dict) -> None:
    dropped = {k: int(v) for k, v in dropped.items()}
    if stats.bad_line or "bad_line" in dropped:
        dropped["bad_line"] = dropped.get("bad_line", 0) + stats.bad_line
    run.account(name, path, stats.rows_read, kept, dropped)


def _read_with_optional(path: Path, name: str, on_bad_lines: str, stats: TableStats,
                        run: Run) -> dict[str, np.ndarray]:
    """TABLES[name]'s columns and those of OPTIONAL[name] the table has (MISSING where not)."""
    have = set(table_columns(path))
    optional = OPTIONAL[name]
    columns = TABLES[name][1] | {c: k for c, k in optional.items() if c in have}
    cols = read_table(path, columns, on_bad_lines, stats)
    n = len(next(iter(cols.values())))
    absent = [c for c in optional if c not in have]
    if absent:
        run.warn(f"{path}: no column {', '.join(absent)}: the labels and stay columns that need "
                 "it are unknown")
    return cols | {c: np.full(n, MISSING, np.int64) for c in absent}


def _require(mimic_dir: Path, name: str) -> Path:
    module = TABLES[name][0]
    p = find_table(mimic_dir, module, name)
    if p is None:
        raise FileNotFoundError(f"{mimic_dir}/{module}/{name}.csv.gz (or .csv, .parquet) not found")
    return p


class MimicSource:
    """MIMIC-IV v2.2 tables under MIMIC_DIR/{hosp,icu} (build.py's source shape)."""
    name = "mimic"

    def __init__(self, mimic_dir: str | Path, on_bad_lines: str = "error",
                 options: ScanOptions = ScanOptions(), phenotypes: str | Path | None = None):
        if on_bad_lines not in ("error", "skip"):
            raise ValueError(f"on_bad_lines must be 'error' or 'skip', not {on_bad_lines!r}")
        self.mimic_dir = Path(os.path.abspath(mimic_dir))
        if not self.mimic_dir.is_dir():
            raise FileNotFoundError(f"MIMIC-IV directory not found: {self.mimic_dir}")
        self.inputs = [self.mimic_dir]
        self.on_bad_lines, self.options = on_bad_lines, options
        self.pheno = load_phenotypes(phenotypes)
        self.paths = {name: _require(self.mimic_dir, name)
                      for name in ("patients", "admissions", "icustays", "labevents")}
        chart = find_table(self.mimic_dir, "icu", "chartevents")
        if chart is not None:
            self.paths["chartevents"] = chart

    def read_stays(self, catalog: Catalog, run: Run) -> StayTable:
        mimic_dir, paths, on_bad_lines = self.mimic_dir, self.paths, self.on_bad_lines
        if "chartevents" not in paths:
            run.warn(f"{mimic_dir}/icu/chartevents.csv.gz (or .csv, .parquet) not found: "
                     "no vital signs, labs only", echo=True)
        # ---- stays
        t0 = time.perf_counter()
        st = TableStats(str(paths["icustays"]))
        cols = read_table(paths["icustays"], TABLES["icustays"][1], on_bad_lines, st)
        stay_drops = {"bad_id": 0, "bad_timestamp": 0, "outtime_before_intime": 0,
                      "duplicate_stay": 0}
        stays = Stays(cols, st, stay_drops)
        _table_entry(run, "icustays", paths["icustays"], st, len(stays), stay_drops)
        run.seconds["icustays"] = time.perf_counter() - t0

        # ---- admissions: in-hospital death of each stay's admission
        t0 = time.perf_counter()
        st = TableStats(str(paths["admissions"]))
        adm = _read_with_optional(paths["admissions"], "admissions", on_bad_lines, st, run)
        row = admission_rows(adm["hadm_id"], stays.hadm_id)
        flag = adm["hospital_expire_flag"][np.maximum(row, 0)] if len(row) and len(adm["hadm_id"]) \
            else np.zeros(len(stays), np.int64)
        death = np.where((row >= 0) & (flag >= 0) & (flag <= 1), flag, -1).astype(np.int8)
        n_unknown = int((death < 0).sum())
        if n_unknown:
            run.warn(f"{n_unknown} stays have no admission with a 0/1 hospital_expire_flag "
                     "in admissions: death_hosp = -1 (unknown)")
        used = np.isin(adm["hadm_id"], stays.hadm_id)
        _table_entry(run, "admissions", paths["admissions"], st, int(used.sum()),
                     {"no_icu_stay": int((~used).sum())})
        run.seconds["admissions"] = time.perf_counter() - t0

        # ---- patients: who has an ICU stay; age and sex; stays of unknown subjects
        st = TableStats(str(paths["patients"]))
        pat = _read_with_optional(paths["patients"], "patients", on_bad_lines, st, run)
        used = np.isin(pat["subject_id"], stays.subject_id)
        _table_entry(run, "patients", paths["patients"], st, int(used.sum()),
                     {"no_icu_stay": int((~used).sum())})
        n_orphans = int((~np.isin(stays.subject_id, pat["subject_id"])).sum())
        if n_orphans:
            run.warn(f"{n_orphans} stays belong to subjects missing from patients")
        columns = _age_sex(stays, pat, _genders(paths["patients"], on_bad_lines, run))

        # ---- outcomes: readmissions (admissions, patients.dod), phenotypes (diagnoses_icd)
        t0 = time.perf_counter()
        adm_died = np.where((adm["hospital_expire_flag"] >= 0) & (adm["hospital_expire_flag"] <= 1),
                            adm["hospital_expire_flag"], -1)
        labels = {"readmit_icu": readmit_icu(stays.hadm_id, stays.intime, stays.outtime,
                                             adm["hadm_id"], adm["deathtime"]),
                  "readmit_30d": readmit_30d(stays.hadm_id, adm["subject_id"], adm["hadm_id"],
                                             adm["admittime"], adm["dischtime"], adm_died,
                                             pat["subject_id"], pat["dod"])}
        pheno, pheno_path = self.pheno
        pheno_info = {"path": os.path.abspath(pheno_path), "names": list(pheno)}
        dx_path = find_table(mimic_dir, "hosp", "diagnoses_icd")
        if dx_path is None:
            pheno_info["note"] = (f"{mimic_dir}/hosp/diagnoses_icd.csv.gz (or .csv, .parquet) not "
                                  "found: no phenotype columns")
        else:
            st = TableStats(str(dx_path))
            dx_hadm, dx_code, dx_dropped = _read_diagnoses(dx_path, stays, on_bad_lines, st)
            _table_entry(run, "diagnoses_icd", dx_path, st, len(dx_hadm), dx_dropped)
            if st.rows_read:
                labels |= phenotypes(stays.hadm_id, dx_hadm, dx_code, pheno)
            else:
                pheno_info["note"] = f"{dx_path}: no data rows: no phenotype columns"
        run.manifest["phenotypes"] = pheno_info
        run.seconds["outcomes"] = time.perf_counter() - t0
        return StayTable(stays, death, labels, columns)

    def fold_events(self, catalog: Catalog, table: StayTable, sums: np.ndarray,
                    counts: np.ndarray, run: Run) -> None:
        for name in ("chartevents", "labevents"):
            if name not in self.paths:
                continue
            t0 = time.perf_counter()
            path = self.paths[name]
            st = TableStats(str(path))
            dropped = np.zeros(len(REASONS), np.int64)
            kept = aggregate_table(name, path, catalog.lookup(name), table.stays, sums, counts,
                                   self.on_bad_lines, st, dropped, run.progress, self.options)
            if st.rows_read == 0:
                run.warn(f"{path}: no data rows (header only?): no {name} events", echo=True)
            pause_point("scan")
            reasons = CHART_REASONS if name == "chartevents" else LAB_REASONS
            _table_entry(run, name, path, st, kept,
                         {r: int(dropped[REASONS.index(r)]) for r in reasons})
            run.seconds[name] = time.perf_counter() - t0


def _genders(path: Path, on_bad_lines: str, run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(subject_id, sex: 1 for gender M, 0 for F, -1 otherwise) of patients; empty without the
    column (a warning)."""
    import pyarrow.compute as pc

    if "gender" not in table_columns(path):
        run.warn(f"{path}: no column gender: sex is unknown")
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cols = read_text_table(path, ["subject_id", "gender"], on_bad_lines, TableStats(str(path)))
    subject = arrow_numpy(cols["subject_id"], KIND_INT, path, "subject_id")
    g = pc.utf8_upper(pc.utf8_trim_whitespace(cols["gender"].cast("string")))
    male = pc.equal(g, "M").fill_null(False).to_numpy(zero_copy_only=False)
    female = pc.equal(g, "F").fill_null(False).to_numpy(zero_copy_only=False)
    return subject, np.where(male, 1, np.where(female, 0, -1))


def _age_sex(stays: Stays, pat: dict, genders: tuple[np.ndarray, np.ndarray]
             ) -> dict[str, np.ndarray]:
    """age (anchor_age + the years from anchor_year to intime's year; MIMIC-IV shifts each
    subject's dates by one offset, so the difference of years is kept) and sex (gender M 1, F 0)
    per stay, NaN where patients lacks the subject or the column."""
    age = np.full(len(stays), np.nan)
    sex = np.full(len(stays), np.nan)
    found, row = _lookup(pat["subject_id"], stays.subject_id)
    if found.any():
        a_age, a_year = pat["anchor_age"][row], pat["anchor_year"][row]
        ok = found & known(a_age) & known(a_year)
        year = stays.intime.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970
        age[ok] = (a_age + year - a_year)[ok]
    found, row = _lookup(genders[0], stays.subject_id)
    if found.any():
        g = genders[1][row]
        sex[found & (g >= 0)] = g[found & (g >= 0)]
    return {"age": age, "sex": sex}


def _lookup(ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(found, row in ids) for each wanted id (the first row of an id listed twice)."""
    if len(ids) == 0 or len(wanted) == 0:
        return np.zeros(len(wanted), bool), np.zeros(len(wanted), np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.clip(np.searchsorted(ids[order], wanted), 0, len(ids) - 1)
    return ids[order][pos] == wanted, order[pos]


def _read_diagnoses(path: Path, stays: Stays, on_bad_lines: str, stats: TableStats
                    ) -> tuple[np.ndarray, "pyarrow.Array", dict[str, int]]:  # noqa: F821
    """(hadm_id, normalised icd_code) of the ICD-10 rows of the stays' admissions, and the rows
    dropped by reason (DIAGNOSIS_REASONS)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = read_text_table(path, list(DIAGNOSES), on_bad_lines, stats)
    hadm = arrow_numpy(cols["hadm_id"], KIND_INT, path, "hadm_id")
    version = arrow_numpy(cols["icd_version"], KIND_INT, path, "icd_version")
    code = normalise_codes(cols["icd_code"])
    no_code = pc.equal(code, "").to_numpy(zero_copy_only=False)
    bad_id = ~known(hadm)
    not_10 = ~bad_id & (version != 10)
    no_code &= ~bad_id & ~not_10
    no_stay = ~bad_id & ~not_10 & ~no_code & ~np.isin(hadm, stays.hadm_id)
    keep = ~(bad_id | not_10 | no_code | no_stay)
    dropped = dict(zip(DIAGNOSIS_REASONS, (int(m.sum()) for m in (bad_id, not_10, no_code, no_stay))))
    return hadm[keep], code.filter(pa.array(keep)), dropped
