"""JEPA pretraining, top to bottom: processes, data, model, optimizer, resume, the step loop.

One process, or one per device under `torchrun --nproc_per_node N -m ehrjepa train ...` (DDP:
gloo on CPU, nccl on CUDA; rank 0 alone logs, validates and saves). CUDA runs bf16 autocast,
torch.compile and fused AdamW; CPU runs the same code eager in fp32 (deterministic for a seed).

Exact resume: a checkpoint holds the model (encoder, predictor, target encoder), the optimizer,
the step (the schedules are pure functions of it), the RNG states and the data position (epoch
and batches consumed). The sampler's order and the masks depend only on (seed, epoch, batch), so
a resumed run skips to the next batch and sees the same windows with the same masks. A damaged
last.pt falls back to the newest checkpoint that loads (train/run_folder.py).

The loss of every step is kept on the device and read back once per log interval (one host
sync), where NaN/inf is checked before anything is logged, validated or saved: a diverged run
stops with the step named and never overwrites a good checkpoint.

`train()` reads top to bottom: processes, seeds, data, model, restore, then the loop, whose
parts are the functions below it (train_step, read_back, validate, save_checkpoints); where the
run is lives in one `RunState`.
"""
from __future__ import annotations

import itertools
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from ehrjepa.config import Config, config_to_dict, save_config
from ehrjepa.device import resolve_device
from ehrjepa.models import build_model  # a module global, so tests can swap it
from ehrjepa.models.jepa import parameter_counts
from ehrjepa.models.checkpoint import check_data, save_checkpoint
from ehrjepa.train.rng import rng_state, set_rng_state
from ehrjepa.metrics_csv import read_metrics
from ehrjepa.train.metrics import MetricsLog, collapse_warning, rankme, target_std
from ehrjepa.train.run_folder import (checkpoint_candidates, clean_stale_temporaries, load_newest,
                                      require_checkpoints)
from ehrjepa.schedules import cosine, linear, lr_at


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or inf; the message names the step."""


class CheckpointWriteFailed(RuntimeError):
    """A checkpoint could not be written (e.g. a full disk); the message names the file and the
    last good checkpoint, which is left as it was."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during train(): a KeyboardInterrupt that says where the run stopped.
    `.step` is the step reached, `.saved_step` / `.saved_path` the newest checkpoint written (None
    before the first), so the caller can print one line with the resume command."""

    def __init__(self, step: int, saved_step: int | None, saved_path: Path | None):
        super().__init__(f"interrupted at step {step}")
        self.step, self.saved_step, self.saved_path = step, saved_step, saved_path


@dataclass
class RunState:
    """Where a run is. A checkpoint restores the first four; the rest is this invocation's."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the data position: epoch ...
    consumed: int = 0  # ... and batches of it already drawn (this rank)
    best_val: float = math.inf  # lowest validation loss so far
    best_score: float = -math.inf  # best.pt's value of train.select (higher is better)
    saved_step: int | None = None  # step of the newest checkpoint on disk ...
    saved_path: Path | None = None  # ... and its file
    last_loss: float | None = None  # the newest loss read back
    collapsed: bool = False  # the last validation was below the collapse guard's threshold
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# the parts the loop is built from (tests swap these for small stand-ins)


def open_data(cfg: Config):
    """(train samples, validation samples, number of features) from the processed data: fixed
    windows, or whole-stay crops when data.min_length < data.length. With data.extra the train
    samples also hold every extra folder's (its train split, or all its stays with
    data.extra_split=all), its features aligned by name to data.path's and normalised with
    data.path's statistics (ehrjepa/data/extra.py); validation is data.path's alone. The train
    set's `extra_lines` say, one line per extra folder, what it gave."""
    from ehrjepa.data import open_processed

    if not cfg.data.path:
        raise ValueError("data.path is not set: pass --data OUT (the folder `ehrjepa preprocess` wrote)")
    processed = open_processed(cfg.data.path)
    d, seed = cfg.data, cfg.train.seed
    train_set = _samples(cfg, processed, "train", seed, augment=True)
    val_set = _samples(cfg, processed, "val", seed + 1, augment=False)  # the seed: crops only
    if d.extra:
        train_set = _with_extra(cfg, processed, train_set)
    # what the checkpoints record of the data, so a resume or a probe can tell other data
    train_set.data_identity = (list(processed.features), int(processed.split_seed))
    return train_set, val_set, train_set.n_features


