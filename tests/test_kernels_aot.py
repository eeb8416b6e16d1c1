"""The Triton kernels lower all the way to an sm_90 cubin, within the H100's shared memory.

The interpreter tests run the kernels' Python bodies, which proves their numerics but not that
Triton can compile them: this compiles them ahead of time for sm_90 (no GPU needed), with the
launch configurations the CUDA path picks first. It runs `python -m ehrjepa.kernels.aot` in a
child process, because Triton fixes at import whether it interprets, and this session does.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the Triton build
        pytest.skip("this Triton has no ahead-of-time compile API")
    path = tmp_path_factory.mktemp("aot") / "sm90.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-m", "ehrjepa.kernels.aot", "--arch", "90",
                           "--json", str(path)], env=env, capture_output=True, text=True,
                          timeout=900)
    if not path.exists():
        pytest.fail(f"the ahead-of-time compile wrote nothing:\n{proc.stdout}\n{proc.stderr}")
    report = json.loads(path.read_text())
    report["returncode"], report["stdout"] = proc.returncode, proc.stdout
    return report


def _pick_all(report, dtype):
    return [r for r in report["results"] if r["dtype"] == dtype]


def _pick(report, kernel, dtype):
    return [r for r in report["results"] if r["kernel"] == kernel and r["dtype"] == dtype]


def test_every_kernel_compiles_within_the_h100_shared_memory(sm90):
    assert sm90["returncode"] == 0, sm90["stdout"]
    assert {r["kernel"] for r in sm90["results"]} == {"fwd", "dkdv", "dq", "delta", "ema"}
    for r in sm90["results"]:
        assert r["error"] is None, r
        assert r["shared"] <= sm90["shared_limit"], r


def test_every_path_compiles_in_bf16_without_spilling(sm90):
    """The identity, unique-gather and atomic variants of the backward (identity and gather of
    the forward) all lower, and no bf16 kernel spills registers to local memory (its stack, read
    from the cubin, is empty)."""
    paths = {(r["kernel"], r["path"]) for r in _pick_all(sm90, "bf16")}
    assert {("fwd", "identity"), ("fwd", "gather")} <= paths
    for kernel in ("dkdv", "dq"):
        assert {(kernel, p) for p in ("identity", "unique", "atomic")} <= paths
    for r in _pick_all(sm90, "bf16"):
        if r["registers"] is None:
            pytest.skip("this Triton ships no cuobjdump: registers unknown")
        assert r["stack"] == 0 and 0 < r["registers"] <= 255, r


@pytest.mark.parametrize("kernel", ["fwd", "dkdv", "dq"])
def test_attention_uses_tensor_cores_and_wide_loads(sm90, kernel):
    for r in _pick(sm90, kernel, "bf16"):
        assert r["mma"], r  # the dots became tensor-core instructions, not scalar FMA loops
        # rows of D contiguous bf16: 16-byte accesses (straight to registers or async to shared)
        assert r["v4_loads"] or r["cp_async"], r
    assert _pick(sm90, kernel, "bf16")


@pytest.mark.parametrize("online", ["fp32", "bf16"])
def test_ema_moves_16_bytes_per_access(sm90, online):
    (r,) = _pick(sm90, "ema", online)
    assert r["v4_loads"] and r["v4_stores"], r  # a bandwidth-bound kernel


def test_refuses_to_run_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", "from ehrjepa.kernels import aot; "
                           "from ehrjepa.kernels import ema; aot._jit(ema, '_ema_kernel')"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "TRITON_INTERPRET" in proc.stderr
