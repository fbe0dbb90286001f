"""How channels flow through a model: the channel groups filter pruning may prune together.

``plan(model)`` follows every tensor of a functional tf_keras model and returns a
``FilterPlan``: union-find channel groups (a residual merge couples its inputs into one
group), each layer's kind (producer, pass-through, merge, concat, flatten, opaque) and
input layouts, and the reasons groups are frozen. ``edgecomp.stages.filters`` chooses
masks for the groups and rewrites the model; see its docstring for the rules.

Example:
    >>> filter_plan = plan(model)                                   # doctest: +SKIP
    >>> [filter_plan.groups.producers[root] for root in filter_plan.groups.roots()]   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

from edgecomp import models
from edgecomp._keras import keras
from edgecomp.stages import common

# Reasons a layer's output channels are kept; named so reports and tests can rely on them.
OUTPUT_LAYER = "model output: its units are the classes and are never pruned"
MODEL_INPUT = "coupled (by an element-wise merge) with the model input, whose channels are never removed"
SHARED_LAYER = "layer is called more than once (shared weights): the channels around it are kept"
MERGE_MISMATCH = "element-wise merge of tensors whose channels do not line up: the channels are kept"
SOFTMAX_OVER_CHANNELS = "softmax over the channel axis: removing channels would change every output"
CANNOT_REWIRE = "its channels reach `{layer}` ({kind}), which filter pruning cannot rewire; its channels are kept"
NOT_HANDLED = "{kind} is not handled by filter pruning: its output channels are kept"
GROUPED_INPUT = "its channels reach the grouped convolution `{layer}`, whose input channels are kept"

PRODUCERS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Dense)
PASS_THROUGH = (
    keras.layers.ReLU, keras.layers.LeakyReLU, keras.layers.ELU, keras.layers.ThresholdedReLU,
    keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout, keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling1D, keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.Cropping1D, keras.layers.Cropping2D,
    keras.layers.UpSampling1D, keras.layers.UpSampling2D,
)
MERGES = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Average,
          keras.layers.Maximum, keras.layers.Minimum)
CHANNEL_ACTIVATIONS = ("softmax", "log_softmax")


# ---- channel groups -----------------------------------------------------------------


class _Groups:
    """Union-find over channel groups: coupled groups share one root, one mask, one frozen reason."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.producers: dict[int, list[str]] = {}
        self.frozen: dict[int, str] = {}
        self.parts: dict[int, int] = {}      # root → equal slices a mask keeps the same count of (grouped convs)

    def new(self, size: int, producer: Optional[str] = None, frozen: Optional[str] = None, parts: int = 1) -> int:
        group = len(self.parent)
        self.parent.append(group)
        self.size.append(int(size))
        self.producers[group] = [producer] if producer else []
        if frozen:
            self.frozen[group] = frozen
        if parts > 1:
            self.parts[group] = parts
        return group

    def find(self, group: int) -> int:
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def union(self, first: int, second: int) -> None:
        first, second = self.find(first), self.find(second)
        if first == second:
            return
        self.parent[second] = first
        self.producers[first] += self.producers.pop(second)
        reason = self.frozen.pop(second, None)
        if reason and first not in self.frozen:
            self.frozen[first] = reason
        parts = math.lcm(self.parts.pop(first, 1), self.parts.pop(second, 1))
        if parts > 1:
            self.parts[first] = parts

    def freeze(self, group: int, reason: str) -> None:
        self.frozen.setdefault(self.find(group), reason)

    def roots(self) -> list[int]:
        return sorted({self.find(group) for group in range(len(self.parent))})


@dataclasses.dataclass
class FilterPlan:
    """What filter pruning found in a model, before anything is removed.

    Attributes:
        groups: the channel groups (union-find); a root's producers share one mask.
        input_layouts: layer name → layout of each of its inputs (a layout is a tuple
            of group ids whose channels lie side by side on the last axis).
        kinds: layer name → ``producer``, ``depthwise``, ``batch_norm``, ``channelwise`` (PReLU, Normalization), ``pass``,
            ``merge``, ``concat``, ``flatten`` or ``opaque``.
        output_groups: producer name → its output group id.
        not_handled: ``[{"layer", "reason"}]`` for layers with kernels edgecomp cannot prune.
    """

    groups: _Groups
    input_layouts: dict[str, list[tuple[int, ...]]]
    kinds: dict[str, str]
    output_groups: dict[str, int]
    not_handled: list[dict]

    def layout_mask(self, layout: tuple[int, ...], masks: dict[int, np.ndarray]) -> np.ndarray:
        """The boolean channel mask of a layout, given one mask per group root."""
        parts = [masks.get(self.groups.find(g), np.ones(self.groups.size[g], bool)) for g in layout]
        return np.concatenate(parts) if parts else np.zeros(0, bool)


