"""``prune`` with ``structure: filters``: whole output channels removed, consumers rewired.

Channel (filter) pruning makes the model *smaller in every dimension*, so it runs
faster on any kernel (zeroed weights do not speed up int8 or XNNPACK-on-x86
kernels; fewer channels do). Each Conv1D/Conv2D/Dense output channel gets a score,
the L1 or L2 norm of its kernel slice (Li et al., 2017, "Pruning Filters for
Efficient ConvNets"); the lowest-scoring channels are removed and every layer that
reads them is sliced to match.

How channels flow through the graph:

- **Producers** (Conv1D, Conv2D, Dense; channels last) make a new channel group:
  their ``filters``/``units`` shrink, their kernels lose output columns, and every
  consuming producer loses the matching input rows. A grouped convolution
  (``groups`` g > 1) keeps the same number of outputs in each of its g groups, and
  the channels that reach it are kept (its input slices must stay equal).
- **Pass-through** layers keep the channels of their input: BatchNormalization
  (gamma, beta and moving statistics sliced), PReLU (its per-channel slopes
  sliced; a slope shared by all channels passes them as is), Normalization
  (per-channel mean and variance from ``adapt()`` sliced), Rescaling by scalars, DepthwiseConv2D with
  ``depth_multiplier`` 1 (depthwise kernel and bias sliced), activations other than
  softmax, Dropout and its variants, pooling and global pooling, padding,
  cropping, up-sampling.
- **Element-wise merges** (Add, Subtract, Multiply, Average, Maximum, Minimum) need
  the same channels on every input: their groups are *coupled* and pruned together
  with one mask, chosen from the summed norms of all producers of the group.
- **Concatenate** (on the channel axis) lays its inputs' groups side by side; each
  keeps its own mask.
- **Flatten** (channels last, static shape) repeats the channel layout once per
  spatial position, so a Dense after it loses the matching flattened rows.
- Anything else (Reshape, Permute, SeparableConv2D, Conv2DTranspose, LayerNormalization,
  softmax over channels, lambda ops, nested models, layers called more than once)
  keeps the channels that reach it: those groups are not pruned and the layers
  that produce them are listed in ``skipped`` with the reason. The model's output
  channels (the classes) and the model's input channels are never removed.

``sparsity`` is the share of channels removed: per group (``scope: layer``), or
over all groups at once by norms divided by the mean norm of their group
(``scope: global``). The kept count is rounded *up* to a multiple of ``round_to``
(never below ``round_to``, never above the original count).

The new model is built from the old model's ``get_config()`` with new
``filters``/``units`` and sliced weights, so functional models with branches keep
their graph; a Sequential model comes back as a functional model with the same
layers. The input model is not changed.

Example:
    >>> from edgecomp.stages import filters
    >>> smaller, details, skipped = filters.prune_filters(model, config.PruneConfig(  # doctest: +SKIP
    ...     structure="filters", sparsity=0.5, epochs=0))
    >>> details["macs_after"] / details["macs_before"]                               # doctest: +SKIP
    0.27
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Optional

import numpy as np

from edgecomp import models, training
from edgecomp._keras import keras
from edgecomp.config import PruneConfig
from edgecomp.stages import common

log = logging.getLogger("edgecomp")

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
# Layer types whose weights are counted as MACs: output positions × kernel weights.
MAC_LAYERS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


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

    def frozen_layout(layer, reason: str, node_index: int = 0) -> tuple[int, ...]:
        shape = layer.get_output_shape_at(node_index) if len(layer.inbound_nodes) > 1 else layer.output_shape
        return (groups.new(_channels(shape), frozen=reason),)

    def freeze_all(layouts_in, reason: str) -> None:
        for layout in layouts_in:
            for group in layout:
                groups.freeze(group, reason)

    for entry in config["layers"]:
        name = entry["config"]["name"]
        layer = model.get_layer(name)
        nodes = entry.get("inbound_nodes") or []
        if not nodes:                                              # an InputLayer
            kinds[name] = "input"
            layouts[(name, 0, 0)] = frozen_layout(layer, MODEL_INPUT)
            continue
        kind, reason = ("opaque", SHARED_LAYER) if len(nodes) > 1 else _classify(layer)
        node_inputs = []
        for node_index, node in enumerate(nodes):
            refs = _node_refs(node)
            inputs = [layouts[ref] if ref in layouts else frozen_layout(model.get_layer(ref[0]), MODEL_INPUT)
                      for ref in refs]
            node_inputs.append(inputs)
            if kind == "opaque":
                message = reason if reason in (SHARED_LAYER, common.NESTED_MODEL) else \
                    CANNOT_REWIRE.format(layer=name, kind=type(layer).__name__)
                freeze_all(inputs, message)
                layouts[(name, node_index, 0)] = frozen_layout(layer, message, node_index)
        kinds[name] = kind
        if kind == "opaque":
            if common.kernel_weights(layer) or isinstance(layer, keras.Model):
                not_handled.append({"layer": name, "reason": reason or NOT_HANDLED.format(kind=type(layer).__name__)})
            continue
        inputs = node_inputs[0]
        input_layouts[name] = inputs
        if kind == "producer":
            in_size = sum(groups.size[g] for g in inputs[0])
            parts = getattr(layer, "groups", 1)
            if parts > 1:
                freeze_all(inputs, GROUPED_INPUT.format(layer=name))
            elif in_size != layer.kernel.shape[-2]:
                freeze_all(inputs, CANNOT_REWIRE.format(layer=name, kind=type(layer).__name__))
            group = groups.new(layer.kernel.shape[-1], producer=name, parts=parts)
            if layer.get_config().get("activation") in CHANNEL_ACTIVATIONS:
                groups.freeze(group, SOFTMAX_OVER_CHANNELS)
            output_groups[name] = group
            layouts[(name, 0, 0)] = (group,)
        elif kind in ("depthwise", "batch_norm", "channelwise", "pass"):
            layouts[(name, 0, 0)] = inputs[0]
        elif kind == "merge":
            first = inputs[0]
            sizes = [tuple(groups.size[g] for g in layout) for layout in inputs]
            if len(set(sizes)) == 1:
                for layout in inputs[1:]:
                    for a, b in zip(first, layout):
                        groups.union(a, b)
                layouts[(name, 0, 0)] = first
            else:
                freeze_all(inputs, MERGE_MISMATCH)
                layouts[(name, 0, 0)] = frozen_layout(layer, MERGE_MISMATCH)
        elif kind == "concat":
            layouts[(name, 0, 0)] = tuple(g for layout in inputs for g in layout)
        elif kind == "flatten":
            repeat = int(np.prod(layer.input_shape[1:-1])) if len(layer.input_shape) > 2 else 1
            layouts[(name, 0, 0)] = inputs[0] * repeat

    for output in config["output_layers"]:
        ref = (output[0], output[1], output[2])
        for group in layouts.get(ref, ()):
            groups.freeze(group, OUTPUT_LAYER)
    return FilterPlan(groups, input_layouts, kinds, output_groups, not_handled)


# ---- choosing channels --------------------------------------------------------------


def channel_norms(kernel: np.ndarray, criterion: str) -> np.ndarray:
    """L1 or L2 norm of each output channel (last axis) of a Conv/Dense kernel."""
    matrix = kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
    if criterion == "l2":
        return np.sqrt(np.sum(matrix**2, axis=0))
    return np.sum(np.abs(matrix), axis=0)


def kept_count(channels: int, wanted: int, round_to: int) -> int:
    """``wanted`` rounded up to a multiple of ``round_to``, at least ``round_to``, at most ``channels``."""
    rounded = max(round_to, math.ceil(max(wanted, 1) / round_to) * round_to)
    return min(channels, rounded)


def channel_scores(model, filter_plan: FilterPlan, criterion: str) -> dict[int, np.ndarray]:
    """Root → summed channel norms of the group's producers, for every group that may be pruned."""
    groups = filter_plan.groups
    return {root: sum(channel_norms(model.get_layer(name).kernel.numpy(), criterion)
                      for name in groups.producers[root])
            for root in groups.roots() if root not in groups.frozen and groups.producers.get(root)}


