"""The ssh device against a real sshd on 127.0.0.1, with a device venv of only numpy + LiteRT."""

import subprocess
from pathlib import Path

import pytest

import sshd
from edgecomp.devices import LocalDevice, open_device, output_check
from edgecomp.devices.ssh import SshDevice
from edgecomp.errors import DeviceError

pytestmark = pytest.mark.skipif(not sshd.available(), reason="OpenSSH server not installed (.ci/run installs it)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sshd")
    running = sshd.LoopbackSshd(folder)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def device_venvs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("device")
    return {"litert": sshd.device_python(folder / "litert"), "bare": sshd.device_python(folder / "bare", ())}


def remote_folders():
    return sorted(p.name for p in Path("/tmp").glob("edgecomp.*"))


def device(server, python, user="root"):
    return open_device(f"ssh://{user}@127.0.0.1:{server.port}?python={python}", ssh_options=server.options)


@pytest.fixture
def model_file(tmp_path, converted):
    path = tmp_path / "model with spaces; rm -rf x.tflite"
    path.write_bytes(converted("int8"))
    return path


def test_ssh_results_match_local_and_leave_nothing_behind(server, device_venvs, model_file, tiny_dataset):
    before = remote_folders()
    remote = device(server, device_venvs["litert"]).benchmark(model_file, runs=30, warmup=3,
                                                              inputs=tiny_dataset.x_test[:1])
    local = LocalDevice().benchmark(model_file, runs=30, warmup=3, inputs=tiny_dataset.x_test[:1])
    assert remote["device"].startswith("ssh://root@127.0.0.1")
    assert remote["runtime"].startswith("ai_edge_litert")
    assert remote["delegate"] == local["delegate"] == "XNNPACK"
    assert remote["runs"] == 30 and len(remote["latency_samples_ms"]) == 30
    # The device computed what this machine computes on the same sample.
    expected = output_check.reference(model_file.read_bytes(), tiny_dataset.x_test[:1])
    assert output_check.compare(remote["outputs"], expected)["verdict"] == "identical"
    # Same machine underneath: medians within a factor of 3 of each other (noise, not a benchmark).
    assert 1 / 3 < remote["latency_ms"]["p50"] / local["latency_ms"]["p50"] < 3
    assert remote_folders() == before


def test_device_without_runtime_says_which_pip_install(server, device_venvs, model_file):
    bare = device_venvs["bare"]
    subprocess.run([str(bare), "-m", "pip", "install", "-q", "numpy"], check=True)
    before = remote_folders()
    with pytest.raises(DeviceError, match="no TFLite runtime .* pip install ai-edge-litert"):
        device(server, bare).benchmark(model_file, runs=2, warmup=0)
    assert remote_folders() == before


