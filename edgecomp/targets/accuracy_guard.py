"""Accuracy guard for post-training int8: a repair ladder that keeps the file small.

The guard judges conversion against the float model it was given (after pruning,
clustering, ...), not against the unpruned reference: what an earlier stage lost
is charged to that stage. When the int8 file loses more than the budget
(``max_accuracy_drop`` points), rungs are tried cheapest first, each measured on
the **validation** split (the test split only gives the final verdict):

1. ``calibration``: calibrate on more data (the training split, up to
   ``MAX_CALIBRATION`` samples, instead of ``data.calibration_samples``). Free in
   size and speed; on a pruned awkward CNN it turned −1.39 points into ±0.
2. ``float_fallback`` (``fallback: float``): TensorFlow's ``QuantizationDebugger``
   ranks the quantized layers by RMSE / scale; for the ``CANDIDATES`` worst, the
   file with that one layer kept float is measured, and layers are then added in
   order of measured gain until the drop is within budget. RMSE rank alone was a
   weak order on small models (1, 2, 4, 8 worst layers: no better than none).
   A file with more float layers is adopted only when it gains at least
   ``MIN_GAIN_SAMPLES`` validation samples, and never past ``MAX_SIZE_RATIO`` times
   the plain int8 file's size: never a float-sized file, and the guard says it failed.

When the repaired file is still over budget on the test split, ``alternatives``
measures what a cpu target can run instead, ``int16x8`` (16-bit activations)
and ``dynamic`` (int8 weights, float activations): their drop on both splits,
size and latency against the int8 file (median of ``LATENCY_RUNS`` invocations
of one sample, in this process). They are offered, not adopted: the file's
quantization is the config's; the verdict says which alternative would meet the
budget and at what latency cost.

The result names the rung that met the budget, or says none did.

Example:
    >>> result = repair(model, calibration, x_train, (x_val, y_val), float_val_accuracy=0.97,  # doctest: +SKIP
    ...                 content=int8_bytes, budget_points=1.0, fallback="float")
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
from edgecomp.devices import agent
from edgecomp.errors import ModelError
from edgecomp.targets.convert import convert, unrolled

log = logging.getLogger("edgecomp")
TOP_LAYERS = 10
MAX_CALIBRATION = 2000   # samples of the training split the calibration rung uses at most
CANDIDATES = 8           # worst layers by RMSE/scale whose fallback is measured one by one
# A rung that makes the file larger (float layers) must gain at least this many validation samples over the
# file chosen so far: on 143-399 validation samples one sample is 0.25-0.7 points, and chasing single samples
# kept 7 of a Conv1D net's 7 layers float (a float-sized "int8" file) for a one-sample gain that the test
# split did not show.
MIN_GAIN_SAMPLES = 2
MAX_SIZE_RATIO = 2.0     # a float-fallback file may be at most this many times the plain int8 file's size
ALTERNATIVES = ("int16x8", "dynamic")   # other cpu quantizations measured when the repaired file is over budget
LATENCY_RUNS = 30        # timed invocations per file when comparing an alternative's latency with int8's


def _converter(model, calibration: np.ndarray):
    converter = tf.lite.TFLiteConverter.from_keras_model(unrolled(model))   # recurrent layers: see convert
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


def _validation_accuracy(content: bytes, validation) -> float:
    return runtime.evaluate(content, *validation, where="validation")["accuracy"]


def _step(rung: str, detail: str, content: bytes, validation, float_accuracy: float,
          accuracy: float | None = None) -> dict:
    """One rung's record; ``accuracy`` when the file was already measured on ``validation``."""
    if accuracy is None:
        accuracy = _validation_accuracy(content, validation)
    step = {"rung": rung, "detail": detail, "validation_accuracy": accuracy,
            "drop_points": (float_accuracy - accuracy) * 100, "size_bytes": len(content)}
    log.info("accuracy guard: %s (%s): validation drop %.2f points, %s bytes", rung, detail, step["drop_points"],
             f"{len(content):,}")
    return step


