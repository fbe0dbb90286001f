"""Numbers that would crash a run later are refused while the config is read (issue 23).

Before, ``seed: 4294967296`` passed validation and NumPy refused it at the first
``set_random_seed``, ``benchmark.timeout_s: .inf`` reached ``subprocess`` as an
endless timeout, and ``data.image_size: [100000, 100000]`` ended in a MemoryError.
Now every number in the config has a stated range: the error names the dotted key
and what it allows, and the CLIs turn it into one ``error: ...`` line, exit 2.
"""

import math
import re

import pytest

from conftest import run_cli
from test_config_properties import numbers
from edgecomp import config
from edgecomp.errors import ConfigError

# A config with every section that holds numbers: all five stages, all four targets.
FULL = {
    "name": "numbers", "seed": 7,
    "data": {"source": "synthetic", "image_size": [8, 8], "channels": 1, "num_classes": 3, "samples": 60,
             "validation_split": 0.1, "test_split": 0.2, "batch_size": 16, "calibration_samples": 20},
    "model": {"zoo": "digits_cnn", "args": {"width": 0.5}},
    "train": {"epochs": 2, "learning_rate": 0.01, "early_stopping_patience": 3,
              "augment": {"shift": 0.1, "noise": 0.1}},
    "stages": [
        {"distill": {"teacher": {"zoo": "digits_cnn"}, "teacher_epochs": 2, "temperature": 4.0, "alpha": 0.1,
                     "epochs": 2, "learning_rate": 0.001, "features": [{"teacher": "a", "student": "b", "weight": 1.0}],
                     "teacher_ensemble": 1}},
        {"low_rank": {"rank_ratio": 0.5, "rank_multiple": 8, "min_params": 100, "finetune_epochs": 1,
                      "learning_rate": 0.001}},
        {"prune": {"min_weights": 0, "sparsity": 0.5, "epochs": 1, "learning_rate": 0.001, "ramp_share": 0.5, "recovery_epochs": 1,
                   "round_to": 8}},
        {"cluster": {"clusters": 8, "epochs": 1, "learning_rate": 0.001}},
        {"quantize": {"epochs": 1, "learning_rate": 0.001, "distill_temperature": 2.0, "distill_alpha": 0.5}},
    ],
    "targets": [{"cpu": {"quantization": "int8", "max_accuracy_drop": 1.0}}, {"gpu": {"quantization": "int8"}},
                {"edgetpu": {"compiler_timeout_s": 60.0}},
                {"micro": {"flash_kb": 1024, "ram_kb": 256, "test_samples": 10}}],
    "benchmark": {"runs": 5, "warmup": 1, "threads": [1, 2], "timeout_s": 60.0},
}
HOSTILE = [math.inf, -math.inf, math.nan, 1e300, 2**64, -(2**64), 10**30]


def replaced(raw, path, value):
    """A deep copy of ``raw`` with the leaf at ``path`` set to ``value``."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(raw, list):
        return [replaced(item, rest, value) if index == head else item for index, item in enumerate(raw)]
    return {key: replaced(item, rest, value) if key == head else item for key, item in raw.items()}


def dotted(path):
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")


def refused(raw):
    with pytest.raises(ConfigError) as caught:
        config.from_dict(raw)
    message = str(caught.value)
    assert "\n" not in message
    return message


def with_low_rank(rule):
    """FULL with the low_rank stage's rank rule replaced (energy and target_params_ratio exclude rank_ratio)."""
    stages = [dict(item) for item in FULL["stages"]]
    stages[1] = {"low_rank": {**{k: v for k, v in stages[1]["low_rank"].items() if k != "rank_ratio"}, **rule}}
    return {**FULL, "stages": stages}


BASES = [FULL, with_low_rank({"energy": 0.9}), with_low_rank({"sensitivity": True, "target_params_ratio": 0.5})]
CASES = {}   # dotted key -> (base, path): every numeric key of every base, once
for number, base in enumerate(BASES):
    for path, _ in numbers(config.to_dict(config.from_dict(base))):
        CASES.setdefault(dotted(path), (number, path))


def numeric_properties(schema):
    """Names of every key the JSON schema declares as an integer or a number, or a list of them."""
    def numeric(spec):
        options = spec.get("anyOf", [spec])
        return any(option.get("type") in ("integer", "number") or ("items" in option and numeric(option["items"]))
                   or any(numeric(item) for item in option.get("prefixItems", [])) for option in options)

    found = set()
    for definition in [schema, *schema.get("$defs", {}).values()]:
        found |= {name for name, spec in definition.get("properties", {}).items() if numeric(spec)}
    return found


def test_the_cases_cover_every_numeric_key_the_schema_declares():
    covered = {path[-1] if isinstance(path[-1], str) else path[-2] for _, path in CASES.values()}
    assert numeric_properties(config.json_schema()) <= covered


