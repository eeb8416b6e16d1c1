"""`run_probe`: probe a whole pretrained run and write its report.

Loads the run's checkpoint once, embeds the first hours of every stay with its frozen EMA target
encoder, or its context encoder (jepa), and with an untrained encoder of the same architecture
(random_init), summarises the same hours per feature (raw_features, and raw_gbdt on the same
features), on request fine-tunes the pretrained and the untrained encoder with a head
(jepa_finetune, scratch: `finetune.py`), fits the probes of `fit.py` for every task, with label
fractions refits them on subsampled labels (`label_efficiency.py`), and writes REPORT.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ehrjepa.data.processed import SPLITS
from ehrjepa.probe.fit import (C_GRID, DEFAULT_METHODS, FINETUNE_METHODS, GBDT_LEAVES, GBDT_MAX_TREES,
                               GBDT_PATIENCE, METHODS, evaluate_all)
from ehrjepa.probe.macro import phenotype_macro, phenotype_macro_efficiency
from ehrjepa.probe.report import check_report_dir
from ehrjepa.probe.tasks import (HOURS, PHENOTYPE_MACRO, PHENOTYPES, class_counts, in_tasks, is_phenotype,
                                 labels_by_split, select_tasks)


def resolve_checkpoint(run_dir: Path, checkpoint: str | Path | None) -> Path:
    """The checkpoint to probe: the one given, else RUN/checkpoints/best.pt, else last.pt."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist (the --run-dir of `ehrjepa train`)")
    for name in ("best.pt", "last.pt"):
        path = Path(run_dir) / "checkpoints" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"no checkpoint in {Path(run_dir) / 'checkpoints'} (looked for best.pt, last.pt); "
                            f"pass --checkpoint PATH")


def random_init_like(config, n_features: int, seed: int = 0):
    """An untrained JEPA of the same architecture (same config), built with a fixed seed."""
    import torch

    from ehrjepa.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(config, n_features).eval()


def one_line(path, what: str, e: Exception) -> str:
    """The first line of error `e`, led by `path` and `what` failed unless it names `path` already."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    if isinstance(e, KeyError):
        first = f"missing key {first}"
    return first if str(path) in first else f"{path}: {what}: {first}"


def load_trained(ckpt_path: Path):
    """(model, config, checkpoint dict without weights) of `ckpt_path`, read once.

    A checkpoint whose weights do not fit its own config (a damaged or hand-edited file) is a
    one-line RuntimeError naming the file, not torch's list of every missing key."""
    from ehrjepa.models import load_model

    try:
        return load_model(ckpt_path, map_location="cpu")
    except FileNotFoundError:
        raise
    except (KeyError, ValueError, RuntimeError) as e:
        if str(e).startswith("Error(s) in loading state_dict"):  # torch's list of keys, many lines
            e = RuntimeError("its weights do not fit the model its own config describes (keys or shapes differ)")
        raise RuntimeError(one_line(ckpt_path, "cannot load the model", e)) from e


def open_data(data_dir):
    """`open_processed(data_dir)`; a damaged file in it is a one-line ValueError naming the folder."""
    from ehrjepa.data import open_processed

    try:
        return open_processed(data_dir)
    except FileNotFoundError:
        raise
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(one_line(data_dir, "cannot read the processed data", e)) from e


def check_label_tasks(label_tasks, tasks, label_fractions, labels_dir) -> None:
    """ValueError, one line naming --label-tasks, for label tasks that would be refit never: without
    label fractions, with --labels, or not among the probed --tasks. (Whether the data has them
    is `select_tasks`'s question, once it is read.)"""
    if label_tasks is None:
        return
    if label_fractions is None:
        raise ValueError("--label-tasks picks the tasks refit at the label fractions: give --label-fractions too")
    if labels_dir is not None:
        raise ValueError("--label-tasks picks built-in tasks; with --labels every label folder is refit")
    if tasks is None:
        return
    not_probed = [t for t in label_tasks if not in_tasks(t, tasks)
                  and not (t == PHENOTYPES and any(is_phenotype(p) or p == PHENOTYPES for p in tasks))]
    if not_probed:
        raise ValueError(f"--label-tasks: {', '.join(not_probed)} {'is' if len(not_probed) == 1 else 'are'} not "
                         f"among the probed tasks (--tasks {','.join(tasks)})")