def _samples(cfg: Config, processed, split: str | None, seed: int, augment: bool):
    """data.path's (or an aligned extra folder's) samples of `split` (None: every stay)."""
    from ehrjepa.data.windows import StayCropDataset, WindowDataset

    d = cfg.data
    aug = d.augment if augment else None
    if whole_stays(cfg):
        return StayCropDataset(processed, split, d.length, d.min_length, d.crop, seed,
                               d.max_delta, augment=aug)
    return WindowDataset(processed, split, d.length, d.stride, d.max_delta, augment=aug, seed=seed)


def _with_extra(cfg: Config, processed, train_set):
    """`train_set` followed by the samples of every data.extra folder (TrainSamples); a folder
    that is missing, shares no feature with data.path or gives no sample is a ValueError
    naming it."""
    from ehrjepa.data import open_processed
    from ehrjepa.data.extra import AlignedProcessed, TrainSamples, extra_summary

    d = cfg.data
    split = None if d.extra_split == "all" else "train"
    primary = Path(d.path).resolve()
    parts, stay_counts, lines, seen = [train_set], [processed.n_stays], [], {primary}
    for k, folder in enumerate(d.extra):
        where = Path(folder).resolve()
        if where in seen:
            raise ValueError(f"data.extra: {folder} is "
                             + ("data.path itself" if where == primary else "listed twice"))
        seen.add(where)
        if not where.is_dir():
            raise ValueError(f"data.extra: {folder} does not exist (or is not a folder)")
        try:
            aligned = AlignedProcessed(open_processed(folder), processed)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"data.extra: {folder}: {e}") from None
        if not aligned.shared:
            names = aligned.source_features
            raise ValueError(f"data.extra: {folder} shares no feature with {d.path} (its "
                             f"features: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})")
        # its own seed for augmentation and random crops (the stay rows restart at 0)
        data = _samples(cfg, aligned, split, cfg.train.seed + 1000 * (k + 1), augment=True)
        if len(data) == 0:
            if data.n_stays == 0:
                why = ("it has no stays" if split is None or aligned.n_stays == 0 else
                       f"it has no train stays (data.extra_split=all takes all {aligned.n_stays} "
                       "of its stays)")
            elif whole_stays(cfg):
                why = f"none of its {data.n_stays} stays has {d.min_length} hours (data.min_length)"
            else:
                why = (f"none of its {data.n_stays} stays has {d.length} hours (data.length; "
                       "whole-stay crops, data.min_length < data.length, take shorter stays)")
            raise ValueError(f"data.extra: {folder} gives no training sample: {why}")
        parts.append(data)
        stay_counts.append(aligned.n_stays)
        lines.append(extra_summary(folder, data, aligned, d.extra_split))
    samples = TrainSamples(parts, stay_counts)
    samples.extra_lines = lines
    samples.n_primary = len(train_set)
    return samples


def whole_stays(cfg: Config) -> bool:
    """Samples are whole-stay crops (data.min_length < data.length), not fixed windows."""
    return cfg.data.min_length is not None and cfg.data.min_length < cfg.data.length


def make_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    from ehrjepa.models import param_groups

    return param_groups(model, weight_decay)


def make_collator(cfg: Config, seed: int):
    from ehrjepa.masks import MaskCollator

    return MaskCollator(cfg.mask, cfg.data.length, seed)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed + epoch, this rank's share, drop_last) that can start
    part-way into an epoch: `set_position(epoch, skip)` skips this rank's first `skip` windows."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=True)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def _quiet(msg: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------


