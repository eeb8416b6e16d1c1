"""DDP on CPU: `torchrun --nproc_per_node 2 -m ehrjepa train` (gloo) trains like one process
with the same global batch."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from ehrjepa.config import load_config
from ehrjepa.train import train
from ehrjepa.models.checkpoint import load_checkpoint
from ehrjepa.metrics_csv import read_metrics

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "configs" / "micro.yaml"
OVERRIDES = ["data.batch_size=16", "data.val_batches=1", "train.max_steps=6", "train.warmup_steps=2",
             "train.log_every=1", "train.val_every=3", "train.ckpt_every=3"]


def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    from ehrjepa.data.preprocess import preprocess
    from ehrjepa.synth import write_synthetic

    write_synthetic(tmp_path / "mimic", 40, seed=1, progress=False)
    data = preprocess(tmp_path / "mimic", tmp_path / "processed", progress=False)
    ddp_run, single_run = tmp_path / "ddp", tmp_path / "single"

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ehrjepa", "train", "--config", str(MICRO), "--data", str(data),
           "--run-dir", str(ddp_run), "--no-progress"]
    for o in OVERRIDES:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("parameters: encoder") == 1  # rank 0 alone reports
    assert "x 2 process(es)" in done.stdout and "6 of 6 steps" in done.stdout

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(MICRO, OVERRIDES + [f"data.path={data}"]), single_run, progress=False)
    finally:
        torch.set_num_threads(n)

    ddp_rows = read_metrics(ddp_run / "metrics.csv")
    single_rows = read_metrics(single_run / "metrics.csv")
    assert [r["step"] for r in ddp_rows] == list(range(1, 7))  # one writer: one row per step
    # each rank took half of every global batch (DistributedSampler) and the gradients were
    # averaged: the same per-step losses as one process with the whole batch, up to rounding
    np.testing.assert_allclose([r["loss"] for r in ddp_rows], [r["loss"] for r in single_rows],
                               rtol=1e-4, atol=1e-6)
    assert ddp_rows[-1]["loss"] < ddp_rows[0]["loss"]
    a = load_checkpoint(ddp_run / "checkpoints" / "last.pt")
    b = load_checkpoint(single_run / "checkpoints" / "last.pt")
    assert a["world_size"] == 2 and a["step"] == 6
    for k, v in b["model"].items():
        if k.startswith("target_encoder."):  # the EMA target followed the same path
            torch.testing.assert_close(a["model"][k], v, rtol=1e-4, atol=1e-5)
