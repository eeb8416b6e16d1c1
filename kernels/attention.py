"""Masked gather-attention: attention over a per-sample subset of positions, gather fused in.

`masked_gather_attention(q, k, v, kv_index, kv_lengths, q_index=None, q_lengths=None, scale=None,
backend=None, check_index=None, unique_index=False)` with q, k, v [B, H, N, D] for the full
sequence. Sample b attends over the keys and values at `kv_index[b, :kv_lengths[b]]`; its queries
are the positions `q_index[b, :q_lengths[b]]` (default: the kv ones). Returns [B, H, Lq, D]; rows
past q_lengths[b] are zero, a sample with no keys gives zeros (never NaN). kv_index=None is the
identity (positions 0..kv_lengths[b]-1, what the model's left-packed layers use): the kernels then
read no index at all.

Two implementations behind one `torch.library` custom op (`torch.ops.ehrjepa.masked_gather_attention`):
- backend "triton": flash-attention-style kernels (online softmax, forward saves the log-sum-exp;
  backward = delta = rowsum(dO * O), then a dK/dV kernel and a dQ kernel). Rows are read through
  the indices, so the gathered q, k, v never exist in memory, and the loops over key (or query)
  blocks stop at the sample's own length instead of masking blocks past it.
- backend "torch": `masked_gather_attention_reference` (gather + matmul + masked softmax) with an
  explicit backward; the CPU default and the ground truth of the tests.

Gradient scatter, three paths: each dK/dV program owns a block of keys and each dQ program a block
of queries, so with unique indices (the identity always; gathered ones when the caller promises
unique_index=True) every gradient row is stored once, straight in the input dtype: the identity
path's programs cover all N rows (zeros past a length, nothing to clear beforehand), the unique
gather path stores into zeros. Repeated indices (the default for gathered ones) add fp32 rows with
`tl.atomic_add` into a zeroed fp32 [B, H, N, D] buffer, cast to the input dtype at the end: sums
without sorting, the order (and so the last bits) run-dependent.

The Triton module is imported lazily, on the first Triton call, so `import ehrjepa.kernels` and
the torch path work where Triton is absent. With TRITON_INTERPRET=1 the same kernels run on CPU
tensors in Triton's interpreter (slow: keep problems tiny).

One module of some 900 lines on purpose: the op, its reference and its three kernels share one
contract (shapes, index semantics, the saved log-sum-exp) and change together.
"""
from __future__ import annotations  # kernel annotations stay strings until Triton reads them

import json
import os
from types import SimpleNamespace
from typing import Optional

import torch

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
BACKENDS = ("triton", "torch")
# Index/length range check before any launch: costs one host sync per call on CUDA. Set False (or
# EHRJEPA_CHECK_INDEX=0) to skip it altogether (no sync, no work): only for indices that are right
# by construction, since a bad one then reads out of bounds (garbage, or a CUDA memory fault).
CHECK_INDEX = os.environ.get("EHRJEPA_CHECK_INDEX", "1") != "0"
_FILL_NAN = False  # tests set this: Triton outputs start as NaN so unwritten elements show up
tl = None  # triton.language, bound by _triton() on first use


# ------------------------------------------------------------------------------------------------
# torch reference

def _identity(kv_lengths, N):
    """The identity path's indices made explicit: [B, N] rows 0..N-1 (for the torch backend)."""
    return torch.arange(N, device=kv_lengths.device).expand(kv_lengths.shape[0], N)


def _defaults(kv_index, kv_lengths, q_index, q_lengths):
    if q_index is None:
        if q_lengths is not None:
            raise ValueError("q_lengths given without q_index")
        return kv_index, kv_lengths
    if q_lengths is None:
        q_lengths = torch.full((q_index.shape[0],), q_index.shape[1], dtype=kv_lengths.dtype,
                               device=q_index.device)
    return q_index, q_lengths


def _valid(index, lengths):
    """[B, L] bool: entry j of row b is inside the length."""
    return torch.arange(index.shape[1], device=index.device)[None, :] < lengths[:, None]


def _gather(x, index, valid):
    """x [B, H, N, D] -> rows at index [B, L] -> [B, H, L, D]; entries past a length read row 0."""
    B, H, _, D = x.shape
    idx = torch.where(valid, index.long(), 0)
    return x.gather(2, idx[:, None, :, None].expand(B, H, idx.shape[1], D))


def masked_gather_attention_reference(q, k, v, kv_index, kv_lengths, q_index=None, q_lengths=None,
                                      scale=None, return_lse=False):
    """Plain-torch masked gather-attention (differentiable by autograd).

    fp16/bf16 inputs are computed in fp32 and returned in the input dtype. With return_lse, also
    returns the fp32 log-sum-exp of the scaled scores [B, H, Lq] (-inf for rows without keys or
    past q_lengths).
    """
    if kv_index is None:
        kv_index = _identity(kv_lengths, k.shape[2])
    q_index, q_lengths = _defaults(kv_index, kv_lengths, q_index, q_lengths)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    work = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    q_valid, kv_valid = _valid(q_index, q_lengths), _valid(kv_index, kv_lengths)
    qg = _gather(q, q_index, q_valid).to(work)
    kg = _gather(k, kv_index, kv_valid).to(work)
    vg = _gather(v, kv_index, kv_valid).to(work)
    s = (qg @ kg.transpose(-1, -2)) * scale  # [B, H, Lq, Lk]
    # A large negative fill (not -inf) keeps rows without keys NaN-free in forward and backward;
    # exp(fill - max) underflows to exactly 0 for rows that do have a key.
    s = s.masked_fill(~kv_valid[:, None, None, :], torch.finfo(work).min)
    p = torch.softmax(s, dim=-1) * kv_valid[:, None, None, :]
    out = (p @ vg) * q_valid[:, None, :, None]
    out = out.to(q.dtype)
    if not return_lse:
        return out
    with torch.no_grad():
        lse = torch.logsumexp(s, dim=-1).float()
        has_key = (kv_lengths > 0)[:, None, None] & q_valid[:, None, :]
        lse = torch.where(has_key, lse, float("-inf"))
    return out, lse


