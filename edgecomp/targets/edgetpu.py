"""Verifier of the ``edgetpu`` target (Coral Edge TPU): a static rule checker and the compiler, when present.

The Edge TPU runs full-integer 8-bit TFLite models that Coral's ``edgetpu_compiler``
has compiled. The compiler is a closed x86-64 Debian package; where it is not on
``PATH`` this module predicts what it would do from Coral's published model
requirements (https://coral.ai/docs/edgetpu/models-intro/, "Model requirements"
and "Supported operations", the rows for runtime 14 / compiler 16):

- ``io_type``: inputs and outputs are the configured ``io`` type (int8 or uint8).
- ``batch_one``: every input has batch size 1.
- ``static_shapes``: no tensor has a dynamic dimension (``shape_signature`` −1), and
  the parameters of weighted ops (weights, biases) are constants in the file.
- ``quantized_8bit``: every tensor the ops compute on is int8/uint8 with quantization
  parameters; int32 is allowed only for constant parameters (biases, shapes, axes).
- ``tensor_rank``: only the 3 innermost dimensions of a tensor may be larger than 1.
- ``supported_ops``: every op is in Coral's table and within its documented limits.
- ``maps_fully``: the compiler maps ops in order until the first one it cannot map;
  that op and every op after it run on the CPU (it partitions the model once). The
  rule reports the ops that would map, the first op that breaks the chain and why,
  and the share of multiply-accumulates (MACs: Conv2D, DepthwiseConv2D,
  FullyConnected, TransposeConv; other ops count 0) left on the Edge TPU.

This is an approximation: the real compiler also drops ops for reasons it does not
publish ("not mapped due to some unspecified limitation", large tensors), and it may
run a leading ``QUANTIZE`` on the CPU and map the rest, where this checker stops the
chain at the first op. When ``edgetpu_compiler`` is on ``PATH`` it is run and its log
parsed (``parse_compiler_log``); its absence is recorded, not an error.

Example:
    >>> compatibility = verify(content, io="int8")  # doctest: +SKIP
    >>> compatibility["details"]["mapping"]["mac_share_on_tpu"]  # doctest: +SKIP
    1.0
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgecomp import files
from edgecomp.errors import ModelError
from edgecomp.graph import PARAMETER_INPUTS, Operator, Tensor, loads_rule, macs, read_model

DOCS = "https://coral.ai/docs/edgetpu/models-intro/"
COMPILER = "edgetpu_compiler"
SOFTMAX_MAX_ELEMENTS = 16000
EIGHT_BIT = ("INT8", "UINT8")



# ---------------------------------------------------------------------------------------------
# Coral's supported-operations table: op → check of its documented limits (None: no limit).
# Each check returns why the op breaks the limit, or None.
# ---------------------------------------------------------------------------------------------

def _no_fused_activation(op: Operator, tensors) -> Optional[str]:
    activation = getattr(op.options, "fusedActivationFunction", 0)
    return f"has a fused activation ({activation}); Coral allows none on this op" if activation else None


def _same_dilation(op: Operator, tensors) -> Optional[str]:
    width, height = getattr(op.options, "dilationWFactor", 1), getattr(op.options, "dilationHFactor", 1)
    return None if width == height else f"dilation {height}x{width} differs in y and x; Coral needs the same"


def _concatenation(op: Operator, tensors) -> Optional[str]:
    reason = _no_fused_activation(op, tensors)
    constants = [tensors[i] for i in op.inputs if tensors[i].constant]
    if reason is None and constants:
        # A quantized zero is stored as the tensor's zero point.
        if len(op.inputs) != 2 or np.any(constants[0].value != constants[0].zero_point):
            reason = ("has a constant input; Coral allows one only as the second of exactly 2 inputs and all "
                      "zeros (a zero padding)")
    return reason


def _fully_connected(op: Operator, tensors) -> Optional[str]:
    if getattr(op.options, "weightsFormat", 0):
        return "uses a shuffled weights format; Coral supports only the default format"
    output = tensors[op.outputs[0]].shape
    if sum(1 for d in output if d > 1) > 1:
        return f"output shape {list(output)} is not one-dimensional"
    return None


def _axes(op: Operator, tensors, position: int = 1) -> list[int]:
    if len(op.inputs) <= position or not tensors[op.inputs[position]].constant:
        return []
    rank = len(tensors[op.inputs[0]].shape)
    return [int(a) % rank if rank else int(a) for a in np.ravel(tensors[op.inputs[position]].value)]


def _not_on_batch(op: Operator, tensors) -> Optional[str]:
    if len(tensors[op.inputs[0]].shape) > 1 and 0 in _axes(op, tensors):
        return "operates on the batch dimension (axis 0)"
    return None


def _mean(op: Operator, tensors) -> Optional[str]:
    reason = _not_on_batch(op, tensors)
    shape = tensors[op.inputs[0]].shape
    if reason is None and shape and len(shape) - 1 in _axes(op, tensors) and shape[-1] % 4:
        reason = f"reduces the innermost dimension of size {shape[-1]}, which is not a multiple of 4"
    return reason


def _pad(op: Operator, tensors) -> Optional[str]:
    paddings = tensors[op.inputs[1]] if len(op.inputs) > 1 else None
    if paddings is not None and paddings.constant and len(tensors[op.inputs[0]].shape) > 1:
        if np.any(np.reshape(paddings.value, (-1, 2))[0] != 0):
            return "pads the batch dimension"
    return None


def _pack(op: Operator, tensors) -> Optional[str]:
    return "packs along the batch dimension" if getattr(op.options, "axis", 0) == 0 else None


def _split(op: Operator, tensors) -> Optional[str]:
    axis = tensors[op.inputs[0]]  # SPLIT: (axis, input)
    if axis.constant and len(op.inputs) > 1 and len(tensors[op.inputs[1]].shape) > 1:
        if int(np.ravel(axis.value)[0]) % len(tensors[op.inputs[1]].shape) == 0:
            return "splits along the batch dimension"
    return None


def _prelu(op: Operator, tensors) -> Optional[str]:
    alpha = tensors[op.inputs[1]].shape if len(op.inputs) > 1 else ()
    if sum(1 for d in alpha[:-1] if d > 1):
        return f"alpha of shape {list(alpha)}: only its innermost dimension may be > 1 (Keras: shared_axes=[1, 2])"
    return None


def _softmax(op: Operator, tensors) -> Optional[str]:
    shape = tensors[op.inputs[0]].shape
    if sum(1 for d in shape if d > 1) > 1:
        return f"input shape {list(shape)} is not 1-D"
    if int(np.prod(shape)) > SOFTMAX_MAX_ELEMENTS:
        return f"input has {int(np.prod(shape)):,} elements, more than {SOFTMAX_MAX_ELEMENTS:,}"
    return None


def _strided_slice(op: Operator, tensors) -> Optional[str]:
    if getattr(op.options, "ellipsisMask", 0) or getattr(op.options, "newAxisMask", 0):
        return "uses an ellipsis or new-axis mask; Coral needs both 0"
    strides = tensors[op.inputs[3]] if len(op.inputs) > 3 else None
    if strides is not None and strides.constant and np.any(np.ravel(strides.value) != 1):
        return f"strides {np.ravel(strides.value).tolist()}; Coral supports only strides of 1"
    return None


SUPPORTED_OPS: dict[str, Optional[Callable]] = {
    "ADD": None, "SUB": None, "MUL": None, "MAXIMUM": None, "MINIMUM": None,
    "AVERAGE_POOL_2D": _no_fused_activation, "MAX_POOL_2D": _no_fused_activation,
    "CONCATENATION": _concatenation,
    "CONV_2D": _same_dilation, "DEPTHWISE_CONV_2D": _same_dilation, "TRANSPOSE_CONV": None,
    "FULLY_CONNECTED": _fully_connected,
    "EXPAND_DIMS": None, "RESHAPE": None, "SQUEEZE": None, "SLICE": None, "STRIDED_SLICE": _strided_slice,
    "SPACE_TO_DEPTH": None, "TRANSPOSE": None, "SPLIT": _split, "PACK": _pack, "PAD": _pad,
    "L2_NORMALIZATION": None, "LOGISTIC": None, "TANH": None, "RELU": None, "RELU6": None,
    "RELU_N1_TO_1": None, "PRELU": _prelu, "RSQRT": None, "SOFTMAX": _softmax,
    "MEAN": _mean, "SUM": _not_on_batch, "REDUCE_MAX": _not_on_batch, "REDUCE_MIN": _not_on_batch,
    "RESIZE_BILINEAR": None, "RESIZE_NEAREST_NEIGHBOR": None, "QUANTIZE": None,
    "LSTM": None, "UNIDIRECTIONAL_SEQUENCE_LSTM": None,
}
# Why common ops are absent from the table, to make the chain-break message useful.
UNSUPPORTED_HINTS = {
    "HARD_SWISH": "hard-swish is not in Coral's table; use ReLU6 (MobileNetV3 'minimalistic' variants do)",
    "LEAKY_RELU": "leaky ReLU is not in Coral's table; use ReLU or PReLU",
    "DEQUANTIZE": "a float section follows (DEQUANTIZE → float ops); quantize the whole model to int8",
    "GELU": "GELU is not in Coral's table; use ReLU",
}


def op_issues(operator: Operator, tensors: dict[int, Tensor]) -> list[tuple[str, str]]:
    """Why the Edge TPU could not run ``operator``: ``[(rule, reason)]``, empty when it maps."""
    issues = []
    if operator.name not in SUPPORTED_OPS:
        hint = UNSUPPORTED_HINTS.get(operator.name, "it is not in Coral's supported-operations table")
        issues.append(("supported_ops", f"{operator.name} is not supported: {hint}"))
    else:
        check = SUPPORTED_OPS[operator.name]
        reason = check(operator, tensors) if check else None
        if reason:
            issues.append(("supported_ops", f"{operator.name} {reason}"))
    parameters = [operator.inputs[i] for i in PARAMETER_INPUTS.get(operator.name, ()) if i < len(operator.inputs)]
    for index in parameters:
        if not tensors[index].constant:
            issues.append(("static_shapes", f"parameter tensor '{tensors[index].name}' is computed at run time, "
                                            "not a constant"))
    for index in (*operator.inputs, *operator.outputs):
        tensor = tensors[index]
        if any(d < 0 for d in tensor.signature):
            issues.append(("static_shapes", f"tensor '{tensor.name}' has a dynamic shape {list(tensor.signature)}"))
        if tensor.dtype in EIGHT_BIT:
            if not tensor.quantized:
                issues.append(("quantized_8bit", f"tensor '{tensor.name}' is {tensor.dtype.lower()} without "
                                                 "quantization parameters"))
        elif not (tensor.dtype == "INT32" and tensor.constant):
            issues.append(("quantized_8bit", f"tensor '{tensor.name}' is {tensor.dtype.lower()}"))
        if not tensor.constant and sum(1 for d in tensor.shape[:-3] if d > 1):
            issues.append(("tensor_rank", f"tensor '{tensor.name}' of shape {list(tensor.shape)} has more than the "
                                          "3 innermost dimensions larger than 1"))
    unique = []
    for issue in issues:
        if issue not in unique:
            unique.append(issue)
    return unique


def verify(content: bytes, io: str = "int8") -> dict:
    """Checks ``content`` against the Edge TPU's model requirements.

    Args:
        content: the ``.tflite`` bytes (full-integer int8).
        io: the input/output type asked for: ``int8`` or ``uint8``.

    Returns:
        ``{"ok": bool, "details": {"rules": [...], "mapping": {...}, "ops": [...]}}``; ``mapping``
        holds ``ops_on_tpu``, ``ops_on_cpu``, ``first_unmapped`` (``{"index", "op", "reasons"}`` or
        None), ``macs_total``, ``macs_on_tpu`` and ``mac_share_on_tpu``.
    """
    try:
        operators, tensors, inputs, outputs = read_model(content)
    except ModelError as error:
        return {"ok": False, "details": {"rules": [_rule("loads", False, str(error))]}}
    rules = [loads_rule(content, f"{len(operators)} ops, {len(tensors)} tensors")]

    io_types = sorted({tensors[i].dtype.lower() for i in inputs + outputs})
    rules.append(_rule("io_type", io_types == [io], f"inputs/outputs are {', '.join(io_types)}, expected {io}"))
    batches = sorted({tensors[i].signature[0] if tensors[i].signature else 1 for i in inputs})
    rules.append(_rule("batch_one", batches == [1], f"input batch size {', '.join(str(b) for b in batches)}; "
                                                    "the Edge TPU needs 1 (−1 is a dynamic batch)"))

    per_op = [op_issues(op, tensors) for op in operators]
    for name, passed in (("static_shapes", "every tensor shape and every weight/bias is constant"),
                         ("quantized_8bit", "every tensor is int8/uint8 with quantization parameters "
                                            "(int32 only for constant biases and shapes)"),
                         ("tensor_rank", "at most the 3 innermost dimensions of each tensor are > 1"),
                         ("supported_ops", "every op is in Coral's table and within its limits")):
        found = [(op, reason) for op, issues in zip(operators, per_op) for rule, reason in issues if rule == name]
        detail = passed if not found else (
            f"{len(found)} finding(s); first: op #{found[0][0].index} {found[0][0].name}: {found[0][1]}")
        rules.append(_rule(name, not found, detail))

    mapping = _mapping(operators, tensors, per_op)
    first = mapping["first_unmapped"]
    if first is None:
        detail = (f"all {len(operators)} ops map to the Edge TPU ({mapping['macs_total']:,} MACs); "
                  "static check, see the compiler's log where it ran")
    else:
        detail = (f"{mapping['ops_on_tpu']} of {len(operators)} ops map; the chain breaks at op #{first['index']} "
                  f"{first['op']} ({'; '.join(first['reasons'])}), so it and the {mapping['ops_on_cpu'] - 1} ops "
                  f"after it run on the CPU; {mapping['mac_share_on_tpu']:.1%} of "
                  f"{mapping['macs_total']:,} MACs on the Edge TPU")
    rules.append(_rule("maps_fully", first is None, detail))
    ops = [{"index": op.index, "op": op.name, "macs": macs(op, tensors), "on_tpu": op.index < mapping["ops_on_tpu"],
            "issues": [reason for _, reason in issues]} for op, issues in zip(operators, per_op)]
    return {"ok": all(r["ok"] for r in rules), "details": {"rules": rules, "mapping": mapping, "ops": ops,
                                                           "requirements": DOCS}}


def _mapping(operators: list[Operator], tensors: dict[int, Tensor], per_op: list[list]) -> dict:
    """The compiler's one partition: ops map in order until the first that cannot."""
    mapped = next((i for i, issues in enumerate(per_op) if issues), len(operators))
    counts = [macs(op, tensors) for op in operators]
    total, on_tpu = sum(counts), sum(counts[:mapped])
    first = None
    if mapped < len(operators):
        first = {"index": mapped, "op": operators[mapped].name, "reasons": [r for _, r in per_op[mapped]]}
    # A model without weighted ops has no MACs: its share is then the share of ops mapped.
    share = on_tpu / total if total else (1.0 if first is None else mapped / max(len(operators), 1))
    return {"ops_on_tpu": mapped, "ops_on_cpu": len(operators) - mapped, "first_unmapped": first,
            "mapped_ops": sorted({op.name for op in operators[:mapped]}),
            "macs_total": total, "macs_on_tpu": on_tpu, "mac_share_on_tpu": share}


