"""JEPA pretraining: the loop (`train`), RNG capture for resume, schedules, metrics.

Models and checkpoint files (build_model, load_model) live in `ehrjepa.models`.

Heavy imports (torch) happen on first use, so `ehrjepa --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path


def train(cfg, run_dir, resume: bool = False, progress: bool = True) -> dict:
    """See ehrjepa.train.loop.train."""
    from ehrjepa.train.loop import train as _train

    return _train(cfg, run_dir, resume=resume, progress=progress)


def load_model(ckpt_path: str | Path, map_location="cpu"):
    """(JEPA in eval mode, Config). Transitional: use `ehrjepa.models.load_model`, which also
    returns the checkpoint dict; this one goes once the probe has switched."""
    from ehrjepa.models.checkpoint import load_model as _load_model

    model, cfg, _ = _load_model(ckpt_path, map_location=map_location)
    return model, cfg