def _reference_backward(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths,
                        scale):
    """Explicit backward of the reference (the same math as the Triton kernels), scattered to N."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    if kv_index is None:
        kv_index = _identity(kv_lengths, Nk)
    q_index, q_lengths = _defaults(kv_index, kv_lengths, q_index, q_lengths)
    work = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    q_valid, kv_valid = _valid(q_index, q_lengths), _valid(kv_index, kv_lengths)
    qg = _gather(q, q_index, q_valid).to(work)
    kg = _gather(k, kv_index, kv_valid).to(work)
    vg = _gather(v, kv_index, kv_valid).to(work)
    do = grad_out.to(work) * q_valid[:, None, :, None]
    s = (qg @ kg.transpose(-1, -2)) * scale
    keep = kv_valid[:, None, None, :] & q_valid[:, None, :, None] & torch.isfinite(lse)[..., None]
    lse_safe = torch.where(torch.isfinite(lse), lse, 0.0).to(work)
    p = torch.where(keep, torch.exp(s - lse_safe[..., None]), 0.0)
    delta = (do * out.to(work)).sum(-1, keepdim=True)
    dv_rows = p.transpose(-1, -2) @ do
    ds = p * (do @ vg.transpose(-1, -2) - delta)
    dq_rows = (ds @ kg) * scale
    dk_rows = (ds.transpose(-1, -2) @ qg) * scale

    def scatter(rows, index, valid, n):
        idx = torch.where(valid, index.long(), 0)[:, None, :, None].expand(B, H, index.shape[1], D)
        rows = rows * valid[:, None, :, None]
        return torch.zeros(B, H, n, D, dtype=work, device=q.device).scatter_add_(2, idx, rows)

    dq = scatter(dq_rows, q_index, q_valid, Nq).to(q.dtype)
    dk = scatter(dk_rows, kv_index, kv_valid, Nk).to(k.dtype)
    dv = scatter(dv_rows, kv_index, kv_valid, Nk).to(v.dtype)
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------
# input checks

def _check_shapes(q, k, v, kv_index, kv_lengths, q_index, q_lengths):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, H, N, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"q, k, v shapes disagree: {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    B = q.shape[0]
    if kv_index is None:  # the identity: lengths only, and q, k, v of one length N
        if q.shape[2] != k.shape[2]:
            raise ValueError(f"kv_index=None needs q and k of one length; got {q.shape[2]}, "
                             f"{k.shape[2]}")
        if kv_lengths.dtype not in (torch.int32, torch.int64) or tuple(kv_lengths.shape) != (B,):
            raise ValueError(f"kv_lengths must be int32/int64 [B={B}]; got {kv_lengths.dtype} "
                             f"{tuple(kv_lengths.shape)}")
        if kv_lengths.device != q.device:
            raise ValueError(f"kv_lengths must be on {q.device}")
        return
    for name, index, lengths in (("kv_index", kv_index, kv_lengths), ("q_index", q_index, q_lengths)):
        if index.dtype not in (torch.int32, torch.int64) or index.dim() != 2 or index.shape[0] != B:
            raise ValueError(f"{name} must be int32/int64 [B={B}, L]; got {index.dtype} "
                             f"{tuple(index.shape)}")
        lname = name.replace("index", "lengths")
        if lengths.dtype not in (torch.int32, torch.int64) or tuple(lengths.shape) != (B,):
            raise ValueError(f"{lname} must be int32/int64 [B={B}]; got {lengths.dtype} "
                             f"{tuple(lengths.shape)}")
        if index.device != q.device or lengths.device != q.device:
            raise ValueError(f"{name}/{lname} must be on {q.device}")


def _check_values(q, k, kv_index, kv_lengths, q_index, q_lengths):
    """Raise before any kernel launch if an index within a length is outside [0, N) or a length is
    outside [0, L]. One host sync on CUDA; during CUDA-graph capture (no sync allowed) a
    device-side assert takes its place."""
    if kv_index is None:  # the identity: only the lengths can be wrong
        kv_index = _identity(kv_lengths, k.shape[2])
        q_index, q_lengths = kv_index, kv_lengths

    def bad(index, lengths, n):
        valid = _valid(index, lengths)
        return (((index < 0) | (index >= n)) & valid).any()

    flags = torch.stack([
        bad(kv_index, kv_lengths, k.shape[2]), bad(q_index, q_lengths, q.shape[2]),
        ((kv_lengths < 0) | (kv_lengths > kv_index.shape[1])).any(),
        ((q_lengths < 0) | (q_lengths > q_index.shape[1])).any()])
    if flags.is_cuda and torch.cuda.is_current_stream_capturing():
        torch._assert_async(~flags.any(), "masked_gather_attention: index or length out of range")
        return
    flags = flags.tolist()
    if flags[0]:
        raise IndexError(f"masked_gather_attention: kv_index has an entry outside [0, N={k.shape[2]})")
    if flags[1]:
        raise IndexError(f"masked_gather_attention: q_index has an entry outside [0, N={q.shape[2]})")
    if flags[2]:
        raise IndexError(f"masked_gather_attention: kv_lengths outside [0, {kv_index.shape[1]}]")
    if flags[3]:
        raise IndexError(f"masked_gather_attention: q_lengths outside [0, {q_index.shape[1]}]")


# ------------------------------------------------------------------------------------------------
# Triton kernels (plain functions here; _triton() compiles them with triton.jit on first use)
#
# Two constexpr switches pick the variant at compile time:
# - GATHER: rows are read through QIDX/KIDX (int64 math); without it entry j is row j itself (the
#   identity path: no index loads, int32 row math, QIDX/KIDX are never read).
# - ATOMIC (backward): gradients are added in fp32 with atomics (repeated indices sum); without
#   it every row belongs to one program, which stores it once in the input dtype.
# Each loop over key (or query) blocks runs the full blocks without any bounds mask, then at most
# one masked tail block; both are `for` loops so the compiler can pipeline the first.
# The softmax scale (in log2 units) is folded into the exp2 argument, s * qk_scale - m, which the
# compiler fuses into one FMA per score: no separate multiply, and q, k keep their own rounding.

def _positions(IDX, offs, ok, GATHER: tl.constexpr, MASK: tl.constexpr):
    """Rows of the entries `offs`: IDX[offs] (int64) when gathering, else `offs` itself."""
    if GATHER:
        if MASK:
            pos = tl.load(IDX + offs, mask=ok, other=0).to(tl.int64)
        else:
            pos = tl.load(IDX + offs).to(tl.int64)
    else:
        pos = offs
    return pos


def _load_rows(ptrs, ok, MASK: tl.constexpr):
    """A [rows, D] tile; with MASK, rows outside `ok` read as zero."""
    if MASK:
        x = tl.load(ptrs, mask=ok[:, None], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


def _load_vec(ptrs, ok, MASK: tl.constexpr):
    """A [rows] vector; with MASK, entries outside `ok` read as zero."""
    if MASK:
        x = tl.load(ptrs, mask=ok, other=0.0)
    else:
        x = tl.load(ptrs)
    return x


def _fwd_block(q, m_i, l_i, acc, k_base, v_base, KIDX, start_n, kv_len, s_kn, s_vn, qk_scale,
               offs_d, BLOCK_N: tl.constexpr, PREC: tl.constexpr, GATHER: tl.constexpr,
               MASK: tl.constexpr):
    """One key block of the online softmax; MASK: the block crosses kv_len."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    col_ok = offs_n < kv_len
    kpos = _positions(KIDX, offs_n, col_ok, GATHER, MASK)
    k = _load_rows(k_base + kpos[:, None] * s_kn + offs_d[None, :], col_ok, MASK)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)
    if MASK:
        s = tl.where(col_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # log2 units
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(v_base + kpos[:, None] * s_vn + offs_d[None, :], col_ok, MASK)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
    return m_new, l_i, acc


def _attn_fwd(Q, K, V, O, LSE, QIDX, KIDX, QLEN, KLEN, qk_scale,
              s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
              s_ob, s_oh, s_om, s_qib, s_kib, H, Lq,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              PREC: tl.constexpr, GATHER: tl.constexpr):
    """One program = BLOCK_M query rows of one (sample, head); online softmax over key blocks."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_len = tl.load(QLEN + b).to(tl.int32)
    kv_len = tl.load(KLEN + b).to(tl.int32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    qpos = _positions(QIDX + b * s_qib, offs_m, row_ok, GATHER, True)
    q = tl.load(Q + b * s_qb + h * s_qh + qpos[:, None] * s_qn + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # Blocks entirely past q_len loop zero times and just write zeros; no block past kv_len runs.
    hi = tl.where(pid_m * BLOCK_M < q_len, kv_len, 0)
    full = hi - hi % BLOCK_N
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    kidx = KIDX + b * s_kib
    for start_n in range(0, full, BLOCK_N):
        m_i, l_i, acc = _fwd_block(q, m_i, l_i, acc, k_base, v_base, kidx, start_n, kv_len, s_kn,
                                   s_vn, qk_scale, offs_d, BLOCK_N, PREC, GATHER, False)
    for start_n in range(full, hi, BLOCK_N):
        m_i, l_i, acc = _fwd_block(q, m_i, l_i, acc, k_base, v_base, kidx, start_n, kv_len, s_kn,
                                   s_vn, qk_scale, offs_d, BLOCK_N, PREC, GATHER, True)
    has = row_ok & (l_i > 0)
    l_safe = tl.where(has, l_i, 1.0)
    out = tl.where(has[:, None], acc / l_safe[:, None], 0.0)
    store_ok = offs_m < Lq
    tl.store(O + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=store_ok[:, None])
    lse = tl.where(has, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * Lq + offs_m, lse, mask=store_ok)


def _attn_bwd_delta(O, DO, DELTA, s_ob, s_oh, s_om, s_dob, s_doh, s_dom, H, Lq,
                    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[b, h, m] = sum_d dO * O (fp32), the softmax-backward row term."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_m < Lq
    o = tl.load(O + b * s_ob + h * s_oh + offs_m[:, None] * s_om + offs_d[None, :],
                mask=ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + b * s_dob + h * s_doh + offs_m[:, None] * s_dom + offs_d[None, :],
                 mask=ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * Lq + offs_m, tl.sum(o * do, 1), mask=ok)


def _dkdv_block(k, v, dk, dv, q_base, do_base, QIDX, LSE_ROW, DELTA_ROW, start_m, q_len, s_qn,
                s_dom, qk_scale, offs_d, BLOCK_M: tl.constexpr, PREC: tl.constexpr,
                GATHER: tl.constexpr, MASK: tl.constexpr):
    """One query block's contribution to a key block's dK, dV; MASK: the block crosses q_len.
    Rows past q_len read q = dO = lse = delta = 0, so p_t = 1 there (finite) and both products
    vanish (dO = 0 and dP - delta = 0): no row mask on p_t is needed."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    row_ok = offs_m < q_len
    qpos = _positions(QIDX, offs_m, row_ok, GATHER, MASK)
    q = _load_rows(q_base + qpos[:, None] * s_qn + offs_d[None, :], row_ok, MASK)
    do = _load_rows(do_base + offs_m[:, None] * s_dom + offs_d[None, :], row_ok, MASK)
    lse = _load_vec(LSE_ROW + offs_m, row_ok, MASK) * 1.4426950408889634
    delta = _load_vec(DELTA_ROW + offs_m, row_ok, MASK)
    s_t = tl.dot(k, tl.trans(q), input_precision=PREC)  # [N, M]
    p_t = tl.exp2(s_t * qk_scale - lse[None, :])
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PREC)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PREC)
    return dk, dv


