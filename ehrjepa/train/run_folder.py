"""The run folder's checkpoints: which exist, the newest one that loads, stale temporaries.

RUN/checkpoints/ holds last.pt (the newest state), step_NNNNNNN.pt (every train.ckpt_every steps)
and best.pt (the lowest validation loss). Each is its own file, written atomically on its own,
so damage to one cannot reach the others, and a damaged last.pt falls back to the newest step
checkpoint that loads.

One run at a time per folder: `hold_run_folder` locks `.RUN.lock` beside RUN (folder_lock.py) for
as long as a run writes it, so a second `ehrjepa train` (or `--resume`) into it refuses at once
instead of both writing the same checkpoints and logs; a killed run's lock goes with its process.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from ehrjepa.data.staging import pause_point
from ehrjepa.folder_lock import folder_lock
from ehrjepa.models.checkpoint import CheckpointError, load_checkpoint, remove_stale_temporaries


class NoRunToResume(FileNotFoundError):
    """--resume on a folder with no checkpoint: the message names the folder."""


@contextmanager
def hold_run_folder(run_dir: str | Path):
    """Hold the run folder's lock for the body; FolderInUse ("RUN is in use by process N", a
    FileExistsError) when another process holds it. Only rank 0 (RANK) takes it: the other
    processes of a torchrun run belong to the same run. The folder itself need not exist yet;
    the lock (named by RUN with symlinks resolved) lies in its parent, which is made."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    real = Path(os.path.abspath(run_dir)).resolve()
    real.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, real.parent / f".{real.name}.lock",
                     hint="wait for it to end, or choose another --run-dir"):
        pause_point("run_locked")
        yield


def checkpoint_candidates(ckpt_dir: Path) -> list[Path]:
    """The checkpoints to resume from, best first: last.pt, step_*.pt newest first, best.pt."""
    ckpt_dir = Path(ckpt_dir)
    steps = sorted(ckpt_dir.glob("step_*.pt"), reverse=True)
    return [p for p in [ckpt_dir / "last.pt", *steps, ckpt_dir / "best.pt"] if p.is_file()]


def require_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints of `run_dir` to resume from (checkpoint_candidates); NoRunToResume, naming
    the folder, when there is none. The one place that says so, for the CLI and train() alike."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    candidates = checkpoint_candidates(ckpt_dir)
    if not candidates:
        raise NoRunToResume(f"no run to resume in {run_dir} (no checkpoint in {ckpt_dir})")
    return candidates


def load_newest(run_dir: Path, say=print) -> tuple[Path, dict]:
    """(path, checkpoint) of the first candidate that loads, saying which damaged ones it passed.

    NoRunToResume when there is no checkpoint at all; CheckpointError (one line, naming every
    damaged file) when none loads.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    damaged = []
    for path in require_checkpoints(run_dir):
        try:
            ckpt = load_checkpoint(path, map_location="cpu")
        except CheckpointError as e:
            damaged.append(f"{path.name} is damaged ({_reason(e, path)})")
            continue
        if damaged:
            say(f"warning: {'; '.join(damaged)}; resuming from {path.name}")
        return path, ckpt
    raise CheckpointError(f"no checkpoint in {ckpt_dir} loads: {'; '.join(damaged)}; "
                          "start a new run in another --run-dir")


def clean_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove what a killed run left half-written: checkpoint temp files, metrics.csv.tmp."""
    run_dir = Path(run_dir)
    stale = remove_stale_temporaries(run_dir / "checkpoints")
    metrics_tmp = run_dir / "metrics.csv.tmp"
    if metrics_tmp.is_file():
        metrics_tmp.unlink()
        stale.append(metrics_tmp)
    return stale


def _reason(error: Exception, path: Path) -> str:
    """The error's message without the leading 'PATH: ' the loader puts there."""
    text = str(error)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text
