"""The probes: one per (task, method), fit on train, tuned on val, scored on test.

Each probe is a standardised logistic regression fit on the train split, with the inverse
regularisation strength C chosen by AUROC on the validation split; `raw_gbdt` is instead a
histogram gradient-boosted tree ensemble (scikit-learn's HistGradientBoostingClassifier, the strong
tabular baseline) whose number of trees is chosen by AUROC on the validation split; `jepa_finetune`
and `scratch` train an encoder and head end to end (finetune.py), early-stopped on validation AUROC.
Every probe is scored on the test split: AUROC and AUPRC (average precision) with 95 % percentile bootstrap
intervals, and the paired differences of jepa against each baseline.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np

from ehrjepa.data.processed import SPLITS
from ehrjepa.probe.metrics import bootstrap, percentile_ci, ranked_metrics
from ehrjepa.probe.tasks import class_counts, skip_reason

C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))  # 1e-4 ... 1e2
COMPARISONS = (("jepa", "random_init"), ("jepa", "raw_features"), ("jepa", "raw_gbdt"),
               ("jepa_finetune", "scratch"), ("jepa_finetune", "raw_gbdt"))

# Every method `ehrjepa probe` knows, in report order; raw_gbdt sees the same features as
# raw_features. Methods in GBDT_METHODS are fit by fit_gbdt, those in FINETUNE_METHODS by the
# finetuner given for them (their "features" are rows of a finetune.StayWindows), every other one
# by fit_probe. The fine-tuned ones take minutes on CPU: not among the DEFAULT_METHODS.
# clinical_score ranks the stays by a clinical score of the data itself (SCORE_COLUMN: the 2012
# challenge's SAPS-I), with no fitting: the challenge's own baseline.
METHODS = ("jepa", "random_init", "raw_features", "raw_gbdt", "jepa_finetune", "scratch",
           "clinical_score")
DEFAULT_METHODS = ("jepa", "random_init", "raw_features", "raw_gbdt")
GBDT_METHODS = frozenset({"raw_gbdt"})
FINETUNE_METHODS = frozenset({"jepa_finetune", "scratch"})
SCORE_METHODS = frozenset({"clinical_score"})
SCORE_COLUMN = "saps1"

# raw_gbdt: up to GBDT_MAX_TREES trees of at most GBDT_LEAVES leaves at learning rate 0.1, early-
# stopped when the validation log-loss has not improved for GBDT_PATIENCE trees; the leaves are chosen
# by validation AUROC, small trees first (ties go to the simpler model).
GBDT_LEAVES = (7, 31)
GBDT_MAX_TREES = 300
GBDT_PATIENCE = 20


def fit_probe(x_train, y_train, x_val, y_val, c_grid=C_GRID, seed: int = 0):
    """Standardise + logistic regression on train, C chosen by validation AUROC.

    Returns (fitted pipeline, chosen C, its validation AUROC, whether every fit converged).
    C runs from small to large with warm starts (each fit starts from the last solution), and
    ties in validation AUROC go to the smaller C (stronger regularisation). BLAS is held to one
    thread: these problems are small, and threads only contend, most of all on a shared box.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    scaler = StandardScaler().fit(x_train)
    xt, xv = scaler.transform(x_train), scaler.transform(x_val)
    model = LogisticRegression(max_iter=2000, warm_start=True, random_state=seed)
    best = None
    converged = True
    with threadpool_limits(limits=1, user_api="blas"):
        for c in sorted(c_grid):
            model.set_params(C=c)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                model.fit(xt, y_train)
            converged &= not any(issubclass(w.category, ConvergenceWarning) for w in caught)
            val_auroc = float(ranked_metrics(y_val, model.decision_function(xv))[0][0])
            if best is None or val_auroc > best[2]:
                best = (copy.deepcopy(model), c, val_auroc)
    return Pipeline([("scale", scaler), ("logistic", best[0])]), best[1], best[2], converged


def fit_gbdt(x_train, y_train, x_val, y_val, leaves=GBDT_LEAVES, seed: int = 0):
    """Gradient-boosted trees on train, early-stopped on val, leaves chosen by validation AUROC.

    Returns (fitted model, {"max_leaf_nodes", "n_trees"} chosen, its validation AUROC, True).
    Each candidate adds trees until the validation log-loss has not improved for GBDT_PATIENCE
    trees (scikit-learn's early stopping, fed our validation split rather than a slice of train;
    the loss, not AUROC, because it comes free with each tree while sklearn's AUROC scorer costs
    more than the tree).
    OpenMP is held to one thread: these problems are small, and threads only contend.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    best = None
    with threadpool_limits(limits=1):
        for n_leaves in sorted(leaves):
            model = HistGradientBoostingClassifier(
                learning_rate=0.1, max_iter=GBDT_MAX_TREES, max_leaf_nodes=n_leaves, early_stopping=True,
                scoring="loss", n_iter_no_change=GBDT_PATIENCE, random_state=seed)
            model.fit(x_train, y_train, X_val=x_val, y_val=y_val)
            val_auroc = float(ranked_metrics(y_val, model.decision_function(x_val))[0][0])
            if best is None or val_auroc > best[2]:
                best = (model, n_leaves, val_auroc)
    model, n_leaves, val_auroc = best
    return model, {"max_leaf_nodes": n_leaves, "n_trees": int(model.n_iter_)}, val_auroc, True


class ScoreRanker:
    """A clinical score as the prediction, no fitting: the score itself, with an unknown score
    (NaN) replaced by the train split's median score."""

    def __init__(self, fill: float):
        self.fill = fill

    def decision_function(self, x) -> np.ndarray:
        v = np.asarray(x, np.float64)[:, 0]
        return np.where(np.isnan(v), self.fill, v)


