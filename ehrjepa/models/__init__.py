"""The JEPA model: hour embedding, transformer encoder, predictor, EMA target encoder.

    from ehrjepa.models import JEPA, ModelConfig
    model = JEPA(ModelConfig(size="micro"), n_features=25, max_hours=20)
    loss, stats = model(batch)          # batch: WindowDataset items + MaskCollator keys
    model.momentum_update(0.996)
"""
from .attention import attention
from .config import SIZES, ModelConfig
from .jepa import JEPA, count_parameters, describe, param_groups, parameter_counts

__all__ = ["JEPA", "ModelConfig", "SIZES", "attention", "count_parameters", "describe",
           "param_groups", "parameter_counts"]
