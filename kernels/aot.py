"""Compile the Triton kernels ahead of time for a CUDA architecture, on a machine without a GPU.

`python -m ehrjepa.kernels.aot [--arch 90] [--all]` runs Triton's full compiler (Triton IR -> LLVM
-> PTX -> cubin with the ptxas that ships with Triton) for every kernel and every launch
configuration that `attention.py` and `ema.py` can pick, and prints the shared memory each one
needs against the card's per-block limit. Why: the Triton interpreter, which runs the CPU tests,
executes kernels as numpy and never lowers them, so a kernel can pass every interpreter test and
still fail to compile, or need more shared memory than the card has. This catches both before a
GPU is rented. It does not run anything: speed and numerics still need a GPU.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from dataclasses import dataclass

# Largest dynamic shared memory one block may use, per architecture (bytes): the CUDA C
# Programming Guide's "maximum amount of shared memory per thread block" (opt-in) for compute
# capability 8.0 (A100: 163 KB), 8.6/8.9 (99 KB) and 9.0 (H100/H200: 227 KB).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
DTYPES = ("fp32", "fp16", "bf16")  # Triton's names, as the signatures below spell them


@dataclass
class Compiled:
    """One kernel at one launch configuration: what it needed, or why it did not compile."""

    kernel: str
    dtype: str
    head_dim: int | None
    config: tuple
    shared: int | None  # bytes; None when it failed
    error: str | None
    ptx: str | None = None

    def ptx_has(self) -> dict:
        """What the PTX uses: tensor-core MMA, 16-byte global loads/stores, async copies."""
        ptx = self.ptx or ""
        return {"mma": "mma" in ptx, "v4_loads": "ld.global.v4" in ptx,
                "v4_stores": "st.global.v4" in ptx, "cp_async": "cp.async" in ptx}

    def as_dict(self) -> dict:
        return {"kernel": self.kernel, "dtype": self.dtype, "head_dim": self.head_dim,
                "config": list(self.config), "shared": self.shared, "error": self.error,
                **self.ptx_has()}


def _jit(module, name):
    """A compiled-mode JITFunction of `module.name`."""
    from triton.runtime.jit import JITFunction

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # Triton decides at import whether its own helpers are interpreted: no lowering after that
        raise RuntimeError("ehrjepa.kernels.aot needs a process without TRITON_INTERPRET=1 "
                           "(run `python -m ehrjepa.kernels.aot`)")
    module._triton()  # binds the module's `tl` global, which the kernel bodies use
    obj = getattr(module, name)
    return JITFunction(getattr(obj, "fn", obj))


def _compile(fn, types: dict, constexprs: dict, warps: int, stages: int, arch: int):
    """triton.compile for `arch`, with the hints Triton's launcher would give a real launch:
    every pointer 16-byte aligned, and every row/head/batch stride (s_*, not the index strides
    s_qib/s_kib) a multiple of 16, as they are for D of 32, 64 or 128."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(fn.fn).parameters)
    signature = {n: ("constexpr" if n in constexprs else types.get(n, "i32")) for n in names}
    aligned = [i for i, n in enumerate(names) if signature[n].startswith("*")
               or (n.startswith("s_") and n not in ("s_qib", "s_kib"))]
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(names.index(k),): v for k, v in constexprs.items()},
                    attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": warps, "num_stages": stages})


def attention_configs(head_dim: int):
    """(kernel, (BLOCK_M, BLOCK_N, warps, stages)) for every launch `attention.py` may make."""
    from ehrjepa.kernels import attention as A

    out = []
    for kind in ("fwd", "dkdv", "dq"):
        for small in (False, True):
            out += [(kind, cfg) for cfg in A._candidates(kind, head_dim, small)
                    if (kind, cfg) not in out]
    out.append(("delta", (A._DELTA_BLOCK_M, None, 4, 3)))  # warps, stages: Triton's defaults
    return out


