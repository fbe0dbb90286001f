"""The one place an interpreter is imported: LiteRT, else tflite_runtime, else tf.lite.

Evaluation runs the ``.tflite`` file itself on the test split: inputs are quantized
with the file's own scale/zero-point when its input is integer, outputs are
dequantized, and batches are formed by resizing the input where the model allows
it (one sample at a time otherwise).

Example:
    >>> from edgecomp import runtime
    >>> metrics = runtime.evaluate("models/quickstart/cpu/model.tflite", x_test, y_test)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from edgecomp.errors import ModelError

TFLITE_IDENTIFIER = b"TFL3"


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    """Which interpreter package is in use."""

    name: str
    version: str


def interpreter_class():
    """Returns ``(Interpreter class, RuntimeInfo)``, preferring LiteRT."""
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, RuntimeInfo("ai_edge_litert", getattr(ai_edge_litert, "__version__", "?"))
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, RuntimeInfo("tflite_runtime", getattr(tflite_runtime, "__version__", "?"))
    except ImportError:
        pass
    from edgecomp._keras import tf

    return tf.lite.Interpreter, RuntimeInfo("tf.lite", tf.__version__)


def check_flatbuffer(content: bytes, where: str = "model") -> None:
    """Cheap structural checks before bytes reach an interpreter.

    Raises:
        ModelError: the bytes are too short or lack the ``TFL3`` identifier.
    """
    if len(content) < 16:
        raise ModelError(f"{where} is not a TFLite model: only {len(content)} bytes")
    if content[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(
            f"{where} is not a TFLite model: file identifier {content[4:8]!r}, expected {TFLITE_IDENTIFIER!r}"
        )
    root = int.from_bytes(content[:4], "little")
    if root >= len(content):
        raise ModelError(f"{where} is not a valid TFLite model: root offset {root} beyond {len(content)} bytes")


def read_model(path: str | Path) -> bytes:
    """Reads and structurally checks a ``.tflite`` file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{str(path)!r} does not exist or is not a file")
    content = path.read_bytes()
    check_flatbuffer(content, str(path))
    return content


def make_interpreter(content: bytes, num_threads: int = 1, where: str = "model", delegates: bool = True):
    """An allocated interpreter for ``content``.

    Args:
        content: the flatbuffer bytes.
        num_threads: interpreter threads.
        where: how to name the model in errors.
        delegates: apply the runtime's default delegate (XNNPACK); off to inspect
            the model's own ops rather than the delegate's replacement nodes.

    Raises:
        ModelError: the interpreter rejects the model.
    """
    check_flatbuffer(content, where)
    interpreter_type, _ = interpreter_class()
    try:
        kwargs = {}
        if not delegates:
            kwargs["experimental_op_resolver_type"] = _resolver_without_delegates()
        interpreter = interpreter_type(model_content=content, num_threads=num_threads, **kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ModelError(f"{where}: the interpreter cannot load it: {str(error).strip().splitlines()[0]}") from None
    return interpreter


def _resolver_without_delegates():
    module = __import__(interpreter_class()[0].__module__, fromlist=["OpResolverType"])
    resolver = getattr(module, "OpResolverType", None)
    if resolver is None:  # tf.lite keeps it under experimental
        from edgecomp._keras import tf

        resolver = tf.lite.experimental.OpResolverType
    return resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Casts float samples to the input tensor's type, quantizing with its scale/zero-point."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.floating):
        return x.astype(dtype)
    scale, zero_point = detail["quantization"]
    if scale == 0:
        return np.round(x).astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """Float values of an output tensor (dequantized when it is integer)."""
    if np.issubdtype(y.dtype, np.floating):
        return y.astype(np.float32)
    scale, zero_point = detail["quantization"]
    if scale == 0:
        return y.astype(np.float32)
    return (y.astype(np.float32) - zero_point) * scale


def predict(content: bytes, x: np.ndarray, batch_size: int = 64, num_threads: int = 1, where: str = "model",
            delegates: bool = True):
    """Float outputs of the model for every sample in ``x`` (first output tensor).

    Batches by resizing the input's first dimension; falls back to one sample at a
    time when the model's input has a fixed batch of 1 or resizing fails.
    """
    interpreter = make_interpreter(content, num_threads, where, delegates)
    input_detail = interpreter.get_input_details()[0]
    signature = input_detail.get("shape_signature", input_detail["shape"])
    expected = tuple(int(d) for d in input_detail["shape"][1:])
    if tuple(x.shape[1:]) != expected:
        raise ModelError(f"{where} expects samples of shape {expected}, the data has {tuple(x.shape[1:])}")
    batch = batch_size if len(signature) and signature[0] == -1 else 1
    outputs = []
    current = None
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) != current:
            try:
                interpreter.resize_tensor_input(input_detail["index"], [len(chunk), *expected])
                interpreter.allocate_tensors()
            except (ValueError, RuntimeError):
                if batch == 1:
                    raise
                return predict_one_by_one(content, x, num_threads, where)
            current = len(chunk)
            input_detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(input_detail["index"], quantize_input(chunk, input_detail))
        interpreter.invoke()
        output_detail = interpreter.get_output_details()[0]
        outputs.append(dequantize_output(interpreter.get_tensor(output_detail["index"]), output_detail))
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


def predict_one_by_one(content: bytes, x: np.ndarray, num_threads: int = 1, where: str = "model"):
    """Like ``predict`` with batch 1 and no resizing (for fixed-shape models)."""
    interpreter = make_interpreter(content, num_threads, where)
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    outputs = []
    for sample in x:
        interpreter.set_tensor(input_detail["index"], quantize_input(sample[np.newaxis], input_detail))
        interpreter.invoke()
        outputs.append(dequantize_output(interpreter.get_tensor(output_detail["index"]), output_detail))
    return np.concatenate(outputs)


def evaluate(content: bytes, x: np.ndarray, y: np.ndarray, where: str = "model", batch_size: int = 64) -> dict:
    """Runs the model on ``(x, y)`` and returns ``{"accuracy": ..., "samples": ...}``."""
    outputs = predict(content, x, batch_size=batch_size, where=where)
    return {"accuracy": float((outputs.argmax(axis=-1) == y).mean()), "samples": int(len(y))}


def io_details(content: bytes) -> dict:
    """Types, shapes and quantization of the model's inputs and outputs (for the report)."""
    interpreter = make_interpreter(content)

    def describe(details):
        return [
            {
                "name": d["name"],
                "shape": [int(v) for v in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name,
                "scale": float(d["quantization"][0]),
                "zero_point": int(d["quantization"][1]),
            }
            for d in details
        ]

    return {"inputs": describe(interpreter.get_input_details()), "outputs": describe(interpreter.get_output_details())}


def ops_and_tensors(content: bytes) -> tuple[list[dict], list[dict]]:
    """The interpreter's op list and tensor list (used by the target verifiers)."""
    interpreter = make_interpreter(content, delegates=False)
    ops = interpreter._get_ops_details()  # noqa: SLF001 - public in tf.lite, stable for years
    return ops, interpreter.get_tensor_details()


def runtime_name() -> Optional[str]:
    """``"ai_edge_litert 2.3.0"`` or the like."""
    _, info = interpreter_class()
    return f"{info.name} {info.version}"
