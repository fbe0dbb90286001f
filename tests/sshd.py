"""A real OpenSSH server on 127.0.0.1 for tests: throwaway keys, its own config, no system changes.

The device side is a virtual environment with only numpy and ai-edge-litert, as on
a Raspberry Pi; no TensorFlow and no edgecomp there.
"""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def available() -> bool:
    return Path(SSHD).exists() and shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LoopbackSshd:
    """Starts sshd on a free loopback port; ``options`` are the client options that trust it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        keys = folder / "keys"
        keys.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host")], check=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client")], check=True)
        shutil.copy(keys / "client.pub", keys / "authorized_keys")
        host_public = (keys / "host.pub").read_text().split()
        (keys / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_public[0]} {host_public[1]}\n")
        config = folder / "sshd_config"
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {keys / 'host'}",
            f"AuthorizedKeysFile {keys / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", "",
        ]))
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE,
                                        stdout=subprocess.DEVNULL)
        self.options = ("-i", str(keys / "client"), "-o", f"UserKnownHostsFile={keys / 'known_hosts'}",
                        "-o", "IdentitiesOnly=yes", "-F", "/dev/null")
        self._wait()

    def _wait(self):
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.process.stderr.read().decode()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sshd did not start listening in 15 s")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def device_python(folder: Path, packages=("numpy", "ai-edge-litert")) -> Path:
    """A virtual environment with only ``packages``; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python3"
    if packages:
        subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True, timeout=600)
    return python