def compile_attention(dtype: str, head_dim: int, kind: str, cfg: tuple, arch: int = 90) -> Compiled:
    from ehrjepa.kernels import attention as A

    fn = _jit(A, {"fwd": "_attn_fwd", "dkdv": "_attn_bwd_dkdv", "dq": "_attn_bwd_dq",
                  "delta": "_attn_bwd_delta"}[kind])
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    types = {n: f"*{dtype}" for n in ("Q", "K", "V", "O", "DO")}
    types.update({n: "*fp32" for n in ("LSE", "DELTA", "DK", "DV", "DQ")})
    types.update({n: "*i64" for n in ("QIDX", "KIDX", "QLEN", "KLEN")})
    types.update({"qk_scale": "fp32", "sm_scale": "fp32"})
    bm, bn, warps, stages = cfg
    const = {"HEAD_DIM": head_dim, "BLOCK_M": bm}
    if kind != "delta":
        const.update(BLOCK_N=bn, PREC="ieee" if dtype == "fp32" else "tf32")
    return _run(fn, types, const, warps, stages, arch, kind, dtype, head_dim, cfg)


def compile_ema(context_dtype: str, arch: int = 90, block: int | None = None,
                warps: int | None = None) -> Compiled:
    from ehrjepa.kernels import ema as E

    fn = _jit(E, "_ema_kernel")
    block = block or E.CUDA_BLOCK
    warps = warps or E.CUDA_WARPS
    c_size = {"fp32": 4, "fp16": 2, "bf16": 2}[context_dtype]
    types = {"T": "*fp32", "C": f"*{context_dtype}", "TABLE": "*i64", "weight": "fp32",
             "W_PTR": "*fp32"}
    const = {"BLOCK": block, "W_FROM_PTR": True, "T_ALIGN": 4, "C_ALIGN": 16 // c_size}
    return _run(fn, types, const, warps, 1, arch, "ema", context_dtype, None, (block, warps))


def _run(fn, types, const, warps, stages, arch, kind, dtype, head_dim, cfg) -> Compiled:
    try:
        k = _compile(fn, types, const, warps, stages, arch)
    except Exception as e:  # noqa: BLE001 - reported, and counted as a failure by the caller
        return Compiled(kind, dtype, head_dim, cfg, None, f"{type(e).__name__}: {str(e)[:400]}")
    return Compiled(kind, dtype, head_dim, cfg, int(k.metadata.shared), None, k.asm.get("ptx"))


def check(arch: int = 90, everything: bool = False, out=sys.stdout, json_path=None) -> int:
    """Compile the kernels for `arch`; print one line each (and write them to `json_path`);
    return the number of failures (a compile error or shared memory over the card's limit)."""
    limit = SHARED_LIMIT.get(arch)
    dtypes = ("bf16", "fp16", "fp32") if everything else ("bf16", "fp32")
    dims = (32, 64, 128) if everything else (64,)
    jobs = [(d, D, kind, cfg) for d in dtypes for D in dims for kind, cfg in attention_configs(D)]
    if not everything:  # the first candidate of each kernel and one small-length config
        from ehrjepa.kernels import attention as A
        keep = {(k, A._candidates(k, 64, small)[0]) for k in ("fwd", "dkdv", "dq")
                for small in (False, True)}
        jobs = [j for j in jobs if (j[2], j[3]) in keep or j[2] == "delta"]
    failures = 0
    print(f"sm_{arch}: shared-memory limit {limit if limit else 'unknown'} B per block", file=out)
    results = [compile_attention(d, D, kind, cfg, arch) for d, D, kind, cfg in jobs]
    results += [compile_ema(d, arch) for d in ("fp32", "bf16")]
    for r in results:
        over = limit is not None and r.shared is not None and r.shared > limit
        failures += bool(r.error) or over
        what = f"{r.kernel:5s} {r.dtype} " + (f"D={r.head_dim:<3d} " if r.head_dim else "") + f"{r.config}"
        status = r.error if r.error else f"shared {r.shared} B" + ("  OVER THE LIMIT" if over else "")
        print(f"{'FAIL' if r.error or over else 'ok  '} {what}: {status}", file=out, flush=True)
    print(f"{len(results)} compiled, {failures} failed", file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"arch": arch, "shared_limit": limit, "triton": _triton_version(),
                       "results": [r.as_dict() for r in results]}, f, indent=1)
    return failures


def _triton_version() -> str:
    import triton
    return triton.__version__


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ehrjepa.kernels.aot", description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200, 80: A100)")
    p.add_argument("--all", action="store_true",
                   help="every dtype (bf16, fp16, fp32) and head dim (32, 64, 128) and every candidate")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    return 1 if check(args.arch, args.all, json_path=args.json) else 0


if __name__ == "__main__":
    raise SystemExit(main())
