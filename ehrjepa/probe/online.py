"""Online tasks: a prediction at every hour t of a stay from hours [0, t] only (`sepsis_hourly`).

The PhysioNet/CinC 2019 challenge's question, asked every hour: is sepsis coming (its hourly
SepsisLabel, `sepsis_label` in OUT/hour_labels.npy: 1 from 6 hours before the onset on)? Every
hour of every stay of a split with a known label is one example, so a stay of 40 hours gives 40.

Inputs at hour t, per method:
- `jepa` / `random_init`: the frozen encoder run once over the whole stay with a causal attention
  mask (`JEPA.embed(..., causal=True)`): the output at hour t depends on hours [0, t] alone (the
  hour embedding is per hour, attention sees no later key), so one pass gives every prefix, in
  O(T) tokens per stay instead of the O(T^2) of re-embedding each prefix. The features are that
  hour's output and the running mean of the outputs of hours [0, t] (2 x width), fed to the same
  logistic probe as the stay tasks (C by validation AUROC). The encoders were pretrained with
  bidirectional attention: the causal mask is a change of attention pattern they did not see,
  the price of one pass (exact prefix embeddings would cost sum T(T+1)/2 tokens: 26 x more on
  the challenge's set A, 20.8 M against 0.79 M).
- `raw_gbdt`: gradient-boosted trees (fit.fit_gbdt) on `hourly_features` (running summaries of
  each feature, the demographics, ICULOS).
- `jepa_finetune` / `scratch`: the pretrained encoder (the checkpoint's target encoder by default,
  as finetune.py picks it) or the untrained one (random_init's context encoder, as the stay-level
  scratch) trained end to end with a head on the frozen probe's input (the causal output at t and
  the running mean over [0, t]): every training stay run whole with the causal mask, binary
  cross-entropy over its labelled hours, finetune.py's loop (`train_loop`: AdamW, warmup + cosine,
  clipping, early stopping on the validation hourly AUROC) and budget (`Settings`, in epochs of
  training stays; HOURLY_SETTINGS by default, sized for a CPU), batches of stays of similar
  length. Scored like the frozen methods (the threshold on validation, the same bootstrap).
Hours past the model's position table (a checkpoint pretrained on shorter windows) get the same
fixed sinusoid extended (it is a function of the position, not a learned table); a note says the
encoder never saw them.

Scores on the test split: hourly AUROC and AUPRC over all (stay, hour) pairs, the challenge's
normalised utility (`utility.py`) at the alarm threshold that maximises it on the validation split,
the per-stay view (`utility.stay_view`), with 95 % intervals from a bootstrap over test stays (an
hour is not independent of its stay's other hours), paired between methods. Label fractions
subsample the train and val stays (by subject, as label_efficiency.py does), and report
`utility_mean`, `utility_sd` beside `auroc_mean`; the paired intervals of jepa against raw_gbdt
at each fraction compare the means over the repeats on the same test-stay resamples.
"""
from __future__ import annotations

import math

import numpy as np

from ehrjepa.data.processed import SPLITS
from ehrjepa.probe.finetune import Settings
from ehrjepa.probe.metrics import percentile_ci, ranked_metrics
from ehrjepa.probe.tasks import class_counts, skip_reason
from ehrjepa.probe.utility import LABEL_LEAD, best_threshold, stay_utilities, stay_view, utility_totals

ONLINE_TASKS = ("sepsis_hourly",)
HOUR_LABEL = {"sepsis_hourly": "sepsis_label"}
ONLINE_METHODS = ("jepa", "random_init", "raw_gbdt", "jepa_finetune", "scratch")
FINETUNED = ("jepa_finetune", "scratch")
TOKENS_PER_BATCH = 16384  # embedding batches: stays sorted by length, padded tokens <= this
PAIRS = (("jepa", "random_init"), ("jepa", "raw_gbdt"), ("jepa_finetune", "scratch"), ("jepa_finetune", "raw_gbdt"))
# the fine-tuning budget of jepa_finetune and scratch on the online task (finetune.Settings: steps of
# `batch_size` whole stays, the validation AUROC over the val hours every `eval_every` steps), sized for
# the 2-core CPU box: at most 300 steps (about 0.19 s each for micro on set A, one thread), 1.3 epochs of
# set A's 14,644 training stays, 30 epochs of small fractions (at least 100 steps). The head learns at
# 10 x the encoder's rate (tried because with one rate, 5e-4, jepa_finetune's validation hourly AUROC
# was 0.752 at step 300 on set A, below the frozen probe's; with 10 x it was 0.751: no gain, kept as
# run). The frozen probe standardises its input (StandardScaler), this head does not by default; with
# HOURLY_STANDARDIZE on set A at fraction 1 (one seed): jepa_finetune test AUROC 0.790 / utility 0.380
# (off: 0.773 / 0.332), scratch 0.760 / 0.321 (off: 0.803 / 0.389, early-stopped at step 200): mixed, so off
HOURLY_STANDARDIZE = False   # standardise the head's input with the start encoder's train statistics
HOURLY_SETTINGS = Settings(max_epochs=30.0, min_steps=100, max_steps=300, batch_size=64, lr=5e-4, min_lr=5e-5,
                           warmup_steps=20, eval_every=50, patience=3, head_lr_scale=10.0)