def train(cfg: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
          on_validation=None) -> dict:
    """Pretrain a JEPA as `cfg` says, writing checkpoints and logs under `run_dir`.

    `on_validation(step, model, row)`, if given, is called on rank 0 after each validation step's
    row is logged and its checkpoints are written (a hyperparameter search reports intermediate
    values there; an exception it raises, e.g. a pruned trial, ends the run as any error would).

    Returns a summary dict (steps, final_loss, best_val_loss, checkpoint paths, warnings,
    already_finished). Raises TrainingDiverged when the loss becomes NaN/inf and
    CheckpointWriteFailed when a checkpoint cannot be written (the last good checkpoint stays).
    """
    t, d = cfg.train, cfg.data
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"

    # ---- processes: one, or one per device under torchrun -----------------------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    ddp = world > 1
    master = rank == 0
    device = resolve_device(t.device, local_rank)
    cuda = device.type == "cuda"
    if d.batch_size % world:
        raise ValueError(f"data.batch_size ({d.batch_size}) must be divisible by the number of "
                         f"processes ({world})")
    local_batch = d.batch_size // world
    budget = d.tokens_per_batch // world  # this rank's token budget; 0: batches of local_batch
    if d.tokens_per_batch and budget < d.length:
        raise ValueError(f"data.tokens_per_batch ({d.tokens_per_batch}) / {world} processes is "
                         f"below data.length ({d.length}): a batch must hold the longest sample")
    say = tqdm.write if master else _quiet
    check_run_folder(run_dir, resume)
    if master:
        stale = clean_stale_temporaries(run_dir)
        if stale:
            say(f"removed {len(stale)} temporary file(s) a killed run left in {run_dir}: "
                + ", ".join(p.name for p in stale))

    metrics = None
    own_group = False
    state = RunState()  # replaced by the checkpoint's on --resume
    threads = torch.get_num_threads()
    if not cuda and t.cpu_threads > 0:
        torch.set_num_threads(t.cpu_threads)
    try:
        if ddp and not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(device)
            dist.init_process_group(backend="nccl" if cuda else "gloo")
            own_group = True

        # ---- seeds: the same on every rank, so every replica starts identical ---------------
        torch.manual_seed(t.seed)
        np.random.seed(t.seed)
        random.seed(t.seed)
        if cuda:
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in fp32

        # ---- data ---------------------------------------------------------------------------
        train_set, val_set, n_features = open_data(cfg)
        identity = getattr(train_set, "data_identity", None)  # (features, split seed), if known
        collator = make_collator(cfg, seed=t.seed)
        loader_gen = torch.Generator()  # keeps the DataLoader off the global RNG
        if budget:
            sampler = make_budget_sampler(train_set, budget, world, rank, t.seed)
            steps_per_epoch = len(sampler.epoch_batches(0))
            if steps_per_epoch == 0:
                raise ValueError(f"the train split has {len(train_set)} samples, fewer than one "
                                 f"batch per process ({world})")
            loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collator,
                                num_workers=d.num_workers, pin_memory=cuda, generator=loader_gen)
            skip_unit = 1  # the sampler skips whole batches
            per_step = f"batches of up to {d.tokens_per_batch} tokens"
        else:
            if len(train_set) < d.batch_size:
                raise ValueError(f"the train split has {len(train_set)} windows of {d.length} hours, "
                                 f"fewer than one batch (data.batch_size={d.batch_size})")
            sampler = ResumableSampler(train_set, world, rank, seed=t.seed)
            steps_per_epoch = sampler.num_samples // local_batch
            loader = DataLoader(train_set, batch_size=local_batch, sampler=sampler,
                                collate_fn=collator, num_workers=d.num_workers, drop_last=True,
                                pin_memory=cuda, generator=loader_gen)
            skip_unit = local_batch  # the sampler skips windows
            per_step = f"batches of {d.batch_size}"

        # ---- model and optimizer ------------------------------------------------------------
        model = build_model(cfg, n_features).to(device)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = make_param_groups(model, t.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, fused=True if cuda else None)
        # which groups follow the weight decay schedule (biases and norms get none)
        decays = [g.get("name", "decay" if g["weight_decay"] > 0 else "no_decay") == "decay"
                  for g in optimizer.param_groups]

        counts = parameter_counts(model)
        say(f"parameters: encoder {counts['encoder'] / 1e6:.2f} M, predictor "
            f"{counts['predictor'] / 1e6:.2f} M, target encoder {counts['target_encoder'] / 1e6:.2f} M "
            f"(trained: {counts['trainable'] / 1e6:.2f} M)")
        what = "crops of whole stays" if whole_stays(cfg) else "windows"
        extra = getattr(train_set, "extra_lines", [])
        of = (f", {train_set.n_primary} from {d.path} and {len(train_set) - train_set.n_primary} "
              "from data.extra" if extra else "")
        say(f"data: {len(train_set)} train {what}{of} ({steps_per_epoch} {per_step} per epoch), "
            f"{len(val_set)} validation {what}, {n_features} features")
        for line in extra:
            say(line)

        # ---- resume -------------------------------------------------------------------------
        if resume:
            state = restore(run_dir, model, optimizer, cfg, n_features, identity, say)
        start_step = state.step
        if state.step >= t.max_steps:  # nothing left to do: report the run as it stands
            state.last_loss = last_logged_loss(run_dir / "metrics.csv", state.step)
            return _summary(cfg, run_dir, state, start_step, counts, world)
        end_step = t.max_steps if t.stop_after == 0 else min(t.max_steps, state.step + t.stop_after)

        # ---- device path: compile and DDP wrap the forward; the raw model is saved ----------
        forward = model
        if cuda and t.compile:
            forward = torch.compile(model, mode=t.compile_mode)
        if ddp:
            forward = torch.nn.parallel.DistributedDataParallel(
                forward, device_ids=[device.index] if cuda else None, broadcast_buffers=False)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and t.bf16
                    else nullcontext())
        mode = (f"bf16={t.bf16 and cuda}, compile={t.compile and cuda}"
                + (f" ({t.compile_mode})" if t.compile and cuda else ""))
        say(f"device: {device} x {world} process(es), {mode}"
            + (f"; CPU runs eager fp32, {torch.get_num_threads()} thread(s)" if not cuda else ""))

        # ---- the fixed validation batches and the logs (rank 0) -----------------------------
        val_batches = validation_batches(cfg, val_set, device, say) if master else []
        scorer, select = selection_scorer(cfg, say) if master and val_batches else (None, t.select)
        if master:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir / "config.yaml")
            # a fresh run drops the rows of an earlier attempt that died before its first checkpoint
            fresh_leftovers = (run_dir / "metrics.csv").exists()
            metrics = MetricsLog(run_dir, resume_step=state.step if resume or fresh_leftovers else None)
            say(f"run: {run_dir} (metrics.csv, tb/, checkpoints/), steps {state.step} -> {end_step} "
                f"of {t.max_steps}")

        # ---- the loop -----------------------------------------------------------------------
        bar = tqdm(total=end_step, initial=state.step, disable=not (master and progress),
                   desc="train", unit="step", dynamic_ncols=True)
        pending = []  # (step, loss, grad_norm, lr, wd, momentum) not yet read back
        last_stats = {}
        timer = time.perf_counter()
        data = batches(state, sampler, loader, loader_gen, collator, t.seed, skip_unit)
        samples = 0  # samples in the steps since the last read-back (this rank)
        while state.step < end_step:
            lr, wd, momentum = set_schedules(optimizer, decays, cfg, state.step)
            batch = _to_device(next(data), device)
            samples += batch["values"].shape[0]
            loss, grad_norm, last_stats = train_step(model, forward, optimizer, trainable, batch,
                                                     autocast, t.grad_clip, momentum, world)
            state.step += 1
            bar.update(1)
            pending.append((state.step, loss, grad_norm, lr, wd, momentum))

            step = state.step
            do_val = bool(val_batches) and (step % t.val_every == 0 or step == t.max_steps)
            do_ckpt = step % t.ckpt_every == 0 or step == end_step
            if not (step % t.log_every == 0 or do_ckpt or step % t.val_every == 0):
                continue

            # -- read back the pending steps (one sync), stop on NaN/inf before anything else
            per_batch = d.batch_size if not budget else samples * world / len(pending)
            row = read_back(pending, state, metrics, world, per_batch,
                            time.perf_counter() - timer)
            pending, samples = [], 0
            for k, v in last_stats.items():  # the model's own stats: TensorBoard only
                if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1):
                    row[f"stats/{k}"] = float(v)
            bar.set_postfix(loss=f"{state.last_loss:.4f}", lr=f"{lr:.2e}",
                            seq_s=f"{row['seq_per_s']:,.0f}")

            # -- validation and the collapse check (rank 0)
            if do_val and master:
                v = validate(model, val_batches, autocast, device)
                row.update({k: v[k] for k in ("val_loss", "rankme", "target_std")})
                if scorer is not None:
                    row["val_probe"] = scorer.score(model)
                collapse_guard(state, step, v, t)
            if ddp and step % t.val_every == 0:
                check_replicas(model, world, step)
            if metrics is not None:
                metrics.write(row)
                metrics.flush()

            # -- checkpoints (rank 0): step_N.pt, best.pt, last.pt, each its own file
            if master:
                paths = [ckpt_dir / f"step_{step:07d}.pt"] if step % t.ckpt_every == 0 else []
                if "val_loss" in row:
                    state.best_val = min(state.best_val, row["val_loss"])
                    score = selection_score(row, select)
                    best = score > state.best_score
                    if best:
                        state.best_score = score
                        paths.append(ckpt_dir / "best.pt")
                    metrics.write_validation(row, best)
                if paths or do_ckpt:
                    paths.append(ckpt_dir / "last.pt")
                    save_checkpoints(checkpoint_state(model, optimizer, cfg, state, n_features, world,
                                                      identity), paths, state)
                    _prune(ckpt_dir, t.keep_ckpts)
            if on_validation is not None and do_val and master:
                on_validation(step, model, row)
            timer = time.perf_counter()  # throughput leaves out validation and saving
        bar.close()
        if ddp:
            dist.barrier()
    except KeyboardInterrupt as e:  # Ctrl-C: the caller says where the run stopped, in one line
        if isinstance(e, TrainingInterrupted):
            raise
        raise TrainingInterrupted(state.step, state.saved_step, state.saved_path) from None
    finally:
        torch.set_num_threads(threads)
        if metrics is not None:
            metrics.close()
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
    return _summary(cfg, run_dir, state, start_step, counts, world)