def fit_score(x_train, y_train, x_val, y_val):
    """(ScoreRanker, {"unknown_as": the train median}, val AUROC, True) for one score column."""
    known = x_train[:, 0][~np.isnan(x_train[:, 0])]
    ranker = ScoreRanker(float(np.median(known)) if len(known) else 0.0)
    val_auroc = float(ranked_metrics(y_val, ranker.decision_function(x_val))[0][0]) \
        if len(np.unique(y_val)) == 2 else float("nan")
    return ranker, {"unknown_as": ranker.fill}, val_auroc, True


def fit_method(method: str, x_train, y_train, x_val, y_val, c_grid=C_GRID, seed: int = 0, finetuners=None):
    """fit_gbdt for GBDT_METHODS, finetuners[method] for FINETUNE_METHODS, fit_score for
    SCORE_METHODS, else fit_probe. Returns (model, {hyperparameter: value}, val AUROC, converged);
    logistic probes report {"C": C}."""
    if method in SCORE_METHODS:
        return fit_score(x_train, y_train, x_val, y_val)
    if method in FINETUNE_METHODS:
        if not finetuners or method not in finetuners:
            raise ValueError(f"method {method} needs a finetuner (finetune.Finetuner) to fit")
        return finetuners[method](x_train, y_train, x_val, y_val, seed)
    if method in GBDT_METHODS:
        return fit_gbdt(x_train, y_train, x_val, y_val, seed=seed)
    model, c, val_auroc, converged = fit_probe(x_train, y_train, x_val, y_val, c_grid, seed)
    return model, {"C": c}, val_auroc, converged


def evaluate_task(x: dict[str, dict[str, np.ndarray]], y: dict[str, np.ndarray], n_bootstrap: int = 1000,
                  seed: int = 0, c_grid=C_GRID, finetuners=None):
    """Probe every method of one task.

    x: {method: {split: features [n_split, d]}}; y: {split: labels [n_split]} with NaN for unknown
    (those stays are dropped); finetuners: {method: Finetuner} for FINETUNE_METHODS. Returns (results {method: metrics dict}, comparisons
    {"a - b": {...}}, curves {method: (y_test, score_test)}).
    """
    known = {split: ~np.isnan(y[split]) for split in SPLITS}
    yk = {split: y[split][known[split]].astype(np.int64) for split in SPLITS}
    results, scores = {}, {}
    for method, xm in x.items():
        xs = {split: np.asarray(xm[split])[known[split]] for split in SPLITS}
        model, params, val_auroc, converged = fit_method(method, xs["train"], yk["train"], xs["val"], yk["val"],
                                                         c_grid, seed, finetuners)
        scores[method] = model.decision_function(xs["test"])
        auroc, auprc, _ = ranked_metrics(yk["test"], scores[method])
        results[method] = {"auroc": float(auroc[0]), "auprc": float(auprc[0]), **params, "val_auroc": val_auroc,
                           "converged": converged}
    boot = bootstrap(yk["test"], scores, n_bootstrap, seed)
    n_test, pos_test, _ = class_counts(y["test"])
    for method in x:
        auroc_s, auprc_s = boot["samples"][method]
        r = results[method]
        r.update({"auroc_ci": percentile_ci(auroc_s), "auprc_ci": percentile_ci(auprc_s),
                  "n": n_test, "positives": pos_test, "n_train": int(len(yk["train"])),
                  "bootstrap_skipped": boot["skipped"]})
        # reorder so the keys come first in the JSON
        results[method] = {k: r[k] for k in ("auroc", "auroc_ci", "auprc", "auprc_ci", "n", "positives")} | r
    comparisons = {}
    for a, b in COMPARISONS:
        if a in scores and b in scores:
            diff_auroc = boot["samples"][a][0] - boot["samples"][b][0]
            diff_auprc = boot["samples"][a][1] - boot["samples"][b][1]
            comparisons[f"{a} - {b}"] = {
                "auroc_diff": results[a]["auroc"] - results[b]["auroc"], "auroc_diff_ci": percentile_ci(diff_auroc),
                "auprc_diff": results[a]["auprc"] - results[b]["auprc"], "auprc_diff_ci": percentile_ci(diff_auprc)}
    curves = {m: (yk["test"], scores[m]) for m in scores}
    return results, comparisons, curves


def evaluate_all(x: dict[str, dict[str, np.ndarray]], labels: dict[str, dict[str, np.ndarray]],
                 n_bootstrap: int = 1000, seed: int = 0, c_grid=C_GRID, progress: bool = False, finetuners=None):
    """Probe every task in `labels` ({task: {split: y}}) with every method in `x`.

    Returns (tasks {task: {method: metrics}}, skipped {task: reason}, comparisons, curves).
    """
    from tqdm.auto import tqdm

    tasks, skipped, comparisons, curves = {}, {}, {}, {}
    for task in tqdm(list(labels), desc="probe", unit="task", disable=not progress):
        reason = skip_reason(labels[task])
        if reason is not None:
            skipped[task] = f"too few in a class: {reason}"
            continue
        tasks[task], comparisons[task], curves[task] = evaluate_task(x, labels[task], n_bootstrap, seed, c_grid,
                                                                                 finetuners)
    return tasks, skipped, comparisons, curves
