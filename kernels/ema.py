"""Fused EMA of the target encoder: target = momentum * target + (1 - momentum) * online.

`ema_update_(target_params, online_params, momentum, backend=None)` updates every target tensor in
place. fp32 targets; online tensors fp32, bf16 or fp16. `momentum` is a float or a 0-d tensor.

Formula: both paths compute torch.lerp's form, fma(o - t, w, t) with w = 1 - momentum (and
fma(o - t, w - 1, o) when |w| >= 0.5), as torch's CPU and CUDA lerp kernels do, so the Triton
kernel agrees with the foreach-lerp reference to within 1 ulp (bit-exact where both use the FMA).

backend "triton": ONE kernel launch per online dtype (so one for the whole model). Why a pointer
table and not a flat buffer: a flat buffer needs every parameter to live in one allocation (or a
copy in and out per step, which triples the traffic); the table leaves the model's tensors where
they are. Each row of the table is one block of BLOCK elements: (target offset, online offset,
count), offsets in elements from the lowest-addressed tensor of each kind, so the grid has exactly
as many programs as blocks (no idle programs for small tensors) and the kernel needs no
integer-to-pointer casts (base pointer + offset works the same in the compiled kernel and in
Triton's CPU interpreter). Full blocks load and store unmasked, so they vectorise. The table is
built once per set of data pointers and cached. A float momentum goes in as a scalar argument and
a tensor momentum as a pointer: neither value is specialised on, so changing it recompiles nothing.

backend "torch" (the CPU default): torch._foreach_lerp_.
Under torch.compile the update goes through the custom op `torch.ops.ehrjepa.ema_update_`.
"""
from __future__ import annotations  # kernel annotations stay strings until Triton reads them

import os

import torch

BACKENDS = ("triton", "torch")
CUDA_BLOCK, CUDA_WARPS = 4096, 8  # elements per program and warps on a GPU
INTERPRET_BLOCK = 256  # in the CPU interpreter: small blocks keep the tests quick
tl = None  # triton.language, bound by _triton() on first use


def ema_update_reference(target_params, online_params, momentum):
    """Plain torch: foreach lerp of each target toward its online tensor by 1 - momentum."""
    targets, online = list(target_params), list(online_params)
    online = [o if o.dtype == t.dtype else o.to(t.dtype) for t, o in zip(targets, online)]
    if not targets:
        return
    if isinstance(momentum, torch.Tensor):
        weight = 1 - momentum.to(device=targets[0].device, dtype=torch.float32)
        torch._foreach_lerp_(targets, online, [weight] * len(targets))
    else:
        torch._foreach_lerp_(targets, online, 1.0 - float(momentum))


def _ema_kernel(T, O, TABLE, weight, W_PTR, BLOCK: tl.constexpr, W_FROM_PTR: tl.constexpr,
                T_ALIGN: tl.constexpr, O_ALIGN: tl.constexpr):
    """One program = one row of TABLE: up to BLOCK elements of one (target, online) pair."""
    row = TABLE + tl.program_id(0).to(tl.int64) * 3
    t_off = tl.multiple_of(tl.load(row), T_ALIGN)
    o_off = tl.multiple_of(tl.load(row + 1), O_ALIGN)
    n = tl.load(row + 2)
    if W_FROM_PTR:
        w = 1.0 - tl.load(W_PTR).to(tl.float32)
    else:
        w = weight
    offs = tl.arange(0, BLOCK)
    if n == BLOCK:
        t = tl.load(T + t_off + offs)
        o = tl.load(O + o_off + offs).to(tl.float32)
    else:
        t = tl.load(T + t_off + offs, mask=offs < n, other=0.0)
        o = tl.load(O + o_off + offs, mask=offs < n, other=0.0).to(tl.float32)
    d = o - t
    if tl.abs(w) < 0.5:  # torch.lerp's two branches, each one fused multiply-add like torch's
        r = tl.fma(d, w, t)
    else:
        r = tl.fma(d, w - 1.0, o)
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


_TABLES: dict = {}  # data pointers -> (table, target base, online base, aligned flags)