class Hours:
    """The (stay, hour) examples of one split: `rows` (stay rows of processed.stays), per hour `pos`
    (index into rows), `hour`, `y` (float64 0/1, NaN unknown), per stay `onset` (t_sepsis in the
    stay's hours, NaN never septic; from the hourly labels: first labelled hour + 6), `subject`."""

    def __init__(self, processed, split: str, label: str):
        from ehrjepa.probe.hourly_features import stay_hours

        stays = processed.stays
        self.rows = processed.split_indices(split).astype(np.int64)
        self.pos, self.hour = stay_hours(processed, self.rows)
        offset = stays.column("offset").to_numpy()[self.rows].astype(np.int64)
        labels = np.asarray(processed.hour_label(label))[offset[self.pos] + self.hour]
        self.y = np.where(labels < 0, np.nan, labels.astype(np.float64))
        first = np.full(len(self.rows), np.inf)
        hit = labels == 1
        np.minimum.at(first, self.pos[hit], self.hour[hit].astype(np.float64))
        self.onset = np.where(np.isfinite(first), first + LABEL_LEAD, np.nan)
        self.subject = stays.column("subject_id").to_numpy()[self.rows]
        self.known = ~np.isnan(self.y)

    def __len__(self) -> int:
        return len(self.hour)

    def select(self, stay_mask: np.ndarray) -> np.ndarray:
        """The hours (indices) of the stays picked by boolean `stay_mask` [len(rows)] with a known label."""
        return np.flatnonzero(stay_mask[self.pos] & self.known)


def extend_positions(model, hours: int) -> bool:
    """Make `model`'s encoders' fixed sinusoidal position tables cover `hours` positions (the first
    rows are unchanged); True when they were shorter."""
    from ehrjepa.models.embedding import sinusoid

    grown = False
    for enc in (model.encoder, model.target_encoder):
        pos = enc.embed.pos
        if pos.shape[0] < hours:
            enc.embed.pos = sinusoid(hours, pos.shape[1]).to(pos.device)
            grown = True
    return grown


class StayFiller:
    """The encoder's inputs of whole stays of a processed folder: values, observed, delta [B, T, F]
    (float32, zero past each stay's hours) as the windows of pretraining give them."""

    def __init__(self, processed):
        self.mean = np.load(processed.path / "mean.npy", mmap_mode="r")
        self.norm_mean = np.asarray(processed.norm_mean, dtype=np.float32)
        self.norm_std = np.asarray(processed.norm_std, dtype=np.float32)
        self.n_features = len(processed.features)

    def __call__(self, offset: np.ndarray, n_hours: np.ndarray):
        from ehrjepa.data.windows import fill_window

        length = max(int(np.max(n_hours)), 1) if len(n_hours) else 1
        shape = (len(offset), length, self.n_features)
        values, observed, delta = (np.zeros(shape, np.float32) for _ in range(3))
        for b, (o, n) in enumerate(zip(offset, n_hours)):
            fill_window(self.mean, int(o), 0, int(n), self.norm_mean, self.norm_std, 48.0,
                        values[b, :n], observed[b, :n], delta[b, :n])
        return values, observed, delta


def length_batches(n_hours: np.ndarray, tokens_per_batch: int) -> list[np.ndarray]:
    """Indices into n_hours in batches of stays sorted by length, each with padded tokens <= tokens_per_batch
    (a stay longer than that alone)."""
    order = np.argsort(n_hours, kind="stable")
    batches, i = [], 0
    while i < len(order):
        j = i + 1
        while j < len(order) and (j - i + 1) * max(int(n_hours[order[j]]), 1) <= tokens_per_batch:
            j += 1
        batches.append(order[i:j])
        i = j
    return batches


def causal_embeddings(model, processed, rows: np.ndarray, encoder: str = "target", device="cpu",
                      tokens_per_batch: int = TOKENS_PER_BATCH, progress: bool = False,
                      desc: str = "embed") -> np.ndarray:
    """float32 [sum of n_hours of rows, 2 x width]: for every hour t of every stay (stay by stay, hour
    order: hourly_features.stay_hours), [the causal encoder output at t, the mean of the outputs at
    hours 0..t], from one causal pass over each whole stay."""
    import torch
    from tqdm.auto import tqdm

    rows = np.asarray(rows, dtype=np.int64)
    stays = processed.stays
    offset = stays.column("offset").to_numpy()[rows].astype(np.int64)
    n_hours = stays.column("n_hours").to_numpy()[rows].astype(np.int64)
    starts = np.cumsum(n_hours) - n_hours
    fill = StayFiller(processed)
    model = model.to(device).eval()
    extend_positions(model, int(n_hours.max()) if len(n_hours) else 1)
    width = model.encoder.embed.norm.normalized_shape[0]
    out = np.zeros((int(n_hours.sum()), 2 * width), dtype=np.float32)
    with torch.inference_mode():
        for batch in tqdm(length_batches(n_hours, tokens_per_batch), desc=desc, unit="batch", disable=not progress,
                          leave=False):
            values, observed, delta = fill(offset[batch], n_hours[batch])
            length = values.shape[1]
            lengths = torch.as_tensor(n_hours[batch], dtype=torch.long, device=device)
            h = model.embed(torch.from_numpy(values).to(device), torch.from_numpy(observed).to(device),
                            torch.from_numpy(delta).to(device), encoder=encoder, lengths=lengths, causal=True)
            h = h.float()
            running = h.cumsum(dim=1) / torch.arange(1, length + 1, device=h.device, dtype=h.dtype)[None, :, None]
            both = torch.cat([h, running], dim=-1).cpu().numpy()
            for b, s in enumerate(batch):
                n = int(n_hours[s])
                out[starts[s]:starts[s] + n] = both[b, :n]
    return out


# -------------------------------------------------------------------------------------------------
# jepa_finetune and scratch: the encoder trained end to end on the hourly label


