"""Label efficiency: every probe refit on a fraction of the labelled subjects, scored on the full test split.

Users pretrain because labels are scarce. For each fraction f and repeat r, the train and the
validation subjects are each subsampled to ceil(f * their number) subjects (every stay of a chosen
subject comes along: the splits are by subject, so is the subsample). The validation set picks C
and stops the trees, so it is kept just as scarce: a full one would leak labels into the fit. The
test split is never subsampled, so every fraction is scored on the same stays.

Within a repeat, the subjects are drawn as one seeded random order per split and a fraction takes
its first subjects, so the subsets are nested (the 5 % subjects are among the 25 % ones) and the
curves do not cross by sampling luck alone. At f = 1 every repeat is the full split: the fit is the
same seeded fit every time, so it is made once and counted for every repeat, or taken from the
default probe's fit on the full splits when that is given (`full`): the same fit, not refit.

A (fraction, repeat) whose subsample has too few positives or negatives in train or val for the
probe (tasks.MIN_CLASS_COUNT) is skipped for every method, counted and its reason reported.

With `comparisons` (a dict) and n_bootstrap > 0, each pair of fit.COMPARISONS gets, per fraction
below 1, the difference of the two methods' repeat-mean test AUROC and AUPRC with a 95 % interval
from one bootstrap of the test stays shared by every repeat and method (paired: both methods are
scored on the same resamples); at 1 the report's own comparisons hold (the full-split fits).
"""
from __future__ import annotations

import math

import numpy as np

from ehrjepa.probe.fit import C_GRID, COMPARISONS, fit_method
from ehrjepa.probe.metrics import bootstrap, percentile_ci, ranked_metrics
from ehrjepa.probe.tasks import MIN_CLASS_COUNT, class_counts, skip_reason

SUBSAMPLED = ("train", "val")


def parse_fractions(text: str) -> list[float]:
    """"0.01,0.05,1" -> [0.01, 0.05, 1.0], sorted and unique; ValueError naming a bad entry."""
    fractions = []
    for item in text.split(","):
        try:
            f = float(item)
        except ValueError:
            raise ValueError(f"--label-fractions: {item.strip()!r} is not a number") from None
        if not 0.0 < f <= 1.0:
            raise ValueError(f"--label-fractions: {item.strip()} is not in (0, 1]")
        fractions.append(f)
    return sorted(set(fractions))


def fraction_key(fraction: float) -> str:
    """The JSON key of a fraction: 0.05 -> "0.05", 1.0 -> "1"."""
    return f"{fraction:g}"


