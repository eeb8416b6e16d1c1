"""pytest-benchmark cases for the kernels (not part of `pytest tests`).

    python -m pytest bench/test_bench_kernels.py --benchmark-group-by=group
    BENCH_ATTN=32x1024 python -m pytest bench/test_bench_kernels.py    # another B x T on a GPU

On a GPU: attention forward+backward (H=6, D=64, bf16, kept counts 60-85 % of T) and the EMA at
21.3 M parameters, each against its rivals. On CPU the shapes are tiny and the Triton kernels run
in the interpreter (TRITON_INTERPRET=1, set here before any kernel is compiled): a smoke run of
every path, not a speed measurement. For the full table with ceilings, use
`python -m bench kernels`. pytest-benchmark times on the host, so each CUDA case synchronises.
"""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F  # noqa: E402

from bench.kernels import ema_variants, vit_shapes  # noqa: E402
from ehrjepa.kernels import masked_gather_attention  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
B, T = (int(v) for v in os.environ.get("BENCH_ATTN", "32x1024" if CUDA else "2x24").split("x"))
H, D = (6, 64) if CUDA else (2, 32)
DTYPE = torch.bfloat16 if CUDA else torch.float32


def sync():
    if CUDA:
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def attn_inputs():
    g = torch.Generator().manual_seed(0)
    keep = torch.randint(int(0.6 * T), int(0.85 * T) + 1, (B,), generator=g)
    L = int(keep.max())
    index = torch.zeros(B, L, dtype=torch.long)
    for b in range(B):
        index[b, :keep[b]] = torch.randperm(T, generator=g)[:keep[b]].sort().values
    x = torch.randn(B, L, 3, H, D, device=DEVICE, dtype=DTYPE)
    q, k, v = (t.contiguous().requires_grad_() for t in x.permute(2, 0, 3, 1, 4))
    return q, k, v, index.to(DEVICE), keep.to(DEVICE)


def _step(fn, q, k, v):
    def run():
        for t in (q, k, v):
            t.grad = None
        fn().float().sum().backward()
        sync()
    return run


@pytest.mark.benchmark(group="attention fwd+bwd")
@pytest.mark.parametrize("variant", ["sdpa_mask", "truncate_sdpa", "ours_triton", "ours_torch"])
def test_attention(benchmark, attn_inputs, variant):
    q, k, v, index, keep = attn_inputs
    L = index.shape[1]
    packed = torch.arange(L, device=DEVICE).expand(B, L).contiguous()
    valid = packed < keep[:, None]
    n = int(keep.min())
    fns = {
        "sdpa_mask": lambda: F.scaled_dot_product_attention(q, k, v,
                                                            attn_mask=valid[:, None, None, :]),
        "truncate_sdpa": lambda: F.scaled_dot_product_attention(q[:, :, :n], k[:, :, :n],
                                                                v[:, :, :n]),
        "ours_triton": lambda: masked_gather_attention(q, k, v, None, keep, backend="triton",
                                                       check_index=False),
        "ours_torch": lambda: masked_gather_attention(q, k, v, packed, keep, backend="torch"),
    }
    benchmark.pedantic(_step(fns[variant], q, k, v), rounds=10 if CUDA else 2, warmup_rounds=1)


@pytest.mark.benchmark(group="ema")
@pytest.mark.parametrize("variant", ["loop", "foreach_lerp", "flat_lerp", "ours"])
def test_ema(benchmark, variant):
    fns = ema_variants(vit_shapes(384, 12) if CUDA else vit_shapes(32, 1), DEVICE)[0]

    def run():
        fns[variant]()
        sync()
    benchmark.pedantic(run, rounds=50 if CUDA else 3, warmup_rounds=2)
