"""`ehrjepa probe --labels DIR`: probe tasks defined by MEDS label files instead of the built-in ones.

Every task folder of DIR (`labels.read_label_files`) is one task, named after its folder. Each
placed label (stay row, h hours, 0/1; `labels.place_labels`) is described by hours [0, h) of its
stay only (`prefixes.py`): the jepa and random_init embeddings and the raw summaries alike. The
probes of `fit.py` are fit on the labels of train-split stays, C or trees chosen on val, scored on
test, exactly as for the built-in tasks; a task with too few labels of a class in a split is
skipped with the reason. How many labels were read, placed and not placed (by reason) goes into
report["label_files"].
"""
from __future__ import annotations


import numpy as np

from ehrjepa.data.processed import SPLITS
from ehrjepa.probe.fit import FINETUNE_METHODS, evaluate_all

RAW_METHODS = ("raw_features", "raw_gbdt")  # both fit on the same raw summaries


def check_label_methods(methods) -> None:
    """The fine-tuned methods train on fixed windows of every stay, not on label prefixes: refuse them."""
    unfit = [m for m in methods if m in FINETUNE_METHODS]
    if unfit:
        raise ValueError(f"--labels: {', '.join(unfit)} cannot be fit on label files yet; leave "
                         f"{'it' if len(unfit) == 1 else 'them'} out of --methods")


def prefix_pooling_description(encoder: str, hours: int) -> str:
    return (f"mean over hours [0, h) of the label's stay, h = the whole hours of the stay before its "
            f"prediction_time, at most {hours}, each prefix embedded alone by the frozen {encoder} encoder "
            f"(every hour is context)")


def placement(label_tasks, labels_dir) -> dict:
    """report["label_files"]: where the labels came from and how many of each task were placed."""
    return {"dir": str(labels_dir),
            "tasks": {t.name: {"read": int(t.n_read), "placed": int(len(t.stay)),
                               "positives": int(t.label.sum()), "not_placed": dict(t.dropped)}
                      for t in label_tasks}}


def label_features(label_tasks, processed, models: dict, methods, encoder: str, device, batch_size: int,
                   progress: bool) -> dict[str, np.ndarray]:
    """{method: features of every placed label of every task, tasks concatenated in order}.

    models: {method: model} for the embedding methods (jepa, random_init); raw_features and
    raw_gbdt share the raw summaries. Each distinct (stay, h) prefix is computed once, however many
    labels or tasks share it."""
    from ehrjepa.probe.prefixes import embed_prefixes, raw_prefix_features

    stay = np.concatenate([t.stay for t in label_tasks]).astype(np.int64)
    hours = np.concatenate([t.hours for t in label_tasks]).astype(np.int64)
    pairs, inverse = np.unique(np.stack([stay, hours], axis=1), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    unique = {m: embed_prefixes(model, processed, pairs[:, 0], pairs[:, 1], encoder, device, batch_size,
                                progress, desc=f"embed {m}")
              for m, model in models.items() if m in methods}
    if any(m in RAW_METHODS for m in methods):
        raw = raw_prefix_features(processed, pairs[:, 0], pairs[:, 1])
        unique.update({m: raw for m in RAW_METHODS if m in methods})
    missing = [m for m in methods if m not in unique]
    if missing:
        raise ValueError(f"--labels: {', '.join(missing)} cannot be fit on label files (only "
                         f"{', '.join(list(models) + list(RAW_METHODS))})")
    return {m: unique[m][inverse] for m in methods}


def split_by_stay(processed, label_tasks, features: dict[str, np.ndarray]):
    """{task: (x {method: {split: X}}, y {split: float labels}, subjects {split: subject ids})},
    each label in the split of its stay."""
    split_col = np.asarray(processed.stays.column("split").to_pylist())
    subject_col = processed.stays.column("subject_id").to_numpy()
    out, start = {}, 0
    for t in label_tasks:
        end = start + len(t.stay)
        split = split_col[t.stay]
        at = {s: np.flatnonzero(split == s) for s in SPLITS}
        x = {m: {s: f[start:end][at[s]] for s in SPLITS} for m, f in features.items()}
        y = {s: t.label[at[s]].astype(np.float64) for s in SPLITS}
        out[t.name] = (x, y, {s: subject_col[t.stay[at[s]]] for s in SPLITS})
        start = end
    return out


def probe_label_files(labels_dir, processed, models: dict, methods, encoder: str, hours: int, device,
                      batch_size: int, n_bootstrap: int, seed: int, progress: bool, label_fractions=None,
                      repeats: int = 5) -> tuple[dict, dict]:
    """Probe every task of labels_dir. Returns (the report's task keys, the plots' curves): tasks,
    skipped, comparisons, pooling, cohort, labels (counts by split), label_files (placement), and
    label_efficiency(_setup) with label_fractions."""
    from ehrjepa.probe.labels import load_label_tasks
    from ehrjepa.probe.tasks import class_counts

    check_label_methods(methods)
    label_tasks = load_label_tasks(labels_dir, processed, hours)
    features = label_features(label_tasks, processed, models, methods, encoder, device, batch_size, progress)
    per_task = split_by_stay(processed, label_tasks, features)
    tasks, skipped, comparisons, curves = {}, {}, {}, {}
    for name, (x, y, _) in per_task.items():
        done, skip, comps, task_curves = evaluate_all(x, {name: y}, n_bootstrap, seed, progress=progress)
        tasks.update(done)
        skipped.update(skip)
        comparisons.update(comps)
        curves.update(task_curves)
    split_col = np.asarray(processed.stays.column("split").to_pylist())
    found = placement(label_tasks, labels_dir)
    report = {
        "tasks": tasks,
        "skipped": skipped,
        "comparisons": comparisons,
        "pooling": prefix_pooling_description(encoder, hours),
        "cohort": {s: {"stays": int((split_col == s).sum())} for s in SPLITS},
        "labels": {name: {s: dict(zip(("n", "positives", "unknown"), class_counts(y[s]))) for s in SPLITS}
                   for name, (_, y, _) in per_task.items()},
        "label_files": found,
    }
    if label_fractions is not None:
        from ehrjepa.probe.label_efficiency import label_efficiency

        report["label_efficiency"] = {}
        for name in tasks:  # a task skipped on the full splits stays skipped
            x, y, subjects = per_task[name]
            report["label_efficiency"].update(label_efficiency(x, {name: y}, subjects, label_fractions, repeats,
                                                               seed, progress=progress))
        report["label_efficiency_setup"] = {"fractions": sorted(label_fractions), "repeats": repeats,
                                            "subsampled": ["train", "val"], "by": "subject_id"}
    return report, curves

