"""The scripts in tools/ start and do their cheapest real work; experiments/ imports; tools/ use public names only.

tools/corpus.py and tools/corpus_models.py are run for real by tests/test_corpus.py.
"""

import ast
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

TOOLS = ROOT / "tools"
EXPERIMENTS = ROOT / "experiments"


def run_script(*args, cwd=ROOT, timeout=300):
    """Runs ``python <args>`` as a user would from the repository root (edgecomp importable)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout, check=False)


def test_write_schema_writes_the_published_schema(tmp_path):
    (tmp_path / "tools").mkdir()
    (tmp_path / "configs").mkdir()
    shutil.copy(TOOLS / "write_schema.py", tmp_path / "tools")   # it writes beside itself: ../configs/schema.json
    done = run_script(tmp_path / "tools" / "write_schema.py")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "configs" / "schema.json").read_text() == (ROOT / "configs" / "schema.json").read_text()


def test_check_platforms_help_names_what_it_checks():
    done = run_script(TOOLS / "check_platforms.py", "--help")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--python" in done.stdout and "resolve from wheels" in done.stdout


def test_micro_builds_without_a_tree_says_which_flags_it_needs():
    assert run_script(TOOLS / "micro_builds.py", "--help").returncode == 0
    done = run_script(TOOLS / "micro_builds.py")
    assert done.returncode == 2 and "give --host-tree and/or --cortex-m4-tree" in done.stderr


def test_bench_filter_pruning_help_runs():
    done = run_script(TOOLS / "bench_filter_pruning.py", "--help")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--config" in done.stdout and "--rounds" in done.stdout


def test_invoke_timer_times_a_model(converted, tiny_dataset):
    spec = importlib.util.spec_from_file_location("invoke_timer", TOOLS / "invoke_timer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    measure = module.timer(converted("int8", "float32"), tiny_dataset.x_test[:1], invokes=5, warmup=1)
    assert 0 < measure() < 1000   # ms


def test_aarch64_device_script_parses_and_asks_for_its_arguments():
    assert subprocess.run(["bash", "-n", str(TOOLS / "aarch64_device.sh")], check=False).returncode == 0
    done = subprocess.run(["bash", str(TOOLS / "aarch64_device.sh")], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode != 0 and "usage: aarch64_device.sh build|start|stop ROOT [PORT]" in done.stderr


def private(name: str) -> bool:
    """``_name``, not ``__dunder__``."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@pytest.mark.parametrize("path", sorted(TOOLS.glob("*.py")), ids=lambda path: path.name)
def test_tools_use_only_public_names_and_leave_sys_path_alone(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not any(private(part) for part in (node.module or "").split(".")), node.module
            assert not any(private(alias.name) for alias in node.names), ast.dump(node)
            imported |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            assert not any(private(part) for alias in node.names for part in alias.name.split("."))
            imported |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported:
            assert not private(node.attr), f"{node.value.id}.{node.attr}"
            assert (node.value.id, node.attr) != ("sys", "path"), "sys.path"


def test_experiments_import_and_say_their_question_command_and_answer():
    for path in sorted(EXPERIMENTS.glob("*.py")):
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"experiments.{path.stem}")
        doc = module.__doc__ or ""
        assert f"python -m experiments.{path.stem}" in doc, path.name
        assert "Answer" in doc and ("Question" in doc or "?" in doc.splitlines()[0]), path.name
        assert "sys.path" not in path.read_text(), path.name
