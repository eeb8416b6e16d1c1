"""torch.profiler tables for the benchmarks: what each variant spends its (device) time on.

Written beside a benchmark's JSON (`python -m bench kernels --profile DIR`, `python -m bench
train_step --profile DIR`), so a GPU run that misses a target also says where the time went.
"""
from __future__ import annotations

import os


def profile(variants, names, path, calls=5):
    """torch.profiler table (device and host time per op, sorted by device time on CUDA, else by
    CPU time) of `calls` calls of each named variant, written atomically to path."""
    import torch
    from torch.profiler import ProfilerActivity

    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sort_by = "device_time_total" if cuda else "cpu_time_total"
    parts = []
    for name in names:
        if name not in variants:
            continue
        fn = variants[name]
        fn()  # outside the profile: first-call work (compiles, plans, autotuning)
        sync()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(calls):
                fn()
            sync()
        table = prof.key_averages().table(sort_by=sort_by, row_limit=30, max_name_column_width=70)
        parts.append(f"=== {name}: {calls} calls\n{table}\n")
    with open(path + ".tmp", "w") as fh:
        fh.write("\n".join(parts))
    os.replace(path + ".tmp", path)
