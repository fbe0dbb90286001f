"""The generality corpus cannot rot: a cut-down run (one model, two recipes, one epoch) through the tool."""

import json
import subprocess
import sys

from conftest import ROOT


def test_corpus_tool_runs_recipes_and_writes_the_table(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "corpus.py"), "--models", "mlp",
                             "--recipes", "ptq,qat", "--quick", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "corpus.json").read_text())
    assert [(row["model"], row["recipe"], row["exit"], row["traceback"]) for row in rows] == [
        ("mlp", "ptq", 0, False), ("mlp", "qat", 0, False)]
    assert all(row["accuracy"] is not None and row["size_ratio"] < 0.5 for row in rows)
    assert rows[1]["qat_coverage"]["qat"] >= 3
    table = (tmp_path / "corpus.md").read_text()
    assert "| ptq | mlp | 0 |" in table and "ptq: within 1 pt of float32 on" in table