def masks_for(scores: dict[int, np.ndarray], kept: dict[int, int],
              parts: Optional[dict[int, int]] = None) -> dict[int, np.ndarray]:
    """Root → mask keeping the ``kept[root]`` highest-scoring channels (all channels of roots not in ``kept``).

    A root with ``parts[root]`` = g (a grouped convolution's output) keeps ``kept / g`` channels in each of its
    g equal slices, so every group of the convolution keeps as many outputs.
    """
    masks = {}
    for root, score in scores.items():
        slices = (parts or {}).get(root, 1)
        width, each = len(score) // slices, kept.get(root, len(score)) // slices
        mask = np.zeros(len(score), bool)
        for start in range(0, len(score), width):
            mask[start + np.argsort(-score[start:start + width], kind="stable")[:each]] = True
        masks[root] = mask
    return masks


def step(filter_plan: FilterPlan, root: int, round_to: int) -> int:
    """Kept counts of ``root`` are multiples of this: ``round_to``, and of a grouped convolution's groups."""
    return math.lcm(round_to, filter_plan.groups.parts.get(root, 1))


def choose_masks(model, filter_plan: FilterPlan, params: PruneConfig,
                 validation: Optional[tuple[np.ndarray, np.ndarray]] = None
                 ) -> tuple[dict[int, np.ndarray], list[dict], Optional[dict]]:
    """``(root → kept-channel mask, group rows, sensitivity record or None)`` for every group that may be pruned.

    ``validation`` (inputs, labels) is needed by ``scope: sensitivity`` only.
    """
    groups = filter_plan.groups
    scores = channel_scores(model, filter_plan, params.criterion)
    wanted: dict[int, int] = {}
    if params.scope == "global" and scores:
        normalized = {root: s / max(float(np.mean(s)), 1e-30) for root, s in scores.items()}
        values = np.concatenate([normalized[root] for root in scores])
        owners = np.concatenate([np.full(len(normalized[root]), root) for root in scores])
        removed = np.argsort(values, kind="stable")[: int(round(params.sparsity * len(values)))]
        counts = {root: int(np.sum(owners[removed] == root)) for root in scores}
        wanted = {root: len(scores[root]) - counts[root] for root in scores}
    else:
        wanted = {root: math.ceil((1.0 - params.sparsity) * len(s) - 1e-9) for root, s in scores.items()}
    kept = {root: kept_count(len(scores[root]), wanted[root], step(filter_plan, root, params.round_to))
            for root in scores}
    sensitivity = None
    if params.scope == "sensitivity" and scores:
        if validation is None:
            raise ValueError("scope: sensitivity needs validation data")
        kept, sensitivity = sensitivity_allocation(model, filter_plan, scores, kept, params, validation)
    masks = masks_for(scores, kept, filter_plan.groups.parts)
    rows = [{"producers": list(groups.producers[root]), "channels_before": len(score), "channels_after": kept[root]}
            for root, score in scores.items()]
    return masks, rows, sensitivity


