"""Benchmark devices: ``local``, ``ssh://user@host[:port]``; ``agent.py`` runs on each.

Example:
    >>> from edgecomp.devices import open_device
    >>> device = open_device("ssh://pi@raspberrypi.local")
    >>> result = device.benchmark("model.tflite", runs=50)      # doctest: +SKIP
"""

from typing import Sequence

from edgecomp.devices.local import LocalDevice
from edgecomp.devices.ssh import SshDevice
from edgecomp.errors import DeviceError

DEVICE_KINDS = "local | ssh://user@host[:port]"


def open_device(spec: str, ssh_options: Sequence[str] = ()):
    """The device a spec string names.

    Args:
        spec: ``local`` or ``ssh://user@host[:port][?python=...]``.
        ssh_options: extra options for ``ssh``/``scp`` (e.g. ``("-i", "~/.ssh/pi")``).

    Raises:
        DeviceError: unknown kind of device or a malformed spec.
    """
    if spec == "local":
        return LocalDevice()
    if spec.startswith("ssh://"):
        return SshDevice.from_spec(spec, ssh_options)
    raise DeviceError(f"device {spec!r} is not supported; allowed: {DEVICE_KINDS}")


def benchmark(spec: str, model_path, **kwargs) -> dict:
    """Shorthand: ``open_device(spec).benchmark(model_path, **kwargs)``."""
    return open_device(spec).benchmark(model_path, **kwargs)


__all__ = ["DEVICE_KINDS", "LocalDevice", "SshDevice", "benchmark", "open_device"]