# ---------------------------------------------------------------------------------------------
# the named steps of train(), in the order it calls them


def selection_scorer(cfg: Config, say):
    """(scorer, measure) of best.pt: for train.select=probe the sweep's ProbeScorer on the train
    and val splits (never test) of the run's data; (None, train.select) for the other measures,
    and (None, "rankme"), said once, where the data cannot make that probe (no such label, too
    few positives)."""
    t = cfg.train
    if t.select != "probe":
        return None, t.select
    from ehrjepa.sweep.objective import ProbeScorer

    hours = t.select_hours or cfg.data.length
    try:
        return ProbeScorer(cfg.data.path, t.select_task, hours), "probe"
    except (ValueError, KeyError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        say(f"train.select=probe: no probe on {t.select_task} over {hours} h ({reason}); "
            "best.pt is chosen by RankMe instead")
        return None, "rankme"


def selection_score(row: dict, select: str) -> float:
    """The value best.pt maximises at a validation row: -val_loss, RankMe or the val probe's
    AUROC (train.select; probe falls back to RankMe in a row without val_probe)."""
    if select == "loss":
        return -row["val_loss"]
    if select == "probe" and row.get("val_probe") is not None:
        return row["val_probe"]
    return row["rankme"]


def collapse_guard(state: RunState, step: int, v: dict, t) -> None:
    """Say on stderr, once per drop, when the validation RankMe (or target std) falls below the
    threshold (train.collapse_rankme x min(width, rows), train.collapse_std); a later validation
    above it re-arms the guard. The message also goes to the run's summary warnings."""
    warning = collapse_warning(v["rankme"], v["target_std"], v["_width"], v["_rows"],
                               t.collapse_rankme, t.collapse_std)
    if warning and not state.collapsed:
        state.warnings.append(f"step {step}: {warning}")
        tqdm.write(f"warning: step {step}: {warning}", file=sys.stderr)
    state.collapsed = warning is not None


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """--resume needs a checkpoint in `run_dir`; a new run needs a folder without one."""
    if resume:
        require_checkpoints(run_dir)
        return
    found = checkpoint_candidates(run_dir / "checkpoints")
    if found:
        raise FileExistsError(f"{run_dir} already holds a run ({found[0]}); pass --resume to "
                              "continue it or choose another --run-dir")


def restore(run_dir: Path, model, optimizer, cfg: Config, n_features: int,
            identity: tuple[list[str], int] | None, say) -> RunState:
    """Load the newest checkpoint that loads into `model`, `optimizer` and the RNGs; its RunState.

    The data must be the checkpoint's (feature names and order; the count for older checkpoints):
    ValueError naming the checkpoint, the data and the first difference otherwise. Says each
    config key that differs from the checkpoint's (old -> new), and warns on another split seed.
    """
    path, ckpt = load_newest(run_dir, say)
    where = cfg.data.path or "the data"
    try:
        if identity is not None:
            warnings = check_data(ckpt, identity[0], identity[1], where)
        else:  # a data stand-in that does not say its features: the count only
            warnings = check_data({"n_features": ckpt["n_features"]}, [""] * n_features, 0, where)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    changes = config_changes(ckpt["config"], cfg)
    for key, old, new in changes:
        say(f"config: {key} {old} -> {new} (changed since {path.name})")
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:  # the model's shape changed with the config
        changed = [k for k, _, _ in changes if k.startswith("model.") or k == "data.max_hours"]
        why = (f"the config changed {', '.join(changed)}" if changed
               else (str(e).strip().splitlines() or [type(e).__name__])[0])
        raise ValueError(f"{path}: the checkpoint's model does not fit this config ({why}); "
                         "resume with the checkpoint's values or start a new run in another "
                         "--run-dir") from None
    for w in warnings:
        say(f"warning: {w}")
    best = ckpt.get("best_val_loss")
    state = RunState(step=int(ckpt["step"]), epoch=int(ckpt["data_position"]["epoch"]),
                     consumed=int(ckpt["data_position"]["batches"]),
                     best_val=math.inf if best is None else float(best),
                     saved_step=int(ckpt["step"]), saved_path=path)
    chosen = ckpt.get("best_select") or {}  # best.pt's measure and value (older: the loss)
    if chosen.get("by") == cfg.train.select and chosen.get("value") is not None:
        state.best_score = float(chosen["value"])
    elif cfg.train.select == "loss" and best is not None:
        state.best_score = -float(best)
    elif best is not None or chosen:
        say(f"best.pt was chosen by {chosen.get('by', 'loss')}, this run chooses by "
            f"{cfg.train.select}: the next validation replaces it")
    set_rng_state(ckpt["rng"])
    say(f"resumed from {path} at step {state.step} (epoch {state.epoch}, batch {state.consumed})")
    return state


def config_changes(old_raw: dict, cfg: Config) -> list[tuple[str, str, str]]:
    """(dotted key, old value, new value) for each config key whose value in `cfg` differs from
    the checkpoint's config `old_raw` (keys an older checkpoint lacks take their defaults)."""
    from ehrjepa.config import ConfigError, config_from_dict

    try:
        old = config_to_dict(config_from_dict(old_raw, source="checkpoint config"))
    except ConfigError:  # a config this version cannot read: compare what is there
        old = old_raw
    new = config_to_dict(cfg)
    out = []

    def walk(a, b, prefix):
        for key in list(b) + [k for k in a if k not in b]:
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                walk(x, y, f"{prefix}{key}.")
            elif x != y:
                out.append((f"{prefix}{key}", _show(x), _show(y)))

    walk(old if isinstance(old, dict) else {}, new, "")
    return out


def _show(value) -> str:
    if isinstance(value, str):
        return repr(value) if value else "''"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def last_logged_loss(metrics_csv: Path, step: int) -> float | None:
    """The newest loss in metrics.csv at or before `step` (None when there is none)."""
    if not metrics_csv.is_file():
        return None
    losses = [r["loss"] for r in read_metrics(metrics_csv)
              if r.get("loss") is not None and r["step"] <= step]
    return losses[-1] if losses else None


def validation_batches(cfg: Config, val_set, device: torch.device, say) -> list[dict]:
    """The fixed validation batches: the same windows and masks at every validation (with
    data.tokens_per_batch: the first val_batches token-budget batches of epoch 0)."""
    d, seed = cfg.data, cfg.train.seed
    if d.val_batches == 0:
        return []
    if len(val_set) == 0:
        say("warning: the val split has no windows; validation is off")
        return []
    if d.tokens_per_batch:
        sampler = make_budget_sampler(val_set, d.tokens_per_batch, 1, 0, seed)
        chunks = [b.tolist() for b in sampler.epoch_batches(0)[: d.val_batches]]
    else:
        order = torch.randperm(len(val_set), generator=torch.Generator().manual_seed(seed))
        chunks = [c.tolist() for c in order[: d.val_batches * d.batch_size].split(d.batch_size)]
    collator = make_collator(cfg, seed=seed + 1)
    if hasattr(collator, "set_epoch"):
        collator.set_epoch(0)
    if hasattr(val_set, "set_epoch"):
        val_set.set_epoch(0)
    return [_to_device(collator([val_set[i] for i in chunk]), device) for chunk in chunks]


def make_budget_sampler(dataset, tokens: int, world: int, rank: int, seed: int):
    """Token-budget batches of `dataset` for one rank (ehrjepa.data.batches)."""
    from ehrjepa.data.batches import TokenBudgetBatchSampler

    return TokenBudgetBatchSampler(dataset.sample_lengths, tokens, world, rank, seed)


def batches(state: RunState, sampler, loader, loader_gen, collator, seed: int, local_batch: int):
    """Batches forever from the data position in `state` (epoch, consumed), which they advance.
    `local_batch`: what the sampler skips per batch consumed (windows, or 1 for a batch sampler).
    The dataset's epoch (random crops) is set before each epoch's iterator copies it to workers."""
    while True:
        sampler.set_position(state.epoch, state.consumed * local_batch)
        loader_gen.manual_seed(seed + state.epoch)
        if hasattr(collator, "set_epoch"):
            collator.set_epoch(state.epoch)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(state.epoch)
        for batch in loader:
            state.consumed += 1
            yield batch
        state.epoch, state.consumed = state.epoch + 1, 0


def set_schedules(optimizer, decays: list[bool], cfg: Config, step: int):
    """Set this step's learning rate and weight decay on the optimizer; (lr, wd, EMA momentum)."""
    t = cfg.train
    lr = lr_at(step, t.lr, t.min_lr, t.warmup_steps, t.max_steps)
    wd = cosine(step, t.weight_decay, t.weight_decay_end, t.max_steps)
    momentum = linear(step, t.momentum, t.momentum_end, t.max_steps)
    for g, decay in zip(optimizer.param_groups, decays):
        g["lr"] = lr
        g["weight_decay"] = wd if decay else 0.0
    return lr, wd, momentum


def train_step(model, forward, optimizer, trainable, batch: dict, autocast, grad_clip: float,
               momentum: float, world: int = 1):
    """One optimizer step and the EMA update; (loss, grad norm, stats), left on the device.

    Under DDP (world > 1) each rank's loss, a mean over its own target tokens, is weighted by
    the rank's share of the step's target tokens before DDP averages the gradients with equal
    weight, so the step follows the mean over every target token of the global batch, as one
    process holding the whole batch would. Token-budget batches need this: ranks get batches of
    different lengths and sample counts, hence different numbers of targets, and equal weights
    would count each target of a rank with few targets more. The loss returned is the weighted
    one, so its mean over ranks (read_back) is that global mean."""
    with autocast:
        loss, stats = forward(batch)
    if world > 1:
        loss = loss * target_share(stats["n_targets"], world)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip if grad_clip > 0 else math.inf)
    optimizer.step()
    model.momentum_update(momentum)
    # clones: with CUDA graphs (compile_mode=reduce-overhead) the next replay overwrites outputs
    return loss.detach().float().clone(), grad_norm.detach().float().clone(), stats