# ---- sensitivity: per-group ratios by measured loss --------------------------------------

# The per-group sparsities ``scope: sensitivity`` measures (kept counts rounded up to ``round_to``, deduplicated).
SENSITIVITY_LEVELS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)


def _cross_entropy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of ``model`` on ``(x, y)`` (softmax heads and logit heads alike)."""
    outputs = model.predict(x, batch_size=256, verbose=0).astype(np.float64)
    if not training.ends_with_softmax(model):
        outputs = np.exp(outputs - outputs.max(axis=-1, keepdims=True))
        outputs /= outputs.sum(axis=-1, keepdims=True)
    return float(-np.mean(np.log(np.clip(outputs[np.arange(len(y)), y], 1e-12, None))))


def _cost(model) -> tuple[int, int]:
    """(params, MACs) of the model's Conv/Depthwise/Dense layers."""
    costs = layer_costs(model).values()
    return sum(c["params"] for c in costs), sum(c["macs"] for c in costs)


# Re-solves when the rewritten model saves less than the additive estimate (before falling back to uniform).
SENSITIVITY_ROUNDS = 5
# The knapsack's resolution: savings are counted in steps of goal / SAVING_STEPS.
SAVING_STEPS = 400


def _least_loss(options: dict[int, dict[int, tuple[float, float]]], goal: float) -> dict[int, int]:
    """One kept count per group minimizing the summed loss increase with summed savings ≥ ``goal``.

    A multiple-choice knapsack over savings in steps of ``goal / SAVING_STEPS`` (rounded
    down, so the estimate never overstates); every group's own "keep all" option costs
    nothing and saves nothing. Falls back to the most saving option of every group when
    even those do not reach ``goal``.
    """
    if goal <= 0:
        return {root: max(choices) for root, choices in options.items()}
    unit = goal / SAVING_STEPS
    best: dict[int, tuple[float, dict[int, int]]] = {0: (0.0, {})}     # capped saving steps → (loss, choice)
    for root, choices in options.items():
        merged: dict[int, tuple[float, dict[int, int]]] = {}
        for steps, (loss, chosen) in best.items():
            for count, (increase, saved) in choices.items():
                reached = min(SAVING_STEPS, steps + int(math.floor(saved / unit + 1e-9)))
                candidate = (loss + increase, {**chosen, root: count})
                if reached not in merged or candidate[0] < merged[reached][0]:
                    merged[reached] = candidate
        best = merged
    if SAVING_STEPS in best:
        return best[SAVING_STEPS][1]
    return {root: min(choices, key=lambda count: -choices[count][1]) for root, choices in options.items()}