def check_against_checkpoint(ckpt: dict, ckpt_path, processed, data_dir, command: str) -> list[str]:
    """`models.checkpoint.check_data` of the processed data against the checkpoint: ValueError, one
    line naming the checkpoint, the data folder and the first differing feature, when the features
    differ; its warnings (e.g. another split seed than pretraining's) printed on stderr and returned."""
    from ehrjepa.models.checkpoint import check_data

    try:
        warnings = check_data(ckpt, list(processed.features), processed.split_seed, str(data_dir))
    except ValueError as e:
        raise ValueError(f"{ckpt_path}: {e}") from e
    for warning in warnings:
        print(f"ehrjepa {command}: warning: {warning}", file=sys.stderr)
    return warnings


def longest_stay(processed) -> int:
    """The most hours of any stay of the processed data (0 without stays)."""
    n_hours = processed.stays.column("n_hours").to_numpy()
    return int(n_hours.max()) if len(n_hours) else 0


def check_hours(processed, hours: int, data_dir, option: str = "--hours") -> None:
    """ValueError, one line, when no stay of the data has `hours` hours: every split would be empty
    and every task say "0 positives" (or a file of 0 rows be written) for a cause that is not there."""
    longest = longest_stay(processed)
    if longest < hours:
        raise ValueError(f"no stay in {data_dir} has {hours} hours (the longest has {longest}); "
                         f"choose a smaller {option}")


def unseen_positions_note(config, hours: int) -> str | None:
    """A note when the probe embeds hour positions that the context encoder never saw as context
    in pretraining (the EMA target encoder only copies what the context encoder learned), or None.

    With the future mask the context is hours [0, mask.context_hours) of each window, or
    [0, round(mask.context_fraction x data.length)) of the longest crops when the fraction is set;
    with multiblock, any hour of the data.length-hour window."""
    future = config.mask.kind == "future"
    fraction = getattr(config.mask, "context_fraction", None)
    if not future:
        seen = config.data.length
    elif fraction is not None:
        seen = round(fraction * config.data.length)
    else:
        seen = config.mask.context_hours
    if hours <= seen:
        return None
    fix = (f"data.length={hours + config.mask.target_hours}, mask.context_hours={hours}" if future
           else f"data.length={hours}")
    return (f"the encoder saw hour positions [0, {seen}) as context in pretraining (mask.kind="
            f"{config.mask.kind}); hours {seen}-{hours - 1} of the {hours} embedded here are positions it never "
            f"learned from. Pretrain with windows whose context covers the probe's hours ({fix}); on the "
            f"synthetic data, unseen positions cost the small model most of its gain over random_init (docs/results.md, "
            f"\"The small model on CPU\")")


def method_descriptions(encoder: str, hours: int, seed: int, settings=None, span: str | None = None) -> dict[str, str]:
    """What each method of METHODS is, in words (report.json "methods"); span: the hours summarised
    and pooled, in words (default: hours [0, hours))."""
    from ehrjepa.probe.finetune import Settings

    s = settings or Settings()
    span = span or f"hours [0, {hours})"
    summary = (f"per-feature last, mean (a summed feature's total per hour), min, max, observed "
               f"fraction, first and log event count over {span}")
    budget = (f"a {s.head} head on the mean over hours [0, {hours}), trained end to end with binary cross-entropy, "
              f"AdamW (lr {s.lr:g}, warmup {s.warmup_steps} then cosine to {s.min_lr:g}, batch {s.batch_size}) for up to "
              f"{s.max_epochs:g} epochs of the training stays ({min(s.min_steps, s.max_steps)} to {s.max_steps} steps), early-stopped on "
              f"validation AUROC (measured every {s.eval_every} steps, "
              f"patience {s.patience})")
    return {"jepa": f"logistic regression on the {encoder} encoder of the checkpoint",
            "random_init": f"the same on an untrained encoder of the same architecture (seed {seed})",
            "raw_features": f"logistic regression on {summary}",
            "raw_gbdt": f"gradient-boosted trees (scikit-learn HistGradientBoostingClassifier, "
                        f"{' or '.join(map(str, GBDT_LEAVES))} leaves per tree by validation AUROC, up to {GBDT_MAX_TREES} trees early-stopped on the validation "
                        f"log-loss after {GBDT_PATIENCE} without improvement) on {summary}",
            "jepa_finetune": f"the {encoder} encoder of the checkpoint fine-tuned with {budget}",
            "scratch": f"the untrained encoder of random_init (seed {seed}) trained with the same budget: {budget}",
            "clinical_score": "the data's clinical score (the 2012 challenge's SAPS-I) as the prediction, no "
                              "fitting; an unknown score counts as the train split's median"}