class HourlyStays:
    """Every hour of every stay of the three splits under one numbering (global hour ids), so the
    fitting code can pass hours around like rows of a feature matrix: x[method][split] =
    `ids(split)`. Per global stay: `offset`, `n_hours`, `start` (its first global hour id); per global
    hour: `stay`, `y` (float64 0/1, NaN unknown)."""

    def __init__(self, processed, hours: dict):
        stays = processed.stays
        rows = np.concatenate([hours[s].rows for s in SPLITS]).astype(np.int64)
        self.offset = stays.column("offset").to_numpy()[rows].astype(np.int64)
        self.n_hours = stays.column("n_hours").to_numpy()[rows].astype(np.int64)
        self.start = np.cumsum(self.n_hours) - self.n_hours
        self.stay = np.repeat(np.arange(len(rows)), self.n_hours)
        self.y = np.concatenate([hours[s].y for s in SPLITS])
        sizes = [len(hours[s]) for s in SPLITS]
        base = np.concatenate([[0], np.cumsum(sizes)])
        self._ids = {s: np.arange(base[i], base[i + 1], dtype=np.int64) for i, s in enumerate(SPLITS)}
        if len(self.y) != int(self.n_hours.sum()):
            raise RuntimeError("the hours of the splits do not match their stays' n_hours")
        self.fill = StayFiller(processed)

    def ids(self, split: str) -> np.ndarray:
        return self._ids[split]

    def inputs(self, stays: np.ndarray, device):
        """(values, observed, delta, lengths) tensors of the global stays `stays`, whole."""
        import torch

        values, observed, delta = self.fill(self.offset[stays], self.n_hours[stays])
        lengths = torch.as_tensor(self.n_hours[stays], dtype=torch.long)
        return tuple(torch.from_numpy(a).to(device) for a in (values, observed, delta)) + (lengths.to(device),)

    def grid(self, stays: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(global hour id [B, length] (clipped past a stay's end), valid [B, length]) of `stays`."""
        t = np.arange(length)[None, :]
        valid = t < self.n_hours[stays][:, None]
        return np.where(valid, self.start[stays][:, None] + t, 0), valid


def _hourly_model(encoder, width: int, head: str, shift=None, scale=None):
    import torch
    import torch.nn as nn

    from ehrjepa.probe.finetune import make_head

    class HourlyClassifier(nn.Module):
        """encoder (causal, whole stay) -> [output at t, mean of outputs over [0, t]] -> head: one
        logit per hour, from hours [0, t] only (the frozen probe's input, trained end to end)."""

        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.head = make_head(2 * width, width, head)
            # a fixed standardisation of the head's input (HOURLY_STANDARDIZE), identity by default
            self.register_buffer("shift", torch.zeros(2 * width) if shift is None else torch.as_tensor(shift).float())
            self.register_buffer("scale", torch.ones(2 * width) if scale is None else torch.as_tensor(scale).float())

        def forward(self, values, observed, delta, lengths):
            h = self.encoder(values, observed, delta, lengths=lengths, causal=True).float()   # [B, T, D]
            steps = torch.arange(h.shape[1], device=h.device)
            h = torch.where((steps[None, :] < lengths[:, None])[..., None], h, torch.zeros_like(h))
            running = h.cumsum(dim=1) / (steps + 1).to(h.dtype)[None, :, None]
            z = (torch.cat([h, running], dim=-1) - self.shift) * self.scale
            return self.head(z).squeeze(-1)                                                     # [B, T]

    return HourlyClassifier()


class HourlyFinetuned:
    """A trained hourly classifier: decision_function(global hour ids) -> logits, each from one causal
    pass over its whole stay (stays batched by length, TOKENS_PER_BATCH padded tokens)."""

    def __init__(self, model, stays: HourlyStays, device, best_step: int = 0, steps_run: int = 0,
                 val_auroc: float = float("nan"), steps_budget: int = 0, tokens_per_batch: int = TOKENS_PER_BATCH):
        self.model, self.stays, self.device = model, stays, device
        self.best_step, self.steps_run, self.val_auroc, self.steps_budget = best_step, steps_run, val_auroc, steps_budget
        self.tokens_per_batch = tokens_per_batch

    def decision_function(self, ids) -> np.ndarray:
        import torch

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        which = np.unique(self.stays.stay[ids])
        out = np.zeros(len(self.stays.y), dtype=np.float64)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for batch in length_batches(self.stays.n_hours[which], self.tokens_per_batch):
                group = which[batch]
                logits = self.model(*self.stays.inputs(group, self.device)).float().cpu().numpy()
                hour_id, valid = self.stays.grid(group, logits.shape[1])
                out[hour_id[valid]] = logits[valid]
        self.model.train(was_training)
        return out[ids]


def _hourly_inputs(fitted: HourlyFinetuned, which: np.ndarray) -> np.ndarray:
    """float64 [hours of the stays `which`, 2 x width]: the head's input (before standardisation)."""
    import torch

    model, out = fitted.model.eval(), []
    with torch.inference_mode():
        for batch in length_batches(fitted.stays.n_hours[which], fitted.tokens_per_batch):
            inputs = fitted.stays.inputs(which[batch], fitted.device)
            h = model.encoder(*inputs[:3], lengths=inputs[3], causal=True).float()
            steps = torch.arange(h.shape[1], device=h.device)
            running = h.cumsum(dim=1) / (steps + 1).to(h.dtype)[None, :, None]
            valid = (steps[None, :] < inputs[3][:, None]).cpu().numpy()
            out.append(torch.cat([h, running], dim=-1).cpu().numpy()[valid])
    return np.concatenate(out).astype(np.float64)


def _bucketed_epoch(lengths: np.ndarray, batch_size: int, generator) -> list[np.ndarray]:
    """One epoch of batches (indices into lengths): a random order, cut into groups of 16 batches,
    each group sorted by length and cut into batches (little padding), the batches shuffled."""
    import torch

    perm = torch.randperm(len(lengths), generator=generator).numpy()
    group = batch_size * 16
    batches = []
    for lo in range(0, len(perm), group):
        chunk = perm[lo:lo + group]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).numpy()]


def finetune_hourly(encoder, width: int, stays: HourlyStays, train_ids, val_ids, y_val, settings=None,
                    seed: int = 0, device="cpu", progress: bool = False, desc: str = "finetune") -> HourlyFinetuned:
    """Train an hourly classifier on a copy of `encoder` (left untouched): binary cross-entropy over
    the hours `train_ids` (global hour ids; their stays are run whole, the loss counts only these
    hours), early-stopped on the AUROC of the hours `val_ids` (labels y_val), with finetune.py's loop
    and budget (settings.steps_for(the number of training stays)). Seeded like finetune.finetune."""
    import copy

    import torch
    import torch.nn.functional as F

    from ehrjepa.probe.finetune import train_loop

    s = settings or HOURLY_SETTINGS
    train_ids = np.asarray(train_ids, dtype=np.int64).reshape(-1)
    val_ids = np.asarray(val_ids, dtype=np.int64).reshape(-1)
    y_val = np.asarray(y_val, dtype=np.int64)
    if len(train_ids) == 0 or len(val_ids) == 0:
        raise ValueError(f"fine-tuning needs train and val hours, got {len(train_ids)} and {len(val_ids)}")
    used = np.zeros(len(stays.y), dtype=bool)
    used[train_ids] = True
    used &= ~np.isnan(stays.y)
    target = np.nan_to_num(stays.y, nan=0.0).astype(np.float32)
    train_stays = np.unique(stays.stay[train_ids])
    shift = scale = None
    if HOURLY_STANDARDIZE:  # the start encoder's [h, running mean] statistics over (up to 512) training stays
        probe = HourlyFinetuned(_hourly_model(encoder, width, s.head), stays, device)
        picked = train_stays[np.random.default_rng(seed).permutation(len(train_stays))[:512]]
        feats = _hourly_inputs(probe, picked)
        shift, scale = feats.mean(axis=0), 1.0 / np.maximum(feats.std(axis=0), 1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _hourly_model(copy.deepcopy(encoder), width, s.head, shift, scale)
    model = model.to(device)
    fitted = HourlyFinetuned(model, stays, device)
    generator = torch.Generator().manual_seed(seed)
    queue = []

    def next_loss():
        if not queue:
            queue.extend(_bucketed_epoch(stays.n_hours[train_stays], s.batch_size, generator))
        group = train_stays[queue.pop(0)]
        logits = model(*stays.inputs(group, device)).float()
        hour_id, valid = stays.grid(group, logits.shape[1])
        keep = torch.from_numpy(valid & used[hour_id]).to(logits.device)
        if not bool(keep.any()):
            return logits.sum() * 0.0
        y = torch.from_numpy(target[hour_id]).to(logits.device)
        return F.binary_cross_entropy_with_logits(logits[keep], y[keep])

    def validate():
        return ranked_metrics(y_val, fitted.decision_function(val_ids))[0][0]

    total = s.steps_for(len(train_stays))
    best_step, steps_run, val_auroc = train_loop(model, s, total, next_loss, validate, progress, desc)
    fitted.best_step, fitted.steps_run, fitted.val_auroc, fitted.steps_budget = best_step, steps_run, val_auroc, total
    return fitted


class HourlyFinetuner:
    """fit_method's finetuner for the online task: (x_train, y_train, x_val, y_val, seed) are global
    hour ids of `stays` and their labels; every fit starts from a copy of the same `encoder`."""

    def __init__(self, encoder, width: int, stays: HourlyStays, settings=None, device="cpu", progress: bool = False,
                 desc: str = "finetune"):
        self.encoder, self.width, self.stays = encoder, width, stays
        self.settings = settings or HOURLY_SETTINGS
        self.device, self.progress, self.desc = device, progress, desc

    def __call__(self, x_train, y_train, x_val, y_val, seed: int = 0):
        fitted = finetune_hourly(self.encoder, self.width, self.stays, x_train, x_val, y_val, self.settings, seed,
                                 self.device, self.progress, self.desc)
        params = {"best_step": fitted.best_step, "steps_run": fitted.steps_run, "steps_budget": fitted.steps_budget}
        return fitted, params, fitted.val_auroc, True


def hourly_finetuners(models: dict, methods, processed, hours: dict, encoder: str, settings=None, device="cpu",
                      progress: bool = False) -> tuple[dict, dict]:
    """({method: HourlyFinetuner}, {method: {split: global hour ids}}) for the fine-tuned methods
    asked for: jepa_finetune from the checkpoint's `encoder` (as finetune.py picks it), scratch
    from the untrained model's context encoder (as the stay-level scratch)."""
    from ehrjepa.probe.finetune import encoder_of

    asked = [m for m in FINETUNED if m in methods and m in models]
    if not asked:
        return {}, {}
    stays = HourlyStays(processed, hours)
    longest = int(stays.n_hours.max()) if len(stays.n_hours) else 1
    fitters, x = {}, {}
    for method in asked:
        model = models[method]
        extend_positions(model, longest)
        start = encoder_of(model, encoder) if method == "jepa_finetune" else model.encoder
        width = start.embed.norm.normalized_shape[0]
        fitters[method] = HourlyFinetuner(start, width, stays, settings, device, progress, desc=f"{method} hourly")
        x[method] = {s: stays.ids(s) for s in SPLITS}
    return fitters, x


class _Columns:
    """A fitted model that reads only some columns of its input."""

    def __init__(self, model, keep: np.ndarray):
        self.model, self.keep = model, keep

    def decision_function(self, x):
        return self.model.decision_function(x[:, self.keep])


def _fit(method, x_train, y_train, x_val, y_val, seed, finetuners=None):
    """fit.fit_method (finetuners: {method: HourlyFinetuner} for the fine-tuned methods); for the
    trees, columns never observed in the train hours (EtCO2 in set A) are left out: scikit-learn
    cannot bin a column with no value."""
    from ehrjepa.probe.fit import GBDT_METHODS, fit_method

    if method in FINETUNED:
        return fit_method(method, x_train, y_train, x_val, y_val, seed=seed, finetuners=finetuners)
    if method in GBDT_METHODS:
        keep = np.isfinite(x_train).any(axis=0)
        if not keep.all():
            model, params, val_auroc, converged = fit_method(method, x_train[:, keep], y_train, x_val[:, keep],
                                                             y_val, seed=seed)
            return _Columns(model, keep), params | {"columns_unused": int((~keep).sum())}, val_auroc, converged
    return fit_method(method, x_train, y_train, x_val, y_val, seed=seed)


def score_one(method, x, hours, train_idx, val_idx, seed: int = 0, finetuners=None):
    """Fit `method` on hours train_idx of x["train"], choose the alarm threshold on val_idx of
    x["val"]; returns (test scores over the known test hours, params dict)."""
    h_tr, h_va, h_te = hours["train"], hours["val"], hours["test"]
    model, params, val_auroc, converged = _fit(method, x["train"][train_idx], h_tr.y[train_idx].astype(np.int64),
                                               x["val"][val_idx], h_va.y[val_idx].astype(np.int64), seed,
                                               finetuners)
    val_score = model.decision_function(x["val"][val_idx])
    threshold, val_utility = best_threshold(val_score, h_va.hour[val_idx], h_va.onset[h_va.pos[val_idx]])
    test_idx = np.flatnonzero(h_te.known)
    test_score = model.decision_function(x["test"][test_idx])
    return test_score, {**params, "val_auroc": val_auroc, "converged": converged, "threshold": threshold,
                        "val_utility": val_utility}


def test_metrics(score, threshold, h_te) -> dict:
    """AUROC, AUPRC, normalised utility and the stay view of test scores (over the known test hours)."""
    idx = np.flatnonzero(h_te.known)
    y, hour, pos = h_te.y[idx].astype(np.int64), h_te.hour[idx], h_te.pos[idx]
    auroc, auprc, _ = ranked_metrics(y, score)
    alarm = score >= threshold
    util = utility_totals(alarm, hour, h_te.onset[pos])
    return {"auroc": float(auroc[0]), "auprc": float(auprc[0]), "utility": util["normalized"],
            "stay_view": stay_view(alarm, pos, hour, h_te.onset)}


class StayBootstrap:
    """Resamples of the test stays (with replacement), shared by every method: AUROC and AUPRC over
    the resampled stays' hours (each hour weighted by its stay's count) and the normalised utility
    from per-stay sums."""

    def __init__(self, h_te: Hours, n_bootstrap: int, seed: int, chunk: int = 25):
        self.idx = np.flatnonzero(h_te.known)
        self.pos = h_te.pos[self.idx]
        self.h_te = h_te
        rng = np.random.default_rng(seed)
        n = len(h_te.rows)
        self.counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_bootstrap)]) \
            if n_bootstrap else np.zeros((0, n), dtype=np.int64)
        self.chunk = chunk

    def sample(self, score, threshold) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(auroc, auprc, utility) [n_bootstrap] of one method's test scores; NaN where a resample has one class."""
        y = self.h_te.y[self.idx].astype(np.int64)
        aurocs, auprcs = [], []
        for lo in range(0, len(self.counts), self.chunk):
            w = self.counts[lo:lo + self.chunk][:, self.pos]
            a, p, _ = ranked_metrics(y, score, w)
            aurocs.append(a)
            auprcs.append(p)
        got, none, best = stay_utilities(score >= threshold, self.pos, self.h_te.hour[self.idx],
                                         self.h_te.onset[self.pos], len(self.h_te.rows))
        wc = self.counts.astype(np.float64)
        span = wc @ best - wc @ none
        with np.errstate(invalid="ignore", divide="ignore"):
            util = np.where(span > 0, (wc @ got - wc @ none) / span, np.nan)
        cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0))
        return cat(aurocs), cat(auprcs), util


