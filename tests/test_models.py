"""The JEPA model: shapes, parameter counts, attention, padding, loss, EMA, compile."""
import os

import numpy as np
import pytest
import torch

import ehrjepa.kernels
from ehrjepa.masks import MaskConfig, sample_masks
from ehrjepa.models import JEPA, ModelConfig, attention, param_groups, parameter_counts
from ehrjepa.models.attention import reference_attention
from ehrjepa.models.transformer import Block

F_, T_ = 5, 20  # features, hours per window


def make_batch(B=4, T=T_, F=F_, mask_cfg=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    observed = (torch.rand(B, T, F, generator=g) < 0.5).float()
    batch = {"values": torch.randn(B, T, F, generator=g), "observed": observed,
             "delta": torch.rand(B, T, F, generator=g) * 48 * (1 - observed)}
    cfg = mask_cfg or MaskConfig(kind="future", context_hours=15, target_hours=5)
    batch.update(sample_masks(cfg, T, B, np.random.default_rng(seed)))
    return batch


def micro(**kw):
    torch.manual_seed(0)
    return JEPA(ModelConfig(size="micro", **kw), n_features=F_, max_hours=T_)


def test_config_sizes_and_errors():
    c = ModelConfig(size="base").resolved()
    assert (c.width, c.depth, c.heads, c.predictor_width) == (768, 12, 12, 192)
    c = ModelConfig(size="tiny", width=256, heads=4).resolved()
    assert (c.width, c.depth, c.heads) == (256, 12, 4)  # explicit fields override the size
    with pytest.raises(ValueError, match="model.size"):
        ModelConfig(size="huge")
    with pytest.raises(ValueError, match="model.attention"):
        ModelConfig(attention="flash")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(size="micro", width=60, heads=7).resolved()


def test_shapes():
    model = micro()
    batch = make_batch(mask_cfg=MaskConfig(kind="multiblock"))
    loss, stats = model(batch)
    assert loss.shape == () and torch.isfinite(loss)
    assert int(stats["n_targets"]) == int(batch["target_lengths"].sum())
    D = model.cfg.width
    for which in ("target", "context"):
        assert model.embed(batch["values"], batch["observed"], batch["delta"], encoder=which).shape == (4, T_, D)
    short = [batch[k][:, :12] for k in ("values", "observed", "delta")]  # windows may be shorter
    assert model.embed(*short).shape == (4, 12, D)
    with pytest.raises(ValueError, match="max_hours"):
        model.embed(*[torch.cat([x, x], dim=1) for x in (batch["values"], batch["observed"], batch["delta"])])
    z = model.encoder(batch["values"], batch["observed"], batch["delta"], batch["context_index"], batch["context_lengths"])
    assert z.shape == (4, batch["context_index"].shape[1], D)
    p = model.predictor(z, batch["context_index"], batch["context_lengths"], batch["target_index"],
                        batch["target_lengths"])
    assert p.shape == (4, batch["target_index"].shape[1], D)


def test_parameter_counts_small():
    with torch.device("meta"):
        model = JEPA(ModelConfig(size="small"), n_features=25, max_hours=20)
    n = parameter_counts(model)
    D, depth, F = 384, 12, 25
    # per block: qkv D*3D+3D, proj D*D+D, fc1 D*4D+4D, fc2 4D*D+D, two norms 4D; plus the final norm
    blocks = depth * (12 * D * D + 13 * D) + 2 * D
    embedding = (3 * F * D + D) + (D * D + D) + 2 * D  # fc1, fc2, norm
    assert n["encoder_blocks"] == blocks  # 21,294,336
    assert n["encoder"] == blocks + embedding
    assert 21.2e6 < n["encoder"] < 21.7e6
    assert n["target_encoder"] == n["encoder"]
    assert n["trainable"] == n["encoder"] + n["predictor"]


@pytest.mark.parametrize("lengths", [[7, 3, 1, 0], [7, 7, 7, 7]])
def test_sdpa_attention_matches_float64_reference(lengths):
    g = torch.Generator().manual_seed(0)
    B, H, L, D = 4, 2, 7, 8
    q, k, v = (torch.randn(B, H, L, D, generator=g, requires_grad=True) for _ in range(3))
    lengths = torch.tensor(lengths)
    out = attention(q, k, v, lengths, backend="sdpa")
    ref = reference_attention(q.double(), k.double(), v.double(), lengths)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    valid = torch.arange(L)[None, :] < lengths[:, None]
    assert bool((out[~valid[:, None, :].expand(B, H, L)] == 0).all())  # padding rows are zero
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()  # also for the sample with no token


def test_triton_backend_wiring(monkeypatch):
    calls = []

    def fake(q, k, v, kv_index, kv_lengths, q_index=None, q_lengths=None, scale=None, backend=None,
             check_index=None):
        calls.append((kv_index, kv_lengths, q_index, q_lengths, check_index))
        return reference_attention(q, k, v, kv_lengths, scale)

    monkeypatch.setattr(ehrjepa.kernels, "masked_gather_attention", fake, raising=False)
    q = k = v = torch.randn(2, 1, 5, 4)
    lengths = torch.tensor([5, 2])
    out = attention(q, k, v, lengths, backend="triton")
    torch.testing.assert_close(out, attention(q, k, v, lengths, backend="sdpa"))
    kv_index, kv_lengths, q_index, q_lengths, check_index = calls[0]
    assert kv_index is None and kv_lengths is lengths  # the identity path: no index tensors
    assert q_index is None and q_lengths is None  # queries are the keys
    assert check_index is False  # no host sync per layer: the indices are right by construction
    # A model built with the triton backend runs through the same function.
    loss, _ = micro(attention="triton")(make_batch())
    assert torch.isfinite(loss) and len(calls) > 1


def test_triton_backend_with_the_kernels_package():
    # On CPU ehrjepa.kernels runs its torch reference behind the same op: same result as sdpa.
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(3, 2, 6, 16, generator=g, requires_grad=True) for _ in range(3))
    lengths = torch.tensor([6, 2, 0])
    out = attention(q, k, v, lengths, backend="triton")
    torch.testing.assert_close(out, attention(q, k, v, lengths, backend="sdpa"), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_padding_rows_do_not_change_valid_outputs():
    torch.manual_seed(0)
    block = Block(16, 2)
    x = torch.randn(3, 6, 16)
    lengths = torch.tensor([6, 4, 1])
    y = block(x, lengths)
    x2 = x.clone()
    x2[1, 4:] = 100.0
    x2[2, 1:] = torch.randn(5, 16)
    y2 = block(x2, lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(y[b, :n], y2[b, :n])


def test_padding_invariance_of_the_loss():
    model = micro()
    batch = make_batch(B=6, mask_cfg=MaskConfig(kind="multiblock", pad_multiple=16))
    loss, _ = model(batch)
    # Padding entries of the index tensors point at arbitrary hours: the loss must not change.
    noisy = dict(batch)
    for key, n in (("context_index", "context_lengths"), ("target_index", "target_lengths")):
        idx = batch[key].clone()
        pad = torch.arange(idx.shape[1])[None, :] >= batch[n][:, None]
        idx[pad] = torch.randint(0, T_, (int(pad.sum()),))
        noisy[key] = idx
    assert (noisy["target_index"] != batch["target_index"]).any()
    torch.testing.assert_close(model(noisy)[0], loss)
    # Each sample's prediction in the padded batch equals that sample's alone, without padding.
    z = model.encoder(batch["values"], batch["observed"], batch["delta"], batch["context_index"], batch["context_lengths"])
    pred = model.predictor(z, batch["context_index"], batch["context_lengths"], batch["target_index"],
                           batch["target_lengths"])
    for b in range(6):
        nc, nt = int(batch["context_lengths"][b]), int(batch["target_lengths"][b])
        ci, ti = batch["context_index"][b : b + 1, :nc], batch["target_index"][b : b + 1, :nt]
        one = [batch[k][b : b + 1] for k in ("values", "observed", "delta")]
        zb = model.encoder(*one, ci, torch.tensor([nc]))
        torch.testing.assert_close(z[b, :nc], zb[0], atol=1e-5, rtol=1e-5)
        pb = model.predictor(zb, ci, torch.tensor([nc]), ti, torch.tensor([nt]))
        torch.testing.assert_close(pred[b, :nt], pb[0], atol=1e-5, rtol=1e-5)


def test_hour_content_is_not_swamped_by_the_position():
    # At initialisation the hour's features must move the encoder's output about as much as the
    # hour index does; when the content was ~40x smaller than the sinusoid, >99 % of the output
    # variance was the hour index and the JEPA loss went to ~0 by predicting positions.
    model = micro()
    batch = make_batch(B=64)
    with torch.no_grad():
        h = model.embed(batch["values"], batch["observed"], batch["delta"])  # [B, T, D]
    total = h.var(dim=(0, 1), unbiased=False).sum()
    by_hour = h.mean(0).var(0, unbiased=False).sum()
    assert by_hour / total < 0.7


def test_target_layers_average_the_last_blocks():
    model = micro(target_layers=2)
    batch = make_batch()
    v, m, d = batch["values"], batch["observed"], batch["delta"]
    with torch.no_grad():
        out, blocks = model.target_encoder(v, m, d, last_k=2)
        torch.testing.assert_close(out, model.target_encoder(v, m, d))  # the normed output is unchanged
        x = model.target_encoder.embed(v, m, d)
        lengths = torch.full((x.shape[0],), x.shape[1])
        expected = []
        for block in model.target_encoder.transformer.blocks:
            x = block(x, lengths)
            expected.append(torch.nn.functional.layer_norm(x, x.shape[-1:]))
        want = torch.stack(expected).mean(0)
        want = torch.nn.functional.layer_norm(want, want.shape[-1:])
        torch.testing.assert_close(model.targets(v, m, d), want)
        one = micro(target_layers=1)
        torch.testing.assert_close(one.targets(v, m, d), torch.nn.functional.layer_norm(
            one.target_encoder(v, m, d), (one.cfg.width,)))
    assert not torch.allclose(model.targets(v, m, d), one.targets(v, m, d))
    loss, _ = model(batch)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="target_layers"):
        ModelConfig(size="micro", target_layers=3).resolved()
    with pytest.raises(ValueError, match="target_layers"):
        ModelConfig(size="micro", target_layers=0)


def test_backward_reaches_encoder_and_predictor_only():
    model = micro(loss="l1")
    loss, _ = model(make_batch())
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.target_encoder.parameters())


