"""Benchmark devices: ``local``, ``ssh://user@host[:port]``, ``adb://SERIAL``.

``local`` and ``ssh://`` run ``agent.py``; ``adb://`` runs TFLite's ``benchmark_model``
on the phone and parses its output (``benchmark_model.py``).

Example:
    >>> from edgecomp.devices import open_device
    >>> device = open_device("ssh://pi@raspberrypi.local")
    >>> result = device.benchmark("model.tflite", runs=50)      # doctest: +SKIP
"""

from typing import Optional, Sequence

from edgecomp.devices.adb import AdbDevice
from edgecomp.devices.local import LocalDevice
from edgecomp.devices.ssh import SshDevice
from edgecomp.errors import DeviceError

DEVICE_KINDS = "local | ssh://user@host[:port] | adb://SERIAL"


def open_device(spec: str, ssh_options: Sequence[str] = (), adb_binary: Optional[str] = None,
                adb_delegate: str = "xnnpack", adb_cpu_mask: Optional[str] = None):
    """The device a spec string names.

    Args:
        spec: ``local``, ``ssh://user@host[:port][?python=...]`` or ``adb://SERIAL``.
        ssh_options: extra options for ``ssh``/``scp`` (e.g. ``("-i", "~/.ssh/pi")``).
        adb_binary: adb only: path here to TFLite's ``benchmark_model`` built for the phone.
        adb_delegate: adb only: ``xnnpack``, ``gpu``, ``nnapi`` or ``none``.
        adb_cpu_mask: adb only: ``taskset`` mask in hex (e.g. ``f0``), or None.

    Raises:
        DeviceError: unknown kind of device or a malformed spec.
    """
    if spec == "local":
        return LocalDevice()
    if spec.startswith("ssh://"):
        return SshDevice.from_spec(spec, ssh_options)
    if spec.startswith("adb://"):
        return AdbDevice.from_spec(spec, binary=adb_binary, delegate=adb_delegate, cpu_mask=adb_cpu_mask)
    raise DeviceError(f"device {spec!r} is not supported; allowed: {DEVICE_KINDS}")


def open_configured(spec: str, benchmark_config):
    """``open_device`` with the device options of a ``config.BenchmarkConfig``."""
    return open_device(spec, ssh_options=benchmark_config.ssh_options, adb_binary=benchmark_config.adb_binary,
                       adb_delegate=benchmark_config.adb_delegate, adb_cpu_mask=benchmark_config.adb_cpu_mask)


def benchmark(spec: str, model_path, **kwargs) -> dict:
    """Shorthand: ``open_device(spec).benchmark(model_path, **kwargs)``."""
    return open_device(spec).benchmark(model_path, **kwargs)


__all__ = ["DEVICE_KINDS", "AdbDevice", "LocalDevice", "SshDevice", "benchmark", "open_configured", "open_device"]
