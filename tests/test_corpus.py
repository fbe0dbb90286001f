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


def _row(recipe, model, total_points, applied=True, exit_code=0):
    return {"recipe": recipe, "model": model, "total_points": total_points, "applied": applied, "traceback": False,
            "seconds": 1.0, "exit": exit_code}


def test_aggregate_uses_each_recipes_budget_and_does_not_count_a_model_the_stage_left_unchanged():
    sys.path.insert(0, str(ROOT / "tools"))
    import corpus

    lines = corpus.aggregate([
        _row("filters", "a", -1.4), _row("filters", "b", -1.6),
        _row("low_rank", "a", -0.4), _row("low_rank", "b", -0.6), _row("low_rank", "c", 0.0, applied=False),
        _row("deep", "a", -0.5), _row("deep", "b", -0.5, exit_code=1),
    ])
    assert lines[0].startswith("filters: within 1.5 pt of float32 on 1/2 models;")
    assert lines[1].startswith("low_rank: within 0.5 pt of float32 on 1/2 models (1 left unchanged, not counted);")
    assert lines[2].startswith("deep: within 1 pt of float32 on 1/2 models;")     # a failed verdict never counts


def test_every_recipe_makes_a_valid_config_also_cut_down(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import corpus

    from edgecomp import config

    for recipe in corpus.RECIPES:
        for quick in (False, True):
            config.from_dict(corpus.config_for("mlp", {"source": "digits"}, recipe, tmp_path, quick))
