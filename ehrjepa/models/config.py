"""`ModelConfig`: the `model:` section of a run config (field names are the YAML keys)."""
from __future__ import annotations

from dataclasses import dataclass, replace

# size name -> (width, depth, heads) of the encoder; predictor defaults beside them.
SIZES: dict[str, tuple[int, int, int]] = {
    "micro": (64, 2, 2),  # CPU tests and the demo
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}
# size name -> (predictor width, depth, heads)
PREDICTOR_SIZES: dict[str, tuple[int, int, int]] = {
    "micro": (32, 2, 2),
    "tiny": (192, 4, 6),
    "small": (192, 4, 6),
    "base": (192, 4, 6),
    "large": (192, 4, 6),
}
ATTENTION_BACKENDS = ("sdpa", "triton")
LOSSES = ("smooth_l1", "l1")
TARGET_INPUTS = ("filled", "observed")
REGULARISED = ("encoder", "predictor", "stay")
TOKENS = ("hour", "observation")


@dataclass
class ModelConfig:
    """Encoder and predictor shapes, and the options of the JEPA loss.

    `width`/`depth`/`heads` (and the `predictor_*` fields) left as None take the values of `size`;
    set explicitly they override it.

    Options against the copy-the-present shortcut (with forward-filled inputs the hours after the
    context mostly repeat its last values, so their latents can be copied), each off by default:
    - `target_min_observed` = k > 0: the loss counts only target hours in which at least k
      features were observed (measured that hour, not forward-filled); 0 counts every target hour.
    - `target_inputs` = "observed": the target encoder is fed each hour's own measurements only
      (values x observed: 0, the train mean, where nothing was measured that hour) instead of the
      forward-filled values ("filled", the default); the context encoder keeps the filled values.
    - `mask.hide_features` (in MaskConfig): hide features from the context encoder's input.
    Against collapse (off by default): `vicreg_var` and `vicreg_cov` add VICReg-style terms
    (Bardes et al. 2022) on the tokens of `vicreg_on` ("encoder": the context encoder's output
    tokens; "predictor": the predictions; "stay": one vector per sample, the mean of its context
    encoder tokens, so only the spread between stays counts, not the hour-to-hour spread within
    a stay): vicreg_var x mean_d relu(1 - std_d) and vicreg_cov x sum of the squared
    off-diagonal covariances / D, over the batch's valid tokens (or samples).
    Tokens (`tokens`): "hour" (the default) gives every hour one token of all its features
    (models/embedding.py); "observation" gives every measured (hour, feature) its own token plus
    one token per hour, and pools the encoder's outputs per hour (models/observation.py)."""

    size: str = "small"  # micro | tiny | small | base | large
    width: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float = 4.0
    predictor_width: int | None = None
    predictor_depth: int | None = None
    predictor_heads: int | None = None
    dropout: float = 0.0  # on the residual branches (attention output and MLP)
    attention: str = "sdpa"  # sdpa | triton: the backend of ehrjepa.models.attention.attention
    loss: str = "smooth_l1"  # smooth_l1 | l1, between predictions and layer-normed targets
    # Targets: 1 = the target encoder's output, layer-normed (I-JEPA); k > 1 = the average of the
    # last k blocks' outputs, each layer-normed, layer-normed again (as data2vec builds targets).
    target_layers: int = 1
    target_min_observed: int = 0  # >0: loss on target hours with >= this many observed features
    target_inputs: str = "filled"  # filled | observed: what the target encoder is fed
    vicreg_var: float = 0.0  # weight of the variance term (0: off)
    vicreg_cov: float = 0.0  # weight of the covariance term (0: off)
    vicreg_on: str = "encoder"  # encoder | predictor | stay: whose output the terms see
    tokens: str = "hour"  # hour | observation: what one encoder token is

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"model.size: unknown size {self.size!r}; choose one of {sorted(SIZES)}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"model.attention: unknown backend {self.attention!r}; "
                             f"choose one of {list(ATTENTION_BACKENDS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"model.loss: unknown loss {self.loss!r}; choose one of {list(LOSSES)}")
        if self.target_layers < 1:
            raise ValueError(f"model.target_layers must be >= 1, got {self.target_layers}")
        if self.target_min_observed < 0:
            raise ValueError(f"model.target_min_observed must be >= 0, got {self.target_min_observed}")
        if self.target_inputs not in TARGET_INPUTS:
            raise ValueError(f"model.target_inputs: unknown {self.target_inputs!r}; "
                             f"choose one of {list(TARGET_INPUTS)}")
        if self.vicreg_on not in REGULARISED:
            raise ValueError(f"model.vicreg_on: unknown {self.vicreg_on!r}; choose one of {list(REGULARISED)}")
        if self.tokens not in TOKENS:
            raise ValueError(f"model.tokens: unknown {self.tokens!r}; choose one of {list(TOKENS)}")
        if self.vicreg_var < 0 or self.vicreg_cov < 0:
            raise ValueError(f"model.vicreg_var and model.vicreg_cov must be >= 0, got "
                             f"{self.vicreg_var} and {self.vicreg_cov}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")

    def resolved(self) -> "ModelConfig":
        """A copy with every shape filled in from `size`, checked (width divisible by heads)."""
        w, d, h = SIZES[self.size]
        pw, pd, ph = PREDICTOR_SIZES[self.size]
        cfg = replace(
            self,
            width=self.width or w, depth=self.depth or d, heads=self.heads or h,
            predictor_width=self.predictor_width or pw,
            predictor_depth=self.predictor_depth or pd,
            predictor_heads=self.predictor_heads or ph,
        )
        for name, width, heads in [("", cfg.width, cfg.heads),
                                   ("predictor_", cfg.predictor_width, cfg.predictor_heads)]:
            if width % heads:
                raise ValueError(f"model.{name}width ({width}) must be divisible by "
                                 f"model.{name}heads ({heads})")
        for key in ("width", "depth", "heads", "predictor_width", "predictor_depth", "predictor_heads"):
            if getattr(cfg, key) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(cfg, key)}")
        if cfg.target_layers > cfg.depth:
            raise ValueError(f"model.target_layers ({cfg.target_layers}) exceeds model.depth ({cfg.depth})")
        return cfg
