"""The ``adb://SERIAL`` device: an Android phone running TFLite's ``benchmark_model``.

Uses the system ``adb``. For each benchmark edgecomp checks that the device is
attached and authorized, reads its model, Android version and ABI (``getprop``),
makes a private folder under ``/data/local/tmp``, pushes the model and the
``benchmark_model`` binary there (its path comes from ``benchmark.adb_binary`` or
``--benchmark_binary``: the tool must be built for the phone, edgecomp cannot ship
it), runs it with the thread count, the delegate flag and an optional ``taskset``
CPU mask, parses what it prints (``benchmark_model.parse``) and removes the
folder, also when something fails. Every step has a time limit.

``adb shell`` joins its arguments with spaces and hands the result to the phone's
shell, so every remote argument is quoted with ``shlex.quote``; ``adb push`` takes
paths literally (no shell), so they are passed as they are. No command is ever a
local shell string.

Example:
    >>> device = AdbDevice.from_spec("adb://R58M123", binary="android_aarch64_benchmark_model")
    >>> device.benchmark("model.tflite", runs=50)              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import shlex
import subprocess
from pathlib import Path
from typing import Optional, Sequence

from edgecomp.config import ADB_SERIAL_PATTERN
from edgecomp.devices import benchmark_model
from edgecomp.errors import DeviceError
from edgecomp.progress import Ticker

log = logging.getLogger(__name__)

REMOTE_ROOT = "/data/local/tmp"
REMOTE_BINARY = "benchmark_model"
# Both are matched against the whole string (fullmatch): "$" would let a trailing newline through.
SERIAL = re.compile(ADB_SERIAL_PATTERN)  # the config's pattern, so --device and benchmark.devices agree
CPU_MASK = re.compile(r"[0-9a-fA-F]{1,16}")
DELEGATE_FLAGS = {
    "xnnpack": ("--use_xnnpack=true",),
    "gpu": ("--use_gpu=true",),
    "nnapi": ("--use_nnapi=true",),
    "none": ("--use_xnnpack=false",),
}
STEP_TIMEOUT_S = 60.0
PUSH_TIMEOUT_S = 300.0
# ELF e_machine values of the Android ABIs (the binary must be built for one the phone runs).
ELF_MACHINES = {0xB7: "arm64-v8a", 0x28: "armeabi-v7a", 0x3E: "x86_64", 0x03: "x86"}


@dataclasses.dataclass(frozen=True)
class AdbDevice:
    """An Android device reached with the system adb client."""

    serial: str
    binary: Optional[str] = None
    delegate: str = "xnnpack"
    cpu_mask: Optional[str] = None
    name: str = ""

    @classmethod
    def from_spec(cls, spec: str, binary: Optional[str] = None, delegate: str = "xnnpack",
                  cpu_mask: Optional[str] = None) -> "AdbDevice":
        """Parses ``adb://SERIAL`` (the serial ``adb devices`` prints).

        Raises:
            DeviceError: a malformed serial, an unknown delegate or a bad CPU mask.
        """
        serial = spec[len("adb://"):] if spec.startswith("adb://") else ""
        if not SERIAL.fullmatch(serial):
            raise DeviceError(f"device {spec!r}: expected adb://SERIAL with the serial `adb devices` prints "
                              "(letters, digits, '.', ':', '-', '_'), e.g. adb://R58M123 or adb://192.168.1.5:5555")
        if delegate not in DELEGATE_FLAGS:
            raise DeviceError(f"{spec}: unknown delegate {delegate!r}; allowed: {', '.join(DELEGATE_FLAGS)}")
        if cpu_mask is not None and not CPU_MASK.fullmatch(cpu_mask):
            raise DeviceError(f"{spec}: CPU mask {cpu_mask!r} must be hexadecimal, e.g. f0 for CPUs 4-7")
        return cls(serial, binary, delegate, cpu_mask, spec)

    def benchmark(self, model_path, *, runs=100, warmup=10, threads=1, inputs=None, timeout_s=600.0) -> dict:
        """Benchmarks one ``.tflite`` on the phone with ``benchmark_model``.

        Args:
            model_path: the file to run.
            runs: timed invocations (``--num_runs``, with ``--min_secs=0`` so exactly these run).
            warmup: untimed invocations first (``--warmup_runs``).
            threads: ``--num_threads``.
            inputs: not used: ``benchmark_model`` fills the inputs with random values
                (the record says so).
            timeout_s: ``--max_secs`` for the timed runs; the whole run gets one more minute.

        Returns:
            The benchmark record (``latency_ms``, ``init_ms``, ``first_ms``, ``delegate`` as
            the tool reported it, ``device_info`` from ``getprop``, ``not_available`` naming
            what ``benchmark_model`` does not measure, ...).

        Raises:
            DeviceError: adb missing, no such device, an unauthorized or offline device,
                a binary that does not run there, or a benchmark that failed; one line each.
        """
        model_path = Path(model_path)
        binary = self._binary()
        self._check_attached()
        properties = self._properties()
        _check_abi(binary, properties, self.name)
        folder = f"{REMOTE_ROOT}/edgecomp-{secrets.token_hex(6)}"
        made = self._run(shell_command(self.serial, ["mkdir", folder]), STEP_TIMEOUT_S, "creating a folder")
        if made.returncode != 0 or (made.stdout + made.stderr).strip():
            raise DeviceError(f"{self.name}: cannot create {folder} on the device: {_last_line(made)}")
        try:
            record = self._benchmark_in(folder, binary, model_path, runs, warmup, threads, timeout_s)
        finally:
            removed = self._run(shell_command(self.serial, ["rm", "-rf", folder]), STEP_TIMEOUT_S, "cleaning up",
                                raise_on_timeout=False)
            if removed is None or removed.returncode != 0:
                log.warning("%s: could not remove %s from the device; remove it with adb shell rm -rf %s",
                            self.name, folder, folder)
        record["device_info"] = {
            "model": properties.get("ro.product.model"),
            "android": properties.get("ro.build.version.release"),
            "abi": properties.get("ro.product.cpu.abi"),
            "read_from": {"model": "getprop ro.product.model", "android": "getprop ro.build.version.release",
                          "abi": "getprop ro.product.cpu.abi"},
        }
        if inputs is not None:
            record["notes"].append("the given input sample was not used: benchmark_model feeds random inputs")
        return record

    def _benchmark_in(self, folder, binary, model_path, runs, warmup, threads, timeout_s) -> dict:
        remote_binary = f"{folder}/{REMOTE_BINARY}"
        remote_model = f"{folder}/{model_path.name}"
        for source, target in ((binary, remote_binary), (model_path, remote_model)):
            pushed = self._run(push_command(self.serial, source, target), PUSH_TIMEOUT_S, f"copying {source.name}")
            if pushed.returncode != 0:
                raise DeviceError(f"{self.name}: copying {source.name} to the device failed: {_last_line(pushed)}")
        changed = self._run(shell_command(self.serial, ["chmod", "755", remote_binary]), STEP_TIMEOUT_S, "chmod")
        if changed.returncode != 0 or (changed.stdout + changed.stderr).strip():
            raise DeviceError(f"{self.name}: cannot make benchmark_model executable: {_last_line(changed)}")
        arguments = benchmark_arguments(remote_binary, remote_model, runs=runs, warmup=warmup, threads=threads,
                                        delegate=self.delegate, cpu_mask=self.cpu_mask, max_secs=timeout_s)
        with Ticker(f"{self.name}: benchmark_model on {model_path.name} ({runs} runs)"):
            done = self._run(shell_command(self.serial, arguments), timeout_s + STEP_TIMEOUT_S, "benchmark_model")
        output = (done.stdout + "\n" + done.stderr).replace("\r", "")
        if done.returncode in (126, 127) or re.search(r"inaccessible or not found|Exec format error|not executable|"
                                                      r"can't execute|CANNOT LINK EXECUTABLE", output):
            raise DeviceError(f"{self.name}: benchmark_model does not run on the device ({_last_line(done)}); "
                              "use a build for the device's ABI (adb shell getprop ro.product.cpu.abi)")
        try:
            parsed = benchmark_model.parse(output)
        except benchmark_model.OutputError as error:
            hint = ("; try another benchmark.adb_delegate (--adb_delegate): xnnpack, gpu, nnapi or none"
                    if "delegate" in str(error) else "")
            raise DeviceError(f"{self.name}: benchmark_model failed on the device: {error}{hint}") from None
        return make_record(self, parsed, runs, warmup, threads)

    def _binary(self) -> Path:
        if not self.binary:
            raise DeviceError(f"{self.name}: no benchmark_model binary given; set benchmark.adb_binary in the config "
                              "or pass --benchmark_binary (TFLite's benchmark_model built for the phone's ABI)")
        path = Path(self.binary).expanduser()
        if not path.is_file():
            raise DeviceError(f"{self.name}: benchmark_model binary {path} not found; set benchmark.adb_binary "
                              "(--benchmark_binary) to TFLite's benchmark_model built for the phone")
        return path

    def _check_attached(self) -> None:
        done = self._run(adb_command(self.serial, "get-state"), STEP_TIMEOUT_S, "adb get-state")
        state = done.stdout.strip()
        if done.returncode != 0:
            raise DeviceError(attach_error(self.name, self.serial, done.stdout + "\n" + done.stderr))
        if state != "device":
            raise DeviceError(f"{self.name}: the device is in {state or 'an unknown'} state, not booted into "
                              "Android; boot it normally and retry")

    def _properties(self) -> dict:
        done = self._run(shell_command(self.serial, ["getprop"]), STEP_TIMEOUT_S, "getprop")
        if done.returncode != 0:
            raise DeviceError(f"{self.name}: cannot read the device's properties: {_last_line(done)}")
        return parse_properties(done.stdout)

    def _run(self, command: list[str], timeout: float, what: str, raise_on_timeout: bool = True):
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            if not raise_on_timeout:
                return None
            raise DeviceError(f"{self.name}: {what} did not finish in {timeout:.0f} s; check the connection "
                              "(adb devices) or raise benchmark.timeout_s") from None
        except FileNotFoundError:
            raise DeviceError(f"{self.name}: the 'adb' client is not installed here (Debian: apt-get install adb; "
                              "elsewhere: Android SDK platform-tools)") from None


def adb_command(serial: str, *arguments: str) -> list[str]:
    """``adb -s SERIAL ARGUMENTS...`` as an argument list (never a shell string)."""
    return ["adb", "-s", serial, *arguments]


def shell_command(serial: str, parts: Sequence[str]) -> list[str]:
    """``adb shell`` running ``parts`` on the device, each part quoted for the device's shell."""
    return adb_command(serial, "shell", " ".join(shlex.quote(str(part)) for part in parts))