def _table(targets, online, block):
    """Per-block table [n_blocks, 3] int64 of (target offset, online offset, count), in elements
    from the lowest-addressed target / online tensor; cached by the tensors' data pointers."""
    key = (block, tuple(map(torch.Tensor.data_ptr, targets)),
           tuple(map(torch.Tensor.data_ptr, online)))
    hit = _TABLES.get(key)
    if hit is not None:
        return hit
    for i, (t, o) in enumerate(zip(targets, online)):
        if t.dtype != torch.float32:
            raise TypeError(f"ema_update_: target tensor {i} is {t.dtype}; targets must be float32")
        if t.numel() != o.numel() or t.shape != o.shape:
            raise ValueError(f"ema_update_: tensor {i}: target shape {tuple(t.shape)} != online "
                             f"shape {tuple(o.shape)}")
        if not (t.is_contiguous() and o.is_contiguous()):
            raise ValueError(f"ema_update_: tensor {i} is not contiguous (backend='triton' "
                             "needs contiguous parameters; use backend='torch')")
        if t.device != targets[0].device or o.device != targets[0].device:
            raise ValueError(f"ema_update_: tensor {i} is on another device")
    t_base = min(targets, key=torch.Tensor.data_ptr)
    o_base = min(online, key=torch.Tensor.data_ptr)
    t_size, o_size = 4, online[0].element_size()
    t_off = torch.tensor([(t.data_ptr() - t_base.data_ptr()) // t_size for t in targets])
    o_off = torch.tensor([(o.data_ptr() - o_base.data_ptr()) // o_size for o in online])
    numel = torch.tensor([t.numel() for t in targets])
    n_blocks = (numel + block - 1) // block
    owner = torch.repeat_interleave(torch.arange(len(targets)), n_blocks)
    first = torch.cumsum(n_blocks, 0) - n_blocks
    j = torch.arange(int(n_blocks.sum())) - first[owner]  # block number within its tensor
    start = j * block
    table = torch.stack([t_off[owner] + start, o_off[owner] + start,
                         torch.clamp(numel[owner] - start, max=block)], 1).contiguous()
    aligned = all(p.data_ptr() % 16 == 0 for p in targets) and \
        all(p.data_ptr() % 16 == 0 for p in online)
    t_align, o_align = (16 // t_size, 16 // o_size) if aligned else (1, 1)
    hit = (table.to(targets[0].device), t_base, o_base, t_align, o_align)
    if len(_TABLES) > 64:  # parameters were reallocated many times: forget old tables
        _TABLES.clear()
    _TABLES[key] = hit
    return hit


def _ema_triton(targets, online, momentum):
    kernel = _triton()
    if not targets[0].is_cuda and not _interpreting():
        raise RuntimeError("backend='triton' on CPU tensors runs in Triton's interpreter: set "
                           "TRITON_INTERPRET=1 before the first Triton call, or use backend='torch'")
    block, warps = (INTERPRET_BLOCK, 1) if _interpreting() else (CUDA_BLOCK, CUDA_WARPS)
    groups: dict = {}
    for t, o in zip(targets, online):
        if t.numel():
            groups.setdefault(o.dtype, ([], []))
            groups[o.dtype][0].append(t)
            groups[o.dtype][1].append(o)
    if isinstance(momentum, torch.Tensor):
        w_ptr, weight, from_ptr = momentum.to(device=targets[0].device), 0.0, True
    else:
        w_ptr, weight, from_ptr = targets[0], 1.0 - float(momentum), False
    for ts, os_ in groups.values():  # one launch per online dtype: one for a uniform model
        table, t_base, o_base, t_align, o_align = _table(ts, os_, block)
        kernel[(table.shape[0],)](t_base, o_base, table, weight, w_ptr, BLOCK=block,
                                  W_FROM_PTR=from_ptr, T_ALIGN=t_align, O_ALIGN=o_align,
                                  num_warps=warps)


def _ema_eager(targets, online, momentum, backend):
    if backend == "triton":
        _ema_triton(targets, online, momentum)
    else:
        ema_update_reference(targets, online, momentum)


@torch.library.custom_op("ehrjepa::ema_update_", mutates_args=("targets",))
def _ema_op(targets: list[torch.Tensor], online: list[torch.Tensor], momentum: torch.Tensor,
            backend: str) -> None:
    _ema_eager(targets, online, momentum, backend)


@_ema_op.register_fake
def _ema_fake(targets, online, momentum, backend):
    return None


@torch.no_grad()
def ema_update_(target_params, online_params, momentum, backend=None):
    """target = momentum * target + (1 - momentum) * online, in place, for every pair.

    backend: None (Triton on CUDA, foreach lerp on CPU), "triton" or "torch". momentum: float or
    0-d tensor (pass a tensor inside torch.compile so a new value reuses the graph).
    """
    targets, online = list(target_params), list(online_params)
    if len(targets) != len(online):
        raise ValueError(f"ema_update_: {len(targets)} target tensors but {len(online)} online")
    if not targets:
        return
    if backend is None:
        backend = "triton" if targets[0].is_cuda else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None; got {backend!r}")
    if torch.compiler.is_compiling():  # traced: an opaque op, momentum as a tensor
        if not isinstance(momentum, torch.Tensor):
            momentum = torch.tensor(momentum, dtype=torch.float32, device=targets[0].device)
        torch.ops.ehrjepa.ema_update_(targets, online, momentum, backend)
    else:  # eager: call straight in (the op dispatch would add tens of microseconds)
        _ema_eager(targets, online, momentum, backend)