def target_share(n_targets: torch.Tensor, world: int) -> torch.Tensor:
    """world x this rank's fraction of all ranks' target tokens (1 when every rank has as many):
    one small all_reduce on the device, no host sync."""
    total = n_targets.detach().float().clone()
    dist.all_reduce(total)
    return n_targets.detach().float() * world / total.clamp(min=1.0)


def read_back(pending: list, state: RunState, metrics, world: int, batch_size: int,
              elapsed: float) -> dict:
    """Bring the pending losses to the host (one sync), stop on NaN/inf, log all but the newest
    step; return the newest step's row (the caller adds validation to it)."""
    losses = torch.stack([p[1] for p in pending])
    norms = torch.stack([p[2] for p in pending])
    if world > 1:  # the mean over all target tokens (train_step weighted each rank's loss by its
        # share of them); every rank sees the same value, so all stop at the same step
        dist.all_reduce(losses)
        losses /= world
    losses, norms = losses.tolist(), norms.tolist()
    seq_per_s = len(pending) * batch_size / max(elapsed, 1e-9)
    for (s, _, _, lr, wd, momentum), loss, norm in zip(pending, losses, norms):
        if not (math.isfinite(loss) and math.isfinite(norm)):
            what, value = ("loss", loss) if not math.isfinite(loss) else ("gradient norm", norm)
            raise TrainingDiverged(f"{what} is {value} at step {s}; training stopped, {_kept(state)}")
        if metrics is not None and s != state.step:  # the newest step's row is written later
            metrics.write({"step": s, "loss": loss, "lr": lr, "wd": wd, "momentum": momentum,
                           "grad_norm": norm, "seq_per_s": seq_per_s})
    state.last_loss = losses[-1]
    s, _, _, lr, wd, momentum = pending[-1]
    return {"step": s, "loss": losses[-1], "lr": lr, "wd": wd, "momentum": momentum,
            "grad_norm": norms[-1], "seq_per_s": seq_per_s}


