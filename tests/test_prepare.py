"""The model preparer: TFOpLambda arithmetic rewritten into layers tfmot can wrap, exactly, without
touching the original; QAT on keras.applications' MobileNetV3 and a hand-made squeeze-excite net;
a graph tfmot still cannot wrap falls back to post-training quantization with the reason."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edgecomp import config, data, report, runtime
from edgecomp._keras import keras, tf
from edgecomp import stages
from edgecomp.stages import StageContext, prepare, quantize
from edgecomp.targets import convert, cpu


def tfop_lambdas(model) -> int:
    return sum(type(layer).__name__ == "TFOpLambda" for layer in model.layers)


def hard_swish(x):
    return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def squeeze_excite_net(input_shape, num_classes):
    """Hard-swish and a squeeze-excite gate written with tensor operators, as MobileNetV3/EfficientNet do."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    x = hard_swish(x)
    x = keras.layers.Conv2D(32, 3, padding="same")(x)
    x = hard_swish(x)
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = keras.layers.Conv2D(8, 1, activation="relu")(gate)
    gate = keras.layers.Conv2D(32, 1)(gate)
    gate = tf.nn.relu6(gate + 3.0) / 6.0
    x = x * gate
    x = x - 0.5 * tf.math.reduce_mean(x, axis=[1, 2], keepdims=True)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="squeeze_excite")


@pytest.fixture(scope="module")
def digits():
    return data.load(config.DataConfig(source="digits"), seed=0)


def test_rewrite_of_operator_arithmetic_is_exact_and_leaves_the_original_alone(digits):
    keras.utils.set_random_seed(0)
    model = squeeze_excite_net(digits.input_shape, digits.num_classes)
    lambdas = tfop_lambdas(model)
    weights = [w.copy() for w in model.get_weights()]
    prepared, report = prepare.prepare_for_qat(model, digits.x_val[:32])
    assert lambdas >= 8 and tfop_lambdas(model) == lambdas, "the original keeps its layers"
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert tfop_lambdas(prepared) == 0 and not report["left"]
    targets = {item["to"].split("(")[0] for item in report["rewritten"]}
    assert {"ConstantArithmetic", "Multiply", "Subtract", "ReLU", "TensorFunction"} <= targets
    np.testing.assert_allclose(prepared.predict(digits.x_test, verbose=0), model.predict(digits.x_test, verbose=0),
                               rtol=1e-5, atol=1e-5)


def test_model_without_tfop_lambdas_is_returned_as_is(tiny_model):
    prepared, report = prepare.prepare_for_qat(tiny_model, np.zeros((2, 6, 6, 1), np.float32))
    assert prepared is tiny_model and report == {"rewritten": [], "left": [], "max_difference": 0.0}


@pytest.mark.slow
def test_mobilenet_v3_small_is_prepared_and_wrapped_for_qat():
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=10,
                                                include_preprocessing=False)
    samples = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    with pytest.raises(Exception, match="'list' object has no attribute 'dtype'"):
        quantize.wrap_model(model)   # tfmot alone: the hard-swish TFOpLambda crashes quantize_apply
    prepared, report = prepare.prepare_for_qat(model, samples)
    assert len(report["rewritten"]) == 56 and report["max_difference"] <= prepare.TOLERANCE
    quantized, scheme, annotated, skipped = quantize.wrap_model(prepared)
    assert scheme == "QAT" and annotated > 50
    assert quantized.output_shape == model.output_shape
    table = quantize.coverage(quantized, skipped)
    assert table["ConstantArithmetic"]["output_only"] == 56
    assert table["Conv2D"]["qat"] > 0


def _context(dataset, tmp_path):
    cfg = config.from_dict({"output_dir": str(tmp_path), "data": {"batch_size": 64}})
    return StageContext(cfg, dataset, Path(tmp_path) / "logs", ())


