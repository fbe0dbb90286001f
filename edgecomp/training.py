"""Compiling, fitting and evaluating Keras models the same way in every stage.

The loss reads the model's head: logits get ``from_logits=True``, a softmax head
gets ``from_logits=False``. Training shows Keras' progress bar on a terminal and
one line per epoch otherwise, stops early on the validation loss, and logs to
TensorBoard in the run folder.

Two guards keep a model that has not learned yet from being judged too early:

- Early stopping counts no patience while validation accuracy is near chance
  (``near_chance``): a model that starts slowly is not stopped, and the weights it
  restores are from an epoch after it left chance.
- ``BatchNormRepair``: when training accuracy runs far ahead of validation
  accuracy, BatchNorm's moving statistics may simply lag behind the weights
  (keras.applications models use momentum 0.99–0.999: after a few hundred steps
  the moving statistics are still mostly their initial values, and inference-mode
  outputs are garbage while training-mode outputs are fine). The callback
  re-estimates them on training batches and keeps the result when the validation
  loss improves. What it did is written to the History's ``notes``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgecomp import distribute
from edgecomp._keras import keras
from edgecomp.data import Dataset
from edgecomp.models import ends_with_softmax
from edgecomp.native_logs import quiet

log = logging.getLogger("edgecomp")
# Training accuracy this far (in [0, 1]) above validation accuracy makes BatchNormRepair try a re-estimate.
BATCHNORM_GAP = 0.2
# Training batches the BatchNorm statistics are re-estimated on.
BATCHNORM_BATCHES = 10


def chance_accuracy(labels) -> float:
    """Accuracy of always answering the most frequent class of ``labels``."""
    labels = np.asarray(labels).reshape(-1)
    if labels.size == 0:
        return 0.0
    return float(np.bincount(labels.astype(np.int64)).max() / labels.size)


def near_chance(accuracy: float, chance: float) -> bool:
    """Whether ``accuracy`` is within a tenth of the way from ``chance`` to 1 (0.19 for ten balanced classes)."""
    return accuracy < chance + 0.1 * (1.0 - chance)


def batchnorm_layers(model) -> list:
    """The unwrapped BatchNormalization layers of ``model``, nested models included."""
    return [layer for layer in model.submodules if isinstance(layer, keras.layers.BatchNormalization)]


def reestimate_batchnorm(model, x, batch_size: int, max_batches: int = BATCHNORM_BATCHES) -> int:
    """Sets every BatchNorm's moving mean and variance to their average over training batches.

    Runs ``model`` in training mode on up to ``max_batches`` batches of ``x`` with each
    BatchNorm's momentum set so that the moving statistics become the running mean of
    the batch statistics (momentum ``k / (k + 1)`` at batch ``k``). Weights are not
    trained. Returns the number of batches used.
    """
    layers = batchnorm_layers(model)
    if not layers or len(x) == 0:
        return 0
    momenta = [layer.momentum for layer in layers]
    batches = 0
    try:
        for start in range(0, len(x), batch_size):
            if batches >= max_batches:
                break
            for layer in layers:
                layer.momentum = batches / (batches + 1)
            model(x[start:start + batch_size], training=True)
            batches += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return batches


class BatchNormRepair(keras.callbacks.Callback):
    """Re-estimates BatchNorm statistics when training accuracy runs far ahead of validation accuracy.

    At the end of every epoch whose training accuracy is ``BATCHNORM_GAP`` or more
    above its validation accuracy, the moving statistics are re-estimated on training
    batches and the validation split is evaluated again; the new statistics are kept
    when the validation loss is lower, and the epoch's ``val_loss``/``val_accuracy``
    are replaced, so early stopping judges the repaired model. Epochs without the gap
    are left alone (a default-momentum BatchNorm catches up by itself after an epoch
    or two). Place it before early stopping.

    Args:
        x_train: samples to re-estimate on.
        x_val, y_val: the validation split.
        batch_size: batch size of the re-estimate and the evaluation.
    """

    def __init__(self, x_train, x_val, y_val, batch_size: int):
        super().__init__()
        self.x_train, self.x_val, self.y_val, self.batch_size = x_train, x_val, y_val, batch_size
        self.repaired: list[tuple[int, float, float]] = []
        self.notes: list[str] = []

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or "val_loss" not in logs or "accuracy" not in logs or "val_accuracy" not in logs:
            return
        if logs["accuracy"] - logs["val_accuracy"] < BATCHNORM_GAP:
            return
        layers = batchnorm_layers(self.model)
        if not layers:
            return
        saved = [layer.get_weights() for layer in layers]
        reestimate_batchnorm(self.model, self.x_train, self.batch_size)
        loss, accuracy = self.model.evaluate(self.x_val, self.y_val, batch_size=self.batch_size, verbose=0)[:2]
        if not loss < logs["val_loss"]:
            for layer, weights in zip(layers, saved):
                layer.set_weights(weights)
            return
        if not self.repaired:
            log.info("training: epoch %d: training accuracy %.3f but validation %.3f; BatchNorm moving statistics "
                     "(%d layers) re-estimated on training batches: validation accuracy %.3f", epoch + 1,
                     logs["accuracy"], logs["val_accuracy"], len(layers), accuracy)
        self.repaired.append((epoch + 1, float(logs["val_accuracy"]), float(accuracy)))
        logs["val_loss"], logs["val_accuracy"] = float(loss), float(accuracy)

    def on_train_end(self, logs=None):
        if self.repaired:
            first, before, after = self.repaired[0]
            self.notes.append(
                f"BatchNorm moving statistics lagged behind the weights (training accuracy far above validation): "
                f"re-estimated on training batches after {len(self.repaired)} epoch(s), first at epoch {first} "
                f"(validation accuracy {before:.3f} -> {after:.3f})")


class LearningEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' early stopping on ``val_loss`` (best weights restored) that waits while the model is at chance.

    Epochs whose validation accuracy is ``near_chance`` count no patience and are
    never restored: patience is measured from the best epoch after validation
    accuracy first left chance. A model that never leaves chance trains all epochs.
    """

    def __init__(self, patience: int, chance: float):
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self.chance = chance
        self.left_chance_at = None
        self.notes: list[str] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.left_chance_at is None:
            accuracy = logs.get("val_accuracy")
            if accuracy is not None and near_chance(accuracy, self.chance):
                return
            self.left_chance_at = epoch
            if epoch > 0:
                self.notes.append(f"validation accuracy left chance ({self.chance:.3f}) at epoch {epoch + 1}; "
                                  "early stopping counted patience from there")
        super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        level = logging.INFO
        if self.stopped_epoch > 0:
            note = (f"early stopping at epoch {self.stopped_epoch + 1}: validation loss did not improve for "
                    f"{self.patience} epochs; restored epoch {self.best_epoch + 1} (val_loss {self.best:.4f})")
        elif self.best_weights is not None:
            note = f"trained all epochs; restored the best epoch {self.best_epoch + 1} (val_loss {self.best:.4f})"
            if self.best_epoch >= self.params.get("epochs", 0) - 2:
                note += "; validation loss was still improving: more epochs may give a better model"
                level = logging.WARNING
        else:
            note = "validation accuracy stayed near chance in every epoch; kept the last epoch's weights"
        log.log(level, "training: %s", note)
        self.notes.append(note)


