"""Recurrent models (GRU, LSTM, SimpleRNN) convert to float and int8 files that compute what Keras does.

A rolled Keras RNN becomes a TensorList while-loop: TensorFlow's converter refused it
with a dynamic batch, and calibrating it for int8 crashed the process (GRU,
SimpleRNN). Conversion unrolls the layers over their fixed number of time steps.
"""

import numpy as np
import pytest

from edgecomp import config, data, runtime, stages
from edgecomp._keras import keras
from edgecomp.errors import ModelError
from edgecomp.targets import cpu
from edgecomp.targets.convert import convert, unrolled


@pytest.fixture(scope="module")
def mnist1d():
    return data.load(config.DataConfig(source="mnist1d"), seed=0)


def recurrent_net(kind: str, steps: int | None = 40, num_classes: int = 10):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((steps, 1))
    x = keras.layers.Conv1D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    x = getattr(keras.layers, kind)(16, name="recurrent")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


@pytest.mark.parametrize("kind", ["GRU", "LSTM", "SimpleRNN"])
def test_recurrent_layers_convert_to_float_and_int8_files_that_match_keras(kind, mnist1d):
    model = recurrent_net(kind)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    model.fit(mnist1d.x_train, mnist1d.y_train, epochs=3, batch_size=64, verbose=0)
    x = mnist1d.x_test[:200]
    expected = model.predict(x, verbose=0)
    assert not model.get_layer("recurrent").unroll, "the caller's model is not changed"
    float_file = convert(model, "float32")
    np.testing.assert_allclose(runtime.predict(float_file, x), expected, rtol=1e-4, atol=1e-4)
    int8_file = convert(model, "int8", calibration=mnist1d.x_train[:100])
    assert cpu.verify(int8_file, "int8")["ok"]
    keras_accuracy = float(np.mean(model.predict(mnist1d.x_test, verbose=0).argmax(-1) == mnist1d.y_test))
    int8_accuracy = runtime.evaluate(int8_file, mnist1d.x_test, mnist1d.y_test)["accuracy"]
    assert keras_accuracy > 0.2 and abs(int8_accuracy - keras_accuracy) <= 0.03, (keras_accuracy, int8_accuracy)


def test_recurrent_layer_on_a_sequence_of_unknown_length_gets_an_error_that_says_what_to_do():
    model = recurrent_net("GRU", steps=None)
    assert unrolled(model) is model
    with pytest.raises(ModelError, match="fixed number of time steps"):
        convert(model, "float32")


def test_qat_of_a_recurrent_model_falls_back_to_post_training_int8_with_the_reason(mnist1d, tmp_path):
    model = recurrent_net("LSTM")
    context = stages.StageContext(config.from_dict({"data": {"source": "mnist1d"}}), mnist1d, tmp_path)
    returned, record = stages.apply("quantize", model, config.QuantizeConfig(epochs=1), context)
    assert record.details["fallback"] == "post-training quantization"
    assert "recurrent layers (recurrent)" in record.details["error"]


def test_the_accuracy_guard_can_rank_the_layers_of_a_recurrent_model(mnist1d):
    from edgecomp.targets import accuracy_guard

    ranking = accuracy_guard.layer_errors(recurrent_net("GRU"), mnist1d.x_train[:20])   # the debugger converts too
    assert ranking and all(row["scale"] > 0 for row in ranking)