def _ci(samples) -> list[float]:
    samples = np.asarray(samples, dtype=np.float64)
    return percentile_ci(samples[np.isfinite(samples)])


def online_labels(processed, task: str):
    """{split: Hours} of an online task, or (None, why) where the data has no such hourly label."""
    label = HOUR_LABEL[task]
    if label not in getattr(processed, "hour_label_names", []):
        known = ", ".join(getattr(processed, "hour_label_names", [])) or "none"
        return None, (f"the data has no hourly label {label!r} (OUT/hour_labels.npy; hourly labels here: {known}); "
                      f"preprocess the PhysioNet 2019 challenge with --physionet2019")
    return {split: Hours(processed, split, label) for split in SPLITS}, None


def method_descriptions(encoder: str, seed: int, settings=None) -> dict[str, str]:
    from ehrjepa.probe.fit import GBDT_LEAVES, GBDT_MAX_TREES, GBDT_PATIENCE

    s = settings or HOURLY_SETTINGS
    budget = (f"a {s.head} head on the output at hour t and the mean of the outputs over hours [0, t] (one causal pass "
              f"over each whole stay), trained end to end with binary cross-entropy over the labelled hours, AdamW "
              f"(lr {s.lr:g}, the head's x {s.head_lr_scale:g}, warmup {s.warmup_steps} then cosine to {s.min_lr:g}, "
              f"batches of {s.batch_size} stays of "
              f"similar length) for up to {s.max_epochs:g} epochs of the training stays ({min(s.min_steps, s.max_steps)} "
              f"to {s.max_steps} steps), early-stopped on the validation hourly AUROC (every {s.eval_every} steps, "
              f"patience {s.patience})")
    return {"jepa_finetune": f"the {encoder} encoder of the checkpoint fine-tuned with {budget}",
            "scratch": f"the untrained encoder of random_init (seed {seed}) trained with the same budget: {budget}",
            "jepa": f"logistic regression on the {encoder} encoder's output at hour t and the mean of its outputs "
                    "over hours [0, t], one causal pass over each stay (attention sees no later hour)",
            "random_init": f"the same on an untrained encoder of the same architecture (seed {seed})",
            "raw_gbdt": f"gradient-boosted trees ({' or '.join(map(str, GBDT_LEAVES))} leaves by validation AUROC, up to "
                        f"{GBDT_MAX_TREES} trees early-stopped after {GBDT_PATIENCE}) on causal per-hour features: each "
                        "feature's last value, hours since observed, running mean, min, max and count over hours [0, t], "
                        "age, sex, unit, hospital-admission hours, the hour and ICULOS"}


