"""ema_update_: the Triton kernel (interpreter on CPU) against the foreach-lerp reference, in ulps,
and both against the float64 formula momentum * target + (1 - momentum) * context."""
import importlib.util
import os

import pytest
import torch

import ehrjepa.kernels.ema as ema
from ehrjepa.kernels import ema_update_, ema_update_reference

CUDA = torch.cuda.is_available()
# Triton is an install requirement only where it has wheels (Linux x86_64): elsewhere the Triton
# tests skip and say why, and the torch paths are still tested.
HAS_TRITON = importlib.util.find_spec("triton") is not None
CPU_TRITON = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")  # see conftest
WHY_NOT = ("triton is not installed (no wheel for this platform)" if not HAS_TRITON else
           "Triton on CPU needs TRITON_INTERPRET=1")
needs_interpreter = pytest.mark.skipif(not CPU_TRITON, reason=WHY_NOT)
# sizes around the interpreter's 256-element block: tails, one element, several blocks, empty
SHAPES = [(300,), (17, 5), (1,), (3, 256), (0,), (513,)]


def ulps(a, b):
    """Largest distance in units in the last place between two fp32 tensors (same sign assumed
    away by the ordered-int mapping)."""
    def ordered(x):
        i = x.contiguous().view(torch.int32).long()
        return torch.where(i < 0, -(i & 0x7FFFFFFF), i)
    return int((ordered(a) - ordered(b)).abs().max()) if a.numel() else 0


def make(shapes, context_dtype, device="cpu"):
    targets = [torch.randn(s, device=device) for s in shapes]
    context = [torch.randn(s, device=device).to(context_dtype) for s in shapes]
    return targets, context


@pytest.mark.parametrize("context_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("momentum", [0.996, 0.3, "tensor"])
@pytest.mark.parametrize("backend", ["triton", "torch", None])
def test_matches_reference_within_one_ulp(backend, momentum, context_dtype):
    if backend == "triton" and not CPU_TRITON:
        pytest.skip(WHY_NOT)
    if momentum == "tensor":
        momentum = torch.tensor(0.7 + 0.29 * torch.rand(()).item())
    targets, context = make(SHAPES, context_dtype)
    expect = [t.clone() for t in targets]
    before = [t.double() for t in targets]
    ema_update_reference(expect, context, momentum)
    ema_update_(targets, context, momentum, backend=backend)
    m = float(momentum)
    for t, e, t0, o in zip(targets, expect, before, context):
        assert t.dtype == torch.float32
        assert ulps(t, e) <= 1
        exact = m * t0 + (1 - m) * o.double()  # the update in float64
        assert torch.allclose(t.double(), exact, rtol=1e-6, atol=1e-6)
    assert any(not torch.equal(t, t0.float()) for t, t0 in zip(targets, before))


@needs_interpreter
def test_momentum_one_keeps_and_zero_copies():
    targets, context = make([(50,), (7,)], torch.float32)
    saved = [t.clone() for t in targets]
    ema_update_(targets, context, 1.0, backend="triton")
    assert all(torch.equal(t, s) for t, s in zip(targets, saved))
    ema_update_(targets, context, 0.0, backend="triton")
    assert all(torch.equal(t, o) for t, o in zip(targets, context))


@needs_interpreter
def test_table_cache_follows_reallocation():
    """A parameter that gets new storage (p.data = ...) is picked up, not written through a stale
    pointer."""
    targets, context = make([(40,), (9,)], torch.float32)
    ema_update_(targets, context, 0.5, backend="triton")
    targets[1].data = torch.zeros(9)
    ema_update_(targets, context, 0.5, backend="triton")
    assert torch.allclose(targets[1], 0.5 * context[1])


@needs_interpreter
def test_plan_is_built_once_per_set_of_tensors(monkeypatch):
    """A repeated call reuses the plan (no checks, no table); a tensor of another size, even at
    the same address, gets a new one."""
    built = []
    real = ema._plan
    monkeypatch.setattr(ema, "_plan", lambda *a: built.append(1) or real(*a))
    monkeypatch.setattr(ema, "_PLANS", {})
    targets, context = make([(40,), (9,)], torch.float32)
    for m in (0.5, 0.9, torch.tensor(0.7)):
        expect = [t.clone() for t in targets]
        ema_update_reference(expect, context, m)
        ema_update_(targets, context, m, backend="triton")
        assert all(ulps(t, e) <= 1 for t, e in zip(targets, expect))
    assert len(built) == 1
    buf = torch.zeros(12)
    assert ema._key([buf[:4]], [buf[:4]], 256) != ema._key([buf[:5]], [buf[:5]], 256)
    short = [targets[0][:30], targets[1]]  # same address as before, 30 elements instead of 40
    ema_update_(short, [context[0][:30], context[1]], 0.5, backend="triton")
    assert len(built) == 2


def test_bad_input_raises():
    targets, context = make([(4,), (5,)], torch.float32)
    with pytest.raises(ValueError, match="2 target tensors but 1 context tensors"):
        ema_update_(targets, context[:1], 0.9)
    if CPU_TRITON:
        with pytest.raises(ValueError, match="shape"):
            ema_update_(targets, context[::-1], 0.9, backend="triton")
        with pytest.raises(TypeError, match="float32"):
            ema_update_([t.double() for t in targets], context, 0.9, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        ema_update_(targets, context, 0.9, backend="cuda")


def test_compiled_changing_momentum_does_not_recompile():
    frames = []

    def count(gm, example_inputs):
        frames.append(gm)
        return gm

    @torch.compile(backend=count, fullgraph=True)
    def step(targets, context, momentum):
        ema_update_(targets, context, momentum)

    targets, context = make([(6,), (3, 2)], torch.float32)
    for m in (0.9, 0.99, 0.5):
        expect = [t.clone() for t in targets]
        ema_update_reference(expect, context, torch.tensor(m))
        step(targets, context, torch.tensor(m))
        assert all(ulps(t, e) <= 1 for t, e in zip(targets, expect))
    assert len(frames) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("context_dtype", [torch.float32, torch.bfloat16])
def test_cuda_vit_shapes_one_ulp(context_dtype):
    shapes = []
    for _ in range(2):
        shapes += [(384,), (1152, 384), (1152,), (384, 384), (1536, 384), (384, 1536), (7,)]
    targets, context = make(shapes, context_dtype, "cuda")
    expect = [t.clone() for t in targets]
    for m in (0.996, torch.tensor(0.9, device="cuda"), 0.2):
        ema_update_reference(expect, context, m)
        ema_update_(targets, context, m)
        assert max(ulps(t, e) for t, e in zip(targets, expect)) <= 1
