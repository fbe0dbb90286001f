"""Keras 3 models (TensorFlow 2.21's own keras) come in through a verified bridge, never a refusal."""

import numpy as np
import pytest
import yaml

from conftest import run_cli
from edgecomp import config, keras3, models
from edgecomp._keras import is_keras3_object, keras
from edgecomp.errors import ModelError

k3 = pytest.importorskip("keras")   # Keras 3, installed with TensorFlow


def branched(input_shape=(8, 8, 1), classes=10):
    inputs = k3.Input(input_shape)
    a = k3.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    b = k3.layers.Conv2D(8, 1, name="b")(inputs)
    x = k3.layers.BatchNormalization(name="bn")(k3.layers.Add()([a, b]))
    x = k3.layers.Concatenate()([k3.layers.DepthwiseConv2D(3, padding="same")(x), a])
    x = k3.layers.GlobalAveragePooling2D()(x) * 0.5          # a Keras 3 tensor operator in the graph
    return k3.Model(inputs, k3.layers.Dense(classes, activation="softmax", name="head")(x))


def samples(shape, count=16, scale=1.0):
    return (np.random.default_rng(0).random((count, *shape)) * scale).astype(np.float32)


def test_functional_and_sequential_keras3_models_are_rebuilt_in_tf_keras_with_identical_outputs():
    for model, shape in ((branched(), (8, 8, 1)),
                         (k3.Sequential([k3.Input((40, 1)), k3.layers.Conv1D(8, 3), k3.layers.Flatten(),
                                         k3.layers.Dense(4)]), (40, 1))):
        x = samples(shape)
        rebuilt, report = keras3.to_tf_keras(model, x)
        assert isinstance(rebuilt, keras.Model) and report["max_difference"] <= keras3.TOLERANCE
        np.testing.assert_allclose(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["MobileNetV2", "MobileNetV3Small", "EfficientNetB0"])
def test_keras_applications_in_keras3_are_rebuilt_exactly(name):
    extra = {"alpha": 0.35} if name == "MobileNetV2" else {}
    model = getattr(k3.applications, name)(input_shape=(32, 32, 3), weights=None, classes=10, **extra)
    rebuilt, report = keras3.to_tf_keras(model, samples((32, 32, 3), 4, 255.0))
    assert report["max_difference"] <= keras3.TOLERANCE and len(rebuilt.layers) >= report["layers"]


def test_a_layer_tf_keras_lacks_is_refused_naming_it():
    inputs = k3.Input((4, 3))
    model = k3.Model(inputs, k3.layers.Dense(2)(k3.layers.RMSNormalization(name="rms")(inputs)))
    with pytest.raises(ModelError, match="layer 'rms' \\(RMSNormalization\\)"):
        keras3.to_tf_keras(model, samples((4, 3)))


def test_keras3_file_and_builder_go_through_build(tmp_path):
    path = tmp_path / "k3.keras"
    branched().save(path)
    loaded = models.load(path)
    assert is_keras3_object(loaded)   # load gives the Keras 3 model; build bridges it
    model = models.build(config.ModelSpec(path=str(path)), (8, 8, 1), 10, samples=samples((8, 8, 1)))
    assert isinstance(model, keras.Model) and model.get_layer("head").units == 10


def test_keras3_builder_runs_through_prune_qat_and_int8(tmp_path):
    (tmp_path / "k3_models.py").write_text(
        "import keras\n\n"
        "def build(input_shape, num_classes):\n"
        "    inputs = keras.Input(input_shape)\n"
        "    x = keras.layers.Conv2D(16, 3, padding='same', activation='relu')(inputs)\n"
        "    x = keras.layers.Conv2D(16, 3, padding='same', activation='relu')(x)\n"
        "    x = keras.layers.GlobalAveragePooling2D()(x)\n"
        "    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))\n")
    cfg = {"name": "k3", "output_dir": str(tmp_path / "out"), "data": {"source": "digits"},
           "model": {"builder": "k3_models:build"}, "train": {"epochs": 12, "learning_rate": 0.01},
           "stages": [{"prune": {"min_weights": 0, "sparsity": 0.5, "epochs": 1, "recovery_epochs": 0}}, {"quantize": {"epochs": 1}}],
           "targets": [{"cpu": {"quantization": "int8", "allow_over_budget": True}}],
           "benchmark": {"runs": 2, "warmup": 0}}
    path = tmp_path / "k3.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = run_cli("edgecomp.train", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Keras 3 model rebuilt in tf_keras" in result.stderr


def test_arguments_keras3_writes_at_their_defaults_are_dropped_and_a_shape_mismatch_is_one_error():
    inputs = k3.Input((8, 8, 1))
    x = k3.layers.Resizing(8, 8, name="resize")(inputs)        # writes data_format and fill_mode defaults
    x = k3.layers.RandomFlip(name="flip")(x)
    model = k3.Model(inputs, k3.layers.Dense(3)(k3.layers.Flatten()(x)))
    rebuilt, report = keras3.to_tf_keras(model, samples((8, 8, 1)))
    assert report["max_difference"] <= keras3.TOLERANCE
    with pytest.raises(ModelError, match=r"expects input shape \(8, 8, 1\) but the data has \(40, 1\)"):
        models._from_keras3(model, (40, 1), None, "model")
