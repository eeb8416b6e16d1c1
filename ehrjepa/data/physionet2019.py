"""The PhysioNet/CinC 2019 challenge source (sepsis): .psv files -> stays, hourly events and
hourly labels.

Input (Reyna et al., "Early Prediction of Sepsis from Clinical Data: the PhysioNet/Computing in
Cardiology Challenge 2019", Critical Care Medicine 2020; the challenge's data description): one
pipe-separated file per ICU stay, `pNNNNNN.psv`, a header line of 41 columns and one row per hour
of the stay: 34 vital signs and laboratory values (HR ... Platelets), the demographics Age,
Gender (0 female, 1 male), Unit1 / Unit2 (medical / surgical ICU; NaN where unknown),
HospAdmTime (hours between hospital and ICU admission), ICULOS (hours since ICU admission) and
SepsisLabel. NaN is a missing value (an empty field too).

A PATH is a folder of .psv files (searched recursively), a `.tar.gz` / `.tgz` / `.tar` or a
`.zip` of one (read into memory, never unpacked to disk), or one .psv file. Other files are
passed over (counted as `other_files`), and so are macOS's `__MACOSX/` and `._*` companions.

Rules (docs/usage.md, "The PhysioNet 2019 challenge"; docs/DESIGN.md, "Hourly labels"):
- A stay is a file; stay_id and subject_id are the number of its name (`p000123.psv` is 123).
- Hours: row k of a file (after the header) is hour k of the stay. ICULOS must increase by one
  from row to row; it starts at 1 in 63 % of set A's files and later in the others (2 to 300+: the
  rows before were not released). No dates are given: the ICU admission is 1970-01-01 00:00, a
  stay's intime is its first row's ICULOS - 1 hours after it and its outtime n_rows hours after
  intime, so n_hours = n_rows and the first row's ICULOS is kept as the stay column
  `iculos_first`. los_days is outtime in days (the last row's ICULOS / 24).
- The 34 vital and laboratory columns become the catalog's features (`physionet2019:` names,
  converted: FiO2 is a fraction here, percent in the catalog) and are folded by
  events.fold_events, which drops values outside the feature's valid range (out_of_range).
- Age, Gender, Unit1/Unit2 and HospAdmTime become the stay columns age, sex, icu_type (Unit1 1:
  3 medical, Unit2 1: 4 surgical, the 2012 challenge's ICUType codes; null where unknown or
  both) and hosp_adm_hours, from the file's first row (a stay whose rows disagree is counted in
  a warning).
- SepsisLabel is kept per hour, not as a feature: the hourly label `sepsis_label` (OUT/
  hour_labels.npy, int8 1 / 0 / -1 for a row that was skipped). Per stay: `sepsis` (int8: 1 if
  any hour is labelled 1) and `sepsis_onset_hour` (float, null when never labelled): the first
  labelled hour + 6, the challenge's t_sepsis (it labels from 6 hours before the clinical onset).
  A stay labelled from its first row (203 in set A) gets onset hour 6: the onset was then at
  hour 6 or earlier. The onset hour may lie past the stay's last hour.
- Bad input stops the run with one line naming the file (`ARCHIVE:MEMBER` inside an archive)
  and line: a header that is not the challenge's 41 columns, a row with another number of
  fields, a value that is not a number, ICULOS not one more than the row before's, a SepsisLabel
  other than 0 or 1. With --on-bad-lines skip these rows are counted by reason (bad_line,
  non_numeric, bad_iculos, bad_label) and kept as empty hours (no values, label -1). An empty
  file (no data rows), two files for one stay (also across PATHs), a .psv whose name is not
  pNNN.psv and a truncated or corrupt archive always stop it.

Speed: an archive's bytes are inflated in one go (ISA-L), its tar headers walked by a numba
kernel and its members parsed where they lie in that buffer; one numba pass (`parse_psv`) reads
every row's 41 fields and writes (hour row, feature, converted value) events, the hourly labels
and the per-file descriptors; events.fold_events folds the events in.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numba as nb
import numpy as np

from .build import Run, StayTable
from .catalog import Catalog
from .events import REASONS, fold_events
from .readers import MISSING, TableStats
from .readers.archive import read_files
from .readers.fields import parse_float
from .stays import Stays

# the challenge's columns, in its files' order
VITALS = ("HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "EtCO2")
LABS = ("BaseExcess", "HCO3", "FiO2", "pH", "PaCO2", "SaO2", "AST", "BUN", "Alkalinephos",
        "Calcium", "Chloride", "Creatinine", "Bilirubin_direct", "Glucose", "Lactate",
        "Magnesium", "Phosphate", "Potassium", "Bilirubin_total", "TroponinI", "Hct", "Hgb",
        "PTT", "WBC", "Fibrinogen", "Platelets")
DEMOGRAPHICS = ("Age", "Gender", "Unit1", "Unit2", "HospAdmTime")
COLUMNS = VITALS + LABS + DEMOGRAPHICS + ("ICULOS", "SepsisLabel")
HEADER = "|".join(COLUMNS).encode()
MEASURED = VITALS + LABS  # the columns that can be features
ONSET_LEAD = 6  # SepsisLabel is 1 from t_sepsis - 6 h on
HOUR_LABEL = "sepsis_label"
STAY_FILE = re.compile(r"p(\d+)\.psv")
THREADS = 2  # chunks parsed and folded side by side
CHUNK_MIN_FILES = 256  # fewer files: one chunk

# parse_psv: status, error codes and the counts it keeps per group
OK, FULL_ROWS, FULL_EVENTS, ERROR = 0, 1, 2, 3
E_EMPTY, E_HEADER, E_FIELDS, E_NUMBER, E_ICULOS, E_LABEL = 1, 2, 3, 4, 5, 6
ROW_DROPS = ("bad_line", "non_numeric", "bad_iculos", "bad_label")  # E_FIELDS .. E_LABEL
(C_ROWS, C_KEPT, C_BAD_LINE, C_NON_NUMERIC, C_BAD_ICULOS, C_BAD_LABEL, C_VALUES,
 C_UNMAPPED) = range(8)
N_COUNTS = 8


# -------------------------------------------------------------------------------------------------
# reading PATHs: each is one group of .psv files in one byte buffer


@dataclass
class Group:
    """The .psv files of one PATH, in stay order: file k is buf[starts[k]:ends[k]]."""
    path: Path
    buf: np.ndarray  # uint8
    stay: np.ndarray  # int64 stay id per file
    names: list[str]  # each file's name as a message gives it (path, or ARCHIVE:MEMBER)
    starts: np.ndarray
    ends: np.ndarray
    other_files: int = 0
    parsed: dict = field(default_factory=dict)


def read_group(path: Path) -> Group:
    """The .psv files that PATH holds (module docstring); errors name the PATH."""
    name = path.name.lower()
    if path.is_dir() or (path.is_file() and name.endswith((".tar.gz", ".tgz", ".tar", ".zip"))):
        f = read_files(path, lambda member: not _passed_over(member))
        return _group(path, f.buf, f.names, f.starts, f.ends, f.other_files,
                      [m.rsplit("/", 1)[-1] for m in f.members])
    if not path.is_file():
        raise FileNotFoundError(f"--physionet2019 {path}: no such file or folder")
    if name.endswith(".psv"):
        return _group(path, np.frombuffer(path.read_bytes(), np.uint8), [str(path)],
                      [0], [path.stat().st_size], 0, [path.name])
    raise ValueError(f"--physionet2019 {path}: not a folder of .psv files, a .tar.gz, .tgz, .tar "
                     "or .zip of one, nor a .psv file")


def _passed_over(member: str) -> bool:
    """Not a stay file: not .psv, or macOS's companions (__MACOSX/, ._NAME)."""
    base = member.rsplit("/", 1)[-1]
    return (not base.endswith(".psv") or base.startswith("._")
            or member.startswith("__MACOSX/") or "/__MACOSX/" in member)


