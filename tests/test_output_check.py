"""Every benchmark checks that the device computes what this machine computes on the same file."""

import pytest

from edgecomp import pipeline_benchmark
from edgecomp.devices import LocalDevice, output_check
from edgecomp.report import TargetRecord


def outputs(values, dtype="int8"):
    return {"dtype": dtype, "scale": 0.1, "zero_point": 0, "values": values}


@pytest.mark.parametrize("device, verdict, figure", [
    (outputs([[1, 2, 3], [4, 5, 6]]), "identical", 0),
    (outputs([[1, 2, 4], [4, 5, 6]]), "within tolerance", 1),     # one step: kernels may round differently
    (outputs([[1, 40, 3], [4, 5, 6]]), "wrong", 38),                # the first sample's top class changed
    (outputs([[1, 2, 3], [4, 5, 36]]), "differs", 30),              # far off, but every top class kept
    (outputs([[1, 2, 3]]), "wrong", None),                         # fewer outputs than asked for
])
def test_integer_outputs_are_compared_in_quantization_steps(device, verdict, figure):
    check = output_check.compare(device, outputs([[1, 2, 3], [4, 5, 6]]))
    assert check["verdict"] == verdict
    if figure is not None:
        assert check["max_steps"] == figure and check["differing_values"] == (figure > 0)


def test_float_outputs_are_compared_relative_to_the_largest_output():
    local = outputs([[10.0, -2.0], [3.0, 1.0]], "float32")
    assert output_check.compare(outputs([[10.0, -2.0], [3.0, 1.0]], "float32"), local)["verdict"] == "identical"
    assert output_check.compare(outputs([[10.005, -2.0], [3.0, 1.0]], "float32"), local)["verdict"] == \
        "within tolerance"
    differs = output_check.compare(outputs([[10.0, -2.0], [3.5, 1.0]], "float32"), local)
    assert differs["verdict"] == "differs" and differs["max_relative_difference"] == pytest.approx(0.05)
    assert output_check.compare(outputs([[10.0, -2.0], [0.5, 1.0]], "float32"), local)["verdict"] == "wrong"
    infinite = outputs([[float("inf"), -2.0], [3.0, float("nan")]], "float32")
    assert output_check.compare(infinite, infinite)["verdict"] == "identical"


@pytest.mark.parametrize("quantization", ["float32", "int8"])
def test_local_benchmark_outputs_match_this_machine_with_and_without_xnnpack(tmp_path, converted, tiny_dataset,
                                                                             quantization):
    path = tmp_path / "model.tflite"
    path.write_bytes(converted(quantization))
    samples = tiny_dataset.x_test[:8]
    expected = output_check.reference(path.read_bytes(), samples)
    assert len(expected["values"]) == 8
    same = LocalDevice().benchmark(path, runs=3, warmup=0, inputs=samples)
    assert output_check.compare(same["outputs"], expected)["verdict"] == "identical"
    # TFLite's own kernels instead of XNNPACK's: the same function, rounded perhaps differently.
    plain = LocalDevice(xnnpack=False).benchmark(path, runs=3, warmup=0, inputs=samples)
    check = output_check.compare(plain["outputs"], expected)
    assert check["verdict"] in ("identical", "within tolerance"), (check, plain["outputs"], expected)


def test_a_device_that_computes_something_else_fails_the_target_with_the_figures():
    record = TargetRecord("cpu", "int8", "cpu/model.tflite", 10, 5, {"accuracy": 0.9},
                          {"ok": True, "details": {"rules": []}})
    check = output_check.compare(outputs([[1, 40, 3], [4, 5, 6]]), outputs([[1, 2, 3], [4, 5, 6]]))
    pipeline_benchmark.output_rule(record, "ssh://pi@raspberrypi", 1, check)
    [rule] = record.compatibility["details"]["rules"]
    assert rule["rule"] == "outputs_on_ssh" and not rule["ok"] and not record.compatibility["ok"]
    assert "1 of 6 values differ, up to 38 step(s)" in rule["detail"] and "ssh://pi@raspberrypi" in rule["detail"]
