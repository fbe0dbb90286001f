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

Layers tfmot's registry has no QAT config for, but which have an exact
equivalent it has, are rewritten too, so that their weights are fake-quantized
while training (and zeros and clusters are kept by tfmot's preserving quantizers):

==================================== ==========================================
layer                                replacement
==================================== ==========================================
``Conv1D`` (same/valid padding,      ``Reshape`` to (length, 1, channels),
channels last, static length)        ``Conv2D`` with a (k, 1) kernel, ``Reshape``
                                     back (what the converter emits for Conv1D)
``SeparableConv2D``                  ``DepthwiseConv2D`` (no bias) + 1×1
                                     ``Conv2D`` (the pointwise half, bias,
                                     activation)
``SeparableConv1D``                  both: reshapes around the separable pair
==================================== ==========================================

The Conv2D keeps the original layer's name (reports and masks name the user's
layer). A Sequential model is read as the functional chain it is.

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

from edgecomp import models
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


CONV_KEYS = ("filters", "padding", "data_format", "groups", "activation", "use_bias", "kernel_initializer",
             "bias_initializer", "kernel_regularizer", "bias_regularizer", "activity_regularizer",
             "kernel_constraint", "bias_constraint")


def _base(config: dict, name: str) -> dict:
    return {"name": name, "trainable": config.get("trainable", True), "dtype": config.get("dtype", "float32")}


def _conv1d_rewrite(entry: dict, layer) -> tuple[list[dict], str, object] | str:
    """``(entries, name of the tensor the rest of the graph now reads, weight mapper)`` or why not."""
    config, name = entry["config"], entry["config"]["name"]
    if config.get("padding") not in ("same", "valid"):
        return f"Conv1D with padding {config.get('padding')!r} has no Conv2D equivalent"
    if config.get("data_format", "channels_last") != "channels_last":
        return "Conv1D with channels_first"
    try:
        (length, channels), (out_length, filters) = layer.input_shape[1:], layer.output_shape[1:]
    except (AttributeError, ValueError):
        return "Conv1D called more than once or on a non-3-D input"
    if None in (length, channels, out_length, filters):
        return "Conv1D on a sequence of unknown length (the reshape needs it)"
    to_2d, to_1d = f"{name}_as_2d", f"{name}_as_1d"
    conv = {key: config[key] for key in CONV_KEYS if key in config}
    conv.update(_base(config, name), kernel_size=[int(config["kernel_size"][0]), 1],
                strides=[int(config["strides"][0]), 1], dilation_rate=[int(config["dilation_rate"][0]), 1])
    entries = [
        {"class_name": "Reshape", "name": to_2d, "config": {**_base(config, to_2d), "target_shape": [length, 1, channels]},
         "inbound_nodes": entry["inbound_nodes"]},
        {"class_name": "Conv2D", "name": name, "config": conv, "inbound_nodes": [[[to_2d, 0, 0, {}]]]},
        {"class_name": "Reshape", "name": to_1d, "config": {**_base(config, to_1d),
                                                             "target_shape": [out_length, filters]},
         "inbound_nodes": [[[name, 0, 0, {}]]]},
    ]

    def weights(target_name: str, original: list) -> list:
        kernel, *rest = original
        return [kernel.reshape(kernel.shape[0], 1, *kernel.shape[1:]), *rest]

    return entries, to_1d, {name: weights}


