"""Fine-tuning: an encoder and a small head trained end to end on one task (jepa_finetune, scratch).

The classifier mean-pools the encoder's hour embeddings over the stay's first hours (the hours the
frozen probe embeds) and puts a head on the pooled vector: linear by default (the fewest new
weights, so what is learned is mostly the encoder's), or with `head="mlp"` one hidden layer of
the encoder's width. It is trained with binary cross-entropy, AdamW (weight decay on matrices
only), a linear warmup then a cosine decay of the learning rate, gradient clipping, and early
stopping: the validation AUROC is measured every `eval_every` steps, training stops after
`patience` measurements without a new best, and the best weights are kept.

The budget is in epochs over the training stays (`max_epochs`), held between `min_steps` and
`max_steps`, and the learning-rate schedule spans that budget. A fixed number of steps suited no
size: 400 steps were 15 epochs of 2,000 patients' 1,650 training stays, where fine-tuning at
fraction 1 still improved at its last step (docs/results.md, "Label efficiency and fine-tuning"),
and 1.6 epochs of 20,000 patients'; at fraction 0.05 they were 300 epochs of 80 stays, which early
stopping cut anyway. With 30 epochs the 2,000-patient run gets 780 steps (about a minute and a half
of micro on 2 CPU cores when it is not stopped early), small fractions 200, and large data at most
1,200: early stopping, not the step count, ends most runs.

`jepa_finetune` starts from a pretrained encoder (the probe's: the EMA target encoder by default,
the one the frozen probe reads; `encoder="context"` for the context encoder), `scratch` from the
untrained encoder of the same architecture (random_init's); both get the same Settings (steps,
learning-rate schedule, early stopping), the same batches and the same subsamples, so the
difference between them is what pretraining brought.

Stays are addressed by row numbers into one `StayWindows` (the hours [0, hours) of every cohort
stay, built once), so the probe's fitting code subsamples them like any feature matrix.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ehrjepa.models import param_groups
from ehrjepa.probe.metrics import ranked_metrics
from ehrjepa.schedules import lr_at

HEADS = ("linear", "mlp")


@dataclass(frozen=True)
class Settings:
    """The budget every fine-tuned method gets alike: `steps_for(n_train)` steps."""
    max_epochs: float = 30.0     # passes over the training stays ...
    min_steps: int = 200         # ... but at least this many steps (tiny label fractions)
    max_steps: int = 1200        # ... and at most this many (large data: early stopping decides)
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 5e-5
    warmup_steps: int = 40
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 25
    patience: int = 4            # validation measurements without a new best AUROC before stopping
    head: str = "linear"
    head_lr_scale: float = 1.0   # the head's learning rate is lr x this (the encoder's is lr)

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, not {self.head!r}")
        for name in ("max_steps", "min_steps", "batch_size", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, not {getattr(self, name)}")
        if not self.max_epochs > 0:
            raise ValueError(f"max_epochs must be > 0, not {self.max_epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, not {self.lr}")
        if not self.head_lr_scale > 0:
            raise ValueError(f"head_lr_scale must be > 0, not {self.head_lr_scale}")

    def as_dict(self) -> dict:
        return asdict(self)

    def steps_for(self, n_train: int) -> int:
        """The steps of a run on `n_train` stays: max_epochs epochs of ceil(n_train / batch_size) steps,
        at least min_steps (but never more than max_steps) and at most max_steps."""
        epochs = math.ceil(self.max_epochs * math.ceil(n_train / self.batch_size))
        return min(self.max_steps, max(self.min_steps, epochs))


def make_head(inputs: int, width: int, head: str = "linear") -> nn.Module:
    """The head of a fine-tuned model: a linear map of `inputs` features to one logit, or (mlp)
    one hidden layer of the encoder's `width` first."""
    if head == "linear":
        return nn.Linear(inputs, 1)
    if head == "mlp":
        return nn.Sequential(nn.Linear(inputs, width), nn.GELU(), nn.Linear(width, 1))
    raise ValueError(f"head must be one of {', '.join(HEADS)}, not {head!r}")


class Classifier(nn.Module):
    """encoder -> mean over hours -> head: one logit per stay."""

    def __init__(self, encoder: nn.Module, width: int, head: str = "linear"):
        super().__init__()
        self.encoder = encoder
        self.head = make_head(width, width, head)

    def forward(self, values, observed, delta):
        hidden = self.encoder(values, observed, delta)       # [B, T, D], every hour
        return self.head(hidden.float().mean(dim=1)).squeeze(-1)