def sensitivity_allocation(model, filter_plan: FilterPlan, scores: dict[int, np.ndarray], uniform: dict[int, int],
                           params: PruneConfig, validation) -> tuple[dict[int, int], dict]:
    """Per-group kept channels that cost the validation loss least for the uniform allocation's savings.

    Each group is pruned alone at each of ``SENSITIVITY_LEVELS`` and the rewritten
    model's validation cross-entropy is measured (no fine-tuning). Then one count per
    group is chosen that minimizes the summed loss increase while saving at least
    what ``sparsity`` applied to every group saves (params and MACs, each relative
    to the model's; checked on the rewritten model, re-solved when the estimate
    fell short). Li et al. (2017) prune sensitive layers less by hand; this measures it.

    Returns:
        ``(root → kept channels, record)``, the record listing each group's measured loss increase.
    """
    x, y = validation
    base_loss = _cross_entropy(model, x, y)
    base_params, base_macs = _cost(model)

    def saving(pruned) -> float:
        params_after, macs_after = _cost(pruned)
        return (base_params - params_after) / max(base_params, 1) + (base_macs - macs_after) / max(base_macs, 1)

    goal = saving(rewrite(model, filter_plan, masks_for(scores, uniform, filter_plan.groups.parts)))
    options: dict[int, dict[int, tuple[float, float]]] = {}     # root → kept → (loss increase, saving)
    for number, (root, score) in enumerate(scores.items(), start=1):
        log.info("prune filters (sensitivity): group %d of %d (%s, %d channels) pruned alone at %d levels",
                 number, len(scores), ", ".join(filter_plan.groups.producers[root]), len(score),
                 len(SENSITIVITY_LEVELS))
        options[root] = {len(score): (0.0, 0.0)}
        for level in SENSITIVITY_LEVELS:
            count = kept_count(len(score), math.ceil((1.0 - level) * len(score) - 1e-9),
                               step(filter_plan, root, params.round_to))
            if count in options[root]:
                continue
            pruned = rewrite(model, filter_plan, masks_for(scores, {root: count}, filter_plan.groups.parts))
            options[root][count] = (_cross_entropy(pruned, x, y) - base_loss, saving(pruned))
    kept, wanted = _least_loss(options, goal), goal
    for _ in range(SENSITIVITY_ROUNDS):          # savings are not quite additive: ask more until the real model meets it
        shortfall = goal - saving(rewrite(model, filter_plan, masks_for(scores, kept, filter_plan.groups.parts)))
        if shortfall <= 1e-9:
            break
        wanted += shortfall
        kept = _least_loss(options, wanted)
    else:
        kept = uniform                           # never less saving than asked
    record = {"levels": list(SENSITIVITY_LEVELS), "validation_samples": int(len(y)),
              "groups": [{"producers": list(filter_plan.groups.producers[root]), "channels": len(scores[root]),
                          "loss_increase": {str(count): round(loss, 5) for count, (loss, _) in options[root].items()
                                            if count != len(scores[root])},
                          "channels_uniform": uniform[root], "channels_chosen": kept[root]}
                         for root in scores]}
    log.info("prune filters (sensitivity): %s", ", ".join(
        f"{filter_plan.groups.producers[root][0]} {len(scores[root])}→{kept[root]}" for root in scores))
    return kept, record


