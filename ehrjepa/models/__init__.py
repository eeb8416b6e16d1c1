"""The JEPA model: hour embedding, transformer encoder, predictor, EMA target encoder.

    from ehrjepa.models import JEPA, ModelConfig
    model = JEPA(ModelConfig(size="micro"), n_features=25, max_hours=20)
    loss, stats = model(batch)          # batch: WindowDataset items + MaskCollator keys
    model.momentum_update(0.996)

    model, cfg, ckpt = load_model("RUN/checkpoints/best.pt")   # a trained one, for evaluation
"""
from .attention import attention
from .config import SIZES, ModelConfig
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .jepa import JEPA, build_model, count_parameters, describe, param_groups, parameter_counts

__all__ = ["JEPA", "CheckpointError", "ModelConfig", "SIZES", "attention", "build_model",
           "count_parameters", "describe", "load_checkpoint", "load_model", "param_groups",
           "parameter_counts", "save_checkpoint"]
