"""The Keras 3 bridge: a Keras 3 model rebuilt in tf_keras, layer by layer, and proven to compute the same.

tfmot works only with tf_keras (Keras 2); TensorFlow 2.21's own ``keras`` is Keras 3,
so that is what most users' models are. ``to_tf_keras`` reads the Keras 3 model's
functional graph (a Sequential one as its chain), creates each layer in tf_keras from
the same config (Keras 3's serialization wrappers removed; a Keras 3-only argument
left at its default is dropped), calls it on the same inputs, copies the weights, and
then runs both models on real samples: the rebuild is used only when the outputs
agree within ``TOLERANCE``. A layer tf_keras does not have, an argument it cannot
take with a non-default value, a weight of another shape, or outputs that differ is
an error that names the layer.

Example:
    >>> import keras                                                   # doctest: +SKIP
    >>> rebuilt, report = to_tf_keras(keras_3_model, x_val[:32])       # doctest: +SKIP
    >>> report["max_difference"] <= TOLERANCE                          # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import re

import numpy as np

from edgecomp._keras import keras
from edgecomp.errors import ModelError

TOLERANCE = 1e-4   # largest output difference, relative to the largest output magnitude
POLICIES = ("DTypePolicy", "FloatDTypePolicy", "Policy")
TENSOR = "__keras_tensor__"


def _plain(value):
    """A Keras 3 config value in tf_keras's form: ``{"module", "class_name", "config"}`` wrappers unwrapped."""
    if isinstance(value, dict):
        if "class_name" in value and "config" in value and ("module" in value or "registered_name" in value):
            if value["class_name"] in POLICIES:
                return value["config"]["name"]
            return {"class_name": value["class_name"], "config": _plain(value["config"])}
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _without(value, key: str):
    """``value`` with ``key`` removed from every dict; the removed values."""
    removed = []
    if isinstance(value, dict):
        if key in value:
            removed.append(value[key])
        kept = {}
        for name, item in value.items():
            if name != key:
                kept[name], inner = _without(item, key)
                removed += inner
        return kept, removed
    if isinstance(value, list):
        items = [_without(item, key) for item in value]
        return [item for item, _ in items], [r for _, inner in items for r in inner]
    return value, removed


class _HardActivation:
    """Keras 3's ``hard_sigmoid`` (``relu6(x + 3) / 6``) or ``hard_silu``/``hard_swish`` (``x`` times that) as
    tf_keras layers: tf_keras has no ``hard_silu``, and its ``hard_sigmoid`` is another function
    (``clip(0.2 x + 0.5, 0, 1)``)."""

    def __init__(self, name: str, activation: str):
        from edgecomp.stages.prepare import ConstantArithmetic

        sigmoid = activation == "hard_sigmoid"
        self.add = ConstantArithmetic("add", 3.0, name=f"{name}_plus_3")
        self.relu6 = keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")
        self.scale = ConstantArithmetic("multiply", 1.0 / 6.0, name=name if sigmoid else f"{name}_gate")
        self.multiply = None if sigmoid else keras.layers.Multiply(name=name)

    def __call__(self, inputs):
        gate = self.scale(self.relu6(self.add(inputs)))
        return gate if self.multiply is None else self.multiply([inputs, gate])

    def get_weights(self):
        return []


HARD_ACTIVATIONS = ("hard_sigmoid", "hard_silu", "hard_swish")


def _keras3_default(class_name: str, key: str):
    """The default of argument ``key`` of Keras 3's layer ``class_name`` (a sentinel when it has none)."""
    import inspect

    import keras as keras_3

    try:
        parameter = inspect.signature(getattr(keras_3.layers, class_name).__init__).parameters.get(key)
    except (AttributeError, TypeError, ValueError):
        parameter = None
    return parameter.default if parameter is not None else object()


def _layer(class_name: str, config: dict, name: str):
    """The tf_keras layer for a Keras 3 layer config; drops Keras 3-only arguments left at their defaults."""
    if class_name == "InputLayer":
        return None
    if class_name == "Activation" and config.get("activation") in HARD_ACTIVATIONS:
        return _HardActivation(name, config["activation"])
    dropped = set()
    while True:
        try:
            layer = keras.layers.deserialize({"class_name": class_name, "config": config})
            if not isinstance(layer, keras.layers.Layer):   # tf_keras hands back the name of a class it lacks
                raise ValueError(f"unknown layer class {class_name}")
            return layer
        except TypeError as error:
            match = re.search(r"unexpected keyword argument '(\w+)'|argument not understood:', '(\w+)'", str(error))
            key = match and (match.group(1) or match.group(2))
            # data_format defaults to None, resolved to the (channels-last) image data format when written.
            default = "channels_last" if key == "data_format" else _keras3_default(class_name, key)
            if key and key in config and config[key] == default:
                config = {k: v for k, v in config.items() if k != key}   # Keras 3 wrote its own default
                dropped.add(key)
                continue
            if not key or key in dropped:
                raise ModelError(f"Keras 3 model: layer '{name}' ({class_name}) cannot be rebuilt in tf_keras: "
                                 f"{str(error).splitlines()[-1][:300]}") from None
            config, values = _without(config, key)
            if any(value not in (None, False, 0, "", [], {}) for value in values):
                raise ModelError(f"Keras 3 model: layer '{name}' ({class_name}) sets {key}={values[0]!r}, which "
                                 "tf_keras (needed by tensorflow-model-optimization) does not have") from None
            dropped.add(key)
        except ValueError as error:
            raise ModelError(f"Keras 3 model: layer '{name}' ({class_name}) has no tf_keras equivalent "
                             f"({str(error).splitlines()[0][:200]})") from None


