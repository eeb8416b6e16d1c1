"""MIMIC-IV data: feature catalog, table reading, preprocessing, the processed format, windows.

Names are imported lazily (module __getattr__), so `import ehrjepa.data` is cheap and does not
pull in torch or numba until a name is used. The pipeline is `ehrjepa.data.preprocess.preprocess`:
not re-exported here, because importing the module `ehrjepa.data.preprocess` would replace a
re-exported function of the same name on this package.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "open_processed": "ehrjepa.data.processed",
    "Processed": "ehrjepa.data.processed",
    "load_catalog": "ehrjepa.data.catalog",
    "Catalog": "ehrjepa.data.catalog",
    "WindowDataset": "ehrjepa.data.windows",
    "StayCropDataset": "ehrjepa.data.windows",
    "TokenBudgetBatchSampler": "ehrjepa.data.batches",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ehrjepa.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