# ---------------------------------------------------------------------------------------------
# edgetpu_compiler: run it when present, parse what it prints.
# ---------------------------------------------------------------------------------------------

_SIZE_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3, "KB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3}
_OPERATOR_ROW = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")


def _bytes(text: str) -> Optional[int]:
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMG]?i?B)\s*", text)
    return int(round(float(match.group(1)) * _SIZE_UNITS[match.group(2)])) if match else None


def parse_compiler_log(text: str) -> dict:
    """What ``edgetpu_compiler`` printed (its stdout, its ``*_edgetpu.log``, or both joined).

    Returns:
        ``{"version", "compiled", "error", "input_bytes", "output_bytes", "on_chip_bytes",
        "on_chip_remaining_bytes", "off_chip_bytes", "subgraphs", "total_ops", "ops_on_tpu",
        "ops_on_cpu", "operators": [{"op", "count", "status", "mapped"}]}``; a figure the text
        does not hold is None.
    """
    result: dict = {"version": None, "compiled": None, "error": None, "input_bytes": None, "output_bytes": None,
                    "on_chip_bytes": None, "on_chip_remaining_bytes": None, "off_chip_bytes": None,
                    "subgraphs": None, "total_ops": None, "ops_on_tpu": None, "ops_on_cpu": None, "operators": []}
    keys = {"Input size": "input_bytes", "Output size": "output_bytes",
            "On-chip memory used for caching model parameters": "on_chip_bytes",
            "On-chip memory remaining for caching model parameters": "on_chip_remaining_bytes",
            "Off-chip memory used for streaming uncached model parameters": "off_chip_bytes"}
    counts = {"Number of Edge TPU subgraphs": "subgraphs", "Total number of operations": "total_ops",
              "Number of operations that will run on Edge TPU": "ops_on_tpu",
              "Number of operations that will run on CPU": "ops_on_cpu"}
    in_table, failures = False, []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("Edge TPU Compiler version"):
            result["version"] = line[len("Edge TPU Compiler version"):].strip()
        elif line.startswith("Model compiled successfully") or line == "Compilation succeeded!":
            result["compiled"] = True
        elif line.startswith(("Compilation failed", "Internal compiler error", "ERROR:")):
            result["compiled"] = False
            failures.append(line)
        elif re.match(r"^Operator\s+Count\s+Status$", line):
            in_table = True
        elif ":" in line and line.split(":", 1)[0] in keys:
            key, value = line.split(":", 1)
            result[keys[key]] = _bytes(value)
        elif ":" in line and line.split(":", 1)[0] in counts:
            key, value = line.split(":", 1)
            result[counts[key]] = int(value.strip()) if value.strip().isdigit() else None
        elif in_table and _OPERATOR_ROW.match(raw):
            name, count, status = _OPERATOR_ROW.match(raw).groups()
            result["operators"].append({"op": name, "count": int(count), "status": status,
                                        "mapped": status == "Mapped to Edge TPU"})
    if failures:  # the compiler's own reason first ("Compilation failed: ..."), else its first complaint
        result["error"] = next((line for line in failures if line.startswith("Compilation failed:")), failures[0])
    if result["operators"]:
        mapped = sum(row["count"] for row in result["operators"] if row["mapped"])
        unmapped = sum(row["count"] for row in result["operators"] if not row["mapped"])
        result["ops_on_tpu"] = mapped if result["ops_on_tpu"] is None else result["ops_on_tpu"]
        result["ops_on_cpu"] = unmapped if result["ops_on_cpu"] is None else result["ops_on_cpu"]
    elif result["total_ops"] is not None and result["ops_on_tpu"] is None and "not all operations" not in text:
        # Where every op maps the compiler prints no per-op counts, only the total.
        result["ops_on_tpu"], result["ops_on_cpu"] = result["total_ops"], 0
    return result


