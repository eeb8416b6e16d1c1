"""SPACE.yaml: the dotted config keys a sweep varies, one distribution each, checked before any trial.

    train.lr: {log_uniform: [1.0e-4, 3.0e-3]}
    train.weight_decay: {uniform: [0.0, 0.1]}
    mask.context_hours: {choice: [12, 24]}
    data.batch_size: {int: [16, 128, log]}     # [low, high] or [low, high, log]

Every key must be a key of the run config (`ehrjepa.config`), and every value a distribution can
draw (both bounds, every choice) must be a valid value of that key on the base config: so a typo
or a wrong type is one line naming the key before any trial starts, not a failed trial later.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ehrjepa.config import Config, ConfigError, config_from_dict

KINDS = ("log_uniform", "uniform", "int", "choice")


class SpaceError(ValueError):
    """A SPACE.yaml that cannot be searched; the message names the file and the key."""


@dataclass(frozen=True)
class Param:
    """One searched key: `kind` is one of KINDS; `args` are the bounds or the choices."""

    key: str  # dotted config key, e.g. train.lr; also the Optuna parameter name
    kind: str
    args: tuple

    def suggest(self, trial) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.args))
        if self.kind == "int":
            low, high, log = self.args
            return trial.suggest_int(self.key, low, high, log=log)
        low, high = self.args
        return trial.suggest_float(self.key, low, high, log=self.kind == "log_uniform")

    def extremes(self) -> list:
        """The values to check against the config: both bounds, or every choice."""
        return list(self.args) if self.kind == "choice" else list(self.args[:2])

    def describe(self) -> dict:
        """{kind: [args]} as written in SPACE.yaml (for the study's record of its space)."""
        if self.kind == "int":
            low, high, log = self.args
            return {"int": [low, high, "log"] if log else [low, high]}
        return {self.kind: list(self.args)}


def with_values(raw: dict, values: dict[str, Any]) -> dict:
    """A copy of config dict `raw` with each dotted key of `values` set."""
    out = yaml.safe_load(yaml.safe_dump(raw))  # a deep copy of plain data
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def key_hint(key: str, where: str) -> Any:
    """The type hint of dotted config key `key`; SpaceError naming it when the config has no such key."""
    cls, hint = Config, None
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            raise SpaceError(f"{where}: {key}: unknown config key ({'.'.join(parts[:i])} is a value, not a section)")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        if part not in names:
            section = ".".join(parts[:i]) or "the config"
            raise SpaceError(f"{where}: {key}: unknown config key (known in {section}: {', '.join(names)})")
        hint = hints[part]
        cls = hint
    if dataclasses.is_dataclass(hint):
        raise SpaceError(f"{where}: {key}: is a section, not a value")
    return hint


def _number(value, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise SpaceError(f"{where}: {key}: bound {value!r} is not a number")
    try:
        return float(value)  # PyYAML reads 1e-3 (no dot) as a string
    except ValueError:
        raise SpaceError(f"{where}: {key}: bound {value!r} is not a number") from None


def parse_param(key: str, spec: Any, where: str) -> Param:
    """One SPACE.yaml entry -> Param; SpaceError naming the key on a bad distribution or bounds."""
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(f"{where}: {key}: expected one distribution, e.g. {{log_uniform: [1.0e-4, 3.0e-3]}}, "
                         f"got {spec!r}")
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        raise SpaceError(f"{where}: {key}: unknown distribution {kind!r} (known: {', '.join(KINDS)})")
    if not isinstance(args, list) or not args:
        raise SpaceError(f"{where}: {key}: {kind} needs a list, e.g. {kind}: [low, high], got {args!r}")
    if kind == "choice":
        for value in args:
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise SpaceError(f"{where}: {key}: choice {value!r} is not a number, string or bool")
        if len(set(map(repr, args))) != len(args):
            raise SpaceError(f"{where}: {key}: choice lists a value twice: {args}")
        return Param(key, kind, tuple(args))
    if kind == "int":
        log = len(args) == 3 and args[2] == "log"
        if len(args) not in (2, 3) or (len(args) == 3 and not log):
            raise SpaceError(f"{where}: {key}: int takes [low, high] or [low, high, log], got {args}")
        low, high = (_number(v, key, where) for v in args[:2])
        if not (low.is_integer() and high.is_integer()):
            raise SpaceError(f"{where}: {key}: int bounds must be integers, got {args[:2]}")
        low, high = int(low), int(high)
    else:
        if len(args) != 2:
            raise SpaceError(f"{where}: {key}: {kind} takes [low, high], got {args}")
        low, high = (_number(v, key, where) for v in args)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise SpaceError(f"{where}: {key}: bounds must be finite, got {args}")
        log = kind == "log_uniform"
    if not low < high:
        raise SpaceError(f"{where}: {key}: need low < high, got [{low}, {high}]")
    if log and low <= 0:
        raise SpaceError(f"{where}: {key}: a log scale needs low > 0, got {low}")
    return Param(key, kind, (low, high, log) if kind == "int" else (low, high))


def load_space(path: str | Path, base_raw: dict) -> list[Param]:
    """Read SPACE.yaml and check every key and every extreme value against the base config dict."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: space file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpaceError(f"{path}: not valid YAML: {first}") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{path}: expected a mapping of dotted config keys to distributions, "
                         f"e.g. 'train.lr: {{log_uniform: [1.0e-4, 3.0e-3]}}'")
    params = []
    for key, spec in raw.items():
        if not isinstance(key, str) or "." not in key:
            raise SpaceError(f"{path}: {key!r}: expected a dotted config key such as train.lr")
        if key == "data.path":
            raise SpaceError(f"{path}: data.path: the data is set by --data, not searched")
        hint = key_hint(key, str(path))
        param = parse_param(key, spec, str(path))
        if hint is int and param.kind in ("uniform", "log_uniform"):
            raise SpaceError(f"{path}: {key}: is an integer key; use int: [low, high] (or [low, high, log])")
        for value in param.extremes():
            try:
                config_from_dict(with_values(base_raw, {key: value}), source="base config")
            except ConfigError as e:
                raise SpaceError(f"{path}: {key}: value {value!r} does not fit the config: {e}") from None
        params.append(param)
    return params
