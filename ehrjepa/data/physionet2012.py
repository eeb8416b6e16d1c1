"""The PhysioNet/CinC 2012 challenge source: set files and Outcomes -> stays and hourly events.

Input (Silva et al., Computing in Cardiology 2012, as PhysioNet distributes it): one text file
per ICU stay, `Time,Parameter,Value` lines, Time `hh:mm` since ICU admission (00:00-48:00). The
first lines are the general descriptors RecordID, Age, Gender (0 female, 1 male), Height (cm),
ICUType (1 coronary care, 2 cardiac surgery recovery, 3 medical, 4 surgical) and Weight (kg),
-1 where unknown; the other lines are the 36 time series and Weight again when it changes.
`Outcomes-X.txt`: RecordID, SAPS-I, SOFA, Length_of_stay (days), Survival (days, -1 alive),
In-hospital_death.

A PATH is a set folder (`set-a/`), a set tarball (`set-a.tar.gz`, read as a stream, never
unpacked to disk), or a folder holding either; a set's outcomes are `Outcomes-X.txt` beside it
(X the set's letter; `set-a` -> `Outcomes-a.txt`).

Rules (docs/usage.md, "The PhysioNet 2012 challenge"):
- A stay is a file; stay_id and subject_id are its RecordID. Every stay has 48 hours: hour h
  holds times [h:00, h+1:00), and 48:00 (the end of the challenge's 48 hours) falls in hour 47.
  No dates are given: intime is 1970-01-01 00:00, outtime 48 hours later.
- The descriptors become stay columns (age, sex, height_cm, icu_type, weight_kg: the
  descriptor Weight, else the first Weight line; null where -1). Time-series lines become
  events of the catalog's features (`physionet2012:` names, converted, kept inside the
  feature's valid range), folded by events.fold_events under each feature's aggregation.
- Labels: death_hosp (In-hospital_death), los_days (Length_of_stay: hospital days from ICU
  admission, not the ICU stay's length as for MIMIC-IV; null where -1), and the stay columns
  saps1, sofa (null where -1), survival_days (null where -1: alive at the end), set.
- Bad input: a line that is not `hh:mm,name,value`, a time past 48:00, a non-numeric value or
  an empty or unknown parameter name stops the run with the file and line (counted by reason
  with --on-bad-lines skip); a file whose RecordID disagrees with its name, the same RecordID
  twice, an empty set and a truncated tarball always stop it. Outcomes rows without a file and
  files without an Outcomes row are counted and warned about (labels -1); a missing Outcomes
  file leaves the set's labels unknown, with a warning.
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
from .readers import MISSING
from .readers.archive import read_files
from .readers.fields import parse_float
from .stays import Stays

HOURS = 48
DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
HEADER = b"Time,Parameter,Value"
# per-line status codes of the line parser (S_OK: an event or a descriptor), and the faults of a
# file that scan_set reports
(S_OK, S_BAD_LINE, S_BAD_TIME, S_LATE, S_NO_NAME, S_UNKNOWN, S_BAD_VALUE, S_NO_VALUE,
 S_HEADER, S_NO_HEADER, S_REPEATED, S_RECORD) = range(12)
PROBLEMS = {S_BAD_LINE: "not a `hh:mm,parameter,value` line", S_BAD_TIME: "time is not hh:mm",
            S_LATE: "time past 48:00", S_NO_NAME: "empty parameter name",
            S_UNKNOWN: "unknown parameter", S_BAD_VALUE: "value is not a number",
            S_NO_VALUE: "empty value", S_REPEATED: "descriptor given twice"}
# drop reasons of the lines, in the manifest (scan_set counts the first five; fold_events the rest)
DROPS = ("bad_line", "outside_stay", "unknown_parameter", "no_value", "repeated_descriptor",
         "out_of_range", "count_saturated")
D_BAD_LINE, D_OUTSIDE, D_UNKNOWN, D_NO_VALUE, D_REPEATED = range(5)
WEIGHT = DESCRIPTORS.index("Weight")
SET_NAME = re.compile(r"set-([A-Za-z0-9]+)")
RECORD_FILE = re.compile(r"(\d+)\.txt")


@dataclass
class SetInput:
    """One set: where its stay files are (a folder or a tarball) and its Outcomes file."""
    name: str  # "a"
    path: Path
    outcomes: Path | None


@dataclass
class SetText:
    """The files of one set, concatenated: file k is buf[starts[k]:ends[k]]."""
    name: str
    path: Path
    record: np.ndarray  # int64 RecordID from each file's name
    names: list[str]
    buf: np.ndarray  # uint8
    starts: np.ndarray
    ends: np.ndarray


def find_sets(paths: list[str | Path]) -> list[SetInput]:
    """The sets the PATHs name (module docstring); errors name the PATH."""
    sets: list[SetInput] = []
    for p in paths:
        p = Path(os.path.abspath(p))
        if not p.exists():
            raise FileNotFoundError(f"--physionet2012 {p}: no such file or folder")
        if p.is_file():
            sets.append(_set_input(p))
        elif any(RECORD_FILE.fullmatch(c.name) for c in p.iterdir()):
            sets.append(_set_input(p))
        else:
            found = sorted(c for c in p.iterdir() if SET_NAME.fullmatch(_stem(c))
                           and (c.is_dir() or c.name.endswith((".tar.gz", ".tgz", ".tar"))))
            by_name: dict[str, Path] = {}
            for c in found:  # a folder and its tarball side by side: the folder
                by_name.setdefault(_stem(c), c) if not c.is_dir() else by_name.update({_stem(c): c})
            if not by_name:
                if SET_NAME.fullmatch(p.name):
                    raise ValueError(f"--physionet2012 {p}: empty set (no RecordID.txt files)")
                raise ValueError(f"--physionet2012 {p}: no set here (set-X/ folders, "
                                 "set-X.tar.gz tarballs or RecordID.txt files)")
            sets += [_set_input(c) for _, c in sorted(by_name.items())]
    names = [s.name for s in sets]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"--physionet2012: set-{twice[0]} is given twice")
    return sets


def _stem(p: Path) -> str:
    name = p.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def _set_input(p: Path) -> SetInput:
    m = SET_NAME.fullmatch(_stem(p))
    name = m.group(1) if m else _stem(p)
    outcomes = p.parent / f"Outcomes-{name}.txt"
    return SetInput(name, p, outcomes if outcomes.is_file() else None)


def read_set(s: SetInput) -> SetText:
    """The RecordID.txt files of a set folder or tarball (readers/archive.py: a tarball is read
    in memory, its members used where they lie in it), in RecordID order."""
    f = read_files(s.path, lambda member: RECORD_FILE.fullmatch(member.rsplit("/", 1)[-1])
                   is not None)
    if not f.members:
        raise ValueError(f"{s.path}: empty set (no RecordID.txt files)")
    names = [m.rsplit("/", 1)[-1] for m in f.members]
    record = np.array([int(RECORD_FILE.fullmatch(n).group(1)) for n in names], np.int64)
    order = np.argsort(record, kind="stable")
    return SetText(s.name, s.path, record[order], [names[i] for i in order.tolist()], f.buf,
                   f.starts[order], f.ends[order])


# -------------------------------------------------------------------------------------------------
# the line parser


def parameter_table(names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(name bytes, start, end, slots): an open-addressed hash table of the parameter names
    (slots[h] = name index or -1) for parse_lines."""
    enc = [n.encode() for n in names]
    data = np.frombuffer(b"".join(enc), np.uint8) if enc else np.zeros(0, np.uint8)
    ends = np.cumsum([len(e) for e in enc]).astype(np.int64)
    starts = ends - np.array([len(e) for e in enc], np.int64)
    size = 1
    while size < 4 * max(len(enc), 1):
        size *= 2
    slots = np.full(size, -1, np.int64)
    for k, e in enumerate(enc):
        h = _hash(np.frombuffer(e, np.uint8), 0, len(e)) & (size - 1)
        while slots[h] >= 0:
            h = (h + 1) & (size - 1)
        slots[h] = k
    return data.copy(), starts, ends, slots


