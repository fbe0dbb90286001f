"""The recipe search: rejects before fine-tuning what cannot fit, follows dominance, and the best recipe runs again.

The end-to-end searches use a digits_cnn of width 0.5 and a CPU target, whose float32
file (~30 KB) is over ``max_size_kb`` and whose int8 file (~10 KB) is under it.
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from conftest import run_cli, tflite_accuracy
from edgecomp import data, search, trials
from edgecomp.errors import ConfigError, EdgecompError

MAX_SIZE_KB = 18


def search_file(out, **changes) -> dict:
    raw = {
        "name": "tiny_search",
        "output_dir": str(out),
        "base": {"seed": 0, "data": {"source": "digits", "calibration_samples": 50},
                 "model": {"zoo": "digits_cnn", "args": {"width": 0.5}},
                 "train": {"epochs": 3, "learning_rate": 0.003},
                 "targets": [{"cpu": {"quantization": "int8"}}],
                 "benchmark": {"devices": ["local"], "runs": 5, "warmup": 1, "threads": [1]},
                 # bare files: the metadata names the run, and best.yaml's run is named apart from its trial
                 "metadata": {"write": False}},
        "techniques": {"filters": {"epochs": 1, "learning_rate": 0.001, "recovery_epochs": 0}},
        "recipes": ["ptq", "filters"],
        "search": {"constraints": {"max_size_kb": MAX_SIZE_KB, "min_accuracy": 0.5}, "objective": "smallest",
                   "space": {"filters.sparsity": [0.5, 0.25], "quantization": ["int8", "float32"]}},
    }
    for key, value in changes.items():
        node = raw
        *parents, last = key.split(".")
        for parent in parents:
            node = node[parent]
        node[last] = value
    return raw


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def local_search(tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    path = write(out / "search.yaml", search_file(out))
    done = run_cli("edgecomp.search", "--config", str(path), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, path, done


def table(folder: Path) -> dict[str, dict]:
    return {row["candidate"]: row for row in json.loads((folder / "search.json").read_text())["rows"]}


# ---- candidates, dominance, constraints (no training) -------------------------------


def test_candidates_go_from_least_to_most_compressed_and_qat_pairs_only_with_int8(tmp_path):
    raw = search_file(tmp_path, recipes=["ptq", "filters_qat"])
    raw["techniques"]["quantize"] = {"epochs": 1}
    found = search.candidates(search.SearchFileConfig.model_validate(raw))
    assert [(c.recipe, c.knob_text) for c in found] == [
        ("ptq", "quantization=float32"), ("ptq", "quantization=int8"),
        ("filters_qat", "filters.sparsity=0.25, quantization=int8"),
        ("filters_qat", "filters.sparsity=0.5, quantization=int8"),
    ]
    assert [c.name for c in found] == ["01_ptq", "02_ptq", "03_filters_qat", "04_filters_qat"]


def test_fewer_clusters_and_lower_rank_count_as_more_compression(tmp_path):
    raw = search_file(tmp_path, recipes=["prune_cluster_qat"])
    raw["search"]["space"] = {"cluster.clusters": [8, 32, 16], "prune.sparsity": [0.5]}
    raw["techniques"].update(quantize={"epochs": 1}, prune={"epochs": 1, "recovery_epochs": 0}, cluster={"epochs": 1})
    found = search.candidates(search.SearchFileConfig.model_validate(raw))
    assert [c.knobs["cluster.clusters"] for c in found] == [32, 16, 8]
    assert search.ordered_values("low_rank.rank_ratio", [0.25, 0.75, 0.5]) == [0.75, 0.5, 0.25]
    assert search.at_least_as_compressed(found[2], found[0])
    assert not search.at_least_as_compressed(found[0], found[2])


def test_dominance_skips_more_compression_after_an_accuracy_miss(tmp_path):
    raw = search_file(tmp_path)
    raw["search"]["space"] = {"filters.sparsity": [0.25, 0.5, 0.75]}
    parsed = search.SearchFileConfig.model_validate({**raw, "recipes": ["filters"]})
    low, middle, high = search.candidates(parsed)
    middle.verdict, middle.reason, middle.accuracy_failed = "rejected", "accuracy 0.4 < min_accuracy 0.5", True
    search.apply_dominance(parsed, [low, middle, high])
    assert (low.verdict, high.verdict) == ("untried", "not tried")
    assert "02_filters, which missed: accuracy 0.4" in high.reason


def test_most_accurate_stops_a_recipe_at_its_first_candidate_that_meets_everything(tmp_path):
    raw = search_file(tmp_path, **{"search.objective": "most_accurate"})
    raw["search"]["space"] = {"filters.sparsity": [0.25, 0.5, 0.75]}
    parsed = search.SearchFileConfig.model_validate({**raw, "recipes": ["filters"]})
    low, middle, high = search.candidates(parsed)
    low.verdict = "met"
    search.apply_dominance(parsed, [low, middle, high])
    assert middle.verdict == high.verdict == "not tried"
    assert "objective most_accurate: 01_filters, less compressed" in high.reason


def test_choose_follows_the_objective(tmp_path):
    found = []
    for name, size, p50, accuracy in (("a", 100, 3.0, 0.90), ("b", 50, 2.0, 0.80), ("c", 50, 1.0, 0.85),
                                      ("d", 10, 9.0, 0.70)):
        found.append(search.Candidate(name, "ptq", {}, verdict="met",
                                      row={"size_bytes": size, "p50_ms": p50, "accuracy": accuracy}))
    found.append(search.Candidate("e", "ptq", {}, verdict="rejected", row={"size_bytes": 1, "accuracy": 0.99}))
    chosen = {}
    for objective in ("smallest", "fastest", "most_accurate"):
        parsed = search.SearchFileConfig.model_validate(search_file(tmp_path, **{"search.objective": objective}))
        chosen[objective] = search.choose(parsed, found).name
    assert chosen == {"smallest": "d", "fastest": "c", "most_accurate": "a"}


def test_constraints_say_which_limit_was_missed_by_how_much(tmp_path):
    parsed = search.SearchFileConfig.model_validate(search_file(tmp_path, **{"search.constraints": {
        "max_size_kb": 10, "max_latency_ms": 1.0, "max_accuracy_drop": 1.0}}))
    assert search.budget_violation(parsed, search.Measured(size_bytes=10 * 1024)) is None
    assert search.budget_violation(parsed, search.Measured(size_bytes=10 * 1024 + 1)) == \
        "size 10.0 KB > max_size_kb 10"
    assert search.budget_violation(parsed, search.Measured(p50_ms=1.1), margin=1.15) is None
    assert "max_latency_ms 1 × 1.15 margin" in search.budget_violation(parsed, search.Measured(p50_ms=1.2), margin=1.15)
    assert search.accuracy_violation(parsed, 0.975, 0.98) is None
    assert "1.50 pt below the float32 reference" in search.accuracy_violation(parsed, 0.965, 0.98)


@pytest.mark.parametrize("changes, expected", [
    ({"search.space": {"filters.width": [1]}}, "unknown knob 'filters.width'; allowed: prune.sparsity"),
    ({"search.space": {"quantization": ["int4"]}}, "quantization: unknown ['int4']"),
    ({"search.space": {"filters.sparsity": []}}, "filters.sparsity: give at least one value"),
    ({"search.constraints": {"max_arena_kb": 10}}, "max_arena_kb: only a micro target has a tensor arena"),
    ({"search.target": "micro"}, "search.target: micro is not among base.targets (cpu)"),
    ({"search.objective": "tiniest"}, "search.objective"),
    ({"search.backend": "dask"}, "search.backend"),
    ({"recipes": ["qat"]}, "recipes: qat needs techniques.quantize"),
    ({"search.device": "ssh://pi@rpi"}, "search.device: ssh://pi@rpi is not among base.benchmark.devices (local)"),
    ({"base.targets": [{"gpu": {}}], "search.space": {"quantization": ["dynamic"]}},
     "search.space.quantization: the gpu target takes float32, float16, int8, not dynamic"),
    ({"recipes": ["ptq"], "search.space": {"filters.sparsity": [0.5]}},
     "search.space.filters.sparsity: no recipe searched uses filters (recipes: ptq)"),
    ({"search.space": {"filters.sparsity": [1.5]}},
     "search.space: candidate 02_filters (filters.sparsity=1.5) is not a valid run: stages[0].prune.sparsity"),
    ({"base.targets": [{}]}, "base"),
])
def test_bad_search_file_is_one_line_naming_the_key(tmp_path, changes, expected):
    path = write(tmp_path / "bad.yaml", search_file(tmp_path, **changes))
    with pytest.raises(ConfigError) as error:
        search.load(path)
    assert expected in str(error.value)
    assert "\n" not in str(error.value)


def test_micro_search_refuses_latency_goals(tmp_path):
    raw = search_file(tmp_path, **{"base.targets": [{"micro": {}}], "search.objective": "fastest"})
    raw["search"]["space"] = {"filters.sparsity": [0.5]}
    with pytest.raises(ConfigError, match="the micro target's files are not timed by the benchmark devices"):
        search.load(write(tmp_path / "bad.yaml", raw))


def test_a_file_without_a_search_section_is_pointed_to_the_example(tmp_path):
    raw = search_file(tmp_path)
    del raw["search"]
    with pytest.raises(ConfigError, match="needs a search: section"):
        search.load(write(tmp_path / "bad.yaml", raw))


def test_shipped_micro_search_tries_at_most_20_candidates_for_cortex_m4():
    parsed = search.load("configs/search_micro.yaml")
    found = search.candidates(parsed)
    assert len(found) <= parsed.search.max_candidates <= 20
    assert parsed.target_kind == "micro" and parsed.search.constraints.min_accuracy == 0.95
    assert {c.recipe for c in found} == set(parsed.recipes)


# ---- end to end ---------------------------------------------------------------------


def test_search_rejects_an_oversized_structure_before_training_it(local_search):
    out, _, done = local_search
    rows = table(out / "tiny_search")
    float32 = rows["01_ptq"]
    assert float32["knobs"] == "quantization=float32"
    assert float32["verdict"] == "rejected"
    assert float32["reason"].startswith("structure check, before fine-tuning: size ")
    assert float32["size_bytes"] > MAX_SIZE_KB * 1024
    assert not (out / "tiny_search" / "runs" / "01_ptq").exists()   # nothing was trained or written for it
    assert "01_ptq" in done.stdout and "max_size_kb 18" in done.stdout


def test_every_candidate_that_met_the_constraints_was_measured_from_its_file(local_search):
    out, path, _ = local_search
    rows = table(out / "tiny_search")
    met = [row for row in rows.values() if row["verdict"] in ("met", "best")]
    assert met, rows
    dataset = data.load(search.baseline_config(search.load(path)).data, 0)
    for row in met:
        report = json.loads((out / "tiny_search" / "runs" / row["candidate"] / "report.json").read_text())
        file = out / "tiny_search" / "runs" / row["candidate"] / report["targets"][0]["path"]
        assert row["size_bytes"] == file.stat().st_size <= MAX_SIZE_KB * 1024
        assert row["accuracy"] == pytest.approx(tflite_accuracy(file, dataset), abs=1e-9)
        assert row["accuracy"] >= 0.5


def test_the_best_is_the_smallest_that_met_everything_and_runs_again_as_written(local_search, tmp_path):
    out, _, done = local_search
    rows = table(out / "tiny_search")
    met = [row for row in rows.values() if row["verdict"] in ("met", "best")]
    best = next(row for row in rows.values() if row["verdict"] == "best")
    assert best["size_bytes"] == min(row["size_bytes"] for row in met)
    assert f"best: {best['candidate']}" in done.stdout
    again = yaml.safe_load((out / "tiny_search" / "best.yaml").read_text())
    again["output_dir"] = str(tmp_path)
    rerun = run_cli("edgecomp.train", "--config", str(write(tmp_path / "best.yaml", again)), timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    report = json.loads((tmp_path / "tiny_search_best" / "report.json").read_text())
    assert report["targets"][0]["size_bytes"] == best["size_bytes"]
    assert report["targets"][0]["metrics"]["accuracy"] == pytest.approx(best["accuracy"], abs=1e-9)


def test_search_writes_a_table_with_every_candidate_and_a_pareto_plot(local_search):
    out, path, _ = local_search
    folder = out / "tiny_search"
    names = [c.name for c in search.candidates(search.load(path))]
    assert list(table(folder))[1:] == names
    markdown = (folder / "search.md").read_text()
    assert all(f"| {name} |" in markdown for name in names)
    assert "**best**" in markdown
    assert (folder / "search.csv").read_text().count("\n") == len(names) + 2
    assert (folder / "pareto_cpu.png").stat().st_size > 10_000


def test_spent_budget_leaves_the_rest_untried_and_resume_reuses_finished_trials(local_search, tmp_path):
    out, _, _ = local_search
    shutil.copytree(out / "tiny_search" / "runs", tmp_path / "tiny_search" / "runs")
    path = write(tmp_path / "search.yaml", search_file(tmp_path, **{"search.max_candidates": 3}))
    done = run_cli("edgecomp.search", "--config", str(path), "--resume", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table(tmp_path / "tiny_search")
    assert json.loads((tmp_path / "tiny_search" / "search.json").read_text())["tried"] == 3
    untried = [row for row in rows.values() if row["verdict"] == "not tried"]
    assert untried and all("budget of max_candidates 3 was spent" in row["reason"] for row in untried)
    assert "resume: reusing checkpoint 00_baseline" in done.stderr
    assert "resume: reusing 02_ptq's finished run" in done.stderr


def test_search_with_no_candidate_meeting_the_goal_exits_1_and_says_so(local_search, tmp_path):
    out, _, _ = local_search
    shutil.copytree(out / "tiny_search" / "runs" / "baseline", tmp_path / "tiny_search" / "runs" / "baseline")
    raw = search_file(tmp_path, recipes=["ptq"], **{"search.constraints": {"max_size_kb": 1},
                                                     "search.space": {"quantization": ["int8", "float32"]}})
    done = run_cli("edgecomp.search", "--config", str(write(tmp_path / "search.yaml", raw)), "--resume")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "no candidate met every constraint" in done.stdout
    assert not (tmp_path / "tiny_search" / "best.yaml").exists()
    assert "No candidate met every constraint" in (tmp_path / "tiny_search" / "search.md").read_text()


# ---- the Ray backend --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def ray_cluster(monkeypatch):
    """A real Ray head started with ``ray start`` (as a user's cluster is), stopped afterwards.

    Token authentication on, as Ray 2.5x turns it on for a new cluster; the search's
    process gets the token the way a user's shell would (``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN``).
    """
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    ray_cli = Path(sys.executable).parent / "ray"
    port = _free_port()
    # Ray's socket paths live under --temp-dir and must stay under 108 characters: pytest's are too long.
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(Path(__file__).parents[1]))
    started = subprocess.run([str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=2",
                              "--include-dashboard=false", "--object-store-memory=200000000",
                              "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats"],
                             capture_output=True, text=True, env=env, timeout=180, check=False)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, env=env, timeout=120, check=False)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_backend_tries_the_same_candidates_and_measures_the_same_as_local(local_search, ray_cluster, tmp_path):
    out, _, _ = local_search
    raw = search_file(tmp_path, **{"search.backend": "ray", "search.address": ray_cluster})
    done = run_cli("edgecomp.search", "--config", str(write(tmp_path / "search.yaml", raw)), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trial(s) on the ray backend" in done.stderr
    local, remote = table(out / "tiny_search"), table(tmp_path / "tiny_search")
    assert list(local) == list(remote)
    for name, row in local.items():
        assert (remote[name]["verdict"], remote[name]["reason"]) == (row["verdict"], row["reason"]), name
        assert (remote[name]["size_bytes"], remote[name]["accuracy"]) == (row["size_bytes"], row["accuracy"]), name
    best = next(name for name, row in remote.items() if row["verdict"] == "best")
    assert (tmp_path / "tiny_search" / "runs" / best / "cpu" / "model.tflite").is_file()   # files came back


def test_ray_backend_with_no_cluster_at_the_address_is_one_line(tmp_path):
    pytest.importorskip("ray")
    raw = search_file(tmp_path, **{"search.backend": "ray", "search.address": f"127.0.0.1:{_free_port()}"})
    parsed = search.SearchFileConfig.model_validate(raw)
    with pytest.raises(EdgecompError, match="cannot connect to the Ray cluster at '127.0.0.1:"):
        trials.open_backend("ray", tmp_path, parsed.search.address)


def test_train_on_a_search_file_says_which_command_runs_it():
    done = run_cli("edgecomp.train", "--config", "configs/search_micro.yaml")
    assert done.returncode == 2
    assert "this is a search file (it has base:), not a run config; run it with python -m edgecomp.search" \
        in done.stderr


def test_a_qat_recipe_with_only_float_quantizations_says_it_needs_int8(tmp_path):
    raw = search_file(tmp_path, recipes=["filters_qat"], **{"search.space": {"quantization": ["float16"]}})
    raw["techniques"]["quantize"] = {"epochs": 1}
    with pytest.raises(ConfigError, match="recipe filters_qat .QAT. makes int8 files; add int8"):
        search.load(write(tmp_path / "bad.yaml", raw))


def test_latency_is_read_from_the_search_device_only(tmp_path):
    from edgecomp.report import TargetRecord

    record = TargetRecord("cpu", "int8", "cpu/model.tflite", 1, 1, {}, {"ok": True},
                          benchmarks=[{"device": "local", "latency_ms": {"p50": 0.3}}])
    assert search.latency_on(record, "local") == 0.3
    assert search.latency_on(record, "ssh://pi@rpi") is None   # the Pi gave no timing: not local's