def test_loss_goes_down_on_a_fixed_batch():
    model = micro()
    opt = torch.optim.AdamW(param_groups(model, 0.04), lr=1e-3)
    batch = make_batch(B=8)
    losses = []
    for _ in range(30):
        loss, _ = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.momentum_update(0.99)
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("as_tensor", [False, True])
def test_ema_update_math(as_tensor):
    model = micro().double()  # conversion keeps the parameter objects the EMA holds
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in model.target_encoder.parameters()]
    context = [p.clone() for p in model.encoder.parameters()]
    m = 0.9
    model.momentum_update(torch.tensor(m, dtype=torch.float64) if as_tensor else m)
    for t, t0, o in zip(model.target_encoder.parameters(), before, context):
        torch.testing.assert_close(t, m * t0 + (1 - m) * o)
    for p, o in zip(model.encoder.parameters(), context):
        assert torch.equal(p, o)  # context encoder weights untouched
    model.momentum_update(0.0)
    for t, o in zip(model.target_encoder.parameters(), model.encoder.parameters()):
        assert torch.equal(t, o)


def test_param_groups():
    model = micro()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert ids(decay["params"]) | ids(no_decay["params"]) == trainable
    assert not ids(decay["params"]) & ids(no_decay["params"])
    assert all(p.ndim == 2 for p in decay["params"])
    assert id(model.predictor.mask_token) in ids(no_decay["params"])
    assert id(model.encoder.transformer.norm.weight) in ids(no_decay["params"])
    assert id(model.encoder.transformer.blocks[0].qkv.bias) in ids(no_decay["params"])


