"""Loads a ``.tflite`` and runs it once in its own process, for ``runtime.check_model``.

A corrupt model can crash a TFLite runtime instead of failing cleanly: an int8 file
whose zero point was overwritten made LiteRT 2.3's XNNPACK delegate segfault in
``allocate_tensors``. Here that ends this process only; the caller reads the signal
as "this file is corrupt" and the file never reaches an interpreter in its own process.

Reads the model from stdin; with the default delegate and without it (the verifiers
inspect the builtin ops), builds the interpreter, allocates, runs one inference on
zeros (and one on a batch of two where the batch can be resized, as evaluation
does), and reads the outputs, the op and tensor details and every tensor. Exit 0:
it loads and runs; exit 3: the runtime refused it (the last ``refused:`` line on
stderr says why); exit 4: no TFLite runtime. Needs only numpy and a runtime; it is
run by path, so it imports nothing from edgecomp.
"""

import os
import sys

# Run by path, this file's folder (edgecomp/) would come first on sys.path and
# edgecomp's modules would shadow top-level ones of the same name.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402 - after the sys.path fix above

EXIT_REFUSED = 3
EXIT_NO_RUNTIME = 4


def _runtime():
    """The interpreter module, in ``runtime.interpreter_class``'s order."""
    try:
        from ai_edge_litert import interpreter

        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter

        return interpreter
    except ImportError:
        pass
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        return tf.lite
    except ImportError:
        return None


def exercise(module, content: bytes, delegates: bool) -> None:
    """Everything edgecomp does with an interpreter in its own process, once."""
    kwargs = {"model_content": content, "num_threads": 1}
    if not delegates:
        resolver = getattr(module, "OpResolverType", None) or module.experimental.OpResolverType
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = module.Interpreter(**kwargs)
    interpreter.allocate_tensors()
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if not inputs or not outputs:
        raise ValueError("the model has no inputs or no outputs")
    _run_on_zeros(interpreter)
    signature = inputs[0].get("shape_signature", inputs[0]["shape"])
    if len(signature) and signature[0] == -1:  # evaluation resizes the batch: run that path too
        interpreter.resize_tensor_input(inputs[0]["index"], [2, *inputs[0]["shape"][1:]])
        interpreter.allocate_tensors()
        _run_on_zeros(interpreter)
    if not delegates:
        interpreter._get_ops_details()  # noqa: SLF001 - what the verifiers call
        for detail in interpreter.get_tensor_details():
            try:
                interpreter.get_tensor(detail["index"])
            except ValueError:
                pass  # a tensor without data (e.g. a scratch buffer): the verifiers skip these too


def _run_on_zeros(interpreter) -> None:
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    for detail in interpreter.get_output_details():
        interpreter.get_tensor(detail["index"])


def main() -> int:
    content = sys.stdin.buffer.read()
    module = _runtime()
    if module is None:
        print("refused: no TFLite runtime: pip install ai-edge-litert", file=sys.stderr)
        return EXIT_NO_RUNTIME
    try:
        for delegates in (True, False):
            exercise(module, content, delegates)
    except Exception as error:  # noqa: BLE001 - any refusal is the answer, whatever its type
        text = str(error).strip()
        print(f"refused: {text.splitlines()[0] if text else type(error).__name__}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