# ---- the rewrite -------------------------------------------------------------------------


def rewrite(model, filter_plan: FilterPlan, masks: dict[int, np.ndarray]):
    """A new model with the masked channels removed and every consumer's weights sliced to match."""
    groups = filter_plan.groups
    config = copy.deepcopy(model.get_config())
    kept = {name: int(masks[groups.find(group)].sum())
            for name, group in filter_plan.output_groups.items() if groups.find(group) in masks}
    for entry in config["layers"]:
        # Built by the functional call rather than from build_config (as in low_rank).
        entry.pop("build_config", None)
        name = entry["config"]["name"]
        if name in kept:
            key = "units" if "units" in entry["config"] else "filters"
            entry["config"][key] = kept[name]
    scope = {type(layer).__name__: type(layer) for layer in model.layers}
    with keras.utils.custom_object_scope(scope):
        rebuilt = keras.Model.from_config(config)
    for layer in rebuilt.layers:
        if not layer.weights:
            continue
        old = model.get_layer(layer.name)
        layer.set_weights(_sliced_weights(old, filter_plan, masks))
    return rebuilt


def _sliced_weights(layer, filter_plan: FilterPlan, masks) -> list[np.ndarray]:
    weights = layer.get_weights()
    kind = filter_plan.kinds.get(layer.name)
    if kind not in ("producer", "depthwise", "batch_norm", "channelwise"):
        return weights
    in_mask = filter_plan.layout_mask(filter_plan.input_layouts[layer.name][0], masks)
    if kind == "producer":
        group = filter_plan.groups.find(filter_plan.output_groups[layer.name])
        out_mask = masks.get(group, np.ones(layer.kernel.shape[-1], bool))
        if len(in_mask) != layer.kernel.shape[-2]:
            in_mask = np.ones(layer.kernel.shape[-2], bool)
        kernel = np.compress(out_mask, np.compress(in_mask, weights[0], axis=-2), axis=-1)
        return [kernel] + [np.compress(out_mask, w, axis=-1) for w in weights[1:]]
    if kind == "depthwise":
        return [np.compress(in_mask, weights[0], axis=-2)] + [np.compress(in_mask, w, axis=-1) for w in weights[1:]]
    # BN's gamma, beta, mean, variance; PReLU's alpha; Normalization's mean and variance (its count is a scalar)
    return [np.compress(in_mask, w, axis=-1) if np.ndim(w) else w for w in weights]


# ---- records -----------------------------------------------------------------------------


def layer_costs(model) -> dict[str, dict]:
    """Per Conv/DepthwiseConv/Dense layer: type, input/output channels, params and MACs.

    MACs are output positions (the output's spatial size, 1 for a flat Dense) times
    kernel weights, i.e. one multiply-accumulate per kernel weight per position.
    """
    costs = {}
    for layer in model.layers:
        if type(layer) not in MAC_LAYERS:
            continue
        kernel_shape = tuple(int(d) for d in _kernel(layer).shape)
        output_shape = layer.output_shape
        positions = int(np.prod([d for d in output_shape[1:-1]])) if len(output_shape) > 2 else 1
        channels_in = kernel_shape[-2]
        channels_out = kernel_shape[-2] * kernel_shape[-1] if type(layer) is keras.layers.DepthwiseConv2D \
            else kernel_shape[-1]
        costs[layer.name] = {
            "type": type(layer).__name__, "channels_in": channels_in, "channels_out": channels_out,
            "params": int(sum(np.prod(w.shape) for w in layer.weights)),
            "macs": int(positions * np.prod(kernel_shape)),
        }
    return costs


def _kernel(layer):
    """The layer's kernel variable (``depthwise_kernel`` for DepthwiseConv2D)."""
    return layer.depthwise_kernel if type(layer) is keras.layers.DepthwiseConv2D else layer.kernel


def _skipped(filter_plan: FilterPlan) -> list[dict]:
    groups = filter_plan.groups
    skipped = list(filter_plan.not_handled)
    for name, group in filter_plan.output_groups.items():
        reason = groups.frozen.get(groups.find(group))
        if reason:
            skipped.append({"layer": name, "reason": reason})
    return skipped


