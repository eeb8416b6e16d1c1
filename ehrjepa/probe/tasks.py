"""Downstream tasks: labels from the processed stays, and the hours the probe embeds.

Every task uses the same cohort: the stays with at least `hours` hours of data, which the probe
embeds over hours [0, hours). With the default HOURS = 24, `mortality_hosp` is in-hospital death
for stays of 24 h or more, so that a death during the observed hours cannot leak into the label.

- `mortality_hosp`: `death_hosp` (hospital_expire_flag of the stay's admission) is 1.
- `los_gt_3d`, `los_gt_7d`: ICU length of stay `los_days` is over 3 or 7 days.
- `readmit_icu`: another ICU stay in the same hospital admission starts at or after this stay's
  outtime (stays ending in death excluded). Predicted from the stay's FIRST `hours` hours, like
  every task here (the same cohort), not from its last hours before ICU discharge.
- `readmit_30d`: a new hospital admission within 30 days of this stay's hospital discharge (deaths
  in hospital, and subjects with under 30 days of follow-up, excluded, as MEDS-DEV defines it);
  from the first `hours` hours of the ICU stay as well.
- `phenotype_<name>`: the stay's hospital admission has an ICD-10 diagnosis matching phenotype
  <name> of configs/phenotypes.yaml (sepsis, aki, arf, heart_failure, shock); one task per
  `phenotype_*` column of stays.parquet. `phenotype_macro` is their mean AUROC (`macro.py`).
- `aki_24_72h`: acute kidney injury, KDIGO stage >= 1 by creatinine, in hours [24, 72) of the stay,
  among stays without it in hours [0, 24); computed from the processed creatinine itself
  (OUT/mean.npy), so it works on any data (`aki.py` holds the definition).
- `sepsis_after_24h` (data with the PhysioNet 2019 challenge's hourly labels): the stay's hourly
  sepsis label is 1 at some hour >= 24, among the stays whose labels are all 0 in hours [0, 24)
  (a stay labelled earlier is left out: its answer is in the hours embedded). From stays.parquet's
  `sepsis` and `sepsis_onset_hour` (the first labelled hour + 6). Not the literature's label
  (Raindrop, ViTST: one label per patient, sepsis at any hour, from the whole record or its
  first hours, on both hospitals' sets): docs/usage.md says how they differ.
- `sepsis_hourly` (same data): the online task, a prediction at every hour from the hours before
  it (`online.py`); it is not labelled here (ONLINE_TASKS).

The readmission and phenotype labels are int8 columns written by `ehrjepa preprocess` (1 yes, 0 no,
-1 unknown or excluded). A label is NaN where its source is unknown (-1, a null, a stay excluded
from the AKI cohort); such stays are left out of that task and counted. A column missing from
stays.parquet (data processed before these columns existed, or without diagnoses) makes its task
unavailable, with a one-line reason in the report.
"""
from __future__ import annotations

import numpy as np

from ehrjepa.data.processed import SPLITS

# The hours [0, HOURS) of each stay that the probe embeds and summarises: the first day, as in the
# ICU benchmarks docs/results.md compares with (mortality at 24 h in YAIB) and the severity scores
# (APACHE, SAPS); long enough to carry signal, short enough that most stays have it. Every shipped
# config's context covers it (a test), so the encoder saw these hour positions in pretraining.
HOURS = 24