class StayWindows:
    """values, observed, delta [N, hours, F] of every stay of some WindowDatasets, in memory."""

    def __init__(self, values: torch.Tensor, observed: torch.Tensor, delta: torch.Tensor):
        self.values, self.observed, self.delta = values, observed, delta

    @classmethod
    def from_datasets(cls, datasets: dict) -> tuple["StayWindows", dict[str, np.ndarray]]:
        """(windows of every item of every dataset, {name: the rows of that dataset's items})."""
        parts, rows, start = {"values": [], "observed": [], "delta": []}, {}, 0
        for name, dataset in datasets.items():
            for i in range(len(dataset)):
                item = dataset[i]
                for key in parts:
                    parts[key].append(item[key])
            rows[name] = np.arange(start, start + len(dataset), dtype=np.int64)
            start += len(dataset)
        if start == 0:
            return cls(*(torch.zeros(0, 0, 0) for _ in parts)), rows
        return cls(*(torch.stack(parts[key]) for key in parts)), rows

    def __len__(self) -> int:
        return len(self.values)

    def batch(self, rows: np.ndarray, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return tuple(t[index].to(device, non_blocking=True) for t in (self.values, self.observed, self.delta))


@torch.inference_mode()
def scores(model: Classifier, windows: StayWindows, rows: np.ndarray, device, batch_size: int = 512) -> np.ndarray:
    """Logits float64 [len(rows)] of the stays at `rows`, in eval mode."""
    was_training = model.training
    model.eval()
    out = [model(*windows.batch(rows[lo:lo + batch_size], device)).float().cpu().numpy()
           for lo in range(0, len(rows), batch_size)]
    model.train(was_training)
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


class Finetuned:
    """A trained classifier over a StayWindows: decision_function(rows) like a scikit-learn model."""

    def __init__(self, model: Classifier, windows: StayWindows, device, best_step: int, steps_run: int,
                 val_auroc: float, steps_budget: int):
        self.model, self.windows, self.device = model, windows, device
        self.best_step, self.steps_run, self.val_auroc = best_step, steps_run, val_auroc
        self.steps_budget = steps_budget

    def decision_function(self, rows) -> np.ndarray:
        return scores(self.model, self.windows, np.asarray(rows, dtype=np.int64).reshape(-1), self.device)


def train_loop(model: nn.Module, settings: Settings, total: int, next_loss, validate, progress: bool = False,
               desc: str = "finetune") -> tuple[int, int, float]:
    """The fine-tuning loop every fine-tuned method shares: AdamW (param_groups: weight decay on
    matrices only; the head's learning rate settings.head_lr_scale x the encoder's), warmup then cosine
    over `total` steps, gradient clipping, the validation AUROC
    every settings.eval_every steps and at the last, early stopping after settings.patience
    measurements without a new best; the best weights are loaded back into `model` at the end.

    next_loss(): the loss of the next training batch (a scalar tensor); validate(): the validation
    AUROC of the model as it is (called in train mode; it switches to eval itself).
    Returns (best step, steps run, best validation AUROC)."""
    from tqdm.auto import tqdm

    s = settings
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "encoder") and hasattr(model, "head"):
        groups = ([dict(g, lr_scale=1.0) for g in param_groups(model.encoder, s.weight_decay)]
                  + [dict(g, lr_scale=s.head_lr_scale) for g in param_groups(model.head, s.weight_decay)])
    else:
        groups = [dict(g, lr_scale=1.0) for g in param_groups(model, s.weight_decay)]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=s.lr, betas=(0.9, 0.999))
    best = (-math.inf, 0, None)   # (val AUROC, step, weights)
    since_best, step = 0, 0
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
    while step < total:
        rate = lr_at(step, s.lr, s.min_lr, min(s.warmup_steps, total), total)
        for group in optimizer.param_groups:
            group["lr"] = rate * group["lr_scale"]
        loss = next_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        optimizer.step()
        step += 1
        bar.update(1)
        if step % s.eval_every == 0 or step == total:
            auroc = float(validate())
            if auroc > best[0] or best[2] is None:
                best = (auroc, step, copy.deepcopy(model.state_dict()))
                since_best = 0
            else:
                since_best += 1
            bar.set_postfix(val_auroc=f"{auroc:.3f}", best=f"{best[0]:.3f}@{best[1]}")
            if since_best >= s.patience:
                break
    bar.close()
    model.load_state_dict(best[2])
    model.eval()
    return best[1], step, best[0]


