"""`ehrjepa preprocess --meds DIR`: a MEDS dataset (schema 0.4) -> the processed format.

The MEDS counterpart of preprocess.py, with the same rules (events.py) and output (processed.py):

- Codes -> features: the catalog's `meds` templates (catalog.py; MIMIC_IV_MEDS's codes,
  `LAB//{itemid}//*` for chartevents, `LAB//RESULT//{itemid}//*` for labevents), with the
  catalog's conversions and valid ranges by itemid. A chartevents code is placed by its
  icustay_id where the data has that column (as MIMIC's stay_id), else like a lab: the
  subject's stay whose window holds its time.
- Stays: ICU_ADMISSION// and ICU_DISCHARGE// events, paired by icustay_id where present, else in
  time order per subject (stay ids are then numbered 1, 2, ... in subject, time order).
- death_hosp: 1 when the subject's MEDS_DEATH lies within [admission, discharge] of the
  hospital admission holding the stay (HOSPITAL_ADMISSION// / HOSPITAL_DISCHARGE//, paired by
  hadm_id where present); MIMIC_IV_MEDS times MEDS_DEATH at admissions.deathtime, which MIMIC
  sets for in-hospital deaths only, so this is hospital_expire_flag as far as MEDS tells; -1
  where no admission holds the stay. los_days from the ICU events.
- readmit_icu, readmit_30d, phenotype_<name> (outcomes.py): admissions from the HOSPITAL_ events,
  their death from MEDS_DEATH within them, the subject's death record from MEDS_DEATH, diagnoses
  from DIAGNOSIS//ICD//10//{code} events placed by hadm_id where present, else in the subject's
  admission holding the event's time. No DIAGNOSIS// event at all: no phenotype columns.
- Each subject's rows lie in one shard (MEDS's rule; a subject in two shards is an error).
- Splits: metadata/subject_splits.parquet (train / tuning / held_out -> train / val / test),
  our subject hash where it is absent (manifest `split_source`).

Two passes over data/**/*.parquet, one row group at a time: the first reads subject_id, time
and code for the stay events and the distinct codes, the second streams every row through the
numba kernel scan_meds (drivers.aggregate_meds). Every row is kept or dropped for a named
reason, per shard and in total, in OUT/manifest.json.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .drivers import ScanOptions, aggregate_meds
from .events import REASONS
from .outcomes import (holding_admission, known, load_phenotypes, phenotypes, readmit_30d,
                       readmit_icu)
from .build import Run, StayTable, build
from .processed import split_of_subjects
from .readers import KIND_FLOAT, KIND_INT, KIND_TIME, MISSING, TableStats, arrow_column
from .readers.files import BLOCK_ROWS
from .readers.parquet import _NO_BITS, ArrowColumn, _parquet_error
from .stays import Stays

COLUMNS = {"subject_id": "an integer", "time": "a timestamp", "code": "a string",
           "numeric_value": "a float"}
MEDS_SPLITS = {"train": 0, "tuning": 1, "held_out": 2}  # -> processed.SPLITS
# stay event kinds, by code prefix
KINDS = {"ICU_ADMISSION": 1, "ICU_DISCHARGE": 2, "HOSPITAL_ADMISSION": 3, "HOSPITAL_DISCHARGE": 4,
         "MEDS_DEATH": 5, "DIAGNOSIS": 6, "MEDS_BIRTH": 7, "GENDER//F": 8, "GENDER//M": 9}
ICD10 = "DIAGNOSIS//ICD//10//"
DROP_NAMES = tuple("not_a_feature" if r == "unknown_itemid" else r for r in REASONS)


class Shards(list):
    """The data shards (paths, sorted), and `.notes`: one line per parquet file passed over."""

    notes: list[str]


def data_shards(meds_dir: Path) -> Shards:
    """data/**/*.parquet, less the files that are not MEDS shards: those in a processed folder of
    ours (its manifest.json; e.g. an --out once written inside data/) and those with neither a
    `time` nor a `code` column. Each file passed over is a note on stderr and in `.notes` (the
    manifest's warnings). A file that cannot be read stays: open_shard names its fault."""
    from .staging import is_processed

    import pyarrow as pa
    import pyarrow.parquet as pq

    data = meds_dir / "data"
    shards, notes = Shards(), []
    ours: dict[Path, bool] = {}
    for path in sorted(data.rglob("*.parquet")):
        folders = [f for f in path.parents if f == data or data in f.parents]
        for f in folders:
            if f not in ours:
                ours[f] = is_processed(f)
        held = next((f for f in folders if ours[f]), None)
        if held is not None:
            notes.append(f"{path}: skipped, not a MEDS shard (in {held}, a processed folder of "
                         "ehrjepa preprocess)")
            continue
        try:
            names = set(pq.read_schema(path).names)
        except (pa.ArrowException, OSError):
            names = {"time", "code"}  # open_shard reports it
        if not names & {"time", "code"}:
            notes.append(f"{path}: skipped, not a MEDS shard (no time or code column; columns: "
                         f"{', '.join(sorted(names)) or 'none'})")
            continue
        shards.append(path)
    for note in notes:
        print(f"ehrjepa preprocess: note: {note}", file=sys.stderr)
    if not shards:
        raise FileNotFoundError(f"{meds_dir}/data/**/*.parquet: no MEDS data shards found"
                                + (f" ({len(notes)} parquet file(s) skipped, not MEDS shards)"
                                   if notes else ""))
    shards.notes = notes
    return shards


def open_shard(path: Path):
    """(ParquetFile with `code` read as a dictionary, has icustay_id, has hadm_id); a missing
    column or one of the wrong type is an error naming the file and the column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)  # the columns are checked before `code` is asked for
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(path, e) from e
    for name, kind in COLUMNS.items():
        if name not in schema.names:
            raise ValueError(f"{path}: missing MEDS column {name!r} (columns: "
                             f"{', '.join(schema.names)})")
        t = schema.field(name).type
        if pa.types.is_dictionary(t):
            t = t.value_type
        ok = {"subject_id": pa.types.is_integer, "time": pa.types.is_timestamp,
              "code": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
              "numeric_value": pa.types.is_floating}[name](t)
        if not ok:
            raise ValueError(f"{path}: column {name!r} has type {t}, expected {kind} (MEDS 0.4)")
    try:
        pf = pq.ParquetFile(path, read_dictionary=["code"])
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(path, e) from e
    names = set(schema.names)
    return pf, "icustay_id" in names, "hadm_id" in names


def _batches(pf, path: Path, columns: list[str], block_rows: int, stats: TableStats):
    """Record batches, one row group at a time; an undecodable one is an error naming the file."""
    import pyarrow as pa

    try:
        for g in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=block_rows, row_groups=[g], columns=columns,
                                         use_threads=False):
                stats.rows_read += batch.num_rows
                if batch.num_rows:
                    yield batch
    except (pa.ArrowException, OSError) as e:
        raise _parquet_error(path, e) from e


def _dictionary(arr):
    """The code column as a DictionaryArray (read so; encoded here otherwise)."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr if pa.types.is_dictionary(arr.type) else arr.dictionary_encode()


def _kinds(dictionary) -> np.ndarray:
    """KINDS of each dictionary value (0: not a stay event)."""
    return np.array([next((k for p, k in KINDS.items() if c == p or c.startswith(p + "//")), 0)
                     for c in dictionary.to_pylist()], np.int8)


# -------------------------------------------------------------------------------------------------
# pass 1: the stay events and the distinct codes


def read_stay_events(shards: list[Path]) -> tuple[dict, list[str], bool, bool]:
    """(stay events {subject, time (s), kind, hadm_id, icustay_id, and "dx_code": the code of
    each DIAGNOSIS// event}, the sorted distinct codes, every shard has icustay_id, every shard
    has hadm_id). A subject with rows in two shards is an error naming both."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts, codes, dx_codes, subjects = [], set(), [], []
    all_stay = all_hadm = True
    for k, path in enumerate(shards):
        pf, has_stay, has_hadm = open_shard(path)
        all_stay &= has_stay
        all_hadm &= has_hadm
        cols = ["subject_id", "time", "code"] + ["hadm_id"] * has_hadm + ["icustay_id"] * has_stay
        shard_subjects = []
        for batch in _batches(pf, path, cols, BLOCK_ROWS, TableStats(str(path))):
            shard_subjects.append(pc.unique(batch.column("subject_id")).drop_null()
                                  .cast(pa.int64()).to_numpy())
            code = _dictionary(batch.column("code"))
            codes.update(code.dictionary.to_pylist())
            kinds = _kinds(code.dictionary)
            if not kinds.any():
                continue
            idx = code.indices.fill_null(0).to_numpy()
            kind = np.where(code.is_valid().to_numpy(zero_copy_only=False), kinds[idx], 0)
            keep = pa.array(kind > 0)
            part = {"kind": kind[kind > 0]}
            for name, kd in (("subject_id", KIND_INT), ("time", KIND_TIME), ("hadm_id", KIND_INT),
                             ("icustay_id", KIND_INT)):
                if name in cols:
                    col = arrow_column(pc.filter(batch.column(name), keep), kd, path, name)
                    part[name] = _plain_int(col)
                else:
                    part[name] = np.full(len(part["kind"]), MISSING, np.int64)
            dx = pa.array(idx[kind == KINDS["DIAGNOSIS"]])
            dx_codes.append(code.dictionary.take(dx).cast(pa.string()))
            parts.append(part)
        if shard_subjects:
            subjects.append((k, np.unique(np.concatenate(shard_subjects))))
    _check_one_shard_per_subject(shards, subjects)
    codes.discard(None)
    events = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.int64)
              for k in ("kind", "subject_id", "time", "hadm_id", "icustay_id")}
    events["dx_code"] = pa.concat_arrays(dx_codes) if dx_codes else pa.array([], pa.string())
    return events, sorted(codes), all_stay, all_hadm


def _check_one_shard_per_subject(shards: list[Path], subjects: list[tuple[int, np.ndarray]]):
    """MEDS keeps each subject's rows in one shard: a subject in two is an error naming both."""
    if len(subjects) < 2:
        return
    sid = np.concatenate([s for _, s in subjects])
    shard = np.concatenate([np.full(len(s), k) for k, s in subjects])
    order = np.argsort(sid, kind="stable")
    sid, shard = sid[order], shard[order]
    twice = np.flatnonzero(sid[1:] == sid[:-1])
    if len(twice):
        i = twice[0]
        raise ValueError(f"subject {sid[i]} has rows in {shards[shard[i]]} and in "
                         f"{shards[shard[i + 1]]}: MEDS keeps each subject's rows in one shard")


def _plain_int(col: ArrowColumn) -> np.ndarray:
    """An int or time ArrowColumn as int64 (seconds for times), MISSING at nulls."""
    out = col.data // col.div if col.div != 1 else col.data.copy()
    if len(col.valid):
        bits = np.unpackbits(col.valid, bitorder="little")[col.bit0:col.bit0 + len(out)]
        out[bits == 0] = MISSING
    return out


def _pair(subject, when, start: np.ndarray, ident, use_ident: bool):
    """Pair start and end events into intervals: by `ident` (first start and first end of each
    id), else in time order per subject (each start with the next end before the next start).
    Returns (subject, id, t_start, t_end, rows used, rows unpaired); ids are numbered 1, 2, ...
    in (subject, time) order when not given."""
    if use_ident:
        ok = ident != MISSING
        out = []
        for flag in (True, False):
            sel = np.flatnonzero(ok & (start == flag))
            ids, first = np.unique(ident[sel], return_index=True)
            out.append((ids, sel[first]))
        (ids_s, rows_s), (ids_e, rows_e) = out
        both, i_s, i_e = np.intersect1d(ids_s, ids_e, return_indices=True)
        s, e = rows_s[i_s], rows_e[i_e]
        unpaired = len(subject) - 2 * len(both)
        return subject[s], both, when[s], when[e], unpaired
    order = np.lexsort((~start, when, subject))  # at one time a start before its end
    subj, t0, t1 = [], [], []
    open_row = -1
    for r in order.tolist():
        if open_row >= 0 and subject[open_row] != subject[r]:
            open_row = -1  # the subject's last start had no end
        if start[r]:
            open_row = r
        elif open_row >= 0:
            subj.append(subject[r])
            t0.append(when[open_row])
            t1.append(when[r])
            open_row = -1
    unpaired = len(subject) - 2 * len(subj)
    return (np.array(subj, np.int64), np.arange(1, len(subj) + 1, dtype=np.int64),
            np.array(t0, np.int64), np.array(t1, np.int64), unpaired)


def build_stays(ev: dict, has_stay: bool, has_hadm: bool, stats: TableStats, dropped: dict,
                warnings: list[str]) -> tuple[Stays, np.ndarray, dict]:
    """(Stays, death_hosp int8, the admissions {subject, hadm_id, admittime, dischtime,
    deathtime, died} and deaths {subject, time}) from the stay events (module docstring)."""
    icu = np.flatnonzero((ev["kind"] == 1) | (ev["kind"] == 2))
    stats.rows_read = len(icu)
    subj, sid, t_in, t_out, unpaired = _pair(ev["subject_id"][icu], ev["time"][icu],
                                             ev["kind"][icu] == 1, ev["icustay_id"][icu], has_stay)
    dropped["unpaired"] = unpaired
    hosp = np.flatnonzero((ev["kind"] == 3) | (ev["kind"] == 4))
    h_subj, h_id, h_in, h_out, _ = _pair(ev["subject_id"][hosp], ev["time"][hosp],
                                         ev["kind"][hosp] == 3, ev["hadm_id"][hosp], has_hadm)
    # each stay's admission: the subject's admission holding intime
    adm_of = {}
    for j in np.argsort(h_in, kind="stable").tolist():
        adm_of.setdefault(int(h_subj[j]), []).append(j)
    adm = np.full(len(subj), -1, np.int64)
    for i, (s, t) in enumerate(zip(subj.tolist(), t_in.tolist())):
        for j in adm_of.get(s, ()):
            if h_in[j] <= t <= h_out[j]:
                adm[i] = j
                break
    hadm = np.where(adm >= 0, h_id[np.maximum(adm, 0)] if len(h_id) else MISSING, MISSING)
    cols = {"stay_id": sid, "subject_id": subj, "hadm_id": hadm, "intime": t_in,
            "outtime": t_out}
    stay_drops = {"bad_id": 0, "bad_timestamp": 0, "outtime_before_intime": 0, "duplicate_stay": 0}
    stays = Stays(cols, stats, stay_drops)
    for k, v in stay_drops.items():  # each stay is two events
        dropped[k] = 2 * v
    # each subject's earliest MEDS_DEATH; an admission's death is one within it
    died = ev["kind"] == KINDS["MEDS_DEATH"]
    d_subj, d_time = _earliest(ev["subject_id"][died], ev["time"][died])
    at = np.minimum(np.searchsorted(d_subj, h_subj), max(len(d_subj) - 1, 0))
    hit = d_subj[at] == h_subj if len(d_subj) else np.zeros(len(h_subj), bool)
    t = np.where(hit, d_time[at] if len(d_subj) else 0, MISSING)
    inside = hit & (h_in <= t) & (t <= h_out)
    a = adm[_rows_of(sid, stays.stay_id)]
    flag = np.where(a >= 0, inside[np.maximum(a, 0)] if len(inside) else 0, -1).astype(np.int8)
    if (flag < 0).any():
        warnings.append(f"{int((flag < 0).sum())} stays lie in no HOSPITAL_ADMISSION// .. "
                        "HOSPITAL_DISCHARGE// interval: death_hosp = -1 (unknown)")
    admissions = {"subject": h_subj, "hadm_id": h_id, "admittime": h_in, "dischtime": h_out,
                  "deathtime": np.where(inside, t, MISSING), "died": inside.astype(np.int8),
                  "death_subject": d_subj, "death_time": d_time}
    return stays, flag, admissions


def outcome_labels(stays: Stays, adm: dict, ev: dict, pheno: dict, entry: dict) -> dict:
    """readmit_icu, readmit_30d and (where there are DIAGNOSIS// events) phenotype_<name> per
    stay; `entry` gets the diagnosis events' accounting (read = kept + dropped by reason)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    labels = {"readmit_icu": readmit_icu(stays.hadm_id, stays.intime, stays.outtime,
                                         adm["hadm_id"], adm["deathtime"]),
              "readmit_30d": readmit_30d(stays.hadm_id, adm["subject"], adm["hadm_id"],
                                         adm["admittime"], adm["dischtime"], adm["died"],
                                         adm["death_subject"], adm["death_time"])}
    dx = np.flatnonzero(ev["kind"] == KINDS["DIAGNOSIS"])
    entry.update(rows_read=len(dx), rows_kept=0,
                 dropped={"not_icd10": 0, "no_admission": 0, "no_icu_stay": 0})
    if len(dx) == 0:
        return labels
    code = ev["dx_code"]
    icd10 = pc.starts_with(code, ICD10).to_numpy(zero_copy_only=False)
    # the admission: its hadm_id where given and known, else the one holding the event's time
    hadm = ev["hadm_id"][dx]
    given = known(hadm) & np.isin(hadm, adm["hadm_id"])
    row = holding_admission(adm["subject"], adm["admittime"], adm["dischtime"],
                            ev["subject_id"][dx], ev["time"][dx])
    hadm = np.where(given, hadm, np.where(row >= 0, adm["hadm_id"][np.maximum(row, 0)]
                                          if len(row) and len(adm["hadm_id"]) else MISSING,
                                          MISSING))
    placed = known(hadm)
    icu = placed & np.isin(hadm, stays.hadm_id)
    keep = icd10 & icu
    entry.update(rows_kept=int(keep.sum()),
                 dropped={"not_icd10": int((~icd10).sum()),
                          "no_admission": int((icd10 & ~placed).sum()),
                          "no_icu_stay": int((icd10 & placed & ~icu).sum())})
    codes = pc.utf8_slice_codeunits(code.filter(pa.array(keep)), len(ICD10))
    return labels | phenotypes(stays.hadm_id, hadm[keep], codes, pheno)


def static_columns(stays: Stays, ev: dict) -> dict[str, np.ndarray]:
    """age (intime's year less the year of the subject's MEDS_BIRTH: MIMIC-IV's anchor_age moved
    to the stay's year, as mimic.py computes it) and sex (GENDER//M 1, GENDER//F 0) per stay; NaN
    where the data does not say."""
    age = np.full(len(stays), np.nan)
    sex = np.full(len(stays), np.nan)
    born = ev["kind"] == KINDS["MEDS_BIRTH"]
    b_subj, b_time = _earliest(ev["subject_id"][born], ev["time"][born])
    if len(b_subj):
        pos = np.clip(np.searchsorted(b_subj, stays.subject_id), 0, len(b_subj) - 1)
        hit = (b_subj[pos] == stays.subject_id) & (b_time[pos] != MISSING)
        def year(t):
            return t.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64)

        age[hit] = (year(stays.intime) - year(b_time[pos]))[hit]
    for kind, value in ((KINDS["GENDER//F"], 0.0), (KINDS["GENDER//M"], 1.0)):
        subjects = np.unique(ev["subject_id"][ev["kind"] == kind])
        sex[np.isin(stays.subject_id, subjects)] = value
    return {"age": age, "sex": sex}


def _earliest(subject: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct subjects, sorted; each one's earliest time)."""
    order = np.lexsort((t, subject))
    subject, t = subject[order], t[order]
    first = np.ones(len(subject), bool)
    first[1:] = subject[1:] != subject[:-1]
    return subject[first], t[first]


def _rows_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in ids of the (distinct, present) values `wanted`."""
    order = np.argsort(ids, kind="stable")
    return order[np.searchsorted(ids[order], wanted)]


def read_splits(meds_dir: Path, subject_id: np.ndarray, seed: int,
                warnings: list[str]) -> tuple[np.ndarray, str]:
    """(split code per stay, where the splits came from)."""
    import pyarrow.parquet as pq

    path = meds_dir / "metadata" / "subject_splits.parquet"
    ours = split_of_subjects(subject_id, seed)
    if not path.exists():
        return ours, f"ehrjepa subject hash, seed {seed} ({path} absent)"
    table = pq.read_table(path)
    for name in ("subject_id", "split"):
        if name not in table.column_names:
            raise ValueError(f"{path}: missing column {name!r}")
    names = table["split"].to_pylist()
    bad = sorted({n for n in names if n not in MEDS_SPLITS}, key=str)
    if bad:
        raise ValueError(f"{path}: unknown split {bad[0]!r} (expected train, tuning, held_out)")
    sid = table["subject_id"].to_numpy()
    code = np.array([MEDS_SPLITS[n] for n in names], np.int8)
    order = np.argsort(sid, kind="stable")
    pos = np.clip(np.searchsorted(sid[order], subject_id), 0, max(len(sid) - 1, 0))
    found = (sid[order][pos] == subject_id) if len(sid) else np.zeros(len(subject_id), bool)
    split = np.where(found, code[order][pos] if len(sid) else 0, ours).astype(np.int8)
    if (~found).any():
        warnings.append(f"{int((~found).sum())} stays' subjects are missing from {path}: "
                        f"split by the ehrjepa subject hash (seed {seed})")
    return split, str(path)


# -------------------------------------------------------------------------------------------------
# pass 2: the events


def iter_event_batches(pf, path: Path, codes, has_stay: bool, stats: TableStats, block_rows: int):
    """Blocks {column: ArrowColumn, "code_of": dictionary index -> position in `codes`}."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = ["subject_id", "time", "code", "numeric_value"] + ["icustay_id"] * has_stay
    empty = ArrowColumn(np.zeros(0, np.int64), _NO_BITS, 0, 1)
    for batch in _batches(pf, path, cols, block_rows, stats):
        code = _dictionary(batch.column("code"))
        code_of = pc.index_in(code.dictionary, value_set=codes).fill_null(-1)
        indices = code.indices.cast(pa.int64())
        block = {"code": arrow_column(indices, KIND_INT, path, "code"),
                 "code_of": code_of.to_numpy().astype(np.int64),
                 "icustay_id": empty}
        for name, kind in (("subject_id", KIND_INT), ("time", KIND_TIME),
                           ("numeric_value", KIND_FLOAT), ("icustay_id", KIND_INT)):
            if name in cols:
                block[name] = arrow_column(batch.column(name), kind, path, name)
        yield block


def preprocess_meds(meds_dir: str | Path, out: str | Path,
                    config: str | Path | Catalog | None = None, progress: bool = True,
                    seed: int = 0, options: ScanOptions = ScanOptions(),
                    phenotypes: str | Path | None = None, splits: str | Path | None = None) -> Path:
    """Turn the MEDS dataset at meds_dir into OUT (processed.py's format) through the shared run
    (build.py); returns OUT. phenotypes: the phenotype file (default: the repository's
    configs/phenotypes.yaml); splits: a --splits file (default: metadata/subject_splits.parquet
    where present, else the subject hash)."""
    from .preprocess import _import_numba_math_without_scipy

    _import_numba_math_without_scipy()
    return build(MedsSource(meds_dir, options, phenotypes), out, config, seed, splits, progress)


class MedsSource:
    """A MEDS dataset (build.py's source shape; module docstring)."""
    name = "meds"

    def __init__(self, meds_dir: str | Path, options: ScanOptions = ScanOptions(),
                 phenotypes: str | Path | None = None):
        self.meds_dir = Path(os.path.abspath(meds_dir))
        if not self.meds_dir.is_dir():
            raise FileNotFoundError(f"MEDS directory not found: {self.meds_dir}")
        self.inputs = [self.meds_dir]
        self.options = options
        self.pheno = load_phenotypes(phenotypes)
        self.shards = data_shards(self.meds_dir)

    def read_stays(self, catalog: Catalog, run: Run) -> StayTable:
        for note in getattr(self.shards, "notes", ()):
            run.warn(note)
        ev, codes, has_stay, has_hadm = read_stay_events(self.shards)
        st = TableStats("ICU_ADMISSION// and ICU_DISCHARGE// events")
        stay_dropped: dict[str, int] = {}
        stays, death, adm = build_stays(ev, has_stay, has_hadm, st, stay_dropped, run.warnings)
        stays_entry = {"rows_read": st.rows_read, "rows_kept": 2 * len(stays),
                       "dropped": stay_dropped,
                       "paired_by": "icustay_id" if has_stay else "time order per subject"}
        assert stays_entry["rows_kept"] + sum(stay_dropped.values()) == st.rows_read, stays_entry
        self.codes, self.has_stay = codes, has_stay
        self.lookup = catalog.meds_lookup(codes)
        for w in self.lookup.warnings:
            run.warn(w, echo=True)
        dx_entry: dict = {}
        labels = outcome_labels(stays, adm, ev, self.pheno[0], dx_entry)
        pheno_info = {"path": os.path.abspath(self.pheno[1]), "names": list(self.pheno[0])}
        if dx_entry["rows_read"] == 0:
            pheno_info["note"] = "no DIAGNOSIS// events: no phenotype columns"
        split, split_source = read_splits(self.meds_dir, stays.subject_id, run.seed,
                                          run.warnings)
        run.manifest |= {"meds_dir": str(self.meds_dir), "icu_stays": stays_entry,
                         "diagnoses": dx_entry, "phenotypes": pheno_info,
                         "meds_conventions": self.lookup.conventions()}
        return StayTable(stays, death, labels, static_columns(stays, ev), split=split,
                         split_source=split_source)

    def fold_events(self, catalog: Catalog, table: StayTable, sums: np.ndarray,
                    counts: np.ndarray, run: Run) -> None:
        import pyarrow as pa
        from tqdm.auto import tqdm

        total = np.zeros(len(REASONS), np.int64)
        total_read = total_kept = 0
        code_values = pa.array(self.codes, pa.string())
        bar = tqdm(total=len(self.shards), desc="meds shards", unit="shard",
                   disable=not run.progress, delay=0.5, leave=False)
        for path in self.shards:
            pf, shard_stay, _ = open_shard(path)
            st = TableStats(str(path))
            dropped = np.zeros(len(REASONS), np.int64)
            batches = iter_event_batches(pf, path, code_values, shard_stay and self.has_stay, st,
                                         self.options.parquet_block_rows)
            kept = aggregate_meds(path, batches, self.lookup.items, self.lookup.chart,
                                  table.stays, sums, counts, dropped, self.options)
            run.account(path.relative_to(self.meds_dir).as_posix(), path, st.rows_read, kept,
                        dict(zip(DROP_NAMES, dropped)))
            total += dropped
            total_read += st.rows_read
            total_kept += kept
            bar.update()
        bar.close()
        run.manifest["total"] = {"rows_read": total_read, "rows_kept": total_kept,
                                 "dropped": {n: int(d) for n, d in zip(DROP_NAMES, total)}}
