"""The config is strict: every mistake names the dotted key, the value and what is allowed."""

import json
from pathlib import Path

import pytest

from edgecomp import config
from edgecomp.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "configs").glob("study_*.yaml"))
SEARCHES = sorted((ROOT / "configs").glob("search_*.yaml"))   # loaded in tests/test_search.py
CONFIGS = sorted(set((ROOT / "configs").glob("*.yaml")) - set(STUDIES) - set(SEARCHES))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    cfg = config.load(path)
    assert cfg.name
    assert cfg.targets


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_loads_with_the_recipes_it_names_or_all(path):
    from edgecomp import study

    loaded = study.load(path)
    assert study.selected(loaded) == list(loaded.recipes or study.RECIPES)


def test_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"quickstart.yaml", "mnist1d_int8.yaml"}


def test_schema_json_is_current():
    published = json.loads((ROOT / "configs" / "schema.json").read_text())
    assert published == config.json_schema(), "run: python tools/write_schema.py"


def test_defaults_fill_every_section():
    cfg = config.from_dict({})
    assert cfg.data.source == "digits"
    assert cfg.model.zoo == "digits_cnn"
    assert config.stage_kind(cfg.targets[0]) == "cpu"
    assert cfg.benchmark.devices == ("local",)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"nme": "x"}, "unknown key 'nme'"),
        ({"data": {"sorce": "digits"}}, "unknown key 'data.sorce'; allowed keys here: source"),
        ({"data": {"source": "cifar10"}}, "data.source: Input should be 'digits'"),
        ({"train": {"epochs": "many"}}, "train.epochs: Input should be a valid integer"),
        ({"train": {"epochs": -1}}, "train.epochs: Input should be greater than or equal to 0 (got -1)"),
        ({"data": {"validation_split": 1.5}}, "data.validation_split: Input should be less than 1 (got 1.5)"),
        ({"model": {"zoo": "digits_cnn", "path": "m.h5"}}, "model: give exactly one of zoo, path or builder (got zoo and path)"),
        ({"model": {"zoo": "vgg16"}}, "zoo 'vgg16' is not a built-in architecture; allowed: digits_cnn"),
        ({"model": {"builder": "no_colon"}}, "builder must look like 'package.module:function'"),
        ({"targets": [{"cpu": {"quantization": "int4"}}]}, "targets[0].cpu.quantization: Input should be 'float32'"),
        ({"targets": [{"cpu": {"quantization": "float16", "io": "int8"}}]}, "io 'int8' does not fit quantization 'float16'"),
        ({"targets": [{"cpu": {}, "gpu": {}}]}, "targets[0]: expected a map with exactly one key, one of: cpu, gpu"),
        ({"targets": [{"cpu": {}}, {"cpu": {}}]}, "targets[1].cpu: each target may appear once"),
        ({"stages": [{"shrink": {}}]}, "stages[0]: expected a map with exactly one key, one of: distill"),
        ({"stages": {"prune": {}}}, "stages: Input should be a list"),
        ({"data": {"source": "npz"}}, "data: path is required when source is 'npz'"),
        ({"data": {"source": "mnist1d", "image_size": [8, 8]}}, "image_size is used only with source image_dir"),
        ({"benchmark": {"devices": ["usb://x"]}}, "device 'usb://x' is not available"),
        ({"name": "a/b"}, "name: String should match pattern"),
        ({"data": "digits"}, "data: Input should be a valid dictionary"),
        ({"stages": [{"quantize": {}}], "targets": [{"cpu": {"quantization": "int8"}}, {"gpu": {}}]},
         "targets[1].gpu.quantization: float16 cannot follow a quantize stage"),
        ({"stages": [{"quantize": {}}], "targets": [{"cpu": {"quantization": "float32"}}]},
         "targets[0].cpu.quantization: float32 cannot follow a quantize stage"),
    ],
)
def test_bad_config_names_key_and_allowed_values(raw, expected):
    with pytest.raises(ConfigError) as caught:
        config.from_dict(raw)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_every_declared_target_and_stage_has_its_module():
    import importlib.util

    assert all(importlib.util.find_spec(f"edgecomp.targets.{name}") for name in config.TARGET_NAMES)
    assert all(importlib.util.find_spec(f"edgecomp.stages.{name}") for name in config.STAGE_NAMES)
    assert config.stage_params(config.from_dict({"targets": [{"gpu": {}}]}).targets[0]).quantization == "float16"


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {source: digits\n")
    with pytest.raises(ConfigError, match=r"YAML syntax error at line \d+"):
        config.load(path)


@pytest.mark.parametrize("text, expected", [("", "empty"), ("- a\n- b\n", "top level must be a map")])
def test_empty_or_list_file_is_rejected(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        config.load(path)


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\ntargets: [{cpu: {quantization: int8}}]\n")
    cfg = config.load(path, ["train.epochs=3", "data.batch_size=16", "targets=[{cpu: {quantization: float16}}]",
                             "benchmark.threads=[1, 2]"])
    assert cfg.train.epochs == 3
    assert cfg.data.batch_size == 16
    assert config.stage_params(cfg.targets[0]).quantization == "float16"
    assert cfg.benchmark.threads == (1, 2)


def test_override_into_list_by_index(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("targets: [{cpu: {quantization: int8}}]\n")
    cfg = config.load(path, ["targets.0.cpu.quantization=dynamic"])
    assert config.stage_params(cfg.targets[0]).quantization == "dynamic"
    with pytest.raises(ConfigError, match="list index below 1"):
        config.load(path, ["targets.3.cpu.quantization=dynamic"])


@pytest.mark.parametrize("override, expected", [
    ("train.epochs", "expected key=value"),
    ("train.epochs=lots", "train.epochs: Input should be a valid integer"),
    ("train.nope=1", "unknown key 'train.nope'"),
    ("name.sub=1", "'name' is a string, not a map or list"),
])
def test_bad_override_is_a_config_error(tmp_path, override, expected):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path, [override])
    assert expected in str(caught.value)


def test_resolved_config_round_trips():
    cfg = config.from_dict({"name": "x", "train": {"epochs": 2}, "targets": [{"cpu": {"quantization": "dynamic"}}]})
    import yaml

    again = config.from_dict(yaml.safe_load(config.to_yaml(cfg)))
    assert again == cfg


def test_config_is_frozen():
    cfg = config.from_dict({})
    with pytest.raises(Exception):
        cfg.seed = 3
