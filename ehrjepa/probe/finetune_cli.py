"""`ehrjepa finetune`: fine-tune one encoder with a head on one task, and score it on the test split.

    ehrjepa finetune --run RUN --data OUT --task T --out DIR [--from pretrained|scratch] [--fraction F] [--seed S]

--from pretrained (jepa_finetune) starts from RUN's checkpoint's target encoder (or, with --encoder
context, its context encoder); --from scratch from an untrained encoder of the same architecture,
with the same budget. With --fraction F, the train and val subjects are subsampled to F as the
probe's label efficiency does in its repeat 0 with the same --seed (so the subsets match).
Writes DIR/result.json (test AUROC/AUPRC, best step, counts) and DIR/model.pt (the classifier's
encoder and head weights and what built them; `ehrjepa.probe.finetune.load_finetuned` reads it
back), each atomically. Any fault is one line.
"""
from __future__ import annotations

import argparse
import math
import sys

from ehrjepa.probe.finetune import HEADS, Settings
from ehrjepa.probe.tasks import HOURS, PHENOTYPE_PREFIX, TASKS

_DEFAULTS = Settings()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory of `ehrjepa train` (RUN)")
    parser.add_argument("--data", required=True, help="processed data directory of `ehrjepa preprocess` (OUT)")
    parser.add_argument("--task", required=True,
                        help="the task to fine-tune on: one of " + ", ".join(TASKS) + f", or {PHENOTYPE_PREFIX}<name> for "
                             "a phenotype column of the data (required)")
    parser.add_argument("--out", required=True, help="folder to write result.json and model.pt to (DIR)")
    parser.add_argument("--from", dest="start", choices=("pretrained", "scratch"), default="pretrained",
                        help="start from the checkpoint's encoder or from random weights (default: %(default)s)")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="fraction in (0, 1] of the train and val subjects to use (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the subsample, the head, the batches and scratch's weights (default: %(default)s)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to start from (default: RUN/checkpoints/best.pt, else last.pt)")
    parser.add_argument("--encoder", choices=("target", "context"), default="target",
                        help="which encoder of the checkpoint to fine-tune (default: %(default)s)")
    parser.add_argument("--hours", type=int, default=HOURS,
                        help="use hours [0, HOURS) of stays with at least HOURS hours (default: %(default)s)")
    parser.add_argument("--head", choices=HEADS, default=_DEFAULTS.head,
                        help="linear, or an MLP with one hidden layer (default: %(default)s)")
    parser.add_argument("--epochs", type=float, default=_DEFAULTS.max_epochs,
                        help="passes over the training stays, held between --min-steps and --steps; the learning-rate "
                             "schedule spans them (default: %(default)s)")
    parser.add_argument("--min-steps", type=int, default=_DEFAULTS.min_steps,
                        help="fewest steps, for small label fractions (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=_DEFAULTS.max_steps, help="most steps (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=_DEFAULTS.lr, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size,
                        help="stays per step (default: %(default)s)")
    parser.add_argument("--eval-every", type=int, default=_DEFAULTS.eval_every,
                        help="steps between validation AUROC measurements (default: %(default)s)")
    parser.add_argument("--patience", type=int, default=_DEFAULTS.patience,
                        help="measurements without a new best before stopping (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: show it)")


def main(args: argparse.Namespace) -> int:
    from ehrjepa.probe.finetune_run import run_finetune

    try:
        for flag, value in (("--steps", args.steps), ("--min-steps", args.min_steps), ("--batch-size", args.batch_size),
                            ("--eval-every", args.eval_every), ("--patience", args.patience), ("--hours", args.hours)):
            if value < 1:
                raise ValueError(f"{flag} must be >= 1, not {value}")
        for flag, value in (("--epochs", args.epochs), ("--lr", args.lr)):
            if not (math.isfinite(value) and value > 0):  # not NaN or inf either
                raise ValueError(f"{flag} must be a number > 0, not {value}")
        settings = Settings(max_epochs=args.epochs, min_steps=min(args.min_steps, args.steps), max_steps=args.steps,
                            batch_size=args.batch_size, lr=args.lr,
                            min_lr=min(_DEFAULTS.min_lr, args.lr), warmup_steps=min(_DEFAULTS.warmup_steps, args.steps),
                            eval_every=args.eval_every, patience=args.patience, head=args.head)
        if not 0.0 < args.fraction <= 1.0:
            raise ValueError(f"--fraction must lie in (0, 1], not {args.fraction}")
    except ValueError as e:
        print(f"ehrjepa finetune: {e}", file=sys.stderr)
        return 2
    try:
        result = run_finetune(args.run, args.data, args.task, args.out, start=args.start, fraction=args.fraction,
                              seed=args.seed, checkpoint=args.checkpoint, encoder=args.encoder, hours=args.hours,
                              settings=settings, device=args.device, progress=not args.no_progress)
    except (OSError, ValueError, RuntimeError) as e:  # each names its file on its first line
        text = str(e).strip()
        print(f"ehrjepa finetune: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
        return 1
    print(f"{result['method']} on {result['task']}: test AUROC {result['test_auroc']:.3f}, AUPRC "
          f"{result['test_auprc']:.3f} (n {result['n_test']}, {result['positives_test']} positives); best "
          f"validation AUROC {result['val_auroc']:.3f} at step {result['best_step']} of {result['steps_run']} run "
          f"(budget {result['steps_budget']}); "
          f"trained on {result['n_train']} stays ({result['positives_train']} positives)")
    print(f"wrote {args.out}/result.json, {args.out}/model.pt")
    return 0