def _group(path: Path, buf: np.ndarray, names: list[str], starts, ends, other: int,
           basenames: list[str]) -> Group:
    """A Group in stay order; a .psv whose name is not pNNN.psv is an error naming it."""
    stay = np.empty(len(names), np.int64)
    for k, base in enumerate(basenames):
        m = STAY_FILE.fullmatch(base)
        if m is None or len(m.group(1)) > 18:
            raise ValueError(f"{names[k]}: not a stay file of the challenge (its name is not "
                             "p<digits>.psv, so its stay is unknown)")
        stay[k] = int(m.group(1))
    order = np.argsort(stay, kind="stable")
    return Group(path, buf, stay[order], [names[i] for i in order.tolist()],
                 np.asarray(starts, np.int64)[order], np.asarray(ends, np.int64)[order], other)


# -------------------------------------------------------------------------------------------------
# the row parser


@nb.njit(cache=True, nogil=True)
def parse_psv(buf, starts, ends, header, n_cols, feat, add, mul, measured, statics, iculos_col,
              label_col, skip_bad, f0, row0, n_out0, ev_row, ev_feat, ev_val, row_label,
              file_rows, file_first, file_static, file_varies, counts, err):
    """Every data row of files f0.. of buf (module docstring's rules), in one pass.

    Per row: its 41 fields (NaN for `NaN` or empty); a good row writes its label to
    row_label[row] and one event (row, feat[c], (value + add[c]) * mul[c]) per measured column c
    with a value and feat[c] >= 0 to ev_row / ev_feat / ev_val; a bad row (skip_bad) gets label
    -1 and no events. Per file: its rows, first ICULOS, the demographics of its first good row
    (`statics` columns) and whether a later row differs. counts (N_COUNTS) accumulate per file.

    Returns (status, file, row, n_out): OK when all files are done; FULL_ROWS / FULL_EVENTS
    when row_label / the event arrays are full, with the state at the start of that file (grow
    them and call again from there); ERROR with err = (code, file, line, column)."""
    n_files = starts.shape[0]
    n_stat = statics.shape[0]
    vals = np.empty(n_cols, np.float64)
    row = row0
    n_out = n_out0
    cap = ev_row.shape[0]
    rcap = row_label.shape[0]
    h_len = header.shape[0]
    local = np.zeros(N_COUNTS, np.int64)
    for f in range(f0, n_files):
        f_row = row
        f_out = n_out
        local[:] = 0
        s = starts[f]
        e = ends[f]
        i = s
        line = 0
        k = 0  # data rows
        base = np.int64(0)
        have_base = False
        first_good = True
        file_varies[f] = 0
        for j in range(n_stat):
            file_static[f, j] = np.nan
        # the header line
        j = i
        while j < e and buf[j] != 10:
            j += 1
        le = j
        if le > i and buf[le - 1] == 13:
            le -= 1
        if i < e:
            line = 1
            same = le - i == h_len
            if same:
                for t in range(h_len):
                    if buf[i + t] != header[t]:
                        same = False
                        break
            if not same:
                err[0] = E_HEADER
                err[1] = f
                err[2] = 1
                return ERROR, f, f_row, f_out
        i = j + 1
        # the data rows: fields are scanned once; `NaN` is recognised without a scan
        while i < e:
            line += 1
            if buf[i] == 10 or (buf[i] == 13 and i + 1 < e and buf[i + 1] == 10):  # blank
                i += 1 if buf[i] == 10 else 2
                continue
            if row >= rcap:
                return FULL_ROWS, f, f_row, f_out
            code = 0
            col = 0
            c = 0
            p = i
            while True:
                q = p + 3
                if p + 2 < e and buf[p] == 78 and buf[p + 1] == 97 and buf[p + 2] == 78 and (
                        q == e or buf[q] == 124 or buf[q] == 10
                        or (buf[q] == 13 and (q + 1 == e or buf[q + 1] == 10))):  # NaN
                    if q < e and buf[q] == 13:
                        q += 1
                    if c < n_cols:
                        vals[c] = np.nan
                else:
                    q = p
                    while q < e and buf[q] != 124 and buf[q] != 10:
                        q += 1
                    if c < n_cols:
                        fe = q
                        if fe > p and buf[fe - 1] == 13 and (q == e or buf[q] == 10):
                            fe -= 1
                        if fe == p:
                            vals[c] = np.nan
                        else:
                            v = parse_float(buf, p, fe)
                            if v != v and code == 0:
                                code = E_NUMBER
                                col = c
                            vals[c] = v
                c += 1
                if q >= e or buf[q] == 10:
                    i = q + 1
                    break
                p = q + 1
            if c != n_cols:
                code = E_FIELDS
                col = c
            if code == 0:
                x = vals[iculos_col]
                if not (x == np.floor(x) and abs(x) < 1e15):
                    code = E_ICULOS
                elif not have_base:
                    base = np.int64(x) - k
                    have_base = True
                elif np.int64(x) != base + k:
                    code = E_ICULOS
            if code == 0:
                y = vals[label_col]
                if y != 0.0 and y != 1.0:
                    code = E_LABEL
            local[C_ROWS] += 1
            if code != 0:
                if not skip_bad:
                    err[0] = code
                    err[1] = f
                    err[2] = line
                    err[3] = col
                    return ERROR, f, f_row, f_out
                local[C_BAD_LINE + code - E_FIELDS] += 1
                row_label[row] = -1
                row += 1
                k += 1
                continue
            local[C_KEPT] += 1
            row_label[row] = np.int8(vals[label_col])
            if first_good:
                for t in range(n_stat):
                    file_static[f, t] = vals[statics[t]]
                first_good = False
            else:
                for t in range(n_stat):
                    a = file_static[f, t]
                    b = vals[statics[t]]
                    if a != b and (a == a or b == b):
                        file_varies[f] = 1
            for t in range(measured.shape[0]):
                c = measured[t]
                v = vals[c]
                if v != v:
                    continue
                local[C_VALUES] += 1
                fc = feat[c]
                if fc < 0:
                    local[C_UNMAPPED] += 1
                    continue
                if n_out >= cap:
                    return FULL_EVENTS, f, f_row, f_out
                ev_row[n_out] = row
                ev_feat[n_out] = fc
                ev_val[n_out] = (v + add[c]) * mul[c]
                n_out += 1
            row += 1
            k += 1
        if line == 0 or k == 0:
            err[0] = E_EMPTY
            err[1] = f
            err[2] = line
            return ERROR, f, f_row, f_out
        file_rows[f] = k
        file_first[f] = base if have_base else 1
        for t in range(N_COUNTS):
            counts[t] += local[t]
    return OK, n_files, row, n_out


