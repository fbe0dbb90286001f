"""The adb device, up to the phone: no phone was attached when these ran.

* the parser reads real ``benchmark_model`` outputs recorded by others; each file in
  ``tests/data/benchmark_model/`` names its repository, path and commit in its header;
* commands are built as argument lists and checked with a real POSIX shell;
* Debian's real ``adb`` client (its own server on a private port, stopped afterwards)
  is asked for a device that is not there.
"""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from edgecomp import config
from edgecomp.devices import AdbDevice, adb, benchmark_model, open_configured
from edgecomp.errors import ConfigError, DeviceError

FIXTURES = Path(__file__).parent / "data" / "benchmark_model"
ADB = shutil.which("adb")
needs_adb = pytest.mark.skipif(ADB is None, reason="adb not installed (.ci/run installs Debian's adb)")
NO_SUCH_SERIAL = "EDGECOMP-NO-SUCH-DEVICE-0"
HOSTILE_NAME = "model with spaces; rm -rf x.tflite"
# TensorFlow's C++ runtime logs a few lines on import (CUDA probing); not ours to silence.
NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} )")


def recorded(name: str) -> str:
    """A fixture's recorded output, without its header (which must cite where it came from)."""
    header, body = (FIXTURES / name).read_text().split("\n# ---\n", 1)
    assert "Source: repository" in header and "commit" in header
    return body


