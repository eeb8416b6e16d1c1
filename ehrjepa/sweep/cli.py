"""`ehrjepa sweep`: search a run config's hyperparameters with Optuna; each trial is a train run in DIR."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="base run config, e.g. configs/micro.yaml (required)")
    parser.add_argument("--data", required=True, help="processed data folder (the OUT of `ehrjepa preprocess`) "
                                                      "(required)")
    parser.add_argument("--space", required=True,
                        help="SPACE.yaml: dotted config keys with a distribution each, e.g. "
                             "configs/sweeps/micro.yaml (required)")
    parser.add_argument("--trials", type=int, required=True,
                        help="the study's total number of trials; a rerun runs only the missing ones (required)")
    parser.add_argument("--study-dir", required=True,
                        help="where the trials' run folders, study.db, best.yaml, trials.csv and plots go "
                             "(required)")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL shared by several processes, e.g. postgresql://user@host/db "
                             "(needs its driver, e.g. pip install 'psycopg[binary]') "
                             "(default: sqlite:///STUDY_DIR/study.db)")
    parser.add_argument("--study-name", default="sweep",
                        help="study name in the storage; a study of another name keeps its trial folders, "
                             "outputs and log in STUDY_DIR/NAME, apart from the others (default: sweep)")
    parser.add_argument("--objective", choices=("probe", "val_loss"), default="probe",
                        help="probe: validation AUROC of a frozen logistic probe (maximised); val_loss: "
                             "validation loss (minimised) (default: probe)")
    parser.add_argument("--task", default="mortality_hosp",
                        help="the probe objective's task, one of the probe's (phenotype_<name> included) "
                             "(default: mortality_hosp)")
    parser.add_argument("--label-fraction", type=float, default=1.0,
                        help="the probe objective fits on this fraction of the train subjects (default: 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the TPE sampler and of the label fraction; give each process of a "
                             "shared study its own (default: 0)")
    parser.add_argument("--prune-after", type=int, default=5,
                        help="trials that must finish before the median pruner stops any (default: 5)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a base config value for every trial, e.g. --set train.max_steps=500 "
                             "(repeatable) (default: none)")


DEFAULTS = {"storage": None, "study_name": "sweep", "objective": "probe", "task": "mortality_hosp",
            "label_fraction": 1.0, "seed": 0, "prune_after": 5}


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except KeyboardInterrupt:  # Ctrl-C: one line with the command that goes on, no traceback
        print("ehrjepa sweep: interrupted; the interrupted trial is marked failed and does not count "
              f"toward --trials; run the missing trials with: {rerun_command(args)}", file=sys.stderr)
        return 130


def rerun_command(args: argparse.Namespace) -> str:
    """The command line that reruns this sweep (the same study, options as given)."""
    words = ["ehrjepa", "sweep", "--config", args.config, "--data", args.data, "--space", args.space,
             "--trials", str(args.trials), "--study-dir", args.study_dir]
    for key, default in DEFAULTS.items():
        value = getattr(args, key)
        if value != default:
            words += [f"--{key.replace('_', '-')}", str(value)]
    for override in args.overrides:
        words += ["--set", override]
    return shlex.join(str(w) for w in words)


def _main(args: argparse.Namespace) -> int:
    from ehrjepa.config import ConfigError, config_to_dict, load_config
    from ehrjepa.sweep.objective import OBJECTIVES, Objective, ProbeScorer, TrialFailed
    from ehrjepa.sweep.space import SpaceError, load_space
    from ehrjepa.sweep.study import (LOG_FILE, SweepError, check_storage, counted, counts,
                                     fail_dead_trials, log_to_file, open_study, reseed, shown_url,
                                     storage_url, study_root, warnings_to_log, write_outputs)
    from ehrjepa.probe.tasks import HOURS

    try:
        import optuna  # noqa: F401 -- a requirement of the package; say so if it went missing
    except ImportError:
        print("ehrjepa sweep: needs Optuna, which `pip install -e .` installs: pip install 'optuna>=4'",
              file=sys.stderr)
        return 2
    study_dir, data_dir = Path(args.study_dir), Path(args.data).resolve()
    try:
        if args.trials < 1:
            raise ValueError(f"--trials {args.trials}: expected >= 1")
        if args.prune_after < 0:
            raise ValueError(f"--prune-after {args.prune_after}: expected >= 0")
        root = study_root(study_dir, args.study_name)  # this study's trial folders, outputs and log
        if args.storage is not None:  # before anything is written
            check_storage(args.storage)
        base = load_config(args.config, args.overrides)
        base_raw = config_to_dict(base)
        base_raw["data"]["path"] = str(data_dir)
        params = load_space(args.space, base_raw)
        if not (data_dir / "stays.parquet").is_file():
            raise ValueError(f"{data_dir}: not a processed data folder (no stays.parquet); run `ehrjepa preprocess`")
        scorer = None
        if args.objective == "probe":
            shortest = min([base.data.max_hours] + [v for p in params if p.key == "data.max_hours"
                                                    for v in p.extremes()])
            if shortest < HOURS:
                raise ValueError(f"the probe objective embeds {HOURS} hours: data.max_hours must be >= {HOURS}, "
                                 f"got {shortest}")
            scorer = ProbeScorer(data_dir, args.task, HOURS, args.label_fraction, args.seed)
        if study_dir.exists() and not study_dir.is_dir():
            raise ValueError(f"--study-dir {study_dir} is a file")
        study_dir.mkdir(parents=True, exist_ok=True)
        root.mkdir(exist_ok=True)
        log_to_file(root / LOG_FILE)
        record = {"objective": args.objective, "task": args.task if scorer else None,
                  "label_fraction": args.label_fraction if scorer else None,
                  "space": {p.key: p.describe() for p in params},
                  "base": {**base_raw, "data": {k: v for k, v in base_raw["data"].items() if k != "path"}}}
        url = storage_url(study_dir, args.storage)
        study = open_study(url, args.study_name, OBJECTIVES[args.objective], args.seed, args.prune_after, record)
    except (ConfigError, SpaceError, SweepError, ValueError, OSError) as e:
        print(f"ehrjepa sweep: {(str(e).splitlines() or [type(e).__name__])[0]}", file=sys.stderr)
        return 2

    objective = Objective(base_raw, params, root, args.objective, scorer)
    print(f"ehrjepa sweep: study '{args.study_name}' in {shown_url(url)}, {args.objective} "
          f"({OBJECTIVES[args.objective]}), {len(params)} parameter(s), {args.trials} trials in all; "
          f"trials in {root}, log {root / LOG_FILE}")

    def report(study, trial):
        value = "-" if trial.value is None else f"{trial.value:.4f}"
        last = max(trial.intermediate_values, default=None)
        where = f" at step {last}" if trial.state.name == "PRUNED" and last is not None else ""
        try:
            top = study.best_trial  # one read: other processes may finish trials meanwhile
            best = f"best {top.value:.4f} (trial {top.number})"
        except ValueError:
            best = "no best yet"
        error = f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""
        print(f"trial {trial.number}: {trial.state.name.lower()}{where}{error}, value {value}; {best}")

    start = time.perf_counter()
    ran = 0
    with warnings_to_log():
        while True:
            for number in fail_dead_trials(study):
                print(f"trial {number}: marked failed (left running by a process on this host that is gone; "
                      "it does not count toward --trials)")
            if counted(study) >= args.trials:
                break
            reseed(study, args.seed)  # new points on a resumed or extended study
            study.optimize(objective, n_trials=1, callbacks=[report], catch=(TrialFailed,))
            ran += 1
        n = counts(study)
        notes = write_outputs(study, root, base_raw, str(data_dir), args.objective)
    summary = ", ".join(f"{v} {k.lower()}" for k, v in sorted(n.items()))
    print(f"done: {ran} trial(s) run now in {time.perf_counter() - start:.0f} s; the study has {summary}")
    if n.get("RUNNING"):
        print(f"  {n['RUNNING']} trial(s) still running in other processes: rerun to refresh the outputs")
    for note in notes:
        print(f"  note: {note}")
    if (root / "best.yaml").is_file() and n.get("COMPLETE"):
        top = study.best_trial
        print(f"  best     {top.value:.4f}, trial {top.number}: {top.params}")
        print(f"  outputs  {root / 'best.yaml'}, {root / 'trials.csv'}, {root}/*.png")
        return 0
    return 1