def test_qat_of_a_squeeze_excite_net_gives_an_integer_file_close_to_float(digits, tmp_path):
    keras.utils.set_random_seed(0)
    model = squeeze_excite_net(digits.input_shape, digits.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(0.005),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(digits.x_train, digits.y_train, epochs=8, batch_size=64, verbose=0)
    float_accuracy = float(np.mean(model.predict(digits.x_test, verbose=0).argmax(-1) == digits.y_test))
    quantized, record = quantize.apply(model, config.QuantizeConfig(epochs=2), _context(digits, tmp_path))
    assert record.details["scheme"] == "QAT" and "fallback" not in record.details
    assert record.details["prepared"]["rewritten"]
    assert record.details["coverage"]["ConstantArithmetic"]["output_only"] >= 4
    content = convert.convert(quantized, "int8", "float32", digits.x_train[:200])
    verdict = cpu.verify(content, "int8")
    assert verdict["ok"], verdict["details"]["rules"]
    int8_accuracy = runtime.evaluate(content, digits.x_test, digits.y_test)["accuracy"]
    assert float_accuracy > 0.85
    assert int8_accuracy >= float_accuracy - 0.02, (float_accuracy, int8_accuracy)


def test_graph_tfmot_cannot_wrap_falls_back_to_post_training_quantization_with_the_reason(digits, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(digits.input_shape)
    a = keras.layers.Conv2D(4, 3)(inputs)
    b = keras.layers.Conv2D(4, 3)(inputs)
    x = tf.math.squared_difference(a, b)   # two tensors, no Keras layer for it: the preparer leaves it
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(digits.num_classes)(x))
    returned, record = quantize.apply(model, config.QuantizeConfig(epochs=1), _context(digits, tmp_path))
    assert returned is model
    assert record.details["fallback"] == "post-training quantization"
    assert "squared_difference" in record.details["prepared"]["left"][0]["layer"]
    assert "post-training quantization" in record.skipped[0]["reason"]


def test_qat_ranges_start_at_the_float_models_ranges_even_for_tiny_activations(digits):
    """EfficientNet's in-model Rescaling(1/255) on inputs already in [0, 1]: every early activation is ~0.004.

    tfmot starts each activation range at [-6, 6], which rounds such values to zero;
    the ranges must come from the float model, so the wrapped model computes what
    the float model does before any QAT step.
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input(digits.input_shape)
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(epsilon=1e-3)(x)
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.Activation("swish")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(digits.num_classes)(x))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train, digits.y_train, epochs=1, batch_size=64, verbose=0)   # real BatchNorm statistics
    expected = model.predict(digits.x_test[:64], verbose=0)
    quantized = quantize.wrap_model(model)[0]
    assert quantize.initialize_ranges(quantized, digits.x_train, 64, float_model=model) > 0
    got = quantized.predict(digits.x_test[:64], verbose=0)
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < 0.1, error
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= 0.9


def conv1d_separable_net(num_classes=10):
    """A dilated Conv1D, a strided SeparableConv1D with depth multiplier 2: layers tfmot's registry lacks."""
    inputs = keras.Input((40, 1))
    x = keras.layers.Conv1D(16, 5, padding="same", dilation_rate=2, activation="relu", name="dilated")(inputs)
    x = keras.layers.SeparableConv1D(16, 3, strides=2, depth_multiplier=2, activation="relu", name="sep1d")(x)
    x = keras.layers.Reshape((19, 4, 4))(x)
    x = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep2d")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(x))


def test_conv1d_and_separable_convs_are_rewritten_exactly_and_get_full_qat():
    keras.utils.set_random_seed(0)
    model = conv1d_separable_net()
    kinds = [type(layer).__name__ for layer in model.layers]
    weights = [w.copy() for w in model.get_weights()]
    samples = np.random.default_rng(0).normal(size=(16, 40, 1)).astype(np.float32)
    prepared, report = prepare.prepare_for_qat(model, samples)
    assert [type(layer).__name__ for layer in model.layers] == kinds, "the original keeps its layers"
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert {item["layer"]: item["from"] for item in report["rewritten"]} == {
        "dilated": "Conv1D", "sep1d": "SeparableConv1D", "sep2d": "SeparableConv2D"}
    assert not report["left"] and report["max_difference"] <= prepare.TOLERANCE
    np.testing.assert_allclose(prepared(samples), model(samples), rtol=1e-5, atol=1e-5)
    quantized, _, _, skipped = quantize.wrap_model(prepared)
    table = quantize.coverage(quantized, skipped)
    assert not {"Conv1D", "SeparableConv1D", "SeparableConv2D"} & set(table), table
    assert table["Conv2D"] == {"qat": 3, "output_only": 0, "not_wrapped": 0}
    assert table["DepthwiseConv2D"]["qat"] == 2
    assert prepared.get_layer("dilated").dilation_rate == (2, 1)   # the rewritten Conv2D keeps the user's name


def test_sequential_conv1d_model_is_prepared_as_its_chain_and_causal_padding_is_left_with_a_reason():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((24, 2)), keras.layers.Conv1D(8, 3, padding="causal", name="causal"),
                              keras.layers.Conv1D(8, 3, name="plain"), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    samples = np.random.default_rng(1).normal(size=(8, 24, 2)).astype(np.float32)
    prepared, report = prepare.prepare_for_qat(model, samples)
    assert [item["layer"] for item in report["rewritten"]] == ["plain"]
    assert report["left"] == [{"layer": "causal", "reason": "Conv1D with padding 'causal' has no Conv2D equivalent"}]
    np.testing.assert_allclose(prepared(samples), model(samples), rtol=1e-5, atol=1e-5)


def test_prune_then_qat_keeps_zeros_of_a_rewritten_conv1d_in_the_file(tmp_path):
    full = data.load(config.DataConfig(source="mnist1d"), seed=0)
    dataset = dataclasses.replace(full, x_train=full.x_train[:640], y_train=full.y_train[:640])
    keras.utils.set_random_seed(0)
    model = conv1d_separable_net(dataset.num_classes)
    cfg = config.from_dict({"data": {"source": "mnist1d"}})
    pruned, _ = stages.apply("prune", model, config.PruneConfig(min_weights=0, sparsity=0.8, epochs=1, recovery_epochs=0),
                             StageContext(cfg, dataset, tmp_path))
    quantized, record = stages.apply("quantize", pruned, config.QuantizeConfig(epochs=1),
                                     StageContext(cfg, dataset, tmp_path, ("prune",)))
    assert "dilated" in [item["layer"] for item in record.details["prepared"]["rewritten"]]
    text = report.render(report.Report("x", "0", stages=[record]))   # report.md shows what QAT covered
    assert "| Conv2D | 3 | 0 | 0 |" in text and "| DepthwiseConv2D | 2 | 0 | 0 |" in text
    assert "- `dilated`: Conv1D → Reshape(40, 1, 1) + Conv2D((5, 1)) + Reshape(40, 16)" in text
    content = convert.convert(quantized, "int8", calibration=dataset.x_train[:50])
    tensors = cpu.weight_statistics(content)["tensors"]
    dilated = [t for t in tensors if t["op"] == "CONV_2D" and t["shape"][1:3] == [5, 1]]
    assert len(dilated) == 1, tensors   # the (5, 1) kernel: tfmot's own prune-preserving quantizer kept its zeros
    assert dilated[0]["sparsity"] >= 0.79, dilated


def test_a_shared_separable_conv_is_left_with_a_reason_not_rewritten():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 4))
    shared = keras.layers.SeparableConv2D(4, 3, padding="same", name="shared")
    x = keras.layers.GlobalAveragePooling2D()(shared(shared(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    prepared, report = prepare.prepare_for_qat(model, np.zeros((2, 8, 8, 4), np.float32))
    assert prepared is model
    assert report["left"] == [{"layer": "shared", "reason": "SeparableConv2D called 2 times (a shared layer)"}]
