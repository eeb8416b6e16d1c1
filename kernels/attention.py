"""Masked gather-attention: attention over a per-sample subset of positions, gather fused in.

`masked_gather_attention(q, k, v, kv_index, kv_lengths, q_index=None, q_lengths=None, scale=None,
backend=None)` with q, k, v [B, H, N, D] for the full sequence. Sample b attends over the keys and
values at `kv_index[b, :kv_lengths[b]]`; its queries are the positions `q_index[b, :q_lengths[b]]`
(default: the kv ones). Returns [B, H, Lq, D]; rows past q_lengths[b] are zero, a sample with no
keys gives zeros (never NaN).

Two implementations behind one `torch.library` custom op (`torch.ops.ehrjepa.masked_gather_attention`):
- backend "triton": flash-attention-style kernels (online softmax, forward saves the log-sum-exp;
  backward = delta = rowsum(dO * O), then a dK/dV kernel and a dQ kernel). Rows are read through
  the indices, so the gathered q, k, v never exist in memory, and the loops over key (or query)
  blocks stop at the sample's own length instead of masking blocks past it.
- backend "torch": `masked_gather_attention_reference` (gather + matmul + masked softmax) with an
  explicit backward; the CPU default and the ground truth of the tests.

Gradient scatter (a design choice): dQ, dK and dV are accumulated per block in fp32 registers
and added to a zeroed fp32 [B, H, N, D] buffer with `tl.atomic_add` at the original positions.
That sums repeated indices correctly without sorting, leaves unselected positions at zero, and
with unique indices every address receives exactly one add (so the result is deterministic);
only repeated indices make the summation order run-dependent. The buffer is cast to the input
dtype at the end (for fp32 inputs it is returned as is).

The Triton module is imported lazily, on the first Triton call, so `import ehrjepa.kernels` and
the torch path work where Triton is absent. With TRITON_INTERPRET=1 the same kernels run on CPU
tensors in Triton's interpreter (slow: keep problems tiny).

One module of some 600 lines on purpose: the op, its reference and its three kernels share one
contract (shapes, index semantics, the saved log-sum-exp) and change together.
"""
from __future__ import annotations  # kernel annotations stay strings until Triton reads them

import os
from types import SimpleNamespace

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

