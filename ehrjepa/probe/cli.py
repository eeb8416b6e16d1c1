"""`ehrjepa probe`: how much a pretrained encoder helps clinical prediction, against baselines.

    ehrjepa probe --run RUN --data OUT --out REPORT

Embeds the first --hours hours of every stay with the frozen target encoder (or, with --encoder
context, the context encoder) of RUN's checkpoint (jepa) and with an untrained encoder of the same
architecture (random_init), summarises the same hours per feature (raw_features), fits
logistic-regression probes on the train split with C chosen on val, and reports test AUROC/AUPRC
with bootstrap intervals in REPORT/report.{json,md} and PNGs. Any fault is one line naming its file.
"""
from __future__ import annotations

import argparse
import sys

from ehrjepa.probe.tasks import HOURS


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
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default: show them)")


def main(args: argparse.Namespace) -> int:
    from ehrjepa.probe.run import run_probe
    from ehrjepa.probe.report import comparison_lines, report_notes, results_table

    if args.hours < 1:
        print(f"ehrjepa probe: --hours must be >= 1, not {args.hours}", file=sys.stderr)
        return 2
    try:
        report = run_probe(args.run, args.data, args.out, checkpoint=args.checkpoint, encoder=args.encoder,
                           hours=args.hours, device=args.device, batch_size=args.batch_size,
                           n_bootstrap=args.bootstrap, seed=args.seed, progress=not args.no_progress)
    except (OSError, ValueError, RuntimeError) as e:  # each names its file on its first line
        text = str(e).strip()
        print(f"ehrjepa probe: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
        return 1
    print(f"\nprobe of {report['checkpoint']} (step {report['step']}); embeddings: {report['pooling']}\n")
    print(results_table(report))
    for line in report_notes(report):
        print(f"- {line}")
    for line in comparison_lines(report):
        print(line)
    print(f"\nreport: {args.out}/report.md, report.json, " + ", ".join(report.get("plots", [])))
    return 0
