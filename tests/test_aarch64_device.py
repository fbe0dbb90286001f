"""The ssh device against an emulated aarch64 "Raspberry Pi" (tools/aarch64_device.sh), when one is running.

Building the device takes ~6 minutes and root (debootstrap, binfmt_misc), more than the test
budget, so the test runs when ``EDGECOMP_AARCH64_FLAGS`` holds the flags ``aarch64_device.sh start``
printed (``--device=ssh://...`` and the ``--ssh_option`` flags), and is skipped otherwise.
"""

import json
import os
import shlex

import pytest

from conftest import run_cli

FLAGS = os.environ.get("EDGECOMP_AARCH64_FLAGS")
pytestmark = pytest.mark.skipif(not FLAGS, reason="no emulated aarch64 device: run sudo tools/aarch64_device.sh "
                                                  "build/start and set EDGECOMP_AARCH64_FLAGS to what start printed")


def test_bench_on_the_aarch64_device_checks_its_outputs_and_says_what_it_ran_on(tmp_path, converted):
    model = tmp_path / "model.tflite"
    model.write_bytes(converted("int8"))
    out = tmp_path / "pi.json"
    done = run_cli("edgecomp.bench", f"--model={model}", *shlex.split(FLAGS), "--runs=5", "--warmup=1",
                   f"--json={out}", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device_info"]["machine"] == "aarch64"
    assert result["runtime"].split()[0] in ("ai_edge_litert", "tflite_runtime")
    allowed = ("identical",) if result["runtime"].startswith("ai_edge_litert") else ("identical", "within tolerance")
    assert result["output_check"]["verdict"] in allowed, result["output_check"]   # same LiteRT as here: identical
    assert result["latency_ms"]["p50"] > 0