def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, QIDX, KIDX, QLEN, KLEN, qk_scale, sm_scale,
                   s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
                   s_dob, s_doh, s_dom, s_gb, s_gh, s_gn, s_qib, s_kib, H, Lq, Lk,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PREC: tl.constexpr, GATHER: tl.constexpr, ATOMIC: tl.constexpr):
    """One program = BLOCK_N keys of one (sample, head); loops over the query blocks, then writes
    dK, dV at the keys' rows: atomic fp32 adds (ATOMIC) or one store in the input dtype (the
    identity path also stores the zero rows of its block past kv_len, up to Lk = N)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_len = tl.load(QLEN + b).to(tl.int32)
    kv_len = tl.load(KLEN + b).to(tl.int32)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < kv_len
    kpos = _positions(KIDX + b * s_kib, offs_n, col_ok, GATHER, True)
    k = tl.load(K + b * s_kb + h * s_kh + kpos[:, None] * s_kn + offs_d[None, :],
                mask=col_ok[:, None], other=0.0)
    v = tl.load(V + b * s_vb + h * s_vh + kpos[:, None] * s_vn + offs_d[None, :],
                mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    hi = tl.where(pid_n * BLOCK_N < kv_len, q_len, 0)
    full = hi - hi % BLOCK_M
    q_base = Q + b * s_qb + h * s_qh
    do_base = DO + b * s_dob + h * s_doh
    qidx = QIDX + b * s_qib
    lse_row = LSE + pid_bh.to(tl.int64) * Lq
    delta_row = DELTA + pid_bh.to(tl.int64) * Lq
    for start_m in range(0, full, BLOCK_M):
        dk, dv = _dkdv_block(k, v, dk, dv, q_base, do_base, qidx, lse_row, delta_row, start_m,
                             q_len, s_qn, s_dom, qk_scale, offs_d, BLOCK_M, PREC, GATHER, False)
    for start_m in range(full, hi, BLOCK_M):
        dk, dv = _dkdv_block(k, v, dk, dv, q_base, do_base, qidx, lse_row, delta_row, start_m,
                             q_len, s_qn, s_dom, qk_scale, offs_d, BLOCK_M, PREC, GATHER, True)
    # keys past kv_len read as zero and may have gathered anything (even inf): dropped here, once
    dk = tl.where(col_ok[:, None], dk * sm_scale, 0.0)
    dv = tl.where(col_ok[:, None], dv, 0.0)
    g = b * s_gb + h * s_gh + kpos[:, None] * s_gn + offs_d[None, :]
    if ATOMIC:
        tl.atomic_add(DK + g, dk, mask=col_ok[:, None], sem="relaxed")
        tl.atomic_add(DV + g, dv, mask=col_ok[:, None], sem="relaxed")
    else:
        if GATHER:
            put = col_ok
        else:
            put = offs_n < Lk
        tl.store(DK + g, dk.to(DK.dtype.element_ty), mask=put[:, None])
        tl.store(DV + g, dv.to(DV.dtype.element_ty), mask=put[:, None])


def _dq_block(q, do, lse, delta, dq, k_base, v_base, KIDX, start_n, kv_len, s_kn, s_vn, qk_scale,
              offs_d, BLOCK_N: tl.constexpr, PREC: tl.constexpr, GATHER: tl.constexpr,
              MASK: tl.constexpr):
    """One key block's contribution to a query block's dQ; MASK: the block crosses kv_len."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    col_ok = offs_n < kv_len
    kpos = _positions(KIDX, offs_n, col_ok, GATHER, MASK)
    k = _load_rows(k_base + kpos[:, None] * s_kn + offs_d[None, :], col_ok, MASK)
    v = _load_rows(v_base + kpos[:, None] * s_vn + offs_d[None, :], col_ok, MASK)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)
    p = tl.exp2(s * qk_scale - lse[:, None])
    if MASK:  # keys past kv_len read as zero: their p would be exp2(-lse), not 0
        p = tl.where(col_ok[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)


def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, QIDX, KIDX, QLEN, KLEN, qk_scale, sm_scale,
                 s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
                 s_dob, s_doh, s_dom, s_gb, s_gh, s_gn, s_qib, s_kib, H, Lq,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 PREC: tl.constexpr, GATHER: tl.constexpr, ATOMIC: tl.constexpr):
    """One program = BLOCK_M query rows; loops over the key blocks up to kv_len, then writes dQ at
    the queries' rows (atomic fp32 adds, or one store in the input dtype, as dK/dV)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_len = tl.load(QLEN + b).to(tl.int32)
    kv_len = tl.load(KLEN + b).to(tl.int32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    qpos = _positions(QIDX + b * s_qib, offs_m, row_ok, GATHER, True)
    q = tl.load(Q + b * s_qb + h * s_qh + qpos[:, None] * s_qn + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * s_dob + h * s_doh + offs_m[:, None] * s_dom + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    row_base = pid_bh.to(tl.int64) * Lq
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi = tl.where(pid_m * BLOCK_M < q_len, kv_len, 0)
    full = hi - hi % BLOCK_N
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    kidx = KIDX + b * s_kib
    for start_n in range(0, full, BLOCK_N):
        dq = _dq_block(q, do, lse, delta, dq, k_base, v_base, kidx, start_n, kv_len, s_kn, s_vn,
                       qk_scale, offs_d, BLOCK_N, PREC, GATHER, False)
    for start_n in range(full, hi, BLOCK_N):
        dq = _dq_block(q, do, lse, delta, dq, k_base, v_base, kidx, start_n, kv_len, s_kn, s_vn,
                       qk_scale, offs_d, BLOCK_N, PREC, GATHER, True)
    # rows past q_len read q = dO = lse = delta = 0, so they hold zeros; keep them exact
    dq = tl.where(row_ok[:, None], dq * sm_scale, 0.0)
    g = b * s_gb + h * s_gh + qpos[:, None] * s_gn + offs_d[None, :]
    if ATOMIC:
        tl.atomic_add(DQ + g, dq, mask=row_ok[:, None], sem="relaxed")
    else:
        if GATHER:
            put = row_ok
        else:
            put = offs_m < Lq
        tl.store(DQ + g, dq.to(DQ.dtype.element_ty), mask=put[:, None])


_KERNELS = None
_HELPERS = ("_positions", "_load_rows", "_load_vec", "_fwd_block", "_dkdv_block", "_dq_block")
_KERNEL_NAMES = {"fwd": "_attn_fwd", "delta": "_attn_bwd_delta", "dkdv": "_attn_bwd_dkdv",
                 "dq": "_attn_bwd_dq"}


def _triton():
    """Import Triton and compile the kernels above and their helpers (once). TRITON_INTERPRET is
    read here."""
    global _KERNELS, tl
    if _KERNELS is None:
        try:
            import triton
            import triton.language as language
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("backend='triton' needs the triton package (pip install "
                               "'triton>=3.0', Linux x86_64 wheels); use backend='torch'") from e
        tl = language
        scope = globals()
        for name in _HELPERS + tuple(_KERNEL_NAMES.values()):
            scope[name] = triton.jit(scope[name])  # kernels find the jitted helpers here
        _KERNELS = SimpleNamespace(triton=triton, interpret=_interpreting(),
                                   **{kind: scope[name] for kind, name in _KERNEL_NAMES.items()})
    return _KERNELS


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ------------------------------------------------------------------------------------------------
# launch configurations: fixed on CPU (interpreter), timed once per shape class on CUDA

# (BLOCK_M, BLOCK_N, num_warps, num_stages). fwd/dq: M = query rows per program, N = keys per
# loop step; dkdv: N = keys per program, M = query rows per loop step. The first one of each list
# is the untuned default. Every one compiles for sm_90 without register spills at D = 64 and (the
# D = 128 lists) at D = 128, bf16: `python -m ehrjepa.kernels.aot --all` checks it.
_CANDIDATES = {  # (32, 128, 4, 3) dK/dV, in the first H200 run's list, spilled: gone
    "fwd": [(128, 64, 4, 3), (128, 64, 4, 4), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 3),
            (128, 32, 4, 3), (64, 32, 4, 2)],
    "dkdv": [(64, 64, 4, 2), (32, 64, 4, 3), (64, 128, 8, 2), (32, 128, 8, 2)],
    "dq": [(64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 3), (128, 64, 8, 2)],
}
# at D = 128 the 4-warp (64, 64, 4, 2) dK/dV and (128, 32, 4, 3) dQ spill (Triton 3.9), and so do
# the atomic (32, 64, 4, 3) dK/dV and (64, 64, 4, 3) dQ under Triton 3.6: 8 warps here
_CANDIDATES_D128 = {
    "fwd": [(128, 64, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 2)],
    "dkdv": [(64, 64, 8, 2), (32, 64, 8, 3)],
    "dq": [(64, 64, 8, 3), (128, 32, 8, 3), (64, 32, 4, 3), (128, 64, 8, 2)],
}
# lengths <= 32; (16, 32, 2, 2) left: its unique-path dQ spilled 8 B at D = 32 (Triton 3.9), and
# (32, 32, 4, 2)'s unique dQ 8 B at D = 64 under Triton 3.6: 3 stages instead
_SMALL = [(16, 16, 2, 2), (32, 32, 4, 3), (32, 16, 2, 2)]
_INTERPRET_CONFIG = (16, 16, 1, 1)
_DELTA_BLOCK_M = 64  # rows per program of the backward row term (Triton's default warps, stages)
_TUNED: dict = {}  # (kind, dtype, D, length bucket, path) -> config, for this process
TUNE_CACHE_ENV = "EHRJEPA_TRITON_TUNE_CACHE"  # a JSON file that keeps tuned configs across runs


def _candidates(kind, D, small):
    """The launch configurations `_config` times for a kernel: `_SMALL` for lengths up to 32."""
    if small:
        return _SMALL
    return (_CANDIDATES_D128 if D >= 128 else _CANDIDATES)[kind]


def _config(kind, q, D, L, path, run):
    """Pick (BLOCK_M, BLOCK_N, warps, stages) for a kernel. On CUDA the candidates are timed once
    per (kernel, dtype, D, power-of-two length class, path) with run(cfg) writing to scratch
    buffers, or read from the EHRJEPA_TRITON_TUNE_CACHE file; EHRJEPA_TRITON_TUNE=0 takes the
    first candidate untimed."""
    if _KERNELS.interpret or not q.is_cuda:
        return _INTERPRET_CONFIG
    bucket = max(16, 1 << max(0, L - 1).bit_length())
    key = (kind, q.dtype, D, bucket, path)
    cfg = _TUNED.get(key)
    if cfg is None:
        cfg = _tune(key, q.device, run)
        if not torch.cuda.is_current_stream_capturing():  # under capture: untimed, not kept
            _TUNED[key] = cfg
    return cfg


def _tune(key, device, run):
    """The fastest candidate for `key` (see `_config`), from the tune cache file when it has it."""
    kind, _dtype, D, bucket, _path = key
    cands = _candidates(kind, D, small=bucket <= 32)
    if os.environ.get("EHRJEPA_TRITON_TUNE", "1") == "0":
        return cands[0]
    where = (torch.cuda.get_device_name(device), _KERNELS.triton.__version__)
    cached = _recall(key, *where)
    if cached is not None:
        return cached
    if torch.cuda.is_current_stream_capturing():  # no timing inside a CUDA graph
        return cands[0]
    from triton.testing import do_bench
    best, best_ms = cands[0], float("inf")
    for cfg in cands:
        try:
            ms = do_bench(lambda: run(cfg), warmup=5, rep=20)
        except Exception:  # e.g. out of shared memory for this config on this card
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    _remember(key, best, *where)
    return best


# The tune cache file: {"<device>|<triton>|<kernel>|<dtype>|<D>|<bucket>|<path>": [M, N, warps,
# stages]}, read at the first lookup of a process and rewritten (whole, atomically: a temporary
# file, then a rename) after each new tuning. Two processes tuning at once may drop each other's
# newest entry; the loser is tuned again next time, never read half-written.
_TUNE_FILE: dict = {}  # path -> its entries, loaded once per process


def _tune_name(key, device_name, triton_version):
    kind, dtype, D, bucket, path = key
    return "|".join((device_name, triton_version, kind, str(dtype).replace("torch.", ""), str(D),
                     str(bucket), path))


def _read_tune_cache(file):
    """The entries of a tune cache file ({} if there is none yet); a clear error if it is bad."""
    try:
        with open(file) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    try:
        entries = {name: tuple(int(x) for x in cfg) for name, cfg in json.loads(text).items()}
        if any(len(cfg) != 4 for cfg in entries.values()):
            raise ValueError("a config is not [BLOCK_M, BLOCK_N, warps, stages]")
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{file}: not a launch-configuration tune cache ({e}); delete it or unset "
                         f"{TUNE_CACHE_ENV}") from None
    return entries


def _recall(key, device_name, triton_version):
    """The config the tune cache file holds for key on this device and Triton, else None."""
    file = os.environ.get(TUNE_CACHE_ENV)
    if not file:
        return None
    if file not in _TUNE_FILE:
        _TUNE_FILE[file] = _read_tune_cache(file)
    return _TUNE_FILE[file].get(_tune_name(key, device_name, triton_version))


def _remember(key, cfg, device_name, triton_version):
    """Add one tuned config to the tune cache file (if one is set), atomically."""
    file = os.environ.get(TUNE_CACHE_ENV)
    if not file:
        return
    entries = _read_tune_cache(file)  # what other processes wrote meanwhile
    entries[_tune_name(key, device_name, triton_version)] = tuple(cfg)
    tmp = f"{file}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({name: list(c) for name, c in sorted(entries.items())}, f, indent=1)
    os.replace(tmp, file)
    _TUNE_FILE[file] = entries


def _unit_last(x):
    """x with a unit stride along D (a copy only if it has none): the kernels read rows of D
    contiguous elements, which is what lets them load 16 bytes at a time."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _rows(x):
    """Batch, head and row strides of a [B, H, N, D] tensor whose D stride is 1."""
    s = x.stride()
    assert s[3] == 1, "kernel operands need a unit stride along D"
    return s[0], s[1], s[2]