def better(step: dict, float_layers: int, best: dict, best_float_layers: int, sample_points: float,
           size_cap: float) -> tuple[bool, str | None]:
    """Whether rung ``step`` replaces the file chosen so far (``best``), and why not when it is more accurate.

    Least drop wins; on a tie, fewer float layers (float ops cost latency), then the
    smaller file. A file that costs more (more float layers or bytes) must gain at
    least ``MIN_GAIN_SAMPLES`` validation samples (``sample_points`` each), and none
    may exceed ``size_cap`` bytes.
    """
    gain = best["drop_points"] - step["drop_points"]
    if step["size_bytes"] > size_cap:
        return False, f"not adopted: over {MAX_SIZE_RATIO:g}x the plain int8 file's size" if gain > 0 else None
    costs_more = float_layers > best_float_layers or step["size_bytes"] > best["size_bytes"]
    if costs_more and gain < MIN_GAIN_SAMPLES * sample_points - 1e-9:
        return False, (f"not adopted: gains under {MIN_GAIN_SAMPLES} validation samples for a larger file"
                       if gain > 0 else None)
    key = (step["drop_points"], float_layers, step["size_bytes"])
    return key < (best["drop_points"], best_float_layers, best["size_bytes"]), None


def repair(model, calibration: np.ndarray, x_train: np.ndarray, validation: tuple, float_accuracy: float,
           content: bytes, budget_points: float, fallback: str = "float", plain_failed: bool = False,
           first_rung: str = "plain") -> dict:
    """Climbs the repair ladder until the int8 file's validation drop is within ``budget_points``.

    Args:
        model: the float tf_keras model that was converted.
        calibration: the samples ``content`` was calibrated on.
        x_train: the training split (the calibration rung draws from it).
        validation: ``(x_val, y_val)``; every rung is measured there.
        float_accuracy: ``model``'s accuracy on the validation split.
        content: the plain int8 file.
        budget_points: allowed drop, in points, against ``float_accuracy``.
        fallback: ``"float"`` allows the float-fallback rung.
        plain_failed: the caller found ``content`` over budget on the test split: climb the rungs even
            when the validation split says the plain file is within budget (the best on validation wins).
        first_rung: what ``content`` is: ``"plain"`` (post-training int8 of ``model``) or ``"qat"`` (the
            quantization-aware-trained file; ``model`` is then the float model QAT started from, and the
            later rungs quantize it after training instead).

    Returns:
        ``{"content": chosen bytes, "rung": rung that met the budget or None, "steps": [{"rung", "detail",
        "validation_accuracy", "drop_points", "size_bytes"}], "layers": ranking (top), "float_layers": [...],
        "calibration_samples": int}``. When no rung meets the budget, ``content`` is the best one measured.
    """
    what = "quantization-aware training" if first_rung == "qat" else f"{len(calibration)} calibration samples"
    steps = [_step(first_rung, what, content, validation, float_accuracy)]
    chosen = {"content": content, "step": steps[0], "calibration": calibration, "float_layers": []}
    result = {"steps": steps, "layers": [], "float_layers": [], "rung": None}

    # One validation sample, in points: a file that costs more (float layers, size) must win by MIN_GAIN_SAMPLES.
    sample_points = 100.0 / max(1, len(validation[1]))
    size_cap = MAX_SIZE_RATIO * steps[0]["size_bytes"]

    def consider(step, candidate, samples, float_layers):
        adopt, note = better(step, len(float_layers), chosen["step"], len(chosen["float_layers"]), sample_points,
                             size_cap)
        if note:
            step["note"] = note
        if adopt:
            chosen.update(content=candidate, step=step, calibration=samples, float_layers=float_layers)
        return step["drop_points"] <= budget_points and chosen["step"] is step

    done = steps[0]["drop_points"] <= budget_points and not plain_failed
    if done:
        result["rung"] = first_rung
    if not done and _calibration_rung(model, calibration, x_train, validation, float_accuracy, steps, consider):
        done, result["rung"] = True, "calibration"
    if not done and fallback == "float":
        result["layers"], met = _float_fallback_rung(model, chosen["calibration"], validation, float_accuracy, steps,
                                                     consider, size_cap)
        if met:
            result["rung"] = "float_fallback"
    result.update(content=chosen["content"], float_layers=chosen["float_layers"],
                  calibration=chosen["calibration"], calibration_samples=int(len(chosen["calibration"])))
    return result


def _calibration_rung(model, calibration: np.ndarray, x_train: np.ndarray, validation: tuple,
                      float_accuracy: float, steps: list[dict], consider) -> bool:
    """Rung ``calibration``: the file calibrated on up to ``MAX_CALIBRATION`` training samples.

    Skipped when the training split has no more samples than ``calibration``. The step is
    appended to ``steps``; ``consider(step, content, samples, float_layers)`` says whether
    the file was adopted and met the budget, which is what this returns.
    """
    more = x_train[:MAX_CALIBRATION]
    if len(more) <= len(calibration):
        return False
    candidate = convert(model, "int8", "float32", more)
    step = _step("calibration", f"{len(more)} calibration samples", candidate, validation, float_accuracy)
    steps.append(step)
    return consider(step, candidate, more, [])


