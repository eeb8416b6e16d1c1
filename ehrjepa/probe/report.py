"""The probe report: REPORT/report.json, REPORT/report.md and PNG plots (matplotlib, Agg).

Plots: `roc_{task}.png` (test ROC curves of every method), `pca.png` (2-D PCA of the stay
embeddings coloured by outcome, e.g. "died in hospital" / "survived", jepa beside random_init),
`training_curves.png` (loss, val_loss and RankMe from RUN/metrics.csv) and, with label fractions,
`label_efficiency_{task}.png` (test AUROC against the fraction of labelled subjects).
"""
from __future__ import annotations

import csv
import fnmatch
import json
import math
import os
from pathlib import Path

import numpy as np

from ehrjepa.metrics_csv import metric_series, read_metrics
from ehrjepa.probe.tasks import PHENOTYPE_MACRO, is_phenotype, outcome_names

# Below these, the markdown says plainly that the test split is tiny (the numbers cannot rank the
# methods) or small (read the intervals, not the point estimates).
TINY_N, TINY_POSITIVES = 100, 10
SMALL_N, SMALL_POSITIVES = 500, 50


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def no_results_line(report: dict) -> str:
    """In place of the results table when no task was scored: why, in one line."""
    skipped = report.get("skipped", {})
    if not skipped:
        return "No task was probed."
    n = len(skipped)
    return (f"No results: {'the one task was' if n == 1 else f'all {n} tasks were'} skipped (why: the notes "
            f"below).")


def results_table(report: dict) -> str:
    """The markdown table of every probed task and method; one line saying why when none was scored."""
    if not report.get("tasks") and not report.get(PHENOTYPE_MACRO):
        return no_results_line(report)
    lines = ["| task | method | AUROC [95% CI] | AUPRC [95% CI] | n | positives |",
             "|---|---|---|---|---|---|"]
    for task, methods in report["tasks"].items():
        for method, r in methods.items():
            lines.append(f"| {task} | {method} | {_fmt(r['auroc'])} [{_fmt(r['auroc_ci'][0])}, "
                         f"{_fmt(r['auroc_ci'][1])}] | {_fmt(r['auprc'])} [{_fmt(r['auprc_ci'][0])}, "
                         f"{_fmt(r['auprc_ci'][1])}] | {r['n']} | {r['positives']} |")
    for method, r in report.get(PHENOTYPE_MACRO, {}).items():
        lines.append(f"| {PHENOTYPE_MACRO} | {method} | {_fmt(r['auroc'])} (mean of {len(r['tasks'])} phenotypes) | "
                     f"{_fmt(r['auprc'])} | | |")
    for task, reason in report.get("skipped", {}).items():
        lines.append(f"| {task} | (skipped) | {reason} | | | |")
    return "\n".join(lines)


def tiny_notes(report: dict) -> list[str]:
    """Plain-language warnings for tasks whose test split is too small to compare methods."""
    notes = []
    for task, methods in report["tasks"].items():
        r = next(iter(methods.values()))
        size = f"the test split has n = {r['n']} stays with {r['positives']} positives"
        if r["n"] < TINY_N or r["positives"] < TINY_POSITIVES:
            notes.append(f"**n is tiny for {task}**: {size}. The 95 % intervals are very wide; these "
                         f"numbers cannot rank the methods.")
        elif r["n"] < SMALL_N or r["positives"] < SMALL_POSITIVES:
            notes.append(f"**n is small for {task}**: {size}. Read the 95 % intervals, not the point "
                         f"estimates.")
    return notes


def report_notes(report: dict) -> list[str]:
    """Every note of a report, for report.md and the CLI alike: small-n warnings, the run's own
    notes (report["notes"]) and the skipped tasks."""
    notes = tiny_notes(report) + list(report.get("notes", []))
    return notes + [f"{task} was skipped: {reason}." for task, reason in report.get("skipped", {}).items()]


def comparison_lines(report: dict) -> list[str]:
    lines = []
    for task, comps in report.get("comparisons", {}).items():
        for name, c in comps.items():
            lo, hi = c["auroc_diff_ci"]
            verdict = ("interval excludes 0" if (lo > 0 or hi < 0) else "interval includes 0")
            lines.append(f"- {task}, {name}: AUROC difference {c['auroc_diff']:+.3f} "
                         f"[{_fmt(lo)}, {_fmt(hi)}] (paired bootstrap, {verdict})")
    return lines


