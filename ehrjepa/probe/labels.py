"""Tasks from MEDS label files (`ehrjepa probe --labels DIR`), as ACES writes them.

    DIR/TASK/*.parquet   subject_id int64, prediction_time timestamp, boolean_value bool

(or DIR itself holding the parquet files of one task, named after DIR). Each label becomes
(stay row, hours to embed, label): the ICU stay of the subject whose [intime, outtime] holds
prediction_time, and its whole hours that end by prediction_time, at most `hours` of them, so an
embedding never sees data recorded after the prediction time. A label that cannot be placed is
counted by reason and reported, never guessed:

    no_stay           the subject has no stay in the processed data
    before_stay       prediction_time before the subject's first ICU admission
    after_discharge   prediction_time after the discharge of the last stay admitted before it
    under_one_hour    inside a stay, but less than one whole hour after its intime
    no_label          boolean_value is null
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HOUR = 3600
COLUMNS = ("subject_id", "prediction_time", "boolean_value")
REASONS = ("no_stay", "before_stay", "after_discharge", "under_one_hour", "no_label")


@dataclass
class LabelTask:
    """The placed labels of one task; `dropped` counts the others by reason."""
    name: str
    stay: np.ndarray  # int64, stay row index into processed.stays
    hours: np.ndarray  # int64, hours [0, hours) of the stay to embed, >= 1
    label: np.ndarray  # int8, 0 / 1
    n_read: int = 0
    dropped: dict = field(default_factory=dict)

    def summary(self) -> str:
        drops = ", ".join(f"{k} {v}" for k, v in self.dropped.items() if v) or "none"
        return (f"{self.name}: {self.n_read} labels, {len(self.stay)} placed "
                f"({int(self.label.sum())} positive); not placed: {drops}")


def read_label_files(labels_dir: str | Path) -> dict[str, "pyarrow.Table"]:  # noqa: F821
    """{task name: its labels} from DIR/TASK/*.parquet (or DIR/*.parquet: one task, DIR's name).
    Hidden folders (such as the `.logs` a Hydra multirun of ACES leaves) are not tasks. A missing
    column or a folder without parquet files is an error naming the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(labels_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"label folder not found: {root}")
    folders = {root.name: root} if list(root.glob("*.parquet")) else \
        {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    tasks = {}
    for name, folder in folders.items():
        files = sorted(folder.rglob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"{folder}: no label parquet files (subject_id, "
                                    "prediction_time, boolean_value)")
        tables = []
        for f in files:
            t = pq.read_table(f)
            for c in COLUMNS:
                if c not in t.column_names:
                    raise ValueError(f"{f}: missing label column {c!r} (columns: "
                                     f"{', '.join(t.column_names)})")
            if not pa.types.is_timestamp(t.schema.field("prediction_time").type):
                raise ValueError(f"{f}: column 'prediction_time' has type "
                                 f"{t.schema.field('prediction_time').type}, expected a timestamp")
            tables.append(t.select(list(COLUMNS)).cast(pa.schema([
                ("subject_id", pa.int64()), ("prediction_time", pa.timestamp("s")),
                ("boolean_value", pa.bool_())]), safe=False))  # times to whole seconds
        tasks[name] = pa.concat_tables(tables)
    if not tasks:
        raise FileNotFoundError(f"{root}: no task folders with label parquet files")
    return tasks


def place_labels(name: str, labels, stays, hours: int) -> LabelTask:
    """Each label's (stay row, hours to embed) in `stays` (processed.stays: subject_id, intime,
    outtime, n_hours), at most `hours` hours; see the module docstring."""
    import pyarrow as pa

    subject = stays["subject_id"].to_numpy()
    t_in = stays["intime"].cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()
    t_out = stays["outtime"].cast(pa.timestamp("s")).cast(pa.int64()).to_numpy()
    n_hours = stays["n_hours"].to_numpy().astype(np.int64)
    order = np.lexsort((t_in, subject))  # stays by subject, then intime
    s_sorted, in_sorted = subject[order], t_in[order]

    sid = labels["subject_id"].to_numpy()
    when = labels["prediction_time"].cast(pa.timestamp("s"), safe=False).cast(pa.int64()) \
        .to_numpy(zero_copy_only=False)
    value = labels["boolean_value"]
    known = value.is_valid().to_numpy(zero_copy_only=False)
    y = value.fill_null(False).to_numpy(zero_copy_only=False).astype(np.int8)
    # the subject's last stay admitted at or before prediction_time
    first = np.searchsorted(s_sorted, sid, "left")
    last = np.searchsorted(s_sorted, sid, "right")
    k = np.empty(len(sid), np.int64)
    for i in range(len(sid)):  # per label: a binary search among the subject's stays
        k[i] = first[i] + np.searchsorted(in_sorted[first[i]:last[i]], when[i], "right") - 1
    has_stay = last > first
    started = has_stay & (k >= first)
    row = order[np.clip(k, 0, max(len(order) - 1, 0))] if len(order) else np.zeros(len(sid), int)
    inside = started & (when <= t_out[row]) if len(order) else started
    whole = np.where(inside, (when - t_in[row]) // HOUR, 0) if len(order) else np.zeros(len(sid))
    n = np.minimum(np.minimum(whole, n_hours[row] if len(order) else 0), hours)
    ok = inside & (n >= 1) & known
    dropped = {"no_stay": int((~has_stay).sum()),
               "before_stay": int((has_stay & ~started).sum()),
               "after_discharge": int((started & ~inside).sum()),
               "under_one_hour": int((inside & (n < 1)).sum()),
               "no_label": int((inside & (n >= 1) & ~known).sum())}
    return LabelTask(name, row[ok].astype(np.int64), n[ok].astype(np.int64), y[ok], len(sid),
                     dropped)


def load_label_tasks(labels_dir: str | Path, processed, hours: int) -> list[LabelTask]:
    """Every task under labels_dir placed on `processed` (open_processed's answer)."""
    return [place_labels(name, table, processed.stays, hours)
            for name, table in read_label_files(labels_dir).items()]