def _cdiv(a, b):
    return (a + b - 1) // b


def _prec(dtype):
    # fp32 inputs: full-precision dot (matches the fp32 reference); fp16/bf16 ignore the setting
    return "ieee" if dtype == torch.float32 else "tf32"


def _new(shape, dtype, device):
    """An output buffer: uninitialised, or NaN under the tests' _FILL_NAN (unwritten shows up)."""
    if _FILL_NAN:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _index_args(kv_index, kv_lengths, q_index, q_lengths, N):
    """(gather, Lq, Lk, q_index, kv_index, q_lengths, index strides) as the kernels take them. The
    identity path (kv_index None) passes the lengths where the indices go: never read there."""
    if kv_index is None:
        return False, N, N, kv_lengths, kv_lengths, kv_lengths, 0, 0
    q_index, kv_index = q_index.contiguous(), kv_index.contiguous()
    return (True, q_index.shape[1], kv_index.shape[1], q_index, kv_index, q_lengths,
            q_index.stride(0), kv_index.stride(0))


def _triton_forward(q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale):
    B, H, N, D = q.shape
    _check_head_dim(D)  # a bad argument is reported before a missing Triton
    kern = _triton()
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    gather, Lq, Lk, q_index, kv_index, q_lengths, s_qib, s_kib = _index_args(
        kv_index, kv_lengths, q_index, q_lengths, N)
    out = _new((B, H, Lq, D), q.dtype, q.device)
    lse = _new((B, H, Lq), torch.float32, q.device)
    if out.numel() == 0:
        return out, lse
    args = (q_index, kv_index, q_lengths, kv_lengths, scale * LOG2E, *_rows(q), *_rows(k),
            *_rows(v), *_rows(out), s_qib, s_kib, H, Lq)

    def run(cfg, o=out, ls=lse):
        bm, bn, warps, stages = cfg
        kern.fwd[(_cdiv(Lq, bm), B * H)](q, k, v, o, ls, *args, HEAD_DIM=D, BLOCK_M=bm,
                                         BLOCK_N=bn, PREC=_prec(q.dtype), GATHER=gather,
                                         num_warps=warps, num_stages=stages)

    run(_config("fwd", q, D, max(Lq, Lk), "gather" if gather else "identity",
                lambda c: run(c, torch.empty_like(out), torch.empty_like(lse))))
    return out, lse