def _node_refs(node) -> list[tuple[str, int, int]]:
    """``(layer, node index, tensor index)`` of every tensor a serialized node reads, kwargs included."""
    refs: list[tuple[str, int, int]] = []

    def visit(item):
        if isinstance(item, (list, tuple)):
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int) \
                    and isinstance(item[2], int):
                refs.append((item[0], item[1], item[2]))
                for rest in item[3:]:
                    visit(rest)
            else:
                for sub in item:
                    visit(sub)
        elif isinstance(item, dict):
            for value in item.values():
                visit(value)

    visit(node)
    return refs


def _channels(shape) -> int:
    if isinstance(shape, list) and shape and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def _classify(layer) -> tuple[str, Optional[str]]:
    """``(kind, reason)``: how channels flow through ``layer``; ``reason`` when it is opaque."""
    if isinstance(layer, keras.Model):
        return "opaque", common.NESTED_MODEL
    if type(layer) in PRODUCERS:
        if not _channels_last(layer):
            return "opaque", "channels_first layout: its channels are kept"
        return "producer", None
    if type(layer) is keras.layers.DepthwiseConv2D:
        if layer.depth_multiplier != 1:
            return "opaque", "DepthwiseConv2D with depth_multiplier > 1: its channels are kept"
        if not _channels_last(layer):
            return "opaque", "channels_first layout: its channels are kept"
        return "depthwise", None
    if type(layer) is keras.layers.BatchNormalization:
        rank = len(layer.input_shape) if isinstance(layer.input_shape, tuple) else 0
        axes = list(layer.axis) if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if rank and [a % rank for a in axes] == [rank - 1]:
            return "batch_norm", None
        return "opaque", "BatchNormalization over an axis other than the last"
    if type(layer) is keras.layers.PReLU:
        if not isinstance(layer.input_shape, tuple) or len(layer.alpha.shape) != len(layer.input_shape) - 1:
            return "opaque", "PReLU on an input of unknown rank"
        # One slope per channel is sliced like BatchNorm's statistics; one shared by all channels passes them.
        return ("pass", None) if layer.alpha.shape[-1] == 1 else ("channelwise", None)
    if type(layer) is keras.layers.Rescaling:
        scalar = all(np.ndim(layer.get_config()[key]) == 0 for key in ("scale", "offset"))
        return ("pass", None) if scalar else ("opaque", "Rescaling with per-channel scale or offset")
    if type(layer) is keras.layers.Normalization:
        config = layer.get_config()
        rank = len(layer.input_shape) if isinstance(layer.input_shape, tuple) else 0
        axes = [a % rank for a in config["axis"]] if rank else []
        if axes == [rank - 1] and config.get("mean") is None and config.get("variance") is None:
            return "channelwise", None                      # adapted per-channel mean and variance: sliced
        return "opaque", "Normalization that is not per channel from adapt(): its channels are kept"
    if type(layer) is keras.layers.Activation:
        name = layer.get_config().get("activation")
        if name in CHANNEL_ACTIVATIONS:
            return "opaque", SOFTMAX_OVER_CHANNELS
        return "pass", None
    if type(layer) in PASS_THROUGH:
        return ("pass", None) if _channels_last(layer) else ("opaque", "channels_first layout")
    if type(layer) in MERGES:
        return "merge", None
    if type(layer) is keras.layers.Concatenate:
        rank = len(layer.output_shape) if isinstance(layer.output_shape, tuple) else 0
        if rank and layer.axis % rank == rank - 1:
            return "concat", None
        return "opaque", "Concatenate on an axis other than the channels"
    if type(layer) is keras.layers.Flatten:
        shape = layer.input_shape
        if _channels_last(layer) and isinstance(shape, tuple) and all(d is not None for d in shape[1:]):
            return "flatten", None
        return "opaque", "Flatten of a tensor without a static channels-last shape"
    return "opaque", None


