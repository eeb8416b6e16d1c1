"""Fused EMA of the target encoder: target = momentum * target + (1 - momentum) * context.

Two ways in, both updating every target tensor in place (fp32 targets; context tensors fp32,
bf16 or fp16; `momentum` a float or a 0-d tensor):
- `plan = EmaPlan(targets, context)` once, then `plan(momentum)` every step: O(1) Python work per
  call (no walk over the tensors), and on CUDA one `fill_`/`copy_` plus one CUDA-graph replay.
- `ema_update_(targets, context, momentum, backend=None)`: always safe, for any list of tensors:
  it keys a cache of plans by every tensor's address and size (an O(n) walk: 63-74 us for 144
  tensors on the 2-core dev box, `host_cost_us`), then calls the plan.

Formula: both paths compute torch.lerp's form, fma(c - t, w, t) with w = 1 - momentum (and
fma(c - t, w - 1, c) when |w| >= 0.5), as torch's CPU and CUDA lerp kernels do, so the Triton
kernel agrees with the foreach-lerp reference to within 1 ulp (bit-exact where both use the FMA).
The weight w is the reference's too: 1 - m rounded once to fp32 for a float, 1 - fp32(m) in fp32
for a tensor.

backend "triton": ONE kernel launch per context dtype (so one for the whole model). Why a pointer
table and not a flat buffer: a flat buffer needs every parameter to live in one allocation (or a
copy in and out per step, which triples the traffic); the table leaves the model's tensors where
they are. Each row of the table is one block of BLOCK elements: (target offset, context offset,
count), offsets in elements from the lowest-addressed tensor of each kind, so the grid has exactly
as many programs as blocks (no idle programs for small tensors) and the kernel needs no
integer-to-pointer casts (base pointer + offset works the same in the compiled kernel and in
Triton's CPU interpreter). Full blocks load and store unmasked, so they vectorise. A float
momentum goes in as a scalar argument and a tensor momentum through a pointer: neither value is
specialised on, so changing it recompiles nothing.

Why a CUDA graph: Triton's generic launch (argument binding, specialisation key, launch metadata)
costs tens of microseconds of host time per call, as much as the kernel itself at 21 M
parameters. A plan captures its launches once in a `torch.cuda.CUDAGraph` whose kernels read the
weight from a plan-owned device buffer; a call writes the buffer (one small kernel, stream-ordered,
so a call queued earlier still reads its own value) and replays the graph.

backend "torch" (the CPU default): torch._foreach_lerp_.
Under torch.compile the update goes through the custom op `torch.ops.ehrjepa.ema_update_`.
"""
from __future__ import annotations  # kernel annotations stay strings until Triton reads them

import functools
import os
import time
import warnings

import torch

BACKENDS = ("triton", "torch")
CUDA_BLOCK, CUDA_WARPS = 4096, 8  # elements per program and warps on a GPU
INTERPRET_BLOCK = 256  # in the CPU interpreter: small blocks keep the tests quick
tl = None  # triton.language, bound by _triton() on first use


def ema_update_reference(targets, context, momentum):
    """Plain torch: foreach lerp of each target toward its context tensor by 1 - momentum."""
    targets, context = list(targets), list(context)
    context = [c if c.dtype == t.dtype else c.to(t.dtype) for t, c in zip(targets, context)]
    if not targets:
        return
    if isinstance(momentum, torch.Tensor):
        weight = 1 - momentum.to(device=targets[0].device, dtype=torch.float32)
        torch._foreach_lerp_(targets, context, [weight] * len(targets))
    else:
        torch._foreach_lerp_(targets, context, 1.0 - float(momentum))