def _attn_fwd(Q, K, V, O, LSE, QIDX, KIDX, QLEN, KLEN, qk_scale,
              s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
              s_ob, s_oh, s_om, s_qib, s_kib, H, Lq,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              PREC: tl.constexpr):
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
    qidx = tl.load(QIDX + b * s_qib + offs_m, mask=row_ok, other=0).to(tl.int64)
    q = tl.load(Q + b * s_qb + h * s_qh + qidx[:, None] * s_qn + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # Blocks entirely past q_len loop zero times and just write zeros; no block past kv_len runs.
    hi = tl.where(pid_m * BLOCK_M < q_len, kv_len, 0)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < kv_len
        kidx = tl.load(KIDX + b * s_kib + offs_n, mask=col_ok, other=0).to(tl.int64)
        k = tl.load(k_base + kidx[:, None] * s_kn + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # log2 units
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + kidx[:, None] * s_vn + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
        m_i = m_new
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


def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, QIDX, KIDX, QLEN, KLEN, qk_scale, sm_scale,
                   s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
                   s_dob, s_doh, s_dom, s_gb, s_gh, s_gn, s_qib, s_kib, H, Lq,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PREC: tl.constexpr):
    """One program = BLOCK_N kept keys of one (sample, head); loops over the query blocks, then
    atomically adds dK, dV (fp32) at the keys' original positions."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_len = tl.load(QLEN + b).to(tl.int32)
    kv_len = tl.load(KLEN + b).to(tl.int32)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < kv_len
    kidx = tl.load(KIDX + b * s_kib + offs_n, mask=col_ok, other=0).to(tl.int64)
    k = tl.load(K + b * s_kb + h * s_kh + kidx[:, None] * s_kn + offs_d[None, :],
                mask=col_ok[:, None], other=0.0)
    v = tl.load(V + b * s_vb + h * s_vh + kidx[:, None] * s_vn + offs_d[None, :],
                mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    hi = tl.where(pid_n * BLOCK_N < kv_len, q_len, 0)
    q_base = Q + b * s_qb + h * s_qh
    do_base = DO + b * s_dob + h * s_doh
    row_base = pid_bh.to(tl.int64) * Lq
    for start_m in range(0, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < q_len
        qidx = tl.load(QIDX + b * s_qib + offs_m, mask=row_ok, other=0).to(tl.int64)
        q = tl.load(q_base + qidx[:, None] * s_qn + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * s_dom + offs_d[None, :],
                     mask=row_ok[:, None], other=0.0)
        lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # [N, M], log2 units
        p_t = tl.exp2(s_t - lse[None, :])
        p_t = tl.where(col_ok[:, None] & row_ok[None, :], p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PREC)
    dk = dk * sm_scale
    g = b * s_gb + h * s_gh + kidx[:, None] * s_gn + offs_d[None, :]
    tl.atomic_add(DK + g, dk, mask=col_ok[:, None], sem="relaxed")
    tl.atomic_add(DV + g, dv, mask=col_ok[:, None], sem="relaxed")


def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, QIDX, KIDX, QLEN, KLEN, qk_scale, sm_scale,
                 s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn,
                 s_dob, s_doh, s_dom, s_gb, s_gh, s_gn, s_qib, s_kib, H, Lq,
                 HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 PREC: tl.constexpr):
    """One program = BLOCK_M query rows; loops over the key blocks up to kv_len, then atomically
    adds dQ (fp32) at the queries' original positions."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    q_len = tl.load(QLEN + b).to(tl.int32)
    kv_len = tl.load(KLEN + b).to(tl.int32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < q_len
    qidx = tl.load(QIDX + b * s_qib + offs_m, mask=row_ok, other=0).to(tl.int64)
    q = tl.load(Q + b * s_qb + h * s_qh + qidx[:, None] * s_qn + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * s_dob + h * s_doh + offs_m[:, None] * s_dom + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    row_base = pid_bh.to(tl.int64) * Lq
    lse = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    hi = tl.where(pid_m * BLOCK_M < q_len, kv_len, 0)
    k_base = K + b * s_kb + h * s_kh
    v_base = V + b * s_vb + h * s_vh
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < kv_len
        kidx = tl.load(KIDX + b * s_kib + offs_n, mask=col_ok, other=0).to(tl.int64)
        k = tl.load(k_base + kidx[:, None] * s_kn + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + kidx[:, None] * s_vn + offs_d[None, :],
                    mask=col_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        p = tl.exp2(s - lse[:, None])
        p = tl.where(row_ok[:, None] & col_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PREC)
    dq = dq * sm_scale
    g = b * s_gb + h * s_gh + qidx[:, None] * s_gn + offs_d[None, :]
    tl.atomic_add(DQ + g, dq, mask=row_ok[:, None], sem="relaxed")


_KERNELS = None


def _triton():
    """Import Triton and compile the kernels above (once). TRITON_INTERPRET is read here."""
    global _KERNELS, tl, _attn_fwd, _attn_bwd_delta, _attn_bwd_dkdv, _attn_bwd_dq
    if _KERNELS is None:
        try:
            import triton
            import triton.language as language
        except ImportError as e:  # pragma: no cover - depends on the install
            raise RuntimeError("backend='triton' needs the triton package (pip install "
                               "'triton>=3.0', Linux x86_64 wheels); use backend='torch'") from e
        tl = language
        _attn_fwd = triton.jit(_attn_fwd)
        _attn_bwd_delta = triton.jit(_attn_bwd_delta)
        _attn_bwd_dkdv = triton.jit(_attn_bwd_dkdv)
        _attn_bwd_dq = triton.jit(_attn_bwd_dq)
        _KERNELS = SimpleNamespace(triton=triton, fwd=_attn_fwd, delta=_attn_bwd_delta,
                                   dkdv=_attn_bwd_dkdv, dq=_attn_bwd_dq)
    return _KERNELS


def _interpreting():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# ------------------------------------------------------------------------------------------------
# launch configurations: fixed on CPU (interpreter), timed once per shape class on CUDA

# (BLOCK_M, BLOCK_N, num_warps, num_stages). fwd/dq: M = query rows per program, N = keys per
# loop step; dkdv: N = keys per program, M = query rows per loop step.
_CANDIDATES = {
    "fwd": [(64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3), (64, 32, 4, 2)],
    "dkdv": [(32, 64, 4, 3), (32, 128, 4, 3), (64, 64, 4, 2), (64, 128, 8, 2)],
    "dq": [(64, 64, 4, 3), (128, 32, 4, 3), (64, 32, 4, 3), (128, 64, 8, 2)],
}
_SMALL = [(16, 16, 2, 2), (32, 32, 4, 2), (16, 32, 2, 2), (32, 16, 2, 2)]  # lengths <= 32
_INTERPRET_CONFIG = (16, 16, 1, 1)
_DELTA_BLOCK_M = 64  # rows per program of the backward row term (Triton's default warps, stages)
_TUNED: dict = {}


def _candidates(kind, D, small):
    """The launch configurations `_config` times for a kernel: `_SMALL` for lengths up to 32."""
    cands = _SMALL if small else _CANDIDATES[kind]
    if D >= 128:  # keep the register/shared-memory footprint sane at D=128
        cands = [c for c in cands if c[0] * c[1] <= 64 * 64] or cands[:1]
    return cands


def _config(kind, dtype, D, L, run):
    """Pick (BLOCK_M, BLOCK_N, warps, stages) for a kernel. On CUDA the candidates are timed once
    per (kernel, dtype, D, power-of-two length class) with run(cfg) writing to scratch buffers;
    EHRJEPA_TRITON_TUNE=0 takes the first candidate untimed."""
    if not torch.cuda.is_available() or _interpreting():
        return _INTERPRET_CONFIG
    bucket = max(16, 1 << max(0, int(L) - 1).bit_length())
    cands = _candidates(kind, D, small=bucket <= 32)
    key = (kind, dtype, D, bucket)
    if key in _TUNED:
        return _TUNED[key]
    if os.environ.get("EHRJEPA_TRITON_TUNE", "1") == "0" or torch.cuda.is_current_stream_capturing():
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
    _TUNED[key] = best
    return best


def _unit_last(x):
    """x with a unit stride along D (a copy only if it has none): the kernels read rows of D
    contiguous elements, which is what lets them load 16 bytes at a time."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _rows(x):
    """Batch, head and row strides of a [B, H, N, D] tensor whose D stride is 1."""
    assert x.stride(-1) == 1, "kernel operands need a unit stride along D"
    return x.stride()[:3]


def _cdiv(a, b):
    return (a + b - 1) // b


def _prec(dtype):
    # fp32 inputs: full-precision dot (matches the fp32 reference); fp16/bf16 ignore the setting
    return "ieee" if dtype == torch.float32 else "tf32"


def _triton_forward(q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale):
    B, H, _, D = q.shape
    Lq, Lk = q_index.shape[1], kv_index.shape[1]
    _check_head_dim(D)  # a bad argument is reported before a missing Triton
    kern = _triton()
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    new = torch.full if _FILL_NAN else (lambda shape, _v, **kw: torch.empty(shape, **kw))
    out = new((B, H, Lq, D), float("nan"), dtype=q.dtype, device=q.device)
    lse = new((B, H, Lq), float("nan"), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    q_index, kv_index = q_index.contiguous(), kv_index.contiguous()

    def run(cfg, o=out, ls=lse):
        bm, bn, warps, stages = cfg
        kern.fwd[(_cdiv(Lq, bm), B * H)](
            q, k, v, o, ls, q_index, kv_index, q_lengths, kv_lengths, scale * LOG2E,
            *_rows(q), *_rows(k), *_rows(v), *_rows(o), q_index.stride(0),
            kv_index.stride(0), H, Lq, HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn, PREC=_prec(q.dtype),
            num_warps=warps, num_stages=stages)

    cfg = _config("fwd", q.dtype, D, max(Lq, Lk),
                  lambda c: run(c, torch.empty_like(out), torch.empty_like(lse)))
    run(cfg)
    return out, lse


def _triton_backward(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths, scale):
    kern = _triton()
    q, k, v, out, grad_out = map(_unit_last, (q, k, v, out, grad_out))
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    Lq, Lk = q_index.shape[1], kv_index.shape[1]
    dq = torch.zeros(B, H, Nq, D, dtype=torch.float32, device=q.device)
    dk = torch.zeros(B, H, Nk, D, dtype=torch.float32, device=q.device)
    dv = torch.zeros_like(dk)
    if B * H * Lq > 0 and Lk > 0:
        q_index, kv_index = q_index.contiguous(), kv_index.contiguous()
        delta = torch.full((B, H, Lq), float("nan"), dtype=torch.float32, device=q.device) \
            if _FILL_NAN else torch.empty((B, H, Lq), dtype=torch.float32, device=q.device)
        bm = 16 if _interpreting() else _DELTA_BLOCK_M
        kern.delta[(_cdiv(Lq, bm), B * H)](out, grad_out, delta, *_rows(out), *_rows(grad_out),
                                           H, Lq, HEAD_DIM=D, BLOCK_M=bm)
        common = (q_index, kv_index, q_lengths, kv_lengths, scale * LOG2E, scale,
                  *_rows(q), *_rows(k), *_rows(v), *_rows(grad_out))
        prec = _prec(q.dtype)

        def run_dkdv(cfg, gk=dk, gv=dv):
            bm, bn, warps, stages = cfg
            kern.dkdv[(_cdiv(Lk, bn), B * H)](
                q, k, v, grad_out, lse, delta, gk, gv, *common, *gk.stride()[:3],
                q_index.stride(0), kv_index.stride(0), H, Lq, HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn,
                PREC=prec, num_warps=warps, num_stages=stages)

        def run_dq(cfg, gq=dq):
            bm, bn, warps, stages = cfg
            kern.dq[(_cdiv(Lq, bm), B * H)](
                q, k, v, grad_out, lse, delta, gq, *common, *gq.stride()[:3],
                q_index.stride(0), kv_index.stride(0), H, Lq, HEAD_DIM=D, BLOCK_M=bm, BLOCK_N=bn,
                PREC=prec, num_warps=warps, num_stages=stages)

        L = max(Lq, Lk)
        run_dkdv(_config("dkdv", q.dtype, D, L,
                         lambda c: run_dkdv(c, torch.empty_like(dk), torch.empty_like(dv))))
        run_dq(_config("dq", q.dtype, D, L, lambda c: run_dq(c, torch.empty_like(dq))))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _check_head_dim(D):
    if D not in (16, 32, 64, 128):
        raise ValueError(f"backend='triton' supports head dims 16, 32, 64, 128; got {D} "
                         "(use backend='torch')")


def _check_triton_device(x):
    if not x.is_cuda and not _interpreting():
        raise RuntimeError("backend='triton' on CPU tensors runs in Triton's interpreter: set "
                           "TRITON_INTERPRET=1 before the first Triton call, or use backend='torch'")


# ------------------------------------------------------------------------------------------------
# torch.library registration: opaque to torch.compile, differentiable through register_autograd

@torch.library.custom_op("ehrjepa::masked_gather_attention", mutates_args=())
def _mga_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_index: torch.Tensor,
            kv_lengths: torch.Tensor, q_index: torch.Tensor, q_lengths: torch.Tensor,
            scale: float, backend: str, check_index: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if check_index:
        _check_values(q, k, kv_index, kv_lengths, q_index, q_lengths)
    if backend == "triton":
        _check_triton_device(q)
        return _triton_forward(q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale)
    out, lse = masked_gather_attention_reference(q, k, v, kv_index, kv_lengths, q_index,
                                                 q_lengths, scale, return_lse=True)
    return out.contiguous(), lse.contiguous()


@_mga_op.register_fake
def _mga_fake(q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale, backend, check_index):
    B, H, _, D = q.shape
    Lq = q_index.shape[1]
    return q.new_empty(B, H, Lq, D), q.new_empty(B, H, Lq, dtype=torch.float32)


@torch.library.custom_op("ehrjepa::masked_gather_attention_backward", mutates_args=())
def _mga_bwd_op(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                out: torch.Tensor, lse: torch.Tensor, kv_index: torch.Tensor,
                kv_lengths: torch.Tensor, q_index: torch.Tensor, q_lengths: torch.Tensor,
                scale: float, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton":
        _check_triton_device(q)
        return _triton_backward(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index,
                                q_lengths, scale)
    return _reference_backward(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index,
                               q_lengths, scale)


@_mga_bwd_op.register_fake
def _mga_bwd_fake(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths, scale,
                  backend):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device),
            torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(v.shape, dtype=v.dtype, device=v.device))


def _mga_setup_context(ctx, inputs, output):
    q, k, v, kv_index, kv_lengths, q_index, q_lengths, scale, backend, _check_index = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths)
    ctx.scale, ctx.backend = scale, backend


def _mga_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, kv_index, kv_lengths, q_index, q_lengths = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = _mga_bwd_op(grad_out, q, k, v, out, lse, kv_index, kv_lengths, q_index,
                             q_lengths, ctx.scale, ctx.backend)
    return dq, dk, dv, None, None, None, None, None, None, None


torch.library.register_autograd("ehrjepa::masked_gather_attention", _mga_backward,
                                setup_context=_mga_setup_context)


# ------------------------------------------------------------------------------------------------
# public entry point

def masked_gather_attention(q, k, v, kv_index, kv_lengths, q_index=None, q_lengths=None,
                            scale=None, backend=None, check_index=None):
    """Attention of the queries at q_index[b, :q_lengths[b]] over the keys/values at
    kv_index[b, :kv_lengths[b]], read straight from q, k, v [B, H, N, D]. Returns [B, H, Lq, D].

    backend: None (Triton on CUDA, torch on CPU), "triton" or "torch". Raises IndexError if an
    index within a length is outside [0, N) (checked before any kernel runs; one host sync).
    check_index: None follows CHECK_INDEX; False skips the check (no sync, no work), for callers
    whose indices are right by construction (the model's layers); a bad index then reads out of
    bounds.
    """
    if backend is None:
        backend = "triton" if q.is_cuda else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None; got {backend!r}")
    q_index, q_lengths = _defaults(kv_index, kv_lengths, q_index, q_lengths)
    _check_shapes(q, k, v, kv_index, kv_lengths, q_index, q_lengths)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    check_index = CHECK_INDEX if check_index is None else bool(check_index)
    out, _ = torch.ops.ehrjepa.masked_gather_attention(q, k, v, kv_index, kv_lengths, q_index,
                                                       q_lengths, scale, backend, check_index)
    return out
