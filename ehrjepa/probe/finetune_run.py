"""`run_finetune`: one fine-tuning run of `ehrjepa finetune`, from a checkpoint to DIR/result.json.

Reads the run's checkpoint and the processed data as the probe does (same cohort: stays with at
least `hours` hours; same labels; same subsample of train and val subjects as the probe's label
efficiency at repeat 0 with the same seed), trains finetune.py's classifier, scores the test split
and writes DIR/model.pt, then DIR/result.json, each atomically.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ehrjepa.data.processed import SPLITS
from ehrjepa.probe.tasks import HOURS


def run_finetune(run_dir, data_dir, task: str, out_dir, start: str = "pretrained", fraction: float = 1.0,
                 seed: int = 0, checkpoint=None, encoder: str = "target", hours: int = HOURS, settings=None,
                 device: str = "cpu", progress: bool = True) -> dict:
    """Fine-tune (start="pretrained": jepa_finetune) or train from scratch (start="scratch") on `task`;
    returns the result dict written to out_dir/result.json."""
    from ehrjepa.data import WindowDataset
    from ehrjepa.device import resolve_device
    from ehrjepa.models import save_checkpoint
    from ehrjepa.probe.finetune import Settings, StayWindows, encoder_of, finetune
    from ehrjepa.probe.label_efficiency import subsample_masks
    from ehrjepa.probe.metrics import ranked_metrics
    from ehrjepa.probe.report import _plain, write_atomic
    from ehrjepa.probe.run import (check_against_checkpoint, check_hours, load_trained, open_data, random_init_like,
                                   resolve_checkpoint)
    from ehrjepa.probe.tasks import (PHENOTYPE_PREFIX, TASKS, class_counts, is_phenotype, labels_by_split,
                                     select_tasks, skip_reason)

    if start not in ("pretrained", "scratch"):
        raise ValueError(f"start must be 'pretrained' or 'scratch', not {start!r}")
    if task not in TASKS and not is_phenotype(task):
        raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)} or {PHENOTYPE_PREFIX}<name>")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], not {fraction}")
    settings = settings or Settings()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file: the results need a folder there")
    ckpt_path = resolve_checkpoint(Path(run_dir), checkpoint)
    device = resolve_device(device)
    processed = open_data(data_dir)
    check_hours(processed, hours, data_dir)
    model, config, ckpt = load_trained(ckpt_path)
    warnings = check_against_checkpoint(ckpt, ckpt_path, processed, data_dir, "finetune")
    n_features = len(processed.features)
    if hours > config.data.max_hours:
        raise ValueError(f"--hours {hours} is longer than the model's max_hours {config.data.max_hours} ({ckpt_path})")

    datasets = {split: WindowDataset.for_hours(processed, split, hours) for split in SPLITS}
    rows = {split: datasets[split].window_index[:, 0].astype(np.int64) for split in SPLITS}
    labels, unavailable = labels_by_split(processed, rows, hours)
    labels, unavailable = select_tasks(labels, unavailable, [task], where=str(Path(data_dir) / "stays.parquet"))
    if task in unavailable:
        raise ValueError(f"{task} cannot be labelled: {unavailable[task]}")
    y = labels[task]
    subject_col = processed.stays.column("subject_id").to_numpy()
    subjects = {split: subject_col[rows[split]] for split in SPLITS}
    chosen = subsample_masks(subjects, [fraction], 1, seed)[(fraction, 0)]
    keep = {split: np.flatnonzero(chosen[split] & ~np.isnan(y[split])) for split in SPLITS}
    used = {split: y[split][keep[split]] for split in SPLITS}
    reason = skip_reason(used)
    if reason is not None:
        raise ValueError(f"{task} at fraction {fraction:g}: too few in a class: {reason}")

    windows, positions = StayWindows.from_datasets(datasets)
    start_encoder = (encoder_of(model, encoder) if start == "pretrained"
                     else random_init_like(config, n_features, seed).encoder)
    method = "jepa_finetune" if start == "pretrained" else "scratch"
    fitted = finetune(start_encoder, config.model.resolved().width, windows, positions["train"][keep["train"]],
                      used["train"], positions["val"][keep["val"]], used["val"], settings, seed, device, progress,
                      desc=f"{method} {task}")
    score = fitted.decision_function(positions["test"][keep["test"]])
    auroc, auprc, _ = ranked_metrics(used["test"].astype(np.int64), score)

    counts = {split: class_counts(used[split])[:2] for split in SPLITS}
    result = {
        "task": task, "method": method, "from": start, "encoder": encoder if start == "pretrained" else None,
        "test_auroc": float(auroc[0]), "test_auprc": float(auprc[0]), "val_auroc": fitted.val_auroc,
        "best_step": fitted.best_step, "steps_run": fitted.steps_run,
        "steps_budget": fitted.steps_budget,
        "n_train": counts["train"][0], "positives_train": counts["train"][1],
        "n_val": counts["val"][0], "positives_val": counts["val"][1],
        "n_test": counts["test"][0], "positives_test": counts["test"][1],
        "fraction": fraction, "seed": seed, "hours": hours, "settings": settings.as_dict(),
        "checkpoint": str(ckpt_path), "checkpoint_step": ckpt.get("step"), "data": str(Path(data_dir)),
        "device": str(device),
        "warnings": warnings,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in fitted.model.state_dict().items()}
    save_checkpoint({"model": state, "optimizer": {}, "step": fitted.best_step, "config": ckpt["config"],
                     "n_features": n_features, "hours": hours, "task": task, "method": method,
                     "head": settings.head}, out_dir / "model.pt")
    write_atomic(out_dir / "result.json", json.dumps(_plain(result), indent=2, allow_nan=False))
    return result
