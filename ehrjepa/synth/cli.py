"""`ehrjepa synth`: options and the summary printed after a run."""
from __future__ import annotations

import argparse
import sys
import time

from ehrjepa.synth.batches import write_tables
from ehrjepa.synth.meds import write_meds
from ehrjepa.synth.schemas import MODULE_OF
from ehrjepa.synth.writer import FORMATS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True,
                        help="output directory, gets hosp/ and icu/; with --format meds a new or "
                             "empty one, gets data/ and metadata/ (required)")
    parser.add_argument("--patients", type=int, required=True,
                        help="number of patients (required)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--format", choices=FORMATS + ("meds",), default="csv.gz",
                        help="table file format, or meds: the same events as a MEDS 0.4 dataset "
                             "(codes as MIMIC_IV_MEDS writes them) (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: a progress bar on stderr)")


def main(args: argparse.Namespace) -> int:
    if args.format == "meds":
        return _main_meds(args)
    t0, c0 = time.perf_counter(), time.process_time()
    rows, sec = write_tables(args.out, args.patients, args.seed, args.format, not args.no_progress)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    for name, n in rows.items():
        print(f"{MODULE_OF[name]}/{name}.{args.format}: {n:,} rows")
    n_all = sum(rows.values())
    print(f"{n_all:,} rows in {total:.1f} s, {n_all / max(total, 1e-9):,.0f} rows/s "
          f"(generate {sec['generate']:.1f} s, write {sec['write']:.1f} s; "
          f"CPU time: {cpu:.1f} s, generate {sec['generate_cpu']:.1f} s, "
          f"write {sec['write_cpu']:.1f} s)")
    return 0


def _main_meds(args: argparse.Namespace) -> int:
    try:
        rows, sec = write_meds(args.out, args.patients, args.seed, not args.no_progress)
    except ValueError as e:
        print(f"ehrjepa synth: error: {e}", file=sys.stderr)
        return 2
    for name, n in rows.items():
        print(f"{name}: {n:,} rows")
    n_events = sum(n for name, n in rows.items() if name.startswith("data/"))
    print(f"{n_events:,} events in {sec['seconds']:.1f} s, "
          f"{n_events / max(sec['seconds'], 1e-9):,.0f} events/s (CPU time: {sec['cpu']:.1f} s)")
    return 0
