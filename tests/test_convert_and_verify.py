"""Conversion per quantization mode, the cpu verifier's rules, and evaluation by running the file."""

import numpy as np
import pytest

from edgecomp import runtime
from edgecomp.errors import ModelError
from edgecomp.targets import cpu


@pytest.mark.parametrize("quantization", ["float32", "float16", "dynamic", "int8", "int16x8"])
def test_each_mode_converts_and_passes_its_own_rules(converted, quantization):
    content = converted(quantization)
    result = cpu.verify(content, quantization)
    assert result["ok"], result
    rule_names = [r["rule"] for r in result["details"]["rules"]]
    assert rule_names == ["loads", "builtin_ops", "io_type", "quantization"]


def test_int8_file_saves_at_least_half_of_three_bytes_per_weight(converted, tiny_model):
    kernels = sum(int(np.prod(w.shape)) for w in tiny_model.weights if "kernel" in w.name)
    saved = len(converted("float32")) - len(converted("int8"))
    assert saved >= 0.5 * 3 * kernels  # the rest goes to per-channel scales on a model this small


@pytest.mark.parametrize("content_mode, claimed", [("float32", "int8"), ("dynamic", "int8"), ("int8", "float32"),
                                                    ("float32", "float16")])
def test_verifier_fails_when_file_is_not_what_the_mode_promises(converted, content_mode, claimed):
    result = cpu.verify(converted(content_mode), claimed)
    assert not result["ok"]
    failed = [r["rule"] for r in result["details"]["rules"] if not r["ok"]]
    assert failed == ["quantization"]


def test_int8_io_gives_int8_tensors_and_fails_a_float_io_claim(converted):
    content = converted("int8", "int8")
    io = runtime.io_details(content)
    assert io["inputs"][0]["dtype"] == "int8" and io["inputs"][0]["scale"] > 0
    assert cpu.verify(content, "int8", "int8")["ok"]
    result = cpu.verify(content, "int8", "float32")
    assert [r["rule"] for r in result["details"]["rules"] if not r["ok"]] == ["io_type"]


def test_int8_io_file_accuracy_matches_float_io(converted, tiny_dataset):
    float_io = runtime.evaluate(converted("int8"), tiny_dataset.x_test, tiny_dataset.y_test)["accuracy"]
    int8_io = runtime.evaluate(converted("int8", "int8"), tiny_dataset.x_test, tiny_dataset.y_test)["accuracy"]
    assert abs(float_io - int8_io) <= 0.05


def test_float32_file_reproduces_keras_predictions(converted, tiny_model, tiny_dataset):
    keras_out = tiny_model.predict(tiny_dataset.x_test, verbose=0)
    tflite_out = runtime.predict(converted("float32"), tiny_dataset.x_test)
    np.testing.assert_allclose(tflite_out, keras_out, atol=1e-4)


def test_batched_evaluation_equals_one_by_one(converted, tiny_dataset):
    content = converted("int8")
    batched = runtime.predict(content, tiny_dataset.x_test, batch_size=7)
    single = runtime.predict_one_by_one(content, tiny_dataset.x_test)
    np.testing.assert_array_equal(batched, single)


def test_evaluation_rejects_data_of_the_wrong_shape(converted):
    with pytest.raises(ModelError, match="expects samples of shape"):
        runtime.predict(converted("float32"), np.zeros((3, 5, 5, 1), np.float32))


@pytest.mark.parametrize("content, expected", [
    (b"", "only 0 bytes"),
    (b"\x00" * 64, "file identifier"),
    (b"\xff\xff\xff\x7fTFL3" + b"\x00" * 32, "root offset"),
])
def test_non_models_never_reach_the_interpreter(content, expected):
    with pytest.raises(ModelError, match=expected):
        runtime.make_interpreter(content)


def test_truncated_model_is_an_error_not_a_crash(converted):
    content = converted("float32")
    with pytest.raises(ModelError):
        runtime.make_interpreter(content[: len(content) // 2])
