"""The `ehrjepa` command: one subcommand per stage of the pipeline.

Each subcommand lives in its own module, which provides `configure(parser)` (adds its options)
and `main(args) -> int` (runs it). Only the chosen subcommand's module is imported, so that
`ehrjepa preprocess` does not pay for torch, pandas or another stage's imports at start-up.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ehrjepa import __version__

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "synth": ("ehrjepa.synth", "write synthetic data in the MIMIC-IV v2.2 schema, or as a MEDS dataset"),
    "preprocess": ("ehrjepa.data.preprocess", "turn MIMIC-IV tables, a MEDS dataset or a PhysioNet challenge into hourly per-stay arrays"),
    "splits": ("ehrjepa.data.protocols", "split files of the literature's protocols (PhysioNet 2012 and 2019) for preprocess --splits"),
    "train": ("ehrjepa.train.cli", "JEPA pretraining on processed data"),
    "probe": ("ehrjepa.probe.cli", "downstream probes of a pretrained encoder against baselines"),
    "finetune": ("ehrjepa.probe.finetune_cli", "fine-tune a pretrained encoder (or train one from scratch) on one task"),
    "embed": ("ehrjepa.embed", "stay embeddings of a pretrained encoder as a parquet file"),
    "sweep": ("ehrjepa.sweep.cli", "hyperparameter search over a run config with Optuna (each trial a train run)"),
    "demo": ("ehrjepa.demo", "synth + preprocess + micro pretraining + probe, on CPU"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported and configured (all of them if None)."""
    parser = argparse.ArgumentParser(prog="ehrjepa", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"ehrjepa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if command is not None and name != command:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as e:  # a stage not installed in this build: say so when it is used
            p.set_defaults(_missing=f"{module}: {e}")
            continue
        mod.configure(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"ehrjepa {args.command}: not available ({args._missing})", file=sys.stderr)
        return 2
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