def run_probe(run_dir, data_dir, out_dir, checkpoint=None, encoder: str = "target", hours: int = HOURS,
              device: str = "cpu", batch_size: int = 256, n_bootstrap: int = 1000, seed: int = 0,
              progress: bool = True, methods=DEFAULT_METHODS, label_fractions=None, repeats: int = 5,
              finetune_settings=None, labels_dir=None, tasks=None, label_tasks=None,
              static: bool = False) -> dict:
    """Probe a pretrained run against the baselines; write REPORT and return its dict.

    methods: which of METHODS to fit (in METHODS order whatever the order given); label_fractions:
    fractions in (0, 1] of the train and val subjects to refit every method on, `repeats` times
    each (report["label_efficiency"]); None: no such refits. finetune_settings: the budget of
    jepa_finetune and scratch (finetune.Settings; default Settings()). labels_dir: probe the tasks of
    these MEDS label files (`label_probe.py`) instead of the built-in tasks. tasks: the built-in
    tasks to probe (names of tasks.py, "phenotypes" for every phenotype task; None: every task);
    label_tasks: those of them refit at the label fractions (same names; None: every task scored).
    static: append the stays' static descriptors (static.py) to the inputs of every frozen and
    tabular method (jepa, random_init, raw_features, raw_gbdt)."""
    from ehrjepa.data import WindowDataset
    from ehrjepa.device import resolve_device
    from ehrjepa.probe.baselines import raw_features
    from ehrjepa.probe.embeddings import embed_stays, pooling_description
    from ehrjepa.probe.report import write_report

    from ehrjepa.probe.label_efficiency import label_efficiency

    if encoder not in ("target", "context"):
        raise ValueError(f"encoder must be 'target' or 'context', not {encoder!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods must be some of {', '.join(METHODS)}, not {', '.join(unknown) or 'none'}")
    methods = [m for m in METHODS if m in methods]
    if label_fractions is not None:
        bad = [f for f in label_fractions if not 0.0 < f <= 1.0]
        if bad or not label_fractions:
            raise ValueError(f"label fractions must lie in (0, 1], not {bad or 'none'}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, not {repeats}")
    if labels_dir is not None:
        from ehrjepa.probe.label_probe import check_label_methods

        if static:
            raise ValueError("--static works with the built-in tasks, not with --labels")
        check_label_methods(methods)
        if tasks is not None:
            raise ValueError("--tasks picks built-in tasks; with --labels the tasks are the label folders")
    check_label_tasks(label_tasks, tasks, label_fractions, labels_dir)
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    check_report_dir(out_dir)  # before the work, not after it
    ckpt_path = resolve_checkpoint(run_dir, checkpoint)
    device = resolve_device(device)
    processed = open_data(data_dir)
    if labels_dir is None:  # with --labels, hours is only the most a label's prefix may have
        check_hours(processed, hours, data_dir)
    model, config, ckpt = load_trained(ckpt_path)
    warnings = check_against_checkpoint(ckpt, ckpt_path, processed, data_dir, "probe")
    step, n_features, max_hours = ckpt.get("step"), len(processed.features), config.data.max_hours
    if hours > max_hours:
        raise ValueError(f"--hours {hours} is longer than the model's max_hours {max_hours} ({ckpt_path})")
    untrained = random_init_like(config, n_features, seed)
    if labels_dir is not None:
        return run_label_probe(labels_dir, processed, {"jepa": model, "random_init": untrained}, methods, encoder,
                               hours, device, batch_size, n_bootstrap, seed, progress, label_fractions, repeats,
                               out_dir=out_dir, header={"checkpoint": str(ckpt_path), "step": step,
                                                        "run": str(run_dir), "data": str(Path(data_dir))},
                               unseen=unseen_positions_note(config, hours), metrics_csv=run_dir / "metrics.csv",
                               warnings=warnings)

    datasets = {split: WindowDataset.for_hours(processed, split, hours) for split in SPLITS}
    rows = {split: datasets[split].window_index[:, 0].astype(np.int64) for split in SPLITS}
    try:
        labels, unavailable = labels_by_split(processed, rows, hours)
    except ValueError as e:
        raise ValueError(one_line(Path(data_dir) / "stays.parquet", "cannot label the tasks", e)) from e
    # the online tasks (a prediction every hour: online.py) apart from the stay-level ones
    from ehrjepa.probe.online import check_online_tasks
    from ehrjepa.probe.tasks import ONLINE_TASKS

    online_tasks = check_online_tasks(processed, tasks, data_dir)
    stay_tasks = None if tasks is None else [t for t in tasks if t not in ONLINE_TASKS]
    labels, unavailable = select_tasks(labels, unavailable, stay_tasks, where=str(Path(data_dir) / "stays.parquet"))
    if label_tasks is not None:  # a label task this data does not have: before the embedding, not after it
        check_online_tasks(processed, [t for t in label_tasks if t in ONLINE_TASKS], data_dir)
        select_tasks(labels, unavailable, [t for t in label_tasks if t not in ONLINE_TASKS],
                     where=f"--label-tasks: {Path(data_dir) / 'stays.parquet'}")
    out_dir.mkdir(parents=True, exist_ok=True)

    x = {method: {} for method in methods}
    for split in SPLITS:
        for method, m in (("jepa", model), ("random_init", untrained)):
            if method not in x:
                continue
            emb, stay = embed_stays(m, datasets[split], encoder, device, batch_size, progress,
                                    desc=f"embed {method} {split}")
            if not np.array_equal(stay, rows[split]):
                raise RuntimeError(f"{method} {split}: embeddings came back in another order than the stays")
            x[method][split] = emb
        if "raw_features" in x or "raw_gbdt" in x:
            raw = raw_features(processed, rows[split], hours)
            for method in ("raw_features", "raw_gbdt"):
                if method in x:
                    x[method][split] = raw
        if "clinical_score" in x:
            x["clinical_score"][split] = clinical_scores(processed, data_dir)[rows[split]][:, None]
    if static:
        from ehrjepa.probe.static import static_features, with_static

        static_x, static_names = static_features(processed, rows)
        with_static(x, static_x, STATIC_METHODS)
    finetuners = None
    if labels and any(m in FINETUNE_METHODS for m in methods):  # stay-level tasks to fine-tune on
        from ehrjepa.probe.finetune import Finetuner, Settings, StayWindows, encoder_of

        windows, positions = StayWindows.from_datasets(datasets)
        settings = finetune_settings or Settings()
        width = config.model.resolved().width
        starts = {"jepa_finetune": encoder_of(model, encoder), "scratch": untrained.encoder}
        finetuners = {m: Finetuner(starts[m], width, windows, settings, device, progress, desc=f"{m}")
                      for m in methods if m in FINETUNE_METHODS}
        for m in finetuners:
            x[m] = positions
    scored, skipped, comparisons, curves = evaluate_all(x, labels, n_bootstrap, seed, progress=progress,
                                                        finetuners=finetuners)
    skipped.update(unavailable)

    split_col = np.asarray(processed.stays.column("split").to_pylist())
    cohort = {split: {"stays": int((split_col == split).sum()), "with_hours": int(len(rows[split]))}
              for split in SPLITS}
    label_counts = {task: {split: dict(zip(("n", "positives", "unknown"), class_counts(labels[task][split])))
                           for split in SPLITS} for task in labels}
    macro = phenotype_macro(scored)
    report = {
        "tasks": scored,
        **({PHENOTYPE_MACRO: macro} if macro else {}),
        "skipped": skipped,
        "comparisons": comparisons,
        "encoder": encoder,
        "pooling": pooling_description(encoder, hours),
        "hours": hours,
        "methods": {m: d + (" (+ the static descriptors)" if static and m in STATIC_METHODS else "")
                    for m, d in method_descriptions(encoder, hours, seed, finetune_settings).items()
                    if m in x},
        **({"static": static_names} if static else {}),
        "checkpoint": str(ckpt_path),
        "step": step,
        "run": str(run_dir),
        "data": str(Path(data_dir)),
        "device": str(device),
        "cohort": cohort,
        "labels": label_counts,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "c_grid": list(C_GRID),
    }
    if label_fractions is not None:
        subjects = {s: processed.stays.column("subject_id").to_numpy()[rows[s]] for s in SPLITS}
        # a task skipped on the full splits stays skipped
        probed = {task: labels[task] for task in scored if in_tasks(task, label_tasks)}
        paired: dict = {}
        efficiency = label_efficiency(x, probed, subjects, label_fractions, repeats, seed, progress=progress,
                                      finetuners=finetuners, full=scored, n_bootstrap=n_bootstrap,
                                      comparisons=paired)
        macro = phenotype_macro_efficiency(efficiency)
        report["label_efficiency"] = efficiency | ({PHENOTYPE_MACRO: macro} if macro else {})
        if paired:
            report.setdefault("label_efficiency_comparisons", {}).update(paired)
        report["label_efficiency_setup"] = {"fractions": sorted(label_fractions), "repeats": repeats,
                                            "tasks": list(probed),
                                            "subsampled": ["train", "val"], "by": "subject_id"}
    # the PCA plot shows every stay of the cohort, all splits together
    nonempty = [s for s in SPLITS if len(rows[s])]
    embedded = [m for m in ("jepa", "random_init") if m in x]
    embeddings = {m: np.concatenate([x[m][s] for s in nonempty]) for m in embedded} if nonempty and embedded else None
    # one PCA column per task; the phenotypes (many, and summed up by their macro) only when alone
    shown = [t for t in labels if not is_phenotype(t)] or list(labels)
    all_labels = {task: np.concatenate([labels[task][s] for s in nonempty]) for task in shown} if nonempty and shown else None
    unseen = unseen_positions_note(config, hours)
    notes = list(warnings) + ([unseen] if unseen else [])
    if "aki_24_72h" in scored:
        from ehrjepa.probe.aki import describe

        notes.append(f"aki_24_72h: {describe()}")
    for task in online_tasks:  # every hour of every stay, from the hours before it (online.py)
        from ehrjepa.probe.online import merge_online, run_online

        online = run_online(processed, {"jepa": model, "random_init": untrained, "jepa_finetune": model,
                                        "scratch": untrained}, methods, encoder, device,
                            n_bootstrap, seed, progress, label_fractions if in_tasks(task, label_tasks) else None,
                            repeats, task=task, finetune_settings=finetune_settings)
        notes += merge_online(report, online, curves, task, label_fractions, repeats)
    report["notes"] = notes
    write_report(report, out_dir, curves=curves, embeddings=embeddings, labels=all_labels,
                 metrics_csv=run_dir / "metrics.csv")
    return report


