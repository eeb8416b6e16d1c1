"""Hour embedding: one token per hour of a window, from that hour's features and its position."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor


def sinusoid(n_positions: int, width: int) -> Tensor:
    """Fixed sinusoidal position embedding [n_positions, width] (Vaswani et al. 2017, sec. 3.5:
    PE[p, 2i] = sin(p / 10000^(2i/width)), PE[p, 2i+1] = cos(p / 10000^(2i/width)))."""
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))
    pe = torch.zeros(n_positions, width, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * freq)
    pe[:, 1::2] = torch.cos(position * freq[: width // 2])
    return pe.float()


def gather_hours(x: Tensor, index: Tensor) -> Tensor:
    """x[b, index[b, i]] for x [B, T, C] and index int64 [B, L] -> [B, L, C]."""
    return torch.gather(x, 1, index[:, :, None].expand(-1, -1, x.shape[-1]))


class HourEmbedding(nn.Module):
    """A 2-layer MLP over [value, observed indicator, log1p(hours since observed)] of every feature
    in an hour (3F inputs), plus the sinusoidal embedding of the hour's index in the window.

    The hours since the last observation are fed as log1p(delta) (0 to ~3.9 for the 48-hour cap)
    so that all three inputs have a similar scale.

    The MLP's output is layer-normed before the position is added, so the hour's content and its
    position enter the transformer at the same scale (RMS 1 and 0.71). Without it, the small
    initial weights (std 0.02) made the content ~40x smaller than the sinusoid: over 99 % of the
    encoder's output variance was the hour index, and the JEPA loss fell to ~0 by predicting
    positions (a trivial solution that taught the encoder nothing about the patient)."""

    def __init__(self, n_features: int, width: int, max_hours: int):
        super().__init__()
        self.n_features = n_features
        self.fc1 = nn.Linear(3 * n_features, width)
        self.fc2 = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("pos", sinusoid(max_hours, width), persistent=False)

    def forward(self, values: Tensor, observed: Tensor, delta: Tensor, index: Tensor | None = None) -> Tensor:
        """values, observed, delta [B, T, F] -> tokens [B, T, width], or [B, L, width] for the hours
        in `index` (int64 [B, L]) only; the gather comes first so unused hours cost nothing."""
        if values.shape[-1] != self.n_features:
            raise ValueError(f"HourEmbedding: expected {self.n_features} features, got {values.shape[-1]}")
        if values.shape[1] > self.pos.shape[0]:
            raise ValueError(f"HourEmbedding: window of {values.shape[1]} hours is longer than "
                             f"max_hours={self.pos.shape[0]} the model was built for")
        x = torch.cat([values, observed, torch.log1p(delta)], dim=-1)
        if index is None:
            pos = self.pos[: x.shape[1]]
        else:
            x = gather_hours(x, index)
            pos = self.pos[index]
        x = self.norm(self.fc2(torch.nn.functional.gelu(self.fc1(x))))
        return x + pos
