"""`attention()`: the one function every attention layer of the model goes through.

Sequences are left-packed: tokens [0, lengths[b]) of sample b are valid, the rest is padding.
Padding keys are ignored and padding query rows come back as zeros, so whatever sits in the
padding never reaches a valid output. With `causal=True` token i also ignores keys after i (the
online probe: an hour's output depends on that hour and the hours before it only). The backend
switch lets kernels be swapped in without touching the model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor, backend: str = "sdpa",
              scale: float | None = None, causal: bool = False) -> Tensor:
    """Softmax attention over the valid tokens of each sample (with `causal`, over the valid
    tokens at or before the query's position).

    q, k, v: [B, H, L, D]; lengths: int64 [B] (0 allowed: that sample's output is all zeros).
    Returns [B, H, L, D]. The triton backend has no causal mask: causal attention runs on sdpa.
    """
    if backend == "sdpa" or (causal and backend == "triton"):
        B, H, L, D = q.shape
        valid = torch.arange(L, device=q.device)[None, :] < lengths[:, None]  # [B, L]
        # A sample with no valid key would softmax over nothing (NaN, also in the gradient):
        # let it attend to everything instead; its rows are zeroed below anyway.
        keys = (valid | (lengths == 0)[:, None])[:, None, None, :]  # [B, 1, 1, L]
        if causal:  # query i sees keys 0..i (key 0 is valid whenever the query is)
            keys = keys & torch.ones(L, L, dtype=torch.bool, device=q.device).tril()[None, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, scale=scale)
        return out * valid[:, None, :, None].to(out.dtype)
    if backend == "triton":
        try:
            from ehrjepa.kernels import masked_gather_attention
        except ImportError as e:
            raise RuntimeError(
                "attention backend 'triton' needs ehrjepa.kernels.masked_gather_attention "
                f"(the kernels/ package), which could not be imported: {e}; "
                "use model.attention=sdpa") from e
        # Positions 0..lengths[b]-1 are the keys and the queries: the identity (kv_index=None),
        # so the kernels read no index and store each gradient row once. Rows past lengths[b]
        # come back 0. Only the lengths could be wrong, and they are right by construction: no
        # host-synced range check in every layer.
        return masked_gather_attention(q, k, v, None, lengths, scale=scale, check_index=False)
    raise ValueError(f"unknown attention backend {backend!r}; choose 'sdpa' or 'triton'")


def reference_attention(q: Tensor, k: Tensor, v: Tensor, lengths: Tensor,
                        scale: float | None = None, causal: bool = False) -> Tensor:
    """Plain loop-free math version of `attention` (any dtype, e.g. float64) for tests."""
    L, D = q.shape[2], q.shape[3]
    scale = D ** -0.5 if scale is None else scale
    valid = torch.arange(L, device=q.device)[None, :] < lengths[:, None]
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    if causal:
        later = torch.ones(L, L, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(later[None, None], float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no valid key -> 0
    return (weights @ v) * valid[:, None, :, None].to(v.dtype)
