"""The int8 accuracy guard: ranks layers by quantization error, keeps the worst float."""

import numpy as np

from edgecomp import runtime
from edgecomp.report import Report, TargetRecord, render
from edgecomp.targets import accuracy_guard, cpu


def test_layer_errors_are_ranked_worst_first(tiny_model, tiny_dataset):
    ranking = accuracy_guard.layer_errors(tiny_model, tiny_dataset.x_train[:30])
    assert ranking and all(row["scale"] > 0 for row in ranking)
    values = [row["rmse_per_scale"] for row in ranking]
    assert values == sorted(values, reverse=True)


def test_fallback_keeps_the_worst_layers_float_until_budget_or_exhausted(tiny_model, tiny_dataset):
    # A budget below zero can never be met: the guard must go on until every candidate is float.
    result = accuracy_guard.guard(tiny_model, tiny_dataset.x_train[:30], tiny_dataset.x_test, tiny_dataset.y_test,
                                  reference_accuracy=1.0, int8_accuracy=0.0, max_drop_points=-1.0,
                                  fallback="float")
    ranking = accuracy_guard.layer_errors(tiny_model, tiny_dataset.x_train[:30])
    assert result["float_layers"] == [row["tensor"] for row in ranking]
    assert not result["within_budget"]
    content = result["content"]
    assert result["accuracy"] == runtime.evaluate(content, tiny_dataset.x_test, tiny_dataset.y_test)["accuracy"]
    strict = cpu.verify(content, "int8")
    assert not strict["ok"]  # float ops are there...
    allowed = cpu.verify(content, "int8", float_fallback=len(result["float_layers"]))
    assert allowed["ok"]  # ...and accepted when the guard put them there on purpose


def test_guard_without_fallback_only_ranks(tiny_model, tiny_dataset):
    result = accuracy_guard.guard(tiny_model, tiny_dataset.x_train[:30], tiny_dataset.x_test, tiny_dataset.y_test,
                                  reference_accuracy=0.9, int8_accuracy=0.8, max_drop_points=1.0)
    assert result["content"] is None and result["layers"]
    assert np.isclose(result["drop_points"], 10.0)


def test_report_lists_guard_ranking_and_float_layers():
    record = TargetRecord("cpu", "int8", "cpu/model.tflite", 10, 5, {"accuracy": 0.9}, {"ok": True, "details": {}},
                          accuracy_guard={"drop_points": 0.5, "budget_points": 1.0, "within_budget": True,
                                          "float_layers": ["dense/MatMul"],
                                          "layers": [{"tensor": "dense/MatMul", "op": "FULLY_CONNECTED",
                                                      "rmse_per_scale": 0.42}]})
    reference = TargetRecord("reference", "float32", "reference/model.tflite", 20, 10, {"accuracy": 0.91},
                             {"ok": True, "details": {}})
    text = render(Report("x", "0", reference=reference, targets=[record]))
    assert "1 layer(s) kept float: `dense/MatMul`" in text
    assert "| `dense/MatMul` | FULLY_CONNECTED | 0.420 |" in text
