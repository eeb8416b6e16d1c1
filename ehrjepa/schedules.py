"""Per-step schedules: learning rate, weight decay and EMA momentum as pure functions of the step.

Used by pretraining (`ehrjepa.train`) and by fine-tuning in the probe, which must not import the
training app: so they live here, with no imports beyond math.

Being pure functions of `step` (and the config), the schedules need no state of their own in a
checkpoint: restoring the step restores them.
"""
from __future__ import annotations

import math


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup from lr/warmup to `lr` over `warmup_steps`, then cosine decay to `min_lr`
    at `max_steps`; `min_lr` after that."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    t = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


def cosine(step: int, start: float, end: float, max_steps: int) -> float:
    """Half-cosine from `start` at step 0 to `end` at `max_steps` (the weight decay schedule)."""
    t = min(1.0, step / max(1, max_steps))
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def linear(step: int, start: float, end: float, max_steps: int) -> float:
    """Straight line from `start` at step 0 to `end` at `max_steps` (the EMA momentum schedule)."""
    t = min(1.0, step / max(1, max_steps))
    return start + (end - start) * t
