"""The GPU delegate's op rules as data: edgecomp's port of ``gpu_compatibility.cc``, op by op.

``SUPPORTED_OPS`` maps each op the delegate implements to the check of that op's
limits (None where it has none), ported from ``CheckGpuDelegateCompatibility`` in
``tensorflow/lite/tools/versioning/gpu_compatibility.cc``; each check returns why the
op is refused, or None. ``UNSUPPORTED_HINTS`` says what to use instead of a common op
the delegate lacks. ``op_issues`` applies these and the delegate's tensor limits
(rank, static shapes, data types) to one op; ``constants`` there holds the tensors
the delegate sees as constants.
"""

from __future__ import annotations

from typing import Callable, Optional

from edgecomp.graph import Operator, Tensor

MAX_RANK = 4
FLOAT_TYPES = ("FLOAT32", "FLOAT16")
EIGHT_BIT = ("INT8", "UINT8")
# fusedActivationFunction in TFLite's schema: NONE, RELU, RELU_N1_TO_1, RELU6, TANH are
# supported; SIGN_BIT (5) is not.
SUPPORTED_ACTIVATIONS = (0, 1, 2, 3, 4)


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