@nb.njit(cache=True, inline="always")
def _hash(buf, s, e):
    h = 5381
    for i in range(s, e):
        h = (h * 33 + buf[i]) & 0x7FFFFFFF
    return h


@nb.njit(cache=True, inline="always")
def _name_index(buf, s, e, data, starts, ends, slots):
    size = slots.shape[0]
    h = _hash(buf, s, e) & (size - 1)
    while True:
        k = slots[h]
        if k < 0:
            return -1
        if ends[k] - starts[k] == e - s:
            same = True
            for i in range(e - s):
                if data[starts[k] + i] != buf[s + i]:
                    same = False
                    break
            if same:
                return k
        h = (h + 1) & (size - 1)


@nb.njit(cache=True, nogil=True)
def scan_set(buf, starts, ends, record, data, nstarts, nends, slots, col, add, mul, skip_bad,
             ev_file, ev_hour, ev_feat, ev_val, desc, first_weight, dropped, fault):
    """Every line of every file of a set, in one pass: the descriptors into desc[k] (RecordID,
    Age, Gender, Height, ICUType: the file's first line of each; Weight: its first line at
    00:00), the time series as events (file, hour, feature column, converted value) with 48:00
    in hour 47, the first positive time-series Weight per file, and bad lines dropped by reason
    (skip_bad) or reported: fault = (file, line, status) of the first problem, and the scan
    stops. A missing header line and a RecordID that disagrees with the file's name always stop
    it. Returns (events, lines read without the headers, descriptor lines)."""
    n_ev = 0
    n_lines = 0
    n_desc = 0
    seen = np.zeros(WEIGHT + 1, np.bool_)
    for k in range(starts.shape[0]):
        i = starts[k]
        end = ends[k]
        line_no = 0
        seen[:] = False
        while i < end:
            j = i
            while j < end and buf[j] != 10:
                j += 1
            e = j
            if e > i and buf[e - 1] == 13:
                e -= 1
            line_no += 1
            s = i
            i = j + 1
            if e <= s:
                continue
            status, minute, p, v = _parse_line(buf, s, e, line_no, data, nstarts, nends, slots)
            if status == S_HEADER:
                continue
            if line_no == 1:
                fault[0], fault[1], fault[2] = k, line_no, S_NO_HEADER
                return n_ev, n_lines, n_desc
            n_lines += 1
            if status != S_OK:
                if not skip_bad:
                    fault[0], fault[1], fault[2] = k, line_no, status
                    return n_ev, n_lines, n_desc
                if status == S_LATE:
                    dropped[D_OUTSIDE] += 1
                elif status == S_NO_NAME or status == S_UNKNOWN:
                    dropped[D_UNKNOWN] += 1
                elif status == S_NO_VALUE:
                    dropped[D_NO_VALUE] += 1
                else:
                    dropped[D_BAD_LINE] += 1
                continue
            if p < WEIGHT or (p == WEIGHT and minute == 0 and not seen[WEIGHT]):
                if seen[p]:
                    if not skip_bad:
                        fault[0], fault[1], fault[2] = k, line_no, S_REPEATED
                        return n_ev, n_lines, n_desc
                    dropped[D_REPEATED] += 1
                    continue
                seen[p] = True
                desc[k, p] = v
                n_desc += 1
                if p == 0 and v != record[k]:
                    fault[0], fault[1], fault[2], fault[3] = k, line_no, S_RECORD, np.int64(v)
                    return n_ev, n_lines, n_desc
                continue
            if p == WEIGHT and v > 0 and first_weight[k] != first_weight[k]:
                first_weight[k] = v
            ev_file[n_ev] = k
            ev_hour[n_ev] = min(minute // 60, HOURS - 1)
            ev_feat[n_ev] = col[p]
            ev_val[n_ev] = (v + add[p]) * mul[p]
            n_ev += 1
    return n_ev, n_lines, n_desc


@nb.njit(cache=True, inline="always")
def _parse_line(buf, s, e, line_no, data, nstarts, nends, slots):
    """(status, minutes since admission, parameter index, value) of the line buf[s:e]."""
    c1 = s
    while c1 < e and buf[c1] != 44:
        c1 += 1
    c2 = c1 + 1
    while c2 < e and buf[c2] != 44:
        c2 += 1
    if c1 >= e or c2 >= e:
        return S_BAD_LINE, -1, -1, np.nan
    for t in range(c2 + 1, e):
        if buf[t] == 44:
            return S_BAD_LINE, -1, -1, np.nan
    if line_no == 1 and c1 - s == 4 and buf[s] == 84:  # "Time,..." : the header
        return S_HEADER, -1, -1, np.nan
    # hh:mm
    colon = s
    while colon < c1 and buf[colon] != 58:
        colon += 1
    if colon == s or colon >= c1 - 1 or c1 - colon - 1 != 2:
        return S_BAD_TIME, -1, -1, np.nan
    hh = 0
    for t in range(s, colon):
        d = buf[t] - 48
        if d < 0 or d > 9:
            return S_BAD_TIME, -1, -1, np.nan
        hh = hh * 10 + d
    mm = 0
    for t in range(colon + 1, c1):
        d = buf[t] - 48
        if d < 0 or d > 9:
            return S_BAD_TIME, -1, -1, np.nan
        mm = mm * 10 + d
    if mm > 59 or hh > 99:
        return S_BAD_TIME, -1, -1, np.nan
    minute = hh * 60 + mm
    if minute > HOURS * 60:
        return S_LATE, minute, -1, np.nan
    if c2 == c1 + 1:
        return S_NO_NAME, minute, -1, np.nan
    p = _name_index(buf, c1 + 1, c2, data, nstarts, nends, slots)
    if p < 0:
        return S_UNKNOWN, minute, p, np.nan
    if c2 + 1 >= e:
        return S_NO_VALUE, minute, p, np.nan
    v = parse_float(buf, c2 + 1, e)
    if v != v:
        return S_BAD_VALUE, minute, p, np.nan
    return S_OK, minute, p, v


# -------------------------------------------------------------------------------------------------
# the source


@dataclass
class _Scanned:
    """What scan_set found in one set."""
    text: SetText
    lines: int  # lines read (headers aside)
    n_desc: int  # descriptor lines
    file: np.ndarray  # per event
    hour: np.ndarray
    feature: np.ndarray
    value: np.ndarray
    desc: np.ndarray  # float64 [files, 6]: DESCRIPTORS' values, NaN where a file lacks one
    first_weight: np.ndarray  # float64 per file: the first positive time-series Weight
    dropped: dict = field(default_factory=dict)


class Physionet2012Source:
    """Sets of the PhysioNet/CinC 2012 challenge (build.py's source shape; module docstring)."""
    name = "physionet2012"

    def __init__(self, paths: list[str | Path], on_bad_lines: str = "error"):
        if on_bad_lines not in ("error", "skip"):
            raise ValueError(f"on_bad_lines must be 'error' or 'skip', not {on_bad_lines!r}")
        self.sets = find_sets(paths)
        self.on_bad_lines = on_bad_lines
        self.inputs = [s.path for s in self.sets] + [s.outcomes for s in self.sets if s.outcomes]

    def read_stays(self, catalog: Catalog, run: Run) -> StayTable:
        params = catalog.params(self.name)
        names = list(DESCRIPTORS) + [p for p in params if p not in DESCRIPTORS]
        col = np.full(len(names), -1, np.int64)
        add, mul = np.zeros(len(names)), np.ones(len(names))
        for k, name in enumerate(names):
            if name in params:
                col[k], add[k], mul[k] = params[name]
        table = parameter_table(names)
        t0 = time.perf_counter()
        self.parsed = [self._scan(read_set(s), table, col, add, mul) for s in self.sets]
        run.seconds["read"] = time.perf_counter() - t0
        record = np.concatenate([p.text.record for p in self.parsed])
        set_of = np.concatenate([np.full(len(p.text.record), k) for k, p in enumerate(self.parsed)])
        order = np.argsort(record, kind="stable")
        twice = np.flatnonzero(record[order][1:] == record[order][:-1])
        if len(twice):
            a, b = order[twice[0]], order[twice[0] + 1]
            raise ValueError(f"RecordID {record[a]} is in {self._where(set_of[a], a)} and in "
                             f"{self._where(set_of[b], b)}")
        n = len(record)
        cols = {"stay_id": record, "subject_id": record, "hadm_id": np.full(n, MISSING, np.int64),
                "intime": np.zeros(n, np.int64), "outtime": np.full(n, HOURS * 3600, np.int64)}
        stats_drop = {"bad_id": 0, "bad_timestamp": 0, "outtime_before_intime": 0,
                      "duplicate_stay": 0}
        from .readers import TableStats

        stays = Stays(cols, TableStats("physionet2012"), stats_drop)
        self.row_of_file = [np.searchsorted(stays.stay_id, p.text.record) for p in self.parsed]
        columns = self._descriptors(stays, run)
        death, los, extra = self._outcomes(stays, run)
        names = ["" for _ in range(n)]
        for k, p in enumerate(self.parsed):
            for r in self.row_of_file[k].tolist():
                names[r] = p.text.name
        columns |= extra | {"set": names}
        return StayTable(stays, death, {}, columns, los_days=los)

    def _where(self, k: int, flat: int) -> str:
        offset = sum(len(p.text.record) for p in self.parsed[:k])
        p = self.parsed[k]
        return f"{p.text.path}:{p.text.names[flat - offset]}"

    def _scan(self, text: SetText, table, col, add, mul) -> _Scanned:
        n_lines = int(np.count_nonzero(text.buf == 10)) + len(text.starts)
        ev_file, ev_hour = np.empty(n_lines, np.int64), np.empty(n_lines, np.int64)
        ev_feat, ev_val = np.empty(n_lines, np.int32), np.empty(n_lines, np.float64)
        desc = np.full((len(text.starts), len(DESCRIPTORS)), np.nan)
        first_weight = np.full(len(text.starts), np.nan)
        dropped = np.zeros(D_REPEATED + 1, np.int64)
        fault = np.full(4, -1, np.int64)
        n, lines, n_desc = scan_set(text.buf, text.starts, text.ends, text.record, *table, col,
                                    add, mul, self.on_bad_lines == "skip", ev_file, ev_hour,
                                    ev_feat, ev_val, desc, first_weight, dropped, fault)
        if fault[0] >= 0:
            where = f"{text.path}:{text.names[fault[0]]}"
            status = int(fault[2])
            if status == S_NO_HEADER:
                raise ValueError(f"{where}: line 1 is not `Time,Parameter,Value`")
            if status == S_RECORD:
                raise ValueError(f"{where}: line {fault[1]}: RecordID {fault[3]} disagrees with "
                                 "the file's name")
            raise ValueError(f"{where}: line {fault[1]}: {PROBLEMS[status]}; fix the file or pass "
                             "--on-bad-lines skip to count such lines")
        return _Scanned(text, lines, n_desc, ev_file[:n], ev_hour[:n], ev_feat[:n], ev_val[:n],
                        desc, first_weight, dict(zip(DROPS, (int(d) for d in dropped))))

    def _descriptors(self, stays: Stays, run: Run) -> dict[str, np.ndarray]:
        n = len(stays)
        cols = {c: np.full(n, np.nan) for c in ("age", "sex", "height_cm", "weight_kg",
                                                  "icu_type")}
        for k, p in enumerate(self.parsed):
            rows = self.row_of_file[k]
            for name, col in (("Age", "age"), ("Gender", "sex"), ("Height", "height_cm"),
                              ("Weight", "weight_kg"), ("ICUType", "icu_type")):
                v = p.desc[:, DESCRIPTORS.index(name)]
                cols[col][rows] = np.where(v == -1, np.nan, v)
            # the first Weight line of the time series, for stays whose descriptor is unknown
            w = cols["weight_kg"][rows]
            cols["weight_kg"][rows] = np.where(np.isnan(w), p.first_weight, w)
        for c in ("sex", "icu_type"):
            ok = np.isin(cols[c], (0, 1) if c == "sex" else (1, 2, 3, 4))
            bad = ~np.isnan(cols[c]) & ~ok
            if bad.any():
                run.warn(f"{int(bad.sum())} stays have a {'Gender' if c == 'sex' else 'ICUType'} "
                         "outside its codes: null")
                cols[c][bad] = np.nan
        return cols

    def _outcomes(self, stays: Stays, run: Run):
        n = len(stays)
        death = np.full(n, -1, np.int8)
        los = np.full(n, np.nan)
        extra = {c: np.full(n, np.nan) for c in ("saps1", "sofa", "survival_days")}
        for k, p in enumerate(self.parsed):
            s = self.sets[k]
            rows = self.row_of_file[k]
            if s.outcomes is None:
                run.warn(f"set-{s.name}: no Outcomes-{s.name}.txt beside {s.path}: its "
                         f"{len(rows)} stays' labels are unknown (-1)", echo=True)
                continue
            o = read_outcomes(s.outcomes)
            pos = np.clip(np.searchsorted(p.text.record, o["RecordID"]), 0, len(rows) - 1)
            hit = p.text.record[pos] == o["RecordID"]
            r = rows[pos[hit]]
            died = o["In-hospital_death"][hit]
            death[r] = np.where((died == 0) | (died == 1), died, -1)
            for col, key in (("saps1", "SAPS-I"), ("sofa", "SOFA"), ("survival_days", "Survival")):
                v = o[key][hit]
                extra[col][r] = np.where(v == -1, np.nan, v)
            v = o["Length_of_stay"][hit]
            los[r] = np.where(v < 0, np.nan, v)
            no_file = int((~hit).sum())
            has_row = np.zeros(len(rows), bool)
            has_row[pos[hit]] = True
            no_row = int((~has_row).sum())
            if no_file:
                run.warn(f"{s.outcomes}: {no_file} rows name no stay file of set-{s.name} "
                         f"(first: RecordID {int(o['RecordID'][~hit][0])})")
            if no_row:
                run.warn(f"{s.outcomes}: no row for {no_row} stays of set-{s.name} (first: "
                         f"RecordID {int(p.text.record[~has_row][0])}): their labels are -1")
            entry = run.account(f"Outcomes-{s.name}", s.outcomes, len(o["RecordID"]),
                                int(hit.sum()), {"no_stay_file": no_file})
            entry["stays_without_row"] = no_row
        return death, los, extra

    def fold_events(self, catalog: Catalog, table: StayTable, sums: np.ndarray,
                    counts: np.ndarray, run: Run) -> None:
        low, high = catalog.valid_ranges()
        agg = catalog.aggregation_codes()
        total_read = total_kept = 0
        total_dropped = {r: 0 for r in DROPS}
        for k, p in enumerate(self.parsed):
            # events in file order: the files are in RecordID order and each file in line order,
            # so `last` keeps an hour's last line
            row = table.stays.offset[self.row_of_file[k][p.file]] + p.hour
            dropped = np.zeros(len(REASONS), np.int64)
            kept = fold_events(row, p.feature, p.value, len(row), agg, low, high, sums, counts,
                               dropped)
            drops = dict(p.dropped)
            drops["out_of_range"] = int(dropped[REASONS.index("out_of_range")])
            drops["count_saturated"] = int(dropped[REASONS.index("count_saturated")])
            entry = run.account(f"set-{p.text.name}", p.text.path, p.lines, kept + p.n_desc, drops)
            entry |= {"files": len(p.text.record), "descriptor_lines": p.n_desc,
                      "events_kept": int(kept)}
            total_read += p.lines
            total_kept += kept + p.n_desc
            for r, v in drops.items():
                total_dropped[r] += v
        run.manifest["total"] = {"rows_read": total_read, "rows_kept": total_kept,
                                 "dropped": total_dropped}
        del self.parsed


def read_outcomes(path: Path) -> dict[str, np.ndarray]:
    """Outcomes-X.txt as float64 columns; a malformed row is an error naming file and line."""
    want = ("RecordID", "SAPS-I", "SOFA", "Length_of_stay", "Survival", "In-hospital_death")
    lines = path.read_text().splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file (expected the header {','.join(want)})")
    head = [h.strip() for h in lines[0].split(",")]
    missing = [c for c in want if c not in head]
    if missing:
        raise ValueError(f"{path}: line 1: no column {missing[0]} (expected {','.join(want)})")
    at = [head.index(c) for c in want]
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split(",")
        try:
            if len(f) != len(head):
                raise ValueError
            rows.append([float(f[j]) for j in at])
        except ValueError:
            raise ValueError(f"{path}: line {i}: expected {len(head)} numbers, got {line!r}") \
                from None
    arr = np.array(rows, np.float64).reshape(-1, len(want))
    out = {c: arr[:, j] for j, c in enumerate(want)}
    out["RecordID"] = out["RecordID"].astype(np.int64)
    return out
