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
(``scope: global``), or per group as measured (``scope: sensitivity``, the default:
``edgecomp.stages.filter_sensitivity`` spends the savings of ``layer`` where they cost
the least validation loss). The kept count is rounded *up* to a multiple of
``round_to`` (never below ``round_to``, never above the original count). The channel
graph (groups, kinds, reasons) is built by ``edgecomp.stages.filter_plan``.

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
import logging
import math
from typing import Optional

import numpy as np

from edgecomp import models, training
from edgecomp._keras import keras
from edgecomp.config import PruneConfig
from edgecomp.stages import common
# The channel graph and the reasons it keeps channels live in filter_plan; re-exported for callers and tests.
from edgecomp.stages.filter_plan import (  # noqa: F401
    CANNOT_REWIRE, GROUPED_INPUT, MERGE_MISMATCH, MODEL_INPUT, NOT_HANDLED, OUTPUT_LAYER, SHARED_LAYER,
    SOFTMAX_OVER_CHANNELS, FilterPlan, plan,
)

log = logging.getLogger("edgecomp")

# Layer types whose weights are counted as MACs: output positions × kernel weights.
MAC_LAYERS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


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
        from edgecomp.stages import filter_sensitivity   # it uses this module's rewrite

        kept, sensitivity = filter_sensitivity.allocate(model, filter_plan, scores, kept, params, validation)
    masks = masks_for(scores, kept, filter_plan.groups.parts)
    rows = [{"producers": list(groups.producers[root]), "channels_before": len(score), "channels_after": kept[root]}
            for root, score in scores.items()]
    return masks, rows, sensitivity


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
    pruned, details, skipped = prune_filters(model, params, common.measurement_split(context))
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
