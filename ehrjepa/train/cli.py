"""`ehrjepa train`: JEPA pretraining on processed data (also under torchrun for DDP)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config, e.g. configs/micro.yaml (default: "
                                         "required for a new run; RUN/config.yaml with --resume, "
                                         "or the checkpoint's own config where that file is "
                                         "missing; a key that differs from the checkpoint's is "
                                         "named, old -> new)")
    parser.add_argument("--data", help="processed data folder (the OUT of `ehrjepa preprocess`); "
                                       "sets data.path (default: the config's data.path)")
    parser.add_argument("--extra-data", dest="extra_data", action="append", metavar="DIR",
                        help="another processed folder whose stays join the pretraining samples "
                             "(its train split; --set data.extra_split=all for all its stays), "
                             "features aligned by name to --data's and normalised with its "
                             "statistics; validation and checkpoints stay --data's (repeatable; "
                             "sets data.extra; default: the config's data.extra, none)")
    parser.add_argument("--run-dir", required=True,
                        help="where checkpoints and logs go (required)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.max_steps=200 (repeatable; "
                             "default: none)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its newest checkpoint that loads "
                             "(checkpoints/last.pt), exactly (default: start a new run)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: a progress bar on stderr)")


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except KeyboardInterrupt as e:  # Ctrl-C: one line saying how to go on, no traceback
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"ehrjepa train: {interrupted_message(e, Path(args.run_dir))}", file=sys.stderr)
        return 130


def interrupted_message(error: KeyboardInterrupt, run_dir: Path) -> str:
    """The one line for a Ctrl-C: where the run stopped and the command that continues it."""
    from ehrjepa.train.loop import TrainingInterrupted

    resume = f"ehrjepa train --run-dir {shlex.quote(str(run_dir))} --resume"
    if isinstance(error, TrainingInterrupted):
        if error.saved_path is not None:
            return (f"interrupted at step {error.step}; the newest checkpoint is {error.saved_path} "
                    f"(step {error.saved_step}); continue with: {resume}")
        return (f"interrupted at step {error.step}, before the first checkpoint; start again with "
                "the same command")
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return f"interrupted; continue with: {resume}"
    return "interrupted before training started; start again with the same command"


def _main(args: argparse.Namespace) -> int:
    from ehrjepa.config import ConfigError, config_from_dict, load_config
    from ehrjepa.models.checkpoint import CheckpointError
    from ehrjepa.train.loop import CheckpointWriteFailed, TrainingDiverged, train
    from ehrjepa.train.run_folder import (NoRunToResume, hold_run_folder, load_newest,
                                          require_checkpoints)

    master = int(os.environ.get("RANK", "0")) == 0
    run_dir = Path(args.run_dir)
    config_path = args.config
    if args.resume:  # before reading RUN/config.yaml, which an empty folder does not have either
        try:
            require_checkpoints(run_dir)
        except NoRunToResume as e:
            print(f"ehrjepa train: {e}", file=sys.stderr)
            return 2
    if config_path is None:
        if not args.resume:
            print("ehrjepa train: --config is required (unless --resume)", file=sys.stderr)
            return 2
        config_path = run_dir / "config.yaml"
    try:
        if args.resume and args.config is None and not Path(config_path).is_file():
            # RUN/config.yaml is gone: the newest checkpoint that loads holds the run's config
            path, ckpt = load_newest(run_dir, say=lambda msg: None)
            cfg = config_from_dict(ckpt["config"], args.overrides, source=f"{path} (config)")
            del ckpt
            if master:
                print(f"ehrjepa train: {config_path} is missing; using the config saved in {path}")
            config_path = f"{path} (config)"
        else:
            cfg = load_config(config_path, args.overrides)
    except (ConfigError, CheckpointError) as e:
        print(f"ehrjepa train: {e}", file=sys.stderr)
        return 2
    if args.data:
        cfg.data.path = str(args.data)
    if args.extra_data:
        cfg.data.extra = [str(p) for p in args.extra_data]
    if master:
        print(f"ehrjepa train: config {config_path}, data {cfg.data.path or '(none)'}, run {run_dir}")
    try:
        with hold_run_folder(run_dir):  # one run at a time in RUN: "RUN is in use by process N"
            summary = train(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    except (TrainingDiverged, CheckpointWriteFailed) as e:  # every rank stops at the same step
        if master:
            print(f"ehrjepa train: {e}", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"ehrjepa train: {e}", file=sys.stderr)
        return 2
    if not master:
        return 0
    best = summary["best_val_loss"]
    final = summary["final_loss"]
    if summary["already_finished"]:
        print(f"done: the run in {run_dir} is already finished at step {summary['steps']} of "
              f"{summary['max_steps']}; nothing to do")
    else:
        print(f"done: {summary['steps']} of {summary['max_steps']} steps"
              + (" (stopped early: train.stop_after; continue with --resume)"
                 if summary["stopped_early"] else ""))
    print(f"  final loss     {final:.4f}" if final is not None else "  final loss     - (none logged)")
    print(f"  best val loss  {best:.4f}" if best is not None else "  best val loss  -")
    print(f"  checkpoints    last {summary['last']}" + (f", best {summary['best']}"
                                                         if summary["best"] else ""))
    print(f"  logs           {run_dir / 'metrics.csv'}, {run_dir / 'tb'}")
    for w in summary["warnings"]:
        print(f"  warning        {w}")
    return 0
