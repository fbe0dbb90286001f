"""The local benchmark: a child process, sane statistics, the delegate read back."""

import pytest

from edgecomp.devices import LocalDevice, open_device
from edgecomp.errors import DeviceError


def test_local_benchmark_statistics_are_ordered(tmp_path, converted, tiny_dataset):
    path = tmp_path / "m.tflite"
    path.write_bytes(converted("int8"))
    result = LocalDevice().benchmark(path, runs=50, warmup=5, threads=1, inputs=tiny_dataset.x_test[:1])
    latency = result["latency_ms"]
    assert result["device"] == "local" and result["runs"] == 50
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert len(result["latency_samples_ms"]) == 50
    assert result["init_ms"] > 0 and result["first_ms"] > 0
    assert 0 < result["peak_rss_mb"] < 2000
    assert result["delegate"] == "XNNPACK"
    assert result["runtime"].startswith("ai_edge_litert")
    info = result["device_info"]
    import os
    import platform

    assert info["machine"] == platform.machine() and info["cores"] == os.cpu_count()
    assert 1 <= info["cores_usable"] <= info["cores"]
    assert set(info["read_from"]) == set(info) - {"read_from"}   # every figure says where it was read


def test_xnnpack_off_is_reported_as_no_delegate(tmp_path, converted):
    path = tmp_path / "m.tflite"
    path.write_bytes(converted("float32"))
    result = LocalDevice(xnnpack=False).benchmark(path, runs=5, warmup=0)
    assert result["delegate"] == "none"


def test_model_the_runtime_cannot_load_is_a_device_error(tmp_path, converted):
    path = tmp_path / "m.tflite"
    content = converted("float32")
    path.write_bytes(content[: len(content) // 3])
    with pytest.raises(DeviceError, match="failed"):
        LocalDevice().benchmark(path, runs=2, warmup=0)


def test_unknown_device_spec_is_rejected():
    with pytest.raises(DeviceError, match="not supported; allowed: local"):
        open_device("usb://123")


def test_timing_loop_reads_the_clock_only_around_each_invoke():
    from edgecomp.devices import agent

    now = [0.0]
    calls = []

    def clock():
        now[0] += 1.0  # every clock read costs one tick
        return now[0]

    def invoke():
        calls.append(now[0])
        now[0] += 10.0

    latencies = agent.time_invokes(invoke, 5, clock=clock)
    # Each latency is the invoke plus exactly one clock read: nothing else sits in between.
    assert latencies == [11.0] * 5 and len(calls) == 5


@pytest.mark.parametrize("recorded, expected", [
    ("x86_64_host.txt", "Intel(R) Xeon(R) Processor"),             # this machine; its numeric "model: 167" comes first
    ("raspberry_pi4_aarch64.txt", "Raspberry Pi 4 Model B Rev 1.4"),  # 64-bit Pi OS, as users posted it
    ("raspberry_pi4_armv7.txt", "Raspberry Pi 4 Model B Rev 1.1"),    # 32-bit Pi OS: the board, not "ARMv7 Processor"
])
def test_device_info_names_the_cpu_or_board_from_recorded_cpuinfo(recorded, expected):
    from pathlib import Path

    from edgecomp.devices import agent

    text = (Path(__file__).parent / "data" / "cpuinfo" / recorded).read_text()
    assert agent.cpu_name(text) == expected


def _as_compiled_for_edgetpu(content: bytes) -> bytes:
    """``content`` with its first operator turned into the custom op edgetpu_compiler writes."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    code = model.operatorCodes[0]
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = "edgetpu-custom-op"
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_a_file_compiled_for_the_edgetpu_asks_for_its_runtime_by_name(tmp_path, converted):
    """Up to the accelerator: the agent loads the Edge TPU delegate for such a file and says what is missing."""
    from edgecomp.devices import agent

    content = _as_compiled_for_edgetpu(converted("int8"))
    assert agent.compiled_for_edgetpu(content) and not agent.compiled_for_edgetpu(converted("int8"))
    path = tmp_path / "model_edgetpu.tflite"
    path.write_bytes(content)
    with pytest.raises(DeviceError, match=r"compiled for the Edge TPU .*libedgetpu\.so\.1 could not be loaded.*"
                                          r"libedgetpu1-std"):
        LocalDevice().benchmark(path, runs=2, warmup=0)


def test_the_edgetpu_library_can_be_named_and_a_library_that_is_no_delegate_is_refused(tmp_path, converted, capsys):
    from edgecomp.devices import agent

    path = tmp_path / "model_edgetpu.tflite"
    path.write_bytes(_as_compiled_for_edgetpu(converted("int8")))
    assert agent.main(["--model", str(path), "--runs", "1", "--edgetpu-library", "libm.so.6"]) == agent.EXIT_BAD_MODEL
    assert "libm.so.6 could not be loaded" in capsys.readouterr().err
