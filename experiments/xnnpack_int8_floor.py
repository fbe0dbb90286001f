"""Does XNNPACK's int8 path on this CPU get faster when a conv net has fewer channels?

Question: filter pruning at 0.5 took ``vgg_rgb32`` (29 M MACs) to 0.26× the MACs, yet its
int8 file ran in 0.95× the unpruned int8 file's time with XNNPACK, against 0.36× with
LiteRT's builtin kernels. Is that the pruning or the machine?

Builds the corpus's VGG stack (five 3×3 convs, 32-32-64-64-128 filters × ``width``) with
random seeded weights at several widths, converts each to int8 (random calibration
samples: latency only) and float32, and times every file with one thread: int8 with
XNNPACK, int8 with the builtin kernels, float32 with XNNPACK (best of 9 rounds of 30
invocations).

Run:
    python -m experiments.xnnpack_int8_floor [--widths 0.5,1,2,4,8]

Answer (2026-12-03, this machine: an x86 CPU with AMX-INT8 tiles, which XNNPACK's int8
kernels use): width 0.5, 1, 2, 4, 8 = 7.5 M, 29 M, 115 M, 457 M, 1.8 G MACs; int8 XNNPACK
0.111, 0.114, 0.32, 0.62, 2.11 ms; int8 builtin 0.19, 0.84, 1.82, 6.85, 28.4 ms; float32
XNNPACK 0.15, 0.85, 1.94, 7.81, 34.7 ms. Below about 30 M MACs the int8 XNNPACK time is a
floor of ~0.11 ms whatever the channels, so a filter-pruned ``vgg_rgb32`` cannot get
faster there; the builtin kernels and float32 scale with the MACs. At twice the channels
(``vgg_rgb32_wide``, trained, filter-pruned) the pruned int8 file runs in 0.62× the time
with XNNPACK and 0.29× with the builtin kernels (docs/accuracy.md).
"""

import argparse
import time

import numpy as np

from edgecomp import runtime
from edgecomp._keras import keras
from edgecomp.targets.convert import convert


def vgg(width: float, size: int = 32):
    """The corpus's VGG stack at ``width`` times its channels (no BatchNorm: latency only)."""
    layers = keras.layers
    x = inputs = keras.Input((size, size, 3))
    for channels, pool in ((32, False), (32, True), (64, False), (64, True), (128, True)):
        x = layers.Conv2D(int(channels * width), 3, padding="same", activation="relu")(x)
        if pool:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def macs(model) -> int:
    """Multiply-accumulates of the model's convolutions for one sample."""
    return sum(int(np.prod(layer.output_shape[1:3])) * int(np.prod(layer.kernel.shape))
               for layer in model.layers if isinstance(layer, keras.layers.Conv2D))


def best_ms(content: bytes, sample: np.ndarray, xnnpack: bool, rounds: int = 9, invokes: int = 30) -> float:
    """Best of ``rounds`` mean times of ``invokes`` invocations, in ms."""
    interpreter = runtime.make_interpreter(content, num_threads=1, delegates=xnnpack)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.set_tensor(index, sample)
    interpreter.invoke()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(invokes):
            interpreter.invoke()
        best = min(best, (time.perf_counter() - started) / invokes)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="0.5,1,2,4,8")
    args = parser.parse_args()
    samples = np.random.default_rng(0).random((50, 32, 32, 3), dtype=np.float32)
    print(f"{'width':>6}{'M MACs':>9}{'int8 XNNPACK ms':>17}{'int8 builtin ms':>17}{'float32 XNNPACK ms':>20}")
    for width in (float(value) for value in args.widths.split(",")):
        keras.utils.set_random_seed(0)
        model = vgg(width)
        int8, float32 = convert(model, "int8", "float32", samples), convert(model, "float32")
        print(f"{width:>6g}{macs(model) / 1e6:>9.1f}{best_ms(int8, samples[:1], True):>17.4f}"
              f"{best_ms(int8, samples[:1], False):>17.4f}{best_ms(float32, samples[:1], True):>20.4f}", flush=True)


if __name__ == "__main__":
    main()
