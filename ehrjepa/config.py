"""Typed run configuration: YAML files in configs/ loaded into dataclasses, plus `--set` overrides.

A config file has four sections, one per dataclass: `data`, `model`, `mask`, `train`. Every key
is checked against its dataclass: an unknown key is an error that names it (dotted path and
file), and every value is type-checked, so a typo never silently falls back to a default.
`ModelConfig` and `MaskConfig` belong to the model code; this module only reads them.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ehrjepa.data.augment import AugmentConfig
from ehrjepa.masks import MaskConfig
from ehrjepa.models import ModelConfig


@dataclass
class DataConfig:
    """Which processed data to read and how it is cut into windows and batches."""

    path: str = ""  # processed data (OUT of `ehrjepa preprocess`); `ehrjepa train --data` sets it
    length: int = 29  # window length in hours: 24 context + 5 target hours by default
    # whole stays: min_length < length makes a sample a crop of min(n_hours, length) hours of
    # every stay with at least min_length hours (StayCropDataset); None = length (fixed windows)
    min_length: int | None = None
    crop: str = "start"  # whole stays: the crop starts at hour 0 (start) or a seeded random hour
    stride: int = 10  # hours between the starts of consecutive windows of a stay
    max_delta: float = 48.0  # cap on "hours since last observation"
    max_hours: int = 48  # hours the model's positional table covers (>= length; probes need 24+)
    batch_size: int = 64  # global batch: with N processes each one takes batch_size / N windows
    # >0: batches by token budget instead (global; samples x longest sample <= this per batch,
    # length-bucketed, the batch size in samples varies; batch_size then sizes validation only)
    tokens_per_batch: int = 0
    num_workers: int = 0  # DataLoader workers per process
    val_batches: int = 1  # size of the fixed validation set, in batches of batch_size
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training only; off by default
    # more unlabelled pretraining data: other processed folders whose samples join path's train
    # samples, features aligned by name to path's and normalised with path's statistics;
    # validation, checkpoints' data identity and probes stay path's (ehrjepa/data/extra.py)
    extra: list[str] = field(default_factory=list)  # `ehrjepa train --extra-data DIR` sets it
    extra_split: str = "train"  # the extra folders' train split, or "all" their stays


@dataclass
class TrainConfig:
    """Optimisation, schedules, device, logging and checkpointing."""

    max_steps: int = 1000  # the schedules run over this many steps
    stop_after: int = 0  # >0: end this invocation after that many steps, as an interruption would
    warmup_steps: int = 100  # linear LR warmup from 0
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-5  # learning rate at the end of the cosine decay
    weight_decay: float = 0.04  # cosine schedule from weight_decay ...
    weight_decay_end: float = 0.4  # ... to weight_decay_end (biases and norms get none)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    momentum: float = 0.996  # EMA momentum of the target encoder, rising linearly ...
    momentum_end: float = 1.0  # ... to momentum_end at max_steps
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int = 0  # CPU: torch intra-op threads for this run; 0 keeps torch's default
    compile: bool = True  # torch.compile the model (CUDA only; CPU runs eager)
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead | max-autotune
    bf16: bool = True  # bf16 autocast (CUDA only; CPU runs fp32)
    ckpt_every: int = 500  # write RUN/checkpoints/step_NNNNNNN.pt every that many steps
    keep_ckpts: int = 3  # step checkpoints kept (oldest removed); 0 keeps all
    val_every: int = 100  # validation loss, RankMe and target std every that many steps
    log_every: int = 10  # metrics.csv, TensorBoard and progress bar every that many steps
    seed: int = 0
    # best.pt keeps the validation step with the best of: "loss" (lowest JEPA validation loss),
    # "rankme" (highest RankMe of the target encoder's embeddings of the validation batches) or
    # "probe" (highest validation AUROC of a logistic probe, the sweep's probe objective, on the
    # stay label select_task over the first select_hours hours; data without that label falls
    # back to rankme, said once). The JEPA loss is lowest where the encoder is most collapsed
    # (issue 23), so it is not the default.
    select: str = "probe"
    select_task: str = "mortality_hosp"  # select=probe: the stay label (a task of ehrjepa probe)
    select_hours: int = 0  # select=probe: hours embedded per stay; 0 = data.length
    # the collapse guard: one line on stderr when RankMe falls below collapse_rankme x
    # min(width, validation rows) -- a fraction of the width, e.g. 0.15 x 64 = 9.6 for micro --
    # or the target std below collapse_std; once per drop (again only after a recovery)
    collapse_rankme: float = 0.15
    collapse_std: float = 1e-3  # the mean per-dimension std of the target embeddings


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = ("data", "model", "mask", "train")
SELECT = ("loss", "rankme", "probe")  # train.select


class ConfigError(ValueError):
    """A config file or override that does not fit the dataclasses; the message says where."""


# ---------------------------------------------------------------------------------------------
# checking one value against a type hint


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Return `value` as type `hint` (int -> float, list -> tuple) or raise ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):  # Optional[X] and X | Y
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list ({_type_name(hint)}), got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}: {value!r}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_hint = args[0] if args else Any
            items = [_coerce(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected bool (true/false), got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = value
        if isinstance(value, str):  # PyYAML reads "1e4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if isinstance(number, float) and number.is_integer():
            return int(number)
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected float, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected str, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {hint.__name__} keys, got {value!r}")
        return _build(hint, value, where)
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")


def _build(cls: type, values: dict, where: str) -> Any:
    """Build dataclass `cls` from a dict, defaults for what is missing; unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown key '{path}' (known: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # a dataclass's own checks (__post_init__)
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


# ---------------------------------------------------------------------------------------------
# public API


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' -> (['train', 'lr'], 0.0003); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.max_steps=200")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ConfigError(f"--set {text!r}: bad key {key!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: cannot read the value as YAML: {e}") from None
    return keys, value


def config_from_dict(raw: dict, overrides: list[str] = (), source: str = "config") -> Config:
    """Config from a plain dict (a YAML file, a checkpoint's `config`) plus `--set` overrides."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with sections data/model/mask/train")
    raw = _deep_copy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: '{k}' is not a section")
        node[keys[-1]] = value
    try:
        cfg = _build(Config, raw, "")
        check_config(cfg)
    except ConfigError as e:
        origin = source if not overrides else f"{source} with --set {' '.join(overrides)}"
        raise ConfigError(f"{origin}: {e}") from None
    return cfg


def check_config(cfg: Config) -> None:
    """Checks across fields and ranges, beyond the types."""
    d, t = cfg.data, cfg.train
    positive = [("data.length", d.length), ("data.stride", d.stride),
                ("data.batch_size", d.batch_size), ("data.max_hours", d.max_hours),
                ("train.max_steps", t.max_steps), ("train.log_every", t.log_every),
                ("train.val_every", t.val_every), ("train.ckpt_every", t.ckpt_every),
                ("train.lr", t.lr)]
    for name, v in positive:
        if v <= 0:
            raise ConfigError(f"{name} must be > 0, got {v}")
    non_negative = [("data.num_workers", d.num_workers), ("data.val_batches", d.val_batches),
                    ("train.stop_after", t.stop_after), ("train.warmup_steps", t.warmup_steps),
                    ("train.min_lr", t.min_lr), ("train.grad_clip", t.grad_clip),
                    ("train.keep_ckpts", t.keep_ckpts), ("train.cpu_threads", t.cpu_threads),
                    ("train.weight_decay", t.weight_decay),
                    ("train.weight_decay_end", t.weight_decay_end)]
    for name, v in non_negative:
        if v < 0:
            raise ConfigError(f"{name} must be >= 0, got {v}")
    # schedules that cannot be meant: the cosine would rise to min_lr, the warmup never end
    if t.min_lr > t.lr:
        raise ConfigError(f"train.min_lr ({t.min_lr:g}) must be <= train.lr ({t.lr:g}): the "
                          "learning rate decays from train.lr to train.min_lr")
    if t.warmup_steps > t.max_steps:
        raise ConfigError(f"train.warmup_steps ({t.warmup_steps}) must be <= train.max_steps "
                          f"({t.max_steps}): the warmup would never reach train.lr; lower "
                          "train.warmup_steps with train.max_steps")
    if d.min_length is not None and not 1 <= d.min_length <= d.length:
        raise ConfigError(f"data.min_length must be in [1, data.length={d.length}], got {d.min_length}")
    if d.crop not in ("start", "random"):
        raise ConfigError(f"data.crop: unknown crop {d.crop!r}; choose start or random")
    if d.extra_split not in ("train", "all"):
        raise ConfigError(f"data.extra_split: unknown {d.extra_split!r}; choose train or all")
    for i, folder in enumerate(d.extra):
        if not folder.strip():
            raise ConfigError(f"data.extra[{i}]: an empty folder name")
    if d.tokens_per_batch < 0:
        raise ConfigError(f"data.tokens_per_batch must be >= 0, got {d.tokens_per_batch}")
    if 0 < d.tokens_per_batch < d.length:
        raise ConfigError(f"data.tokens_per_batch ({d.tokens_per_batch}) must be >= data.length "
                          f"({d.length}): a batch must hold the longest sample")
    if d.max_hours < d.length:
        raise ConfigError(f"data.max_hours ({d.max_hours}) must be >= data.length ({d.length})")
    if not 0.0 <= t.momentum <= t.momentum_end <= 1.0:
        raise ConfigError(f"need 0 <= train.momentum ({t.momentum}) <= train.momentum_end "
                          f"({t.momentum_end}) <= 1")
    if t.select not in SELECT:
        raise ConfigError(f"train.select: unknown {t.select!r}; choose one of {', '.join(SELECT)}")
    if t.select_hours < 0 or t.select_hours > d.max_hours:
        raise ConfigError(f"train.select_hours must be in [0, data.max_hours={d.max_hours}], got {t.select_hours}")
    if not 0.0 <= t.collapse_rankme < 1.0:
        raise ConfigError(f"train.collapse_rankme is a fraction of the width, in [0, 1), got {t.collapse_rankme}")
    if t.device not in ("auto", "cpu", "cuda") and not t.device.startswith("cuda:"):
        raise ConfigError(f"train.device must be auto, cpu or cuda, got {t.device!r}")
    try:  # the model's and the masks' own checks: shapes, and masks that fit the window
        cfg.model.resolved()
        cfg.mask.check(d.length)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if t.compile_mode not in ("default", "reduce-overhead", "max-autotune",
                              "max-autotune-no-cudagraphs"):
        raise ConfigError(f"train.compile_mode: unknown mode {t.compile_mode!r}")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config file (None: all defaults) and apply `--set a.b=value` overrides."""
    if path is None:
        return config_from_dict({}, overrides, source="defaults")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    # an empty file would train the default (small) model: almost surely not what was meant
    if raw is None or (isinstance(raw, dict) and not raw):
        raise ConfigError(f"{path}: the config is empty; it needs at least one of the sections "
                          f"{', '.join(SECTIONS)} (see configs/micro.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {', '.join(SECTIONS)}, "
                          f"got {type(raw).__name__} {raw!r:.60}")
    return config_from_dict(raw, overrides, source=str(path))


def config_to_dict(cfg: Any) -> dict:
    """Plain dict of builtins (tuples as lists), for YAML, checkpoints and `weights_only` loads."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d