# the methods `--static` extends: the frozen embeddings and the tabular summaries (the fine-tuned
# models read windows, not feature vectors; clinical_score is the score alone)
STATIC_METHODS = ("jepa", "random_init", "raw_features", "raw_gbdt")


def clinical_scores(processed, data_dir) -> np.ndarray:
    """float64 per stay: the data's clinical score (fit.SCORE_COLUMN), NaN where unknown; an error
    naming stays.parquet where the data has none."""
    from ehrjepa.probe.fit import SCORE_COLUMN

    if SCORE_COLUMN not in processed.stays.column_names:
        raise ValueError(f"clinical_score: {Path(data_dir) / 'stays.parquet'} has no clinical score "
                         f"column ({SCORE_COLUMN}, the 2012 challenge's SAPS-I)")
    return processed.stays.column(SCORE_COLUMN).to_numpy(zero_copy_only=False).astype(np.float64)


def run_label_probe(labels_dir, processed, models, methods, encoder, hours, device, batch_size, n_bootstrap, seed,
                    progress, label_fractions, repeats, out_dir: Path, header: dict, unseen: str | None,
                    metrics_csv: Path, warnings=()) -> dict:
    """run_probe with --labels: the tasks of the label files (`label_probe.py`), the same report with
    report["label_files"] (the labels placed and not placed) and no PCA plot (labels have no one cohort)."""
    from ehrjepa.probe.label_probe import probe_label_files
    from ehrjepa.probe.report import write_report

    found, curves = probe_label_files(labels_dir, processed, models, methods, encoder, hours, device, batch_size,
                                      n_bootstrap, seed, progress, label_fractions, repeats)
    span = "hours [0, h) of the label's stay before its prediction_time"
    report = {
        "tasks": found.pop("tasks"),
        "skipped": found.pop("skipped"),
        "comparisons": found.pop("comparisons"),
        "encoder": encoder,
        "pooling": found.pop("pooling"),
        "hours": hours,
        "methods": {m: d for m, d in method_descriptions(encoder, hours, seed, span=span).items() if m in methods},
        **header,
        "device": str(device),
        "cohort": found.pop("cohort"),
        "labels": found.pop("labels"),
        "label_files": found.pop("label_files"),
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "c_grid": list(C_GRID),
        **found,  # label_efficiency(_setup) on request
    }
    report["notes"] = list(warnings) + ([unseen] if unseen else [])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_report(report, out_dir, curves=curves, metrics_csv=metrics_csv)
    return report