def push_command(serial: str, source, target: str) -> list[str]:
    """``adb push SOURCE TARGET``: adb copies paths literally, so nothing is quoted."""
    return adb_command(serial, "push", str(source), target)


def benchmark_arguments(binary: str, model: str, *, runs: int, warmup: int, threads: int, delegate: str = "xnnpack",
                        cpu_mask: Optional[str] = None, max_secs: float = 600.0) -> list[str]:
    """The device-side command line of one ``benchmark_model`` run, unquoted.

    ``--min_secs=0`` and ``--warmup_min_secs=0`` make the counts exact (by default the
    tool keeps running until a second has passed); ``--report_peak_memory_footprint``
    makes it sample the process's memory while it runs and print the peak (``peak_rss_mb``;
    without it the tool prints only how much the peak grew since it started).
    """
    parts = ["taskset", cpu_mask] if cpu_mask else []
    return parts + [
        binary, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}", "--min_secs=0",
        f"--max_secs={max_secs:g}", f"--warmup_runs={warmup}", "--warmup_min_secs=0",
        "--report_peak_memory_footprint=true", *DELEGATE_FLAGS[delegate],
    ]


def attach_error(name: str, serial: str, output: str) -> str:
    """One line explaining why ``adb get-state`` failed, from adb's own message."""
    text = output.lower()
    if "unauthorized" in text:
        return (f"{name}: the device has not authorized this computer; unlock it, accept the "
                "'Allow USB debugging' prompt and retry")
    if "authorizing" in text or "connecting" in text:
        return f"{name}: the device is still connecting; retry in a few seconds"
    if "offline" in text:
        return f"{name}: the device is offline; reconnect it (or run adb reconnect offline) and retry"
    if "not found" in text or "no devices" in text:
        return (f"{name}: no device with serial {serial!r} is attached; `adb devices` lists the serials "
                "(turn on USB debugging; for Wi-Fi run adb connect HOST:PORT first)")
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("*")]
    return f"{name}: adb cannot reach the device: {lines[-1].strip() if lines else 'no message'}"


