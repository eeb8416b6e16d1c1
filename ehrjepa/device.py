"""The one device resolver: a config or CLI name ("auto", "cpu", "cuda", "cuda:1") to a torch.device.

Training and the probe both call it, so "auto" and the CUDA-missing error read the same everywhere.
"""
from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' -> cuda:`local_rank` (this process's GPU under
    torchrun). Asking for CUDA where there is none is a ValueError that says what to use instead."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but CUDA is not available (use cpu or auto)")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
