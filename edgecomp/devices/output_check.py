"""Does the device compute what this machine computes? Compares a benchmark's outputs with a local run.

The benchmark agent returns the raw outputs of the samples it was given, each run
alone after timing, with the same runtime that was timed. This module runs the
same file on the same samples here, through the agent's own function, and
compares:

- integer outputs, and float outputs dequantized from an integer tensor: the
  largest difference in quantization steps and how many values differ;
  ``identical`` at 0, ``within tolerance`` up to ``STEP_TOLERANCE`` step (optimized
  kernels may round differently);
- float outputs of a float model: the largest absolute difference relative to the
  largest output magnitude; ``within tolerance`` up to ``FLOAT_TOLERANCE``.

Beyond the tolerance the verdict is ``differs`` when every sample keeps its top
class (another runtime version or CPU may round differently: reported, not
failed) and ``wrong`` when one does not (the run fails).

Example:
    >>> check = compare(result["outputs"], reference(content, samples))   # doctest: +SKIP
    >>> check["verdict"], check["max_steps"]                               # doctest: +SKIP
    ('identical', 0)
"""

from __future__ import annotations

import numpy as np

from edgecomp import runtime
from edgecomp.devices import agent

STEP_TOLERANCE = 1
FLOAT_TOLERANCE = 1e-3


def reference(content: bytes, samples: np.ndarray) -> dict | None:
    """The outputs this machine's runtime gives for ``samples`` (default delegate, one thread).

    A float output computed by an integer model (its last op a ``DEQUANTIZE``) gets
    ``step``, the scale of the integer tensor it came from: differences are then
    counted in those steps too.
    """
    local = agent.outputs_for(runtime.make_interpreter(content), samples)
    if local is not None and np.dtype(local["dtype"]).kind == "f":
        local["step"] = _dequantized_step(content)
    return local


def _dequantized_step(content: bytes) -> float | None:
    interpreter = runtime.make_interpreter(content, delegates=False)
    output = interpreter.get_output_details()[0]["index"]
    scales = {t["index"]: t["quantization"][0] for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the op list has no public accessor
        if op["op_name"] == "DEQUANTIZE" and output in op["outputs"]:
            return float(scales[op["inputs"][0]]) or None
    return None


def compare(device: dict | None, local: dict | None) -> dict:
    """``{"verdict", "samples", "max_steps" | "max_relative_difference", "differing_values", "tolerance"}``.

    ``verdict`` is ``identical``, ``within tolerance``, ``differs`` (same top classes), ``wrong`` or
    ``not checked`` (with ``reason``).
    """
    if device is None or local is None:
        return {"verdict": "not checked", "reason": "the model has several inputs or a batch other than 1"}
    got, expected = np.asarray(device["values"], dtype=np.float64), np.asarray(local["values"], dtype=np.float64)
    if got.shape != expected.shape or device["dtype"] != local["dtype"]:
        return {"verdict": "wrong", "samples": len(device["values"]),
                "reason": f"outputs {device['dtype']}{list(got.shape)} on the device, {local['dtype']}"
                          f"{list(expected.shape)} here"}
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))   # an inf or NaN both sides agree on
    with np.errstate(invalid="ignore"):
        difference = np.where(same, 0.0, np.abs(got - expected))
    difference = np.where(np.isnan(difference), np.inf, difference)
    check = {"samples": int(got.shape[0]), "differing_values": int(np.count_nonzero(difference)),
             "values": int(got.size)}
    # Kernels of another runtime version or CPU may round differently without changing the answer: beyond the
    # tolerance the verdict is "differs" when every sample keeps its top class, "wrong" when one does not.
    top_class_kept = bool(got.ndim < 2 or np.array_equal(np.argmax(np.nan_to_num(got), -1),
                                                         np.argmax(np.nan_to_num(expected), -1)))
    beyond = "differs" if top_class_kept else "wrong"
    step = 1.0 if np.dtype(device["dtype"]).kind in "iu" else local.get("step")
    if step:
        largest = float(difference.max()) / step if difference.size else 0.0
        steps = int(np.round(largest)) if np.isfinite(largest) else -1
        check.update(max_steps=steps, tolerance=f"{STEP_TOLERANCE} quantization step")
        check["verdict"] = "identical" if steps == 0 else "within tolerance" if 0 < steps <= STEP_TOLERANCE \
            else beyond
        return check
    finite = np.abs(expected[np.isfinite(expected)])
    scale = max(float(finite.max()) if finite.size else 0.0, 1e-12)
    relative = float(difference.max() / scale) if difference.size else 0.0
    check.update(max_relative_difference=relative, tolerance=f"{FLOAT_TOLERANCE:g} of the largest output")
    check["verdict"] = "identical" if relative == 0 else "within tolerance" if relative <= FLOAT_TOLERANCE \
        else beyond
    return check


def describe(check: dict) -> str:
    """One line: ``identical on 8 samples`` / ``wrong: 12 of 80 values differ, up to 37 steps``."""
    if check["verdict"] == "not checked":
        return f"outputs not checked ({check['reason']})"
    if "reason" in check:
        return f"{check['verdict']}: {check['reason']}"
    size = (f"up to {check['max_steps']} step(s)" if "max_steps" in check
            else f"up to {check['max_relative_difference']:.2g} of the largest output")
    if check["verdict"] == "identical":
        return f"identical on {check['samples']} samples"
    return (f"{check['verdict']} on {check['samples']} samples: {check['differing_values']} of {check['values']} "
            f"values differ, {size} (tolerance {check['tolerance']})")
