"""Benchmarks: `python -m bench {preprocess,kernels,train_step} [args]` (run from the repo root)."""
