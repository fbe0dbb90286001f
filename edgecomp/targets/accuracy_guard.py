"""Accuracy guard for post-training int8: find the layers that lose accuracy, keep them float.

When an int8 file (converted without a QAT stage) loses more than
``max_accuracy_drop`` points against the float32 reference, TensorFlow's
``QuantizationDebugger`` measures each quantized layer's error on calibration
samples; layers are ranked by RMSE / scale (the error in units of the layer's own
quantization step). With ``fallback: float`` the worst layers are kept in float
(``denylisted_nodes``), one more at a time (1, 2, 4, 8, ...), until the drop is
within budget or every candidate is float. The report lists the ranking and the
layers that stayed float.

Example:
    >>> result = guard(model, calibration, dataset, reference_accuracy=0.98,  # doctest: +SKIP
    ...                int8_accuracy=0.95, max_drop_points=1.0, fallback="float")
"""

from __future__ import annotations

import csv
import io
import logging
import math

import numpy as np

from edgecomp import runtime
from edgecomp._keras import tf
from edgecomp.data import representative_dataset
from edgecomp.targets.convert import convert

log = logging.getLogger("edgecomp")
TOP_LAYERS = 10


def _converter(model, calibration: np.ndarray):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(calibration)
    return converter


def layer_errors(model, calibration: np.ndarray) -> list[dict]:
    """Per quantized layer: RMSE, scale and RMSE/scale, worst first."""
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=_converter(model, calibration), debug_dataset=representative_dataset(calibration)
    )
    debugger.run()
    buffer = io.StringIO()
    debugger.layer_statistics_dump(buffer)
    rows = []
    for row in csv.DictReader(io.StringIO(buffer.getvalue())):
        scale = float(row["scale"])
        rmse = math.sqrt(float(row["mean_squared_error"]))
        rows.append({
            "tensor": row["tensor_name"],
            "op": row["op_name"],
            "rmse": rmse,
            "scale": scale,
            "rmse_per_scale": rmse / scale if scale else float("inf"),
        })
    return sorted(rows, key=lambda r: r["rmse_per_scale"], reverse=True)


def with_float_layers(model, calibration: np.ndarray, tensors: list[str]) -> bytes:
    """An int8 file in which the ops producing ``tensors`` stay float."""
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(tensors))
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=_converter(model, calibration), debug_dataset=representative_dataset(calibration),
        debug_options=options,
    )
    return bytes(debugger.get_nondebug_quantized_model())


def guard(model, calibration, x_test, y_test, reference_accuracy: float, int8_accuracy: float,
          max_drop_points: float, fallback: str = "none") -> dict:
    """Ranks layers by quantization error and, with ``fallback="float"``, repairs the file.

    Returns:
        ``{"drop_points", "layers": top ranking, "float_layers": [...], "content": bytes or None,
        "accuracy": accuracy of ``content``, "within_budget": bool}``.
    """
    drop = (reference_accuracy - int8_accuracy) * 100
    log.info("accuracy guard: int8 loses %.2f points (budget %.2f); ranking layers", drop, max_drop_points)
    ranking = layer_errors(model, calibration)
    result = {"drop_points": drop, "layers": ranking[:TOP_LAYERS], "float_layers": [], "content": None,
              "accuracy": int8_accuracy, "within_budget": drop <= max_drop_points}
    if fallback != "float":
        return result
    candidates = [row["tensor"] for row in ranking]
    count = 1
    while candidates:
        chosen = candidates[: min(count, len(candidates))]
        if len(chosen) == len(candidates):
            # Every quantized layer float: that is the float32 file (the debugger refuses
            # a model with nothing left to quantize).
            content = convert(model, "float32")
        else:
            content = with_float_layers(model, calibration, chosen)
        accuracy = runtime.evaluate(content, x_test, y_test)["accuracy"]
        drop = (reference_accuracy - accuracy) * 100
        log.info("accuracy guard: %d layer(s) float → drop %.2f points", len(chosen), drop)
        result.update(content=content, accuracy=accuracy, float_layers=chosen, drop_points=drop,
                      within_budget=drop <= max_drop_points)
        if drop <= max_drop_points or len(chosen) == len(candidates):
            break
        count *= 2
    return result
