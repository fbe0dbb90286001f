"""Verifier of the ``gpu`` target (TFLite / LiteRT GPU delegate on Android and Linux).

Three sources, each reported under its own name in ``compatibility["details"]``:

- ``static``: edgecomp's port of the GPU delegate's own rules,
  ``tensorflow/lite/tools/versioning/gpu_compatibility.cc`` (``CheckGpuDelegateCompatibility``,
  the checks the delegate runs when it partitions a graph), plus the tensor limits of the
  delegate's model builder. Always run. Rules:

  - ``loads``: the file is a readable TFLite flatbuffer.
  - ``supported_ops``: every op is one the delegate implements, within that op's limits
    (fused activation, runtime/constant input counts, strides and dilation > 0, depthwise
    multiplier, constant int32 axes of MEAN/SUM/REDUCE_*, 3x2 or 4x2 PAD paddings,
    STRIDED_SLICE masks and rank, SOFTMAX ``beta == 1``, CAST type pairs, CUMSUM, ...).
    Weights that a float16 file stores as float16 behind a ``DEQUANTIZE`` count as constants,
    as the delegate folds them.
  - ``tensor_rank``: every tensor computed at run time has at most 4 dimensions (the
    delegate's BHWC layout; 5-D BHWDC exists for a few ops only and is not accepted here).
  - ``static_shapes``: no dimension but the batch is dynamic (``shape_signature`` −1); the
    interpreter fixes a dynamic batch before the delegate is applied.
  - ``data_types``: tensors computed at run time are float32/float16, or int8/uint8 with
    quantization parameters (int8 files: the delegate dequantizes them and computes in float);
    int32 and bool only at ops that take them (CAST, comparisons, SELECT, GATHER/ONE_HOT indices).
  - ``quantization``: the cpu verifier's check that the file is what the mode promised.

- ``analyzer``: what ``tf.lite.experimental.Analyzer.analyze(gpu_compatibility=True)``
  printed, parsed (``parse_analyzer``). In TensorFlow 2.21 its GPU check does nothing: it
  prints "Your model looks compatible with GPU delegate" for any model (seen here for a
  model with ARG_MAX and an INT64 tensor); the checks were removed from the model analyzer
  (tensorflow/tensorflow#77042, after tensorflow/tensorflow#74830). A warning it does print
  fails the ``analyzer`` rule; its "compatible" never overrules the static check.

- ``delegate``: where LiteRT's GPU accelerator loads and finds a GPU, the file is run on it
  (in a child process) and its outputs compared with the CPU interpreter's; otherwise the
  reason is recorded and the result says ``checked statically``.

Example:
    >>> compatibility = verify(content, "float16")  # doctest: +SKIP
    >>> compatibility["details"]["checked"]  # doctest: +SKIP
    'statically'
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edgecomp.errors import ModelError
from edgecomp.graph import Operator, Tensor, loads_rule, macs, read_model

GROUND_TRUTH = ("https://github.com/tensorflow/tensorflow/blob/master/"
                "tensorflow/lite/tools/versioning/gpu_compatibility.cc")
ANALYZER_BUG = "https://github.com/tensorflow/tensorflow/issues/77042"
MAX_RANK = 4
FLOAT_TYPES = ("FLOAT32", "FLOAT16")
EIGHT_BIT = ("INT8", "UINT8")
# fusedActivationFunction in TFLite's schema: NONE, RELU, RELU_N1_TO_1, RELU6, TANH are
# supported; SIGN_BIT (5) is not.
SUPPORTED_ACTIVATIONS = (0, 1, 2, 3, 4)
INT8_NOTE = ("int8: the GPU delegate dequantizes the int8 tensors and computes in float (fp16 or fp32); "
             "the file is 4x smaller than float32, not faster. float16 is the GPU's native format")
DELEGATE_TIMEOUT_S = 120.0
# TfLiteGpuDelegateOptionsV2Default() (tensorflow/lite/delegates/gpu/delegate_options.cc): the delegate
# takes the largest partition of supported ops only; the rest runs on the CPU.
MAX_DELEGATED_PARTITIONS = 1
# The static rules a partly supported graph turns into warnings (those ops run on the CPU) unless strict.
PER_OP_RULES = ("supported_ops", "tensor_rank", "static_shapes", "data_types")


# ---------------------------------------------------------------------------------------------
# The static check: a port of gpu_compatibility.cc. Each check returns why the op is refused,
# or None. ``constants`` holds the tensors the delegate sees as constants.
# ---------------------------------------------------------------------------------------------

class _Op:
    """One op with what the checks need: its tensors and which inputs are constants."""

    def __init__(self, operator: Operator, tensors: dict[int, Tensor], constants: set[int]):
        self.operator = operator
        self.name = operator.name
        self.options = operator.options
        self.inputs = [tensors[i] for i in operator.inputs]
        self.outputs = [tensors[i] for i in operator.outputs]
        self.const = [i in constants for i in operator.inputs]

    @property
    def runtime_inputs(self) -> int:
        return sum(1 for c in self.const if not c)

    def option(self, name: str, default=0):
        return getattr(self.options, name, default) if self.options is not None else default


def _counts(op: _Op, runtime: int, outputs: int, const: Optional[int] = None) -> Optional[str]:
    if const is not None and sum(op.const) != const:
        return f"expected {const} constant input(s), the node has {sum(op.const)}"
    if op.runtime_inputs != runtime:
        return f"expected {runtime} runtime input tensor(s), the node has {op.runtime_inputs}"
    if len(op.outputs) != outputs:
        return f"expected {outputs} output tensor(s), the node has {len(op.outputs)}"
    return None


def _activation(op: _Op) -> Optional[str]:
    activation = op.option("fusedActivationFunction")
    return None if activation in SUPPORTED_ACTIVATIONS else f"fused activation {activation} (SIGN_BIT) is unsupported"


def _first(*reasons: Optional[str]) -> Optional[str]:
    return next((reason for reason in reasons if reason), None)


def _strides_dilation(op: _Op, dilation: bool = True) -> Optional[str]:
    strides = (op.option("strideH", 1), op.option("strideW", 1))
    if min(strides) <= 0:
        return f"stride {strides[0]}x{strides[1]} must be > 0"
    dilations = (op.option("dilationHFactor", 1), op.option("dilationWFactor", 1))
    if dilation and min(dilations) <= 0:
        return f"dilation {dilations[0]}x{dilations[1]} must be > 0"
    return None


def _convolution(op: _Op) -> Optional[str]:
    if op.runtime_inputs > 2:
        return f"expected 1 or 2 runtime inputs, the node has {op.runtime_inputs}"
    if len(op.outputs) != 1:
        return f"expected 1 output, the node has {len(op.outputs)}"
    return _first(_strides_dilation(op), _activation(op))


def _depthwise(op: _Op) -> Optional[str]:
    reason = _convolution(op)
    if reason or len(op.inputs) < 2:
        return reason
    source, weights, output = op.inputs[0].shape, op.inputs[1].shape, op.outputs[0].shape
    if len(source) != 4 or len(weights) != 4 or len(output) != 4:
        return "input, filter and output must be 4-D"
    multiplier = op.option("depthMultiplier", 1)
    if output[3] != source[3] * multiplier and multiplier:
        return "output channels != input channels x depth_multiplier"
    if multiplier != 1 and source[3] != 1:
        return f"depth_multiplier {multiplier} needs 1 input channel, the input has {source[3]}"
    return None


def _pooling(op: _Op) -> Optional[str]:
    sizes = (op.option("filterHeight", 1), op.option("filterWidth", 1))
    return _first(_counts(op, 1, 1), None if min(sizes) > 0 else f"kernel {sizes[0]}x{sizes[1]} must be > 0",
                  _strides_dilation(op, dilation=False), _activation(op))


def _axes(op: _Op) -> Optional[str]:
    if len(op.inputs) < 2 or not op.const[1]:
        return f"{op.name} is supported only with constant axes"
    if op.inputs[1].dtype != "INT32":
        return f"{op.name} needs int32 axes, the node has {op.inputs[1].dtype.lower()}"
    return None


def _mean(op: _Op) -> Optional[str]:
    return _first(_counts(op, 1, 1, const=1), _axes(op))


def _reduce(op: _Op) -> Optional[str]:
    return _first(_counts(op, 1, 1), _axes(op))


def _two_operands(op: _Op) -> Optional[str]:
    if (op.runtime_inputs, sum(op.const)) not in ((2, 0), (1, 1)) or len(op.outputs) != 1:
        return "the op handles 1 or 2 operands (2 runtime inputs, or 1 runtime and 1 constant)"
    return _activation(op)


def _one_operand(op: _Op) -> Optional[str]:
    return _counts(op, 1, 1, const=0)


def _broadcastable(first: tuple, second: tuple) -> bool:
    for a, b in zip(reversed(first), reversed(second)):
        if a != b and a != 1 and b != 1:
            return False
    return True


def _add(op: _Op) -> Optional[str]:
    if len(op.inputs) != 2:
        return "ADD requires two input tensors"
    first, second = op.inputs[0].shape, op.inputs[1].shape
    if not _broadcastable(first, second):
        return f"does not broadcast {list(first)} with {list(second)}"
    return None


def _mul(op: _Op) -> Optional[str]:
    if len(op.inputs) != 2:
        return "MUL requires two input tensors"
    first, second = op.inputs[0].shape, op.inputs[1].shape
    if len(first) == len(second):
        if any(a < b for a, b in zip(first, second)) and any(b < a for a, b in zip(first, second)):
            return (f"MUL needs one input not smaller than the other in every dimension ({list(first)} x "
                    f"{list(second)}: an outer product; use a convolution)")
    elif not _broadcastable(first, second):
        return f"does not broadcast {list(first)} with {list(second)}"
    return _activation(op)


def _cast(op: _Op) -> Optional[str]:
    reason = _counts(op, 1, 1)
    if reason:
        return reason
    source, target = op.inputs[0].dtype, op.outputs[0].dtype
    if (source == "BOOL" and target in FLOAT_TYPES) or (source in FLOAT_TYPES and target == "BOOL"):
        return None
    if source in ("FLOAT32", "INT32") and target in ("FLOAT32", "INT32"):
        return None
    return f"not a supported CAST case: {source.lower()} to {target.lower()}"


def _cumsum(op: _Op) -> Optional[str]:
    if len(op.inputs) != 2:
        return "CUMSUM expects 2 inputs and 1 output"
    if (op.inputs[0].dtype not in FLOAT_TYPES or op.outputs[0].dtype != op.inputs[0].dtype
            or op.inputs[1].dtype != "INT32" or not op.const[1]):
        return "CUMSUM input/output must be float and its axis a constant int32"
    return None


def _fully_connected(op: _Op) -> Optional[str]:
    if op.option("weightsFormat"):
        return f"weights format {op.option('weightsFormat')} is unsupported (only the default)"
    if op.runtime_inputs > 2:
        return "FULLY_CONNECTED takes at most 2 runtime inputs"
    if op.const and op.const[0]:
        return "FULLY_CONNECTED does not take a constant input"
    if op.option("keepNumDims") and len(op.inputs[0].shape) != len(op.outputs[0].shape):
        return "keep_num_dims with input and output of different rank is unsupported"
    return None


def _gather(op: _Op) -> Optional[str]:
    if (op.runtime_inputs, sum(op.const)) not in ((2, 0), (1, 1)) or len(op.inputs) < 2:
        return "the op handles 1 or 2 operands"
    if op.inputs[0].dtype == "INT32":
        return "GATHER does not take int32 input"
    if len(op.inputs[1].shape) != 1 or op.inputs[1].dtype != "INT32":
        return "GATHER takes only 1-D int32 indices"
    return None


def _pad(op: _Op) -> Optional[str]:
    if op.name == "MIRROR_PAD" and op.option("mode") != 0:
        return "MIRROR_PAD supports only REFLECT mode"
    reason = _counts(op, 1, 1)
    if reason or len(op.inputs) < 2:
        return reason or "PAD needs its paddings tensor"
    shape = op.inputs[1].shape
    if len(shape) != 2 or shape[0] not in (3, 4) or shape[1] != 2:
        return f"paddings of shape {list(shape)}; the delegate takes 4x2 or 3x2 (3-D or 4-D input)"
    return None


def _slice(op: _Op) -> Optional[str]:
    if len(op.inputs) < 3:
        return f"SLICE requires 3 inputs, the node has {len(op.inputs)}"
    rank = len(op.inputs[0].shape)
    return None if rank in (3, 4) else f"SLICE supports 3-D or 4-D tensors only, the input is {rank}-D"


def _strided_slice(op: _Op) -> Optional[str]:
    for mask, label in (("ellipsisMask", "ellipsis_mask"), ("newAxisMask", "new_axis_mask"),
                        ("shrinkAxisMask", "shrink_axis_mask")):
        if op.option(mask):
            return f"STRIDED_SLICE does not support {label} (the slice drops or adds an axis)"
    if len(op.inputs) < 4:
        return "STRIDED_SLICE requires 4 inputs"
    rank = len(op.inputs[0].shape)
    return None if rank in (3, 4) else f"STRIDED_SLICE supports 3-D or 4-D tensors only, the input is {rank}-D"


def _softmax(op: _Op) -> Optional[str]:
    beta = op.option("beta", 1.0)
    return None if beta == 1.0 else f"SOFTMAX with beta {beta} is unsupported (only beta = 1)"


def _block_size(op: _Op) -> Optional[str]:
    size = op.option("blockSize", 2)
    return _first(_counts(op, 1, 1), None if size > 1 else f"{op.name} block_size {size} must be > 1")


def _resize_bilinear(op: _Op) -> Optional[str]:
    if op.option("alignCorners") and op.option("halfPixelCenters"):
        return "align_corners and half_pixel_centers together are unsupported"
    return _counts(op, 1, 1)


def _one_runtime(op: _Op) -> Optional[str]:
    return _counts(op, 1, 1)


def _dequantize(op: _Op) -> Optional[str]:
    return "int16 dequantization is unsupported" if op.inputs and op.inputs[0].dtype == "INT16" else None


def _batch_matmul(op: _Op) -> Optional[str]:
    return None if len(op.inputs) == 2 and len(op.outputs) == 1 else "BATCH_MATMUL expects 2 inputs and 1 output"


def _add_n(op: _Op) -> Optional[str]:
    return None if len(op.inputs) == 2 else "ADD_N supports only 2 inputs"


def _lstm(op: _Op) -> Optional[str]:
    activation = op.option("fusedActivationFunction")
    if activation != 4:
        return "LSTM supports only a tanh activation (sigmoid has no code in the file)"
    if op.option("kernelType") == 1:    # BASIC
        reason = _counts(op, 3, 4, const=2)
        if reason is None and (op.option("cellClip", 0.0) or op.option("projClip", 0.0)):
            reason = "cell_clip and proj_clip are unsupported in the basic LSTM kernel"
        return reason
    if len(op.inputs) not in (20, 24):
        return f"LSTM expects 20 or 24 input tensors, the node has {len(op.inputs)}"
    return None if len(op.outputs) == 1 else f"LSTM expects 1 output tensor, the node has {len(op.outputs)}"


def _one_hot(op: _Op) -> Optional[str]:
    """int32 indices, one hot along the last axis, constant scalar float on/off values."""
    if len(op.inputs) != 4:
        return "ONE_HOT expects 4 inputs and 1 output"
    indices, on, off = op.inputs[0], op.inputs[2], op.inputs[3]
    rule = "ONE_HOT needs int32 indices, the last axis, and constant scalar float32 on/off values"
    if indices.dtype != "INT32" or op.option("axis", -1) not in (-1, indices.shape[-1] if indices.shape else -1):
        return rule
    if any(size != 1 for position, size in enumerate(indices.shape[:-1]) if not (len(indices.shape) > 3 and position == 0)):
        return "ONE_HOT indices may have more than one element only in the batch and the last dimension"
    if on.dtype != "FLOAT32" or off.dtype != "FLOAT32" or not (op.const[2] and op.const[3]):
        return rule
    if any(len(t.shape) > 1 or (t.shape and t.shape[0] > 1) for t in (on, off)):
        return rule
    return None


def _densify(op: _Op) -> Optional[str]:
    return _counts(op, 0, 1)


def _select(op: _Op) -> Optional[str]:
    if len(op.inputs) != 3 or len(op.outputs) != 1:
        return "SELECT expects 3 inputs and 1 output"
    if op.inputs[0].dtype not in ("BOOL", *FLOAT_TYPES) or any(t.dtype not in FLOAT_TYPES for t in op.inputs[1:]):
        return "SELECT needs a bool or float condition and float values"
    return None


_UNARY = ("ABS", "CEIL", "COS", "ELU", "EXP", "FLOOR", "GELU", "LOG", "LOGISTIC", "NEG", "RSQRT", "SIGN", "SIN",
          "SQRT", "SQUARE", "TANH")
_BINARY = ("ATAN2", "DIV", "EQUAL", "FLOOR_DIV", "FLOOR_MOD", "GREATER", "GREATER_EQUAL", "LOGICAL_AND", "LESS",
           "LESS_EQUAL", "MAXIMUM", "MINIMUM", "NOT_EQUAL", "POW", "SQUARED_DIFFERENCE", "SUB")
_CUSTOM = ("Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "Resampler")

SUPPORTED_OPS: dict[str, Optional[Callable[[_Op], Optional[str]]]] = {
    "ADD": _add, "ADD_N": _add_n, "AVERAGE_POOL_2D": _pooling, "MAX_POOL_2D": _pooling,
    "BATCH_MATMUL": _batch_matmul, "CAST": _cast, "CONCATENATION": None, "CONV_2D": _convolution,
    "CUMSUM": _cumsum, "DENSIFY": _densify, "DEPTHWISE_CONV_2D": _depthwise, "DEPTH_TO_SPACE": _block_size,
    "SPACE_TO_DEPTH": _block_size, "DEQUANTIZE": _dequantize, "EMBEDDING_LOOKUP": None,
    "DYNAMIC_UPDATE_SLICE": None, "FULLY_CONNECTED": _fully_connected, "GATHER": _gather,
    "HARD_SWISH": _one_runtime, "LSTM": _lstm, "MEAN": _mean, "MUL": _mul, "PACK": None, "ONE_HOT": _one_hot,
    "QUANTIZE": _one_runtime, "RELU_N1_TO_1": None, "PRELU": None, "RESHAPE": _one_runtime,
    "SELECT": _select, "SELECT_V2": _select, "SLICE": _slice, "SOFTMAX": _softmax, "SPLIT": None,
    "SPLIT_V": None, "STRIDED_SLICE": _strided_slice, "TILE": _one_runtime, "TRANSPOSE": _one_runtime,
    "TRANSPOSE_CONV": _convolution, "RESIZE_BILINEAR": _resize_bilinear, "RESIZE_NEAREST_NEIGHBOR": _one_runtime,
    "RELU": None, "RELU6": None, "LEAKY_RELU": None,
    "REDUCE_MAX": _reduce, "REDUCE_MIN": _reduce, "REDUCE_PROD": _reduce, "SUM": _reduce,
    "PAD": _pad, "PADV2": _pad, "MIRROR_PAD": _pad, "STABLEHLO_CLAMP": None,
    **{name: _one_operand for name in _UNARY}, **{name: _two_operands for name in _BINARY},
}
# Where a common Keras-made op is missing from the delegate, what to do instead.
UNSUPPORTED_HINTS = {
    "ARG_MAX": "take the argmax on the CPU after the model (drop it from the graph)",
    "ARG_MIN": "take the argmin on the CPU after the model",
    "EXPAND_DIMS": "use a Reshape with the full target shape",
    "SQUEEZE": "use a Reshape with the full target shape",
    "SHAPE": "fix the shapes when building the model (no tf.shape inside it)",
    "LOG_SOFTMAX": "use Softmax (and a log on the CPU if needed)",
    "L2_NORMALIZATION": "compute x / sqrt(sum(x*x)) with MUL, SUM and RSQRT",
    "UNPACK": "use SPLIT or STRIDED_SLICE",
    "WHILE": "unroll the loop (RNN layers: unroll=True)",
    "GATHER_ND": "use GATHER with 1-D indices",
    "TOPK_V2": "take the top-k on the CPU after the model",
}
# Ops that compute on or produce int32/bool tensors in the delegate.
_INTEGER_OPS = ("CAST", "EQUAL", "NOT_EQUAL", "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "LOGICAL_AND",
                "SELECT", "SELECT_V2", "GATHER", "ONE_HOT", "EMBEDDING_LOOKUP", "DYNAMIC_UPDATE_SLICE")


def constant_tensors(operators: list[Operator], tensors: dict[int, Tensor]) -> set[int]:
    """Tensors the delegate sees as constants: stored in the file, or a DEQUANTIZE of one (float16 weights)."""
    constants = {index for index, tensor in tensors.items() if tensor.constant}
    for operator in operators:
        if operator.name == "DEQUANTIZE" and operator.inputs and operator.inputs[0] in constants:
            constants.update(operator.outputs)
    return constants


def op_issues(operator: Operator, tensors: dict[int, Tensor], constants: set[int]) -> list[tuple[str, str]]:
    """Why the GPU delegate would not take ``operator``: ``[(rule, reason)]``, empty when it does."""
    op = _Op(operator, tensors, constants)
    issues = []
    if operator.name.startswith("CUSTOM("):
        custom = operator.name[len("CUSTOM("):-1]
        if custom not in _CUSTOM:
            issues.append(("supported_ops", f"custom op {custom} is not supported by the GPU delegate"))
    elif operator.name not in SUPPORTED_OPS:
        hint = UNSUPPORTED_HINTS.get(operator.name)
        issues.append(("supported_ops", f"{operator.name} is not supported by the GPU delegate"
                                        + (f"; {hint}" if hint else "")))
    else:
        check = SUPPORTED_OPS[operator.name]
        reason = check(op) if check else None
        if reason:
            issues.append(("supported_ops", f"{operator.name}: {reason}"))
    for index in (*operator.inputs, *operator.outputs):
        if index in constants:
            continue
        tensor = tensors[index]
        if len(tensor.shape) > MAX_RANK:
            issues.append(("tensor_rank", f"tensor '{tensor.name}' is {len(tensor.shape)}-D {list(tensor.shape)}; "
                                          f"the delegate takes at most {MAX_RANK}-D (BHWC)"))
        if any(d < 0 for d in tensor.signature[1:]):
            issues.append(("static_shapes", f"tensor '{tensor.name}' has a dynamic shape "
                                            f"{list(tensor.signature)} beyond the batch dimension"))
        reason = _type_issue(tensor, operator.name)
        if reason:
            issues.append(("data_types", reason))
    unique = []
    for issue in issues:
        if issue not in unique:
            unique.append(issue)
    return unique


def _type_issue(tensor: Tensor, op_name: str) -> Optional[str]:
    if tensor.dtype in FLOAT_TYPES:
        return None
    if tensor.dtype in EIGHT_BIT:
        return None if tensor.quantized else (f"tensor '{tensor.name}' is {tensor.dtype.lower()} without "
                                              "quantization parameters")
    if tensor.dtype in ("INT32", "BOOL") and op_name in _INTEGER_OPS:
        return None
    return (f"tensor '{tensor.name}' is {tensor.dtype.lower()} (at {op_name}); the delegate computes on float32/"
            "float16 (and dequantized int8)")


def node_subsets(operators: list[Operator], on_gpu: list[bool]) -> list[tuple[bool, list[int]]]:
    """The graph cut into subsets of ops that all run on the GPU or all on the CPU, in execution order.

    The greedy partitioner TFLite hands a delegate (``PartitionGraphIntoIndependentNodeSubsets``
    in tensorflow/lite/graph_info.cc): a subset takes every op of its kind whose inputs are
    ready, in as many passes as it can grow; then the other kind starts the next subset.

    Returns:
        ``[(on_gpu, [op positions]), ...]``.
    """
    produced = {tensor for op in operators for tensor in op.outputs}
    ready: set[int] = set()
    done = [False] * len(operators)
    subsets: list[tuple[bool, list[int]]] = []
    while not all(done):
        kind, members, grew = None, [], True
        while grew:
            grew = False
            for position, op in enumerate(operators):
                if done[position] or any(t in produced and t not in ready for t in op.inputs if t >= 0):
                    continue
                kind = on_gpu[position] if kind is None else kind
                if on_gpu[position] == kind:
                    done[position] = grew = True
                    members.append(position)
                    ready.update(op.outputs)
        if not members:    # a cycle or a dangling input: nothing more is schedulable
            break
        subsets.append((bool(kind), members))
    return subsets


def delegation(operators: list[Operator], tensors: dict[int, Tensor], on_gpu: list[bool]) -> dict:
    """What the delegate would take with its default options: ops and MACs on the GPU, partitions.

    Returns:
        ``{"ops_total", "ops_supported", "partitions", "ops_on_gpu", "macs_total", "macs_on_gpu",
        "mac_share_on_gpu", "cpu_subsets"}``; ``ops_on_gpu`` counts the largest partition (the
        delegate takes ``MAX_DELEGATED_PARTITIONS`` by default).
    """
    subsets = node_subsets(operators, on_gpu)
    partitions = sorted((members for kind, members in subsets if kind), key=len, reverse=True)
    taken = [position for members in partitions[:MAX_DELEGATED_PARTITIONS] for position in members]
    counts = [macs(op, tensors) for op in operators]
    total = sum(counts)
    on_gpu_macs = sum(counts[position] for position in taken)
    return {"ops_total": len(operators), "ops_supported": sum(on_gpu), "partitions": len(partitions),
            "ops_on_gpu": len(taken), "macs_total": total, "macs_on_gpu": on_gpu_macs,
            "mac_share_on_gpu": on_gpu_macs / total if total else (1.0 if taken else 0.0),
            "cpu_subsets": sum(1 for kind, _ in subsets if not kind)}


def _delegation_rule(found: dict, strict: bool) -> dict:
    detail = (f"{found['ops_on_gpu']} of {found['ops_total']} ops, {found['mac_share_on_gpu']:.1%} of "
              f"{found['macs_total']:,} MACs on the GPU")
    if found["ops_on_gpu"] == found["ops_total"]:
        return _rule("delegation", True, detail + " (the whole graph)")
    detail += (f"; {found['ops_supported']} ops supported in {found['partitions']} partition(s), the delegate "
               f"takes the largest {MAX_DELEGATED_PARTITIONS} (its default max_delegated_partitions), the rest "
               f"runs on the CPU ({found['cpu_subsets']} CPU part(s), each a GPU↔CPU copy)")
    if strict or not found["ops_on_gpu"]:
        why = "strict: true asks for the whole graph" if strict else "nothing would run on the GPU"
        return _rule("delegation", False, f"{detail}; {why}")
    return {**_rule("delegation", True, detail + "; set strict: true to fail on this"), "warning": True}


def check_static(content: bytes) -> dict:
    """The static check alone: ``{"rules": [...], "ops": [...], "unsupported": [...]}``."""
    try:
        operators, tensors, _, _ = read_model(content)
    except ModelError as error:
        return {"rules": [_rule("loads", False, str(error))], "ops": [], "unsupported": []}
    constants = constant_tensors(operators, tensors)
    rules = [loads_rule(content, f"{len(operators)} ops, {len(tensors)} tensors")]
    per_op = [op_issues(op, tensors, constants) for op in operators]
    for name, passed in (("supported_ops", "every op is one the GPU delegate implements, within its limits"),
                         ("tensor_rank", f"every tensor computed at run time is at most {MAX_RANK}-D"),
                         ("static_shapes", "no dynamic dimension beyond the batch"),
                         ("data_types", "tensors computed at run time are float32/float16 or quantized 8-bit")):
        found = [(op, reason) for op, issues in zip(operators, per_op) for rule, reason in issues if rule == name]
        ops = sorted({op.name for op, _ in found})
        detail = passed if not found else (f"{len(found)} finding(s) at {', '.join(ops)}; first: op #"
                                           f"{found[0][0].index} {found[0][0].name}: {found[0][1]}")
        rules.append(_rule(name, not found, detail))
    unsupported = [{"index": op.index, "op": op.name, "rule": rule, "reason": reason, "source": "static"}
                   for op, issues in zip(operators, per_op) for rule, reason in issues]
    ops = [{"index": op.index, "op": op.name, "on_gpu": not issues, "issues": [reason for _, reason in issues]}
           for op, issues in zip(operators, per_op)]
    found = delegation(operators, tensors, [not issues for issues in per_op])
    return {"rules": rules, "ops": ops, "unsupported": unsupported, "delegation": found}


# ---------------------------------------------------------------------------------------------
# TensorFlow's model analyzer: run it, capture what it prints, parse it.
# ---------------------------------------------------------------------------------------------

_OP_LINE = re.compile(r"^\s*Op#(\d+)\s+([A-Za-z0-9_]+)\(")
_WARNING = re.compile(r"GPU COMPATIBILITY (?:WARNING|ERROR):\s*(.*?)\s*$")
_SUMMARY = re.compile(r"Subgraph#(\d+) has GPU delegate compatibility issues at nodes ([\d,\s]+?)"
                      r"(?: with TFLite runtime version (\S+?))?\.?\s*$")
_COMPATIBLE = re.compile(r"Your model looks compatible with GPU delegate(?: (?:on|with) TFLite runtime "
                         r"version (\S+?))?\.?\s*$")


def parse_analyzer(text: str) -> dict:
    """What the model analyzer printed with ``gpu_compatibility=True``.

    Returns:
        ``{"says_compatible": True/False/None (no verdict found), "runtime_version",
        "issues": [{"index", "op", "reason"}], "nodes": [indices it names], "subgraphs": int}``;
        a warning printed before any op line has ``index`` and ``op`` None.
    """
    result = {"says_compatible": None, "runtime_version": None, "issues": [], "nodes": [], "subgraphs": 0}
    index = op = None
    for line in text.splitlines():
        if line.startswith("Subgraph#") and "(" in line and "has GPU" not in line:
            result["subgraphs"] += 1
        match = _OP_LINE.match(line)
        if match:
            index, op = int(match.group(1)), match.group(2)
            continue
        match = _WARNING.search(line)
        if match:
            summary = _SUMMARY.search(match.group(1))
            if summary:
                result["nodes"].extend(int(n) for n in re.findall(r"\d+", summary.group(2)))
                result["runtime_version"] = summary.group(3) or result["runtime_version"]
                result["says_compatible"] = False
            else:
                result["issues"].append({"index": index, "op": op, "reason": match.group(1)})
                result["says_compatible"] = False
            continue
        match = _COMPATIBLE.search(line)
        if match and result["says_compatible"] is None:
            result["says_compatible"] = True
            result["runtime_version"] = match.group(1)
    return result


def analyzer_text(content: bytes) -> str:
    """Runs TensorFlow's model analyzer on ``content`` and returns everything it printed.

    The report is printed, not returned (DESIGN.md §9); output is captured both from
    Python's ``sys.stdout`` and at file descriptor 1, where native code writes.
    """
    from edgecomp._keras import tf

    captured = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            os.dup2(sink.fileno(), 1)
            with contextlib.redirect_stdout(captured):
                tf.lite.experimental.Analyzer.analyze(model_content=content, gpu_compatibility=True)
        finally:
            _flush_native_stdout()
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        native = sink.read().decode("utf-8", errors="replace")
    return captured.getvalue() + native


def _flush_native_stdout() -> None:
    with contextlib.suppress(Exception):  # no C library to flush is not an error
        ctypes.CDLL(None).fflush(None)


def run_analyzer(content: bytes) -> dict:
    """``parse_analyzer(analyzer_text(content))`` plus the text; a crash is recorded in ``error``."""
    try:
        text = analyzer_text(content)
    except Exception as error:  # noqa: BLE001 - a broken analyzer must not stop the target
        return {"says_compatible": None, "issues": [], "nodes": [], "error": f"{type(error).__name__}: {error}"}
    return {**parse_analyzer(text), "text": text}


# ---------------------------------------------------------------------------------------------
# The delegate itself: LiteRT's GPU accelerator, tried in a child process.
# ---------------------------------------------------------------------------------------------

def run_on_gpu(content: bytes, sample: np.ndarray, timeout_s: float = DELEGATE_TIMEOUT_S) -> dict:
    """Runs ``content`` on LiteRT's GPU accelerator where one loads and finds a GPU.

    A child process keeps the accelerator's native logs and any crash out of this one.

    Returns:
        ``{"ran": True, "fully_accelerated", "max_abs_diff" (vs the CPU interpreter)}``, or
        ``{"ran": False, "reason"}`` when there is no GPU accelerator or no GPU.
    """
    from edgecomp import runtime

    with tempfile.TemporaryDirectory(prefix="edgecomp-gpu-") as folder:
        model, inputs, outputs = (Path(folder) / name for name in ("model.tflite", "x.npy", "y.npy"))
        model.write_bytes(content)
        np.save(inputs, sample.astype(np.float32))
        expected = runtime.predict(content, sample, delegates=False).reshape(len(sample), -1)
        command = [sys.executable, "-m", "edgecomp.targets.gpu_worker", str(model), str(inputs), str(outputs),
                   str(expected.shape[1])]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"ran": False, "reason": f"the GPU accelerator did not finish in {timeout_s:.0f} s"}
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"ran": False}
        if not result.get("ran"):
            reasons = [result.get("reason"), _why(done.stderr)]
            result["reason"] = "; ".join(r for r in reasons if r) or f"exit status {done.returncode}"
            return result
        result["max_abs_diff"] = float(np.max(np.abs(np.load(outputs) - expected)))
        return result


def _why(stderr: str) -> str:
    """The most telling lines of the accelerator's log (no GPU, no Vulkan, ...)."""
    keys = ("No adapters found", "Couldn't load Vulkan", "Failed to initialize", "not found", "Error", "ERROR")
    lines = [line.strip() for line in stderr.splitlines() if any(key in line for key in keys)]
    picked = [line for line in lines if "No adapters" in line or "Vulkan" in line] or lines[-2:]
    return "; ".join(dict.fromkeys(picked))[:400]