def _triton_backward(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths, scale,
                     unique):
    """dQ, dK, dV. Three ways to write them: the identity path stores every row (the kernels
    cover all N, zeros past a length: nothing to clear); unique gathered indices store the picked
    rows into zeros of the input dtype; repeated ones add in fp32 with atomics, cast at the end."""
    kern = _triton()
    q, k, v, out, grad_out = map(_unit_last, (q, k, v, out, grad_out))
    B, H, Nq, D = q.shape
    gather, Lq, Lk, q_index, kv_index, q_lengths, s_qib, s_kib = _index_args(
        kv_index, kv_lengths, q_index, q_lengths, Nq)
    atomic = gather and not unique
    # contiguous, never *_like: dK and dV are written with one set of strides
    if not gather:
        path, dq, dk, dv = "identity", *(_new(x.shape, x.dtype, x.device) for x in (q, k, v))
    elif unique:
        path, dq, dk, dv = "unique", *(torch.zeros(x.shape, dtype=x.dtype, device=x.device)
                                       for x in (q, k, v))
    else:
        path, dq, dk, dv = "atomic", *(torch.zeros(x.shape, dtype=torch.float32, device=x.device)
                                       for x in (q, k, v))
    if B * H * Lq > 0 and Lk > 0:
        delta = _new((B, H, Lq), torch.float32, q.device)
        bm = 16 if kern.interpret else _DELTA_BLOCK_M
        kern.delta[(_cdiv(Lq, bm), B * H)](out, grad_out, delta, *_rows(out), *_rows(grad_out),
                                           H, Lq, HEAD_DIM=D, BLOCK_M=bm)
        common = (q_index, kv_index, q_lengths, kv_lengths, scale * LOG2E, scale,
                  *_rows(q), *_rows(k), *_rows(v), *_rows(grad_out))
        flags = dict(HEAD_DIM=D, PREC=_prec(q.dtype), GATHER=gather, ATOMIC=atomic)

        def run_dkdv(cfg, gk=dk, gv=dv):
            bm, bn, warps, stages = cfg
            kern.dkdv[(_cdiv(Lk, bn), B * H)](
                q, k, v, grad_out, lse, delta, gk, gv, *common, *_rows(gk), s_qib, s_kib, H, Lq,
                Lk, BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **flags)

        def run_dq(cfg, gq=dq):
            bm, bn, warps, stages = cfg
            kern.dq[(_cdiv(Lq, bm), B * H)](
                q, k, v, grad_out, lse, delta, gq, *common, *_rows(gq), s_qib, s_kib, H, Lq,
                BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **flags)

        L = max(Lq, Lk)
        run_dkdv(_config("dkdv", q, D, L, path,
                         lambda c: run_dkdv(c, torch.empty_like(dk), torch.empty_like(dv))))
        run_dq(_config("dq", q, D, L, path, lambda c: run_dq(c, torch.empty_like(dq))))
    elif not gather:  # nothing to attend to: the kernels did not run, the gradients are zero
        dq, dk, dv = dq.zero_(), dk.zero_(), dv.zero_()
    if atomic:
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
    return dq, dk, dv