def parse_properties(text: str) -> dict:
    """``getprop`` output (``[key]: [value]`` lines) as a dict."""
    found = re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", text.replace("\r", ""), flags=re.MULTILINE)
    return dict(found)


def elf_machine(path: Path) -> Optional[int]:
    """The ELF ``e_machine`` of a file, or None when it is not an ELF executable."""
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def _check_abi(binary: Path, properties: dict, name: str) -> None:
    machine = elf_machine(binary)
    if machine is None:
        raise DeviceError(f"{name}: {binary} is not an executable (ELF) file; use the native benchmark_model "
                          "binary, not the Android benchmark app (.apk)")
    device_abis = (properties.get("ro.product.cpu.abilist") or properties.get("ro.product.cpu.abi") or "").split(",")
    built_for = ELF_MACHINES.get(machine, f"ELF machine {machine:#x}")
    if device_abis != [""] and built_for not in device_abis:
        raise DeviceError(f"{name}: {binary.name} is built for {built_for}, the device runs "
                          f"{', '.join(device_abis)}; use a benchmark_model built for one of those")


def make_record(device: AdbDevice, parsed: dict, runs: int, warmup: int, threads: int) -> dict:
    """The benchmark record (report.json's benchmark keys plus what benchmark_model adds) from parsed output."""
    notes = []
    if parsed["delegate"].lower() != device.delegate:
        notes.append(f"asked for the {device.delegate} delegate; benchmark_model reported: {parsed['delegate_detail']}")
    return {
        "device": device.name,
        "threads": threads,
        "runs": parsed["count"] if parsed["count"] is not None else runs,
        "runs_requested": runs,
        "warmup": warmup,
        "latency_ms": parsed["latency_ms"],
        "latency_source": parsed["latency_source"],
        "init_ms": parsed["init_ms"],
        "first_ms": parsed["first_ms"],
        "warmup_mean_ms": parsed["warmup_mean_ms"],
        "peak_rss_mb": parsed["peak_memory_mb"],
        "memory_delta_mb": parsed["memory_delta_mb"],
        "delegate": parsed["delegate"],
        "delegate_requested": device.delegate,
        "delegate_detail": parsed["delegate_detail"],
        "cpu_mask": device.cpu_mask,
        "runtime": f"TFLite benchmark_model ({parsed['format']} output format)",
        "not_available": parsed["not_available"],
        "notes": notes,
    }


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (done.stdout + "\n" + done.stderr).splitlines()
             if line.strip() and not line.startswith("*")]
    return lines[-1] if lines else "no message"