# ---------------------------------------------------------------------------------------------
# The whole verdict.
# ---------------------------------------------------------------------------------------------

def verify(content: bytes, quantization: str = "float16", io: str = "float32", analyzer: bool = True,
           sample: Optional[np.ndarray] = None, strict: bool = False) -> dict:
    """Checks ``content`` against the GPU delegate's rules; runs it on the GPU where one is present.

    Args:
        content: the ``.tflite`` bytes.
        quantization: float16 | float32 | int8, the mode it was converted with.
        io: the input/output type asked for.
        analyzer: also run TensorFlow's model analyzer and report what it said.
        sample: inputs to run on the GPU accelerator; None skips the attempt.
        strict: fail unless the delegate would take the whole graph. Otherwise ops the
            delegate refuses are warnings (``"warning": True`` on their rules) as long as
            some of the graph runs on the GPU: the delegate partitions the graph and the
            CPU runs the rest. The ``delegation`` rule gives the figures.

    Returns:
        ``{"ok": bool, "details": {"rules", "checked", "ops", "unsupported", "analyzer", "delegate",
        "notes", "ground_truth"}}``; ``unsupported`` lists ``{"index", "op", "rule", "reason",
        "source": "static" | "analyzer"}``.
    """
    from edgecomp.targets import cpu

    static = check_static(content)
    rules = static["rules"]
    details = {"rules": rules, "checked": "statically", "ops": static["ops"],
               "unsupported": static["unsupported"], "notes": [], "ground_truth": GROUND_TRUTH}
    if not rules[0]["ok"]:
        return {"ok": False, "details": details}
    details["delegation"] = found = static["delegation"]
    rules.append(_delegation_rule(found, strict))
    if not strict and found["ops_on_gpu"]:
        for rule in rules:
            if rule["rule"] in PER_OP_RULES and not rule["ok"]:
                rule.update(ok=True, warning=True, detail=f"{rule['detail']} (these ops run on the CPU)")
    verified = cpu.verify(content, quantization, io)["details"]["rules"]
    rules.extend(rule for rule in verified if rule["rule"] in ("io_type", "quantization"))
    if quantization == "int8":
        details["notes"].append(INT8_NOTE)
    details["op_counts"] = dict(sorted(collections.Counter(op["op"] for op in static["ops"]).items()))
    if analyzer:
        details["analyzer"] = found = run_analyzer(content)
        rules.append(_analyzer_rule(found, static))
        details["unsupported"] += [{**issue, "rule": "analyzer", "source": "analyzer"} for issue in found["issues"]]
    if sample is not None and all(rule["ok"] for rule in rules):
        details["delegate"] = ran = run_on_gpu(content, sample)
        if ran.get("ran"):
            details["checked"] = "on the GPU"
            rules.append(_gpu_run_rule(ran, strict))
        else:
            details["notes"].append(f"checked statically: the GPU delegate was not run ({ran['reason']})")
    elif sample is not None:
        details["delegate"] = {"ran": False, "reason": "not run: the file fails the GPU rules above"}
    return {"ok": all(rule["ok"] for rule in rules), "details": details}