# Tasks labelled from the stays table alone, from its int8 outcome columns (named as the task), and
# from the hourly labs. TASKS are the fixed tasks; the phenotype tasks are one per `phenotype_*`
# column the data has (`phenotype_tasks`).
STAY_TASKS = ("mortality_hosp", "los_gt_3d", "los_gt_7d")
READMIT_TASKS = ("readmit_icu", "readmit_30d")
LAB_TASKS = ("aki_24_72h",)
TASKS = STAY_TASKS + READMIT_TASKS + LAB_TASKS
# The 2019 challenge's tasks, only where the data has its sepsis columns (so not in TASKS, whose
# every task any data labels or says why): the stay-level one, labelled by labels_by_split, and
# the online one, a prediction at every hour of the stay (online.py). Known to --tasks.
SEPSIS_TASKS = ("sepsis_after_24h",)
ONLINE_TASKS = ("sepsis_hourly",)
KNOWN_TASKS = TASKS + SEPSIS_TASKS + ONLINE_TASKS
SEPSIS_AFTER_HOURS = 24  # sepsis_after_24h: predicted from hours [0, 24), labelled from hour 24 on
PHENOTYPE_PREFIX = "phenotype_"
PHENOTYPES = "phenotypes"            # --tasks shorthand for every phenotype task, and their skip key
PHENOTYPE_MACRO = "phenotype_macro"  # the mean over the phenotype tasks scored (macro.py)

# What label 0 and label 1 mean, in words (plot legends); `outcome_names` also words other phenotypes.
OUTCOMES = {
    "mortality_hosp": ("survived", "died in hospital"),
    "los_gt_3d": ("ICU stay <= 3 days", "ICU stay > 3 days"),
    "los_gt_7d": ("ICU stay <= 7 days", "ICU stay > 7 days"),
    "readmit_icu": ("no later ICU stay in the admission", "ICU readmission in the same admission"),
    "readmit_30d": ("no readmission within 30 days", "readmitted within 30 days of discharge"),
    "phenotype_sepsis": ("no sepsis diagnosis", "sepsis diagnosis"),
    "phenotype_aki": ("no acute kidney injury diagnosis", "acute kidney injury diagnosis"),
    "phenotype_arf": ("no acute respiratory failure diagnosis", "acute respiratory failure diagnosis"),
    "phenotype_heart_failure": ("no heart failure diagnosis", "heart failure diagnosis"),
    "phenotype_shock": ("no shock diagnosis", "shock diagnosis"),
    "aki_24_72h": ("no AKI in hours 24-72", "AKI (KDIGO >= 1) in hours 24-72"),
    "sepsis_after_24h": ("no sepsis label after hour 24", "sepsis label at some hour >= 24"),
    "sepsis_hourly": ("hour not labelled sepsis", "hour labelled sepsis (6 h before onset on)"),
}

# A task is skipped when a split has fewer positives (or negatives) than this: logistic regression
# needs a few of each class to fit, and AUROC needs both classes to exist.
MIN_CLASS_COUNT = {"train": 5, "val": 2, "test": 2}

_OLD_DATA = "processed before readmission labels existed: run `ehrjepa preprocess` again"
_NO_DIAGNOSES = ("stays.parquet has no phenotype_* columns (the data has no diagnoses: no hosp/diagnoses_icd "
                 "table or DIAGNOSIS// events, or it was processed before phenotypes existed)")


def outcome_names(task: str) -> tuple[str, str]:
    """What label 0 and label 1 of `task` mean, in words."""
    if task in OUTCOMES:
        return OUTCOMES[task]
    if task.startswith(PHENOTYPE_PREFIX):
        name = task[len(PHENOTYPE_PREFIX):].replace("_", " ")
        return f"no {name} diagnosis", f"{name} diagnosis"
    return f"not {task}", task


def is_phenotype(task: str) -> bool:
    """Whether `task` names one phenotype task (phenotype_<name>; not phenotype_macro)."""
    return task.startswith(PHENOTYPE_PREFIX) and len(task) > len(PHENOTYPE_PREFIX) \
        and task != PHENOTYPE_MACRO


def phenotype_tasks(stays) -> list[str]:
    """The phenotype tasks of a stays table: its `phenotype_*` columns, in table order."""
    return [c for c in stays.column_names if is_phenotype(c)]


