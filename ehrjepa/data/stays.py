"""The ICU stays of icustays: which are kept (or dropped for a named reason), their hour rows in
the output arrays, and the lookup arrays the event kernels search (by stay_id, by subject)."""
from __future__ import annotations

import numpy as np

from .events import HOUR
from .readers import BAD, MISSING, TableStats


class Stays:
    """ICU stays sorted by stay_id, with their hour rows and lookup arrays for the kernels."""

    def __init__(self, cols: dict[str, np.ndarray], stats: TableStats, dropped: dict):
        ok = np.ones(len(cols["stay_id"]), bool)
        for name in ("stay_id", "subject_id"):
            bad = ok & ((cols[name] == MISSING) | (cols[name] == BAD))
            dropped["bad_id"] += int(bad.sum())
            ok &= ~bad
        for name in ("intime", "outtime"):
            bad = ok & ((cols[name] == MISSING) | (cols[name] == BAD))
            dropped["bad_timestamp"] += int(bad.sum())
            ok &= ~bad
        bad = ok & (cols["outtime"] < cols["intime"])
        dropped["outtime_before_intime"] += int(bad.sum())
        ok &= ~bad
        idx = np.flatnonzero(ok)
        order = idx[np.argsort(cols["stay_id"][idx], kind="stable")]
        sid = cols["stay_id"][order]
        first = np.ones(len(sid), bool)
        first[1:] = sid[1:] != sid[:-1]
        dropped["duplicate_stay"] += int((~first).sum())
        order = order[first]
        self.stay_id = cols["stay_id"][order]
        self.subject_id = cols["subject_id"][order]
        self.hadm_id = cols["hadm_id"][order]
        self.intime = cols["intime"][order]
        self.outtime = cols["outtime"][order]
        self.n_hours = ((self.outtime - self.intime + HOUR - 1) // HOUR).astype(np.int64)
        self.offset = np.zeros(len(order), np.int64)
        if len(order):
            self.offset[1:] = np.cumsum(self.n_hours)[:-1]
        self.total_hours = int(self.n_hours.sum())
        # per subject: stay rows ordered by (intime, stay_id)
        by = np.lexsort((self.stay_id, self.intime, self.subject_id))
        self.by_subject = by.astype(np.int64)
        subj_sorted = self.subject_id[by]
        self.subjects, self.subj_start = np.unique(subj_sorted, return_index=True)
        self.subj_start = self.subj_start.astype(np.int64)
        self.subj_end = np.append(self.subj_start[1:], len(by)).astype(np.int64)
        stats.extra["kept"] = len(order)

    def __len__(self) -> int:
        return len(self.stay_id)
