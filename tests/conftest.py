"""Shared, session-scoped fixtures: one tiny seeded model, converted once per mode."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dataset():
    from edgecomp import config, data

    return data.load(config.DataConfig(source="synthetic", image_size=(6, 6), num_classes=3, samples=240), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset):
    """A trained 3-class conv net on 6x6 synthetic images (seeded, ~2 s)."""
    from edgecomp import training
    from edgecomp._keras import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(tiny_dataset.input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)  # 1,152 weights: dynamic mode quantizes it
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(tiny_dataset.num_classes)(x)
    model = keras.Model(inputs, outputs)
    training.fit(model, tiny_dataset, epochs=8, learning_rate=0.01, batch_size=32, patience=0)
    return model


@pytest.fixture(scope="session")
def converted(tiny_model, tiny_dataset):
    """``converted(quantization, io)`` → bytes, each conversion done once per session."""
    from edgecomp import data
    from edgecomp.targets import convert

    cache = {}
    calibration = data.representative_samples(tiny_dataset, 50)

    def get(quantization="float32", io="float32"):
        key = (quantization, io)
        if key not in cache:
            cache[key] = convert.convert(tiny_model, quantization, io, calibration)
        return cache[key]

    return get


def run_cli(*args, cwd=None, timeout=300):
    """Runs ``python -m <args>`` and returns the CompletedProcess (text)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd or ROOT,
                          env=env, timeout=timeout, check=False)


def tflite_accuracy(path, dataset, delegates=True, reference=False):
    """Accuracy recomputed here by running the file with the interpreter, sample by sample.

    ``reference=True``: LiteRT's reference kernels, which round like TFLM's.
    """
    from edgecomp import runtime

    content = Path(path).read_bytes()
    outputs = runtime.predict_one_by_one(content, dataset.x_test, delegates=delegates, reference=reference)
    return float(np.mean(outputs.argmax(-1) == dataset.y_test))
