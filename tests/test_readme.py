"""The README's Python examples run as written (the quickstart config in a scratch folder; the verbs in memory)."""

import re
import subprocess
import sys

from conftest import ROOT


def test_readme_python_api_example_runs_and_measures_the_int8_file(tmp_path):
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## Python API\n\n```python\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'accuracy': 0.9" in done.stdout, done.stdout
    assert (tmp_path / "models" / "try" / "cpu" / "model.tflite").exists()
    for link in re.findall(r"\]\(((?:docs|configs)/[^)#]+)\)", readme):
        assert (ROOT / link).exists(), f"README links to {link}, which is not in the repository"


def test_readme_in_memory_example_compresses_converts_verifies_and_times_the_file(tmp_path):
    readme = (ROOT / "README.md").read_text()
    api = readme[readme.index("## Python API"):]
    example = re.findall(r"```python\n(.*?)```", api, re.S)[1]
    assert "edgecomp.compress(" in example
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ok, accuracy, p50 = done.stdout.split()[-3:]
    assert ok == "True" and float(accuracy) > 0.9 and float(p50) > 0, done.stdout
