"""Checkpoint files: atomic writes, safe loads, and `load_model` for evaluation.

A checkpoint holds only tensors and plain containers (dict, list, int, float, str, None), so it
loads with `torch.load(weights_only=True)`, which runs no pickled code. It lives under models/
so that evaluation (the probe) reads checkpoints without importing the training app.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

REQUIRED_KEYS = ("model", "optimizer", "step", "config")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, empty, not a checkpoint); names the file."""


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically: a temp file in the same folder, fsync, then rename.

    A crash or a full disk mid-write leaves the previous file intact and no temp file behind
    (a process killed with SIGKILL can leave `.NAME.*.tmp`; `remove_stale_temporaries` cleans it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        # torch.save reports a failed write (full disk, file size limit) as a zip-writer
        # RuntimeError; the OSError behind it says what happened
        if not isinstance(e, OSError) and isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the `.NAME.*.tmp` files that a killed `save_checkpoint` left in `folder`; returns them."""
    folder = Path(folder)
    stale = sorted(folder.glob(".*.tmp")) if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` (weights_only=True).

    FileNotFoundError when there is no file; CheckpointError, one line naming the file, when it
    cannot be read or is not an ehrjepa checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: cannot load checkpoint: the file is empty")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a checkpoint, unsafe pickle content
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot load checkpoint ({size} bytes): {reason}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an ehrjepa checkpoint (holds a {type(ckpt).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not an ehrjepa checkpoint (missing {', '.join(missing)})")
    return ckpt


def load_model(path: str | Path, map_location="cpu"):
    """(model in eval mode on `map_location`, Config, checkpoint dict) from a checkpoint file.

    The returned dict is the checkpoint without its "model" and "optimizer" state (those are in
    the model, or only needed to resume): step, n_features, config, best_val_loss, ... The
    model's position table has the config's `data.max_hours` rows.
    """
    from ehrjepa.config import config_from_dict
    from ehrjepa.models.jepa import build_model

    ckpt = load_checkpoint(path, map_location=map_location)
    cfg = config_from_dict(ckpt["config"], source=f"{path} (config)")
    model = build_model(cfg, int(ckpt["n_features"]))
    model.load_state_dict(ckpt.pop("model"))
    ckpt.pop("optimizer")
    model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval()
    return model, cfg, ckpt
