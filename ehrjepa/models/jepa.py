"""`JEPA`: context encoder, predictor and EMA target encoder, with the latent-space loss.

One name per part: the "context encoder" (attribute `encoder`, `embed(encoder="context")`) is
trained by gradients; the "target encoder" is its EMA copy.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import ModelConfig
from .embedding import gather_hours
from .observation import ObservationEncoder
from .transformer import Encoder, Predictor

EMA_CHECK_EVERY = 100  # momentum_update calls between checks that the EMA plan is current


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class JEPA(nn.Module):
    """I-JEPA-style pretraining on hourly windows.

    forward(batch) -> (loss, stats): the context encoder sees the context hours; the predictor
    predicts, for every target hour, the target encoder's layer-normed feature of that hour,
    where the target encoder (an EMA copy of the context encoder, no gradients) sees all hours.
    The context encoder is the attribute `encoder` (a name kept so checkpoints load unchanged).
    The loss is averaged over the valid target tokens only (padding excluded; with
    model.target_min_observed also the target hours with too few measurements).
    `batch["feature_mask"]` (float [B, F], optional; mask.hide_features draws it) hides features
    from the context encoder: a hidden feature reads as value 0, observed 0, delta 0 in every hour.
    The options against the copy-the-present shortcut, the VICReg terms and the tokens (one per
    hour, or one per observation with model.tokens=observation): ModelConfig.
    Samples may differ in length: `batch["lengths"]` (int64 [B], optional; all T without it)
    gives each sample's hours, and the target encoder attends within [0, lengths[b]) only, so a
    sample's loss does not depend on the padding its batch adds.
    No .item() and no data-dependent Python branches: the step compiles into one graph.
    """

    def __init__(self, cfg: ModelConfig, n_features: int, max_hours: int):
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        self.n_features = n_features
        self.max_hours = max_hours
        if cfg.attention == "triton":  # fail at build time, not inside a compiled step
            try:
                import ehrjepa.kernels  # noqa: F401
                from ehrjepa.kernels import masked_gather_attention  # noqa: F401
            except ImportError as e:
                raise RuntimeError("model.attention=triton needs ehrjepa.kernels.masked_gather_attention, "
                                   f"which could not be imported: {e}; use model.attention=sdpa") from e
        encoder = ObservationEncoder if cfg.tokens == "observation" else Encoder
        self.encoder = encoder(n_features, max_hours, cfg.width, cfg.depth, cfg.heads,
                               cfg.mlp_ratio, cfg.dropout, cfg.attention)
        self.predictor = Predictor(cfg.width, max_hours, cfg.predictor_width, cfg.predictor_depth,
                                   cfg.predictor_heads, cfg.mlp_ratio, cfg.dropout, cfg.attention)
        self.apply(_init_weights)
        nn.init.normal_(self.predictor.mask_token, std=0.02)
        self.target_encoder = copy.deepcopy(self.encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        # (target, context) parameter pairs for the EMA, in matching order.
        self._ema_target = list(self.target_encoder.parameters())
        self._ema_context = list(self.encoder.parameters())
        self._ema_plan = None  # the fused EMA's plan: built on the first CUDA momentum_update
        self._ema_calls = 0
        self.register_load_state_dict_post_hook(_ema_reset_after_load)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        values, observed, delta = batch["values"], batch["observed"], batch["delta"]
        context_index, context_lengths = batch["context_index"], batch["context_lengths"]
        target_index, target_lengths = batch["target_index"], batch["target_lengths"]
        lengths = batch.get("lengths")
        cfg = self.cfg

        # targets: the target encoder sees every hour (filled values, or each hour's own
        # measurements only with target_inputs=observed)
        with torch.no_grad():
            target_values = values * observed if cfg.target_inputs == "observed" else values
            h = self.targets(target_values, observed, delta, lengths)  # [B, T, D], every hour
            target = gather_hours(h, target_index)  # [B, Lt, D]

        # context: the context hours, less the features mask.hide_features hid from this sample
        visible = batch.get("feature_mask")  # float [B, F], 1 = seen; absent: every feature
        if visible is not None:
            values, observed, delta = (x * visible[:, None, :] for x in (values, observed, delta))
        z = self.encoder(values, observed, delta, context_index, context_lengths)
        pred = self.predictor(z, context_index, context_lengths, target_index, target_lengths)

        if cfg.loss == "smooth_l1":
            err = F.smooth_l1_loss(pred.float(), target, reduction="none")
        else:
            err = F.l1_loss(pred.float(), target, reduction="none")
        valid = _valid(target_index, target_lengths)
        if cfg.target_min_observed:  # only the target hours with enough real measurements
            measured = gather_hours(batch["observed"], target_index).sum(-1)  # [B, Lt]
            valid = valid & (measured >= cfg.target_min_observed)
        n_targets = valid.sum()
        loss = (err.mean(-1) * valid).sum() / n_targets.clamp(min=1)
        stats = {"n_targets": n_targets.detach(), "n_context": context_lengths.sum().detach(),
                 "jepa_loss": loss.detach()}

        if cfg.vicreg_var or cfg.vicreg_cov:  # keep the tokens spread (against collapse)
            if cfg.vicreg_on == "encoder":
                tokens, mask = z, _valid(context_index, context_lengths)
            elif cfg.vicreg_on == "stay":  # one row per sample: the mean of its context tokens
                seen = _valid(context_index, context_lengths)[..., None].to(z.dtype)
                pooled = (z * seen).sum(1) / seen.sum(1).clamp(min=1.0)
                tokens = pooled[None]
                mask = (context_lengths > 0)[None]
            else:
                tokens, mask = pred, valid
            var, cov = vicreg_terms(tokens.float(), mask)
            loss = loss + cfg.vicreg_var * var + cfg.vicreg_cov * cov
            stats.update(vicreg_var=var.detach(), vicreg_cov=cov.detach())
        return loss, stats

    def targets(self, values: Tensor, observed: Tensor, delta: Tensor,
                lengths: Tensor | None = None) -> Tensor:
        """The regression targets of every hour [B, T, D] (fp32): the target encoder sees all hours;
        its output is layer-normed, or with model.target_layers = k > 1 the last k blocks' outputs
        are layer-normed, averaged and layer-normed again (data2vec's targets). Hours past
        lengths[b] are padding (their rows are not meaningful)."""
        k = self.cfg.target_layers
        if k == 1:
            h = self.target_encoder(values, observed, delta, lengths=lengths)
            return F.layer_norm(h.float(), h.shape[-1:])
        _, blocks = self.target_encoder(values, observed, delta, lengths=lengths, last_k=k)
        h = torch.stack([F.layer_norm(b.float(), b.shape[-1:]) for b in blocks]).mean(0)
        return F.layer_norm(h, h.shape[-1:])

    def embed(self, values: Tensor, observed: Tensor, delta: Tensor, encoder: str = "target",
              lengths: Tensor | None = None, causal: bool = False) -> Tensor:
        """Features of every hour, all hours as context: [B, T, D]. For probes and validation.
        With `lengths` (int64 [B]) sample b's hours past lengths[b] are padding. With `causal`,
        hour t's features come from hours [0, t] only (the online probe)."""
        if encoder not in ("target", "context"):
            raise ValueError(f"embed: encoder must be 'target' or 'context', got {encoder!r}")
        module = self.target_encoder if encoder == "target" else self.encoder
        return module(values, observed, delta, lengths=lengths, causal=causal)

    @torch.no_grad()
    def momentum_update(self, momentum: float | Tensor) -> None:
        """target = momentum * target + (1 - momentum) * context, for every parameter of the
        context encoder and its EMA copy, the target encoder.

        On CUDA: ehrjepa.kernels' fused EMA through a plan built once (`_ema_plan_now`), so a step
        costs the host a few microseconds; under torch.compile its custom op; without the kernels
        package, or on CPU, one foreach lerp. `momentum` may be a float or a 0-d tensor (on the
        parameters' device, e.g. for a CUDA graph replayed with a changing momentum)."""
        if self._ema_target[0].is_cuda:
            if torch.compiler.is_compiling():  # traced: the opaque custom op, no Python state
                try:
                    from ehrjepa.kernels import ema_update_
                except ImportError:
                    ema_update_ = None
                if ema_update_ is not None:
                    ema_update_(self._ema_target, self._ema_context, momentum)
                    return
            else:
                plan = self._ema_plan_now()
                if plan is not None:
                    plan(momentum)
                    return
        torch._foreach_lerp_(self._ema_target, self._ema_context, 1.0 - momentum)

    def _ema_plan_now(self):
        """The EMA plan of the current parameters (None without the kernels package): built on
        first use and again after `_ema_reset` (a move, a load); every EMA_CHECK_EVERY-th call
        also compares it with the modules' current parameters (O(n)) and rebuilds it if any has
        new storage (`p.data = ...` on a submodule, which no hook sees). Until that check, a plan
        keeps updating the tensors it was built for (kept allocated by the plan: never freed
        memory)."""
        self._ema_calls += 1
        if self._ema_plan and self._ema_calls % EMA_CHECK_EVERY == 0 and \
                self._ema_plan.stale(self.target_encoder.parameters(), self.encoder.parameters()):
            self._ema_reset()
        if self._ema_plan is None:
            try:
                from ehrjepa.kernels.ema import EmaPlan
            except ImportError:
                self._ema_plan = False
            else:
                self._ema_plan = EmaPlan(self._ema_target, self._ema_context)
        return self._ema_plan or None

    def _ema_reset(self) -> None:
        """Forget the EMA plan and re-read the parameter pairs (which a conversion or a load with
        assign=True may have replaced); the next CUDA update builds a new plan."""
        self._ema_target = list(self.target_encoder.parameters())
        self._ema_context = list(self.encoder.parameters())
        self._ema_plan = None

    def _apply(self, *args, **kwargs):
        """.to() / .cuda() / .half() / ...: parameters get new storage, so the EMA plan goes."""
        out = super()._apply(*args, **kwargs)
        self._ema_reset()
        return out


def _valid(index: Tensor, lengths: Tensor) -> Tensor:
    """bool [B, L]: True at the real (not padding) entries of a left-packed index [B, L]."""
    return torch.arange(index.shape[1], device=index.device)[None, :] < lengths[:, None]


def vicreg_terms(x: Tensor, valid: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor]:
    """VICReg's variance and covariance terms (Bardes et al. 2022) over the valid tokens of x
    [B, L, D] (valid bool [B, L]): mean_d relu(1 - sqrt(var_d + eps)), and the sum of squared
    off-diagonal covariances / D. Masked sums rather than indexing, so shapes stay static."""
    m = valid[..., None].to(x.dtype)
    n = m.sum().clamp(min=2.0)
    mean = (x * m).sum((0, 1)) / n
    xc = ((x - mean) * m).reshape(-1, x.shape[-1])
    cov = xc.T @ xc / (n - 1)
    var = torch.diagonal(cov)
    variance = F.relu(1.0 - torch.sqrt(var + eps)).mean()
    covariance = (cov.pow(2).sum() - var.pow(2).sum()) / x.shape[-1]
    return variance, covariance


def _ema_reset_after_load(model: JEPA, incompatible_keys) -> None:
    """load_state_dict(assign=True) replaces parameters: the EMA's pairs and plan follow."""
    model._ema_reset()


def build_model(cfg, n_features: int) -> JEPA:
    """The JEPA of a run config (`ehrjepa.config.Config`): `cfg.model` shapes, a position table of
    `cfg.data.max_hours` hours, `n_features` input features (the processed data's).

    `data.max_hours` is the one owner of the table's size (checked >= data.length, so every crop
    position has a row; probes need max_hours >= the hours they embed)."""
    return JEPA(cfg.model, n_features=n_features, max_hours=cfg.data.max_hours)


def count_parameters(module: nn.Module | None, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of a module; 0 for None (a part a model does not have)."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def parameter_counts(model: JEPA) -> dict[str, int]:
    """Parameter counts by part. `encoder` includes its hour-embedding MLP, `encoder_blocks` is the
    transformer alone (blocks + final norm); the target encoder has as many as the encoder."""
    return {
        "hour_embedding": count_parameters(model.encoder.embed),
        "encoder_blocks": count_parameters(model.encoder.transformer),
        "encoder": count_parameters(model.encoder),
        "predictor": count_parameters(model.predictor),
        "target_encoder": count_parameters(model.target_encoder),
        "trainable": count_parameters(model, trainable_only=True),
    }


def describe(model: JEPA) -> str:
    """One line of shapes and parameter counts, for logs."""
    c, n = model.cfg, parameter_counts(model)
    return (f"JEPA {c.size}: encoder {c.width}x{c.depth}x{c.heads} "
            f"{n['encoder'] / 1e6:.2f} M ({n['encoder_blocks'] / 1e6:.2f} M blocks + "
            f"{n['hour_embedding'] / 1e6:.2f} M {c.tokens} embedding), predictor {c.predictor_width}x"
            f"{c.predictor_depth}x{c.predictor_heads} {n['predictor'] / 1e6:.2f} M, "
            f"trainable {n['trainable'] / 1e6:.2f} M, attention {c.attention}")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on matrices only; none on biases, norms, the mask
    token or any other 1-D parameter. Frozen parameters (the target encoder) are left out.
    Each group carries a "name" ("decay" / "no_decay") so schedules can find it."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or name.endswith(".bias") or ".norm" in name or "mask_token" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
