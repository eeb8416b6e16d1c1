"""The model gives the same loss and gradients with attention `sdpa` and `triton`.

On CPU, `ehrjepa.kernels.masked_gather_attention` picks its torch reference by default; here the
Triton kernels themselves are forced (they run in Triton's interpreter, TRITON_INTERPRET=1 is set
by conftest.py), so the model path through the real kernels is what is compared.
"""
import functools

import numpy as np
import pytest
import torch

import ehrjepa.kernels
from ehrjepa.masks import MaskConfig, sample_masks
from ehrjepa.models import JEPA, ModelConfig

pytest.importorskip("triton")
T, F = 20, 5


def _batch(B, mask_cfg, seed):
    g = torch.Generator().manual_seed(seed)
    observed = (torch.rand(B, T, F, generator=g) < 0.5).float()
    batch = {"values": torch.randn(B, T, F, generator=g), "observed": observed,
             "delta": torch.rand(B, T, F, generator=g) * 48 * (1 - observed)}
    batch.update(sample_masks(mask_cfg, T, B, np.random.default_rng(seed)))
    return batch


def _loss_and_grads(attention, batch):
    torch.manual_seed(0)
    model = JEPA(ModelConfig(size="micro", attention=attention), n_features=F, max_hours=T)
    loss, _ = model(batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mask_cfg", [
    MaskConfig(kind="future", context_hours=15, target_hours=5),
    MaskConfig(kind="multiblock"),  # a different context and target count per sample
])
def test_sdpa_and_triton_kernels_agree(monkeypatch, mask_cfg):
    seed = int(np.random.SeedSequence().entropy % 2**31)  # fresh inputs each run
    batch = _batch(3, mask_cfg, seed)
    ref_loss, ref_grads = _loss_and_grads("sdpa", batch)
    calls = []
    real = ehrjepa.kernels.masked_gather_attention

    def forced(*args, **kw):
        calls.append(1)
        return real(*args, **{**kw, "backend": "triton"})

    monkeypatch.setattr(ehrjepa.kernels, "masked_gather_attention", forced)
    loss, grads = _loss_and_grads("triton", batch)
    assert calls, "the triton backend never reached the kernel"
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6, msg=f"seed {seed}")
    assert grads.keys() == ref_grads.keys()
    _assert_grads_close(grads, ref_grads, f"seed {seed}")


def _assert_grads_close(grads, ref_grads, where=""):
    """Each parameter's gradient within 1e-3 of the reference, relative to its own norm, or to 1 %
    of the whole gradient's norm for a parameter whose gradient is nearly zero on these fresh
    inputs (there fp32 rounding alone can exceed 1e-3 of it: a flaky test, not a bug)."""
    total = torch.sqrt(sum(g.norm() ** 2 for g in ref_grads.values()))
    for name, g in grads.items():
        scale = torch.maximum(ref_grads[name].norm(), 1e-2 * total).clamp_min(1e-12)
        rel = (g - ref_grads[name]).norm() / scale
        assert rel < 1e-3, f"{name}: relative gradient error {rel:.2e} ({where})"


def test_ragged_batch_sdpa_padded_and_triton_packed_agree(monkeypatch):
    # whole stays: samples of 20, 7 and 13 hours in one batch padded to 20
    lengths = np.array([20, 7, 13])
    batch = _batch(3, MaskConfig(kind="future", context_hours=15, target_hours=5), seed=11)
    cfg = MaskConfig(kind="multiblock", target_block_hours=(2, 4), n_targets=3, min_context=2)
    batch.update(sample_masks(cfg, T, 3, np.random.default_rng(11), lengths=lengths),
                 lengths=torch.from_numpy(lengths))
    ref_loss, ref_grads = _loss_and_grads("sdpa", batch)
    real = ehrjepa.kernels.masked_gather_attention
    monkeypatch.setattr(ehrjepa.kernels, "masked_gather_attention",
                        lambda *a, **kw: real(*a, **{**kw, "backend": "triton"}))
    loss, grads = _loss_and_grads("triton", batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=1e-6)
    _assert_grads_close(grads, ref_grads, "ragged batch")
