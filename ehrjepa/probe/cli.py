"""`ehrjepa probe`: how much a pretrained encoder helps clinical prediction, against baselines.

    ehrjepa probe --run RUN --data OUT --out REPORT [--tasks T,...] [--methods M,...]
                  [--label-fractions F,... --repeats R] [--labels DIR]

Embeds the first --hours hours of every stay with the frozen target encoder (or, with --encoder
context, the context encoder) of RUN's checkpoint (jepa) and with an untrained encoder of the same
architecture (random_init), summarises the same hours per feature (raw_features), fits
logistic-regression probes on the train split with C chosen on val (and gradient-boosted trees on
the raw features, raw_gbdt), with --methods ...,jepa_finetune,scratch also fine-tunes the
pretrained and the untrained encoder with a small head end to end (minutes on CPU, so off by
default), and reports test AUROC/AUPRC with bootstrap intervals in
REPORT/report.{json,md} and PNGs. With --label-fractions, every method is also refit on that
fraction of the train and val subjects, --repeats times, and scored on the full test split.
--tasks picks the tasks (default: every task the data has; `phenotypes` for all phenotype tasks).
On the PhysioNet 2019 challenge's data, `sepsis_hourly` predicts at every hour of every stay from
the hours before it (online.py: one causal pass of the encoders, raw_gbdt on running summaries;
the challenge's utility beside AUROC) and `sepsis_after_24h` is a stay-level task.
With --labels DIR, the tasks are those of DIR's MEDS label files instead (`label_probe.py`).
Any fault is one line naming its file.
"""
from __future__ import annotations

import argparse
import sys

from ehrjepa.probe.fit import DEFAULT_METHODS, METHODS
from ehrjepa.probe.tasks import HOURS, KNOWN_TASKS, PHENOTYPE_PREFIX, PHENOTYPES


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory of `ehrjepa train` (RUN)")
    parser.add_argument("--data", required=True, help="processed data directory of `ehrjepa preprocess` (OUT)")
    parser.add_argument("--out", required=True, help="report directory to write (REPORT)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to probe (default: RUN/checkpoints/best.pt, else last.pt)")
    parser.add_argument("--encoder", choices=("target", "context"), default="target",
                        help="which encoder embeds the stays: the EMA target encoder or the context "
                             "encoder (default: %(default)s)")
    parser.add_argument("--hours", type=int, default=HOURS, help="embed and summarise hours [0, HOURS) of "
                        "stays with at least HOURS hours (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="stays per embedding batch (default: %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the intervals (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the bootstrap, probes and random_init (default: %(default)s)")
    parser.add_argument("--tasks", default=None, metavar="T,...",
                        help="comma-separated tasks to probe, some of " + ", ".join(KNOWN_TASKS) + f", {PHENOTYPE_PREFIX}<name> "
                             f"for each phenotype column of the data, or {PHENOTYPES} for all of them (default: "
                             "every task the data has)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                        help="comma-separated methods to fit, some of " + ", ".join(METHODS) + " (default: %(default)s)")
    parser.add_argument("--label-fractions", default=None, metavar="F,...",
                        help="also refit every method on these fractions in (0, 1] of the train and val "
                             "subjects, e.g. 0.01,0.05,0.1,0.25,1, scored on the full test split "
                             "(default: none)")
    parser.add_argument("--label-tasks", default=None, metavar="T,...",
                        help="refit only these of the probed tasks at the label fractions, named as for --tasks "
                             "(default: every task probed)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="seeded subsamples per label fraction (default: %(default)s)")
    parser.add_argument("--labels", default=None, metavar="DIR",
                        help="probe the tasks of these MEDS label files instead of the built-in tasks: DIR/TASK/"
                             "*.parquet (subject_id, prediction_time, boolean_value, as ACES writes them), each "
                             "label's stay embedded over its whole hours before prediction_time, at most --hours "
                             "(default: none)")
    parser.add_argument("--static", action="store_true",
                        help="append the stays' static descriptors (age, sex, height, weight, ICU type "
                             "one-hot, with unknown indicators) to the inputs of jepa, random_init, "
                             "raw_features and raw_gbdt alike (default: off)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default: show them)")


def main(args: argparse.Namespace) -> int:
    from ehrjepa.probe.label_efficiency import parse_fractions
    from ehrjepa.probe.report import (comparison_lines, label_efficiency_notes, label_efficiency_summary,
                                      placement_table, report_notes, results_table)
    from ehrjepa.probe.run import check_label_tasks, run_probe
    from ehrjepa.probe.tasks import parse_tasks

    if args.hours < 1:
        print(f"ehrjepa probe: --hours must be >= 1, not {args.hours}", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        print(f"ehrjepa probe: --methods: {', '.join(unknown) or 'none given'}: choose from {', '.join(METHODS)}",
              file=sys.stderr)
        return 2
    for flag, value in (("--repeats", args.repeats), ("--bootstrap", args.bootstrap), ("--batch-size", args.batch_size)):
        if value < 1:
            print(f"ehrjepa probe: {flag} must be >= 1, not {value}", file=sys.stderr)
            return 2
    try:
        fractions = parse_fractions(args.label_fractions) if args.label_fractions is not None else None
        tasks = parse_tasks(args.tasks) if args.tasks is not None else None
        label_tasks = parse_tasks(args.label_tasks, "--label-tasks") if args.label_tasks is not None else None
        check_label_tasks(label_tasks, tasks, fractions, args.labels)
    except ValueError as e:
        print(f"ehrjepa probe: {e}", file=sys.stderr)
        return 2
    try:
        report = run_probe(args.run, args.data, args.out, checkpoint=args.checkpoint, encoder=args.encoder,
                           hours=args.hours, device=args.device, batch_size=args.batch_size,
                           n_bootstrap=args.bootstrap, seed=args.seed, progress=not args.no_progress,
                           methods=methods, label_fractions=fractions, repeats=args.repeats,
                           labels_dir=args.labels, tasks=tasks, label_tasks=label_tasks,
                           static=args.static)
    except (OSError, ValueError, RuntimeError) as e:  # each names its file on its first line
        text = str(e).strip()
        print(f"ehrjepa probe: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
        return 1
    print(f"\nprobe of {report['checkpoint']} (step {report['step']}); embeddings: {report['pooling']}\n")
    print(results_table(report))
    from ehrjepa.probe.online import online_markdown

    for line in online_markdown(report):
        print(line)
    if "label_files" in report:
        print()
        print(placement_table(report))
    for line in report_notes(report):
        print(f"- {line}")
    for line in comparison_lines(report):
        print(line)
    if "label_efficiency" in report:
        print(f"\nlabel efficiency (test AUROC, mean over {args.repeats} repeats; spread, AUPRC and counts in "
              f"report.md):\n")
        print(label_efficiency_summary(report))
        for line in label_efficiency_notes(report):
            print(f"- {line}")
    print(f"\nreport: {args.out}/report.md, report.json, " + ", ".join(report.get("plots", [])))
    return 0