def prune_filters(model, params: PruneConfig, validation: Optional[tuple[np.ndarray, np.ndarray]] = None):
    """Removes channels as ``params`` asks; returns ``(new model, details, skipped)`` without fine-tuning.

    Args:
        model: a functional or Sequential tf_keras model (not changed).
        params: ``sparsity``, ``criterion``, ``scope`` and ``round_to`` are used.
        validation: ``(inputs, labels)`` that ``scope: sensitivity`` measures on.

    Returns:
        The pruned model (functional), the record's details (per-layer channels,
        params and MACs before and after, totals, coupled groups) and the layers
        whose channels were kept, with why.
    """
    source = models.as_functional(model)
    filter_plan = plan(source)
    masks, group_rows, sensitivity = choose_masks(source, filter_plan, params, validation)
    pruned = rewrite(source, filter_plan, masks)
    before, after = layer_costs(source), layer_costs(pruned)
    rows = [{"layer": name, "type": cost["type"],
             "channels_in_before": cost["channels_in"], "channels_in_after": after[name]["channels_in"],
             "channels_before": cost["channels_out"], "channels_after": after[name]["channels_out"],
             "params_before": cost["params"], "params_after": after[name]["params"],
             "macs_before": cost["macs"], "macs_after": after[name]["macs"]}
            for name, cost in before.items()]
    channels_before = sum(row["channels_before"] for row in group_rows)
    channels_after = sum(row["channels_after"] for row in group_rows)
    details = {
        "structure": "filters", "criterion": params.criterion, "scope": params.scope,
        "channel_sparsity": params.sparsity, "round_to": params.round_to,
        "achieved_channel_sparsity": round(1 - channels_after / channels_before, 4) if channels_before else 0.0,
        "params_before": models.count_params(source), "params_after": models.count_params(pruned),
        "macs_before": sum(cost["macs"] for cost in before.values()),
        "macs_after": sum(cost["macs"] for cost in after.values()),
        "groups": [row for row in group_rows if len(row["producers"]) > 1 or row["channels_after"] !=
                   row["channels_before"]],
        "layers": rows,
    }
    if "flatten" in filter_plan.kinds.values():
        details["flatten"] = "channels feeding a Flatten are pruned too; the Dense after it loses the matching " \
                             "flattened rows"
    if sensitivity:
        details["sensitivity"] = sensitivity
    details["params_ratio"] = round(details["params_after"] / details["params_before"], 4)
    details["macs_ratio"] = round(details["macs_after"] / details["macs_before"], 4) if details["macs_before"] \
        else None
    return pruned, details, _skipped(filter_plan)


def apply(model, params: PruneConfig, context):
    """Returns ``(channel-pruned and fine-tuned model, StageRecord)``; ``model`` is not changed."""
    accuracy_before = training.accuracy(model, context.dataset.x_test, context.dataset.y_test)
    dataset = context.dataset
    validation = (dataset.x_val, dataset.y_val) if len(dataset.x_val) else \
        (dataset.x_train[:512], dataset.y_train[:512])
    pruned, details, skipped = prune_filters(model, params, validation)
    details["accuracy_before_pruning"] = accuracy_before
    details["accuracy_before_finetune"] = training.accuracy(pruned, context.dataset.x_test, context.dataset.y_test)
    log.info("prune filters: params %s → %s, MACs %s → %s, accuracy %.4f → %.4f before fine-tuning %d epochs",
             f"{details['params_before']:,}", f"{details['params_after']:,}", f"{details['macs_before']:,}",
             f"{details['macs_after']:,}", accuracy_before, details["accuracy_before_finetune"], params.epochs)
    if skipped:
        log.info("prune filters: %d layer(s) keep their channels; see the report", len(skipped))
    # The channels are gone before training, so nothing restored can undo the pruning: fine-tune with early
    # stopping (best weights restored) for up to epochs + recovery_epochs. 10 epochs alone left four of six corpus
    # models 1.7-4.7 points short at 0.5.
    history = training.fit(pruned, context.dataset, epochs=params.epochs + params.recovery_epochs,
                           learning_rate=params.learning_rate, batch_size=context.config.data.batch_size,
                           log_dir=context.log_dir, patience=common.RECOVERY_PATIENCE if params.recovery_epochs else 0)
    if history is not None:
        details["finetune"] = {"epochs": len(history.epoch), "training": history.notes}
    return pruned, common.record("prune", pruned, context, skipped, details)