# Inductor on CPU compiles the micro model in about 25 s on an idle 2-core box (minutes when it is
# busy): EHRJEPA_SKIP_INDUCTOR=1 skips it. aot_eager traces the whole step (fullgraph) either way.
INDUCTOR = pytest.mark.skipif(bool(os.environ.get("EHRJEPA_SKIP_INDUCTOR")),
                              reason="EHRJEPA_SKIP_INDUCTOR is set")


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=[pytest.mark.slow, INDUCTOR])])
def test_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    model = micro()
    batch = make_batch(mask_cfg=MaskConfig(kind="multiblock"))
    eager_loss, _ = model(batch)
    eager_loss.backward()
    eager_grads = [p.grad.clone() for p in model.encoder.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    loss, stats = compiled(batch)
    loss.backward()
    torch.testing.assert_close(loss, eager_loss, atol=1e-5, rtol=1e-5)
    for p, g in zip(model.encoder.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_train_step_benchmark_smoke(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import train_step

    out = tmp_path / "ts.json"
    rc = train_step.main(["--device", "cpu", "--size", "micro", "--batch", "2", "--steps", "2",
                          "--warmup", "1", "--mode", "eager_fp32", "--mode", "eager_bf16",
                          "--json", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["mode"] for r in rows] == ["eager_fp32", "eager_bf16"]
    assert all(r["seq_s"] > 0 and r["mfu_pct"] > 0 and r["size"] == "micro" for r in rows)


def test_build_save_and_load_model_round_trip(tmp_path):
    from ehrjepa.config import config_to_dict, load_config
    from ehrjepa.models import build_model, count_parameters, load_model, save_checkpoint

    cfg = load_config(None, ["model.size=micro", "data.max_hours=32"])
    torch.manual_seed(0)
    model = build_model(cfg, F_)
    assert model.max_hours == 32 and count_parameters(None) == 0
    assert count_parameters(model, trainable_only=True) < count_parameters(model)
    # the old layout, with max_hours also at the top level, still loads (the config's is used)
    save_checkpoint({"model": model.state_dict(), "optimizer": {}, "step": 3, "n_features": F_,
                     "max_hours": 32, "config": config_to_dict(cfg)}, tmp_path / "c.pt")
    loaded, cfg2, ckpt = load_model(tmp_path / "c.pt")
    assert cfg2 == cfg and ckpt["step"] == 3 and "model" not in ckpt and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_resolve_device():
    from ehrjepa.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")


def test_hour_content_is_not_swamped_at_336_positions():
    # whole stays: positions run to weeks of hours; the hour must still explain well under 70 %
    torch.manual_seed(0)
    model = JEPA(ModelConfig(size="micro"), n_features=F_, max_hours=336)
    batch = make_batch(B=16, T=336)
    with torch.no_grad():
        h = model.embed(batch["values"], batch["observed"], batch["delta"])
    total = h.var(dim=(0, 1), unbiased=False).sum()
    by_hour = h.mean(0).var(0, unbiased=False).sum()
    assert by_hour / total < 0.7


def test_a_ragged_sample_loses_the_same_as_alone():
    # lengths: the target encoder attends within each sample's hours, so padding changes nothing
    model = micro()
    lengths = np.array([20, 9, 14])
    cfg = MaskConfig(kind="future", context_fraction=0.6, target_hours=20)
    batch = make_batch(B=3)
    batch.update(sample_masks(cfg, T_, 3, lengths=lengths), lengths=torch.from_numpy(lengths))
    batch["values"][1, 9:] = 1e3  # padding hours hold garbage
    with torch.no_grad():
        _, _ = model(batch)
        h = model.targets(batch["values"], batch["observed"], batch["delta"], batch["lengths"])
        for b, n in enumerate(lengths.tolist()):
            alone = model.targets(*(batch[k][b:b + 1, :n] for k in ("values", "observed", "delta")))
            torch.testing.assert_close(h[b, :n], alone[0], atol=1e-5, rtol=1e-5)


# ---- options against the copy-the-present shortcut, and the VICReg terms ---------------------


def test_new_options_are_off_by_default_and_checked():
    c = ModelConfig()
    assert (c.target_min_observed, c.target_inputs, c.vicreg_var, c.vicreg_cov) == (0, "filled", 0.0, 0.0)
    for kw, field in [({"target_min_observed": -1}, "target_min_observed"),
                      ({"target_inputs": "raw"}, "target_inputs"),
                      ({"vicreg_on": "target"}, "vicreg_on"), ({"vicreg_var": -1.0}, "vicreg")]:
        with pytest.raises(ValueError, match=field):
            ModelConfig(**kw)


def test_target_min_observed_counts_only_measured_target_hours():
    batch = make_batch()
    base_loss, base_stats = micro()(batch)
    assert int(base_stats["n_targets"]) == int(batch["target_lengths"].sum())
    loss, stats = micro(target_min_observed=3)(batch)
    measured = torch.gather(batch["observed"].sum(-1), 1, batch["target_index"])  # [B, Lt]
    valid = torch.arange(batch["target_index"].shape[1])[None, :] < batch["target_lengths"][:, None]
    keep = valid & (measured >= 3)
    assert 0 < int(keep.sum()) < int(valid.sum())  # the test data has some of both
    assert int(stats["n_targets"]) == int(keep.sum())
    # the loss is the mean over the kept hours of the per-hour errors the plain model computes
    model = micro(target_min_observed=3)
    with torch.no_grad():
        h = model.targets(batch["values"], batch["observed"], batch["delta"])
        target = torch.gather(h, 1, batch["target_index"][..., None].expand(-1, -1, h.shape[-1]))
        z = model.encoder(batch["values"], batch["observed"], batch["delta"], batch["context_index"],
                          batch["context_lengths"])
        pred = model.predictor(z, batch["context_index"], batch["context_lengths"],
                               batch["target_index"], batch["target_lengths"])
        err = torch.nn.functional.smooth_l1_loss(pred, target, reduction="none").mean(-1)
    assert float(loss) == pytest.approx(float(err[keep].mean()), rel=1e-5)
    assert not torch.isclose(loss, base_loss)


def _encoder_inputs(model, batch):
    """(context encoder's inputs, target encoder's inputs) of one forward pass."""
    seen = {}
    for name in ("encoder", "target_encoder"):
        getattr(model, name).register_forward_pre_hook(
            lambda m, args, kwargs, name=name: seen.setdefault(name, args[:3]) and None,
            with_kwargs=True)
    model(batch)
    return seen["encoder"], seen["target_encoder"]


def test_target_inputs_observed_feeds_the_target_encoder_each_hours_own_values():
    batch = make_batch()
    context, target = _encoder_inputs(micro(), batch)
    assert torch.equal(target[0], batch["values"]) and torch.equal(context[0], batch["values"])
    context, target = _encoder_inputs(micro(target_inputs="observed"), batch)
    assert torch.equal(target[0], batch["values"] * batch["observed"])  # no forward fill
    assert torch.equal(target[1], batch["observed"]) and torch.equal(target[2], batch["delta"])
    assert torch.equal(context[0], batch["values"])  # the context encoder keeps the filled values


def test_feature_mask_hides_features_from_the_context_encoder_only():
    batch = make_batch()
    visible = torch.ones(4, F_)
    visible[:, 1] = 0
    visible[0, 3] = 0
    batch["feature_mask"] = visible
    context, target = _encoder_inputs(micro(), batch)
    for x in context:  # value, observed and delta all 0 where hidden, as they were elsewhere
        assert (x[:, :, 1] == 0).all() and (x[0, :, 3] == 0).all()
        assert torch.equal(x[1:, :, 3], x[1:, :, 3])
    assert torch.equal(context[0][:, :, 0], batch["values"][:, :, 0])
    assert torch.equal(target[0], batch["values"])  # the target encoder sees every feature
    # the loss depends on a hidden feature's values only through the targets
    model = micro()
    x = dict(batch)
    x["values"] = batch["values"].clone()
    x["values"][:, :, 1] += 5.0
    with torch.no_grad():
        z1 = model.encoder(*(t * visible[:, None, :] for t in (batch["values"], batch["observed"], batch["delta"])),
                           batch["context_index"], batch["context_lengths"])
        z2 = model.encoder(*(t * visible[:, None, :] for t in (x["values"], x["observed"], x["delta"])),
                           batch["context_index"], batch["context_lengths"])
    assert torch.equal(z1, z2)


def test_vicreg_terms_measure_spread_and_ignore_padding():
    from ehrjepa.models.jepa import vicreg_terms

    g = torch.Generator().manual_seed(0)
    spread = torch.randn(8, 64, 16, generator=g) * 2.0
    valid = torch.ones(8, 64, dtype=torch.bool)
    var, cov = vicreg_terms(spread, valid)
    assert float(var) == pytest.approx(0.0, abs=1e-6)  # std ~2 > 1 in every dimension
    assert float(cov) < 0.5
    collapsed = torch.ones(8, 64, 16) * 3.0
    var, cov = vicreg_terms(collapsed, valid)
    assert float(var) == pytest.approx(1.0 - 1e-2, abs=1e-3) and float(cov) == pytest.approx(0.0, abs=1e-6)
    correlated = torch.randn(8, 64, 1, generator=g).expand(-1, -1, 16)
    assert float(vicreg_terms(correlated, valid)[1]) > 10 * float(vicreg_terms(spread / 2, valid)[1])
    # padding: garbage past the valid tokens changes nothing
    valid[:, 40:] = False
    noisy = spread.clone()
    noisy[:, 40:] = 1e3
    assert torch.allclose(torch.stack(vicreg_terms(spread, valid)), torch.stack(vicreg_terms(noisy, valid)))


@pytest.mark.parametrize("on", ["encoder", "predictor", "stay"])
def test_vicreg_adds_its_terms_to_the_loss_with_gradients(on):
    batch = make_batch()
    plain, _ = micro()(batch)
    model = micro(vicreg_var=0.5, vicreg_cov=0.1, vicreg_on=on)
    loss, stats = model(batch)
    assert float(stats["jepa_loss"]) == pytest.approx(float(plain), rel=1e-6)
    want = stats["jepa_loss"] + 0.5 * stats["vicreg_var"] + 0.1 * stats["vicreg_cov"]
    assert float(loss) == pytest.approx(float(want), rel=1e-5)
    assert float(stats["vicreg_var"]) > 0
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_vicreg_on_stay_sees_one_mean_per_sample():
    from ehrjepa.models.jepa import vicreg_terms
    batch = make_batch(B=6)
    model = micro(vicreg_var=0.5, vicreg_cov=0.1, vicreg_on="stay")
    _, stats = model(batch)
    z = model.encoder(batch["values"], batch["observed"], batch["delta"], batch["context_index"],
                      batch["context_lengths"])
    pooled = torch.stack([z[b, :n].mean(0) for b, n in enumerate(batch["context_lengths"].tolist())])
    var, cov = vicreg_terms(pooled[None], torch.ones(1, 6, dtype=torch.bool))
    assert float(stats["vicreg_var"]) == pytest.approx(float(var), rel=1e-5)
    assert float(stats["vicreg_cov"]) == pytest.approx(float(cov), rel=1e-4, abs=1e-7)
