"""Compile the Triton kernels ahead of time for a CUDA architecture, on a machine without a GPU.

`python -m ehrjepa.kernels.aot [--arch 90] [--all]` runs Triton's full compiler (Triton IR -> LLVM
-> PTX -> cubin with the ptxas that ships with Triton) for every kernel and every launch
configuration that `attention.py` and `ema.py` can pick (and each attention path: identity,
unique gather, atomic gather), and prints the shared memory each one needs against the card's
per-block limit, its registers per thread and its stack frame (bytes of spilled registers, read
from the cubin with the cuobjdump that ships with Triton; any is a failure). Why: the Triton interpreter, which runs the CPU tests,
executes kernels as numpy and never lowers them, so a kernel can pass every interpreter test and
still fail to compile, or need more shared memory than the card has. This catches both before a
GPU is rented. It does not run anything: speed and numerics still need a GPU.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Largest dynamic shared memory one block may use, per architecture (bytes): the CUDA C
# Programming Guide's "maximum amount of shared memory per thread block" (opt-in) for compute
# capability 8.0 (A100: 163 KB), 8.6/8.9 (99 KB) and 9.0 (H100/H200: 227 KB).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
DTYPES = ("fp32", "fp16", "bf16")  # Triton's names, as the signatures below spell them
# The attention kernels' variants (attention.py's GATHER and ATOMIC switches), per kernel
PATHS = {"fwd": ("identity", "gather"), "dkdv": ("identity", "unique", "atomic"),
         "dq": ("identity", "unique", "atomic"), "delta": ("any",)}


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
    path: str = ""  # attention's identity / unique / atomic / gather
    registers: int | None = None  # per thread (None: unknown, no cuobjdump)
    stack: int | None = None  # bytes of stack frame per thread: registers spilled to local memory

    def ptx_has(self) -> dict:
        """What the PTX uses: tensor-core MMA, 16-byte global loads/stores, async copies."""
        ptx = self.ptx or ""
        return {"mma": "mma" in ptx, "v4_loads": "ld.global.v4" in ptx,
                "v4_stores": "st.global.v4" in ptx, "cp_async": "cp.async" in ptx}

    def as_dict(self) -> dict:
        return {"kernel": self.kernel, "dtype": self.dtype, "head_dim": self.head_dim,
                "path": self.path, "config": list(self.config), "shared": self.shared,
                "registers": self.registers, "stack": self.stack, "error": self.error,
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


def compile_attention(dtype: str, head_dim: int, kind: str, cfg: tuple, arch: int = 90,
                      path: str | None = None) -> Compiled:
    """One attention kernel; path: one of PATHS[kind] (default its first, the identity)."""
    from ehrjepa.kernels import attention as A

    fn = _jit(A, A._KERNEL_NAMES[kind])
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    path = path or PATHS[kind][0]
    if path not in PATHS[kind]:
        raise ValueError(f"{kind} has the paths {PATHS[kind]}, got {path!r}")
    grads = "*fp32" if path == "atomic" else f"*{dtype}"  # atomics add fp32, stores the input's
    types = {n: f"*{dtype}" for n in ("Q", "K", "V", "O", "DO")}
    types.update({n: "*fp32" for n in ("LSE", "DELTA")})
    types.update({n: grads for n in ("DK", "DV", "DQ")})
    types.update({n: "*i64" for n in ("QIDX", "KIDX", "QLEN", "KLEN")})
    types.update({"qk_scale": "fp32", "sm_scale": "fp32"})
    bm, bn, warps, stages = cfg
    const = {"HEAD_DIM": head_dim, "BLOCK_M": bm}
    if kind != "delta":
        const.update(BLOCK_N=bn, PREC="ieee" if dtype == "fp32" else "tf32",
                     GATHER=path != "identity")
    if kind in ("dkdv", "dq"):
        const.update(ATOMIC=path == "atomic")
    r = _run(fn, types, const, warps, stages, arch, kind, dtype, head_dim, cfg)
    r.path = path
    return r


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
    registers, stack = _resources(k.asm.get("cubin"))
    return Compiled(kind, dtype, head_dim, cfg, int(k.metadata.shared), None, k.asm.get("ptx"),
                    registers=registers, stack=stack)


def _resources(cubin: bytes | None):
    """(registers per thread, stack frame bytes) of a cubin's kernel, from `cuobjdump -res-usage`
    (Triton ships it); (None, None) when it cannot tell. A spill is what makes the stack nonzero:
    these kernels keep no local arrays."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not cubin or not os.path.exists(tool):
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def check(arch: int = 90, everything: bool = False, out=sys.stdout, json_path=None,
          dtypes=None, dims=None) -> int:
    """Compile the kernels for `arch`; print one line each (and write them to `json_path`);
    return the number of failures (a compile error, shared memory over the card's limit, or a
    register spill). everything: every candidate of every path (else the first candidate of each
    kernel and one small-length config, for bf16 every path of the first; for fp32 the first
    candidates' identity path). Spills fail the 16-bit dtypes only: the fp32 tiles are sized for
    bf16 (an fp32 run is a correctness check, not a fast path)."""
    limit = SHARED_LIMIT.get(arch)
    dtypes = dtypes or (("bf16", "fp16", "fp32") if everything else ("bf16", "fp32"))
    dims = dims or ((32, 64, 128) if everything else (64,))
    jobs = [(d, D, kind, cfg, path) for d in dtypes for D in dims
            for kind, cfg in attention_configs(D) for path in PATHS[kind]]
    if not everything:
        jobs = [j for j in jobs if _quick(*j)]
    failures = 0
    print(f"sm_{arch}: shared-memory limit {limit if limit else 'unknown'} B per block", file=out)
    results = []
    for d, D, kind, cfg, path in jobs:
        results.append(compile_attention(d, D, kind, cfg, arch, path))
        _report(results[-1], limit, out)
    for d in ("fp32", "bf16"):
        results.append(compile_ema(d, arch))
        _report(results[-1], limit, out)
    failures = sum(_failed(r, limit) for r in results)
    print(f"{len(results)} compiled, {failures} failed", file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"arch": arch, "shared_limit": limit, "triton": _triton_version(),
                       "results": [r.as_dict() for r in results]}, f, indent=1)
    return failures


