"""Pre-norm transformer over left-packed token sequences, the encoder and the predictor.

Every sequence is left-packed: tokens [0, lengths[b]) of sample b are real, the rest padding.
Padding never reaches a real token (keys are masked in `attention`), so each sample keeps its
own token count and nothing is truncated to the batch minimum.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .attention import attention
from .embedding import HourEmbedding, gather_hours, sinusoid


class Block(nn.Module):
    """x + attn(norm(x)), then x + mlp(norm(x)); GELU MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 backend: str = "sdpa"):
        super().__init__()
        self.heads = heads
        self.backend = backend
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, lengths: Tensor, causal: bool = False) -> Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v, lengths, backend=self.backend, causal=causal)  # [B, H, L, D/H]
        x = x + self.dropout(self.proj(a.transpose(1, 2).reshape(B, L, D)))
        x = x + self.dropout(self.fc2(F.gelu(self.fc1(self.norm2(x)))))
        return x


class Transformer(nn.Module):
    """A stack of blocks and a final LayerNorm."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, backend: str = "sdpa"):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout, backend) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, x: Tensor, lengths: Tensor, last_k: int = 0,
                causal: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """The normed output; with last_k > 0, also the raw outputs of the last k blocks; with
        causal, each token attends to itself and the tokens before it only."""
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x, lengths, causal)
            if i >= len(self.blocks) - last_k:
                outputs.append(x)
        return (self.norm(x), outputs) if last_k else self.norm(x)


class Encoder(nn.Module):
    """Hour embedding + transformer. Sees the hours in `index` (all hours when None)."""

    def __init__(self, n_features: int, max_hours: int, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, backend: str = "sdpa"):
        super().__init__()
        self.embed = HourEmbedding(n_features, width, max_hours)
        self.transformer = Transformer(width, depth, heads, mlp_ratio, dropout, backend)

    def forward(self, values: Tensor, observed: Tensor, delta: Tensor, index: Tensor | None = None,
                lengths: Tensor | None = None, last_k: int = 0,
                causal: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """values, observed, delta [B, T, F]; index int64 [B, L] (ascending, padded), lengths int64 [B].
        Returns [B, L, width] ([B, T, width] without index); with last_k > 0, also the raw
        outputs of the last k blocks (see Transformer.forward). With causal, token t's output
        depends on tokens [0, t] only (the hour embedding is per hour), so one pass gives every
        prefix's last token."""
        x = self.embed(values, observed, delta, index)
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        return self.transformer(x, lengths, last_k, causal)


class Predictor(nn.Module):
    """Predicts the encoder's representation of the target hours from the context tokens.

    The context tokens (projected to the predictor's width, plus their hour's position) and one
    learned mask token per target hour (plus that hour's position) are packed as
    [context tokens of b, mask tokens of b, padding] with each sample's own counts; the outputs at
    the mask tokens are projected back to the encoder's width."""

    def __init__(self, encoder_width: int, max_hours: int, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, backend: str = "sdpa"):
        super().__init__()
        self.embed = nn.Linear(encoder_width, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        self.register_buffer("pos", sinusoid(max_hours, width), persistent=False)
        self.transformer = Transformer(width, depth, heads, mlp_ratio, dropout, backend)
        self.out = nn.Linear(width, encoder_width)

    def forward(self, context: Tensor, context_index: Tensor, context_lengths: Tensor,
                target_index: Tensor, target_lengths: Tensor) -> Tensor:
        """context [B, Lc, De] (encoder output); indices [B, Lc] / [B, Lt]; lengths [B].
        Returns predictions [B, Lt, De]; rows past target_lengths[b] are padding."""
        B, Lc, _ = context.shape
        Lt = target_index.shape[1]
        x = self.embed(context) + self.pos[context_index]
        m = self.mask_token + self.pos[target_index]  # [B, Lt, W]
        # Left-pack: slot p of sample b takes context token p if p < nc, else mask token p - nc.
        slot = torch.arange(Lc + Lt, device=context.device)[None, :]  # [1, Lc+Lt]
        nc = context_lengths[:, None]
        source = torch.where(slot < nc, slot, Lc + (slot - nc).clamp(max=Lt - 1))  # [B, Lc+Lt]
        x = gather_hours(torch.cat([x, m], dim=1), source)
        x = self.transformer(x, context_lengths + target_lengths)
        # Mask token j of sample b sits at slot nc + j.
        at = (nc + torch.arange(Lt, device=context.device)[None, :]).clamp(max=Lc + Lt - 1)
        return self.out(gather_hours(x, at))
