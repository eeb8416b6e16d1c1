"""ema_update_: the Triton kernel (interpreter on CPU) against the foreach-lerp reference, in ulps,
and both against the float64 formula momentum * target + (1 - momentum) * context."""
import copy
import importlib.util
import os
import pickle
import warnings

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
def test_keyed_plan_is_built_once_per_set_of_tensors(monkeypatch):
    """ema_update_: a repeated call reuses the plan (no checks, no table); a tensor of another
    size, even at the same address, gets a new one."""
    built = []

    class Counted(ema.EmaPlan):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(ema, "EmaPlan", Counted)
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


@needs_interpreter
def test_plan_matches_reference_float_cpu_and_device_tensor_momentum():
    """plan(m) with a float, a float64 CPU tensor and tensors on the tensors' device (the pointer
    path): each within 1 ulp of foreach lerp, both context dtypes in one plan (two launches)."""
    targets, context = make(SHAPES, torch.float32)
    context[1], context[3] = context[1].bfloat16(), context[3].bfloat16()
    plan = ema.EmaPlan(targets, context)
    assert len(plan._launches) == 2 and not plan._graphs  # the interpreter launches directly
    expect = [t.clone() for t in targets]
    for m in (0.996, torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.9), 0.7,
              torch.tensor([0.85])):  # a one-element tensor of any shape is read as its value
        ema_update_reference(expect, context, m.reshape(()) if isinstance(m, torch.Tensor) else m)
        plan(m)
        assert max(ulps(t, e) for t, e in zip(targets, expect)) <= 1


class ReplayedInPython(ema.EmaPlan):
    """The CUDA call path on CPU: the 'graph' replays the same launches, reading the graph's
    weight buffer as the captured kernel would."""
    _capturing = staticmethod(lambda: False)

    def __init__(self, *args, capture_fails=False):
        super().__init__(*args)
        self._graphs, self.capture_fails, self.captures = True, capture_fails, 0

    def _capture(self):
        self.captures += 1
        if self.capture_fails:  # the real capture, which raises on a build without CUDA
            return super()._capture()
        launch = self._launch
        return type("Replay", (), {"replay": lambda _: launch(0.0, self._w_graph, True)})()


@needs_interpreter
@pytest.mark.parametrize("capture_fails", [False, True])
def test_graph_path_weight_buffer_follows_momentum_kinds(capture_fails):
    """Warm-up launch, one capture, then replays: float and tensor momenta in any order write the
    graph's (a, b) buffer so that b - a is the reference's weight; a failed capture warns once and
    the plan keeps launching directly with the same numbers."""
    targets, context = make([(300,), (17, 5)], torch.float32)
    plan = ReplayedInPython(targets, context, capture_fails=capture_fails)
    expect = [t.clone() for t in targets]
    for i, m in enumerate((0.9, 0.99, torch.tensor(0.8), 0.7, torch.tensor(0.6), torch.tensor(0.5))):
        ema_update_reference(expect, context, m)
        if capture_fails and i == 1:
            with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
                plan(m)
        else:
            plan(m)
        assert max(ulps(t, e) for t, e in zip(targets, expect)) <= 1, m
    assert plan.captures == 1 and bool(plan._graph) == (not capture_fails)


@needs_interpreter
def test_plan_holds_its_tensors_and_says_when_stale():
    """After `p.data = ...` the plan still writes the old storage (kept alive by its alias, never
    freed memory), never the new one, and stale() says so; a new plan follows the new storage."""
    targets, context = make([(40,), (9,)], torch.float32)
    plan = ema.EmaPlan(targets, context)
    assert not plan.stale() and not plan.stale(targets, context)
    old = targets[1].detach()
    targets[1].data = torch.zeros(9)
    assert plan.stale() and plan.stale(targets, context)
    assert plan.stale(targets[::-1], context[::-1])  # another order is another plan
    plan(0.0)  # copy: the old storage gets the context, the new one is untouched
    assert torch.equal(old, context[1]) and not targets[1].any()
    ema.EmaPlan(targets, context)(0.0)
    assert torch.equal(targets[1], context[1])
    assert copy.deepcopy(plan) is None
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(plan)


def test_host_cost_us_measures_without_a_gpu():
    """The host-cost probe runs anywhere (no Triton launch, no GPU) and leaves no cached plan."""
    cached = dict(ema._PLANS)
    cost = ema.host_cost_us([(3,)] * 12, calls=20)
    assert set(cost) == {"plan", "keyed"} and all(v > 0 for v in cost.values())
    assert ema._PLANS == cached


@needs_interpreter
def test_model_plan_is_dropped_on_move_load_and_rebind(monkeypatch):
    """JEPA's EMA plan (used on CUDA; called here in the interpreter): built once, reused, dropped
    by .to()/.float() and by load_state_dict(assign=True), and rebuilt at the periodic check
    after a `p.data = ...` that no hook sees; each new plan updates the current parameters."""
    from ehrjepa.models import jepa
    from ehrjepa.models.config import ModelConfig
    monkeypatch.setattr(jepa, "EMA_CHECK_EVERY", 3)
    torch.manual_seed(0)
    model = jepa.JEPA(ModelConfig(size="micro", width=16, depth=1, heads=2, predictor_width=8,
                                  predictor_depth=1, predictor_heads=2), n_features=3, max_hours=4)
    plan = model._ema_plan_now()
    assert plan is model._ema_plan_now()
    model.float()
    assert model._ema_plan is None and model._ema_plan_now() is not plan
    model.load_state_dict(model.state_dict(), assign=True)  # new Parameter objects
    assert model._ema_plan is None
    plan = model._ema_plan_now()
    assert model._ema_target[0] is next(model.target_encoder.parameters())
    first = model._ema_target[0]
    first.data = torch.randn_like(first)  # new storage, same Parameter: only the check sees it
    while model._ema_calls % 3 != 2:
        assert model._ema_plan_now() is plan
    plan = model._ema_plan_now()  # the check: stale, rebuilt
    assert plan is not None and not plan.stale()
    plan(0.0)
    for t, c in zip(model.target_encoder.parameters(), model.encoder.parameters()):
        assert torch.equal(t, c)


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


cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def vit_pairs(context_dtype=torch.float32, depth=2):
    shapes = [(7,)]
    for _ in range(depth):
        shapes += [(384,), (1152, 384), (1152,), (384, 384), (1536, 384), (384, 1536)]
    return make(shapes, context_dtype, "cuda")


@cuda
@needs_cuda
@pytest.mark.parametrize("context_dtype", [torch.float32, torch.bfloat16])
def test_cuda_plan_graph_bit_exact_as_momentum_changes(context_dtype):
    """Warm-up launch, capture, replays: bit-exact against foreach lerp for float momenta, device
    tensor momenta (changed in place between replays, as a schedule would) and CPU tensors, in
    mixed order; the graph is really used, and nothing warns."""
    targets, context = vit_pairs(context_dtype)
    expect = [t.clone() for t in targets]
    plan = ema.EmaPlan(targets, context)
    m_dev = torch.tensor(0.9, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, m in enumerate((0.996, 0.99, m_dev, m_dev, 0.5, torch.tensor(0.7), m_dev, 0.2)):
            if i == 3:
                m_dev.fill_(0.95)
            if i == 6:
                m_dev.fill_(0.3)  # w = 0.7 >= 0.5: torch.lerp's other branch
            ema_update_reference(expect, context, m)
            plan(m)
            torch.cuda.synchronize()
            assert all(torch.equal(t, e) for t, e in zip(targets, expect)), (i, m)
    assert isinstance(plan._graph, torch.cuda.CUDAGraph)
    assert not [w for w in caught if "EmaPlan" in str(w.message)]


@cuda
@needs_cuda
def test_cuda_two_plans_and_keyed_path_do_not_mix():
    """A second plan on other tensors (and ema_update_'s cached plans) each update their own."""
    (ta, ca), (tb, cb) = vit_pairs(depth=1), vit_pairs(depth=1)
    ea, eb = [t.clone() for t in ta], [t.clone() for t in tb]
    pa, pb = ema.EmaPlan(ta, ca), ema.EmaPlan(tb, cb)
    for m in (0.9, 0.8, 0.7, 0.6):
        ema_update_reference(ea, ca, m)
        pa(m)
        ema_update_reference(eb, cb, 1 - m)
        pb(1 - m)
        ema_update_reference(ea, ca, m / 2)
        ema_update_(ta, ca, m / 2)  # the keyed path on plan a's tensors: its own plan and graph
    torch.cuda.synchronize()
    assert all(torch.equal(t, e) for t, e in zip(ta, ea))
    assert all(torch.equal(t, e) for t, e in zip(tb, eb))


@cuda
@needs_cuda
def test_cuda_plan_inside_an_outer_graph_capture():
    """Called while the caller captures (the trainer's whole-step graph): the plan launches
    directly into the caller's graph, which then applies the momentum tensor's value at each
    replay; the plan's own graph, used outside, is unaffected."""
    targets, context = vit_pairs()
    expect = [t.clone() for t in targets]
    plan = ema.EmaPlan(targets, context)
    m_dev = torch.tensor(0.9, device="cuda")
    for m in (0.99, m_dev):  # compile both variants, capture the plan's own graph
        ema_update_reference(expect, context, m)
        plan(m)
    outer = torch.cuda.CUDAGraph()
    with torch.cuda.graph(outer):
        plan(m_dev)
    torch.cuda.synchronize()
    assert all(torch.equal(t, e) for t, e in zip(targets, expect))  # capturing ran nothing
    for value in (0.8, 0.6):
        m_dev.fill_(value)
        outer.replay()
        ema_update_reference(expect, context, m_dev)
        plan(0.95)
        ema_update_reference(expect, context, 0.95)
    torch.cuda.synchronize()
    assert all(torch.equal(t, e) for t, e in zip(targets, expect))
    assert isinstance(plan._graph, torch.cuda.CUDAGraph)


@cuda
@needs_cuda
def test_cuda_model_momentum_update_uses_the_plan():
    """JEPA.momentum_update on CUDA: the plan's graph, bit-exact against foreach lerp; .cuda()
    again drops the plan."""
    from ehrjepa.models.config import ModelConfig
    from ehrjepa.models.jepa import JEPA
    model = JEPA(ModelConfig(size="micro"), n_features=3, max_hours=8).cuda()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
    expect = [p.clone() for p in model.target_encoder.parameters()]
    for m in (0.99, 0.98, torch.tensor(0.97, device="cuda")):
        ema_update_reference(expect, list(model.encoder.parameters()), m)
        model.momentum_update(m)
    torch.cuda.synchronize()
    assert all(torch.equal(p, e) for p, e in zip(model.target_encoder.parameters(), expect))
    assert isinstance(model._ema_plan._graph, torch.cuda.CUDAGraph)
    model.cuda()
    assert model._ema_plan is None
