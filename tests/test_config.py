"""Run configs: YAML -> typed dataclasses, unknown keys and bad types named, --set overrides."""
from pathlib import Path

import pytest

from ehrjepa.config import (Config, ConfigError, config_from_dict, config_to_dict, load_config,
                            parse_override, save_config)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
RUN_CONFIGS = [p for p in CONFIGS if p.stem in ("micro", "small", "base", "large")]


def write(tmp_path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_load_and_round_trip(tmp_path):
    assert {p.stem for p in RUN_CONFIGS} == {"micro", "small", "base", "large"}
    for path in RUN_CONFIGS:
        cfg = load_config(path)
        assert isinstance(cfg, Config)
        out = tmp_path / f"{path.stem}.yaml"
        save_config(cfg, out)
        assert load_config(out) == cfg
        assert config_from_dict(config_to_dict(cfg)) == cfg
    sizes = {p.stem: load_config(p).model.size for p in RUN_CONFIGS}
    assert sizes == {"micro": "micro", "small": "small", "base": "base", "large": "large"}


def test_values_are_typed(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-3\n  max_steps: 1e4\n  betas: [0.9, 0.95]\n"
                                      "data:\n  max_delta: 24\n"))
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)  # YAML reads 1e-3 as a string
    assert cfg.train.max_steps == 10000 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.betas == (0.9, 0.95)
    assert cfg.data.max_delta == 24.0 and isinstance(cfg.data.max_delta, float)
    assert cfg.model.width is None  # Optional fields keep None


def test_unknown_key_is_named_with_its_path_and_file(tmp_path):
    path = write(tmp_path, "train:\n  max_step: 10\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "train.max_step" in msg and str(path) in msg and "max_steps" in msg  # lists the known keys
    with pytest.raises(ConfigError, match="'optim'"):
        load_config(write(tmp_path, "optim:\n  lr: 1\n"))
    with pytest.raises(ConfigError, match=r"model\.widht"):
        load_config(write(tmp_path, "model:\n  widht: 64\n"))


@pytest.mark.parametrize("text, where", [
    ("train:\n  max_steps: ten\n", "train.max_steps"),
    ("train:\n  max_steps: 1.5\n", "train.max_steps"),
    ("train:\n  compile: 1\n", "train.compile"),
    ("train:\n  lr: [1]\n", "train.lr"),
    ("train:\n  betas: [0.9]\n", "train.betas"),
    ("data:\n  length: true\n", "data.length"),
    ("train: 3\n", "train"),
    ("model:\n  size: huge\n", "model.size"),
    ("mask:\n  context_hours: 25\n", "exceeds the window length"),
    ("train:\n  momentum: 1.1\n", "train.momentum"),
    ("data:\n  length: 64\n  max_hours: 48\n", "data.max_hours"),
    ("train:\n  device: tpu\n", "train.device"),
    ("train:\n  lr: 1.0e-4\n  min_lr: 1.0e-3\n", "train.min_lr (0.001) must be <= train.lr (0.0001)"),
    ("train:\n  max_steps: 50\n  warmup_steps: 100\n", "train.warmup_steps (100) must be <= train.max_steps (50)"),
])
def test_bad_values_are_errors_that_say_where(tmp_path, text, where):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert where in str(e.value) and str(path) in str(e.value)


def test_set_overrides(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 10\n")
    cfg = load_config(path, ["train.max_steps=200", "train.ckpt_every=50", "train.lr=3e-4",
                             "train.compile=false", "model.size=micro", "train.betas=[0.8, 0.9]",
                             "data.path=/tmp/x y"])
    assert cfg.train.max_steps == 200 and cfg.train.ckpt_every == 50
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.compile is False
    assert cfg.model.size == "micro" and cfg.train.betas == (0.8, 0.9)
    assert cfg.data.path == "/tmp/x y"
    with pytest.raises(ConfigError, match=r"train\.max_stepz"):
        load_config(path, ["train.max_stepz=3"])
    with pytest.raises(ConfigError, match=r"train\.max_steps.*expected int"):
        load_config(path, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(path, ["train.max_steps"])


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a=x=y") == (["a"], "x=y")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "train: [\n"))


def test_defaults_without_a_file():
    cfg = load_config(None, ["train.seed=3"])
    assert cfg.train.seed == 3 and cfg.train.momentum == 0.996 and cfg.train.momentum_end == 1.0


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n", "- 1\n- 2\n", "train:\n"])
def test_an_empty_or_section_less_config_is_an_error_naming_the_file(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_whole_stay_keys_checked_and_old_configs_keep_fixed_windows():
    old = config_from_dict({"data": {"length": 29}})  # a config written before whole stays
    assert old.data.min_length is None and old.data.tokens_per_batch == 0
    cfg = config_from_dict({"data": {"length": 168, "min_length": 8, "max_hours": 168,
                                     "tokens_per_batch": 4096, "crop": "random"},
                            "mask": {"context_fraction": 0.75, "target_hours": 168}})
    assert config_from_dict(config_to_dict(cfg)) == cfg
    for bad, where in [({"data": {"min_length": 30}}, "data.min_length"),
                       ({"data": {"crop": "middle"}}, "data.crop"),
                       ({"data": {"tokens_per_batch": 10}}, "data.tokens_per_batch"),
                       ({"mask": {"context_fraction": 1.5}}, "context_fraction")]:
        with pytest.raises(ConfigError, match=where):
            config_from_dict(bad)
