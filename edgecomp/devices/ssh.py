"""The ``ssh://user@host[:port]`` device: Raspberry Pi and other Linux boards.

Uses the system ``ssh`` and ``scp``, so the user's keys, ``~/.ssh/config`` and
``known_hosts`` apply; host-key checking stays on (``BatchMode=yes`` makes an
unknown host an error instead of a prompt). For each benchmark it creates a
private temporary folder on the device (``mktemp -d``), copies the model and the
self-contained ``agent.py`` there, runs the agent with the device's ``python3``
(any runtime it has: ``ai_edge_litert``, else ``tflite_runtime``), reads back one
JSON line, and removes the folder, also on errors.

Spec: ``ssh://user@host[:port][?python=/path/to/python3]``; ``python`` picks the
interpreter on the device (e.g. a virtual environment's). Extra ``ssh`` options
(``-i key``, ``-o UserKnownHostsFile=...``) come from ``benchmark.ssh_options``
or ``--ssh_option``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import signal
import subprocess
import tempfile
import urllib.parse
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgecomp.devices.local import AGENT, stderr_tail
from edgecomp.errors import DeviceError
from edgecomp.progress import Ticker

EXIT_NO_RUNTIME = 3
EXIT_BAD_MODEL = 4
STEP_TIMEOUT_S = 60.0
# Appended to the agent's remote command (a constant: no user data): a process killed by a
# signal leaves the shell with status 128 + N, which ssh itself would turn into its own 255.
SIGNAL_REPORT = ('; status=$?; if [ "$status" -gt 128 ]; then echo "edgecomp-signal $((status - 128))" >&2; fi; '
                 'exit "$status"')


@dataclasses.dataclass(frozen=True)
class SshDevice:
    """A Linux board reached with the system ssh client."""

    user: Optional[str]
    host: str
    port: Optional[int] = None
    python: str = "python3"
    options: tuple[str, ...] = ()
    name: str = ""

    @classmethod
    def from_spec(cls, spec: str, options: Sequence[str] = ()) -> "SshDevice":
        """Parses ``ssh://user@host[:port][?python=...]``.

        Raises:
            DeviceError: the spec has no host, a host or user starting with "-", a bad port,
                or unknown query keys.
        """
        parsed = urllib.parse.urlsplit(spec)
        try:
            port = parsed.port
        except ValueError:
            raise DeviceError(f"device {spec!r}: the port must be a number 1-65535") from None
        if parsed.scheme != "ssh" or not parsed.hostname:
            raise DeviceError(f"device {spec!r}: expected ssh://user@host[:port]")
        if parsed.hostname.startswith("-") or (parsed.username or "").startswith("-"):
            raise DeviceError(f"device {spec!r}: a user or host name cannot start with '-'; "
                              "give the name or address of the device, e.g. ssh://pi@raspberrypi.local")
        query = urllib.parse.parse_qs(parsed.query)
        unknown = sorted(set(query) - {"python"})
        if unknown:
            raise DeviceError(f"device {spec!r}: unknown option {unknown[0]!r}; allowed: python")
        python = query.get("python", ["python3"])[0]
        return cls(parsed.username, parsed.hostname, port, python, tuple(options), spec)

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _ssh(self, *remote: str, timeout: float = STEP_TIMEOUT_S, suffix: str = "") -> subprocess.CompletedProcess:
        # The remote side runs a shell: every argument is quoted, nothing from the
        # user (paths, names) is ever spliced into a command string unquoted. "--" ends
        # ssh's options before the destination, so a host such as "-oProxyCommand=..."
        # is a host name, never an option; the command after it is not parsed either.
        command = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", *self.options]
        if self.port:
            command += ["-p", str(self.port)]
        command += ["--", self.target, " ".join(shlex.quote(part) for part in remote) + suffix]
        return self._run(command, timeout)

    def _scp(self, sources: list[Path], folder: str) -> None:
        command = ["scp", "-q", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", *self.options]
        if self.port:
            command += ["-P", str(self.port)]
        # "--" as for ssh: the sources and the destination are never read as options.
        command += ["--", *(str(s) for s in sources), f"{self.target}:{folder}/"]
        done = self._run(command, STEP_TIMEOUT_S * 5)
        if done.returncode != 0:
            raise DeviceError(f"{self.name}: copying to the device failed: {_last_line(done.stderr)}")

    def _run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.name}: {command[0]} did not finish in {timeout:.0f} s") from None
        except FileNotFoundError:
            raise DeviceError(f"{self.name}: the {command[0]!r} client is not installed here "
                              "(Debian: apt-get install openssh-client)") from None

    def benchmark(self, model_path, *, runs=100, warmup=10, threads=1, inputs=None, timeout_s=600.0) -> dict:
        """Benchmarks one ``.tflite`` on the device; returns the agent's record plus ``device``.

        Raises:
            DeviceError: unreachable host, refused login, no runtime on the device, or
                a model the device cannot load; the message says which and what to do.
        """
        made = self._ssh("mktemp", "-d", "/tmp/edgecomp.XXXXXXXX")
        if made.returncode != 0:
            raise DeviceError(f"{self.name}: cannot log in: {_last_line(made.stderr)}")
        folder = made.stdout.strip().splitlines()[-1]
        try:
            return self._benchmark_in(folder, Path(model_path), runs, warmup, threads, inputs, timeout_s)
        finally:
            self._ssh("rm", "-rf", folder)

    def _benchmark_in(self, folder, model_path, runs, warmup, threads, inputs, timeout_s) -> dict:
        with tempfile.TemporaryDirectory(prefix="edgecomp-ssh-") as local:
            sources = [AGENT, model_path]
            arguments = ["--model", f"{folder}/{model_path.name}", "--runs", str(runs), "--warmup", str(warmup),
                         "--threads", str(threads)]
            if inputs is not None:
                inputs_path = Path(local) / "inputs.npy"
                np.save(inputs_path, np.asarray(inputs, dtype=np.float32))
                sources.append(inputs_path)
                arguments += ["--inputs", f"{folder}/inputs.npy"]
            self._scp(sources, folder)
        with Ticker(f"{self.name}: benchmarking {model_path.name} ({runs} runs)"):
            done = self._ssh(self.python, "-X", "faulthandler", f"{folder}/{AGENT.name}", *arguments,
                             timeout=timeout_s, suffix=SIGNAL_REPORT)
        killed = re.search(r"^edgecomp-signal (\d+)$", done.stderr, re.M)
        if killed:
            raise DeviceError(f"{self.name}: the runtime process on the device was killed by "
                              f"{_signal_name(int(killed.group(1)))} running {model_path.name}; its stderr ended: "
                              f"{stderr_tail(done.stderr.replace(killed.group(0), ''))}")
        if done.returncode == EXIT_NO_RUNTIME:
            raise DeviceError(
                f"{self.name}: no TFLite runtime for {self.python} on the device; install one there: "
                "pip install ai-edge-litert (64-bit OS) or pip install tflite-runtime==2.14.0 'numpy<2' (32-bit armv7)"
            )
        if done.returncode == EXIT_BAD_MODEL:
            raise DeviceError(f"{self.name}: the device's runtime cannot load {model_path.name}: "
                              f"{_last_line(done.stderr)}")
        if done.returncode == 127:
            raise DeviceError(f"{self.name}: {self.python!r} not found on the device; install Python 3 and numpy "
                              "there, or set ?python=/path/to/python3 in the device spec")
        if "No module named 'numpy'" in done.stderr:
            raise DeviceError(f"{self.name}: numpy is missing for {self.python} on the device: pip install numpy there")
        if done.returncode != 0:
            raise DeviceError(f"{self.name}: the benchmark failed on the device: {_last_line(done.stderr)}")
        try:
            record = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise DeviceError(f"{self.name}: the agent printed no result") from None
        return {"device": self.name, **record}


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} (signal {number})"
    except ValueError:
        return f"signal {number}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
