"""Logistic-regression probes and their metrics, and `run_probe`, which evaluates a whole run.

Each (task, method) gets a standardised logistic regression fit on the train split, with the
inverse regularisation strength C chosen by AUROC on the validation split, and is scored on the
test split: AUROC and AUPRC (average precision) with 95 % percentile bootstrap intervals.
The bootstrap draws the same resamples of the test stays for every method of a task, so the
intervals of paired differences (e.g. jepa minus random_init) come for free.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np

from ehrjepa.probe.tasks import SPLITS, TASKS, class_counts, skip_reason

C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))  # 1e-4 ... 1e2
METHODS = ("jepa", "random_init", "raw_features")
COMPARISONS = (("jepa", "random_init"), ("jepa", "raw_features"))


# --- metrics ---------------------------------------------------------------------------------

def ranked_metrics(y: np.ndarray, score: np.ndarray, weights: np.ndarray | None = None):
    """AUROC and average precision of `score` for 0/1 labels `y`, under per-sample weights.

    weights: [B, n] (e.g. bootstrap counts) or None for one unweighted evaluation. Returns
    (auroc [B], auprc [B], valid [B]); valid is False where a row has a single class. Ties in the
    score count half for AUROC and form one threshold for average precision, as in scikit-learn.
    """
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if weights is None:
        weights = np.ones((1, len(y)))
    order = np.argsort(-score, kind="stable")                    # descending score
    s, yy, w = score[order], y[order], weights[:, order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])       # first index of each tie group
    pos = np.add.reduceat(w * yy, starts, axis=1)                # [B, groups]
    neg = np.add.reduceat(w * (1.0 - yy), starts, axis=1)
    tp, fp = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    valid = (n_pos > 0) & (n_neg > 0)
    # a positive beats every negative in a lower group, and half of those tied with it
    beaten = pos * (n_neg[:, None] - fp + 0.5 * neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = beaten.sum(axis=1) / (n_pos * n_neg)
        precision = tp / np.maximum(tp + fp, 1e-300)
        auprc = (pos * precision).sum(axis=1) / n_pos
    return np.where(valid, auroc, np.nan), np.where(valid, auprc, np.nan), valid


def bootstrap(y: np.ndarray, scores: dict[str, np.ndarray], n_bootstrap: int = 1000, seed: int = 0,
              chunk_elems: int = 4_000_000) -> dict:
    """Percentile bootstrap of AUROC and AUPRC over the test stays, shared across methods.

    Returns {"samples": {method: (auroc [kept], auprc [kept])}, "skipped": k}: resamples that drew
    a single class are skipped (same ones for every method) and counted.
    """
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, chunk_elems // max(n, 1))
    aurocs = {m: [] for m in scores}
    auprcs = {m: [] for m in scores}
    skipped = 0
    for lo in range(0, n_bootstrap, per_chunk):
        b = min(per_chunk, n_bootstrap - lo)
        draw = rng.integers(0, n, size=(b, n))
        counts = np.bincount((draw + (np.arange(b) * n)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        for method, score in scores.items():
            auroc, auprc, valid = ranked_metrics(y, score, counts)
            aurocs[method].append(auroc[valid])
            auprcs[method].append(auprc[valid])
        skipped += int((~valid).sum())
    samples = {m: (np.concatenate(aurocs[m]), np.concatenate(auprcs[m])) for m in scores}
    return {"samples": samples, "skipped": skipped}


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """[lo, hi] percentile interval; NaNs when there are no samples."""
    if len(samples) == 0:
        return [float("nan"), float("nan")]
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


# --- probes ----------------------------------------------------------------------------------

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


def evaluate_task(x: dict[str, dict[str, np.ndarray]], y: dict[str, np.ndarray], n_bootstrap: int = 1000,
                  seed: int = 0, c_grid=C_GRID):
    """Probe every method of one task.

    x: {method: {split: features [n_split, d]}}; y: {split: labels [n_split]} with NaN for unknown
    (those stays are dropped). Returns (results {method: metrics dict}, comparisons
    {"a - b": {...}}, curves {method: (y_test, score_test)}).
    """
    known = {split: ~np.isnan(y[split]) for split in SPLITS}
    yk = {split: y[split][known[split]].astype(np.int64) for split in SPLITS}
    results, scores = {}, {}
    for method, xm in x.items():
        xs = {split: np.asarray(xm[split])[known[split]] for split in SPLITS}
        model, c, val_auroc, converged = fit_probe(xs["train"], yk["train"], xs["val"], yk["val"], c_grid, seed)
        scores[method] = model.decision_function(xs["test"])
        auroc, auprc, _ = ranked_metrics(yk["test"], scores[method])
        results[method] = {"auroc": float(auroc[0]), "auprc": float(auprc[0]), "C": c, "val_auroc": val_auroc,
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
                 n_bootstrap: int = 1000, seed: int = 0, c_grid=C_GRID, progress: bool = False):
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
        tasks[task], comparisons[task], curves[task] = evaluate_task(x, labels[task], n_bootstrap, seed, c_grid)
    return tasks, skipped, comparisons, curves


# --- a whole run -----------------------------------------------------------------------------

def resolve_checkpoint(run_dir: Path, checkpoint: str | Path | None) -> Path:
    """The checkpoint to probe: the one given, else RUN/checkpoints/best.pt, else last.pt."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    for name in ("best.pt", "last.pt"):
        path = Path(run_dir) / "checkpoints" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"no checkpoint in {Path(run_dir) / 'checkpoints'} (looked for best.pt, last.pt); "
                            f"pass --checkpoint PATH")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available")
    return device