def validate(model, val_batches: list[dict], autocast, device: torch.device) -> dict:
    """Validation loss, RankMe and target std on the fixed batches (rank 0)."""
    model.eval()
    with torch.no_grad(), autocast, torch.random.fork_rng(
            devices=[device] if device.type == "cuda" else []):
        losses, embs = [], []
        for b in val_batches:
            losses.append(model(b)[0].float())
            e = model.embed(b["values"], b["observed"], b["delta"], encoder="target",
                            lengths=b.get("lengths"))
            if "lengths" in b:  # the real hours only, not the padding
                valid = torch.arange(e.shape[1], device=e.device)[None, :] < b["lengths"][:, None]
                embs.append(e.float()[valid])
            else:
                embs.append(e.float().reshape(-1, e.shape[-1]))
        emb = torch.cat(embs)
        out = {"val_loss": float(torch.stack(losses).mean()), "rankme": rankme(emb),
               "target_std": target_std(emb), "_rows": emb.shape[0], "_width": emb.shape[1]}
    model.train()
    return out


def check_replicas(model, world: int, step: int) -> None:
    """Every rank must hold the same EMA target encoder (DDP keeps them in step)."""
    sums = torch.stack([p.detach().double().sum() for p in model.target_encoder.parameters()])
    gathered = [torch.empty_like(sums) for _ in range(world)]
    dist.all_gather(gathered, sums)
    if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError(f"step {step}: the EMA target encoders differ across ranks")


