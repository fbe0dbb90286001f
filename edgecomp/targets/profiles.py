"""Target profiles and microcontroller boards: two tables of frozen data, no TensorFlow import.

``PROFILES`` describes each target: the quantization modes and I/O types it accepts,
the default quantization, and which delegate runs its files there. It is a summary:
a run checks a config against the target schemas of ``edgecomp.config.targets``, which
declare the same choices. ``BOARDS`` holds the flash and RAM budgets that
``micro.board`` names. Converter settings per quantization mode live in
``convert.py``; the rules each file must meet live in the target's verifier module.
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


@dataclasses.dataclass(frozen=True)
class Board:
    """A microcontroller budget: flash for the model, RAM for the tensor arena."""

    name: str
    flash_kb: int
    ram_kb: int
    description: str


# Whole-chip figures; the application and TFLM's own code need part of both, so a
# model that only just fits here will not fit in practice.
BOARDS: dict[str, Board] = {
    board.name: board
    for board in (
        Board("cortex_m4_256k", 1024, 256, "generic Cortex-M4F, 1 MB flash, 256 KB SRAM"),
        Board("arduino_nano33ble", 1024, 256, "Arduino Nano 33 BLE (nRF52840)"),
        Board("esp32s3", 8192, 512, "ESP32-S3 module with 8 MB flash, 512 KB SRAM"),
        Board("stm32f746", 1024, 320, "STM32F746 (Cortex-M7), 1 MB flash, 320 KB SRAM"),
        Board("rp2040", 2048, 264, "Raspberry Pi Pico (RP2040), 2 MB flash, 264 KB SRAM"),
    )
}


PROFILES: dict[str, TargetProfile] = {
    "cpu": TargetProfile(
        name="cpu",
        description="CPU with the XNNPACK delegate (phones, Raspberry Pi, x86)",
        quantizations=("int8", "float32", "float16", "dynamic", "int16x8"),
        io_types=(("int8", ("float32", "int8", "uint8")), ("int16x8", ("float32", "int16"))),
        delegate="XNNPACK",
    ),
    "gpu": TargetProfile(
        name="gpu",
        description="TFLite/LiteRT GPU delegate (Android OpenCL/OpenGL, Linux); float16 weights, float compute",
        quantizations=("float16", "float32", "int8"),
        io_types=(("int8", ("float32", "int8", "uint8")),),
        delegate="GPU delegate (ops it cannot take run on the CPU, each a separate partition); int8 is dequantized",
    ),
    "edgetpu": TargetProfile(
        name="edgetpu",
        description="Coral Edge TPU (full-integer int8, batch 1, static shapes, compiled by edgetpu_compiler)",
        quantizations=("int8",),
        io_types=(("int8", ("int8", "uint8")),),
        delegate="libedgetpu (Edge TPU custom op); the ops after the first unsupported one run on the CPU",
    ),
    "micro": TargetProfile(
        name="micro",
        description="microcontrollers with TensorFlow Lite for Microcontrollers (full-integer int8)",
        quantizations=("int8",),
        io_types=(("int8", ("int8",)),),
        delegate="none (TFLM reference kernels)",
    ),
}