@pytest.mark.parametrize("key", sorted(CASES))
def test_every_number_refuses_inf_nan_and_huge_values_naming_key_and_range(key):
    """Each numeric key, set to inf, -inf, nan, 1e300 or a 20-30 digit integer: one line that names the
    key and its allowed range (a finite number, a bound, or the values allowed), never a config that passes."""
    number, path = CASES[key]
    base = config.to_dict(config.from_dict(BASES[number]))
    for value in HOSTILE:
        message = refused(replaced(base, path, value))
        assert key in message, (value, message)
        assert re.search(r"less than|greater than|<=|>=|finite|one of 1, 3|should be 1 or 3", message), (value, message)


@pytest.mark.parametrize("raw, expected", [
    ({"seed": 2**32}, "seed: Input should be less than or equal to 2147483647 (got 4294967296)"),
    ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"benchmark": {"timeout_s": math.inf}}, "benchmark.timeout_s: Input should be a finite number (got inf); "
                                             "allowed: a finite number > 0 and <= 86400"),
    ({"benchmark": {"timeout_s": math.nan}}, "benchmark.timeout_s: Input should be a finite number (got nan)"),
    ({"benchmark": {"timeout_s": 86401}}, "benchmark.timeout_s: Input should be less than or equal to 86400"),
    ({"targets": [{"edgetpu": {"compiler_timeout_s": math.inf}}]}, "targets[0].edgetpu.compiler_timeout_s: Input "
                                                                    "should be a finite number"),
    ({"data": {"source": "synthetic", "image_size": [100000, 100000]}},
     "data.image_size[0]: Input should be less than or equal to 4096 (got 100000)"),
    ({"data": {"image_size": [8, 4097]}}, "data.image_size[1]: Input should be less than or equal to 4096"),
    ({"data": {"batch_size": 10**12}}, "data.batch_size: Input should be less than or equal to 65536"),
    ({"data": {"source": "synthetic", "samples": 10**9}}, "data.samples: Input should be less than or equal to"),
    ({"stages": [{"prune": {"learning_rate": math.inf}}]},
     "stages[0].prune.learning_rate: Input should be a finite number (got inf); allowed: a finite number > 0 and "
     "<= 10"),
    ({"benchmark": {"threads": [10**6]}}, "benchmark.threads[0]: Input should be less than or equal to 1024"),
])
def test_numbers_out_of_range_name_the_key_and_the_range(raw, expected):
    assert expected in refused(raw)


@pytest.mark.parametrize("data", [
    {"source": "digits", "image_size": [4096, 4096]},
    {"source": "digits", "image_size": [1200, 1200], "channels": 3},
    {"source": "synthetic", "image_size": [2048, 2048], "channels": 3, "samples": 1000},
])
def test_generated_data_too_big_for_memory_is_refused_with_its_size(data):
    message = refused({"data": data})
    assert f"{data['source']} data of" in message and "GiB" in message and "choose a smaller image_size" in message


def test_largest_allowed_values_still_load():
    cfg = config.from_dict({"seed": config.MAX_SEED, "data": {"source": "synthetic", "image_size": [4096, 16]},
                            "benchmark": {"timeout_s": 86400, "threads": [1024]}})
    assert cfg.seed == 2**31 - 1 and cfg.data.image_size == (4096, 16) and cfg.benchmark.timeout_s == 86400


@pytest.mark.parametrize("override, expected", [
    ("seed=4294967296", "seed: Input should be less than or equal to 2147483647 (got 4294967296)"),
    ("benchmark.timeout_s=.inf", "benchmark.timeout_s: Input should be a finite number (got inf); allowed: "
                                 "a finite number > 0 and <= 86400"),
    ("data.image_size=[100000, 100000]", "data.image_size[0]: Input should be less than or equal to 4096"),
])
def test_train_cli_refuses_out_of_range_numbers_with_one_line_and_exit_2(tmp_path, override, expected):
    path = tmp_path / "c.yaml"
    path.write_text("name: numbers\ndata: {source: synthetic}\n")
    done = run_cli("edgecomp.train", f"--config={path}", "--set", override, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr


@pytest.mark.parametrize("timeout, expected", [
    ("inf", "not a number in the range [1, 86400"),
    ("nan", "must be a finite number of seconds from 1 to 86400"),
    ("1e9", "not a number in the range [1, 86400"),
])
def test_bench_cli_refuses_endless_timeouts_with_one_line_and_exit_2(tmp_path, timeout, expected):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"never read: the flags are refused first")
    done = run_cli("edgecomp.bench", f"--model={model}", f"--timeout={timeout}", timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: flag --timeout") and expected in lines[0], done.stderr