def random_init_like(config, n_features: int, max_hours: int, seed: int = 0):
    """An untrained JEPA of the same architecture (same config), built with a fixed seed."""
    import torch

    from ehrjepa.train.loop import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(config, n_features, max_hours).eval()


def unseen_positions_note(config, hours: int) -> str | None:
    """A note when the probe embeds hour positions that the context encoder never saw as context
    in pretraining (the EMA target encoder only copies what the context encoder learned), or None.

    With the future mask the context is hours [0, mask.context_hours) of each window; with
    multiblock, any hour of the data.length-hour window."""
    future = config.mask.kind == "future"
    seen = config.mask.context_hours if future else config.data.length
    if hours <= seen:
        return None
    fix = (f"data.length={hours + config.mask.target_hours}, mask.context_hours={hours}" if future
           else f"data.length={hours}")
    return (f"the encoder saw hour positions [0, {seen}) as context in pretraining (mask.kind="
            f"{config.mask.kind}); hours {seen}-{hours - 1} of the {hours} embedded here are positions it never "
            f"learned from. Pretrain with windows whose context covers the probe's hours ({fix}); on the "
            f"synthetic data, unseen positions cost the small model most of its gain over random_init (README, "
            f"\"The small model on CPU\")")


def run_probe(run_dir, data_dir, out_dir, checkpoint=None, encoder: str = "target", hours: int = 24,
              device: str = "cpu", batch_size: int = 256, n_bootstrap: int = 1000, seed: int = 0,
              progress: bool = True) -> dict:
    """Probe a pretrained run against random_init and raw_features; write REPORT and return its dict."""
    import torch

    from ehrjepa.data import WindowDataset, open_processed
    from ehrjepa.probe.baselines import raw_features
    from ehrjepa.probe.embeddings import embed_stays, pooling_description
    from ehrjepa.probe.report import write_report
    from ehrjepa.probe.tasks import task_labels
    from ehrjepa.train import load_model

    if encoder not in ("target", "context"):
        raise ValueError(f"encoder must be 'target' or 'context', not {encoder!r}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ckpt_path = resolve_checkpoint(run_dir, checkpoint)
    device = resolve_device(device)
    processed = open_processed(data_dir)
    model, config = load_model(ckpt_path, map_location="cpu")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    step, n_features, max_hours = ckpt.get("step"), int(ckpt["n_features"]), int(ckpt["max_hours"])
    del ckpt
    if n_features != len(processed.features):
        raise ValueError(f"checkpoint {ckpt_path} was trained on {n_features} features, but {data_dir} "
                         f"has {len(processed.features)}")
    if hours > max_hours:
        raise ValueError(f"--hours {hours} is longer than the model's max_hours {max_hours} ({ckpt_path})")
    untrained = random_init_like(config, n_features, max_hours, seed)

    datasets = {split: WindowDataset.for_hours(processed, split, hours) for split in SPLITS}
    rows = {split: datasets[split].window_index[:, 0].astype(np.int64) for split in SPLITS}
    x = {"jepa": {}, "random_init": {}, "raw_features": {}}
    for split in SPLITS:
        for method, m in (("jepa", model), ("random_init", untrained)):
            emb, stay = embed_stays(m, datasets[split], encoder, device, batch_size, progress,
                                    desc=f"embed {method} {split}")
            if not np.array_equal(stay, rows[split]):
                raise RuntimeError(f"{method} {split}: embeddings came back in another order than the stays")
            x[method][split] = emb
        x["raw_features"][split] = raw_features(processed, rows[split], hours)
    per_split = {split: task_labels(processed.stays, rows[split]) for split in SPLITS}
    labels = {task: {split: per_split[split][task] for split in SPLITS} for task in TASKS}
    tasks, skipped, comparisons, curves = evaluate_all(x, labels, n_bootstrap, seed, progress=progress)

    split_col = np.asarray(processed.stays.column("split").to_pylist())
    cohort = {split: {"stays": int((split_col == split).sum()), "with_hours": int(len(rows[split]))}
              for split in SPLITS}
    label_counts = {task: {split: dict(zip(("n", "positives", "unknown"), class_counts(labels[task][split])))
                           for split in SPLITS} for task in TASKS}
    report = {
        "tasks": tasks,
        "skipped": skipped,
        "comparisons": comparisons,
        "encoder": encoder,
        "pooling": pooling_description(encoder, hours),
        "hours": hours,
        "methods": {"jepa": f"logistic regression on the {encoder} encoder of the checkpoint",
                    "random_init": f"the same on an untrained encoder of the same architecture (seed {seed})",
                    "raw_features": "logistic regression on per-feature last, mean, min, max, observed "
                                    f"fraction over hours [0, {hours})"},
        "checkpoint": str(ckpt_path),
        "step": step,
        "run": str(run_dir),
        "data": str(Path(data_dir)),
        "device": device,
        "cohort": cohort,
        "labels": label_counts,
        "n_bootstrap": n_bootstrap,
        "seed": seed,
        "c_grid": list(C_GRID),
    }
    # the PCA plot shows every stay of the cohort, all splits together
    nonempty = [s for s in SPLITS if len(rows[s])]
    embeddings = {m: np.concatenate([x[m][s] for s in nonempty]) for m in ("jepa", "random_init")} if nonempty else None
    all_labels = {task: np.concatenate([labels[task][s] for s in nonempty]) for task in TASKS} if nonempty else None
    unseen = unseen_positions_note(config, hours)
    notes = [unseen] if unseen else []
    if not nonempty:
        notes.append(f"no stay has {hours} hours or more: nothing to probe")
    report["notes"] = notes
    write_report(report, out_dir, curves=curves, embeddings=embeddings, labels=all_labels,
                 metrics_csv=run_dir / "metrics.csv")
    return report