def plan(model) -> FilterPlan:
    """Follows channels through ``model`` (functional) and groups the ones that must be pruned together.

    Raises:
        ModelError: ``model`` is subclassed (see ``models.check_functional``).
    """
    models.check_functional(model, "prune (structure: filters)")
    config = model.get_config()
    groups = _Groups()
    layouts: dict[tuple[str, int, int], tuple[int, ...]] = {}
    input_layouts: dict[str, list[tuple[int, ...]]] = {}
    kinds: dict[str, str] = {}
    output_groups: dict[str, int] = {}
    not_handled: list[dict] = []

    for entry in config["layers"]:
        name = entry["config"]["name"]
        layer = model.get_layer(name)
        nodes = entry.get("inbound_nodes") or []
        if not nodes:                                              # an InputLayer
            kinds[name] = "input"
            layouts[(name, 0, 0)] = _frozen_layout(groups, layer, MODEL_INPUT)
            continue
        kind, reason = ("opaque", SHARED_LAYER) if len(nodes) > 1 else _classify(layer)
        node_inputs = []
        for node_index, node in enumerate(nodes):
            refs = _node_refs(node)
            inputs = [layouts[ref] if ref in layouts
                      else _frozen_layout(groups, model.get_layer(ref[0]), MODEL_INPUT) for ref in refs]
            node_inputs.append(inputs)
            if kind == "opaque":
                message = reason if reason in (SHARED_LAYER, common.NESTED_MODEL) else \
                    CANNOT_REWIRE.format(layer=name, kind=type(layer).__name__)
                _freeze_all(groups, inputs, message)
                layouts[(name, node_index, 0)] = _frozen_layout(groups, layer, message, node_index)
        kinds[name] = kind
        if kind == "opaque":
            if common.kernel_weights(layer) or isinstance(layer, keras.Model):
                not_handled.append({"layer": name, "reason": reason or NOT_HANDLED.format(kind=type(layer).__name__)})
            continue
        inputs = node_inputs[0]
        input_layouts[name] = inputs
        layout = _output_layout(groups, name, layer, kind, inputs, output_groups)
        if layout is not None:
            layouts[(name, 0, 0)] = layout

    for output in config["output_layers"]:
        ref = (output[0], output[1], output[2])
        for group in layouts.get(ref, ()):
            groups.freeze(group, OUTPUT_LAYER)
    return FilterPlan(groups, input_layouts, kinds, output_groups, not_handled)


def _frozen_layout(groups: _Groups, layer, reason: str, node_index: int = 0) -> tuple[int, ...]:
    """A new frozen group for ``layer``'s output channels (at node ``node_index``)."""
    shape = layer.get_output_shape_at(node_index) if len(layer.inbound_nodes) > 1 else layer.output_shape
    return (groups.new(_channels(shape), frozen=reason),)


def _freeze_all(groups: _Groups, layouts_in, reason: str) -> None:
    for layout in layouts_in:
        for group in layout:
            groups.freeze(group, reason)


def _output_layout(groups: _Groups, name: str, layer, kind: str, inputs: list,
                   output_groups: dict[str, int]) -> Optional[tuple[int, ...]]:
    """The channel groups of the output of layer ``name`` of ``kind`` (not opaque) called on ``inputs``.

    A producer gets a new group (recorded in ``output_groups``); a merge couples its
    inputs' groups, or freezes them when their channels do not line up.
    """
    if kind == "producer":
        in_size = sum(groups.size[g] for g in inputs[0])
        parts = getattr(layer, "groups", 1)
        if parts > 1:
            _freeze_all(groups, inputs, GROUPED_INPUT.format(layer=name))
        elif in_size != layer.kernel.shape[-2]:
            _freeze_all(groups, inputs, CANNOT_REWIRE.format(layer=name, kind=type(layer).__name__))
        group = groups.new(layer.kernel.shape[-1], producer=name, parts=parts)
        if layer.get_config().get("activation") in CHANNEL_ACTIVATIONS:
            groups.freeze(group, SOFTMAX_OVER_CHANNELS)
        output_groups[name] = group
        return (group,)
    if kind in ("depthwise", "batch_norm", "channelwise", "pass"):
        return inputs[0]
    if kind == "merge":
        first = inputs[0]
        sizes = [tuple(groups.size[g] for g in layout) for layout in inputs]
        if len(set(sizes)) == 1:
            for layout in inputs[1:]:
                for a, b in zip(first, layout):
                    groups.union(a, b)
            return first
        _freeze_all(groups, inputs, MERGE_MISMATCH)
        return _frozen_layout(groups, layer, MERGE_MISMATCH)
    if kind == "concat":
        return tuple(g for layout in inputs for g in layout)
    if kind == "flatten":
        repeat = int(np.prod(layer.input_shape[1:-1])) if len(layer.input_shape) > 2 else 1
        return inputs[0] * repeat
    return None
