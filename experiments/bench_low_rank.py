"""Latency of one large Dense and one 3×3 Conv2D before and after SVD factorization, at a few ranks.

Question: does the ``low_rank`` stage's factorization make a layer faster, not only smaller,
and at which share of the full rank?

Builds each layer alone as a model, factorizes it with ``edgecomp.stages.low_rank``
at 1/8, 1/4 and 1/2 of the full rank, converts every variant to a ``.tflite``
(float32 by default, ``--quantization int8`` for full-integer), and times them with
the LiteRT interpreter (XNNPACK, 1 thread) in interleaved rounds, so all variants
see the same machine state. Prints the best-of-rounds median per variant, its
kernel weights and the ratios to the unfactorized layer, all from this one run.

Run (from the repository root; the timer is ``tools/invoke_timer.py``'s):
    python -m experiments.bench_low_rank [--quantization float32|int8] [--rounds 7] [--invokes 50]

Answer: not recorded in docs/. It prints, per layer, a table of variant (original, rank 1/8,
1/4, 1/2 of the full rank), kernel weights, weights ×, p50 ms and latency × the original.
"""

import argparse

import numpy as np

from edgecomp._keras import keras
from edgecomp.stages import low_rank
from edgecomp.targets.convert import convert
from tools.invoke_timer import timer

LAYERS = {
    "dense 1024→1024 (batch 1)": ((1024,), lambda: keras.layers.Dense(1024, name="layer")),
    "conv 3×3 128→128 on 28×28": ((28, 28, 128), lambda: keras.layers.Conv2D(128, 3, padding="same", name="layer")),
}
RANK_SHARES = (0.125, 0.25, 0.5)


def variants(input_shape, make_layer, quantization: str):
    """``[(label, kernel weights, tflite bytes, sample)]``: the layer, then its factorizations."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, make_layer()(inputs))
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((32, *input_shape)).astype(np.float32)
    kernel = model.get_layer("layer").kernel.numpy()
    full = min(low_rank.kernel_matrix(kernel, "channel").shape)
    out = [("original", int(kernel.size), convert(model, quantization, "float32", calibration))]
    for share in RANK_SHARES:
        rank = int(full * share)
        factorized = low_rank.factorize(model, {"layer": rank})
        out.append((f"rank {rank} ({share:g})", low_rank.factor_params(kernel.shape, rank, "channel"),
                    convert(factorized, quantization, "float32", calibration)))
    return out, calibration[:1]


def main():
    """Prints one table per layer: weights and latency of each variant, and their ratios to the original."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", choices=("float32", "int8"), default="float32")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--invokes", type=int, default=50)
    args = parser.parse_args()
    for title, (input_shape, make_layer) in LAYERS.items():
        built, sample = variants(input_shape, make_layer, args.quantization)
        timers = [timer(content, sample, args.invokes, warmup=5) for _, _, content in built]
        best = [float("inf")] * len(built)
        for _ in range(args.rounds):
            for index, measure in enumerate(timers):
                best[index] = min(best[index], measure())
        print(f"\n{title}, {args.quantization}, best of {args.rounds} rounds of {args.invokes} invokes (median)")
        print(f"{'variant':<22}{'weights':>10}{'weights ×':>11}{'p50 ms':>10}{'latency ×':>11}")
        for (label, weights, _), latency in zip(built, best):
            print(f"{label:<22}{weights:>10,}{weights / built[0][1]:>11.3f}{latency:>10.4f}{latency / best[0]:>11.3f}")


if __name__ == "__main__":
    main()
