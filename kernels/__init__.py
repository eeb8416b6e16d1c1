"""Triton kernels with plain-torch references (installed as ehrjepa.kernels).

Importing this package does not import Triton; the kernels are compiled on their first use.
"""
from .attention import masked_gather_attention, masked_gather_attention_reference
from .ema import EmaPlan, ema_update_, ema_update_reference

__all__ = ["masked_gather_attention", "masked_gather_attention_reference", "ema_update_",
           "ema_update_reference", "EmaPlan"]