def _float_fallback_rung(model, samples: np.ndarray, validation: tuple, float_accuracy: float, steps: list[dict],
                         consider, size_cap: float) -> tuple[list[dict], bool]:
    """Rung ``float_fallback``: the worst layers kept float, added in order of measured gain.

    Each of the ``CANDIDATES`` worst layers by RMSE / scale is measured alone, then files
    with the best 1, 2, ... of them float are tried (never all layers, and no more once
    one is over ``size_cap`` bytes) until ``consider`` adopts one within budget.

    Returns:
        ``(the TOP_LAYERS worst layers of the ranking, whether a file met the budget)``.
    """
    ranking = layer_errors(model, samples)
    candidates = [row["tensor"] for row in ranking[:CANDIDATES]] if len(ranking) > 1 else []
    singles = []   # (validation accuracy, tensor, file with that one layer float)
    for tensor in candidates:
        single = with_float_layers(model, samples, [tensor])
        singles.append((_validation_accuracy(single, validation), tensor, single))
    singles.sort(key=lambda item: -item[0])
    order = [tensor for _, tensor, _ in singles]
    for count in range(1, min(len(order), len(ranking) - 1) + 1):   # never all: that is the float32 file
        kept = order[:count]
        # The best single layer's file was built and measured while ranking.
        measured, candidate = (singles[0][0], singles[0][2]) if count == 1 else \
            (None, with_float_layers(model, samples, kept))
        step = _step("float_fallback", f"{count} layer(s) float: {', '.join(kept)}", candidate, validation,
                     float_accuracy, measured)
        steps.append(step)
        if consider(step, candidate, samples, kept):
            return ranking[:TOP_LAYERS], True
        if step["size_bytes"] > size_cap:
            break   # more float layers only make it larger
    return ranking[:TOP_LAYERS], False


def latency_ms(content: bytes, sample: np.ndarray, runs: int = LATENCY_RUNS) -> float:
    """Median milliseconds of one invocation of ``content`` on ``sample`` (one thread, default delegates)."""
    interpreter = runtime.make_interpreter(content)
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], runtime.quantize_input(sample[:1], detail))
    interpreter.invoke()   # warm-up: the first invocation prepares the delegate
    return float(np.median(agent.time_invokes(interpreter.invoke, runs))) * 1000


def alternatives(model, calibration: np.ndarray, validation: tuple, test: tuple, float_accuracy: dict,
                 int8_content: bytes, budget_points: float) -> list[dict]:
    """Measures the cpu quantizations other than int8 (offered, never adopted).

    Args:
        model: the float model the int8 file came from.
        calibration: the samples the int8 file was calibrated on.
        validation, test: ``(x, y)`` splits; each alternative is measured on both.
        float_accuracy: ``{"validation": ..., "test": ...}``, ``model``'s accuracy on each split.
        int8_content: the int8 file; the alternatives' latency is given against it.
        budget_points: the target's budget; ``within_budget`` is judged on the test split, as the verdict is.

    Returns:
        Per quantization of ``ALTERNATIVES``: ``{"quantization", "validation_accuracy", "drop_points",
        "test_accuracy", "test_drop_points", "size_bytes", "latency_vs_int8", "within_budget"}``, or
        ``{"quantization", "error"}`` when the converter refuses the model.
    """
    rows = []
    sample = validation[0][:1]
    int8_latency = latency_ms(int8_content, sample)
    for quantization in ALTERNATIVES:
        try:   # an alternative is only offered: a file this runtime cannot build or run is reported, not raised
            content = convert(model, quantization, "float32", calibration)
            accuracy = _validation_accuracy(content, validation)
            test_accuracy = runtime.evaluate(content, *test, where="test")["accuracy"]
            ratio = latency_ms(content, sample) / int8_latency if int8_latency > 0 else float("nan")
        except ModelError as error:
            log.info("accuracy guard: alternative %s: %s", quantization, error)
            rows.append({"quantization": quantization, "error": str(error)})
            continue
        test_drop = (float_accuracy["test"] - test_accuracy) * 100
        rows.append({"quantization": quantization, "validation_accuracy": accuracy,
                     "drop_points": (float_accuracy["validation"] - accuracy) * 100, "test_accuracy": test_accuracy,
                     "test_drop_points": test_drop, "size_bytes": len(content), "latency_vs_int8": ratio,
                     "within_budget": test_drop <= budget_points})
        log.info("accuracy guard: alternative %s: test drop %.2f points, %s bytes, %.2fx the int8 file's latency",
                 quantization, test_drop, f"{len(content):,}", ratio)
    return rows
