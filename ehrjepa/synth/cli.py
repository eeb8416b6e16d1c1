"""`ehrjepa synth`: options and the summary printed after a run."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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


def check_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, in one line, before anything is written; None when nothing."""
    if args.patients < 1:
        return f"--patients must be >= 1, not {args.patients}"
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file: synth writes a folder there (choose another --out)"
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        return f"--out {out}: {parent} is a file, not a folder"
    return None


def main(args: argparse.Namespace) -> int:
    error = check_args(args)
    if error:
        print(f"ehrjepa synth: {error}", file=sys.stderr)
        return 2
    if args.format == "meds":
        return _main_meds(args)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        rows, sec = write_tables(args.out, args.patients, args.seed, args.format, not args.no_progress)
    except OSError as e:  # a full disk, a folder without write permission
        print(f"ehrjepa synth: cannot write {args.out}: {_first_line(e)}", file=sys.stderr)
        return 1
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
    except OSError as e:
        print(f"ehrjepa synth: cannot write {args.out}: {_first_line(e)}", file=sys.stderr)
        return 1
    for name, n in rows.items():
        print(f"{name}: {n:,} rows")
    n_events = sum(n for name, n in rows.items() if name.startswith("data/"))
    print(f"{n_events:,} events in {sec['seconds']:.1f} s, "
          f"{n_events / max(sec['seconds'], 1e-9):,.0f} events/s (CPU time: {sec['cpu']:.1f} s)")
    return 0


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
