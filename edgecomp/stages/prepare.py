"""The model preparer: rewrites layers tfmot cannot wrap into equivalent Keras layers it can.

tfmot's ``quantize_apply`` rebuilds every layer from its config. A ``TFOpLambda``
(what tf_keras records for tensor arithmetic written as operators, e.g. the
hard-swish ``x + 3.0`` and ``x * (1 / 6)`` of keras.applications' MobileNetV3) is
rebuilt with its input wrapped in a list and crashes (``'list' object has no
attribute 'dtype'``). ``prepare_for_qat`` replaces each such layer by a Keras layer
that computes the same thing:

==================================== ==========================================
TFOpLambda                           replacement
==================================== ==========================================
``x + c``, ``x - c``, ``x * c``,     ``ConstantArithmetic`` (one tensor and a
``x / c`` (c a number)               constant; the converter makes the same op)
``x + y``, ``x - y``, ``x * y``,     ``Add``, ``Subtract``, ``Multiply``,
``maximum``/``minimum(x, y)``         ``Maximum``, ``Minimum``
``tf.nn.relu``, ``relu6``,           ``ReLU``, ``ReLU(max_value=6)``,
``sigmoid``, ``swish``/``silu``      ``Activation(...)``
any other ``tf.f(x, **constants)``    ``TensorFunction`` (calls the same
                                     ``tf.f``; only its output range is learned)
==================================== ==========================================

``TensorFunction`` exists only inside the quantize stage (it is not registered,
so no model file can name it); it has the power of the TFOpLambda it replaces.

The rewritten model is built from the original's config, gets its weights, and is
checked to give the same outputs on a batch of real samples before it is used;
a rewrite that does not is dropped and reported. The original model is never
changed. Example:

    >>> prepared, report = prepare_for_qat(model, x_val[:32])     # doctest: +SKIP
    >>> report["rewritten"][0]                                     # doctest: +SKIP
    {'layer': 'tf.__operators__.add', 'from': 'TFOpLambda(__operators__.add)', 'to': 'ConstantArithmetic(add 3.0)'}
"""

from __future__ import annotations

import copy
import logging

import numpy as np

from edgecomp._keras import keras, tf

log = logging.getLogger("edgecomp")

# TFOpLambda function names → the arithmetic they compute.
ARITHMETIC = {
    "__operators__.add": "add", "math.add": "add", "add": "add",
    "math.subtract": "subtract", "subtract": "subtract", "__operators__.sub": "subtract",
    "math.multiply": "multiply", "multiply": "multiply", "__operators__.mul": "multiply",
    "math.truediv": "divide", "math.divide": "divide", "__operators__.truediv": "divide",
    "math.maximum": "maximum", "math.minimum": "minimum",
}
CONSTANT_OPERATIONS = ("add", "subtract", "multiply", "divide")
TENSOR_LAYERS = {"add": "Add", "subtract": "Subtract", "multiply": "Multiply", "maximum": "Maximum",
                 "minimum": "Minimum"}
ACTIVATIONS = {
    "nn.relu": ("ReLU", {}), "nn.relu6": ("ReLU", {"max_value": 6.0}),
    "math.sigmoid": ("Activation", {"activation": "sigmoid"}), "nn.sigmoid": ("Activation", {"activation": "sigmoid"}),
    "nn.swish": ("Activation", {"activation": "swish"}), "nn.silu": ("Activation", {"activation": "swish"}),
    "math.tanh": ("Activation", {"activation": "tanh"}), "nn.tanh": ("Activation", {"activation": "tanh"}),
}
# Largest difference allowed between the original's and the rewrite's outputs, relative to the outputs' scale.
TOLERANCE = 1e-5


@keras.utils.register_keras_serializable(package="edgecomp")
class ConstantArithmetic(keras.layers.Layer):
    """``x + c``, ``x - c``, ``x * c`` or ``x / c`` for a constant number ``c``, as a Keras layer.

    Args:
        operation: ``add``, ``subtract``, ``multiply`` or ``divide``.
        value: the constant.
    """

    def __init__(self, operation: str, value: float, **kwargs):
        super().__init__(**kwargs)
        if operation not in ("add", "subtract", "multiply", "divide"):
            raise ValueError(f"operation must be add, subtract, multiply or divide, got {operation!r}")
        self.operation = operation
        self.value = float(value)

    def call(self, inputs):
        value = tf.constant(self.value, dtype=inputs.dtype)
        if self.operation == "add":
            return inputs + value
        if self.operation == "subtract":
            return inputs - value
        if self.operation == "multiply":
            return inputs * value
        return inputs / value

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "operation": self.operation, "value": self.value}