def _separable_rewrite(entry: dict, layer) -> tuple[list[dict], str, object] | str:
    config, name = entry["config"], entry["config"]["name"]
    depthwise = f"{name}_depthwise"
    entries = [
        {"class_name": "DepthwiseConv2D", "name": depthwise,
         "config": {**_base(config, depthwise), "kernel_size": config["kernel_size"], "strides": config["strides"],
                    "padding": config["padding"], "data_format": config.get("data_format"),
                    "dilation_rate": config["dilation_rate"], "depth_multiplier": config.get("depth_multiplier", 1),
                    "activation": "linear", "use_bias": False,
                    "depthwise_initializer": config.get("depthwise_initializer"),
                    "depthwise_regularizer": config.get("depthwise_regularizer"),
                    "depthwise_constraint": config.get("depthwise_constraint")},
         "inbound_nodes": entry["inbound_nodes"]},
        {"class_name": "Conv2D", "name": name,
         "config": {**_base(config, name), "filters": config["filters"], "kernel_size": [1, 1], "strides": [1, 1],
                    "padding": "valid", "data_format": config.get("data_format"), "dilation_rate": [1, 1],
                    "activation": config.get("activation"), "use_bias": config.get("use_bias", True),
                    "kernel_initializer": config.get("pointwise_initializer"),
                    "bias_initializer": config.get("bias_initializer"),
                    "kernel_regularizer": config.get("pointwise_regularizer"),
                    "bias_regularizer": config.get("bias_regularizer"),
                    "activity_regularizer": config.get("activity_regularizer"),
                    "kernel_constraint": config.get("pointwise_constraint"),
                    "bias_constraint": config.get("bias_constraint")},
         "inbound_nodes": [[[depthwise, 0, 0, {}]]]},
    ]

    def weights(target_name: str, original: list) -> list:
        return original[:1] if target_name == depthwise else original[1:]

    return entries, name, {depthwise: weights, name: weights}


def _separable1d_rewrite(entry: dict, layer) -> tuple[list[dict], str, object] | str:
    """SeparableConv1D: the 2-D separable rewrite between the Conv1D rewrite's two reshapes."""
    config, name = entry["config"], entry["config"]["name"]
    flat = _conv1d_rewrite(entry, layer)
    if isinstance(flat, str):
        return flat.replace("Conv1D", "SeparableConv1D")
    (to_2d, _, to_1d), output_name, _ = flat
    as_2d = {**config, "kernel_size": [int(config["kernel_size"][0]), 1], "strides": [int(config["strides"][0]), 1],
             "dilation_rate": [int(config["dilation_rate"][0]), 1]}
    separable, _, mappers = _separable_rewrite({"config": as_2d, "inbound_nodes": [[[to_2d["name"], 0, 0, {}]]]}, layer)
    depthwise = separable[0]["name"]

    def weights(target_name: str, original: list) -> list:
        kernel = original[0] if target_name == depthwise else original[1]
        kernel = kernel.reshape(kernel.shape[0], 1, *kernel.shape[1:])
        return [kernel] if target_name == depthwise else [kernel, *original[2:]]

    return [to_2d, *separable, to_1d], output_name, {target: weights for target in mappers}


LAYER_REWRITES = {"Conv1D": _conv1d_rewrite, "SeparableConv2D": _separable_rewrite,
                  "SeparableConv1D": _separable1d_rewrite}


def _describe_layers(entries: list[dict]) -> str:
    parts = []
    for entry in entries:
        config = entry["config"]
        if entry["class_name"] == "Reshape":
            parts.append(f"Reshape{tuple(config['target_shape'])}")
        elif entry["class_name"] == "Conv2D":
            parts.append(f"Conv2D({tuple(config['kernel_size'])})")
        else:
            parts.append(entry["class_name"])
    return " + ".join(parts)


def _renamed_references(value, old: str, new: str):
    """``value`` with every tensor reference ``[old, node, tensor, ...]`` pointing at ``new``."""
    if isinstance(value, list):
        if len(value) >= 3 and value[0] == old and isinstance(value[1], int) and isinstance(value[2], int):
            return [new, *value[1:]]
        return [_renamed_references(item, old, new) for item in value]
    if isinstance(value, dict):
        return {key: _renamed_references(item, old, new) for key, item in value.items()}
    return value


def _functional_config(model) -> dict | str:
    """The model's functional config (a Sequential one read as its chain), or why there is none."""
    if isinstance(model, keras.Sequential) and not model.built:
        return "a Sequential model that is not built"
    try:
        config = copy.deepcopy(models.as_functional(model).get_config())
    except NotImplementedError as error:
        return f"model config unavailable ({error})"
    return config if "layers" in config and "input_layers" in config else "not a functional or Sequential model"