def online_inputs(processed, hours: dict, models: dict, methods, encoder, device, progress) -> dict:
    """{method: {split: float32 [hours of the split, d]}} for the online methods asked for."""
    from ehrjepa.probe.hourly_features import hourly_features

    x = {}
    for method in methods:
        if method in models:
            x[method] = {s: causal_embeddings(models[method], processed, hours[s].rows, encoder, device,
                                              progress=progress, desc=f"causal embed {method} {s}") for s in SPLITS}
        elif method == "raw_gbdt":
            x[method] = {s: hourly_features(processed, hours[s].rows) for s in SPLITS}
    return x


def evaluate_online(x: dict, hours: dict, n_bootstrap: int = 1000, seed: int = 0, progress: bool = False,
                    finetuners=None):
    """Fit every method on the full train split, threshold on val, score on test. Returns
    (results {method: metrics}, comparisons {"a - b": ...}, curves {method: (y, score)}) or raises
    nothing: a split with too few positive or negative hours gives (None, reason, None)."""
    y = {s: hours[s].y[hours[s].known] for s in SPLITS}
    reason = skip_reason(y)
    if reason is not None:
        return None, f"too few in a class: {reason}", None
    h_te = hours["test"]
    boot = StayBootstrap(h_te, n_bootstrap, seed)
    results, samples, curves = {}, {}, {}
    train_idx, val_idx = np.flatnonzero(hours["train"].known), np.flatnonzero(hours["val"].known)
    for method in x:
        score, params = score_one(method, x[method], hours, train_idx, val_idx, seed, finetuners)
        m = test_metrics(score, params["threshold"], h_te)
        a, p, u = boot.sample(score, params["threshold"])
        samples[method] = (a, p, u)
        n, pos, _ = class_counts(h_te.y)
        results[method] = {"auroc": m["auroc"], "auroc_ci": _ci(a), "auprc": m["auprc"], "auprc_ci": _ci(p),
                           "n": n, "positives": pos, "utility": m["utility"], "utility_ci": _ci(u),
                           "stays": int(len(h_te.rows)), "septic_stays": int((~np.isnan(h_te.onset)).sum()),
                           "n_train": int(len(train_idx)), **params, "stay_view": m["stay_view"],
                           "bootstrap": "test stays"}
        curves[method] = (h_te.y[h_te.known].astype(np.int64), score)
    comparisons = {}
    for a_, b_ in PAIRS:
        if a_ in samples and b_ in samples:
            d = [samples[a_][k] - samples[b_][k] for k in range(3)]
            comparisons[f"{a_} - {b_}"] = {
                "auroc_diff": results[a_]["auroc"] - results[b_]["auroc"], "auroc_diff_ci": _ci(d[0]),
                "auprc_diff": results[a_]["auprc"] - results[b_]["auprc"], "auprc_diff_ci": _ci(d[1]),
                "utility_diff": results[a_]["utility"] - results[b_]["utility"], "utility_diff_ci": _ci(d[2])}
    return results, comparisons, curves