def _check_head_dim(D):
    if D not in (16, 32, 64, 128):
        raise ValueError(f"backend='triton' supports head dims 16, 32, 64, 128; got {D} "
                         "(use backend='torch')")


def _check_triton_device(x):
    if not x.is_cuda and not _interpreting():
        raise RuntimeError("backend='triton' on CPU tensors runs in Triton's interpreter: set "
                           "TRITON_INTERPRET=1 before the first Triton call, or use backend='torch'")


# ------------------------------------------------------------------------------------------------
# the op: one forward and one backward, reached two ways. torch.compile traces a torch.library
# custom op (opaque to the compiler, differentiable through register_autograd); eager calls go
# through a plain autograd.Function instead, because the custom op's Python dispatch (defaults,
# redispatch, its autograd wrapper) costs several times what the launches around it do.

def _forward(q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale, backend, check_index):
    if check_index:
        _check_values(q, k, kv_index, kv_lengths, q_index, q_lengths)
    if backend == "triton":
        _check_triton_device(q)
        return _triton_forward(q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale)
    out, lse = masked_gather_attention_reference(q, k, v, kv_index, kv_lengths, q_index,
                                                 q_lengths, scale, return_lse=True)
    return out.contiguous(), lse.contiguous()


def _backward(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths, scale,
              backend, unique_index):
    if backend == "triton":
        _check_triton_device(q)
        return _triton_backward(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index,
                                q_lengths, scale, unique_index)
    return _reference_backward(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index,
                               q_lengths, scale)


