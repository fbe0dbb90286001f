"""The int8 accuracy guard: ranks layers by quantization error, keeps the worst float."""

import pytest

from edgecomp import runtime
from edgecomp.report import Report, TargetRecord, render
from edgecomp.targets import accuracy_guard, cpu


def test_layer_errors_are_ranked_worst_first(tiny_model, tiny_dataset):
    ranking = accuracy_guard.layer_errors(tiny_model, tiny_dataset.x_train[:30])
    assert ranking and all(row["scale"] > 0 for row in ranking)
    values = [row["rmse_per_scale"] for row in ranking]
    assert values == sorted(values, reverse=True)


def _plain(tiny_model, tiny_dataset):
    from edgecomp.targets import convert

    return convert.convert(tiny_model, "int8", "float32", tiny_dataset.x_train[:30])


def test_repair_within_budget_measures_once_and_keeps_the_file(tiny_model, tiny_dataset):
    content = _plain(tiny_model, tiny_dataset)
    result = accuracy_guard.repair(tiny_model, tiny_dataset.x_train[:30], tiny_dataset.x_train,
                                   (tiny_dataset.x_val, tiny_dataset.y_val), 0.0, content, budget_points=100.0)
    assert result["rung"] == "plain" and result["content"] is content
    assert [step["rung"] for step in result["steps"]] == ["plain"]


def test_repair_climbs_every_rung_but_never_keeps_every_layer_float(tiny_model, tiny_dataset):
    # A budget below zero can never be met: every rung is measured, and the best file is kept.
    content = _plain(tiny_model, tiny_dataset)
    validation = (tiny_dataset.x_val, tiny_dataset.y_val)
    result = accuracy_guard.repair(tiny_model, tiny_dataset.x_train[:30], tiny_dataset.x_train, validation,
                                   1.0, content, budget_points=-1.0, fallback="float")
    rungs = [step["rung"] for step in result["steps"]]
    assert rungs[:2] == ["plain", "calibration"] and set(rungs[2:]) == {"float_fallback"}
    assert result["rung"] is None
    ranking = accuracy_guard.layer_errors(tiny_model, tiny_dataset.x_train[:30])
    assert len(result["float_layers"]) < len(ranking)
    assert len(rungs) - 2 == min(accuracy_guard.CANDIDATES, len(ranking) - 1)
    def floats(step):   # "3 layer(s) float: ..." on the fallback rung
        return int(step["detail"].split()[0]) if step["rung"] == "float_fallback" else 0

    best = min(result["steps"], key=lambda step: (step["drop_points"], floats(step), step["size_bytes"]))
    measured = runtime.evaluate(result["content"], *validation)["accuracy"]
    assert measured == best["validation_accuracy"]
    if result["float_layers"]:
        assert not cpu.verify(result["content"], "int8")["ok"]  # float ops are there...
        assert cpu.verify(result["content"], "int8", float_fallback=len(result["float_layers"]))["ok"]  # ...on purpose


def _rendered(record: TargetRecord) -> str:
    """report.md for ``record`` beside a float32 reference."""
    reference = TargetRecord("reference", "float32", "reference/model.tflite", 20, 10, {"accuracy": 0.91},
                             {"ok": True, "details": {}})
    return render(Report("x", "0", reference=reference, targets=[record]))


def test_report_lists_guard_ranking_and_float_layers():
    record = TargetRecord("cpu", "int8", "cpu/model.tflite", 10, 5, {"accuracy": 0.9}, {"ok": True, "details": {}},
                          accuracy_guard={"drop_points": 0.5, "budget_points": 1.0, "within_budget": True,
                                          "float_layers": ["dense/MatMul"], "rung": "float_fallback",
                                          "steps": [{"rung": "plain", "detail": "200 calibration samples",
                                                     "validation_accuracy": 0.88, "drop_points": 3.0,
                                                     "size_bytes": 2048}],
                                          "layers": [{"tensor": "dense/MatMul", "op": "FULLY_CONNECTED",
                                                      "rmse_per_scale": 0.42}]})
    text = _rendered(record)
    assert "1 layer(s) kept float: `dense/MatMul`" in text
    assert "| `dense/MatMul` | FULLY_CONNECTED | 0.420 |" in text
    assert "repaired by keeping layers float" in text
    assert "| plain | 200 calibration samples | 0.8800 | +3.00 pt | 2.0 KB |" in text


def test_report_offers_the_measured_alternatives_with_their_latency_and_converter_errors():
    record = TargetRecord("cpu", "int8", "cpu/model.tflite", 10, 5, {"accuracy": 0.5}, {"ok": False, "details": {}},
                          accuracy_guard={"drop_points": 40.0, "budget_points": 1.0, "within_budget": False,
                                          "float_layers": [], "rung": None, "steps": [], "layers": [],
                                          "alternatives": [
                                              {"quantization": "int16x8", "validation_accuracy": 0.9,
                                               "drop_points": 0.25, "test_accuracy": 0.89, "test_drop_points": 0.5,
                                               "size_bytes": 3072, "latency_vs_int8": 2.5, "within_budget": True},
                                              {"quantization": "dynamic", "error": "TFLite conversion failed: x"}]})
    text = _rendered(record)
    assert "| int16x8 | 0.9000 | +0.25 pt | 0.8900 | +0.50 pt | 3.0 KB | 2.50× |" in text
    assert "| dynamic | – | – | – | – | – | TFLite conversion failed: x |" in text
    assert "OVER BUDGET" in text


@pytest.mark.parametrize("drop, float_layers, size, adopted, note", [
    (0.50, 0, 1000, True, None),                  # free rung (recalibration): any gain counts
    (1.25, 1, 900, False, None),                  # less accurate: never
    (0.80, 3, 1500, False, "under 2 validation samples"),   # one sample better for a larger file: noise
    (0.50, 3, 1500, True, None),                  # two samples better: worth the float layers
    (0.00, 7, 2500, False, "over 2x"),            # near float size: never, however accurate
])
def test_a_larger_file_must_win_by_two_validation_samples_and_stay_under_the_size_cap(drop, float_layers, size,
                                                                                        adopted, note):
    best = {"drop_points": 1.0, "size_bytes": 1000}
    got, why = accuracy_guard.better({"drop_points": drop, "size_bytes": size}, float_layers, best, 0,
                                     sample_points=0.25, size_cap=2000)
    assert got is adopted
    assert (note is None and why is None) or (note in why)