def _mean_sd(mean, sd) -> str:
    return _fmt(mean) if sd is None or math.isnan(sd) else f"{_fmt(mean)} ± {_fmt(sd)}"


def no_efficiency_line(report: dict) -> str | None:
    """Why report["label_efficiency"] has no row to show, in one line; None when it has rows."""
    efficiency = report.get("label_efficiency", {})
    if any(fractions for methods in efficiency.values() for fractions in methods.values()):
        return None
    if not report.get("tasks"):
        return "No task was refit at the label fractions: every task was skipped on the full splits."
    return "No task was refit at the label fractions: none of the tasks refit (--label-tasks) was scored."


def label_efficiency_table(report: dict) -> str:
    """The markdown table of report["label_efficiency"]: mean ± sd over repeats per fraction."""
    empty = no_efficiency_line(report)
    if empty:
        return empty
    lines = ["| task | method | fraction | AUROC mean ± sd | AUPRC mean ± sd | n train | positives train "
             "| n val | positives val | repeats | skipped |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, methods in report.get("label_efficiency", {}).items():
        for method, fractions in methods.items():
            for key, r in fractions.items():
                lines.append(f"| {task} | {method} | {key} | {_mean_sd(r['auroc_mean'], r['auroc_sd'])} | "
                             f"{_mean_sd(r['auprc_mean'], r['auprc_sd'])} | {_count(r['n_train'])} | "
                             f"{_count(r['positives_train'])} | {_count(r['n_val'])} | "
                             f"{_count(r['positives_val'])} | {r['repeats']} | {r['repeats_skipped']} |")
    return "\n".join(lines)


def label_efficiency_summary(report: dict) -> str:
    """The compact table of report["label_efficiency"]: one row per task and method, one column per
    fraction, the test AUROC's mean over repeats ("-" where every repeat was skipped). The full
    table (spread, AUPRC, counts) is `label_efficiency_table`, in report.md."""
    empty = no_efficiency_line(report)
    if empty:
        return empty
    efficiency = report.get("label_efficiency", {})
    keys = list(dict.fromkeys(k for methods in efficiency.values() for fr in methods.values() for k in fr))
    lines = ["| task | method | " + " | ".join(f"AUROC at {k}" for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for task, methods in efficiency.items():
        for i, (method, fractions) in enumerate(methods.items()):
            cells = [_fmt(fractions[k]["auroc_mean"]) if k in fractions and fractions[k]["repeats"] else "-"
                     for k in keys]
            lines.append(f"| {task if i == 0 else ''} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _count(x) -> str:
    """A mean count over repeats: whole numbers as such, else one decimal."""
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def label_efficiency_notes(report: dict) -> list[str]:
    """One note per (task, fraction) with skipped repeats: how many and why (the first reason)."""
    notes = []
    for task, methods in report.get("label_efficiency", {}).items():
        for key, r in next(iter(methods.values()), {}).items():
            if task == PHENOTYPE_MACRO:  # a mean of the phenotypes' own entries: say which were left out
                every = [t for t in report["label_efficiency"] if is_phenotype(t)]
                left_out = [t for t in every if t not in r.get("tasks", every)]
                if left_out:
                    notes.append(f"{PHENOTYPE_MACRO} at fraction {key} averages {len(every) - len(left_out)} of "
                                 f"{len(every)} phenotypes ({', '.join(left_out)}: every repeat skipped)")
                continue
            if r["repeats_skipped"]:
                notes.append(f"label fraction {key} of {task}: {r['repeats_skipped']} of "
                             f"{r['repeats'] + r['repeats_skipped']} repeats skipped, too few in a class "
                             f"({r['skip_reasons'][0]}{', ...' if len(r['skip_reasons']) > 1 else ''})")
    for task, pairs in report.get("label_efficiency_comparisons", {}).items():
        for pair, by_fraction in pairs.items():
            for key, d in by_fraction.items():
                if "utility_diff" in d:  # the online tasks say theirs in their own section
                    continue
                lo, hi = d["auroc_diff_ci"]
                notes.append(f"{task}, {pair} at label fraction {key}: AUROC difference "
                             f"{d['auroc_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] (paired bootstrap of the test "
                             f"stays, means over {d['repeats']} repeats; interval "
                             f"{'excludes' if lo > 0 or hi < 0 else 'includes'} 0)")
    return notes


def cohort_line(report: dict) -> str:
    """The report.md line on which stays (or labels) were probed."""
    if "label_files" in report:
        return (f"- cohort: the placed labels of each task, in the split of their stay (at most "
                f"{report['hours']} hours each; see Labels)")
    return (f"- cohort: stays with at least {report['hours']} hours; " + ", ".join(
        f"{s} {c['with_hours']} of {c['stays']}" for s, c in report.get("cohort", {}).items()))


def placement_table(report: dict) -> str:
    """The markdown table of report["label_files"]: labels read, placed (by split) and not placed by reason."""
    counts = report.get("labels", {})
    out = ["| task | read | placed | positives | train / val / test | not placed |", "|---|---|---|---|---|---|"]
    for task, t in report["label_files"]["tasks"].items():
        splits = " / ".join(str(counts.get(task, {}).get(s, {}).get("n", 0)) for s in ("train", "val", "test"))
        dropped = ", ".join(f"{reason} {n}" for reason, n in t["not_placed"].items() if n) or "none"
        out.append(f"| {task} | {t['read']} | {t['placed']} | {t['positives']} | {splits} | {dropped} |")
    return "\n".join(out)


def markdown(report: dict) -> str:
    """The human-readable summary."""
    c_grid = report.get("c_grid") or [float("nan")]
    out = ["# Probe report", "",
           f"- checkpoint: `{report.get('checkpoint')}` (step {report.get('step')})",
           f"- data: `{report.get('data')}`",
           f"- embeddings: {report['pooling']}",
           f"- probe: standardised logistic regression, C from {c_grid[0]:g} to "
           f"{c_grid[-1]:g} chosen by validation AUROC; metrics on the test split "
           f"with 95 % percentile bootstrap intervals ({report.get('n_bootstrap')} resamples, seed "
           f"{report.get('seed')}); subject-level splits from preprocessing",
           cohort_line(report), "", "## Results", "", results_table(report), ""]
    from ehrjepa.probe.online import online_markdown

    out += online_markdown(report)  # the online tasks' utility and per-stay view (sepsis_hourly)
    if PHENOTYPE_MACRO in report:
        scored = next(iter(report[PHENOTYPE_MACRO].values()))["tasks"]
        out += [f"{PHENOTYPE_MACRO}: each method's mean test AUROC (AUPRC) over the {len(scored)} phenotype tasks "
                f"scored ({', '.join(scored)}), each phenotype counting alike; no interval.", ""]
    if "label_files" in report:
        out += ["## Labels", "", f"From `{report['label_files']['dir']}`; each placed label's stay embedded and "
                f"summarised over its whole hours before prediction_time, at most {report['hours']}.", "",
                placement_table(report), ""]
    notes = report_notes(report)
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    comps = comparison_lines(report)
    if comps:
        out += ["## Paired differences", ""] + comps + [""]
    if "label_efficiency" in report:
        le = report.get("label_efficiency_setup", {})
        out += ["## Label efficiency", "",
                f"Every method refit on a fraction of the train and validation subjects (subsampled by "
                f"subject, {le.get('repeats')} seeded repeats, nested within a repeat), scored on the full "
                f"test split; mean ± sd over the repeats that could be fit, counts are means.", "",
                label_efficiency_table(report), ""]
        if PHENOTYPE_MACRO in report["label_efficiency"]:
            out += [f"{PHENOTYPE_MACRO}: at each fraction, the mean over the phenotype tasks of each one's mean "
                    f"over its repeats (no sd, no counts: each phenotype has its own).", ""]
        notes = label_efficiency_notes(report)
        out += [f"- {n}" for n in notes] + ([""] if notes else [])
    plots = report.get("plots", [])
    if plots:
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(out)


# --- plots -----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(task: str, curves: dict[str, tuple[np.ndarray, np.ndarray]], results: dict, path: Path) -> None:
    """Test ROC curves of every method of one task."""
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for method, (y, score) in curves.items():
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, label=f"{method} (AUROC {results[method]['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    n, pos = next(iter(results.values()))["n"], next(iter(results.values()))["positives"]
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{task} (test n={n}, {pos} pos)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PCA_MAX_POINTS = 4000  # stays drawn per panel: more only hide one another


def plot_pca(embeddings: dict[str, np.ndarray], labels: dict[str, np.ndarray], path: Path) -> None:
    """2-D PCA of each method's stay embeddings (rows), coloured by each task's outcome (columns).

    The PCA is fit on every stay; each panel draws at most PCA_MAX_POINTS of them (the same random
    subset everywhere, in random order, so neither class is painted over the other)."""
    from matplotlib.lines import Line2D
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    plt = _pyplot()
    tasks = list(labels)
    n = len(next(iter(embeddings.values()))) if embeddings else 0
    shown = np.random.default_rng(0).permutation(n)[:PCA_MAX_POINTS]
    fig, axes = plt.subplots(len(embeddings), len(tasks), figsize=(3.6 * len(tasks), 3.4 * len(embeddings)),
                             squeeze=False)
    for i, (method, emb) in enumerate(embeddings.items()):
        xy = np.zeros((len(emb), 2))
        explained = [0.0, 0.0]
        if len(emb) >= 2 and emb.shape[1] >= 2:
            z = StandardScaler().fit_transform(emb)
            pca = PCA(n_components=2, random_state=0).fit(z)
            xy = pca.transform(z)
            explained = pca.explained_variance_ratio_
        for j, task in enumerate(tasks):
            ax = axes[i, j]
            y = labels[task][shown]
            known = ~np.isnan(y)
            colors = np.where(y[known] == 1, "tab:red", "tab:blue")
            ax.scatter(xy[shown[known], 0], xy[shown[known], 1], s=4, alpha=0.5, c=colors, rasterized=True)
            names = outcome_names(task)
            handles = [Line2D([], [], ls="", marker="o", color=color,
                              label=f"{names[value]} (n={int((labels[task] == value).sum())})")
                       for value, color in ((0, "tab:blue"), (1, "tab:red"))]
            ax.legend(handles=handles, fontsize=7)
            drawn = f", {int(known.sum())} of {int((~np.isnan(labels[task])).sum())} drawn" if n > len(shown) else ""
            ax.set_title(f"{method}: {task}{drawn}", fontsize=9)
            ax.set_xlabel(f"PC1 ({explained[0]:.0%})", fontsize=8)
            ax.set_ylabel(f"PC2 ({explained[1]:.0%})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_label_efficiency(task: str, methods: dict[str, dict[str, dict]], path: Path) -> bool:
    """Test AUROC against the label fraction (log axis), one line per method, ± sd shaded; False,
    drawing nothing, when no fraction could be fit (every repeat skipped): a log axis of no points
    cannot be drawn."""
    drawable = any(r["auroc_mean"] is not None and not math.isnan(r["auroc_mean"])
                   for fractions in methods.values() for r in fractions.values())
    if not drawable:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for method, fractions in methods.items():
        f = np.array([float(k) for k in fractions])
        mean = np.array([np.nan if r["auroc_mean"] is None else r["auroc_mean"] for r in fractions.values()],
                        dtype=float)
        sd = np.array([np.nan if r["auroc_sd"] is None else r["auroc_sd"] for r in fractions.values()],
                      dtype=float)
        line, = ax.plot(f, mean, marker="o", ms=4, label=method)
        band = np.nan_to_num(sd)
        ax.fill_between(f, mean - band, mean + band, color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xscale("log")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="fraction of labelled train and val subjects", ylabel="test AUROC (mean ± sd)",
           title=f"{task}: label efficiency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_training_curves(metrics_csv: Path, path: Path) -> bool:
    """Loss and val_loss (left) and RankMe (right) against step; False when there is nothing to plot."""
    series = {k: (np.asarray(steps), np.asarray(values))
              for k, (steps, values) in metric_series(read_metrics(metrics_csv)).items()}
    if not any(k in series for k in ("loss", "val_loss", "rankme")):
        return False
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for col, style in (("loss", dict(lw=0.8, alpha=0.8)), ("val_loss", dict(marker="o", ms=3))):
        if col in series:
            ax1.plot(*series[col], label=col, **style)
    ax1.set(xlabel="step", ylabel="loss", title="JEPA loss")
    if all(series[c][1].min() > 0 for c in ("loss", "val_loss") if c in series):
        ax1.set_yscale("log")  # the loss falls by orders of magnitude early on
    ax1.legend(fontsize=8)
    if "rankme" in series:
        ax2.plot(*series["rankme"], marker="o", ms=3, color="tab:green")
    ax2.set(xlabel="step", ylabel="RankMe", title="RankMe of validation embeddings")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _plain(x):
    """JSON-safe copy: numpy scalars to Python numbers, NaN to null (strict JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else float(x)
    return x


REPORT_FILES = ("report.json", "report.md")
PLOT_PATTERNS = ("roc_*.png", "pca.png", "training_curves.png", "label_efficiency_*.png")


def _ours(name: str) -> bool:
    """Whether a file name is one a report of ours writes (or its temporary)."""
    return (name in REPORT_FILES or any(fnmatch.fnmatch(name, p) for p in PLOT_PATTERNS)
            or any(name == f".{r}.tmp" for r in REPORT_FILES))


def _read_report(path: Path) -> dict | None:
    """An earlier report.json of ours, or None (missing, damaged or someone else's)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return old if isinstance(old, dict) and "tasks" in old and "plots" in old else None


def earlier_report(out_dir: Path) -> list[Path] | None:
    """The files an earlier report of ours left in `out_dir`, to be replaced by a new one: [] for a
    missing or empty folder; None for a folder that is not ours (files in it, but neither a
    report.json of ours nor only files of our names), which a report never writes into.

    With a report.json of ours, only its report files and the plots it lists count (a user's
    file beside them is left alone); a folder of nothing but our file names (a report that
    stopped before its report.json) is ours whole."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    entries = sorted(out_dir.iterdir())
    old = _read_report(out_dir / "report.json")
    if old is not None:
        listed = {str(p) for p in old.get("plots", []) if isinstance(p, str)}
        return [e for e in entries if e.is_file() and _ours(e.name)
                and (e.name in listed or e.name in REPORT_FILES or e.name.endswith(".tmp"))]
    if all(e.is_file() and _ours(e.name) for e in entries):
        return entries
    return None


def check_report_dir(out_dir: Path) -> None:
    """Before any work: FileExistsError, one line, for an `out_dir` a report cannot be written to
    (a file, or a folder with files that are not an earlier report of ours)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} is a file: the report needs a folder there")
    if earlier_report(out_dir) is None:
        raise FileExistsError(f"{out_dir} is not empty and holds no report of `ehrjepa probe`; choose another "
                              f"--out (a rerun replaces only a report of ours)")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def write_report(report: dict, out_dir: Path, curves: dict | None = None, embeddings: dict | None = None,
                 labels: dict | None = None, metrics_csv: Path | None = None) -> dict:
    """Write report.json and report.md into `out_dir`, then the plots, then the two again listing
    the plots; returns `report` with `plots` added.

    The report comes first, so a plot that fails (or a process killed while drawing) never costs
    it; a plot that cannot be drawn is a note in it, not an error. An earlier report of ours in
    `out_dir` is replaced whole: its plots are removed, so none of them is left beside the new one."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = earlier_report(out_dir) or []
    notes = report.setdefault("notes", [])
    report["plots"] = []
    _write_report_files(report, out_dir)
    for path in stale:
        if path.name not in REPORT_FILES:
            path.unlink(missing_ok=True)

    plots = []

    def draw(name: str, plot, *args, empty: str | None = None, unreadable: Path | None = None) -> None:
        path = out_dir / name
        try:
            drawn = plot(*args, path)
        except Exception as e:  # noqa: BLE001 -- any failure of a plot costs that plot only
            path.unlink(missing_ok=True)
            if unreadable is not None and isinstance(e, (ValueError, csv.Error)):  # a damaged metrics.csv
                notes.append(f"{unreadable} cannot be read ({_first_line(e)}): no training curves")
            else:
                notes.append(f"{name} could not be drawn ({_first_line(e)})")
            return
        if drawn is False:
            if empty:
                notes.append(empty)
            return
        plots.append(name)

    for task, task_curves in (curves or {}).items():
        draw(f"roc_{task}.png", plot_roc, task, task_curves, report["tasks"][task])
    if embeddings and labels:
        draw("pca.png", plot_pca, embeddings, labels)
    for task, methods in report.get("label_efficiency", {}).items():
        draw(f"label_efficiency_{task}.png", plot_label_efficiency, task, methods,
             empty=f"label_efficiency_{task}.png not drawn: no label fraction of {task} could be fit")
    if metrics_csv is not None:
        if Path(metrics_csv).is_file():
            draw("training_curves.png", plot_training_curves, Path(metrics_csv), unreadable=Path(metrics_csv),
                 empty=f"{metrics_csv} has no loss, val_loss or rankme values: no training curves")
        else:
            notes.append(f"{metrics_csv} not found: no training curves")
    report["plots"] = plots
    _write_report_files(report, out_dir)
    return report


def _write_report_files(report: dict, out_dir: Path) -> None:
    write_atomic(out_dir / "report.json", json.dumps(_plain(report), indent=2, allow_nan=False))
    write_atomic(out_dir / "report.md", markdown(report))


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, then rename it: never half a report on a crash."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