def _sd(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) >= 2 else float("nan")


def online_label_efficiency(x: dict, hours: dict, fractions, repeats: int = 5, seed: int = 0,
                            n_bootstrap: int = 1000, progress: bool = False, finetuners=None):
    """({method: {fraction key: {auroc_mean, auroc_sd, auprc_mean, auprc_sd, utility_mean, utility_sd,
    n_train, positives_train, n_val, positives_val (stays; septic stays), hours_train, repeats,
    repeats_skipped, skip_reasons}}}, {"jepa - raw_gbdt": {fraction key: paired diffs}}).

    The train and val stays are subsampled by subject (label_efficiency.subsample_masks: nested,
    seeded per repeat); a subsample with too few positive or negative hours in train or val
    (tasks.MIN_CLASS_COUNT) is skipped; at fraction 1 (the full splits) each method is fit once."""
    from tqdm.auto import tqdm

    from ehrjepa.probe.label_efficiency import fraction_key, subsample_masks, too_few

    fractions = sorted(fractions)
    subjects = {s: hours[s].subject for s in SPLITS}
    masks = subsample_masks(subjects, fractions, repeats, seed)
    h_te = hours["test"]
    boot = StayBootstrap(h_te, n_bootstrap, seed)
    out = {m: {} for m in x}
    paired = {f"{a} - {b}": {} for a, b in PAIRS if a in x and b in x}
    bar = tqdm(total=len(fractions) * repeats, desc="hourly label fractions", unit="subsample", disable=not progress)
    for f in fractions:
        key = fraction_key(f)
        runs = {m: [] for m in x}   # (auroc, auprc, utility, bootstrap samples) per fitted repeat
        counts, reasons = [], []
        whole_done = {}
        for r in range(repeats):
            bar.update(1)
            idx = {s: hours[s].select(masks[(f, r)][s]) for s in ("train", "val")}
            sub = {s: hours[s].y[idx[s]] for s in ("train", "val")}
            reason = too_few(sub)
            if reason is not None:
                reasons.append(f"repeat {r}: {reason} (hours)")
                continue
            counts.append([[masks[(f, r)][s].sum(), (~np.isnan(hours[s].onset[masks[(f, r)][s]])).sum()]
                           for s in ("train", "val")] + [[len(idx["train"]), np.nansum(sub["train"])]])
            whole = all(masks[(f, r)][s].all() for s in ("train", "val"))
            for method in x:
                if whole and method in whole_done:
                    runs[method].append(whole_done[method])
                    continue
                score, params = score_one(method, x[method], hours, idx["train"], idx["val"], seed, finetuners)
                m = test_metrics(score, params["threshold"], h_te)
                run = (m["auroc"], m["auprc"], m["utility"], boot.sample(score, params["threshold"]))
                runs[method].append(run)
                if whole:
                    whole_done[method] = run
        mc = np.mean(counts, axis=0) if counts else np.full((3, 2), np.nan)
        for method in x:
            vals = runs[method]
            col = (lambda k: [v[k] for v in vals])
            out[method][key] = {
                "auroc_mean": float(np.mean(col(0))) if vals else float("nan"), "auroc_sd": _sd(col(0)),
                "auprc_mean": float(np.mean(col(1))) if vals else float("nan"), "auprc_sd": _sd(col(1)),
                "utility_mean": float(np.mean(col(2))) if vals else float("nan"), "utility_sd": _sd(col(2)),
                "n_train": float(mc[0, 0]), "positives_train": float(mc[0, 1]),
                "n_val": float(mc[1, 0]), "positives_val": float(mc[1, 1]),
                "hours_train": float(mc[2, 0]), "positive_hours_train": float(mc[2, 1]),
                "repeats": len(vals), "repeats_skipped": len(reasons), "skip_reasons": reasons}
        for a, b in PAIRS:
            if a in x and b in x and runs[a] and runs[b]:
                diff = {}
                for k, name in enumerate(("auroc", "auprc", "utility")):
                    mean_a = np.mean([v[3][k] for v in runs[a]], axis=0)
                    mean_b = np.mean([v[3][k] for v in runs[b]], axis=0)
                    diff[f"{name}_diff"] = out[a][key][f"{name}_mean"] - out[b][key][f"{name}_mean"]
                    diff[f"{name}_diff_ci"] = _ci(mean_a - mean_b)
                paired[f"{a} - {b}"][key] = diff
    bar.close()
    return out, paired


