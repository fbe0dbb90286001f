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


def verify(content: bytes, quantization: str, io: str = "float32") -> dict:
    """Checks ``content`` against the cpu rules for ``quantization`` and ``io``.

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

    ok, detail = _check_quantization(ops, tensors, quantization)
    rules.append(_rule("quantization", ok, detail))

    return {
        "ok": all(rule["ok"] for rule in rules),
        "details": {
            "rules": rules,
            "ops": dict(sorted(collections.Counter(op["op_name"] for op in ops).items())),
            "tensor_types": dict(sorted(collections.Counter(dtype.values()).items())),
        },
    }


def _check_quantization(ops: list[dict], tensors: list[dict], quantization: str) -> tuple[bool, str]:
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
