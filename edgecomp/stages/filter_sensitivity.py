"""``prune: {structure: filters, scope: sensitivity}``: each channel group's share chosen by measured loss.

Every group is pruned alone at each of ``SENSITIVITY_LEVELS`` (the real rewrite,
no training) and the validation cross-entropy of the result is measured; then a
multiple-choice knapsack picks one kept count per group with the least summed loss
increase that saves at least what ``scope: layer`` saves (parameters and MACs of the
Conv/Dense layers, each relative to the model's), checked on the rewritten model.

Example:
    >>> kept, record = allocate(model, plan, scores, uniform, params, (x_val, y_val))   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math

import numpy as np

from edgecomp import training
from edgecomp.config import PruneConfig
from edgecomp.stages import filters

log = logging.getLogger("edgecomp")

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
    costs = filters.layer_costs(model).values()
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


def allocate(model, filter_plan: "filters.FilterPlan", scores: dict[int, np.ndarray], uniform: dict[int, int],
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

    def pruned(kept: dict[int, int]):
        return filters.rewrite(model, filter_plan, filters.masks_for(scores, kept, filter_plan.groups.parts))

    def saving(smaller) -> float:
        params_after, macs_after = _cost(smaller)
        return (base_params - params_after) / max(base_params, 1) + (base_macs - macs_after) / max(base_macs, 1)

    goal = saving(pruned(uniform))
    options: dict[int, dict[int, tuple[float, float]]] = {}     # root → kept → (loss increase, saving)
    for number, (root, score) in enumerate(scores.items(), start=1):
        log.info("prune filters (sensitivity): group %d of %d (%s, %d channels) pruned alone at %d levels",
                 number, len(scores), ", ".join(filter_plan.groups.producers[root]), len(score),
                 len(SENSITIVITY_LEVELS))
        options[root] = {len(score): (0.0, 0.0)}
        for level in SENSITIVITY_LEVELS:
            count = filters.kept_count(len(score), math.ceil((1.0 - level) * len(score) - 1e-9),
                                       filters.step(filter_plan, root, params.round_to))
            if count in options[root]:
                continue
            alone = pruned({root: count})
            options[root][count] = (_cross_entropy(alone, x, y) - base_loss, saving(alone))
    kept, wanted = _least_loss(options, goal), goal
    for _ in range(SENSITIVITY_ROUNDS):   # savings are not quite additive: ask more until the real model meets it
        shortfall = goal - saving(pruned(kept))
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