def prepare_for_qat(model, samples: np.ndarray) -> tuple[object, dict]:
    """A copy of ``model`` with its TFOpLambda, Conv1D and separable conv layers rewritten into layers tfmot can wrap.

    Args:
        model: a functional tf_keras model (not modified).
        samples: a few real inputs; the rewrite must give the original's outputs on them.

    Returns:
        ``(model, report)``: the rewritten model (``model`` itself when nothing was rewritten)
        and ``{"rewritten": [{"layer", "from", "to"}], "left": [{"layer", "reason"}],
        "max_difference": float}``.
    """
    report = {"rewritten": [], "left": [], "max_difference": 0.0}
    candidates = [layer for layer in model.layers
                  if type(layer).__name__ == "TFOpLambda" or type(layer).__name__ in LAYER_REWRITES]
    if not candidates:
        return model, report
    config = _functional_config(model)
    if isinstance(config, str):
        report["left"] = [{"layer": layer.name, "reason": config} for layer in candidates]
        return model, report
    by_name = {layer.name: layer for layer in model.layers}
    rewritten, weight_mappers = _rewrite_layers(config, by_name, report["left"])
    if not rewritten:
        return model, report
    try:
        prepared = _rebuilt(config, by_name, weight_mappers)
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
    log.info("prepare: rewrote %d layer(s) into Keras layers tfmot can wrap; outputs identical within %.1g",
             len(rewritten), difference)
    return prepared, report


def _rewrite_layers(config: dict, by_name: dict, left: list) -> tuple[list, dict]:
    """Rewrites ``config``'s layers in place; returns ``(rewritten [{"layer", "from", "to"}], weight mappers)``.

    A layer that cannot be rewritten stays as it is, with why in ``left``; a rewrite
    whose last tensor has another name is wired to the later layers and the outputs.
    """
    rewritten, layers, weight_mappers = [], [], {}
    for entry in config["layers"]:
        kind = entry.get("class_name")
        name = entry.get("config", {}).get("name", entry.get("name"))
        if kind == "TFOpLambda":
            result = _replacement(entry)
            if isinstance(result, str):
                left.append({"layer": name, "reason": result})
                layers.append(entry)
                continue
            new_entry, node = result
            layers.append({**new_entry, "inbound_nodes": [node]})
            rewritten.append({"layer": name, "from": f"TFOpLambda({entry['config'].get('function')})",
                              "to": _describe(new_entry)})
        elif kind in LAYER_REWRITES and type(by_name.get(name)).__name__ == kind:
            result = LAYER_REWRITES[kind](entry, by_name[name]) if len(entry.get("inbound_nodes", [])) == 1 \
                else f"{kind} called {len(entry.get('inbound_nodes', []))} times (a shared layer)"
            if isinstance(result, str):
                left.append({"layer": name, "reason": result})
                layers.append(entry)
                continue
            entries, output_name, mappers = result
            layers += entries
            weight_mappers.update({target: (name, mapper) for target, mapper in mappers.items()})
            if output_name != name:   # later layers and the outputs read the rewrite's last tensor
                config["output_layers"] = _renamed_references(config["output_layers"], name, output_name)
                pending = config["layers"][config["layers"].index(entry) + 1:]
                for later in pending:
                    later["inbound_nodes"] = _renamed_references(later["inbound_nodes"], name, output_name)
            rewritten.append({"layer": name, "from": kind, "to": _describe_layers(entries)})
        else:
            layers.append(entry)
    config["layers"] = layers
    return rewritten, weight_mappers


def _rebuilt(config: dict, by_name: dict, weight_mappers: dict):
    """The model of the rewritten ``config``, with the original layers' weights (mapped for rewritten ones)."""
    prepared = keras.Model.from_config(config, custom_objects=QAT_OBJECTS)
    for layer in prepared.layers:
        if layer.name in weight_mappers:
            source, mapper = weight_mappers[layer.name]
            layer.set_weights(mapper(layer.name, by_name[source].get_weights()))
        elif layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())
    return prepared


def _max_difference(original, prepared, samples: np.ndarray) -> float:
    """Largest absolute difference of the two models' outputs, over the largest output magnitude."""
    if len(samples) == 0:
        return float("inf")
    expected = np.asarray(original(samples, training=False))
    got = np.asarray(prepared(samples, training=False))
    if expected.shape != got.shape:
        return float("inf")
    return float(np.max(np.abs(expected - got)) / max(1.0, float(np.max(np.abs(expected)))))
