"""JEPA pretraining: the loop (`train`), checkpoints, schedules, metrics, and `load_model`.

Heavy imports (torch) happen on first use, so `ehrjepa --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path


def train(cfg, run_dir, resume: bool = False, progress: bool = True) -> dict:
    """See ehrjepa.train.loop.train."""
    from ehrjepa.train.loop import train as _train

    return _train(cfg, run_dir, resume=resume, progress=progress)


def load_model(ckpt_path: str | Path, map_location="cpu"):
    """(JEPA in eval mode, Config) from a checkpoint, loaded with `weights_only=True`."""
    from ehrjepa.config import config_from_dict
    from ehrjepa.train.checkpoint import load_checkpoint
    from ehrjepa.train.loop import build_model

    ckpt = load_checkpoint(ckpt_path, map_location=map_location)
    cfg = config_from_dict(ckpt["config"], source=f"{ckpt_path} (config)")
    model = build_model(cfg, int(ckpt["n_features"]), int(ckpt["max_hours"]))
    model.load_state_dict(ckpt["model"])
    model.to(map_location if isinstance(map_location, str) else "cpu").eval()
    return model, cfg