def _gpu_run_rule(ran: dict, strict: bool) -> dict:
    """The delegate's own verdict: outputs close to the CPU's; the whole graph delegated (else a warning)."""
    close = ran.get("max_abs_diff", 0.0) < 1e-2
    whole = ran.get("fully_accelerated") is not False
    rule = _rule("runs_on_gpu", close and (whole or not strict),
                 f"ran on LiteRT's GPU accelerator (fully accelerated: {ran.get('fully_accelerated')}); "
                 f"max |GPU − CPU| {ran.get('max_abs_diff', float('nan')):.3g}")
    return {**rule, "warning": True} if rule["ok"] and not whole else rule


def _analyzer_rule(found: dict, static: dict) -> dict:
    if found.get("error"):
        return _rule("analyzer", True, f"the model analyzer failed ({found['error']}); the static check decides")
    if found["says_compatible"] is False:
        named = sorted({issue["op"] or "?" for issue in found["issues"]}) or found["nodes"]
        return _rule("analyzer", False, f"the model analyzer reports {len(found['issues']) or len(found['nodes'])} "
                                        f"GPU incompatibilit(y/ies) at {named}")
    disagree = [u for u in static["unsupported"] if u["rule"] == "supported_ops"]
    said = "says 'looks compatible'" if found["says_compatible"] else "gave no GPU verdict"
    detail = (f"the model analyzer (TFLite {found.get('runtime_version') or '?'}) {said}; it runs no GPU checks in "
              f"this TensorFlow ({ANALYZER_BUG}), so the static check decides")
    if disagree:
        detail += f"; the static check found {len(disagree)} unsupported op(s) it missed"
    return _rule("analyzer", True, detail)


def judge(content: bytes, params, path: Path, x_test: np.ndarray, y_test: np.ndarray,
          expect: dict | None = None) -> tuple[dict, dict, list]:
    """The whole target: verify, try the GPU, measure accuracy with the CPU interpreter (``expect`` unused).

    Returns:
        ``(compatibility, metrics, skipped)``; ``metrics["runtime"]`` says where accuracy was measured.
    """
    from edgecomp import runtime

    compatibility = verify(content, params.quantization, params.io, sample=x_test[:8], strict=params.strict)
    metrics = runtime.evaluate(content, x_test, y_test, where=str(path))
    metrics["runtime"] = f"{runtime.runtime_name()} on the CPU, not the GPU delegate"
    skipped = [{"layer": "benchmark", "reason": "gpu: timings need a device with the GPU delegate; host CPU "
                                                "timings of this file would not predict them"}]
    return compatibility, metrics, skipped


BENCHMARKED = False   # host CPU timings of a GPU file would not predict the GPU


def _rule(name: str, ok: bool, detail: str) -> dict:
    return {"rule": name, "ok": bool(ok), "detail": detail}