def finetune(encoder: nn.Module, width: int, windows: StayWindows, train_rows, y_train, val_rows, y_val,
             settings: Settings = Settings(), seed: int = 0, device="cpu", progress: bool = False,
             desc: str = "finetune") -> Finetuned:
    """Train a Classifier on a copy of `encoder` (left untouched) for one task; keep the best.

    train_rows/val_rows: rows of `windows`; y_train/y_val: their 0/1 labels. Seeded: the head's
    initial weights and the batches depend on `seed` only (on CPU, the result is bit-identical).
    """
    s = settings
    train_rows = np.asarray(train_rows, dtype=np.int64).reshape(-1)
    val_rows = np.asarray(val_rows, dtype=np.int64).reshape(-1)
    y_train = torch.as_tensor(np.asarray(y_train, dtype=np.float32))
    y_val = np.asarray(y_val, dtype=np.int64)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ValueError(f"fine-tuning needs train and val stays, got {len(train_rows)} and {len(val_rows)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(copy.deepcopy(encoder), width, s.head)
    model = model.to(device)
    generator = torch.Generator().manual_seed(seed)
    state = {"order": torch.randperm(len(train_rows), generator=generator).numpy(), "at": 0}

    def next_loss():
        if state["at"] + s.batch_size > len(state["order"]) and state["at"] > 0:   # a new epoch: reshuffle
            state["order"], state["at"] = torch.randperm(len(train_rows), generator=generator).numpy(), 0
        pick = state["order"][state["at"]:state["at"] + s.batch_size]
        state["at"] += s.batch_size
        logits = model(*windows.batch(train_rows[pick], device))
        return F.binary_cross_entropy_with_logits(logits.float(), y_train[pick].to(logits.device))

    def validate():
        return ranked_metrics(y_val, scores(model, windows, val_rows, device))[0][0]

    total = s.steps_for(len(train_rows))
    best_step, steps_run, val_auroc = train_loop(model, s, total, next_loss, validate, progress, desc)
    return Finetuned(model, windows, device, best_step=best_step, steps_run=steps_run, val_auroc=val_auroc,
                     steps_budget=total)


class Finetuner:
    """fit(x_train, y_train, x_val, y_val, seed) for the probe's fitting code: x are rows of `windows`.

    Every fit starts from the same `encoder` (copied), with the same settings."""

    def __init__(self, encoder: nn.Module, width: int, windows: StayWindows, settings: Settings = Settings(),
                 device="cpu", progress: bool = False, desc: str = "finetune"):
        self.encoder, self.width, self.windows = encoder, width, windows
        self.settings, self.device, self.progress, self.desc = settings, device, progress, desc

    def __call__(self, x_train, y_train, x_val, y_val, seed: int = 0):
        """(model, {"best_step", "steps_run", "steps_budget"}, val AUROC, True): fit_method's return."""
        fitted = finetune(self.encoder, self.width, self.windows, x_train, y_train, x_val, y_val, self.settings,
                          seed, self.device, self.progress, self.desc)
        params = {"best_step": fitted.best_step, "steps_run": fitted.steps_run,
                  "steps_budget": fitted.steps_budget}
        return fitted, params, fitted.val_auroc, True


def load_finetuned(path, map_location="cpu") -> tuple[Classifier, dict]:
    """(Classifier in eval mode, the rest of the file) from the model.pt of `ehrjepa finetune`."""
    from ehrjepa.config import config_from_dict
    from ehrjepa.models import build_model, load_checkpoint

    ckpt = load_checkpoint(path, map_location=map_location)
    cfg = config_from_dict(ckpt["config"], source=f"{path} (config)")
    model = Classifier(build_model(cfg, int(ckpt["n_features"])).encoder, cfg.model.resolved().width, ckpt["head"])
    model.load_state_dict(ckpt.pop("model"))
    return model.to(map_location).eval(), ckpt


def encoder_of(model, which: str) -> nn.Module:
    """The context (`encoder`) or EMA target encoder (`target_encoder`) of a JEPA."""
    if which not in ("target", "context"):
        raise ValueError(f"encoder must be 'target' or 'context', not {which!r}")
    return model.target_encoder if which == "target" else model.encoder
