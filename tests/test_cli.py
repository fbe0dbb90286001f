"""The CLIs: a user mistake is exit 2 and one line starting with 'error:', never a traceback."""

import re

import pytest

from conftest import run_cli


# TensorFlow's C++ runtime logs a few lines on import (CUDA probing); not ours to silence.
NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} )")


def assert_one_line_error(done, expected):
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and not NATIVE_LOG.match(line)]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    assert expected in errors[0]


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("name: x\nbogus: 1\n", "unknown key 'bogus'"),
        ("data: {source: cifar}\n", "data.source: Input should be"),
        ("train: {epochs: many}\n", "train.epochs: Input should be a valid integer"),
        ("model: {zoo: digits_cnn, path: m.h5}\n", "give exactly one of zoo, path or builder"),
        ("name: [unclosed\n", "YAML syntax error"),
    ],
)
def test_train_bad_config_exits_2_with_one_line(tmp_path, yaml_text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    assert_one_line_error(run_cli("edgecomp.train", f"--config={path}"), expected)


def test_train_missing_config_file(tmp_path):
    assert_one_line_error(run_cli("edgecomp.train", f"--config={tmp_path}/missing.yaml"), "not found")


def test_train_without_config_flag():
    assert_one_line_error(run_cli("edgecomp.train"), "--config is required")


def test_train_bad_set_override():
    assert_one_line_error(
        run_cli("edgecomp.train", "--config=configs/quickstart.yaml", "--set", "train.epochs=-3"),
        "train.epochs: Input should be greater than or equal to 0",
    )


def test_train_unknown_flag():
    assert_one_line_error(run_cli("edgecomp.train", "--confg=x.yaml"), "Unknown command line flag 'confg'")


def test_train_missing_model_file_exits_2(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"name: x\noutput_dir: {tmp_path}\nmodel: {{path: {tmp_path}/absent.keras}}\n")
    assert_one_line_error(run_cli("edgecomp.train", f"--config={path}"), "does not exist")


def test_train_unwritable_output_dir_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = tmp_path / "c.yaml"
    path.write_text(f"name: x\noutput_dir: {blocker}\n")
    assert_one_line_error(run_cli("edgecomp.train", f"--config={path}"), "output_dir: cannot write")


@pytest.mark.parametrize("content, expected", [
    (b"", "only 0 bytes"),
    (b"hello world, this is not a model at all", "not a TFLite model"),
])
def test_bench_rejects_non_models(tmp_path, content, expected):
    path = tmp_path / "m.tflite"
    path.write_bytes(content)
    assert_one_line_error(run_cli("edgecomp.bench", f"--model={path}"), expected)


def test_bench_missing_model_flag():
    assert_one_line_error(run_cli("edgecomp.bench"), "--model is required")


def test_bench_runs_a_model_and_writes_json(tmp_path, converted):
    import json

    model = tmp_path / "m.tflite"
    model.write_bytes(converted("int8"))
    out = tmp_path / "out.json"
    done = run_cli("edgecomp.bench", f"--model={model}", "--runs=30", "--warmup=2", f"--json={out}")
    assert done.returncode == 0, done.stderr
    assert "latency ms:" in done.stdout
    record = json.loads(out.read_text())
    assert record["runs"] == 30
    assert record["latency_ms"]["min"] <= record["latency_ms"]["p50"] <= record["latency_ms"]["max"]
    # the device's outputs on 8 seeded inputs, checked against this machine's run of the same file
    assert "outputs: identical on 8 samples" in done.stdout
    assert record["output_check"]["verdict"] == "identical" and record["output_check"]["samples"] == 8
    assert "outputs" not in record


def test_bench_checks_outputs_on_the_users_inputs_and_refuses_inputs_of_another_shape(tmp_path, converted,
                                                                                   tiny_dataset):
    import numpy as np

    model = tmp_path / "m.tflite"
    model.write_bytes(converted("int8"))
    np.save(tmp_path / "x.npy", tiny_dataset.x_test[:5])
    done = run_cli("edgecomp.bench", f"--model={model}", "--runs=3", "--warmup=0", f"--inputs={tmp_path / 'x.npy'}")
    assert done.returncode == 0, done.stderr
    assert "outputs: identical on 5 samples" in done.stdout
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 3, 1), np.float32))
    assert_one_line_error(run_cli("edgecomp.bench", f"--model={model}", f"--inputs={tmp_path / 'bad.npy'}"),
                          "the model takes")


def test_train_refuses_lambda_model_file_without_trust(tmp_path):
    from edgecomp._keras import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    keras.Model(inputs, outputs).save(tmp_path / "lambda.h5")
    path = tmp_path / "c.yaml"
    path.write_text(f"name: x\noutput_dir: {tmp_path}\nmodel: {{path: {tmp_path}/lambda.h5}}\n")
    assert_one_line_error(run_cli("edgecomp.train", f"--config={path}"), "--trust_model")
