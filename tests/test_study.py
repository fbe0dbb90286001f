"""The study: shipped studies run end to end (reduced epochs), share one baseline, and the table matches the files."""

import csv
import json

import pytest
import yaml

from conftest import run_cli, tflite_accuracy
from edgecomp import data, study
from edgecomp.errors import ConfigError

QUICK = ["--set", "base.train.epochs=2", "--set", "techniques.prune.epochs=1", "--set", "techniques.prune.recovery_epochs=0",
         "--set", "techniques.cluster.epochs=1",
         "--set", "techniques.quantize.epochs=1", "--set", "techniques.distill.teacher_epochs=1",
         "--set", "techniques.distill.epochs=1", "--set", "techniques.low_rank.finetune_epochs=1",
         "--set", "techniques.filters.epochs=1", "--set", "techniques.filters.recovery_epochs=0", "--set", "base.benchmark.runs=10", "--set", "base.benchmark.warmup=1",
         "--set", "latency_rounds=1"]


@pytest.fixture(scope="module")
def digits_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    done = run_cli("edgecomp.study", "--config", "configs/study_digits.yaml", "--set", f"output_dir={out}", *QUICK,
                   timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "study_digits", done


def test_digits_study_runs_every_recipe_and_writes_table_and_plot(digits_study):
    folder, done = digits_study
    rows = json.loads((folder / "study.json").read_text())["rows"]
    assert [row["recipe"] for row in rows] == ["ptq", *study.RECIPES]   # ptq has the reference row too
    with open(folder / "study.csv") as stream:
        assert list(csv.DictReader(stream))[1]["recipe"] == "ptq"
    assert "| prune_cluster_qat | cpu | int8 |" in (folder / "study.md").read_text()
    assert (folder / "pareto_cpu.png").stat().st_size > 10_000
    assert all(row["latency"] == "local, 1 interleaved rounds" and row["p50_ms"] > 0 for row in rows)
    assert "interleaved" in (folder / "study.md").read_text()
    assert "wrote" in done.stdout


def test_study_trains_the_baseline_once_and_every_recipe_reuses_it(digits_study):
    folder, done = digits_study
    assert done.stderr.count("resume: reusing checkpoint 00_baseline") == len(study.RECIPES) - 1
    baselines = {json.dumps(json.loads((run / "report.json").read_text())["stages"][0], sort_keys=True)
                 for run in (folder / "runs").iterdir()}
    assert len(baselines) == 1


def test_study_rows_are_measured_from_the_files(digits_study):
    folder, _ = digits_study
    rows = json.loads((folder / "study.json").read_text())["rows"]
    dataset = data.load(study.run_config(study.load("configs/study_digits.yaml"), "ptq").data, 0)
    reference = rows[0]
    for row in rows[1:4]:
        report = json.loads((folder / "runs" / row["recipe"] / "report.json").read_text())
        record = next(t for t in report["targets"] if t["target"] == row["target"])
        path = folder / "runs" / row["recipe"] / record["path"]
        assert row["size_bytes"] == path.stat().st_size
        assert row["accuracy"] == pytest.approx(tflite_accuracy(path, dataset), abs=1e-9)
        assert row["size_ratio"] == pytest.approx(row["size_bytes"] / reference["size_bytes"], abs=1e-4)
    assert rows[0]["macs"] == rows[1]["macs"] > 0


def test_mnist1d_study_runs_end_to_end(tmp_path):
    done = run_cli("edgecomp.study", "--config", "configs/study_mnist1d.yaml", "--set", f"output_dir={tmp_path}",
                   "--recipes", "ptq,prune_qat,low_rank_qat,filters_qat", *QUICK, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "study_mnist1d" / "study.json").read_text())["rows"]
    assert [row["recipe"] for row in rows] == ["ptq", "ptq", "prune_qat", "low_rank_qat", "filters_qat"]
    assert all(0.0 <= row["accuracy"] <= 1.0 and row["size_bytes"] > 0 for row in rows), rows


def test_pareto_front_keeps_points_nothing_beats():
    assert study.pareto_front([(1.0, 0.9), (2.0, 0.95), (3.0, 0.93), (0.5, 0.5)]) == [0, 1, 3]
    assert study.pareto_front([(1.0, 0.9), (1.0, 0.9)]) == [0, 1]
    assert study.pareto_front([(2.0, 0.8), (1.0, 0.9)]) == [1]


def write(tmp_path, changes):
    raw = yaml.safe_load(open("configs/study_digits.yaml"))
    for key, value in changes.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        if value is None:
            node.pop(last)
        else:
            node[last] = value
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("changes, expected", [
    ({"recipes": ["ptq", "magic"]}, "recipes: unknown recipe 'magic'; allowed: ptq, prune"),
    ({"techniques.cluster": None, "recipes": ["cluster"]}, "recipes: cluster needs techniques.cluster"),
    ({"base.stages": []}, "base.stages is set by the study"),
    ({"techniques.prune.structure": "filters"}, "give channel pruning under techniques.filters"),
    ({"techniques.prune.sparsity": 2}, "techniques.prune.sparsity: Input should be less than 1"),
    ({"base.model": {"zoo": "nope"}}, "study recipe ptq: model: zoo 'nope' is not a built-in architecture"),
    ({"bogus": 1}, "unknown key 'bogus'"),
])
def test_bad_study_is_one_line_naming_the_key(tmp_path, changes, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        study.load(write(tmp_path, changes))


def test_study_cli_bad_config_exits_2_with_one_line(tmp_path):
    done = run_cli("edgecomp.study", "--config", str(write(tmp_path, {"recipes": ["magic"]})))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "magic" in lines[0]
