"""The graph of a ``.tflite`` file as the target checkers read it: tensors, operators, MACs.

Read with LiteRT's own flatbuffer schema (``ai_edge_litert.schema_py_generated``), so
reading a graph never imports TensorFlow. The gpu and edgetpu checkers and the study
read files through here (the micro target reads with TFLM's own schema).

Example:
    >>> operators, tensors, inputs, outputs = read_model(content)  # doctest: +SKIP
    >>> [op.name for op in operators]                              # doctest: +SKIP
    ['CONV_2D', 'MEAN', 'FULLY_CONNECTED']
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from edgecomp import flatbuffer
from edgecomp.errors import ModelError

# Inputs of weighted ops that hold parameters: (weights, bias).
PARAMETER_INPUTS = {"CONV_2D": (1, 2), "DEPTHWISE_CONV_2D": (1, 2), "FULLY_CONNECTED": (1, 2),
                    "TRANSPOSE_CONV": (1, 3)}


@dataclasses.dataclass(frozen=True)
class Tensor:
    """What the checkers need of one tensor of the main subgraph."""

    index: int
    name: str
    shape: tuple[int, ...]
    signature: tuple[int, ...]
    dtype: str
    quantized: bool
    value: Optional[np.ndarray]
    zero_point: int = 0

    @property
    def constant(self) -> bool:
        """Whether the tensor's data is stored in the file."""
        return self.value is not None


@dataclasses.dataclass(frozen=True)
class Operator:
    """One operator of the main subgraph, in execution order."""

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: object


def read_model(content: bytes) -> tuple[list[Operator], dict[int, Tensor], list[int], list[int]]:
    """Operators, tensors, input and output indices of the main subgraph.

    Raises:
        ModelError: the bytes are not a TFLite flatbuffer.
    """
    flatbuffer.check(content)
    from ai_edge_litert import schema_py_generated as schema

    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(content), 0))
    except Exception as error:  # noqa: BLE001 - a flatbuffer that will not unpack
        raise ModelError(f"model is not a readable TFLite flatbuffer: {error}") from None
    op_names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    type_names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    subgraph = model.subgraphs[0]
    tensors = {}
    for index, tensor in enumerate(subgraph.tensors or []):
        shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
        signature = tuple(int(d) for d in tensor.shapeSignature) if tensor.shapeSignature is not None else shape
        dtype = type_names.get(tensor.type, str(tensor.type))
        buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
        value = None
        if buffer is not None and buffer.data is not None and len(buffer.data):
            value = _array(bytes(bytearray(buffer.data)), dtype, shape)
        quantization = tensor.quantization
        quantized = bool(quantization is not None and quantization.scale is not None and len(quantization.scale))
        zero_points = quantization.zeroPoint if quantization is not None else None
        zero_point = int(zero_points[0]) if zero_points is not None and len(zero_points) else 0
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
        tensors[index] = Tensor(index, name, shape, signature, dtype, quantized, value, zero_point)
    operators = []
    for index, operator in enumerate(subgraph.operators or []):
        code = model.operatorCodes[operator.opcodeIndex]
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            custom = code.customCode
            name = f"CUSTOM({custom.decode() if isinstance(custom, bytes) else custom})"
        operators.append(Operator(index, name, tuple(int(i) for i in operator.inputs if i >= 0),
                                  tuple(int(i) for i in operator.outputs), operator.builtinOptions))
    return operators, tensors, [int(i) for i in subgraph.inputs], [int(i) for i in subgraph.outputs]


def _array(data: bytes, dtype: str, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    numpy_types = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "UINT8": np.uint8,
                   "INT64": np.int64, "INT16": np.int16, "INT8": np.int8, "BOOL": np.bool_}
    if dtype not in numpy_types:
        return np.frombuffer(data, np.uint8)
    values = np.frombuffer(data, numpy_types[dtype])
    return values.reshape(shape) if shape and values.size == int(np.prod(shape)) else values


def macs(operator: Operator, tensors: dict[int, Tensor]) -> int:
    """Multiply-accumulates of one op from its shapes (weighted ops; every other op counts 0)."""
    if operator.name not in PARAMETER_INPUTS or len(operator.inputs) < 2 or not operator.outputs:
        return 0
    output = tensors[operator.outputs[0]].shape
    weights = tensors[operator.inputs[1]].shape
    if operator.name == "CONV_2D" and len(weights) == 4:  # [out, kh, kw, in]
        return int(np.prod(output)) * weights[1] * weights[2] * weights[3]
    if operator.name == "DEPTHWISE_CONV_2D" and len(weights) == 4:  # [1, kh, kw, out]
        return int(np.prod(output)) * weights[1] * weights[2]
    if operator.name == "FULLY_CONNECTED" and len(weights) == 2:  # [units, in]
        return int(np.prod(output)) * weights[1]
    if operator.name == "TRANSPOSE_CONV" and len(weights) == 4 and len(operator.inputs) > 2:  # [out, kh, kw, in]
        return int(np.prod(tensors[operator.inputs[2]].shape)) * weights[0] * weights[1] * weights[2]
    return 0


def loads_rule(content: bytes, detail: str) -> dict:
    """Rule ``loads``: LiteRT loads and runs the file (the GPU delegate and the Edge TPU runtime sit on it).

    A file it refuses, or one whose op versions it does not know, fails, with LiteRT's
    message; the static rules still run on the graph, so they name what else is wrong.
    """
    from edgecomp import runtime

    try:
        runtime.check_model(content)
    except ModelError as error:
        return {"rule": "loads", "ok": False, "detail": str(error)}
    return {"rule": "loads", "ok": True, "detail": detail}