OPERATIONS = {"Add": "add", "Subtract": "subtract", "Multiply": "multiply", "Divide": "divide",
              "TrueDivide": "divide"}


def _operation(class_name: str, name: str, node: dict, tensors: dict):
    """A Keras 3 tensor operator in the graph (``x * 0.5``, ``x + y``) as tf_keras layers, called on its inputs."""
    from edgecomp.stages.prepare import ConstantArithmetic

    args = node.get("args", [])
    operation = OPERATIONS.get(class_name)
    if operation is None or node.get("kwargs") or len(args) != 2:
        raise ModelError(f"Keras 3 model: operation '{name}' (keras.ops {class_name}) has no tf_keras layer the "
                         "bridge knows; write it as a Keras layer")
    refs = [_references(arg) for arg in args]
    if all(refs):
        merge = {"add": keras.layers.Add, "subtract": keras.layers.Subtract, "multiply": keras.layers.Multiply}
        if operation not in merge:
            raise ModelError(f"Keras 3 model: operation '{name}' divides two tensors, which tf_keras has no layer for")
        return merge[operation](name=name)([tensors[refs[0][0]], tensors[refs[1][0]]])
    tensor_first = bool(refs[0])
    constant = args[1] if tensor_first else args[0]
    if not isinstance(constant, (int, float)) or (not tensor_first and operation in ("subtract", "divide")):
        raise ModelError(f"Keras 3 model: operation '{name}' ({class_name} with {constant!r}) has no tf_keras layer "
                         "the bridge knows")
    tensor = tensors[(refs[0] or refs[1])[0]]
    return ConstantArithmetic(operation, float(constant), name=name)(tensor)


def _references(value) -> list[tuple[str, int, int]]:
    """The ``keras_history`` of every Keras 3 tensor in a node's arguments, in order."""
    if isinstance(value, dict):
        if value.get("class_name") == TENSOR:
            name, node, index = value["config"]["keras_history"]
            return [(name, int(node), int(index))]
        return [ref for item in value.values() for ref in _references(item)]
    if isinstance(value, (list, tuple)):
        return [ref for item in value for ref in _references(item)]
    return []


def _graph(model) -> dict:
    """The model's functional config (a Sequential model's chain made explicit)."""
    config = model.get_config()
    if "input_layers" in config:
        return config
    layers = [dict(entry) for entry in config["layers"]]
    if not layers or layers[0]["class_name"] != "InputLayer":
        shape = [None, *model.input_shape[1:]]
        layers.insert(0, {"class_name": "InputLayer", "config": {"batch_shape": shape, "name": f"{model.name}_input"}})
    previous = None
    for entry in layers:
        entry["name"] = entry["config"]["name"]
        history = {"class_name": TENSOR, "config": {"keras_history": [previous, 0, 0]}}
        entry["inbound_nodes"] = [] if previous is None else [{"args": [history], "kwargs": {}}]
        previous = entry["name"]
    return {"name": config["name"], "layers": layers, "input_layers": [[layers[0]["name"], 0, 0]],
            "output_layers": [[previous, 0, 0]]}


def _output_refs(value) -> list[tuple[str, int, int]]:
    if isinstance(value, dict):
        raise ModelError("Keras 3 model: inputs or outputs given as a dict; use a list")
    if isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str):
        return [(value[0], int(value[1]), int(value[2]))]
    return [ref for item in value for ref in _output_refs(item)]


