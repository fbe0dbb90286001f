"""Verifier of the ``cpu`` target: proves the file is what the profile promised.

Rules (each reported with ``ok`` and a detail):

- ``loads``: the interpreter allocates the model.
- ``builtin_ops``: no custom or Flex (TensorFlow) ops, which stock runtimes lack.
- ``io_type``: inputs and outputs have the configured ``io`` type.
- ``quantization``: the tensors have the types the mode promises: int8 — every op
  but the boundary QUANTIZE/DEQUANTIZE computes on integers; int16x8 — activations
  int16; dynamic — conv/dense weights of at least 1,024 elements int8 (the
  converter leaves smaller ones float by design); float16 —
  conv/dense weights stored as float16; float32 — no quantized tensors.
"""

from __future__ import annotations

import collections

import numpy as np

from edgecomp import runtime
from edgecomp.errors import ModelError

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D")
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE")
DYNAMIC_MIN_ELEMENTS = 1024  # the converter's threshold for dynamic-range weights
INTEGER_TYPES = ("int8", "uint8", "int16", "int32", "int64", "bool")


BENCHMARKED = True   # the run times its files on every benchmark device


def judge(content: bytes, params, path, x_test: np.ndarray, y_test: np.ndarray,
          expect: dict | None = None) -> tuple[dict, dict, list]:
    """The whole target: the cpu rules (``verify``) and accuracy measured by running the file with LiteRT.

    Returns:
        ``(compatibility, metrics, skipped)``; no metrics when the file does not load.
    """
    compatibility = verify(content, params.quantization, params.io, expect)
    rules = compatibility["details"].get("rules") or []
    metrics = runtime.evaluate(content, x_test, y_test, where=str(path)) if rules and rules[0]["ok"] else {}
    return compatibility, metrics, []


def verify(content: bytes, quantization: str, io: str = "float32", expect: dict | None = None,
           float_fallback: int = 0) -> dict:
    """Checks ``content`` against the cpu rules for ``quantization`` and ``io``.

    Args:
        content: the ``.tflite`` bytes.
        quantization: the mode the file was converted with.
        io: the input/output type asked for.
        expect: what earlier stages promise about the weights, checked in the file:
            ``{"sparsity": 0.8}`` (zero share of all conv/dense weights as measured in
            the pruned Keras model, 1 point of slack)
            and/or ``{"clusters": 16}`` (distinct values per output channel of each
            clustered kernel; one more allowed for the zero of pruned weights).
        float_fallback: int8 only: number of layers the accuracy guard kept float on
            purpose; float ops are then allowed and listed.

    Returns:
        ``{"ok": bool, "details": {"rules": [...], "ops": {...}, "tensor_types": {...}}}``.
    """
    rules = []
    try:
        ops, tensors = runtime.ops_and_tensors(content)
    except ModelError as error:
        return {"ok": False, "details": {"rules": [_rule("loads", False, str(error))]}}
    rules.append(_rule("loads", True, f"{len(ops)} ops, {len(tensors)} tensors"))
    dtype = {t["index"]: np.dtype(t["dtype"]).name for t in tensors}

    unusual = sorted({op["op_name"] for op in ops if op["op_name"].startswith("Flex") or op["op_name"] == "CUSTOM"})
    rules.append(_rule("builtin_ops", not unusual, "all builtin" if not unusual else f"non-builtin: {unusual}"))

    io_info = runtime.io_details(content)
    io_types = sorted({d["dtype"] for d in io_info["inputs"] + io_info["outputs"]})
    rules.append(_rule("io_type", io_types == [io], f"inputs/outputs are {', '.join(io_types)}, expected {io}"))

    ok, detail = _check_quantization(ops, tensors, quantization, float_fallback)
    rules.append(_rule("quantization", ok, detail))

    weights = weight_statistics(content)
    expect = expect or {}
    if "sparsity" in expect:
        achieved = weights["sparsity"]
        rules.append(_rule("sparsity_preserved", achieved >= expect["sparsity"] - 0.01,
                           f"{achieved:.4f} of conv/dense weights are zero in the file, expected ≥ "
                           f"{expect['sparsity'] - 0.01:.4f} (the pruned model's {expect['sparsity']:.4f} less 1 point)"))
    if "clusters" in expect:
        allowed = expect["clusters"] + (1 if "sparsity" in expect else 0)
        worst = max((w["max_unique_per_channel"] for w in weights["tensors"] if w["clustered"]), default=0)
        rules.append(_rule("clusters_preserved", 0 < worst <= allowed,
                           f"at most {worst} distinct values per output channel of clustered kernels, "
                           f"expected ≤ {allowed}"))

    return {
        "ok": all(rule["ok"] for rule in rules),
        "details": {
            "rules": rules,
            "ops": dict(sorted(collections.Counter(op["op_name"] for op in ops).items())),
            "tensor_types": dict(sorted(collections.Counter(dtype.values()).items())),
            "weights": weights,
        },
    }


