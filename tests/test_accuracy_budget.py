"""Over budget means failed: post-training int8 judged against the float model it came from, repaired
cheapest rung first, and a file still over budget fails the run (exit 1) unless allowed."""

import json

import yaml

from conftest import ROOT, run_cli

CONFIG = {
    "data": {"source": "digits", "calibration_samples": 50},
    "model": {"builder": "custom_models:templates_with_offset"},
    "train": {"epochs": 0},
    "benchmark": {"runs": 2, "warmup": 0},
}


def _run(tmp_path, name, target):
    cfg = {**CONFIG, "name": name, "output_dir": str(tmp_path), "targets": [{"cpu": target}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = run_cli("edgecomp.train", "--config", str(path), cwd=ROOT / "tests")
    report = tmp_path / name / "report.json"
    return result, json.loads(report.read_text()) if report.exists() else None


def test_int8_over_budget_after_every_rung_fails_the_run_with_the_figures(tmp_path):
    result, report = _run(tmp_path, "over", {"quantization": "int8", "fallback": "none"})
    assert result.returncode == 1, result.stderr[-2000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "cpu failed accuracy_budget" in error[0] and "budget 1.00" in error[0]
    target = report["targets"][0]
    rule = next(r for r in target["compatibility"]["details"]["rules"] if r["rule"] == "accuracy_budget")
    assert not rule["ok"] and "a quantize (QAT) stage" in rule["detail"]
    guard = target["accuracy_guard"]
    assert [step["rung"] for step in guard["steps"]] == ["plain", "calibration"]
    # The other cpu quantizations were measured, offered with their latency cost, not adopted.
    alternatives = {row["quantization"]: row for row in guard["alternatives"]}
    assert set(alternatives) == {"int16x8", "dynamic"}
    for row in alternatives.values():
        assert row["latency_vs_int8"] > 0 and row["size_bytes"] < target["size_bytes"] * 4
    fits = [name for name, row in alternatives.items() if row["within_budget"]]
    assert fits, alternatives   # 16-bit activations (and float ones) resolve logits on a huge constant
    assert all(f"quantization: {name} (measured: loses" in rule["detail"] for name in fits)
    assert all(alternatives[name]["test_drop_points"] <= 1.0 for name in fits)
    assert target["quantization"] == "int8"
    assert guard["rung"] is None and not guard["within_budget"]
    assert guard["drop_points"] > 50   # the float model is ~0.9, the int8 file near chance
    steps = target["accuracy_steps"]
    assert steps["conversion_points"] < -50 and steps["stages"] == []
    assert "OVER BUDGET" in (tmp_path / "over" / "report.md").read_text()


def test_allow_over_budget_keeps_exit_0_and_says_so(tmp_path):
    result, report = _run(tmp_path, "allowed", {"quantization": "int8", "fallback": "none",
                                                "allow_over_budget": True})
    assert result.returncode == 0, result.stderr[-2000:]
    rule = next(r for r in report["targets"][0]["compatibility"]["details"]["rules"] if r["rule"] == "accuracy_budget")
    assert rule["ok"] and "allowed: allow_over_budget" in rule["detail"]


def test_default_guard_repairs_by_keeping_the_measured_culprit_float(tmp_path):
    result, report = _run(tmp_path, "repaired", {"quantization": "int8"})
    assert result.returncode == 0, result.stderr[-2000:]
    guard = report["targets"][0]["accuracy_guard"]
    assert guard["rung"] == "float_fallback" and guard["within_budget"]
    assert len(guard["float_layers"]) == 1
    accuracy = report["targets"][0]["metrics"]["accuracy"]
    assert abs(accuracy - report["reference"]["metrics"]["accuracy"]) <= 0.01


def test_qat_file_over_budget_is_judged_against_the_model_before_qat_and_replaced(tmp_path):
    """QAT that wrecked the model (learning rate 1.0): post-training int8 of the model before QAT wins."""
    cfg = {"name": "qat", "output_dir": str(tmp_path), "data": {"source": "digits", "calibration_samples": 50},
           "model": {"zoo": "digits_cnn"}, "train": {"epochs": 6, "learning_rate": 0.01},
           "benchmark": {"runs": 2, "warmup": 0},
           "stages": [{"quantize": {"epochs": 1, "learning_rate": 1.0}}],
           "targets": [{"cpu": {"quantization": "int8"}}]}
    path = tmp_path / "qat.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = run_cli("edgecomp.train", "--config", str(path), cwd=ROOT / "tests")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "qat" / "report.json").read_text())
    baseline, qat = report["stages"][0]["metrics"]["accuracy"], report["stages"][1]["metrics"]["accuracy"]
    assert baseline > 0.9 and qat < baseline - 0.2, (baseline, qat)   # QAT itself lost
    guard = report["targets"][0]["accuracy_guard"]
    assert guard["against"] == "the model before QAT"
    assert guard["float_model_accuracy"] == baseline
    assert guard["steps"][0]["rung"] == "qat" and guard["steps"][0]["drop_points"] > 20
    assert guard["rung"] in ("calibration", "float_fallback") and guard["within_budget"]
    assert report["targets"][0]["metrics"]["accuracy"] >= baseline - 0.01
    assert "replaced by post-training int8 of the model before QAT" in (tmp_path / "qat" / "report.md").read_text()


def test_a_step_over_budget_against_its_input_fails_only_when_the_file_is_over_budget_of_the_reference(tmp_path):
    """The budget is in points of the float32 reference: giving back what earlier stages gained fails nothing."""
    import sys

    from edgecomp import config, data, pipeline_guard, runtime, training   # first: it chooses tf_keras
    from edgecomp.config import stage_params
    from edgecomp.report import StageRecord, TargetRecord
    from edgecomp.targets import convert

    sys.path.insert(0, str(ROOT / "tests"))
    from custom_models import templates_with_offset

    cfg = config.from_dict({**CONFIG, "name": "steps", "output_dir": str(tmp_path),
                            "targets": [{"cpu": {"quantization": "int8", "fallback": "none"}}]})
    dataset = data.load(cfg.data, cfg.seed)
    model = templates_with_offset(dataset.input_shape, dataset.num_classes)   # int8 near chance, float ~0.9
    calibration = data.representative_samples(dataset, 50)
    content = convert.convert(model, "int8", "float32", calibration)
    (tmp_path / "cpu").mkdir()
    verdicts = {}
    for reference_accuracy in (0.0, 1.0):   # a reference far below the file, then far above it
        (tmp_path / "cpu" / "model.tflite").write_bytes(content)
        record = TargetRecord("cpu", "int8", "cpu/model.tflite", len(content), 0,
                              runtime.evaluate(content, dataset.x_test, dataset.y_test), {"ok": True, "details": {}})
        before = [StageRecord("baseline", 0, 0, {"accuracy": training.accuracy(model, dataset.x_test,
                                                                                dataset.y_test)}, 0.0)]
        reference = TargetRecord("reference", "float32", "reference/model.tflite", 0, 0,
                                 {"accuracy": reference_accuracy}, {"ok": True})
        pipeline_guard.judge_and_repair(cfg, record, stage_params(cfg.targets[0]), model, dataset, calibration,
                                        tmp_path, before, None, reference=reference)
        rule = next(r for r in record.compatibility["details"]["rules"] if r["rule"] == "accuracy_budget")
        assert record.accuracy_guard["drop_points"] > 50   # the step itself is far over budget both times
        verdicts[reference_accuracy] = (record.accuracy_guard["within_budget"], rule["ok"], rule["detail"])
    assert verdicts[0.0][:2] == (True, True) and "above the float32 reference: within budget" in verdicts[0.0][2]
    assert verdicts[1.0][:2] == (False, False) and "over budget after every repair rung" in verdicts[1.0][2]
