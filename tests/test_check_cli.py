"""python -m edgecomp.check: an existing .tflite judged by a target's rules and measured on data."""

import subprocess
import sys

import pytest

from edgecomp import config, data
from edgecomp._keras import keras
from edgecomp.targets.convert import convert


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    dataset = data.load(config.DataConfig(source="digits"), seed=0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(dataset.input_shape)
    hidden = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(hidden)))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(dataset.x_train, dataset.y_train, epochs=5, verbose=0)
    path = tmp_path_factory.mktemp("check") / "model.tflite"
    path.write_bytes(convert(model, "int8", calibration=dataset.x_train[:100]))
    return path


def check(*arguments, cwd):
    return subprocess.run([sys.executable, "-m", "edgecomp.check", *arguments], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


def test_a_file_that_meets_the_target_passes_with_its_measured_accuracy(int8_file, tmp_path):
    done = check(f"--model={int8_file}", "--target=cpu", "--data=digits", f"--json={tmp_path / 'v.json'}",
                 cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "for cpu: passed" in done.stdout and "ok   quantization" in done.stdout
    accuracy = float(done.stdout.split("accuracy ")[1].split()[0])
    assert accuracy > 0.8 and "on 359 test samples" in done.stdout
    assert (tmp_path / "v.json").exists()
    from edgecomp.native_logs import NATIVE_LINE

    assert not [line for line in done.stderr.splitlines() if NATIVE_LINE.match(line)], done.stderr  # quiet console


def test_a_file_that_breaks_a_rule_exits_1_naming_it(int8_file, tmp_path):
    done = check(f"--model={int8_file}", "--target=cpu", "--set=quantization=float16", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    assert "FAILED" in done.stdout and "FAIL quantization" in done.stdout


def test_a_corrupt_file_or_a_bad_key_is_one_error_line_and_exit_2(int8_file, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(int8_file.read_bytes()[:500])
    done = check(f"--model={broken}", "--target=cpu", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("error: "), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    done = check(f"--model={int8_file}", "--target=micro", "--set=flash=1", cwd=tmp_path)
    assert done.returncode == 2 and "unknown key" in done.stderr and "flash_kb" in done.stderr, done.stderr[-2000:]
