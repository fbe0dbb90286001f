"""Compiling, fitting and evaluating Keras models the same way in every stage.

The loss reads the model's head: logits get ``from_logits=True``, a softmax head
gets ``from_logits=False``. Training shows Keras' progress bar on a terminal and
one line per epoch otherwise, stops early on the validation loss, and logs to
TensorBoard in the run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

from edgecomp import distribute
from edgecomp._keras import keras
from edgecomp.data import Dataset
from edgecomp.models import ends_with_softmax


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
    if patience > 0 and has_val:
        all_callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        )
    if log_dir is not None:
        all_callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir), profile_batch=0))
    # Arrays as before; tf.data datasets of global batches under tf.distribute (edgecomp.distribute).
    inputs = distribute.fit_inputs(dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val, batch_size)
    return model.fit(**inputs, epochs=epochs, callbacks=all_callbacks, verbose=verbosity())


def accuracy(model, x, y, batch_size: int = 256) -> float:
    """Top-1 accuracy of a Keras model on ``(x, y)``, computed from its predictions."""
    if len(x) == 0:
        return float("nan")
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return float((predictions.argmax(axis=-1) == y).mean())