def positions_note(models: dict, hours: dict) -> str | None:
    """A note when the stays are longer than a model's pretrained position table, else None."""
    longest = max((int(hours[s].hour.max()) + 1 for s in SPLITS if len(hours[s])), default=0)
    for model in models.values():
        table = getattr(model, "max_hours", None)
        if table is not None and longest > table:
            return (f"sepsis_hourly: stays run to {longest} hours, past the model's {table}-hour position table; the "
                    f"fixed sinusoid was extended, so hours {table}-{longest - 1} sit at positions the encoder never "
                    f"saw in pretraining")
    return None


def run_online(processed, models: dict, methods, encoder: str = "target", device="cpu", n_bootstrap: int = 1000,
               seed: int = 0, progress: bool = False, label_fractions=None, repeats: int = 5,
               task: str = "sepsis_hourly", finetune_settings=None) -> dict:
    """The online task end to end: {"tasks": {task: results}, "comparisons": {task: ...}, "skipped":
    {task: why}, "label_efficiency": {task: ...}, "label_efficiency_comparisons": {task: ...}, "labels",
    "methods", "notes"}; models: {"jepa": JEPA, "random_init": JEPA, "jepa_finetune": the pretrained
    JEPA, "scratch": the untrained JEPA} (those asked for). finetune_settings: the budget of
    jepa_finetune and scratch (default HOURLY_SETTINGS). Methods other than ONLINE_METHODS are not
    fit on the online task (a note says which)."""
    out = {"tasks": {}, "comparisons": {}, "skipped": {}, "notes": [], "methods": {}}
    hours, why = online_labels(processed, task)
    if hours is None:
        out["skipped"][task] = why
        return out
    used = [m for m in ONLINE_METHODS if m in methods]
    left = [m for m in methods if m not in ONLINE_METHODS]
    if left:
        out["notes"].append(f"{task}: {', '.join(left)} not fit on the online task (its methods: "
                            f"{', '.join(ONLINE_METHODS)})")
    if not used:
        out["skipped"][task] = f"none of its methods ({', '.join(ONLINE_METHODS)}) asked for"
        return out
    missing = [m for m in used if m not in models and m != "raw_gbdt"]
    if missing:
        raise ValueError(f"{task}: no model given for {', '.join(missing)}")
    note = positions_note({m: models[m] for m in used if m in models}, hours)
    if note:
        out["notes"].append(note)
    frozen = {m: models[m] for m in used if m in models and m not in FINETUNED}
    x = online_inputs(processed, hours, frozen, [m for m in used if m not in FINETUNED], encoder, device, progress)
    finetuners, x_ft = hourly_finetuners(models, used, processed, hours, encoder, finetune_settings, device, progress)
    x = {m: (x_ft[m] if m in x_ft else x[m]) for m in used}   # ONLINE_METHODS order
    results, comparisons, curves = evaluate_online(x, hours, n_bootstrap, seed, progress, finetuners)
    out["labels"] = {task: {s: {"hours": int(hours[s].known.sum()), "positive_hours": int(np.nansum(hours[s].y)),
                                "stays": int(len(hours[s].rows)),
                                "septic_stays": int((~np.isnan(hours[s].onset)).sum())} for s in SPLITS}}
    out["methods"] = {m: d for m, d in method_descriptions(encoder, seed, finetune_settings).items() if m in used}
    if results is None:
        out["skipped"][task] = comparisons
        return out
    out["tasks"][task] = results
    out["comparisons"][task] = comparisons
    out["curves"] = {task: curves}
    if label_fractions is not None:
        eff, paired = online_label_efficiency(x, hours, label_fractions, repeats, seed, n_bootstrap, progress=progress,
                                              finetuners=finetuners)
        out["label_efficiency"] = {task: eff}
        out["label_efficiency_comparisons"] = {task: paired}
    return out


