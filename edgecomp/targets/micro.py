"""Verifier and source generator of the ``micro`` target (TensorFlow Lite for Microcontrollers).

The file is run in the real TFLM interpreter (the ``tflite-micro`` package):

- ``loads_in_tflm``: TFLM has kernels for every op and allocates the model.
- ``matches_litert``: on test samples, TFLM's int8 outputs are within one
  quantization step of LiteRT's builtin kernels (XNNPACK rounds differently).
- ``fits_flash``: the model's bytes fit the board's flash budget.
- ``fits_ram``: the smallest tensor arena that allocates and runs (searched to
  16 bytes), plus 16 bytes of alignment margin, fits the board's RAM budget.

Accuracy for this target is measured in TFLM. ``write_sources`` emits
``model_data.cc``/``.h`` (``alignas(16)`` array and its length) and
``op_resolver.h`` with a ``MicroMutableOpResolver`` that registers exactly the
ops the model uses.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
from pathlib import Path

import numpy as np

from edgecomp import files, runtime
from edgecomp.config import MicroTargetConfig
from edgecomp.errors import ModelError

ALIGNMENT = 16
MAX_ARENA = 64 * 1024 * 1024


@contextlib.contextmanager
def _quiet_native_stderr():
    """TFLM prints allocation failures to fd 2 while the arena search probes sizes."""
    saved = os.dup(2)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _interpreter(content: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime as tflm

    return tflm.Interpreter.from_bytes(content, arena_size=arena_size)


def _runs(content: bytes, arena_size: int, sample: np.ndarray) -> bool:
    try:
        with _quiet_native_stderr():
            interpreter = _interpreter(content, arena_size)
            _invoke(interpreter, sample)
        return True
    except (RuntimeError, ValueError):
        return False


def _input_detail(interpreter) -> dict:
    detail = interpreter.get_input_details(0)
    parameters = detail["quantization_parameters"]
    scale = float(parameters["scales"][0]) if len(parameters["scales"]) else 0.0
    zero = int(parameters["zero_points"][0]) if len(parameters["zero_points"]) else 0
    return {"dtype": detail["dtype"], "quantization": (scale, zero)}


def _output_detail(interpreter) -> dict:
    detail = interpreter.get_output_details(0)
    parameters = detail["quantization_parameters"]
    scale = float(parameters["scales"][0]) if len(parameters["scales"]) else 0.0
    zero = int(parameters["zero_points"][0]) if len(parameters["zero_points"]) else 0
    return {"dtype": detail["dtype"], "quantization": (scale, zero)}


def _invoke(interpreter, sample: np.ndarray) -> np.ndarray:
    interpreter.set_input(runtime.quantize_input(sample[np.newaxis], _input_detail(interpreter)), 0)
    interpreter.invoke()
    return runtime.dequantize_output(interpreter.get_output(0), _output_detail(interpreter))


def find_arena(content: bytes, sample: np.ndarray) -> int:
    """The smallest tensor arena (a multiple of 16 bytes) in which the model allocates and runs.

    Raises:
        ModelError: TFLM cannot run the model with any arena up to 64 MB.
    """
    high = max(4096, len(content))
    while not _runs(content, high, sample):
        high *= 2
        if high > MAX_ARENA:
            raise ModelError("TFLM cannot run the model with any arena up to 64 MB")
    low = 0  # known to fail (or never tried)
    while high - low > ALIGNMENT:
        middle = (low + high) // 2 // ALIGNMENT * ALIGNMENT
        if middle <= low:
            break
        if _runs(content, middle, sample):
            high = middle
        else:
            low = middle
    return high


def predict(content: bytes, x: np.ndarray, arena_size: int) -> np.ndarray:
    """Float outputs of the model run in TFLM, one sample at a time."""
    interpreter = _interpreter(content, arena_size)
    outputs = []
    for sample in x:
        outputs.append(_invoke(interpreter, sample))
        interpreter.reset()
    return np.concatenate(outputs)


def verify(content: bytes, params: MicroTargetConfig, x_test: np.ndarray, y_test: np.ndarray) -> tuple[dict, dict]:
    """Runs the micro rules; returns ``(compatibility, metrics measured in TFLM)``."""
    rules = []
    x = x_test[: params.test_samples] if params.test_samples else x_test
    y = y_test[: params.test_samples] if params.test_samples else y_test
    try:
        arena = find_arena(content, x[0])
    except ModelError as error:
        return {"ok": False, "details": {"rules": [_rule("loads_in_tflm", False, str(error))]}}, {}
    rules.append(_rule("loads_in_tflm", True, f"runs with a {arena:,} byte arena"))

    tflm_out = predict(content, x, arena)
    # LiteRT's builtin kernels, not XNNPACK: XNNPACK rounds differently (up to 2 steps
    # seen on a 1-epoch digits CNN), the builtin kernels are what TFLM's mirror.
    litert_out = runtime.predict(content, x, delegates=False)
    step = runtime.io_details(content)["outputs"][0]["scale"] or 1.0
    steps = np.rint(np.abs(tflm_out - litert_out) / step) if len(x) else np.zeros(1)
    worst = int(steps.max())
    rules.append(_rule("matches_litert", worst <= 1,
                       f"largest output difference {worst} quantization step(s) from LiteRT's builtin kernels "
                       f"on {len(x)} samples (≤ 1); {float((steps == 0).mean()):.1%} of outputs identical"))

    flash_kb, ram_kb = params.budget
    rules.append(_rule("fits_flash", len(content) <= flash_kb * 1024,
                       f"model {len(content) / 1024:.1f} KB of {flash_kb} KB flash"))
    ram = arena + ALIGNMENT
    rules.append(_rule("fits_ram", ram <= ram_kb * 1024,
                       f"arena {arena:,} B + {ALIGNMENT} B alignment = {ram / 1024:.1f} KB of {ram_kb} KB RAM"))
    metrics = {
        "accuracy": float((tflm_out.argmax(-1) == y).mean()),
        "samples": int(len(y)),
        "runtime": "tflm",
        "litert_accuracy": float((litert_out.argmax(-1) == y).mean()),
    }
    details = {"rules": rules, "arena_bytes": arena, "ram_bytes": ram, "flash_bytes": len(content),
               "board": params.board, "budget_kb": {"flash": flash_kb, "ram": ram_kb}}
    return {"ok": all(r["ok"] for r in rules), "details": details}, metrics


def op_names(content: bytes) -> list[str]:
    """Builtin op names the model uses, in order of first use."""
    ops, _ = runtime.ops_and_tensors(content)
    return list(collections.OrderedDict.fromkeys(op["op_name"] for op in ops))


def resolver_method(op_name: str) -> str:
    """``MicroMutableOpResolver`` method for a builtin op: ``CONV_2D`` → ``AddConv2D``."""
    parts = op_name.split("_")
    return "Add" + "".join(part.upper() if re.fullmatch(r"\d+D", part) else part.capitalize() for part in parts)


def write_sources(content: bytes, folder: Path, name: str = "g_model") -> list[Path]:
    """Writes ``model_data.cc``, ``model_data.h`` and ``op_resolver.h`` into ``folder``."""
    rows = [", ".join(f"0x{byte:02x}" for byte in content[i : i + 12]) for i in range(0, len(content), 12)]
    body = ",\n  ".join(rows)
    header = (
        "// Generated by edgecomp. The model as a C array for TensorFlow Lite for Microcontrollers.\n"
        "#ifndef EDGECOMP_MODEL_DATA_H_\n#define EDGECOMP_MODEL_DATA_H_\n\n"
        f"extern const unsigned char {name}_data[];\nextern const unsigned int {name}_data_len;\n\n"
        "#endif  // EDGECOMP_MODEL_DATA_H_\n"
    )
    source = (
        "// Generated by edgecomp. The model as a C array for TensorFlow Lite for Microcontrollers.\n"
        '#include "model_data.h"\n\n'
        f"alignas(16) const unsigned char {name}_data[] = {{\n  {body}\n}};\n"
        f"const unsigned int {name}_data_len = {len(content)};\n"
    )
    ops = op_names(content)
    adds = "\n".join(f"  if (resolver.{resolver_method(op)}() != kTfLiteOk) return kTfLiteError;" for op in ops)
    resolver = (
        "// Generated by edgecomp: registers exactly the ops the model uses.\n"
        "#ifndef EDGECOMP_OP_RESOLVER_H_\n#define EDGECOMP_OP_RESOLVER_H_\n\n"
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n\n'
        f"using ModelOpResolver = tflite::MicroMutableOpResolver<{len(ops)}>;\n\n"
        "inline TfLiteStatus RegisterModelOps(ModelOpResolver& resolver) {\n"
        f"{adds}\n  return kTfLiteOk;\n}}\n\n#endif  // EDGECOMP_OP_RESOLVER_H_\n"
    )
    return [
        files.write_text(folder / "model_data.h", header),
        files.write_text(folder / "model_data.cc", source),
        files.write_text(folder / "op_resolver.h", resolver),
    ]


def parse_c_array(source: str) -> bytes:
    """The bytes of the array in a generated ``model_data.cc`` (for round-trip checks)."""
    body = source[source.index("{") + 1 : source.index("};")]
    return bytes(int(token, 16) for token in re.findall(r"0x[0-9a-fA-F]{2}", body))


def _rule(name: str, ok: bool, detail: str) -> dict:
    return {"rule": name, "ok": bool(ok), "detail": detail}