class _Eager(torch.autograd.Function):
    """The eager path: `_forward` and `_backward` without the custom op's dispatch."""

    @staticmethod
    def forward(ctx, q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale, backend,
                check_index, unique_index):
        out, lse = _forward(q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale, backend,
                            check_index)
        ctx.save_for_backward(q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths)
        ctx.scale, ctx.backend, ctx.unique = scale, backend, unique_index
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths = ctx.saved_tensors
        dq, dk, dv = _backward(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index,
                               q_lengths, ctx.scale, ctx.backend, ctx.unique)
        return dq, dk, dv, None, None, None, None, None, None, None, None


@torch.library.custom_op("ehrjepa::masked_gather_attention", mutates_args=())
def _mga_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_index: Optional[torch.Tensor],
            kv_lengths: torch.Tensor, q_index: Optional[torch.Tensor],
            q_lengths: Optional[torch.Tensor], scale: float, backend: str, check_index: bool,
            unique_index: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale, backend,
                    check_index)


@_mga_op.register_fake
def _mga_fake(q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale, backend, check_index,
              unique_index):
    B, H, N, D = q.shape
    Lq = N if kv_index is None else q_index.shape[1]
    return q.new_empty(B, H, Lq, D), q.new_empty(B, H, Lq, dtype=torch.float32)


