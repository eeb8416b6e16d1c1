"""model.tokens=observation: one token per measured (hour, feature) plus one per hour, pooled per
hour. Compared with a plain per-sample loop in float64; padding, unobserved values and later
hours (causal) change nothing they must not; the JEPA trains on it."""
import numpy as np
import pytest
import torch

from ehrjepa.masks import MaskConfig, sample_masks
from ehrjepa.models import JEPA, ModelConfig
from ehrjepa.models.observation import ObservationEncoder

F_, T_ = 5, 12


def make_batch(B=3, T=T_, F=F_, seed=0, p_observed=0.4):
    g = torch.Generator().manual_seed(seed)
    observed = (torch.rand(B, T, F, generator=g) < p_observed).float()
    observed[0, 3] = 0.0  # an hour with no measurement
    return {"values": torch.randn(B, T, F, generator=g), "observed": observed,
            "delta": torch.rand(B, T, F, generator=g) * 48 * (1 - observed)}


def encoder(seed=0, depth=2):
    torch.manual_seed(seed)
    enc = ObservationEncoder(F_, max_hours=T_, width=16, depth=depth, heads=2)
    # spread the weights a little so that differences are visible
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return enc.double()


def reference(enc, values, observed, index, n_hours, causal=False):
    """Sample by sample, token by token: the tokens of hours index[:n_hours] in order (each
    hour's measured features, then its hour token), the transformer, the mean per hour."""
    features, hours, vals, slots = [], [], [], []
    for j in range(n_hours):
        t = int(index[j])
        for f in range(F_):
            if observed[t, f] > 0.5:
                features.append(f), hours.append(t), vals.append(values[t, f]), slots.append(j)
        features.append(F_), hours.append(t), vals.append(values.new_zeros(())), slots.append(j)
    x = enc.embed(torch.tensor([features]), torch.stack(vals)[None], torch.tensor([hours]))
    out = enc.transformer(x, torch.tensor([len(features)]), causal=causal)[0]
    slots = torch.tensor(slots)
    return torch.stack([out[slots == j].mean(0) for j in range(n_hours)])


@pytest.mark.parametrize("causal", [False, True])
def test_matches_the_per_sample_reference_in_float64(causal):
    enc = encoder()
    b = make_batch()
    values, observed = b["values"].double(), b["observed"].double()
    lengths = torch.tensor([12, 7, 10])
    out = enc(values, observed, b["delta"].double(), lengths=lengths, causal=causal)
    assert out.shape == (3, T_, 16)
    for s, n in enumerate(lengths.tolist()):
        ref = reference(enc, values[s], observed[s], torch.arange(T_), n, causal)
        torch.testing.assert_close(out[s, :n], ref, atol=1e-10, rtol=1e-10)


def test_an_index_of_hours_matches_the_reference_and_padding_changes_nothing():
    enc = encoder(1)
    b = make_batch(seed=1)
    values, observed = b["values"].double(), b["observed"].double()
    index = torch.tensor([[0, 2, 3, 5, 9, 0], [1, 4, 0, 0, 0, 0], [0, 1, 2, 3, 4, 11]])
    lengths = torch.tensor([5, 2, 6])
    out = enc(values, observed, b["delta"].double(), index, lengths)
    for s, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[s, :n], reference(enc, values[s], observed[s], index[s], n),
                                   atol=1e-10, rtol=1e-10)
    noisy = index.clone()
    noisy[0, 5], noisy[1, 2:] = 7, torch.tensor([8, 9, 10, 11])
    again = enc(values, observed, b["delta"].double(), noisy, lengths)
    for s, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(again[s, :n], out[s, :n], atol=1e-10, rtol=1e-10)


def test_values_that_were_not_measured_and_delta_are_not_inputs():
    enc = encoder(2)
    b = make_batch(seed=2)
    out = enc(b["values"].double(), b["observed"].double(), b["delta"].double())
    filled = b["values"].double().clone()
    filled[b["observed"] == 0] = 1e3  # what forward fill put there does not matter
    again = enc(filled, b["observed"].double(), torch.zeros_like(b["delta"]).double())
    torch.testing.assert_close(again, out, atol=1e-10, rtol=1e-10)
    measured = b["values"].double().clone()
    measured[b["observed"] == 1] += 1.0
    assert not torch.allclose(enc(measured, b["observed"].double(), b["delta"].double()), out)


def test_causal_outputs_depend_on_earlier_hours_only():
    enc = encoder(3)
    b = make_batch(seed=3)
    values, observed = b["values"].double(), b["observed"].double()
    out = enc(values, observed, b["delta"].double(), causal=True)
    later_v, later_o = values.clone(), observed.clone()
    later_v[:, 6:] = torch.randn_like(later_v[:, 6:])
    later_o[:, 6:] = 1.0 - later_o[:, 6:]
    again = enc(later_v, later_o, b["delta"].double(), causal=True)
    torch.testing.assert_close(again[:, :6], out[:, :6], atol=1e-10, rtol=1e-10)
    assert not torch.allclose(again[:, 6:], out[:, 6:])


def test_backward_matches_the_reference_in_float64():
    enc = encoder(4, depth=1)
    b = make_batch(B=2, seed=4)
    values = b["values"].double().requires_grad_()
    observed = b["observed"].double()
    (enc(values, observed, b["delta"].double()) ** 2).sum().backward()
    grad = values.grad.clone()
    values.grad = None
    sum((reference(enc, values[s], observed[s], torch.arange(T_), T_) ** 2).sum() for s in range(2)).backward()
    torch.testing.assert_close(grad, values.grad, atol=1e-9, rtol=1e-9)
    assert (grad[b["observed"] == 0] == 0).all()  # unmeasured values get no gradient


def test_the_jepa_trains_and_embeds_with_observation_tokens():
    torch.manual_seed(0)
    model = JEPA(ModelConfig(size="micro", tokens="observation", vicreg_var=0.1, vicreg_cov=0.01),
                 n_features=F_, max_hours=T_)
    assert type(model.encoder).__name__ == "ObservationEncoder"
    b = make_batch(B=4, p_observed=0.6)
    b.update(sample_masks(MaskConfig(kind="multiblock", n_targets=2, target_scale=(0.15, 0.25)),
                          T_, 4, np.random.default_rng(0)))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(30):
        loss, stats = model(b)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.momentum_update(0.99)
        losses.append(float(stats["jepa_loss"]))
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert model.target_encoder.embed.feature.weight.grad is None  # the EMA copy has no gradient
    h = model.embed(b["values"], b["observed"], b["delta"])
    assert h.shape == (4, T_, model.cfg.width) and torch.isfinite(h).all()
    with pytest.raises(ValueError, match="model.tokens"):
        ModelConfig(tokens="event")
