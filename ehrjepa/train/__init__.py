"""JEPA pretraining: the loop (`train`), RNG capture for resume, metrics (schedules: `ehrjepa.schedules`).

Models and checkpoint files (build_model, load_model) live in `ehrjepa.models`.

Heavy imports (torch) happen on first use, so `ehrjepa --help` stays fast.
"""
from __future__ import annotations


def train(cfg, run_dir, resume: bool = False, progress: bool = True, on_validation=None) -> dict:
    """See ehrjepa.train.loop.train."""
    from ehrjepa.train.loop import train as _train

    return _train(cfg, run_dir, resume=resume, progress=progress, on_validation=on_validation)

