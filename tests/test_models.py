"""Models from zoo, file and builder; subclassed models get clear errors (Keras 3: tests/test_keras3.py)."""

import numpy as np
import pytest

from edgecomp import config, models, zoo
from edgecomp._keras import keras
from edgecomp.errors import ConfigError, ModelError


def test_zoo_names_in_config_match_the_zoo():
    assert set(config.ZOO_NAMES) == set(zoo.ARCHITECTURES)


@pytest.mark.parametrize("name, shape, classes", [
    ("digits_cnn", (8, 8, 1), 10),
    ("mnist1d_cnn", (40, 1), 10),
    ("ds_cnn", (49, 10, 1), 12),
    ("resnet8", (32, 32, 3), 10),
    ("mobilenet_v2", (32, 32, 3), 5),
])
def test_zoo_architecture_outputs_one_logit_per_class(name, shape, classes):
    model = zoo.build(name, shape, classes, {"alpha": 0.35} if name == "mobilenet_v2" else {})
    out = model(np.zeros((2, *shape), np.float32), training=False)
    assert out.shape == (2, classes)
    assert not models.ends_with_softmax(model)


def test_zoo_rejects_unknown_argument_naming_it():
    with pytest.raises(ConfigError, match="model.args.depth: digits_cnn does not take this argument"):
        zoo.build("digits_cnn", (8, 8, 1), 10, {"depth": 3})


def test_mobilenet_on_tiny_images_explains_the_fix():
    with pytest.raises(ConfigError, match="at least 32x32"):
        zoo.build("mobilenet_v2", (8, 8, 1), 10)


def test_mobilenet_batch_norm_momentum_suits_training_from_scratch():
    model = zoo.build("mobilenet_v2", (32, 32, 3), 5, {"alpha": 0.35})
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
    rebuilt = keras.Model.from_config(model.get_config())
    assert {layer.momentum for layer in rebuilt.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}
    with pytest.raises(ConfigError, match="model.args.bn_momentum must be between 0 and 1"):
        zoo.build("mobilenet_v2", (32, 32, 3), 5, {"bn_momentum": 1.0})


def test_builder_gets_shapes_from_data_and_keeps_softmax_head():
    spec = config.ModelSpec(builder="tests.custom_models:two_branch", args={"width": 3})
    model = models.build(spec, (6, 6, 1), 4)
    assert model.output_shape == (None, 4)
    assert models.ends_with_softmax(model)


def test_builder_with_wrong_class_count_is_explained():
    spec = config.ModelSpec(builder="tests.custom_models:no_arguments")
    with pytest.raises(ModelError, match="has 3 outputs but the data has 10 classes"):
        models.build(spec, (6, 6, 1), 10)


def test_model_whose_output_is_not_one_score_per_class_is_explained_before_training():
    spec = config.ModelSpec(builder="tests.custom_models:dense_on_sequence")
    with pytest.raises(ModelError, match=r"outputs of shape \(40, 10\) per sample.*\(40, 1\).*add a Flatten"):
        models.build(spec, (40, 1), 10)


def test_model_with_a_sigmoid_head_is_explained_before_training():
    spec = config.ModelSpec(builder="tests.custom_models:sigmoid_head")
    with pytest.raises(ModelError, match="ends in a sigmoid activation.*logits .* or softmax"):
        models.build(spec, (6, 6, 1), 3)


@pytest.mark.parametrize("builder, expected", [
    ("tests.nowhere:f", "cannot import module 'tests.nowhere'"),
    ("tests.custom_models:missing", "has no function 'missing'"),
])
def test_bad_builder_path_is_a_config_error(builder, expected):
    with pytest.raises(ConfigError, match=expected):
        models.build(config.ModelSpec(builder=builder), (6, 6, 1), 3)


def test_subclassed_model_is_rejected_with_the_fix():
    spec = config.ModelSpec(builder="tests.custom_models:subclassed")
    with pytest.raises(ModelError, match="subclassed model .* needs a functional or Sequential"):
        models.build(spec, (6, 6, 1), 3)


def test_model_file_round_trip_and_lambda_needs_trust(tmp_path):
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2)(keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    path = tmp_path / "lambda.h5"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelError, match="Lambda layers, which run code .* model.trust: true"):
        models.load(path)
    loaded = models.load(path, trust=True)
    assert loaded.output_shape == (None, 2)


def test_copy_shares_no_variables():
    model = zoo.build("digits_cnn", (8, 8, 1), 10, {"width": 0.25})
    clone = models.copy(model)
    before = [w.copy() for w in model.get_weights()]
    clone.layers[1].kernel.assign(np.zeros(clone.layers[1].kernel.shape))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_count_nonzero_params_counts_zeros():
    model = keras.Sequential([keras.layers.Input((3,)), keras.layers.Dense(2, kernel_initializer="zeros")])
    assert models.count_params(model) == 8
    assert models.count_nonzero_params(model) == 0