def _quick(dtype, D, kind, cfg, path) -> bool:
    """The jobs of a check without --all: bf16 with each kernel's first candidate on every path
    and its first small-length one on the identity path; fp32 with the first on the identity."""
    from ehrjepa.kernels import attention as A

    if kind == "delta":
        return True
    first = cfg == A._candidates(kind, D, False)[0]
    if dtype != "bf16":
        return first and path == PATHS[kind][0]
    return first or cfg == A._candidates(kind, D, True)[0] and path == PATHS[kind][0]


def _failed(r: Compiled, limit) -> bool:
    over = limit is not None and r.shared is not None and r.shared > limit
    return bool(r.error) or over or bool(r.stack) and r.dtype in ("bf16", "fp16")


def _report(r: Compiled, limit, out) -> None:
    """One line: ok/FAIL, kernel, dtype, D, path, config, then shared, registers, stack."""
    what = (f"{r.kernel:5s} {r.dtype} " + (f"D={r.head_dim:<3d} " if r.head_dim else "")
            + (f"{r.path:8s} " if r.path else "") + f"{r.config}")
    if r.error:
        status = r.error
    else:
        over = limit is not None and r.shared > limit
        status = (f"shared {r.shared} B" + ("  OVER THE LIMIT" if over else "")
                  + f", {r.registers} registers, stack {r.stack} B"
                  + ("  SPILLS" if r.stack else ""))
        status += "  (allowed for fp32)" if r.stack and r.dtype == "fp32" else ""
    print(f"{'FAIL' if _failed(r, limit) else 'ok  '} {what}: {status}", file=out, flush=True)


def _triton_version() -> str:
    import triton
    return triton.__version__


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ehrjepa.kernels.aot", description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200, 80: A100)")
    p.add_argument("--all", action="store_true",
                   help="every dtype (bf16, fp16, fp32) and head dim (32, 64, 128) and every candidate")
    p.add_argument("--dtype", action="append", choices=DTYPES,
                   help="only this dtype (repeatable)")
    p.add_argument("--head-dim", action="append", type=int, choices=(16, 32, 64, 128),
                   help="only this head dim (repeatable)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    return 1 if check(args.arch, args.all, json_path=args.json, dtypes=args.dtype,
                      dims=args.head_dim) else 0


if __name__ == "__main__":
    raise SystemExit(main())