# -------------------------------------------------------------------------------------------------
# the source


class Physionet2019Source:
    """Stays of the PhysioNet/CinC 2019 challenge (build.py's source shape; module docstring)."""
    name = "physionet2019"

    def __init__(self, paths: list[str | Path], on_bad_lines: str = "error"):
        if on_bad_lines not in ("error", "skip"):
            raise ValueError(f"on_bad_lines must be 'error' or 'skip', not {on_bad_lines!r}")
        if isinstance(paths, (str, Path)):
            paths = [paths]
        self.paths = [Path(os.path.abspath(p)) for p in paths]
        for p in self.paths:
            if not p.exists():
                raise FileNotFoundError(f"--physionet2019 {p}: no such file or folder")
        twice = sorted({str(p) for p in self.paths if self.paths.count(p) > 1})
        if twice:
            raise ValueError(f"--physionet2019 {twice[0]} is given twice")
        self.on_bad_lines = on_bad_lines
        self.inputs = list(self.paths)

    # ---- the stay table

    def read_stays(self, catalog: Catalog, run: Run) -> StayTable:
        t0 = time.perf_counter()
        groups = [read_group(p) for p in self.paths]
        run.seconds["read"] = time.perf_counter() - t0
        _check_one_file_per_stay(groups)
        if not any(len(g.stay) for g in groups):
            raise ValueError(f"--physionet2019 {' '.join(map(str, self.paths))}: no .psv files")
        for g in groups:
            if not len(g.stay):
                run.warn(f"{g.path}: no .psv files", echo=True)
        feat, add, mul = self._columns(catalog)
        t0 = time.perf_counter()
        for g in groups:
            g.parsed = self._parse_group(g, feat, add, mul)
        run.seconds["parse"] = time.perf_counter() - t0
        self.groups = groups

        stay = np.concatenate([g.stay for g in groups])
        rows = np.concatenate([g.parsed["rows"] for g in groups])
        first = np.concatenate([g.parsed["first"] for g in groups])
        static = np.concatenate([g.parsed["static"] for g in groups])
        varies = np.concatenate([g.parsed["varies"] for g in groups])
        n = len(stay)
        intime = (first - 1) * 3600
        cols = {"stay_id": stay, "subject_id": stay, "hadm_id": np.full(n, MISSING, np.int64),
                "intime": intime, "outtime": intime + rows * 3600}
        drops = {"bad_id": 0, "bad_timestamp": 0, "outtime_before_intime": 0,
                 "duplicate_stay": 0}
        stays = Stays(cols, TableStats("physionet2019"), drops)
        if len(stays) != n or any(drops.values()):  # ids and times are ours: a bug, not input
            raise AssertionError(f"physionet2019: stays dropped {drops}")
        # rows: from the groups' order (concatenated) to the stays' (stay id) order
        pos = np.searchsorted(stays.stay_id, stay)
        shift = stays.offset[pos] - (np.cumsum(rows) - rows)
        self.row_map = None if not shift.any() else \
            np.repeat(shift, rows) + np.arange(stays.total_hours, dtype=np.int64)
        hour_label = np.concatenate([g.parsed["label"] for g in groups])
        if self.row_map is not None:
            hour_label = _scatter(hour_label, self.row_map)
        static, varies, first = static[np.argsort(pos)], varies[np.argsort(pos)], first[np.argsort(pos)]

        columns = self._demographics(static, run)
        if varies.any():
            run.warn(f"{int(varies.sum())} stays have rows whose Age, Gender, Unit1, Unit2 or "
                     "HospAdmTime differ from their first row's: the first row's are kept")
        sepsis, onset, relabelled = sepsis_per_stay(hour_label, stays.offset, stays.n_hours)
        if relabelled:
            run.warn(f"{relabelled} stays have a SepsisLabel 0 after a 1 (the challenge labels "
                     "every hour from 6 h before the onset on): sepsis_onset_hour is the first "
                     "labelled hour + 6")
        columns |= {"iculos_first": first.astype(np.int64), "sepsis_onset_hour": onset}
        run.manifest["sepsis"] = {
            "stays": int((sepsis == 1).sum()), "labelled_hours": int((hour_label == 1).sum()),
            "labelled_from_first_hour": int(np.sum(onset == ONSET_LEAD)),
            "onset_hour": f"first labelled hour + {ONSET_LEAD} (the challenge's t_sepsis)"}
        return StayTable(stays, np.full(n, -1, np.int8), {"sepsis": sepsis}, columns,
                         los_days=stays.outtime / 86400.0,
                         hour_labels={HOUR_LABEL: hour_label})

    def _columns(self, catalog: Catalog):
        """feat, add, mul per challenge column (feat -1: not a feature of the catalog)."""
        params = catalog.params(self.name)
        unknown = [p for p in params if p not in MEASURED]
        if unknown:
            raise ValueError(f"{catalog.path}: physionet2019 column {unknown[0]!r} is not a vital "
                             f"sign or laboratory column of the challenge ({', '.join(MEASURED)})")
        feat = np.full(len(COLUMNS), -1, np.int64)
        add = np.zeros(len(COLUMNS))
        mul = np.ones(len(COLUMNS))
        for name, (col, a, m) in params.items():
            c = COLUMNS.index(name)
            feat[c], add[c], mul[c] = col, a, m
        return feat, add, mul

    def _parse_group(self, g: Group, feat, add, mul) -> dict:
        """parse_psv over the group's files, in THREADS chunks of about equal bytes side by side
        (the kernel releases the GIL); the per-file results joined, the events left per chunk
        (`chunks`: each with `base`, its first row in the group)."""
        n_files = len(g.stay)
        sizes = np.cumsum(g.ends - g.starts)
        n_chunks = THREADS if n_files >= CHUNK_MIN_FILES else 1
        cuts = [0] + [int(np.searchsorted(sizes, sizes[-1] * k / n_chunks))
                      for k in range(1, n_chunks)] + [n_files]
        spans = [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a] or [(0, n_files)]
        if len(spans) == 1:
            chunks = [self._parse(g, 0, n_files, feat, add, mul)]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(spans)) as pool:
                futures = [pool.submit(self._parse, g, a, b, feat, add, mul) for a, b in spans]
                chunks = [f.result() for f in futures]  # the first chunk's error first
        base = 0
        for c in chunks:
            c["base"] = base
            base += len(c["label"])
        out = {k: np.concatenate([c[k] for c in chunks])
               for k in ("rows", "first", "static", "varies", "label")}
        out["counts"] = np.sum([c["counts"] for c in chunks], axis=0)
        out["chunks"] = [{k: c[k] for k in ("base", "ev_row", "ev_feat", "ev_val")}
                         for c in chunks]
        return out

    def _parse(self, g: Group, lo: int, hi: int, feat, add, mul) -> dict:
        """parse_psv over files [lo, hi) of g, growing its output arrays as it asks."""
        n_files = hi - lo
        starts, ends = g.starts[lo:hi], g.ends[lo:hi]
        size = int((ends - starts).sum())
        ev = [np.empty(size // 24 + 1024, np.int64), np.empty(size // 24 + 1024, np.int32),
              np.empty(size // 24 + 1024, np.float64)]
        label = np.empty(size // 150 + n_files + 16, np.int8)
        rows = np.zeros(n_files, np.int64)
        first = np.zeros(n_files, np.int64)
        static = np.full((n_files, len(DEMOGRAPHICS)), np.nan)
        varies = np.zeros(n_files, np.uint8)
        counts = np.zeros(N_COUNTS, np.int64)
        err = np.zeros(4, np.int64)
        measured = np.array([COLUMNS.index(c) for c in MEASURED], np.int64)
        statics = np.array([COLUMNS.index(c) for c in DEMOGRAPHICS], np.int64)
        header = np.frombuffer(HEADER, np.uint8)
        f, row, n_out = 0, 0, 0
        while True:
            status, f, row, n_out = parse_psv(
                g.buf, starts, ends, header, len(COLUMNS), feat, add, mul, measured, statics,
                COLUMNS.index("ICULOS"), COLUMNS.index("SepsisLabel"),
                self.on_bad_lines == "skip", f, row, n_out, ev[0], ev[1], ev[2], label, rows,
                first, static, varies, counts, err)
            if status == FULL_ROWS:
                label = _grown(label, row)
            elif status == FULL_EVENTS:
                ev = [_grown(a, n_out) for a in ev]
            elif status == ERROR:
                err[1] += lo
                raise ValueError(self._error(g, err))
            else:
                break
        return {"rows": rows, "first": first, "static": static, "varies": varies.astype(bool),
                "label": label[:row], "ev_row": ev[0][:n_out], "ev_feat": ev[1][:n_out],
                "ev_val": ev[2][:n_out], "counts": counts}

    def _error(self, g: Group, err: np.ndarray) -> str:
        code, f, line, col = (int(x) for x in err)
        where = f"{g.names[f]}: line {line}"
        if code == E_EMPTY:
            return (f"{g.names[f]}: empty file (no data rows; expected the header line and one "
                    "row per hour)")
        if code == E_HEADER:
            text = bytes(g.buf[g.starts[f]:g.ends[f]]).split(b"\n", 1)[0].rstrip(b"\r")
            got = text.decode("utf-8", "replace").split("|")
            k = next((i for i, (a, b) in enumerate(zip(got, COLUMNS)) if a != b),
                     min(len(got), len(COLUMNS)))
            what = (f"column {k + 1} is {got[k]!r}, expected {COLUMNS[k]!r}" if k < len(got)
                    and k < len(COLUMNS) else f"{len(got)} columns, expected {len(COLUMNS)}")
            return f"{where}: the header differs from the challenge's 41 columns ({what})"
        text = _line(g, f, line)
        fields = text.split("|")
        hint = "; fix the file or pass --on-bad-lines skip to count such rows"
        if code == E_FIELDS:
            return f"{where}: {len(fields)} fields, expected {len(COLUMNS)}{hint}"
        if code == E_NUMBER:
            return (f"{where}: column {COLUMNS[col]} is {fields[col]!r}, not a number (NaN is "
                    f"missing){hint}")
        if code == E_ICULOS:
            return (f"{where}: ICULOS {fields[COLUMNS.index('ICULOS')]!r} is not one more than "
                    f"the row before's (one row per hour){hint}")
        return (f"{where}: SepsisLabel {fields[COLUMNS.index('SepsisLabel')]!r} is not 0 or 1"
                f"{hint}")

    def _demographics(self, static: np.ndarray, run: Run) -> dict[str, np.ndarray]:
        age, gender, unit1, unit2, hosp = (static[:, k] for k in range(len(DEMOGRAPHICS)))
        sex = np.where((gender == 0) | (gender == 1), gender, np.nan)
        odd = int((~np.isnan(gender) & np.isnan(sex)).sum())
        if odd:
            run.warn(f"{odd} stays have a Gender other than 0 or 1: sex null")
        medical, surgical = unit1 == 1, unit2 == 1
        icu_type = np.where(medical & ~surgical, 3.0, np.where(surgical & ~medical, 4.0, np.nan))
        both = int((medical & surgical).sum())
        if both:
            run.warn(f"{both} stays have Unit1 and Unit2 both 1: icu_type null")
        return {"age": age, "sex": sex, "icu_type": icu_type, "hosp_adm_hours": hosp}

    # ---- the events

    def fold_events(self, catalog: Catalog, table: StayTable, sums: np.ndarray,
                    counts: np.ndarray, run: Run) -> None:
        low, high = catalog.valid_ranges()
        agg = catalog.aggregation_codes()
        total = {"rows_read": 0, "rows_kept": 0, "dropped": dict.fromkeys(ROW_DROPS, 0),
                 "files": 0, "other_files": 0,
                 "values": {"rows_read": 0, "rows_kept": 0,
                            "dropped": {"not_a_feature": 0, "out_of_range": 0,
                                        "count_saturated": 0}}}
        t0 = time.perf_counter()
        row_map = self.row_map

        def fold(chunk: dict, base: int) -> tuple[int, np.ndarray]:
            rows = chunk["ev_row"] + base if base else chunk["ev_row"]
            if row_map is not None:
                rows = row_map[rows]
            dropped = np.zeros(len(REASONS), np.int64)
            kept = fold_events(rows, chunk["ev_feat"], chunk["ev_val"], len(rows), agg, low,
                               high, sums, counts, dropped)
            return kept, dropped

        # every chunk's events lie in rows of its own files: chunks fold side by side safely
        tasks, base = [], 0
        for k, g in enumerate(self.groups):
            tasks += [(k, c, base + c["base"]) for c in g.parsed["chunks"]]
            base += len(g.parsed["label"])
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(THREADS) as pool:
            folded = list(pool.map(lambda t: fold(t[1], t[2]), tasks))
        keys = _group_keys([g.path for g in self.groups])
        for k, (key, g) in enumerate(zip(keys, self.groups)):
            mine = [r for t, r in zip(tasks, folded) if t[0] == k]
            kept = sum(r[0] for r in mine)
            dropped = np.sum([r[1] for r in mine], axis=0) if mine \
                else np.zeros(len(REASONS), np.int64)
            p = g.parsed
            c = p["counts"]
            row_drops = {r: int(c[C_BAD_LINE + k]) for k, r in enumerate(ROW_DROPS)}
            entry = run.account(key, g.path, int(c[C_ROWS]), int(c[C_KEPT]), row_drops)
            values = {"not_a_feature": int(c[C_UNMAPPED]),
                      "out_of_range": int(dropped[REASONS.index("out_of_range")]),
                      "count_saturated": int(dropped[REASONS.index("count_saturated")])}
            if kept + sum(values.values()) != c[C_VALUES]:
                raise AssertionError(f"{g.path}: values kept {kept} + dropped {values} != read "
                                     f"{int(c[C_VALUES])}")
            entry |= {"files": len(g.stay), "other_files": g.other_files,
                      "values": {"rows_read": int(c[C_VALUES]), "rows_kept": int(kept),
                                 "dropped": values}}
            for k in ("rows_read", "rows_kept", "files", "other_files"):
                total[k] += entry[k]
            for r, v in row_drops.items():
                total["dropped"][r] += v
            total["values"]["rows_read"] += int(c[C_VALUES])
            total["values"]["rows_kept"] += int(kept)
            for r, v in values.items():
                total["values"]["dropped"][r] += v
            g.parsed = {}
        run.manifest["total"] = total
        run.manifest["hours"] = ("row k of a file is hour k; intime = (first ICULOS - 1) h after "
                                 "1970-01-01 00:00, outtime = intime + rows h")
        run.seconds["fold"] = time.perf_counter() - t0
        if total["rows_read"] > total["rows_kept"]:
            run.warn(f"{total['rows_read'] - total['rows_kept']} rows skipped (--on-bad-lines "
                     "skip): " + ", ".join(f"{k} {v}" for k, v in total["dropped"].items() if v)
                     + "; their hours are empty, label -1")
        del self.groups, self.row_map


# -------------------------------------------------------------------------------------------------
# helpers


def _check_one_file_per_stay(groups: list[Group]) -> None:
    """Two files for one stay (in one PATH or two) are an error naming both."""
    stay = np.concatenate([g.stay for g in groups]) if groups else np.zeros(0, np.int64)
    which = np.concatenate([np.full(len(g.stay), k) for k, g in enumerate(groups)]) \
        if groups else np.zeros(0, np.int64)
    at = np.concatenate([np.arange(len(g.stay)) for g in groups]) if groups else which
    order = np.argsort(stay, kind="stable")
    twice = np.flatnonzero(stay[order][1:] == stay[order][:-1])
    if len(twice):
        a, b = order[twice[0]], order[twice[0] + 1]
        raise ValueError(f"stay {stay[a]} has two files: {groups[which[a]].names[at[a]]} and "
                         f"{groups[which[b]].names[at[b]]}")


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    out = np.empty(max(2 * len(a), 1024), a.dtype)
    out[:n] = a[:n]
    return out


def _scatter(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    out[where] = values
    return out


def _line(g: Group, f: int, line: int) -> str:
    text = bytes(g.buf[g.starts[f]:g.ends[f]]).split(b"\n")
    return text[line - 1].rstrip(b"\r").decode("utf-8", "replace") if line <= len(text) else ""


def _group_keys(paths: list[Path]) -> list[str]:
    """The manifest's name of each PATH: its file or folder name, the path where two share it."""
    names = [p.name for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths)]


def sepsis_per_stay(hour_label: np.ndarray, offset: np.ndarray, n_hours: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """(sepsis int8 per stay: 1 if any hour is labelled 1, 0 if some hour is known and none is
    1, -1 if no hour's label is known; sepsis_onset_hour float per stay: the first labelled hour
    + ONSET_LEAD, NaN where none; the number of stays with a 0 after a 1)."""
    n = len(offset)
    stay_of = np.repeat(np.arange(n), n_hours)
    hour = np.arange(len(hour_label)) - np.repeat(offset, n_hours)
    pos = hour_label == 1
    sepsis = np.full(n, -1, np.int8)
    known = np.zeros(n, bool)
    known[stay_of[hour_label >= 0]] = True
    sepsis[known] = 0
    sepsis[stay_of[pos]] = 1
    onset = np.full(n, np.nan)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, stay_of[pos], hour[pos])
    has = first < np.iinfo(np.int64).max
    onset[has] = first[has] + ONSET_LEAD
    # a 0 after the first 1
    zero_after = (hour_label == 0) & has[stay_of] & (hour > np.where(has, first, 0)[stay_of])
    return sepsis, onset, int(len(np.unique(stay_of[zero_after])))