def to_tf_keras(model, samples: np.ndarray) -> tuple[object, dict]:
    """Rebuilds a Keras 3 functional or Sequential model in tf_keras and proves it computes the same.

    Args:
        model: the Keras 3 model (not changed).
        samples: real inputs; both models must agree on them.

    Returns:
        ``(tf_keras model, {"layers": count, "max_difference": float})``.

    Raises:
        ModelError: a subclassed model, a layer or argument tf_keras lacks, a weight
            shape that differs, or outputs that disagree; the message names the layer.
    """
    if not hasattr(model, "get_config") or not hasattr(model, "layers"):
        raise ModelError(f"Keras 3 model: {type(model).__name__} is not a Keras model")
    try:
        graph = _graph(model)
    except (NotImplementedError, TypeError, KeyError) as error:
        raise ModelError(f"Keras 3 model: its graph cannot be read ({error}); a subclassed model cannot be "
                         "rebuilt: build it with keras.Input and layer calls, or keras.Sequential") from None
    tensors: dict[tuple[str, int, int], object] = {}
    built: dict[str, object] = {}
    for entry in graph["layers"]:
        name, class_name = entry["config"]["name"], entry["class_name"]
        config = _plain(copy.deepcopy(entry["config"]))
        if class_name == "InputLayer":
            shape = config.get("batch_shape") or config.get("batch_input_shape")
            tensors[(name, 0, 0)] = keras.Input(batch_shape=tuple(shape), dtype=config.get("dtype", "float32"),
                                                name=name)
            continue
        if class_name in ("Functional", "Sequential", "Model"):
            raise ModelError(f"Keras 3 model: layer '{name}' is a nested model; build the model flat")
        if str(entry.get("module", "")).startswith("keras.src.ops"):
            for node_index, node in enumerate(entry["inbound_nodes"]):
                tensors[(name, node_index, 0)] = _operation(class_name, name, node, tensors)
            continue
        layer = built.setdefault(name, _layer(class_name, config, name))
        _call_layer(layer, name, class_name, entry["inbound_nodes"], tensors)
    inputs = [tensors[ref] for ref in _output_refs(graph["input_layers"])]
    outputs = [tensors[ref] for ref in _output_refs(graph["output_layers"])]
    rebuilt = keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                          name=graph["name"])
    _copy_weights(model, built)
    difference = _checked_difference(model, rebuilt, samples)
    return rebuilt, {"layers": len(built), "max_difference": difference}


def _call_layer(layer, name: str, class_name: str, inbound_nodes: list, tensors: dict) -> None:
    """Calls the rebuilt ``layer`` once per node Keras 3 recorded for it; adds its outputs to ``tensors``."""
    for node_index, node in enumerate(inbound_nodes):
        refs = _references(node.get("args", []))
        if _references(node.get("kwargs", {})):
            raise ModelError(f"Keras 3 model: layer '{name}' ({class_name}) takes tensors as keyword "
                             "arguments, which the bridge does not rebuild")
        missing = [ref[0] for ref in refs if ref not in tensors]
        if missing:
            raise ModelError(f"Keras 3 model: layer '{name}' is called on '{missing[0]}' before that is built "
                             "(a layer shared across the graph); the bridge rebuilds layers called in order")
        inputs = [tensors[ref] for ref in refs]
        args = node.get("args", [])
        # A merge takes one list; Keras 3's tensor operators (x * y) record two positional tensors.
        as_list = (len(args) == 1 and isinstance(args[0], (list, tuple))) or \
            (len(inputs) > 1 and isinstance(layer, keras.layers.Layer) and hasattr(layer, "_merge_function"))
        # Keras 3 records the symbolic call's ``training`` (RandomFlip: True); pinning it would flip at inference.
        kwargs = {key: value for key, value in node.get("kwargs", {}).items()
                  if value is not None and key != "training"}
        outputs = layer(inputs if as_list else inputs[0], **kwargs) if len(inputs) == 1 or as_list \
            else layer(*inputs, **kwargs)
        for index, tensor in enumerate(outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            tensors[(name, node_index, index)] = tensor


def _copy_weights(model, built: dict) -> None:
    """Copies each Keras 3 layer's weights into its tf_keras rebuild; refuses weights of another shape."""
    for name, layer in built.items():
        if isinstance(layer, _HardActivation):
            continue
        source = model.get_layer(name).get_weights()
        target = layer.get_weights()
        if [w.shape for w in source] != [w.shape for w in target]:
            raise ModelError(f"Keras 3 model: layer '{name}' has weights {[w.shape for w in source]} in Keras 3 "
                             f"but {[w.shape for w in target]} rebuilt in tf_keras")
        layer.set_weights(source)


def _checked_difference(model, rebuilt, samples: np.ndarray) -> float:
    """The rebuild's largest relative output difference on ``samples``; refuses one above ``TOLERANCE``."""
    try:
        difference = _max_difference(model, rebuilt, samples)
    except Exception as error:  # noqa: BLE001 - either model refusing the samples is the model/data mismatch
        raise ModelError(f"Keras 3 model: running it on the data's samples {samples.shape} failed: "
                         f"{str(error).splitlines()[0][:200] if str(error) else type(error).__name__}") from None
    if not difference <= TOLERANCE:
        raise ModelError(f"Keras 3 model: the tf_keras rebuild's outputs differ from the original's by "
                         f"{difference:.3g} (relative) on real samples, above {TOLERANCE:g}; it is not used")
    return difference


def _max_difference(original, rebuilt, samples: np.ndarray) -> float:
    expected = np.asarray(original(samples, training=False))
    got = np.asarray(rebuilt(samples, training=False))
    if expected.shape != got.shape:
        return float("inf")
    return float(np.max(np.abs(expected - got)) / max(1.0, float(np.max(np.abs(expected)))))
