"""What the tfmot stages share: fine-tuning, recovery, weight statistics, records.

Early stopping is off while a stage's schedule runs: restoring "best" weights from an
earlier epoch would undo pruning that the schedule applied later. Once the schedule
has ended, ``recover`` fine-tunes on with early stopping when validation accuracy
is still short of the model the stage was given.
"""

from __future__ import annotations

import logging

import numpy as np

from edgecomp import models, training
from edgecomp.report import StageRecord

log = logging.getLogger("edgecomp")

# Reasons a layer is left as it is; named so reports and tests can rely on them.
NOT_SUPPORTED = "layer type not supported by tfmot for this technique"
NESTED_MODEL = "nested model: its layers are left as they are; build the model flat to compress them"
TOO_SMALL = "kernel has fewer weights than clusters"
BN_NOT_AFTER_CONV = "BatchNormalization not directly after a Conv: not folded; only its output range is learned"
UNKNOWN_ACTIVATION = "activation not supported by tfmot QAT: only the output range is learned"
PREPROCESSING = "preprocessing layer: only the output range is learned"
NOT_REWRITTEN = "TFOpLambda the preparer could not rewrite"
NOT_WRAPPABLE = ("tfmot's quantize wrapper cannot build a layer called with several inputs (query, value, ...): "
                 "left float during QAT, quantized at conversion")
OUTPUT_ONLY = "not in tfmot's QAT registry: only the output range is learned, weights quantized at conversion"


def kernel_weights(layer) -> list[np.ndarray]:
    """The layer's kernels (``kernel``, ``depthwise_kernel``, ...), not biases or BN statistics."""
    return [
        weight.numpy()
        for weight in layer.weights
        if "kernel" in weight.name.split("/")[-1] and weight.trainable
    ]


def layer_statistics(model) -> dict[str, dict]:
    """Per layer with a kernel: weights, zero share and distinct values of its kernels."""
    statistics = {}
    for layer in model.layers:
        kernels = kernel_weights(layer)
        if not kernels:
            continue
        values = np.concatenate([k.reshape(-1) for k in kernels])
        statistics[layer.name] = {
            "weights": int(values.size),
            "sparsity": float(np.mean(values == 0.0)),
            "unique_values": int(np.unique(values).size),
        }
    return statistics


# Epochs without validation-loss improvement that end a stage's recovery fine-tuning (and filter pruning's). 10 epochs
# at patience 2 ended still improving on 6 of 9 corpus models at sparsity 0.8 (batchnorm_odd validation 0.90 -> 0.95,
# best at the last). Patience 3 stopped on the noise of 143 validation images: with 8, filters at 0.5 went from 4/6 to
# 6/6 corpus models within 1.5 points (awkward_cnn -2.23 -> -1.11, conv1d_kws -2.10 -> -0.50), low_rank's
# batchnorm_odd from -1.67 to -0.28, for 10-16 s more a run.
RECOVERY_PATIENCE = 8


# Validation points a stage may end below the model it was given before ``recover`` fine-tunes on.
RECOVERY_POINTS = 0.5


# Training samples a stage measures on when the run has no validation split.
FALLBACK_SAMPLES = 512


def measurement_split(context) -> tuple:
    """``(x, y)`` a stage chooses by: the validation split, else the first ``FALLBACK_SAMPLES`` training samples."""
    dataset = context.dataset
    if len(dataset.x_val):
        return dataset.x_val, dataset.y_val
    return dataset.x_train[:FALLBACK_SAMPLES], dataset.y_train[:FALLBACK_SAMPLES]


def validation_accuracy(model, context) -> float | None:
    """Top-1 accuracy on the validation split, or None without one."""
    dataset = context.dataset
    if len(dataset.x_val) == 0:
        return None
    return training.accuracy(model, dataset.x_val, dataset.y_val)


def recover(model, reference_accuracy: float | None, context, *, stage: str, epochs: int, learning_rate: float,
            callbacks=()) -> dict | None:
    """Fine-tunes ``model`` on when its validation accuracy ended short of the stage's input; None otherwise.

    Runs when ``model`` scores more than ``RECOVERY_POINTS`` below ``reference_accuracy``
    (the validation accuracy of the model the stage was given): up to ``epochs`` more
    epochs, early stopping on the validation loss (``RECOVERY_PATIENCE``), restoring
    only weights from these epochs, which all carry the stage's compression.

    Returns:
        ``{"validation_before_stage", "validation_before_recovery", "validation_after_recovery",
        "epochs", "training"}``, or None when no recovery ran.
    """
    before = validation_accuracy(model, context)
    if epochs <= 0 or reference_accuracy is None or before is None or \
            (reference_accuracy - before) * 100 <= RECOVERY_POINTS:
        return None
    log.info("%s: validation accuracy %.4f after fine-tuning, %.4f before the stage; fine-tuning up to %d more "
             "epochs with early stopping", stage, before, reference_accuracy, epochs)
    history = training.fit(model, context.dataset, epochs=epochs, learning_rate=learning_rate,
                           batch_size=context.config.data.batch_size, log_dir=context.log_dir,
                           patience=RECOVERY_PATIENCE, callbacks=list(callbacks))
    return {"validation_before_stage": reference_accuracy, "validation_before_recovery": before,
            "validation_after_recovery": validation_accuracy(model, context),
            "epochs": len(history.epoch) if history else 0, "training": history.notes if history else []}


def total_sparsity(statistics: dict[str, dict]) -> float:
    """Zero share over all kernels listed in ``statistics``."""
    weights = sum(s["weights"] for s in statistics.values())
    zeros = sum(s["weights"] * s["sparsity"] for s in statistics.values())
    return float(zeros / weights) if weights else 0.0


def finetune(model, context, epochs: int, learning_rate: float, callbacks=(), name: str = "stage"):
    """Fits ``model`` for ``epochs`` on the run's data, with ``callbacks``, no early stopping."""
    return training.fit(
        model, context.dataset, epochs=epochs, learning_rate=learning_rate,
        batch_size=context.config.data.batch_size, log_dir=context.log_dir, patience=0,
        callbacks=list(callbacks),
    )


def steps_per_epoch(context) -> int:
    """Optimizer steps in one epoch over the train split."""
    batch = context.config.data.batch_size
    return max(1, -(-len(context.dataset.x_train) // batch))


def record(stage: str, model, context, skipped: list[dict], details: dict) -> StageRecord:
    """A StageRecord with params, non-zero params and test accuracy of ``model``."""
    return StageRecord(
        stage=stage,
        params=models.count_params(model),
        nonzero_params=models.count_nonzero_params(model),
        metrics={"accuracy": training.accuracy(model, context.dataset.x_test, context.dataset.y_test)},
        seconds=0.0,
        skipped=skipped,
        details=details,
    )