def subject_order(subjects: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The distinct subjects of `subjects` in a random order drawn from `rng`."""
    return rng.permutation(np.unique(subjects))


def take_fraction(subjects: np.ndarray, order: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the rows whose subject is among the first ceil(fraction * len(order)) of `order`."""
    k = min(len(order), math.ceil(fraction * len(order) - 1e-9))
    return np.isin(subjects, order[:k])


def subsample_masks(subjects: dict[str, np.ndarray], fractions, repeats: int, seed: int = 0) -> dict:
    """{(fraction, repeat): {split: row mask}}: train and val subsampled by subject, test whole.

    subjects: {split: subject id of each row}. Repeat r draws its subject orders from
    default_rng([seed, r]), so a repeat's subsets do not depend on which fractions are asked for."""
    masks = {}
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        orders = {split: subject_order(subjects[split], rng) for split in SUBSAMPLED}
        for f in fractions:
            m = {split: take_fraction(subjects[split], orders[split], f) for split in SUBSAMPLED}
            m["test"] = np.ones(len(subjects["test"]), dtype=bool)
            masks[(f, r)] = m
    return masks


def too_few(y_by_split: dict[str, np.ndarray], min_count: dict[str, int] = MIN_CLASS_COUNT) -> str | None:
    """Why a subsample cannot be probed (too few positives or negatives in train or val), else None."""
    return skip_reason(y_by_split, min_count, splits=SUBSAMPLED)


def _sd(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")


def label_efficiency(x: dict[str, dict[str, np.ndarray]], labels: dict[str, dict[str, np.ndarray]],
                     subjects: dict[str, np.ndarray], fractions, repeats: int = 5, seed: int = 0,
                     c_grid=C_GRID, progress: bool = False, finetuners=None, full=None,
                     n_bootstrap: int = 0, comparisons: dict | None = None) -> dict:
    """Test AUROC/AUPRC of every method of every task at every label fraction, over seeded repeats.

    x: {method: {split: features}}; labels: {task: {split: y}} (NaN: unknown, left out);
    subjects: {split: subject id of each row}; finetuners: {method: Finetuner} for the fine-tuned
    methods, which see the same subsamples as every other method; full: {task: {method: {"auroc",
    "auprc", ...}}} of the fits on the full train and val splits (evaluate_all's), reused where a
    subsample is the full split. Returns {task: {method: {fraction key: {"auroc_mean",
    "auroc_sd", "auprc_mean", "auprc_sd", "n_train", "positives_train", "n_val", "positives_val",
    "repeats", "repeats_skipped", "skip_reasons"}}}}: the counts are means over the fitted repeats,
    "repeats" counts those, the sd is over them (null with fewer than 2).
    """
    from tqdm.auto import tqdm

    fractions = sorted(fractions)
    masks = subsample_masks(subjects, fractions, repeats, seed)
    out = {}
    bar = tqdm(total=len(labels) * len(fractions) * repeats, desc="label fractions", unit="subsample",
               disable=not progress)
    for task, y in labels.items():
        test_known = ~np.isnan(y["test"])
        y_test = y["test"][test_known].astype(np.int64)
        out[task] = {method: {} for method in x}
        whole = {m: (r["auroc"], r["auprc"]) for m, r in (full or {}).get(task, {}).items()}  # the full-split fits
        for f in fractions:
            runs = {method: [] for method in x}   # (auroc, auprc) per fitted repeat
            scores = {method: [] for method in x}  # test scores per fitted repeat (below 1)
            counts, reasons = [], []
            for r in range(repeats):
                bar.update(1)
                sub = {split: y[split][masks[(f, r)][split]] for split in SUBSAMPLED}
                reason = too_few(sub)
                if reason is not None:
                    reasons.append(f"repeat {r}: {reason}")
                    continue
                counts.append([class_counts(sub[split])[:2] for split in SUBSAMPLED])
                rows = {split: np.flatnonzero(masks[(f, r)][split] & ~np.isnan(y[split])) for split in SUBSAMPLED}
                is_whole = all(masks[(f, r)][split].all() for split in SUBSAMPLED)
                for method, xm in x.items():
                    if is_whole and method in whole:
                        runs[method].append(whole[method])
                        continue
                    model, _, _, _ = fit_method(method, np.asarray(xm["train"])[rows["train"]],
                                                y["train"][rows["train"]].astype(np.int64),
                                                np.asarray(xm["val"])[rows["val"]],
                                                y["val"][rows["val"]].astype(np.int64), c_grid, seed,
                                                finetuners)
                    score = model.decision_function(np.asarray(xm["test"])[test_known])
                    auroc, auprc, _ = ranked_metrics(y_test, score)
                    runs[method].append((float(auroc[0]), float(auprc[0])))
                    scores[method].append(score)
                    if is_whole:
                        whole[method] = runs[method][-1]
            mean_counts = np.mean(counts, axis=0) if counts else np.full((2, 2), np.nan)
            for method in x:
                aurocs = [a for a, _ in runs[method]]
                auprcs = [p for _, p in runs[method]]
                out[task][method][fraction_key(f)] = {
                    "auroc_mean": float(np.mean(aurocs)) if aurocs else float("nan"), "auroc_sd": _sd(aurocs),
                    "auprc_mean": float(np.mean(auprcs)) if auprcs else float("nan"), "auprc_sd": _sd(auprcs),
                    "n_train": float(mean_counts[0, 0]), "positives_train": float(mean_counts[0, 1]),
                    "n_val": float(mean_counts[1, 0]), "positives_val": float(mean_counts[1, 1]),
                    "repeats": len(aurocs), "repeats_skipped": len(reasons), "skip_reasons": reasons}
            if comparisons is not None and n_bootstrap > 0 and f < 1.0:
                paired = paired_differences(y_test, scores, n_bootstrap, seed)
                for pair, d in paired.items():
                    comparisons.setdefault(task, {}).setdefault(pair, {})[fraction_key(f)] = d
    bar.close()
    return out


def paired_differences(y_test: np.ndarray, scores: dict[str, list[np.ndarray]], n_bootstrap: int,
                       seed: int = 0) -> dict[str, dict]:
    """{"a - b": {"auroc_diff", "auroc_diff_ci", "auprc_diff", "auprc_diff_ci", "repeats"}} for the
    pairs of COMPARISONS whose methods both have test scores from the same repeats: the
    difference of their repeat-mean AUROC (AUPRC), and its 95 % percentile interval over one
    bootstrap of the test stays shared by every method and repeat."""
    pairs = [(a, b) for a, b in COMPARISONS if scores.get(a) and scores.get(b)
             and len(scores[a]) == len(scores[b])]
    if not pairs:
        return {}
    used = sorted({m for pair in pairs for m in pair})
    keyed = {f"{m}#{r}": s for m in used for r, s in enumerate(scores[m])}
    samples = bootstrap(y_test, keyed, n_bootstrap, seed)["samples"]

    def repeat_mean(m: str, which: int) -> np.ndarray:
        return np.mean([samples[f"{m}#{r}"][which] for r in range(len(scores[m]))], axis=0)

    point = {m: np.mean([ranked_metrics(y_test, s)[:2] for s in scores[m]], axis=0)[:, 0]
             for m in used}  # (repeat-mean AUROC, AUPRC), each score ranked once
    out = {}
    for a, b in pairs:
        out[f"{a} - {b}"] = {
            "auroc_diff": float(point[a][0] - point[b][0]),
            "auroc_diff_ci": percentile_ci(repeat_mean(a, 0) - repeat_mean(b, 0)),
            "auprc_diff": float(point[a][1] - point[b][1]),
            "auprc_diff_ci": percentile_ci(repeat_mean(a, 1) - repeat_mean(b, 1)),
            "repeats": len(scores[a])}
    return out