def check_online_tasks(processed, tasks, data_dir) -> list[str]:
    """The online tasks to probe: those of `tasks` (None: each one the data has the hourly label of).
    ValueError, one line naming the data's hour_labels.npy, for one asked for that the data lacks."""
    names = list(getattr(processed, "hour_label_names", []) or [])
    if tasks is None:
        return [t for t in ONLINE_TASKS if HOUR_LABEL[t] in names]
    for task in tasks:
        if task in ONLINE_TASKS and HOUR_LABEL[task] not in names:
            raise ValueError(f"{data_dir}/hour_labels.npy: no task {task!r} in this data: it needs the hourly label "
                             f"{HOUR_LABEL[task]!r} (hourly labels here: {', '.join(names) or 'none'}; the PhysioNet "
                             f"2019 challenge's data has it: ehrjepa preprocess --physionet2019)")
    return [t for t in tasks if t in ONLINE_TASKS]


def merge_online(report: dict, online: dict, curves: dict, task: str, label_fractions, repeats: int) -> list[str]:
    """Put run_online's answer for `task` into a probe report (tasks, skipped, comparisons, labels,
    label_efficiency and its setup, "online_methods", "online_comparisons_by_fraction") and the ROC
    curves; returns its notes."""
    report["tasks"].update(online["tasks"])
    report["skipped"].update(online["skipped"])
    report["comparisons"].update(online["comparisons"])
    curves.update(online.get("curves", {}))
    if task in online.get("labels", {}):
        counts = online["labels"][task]
        report["labels"][task] = {s: {"n": c["hours"], "positives": c["positive_hours"], "unknown": 0, **c}
                                  for s, c in counts.items()}
    if online.get("methods"):
        report.setdefault("online_methods", {})[task] = online["methods"]
    if "label_efficiency" in online:
        report.setdefault("label_efficiency", {}).update(online["label_efficiency"])
        setup = report.setdefault("label_efficiency_setup", {"fractions": sorted(label_fractions), "repeats": repeats,
                                                              "tasks": [], "subsampled": ["train", "val"],
                                                              "by": "subject_id"})
        setup["tasks"] = list(setup.get("tasks", [])) + [task]
        report.setdefault("label_efficiency_comparisons", {}).update(online["label_efficiency_comparisons"])
    return online.get("notes", [])


def _f(x, digits: int = 3) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def online_markdown(report: dict) -> list[str]:
    """report.md's lines on the online tasks: utility and the per-stay view per method, the paired
    differences by label fraction; [] without an online task."""
    out = []
    for task in ONLINE_TASKS:
        res = report.get("tasks", {}).get(task)
        if not res:
            continue
        out += [f"## {task}: the challenge's utility and the per-stay view", "",
                "Hourly AUROC/AUPRC over every (stay, hour) of the test split; normalised utility (Reyna et al. 2020) "
                "at the alarm threshold chosen on the validation split; intervals from a bootstrap over test stays. "
                "Warned 6-12 h: share of septic test stays with an alarm in [t_sepsis - 12, t_sepsis - 6]; false "
                "alarms: episodes of consecutive alarm hours starting outside [t_sepsis - 12, t_sepsis + 3], per "
                "100 stay-days.", "",
                "| method | AUROC [95% CI] | AUPRC [95% CI] | utility [95% CI] | val utility | warned 6-12 h | "
                "warned by onset | false alarms / 100 stay-days |", "|---|---|---|---|---|---|---|---|"]
        for method, r in res.items():
            v = r["stay_view"]
            out.append(f"| {method} | {_f(r['auroc'])} [{_f(r['auroc_ci'][0])}, {_f(r['auroc_ci'][1])}] | "
                       f"{_f(r['auprc'])} [{_f(r['auprc_ci'][0])}, {_f(r['auprc_ci'][1])}] | {_f(r['utility'])} "
                       f"[{_f(r['utility_ci'][0])}, {_f(r['utility_ci'][1])}] | {_f(r['val_utility'])} | "
                       f"{_f(v['warned_6_12h'])} | {_f(v['warned_before_onset'])} | "
                       f"{_f(v['false_alarms_per_100_stay_days'], 1)} |")
        out.append("")
        eff = report.get("label_efficiency", {}).get(task)
        if eff:
            out += [f"Label fractions ({task}): test utility mean ± sd over the repeats (AUROC in the table above).", "",
                    "| method | " + " | ".join(f"utility at {k}" for k in next(iter(eff.values()))) + " |",
                    "|---|" + "---|" * len(next(iter(eff.values())))]
            for method, fr in eff.items():
                out.append(f"| {method} | " + " | ".join(
                    f"{_f(r['utility_mean'])} ± {_f(r['utility_sd'])}" if r["repeats"] else "-" for r in fr.values()) + " |")
            out.append("")
            for pair, by_fraction in report.get("label_efficiency_comparisons", {}).get(task, {}).items():
                for key, d in by_fraction.items():
                    out.append(f"- {pair} at {key}: AUROC {d['auroc_diff']:+.3f} [{d['auroc_diff_ci'][0]:+.3f}, "
                               f"{d['auroc_diff_ci'][1]:+.3f}], utility {d['utility_diff']:+.3f} "
                               f"[{d['utility_diff_ci'][0]:+.3f}, {d['utility_diff_ci'][1]:+.3f}] (paired over test stays, "
                               f"means over repeats)")
            out.append("")
    return out
