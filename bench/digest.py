"""`python -m bench digest --out FILE [--against FILE]`: hashes of what the pipeline writes.

A refactor must not change a byte of what users get. This runs the real CLI on a small fixed
input: `ehrjepa synth` (csv.gz and parquet), `ehrjepa preprocess` of each, and a short CPU
`ehrjepa train` of the micro model with a loss row every step, then writes one JSON of sha256
sums (synthetic tables, preprocess arrays and stays.parquet, the manifest without its paths and timings)
and the per-step training losses. With `--against OLD.json` it compares and exits 1 on any
difference, naming it. Run it before a refactor (`--out before.json`) and after
(`--against before.json`).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

FORMATS = ("csv.gz", "parquet")
PROCESSED_FILES = ("mean.npy", "count.npy", "features.json", "stays.parquet")
TIMING_COLUMNS = ("time_s", "step_s", "seq_per_s", "tokens_per_s", "wall_s", "lr_time")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "ehrjepa", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"digest: `ehrjepa {' '.join(args)}` failed:\n{done.stderr[-2000:]}")


VOLATILE_KEYS = ("path", "config", "features", "seconds")  # paths name the tmp dir; times vary


def _manifest_without_paths(value):
    """The manifest without paths and timings: every other value must stay the same."""
    if isinstance(value, dict):
        return {k: _manifest_without_paths(v) for k, v in value.items()
                if not (k in VOLATILE_KEYS or k.endswith("_path") or k.endswith("_dir"))}
    if isinstance(value, list):
        return [_manifest_without_paths(v) for v in value]
    return value


def digest(work: Path, patients: int, steps: int) -> dict:
    out: dict = {"patients": patients, "steps": steps, "synth": {}, "processed": {}}
    for fmt in FORMATS:
        mimic = work / f"mimic_{fmt}"
        _run(["synth", "--out", str(mimic), "--patients", str(patients), "--seed", "0",
              "--format", fmt])
        out["synth"][fmt] = {str(p.relative_to(mimic)): _sha(p)
                             for p in sorted(mimic.rglob("*")) if p.is_file()}
        proc = work / f"proc_{fmt}"
        _run(["preprocess", "--mimic-dir", str(mimic), "--out", str(proc), "--no-progress"])
        entry = {name: _sha(proc / name) for name in PROCESSED_FILES}
        manifest = json.loads((proc / "manifest.json").read_text())
        entry["manifest.json (paths and timings dropped)"] = _manifest_without_paths(manifest)
        out["processed"][fmt] = entry
    run = work / "run"
    repo = Path(__file__).resolve().parents[1]
    _run(["train", "--config", str(repo / "configs" / "micro.yaml"), "--data",
          str(work / "proc_parquet"), "--run-dir", str(run), "--no-progress",
          "--set", f"train.max_steps={steps}", "--set", "train.log_every=1",
          "--set", "train.val_every=10", "--set", "train.ckpt_every=10",
          "--set", "train.warmup_steps=5"])
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out["train_metrics"] = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]
    return out


def _differences(old, new, where="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for k in sorted(set(old) | set(new), key=str):
            if k not in old or k not in new:
                diffs.append(f"{where}/{k}: only in {'new' if k in new else 'old'}")
            else:
                diffs += _differences(old[k], new[k], f"{where}/{k}")
        return diffs
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{where}: {len(old)} rows before, {len(new)} now"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _differences(a, b, f"{where}[{i}]")]
    return [] if old == new else [f"{where}: {old!r} before, {new!r} now"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench digest", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the digest JSON here")
    p.add_argument("--against", type=Path, help="compare with this earlier digest; exit 1 on any difference")
    p.add_argument("--patients", type=int, default=300, help="synthetic patients (default: 300)")
    p.add_argument("--steps", type=int, default=30, help="micro training steps (default: 30)")
    args = p.parse_args(argv)
    if args.out is None and args.against is None:
        p.error("give --out, --against or both")
    with tempfile.TemporaryDirectory(prefix="ehrjepa-digest-") as tmp:
        new = digest(Path(tmp), args.patients, args.steps)
    if args.out:
        args.out.write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
        print(f"digest: wrote {args.out}")
    if args.against:
        old = json.loads(args.against.read_text())
        diffs = _differences(old, new)
        for d in diffs[:50]:
            print(f"digest: differs {d}")
        if diffs:
            print(f"digest: {len(diffs)} differences against {args.against}")
            return 1
        print(f"digest: identical to {args.against}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