@torch.library.custom_op("ehrjepa::masked_gather_attention_backward", mutates_args=())
def _mga_bwd_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                out: torch.Tensor, lse: torch.Tensor, kv_index: Optional[torch.Tensor],
                kv_lengths: torch.Tensor, q_index: Optional[torch.Tensor],
                q_lengths: Optional[torch.Tensor], scale: float, backend: str,
                unique_index: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths,
                     scale, backend, unique_index)


@_mga_bwd_op.register_fake
def _mga_bwd_fake(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths, scale,
                  backend, unique_index):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(v.shape, dtype=v.dtype, device=v.device))


def _mga_setup_context(ctx, inputs, output):
    q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale, backend, _check, unique = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths)
    ctx.scale, ctx.backend, ctx.unique = scale, backend, unique


def _mga_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = _mga_bwd_op(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index,
                             q_lengths, ctx.scale, ctx.backend, ctx.unique)
    return dq, dk, dv, None, None, None, None, None, None, None, None


torch.library.register_autograd("ehrjepa::masked_gather_attention", _mga_backward,
                                setup_context=_mga_setup_context)


# ------------------------------------------------------------------------------------------------
# public entry point

def masked_gather_attention(q, k, v, kv_index, kv_lengths, q_index=None, q_lengths=None,
                            scale=None, backend=None, check_index=None, unique_index=False):
    """Attention of the queries at q_index[b, :q_lengths[b]] over the keys/values at
    kv_index[b, :kv_lengths[b]], read straight from q, k, v [B, H, N, D]. Returns [B, H, Lq, D].

    kv_index None: the identity, positions 0..kv_lengths[b]-1 are the keys and the queries (no
    q_index then); returns [B, H, N, D]. The kernels then read no index at all.
    backend: None (Triton on CUDA, torch on CPU), "triton" or "torch". Raises IndexError if an
    index within a length is outside [0, N) (checked before any kernel runs; one host sync).
    check_index: None follows CHECK_INDEX; False skips the check (no sync, no work), for callers
    whose indices are right by construction (the model's layers); a bad index then reads out of
    bounds.
    unique_index: a promise, like check_index=False, that no position appears twice within
    kv_index[b, :kv_lengths[b]] nor within q_index[b, :q_lengths[b]]: the backward then stores
    each gradient row once in the input dtype instead of adding fp32 rows with atomics. Not
    checked; a repeated index then gets one of its gradient rows instead of their sum. The
    identity path is always unique.
    """
    if backend is None:
        backend = "triton" if q.is_cuda else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None; got {backend!r}")
    if kv_index is None:
        if q_index is not None or q_lengths is not None:
            raise ValueError("kv_index=None (the identity) takes no q_index or q_lengths")
    else:
        q_index, q_lengths = _defaults(kv_index, kv_lengths, q_index, q_lengths)
    _check_shapes(q, k, v, kv_index, kv_lengths, q_index, q_lengths)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    check_index = CHECK_INDEX if check_index is None else bool(check_index)
    args = (q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale, backend, check_index,
            bool(unique_index))
    if torch.compiler.is_compiling():
        return torch.ops.ehrjepa.masked_gather_attention(*args)[0]
    return _Eager.apply(*args)