def compile_model(path: Path, compiler: str = COMPILER, timeout_s: float = 180.0) -> dict:
    """Runs ``edgetpu_compiler`` on ``path`` when it is on ``PATH``; keeps its model and log beside it.

    Writes ``<stem>_edgetpu.tflite`` and ``<stem>_edgetpu.log`` (the compiler's) and
    ``edgetpu_compiler.txt`` (what it printed) into ``path``'s folder.

    Returns:
        ``{"available": False, "note"}`` when the compiler is absent; else ``{"available": True,
        "command", "returncode", "model", "log", **parse_compiler_log(...)}``; a timeout or a
        failed compile is recorded in ``error``, never raised.
    """
    binary = shutil.which(compiler)
    if binary is None:
        return {"available": False,
                "note": f"{compiler} is not on PATH: it ships only as an x86-64 Debian package from Coral's apt "
                        "repository (edgetpu-compiler); the mapping above is edgecomp's static approximation. "
                        f"Install it and run again, or run `{compiler} -s {path.name}` where it is installed"}
    folder = path.parent
    command = [binary, "--out_dir", str(folder), "--show_operations", str(path)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"available": True, "command": command, "returncode": None, "compiled": False,
                "error": f"{compiler} did not finish in {timeout_s:.0f} s; raise targets.edgetpu.compiler_timeout_s"}
    except OSError as error:
        return {"available": True, "command": command, "returncode": None, "compiled": False,
                "error": f"{compiler} could not be started: {error}"}
    printed = done.stdout + ("\n" + done.stderr if done.stderr else "")
    files.write_text(folder / "edgetpu_compiler.txt", printed)
    log_path = folder / f"{path.stem}_edgetpu.log"
    model_path = folder / f"{path.stem}_edgetpu.tflite"
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    result = parse_compiler_log(printed + "\n" + log_text)
    if done.returncode != 0:
        result["compiled"] = False
        result["error"] = result["error"] or f"{compiler} exited with status {done.returncode}"
    result.update(available=True, command=command, returncode=done.returncode,
                  model=model_path.name if model_path.exists() else None,
                  log=log_path.name if log_path.exists() else None)
    if not result["error"] and (result["model"] is None or result["ops_on_tpu"] is None):
        # Exit 0 is not enough: the compiled file and the op counts must be there.
        result["compiled"] = False
        result["error"] = (f"{compiler} exited 0 but wrote no compiled model" if result["model"] is None
                           else f"{compiler} printed no op counts; the mapping cannot be confirmed")
    return result


