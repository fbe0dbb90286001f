"""The library verbs on an in-memory model and arrays: each returns something new, none changes its input."""

import numpy as np
import pytest

import edgecomp
from edgecomp import training
from edgecomp._keras import keras


@pytest.fixture(scope="module")
def arrays(tiny_dataset):
    return tiny_dataset.x_train, tiny_dataset.y_train, tiny_dataset.x_test, tiny_dataset.y_test


@pytest.fixture(scope="module")
def trained(arrays):
    x, y, _, _ = arrays
    keras.utils.set_random_seed(0)
    inputs = keras.Input(x.shape[1:])
    hidden = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    hidden = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(hidden)     # 9,216 weights: pruned
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(hidden))
    model = keras.Model(inputs, outputs)
    training.compile_model(model, 0.01)
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    return model


def test_dataset_holds_out_validation_and_test_when_only_training_arrays_are_given(arrays):
    x, y, _, _ = arrays
    data = edgecomp.dataset(x, y)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == len(x)
    assert len(data.x_test) == pytest.approx(0.2 * len(x), abs=3) and len(data.x_val) > 0
    assert data.num_classes == 3 and data.input_shape == x.shape[1:]


def test_verbs_compress_convert_verify_and_benchmark_without_touching_the_model(arrays, trained):
    x, y, x_test, y_test = arrays
    data = edgecomp.dataset(x, y, x_test=x_test, y_test=y_test)
    before = [w.copy() for w in trained.get_weights()]
    small, records = edgecomp.compress(trained, [{"prune": {"sparsity": 0.5, "epochs": 2}}, {"quantize": {"epochs": 1}}],
                                       data)
    assert [record.stage for record in records] == ["prune", "quantize"]
    assert records[0].details["achieved_sparsity"] >= 0.49
    content = edgecomp.convert(small, "cpu", calibration=data.x_train[:50])
    verdict = edgecomp.verify(content, "cpu", x_test, y_test)
    assert verdict["ok"], verdict["rules"]
    assert {rule["rule"] for rule in verdict["rules"]} >= {"loads", "quantization"}
    assert verdict["metrics"]["samples"] == len(x_test) and verdict["metrics"]["accuracy"] > 0.8
    micro_file = edgecomp.convert(trained, "micro", calibration=data.x_train[:50])
    micro_verdict = edgecomp.verify(micro_file, "micro", x_test[:20], y_test[:20])
    assert micro_verdict["metrics"]["runtime"] == "tflm" and "arena_bytes" in micro_verdict["details"]
    timing = edgecomp.benchmark(content, runs=5, warmup=1)
    assert timing["latency_ms"]["p50"] > 0 and timing["device"] == "local"
    assert all(np.array_equal(a, b) for a, b in zip(before, trained.get_weights())), "the input model changed"


@pytest.mark.parametrize("call, error, message", [
    (lambda m, d: edgecomp.compress(m, [{"prune": {"sparsty": 0.5}}], d), edgecomp.ConfigError, "sparsty"),
    (lambda m, d: edgecomp.compress(m, [{"shrink": {}}], d), edgecomp.ConfigError, "shrink"),
    (lambda m, d: edgecomp.convert(m, "npu"), edgecomp.ConfigError, "allowed: cpu, gpu, edgetpu, micro"),
    (lambda m, d: edgecomp.convert(m, "cpu"), edgecomp.ConfigError, "needs calibration"),
    (lambda m, d: edgecomp.convert(m, "cpu", quantization="int4"), edgecomp.ConfigError, "quantization"),
    (lambda m, d: edgecomp.convert(m, "cpu", quantisation="int8"), edgecomp.ConfigError,
     r"target cpu: unknown key 'quantisation'; allowed keys here: io, quantization"),
    (lambda m, d: edgecomp.dataset(d.x_train, d.y_train[:-1]), edgecomp.DataError, "labels"),
])
def test_bad_arguments_raise_the_projects_errors_naming_what_to_fix(trained, tiny_dataset, call, error, message):
    with pytest.raises(error, match=message):
        call(trained, tiny_dataset)


def test_a_config_built_in_python_raises_config_error_naming_the_key():
    from edgecomp import config

    with pytest.raises(edgecomp.ConfigError, match="unknown key 'bad'; allowed keys here: name, seed"):
        edgecomp.Config(bad=1)
    with pytest.raises(edgecomp.ConfigError, match=r"stages\[0\]\.prune\.sparsity: Input should be less than 1"):
        edgecomp.Config(stages=[{"prune": {"sparsity": 2.0}}])
    assert edgecomp.Config(seed=3) == config.from_dict({"seed": 3})


def test_verify_refuses_what_does_not_fit_and_micro_refuses_a_float_file(trained, arrays, tmp_path):
    x, y, x_test, y_test = arrays
    float_file = edgecomp.convert(trained, "cpu", quantization="float32")
    verdict = edgecomp.verify(float_file, "micro", x_test[:10], y_test[:10])
    assert not verdict["ok"] and {r["rule"] for r in verdict["rules"] if not r["ok"]} >= {"quantization", "io_type"}
    path = tmp_path / "float.tflite"
    path.write_bytes(float_file)
    assert edgecomp.verify(path, "cpu", x_test, y_test, quantization="float32")["ok"]      # a path is read
    with pytest.raises(edgecomp.DataError, match="do not fit the file's 3 outputs"):
        edgecomp.verify(float_file, "cpu", x_test, y_test + 5, quantization="float32")
    with pytest.raises(edgecomp.DataError, match="the file takes samples of shape"):
        edgecomp.verify(float_file, "cpu", x_test.reshape(len(x_test), -1), y_test, quantization="float32")
    with pytest.raises(edgecomp.ModelError, match="not a TFLite model"):
        edgecomp.verify(b"hello world" * 10, "gpu", x_test, y_test)


@pytest.mark.parametrize("call, error, message", [
    (lambda m, d: edgecomp.dataset(d.x_train, d.y_train.astype(str)), edgecomp.DataError, "integer class indices"),
    (lambda m, d: edgecomp.dataset(d.x_train * np.nan, d.y_train), edgecomp.DataError, "NaN or infinite"),
    (lambda m, d: edgecomp.dataset(d.x_train, d.y_train * 0), edgecomp.DataError, "at least 2"),
    (lambda m, d: edgecomp.compress(m, "prune", edgecomp.dataset(d.x_train, d.y_train)), edgecomp.ConfigError,
     "expected a list of maps"),
    (lambda m, d: edgecomp.compress(m, [{"prune": {}}], edgecomp.dataset(d.x_train.reshape(len(d.x_train), -1),
                                                                        d.y_train)), edgecomp.DataError,
     "the model takes samples of shape"),
    (lambda m, d: edgecomp.convert(m, "cpu", calibration=d.x_train[:5] * np.nan), edgecomp.DataError, "NaN"),
    (lambda m, d: edgecomp.convert(m, "cpu", calibration=d.x_train[0]), edgecomp.DataError, "pass a batch"),
    (lambda m, d: edgecomp.benchmark(b"\0" * 64, runs=0), edgecomp.ConfigError, "runs"),
    (lambda m, d: edgecomp.benchmark("/no/such.tflite"), edgecomp.ModelError, "does not exist"),
])
def test_careless_input_gets_the_projects_errors(trained, tiny_dataset, call, error, message):
    with pytest.raises(error, match=message):
        call(trained, tiny_dataset)
