"""One token per observation: the encoder of `model.tokens: observation`.

The hourly encoder (transformer.Encoder) gives every hour one token built from all F features,
forward-filled where nothing was measured, so an hour with two measurements is a thin token
that mostly repeats earlier hours. This encoder gives every measured (hour, feature) its own
token instead, as the sequence models of the 2012 challenge's literature do (a triplet of time,
variable and value), and never sees a forward-filled value:

- an observation token: LayerNorm(MLP(feature embedding + value x feature scale)) + the
  sinusoid of its hour, for every feature with observed = 1 in that hour (the hour's value as
  the processed data holds it: the hour's mean, sum or last measurement);
- an hour token: the same MLP over a learned "hour" embedding (no value) + the sinusoid, one per
  hour, so an hour with no measurement still has a token and an output.

Each sample's tokens are left-packed hour by hour, each hour's observations in feature order
and its hour token last. The output of an hour is the mean of the transformer's outputs at that
hour's tokens (its observations and its hour token). So the encoder keeps the hourly encoder's
contract, `forward(values, observed, delta, index, lengths, last_k, causal) -> [B, L, width]`,
and the JEPA objective, predictor, probes and fine-tuning run on it unchanged. With `causal`,
the packed order makes every token attend to the tokens of earlier hours and the tokens before
it in its own hour, so an hour's output depends on hours [0, t] only, as the online probe needs.

`delta` (hours since the last measurement) is not an input: a token exists only where a value
was measured. The token count of a batch is its largest sample's: a data-dependent shape
(eager runs; under torch.compile each new count may recompile).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .embedding import gather_hours, sinusoid
from .transformer import Transformer


class ObservationEmbedding(nn.Module):
    """Token embedding of observations and hours. Feature ids 0..F-1 are the features, id F the
    hour token; `forward(feature_id, value, hour) -> [..., width]`."""

    def __init__(self, n_features: int, width: int, max_hours: int):
        super().__init__()
        self.n_features = n_features
        self.feature = nn.Embedding(n_features + 1, width)  # + 1: the hour token
        self.scale = nn.Embedding(n_features + 1, width)  # how a feature's value moves its token
        self.fc = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("pos", sinusoid(max_hours, width), persistent=False)
        nn.init.normal_(self.feature.weight, std=1.0)
        nn.init.normal_(self.scale.weight, std=1.0)

    def forward(self, feature_id: Tensor, value: Tensor, hour: Tensor) -> Tensor:
        x = self.feature(feature_id) + value[..., None] * self.scale(feature_id)
        return self.norm(self.fc(F.gelu(x))) + self.pos[hour]


def pack_observations(observed: Tensor, hour_valid: Tensor) -> tuple[Tensor, Tensor]:
    """The tokens of each sample, left-packed: (candidate [B, N], n_tokens [B]).

    observed [B, L, F] (1 where measured) and hour_valid bool [B, L] describe L hours. The
    candidates of hour slot j are j x (F + 1) + f for its measured features f, then
    j x (F + 1) + F for its hour token; `candidate[b, :n_tokens[b]]` lists sample b's in that
    order (hour by hour), and entries past n_tokens[b] are padding: candidates that were not
    kept (still valid positions, so gathering at them is safe; attention and pooling ignore them).
    N = max(n_tokens): one host sync per call."""
    B, L, n_features = observed.shape
    keep = torch.cat([(observed > 0.5) & hour_valid[:, :, None], hour_valid[:, :, None]], dim=2)
    keep = keep.reshape(B, L * (n_features + 1))
    n_tokens = keep.sum(1)
    n = max(int(n_tokens.max()), 1)
    # a stable sort of "not kept" puts the kept candidates first, in their order
    candidate = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :n]
    return candidate, n_tokens


class ObservationEncoder(nn.Module):
    """Observation and hour tokens + transformer; the outputs are per hour (the mean over the
    hour's tokens). Sees the hours in `index` (all hours when None). See the module docstring."""

    def __init__(self, n_features: int, max_hours: int, width: int, depth: int, heads: int,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, backend: str = "sdpa"):
        super().__init__()
        self.n_features = n_features
        self.max_hours = max_hours
        self.embed = ObservationEmbedding(n_features, width, max_hours)
        self.transformer = Transformer(width, depth, heads, mlp_ratio, dropout, backend)

    def forward(self, values: Tensor, observed: Tensor, delta: Tensor, index: Tensor | None = None,
                lengths: Tensor | None = None, last_k: int = 0,
                causal: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """values, observed, delta [B, T, F]; index int64 [B, L] (ascending hours, padded),
        lengths int64 [B]: the valid entries of index (of the T hours without index). Returns
        [B, L, width] ([B, T, width] without index), rows past lengths[b] padding; with
        last_k > 0, also the last k blocks' raw outputs pooled the same way."""
        B, T, n_features = values.shape
        if n_features != self.n_features:
            raise ValueError(f"ObservationEncoder: expected {self.n_features} features, got {n_features}")
        if T > self.max_hours:
            raise ValueError(f"ObservationEncoder: window of {T} hours is longer than "
                             f"max_hours={self.max_hours} the model was built for")
        if index is None:
            index = torch.arange(T, device=values.device)[None, :].expand(B, T)
        else:
            values, observed = gather_hours(values, index), gather_hours(observed, index)
        L = index.shape[1]
        if lengths is None:
            lengths = torch.full((B,), L, dtype=torch.long, device=values.device)
        hour_valid = torch.arange(L, device=values.device)[None, :] < lengths[:, None]

        candidate, n_tokens = pack_observations(observed, hour_valid)
        slot = torch.div(candidate, n_features + 1, rounding_mode="floor")  # hour slot [B, N]
        feature_id = candidate - slot * (n_features + 1)  # F = the hour token
        value = torch.gather(values.reshape(B, -1), 1,
                             (slot * n_features + feature_id.clamp(max=n_features - 1)))
        value = torch.where(feature_id < n_features, value, torch.zeros_like(value))
        x = self.embed(feature_id, value.to(self.embed.fc.weight.dtype), torch.gather(index, 1, slot))

        out = self.transformer(x, n_tokens, last_k, causal)
        real = torch.arange(x.shape[1], device=x.device)[None, :] < n_tokens[:, None]
        pool = HourPool(slot, real, L)
        if last_k:
            h, blocks = out
            return pool(h), [pool(b) for b in blocks]
        return pool(out)


class HourPool:
    """Mean of token outputs per hour slot: tokens [B, N, D] -> hours [B, L, D], padding tokens
    (real False) counted nowhere; an hour slot with no token (padding hours) gives zeros."""

    def __init__(self, slot: Tensor, real: Tensor, n_slots: int):
        self.n_slots = n_slots
        self.slot = torch.where(real, slot, torch.full_like(slot, n_slots))  # padding -> a spare slot
        counts = torch.zeros(slot.shape[0], n_slots + 1, device=slot.device)
        counts.scatter_add_(1, self.slot, real.to(counts.dtype))
        self.counts = counts[:, :n_slots, None].clamp(min=1.0)

    def __call__(self, tokens: Tensor) -> Tensor:
        B, _, D = tokens.shape
        sums = torch.zeros(B, self.n_slots + 1, D, device=tokens.device, dtype=tokens.dtype)
        sums.scatter_add_(1, self.slot[:, :, None].expand(-1, -1, D), tokens)
        return sums[:, :self.n_slots] / self.counts.to(tokens.dtype)
