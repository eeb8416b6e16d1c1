"""Shared test setup.

Without a GPU the Triton kernels run in the interpreter, which must be switched on before any
kernel module is imported. Benchmarks that tests run record their rows in a temporary results
file, never in the committed bench/results.csv.
"""
import os
from pathlib import Path

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _old_interpreter_shims():
    """Two fixes that Triton 3.8 made to its interpreter, applied here for older ones (the GPU
    image has 3.6); they change the tests' interpreter only, never a compiled kernel:
    - __index__ called int() on a one-element NumPy array (`range(0, hi, BLOCK)` with `hi` from
      tl.where), which NumPy >= 2.4 rejects ("only 0-dimensional arrays can be converted"): squeeze
      the array first;
    - tl.fma multiplied, rounded, then added, where a GPU's fma rounds once: the EMA's 1-ulp tests
      would measure that, not the kernel. Compute it in float64 (an fp32 product is exact there)."""
    try:
        import numpy as np
        import triton
        from triton.runtime import interpreter
    except ImportError:
        return
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    major, minor = (int(v) for v in triton.__version__.split(".")[:2])
    if patch is None or (major, minor) >= (3, 8):
        return

    def patch_with_squeeze(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    def fma_rounding_once(self, x, y, z):
        exact = np.multiply(x.data, y.data, dtype=np.float64) + z.data.astype(np.float64)
        return interpreter.TensorHandle(exact.astype(z.data.dtype), z.dtype.scalar)
    interpreter._patch_lang_tensor = patch_with_squeeze
    interpreter.InterpreterBuilder.create_fma = fma_rounding_once


if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    _old_interpreter_shims()

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO.parent / "shared" / "mimic-iv-demo-2.2"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The public MIMIC-IV demo beside the checkout; tests that need it skip where it is absent."""
    if not (DEMO_DIR / "hosp" / "labevents.csv.gz").exists():
        pytest.skip(f"MIMIC-IV demo not found at {DEMO_DIR}")
    return DEMO_DIR


@pytest.fixture(scope="session", autouse=True)
def results_csv(tmp_path_factory) -> Path:
    """EHRJEPA_RESULTS for the whole session (child processes inherit it)."""
    path = tmp_path_factory.mktemp("results") / "results.csv"
    saved = os.environ.get("EHRJEPA_RESULTS")
    os.environ["EHRJEPA_RESULTS"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("EHRJEPA_RESULTS", None)
    else:
        os.environ["EHRJEPA_RESULTS"] = saved