def checkpoint_state(model, optimizer, cfg: Config, state: RunState, n_features: int,
                     world: int, identity: tuple[list[str], int] | None = None) -> dict:
    """What a checkpoint holds: enough to resume exactly (max_hours is the config's), and the
    data's feature names and split seed (`identity`) so other data is refused (check_data)."""
    data = {} if identity is None else {"features": list(identity[0]), "split_seed": int(identity[1])}
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": state.step,
        "config": config_to_dict(cfg),
        "rng": rng_state(),
        "data_position": {"epoch": state.epoch, "batches": state.consumed},
        "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
        "best_select": {"by": cfg.train.select,
                        "value": state.best_score if math.isfinite(state.best_score) else None},
        "n_features": n_features,
        **data,
        "world_size": world,
    }


def save_checkpoints(ckpt: dict, paths: list[Path], state: RunState) -> None:
    """Write `ckpt` to each path, each file on its own (atomic; no shared storage). A failed
    write (a full disk) raises CheckpointWriteFailed naming the file and the last good one."""
    for path in paths:
        try:
            save_checkpoint(ckpt, path)
        except (OSError, RuntimeError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise CheckpointWriteFailed(f"cannot write checkpoint {path}: {reason}; "
                                        f"{_kept(state)}") from None
        state.saved_step, state.saved_path = state.step, path


def _kept(state: RunState) -> str:
    if state.saved_path is None:
        return "no checkpoint was written"
    return f"the last good checkpoint is {state.saved_path} (step {state.saved_step})"


def _prune(ckpt_dir: Path, keep: int) -> None:
    """Keep the newest `keep` step_*.pt files (0 keeps all); last.pt and best.pt stay."""
    if keep <= 0:
        return
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
        old.unlink()


def _summary(cfg: Config, run_dir: Path, state: RunState, start_step: int, counts: dict,
             world: int) -> dict:
    ckpt_dir = run_dir / "checkpoints"
    t = cfg.train
    return {
        "run_dir": str(run_dir),
        "steps": state.step,
        "start_step": start_step,
        "max_steps": t.max_steps,
        "stopped_early": state.step < t.max_steps,
        "already_finished": start_step >= t.max_steps,
        "final_loss": state.last_loss,
        "best_val_loss": state.best_val if math.isfinite(state.best_val) else None,
        "best_select": {"by": t.select,
                        "value": state.best_score if math.isfinite(state.best_score) else None},
        "last": str(ckpt_dir / "last.pt") if (ckpt_dir / "last.pt").exists() else None,
        "best": str(ckpt_dir / "best.pt") if (ckpt_dir / "best.pt").exists() else None,
        "warnings": state.warnings,
        "parameters": counts,
        "world_size": world,
    }
