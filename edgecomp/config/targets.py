"""The schemas of the deployment targets: one parameter model per target, and ``Target``, an item of ``targets:``.

An item is a map with exactly one key, the target's name; ``Target`` picks the
parameter model by that key (``TARGET_NAMES``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, model_validator

from edgecomp.config.base import MAX_COUNT, MAX_TIMEOUT_S, TARGET_NAMES, _single_key, _Strict
from edgecomp.targets.profiles import BOARDS


class _TargetBase(_Strict):
    io: Literal["float32", "int8", "uint8", "int16"] = Field(
        "float32", description="input/output type; quantized I/O needs the scale/zero-point in the report"
    )


class CpuTargetConfig(_TargetBase):
    quantization: Literal["float32", "float16", "dynamic", "int8", "int16x8"] = "int8"
    max_accuracy_drop: float = Field(
        1.0, ge=0.0, le=100.0, description="int8 without QAT: points of accuracy the conversion may lose against "
                                           "the float model it was given, before the guard repairs it"
    )
    fallback: Literal["none", "float"] = Field(
        "float", description="float: after recalibrating on more data, keep the layers whose fallback measurably "
                             "helps float until the drop is within max_accuracy_drop; none: recalibration only"
    )
    allow_over_budget: bool = Field(
        False, description="keep the run's exit status 0 when the int8 file is still over max_accuracy_drop "
                           "after repair (the report still says so)"
    )

    @model_validator(mode="after")
    def _io_fits_quantization(self):
        allowed = {"int8": ("float32", "int8", "uint8"), "int16x8": ("float32", "int16")}
        ok = allowed.get(self.quantization, ("float32",))
        if self.io not in ok:
            raise ValueError(
                f"io {self.io!r} does not fit quantization {self.quantization!r}; allowed: {', '.join(ok)}"
            )
        return self


class GpuTargetConfig(_TargetBase):
    quantization: Literal["float16", "float32", "int8"] = Field(
        "float16", description="float16: the GPU's native format; int8: the delegate dequantizes it to float"
    )
    strict: bool = Field(False, description="fail unless the GPU delegate would take the whole graph (default: ops "
                                            "it refuses run on the CPU, reported as warnings with the figures)")

    @model_validator(mode="after")
    def _io_fits_quantization(self):
        ok = ("float32", "int8", "uint8") if self.quantization == "int8" else ("float32",)
        if self.io not in ok:
            raise ValueError(
                f"io {self.io!r} does not fit quantization {self.quantization!r}; allowed: {', '.join(ok)}"
            )
        return self


class EdgeTpuTargetConfig(_Strict):
    quantization: Literal["int8"] = "int8"
    io: Literal["int8", "uint8"] = Field("int8", description="input/output type; the Edge TPU computes on 8 bits")
    compiler: str = Field("edgetpu_compiler", min_length=1,
                          description="Coral's compiler, run when on PATH (name or path); its absence is reported")
    compiler_timeout_s: float = Field(180.0, gt=0.0, le=MAX_TIMEOUT_S,
                                      description=f"seconds edgetpu_compiler may run, at most {MAX_TIMEOUT_S:.0f}")


class MicroTargetConfig(_Strict):
    quantization: Literal["int8"] = "int8"
    io: Literal["int8"] = "int8"
    board: str = Field("cortex_m4_256k", description="named budget: " + ", ".join(BOARDS))
    flash_kb: Optional[int] = Field(None, ge=1, le=MAX_COUNT, description="overrides the board's flash budget")
    ram_kb: Optional[int] = Field(None, ge=1, le=MAX_COUNT, description="overrides the board's RAM budget")
    test_samples: Optional[int] = Field(None, ge=1, le=MAX_COUNT, description="test samples run in TFLM (default: all)")
    strip_strings: bool = Field(True, description="drop tensor names and signatures, which TFLM never reads, "
                                                  "from the file (about 100 bytes a tensor of flash)")
    build: dict[Literal["host", "cortex_m4"], str] = Field(
        default_factory=dict,
        description="build the micro project and run its test samples: {host: TFLM tree} with g++, "
                    "{cortex_m4: TFLM tree} with arm-none-eabi-gcc, run under qemu-system-arm; each tree is a "
                    "create_tflm_tree.py export. The micro checks then use the build's flash and 32-bit arena")

    @model_validator(mode="after")
    def _board_known(self):
        if self.board not in BOARDS:
            raise ValueError(f"board {self.board!r} is unknown; allowed: {', '.join(BOARDS)} "
                             "(or give flash_kb and ram_kb)")
        for target, tree in self.build.items():
            if not (Path(tree).expanduser() / "tensorflow/lite/micro/micro_interpreter.h").is_file():
                raise ValueError(f"build.{target}: {tree!r} is not a TFLM source tree (no "
                                 "tensorflow/lite/micro/micro_interpreter.h); export one with tflite-micro's "
                                 "create_tflm_tree.py")
        return self

    @property
    def budget(self) -> tuple[int, int]:
        """(flash_kb, ram_kb): the board's, overridden by flash_kb/ram_kb."""
        board = BOARDS[self.board]
        return self.flash_kb or board.flash_kb, self.ram_kb or board.ram_kb


class CpuTarget(_Strict):
    cpu: CpuTargetConfig = CpuTargetConfig()


class GpuTarget(_Strict):
    gpu: GpuTargetConfig = GpuTargetConfig()


class EdgeTpuTarget(_Strict):
    edgetpu: EdgeTpuTargetConfig = EdgeTpuTargetConfig()


class MicroTarget(_Strict):
    micro: MicroTargetConfig = MicroTargetConfig()


Target = Annotated[
    Union[
        Annotated[CpuTarget, Tag("cpu")],
        Annotated[GpuTarget, Tag("gpu")],
        Annotated[EdgeTpuTarget, Tag("edgetpu")],
        Annotated[MicroTarget, Tag("micro")],
    ],
    Discriminator(
        _single_key,
        custom_error_type="target_item",
        custom_error_message="expected a map with exactly one key, one of: " + ", ".join(TARGET_NAMES),
    ),
]
