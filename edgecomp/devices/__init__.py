"""Benchmark devices. ``local`` runs the agent in a child process on this machine.

A device spec is a string: ``local`` (the remote kinds ``ssh://user@host[:port]``
and ``adb://SERIAL`` are planned). ``agent.py`` is the self-contained script every
device runs.
"""

from edgecomp.devices.local import LocalDevice, benchmark, open_device

__all__ = ["LocalDevice", "benchmark", "open_device"]
