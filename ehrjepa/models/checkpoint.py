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
        raise CheckpointError(f"{path}: cannot load checkpoint ({size} bytes): {_load_reason(e)}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an ehrjepa checkpoint (holds a {type(ckpt).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not an ehrjepa checkpoint (missing {', '.join(missing)})")
    return ckpt


def _load_reason(error: Exception) -> str:
    """One line saying why torch.load failed, without torch's advice to retry with
    weights_only=False or to allow-list globals: that runs the file's pickled code, unsafe on a
    file of unknown origin (a damaged or foreign checkpoint is exactly that)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__
    marker = "WeightsUnpickler error:"
    if marker in text:  # the safe loader refused the content: keep only what it refused
        detail = " ".join(text.split(marker, 1)[1].split())
        detail = detail.split(" Please use ", 1)[0].split(" Check the documentation", 1)[0]
        detail = detail.rstrip(". ")
        return ("damaged, or not a checkpoint of plain data (the safe loader stopped at: "
                f"{detail or 'unknown content'})")
    line = text.splitlines()[0]
    # drop any sentence of the first line that tells the user to turn the safe load off
    sentences = [x for x in line.split(". ") if "weights_only" not in x and "safe_globals" not in x]
    return ". ".join(sentences).strip() or type(error).__name__


def check_data(checkpoint: dict, features: list[str], split_seed: int, where: str) -> list[str]:
    """Check that data with `features` (names, in column order) and `split_seed` is the data the
    checkpoint's model was trained on; `where` names the data (its folder) in the messages.

    ValueError, one line naming `where` and the first difference, when the features differ: a
    checkpoint with `features` compares names and order; an older one without them compares the
    count with its `n_features`. Returns warnings: one when the split seeds differ (the data's
    test stays may then have been pretraining stays). A checkpoint without `split_seed` (older
    runs) gives no warning: there is nothing to compare.
    """
    features = [str(f) for f in features]
    saved = checkpoint.get("features")
    if saved is None:
        n = checkpoint.get("n_features")
        if n is not None and int(n) != len(features):
            raise ValueError(f"the model was trained on {int(n)} features, but the data in {where} "
                             f"has {len(features)}")
    else:
        saved = [str(f) for f in saved]
        if saved != features:
            raise ValueError(f"the data in {where} has other features than the model was trained on: "
                             f"{_first_difference(saved, features, where)}")
    warnings = []
    seed = checkpoint.get("split_seed")
    if seed is not None and int(seed) != int(split_seed):
        warnings.append(f"the data in {where} was split with seed {int(split_seed)}, the model was "
                        f"pretrained on data split with seed {int(seed)}: its val and test stays "
                        "may have been pretraining stays")
    return warnings


def _first_difference(saved: list[str], features: list[str], where: str) -> str:
    """The first way `features` (the data's) differs from `saved` (the checkpoint's), in words."""
    for i, (a, b) in enumerate(zip(saved, features)):
        if a != b:
            if a not in features:
                extra = f"; the checkpoint's '{a}' is missing from {where}"
            elif b not in saved:
                extra = f"; '{b}' is not one of the checkpoint's features"
            else:
                extra = " (the same names in another order)" if sorted(saved) == sorted(features) else ""
            return f"feature {i} is '{a}' in the checkpoint but '{b}' in {where}{extra}"
    if len(saved) > len(features):
        missing = saved[len(features):]
        return (f"the checkpoint has {len(saved)} features, {where} has {len(features)}: "
                f"missing {', '.join(repr(m) for m in missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    extra = features[len(saved):]
    return (f"the checkpoint has {len(saved)} features, {where} has {len(features)}: "
            f"extra {', '.join(repr(x) for x in extra[:5])}" + (" ..." if len(extra) > 5 else ""))


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