def weight_statistics(content: bytes, min_weights: int = 64) -> dict:
    """Zero share and distinct values of the conv/dense weights stored in the file.

    Returns:
        ``{"sparsity": zero share over all weights, "tensors": [{"op", "shape", "dtype",
        "sparsity", "unique_values", "max_unique_per_channel", "clustered"}]}``;
        ``clustered`` marks kernels of at least ``min_weights`` weights (smaller ones
        are never clustered) that are not depthwise (tfmot never clusters those).
    """
    interpreter = runtime.make_interpreter(content, delegates=False)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    produced_by = {int(out): op for op in interpreter._get_ops_details() for out in op["outputs"]}  # noqa: SLF001
    tensors, zeros, total = [], 0, 0
    for op in interpreter._get_ops_details():  # noqa: SLF001
        if op["op_name"] not in WEIGHTED_OPS or len(op["inputs"]) < 2:
            continue
        index = int(op["inputs"][1])
        source = produced_by.get(index)
        if source is not None and source["op_name"] == "DEQUANTIZE":
            index = int(source["inputs"][0])
        try:
            values = interpreter.get_tensor(index)
        except ValueError:
            continue  # not a constant: computed at run time
        axis = int(details[index]["quantization_parameters"]["quantized_dimension"])
        channels = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1) if values.ndim else values.reshape(1, -1)
        zeros += int(np.count_nonzero(values == 0))
        total += int(values.size)
        tensors.append({
            "op": op["op_name"],
            "shape": [int(d) for d in values.shape],
            "dtype": values.dtype.name,
            "sparsity": float(np.mean(values == 0)),
            "unique_values": int(np.unique(values).size),
            "max_unique_per_channel": int(max(np.unique(row).size for row in channels)),
            "clustered": bool(values.size >= min_weights and op["op_name"] != "DEPTHWISE_CONV_2D"),
        })
    return {"sparsity": zeros / total if total else 0.0, "tensors": tensors}


def _check_quantization(ops: list[dict], tensors: list[dict], quantization: str,
                        float_fallback: int = 0) -> tuple[bool, str]:
    dtype = {t["index"]: np.dtype(t["dtype"]).name for t in tensors}
    produced_by = {int(out): op for op in ops for out in op["outputs"]}
    size = {t["index"]: int(np.prod(t["shape"])) for t in tensors}
    weights = []
    for op in ops:
        if op["op_name"] in WEIGHTED_OPS and len(op["inputs"]) > 1 and op["inputs"][1] >= 0:
            weight = int(op["inputs"][1])
            source = produced_by.get(weight)
            if source is not None and source["op_name"] == "DEQUANTIZE":
                weights.append((size[weight], dtype[int(source["inputs"][0])]))
            else:
                weights.append((size[weight], dtype[weight]))
    weight_types = sorted({t for _, t in weights})

    if quantization == "int8":
        float_ops = [
            op["op_name"]
            for op in ops
            if op["op_name"] not in BOUNDARY_OPS
            and any(dtype[int(t)] not in INTEGER_TYPES for t in list(op["inputs"]) + list(op["outputs"]) if t >= 0)
        ]
        if float_ops and float_fallback:
            return True, (f"{len(float_ops)} ops kept float by the accuracy guard ({float_fallback} layers): "
                          f"{sorted(set(float_ops))}")
        if float_ops:
            return False, f"{len(float_ops)} ops compute in float: {sorted(set(float_ops))}"
        return True, f"all {len(ops)} ops integer; weights {weight_types or ['none']}"
    if quantization == "int16x8":
        activations = {
            dtype[int(t)] for op in ops if op["op_name"] not in BOUNDARY_OPS for t in op["outputs"]
        }
        ok = activations <= {"int16", "int32"} and bool(activations)
        return ok, f"activation types {sorted(activations)}; weights {weight_types}"
    if quantization == "dynamic":
        large = [t for n, t in weights if n >= DYNAMIC_MIN_ELEMENTS]
        if not large:
            return True, f"no weight tensor has {DYNAMIC_MIN_ELEMENTS} elements; the file stays float (as float32)"
        ok = all(t == "int8" for t in large)
        return ok, f"weight types {weight_types}" + ("" if ok else " (expected int8 weights)")
    if quantization == "float16":
        ok = bool(weights) and all(t == "float16" for _, t in weights)
        return ok, f"weight types {weight_types}" + ("" if ok else " (expected float16 weights)")
    quantized = sorted({t for t in dtype.values() if t in ("int8", "uint8", "int16", "float16")})
    return not quantized, "all float32" if not quantized else f"unexpected quantized tensors: {quantized}"


def _rule(name: str, ok: bool, detail: str) -> dict:
    return {"rule": name, "ok": bool(ok), "detail": detail}