def _ema_kernel(T, C, TABLE, weight, W_PTR, BLOCK: tl.constexpr, W_FROM_PTR: tl.constexpr,
                T_ALIGN: tl.constexpr, C_ALIGN: tl.constexpr):
    """One program = one row of TABLE: up to BLOCK elements of one (target, context) pair."""
    row = TABLE + tl.program_id(0).to(tl.int64) * 3
    t_off = tl.multiple_of(tl.load(row), T_ALIGN)
    c_off = tl.multiple_of(tl.load(row + 1), C_ALIGN)
    n = tl.load(row + 2)
    if W_FROM_PTR:  # W_PTR -> fp32 (a, b), w = b - a: (momentum, 1) or (0, 1 - momentum)
        w = tl.load(W_PTR + 1) - tl.load(W_PTR)
    else:
        w = weight
    offs = tl.arange(0, BLOCK)
    if n == BLOCK:
        t = tl.load(T + t_off + offs)
        c = tl.load(C + c_off + offs).to(tl.float32)
    else:
        t = tl.load(T + t_off + offs, mask=offs < n, other=0.0)
        c = tl.load(C + c_off + offs, mask=offs < n, other=0.0).to(tl.float32)
    d = c - t
    if tl.abs(w) < 0.5:  # torch.lerp's two branches, each one fused multiply-add like torch's
        r = tl.fma(d, w, t)
    else:
        r = tl.fma(d, w - 1.0, c)
    if n == BLOCK:
        tl.store(T + t_off + offs, r)
    else:
        tl.store(T + t_off + offs, r, mask=offs < n)


_KERNEL = None


def _triton():
    global _KERNEL, tl, _ema_kernel
    if _KERNEL is None:
        try:
            import triton
            import triton.language as language
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("backend='triton' needs the triton package (pip install "
                               "'triton>=3.0', Linux x86_64 wheels); use backend='torch'") from e
        tl = language
        _ema_kernel = triton.jit(_ema_kernel)
        _KERNEL = _ema_kernel
    return _KERNEL


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_PLANS: dict = {}  # ema_update_'s cache: (block, data pointers, sizes) -> EmaPlan
_PLANS_MAX = 16  # more keys than this: parameters were reallocated many times, forget old plans


def _key(targets, context, block):
    """What a plan depends on: every tensor's address and size (a reallocated or resized parameter
    gets a new plan). C-level maps, no Python loop over the parameters."""
    return (block, tuple(map(torch.Tensor.data_ptr, targets)),
            tuple(map(torch.Tensor.data_ptr, context)), tuple(map(torch.Tensor.numel, targets)),
            tuple(map(torch.Tensor.numel, context)))


def _check(targets, context):
    if len(targets) != len(context):
        raise ValueError(f"ema_update_: {len(targets)} target tensors but {len(context)} context tensors")
    for i, (t, c) in enumerate(zip(targets, context)):
        if t.dtype != torch.float32:
            raise TypeError(f"ema_update_: target tensor {i} is {t.dtype}; targets must be float32")
        if t.numel() != c.numel() or t.shape != c.shape:
            raise ValueError(f"ema_update_: tensor {i}: target shape {tuple(t.shape)} != context "
                             f"shape {tuple(c.shape)}")
        if not (t.is_contiguous() and c.is_contiguous()):
            raise ValueError(f"ema_update_: tensor {i} is not contiguous (backend='triton' "
                             "needs contiguous parameters; use backend='torch')")
        if t.device != targets[0].device or c.device != targets[0].device:
            raise ValueError(f"ema_update_: tensor {i} is on another device")