def verbosity() -> int:
    """Keras ``verbose``: a progress bar on a terminal, one line per epoch in logs."""
    return 1 if sys.stdout.isatty() else 2


def compile_model(model, learning_rate: float) -> None:
    """Compiles ``model`` with Adam, the right cross-entropy for its head, and accuracy."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not ends_with_softmax(model))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])


def fit(
    model,
    dataset: Dataset,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    log_dir: Optional[Path] = None,
    patience: int = 5,
    callbacks: Sequence = (),
    recompile: bool = True,
):
    """Trains ``model`` in place on the dataset's train split; returns the Keras History.

    The History's ``notes`` (a list of sentences) say what the training loop decided:
    where it stopped, what it restored, whether BatchNorm statistics were re-estimated.

    Args:
        model: a tf_keras model.
        dataset: the data; the validation split drives early stopping.
        epochs: maximum epochs (0 returns at once).
        learning_rate: Adam's learning rate.
        batch_size: samples per step; the global batch under tf.distribute (split across replicas).
        log_dir: TensorBoard log folder, or None for no logs.
        patience: epochs without validation-loss improvement before stopping (0: never).
        callbacks: extra callbacks (e.g. tfmot's pruning step updater).
        recompile: compile the model first (False when the caller compiled it).
    """
    if recompile:
        compile_model(model, learning_rate)
    if epochs <= 0:
        return None
    has_val = len(dataset.x_val) > 0
    all_callbacks = list(callbacks)
    guards = []
    # Eager training-mode calls update BatchNorm outside a strategy only.
    if has_val and batchnorm_layers(model) and distribute.current() is None:
        guards.append(BatchNormRepair(dataset.x_train, dataset.x_val, dataset.y_val, batch_size))
    if patience > 0 and has_val:
        guards.append(LearningEarlyStopping(patience, chance_accuracy(dataset.y_val)))
    all_callbacks += guards
    if log_dir is not None:
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir), profile_batch=0))
    # Arrays as before; tf.data datasets of global batches under tf.distribute (edgecomp.distribute).
    inputs = distribute.fit_inputs(dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val, batch_size,
                                   augment=dataset.augment)
    with quiet():   # tf.data's C++ "use_unbounded_threadpool" line; Keras's epoch lines go to stdout
        history = model.fit(**inputs, epochs=epochs, callbacks=all_callbacks, verbose=verbosity())
    history.notes = [note for guard in guards for note in guard.notes]
    return history


def accuracy(model, x, y, batch_size: int = 256) -> float:
    """Top-1 accuracy of a Keras model on ``(x, y)``, computed from its predictions."""
    if len(x) == 0:
        return float("nan")
    with quiet():   # the same tf.data C++ line as fit
        predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return float((predictions.argmax(axis=-1) == y).mean())