@pytest.fixture
def private_adb_server(monkeypatch):
    """Makes adb start its server on a free port of its own and stops that server afterwards."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", port)
    yield port
    subprocess.run([ADB, "kill-server"], env=dict(os.environ, ANDROID_ADB_SERVER_PORT=port),
                   capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="module")
def tiny_tflite():
    """An untrained Dense(2) model as .tflite bytes (the CLI checks that --model is a model)."""
    from edgecomp._keras import keras
    from edgecomp.targets import convert

    keras.utils.set_random_seed(0)
    return convert.convert(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


@pytest.fixture
def hostile_model(tmp_path):
    """A model file whose name holds spaces and a shell command; adb fails before reading it."""
    path = tmp_path / HOSTILE_NAME
    path.write_bytes(b"TFL3 never read: the device is missing")
    return path


# --- the parser, on recorded outputs ------------------------------------------------


def test_adb_parses_old_format_timings():
    parsed = benchmark_model.parse(recorded("old_format_tensorflow_readme.txt"))
    assert parsed["format"] == "older"
    assert parsed["init_ms"] == pytest.approx(38.467)
    assert parsed["warmup_mean_ms"] == pytest.approx(83.235)
    latency = parsed["latency_ms"]
    assert latency["mean"] == pytest.approx(79.7609)
    # The only statistics line there is the op profiler's per-run total; used, and said so.
    assert (latency["min"], latency["max"], latency["std"]) == pytest.approx((77.385, 88.213, 1.929))
    assert parsed["count"] == 50 and "profiler" in parsed["latency_source"]
    assert parsed["first_ms"] is None and latency["p50"] is None and parsed["memory_delta_mb"] is None
    assert {"first_ms", "latency_ms.p50", "latency_ms.p90", "latency_ms.p99", "memory_delta_mb",
            "peak_rss_mb"} <= set(parsed["not_available"])


def test_adb_parses_newer_format_run_line_not_the_profilers():
    parsed = benchmark_model.parse(recorded("newer_format_riscv64_op_profiling.txt"))
    latency = parsed["latency_ms"]
    assert parsed["format"] == "newer" and parsed["latency_source"] == "run statistics line"
    # count=50 first=2990275 ... min=2727568: the run line, not the profiler's min=2727203.
    assert parsed["count"] == 50
    assert (latency["mean"], latency["min"], latency["max"], latency["std"]) == pytest.approx(
        (2950.34, 2727.568, 3189.954, 109.798))
    assert (parsed["init_ms"], parsed["first_ms"]) == pytest.approx((17.187, 3512.391))
    assert parsed["memory_delta_mb"] == pytest.approx({"init": 4.21094, "overall": 46.0859})


def test_adb_parses_newest_format_with_median_and_log_prefixes():
    parsed = benchmark_model.parse(recorded("newest_format_xnnpack_am62x.txt"))
    latency = parsed["latency_ms"]
    assert parsed["count"] == 50
    assert (latency["p50"], latency["p5"], latency["p95"]) == pytest.approx((899.281, 898.333, 904.305))
    assert latency["p90"] is None and latency["p99"] is None
    assert parsed["delegate"] == "XNNPACK"
    assert parsed["delegate_detail"] == "XNNPACK: partially executed by it (1 delegate kernels)"
    assert parsed["memory_delta_mb"] == pytest.approx({"init": 146.363, "overall": 150.141})


def test_adb_delegate_is_read_back_not_assumed():
    # Recorded on a phone with --use_nnapi=true, but the output never says NNAPI was applied.
    parsed = benchmark_model.parse(recorded("newer_format_android_nnapi_mi11.txt"))
    assert parsed["delegate"] == "none"
    assert parsed["memory_delta_mb"] == pytest.approx({"init": 6.80469, "overall": 61.0078})  # TF 2.4's wording
    device = AdbDevice.from_spec("adb://R58M123", binary="x", delegate="nnapi")
    record = adb.make_record(device, parsed, runs=50, warmup=1, threads=4)
    assert record["delegate"] == "none" and record["delegate_requested"] == "nnapi"
    assert "asked for the nnapi delegate" in record["notes"][0]


def test_adb_failed_delegate_is_one_line_naming_it():
    with pytest.raises(benchmark_model.OutputError) as caught:
        benchmark_model.parse(recorded("failed_nnapi_delegate_mi11.txt"))
    message = str(caught.value)
    assert message.startswith("Failed to apply NNAPI delegate.") and "ANEURALNETWORKS_OP_FAILED" in message
    assert "\n" not in message


def test_adb_record_has_the_report_keys_and_names_what_is_missing():
    parsed = benchmark_model.parse(recorded("newest_format_xnnpack_am62x.txt"))
    record = adb.make_record(AdbDevice.from_spec("adb://R58M123", binary="x"), parsed, runs=50, warmup=1, threads=4)
    assert {"device", "threads", "runs", "latency_ms", "init_ms", "first_ms", "peak_rss_mb", "delegate"} <= set(record)
    assert set(adb.benchmark_model.LATENCY_KEYS) <= set(record["latency_ms"])
    assert record["peak_rss_mb"] is None and "peak_rss_mb" in record["not_available"]
    assert record["notes"] == []  # asked for xnnpack, XNNPACK reported
    assert json.loads(json.dumps(record)) == record


# --- commands: argument lists, quoting checked with a real shell -------------------------


def test_adb_quotes_every_remote_argument_of_a_hostile_model_name(tmp_path):
    folder = "/data/local/tmp/edgecomp-0123456789ab"
    canary = tmp_path / "pwned"
    model = f"{folder}/{HOSTILE_NAME}; touch {canary}"
    parts = adb.benchmark_arguments(f"{folder}/benchmark_model", model, runs=50, warmup=5, threads=4,
                                    delegate="gpu", cpu_mask="f0", max_secs=600)
    command = adb.shell_command("R58M123", parts)
    assert command[:4] == ["adb", "-s", "R58M123", "shell"] and len(command) == 5
    assert shlex.split(command[4]) == parts
    # A real POSIX shell (as the phone's) gets back exactly these arguments and runs nothing.
    echoed = subprocess.run(["sh", "-c", "printf '%s\\n' " + command[4]], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert echoed == parts and not canary.exists()
    assert parts[:2] == ["taskset", "f0"] and f"--graph={model}" in parts
    assert {"--num_threads=4", "--num_runs=50", "--warmup_runs=5", "--min_secs=0", "--use_gpu=true",
            "--report_peak_memory_footprint=true"} <= set(parts)   # the phone's peak memory, not only its growth


def test_adb_push_passes_paths_literally_as_single_arguments():
    local = Path("/tmp/my models") / HOSTILE_NAME
    command = adb.push_command("R58M123", local, f"/data/local/tmp/edgecomp-ab/{HOSTILE_NAME}")
    assert command == ["adb", "-s", "R58M123", "push", str(local), f"/data/local/tmp/edgecomp-ab/{HOSTILE_NAME}"]


@pytest.mark.parametrize("delegate, flag", [("xnnpack", "--use_xnnpack=true"), ("gpu", "--use_gpu=true"),
                                            ("nnapi", "--use_nnapi=true"), ("none", "--use_xnnpack=false")])
def test_adb_delegate_flags(delegate, flag):
    parts = adb.benchmark_arguments("b", "m.tflite", runs=1, warmup=0, threads=1, delegate=delegate)
    assert parts[0] == "b" and parts[-1] == flag


@pytest.mark.parametrize("spec, options, expected", [
    ("adb://", {}, "expected adb://SERIAL"),
    ("adb://a b", {}, "expected adb://SERIAL"),
    ("adb://x;reboot", {}, "expected adb://SERIAL"),
    ("adb://R58M123", {"delegate": "dsp"}, "unknown delegate 'dsp'"),
    ("adb://R58M123", {"cpu_mask": "0xf0"}, "must be hexadecimal"),
])
def test_bad_adb_specs_are_explained(spec, options, expected):
    with pytest.raises(DeviceError, match=expected):
        AdbDevice.from_spec(spec, **options)


def test_adb_binary_for_another_abi_is_refused():
    properties = adb.parse_properties("[ro.product.cpu.abi]: [arm64-v8a]\n"
                                      "[ro.product.cpu.abilist]: [arm64-v8a,armeabi-v7a,armeabi]\n")
    assert properties["ro.product.cpu.abilist"] == "arm64-v8a,armeabi-v7a,armeabi"
    host_binary = Path(os.path.realpath(sys.executable))  # an x86-64 (or host) ELF file
    with pytest.raises(DeviceError, match="is built for .* the device runs arm64-v8a, armeabi-v7a"):
        adb._check_abi(host_binary, properties, "adb://R58M123")


# --- Debian's real adb, no device attached -------------------------------------------


@needs_adb
def test_adb_without_device_is_one_line_error(private_adb_server, hostile_model):
    device = AdbDevice.from_spec(f"adb://{NO_SUCH_SERIAL}", binary=sys.executable)
    with pytest.raises(DeviceError) as caught:
        device.benchmark(hostile_model, runs=1, warmup=0)
    message = str(caught.value)
    assert message.startswith(f"adb://{NO_SUCH_SERIAL}: no device with serial '{NO_SUCH_SERIAL}' is attached")
    assert "adb devices" in message and "\n" not in message


@needs_adb
def test_bench_cli_without_device_exits_2_with_one_line(private_adb_server, tmp_path, tiny_tflite):
    hostile_model = tmp_path / HOSTILE_NAME
    hostile_model.write_bytes(tiny_tflite)
    env = dict(os.environ, PYTHONPATH=str(ROOT), ANDROID_ADB_SERVER_PORT=private_adb_server)
    done = subprocess.run([sys.executable, "-m", "edgecomp.bench", f"--model={hostile_model}",
                           f"--device=adb://{NO_SUCH_SERIAL}", "--benchmark-binary", sys.executable, "--runs=1"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip() and not NATIVE_LOG.match(line)]
    assert len(lines) == 1 and lines[0].startswith(f"error: adb://{NO_SUCH_SERIAL}: no device"), done.stderr


@needs_adb
def test_adb_unauthorized_and_offline_messages_become_one_line():
    # adb's own wording, as compiled into the installed client (adb/transport.cpp builds the
    # unauthorized message from these pieces); no device here can make adb print it.
    client = Path(os.path.realpath(ADB)).read_bytes()
    pieces = ["device unauthorized.", "This adb server's $ADB_VENDOR_KEYS is ",
              "Try 'adb kill-server' if that seems wrong.", "Otherwise check for a confirmation dialog on your device.",
              "device offline"]
    assert all(piece.encode() in client for piece in pieces)
    unauthorized = "error: " + pieces[0] + "\n" + pieces[1] + "not set\n" + pieces[2] + "\n" + pieces[3] + "\n"
    line = adb.attach_error("adb://R58M123", "R58M123", unauthorized)
    assert "has not authorized this computer" in line and "Allow USB debugging" in line and "\n" not in line
    line = adb.attach_error("adb://R58M123", "R58M123", "error: device offline\n")
    assert "is offline" in line and "\n" not in line


def test_adb_missing_client_is_explained(monkeypatch, tmp_path, hostile_model):
    monkeypatch.setenv("PATH", str(tmp_path))  # no adb anywhere on it
    device = AdbDevice.from_spec("adb://R58M123", binary=sys.executable)
    with pytest.raises(DeviceError, match="the 'adb' client is not installed here .*apt-get install adb"):
        device.benchmark(hostile_model, runs=1, warmup=0)


@pytest.mark.parametrize("binary, expected", [(None, "no benchmark_model binary given; set benchmark.adb_binary"),
                                              ("/nonexistent/benchmark_model", "not found")])
def test_adb_missing_benchmark_binary_is_explained(hostile_model, binary, expected):
    with pytest.raises(DeviceError, match=expected):
        AdbDevice.from_spec("adb://R58M123", binary=binary).benchmark(hostile_model, runs=1, warmup=0)


# --- config ------------------------------------------------------------------------


def test_adb_config_keys_reach_the_device():
    cfg = config.from_dict({"benchmark": {"devices": ["adb://R58M123"], "adb_binary": "bin/benchmark_model",
                                          "adb_delegate": "gpu", "adb_cpu_mask": "f0"}})
    device = open_configured(cfg.benchmark.devices[0], cfg.benchmark)
    assert (device.serial, device.binary, device.delegate, device.cpu_mask) == (
        "R58M123", "bin/benchmark_model", "gpu", "f0")


@pytest.mark.parametrize("benchmark, expected", [
    ({"devices": ["adb://R58M123"]}, "needs benchmark.adb_binary"),
    ({"devices": ["adb://"], "adb_binary": "b"}, "expected adb://SERIAL"),
    ({"devices": ["adb://R58M123"], "adb_binary": "b", "adb_cpu_mask": "big"}, "adb_cpu_mask"),
    ({"devices": ["adb://R58M123"], "adb_binary": "b", "adb_delegate": "dsp"}, "adb_delegate"),
])
def test_bad_adb_config_is_one_line(benchmark, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)) as caught:
        config.from_dict({"benchmark": benchmark})
    assert "\n" not in str(caught.value)
