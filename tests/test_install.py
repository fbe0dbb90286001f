"""Installable where users work: the `edgecomp` command, and the micro target's optional interpreter.

tflite-micro (TFLM's Python interpreter) has wheels for Linux x86_64 only, so it is the
`[micro]` extra: a machine without it runs every other target, and a micro target there
stops before training with one line that says how to enable it. The core install's
resolution on macOS arm64 and Linux aarch64 is checked in CI (tools/check_platforms.py).
"""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from test_cli import assert_one_line_error


def test_edgecomp_command_prints_the_version():
    import edgecomp

    script = Path(sys.executable).parent / "edgecomp"   # the console script pip installed beside python
    assert script.exists(), "pip install -e . did not install the edgecomp command"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == f"edgecomp {edgecomp.__version__}"


def test_edgecomp_command_runs_the_named_tool():
    done = run_cli("edgecomp", "check", "--model=/no/such/model.tflite")
    assert_one_line_error(done, "does not exist")


def test_an_unknown_command_is_refused_with_the_list():
    done = run_cli("edgecomp", "traine")
    assert done.returncode == 2
    assert "unknown command 'traine'" in done.stderr and "train" in done.stderr and "search" in done.stderr


def test_the_core_install_does_not_need_tflite_micro():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("tflite-micro")]
    micro = project["optional-dependencies"]["micro"]
    assert len(micro) == 1 and micro[0].startswith("tflite-micro==")   # one nightly, pinned exactly


def test_a_micro_target_without_tflm_stops_before_training(tmp_path):
    config = tmp_path / "micro.yaml"
    config.write_text(f"name: m\noutput_dir: {tmp_path}/out\ndata: {{source: digits}}\nmodel: {{zoo: digits_cnn}}\n"
                      "targets:\n  - cpu: {quantization: int8}\n  - micro: {board: cortex_m4_256k}\n")
    hidden = ("import runpy, sys; sys.modules['tflite_micro'] = None; "   # as on a machine without the package
              f"sys.argv = ['edgecomp train', '--config={config}']; runpy.run_module('edgecomp.train', "
              "run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          check=False)
    assert_one_line_error(done, "targets[1].micro: the micro target runs every file in TFLM's Python interpreter")
    assert "pip install 'edgecomp[micro]'" in done.stderr
    assert not (tmp_path / "out" / "m" / "checkpoints").exists()   # nothing trained


def test_the_library_names_the_missing_interpreter(monkeypatch):
    import edgecomp
    from edgecomp import api

    monkeypatch.setitem(sys.modules, "tflite_micro", None)
    with pytest.raises(edgecomp.ConfigError, match=r"edgecomp\[micro\]"):
        api.verify(b"TFL3", "micro", [[0.0]], [0])
