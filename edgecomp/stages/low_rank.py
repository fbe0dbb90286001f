"""SVD low-rank rewriting: each large Dense or convolution becomes two thin layers.

A Dense with an m×n kernel ``W = U Σ Vᵀ`` becomes ``Dense(r, linear, no bias)`` with
``U_r √Σ_r`` followed by ``Dense(n)`` with ``√Σ_r V_rᵀ``, the original bias and
activation. A k×k convolution C→N is factorized through its kernel reshaped to
(k·k·C)×N: ``Conv(k×k, C→r, no bias)`` then ``Conv(1×1, r→N)`` (``mode: channel``,
Denton et al. 2014), or, for 2-D convolutions, through the kernel reshaped to
(k_h·C)×(k_w·N): ``Conv(k_h×1, C→r)`` then ``Conv(1×k_w, r→N)`` (``mode: spatial``,
Jaderberg et al. 2014 / Tai et al. 2016). The second layer keeps the original name,
so everything downstream (branches, residual adds, concatenations) is untouched; the
first is named ``<name>_lowrank``. The result is a plain dense model of the same
Keras classes: it converts, quantizes and prunes like any other.

Example:
    >>> from edgecomp.stages import low_rank
    >>> smaller = low_rank.factorize(model, {"dense_1": 32})      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import math
import re

import numpy as np

from edgecomp import models, training
from edgecomp._keras import keras
from edgecomp.config import LowRankConfig
from edgecomp.stages import common

log = logging.getLogger("edgecomp")
SUFFIX = "_lowrank"
SENSITIVITY_RATIOS = (0.125, 0.25, 0.5, 0.75)


# ---- the algebra ----------------------------------------------------------------


def kernel_matrix(kernel: np.ndarray, mode: str) -> np.ndarray:
    """The matrix whose SVD gives the two factors: (k·k·C)×N (channel) or (k_h·C)×(k_w·N) (spatial)."""
    if mode == "spatial":
        k_h, k_w, channels, filters = kernel.shape
        return kernel.transpose(0, 2, 1, 3).reshape(k_h * channels, k_w * filters)
    return kernel.reshape(-1, kernel.shape[-1])


def split_kernel(kernel: np.ndarray, rank: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """The two factor kernels of ``kernel`` at ``rank`` (shapes ready for the two layers)."""
    u, s, vt = np.linalg.svd(kernel_matrix(kernel, mode).astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    first, second = u[:, :rank] * root, root[:, None] * vt[:rank]
    if kernel.ndim == 2:                                     # Dense
        return first.astype(np.float32), second.astype(np.float32)
    if mode == "spatial":
        k_h, k_w, channels, filters = kernel.shape
        first = first.reshape(k_h, 1, channels, rank)
        second = second.reshape(rank, k_w, filters).transpose(1, 0, 2).reshape(1, k_w, rank, filters)
        return first.astype(np.float32), second.astype(np.float32)
    spatial = kernel.shape[:-2]                              # (k,) for Conv1D, (k, k) for Conv2D
    first = first.reshape(*spatial, kernel.shape[-2], rank)
    second = second.reshape(*([1] * len(spatial)), rank, kernel.shape[-1])
    return first.astype(np.float32), second.astype(np.float32)


def factor_params(kernel_shape: tuple, rank: int, mode: str) -> int:
    """Weights of the two factor kernels (biases not counted, they do not change)."""
    rows, columns = kernel_matrix(np.empty(kernel_shape, np.float32), mode).shape
    return rank * (rows + columns)


def choose_rank(singular_values: np.ndarray, *, energy: float | None, rank_ratio: float | None,
                multiple: int) -> int:
    """Smallest rank keeping ``energy`` of Σ², or ``rank_ratio`` of the full rank; rounded up to ``multiple``."""
    full = len(singular_values)
    if rank_ratio is not None:
        rank = math.ceil(rank_ratio * full)
    else:
        cumulative = np.cumsum(singular_values**2) / max(float(np.sum(singular_values**2)), 1e-30)
        rank = int(np.searchsorted(cumulative, (energy if energy is not None else 0.95) - 1e-12) + 1)
    rank = max(1, rank)
    return min(full, math.ceil(rank / multiple) * multiple)


def energy_kept(singular_values: np.ndarray, rank: int) -> float:
    total = float(np.sum(singular_values**2))
    return float(np.sum(singular_values[:rank] ** 2) / total) if total else 1.0


# ---- which layers -----------------------------------------------------------------


def _unsupported_reason(layer, mode: str) -> str | None:
    config = layer.get_config()
    if config.get("groups", 1) != 1:
        return "grouped convolution"
    if config.get("data_format") == "channels_first":
        return "channels_first convolution"
    if mode == "spatial" and type(layer) is not keras.layers.Conv2D:
        return "mode spatial applies to Conv2D only"
    if mode == "spatial" and min(layer.kernel_size) < 2:
        return "1×1 convolution has no spatial extent to factorize"
    return None


def candidates(model, params: LowRankConfig) -> tuple[list, list[dict]]:
    """``(layers to consider, skipped)``: exact Dense/Conv1D/Conv2D types, filtered by name and size."""
    chosen, skipped = [], []
    for layer in model.layers:
        if type(layer) not in (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D):
            if isinstance(layer, keras.Model):
                skipped.append({"layer": layer.name, "reason": common.NESTED_MODEL})
            continue
        if params.layers and not any(re.fullmatch(pattern, layer.name) for pattern in params.layers):
            continue
        if any(re.fullmatch(pattern, layer.name) for pattern in params.exclude):
            continue
        reason = _unsupported_reason(layer, params.mode)
        weights = int(np.prod(layer.kernel.shape))
        if reason is None and weights < params.min_params:
            reason = f"{weights:,} kernel weights < min_params {params.min_params:,}"
        if reason:
            skipped.append({"layer": layer.name, "reason": reason})
        else:
            chosen.append(layer)
    return chosen, skipped


# ---- the rewrite --------------------------------------------------------------------


def factorize(model, ranks: dict[str, int], mode: str = "channel"):
    """A new model where each layer named in ``ranks`` is replaced by its two rank-r factors.

    Args:
        model: a functional or Sequential tf_keras model (not changed).
        ranks: layer name → rank (any rank from 1 to the full rank of its kernel matrix).
        mode: ``channel`` or ``spatial`` (Conv2D only).

    Returns:
        The rewritten model, same input and output, weights copied or factorized.
    """
    config = copy.deepcopy(model.get_config())
    factors, taken = {}, {layer.name for layer in model.layers}
    entries = []
    for entry in config["layers"]:
        # Built by the functional call rather than from build_config, every layer creates its
        # weights under its own name scope ("conv/kernel:0"): HDF5 checkpoints need unique names.
        entry.pop("build_config", None)
        name = entry["config"]["name"]
        if name not in ranks:
            entries.append(entry)
            continue
        layer = model.get_layer(name)
        first_name = name + SUFFIX
        while first_name in taken:
            first_name += "_"
        taken.add(first_name)
        first_kernel, second_kernel = split_kernel(layer.kernel.numpy(), ranks[name], mode)
        first, second = _factor_entries(entry, first_name, ranks[name], mode, layer)
        entries += [first, second]
        factors[first_name] = [first_kernel]
        factors[name] = [second_kernel] + ([layer.bias.numpy()] if layer.use_bias else [])
    config["layers"] = entries
    scope = {type(layer).__name__: type(layer) for layer in _all_layers(model)}
    with keras.utils.custom_object_scope(scope):
        rewritten = type(model).from_config(config) if isinstance(model, keras.Sequential) \
            else keras.Model.from_config(config)
    for layer in rewritten.layers:
        if layer.name in factors:
            layer.set_weights(factors[layer.name])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return rewritten


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _factor_entries(entry: dict, first_name: str, rank: int, mode: str, layer) -> tuple[dict, dict]:
    first, second = copy.deepcopy(entry), copy.deepcopy(entry)
    first["config"].update(name=first_name, use_bias=False, activation="linear", activity_regularizer=None)
    first["name"] = first_name
    if "units" in entry["config"]:
        first["config"]["units"] = rank
    else:
        spatial = len(layer.kernel_size)
        first["config"]["filters"] = rank
        ones = [1] * spatial
        if mode == "spatial":
            k_h, k_w = layer.kernel_size
            first["config"].update(kernel_size=[k_h, 1], strides=[layer.strides[0], 1],
                                   dilation_rate=[layer.dilation_rate[0], 1])
            second["config"].update(kernel_size=[1, k_w], strides=[1, layer.strides[1]],
                                    dilation_rate=[1, layer.dilation_rate[1]])
        else:
            second["config"].update(kernel_size=ones, strides=ones, dilation_rate=ones, padding="valid")
    if "inbound_nodes" in entry:                              # functional; Sequential keeps list order
        first["inbound_nodes"] = entry["inbound_nodes"]
        second["inbound_nodes"] = [[[first_name, index, 0, {}]] for index in range(len(entry["inbound_nodes"]))]
    return first, second


# ---- the stage ---------------------------------------------------------------------------


def plan(model, params: LowRankConfig, context=None) -> tuple[dict[str, int], list[dict], list[dict]]:
    """``(ranks, per-layer rows, skipped)`` for the layers worth factorizing."""
    layers, skipped = candidates(model, params)
    spectra = {layer.name: np.linalg.svd(kernel_matrix(layer.kernel.numpy(), params.mode), compute_uv=False)
               for layer in layers}
    if params.sensitivity:
        ranks = _ranks_by_sensitivity(model, layers, spectra, params, context)
    else:
        ranks = {layer.name: choose_rank(spectra[layer.name], energy=params.energy, rank_ratio=params.rank_ratio,
                                         multiple=params.rank_multiple) for layer in layers}
    chosen, rows = {}, []
    for layer in layers:
        rank, shape = ranks.get(layer.name), tuple(layer.kernel.shape)
        before = int(np.prod(shape))
        if rank is None:
            skipped.append({"layer": layer.name, "reason": "sensitivity: kept at full size"})
            continue
        after = factor_params(shape, rank, params.mode)
        if after >= before:
            skipped.append({"layer": layer.name, "reason": f"rank {rank} saves no parameters "
                                                           f"({after:,} ≥ {before:,} kernel weights)"})
            continue
        chosen[layer.name] = rank
        rows.append({"layer": layer.name, "type": type(layer).__name__, "kernel_shape": list(shape), "rank": rank,
                     "full_rank": len(spectra[layer.name]), "params_before": before, "params_after": after,
                     "energy_kept": round(energy_kept(spectra[layer.name], rank), 6)})
    return chosen, rows, skipped


def _ranks_by_sensitivity(model, layers, spectra, params: LowRankConfig, context) -> dict[str, int]:
    """Greedy rank choice (as AIMET does): cheapest accuracy loss first until the params target is met."""
    x, y = common.measurement_split(context)
    base = training.accuracy(model, x, y)
    options = {}
    for layer in layers:
        shape, full = tuple(layer.kernel.shape), len(spectra[layer.name])
        ranks = sorted({min(full, math.ceil(math.ceil(ratio * full) / params.rank_multiple) * params.rank_multiple)
                        for ratio in SENSITIVITY_RATIOS})
        options[layer.name] = []
        for rank in ranks:
            if factor_params(shape, rank, params.mode) >= int(np.prod(shape)):
                continue
            drop = base - training.accuracy(factorize(model, {layer.name: rank}, params.mode), x, y)
            options[layer.name].append((rank, drop))
        log.info("low_rank sensitivity %s: %s", layer.name, ", ".join(f"r={r}: −{d * 100:.1f} pt"
                                                                        for r, d in options[layer.name]))
    weights = {layer.name: int(np.prod(layer.kernel.shape)) for layer in layers}
    shapes = {layer.name: tuple(layer.kernel.shape) for layer in layers}
    goal = params.target_params_ratio * sum(weights.values())
    current: dict[str, tuple[int, float]] = {}

    def total() -> int:
        return sum(factor_params(shapes[name], current[name][0], params.mode) if name in current else weights[name]
                   for name in weights)

    while total() > goal:
        steps = [(drop - (current[name][1] if name in current else 0.0), name, rank, drop)
                 for name, choices in options.items() for rank, drop in choices
                 if name not in current or rank < current[name][0]]
        if not steps:
            break
        _, name, rank, drop = min(steps, key=lambda step: (step[0], -_saved(step, current, shapes, weights, params)))
        current[name] = (rank, drop)
    return {name: rank for name, (rank, _) in current.items()}


def _saved(step, current, shapes, weights, params) -> int:
    _, name, rank, _ = step
    before = factor_params(shapes[name], current[name][0], params.mode) if name in current else weights[name]
    return before - factor_params(shapes[name], rank, params.mode)



def facts(params: LowRankConfig):
    """Low-rank rewriting is structural: the factorized layers are known before fine-tuning."""
    from edgecomp.stages import Facts

    return Facts(structural=True, checkpointed=True, recorded_as="low_rank", training_keys=("finetune_epochs", "recovery_epochs"))

def apply(model, params: LowRankConfig, context):
    """Returns ``(factorized and fine-tuned model, StageRecord)``."""
    models.check_functional(model, "low_rank")
    ranks, rows, skipped = plan(model, params, context)
    if not ranks:
        log.warning("low_rank: no layer was factorized (%d considered and skipped); see the report", len(skipped))
        training.compile_model(model, params.learning_rate)
        return model, common.record("low_rank", model, context, skipped, _details(params, rows, model, model))
    rewritten = factorize(model, ranks, params.mode)
    reference_outputs = model.predict(context.dataset.x_test[:256], verbose=0)
    for row in rows:
        kernel = model.get_layer(row["layer"]).kernel.numpy()
        first, second = split_kernel(kernel, row["rank"], params.mode)
        row["reconstruction_error"] = round(_relative_error(kernel, first, second, params.mode), 6)
    factorized_outputs = rewritten.predict(context.dataset.x_test[:256], verbose=0)
    log.info("low_rank: factorized %d layers, kernel weights %s → %s; fine-tuning %d epochs", len(rows),
             f"{sum(r['params_before'] for r in rows):,}", f"{sum(r['params_after'] for r in rows):,}",
             params.finetune_epochs)
    details = _details(params, rows, model, rewritten)
    details["accuracy_before_finetune"] = training.accuracy(rewritten, context.dataset.x_test, context.dataset.y_test)
    details["output_change_before_finetune"] = float(np.max(np.abs(factorized_outputs - reference_outputs)))
    common.finetune(rewritten, context, params.finetune_epochs, params.learning_rate)
    recovery = common.recover(rewritten, common.validation_accuracy(model, context), context, stage="low_rank",
                              epochs=params.recovery_epochs if params.finetune_epochs else 0,
                              learning_rate=params.learning_rate)
    if recovery:
        details["recovery"] = recovery
    return rewritten, common.record("low_rank", rewritten, context, skipped, details)


def _relative_error(kernel, first, second, mode) -> float:
    """‖W − W_r‖_F / ‖W‖_F of the kernel matrix."""
    matrix = kernel_matrix(kernel, mode)
    approximation = first.reshape(matrix.shape[0], -1) @ second.reshape(second.shape[-2], -1) \
        if mode == "channel" else _spatial_product(first, second, matrix.shape)
    return float(np.linalg.norm(matrix - approximation) / max(np.linalg.norm(matrix), 1e-30))


def _spatial_product(first, second, shape):
    k_h, _, channels, rank = first.shape
    _, k_w, _, filters = second.shape
    left = first.reshape(k_h * channels, rank)
    right = second.reshape(k_w, rank, filters).transpose(1, 0, 2).reshape(rank, k_w * filters)
    return (left @ right).reshape(shape)


def _details(params: LowRankConfig, rows: list[dict], before_model, after_model) -> dict:
    before = sum(row["params_before"] for row in rows)
    after = sum(row["params_after"] for row in rows)
    return {
        "mode": params.mode, "layers": rows,
        "factorized_params_before": before, "factorized_params_after": after,
        "factorized_params_ratio": round(after / before, 4) if before else None,
        "model_params_before": models.count_params(before_model), "model_params_after": models.count_params(after_model),
    }

