"""Device names never become command-line options (issue 23).

An ssh destination came before ssh's ``--``, so a host such as
``-oProxyCommand=touch x`` was read as an option and ssh ran the proxy command
here. The adb serial check of ``--device`` (``re.match`` with ``$``) let a serial
with a trailing newline through, which the config refused.
"""

import shutil

import pytest

from edgecomp import config
from edgecomp.devices import AdbDevice
from edgecomp.devices.ssh import SshDevice
from edgecomp.errors import ConfigError, DeviceError

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client (Debian: openssh-client)")


@needs_ssh
def test_ssh_host_starting_with_dash_is_a_host_name_not_an_option(tmp_path):
    marker = tmp_path / "proxy-command-ran"
    # Built directly: from_spec refuses such a host before ssh is ever run (tested below).
    device = SshDevice(user=None, host=f"-oProxyCommand=touch {marker}", name="ssh://hostile")
    done = device._ssh("true", timeout=30)
    assert done.returncode != 0
    assert not marker.exists(), "ssh read the host as -o ProxyCommand=... and ran it"


class Done:
    returncode, stdout, stderr = 0, "", ""


def test_ssh_and_scp_end_their_options_before_the_destination_and_the_files(monkeypatch, tmp_path):
    commands = []
    monkeypatch.setattr(SshDevice, "_run", lambda self, command, timeout: commands.append(command) or Done())
    device = SshDevice(user="-lroot", host="-oProxyCommand=x", port=2222, options=("-i", "key"), name="ssh://x")
    device._ssh("mktemp", "-d")
    device._scp([tmp_path / "-a.tflite"], "/tmp/edgecomp.1")
    ssh, scp = commands
    assert ssh[ssh.index("--") + 1:] == ["-lroot@-oProxyCommand=x", "mktemp -d"]
    assert scp[scp.index("--") + 1:] == [str(tmp_path / "-a.tflite"), "-lroot@-oProxyCommand=x:/tmp/edgecomp.1/"]
    for command in commands:   # the user's own ssh_options stay options
        assert command[command.index("-i") + 1] == "key" and command.index("-i") < command.index("--")


@pytest.mark.parametrize("spec", ["ssh://-oProxyCommand=touch%20x", "ssh://-oProxyCommand=x@host",
                                  "ssh://pi@-J:22"])
def test_ssh_spec_with_user_or_host_starting_with_dash_is_refused(spec):
    with pytest.raises(DeviceError, match="cannot start with '-'"):
        SshDevice.from_spec(spec)


def config_accepts(serial: str) -> bool:
    try:
        config.from_dict({"benchmark": {"devices": [f"adb://{serial}"], "adb_binary": "benchmark_model"}})
    except ConfigError:
        return False
    return True


def bench_accepts(serial: str) -> bool:
    try:
        AdbDevice.from_spec(f"adb://{serial}")
    except DeviceError:
        return False
    return True


@pytest.mark.parametrize("serial", ["R58M123", "192.168.1.5:5555", "emulator-5554", "R58M123\n", "R58M123\n\n",
                                    "-s", "a b", "x;reboot", "", "R58M\r", "\nR58M"])
def test_adb_serial_is_judged_alike_by_the_bench_cli_and_the_config(serial):
    assert bench_accepts(serial) == config_accepts(serial)
    if serial.endswith("\n"):
        assert not bench_accepts(serial)


def test_adb_cpu_mask_with_a_trailing_newline_is_refused():
    with pytest.raises(DeviceError, match="must be hexadecimal"):
        AdbDevice.from_spec("adb://R58M123", cpu_mask="f0\n")
