"""The one place an interpreter is imported: LiteRT, else tflite_runtime, else tf.lite.

Evaluation runs the ``.tflite`` file itself on the test split: inputs are quantized
with the file's own scale/zero-point when its input is integer, outputs are
dequantized, and batches are formed by resizing the input where the model allows
it (one sample at a time otherwise). The split is read one batch at a time (a
memory-mapped array stays on disk) and only the count of right answers is kept.

No bytes reach an interpreter in this process before ``check_model`` has passed
them: a structural check of the flatbuffer (``edgecomp.flatbuffer``), then one
load-and-run in a child process (``runtime_probe.py``), because a corrupt model can
crash a TFLite runtime rather than raise. Each distinct model is probed once per process.

Example:
    >>> from edgecomp import runtime
    >>> metrics = runtime.evaluate("models/quickstart/cpu/model.tflite", x_test, y_test)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from edgecomp import flatbuffer
from edgecomp.errors import DataError, ModelError
from edgecomp.native_logs import quiet

TFLITE_IDENTIFIER = flatbuffer.IDENTIFIER
PROBE = Path(__file__).with_name("runtime_probe.py")
PROBE_TIMEOUT_S = 300.0
PROBE_EXIT_REFUSED = 3
_PROBED_LIMIT = 4096
# sha256 of each model probed in a child process → None (it loads and runs) or why not.
_probed: dict[bytes, Optional[str]] = {}


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
    """Cheap structural checks before bytes reach an interpreter (``edgecomp.flatbuffer.check``).

    Raises:
        ModelError: the bytes are too short, lack the ``TFL3`` identifier, or an
            offset, vector or index in the flatbuffer points outside the file.
    """
    flatbuffer.check(content, where)


def check_model(content: bytes, where: str = "model") -> None:
    """Proves ``content`` is a model this process can load and run without crashing.

    The structural check first; then, once per distinct model, the interpreter loads
    it and runs one inference in a child process (``runtime_probe.py``), with and
    without the default delegate. A crash there (a segfault on a corrupt file) is a
    ``ModelError``, not the end of this process.

    Raises:
        ModelError: the bytes are not a valid model, the interpreter refuses them,
            or the interpreter crashed or hung loading and running them.
    """
    flatbuffer.check(content, where)
    digest = hashlib.sha256(content).digest()
    if digest not in _probed:
        if len(_probed) >= _PROBED_LIMIT:
            _probed.clear()
        _probed[digest] = _probe(content)
    if _probed[digest] is not None:
        raise ModelError(f"{where}: {_probed[digest]}")


def _probe(content: bytes) -> Optional[str]:
    """None when the child process loaded and ran the model, else why it did not."""
    try:
        done = subprocess.run([sys.executable, str(PROBE)], input=content, capture_output=True,
                              timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"the interpreter did not load and run it in {PROBE_TIMEOUT_S:.0f} s; the file is corrupt or huge"
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return (f"the TFLite runtime crashed ({name}) loading and running it once in a child process; "
                "the file is corrupt (re-create it with edgecomp.train) or uses what this runtime cannot run")
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").splitlines()
        reasons = [line[len("refused: "):] for line in lines if line.startswith("refused: ")]
        reason = reasons[-1] if reasons else (lines[-1] if lines else f"exit status {done.returncode}")
        return f"the interpreter cannot load it: {reason.strip()}"
    return None


def read_model(path: str | Path) -> bytes:
    """Reads a ``.tflite`` file and proves it loads and runs (``check_model``).

    Raises:
        ModelError: no such file, or the file is not a model this runtime can run.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{str(path)!r} does not exist or is not a file")
    try:
        content = path.read_bytes()
    except OSError as error:
        raise ModelError(f"{path}: cannot read it: {error.strerror or error}") from None
    check_model(content, str(path))
    return content


def make_interpreter(content: bytes, num_threads: int = 1, where: str = "model", delegates: bool = True, *,
                     reference: bool = False):
    """An allocated interpreter for ``content``.

    Args:
        content: the flatbuffer bytes.
        num_threads: interpreter threads.
        where: how to name the model in errors.
        delegates: apply the runtime's default delegate (XNNPACK); off to inspect
            the model's own ops rather than the delegate's replacement nodes.
        reference: run TFLite's reference kernels (``OpResolverType.BUILTIN_REF``,
            no delegate): the kernels TFLM's are ported from. LiteRT's optimized int8
            kernels round differently, and on a deep network the differences add up
            (13-21 output steps from TFLM on an int8 MobileNetV2; at most 1 with these).

    Raises:
        ModelError: the model fails ``check_model`` or the interpreter rejects it.
    """
    check_model(content, where)
    interpreter_type, _ = interpreter_class()
    try:
        kwargs = {}
        if reference:
            kwargs["experimental_op_resolver_type"] = _resolver("BUILTIN_REF")
        elif not delegates:
            kwargs["experimental_op_resolver_type"] = _resolver("BUILTIN_WITHOUT_DEFAULT_DELEGATES")
        with quiet():   # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." once
            interpreter = interpreter_type(model_content=content, num_threads=num_threads, **kwargs)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ModelError(f"{where}: the interpreter cannot load it: {str(error).strip().splitlines()[0]}") from None
    return interpreter