class TensorFunction(keras.layers.Layer):
    """``tf.<function>(x, **arguments)`` for one tensor ``x`` and constant arguments.

    Args:
        function: the TensorFlow API name a TFOpLambda recorded, e.g. ``math.maximum``.
        arguments: the constant keyword arguments, e.g. ``{"y": 0.5}``.
    """

    def __init__(self, function: str, arguments: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        from tf_keras.src.layers.core import tf_op_layer

        self.function = function
        self.arguments = dict(arguments or {})
        self._callable = tf_op_layer.get_symbol_from_name(function)
        if not callable(self._callable):
            raise ValueError(f"tf.{function} is not a TensorFlow function")

    def call(self, inputs):
        return self._callable(inputs, **self.arguments)

    def get_config(self):
        return {**super().get_config(), "function": self.function, "arguments": self.arguments}


CUSTOM_OBJECTS = {"ConstantArithmetic": ConstantArithmetic}
# For the quantize stage's own scope only (see the module docstring).
QAT_OBJECTS = {**CUSTOM_OBJECTS, "TensorFunction": TensorFunction}


def _is_tensor_reference(value) -> bool:
    if isinstance(value, dict):
        return any(_is_tensor_reference(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        if len(value) == 3 and isinstance(value[0], str) and isinstance(value[1], int):
            return True
        return any(_is_tensor_reference(item) for item in value)
    return False


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _replacement(layer: dict) -> tuple[dict, list] | str:
    """``(new layer config entry, new inbound node)`` for a TFOpLambda entry, or why it stays."""
    function = layer["config"].get("function", "?")
    nodes = layer.get("inbound_nodes", [])
    if len(nodes) != 1:
        return f"called {len(nodes)} times (a shared layer)"
    node = nodes[0]
    # tf_keras writes a TFOpLambda's call as [layer, node, tensor, kwargs]; a tensor in kwargs as [layer, node, tensor].
    entries = [node] if node and isinstance(node[0], str) else node
    if len(entries) != 1 or len(entries[0]) < 3:
        return "inbound node in an unknown format"
    first = entries[0]
    kwargs = {key: value for key, value in (first[3] if len(first) > 3 else {}).items() if key != "name"}
    base = {"name": layer["config"]["name"], "trainable": layer["config"].get("trainable", True),
            "dtype": layer["config"].get("dtype", "float32")}
    second = kwargs.get("y")
    if first[0] == "_CONSTANT_VALUE":   # ``c * x``: the constant came first
        operation = ARITHMETIC.get(function)
        tensor = second if isinstance(second, list) and len(second) == 3 and isinstance(second[0], str) else None
        if operation not in ("add", "multiply") or tensor is None or set(kwargs) != {"y"} or not _is_number(first[2]):
            return f"tf.{function} with a constant first argument has no Keras equivalent here"
        entry = {"class_name": "ConstantArithmetic", "name": base["name"],
                 "config": {**base, "operation": operation, "value": float(first[2])}}
        return entry, [[tensor[0], tensor[1], tensor[2], {}]]
    plain_node = [[first[0], first[1], first[2], {}]]
    if isinstance(second, list) and len(second) == 3 and isinstance(second[0], str):
        plain_node.append([second[0], second[1], second[2], {}])
        kwargs.pop("y")
    operation = ARITHMETIC.get(function)
    if operation in CONSTANT_OPERATIONS and len(plain_node) == 1 and set(kwargs) == {"y"} and _is_number(kwargs["y"]):
        if operation == "divide" and kwargs["y"] == 0:
            return "division by zero"
        entry = {"class_name": "ConstantArithmetic", "name": base["name"],
                 "config": {**base, "operation": operation, "value": float(kwargs["y"])}}
        return entry, plain_node
    if operation in TENSOR_LAYERS and len(plain_node) == 2 and not kwargs:
        entry = {"class_name": TENSOR_LAYERS[operation], "name": base["name"], "config": base}
        return entry, plain_node
    if function in ACTIVATIONS and len(plain_node) == 1 and not kwargs:
        class_name, extra = ACTIVATIONS[function]
        return {"class_name": class_name, "name": base["name"], "config": {**base, **extra}}, plain_node
    if len(plain_node) == 1 and not _is_tensor_reference(kwargs):
        entry = {"class_name": "TensorFunction", "name": base["name"],
                 "config": {**base, "function": function, "arguments": kwargs}}
        return entry, plain_node
    return f"no Keras equivalent known for tf.{function} with these arguments"


def _describe(entry: dict) -> str:
    config = entry["config"]
    if entry["class_name"] == "ConstantArithmetic":
        return f"ConstantArithmetic({config['operation']} {config['value']:g})"
    if entry["class_name"] == "TensorFunction":
        return f"TensorFunction(tf.{config['function']})"
    extra = {key: config[key] for key in ("activation", "max_value") if key in config}
    return entry["class_name"] + (f"({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else "")


def prepare_for_qat(model, samples: np.ndarray) -> tuple[object, dict]:
    """A copy of ``model`` with its TFOpLambda layers rewritten into layers tfmot can wrap.

    Args:
        model: a functional tf_keras model (not modified).
        samples: a few real inputs; the rewrite must give the original's outputs on them.

    Returns:
        ``(model, report)``: the rewritten model (``model`` itself when nothing was rewritten)
        and ``{"rewritten": [{"layer", "from", "to"}], "left": [{"layer", "reason"}],
        "max_difference": float}``.
    """
    report = {"rewritten": [], "left": [], "max_difference": 0.0}
    lambdas = [layer for layer in model.layers if type(layer).__name__ == "TFOpLambda"]
    if not lambdas:
        return model, report
    try:
        config = copy.deepcopy(model.get_config())
    except NotImplementedError as error:
        report["left"] = [{"layer": layer.name, "reason": f"model config unavailable ({error})"} for layer in lambdas]
        return model, report
    if "layers" not in config or "input_layers" not in config:
        report["left"] = [{"layer": layer.name, "reason": "not a functional model"} for layer in lambdas]
        return model, report
    rewritten = []
    for index, entry in enumerate(config["layers"]):
        if entry.get("class_name") != "TFOpLambda":
            continue
        result = _replacement(entry)
        name = entry["config"]["name"]
        if isinstance(result, str):
            report["left"].append({"layer": name, "reason": result})
            continue
        new_entry, node = result
        config["layers"][index] = {**new_entry, "inbound_nodes": [node]}
        rewritten.append({"layer": name, "from": f"TFOpLambda({entry['config'].get('function')})",
                          "to": _describe(new_entry)})
    if not rewritten:
        return model, report
    try:
        prepared = keras.Model.from_config(config, custom_objects=QAT_OBJECTS)
        by_name = {layer.name: layer for layer in model.layers}
        for layer in prepared.layers:
            if layer.weights:
                layer.set_weights(by_name[layer.name].get_weights())
    except Exception as error:  # noqa: BLE001 - any failure keeps the original
        reason = f"the rewritten model could not be built ({type(error).__name__}: {str(error)[:200]})"
        report["left"] += [{"layer": item["layer"], "reason": reason} for item in rewritten]
        return model, report
    difference = _max_difference(model, prepared, samples)
    report["max_difference"] = difference
    if not difference <= TOLERANCE:
        reason = f"the rewrite's outputs differ from the original's by {difference:.3g} (relative), above {TOLERANCE:g}"
        report["left"] += [{"layer": item["layer"], "reason": reason} for item in rewritten]
        return model, report
    report["rewritten"] = rewritten
    log.info("prepare: rewrote %d TFOpLambda layer(s) into Keras layers tfmot can wrap; outputs identical within "
             "%.1g", len(rewritten), difference)
    return prepared, report


def _max_difference(original, prepared, samples: np.ndarray) -> float:
    """Largest absolute difference of the two models' outputs, over the largest output magnitude."""
    if len(samples) == 0:
        return float("inf")
    expected = np.asarray(original(samples, training=False))
    got = np.asarray(prepared(samples, training=False))
    if expected.shape != got.shape:
        return float("inf")
    return float(np.max(np.abs(expected - got)) / max(1.0, float(np.max(np.abs(expected)))))
