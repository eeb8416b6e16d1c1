"""The sweep's objective: one trial is one ordinary `ehrjepa train` run, scored at each validation step.

- `probe` (default): a frozen probe of the run's EMA target encoder, embedded over the probe's
  first HOURS of each stay (as `ehrjepa probe` does): a standardised logistic regression with
  C = PROBE_C fit on the train split (optionally on a seeded fraction of its subjects), scored by
  AUROC on the whole validation split. Maximised. C is fixed rather than chosen on validation, so
  the validation split only scores; the test split is never read.
- `val_loss`: the run's validation loss (the JEPA loss on its fixed validation batches). Minimised.

Each validation step reports its value to Optuna (`trial.report`), and Optuna's pruner may stop
the trial there (`optuna.TrialPruned` raised out of `train`). The trial's value is the one at its
last step. The probe runs under a forked RNG and puts the model back in training mode, so a
trial's training is the same step for step as the run `ehrjepa train` would make of its config.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

import numpy as np

from ehrjepa.config import ConfigError, config_from_dict
from ehrjepa.sweep.space import Param, with_values
from ehrjepa.sweep.study import LOGGER

OBJECTIVES = {"probe": "maximize", "val_loss": "minimize"}
PROBE_C = 1.0  # inverse L2 strength of the probe's logistic regression on standardised embeddings


class TrialFailed(RuntimeError):
    """A trial that ran but yields no value (e.g. no validation step); the study marks it FAIL."""


class ProbeScorer:
    """The probe objective's data, read once per sweep: train and val windows of the first `hours`
    hours of each stay, their labels for `task`, and the train rows a label fraction keeps."""

    def __init__(self, data_dir, task: str, hours: int, label_fraction: float = 1.0, seed: int = 0):
        from ehrjepa.data import WindowDataset, open_processed
        from ehrjepa.probe.label_efficiency import subject_order, take_fraction
        from ehrjepa.probe.tasks import MIN_CLASS_COUNT, TASKS, class_counts, is_phenotype, labels_by_split

        if task not in TASKS and not is_phenotype(task):
            raise ValueError(f"--task {task!r}: expected one of {', '.join(TASKS)} or phenotype_<name>")
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"--label-fraction {label_fraction}: expected a fraction in (0, 1]")
        processed = open_processed(data_dir)
        subject = processed.stays.column("subject_id").to_numpy()
        self.datasets, self.y = {}, {}
        for split in ("train", "val"):  # never "test"
            dataset = WindowDataset.for_hours(processed, split, hours)
            rows = dataset.window_index[:, 0].astype(np.int64)
            labels, unavailable = labels_by_split(processed, {split: rows}, hours)
            if task in unavailable:
                raise ValueError(f"--task {task}: {unavailable[task]}")
            if task not in labels:  # a phenotype this data does not have
                known = sorted(t for t in labels if is_phenotype(t)) or ["none"]
                raise ValueError(f"--task {task}: {data_dir}/stays.parquet has no {task} column "
                                 f"(phenotypes of this data: {', '.join(known)})")
            y = labels[task][split]
            keep = ~np.isnan(y)
            if split == "train" and label_fraction < 1.0:
                order = subject_order(subject[rows], np.random.default_rng(seed))
                keep &= take_fraction(subject[rows], order, label_fraction)
            n, pos, _ = class_counts(y[keep])
            need = MIN_CLASS_COUNT[split]
            if min(pos, n - pos) < need:
                raise ValueError(f"{data_dir}: the probe objective needs >= {need} positives and negatives of "
                                 f"{task} in the {split} split's stays of >= {hours} h"
                                 + (f" at label fraction {label_fraction:g}" if split == "train" else "")
                                 + f", it has {pos} of {n}; try another --task or --objective val_loss")
            self.datasets[split] = (dataset, keep)
            self.y[split] = y[keep].astype(np.int64)

    def score(self, model) -> float:
        """Validation AUROC of a probe fit on the train embeddings of `model`'s target encoder."""
        import torch

        from ehrjepa.probe.embeddings import embed_stays
        from ehrjepa.probe.fit import fit_probe

        device = next(model.parameters()).device
        was_training = model.training
        x = {}
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for split, (dataset, keep) in self.datasets.items():
                emb, _ = embed_stays(model, dataset, "target", device, progress=False)
                x[split] = emb[keep]
        model.train(was_training)
        _, _, val_auroc, _ = fit_probe(x["train"], self.y["train"], x["val"], self.y["val"], c_grid=(PROBE_C,))
        return float(val_auroc)


class Objective:
    """Optuna objective: draw the trial's values, train its run folder, report and return its value."""

    def __init__(self, base_raw: dict, params: list[Param], study_dir: Path, kind: str,
                 scorer: ProbeScorer | None = None, say=print):
        if kind not in OBJECTIVES:
            raise ValueError(f"--objective {kind!r}: expected one of {', '.join(OBJECTIVES)}")
        if kind == "probe" and scorer is None:
            raise ValueError("the probe objective needs a ProbeScorer")
        self.base_raw, self.params, self.study_dir = base_raw, params, Path(study_dir)
        self.kind, self.scorer, self.say = kind, scorer, say

    def value(self, trial, step: int, model, row: dict) -> float:
        """The objective of `trial` at one validation step (tests replace this to plant values)."""
        if self.kind == "val_loss":
            return float(row["val_loss"])
        return self.scorer.score(model)

    def __call__(self, trial) -> float:
        import optuna

        from ehrjepa.train import train
        from ehrjepa.train.loop import CheckpointWriteFailed, TrainingDiverged

        run_dir = self.study_dir / f"trial_{trial.number:04d}"
        # who runs it: a rerun on this host fails the trial when that process is gone (study.py)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        values = {p.key: p.suggest(trial) for p in self.params}
        last = {}

        def on_validation(step, model, row):
            value = self.value(trial, step, model, row)
            last["step"], last["value"] = step, value
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step} with {self.kind} {value:.4f}")

        start = time.perf_counter()
        self.say(f"trial {trial.number}: {run_dir} with "
                 + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()))
        try:  # a trial that cannot run or diverges fails alone, with its reason in one line
            cfg = config_from_dict(with_values(self.base_raw, values), source=f"trial {trial.number}")
            train(cfg, run_dir, resume=False, progress=False, on_validation=on_validation)
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:  # Ctrl-C: failed by Optuna, but not counted toward --trials
            trial.set_user_attr("interrupted", "Ctrl-C")
            raise
        except (ConfigError, TrainingDiverged, CheckpointWriteFailed, ValueError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            trial.set_user_attr("error", reason)
            raise TrialFailed(reason) from None
        except Exception as e:  # noqa: BLE001 -- anything else: one line here, the traceback in the log
            first = (str(e).strip().splitlines() or [""])[0]
            reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
            logging.getLogger(LOGGER).exception("trial %d failed", trial.number)
            trial.set_user_attr("error", reason)
            raise TrialFailed(reason) from None
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        if "value" not in last:
            reason = f"no validation step ran in {run_dir} (empty val split?)"
            trial.set_user_attr("error", reason)
            raise TrialFailed(reason)
        return last["value"]