def _resolver(name: str):
    module = __import__(interpreter_class()[0].__module__, fromlist=["OpResolverType"])
    resolver = getattr(module, "OpResolverType", None)
    if resolver is None:  # tf.lite keeps it under experimental
        from edgecomp._keras import tf

        resolver = tf.lite.experimental.OpResolverType
    return getattr(resolver, name)


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
            delegates: bool = True, *, reference: bool = False):
    """Float outputs of the model for every sample in ``x`` (first output tensor).

    Batches by resizing the input's first dimension; falls back to one sample at a
    time when the model's input has a fixed batch of 1 or resizing fails.
    """
    outputs = list(iter_predict(content, x, batch_size, num_threads, where, delegates, reference=reference))
    return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


def iter_predict(content: bytes, x: np.ndarray, batch_size: int = 64, num_threads: int = 1, where: str = "model",
                 delegates: bool = True, *, reference: bool = False) -> Iterator[np.ndarray]:
    """Like ``predict``, one batch of outputs at a time; ``x`` is read one batch at a time."""
    interpreter = make_interpreter(content, num_threads, where, delegates, reference=reference)
    input_detail = interpreter.get_input_details()[0]
    signature = input_detail.get("shape_signature", input_detail["shape"])
    expected = tuple(int(d) for d in input_detail["shape"][1:])
    if tuple(x.shape[1:]) != expected:
        raise ModelError(f"{where} expects samples of shape {expected}, the data has {tuple(x.shape[1:])}")
    batch = batch_size if len(signature) and signature[0] == -1 else 1
    current = None
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        if len(chunk) != current:
            try:
                interpreter.resize_tensor_input(input_detail["index"], [len(chunk), *expected])
                interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as error:
                if batch == 1:
                    raise ModelError(f"{where}: the interpreter cannot take one sample: {error}") from None
                yield from _iter_one_by_one(content, x[start:], num_threads, where, delegates, reference=reference)
                return
            current = len(chunk)
            input_detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(input_detail["index"], quantize_input(chunk, input_detail))
        interpreter.invoke()
        output_detail = interpreter.get_output_details()[0]
        yield dequantize_output(interpreter.get_tensor(output_detail["index"]), output_detail)


def predict_one_by_one(content: bytes, x: np.ndarray, num_threads: int = 1, where: str = "model",
                       delegates: bool = True, *, reference: bool = False):
    """Like ``predict`` with batch 1 and no resizing (for fixed-shape models)."""
    return np.concatenate(list(_iter_one_by_one(content, x, num_threads, where, delegates, reference=reference)))


def _iter_one_by_one(content: bytes, x: np.ndarray, num_threads: int = 1, where: str = "model",
                     delegates: bool = True, *, reference: bool = False) -> Iterator[np.ndarray]:
    interpreter = make_interpreter(content, num_threads, where, delegates, reference=reference)
    input_detail = interpreter.get_input_details()[0]
    output_detail = interpreter.get_output_details()[0]
    for sample in x:
        interpreter.set_tensor(input_detail["index"], quantize_input(sample[np.newaxis], input_detail))
        interpreter.invoke()
        yield dequantize_output(interpreter.get_tensor(output_detail["index"]), output_detail)


def evaluate(content: bytes, x: np.ndarray, y: np.ndarray, where: str = "model", batch_size: int = 64) -> dict:
    """Runs the model on ``(x, y)`` and returns ``{"accuracy": ..., "samples": ...}``.

    Streams: ``x`` is read one batch at a time and only the count of right answers
    is kept, so a memory-mapped test split is never copied whole.

    Raises:
        DataError: ``x`` and ``y`` differ in length or are empty.
        ModelError: the model fails ``check_model`` or does not take ``x``'s samples.
    """
    if len(x) != len(y):
        raise DataError(f"{where}: {len(x)} test samples but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{where}: the test split is empty; nothing to measure accuracy on")
    correct = seen = 0
    for outputs in iter_predict(content, x, batch_size=batch_size, where=where):
        correct += int(np.count_nonzero(outputs.argmax(axis=-1) == y[seen : seen + len(outputs)]))
        seen += len(outputs)
    return {"accuracy": correct / seen, "samples": int(len(y))}


def io_details(content: bytes) -> dict:
    """Types, shapes and quantization of the model's inputs and outputs (for the report)."""
    interpreter = make_interpreter(content, delegates=False)   # details only: no delegate, no log line

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
