"""Training-step time on one device vs MirroredStrategy on 1 and 2 logical CPUs, side by side in one run.

Question: what does running a stage under ``distribute: mirrored`` cost per training step,
against no strategy, on a machine without GPUs?

Splits the CPU into two logical devices (before TensorFlow starts), builds one
seeded digits_cnn per setup and times epochs of ``--steps`` steps of the same
global batch, interleaved round by round, through the same input path edgecomp's
training uses (``distribute.fit_inputs``: arrays without a strategy, ``tf.data``
datasets sharded by data under one). Prints the best and median step time of each.
Logical CPUs share the same cores, so 2 replicas are not expected to be faster here;
this measures the strategy's overhead, not a speed-up (that needs GPUs or hosts).

Run (from the repository root):
    python -m experiments.bench_distribute [--steps 40] [--rounds 8] [--batch 64] [--width 1.5]

Answer (docs/distributed.md; 2 shared CPU cores, no GPU; best and median of 8 interleaved
epochs of 40 steps, global batch 64): no strategy 13.4 ms per step (median 17.9);
``MirroredStrategy`` on ``/cpu:0`` alone 16.7 ms (21.1), 1.24×; on ``/cpu:0`` + ``/cpu:1``
30.7 ms (37.5), 2.29×. The strategy's overhead (the per-step all-reduce and the split batch),
not a forecast for GPUs or hosts.
"""

import argparse
import statistics
import time

import numpy as np

from edgecomp import config, distribute, training, zoo
from edgecomp._keras import keras


def prepare(name: str, strategy_config, x, y, batch: int, steps: int, width: float):
    """Builds and compiles a model under ``strategy_config``; returns a function timing one epoch (s/step)."""
    strategy = distribute.setup(strategy_config)
    xs, ys = np.concatenate([x] * steps), np.concatenate([y] * steps)
    with distribute.scope():
        keras.utils.set_random_seed(0)
        model = zoo.build("digits_cnn", (8, 8, 1), 10, {"width": width})
        training.compile_model(model, 1e-4)
        warm = distribute.fit_inputs(x, y, x[:0], y[:0], batch)
        model.fit(**warm, epochs=1, verbose=0)   # trace and warm up
        inputs = distribute.fit_inputs(xs, ys, x[:0], y[:0], batch)

    def measure() -> float:   # fit runs under the strategy the model was built in
        start = time.perf_counter()
        model.fit(**inputs, epochs=1, verbose=0)
        return (time.perf_counter() - start) / steps

    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    return name, replicas, measure


def main():
    """Prints the best and median step time of each setup."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--width", type=float, default=1.5, help="digits_cnn width (1.5: the quickstart's)")
    args = parser.parse_args()

    two_cpus = config.DistributeConfig(strategy="mirrored", devices=("/cpu:0", "/cpu:1"))
    distribute.setup(two_cpus)   # splits the CPU into 2 logical devices before TensorFlow starts
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    setups = [
        prepare("no strategy (edgecomp's none)", config.DistributeConfig(), x, y, args.batch, args.steps, args.width),
        prepare("mirrored, /cpu:0", config.DistributeConfig(strategy="mirrored", devices=("/cpu:0",)),
                x, y, args.batch, args.steps, args.width),
        prepare("mirrored, /cpu:0 + /cpu:1", two_cpus, x, y, args.batch, args.steps, args.width),
    ]
    samples = {name: [] for name, _, _ in setups}
    for _ in range(args.rounds):
        for name, _, measure in setups:
            samples[name].append(measure() * 1000)
    baseline = min(samples[setups[0][0]])
    print(f"global batch {args.batch}, {args.steps} steps per epoch, best and median of {args.rounds} epochs")
    print(f"{'setup':32s} {'replicas':>8s} {'per replica':>11s} {'best ms':>8s} {'median ms':>9s} {'best ×':>7s}")
    for name, replicas, _ in setups:
        best, median = min(samples[name]), statistics.median(samples[name])
        print(f"{name:32s} {replicas:8d} {args.batch / replicas:11g} {best:8.2f} {median:9.2f} "
              f"{best / baseline:7.2f}")


if __name__ == "__main__":
    main()
