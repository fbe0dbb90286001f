"""Classify image files with an edgecomp ``.tflite`` on a Raspberry Pi (or any machine).

Needs only numpy, Pillow and a TFLite interpreter: ``pip install ai-edge-litert numpy pillow``
(``tflite-runtime`` works too). Copy the target folder (``model.tflite`` and ``labels.txt``)
and this file to the device. Without ``--labels`` the labels packed in the file's
metadata are used (every edgecomp file but micro's carries them).

Inputs are made as the run made its training data: each image is converted to the
model's channels (gray or RGB), resized to its input size and divided by ``--divide``
(255 for 8-bit image files, which is what ``image_dir`` data and digits' [0, 1] range
mean; see "Input:" in report.md). A file with int8/uint8 input gets the values quantized
with its own scale and zero point; its outputs are dequantized. Logits become
probabilities with a softmax.

Example:
    python classify.py --model cpu/model.tflite --labels cpu/labels.txt photo1.png photo2.jpg
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # the older package name on the Pi
    from tflite_runtime.interpreter import Interpreter


def load_image(path: str, height: int, width: int, channels: int, divide: float) -> np.ndarray:
    """One image as the model's float input, shape ``(height, width, channels)``."""
    with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float32) / divide
    return pixels.reshape(height, width, channels)


def classify(interpreter, x: np.ndarray) -> np.ndarray:
    """Class probabilities for one float input ``x`` (quantized first when the file takes integers)."""
    source = interpreter.get_input_details()[0]
    target = interpreter.get_output_details()[0]
    if source["dtype"] in (np.int8, np.uint8):
        scale, zero_point = source["quantization"]
        info = np.iinfo(source["dtype"])
        x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
    interpreter.set_tensor(source["index"], x[np.newaxis].astype(source["dtype"]))
    interpreter.invoke()
    y = interpreter.get_tensor(target["index"])[0].astype(np.float32)
    if target["dtype"] in (np.int8, np.uint8):
        scale, zero_point = target["quantization"]
        y = (y - zero_point) * scale
    if y.min() < 0 or abs(y.sum() - 1) > 0.05:   # logits: the model has no softmax
        y = np.exp(y - y.max())
        y /= y.sum()
    return y


def packed_labels(model_path: str) -> list[str] | None:
    """The labels.txt packed in the file's TFLite metadata (a zip appended to the model), or None."""
    import zipfile

    try:
        with zipfile.ZipFile(model_path) as packed:
            return packed.read("labels.txt").decode().splitlines()
    except (zipfile.BadZipFile, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with an edgecomp .tflite.")
    parser.add_argument("--model", required=True, help="the .tflite file")
    parser.add_argument("--labels", help="labels.txt beside it (line i = class i)")
    parser.add_argument("--divide", type=float, default=255.0, help="pixel divisor (default 255)")
    parser.add_argument("--top", type=int, default=3, help="classes to print per image")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)

    interpreter = Interpreter(model_path=args.model, num_threads=args.threads)
    interpreter.allocate_tensors()
    _, height, width, channels = interpreter.get_input_details()[0]["shape"]
    labels = open(args.labels).read().splitlines() if args.labels else packed_labels(args.model)
    for path in args.images:
        probabilities = classify(interpreter, load_image(path, height, width, channels, args.divide))
        best = np.argsort(-probabilities)[: args.top]
        ranked = ", ".join(f"{labels[i] if labels else i} {probabilities[i]:.3f}" for i in best)
        print(f"{path}: {ranked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
