"""Fused EMA of the target encoder: target = momentum * target + (1 - momentum) * context.

`ema_update_(targets, context, momentum, backend=None)` updates every target tensor in
place. fp32 targets; context tensors fp32, bf16 or fp16. `momentum` is a float or a 0-d tensor.

Formula: both paths compute torch.lerp's form, fma(c - t, w, t) with w = 1 - momentum (and
fma(c - t, w - 1, c) when |w| >= 0.5), as torch's CPU and CUDA lerp kernels do, so the Triton
kernel agrees with the foreach-lerp reference to within 1 ulp (bit-exact where both use the FMA).

backend "triton": ONE kernel launch per context dtype (so one for the whole model). Why a pointer
table and not a flat buffer: a flat buffer needs every parameter to live in one allocation (or a
copy in and out per step, which triples the traffic); the table leaves the model's tensors where
they are. Each row of the table is one block of BLOCK elements: (target offset, context offset,
count), offsets in elements from the lowest-addressed tensor of each kind, so the grid has exactly
as many programs as blocks (no idle programs for small tensors) and the kernel needs no
integer-to-pointer casts (base pointer + offset works the same in the compiled kernel and in
Triton's CPU interpreter). Full blocks load and store unmasked, so they vectorise. The plan (the
checks, the table, copied to the device from pinned memory, and the kernel bound to it) is built
once per set of tensors, keyed by every tensor's address and size; a later call computes that key
and launches. A float momentum goes in as a scalar argument and a tensor momentum as a pointer:
neither value is specialised on, so changing it recompiles nothing.

backend "torch" (the CPU default): torch._foreach_lerp_.
Under torch.compile the update goes through the custom op `torch.ops.ehrjepa.ema_update_`.
"""
from __future__ import annotations  # kernel annotations stay strings until Triton reads them

import functools
import os

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
    if W_FROM_PTR:
        w = 1.0 - tl.load(W_PTR).to(tl.float32)
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


_PLANS: dict = {}  # (block, data pointers, sizes) -> the launches of one call


def _key(targets, context, block):
    """What a plan depends on: every tensor's address and size (a reallocated or resized parameter
    gets a new plan). C-level maps, no Python loop over the parameters."""
    return (block, tuple(map(torch.Tensor.data_ptr, targets)),
            tuple(map(torch.Tensor.data_ptr, context)), tuple(map(torch.Tensor.numel, targets)),
            tuple(map(torch.Tensor.numel, context)))


def _check(targets, context):
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
    from the lowest-addressed target / context tensor, on the tensors' device, with the base
    tensors and alignments the kernel needs."""
    t_base = min(targets, key=torch.Tensor.data_ptr)
    c_base = min(context, key=torch.Tensor.data_ptr)
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


def _plan(targets, context, block, warps):
    """The launches of one call, one per context dtype (one for a uniform model), each a kernel
    bound to its table: built once per set of tensors, then a call only picks it up."""
    _check(targets, context)
    kernel = _triton()
    groups: dict = {}
    for t, c in zip(targets, context):
        if t.numel():
            groups.setdefault(c.dtype, ([], []))
            groups[c.dtype][0].append(t)
            groups[c.dtype][1].append(c)
    launches = []
    for ts, cs in groups.values():
        table, t_base, c_base, t_align, c_align = _table(ts, cs, block)
        launches.append(functools.partial(kernel[(table.shape[0],)], t_base, c_base, table,
                                          BLOCK=block, T_ALIGN=t_align, C_ALIGN=c_align,
                                          num_warps=warps))
    return launches


def _ema_triton(targets, context, momentum):
    if not targets[0].is_cuda and not _interpreting():
        raise RuntimeError("backend='triton' on CPU tensors runs in Triton's interpreter: set "
                           "TRITON_INTERPRET=1 before the first Triton call, or use backend='torch'")
    block, warps = (INTERPRET_BLOCK, 1) if _interpreting() else (CUDA_BLOCK, CUDA_WARPS)
    key = _key(targets, context, block)
    launches = _PLANS.get(key)
    if launches is None:
        launches = _plan(targets, context, block, warps)
        if len(_PLANS) > 64:  # parameters were reallocated many times: forget old plans
            _PLANS.clear()
        _PLANS[key] = launches
    if isinstance(momentum, torch.Tensor):
        w_ptr, weight, from_ptr = momentum.to(device=targets[0].device), 0.0, True
    else:
        w_ptr, weight, from_ptr = targets[0], 1.0 - float(momentum), False
    for launch in launches:
        launch(weight, w_ptr, W_FROM_PTR=from_ptr)


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
