"""Folding BatchNormalization into the Conv/Dense before it: a new model whose kernels are the ones the file stores.

The TFLite converter folds ``Conv → BatchNormalization`` itself, multiplying every
output channel of the kernel by ``gamma / sqrt(variance + epsilon)``. A kernel
clustered to 16 values before that fold has 16 values per channel afterwards, but a
different 16 in every channel (the digits CNN's int8 file had 41–50 per tensor).
Folding first, then clustering, clusters the kernels the file will hold.

A BatchNormalization is folded when its only input is a ``Conv1D``/``Conv2D``/
``DepthwiseConv2D``/``Dense`` with a linear activation whose output feeds nothing
else, and it normalizes the last axis; any other BatchNormalization is kept and
listed with the reason.

Example:
    >>> folded, pairs, kept = fold_batchnorm(model)      # doctest: +SKIP
    >>> pairs                                            # doctest: +SKIP
    [('block1_conv', 'block1_bn'), ...]
"""

from __future__ import annotations

import copy

import numpy as np

from edgecomp import models
from edgecomp._keras import keras

FOLDABLE = ("Conv1D", "Conv2D", "DepthwiseConv2D", "Dense")


def _consumers(model) -> dict[str, int]:
    """Layer name → how many layer calls use its output."""
    counts: dict[str, int] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:   # noqa: SLF001 - tf_keras keeps the graph there
            for inbound in node.inbound_layers if isinstance(node.inbound_layers, list) else [node.inbound_layers]:
                counts[inbound.name] = counts.get(inbound.name, 0) + 1
    for output in model.outputs:
        name = output._keras_history.layer.name   # noqa: SLF001
        counts[name] = counts.get(name, 0) + 1
    return counts


def foldable_pairs(model) -> tuple[list[tuple[str, str]], list[dict]]:
    """``(producer, batchnorm)`` name pairs that fold, and ``[{"layer", "reason"}]`` for BNs that do not.

    ``model``'s layers must be used by this model only (``models.copy`` makes such a model).
    """
    pairs, kept = [], []
    consumers = _consumers(model)
    outputs = {output._keras_history.layer.name for output in model.outputs}   # noqa: SLF001
    referenced_by_keyword = _keyword_references(model.get_config().get("layers", []))
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        nodes = layer._inbound_nodes   # noqa: SLF001
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        producer = nodes[0].inbound_layers if len(nodes) == 1 else None
        if isinstance(producer, list):
            producer = producer[0] if len(producer) == 1 else None
        if producer is None:
            reason = "not a single call with a single input"
        elif layer.name in outputs:
            reason = "it is a model output (folding would rename the output)"
        elif layer.name in referenced_by_keyword:
            reason = "a layer takes its output as a keyword argument"
        elif type(producer).__name__ not in FOLDABLE:
            reason = f"follows a {type(producer).__name__}, not a Conv or Dense"
        elif getattr(producer, "activation", None) not in (None, keras.activations.linear):
            reason = f"{producer.name} has an activation before the BatchNormalization"
        elif consumers.get(producer.name, 0) != 1 or len(producer._inbound_nodes) != 1:   # noqa: SLF001
            reason = f"{producer.name}'s output is used elsewhere too, or the layer is shared"
        elif getattr(producer, "data_format", "channels_last") != "channels_last":
            reason = f"{producer.name} is channels_first"
        elif [a % len(nodes[0].output_shapes) for a in axis] != [len(nodes[0].output_shapes) - 1]:
            reason = "normalizes an axis other than the last (channels)"
        else:
            pairs.append((producer.name, layer.name))
            continue
        kept.append({"layer": layer.name, "reason": f"BatchNormalization kept: {reason}"})
    return pairs, kept


def _keyword_references(entries: list) -> set[str]:
    """Names of layers whose output another layer call takes as a keyword argument (``value=...``)."""
    found: set[str] = set()

    def walk(node, in_keywords):
        if isinstance(node, dict):
            for value in node.values():
                walk(value, True)
        elif isinstance(node, list):
            if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int) and in_keywords:
                found.add(node[0])
            for item in node:
                walk(item, in_keywords)

    for entry in entries:
        walk(entry.get("inbound_nodes", []), False)
    return found


def folded_weights(producer, batchnorm) -> list[np.ndarray]:
    """``[kernel, bias]`` of ``producer`` with ``batchnorm`` folded in."""
    weights = dict(zip([w.name.split("/")[-1].split(":")[0] for w in batchnorm.weights], batchnorm.get_weights()))
    variance, mean = weights["moving_variance"], weights["moving_mean"]
    gamma = weights.get("gamma", np.ones_like(variance))
    beta = weights.get("beta", np.zeros_like(variance))
    scale = gamma / np.sqrt(variance + batchnorm.epsilon)
    kernel = producer.get_weights()[0]
    bias = producer.get_weights()[1] if producer.use_bias else np.zeros_like(variance)
    if type(producer).__name__ == "DepthwiseConv2D":   # kernel (h, w, in, multiplier); channel = in * mult + m
        kernel = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        kernel = kernel * scale
    return [kernel.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]


def fold_batchnorm(model):
    """A new model with every foldable BatchNormalization folded into the layer before it.

    Args:
        model: a functional or Sequential tf_keras model (not changed).

    Returns:
        ``(new model, [(producer, batchnorm)] folded, [{"layer", "reason"}] kept)``.
        Inference outputs are equal up to float rounding; training a folded layer
        trains its kernel and bias directly (no batch statistics).
    """
    # A fresh copy: a layer object that other models reuse (tfmot's strip functions return
    # untouched layers as they are) has their calls in its inbound nodes too.
    model = models.copy(model)
    pairs, kept = foldable_pairs(model)
    if not pairs:
        return model, [], kept
    into = {batchnorm: producer for producer, batchnorm in pairs}
    producers = {producer for producer, _ in pairs}
    config = copy.deepcopy(model.get_config())
    entries = []
    for entry in config["layers"]:
        entry.pop("build_config", None)   # weights made by the functional call, under their own names
        name = entry["config"]["name"]
        if name in into:
            continue
        if name in producers:
            entry["config"]["use_bias"] = True
        if "inbound_nodes" in entry:
            entry["inbound_nodes"] = _renamed(entry["inbound_nodes"], into)
        entries.append(entry)
    config["layers"] = entries
    if "output_layers" in config:
        config["output_layers"] = _renamed(config["output_layers"], into)
    scope = {type(layer).__name__: type(layer) for layer in model.layers}
    with keras.utils.custom_object_scope(scope):
        folded = type(model).from_config(config) if isinstance(model, keras.Sequential) \
            else keras.Model.from_config(config)
    batchnorm_of = {producer: batchnorm for producer, batchnorm in pairs}
    for layer in folded.layers:
        if layer.name in batchnorm_of:
            layer.set_weights(folded_weights(model.get_layer(layer.name), model.get_layer(batchnorm_of[layer.name])))
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return folded, pairs, kept


def _renamed(node, into: dict[str, str]):
    """Inbound-node structures with every reference to a folded BN pointed at its producer."""
    if isinstance(node, list):
        if len(node) >= 3 and isinstance(node[0], str) and isinstance(node[1], int) and node[0] in into:
            return [into[node[0]], 0, 0, *node[3:]]
        return [_renamed(item, into) for item in node]
    return node
