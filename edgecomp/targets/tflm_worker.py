"""Runs a model in the TFLM interpreter in its own process: ``python -m edgecomp.targets.tflm_worker``.

TFLM can crash (segfault) instead of failing cleanly, e.g. when an arena is too
small for a compressed model's decode buffers; in a child process that is an
answer ("does not run"), not the end of the caller.

Usage: ``--model m.tflite --inputs x.npy --arena BYTES [--outputs y.npy] [--raw]``. Exit 0:
ran (outputs written as float32, dequantized, or as the output tensor's values with ``--raw``); exit 3: TFLM refused the model or
arena.
"""

import argparse
import sys

import numpy as np

EXIT_REFUSED = 3


def _quantization(detail):
    parameters = detail["quantization_parameters"]
    scale = float(parameters["scales"][0]) if len(parameters["scales"]) else 0.0
    zero = int(parameters["zero_points"][0]) if len(parameters["zero_points"]) else 0
    return scale, zero


def run(content: bytes, x: np.ndarray, arena: int, raw: bool = False) -> np.ndarray:
    """Float outputs for every sample of ``x`` (first input and output); the output tensor's own values if ``raw``."""
    from tflite_micro.python.tflite_micro import runtime as tflm

    interpreter = tflm.Interpreter.from_bytes(content, arena_size=arena)
    input_detail = interpreter.get_input_details(0)
    output_detail = interpreter.get_output_details(0)
    in_scale, in_zero = _quantization(input_detail)
    out_scale, out_zero = _quantization(output_detail)
    dtype = np.dtype(input_detail["dtype"])
    outputs = []
    for sample in x:
        if dtype.kind in "iu" and in_scale:
            info = np.iinfo(dtype)
            sample = np.clip(np.round(sample / in_scale + in_zero), info.min, info.max)
        interpreter.set_input(sample[np.newaxis].astype(dtype), 0)
        interpreter.invoke()
        out = interpreter.get_output(0)
        if raw:
            outputs.append(np.array(out))
        else:
            if np.dtype(out.dtype).kind in "iu" and out_scale:
                out = (out.astype(np.float32) - out_zero) * out_scale
            outputs.append(out.astype(np.float32))
        interpreter.reset()
    return np.concatenate(outputs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--arena", type=int, required=True)
    parser.add_argument("--outputs")
    parser.add_argument("--raw", action="store_true", help="write the output tensor's values, not dequantized")
    args = parser.parse_args(argv)
    with open(args.model, "rb") as handle:
        content = handle.read()
    try:
        outputs = run(content, np.load(args.inputs), args.arena, args.raw)
    except (RuntimeError, ValueError) as error:
        print(f"TFLM refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    if args.outputs:
        np.save(args.outputs, outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