def _table(targets, context, block):
    """Per-block table [n_blocks, 3] int64 of (target offset, context offset, count), in elements
    from the lowest-addressed target / context tensor, on the tensors' device, with aliases of the
    base tensors and the alignments the kernel needs."""
    t_base = min(targets, key=torch.Tensor.data_ptr).detach()  # an alias: its address is fixed
    c_base = min(context, key=torch.Tensor.data_ptr).detach()
    t_size, c_size = 4, context[0].element_size()
    t_off = torch.tensor([(t.data_ptr() - t_base.data_ptr()) // t_size for t in targets])
    c_off = torch.tensor([(c.data_ptr() - c_base.data_ptr()) // c_size for c in context])
    numel = torch.tensor([t.numel() for t in targets])
    n_blocks = (numel + block - 1) // block
    owner = torch.repeat_interleave(torch.arange(len(targets)), n_blocks)
    first = torch.cumsum(n_blocks, 0) - n_blocks
    j = torch.arange(int(n_blocks.sum())) - first[owner]  # block number within its tensor
    start = j * block
    table = torch.stack([t_off[owner] + start, c_off[owner] + start,
                         torch.clamp(numel[owner] - start, max=block)], 1).contiguous()
    if table.device != targets[0].device:
        # from pinned memory, asynchronously: a pageable copy would block the host (and cannot
        # run while a CUDA graph is captured)
        table = table.pin_memory().to(targets[0].device, non_blocking=True)
    aligned = all(p.data_ptr() % 16 == 0 for p in targets) and \
        all(p.data_ptr() % 16 == 0 for p in context)
    t_align, c_align = (16 // t_size, 16 // c_size) if aligned else (1, 1)
    return table, t_base, c_base, t_align, c_align


def _as_float(momentum):
    """A host momentum as a Python float; a CPU tensor is first rounded to fp32, as the reference
    rounds it, so 1 - m is then the reference's fp32 weight."""
    return float(momentum.float()) if isinstance(momentum, torch.Tensor) else float(momentum)


class EmaPlan:
    """The fused EMA of one fixed set of (target, context) tensor pairs: built once (checks,
    pointer table, kernel), then `plan(momentum)` per step with O(1) Python work.

    The plan holds aliases of every tensor it reads or writes, so their memory stays allocated
    while the plan exists: a call never writes freed memory. But it keeps updating THOSE tensors:
    build a new plan when a parameter gets new storage (model.to() / .cuda() / .half(),
    `p.data = ...`, load_state_dict(assign=True), a resize). `plan.stale()` says whether that
    happened (O(n): every tensor's current address and size against the plan's); run it now and
    then, or after anything that may reallocate.

    On CUDA (graph=True): the first call launches directly (Triton compiles the kernel outside any
    capture), the second captures the launches in a CUDA graph, and every call from then on
    writes the weight into a plan-owned device buffer (one fill_ or copy_) and replays the graph.
    While the current stream is being captured (a caller capturing its whole step) the plan
    launches directly, so the caller's graph holds the kernels. A failed capture warns once, with
    its reason, and the plan launches directly from then on. Elsewhere (graph=False, Triton's CPU
    interpreter) every call launches directly. The graph replays on the current stream of the
    current device: call the plan with the tensors' device current (as DDP and the trainer do).
    A plan is tied to its tensors: copy.deepcopy gives None (a copied model builds its own), and
    it does not pickle.
    """

    _capturing = staticmethod(torch.cuda.is_current_stream_capturing)

    def __init__(self, targets, context, *, graph: bool = True, _hold: bool = True):
        targets, context = list(targets), list(context)
        _check(targets, context)
        self.device = targets[0].device if targets else torch.device("cpu")
        self.block, self.warps = (INTERPRET_BLOCK, 1) if _interpreting() else (CUDA_BLOCK, CUDA_WARPS)
        self.key = _key(targets, context, self.block)
        # _hold=False (ema_update_'s cache): the caller checks the key before every call instead
        self._tensors = (targets, context) if _hold else None
        self._aliases = [t.detach() for t in targets + context] if _hold else None
        self._launches = self._bind(targets, context) if any(t.numel() for t in targets) else []
        # weight buffers (a, b), w = b - a: _w_direct's b stays 1 (direct launches with a tensor
        # momentum copy it into a); _w_graph is written only by calls that replay the graph
        self._w_direct = torch.zeros(2, dtype=torch.float32, device=self.device)
        self._w_direct_a = self._w_direct[0]
        self._w_direct[1].fill_(1.0)
        self._w_graph = torch.zeros(2, dtype=torch.float32, device=self.device)
        self._w_graph_a, self._w_graph_b = self._w_graph.unbind()
        self._w_graph_b.fill_(1.0)
        self._graph_mode = "tensor"  # what _w_graph holds: (momentum, 1) or (0, 1 - momentum)
        self._graphs = graph and self.device.type == "cuda" and not _interpreting() and bool(self._launches)
        self._graph = None  # None: not captured yet; False: capture failed; else the CUDAGraph
        self._warm = False

    def _bind(self, targets, context):
        """The launches of one call, one per context dtype (one for a uniform model), each the
        kernel bound to its table, grid and base tensors."""
        if self.device.type != "cuda" and not _interpreting():
            raise RuntimeError("backend='triton' on CPU tensors runs in Triton's interpreter: set "
                               "TRITON_INTERPRET=1 before the first Triton call, or use backend='torch'")
        kernel = _triton()
        groups: dict = {}
        for t, c in zip(targets, context):
            if t.numel():
                ts, cs = groups.setdefault(c.dtype, ([], []))
                ts.append(t)
                cs.append(c)
        launches = []
        for ts, cs in groups.values():
            table, t_base, c_base, t_align, c_align = _table(ts, cs, self.block)
            launches.append(functools.partial(kernel[(table.shape[0],)], t_base, c_base, table,
                                              BLOCK=self.block, T_ALIGN=t_align, C_ALIGN=c_align,
                                              num_warps=self.warps))
        return launches

    def _launch(self, weight, w_ptr, from_ptr):
        for launch in self._launches:
            launch(weight, w_ptr, W_FROM_PTR=from_ptr)

    def __call__(self, momentum) -> None:
        """target = momentum * target + (1 - momentum) * context for every pair, in place.
        momentum: a float, or a 0-d tensor (read on the device when it lives there)."""
        if self._graphs and not self._capturing():
            self._set_graph_weight(momentum)
            if self._graph is None and self._warm:
                self._graph = self._capture()
            if self._graph:
                self._graph.replay()
            else:  # the first call (compiles outside any capture), or after a failed capture
                self._warm = True
                self._launch(0.0, self._w_graph, True)
        elif isinstance(momentum, torch.Tensor) and momentum.device.type == self.device.type:
            self._w_direct_a.copy_(momentum.reshape(()))  # read on the device, in stream order
            self._launch(0.0, self._w_direct, True)
        elif self._launches:
            self._launch(1.0 - _as_float(momentum), self._w_direct, False)

    def _set_graph_weight(self, momentum):
        if isinstance(momentum, torch.Tensor) and momentum.is_cuda:
            self._w_graph_a.copy_(momentum.reshape(()))  # a one-element tensor of any shape
            if self._graph_mode != "tensor":
                self._w_graph_b.fill_(1.0)
                self._graph_mode = "tensor"
        else:
            self._w_graph_b.fill_(1.0 - _as_float(momentum))
            if self._graph_mode != "float":
                self._w_graph_a.zero_()
                self._graph_mode = "float"

    def _capture(self):
        """The launches captured in one CUDA graph (not run), or False, after one warning, if the
        capture failed."""
        try:
            graph = torch.cuda.CUDAGraph()
            # on a stream of the tensors' device (torch.cuda.graph's shared default stream belongs
            # to whichever device used it first); thread_local: other threads may use CUDA
            with torch.cuda.device(self.device), torch.cuda.graph(
                    graph, stream=torch.cuda.Stream(self.device), capture_error_mode="thread_local"):
                self._launch(0.0, self._w_graph, True)
            return graph
        except Exception as e:  # noqa: BLE001 - any failure: the direct launch still works
            warnings.warn(f"EmaPlan: CUDA graph capture failed, launching directly from now on "
                          f"(tens of us more host time per call): {type(e).__name__}: {str(e)[:300]}",
                          RuntimeWarning, stacklevel=3)
            return False

    def stale(self, targets=None, context=None) -> bool:
        """True when a tensor the plan was built for has new storage or another size (O(n)). With
        arguments: whether these tensors (e.g. a module's current parameters) differ from the
        plan's, in address, size or order."""
        if targets is None:
            if self._tensors is None:
                raise ValueError("EmaPlan.stale: this plan keeps no tensors; pass them")
            targets, context = self._tensors
        return _key(list(targets), list(context), self.block) != self.key

    def __deepcopy__(self, memo):
        return None

    def __reduce__(self):
        raise TypeError("an EmaPlan is tied to its tensors' addresses and cannot be pickled; "
                        "build one for the loaded tensors")


def _ema_triton(targets, context, momentum):
    """ema_update_'s Triton path: the plan of these exact tensors (addresses and sizes), cached."""
    block = INTERPRET_BLOCK if _interpreting() else CUDA_BLOCK
    key = _key(targets, context, block)
    plan = _PLANS.get(key)
    if plan is None:
        plan = EmaPlan(targets, context, _hold=False)
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = plan
    plan(momentum)


def _ema_eager(targets, context, momentum, backend):
    if backend == "triton":
        _ema_triton(targets, context, momentum)
    else:
        ema_update_reference(targets, context, momentum)


@torch.library.custom_op("ehrjepa::ema_update_", mutates_args=("targets",))
def _ema_op(targets: list[torch.Tensor], context: list[torch.Tensor], momentum: torch.Tensor,
            backend: str) -> None:
    _ema_eager(targets, context, momentum, backend)


@_ema_op.register_fake
def _ema_fake(targets, context, momentum, backend):
    return None


@torch.no_grad()
def ema_update_(targets, context, momentum, backend=None):
    """target = momentum * target + (1 - momentum) * context, in place, for every pair.

    backend: None (Triton on CUDA, foreach lerp on CPU), "triton" or "torch". momentum: float or
    0-d tensor (pass a tensor inside torch.compile so a new value reuses the graph).
    """
    targets, context = list(targets), list(context)
    if len(targets) != len(context):
        raise ValueError(f"ema_update_: {len(targets)} target tensors but {len(context)} context tensors")
    if not targets:
        return
    if backend is None:
        backend = "triton" if targets[0].is_cuda else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None; got {backend!r}")
    if torch.compiler.is_compiling():  # traced: an opaque op, momentum as a tensor
        if not isinstance(momentum, torch.Tensor):
            momentum = torch.tensor(momentum, dtype=torch.float32, device=targets[0].device)
        torch.ops.ehrjepa.ema_update_(targets, context, momentum, backend)
    else:  # eager: call straight in (the op dispatch would add tens of microseconds)
        _ema_eager(targets, context, momentum, backend)


class _NoGraph:
    def replay(self):
        pass


class _DryPlan(EmaPlan):
    """A plan whose kernel launches and graph replay do nothing, on the CUDA call path (weight
    write, then replay): what a call costs the host in Python and torch dispatch, measurable
    without Triton, a driver or a GPU."""

    _capturing = staticmethod(lambda: False)

    def __init__(self, targets, context):
        super().__init__(targets, context, graph=False)
        self._graphs, self._graph = True, _NoGraph()

    def _bind(self, targets, context):
        return [lambda *args, **kwargs: None]


def host_cost_us(shapes, calls: int = 2000, momentum: float = 0.996) -> dict[str, float]:
    """Host microseconds per EMA call for len(shapes) tensor pairs, with every launch replaced by
    a no-op (runs on any CPU; one-element tensors, since only their count matters):
    "plan": EmaPlan.__call__ on its CUDA path (the weight's fill_ on a CPU tensor, no replay),
    "keyed": ema_update_(..., backend="triton"): the key over every tensor, the cache lookup and
    the same plan call. The GPU adds the driver's share (a real fill_ launch and cudaGraphLaunch,
    a few us) to both."""
    targets = [torch.zeros(1) for _ in shapes]
    context = [torch.zeros(1) for _ in shapes]
    plan = _DryPlan(targets, context)

    def per_call(fn):
        fn()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls * 1e6

    key = _key(targets, context, INTERPRET_BLOCK if _interpreting() else CUDA_BLOCK)
    _PLANS[key] = plan
    try:
        return {"plan": per_call(lambda: plan(momentum)),
                "keyed": per_call(lambda: ema_update_(targets, context, momentum, backend="triton"))}
    finally:
        _PLANS.pop(key, None)