def _float_column(stays, name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if name not in stays.column_names:
        raise ValueError(f"no column {name!r} in the stays table (columns: {stays.column_names})")
    col = pc.cast(stays.column(name), pa.float64())
    return col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls become NaN


def task_labels(stays, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Labels of stay rows `rows` of the stays table for every task of STAY_TASKS: float64 0/1, NaN
    where unknown. (The other tasks: `flag_labels`, and `labels_by_split` for all of them.)"""
    rows = np.asarray(rows, dtype=np.int64)
    death = _float_column(stays, "death_hosp")[rows]
    los = _float_column(stays, "los_days")[rows]
    labels = {
        "mortality_hosp": np.where(np.isnan(death), np.nan, (death > 0).astype(np.float64)),
        "los_gt_3d": np.where(np.isnan(los), np.nan, (los > 3.0).astype(np.float64)),
        "los_gt_7d": np.where(np.isnan(los), np.nan, (los > 7.0).astype(np.float64)),
    }
    return labels


def flag_labels(stays, rows: np.ndarray, column: str) -> np.ndarray:
    """Labels float64 [len(rows)] from an int8 outcome column (1 yes, 0 no, -1 unknown or excluded):
    1.0, 0.0, and NaN for -1 or null. ValueError naming the column for any other value."""
    y = _float_column(stays, column)[np.asarray(rows, dtype=np.int64)]
    bad = ~np.isnan(y) & ~np.isin(y, (-1.0, 0.0, 1.0))
    if bad.any():
        raise ValueError(f"column {column!r} holds {y[bad][0]:g}; expected 1, 0 or -1 (unknown)")
    return np.where(y < 0, np.nan, y)


def sepsis_after_labels(stays, rows: np.ndarray, after: int = SEPSIS_AFTER_HOURS) -> np.ndarray:
    """sepsis_after_24h's labels float64 [len(rows)]: 1 where the first hour labelled sepsis is >=
    `after`, 0 where no hour is, NaN where one is before `after` or the stay's labels are unknown
    (`sepsis` -1 or null). The first labelled hour is sepsis_onset_hour - 6 (utility.LABEL_LEAD)."""
    from ehrjepa.probe.utility import LABEL_LEAD

    rows = np.asarray(rows, dtype=np.int64)
    sepsis = _float_column(stays, "sepsis")[rows]
    first = _float_column(stays, "sepsis_onset_hour")[rows] - LABEL_LEAD
    y = np.where(sepsis == 1, np.where(first >= after, 1.0, np.nan), 0.0)
    return np.where(np.isnan(sepsis) | (sepsis < 0) | ((sepsis == 1) & np.isnan(first)), np.nan, y)


def labels_by_split(processed, rows: dict[str, np.ndarray], hours: int = HOURS):
    """({task: {split: labels}}, {task: why it cannot be labelled}) for every task of TASKS and every
    phenotype column of the data.

    rows: {split: stay rows}. A task whose column is missing from stays.parquet, a lab task that
    cannot be computed on this data (no creatinine, another unit) or whose label hours overlap the
    `hours` embedded (aki_24_72h looks from hour 24 on) is left out of the labels and given a reason
    instead; the phenotype tasks, when the data has none, under the one key PHENOTYPES."""
    stays = processed.stays
    labels, unavailable = _labels_by_split(processed, rows, hours)
    if {"sepsis", "sepsis_onset_hour"} <= set(stays.column_names):  # the 2019 challenge's data only
        if hours > SEPSIS_AFTER_HOURS:
            unavailable["sepsis_after_24h"] = (f"the {hours} hours embedded overlap its label hours (from hour "
                                               f"{SEPSIS_AFTER_HOURS} on); use --hours {SEPSIS_AFTER_HOURS} or fewer")
        else:
            labels["sepsis_after_24h"] = {split: sepsis_after_labels(stays, r) for split, r in rows.items()}
    return labels, unavailable


def _labels_by_split(processed, rows: dict[str, np.ndarray], hours: int = HOURS):
    from ehrjepa.probe import aki

    stays = processed.stays
    labels = {task: {} for task in STAY_TASKS}
    for split, r in rows.items():
        for task, y in task_labels(stays, r).items():
            labels[task][split] = y
    unavailable = {}
    for task in READMIT_TASKS:
        if task in stays.column_names:
            labels[task] = {split: flag_labels(stays, r, task) for split, r in rows.items()}
        else:
            unavailable[task] = f"stays.parquet has no {task} column ({_OLD_DATA})"
    phenotypes = phenotype_tasks(stays)
    for task in phenotypes:
        labels[task] = {split: flag_labels(stays, r, task) for split, r in rows.items()}
    if not phenotypes:
        unavailable[PHENOTYPES] = _NO_DIAGNOSES
    if hours > aki.OBSERVED_HOURS:
        unavailable["aki_24_72h"] = (f"the {hours} hours embedded overlap its label hours [{aki.OBSERVED_HOURS}, "
                                     f"{aki.END_HOUR}); use --hours {aki.OBSERVED_HOURS} or fewer")
        return labels, unavailable
    try:
        labels["aki_24_72h"] = {split: aki.aki_labels(processed, r) for split, r in rows.items()}
    except ValueError as e:
        unavailable["aki_24_72h"] = str(e)
    return labels, unavailable


def parse_tasks(text: str, option: str = "--tasks") -> list[str]:
    """"mortality_hosp, phenotypes" -> ["mortality_hosp", "phenotypes"]; ValueError (one line, listing
    the known tasks) for a name that is no task on any data: not in KNOWN_TASKS, not PHENOTYPES, not
    phenotype_<name>. Whether a phenotype exists in the data is `select_tasks`'s question."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in KNOWN_TASKS and t != PHENOTYPES and not is_phenotype(t)]
    if unknown or not names:
        raise ValueError(f"{option}: {', '.join(unknown) or 'none given'}: choose from "
                         f"{', '.join(KNOWN_TASKS)}, "
                         f"{PHENOTYPES} (every phenotype task) or {PHENOTYPE_PREFIX}<name>")
    return list(dict.fromkeys(names))


def in_tasks(task: str, requested) -> bool:
    """Whether `task` is among `requested` (names, PHENOTYPES for every phenotype task; None: all)."""
    if requested is None:
        return True
    return task in requested or (PHENOTYPES in requested and is_phenotype(task))


def select_tasks(labels: dict, unavailable: dict, requested=None, where: str = "stays.parquet"):
    """(labels, unavailable) of `labels_by_split` kept to the `requested` tasks (None: all), in the
    order of `labels_by_split`. PHENOTYPES stands for every phenotype task of the data. ValueError,
    one line listing the known tasks, for a task this data does not have."""
    if requested is None:
        return labels, unavailable
    known = list(labels) + list(unavailable)
    phenotypes = [t for t in labels if is_phenotype(t)]
    wanted = set()
    for task in requested:
        if task == PHENOTYPES:
            wanted.update(phenotypes or [PHENOTYPES])
        elif task in known:
            wanted.add(task)
        else:
            extra = f"; {_NO_DIAGNOSES}" if PHENOTYPES in unavailable and is_phenotype(task) else ""
            raise ValueError(f"{where}: no task {task!r} in this data; known: {', '.join(known)}{extra}")
    return ({t: y for t, y in labels.items() if t in wanted},
            {t: why for t, why in unavailable.items() if t in wanted})


def class_counts(y: np.ndarray) -> tuple[int, int, int]:
    """(n known, positives, unknown) of a label array."""
    known = ~np.isnan(y)
    return int(known.sum()), int((y[known] == 1).sum()), int((~known).sum())


def skip_reason(y_by_split: dict[str, np.ndarray], min_count: dict[str, int] = MIN_CLASS_COUNT,
                splits=SPLITS) -> str | None:
    """Why a task cannot be probed (too few positives or negatives in one of `splits`), else None."""
    problems = []
    for split in splits:
        n, pos, _ = class_counts(y_by_split[split])
        need = min_count[split]
        if pos < need:
            problems.append(f"{split} has {pos} positives (need >= {need})")
        if n - pos < need:
            problems.append(f"{split} has {n - pos} negatives (need >= {need})")
    return "; ".join(problems) if problems else None
