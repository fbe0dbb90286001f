"""Hostile YAML is refused quickly, in little memory, with one line (issue 23, item 2).

A "billion laughs" bomb is a few hundred bytes whose nine levels of nine aliases
expand to 9⁹ values; before this, rendering it in an error message took 105 s and
4.4 GB, and under ``model.args`` (which takes any value) it passed validation and
crashed later. Each case here is timed and its peak allocation measured.
"""

import os
import subprocess
import sys
import time
import tracemalloc

import pytest

from conftest import ROOT
from edgecomp import config
from edgecomp.errors import ConfigError

# The classic bomb as one flow sequence: level i holds nine aliases of level i-1.
LEVELS = ['&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
    f"&{name} [" + ", ".join([f"*{previous}"] * 9) + "]" for previous, name in zip("abcdefgh", "bcdefghi")
]
BOMB = "[" + ", ".join(LEVELS) + "]"


def refused(path, overrides=()):
    """Loads the config expecting a ConfigError; returns (message, seconds, peak MiB allocated)."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ConfigError) as caught:
            config.load(path, overrides)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    return message, seconds, peak


@pytest.mark.parametrize("text, overrides", [
    (f"name: {BOMB}\n", []),
    (f"model: {{zoo: digits_cnn, args: {{width: {BOMB}}}}}\n", []),
    ("name: x\n", [f"name={BOMB}"]),
    ("name: x\n", [f"model.args={{width: {BOMB}}}"]),
], ids=["name", "model.args", "--set name", "--set model.args"])
def test_alias_bomb_is_refused_at_once(tmp_path, text, overrides):
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    message, seconds, peak = refused(path, overrides)
    assert "expands to more than 100000 values" in message and "alias" in message
    assert message.startswith("--set " if overrides else str(path))
    assert seconds < 1.0 and peak < 20, (seconds, peak)


# Runs a module as ``python -m`` would and writes the process's own peak RSS (VmHWM, which
# exec resets, unlike ru_maxrss, which keeps the forking parent's) to argv[1] at exit.
MEASURED = """
import atexit, re, runpy, sys
out = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as status, open(out, "w") as f:
        f.write(re.search(r"VmHWM:\\s+(\\d+)", status.read()).group(1))
atexit.register(peak)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_measured(tmp_path, module, *args):
    """``python -m module args``: (exit code, stderr, seconds, peak RSS in MiB of that process alone)."""
    peak = tmp_path / "peak_kib"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURED, str(peak), module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    return done.returncode, done.stderr, time.perf_counter() - start, int(peak.read_text()) / 1024


@pytest.mark.parametrize("where", ["file", "--set"])
def test_alias_bomb_through_the_cli_is_exit_2_and_one_line(tmp_path, where):
    path = tmp_path / "bomb.yaml"
    path.write_text(f"name: {BOMB}\n" if where == "file" else "name: x\n")
    extra = [] if where == "file" else ["--set", f"model.args={{width: {BOMB}}}"]
    code, stderr, seconds, rss = run_measured(tmp_path, "edgecomp.train", f"--config={path}", *extra)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "alias" in lines[0], stderr
    assert rss < 200, f"{rss:.0f} MiB"  # the whole process: Python, absl, pydantic, yaml (~60 MiB)
    assert seconds < 30  # mostly interpreter start and imports on a loaded machine


@pytest.mark.parametrize("text, expected", [
    ("name: a\ntrain: {epochs: 3}\nname: b\n", "duplicate key 'name' at line 3 (first at line 1)"),
    ("train:\n  epochs: 3\n  learning_rate: 0.1\n  epochs: 4\n", "duplicate key 'epochs' at line 4 (first at line 2)"),
    ("targets: [{cpu: {quantization: int8, quantization: float32}}]\n", "duplicate key 'quantization' at line 1"),
])
def test_duplicate_keys_are_an_error_naming_the_key_and_line(tmp_path, text, expected):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    message, _, _ = refused(path)
    assert expected in message


def test_duplicate_key_in_set_value_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\n")
    message, _, _ = refused(path, ["train={epochs: 1, epochs: 2}"])
    assert message.startswith("--set train: duplicate key 'epochs'")
    path.write_text("name: x\nmodel: {zoo: digits_cnn}\nstages:\n  - prune: &p {sparsity: 0.5, epochs: 1}\n  - cluster: {clusters: 8}\n"
                    "targets: [{cpu: {quantization: int8}}]\nbenchmark:\n  threads: &t [1]\n  runs: 3\n"
                    "train: {epochs: 2, <<: {learning_rate: 0.01}}\n")
    cfg = config.load(path, ["model.args={a: &w 2, b: *w}"])  # a few aliases and a merge key are fine
    assert cfg.train.learning_rate == 0.01 and dict(cfg.model.args) == {"a": 2, "b": 2}


def test_oversize_config_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "# padding\n" * 120_000)  # 1.2 MB of comments: valid YAML
    message, seconds, peak = refused(path)
    assert "larger than 1024 KiB, the limit for a config" in message
    assert seconds < 1.0 and peak < 10
    message, _, _ = refused("/dev/zero")  # endless: read only up to the limit
    assert "larger than 1024 KiB" in message


@pytest.mark.parametrize("text, expected", [
    ("name: x\nmodel: {zoo: digits_cnn, args: {a: &v 1, b: [" + ", ".join(["*v"] * 101) + "]}}\n",
     "more than 100 YAML aliases"),
    ("name: x\nmodel: {zoo: digits_cnn, args: {a: &loop [1, *loop]}}\n", "refers to a node that contains it"),
    ("name: " + "[" * 100 + "]" * 100 + "\n", "nests more than 64 levels deep"),
    ("name: " + "[" * 5000 + "\n", "YAML syntax error"),
    ("model: {zoo: digits_cnn, args: {a: &a " + "[" * 40 + "]" * 40 + ", b: &b " + "[" * 30 + "*a" + "]" * 30
     + "}}\n", "once its aliases (*name) are expanded"),
    ("seed: " + "7" * 5000 + "\n", "a YAML value cannot be read: Exceeds the limit"),
    ("name: 2024-02-30\n", "a YAML value cannot be read: day is out of range"),
])
def test_other_hostile_yaml_is_one_line(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    message, seconds, _ = refused(path)
    assert expected in message and seconds < 1.0


def test_short_renders_any_value_in_bounded_time():
    shared = ["lol"] * 9
    for _ in range(9):  # 9**10 values once expanded, built from shared references like a YAML bomb
        shared = [shared] * 9
    looped = [1]
    looped.append(looped)
    for value in (shared, looped, "x" * 10_000_000, 7 ** 100_000, {str(i): i for i in range(100_000)}):
        start = time.perf_counter()
        text = config._short(value)
        assert len(text) <= 80 and time.perf_counter() - start < 0.5, (text, type(value))
    message = str(pytest.raises(ConfigError, config.from_dict, {"model": {"builder": "m" * 1_000_000}}).value)
    assert "builder must look like" in message and len(message) < 600