def judge(content: bytes, params, path: Path, x_test: np.ndarray, y_test: np.ndarray,
          expect: dict | None = None) -> tuple[dict, dict, list]:
    """The whole target: verify, compile when the rules pass and the compiler exists, measure accuracy.

    Args:
        content: the int8 ``.tflite`` bytes, already written to ``path``.
        params: the ``EdgeTpuTargetConfig``.
        path: where the file was written (the compiler's outputs go beside it).
        x_test, y_test: the test split; accuracy is measured on the int8 file with LiteRT.
        expect: not used (the Edge TPU rules do not depend on earlier stages).

    Returns:
        ``(compatibility, metrics, skipped)``.
    """
    from edgecomp import runtime

    compatibility = verify(content, params.io)
    skipped = [{"layer": "benchmark", "reason": "edgetpu: timings need a Coral device with libedgetpu; host CPU "
                                                "timings of this int8 file are the cpu target's"}]
    if compatibility["ok"]:
        compiled = compile_model(path, params.compiler, params.compiler_timeout_s)
        compatibility["details"]["compiler"] = compiled
        if compiled.get("error"):
            compatibility["ok"] = False
            compatibility["details"]["rules"].append(_rule("compiles", False, compiled["error"]))
            compatibility["details"]["checked"] = f"by {params.compiler}, which failed"
        elif compiled.get("available"):
            compatibility["details"]["checked"] = f"compiled by edgetpu_compiler {compiled.get('version') or ''}".strip()
            on_cpu = compiled.get("ops_on_cpu") or 0
            compatibility["details"]["rules"].append(_rule(
                "compiles", on_cpu == 0,
                f"{compiled.get('ops_on_tpu')} ops on the Edge TPU, {on_cpu} on the CPU, "
                f"{compiled.get('subgraphs')} Edge TPU subgraph(s), on-chip {compiled.get('on_chip_bytes')} B, "
                f"off-chip {compiled.get('off_chip_bytes')} B ({compiled.get('version')})"))
            compatibility["ok"] = all(r["ok"] for r in compatibility["details"]["rules"])
        else:
            skipped.append({"layer": "edgetpu_compiler", "reason": compiled["note"]})
            compatibility["details"]["checked"] = "statically (edgetpu_compiler not installed)"
    else:
        skipped.append({"layer": "edgetpu_compiler", "reason": "not run: the file fails the Edge TPU rules above"})
        compatibility["details"]["checked"] = "statically (the compiler was not run: the rules failed)"
    metrics = runtime.evaluate(content, x_test, y_test, where=str(path))
    return compatibility, metrics, skipped


BENCHMARKED = False   # timings need a Coral device; the run's benchmark devices do not have one


def _rule(name: str, ok: bool, detail: str) -> dict:
    return {"rule": name, "ok": bool(ok), "detail": detail}
