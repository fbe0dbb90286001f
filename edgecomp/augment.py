"""``train.augment``: random shifts, flips and noise for every training sample, drawn anew each epoch.

The training split becomes a ``tf.data`` pipeline (shuffle, augment each sample,
batch); validation and test data are never changed. Every training of a run uses it:
``training.fit`` and the distiller both take their inputs from
``distribute.fit_inputs``, which applies ``sample_transform`` when the dataset
carries an ``AugmentConfig``.

Example:
    >>> from edgecomp.config import AugmentConfig
    >>> check(AugmentConfig(shift=0.1), (40, 1))      # a sequence: shifts along its 40 steps
    >>> check(AugmentConfig(flip=True), (40, 1))
    Traceback (most recent call last):
    ...
    edgecomp.errors.ConfigError: train.augment.flip: mirrors images of shape (h, w, c); the data's samples are (40, 1): set flip: false
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edgecomp.config import AugmentConfig
from edgecomp.errors import ConfigError


def active(augment: AugmentConfig | None) -> bool:
    """Whether ``augment`` changes anything."""
    return augment is not None and (augment.shift > 0 or augment.flip or augment.noise > 0)


def shift_steps(augment: AugmentConfig, input_shape: tuple[int, ...]) -> list[int]:
    """Largest shift, in samples, along each spatial axis (every axis but the last, the channels)."""
    return [int(round(augment.shift * size)) for size in input_shape[:-1]]


def check(augment: AugmentConfig | None, input_shape: tuple[int, ...]) -> None:
    """Raises ``ConfigError`` naming the key when ``augment`` cannot apply to samples of ``input_shape``."""
    if augment is None:
        return
    shape = tuple(input_shape)
    if augment.flip and len(shape) != 3:
        raise ConfigError(f"train.augment.flip: mirrors images of shape (h, w, c); the data's samples are {shape}: "
                          "set flip: false")
    if augment.shift > 0:
        if len(shape) < 2:
            raise ConfigError(f"train.augment.shift: needs samples with a spatial axis (an image (h, w, c) or a "
                              f"sequence (steps, features)); the data's samples are {shape}: set shift: 0")
        if not any(shift_steps(augment, shape)):
            raise ConfigError(f"train.augment.shift: {augment.shift} of {shape[:-1]} rounds to no shift at all; "
                              f"use at least {0.5 / max(shape[:-1]):.3g}")


def attach(dataset, augment: AugmentConfig | None):
    """``dataset`` with ``augment`` checked against its samples and attached: every training on it augments.

    Raises:
        ConfigError: ``augment`` cannot apply to the data's samples (``check``).
    """
    if augment is None:
        return dataset
    check(augment, dataset.input_shape)
    return dataclasses.replace(dataset, augment=augment)


def sample_transform(augment: AugmentConfig, input_shape: tuple[int, ...], data_std: float):
    """A TensorFlow function that augments one sample of ``input_shape`` (used in ``tf.data.Dataset.map``)."""
    from edgecomp._keras import tf

    steps = shift_steps(augment, tuple(input_shape)) if augment.shift > 0 else []
    paddings = [[step, step] for step in steps] + [[0, 0]]
    noise_std = float(augment.noise * data_std)

    def transform(x, y):
        if any(steps):
            x = tf.image.random_crop(tf.pad(x, paddings), size=tf.shape(x))
        if augment.flip:
            x = tf.image.random_flip_left_right(x)
        if noise_std > 0:
            x = x + tf.random.normal(tf.shape(x), stddev=noise_std, dtype=x.dtype)
        return x, y

    return transform


def training_std(x_train: np.ndarray) -> float:
    """The training split's standard deviation (the unit of ``noise``)."""
    return float(np.std(x_train)) if len(x_train) else 0.0
