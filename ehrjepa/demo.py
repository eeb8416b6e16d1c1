"""`ehrjepa demo`: the whole pipeline on a few hundred synthetic patients, on CPU.

synth -> preprocess -> micro JEPA pretraining -> downstream probe, in a few minutes on 2 cores.
With `--physionet2012 DIR` the same four stages run on the real PhysioNet/CinC 2012 challenge
sets a user downloaded (the challenge's split instead of synth, configs/physionet2012.yaml,
in-hospital death from the 48 hours against the published baselines' protocol).
Each stage goes through the same command a user would type, so the demo shows the real path.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from ehrjepa.data.catalog import shipped_config


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for everything the demo writes (default: ./demo_out)")
    p.add_argument("--patients", type=int, default=2000, help="synthetic patients (default: 2000)")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default: configs/micro.yaml's train.max_steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic data, split, masks and training (default: 0)")
    p.add_argument("--config", type=Path, default=None,
                   help="training config (default: configs/micro.yaml; with --physionet2012, "
                        "configs/physionet2012.yaml)")
    p.add_argument("--physionet2012", type=Path, default=None, metavar="DIR",
                   help="run on the real PhysioNet/CinC 2012 challenge: DIR holds set-a.tar.gz and "
                        "set-b.tar.gz (or set-a/, set-b/) with Outcomes-a.txt, Outcomes-b.txt, as "
                        "PhysioNet distributes them (default: synthetic data)")
    p.add_argument("--skip-probe", action="store_true", help="stop after pretraining (default: probe too)")


def _stage(name: str) -> float:
    print(f"\n=== {name}", flush=True)
    return time.perf_counter()


def summarise(processed) -> str:
    """What preprocessing produced beyond its own per-table counts: splits, hours, deaths, coverage."""
    import numpy as np

    stays = processed.stays
    n_hours = np.asarray(stays.column("n_hours"))
    split = stays.column("split").to_pylist()
    death = np.asarray(stays.column("death_hosp"))
    lines = [
        f"stays: {stays.num_rows} (train {split.count('train')}, val {split.count('val')}, test {split.count('test')}); "
        f"hours: {int(n_hours.sum())} (median {int(np.median(n_hours)) if len(n_hours) else 0} per stay); "
        f"in-hospital deaths: {int(death.sum())}",
    ]
    if processed.mean.shape[0]:
        observed = np.asarray(processed.count[:] > 0).mean(axis=0)
        cov = ", ".join(f"{f} {o:.0%}" for f, o in zip(processed.features, observed))
        lines.append(f"hours observed per feature: {cov}")
    return "\n".join(lines)


MARKER = ".ehrjepa-demo"  # marks a folder the demo made, so a rerun may replace what it wrote
STAGE_DIRS = ("mimic", "splits", "processed", "run", "probe")
# The probe's tasks in the demo: a few of each kind (stay outcomes, readmission, a lab-defined
# task) so it stays under 3 minutes on 2 cores; `ehrjepa probe` without --tasks runs them all,
# phenotypes included. The label-efficiency table refits the first three at 5 %, 25 % and 100 %
# of the train and validation subjects (2 repeats).
DEMO_TASKS = ("mortality_hosp", "los_gt_3d", "los_gt_7d", "readmit_30d", "aki_24_72h")
DEMO_LABEL_TASKS = ("mortality_hosp", "los_gt_3d", "readmit_30d")
# On the 2012 challenge: in-hospital death from the 48 hours (the challenge's task) and the length
# of stay, the static descriptors with every method, SAPS-I as the clinical baseline; pretraining
# capped at DEMO_2012_STEPS steps so the demo stays a few minutes (the config's own budget:
# `ehrjepa train --config configs/physionet2012.yaml`).
DEMO_2012_TASKS = ("mortality_hosp", "los_gt_7d")
DEMO_2012_STEPS = 1000


def prepare_out(out: Path) -> str | None:
    """Make `out` ready for a fresh demo; returns an error message, or None.

    A rerun starts fresh in the same folder: the folders an earlier demo wrote there are removed
    first. A folder the demo did not make (no marker file, not empty) is never touched.
    """
    if out.exists() and not out.is_dir():
        return f"{out} is a file, not a folder; choose another --out"
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        return (f"{out} is not empty and was not made by `ehrjepa demo`; choose another --out "
                "(the demo only replaces folders it made itself)")
    reran = [name for name in STAGE_DIRS if (out / name).exists()]
    for name in reran:
        shutil.rmtree(out / name)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `ehrjepa demo`; a rerun replaces this folder's contents\n")
    if reran:
        print(f"{out} holds an earlier demo: starting fresh (removed {', '.join(reran)})")
    return None


# Below this many patients, the demo's probe usually has too few stays with 24 hours in the
# validation and test splits to score any task (50 patients: none; 300: most of them).
FEW_PATIENTS = 300


def check_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """(what is wrong with the options in one line, or None; the `--set` overrides the demo passes
    to `ehrjepa train`), found before any stage runs: a bad --config would otherwise surface at
    stage 3, after synth and preprocess."""
    from ehrjepa.config import load_config

    if args.config is None:
        args.config = shipped_config("physionet2012.yaml" if args.physionet2012 else "micro.yaml")
    if args.physionet2012 is not None and not args.physionet2012.is_dir():
        return f"--physionet2012 {args.physionet2012}: not a folder (the one holding set-a.tar.gz ...)", []
    if args.steps is None and args.physionet2012 is not None:
        steps = load_config(args.config, ["train.device=cpu"]).train.max_steps
        if steps > DEMO_2012_STEPS:
            args.steps = DEMO_2012_STEPS
    if args.patients < 1:
        return f"--patients must be >= 1, not {args.patients}", []
    if args.steps is not None and args.steps < 1:
        return f"--steps must be >= 1, not {args.steps}", []
    overrides = ["train.device=cpu", f"train.seed={args.seed}"]
    try:
        if args.steps is not None:
            # a short demo warms up over its whole run rather than fail the config's warmup check:
            # the config's warmup, read with a max_steps no warmup exceeds
            warmup = load_config(args.config, overrides + [f"train.max_steps={2 ** 62}"]).train.warmup_steps
            overrides.append(f"train.max_steps={args.steps}")
            if warmup > args.steps:
                overrides.append(f"train.warmup_steps={args.steps}")
        load_config(args.config, overrides)
    except (ValueError, OSError) as e:  # ConfigError is a ValueError
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        return (first if str(args.config) in first else f"--config {args.config}: {first}"), []
    return None, overrides


def few_stays_hint(report_json: Path, patients: int) -> str | None:
    """What to do when the probe could score no task (too few patients), or None."""
    import json

    try:
        report = json.loads(report_json.read_text())
    except (OSError, ValueError):
        return None
    if report.get("tasks"):
        return None
    more = max(FEW_PATIENTS, 2 * patients)
    return (f"every task of the probe was skipped: {patients} synthetic patients give too few stays with "
            f"{report.get('hours')} hours in the validation and test splits (reasons above). "
            f"Run the demo with --patients {more} or more.")


def main(args: argparse.Namespace) -> int:
    from ehrjepa.cli import main as cli

    out: Path = args.out
    mimic, data, run, report = out / "mimic", out / "processed", out / "run", out / "probe"
    try:
        error, overrides = check_args(args)
    except (ValueError, OSError) as e:
        error, overrides = f"--config {args.config}: {str(e).strip().splitlines()[0]}", []
    if error is None:
        error = prepare_out(out)
    if error:
        print(f"ehrjepa demo: {error}", file=sys.stderr)
        return 2
    if args.physionet2012 is not None:
        return main_physionet2012(args, overrides, cli)
    t_all = time.perf_counter()
    steps = [(f"1/4 synth: {args.patients} synthetic patients in the MIMIC-IV v2.2 schema -> {mimic}",
              ["synth", "--out", str(mimic), "--patients", str(args.patients), "--seed", str(args.seed)]),
             (f"2/4 preprocess: hourly per-stay arrays -> {data}",
              ["preprocess", "--mimic-dir", str(mimic), "--out", str(data), "--seed", str(args.seed)]),
             (f"3/4 train: micro JEPA pretraining on CPU -> {run}", train_argv(args, overrides, data, run))]
    if not args.skip_probe:
        steps.append((f"4/4 probe: frozen embeddings vs random init vs raw features vs gradient-boosted trees, "
                      f"with all labels and with 5 % and 25 % of them -> {report}",
                      ["probe", "--run", str(run), "--data", str(data), "--out", str(report), "--device", "cpu",
                       "--tasks", ",".join(DEMO_TASKS), "--label-fractions", "0.05,0.25,1", "--repeats", "2",
                       "--label-tasks", ",".join(DEMO_LABEL_TASKS)]))
    rc = run_steps(cli, steps, data)
    if rc:
        return rc
    if not args.skip_probe:
        hint = few_stays_hint(report / "report.json", args.patients)
        if hint:
            print(f"\n{hint}")
    print_listing(out, t_all, [(mimic, "synthetic MIMIC-IV tables (hosp/, icu/)")], data, run,
                  None if args.skip_probe else report)
    return 0


def train_argv(args: argparse.Namespace, overrides: list[str], data: Path, run: Path) -> list[str]:
    argv = ["train", "--config", str(args.config), "--data", str(data), "--run-dir", str(run)]
    for override in overrides:
        argv += ["--set", override]
    return argv


def run_steps(cli, steps: list[tuple[str, list[str]]], data: Path) -> int:
    """Each (title, command line) in turn through the CLI, timed; after preprocess, what it
    made (summarise). Returns the first non-zero exit code, else 0."""
    for title, argv in steps:
        t = _stage(title)
        rc = cli(argv)
        if rc:
            return rc
        if argv[0] == "preprocess":
            from ehrjepa.data import open_processed

            print(summarise(open_processed(data)))
        print(f"({time.perf_counter() - t:.1f} s)")
    return 0


def print_listing(out: Path, t_all: float, first: list[tuple[Path, str]], data: Path, run: Path,
                  report: Path | None) -> None:
    print(f"\ndemo done in {time.perf_counter() - t_all:.0f} s. Everything is under {out}/:")
    listing = first + [(data, "stays.parquet, mean.npy, count.npy, features.json, manifest.json"),
                       (run, "config.yaml, metrics.csv, tb/, checkpoints/")]
    if report is not None:
        listing.append((report, "report.json, report.md, *.png"))
    width = max(len(f"{path}/") for path, _ in listing)
    for path, what in listing:
        print(f"  {f'{path}/':<{width}}  {what}")


def main_physionet2012(args: argparse.Namespace, overrides: list[str], cli) -> int:
    """The four stages on the 2012 challenge's sets in args.physionet2012 (module docstring)."""
    out, src = args.out, args.physionet2012
    splits, data, run, report = out / "splits" / "challenge.csv", out / "processed", out / "run", out / "probe"
    t_all = time.perf_counter()
    both = (src / "Outcomes-a.txt").is_file() and (src / "Outcomes-b.txt").is_file()
    steps = []
    if both:
        steps.append((f"1/4 splits: the challenge's protocol (train and validation set-a, test set-b) -> {splits}",
                      ["splits", "--physionet2012", str(src), "--protocol", "challenge", "--seed", str(args.seed),
                       "--out", str(splits)]))
    else:
        _stage("1/4 splits: no Outcomes-a.txt and Outcomes-b.txt side by side: the seeded 80/10/10 "
               "subject split instead of the challenge's")
    steps += [(f"2/4 preprocess: the challenge's sets -> hourly per-stay arrays -> {data}",
               ["preprocess", "--physionet2012", str(src), "--out", str(data), "--seed", str(args.seed)]
               + (["--splits", str(splits)] if both else [])),
              (f"3/4 train: JEPA pretraining on CPU ({args.config.name}) -> {run}",
               train_argv(args, overrides, data, run))]
    if not args.skip_probe:
        steps.append(("4/4 probe: in-hospital death and length of stay from the 48 hours, static descriptors "
                      "with every method; frozen embeddings vs random init vs raw features vs gradient-boosted "
                      f"trees vs SAPS-I, with all labels and with 5 % and 20 % of them -> {report}",
                      ["probe", "--run", str(run), "--data", str(data), "--out", str(report), "--device", "cpu",
                       "--hours", "48", "--static", "--tasks", ",".join(DEMO_2012_TASKS),
                       "--methods", "jepa,random_init,raw_features,raw_gbdt,clinical_score",
                       "--label-fractions", "0.05,0.2,1", "--repeats", "2", "--label-tasks", "mortality_hosp"]))
    rc = run_steps(cli, steps, data)
    if rc:
        return rc
    print_listing(out, t_all, [(splits.parent, "challenge.csv (stay_id, split)" if both
                                else "(none: the subject split)")], data, run,
                  None if args.skip_probe else report)
    return 0
