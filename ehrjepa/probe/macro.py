"""`phenotype_macro`: one number per method for the phenotype tasks, the mean over those scored.

Phenotypes are many small tasks; a method's macro AUROC (and AUPRC) is the unweighted mean of its
test AUROC (AUPRC) over the phenotype tasks that were scored, each phenotype counting alike
whatever its prevalence (as multi-label phenotyping benchmarks report it). Which phenotypes went
into the mean is listed beside it: a skipped phenotype is left out, not counted as 0.5.
"""
from __future__ import annotations

import numpy as np

from ehrjepa.probe.tasks import is_phenotype


def _mean(values: list[float]) -> float:
    kept = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")


def phenotype_macro(tasks: dict[str, dict[str, dict]]) -> dict | None:
    """report["phenotype_macro"] from report["tasks"] ({task: {method: {"auroc", "auprc", ...}}}):
    {method: {"auroc", "auprc", "tasks": [phenotypes averaged]}}, or None when no phenotype was scored."""
    scored = [t for t in tasks if is_phenotype(t)]
    if not scored:
        return None
    methods = list(tasks[scored[0]])
    return {m: {"auroc": _mean([tasks[t][m]["auroc"] for t in scored]),
                "auprc": _mean([tasks[t][m]["auprc"] for t in scored]),
                "tasks": scored}
            for m in methods}


def phenotype_macro_efficiency(label_efficiency: dict[str, dict[str, dict[str, dict]]]) -> dict | None:
    """label_efficiency["phenotype_macro"] from the label efficiency of the phenotype tasks:
    {method: {fraction: {"auroc_mean", "auprc_mean", "tasks", ...}}}, or None without phenotypes.

    At each fraction, "auroc_mean" is the mean over phenotypes of each phenotype's mean over its
    repeats (those whose repeats were all skipped at that fraction are left out and not listed in
    "tasks"). The spread over repeats of a mean over tasks is not defined when the tasks were fit on
    different repeats, so "auroc_sd" and "auprc_sd" are null; the count keys are null too (each
    phenotype has its own)."""
    scored = [t for t in label_efficiency if is_phenotype(t)]
    if not scored:
        return None
    out = {}
    for method, fractions in label_efficiency[scored[0]].items():
        out[method] = {}
        for key in fractions:
            entries = {t: label_efficiency[t][method][key] for t in scored}
            fitted = [t for t, r in entries.items() if r["repeats"] > 0]
            out[method][key] = {
                "auroc_mean": _mean([entries[t]["auroc_mean"] for t in fitted]), "auroc_sd": None,
                "auprc_mean": _mean([entries[t]["auprc_mean"] for t in fitted]), "auprc_sd": None,
                "n_train": None, "positives_train": None, "n_val": None, "positives_val": None,
                "repeats": min((entries[t]["repeats"] for t in fitted), default=0),
                "repeats_skipped": 0, "skip_reasons": [], "tasks": fitted}
    return out
