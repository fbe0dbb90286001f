"""``prune``: magnitude pruning with tfmot, fine-tuned, then stripped.

``structure: unstructured`` zeroes the smallest weights of each prunable layer up to
``sparsity``; ``structure: 2:4`` keeps the 2 largest of every 4 consecutive input
weights (tfmot's m-by-n sparsity; ``sparsity`` is then 0.5 by construction);
``structure: filters`` removes whole channels instead (see ``edgecomp.stages.filters``).
``schedule: polynomial`` ramps from 0 to ``sparsity`` over the first
``ramp_share`` of the fine-tuning steps (default 0.75, so the last quarter trains
at full sparsity); ``constant`` prunes to ``sparsity`` from the first step. When the
schedule leaves validation accuracy more than half a point below the model the
stage was given, up to ``recovery_epochs`` more epochs fine-tune at full sparsity
with early stopping (``details.recovery`` says what they did). Unstructured pruning
leaves kernels with fewer than ``min_weights`` weights dense (a first conv, a small
head): on the generality corpus at 0.8 this turned −2.2, −0.7 and −4.0 points into
±0, −0.4 and −0.2 for a few percent of the zeros; each is listed in ``skipped``.

Example:
    >>> new_model, record = prune.apply(model, config.PruneConfig(sparsity=0.8, epochs=4), context)  # doctest: +SKIP
    >>> record.details["sparsity"]                                                                  # doctest: +SKIP
    0.8
"""

from __future__ import annotations

import numpy as np
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

from edgecomp._keras import keras
from edgecomp.config import PruneConfig
from edgecomp.stages import common, filters

sparsity_api = tfmot.sparsity.keras
M_BY_N_LAYERS = (keras.layers.Conv2D, keras.layers.Dense)


def _prunable(layer, structure: str, min_weights: int = 0) -> str | None:
    """None when ``layer`` can be pruned with ``structure``, else the reason it cannot."""
    if isinstance(layer, keras.Model):
        return common.NESTED_MODEL
    kernels = common.kernel_weights(layer)
    if not kernels:
        return ""  # nothing to prune; not worth reporting
    weights = sum(int(np.prod(kernel.shape)) for kernel in kernels)
    if structure == "unstructured" and weights < min_weights:
        return (f"{weights:,} weights, under prune.min_weights ({min_weights:,}): left dense (pruning a small "
                f"kernel saves little and costs accuracy; min_weights: 0 prunes it)")
    if structure == "2:4":
        if type(layer) not in M_BY_N_LAYERS:
            return "2:4 sparsity applies to Conv2D and Dense kernels only"
        inputs = common.kernel_weights(layer)[0].shape[-2]
        if inputs % 4:
            return f"2:4 sparsity needs input channels in multiples of 4, this kernel has {inputs}"
        return None
    if prune_registry.PruneRegistry._LAYERS_WEIGHTS_MAP.get(type(layer)) == []:  # noqa: SLF001
        return f"tfmot does not prune {type(layer).__name__} weights"
    if isinstance(layer, sparsity_api.PrunableLayer) or prune_registry.PruneRegistry.supports(layer):
        return None
    return common.NOT_SUPPORTED


def _schedule(params: PruneConfig, total_steps: int):
    frequency = max(1, min(100, total_steps // 20 or 1))
    if params.schedule == "constant":
        return sparsity_api.ConstantSparsity(params.sparsity, begin_step=0, frequency=frequency)
    end_step = max(1, int(total_steps * params.ramp_share))
    return sparsity_api.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=params.sparsity, begin_step=0, end_step=end_step, frequency=frequency
    )


def wrap_model(model, params: PruneConfig, total_steps: int):
    """Wraps every prunable layer in tfmot's pruning wrapper.

    Returns:
        ``(wrapped model, names of wrapped layers, skipped [{"layer", "reason"}])``.
    """
    schedule = _schedule(params, total_steps)
    skipped, pruned = [], []

    def wrap(layer):
        reason = _prunable(layer, params.structure, params.min_weights)
        if reason is None:
            pruned.append(layer.name)
            extra = {"sparsity_m_by_n": (2, 4)} if params.structure == "2:4" else {}
            return sparsity_api.prune_low_magnitude(layer, pruning_schedule=schedule, **extra)
        if reason:
            skipped.append({"layer": layer.name, "reason": reason})
        return layer

    return keras.models.clone_model(model, clone_function=wrap), pruned, skipped


def _unchanged(model, context, skipped: list[dict], why: str):
    """The stage's result when it prunes nothing: ``model`` itself, with a record that says why."""
    details = {"sparsity": 0.0, "note": f"{why}: model returned unchanged", "layers": {}, "achieved_sparsity": 0.0,
               "model_sparsity": 0.0}
    return model, common.record("prune", model, context, skipped, details)



def facts(params: PruneConfig):
    """Filter pruning is structural (fewer filters, known before fine-tuning) and leaves no zeros for later
    stages to preserve; unstructured and 2:4 pruning keep the architecture."""
    from edgecomp.stages import Facts

    filters = params.structure == "filters"
    return Facts(structural=filters, checkpointed=True, recorded_as="prune_filters" if filters else "prune",
                 training_keys=("epochs", "recovery_epochs"))

def apply(model, params: PruneConfig, context):
    """Returns ``(pruned model, StageRecord)``; ``model`` is consumed (pass a copy).

    ``structure: filters`` is handed to ``edgecomp.stages.filters``, which removes
    whole channels and returns a new, smaller model.
    """
    if params.structure == "filters":
        return filters.apply(model, params, context)
    if params.sparsity == 0.0 and params.structure == "unstructured":
        return _unchanged(model, context, [], "sparsity 0")

    total_steps = params.epochs * common.steps_per_epoch(context)
    wrapped, pruned, skipped = wrap_model(model, params, total_steps)
    if not pruned:
        common.log.warning("prune: no layer to prune (%s); the model is returned unchanged",
                           "; ".join(f"{s['layer']}: {s['reason']}" for s in skipped) or "no conv/dense kernels")
        return _unchanged(model, context, skipped, "no layer could be pruned")
    model_accuracy = common.validation_accuracy(model, context) if params.recovery_epochs else None
    common.finetune(wrapped, context, params.epochs, params.learning_rate,
                    callbacks=[sparsity_api.UpdatePruningStep()])
    # The masks are fixed once the schedule has ended: recovery trains at the target sparsity.
    recovery = common.recover(wrapped, model_accuracy, context, stage="prune", epochs=params.recovery_epochs,
                              learning_rate=params.learning_rate, callbacks=[sparsity_api.UpdatePruningStep()])
    stripped = sparsity_api.strip_pruning(wrapped)
    statistics = {name: s for name, s in common.layer_statistics(stripped).items() if name in pruned}
    details = {
        "sparsity": params.sparsity if params.structure == "unstructured" else 0.5,
        "structure": params.structure,
        "schedule": params.schedule,
        "achieved_sparsity": common.total_sparsity(statistics),
        # Zero share over every conv/dense kernel, pruned or not: what the .tflite must show.
        "model_sparsity": common.total_sparsity(common.layer_statistics(stripped)),
        "layers": statistics,
    }
    if recovery:
        details["recovery"] = recovery
    return stripped, common.record("prune", stripped, context, skipped, details)
