#!/usr/bin/env python
"""A results table from one or more `ehrjepa probe` reports of one protocol, as docs/results.md
prints them.

    python scripts/protocol_table.py REPORT_DIR [REPORT_DIR ...] [--task mortality_hosp]

One report (the challenge's protocol: one test set): per label fraction and method, AUROC and
AUPRC as the mean +- SD over the label-efficiency repeats (with all labels, the report's own
numbers and 95 % bootstrap interval). Several reports (the pooled protocol: one per split): the
mean +- SD over the splits of each split's value (its mean over repeats at a fraction below 1),
as the papers report their 5 splits. Repeats skipped for too few positives are counted in a note.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load(report_dir: Path, task: str) -> dict:
    report = json.loads((report_dir / "report.json").read_text())
    if task not in report.get("tasks", {}):
        raise SystemExit(f"{report_dir}/report.json: no scored task {task!r}")
    return report


def cell(values: list[float], sd: float | None = None) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    mean = float(np.mean(values))
    spread = sd if sd is not None else (float(np.std(values, ddof=1)) if len(values) > 1 else None)
    return f"{mean:.3f}" + (f" +- {spread:.3f}" if spread is not None else "")


def table(reports: list[dict], task: str) -> tuple[str, list[str]]:
    methods = list(reports[0]["tasks"][task])
    fractions = sorted({float(f) for r in reports
                        for m in r.get("label_efficiency", {}).get(task, {}).values() for f in m}
                       | {1.0})
    lines = ["| labels | method | AUROC | AUPRC |", "|---|---|---|---|"]
    notes = []
    for f in fractions:
        for k, m in enumerate(methods):
            if f == 1.0:  # the fit on every label (the label-efficiency curve reuses it)
                full = [r["tasks"][task][m] for r in reports]
                if len(reports) == 1:
                    t = full[0]
                    au = f"{t['auroc']:.3f} [{t['auroc_ci'][0]:.3f}, {t['auroc_ci'][1]:.3f}]"
                    ap = f"{t['auprc']:.3f} [{t['auprc_ci'][0]:.3f}, {t['auprc_ci'][1]:.3f}]"
                else:
                    au, ap = cell([t["auroc"] for t in full]), cell([t["auprc"] for t in full])
            else:
                eff = [next((v for key, v in r.get("label_efficiency", {}).get(task, {})
                             .get(m, {}).items() if float(key) == f), None) for r in reports]
                eff = [e for e in eff if e is not None]
                if not eff:
                    continue
                one = len(reports) == 1
                au = cell([e.get("auroc_mean", float("nan")) for e in eff],
                          eff[0].get("auroc_sd") if one else None)
                ap = cell([e.get("auprc_mean", float("nan")) for e in eff],
                          eff[0].get("auprc_sd") if one else None)
                skipped = sum(int(e.get("repeats_skipped", 0)) for e in eff)
                if skipped and k == 0:  # the same repeats are skipped for every method
                    notes.append(f"at {f:g}: {skipped} repeat(s) skipped for too few positives or "
                                 "negatives (every method alike)")
            lines.append(f"| {f'{f:g}' if k == 0 else ''} | {m} | {au} | {ap} |")
    return "\n".join(lines), notes


def wide(text: str, metric: str) -> str:
    """table()'s long rows turned into one row per fraction and one column per method."""
    rows, methods, fraction = {}, [], None
    for line in text.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        fraction = cells[0] or fraction
        if cells[1] not in methods:
            methods.append(cells[1])
        rows.setdefault(fraction, {})[cells[1]] = cells[2 if metric == "auroc" else 3]
    out = [f"| labels | {' | '.join(methods)} |", "|---" * (len(methods) + 1) + "|"]
    out += [f"| {f} | " + " | ".join(r.get(m, "") for m in methods) + " |" for f, r in rows.items()]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", type=Path)
    p.add_argument("--task", default="mortality_hosp")
    p.add_argument("--wide", choices=("auroc", "auprc"), default=None,
                   help="one row per label fraction, one column per method, of this metric")
    args = p.parse_args(argv)
    reports = [load(d, args.task) for d in args.reports]
    text, notes = table(reports, args.task)
    if args.wide:
        text = wide(text, args.wide)
    print(text)
    for n in notes:
        print(f"- {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
