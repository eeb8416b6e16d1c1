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