def test_model_the_device_cannot_load_is_a_device_error(server, device_venvs, tmp_path, converted):
    path = tmp_path / "broken.tflite"
    content = converted("float32")
    path.write_bytes(content[: len(content) // 3])
    before = remote_folders()
    with pytest.raises(DeviceError, match="cannot load broken.tflite"):
        device(server, device_venvs["litert"]).benchmark(path, runs=2, warmup=0)
    assert remote_folders() == before


def test_a_device_process_killed_by_a_signal_is_named_with_its_stderr_tail(server, model_file, tmp_path):
    """A runtime that crashes in its CPU detection, as tflite-runtime did under qemu-user: a real SIGSEGV."""
    crashing = tmp_path / "python3"
    crashing.write_text("#!/bin/sh\necho 'cpuinfo: unknown CPU, giving up' >&2\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    before = remote_folders()
    with pytest.raises(DeviceError) as caught:
        device(server, crashing).benchmark(model_file, runs=3, warmup=0)
    message = str(caught.value)
    assert "killed by SIGSEGV (signal 11)" in message and "cpuinfo: unknown CPU, giving up" in message
    assert "edgecomp-signal" not in message and "\n" not in message
    assert remote_folders() == before


def test_bench_on_a_device_whose_runtime_computes_something_else_exits_1_with_the_figures(server, device_venvs,
                                                                                         model_file, tmp_path):
    """A broken device: its runtime hands back the classes in reverse order (a sitecustomize on the device)."""
    from conftest import run_cli

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "sitecustomize.py").write_text(
        "import ai_edge_litert.interpreter as module\n"
        "_get = module.Interpreter.get_tensor\n"
        "module.Interpreter.get_tensor = lambda self, index, *a, **k: _get(self, index, *a, **k)[..., ::-1].copy()\n")
    python = tmp_path / "python3"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={broken} exec {device_venvs['litert']} \"$@\"\n")
    python.chmod(0o755)
    options = [f"--ssh_option={option}" for option in server.options]
    done = run_cli("edgecomp.bench", f"--model={model_file}", f"--device=ssh://root@127.0.0.1:{server.port}?python={python}",
                   *options, "--runs=3", "--warmup=0", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "outputs: wrong on 8 samples" in done.stdout
    assert "computes something different from this machine" in done.stderr and "its latency is not a result" in done.stderr


def test_wrong_user_is_refused_with_one_line(server, device_venvs, model_file):
    with pytest.raises(DeviceError, match="cannot log in: .*(Permission denied|Invalid)"):
        device(server, device_venvs["litert"], user="nobody").benchmark(model_file, runs=1, warmup=0)


def test_unreachable_host_is_a_device_error(model_file):
    port = sshd.free_port()  # nothing listens there
    with pytest.raises(DeviceError, match="cannot log in: .*(refused|Connection)"):
        SshDevice.from_spec(f"ssh://root@127.0.0.1:{port}").benchmark(model_file, runs=1, warmup=0)


def test_unknown_host_key_is_not_trusted_by_default(server, model_file, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = ("-i", str(server.folder / "keys" / "client"), "-o", "IdentitiesOnly=yes", "-F", "/dev/null",
               "-o", f"UserKnownHostsFile={empty}")
    spec = f"ssh://root@127.0.0.1:{server.port}"
    with pytest.raises(DeviceError, match="cannot log in: .*(verification failed|No .* host key)"):
        open_device(spec, ssh_options=options).benchmark(model_file, runs=1, warmup=0)


@pytest.mark.parametrize("spec, expected", [
    ("ssh://", "expected ssh://user@host"),
    ("ssh://pi@host:99999", "port must be a number"),
    ("ssh://pi@host?pyton=x", "unknown option 'pyton'"),
])
def test_bad_ssh_specs_are_explained(spec, expected):
    with pytest.raises(DeviceError, match=expected):
        SshDevice.from_spec(spec)


def test_shell_metacharacters_in_paths_and_specs_never_run_as_commands(server, tmp_path, converted):
    # The "device" is this machine: its python (sys.executable) has numpy and LiteRT.
    import sys
    import uuid

    canary = f"edgecomp-canary-{uuid.uuid4().hex[:8]}"
    places = [Path.home() / canary, Path("/tmp") / canary, Path.cwd() / canary, tmp_path / canary]
    model = tmp_path / f"m; touch {canary}; $(touch {canary}) `touch {canary}` 'q' \"d\" & | > .tflite"
    model.write_bytes(converted("int8"))
    before = remote_folders()
    result = device(server, sys.executable).benchmark(model, runs=3, warmup=0)
    assert result["runs"] == 3 and result["device"].startswith("ssh://root@127.0.0.1")
    with pytest.raises(DeviceError, match="not found on the device"):
        device(server, f"python3; touch {canary}").benchmark(model, runs=1, warmup=0)
    with pytest.raises(DeviceError, match="cannot log in"):
        open_device(f"ssh://root@$(touch {canary}):{server.port}", ssh_options=server.options).benchmark(
            model, runs=1, warmup=0)
    assert not [place for place in places if place.exists()]
    assert remote_folders() == before
