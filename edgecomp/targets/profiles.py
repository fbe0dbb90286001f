"""Target profiles: frozen data, one table, no TensorFlow import.

A profile says which quantization modes and I/O types a target accepts, the default
quantization, and which delegate a runtime applies there. Converter settings per
quantization mode live in ``convert.py``; the rules each file must meet live in the
target's verifier module.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TargetProfile:
    """What a deployment target accepts.

    Attributes:
        name: the key used in ``targets:`` (``cpu``).
        description: one line for reports.
        quantizations: allowed ``quantization`` values; the first is the default.
        io_types: allowed ``io`` values per quantization.
        delegate: the delegate the runtime applies on this target.
    """

    name: str
    description: str
    quantizations: tuple[str, ...]
    io_types: tuple[tuple[str, tuple[str, ...]], ...]
    delegate: str

    def allowed_io(self, quantization: str) -> tuple[str, ...]:
        """I/O types allowed with ``quantization``."""
        return dict(self.io_types).get(quantization, ("float32",))


PROFILES: dict[str, TargetProfile] = {
    "cpu": TargetProfile(
        name="cpu",
        description="CPU with the XNNPACK delegate (phones, Raspberry Pi, x86)",
        quantizations=("int8", "float32", "float16", "dynamic", "int16x8"),
        io_types=(("int8", ("float32", "int8", "uint8")), ("int16x8", ("float32", "int16"))),
        delegate="XNNPACK",
    ),
}
