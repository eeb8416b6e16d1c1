"""DDP on CPU: `torchrun --nproc_per_node 2 -m ehrjepa train` (gloo) trains like one process
with the same global batch; with token-budget batches of whole stays, the ranks share every
sample once per epoch, resume exactly, and weight their losses by their target tokens.

`python tests/test_ddp.py DATA OUT` under torchrun is the worker of the whole-stay test."""
import json
import os
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from ehrjepa.config import load_config
from ehrjepa.train import train
from ehrjepa.models.checkpoint import load_checkpoint
from ehrjepa.metrics_csv import read_metrics

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "configs" / "micro.yaml"
OVERRIDES = ["data.batch_size=16", "data.val_batches=1", "train.max_steps=6", "train.warmup_steps=2",
             "train.log_every=1", "train.val_every=3", "train.ckpt_every=3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 synthetic patients, preprocessed (shared by the tests of this file)."""
    from ehrjepa.data.preprocess import preprocess
    from ehrjepa.synth import write_synthetic

    root = tmp_path_factory.mktemp("ddp_data")
    write_synthetic(root / "mimic", 40, seed=1, progress=False)
    return preprocess(root / "mimic", root / "processed", progress=False)


def test_torchrun_two_gloo_processes_match_one_process(tmp_path, data):
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


# ---- whole stays: token-budget batches under DDP ----------------------------------------------

# crops of up to 48 hours, 384 tokens per step (192 per rank): a few batches per rank per epoch
# on 40 patients. The worker runs two epochs and one step (E = batches per epoch), and stops the
# split run at step E + 1, one batch into the second epoch.
WHOLE_STAYS = ["data.length=48", "data.min_length=6", "data.max_hours=48", "data.crop=random",
               "data.tokens_per_batch=384", "data.augment.drop=0.1", "data.val_batches=1",
               "mask.context_fraction=0.75", "mask.target_hours=12", "train.warmup_steps=2",
               "train.log_every=1", "train.val_every=1000", "train.ckpt_every=1000"]


def test_whole_stays_under_ddp_share_every_sample_resume_exactly_and_weight_by_targets(tmp_path, data):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__)), str(data), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    # every train sample once per epoch, on one rank: the union of the ranks' first epochs
    per_epoch = ranks[0]["batches_per_epoch"]
    assert per_epoch == ranks[1]["batches_per_epoch"] and per_epoch > 1
    steps = 2 * per_epoch + 1
    for epoch in range(2):
        seen = [stay for r in ranks
                for batch in r["straight"][epoch * per_epoch:(epoch + 1) * per_epoch]
                for stay, _ in batch]
        assert sorted(seen) == sorted(ranks[0]["samples"])  # disjoint ranks, nothing left out
    # resume mid-epoch: the stopped-and-resumed run drew the same crops in the same batches ...
    for r in ranks:
        assert len(r["straight"]) == steps and r["split"] == r["straight"]
    stopped = torch.load(tmp_path / "stopped.pt", weights_only=True)
    assert stopped["step"] == per_epoch + 1 and stopped["data_position"] == {"epoch": 1, "batches": 1}
    # ... and gave the same losses and the same model
    a, b = (read_metrics(tmp_path / name / "metrics.csv") for name in ("straight", "split"))
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, steps + 1))
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=0, atol=1e-6)
    assert all(np.isfinite(r["loss"]) for r in a)
    ca, cb = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("straight", "split"))
    assert ca["world_size"] == 2 and ca["step"] == cb["step"] == steps
    for k, v in ca["model"].items():
        torch.testing.assert_close(cb["model"][k], v, rtol=0, atol=1e-6)

    # the loss: rank 0 held six short stays, rank 1 two long ones; the DDP gradient is the mean
    # over all their target tokens (targets-weighted), not the mean of the two ranks' means
    w = torch.load(tmp_path / "weights.pt", weights_only=True)
    n0, n1 = (float(n) for n in w["n_targets"])
    assert n0 != n1
    for got, g0, g1 in zip(w["ddp"], *w["single"]):
        torch.testing.assert_close(got, (n0 * g0 + n1 * g1) / (n0 + n1), rtol=1e-4, atol=1e-7)
    gap = [float((got - (g0 + g1) / 2).norm() / got.norm().clamp(min=1e-12))
           for got, g0, g1 in zip(w["ddp"], *w["single"])]
    assert max(gap) > 0.05  # equal weights would give a different gradient


def _worker(data: str, out: str) -> None:
    """Under torchrun: the loss-weighting check, then the straight and the split whole-stay runs,
    recording the (stay, crop start) of every sample this rank trains on."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from ehrjepa.train import loop

    out = Path(out)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = load_config(MICRO, WHOLE_STAYS + [f"data.path={data}"])

    # one step of two ranks with different numbers of target tokens, against one process
    train_set, _, n_features = loop.open_data(cfg)
    collator = loop.make_collator(cfg, seed=0)
    order = np.argsort(train_set.sample_lengths, kind="stable")
    parts = [collator([train_set[int(i)] for i in chunk]) for chunk in (order[:6], order[-2:])]
    torch.manual_seed(0)
    model = loop.build_model(cfg, n_features)
    trainable = [p for p in model.parameters() if p.requires_grad]
    single, n_targets = [], []
    for part in parts:
        model.zero_grad()
        loss, stats = model(part)
        loss.backward()
        single.append([p.grad.clone() for p in trainable])
        n_targets.append(int(stats["n_targets"]))
    optimizer = torch.optim.SGD(trainable, lr=0.0)
    loop.train_step(model, DistributedDataParallel(model), optimizer, trainable, parts[rank],
                    nullcontext(), 0.0, 1.0, world)
    if rank == 0:
        torch.save({"ddp": [p.grad.clone() for p in trainable], "single": single,
                    "n_targets": n_targets}, out / "weights.pt")

    # whole-stay runs: straight through two epochs and a step; stopped after one epoch and a
    # step, then resumed
    sampler = loop.make_budget_sampler(train_set, cfg.data.tokens_per_batch // world, world, rank,
                                       cfg.train.seed)
    per_epoch = len(sampler.epoch_batches(0))
    steps = [f"data.path={data}", f"train.max_steps={2 * per_epoch + 1}"]
    cfg = load_config(MICRO, WHOLE_STAYS + steps)
    seen = []
    real_step = loop.train_step

    def recording_step(model, forward, optimizer, trainable, batch, *args):
        seen.append(list(zip(batch["stay"].tolist(), batch["start"].tolist())))
        return real_step(model, forward, optimizer, trainable, batch, *args)

    loop.train_step = recording_step
    loop.train(cfg, out / "straight", progress=False)
    straight, seen[:] = list(seen), []
    loop.train(load_config(MICRO, WHOLE_STAYS + steps + [f"train.stop_after={per_epoch + 1}"]),
               out / "split", progress=False)
    if rank == 0:  # the checkpoint the resume starts from (the resumed run overwrites last.pt)
        shutil.copyfile(out / "split" / "checkpoints" / "last.pt", out / "stopped.pt")
    dist.barrier()
    loop.train(cfg, out / "split", resume=True, progress=False)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "straight": straight, "split": seen, "batches_per_epoch": per_epoch,
        "samples": train_set.stay_rows.tolist()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
