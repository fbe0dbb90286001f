"""Training-step time: plain model vs edgecomp's stage wrappers vs tfmot called directly.

Question: do edgecomp's prune, cluster, QAT and PCQAT wrappers make a training step slower
than the same tfmot wrappers applied with tfmot's own whole-model helpers? Goal: ≤ 1.05×.

Prints, for one seeded digits_cnn measured side by side in one run, the best time
of one training step (batch 64) of: the plain model; the model as edgecomp wraps it
for prune, cluster and QAT (and PCQAT after prune + cluster); and the same tfmot
wrappers applied directly with tfmot's whole-model helpers. Ratios are to the plain
step; the last column is edgecomp / direct tfmot (goal: ≤ 1.05).

Run (from the repository root):
    python -m experiments.bench_stage_overhead [--steps 40] [--width 1.0] [--rounds 12] [--verbose]

Answer (docs/results.md; best of 12 epochs of 40 steps, 2 shared cores): plain 12.1 ms per
step; prune 13.6 ms against 12.4 direct, cluster 15.0 against 13.7, QAT 14.1 against 12.8,
PCQAT 19.0 against 21.7 (edgecomp / direct 1.10, 1.10, 1.11, 0.88). Step times on that machine
jump between ~13 and ~22 ms from epoch to epoch, so differences below ~10 % are noise.
"""

import argparse
import time

import numpy as np

from edgecomp import config, zoo
from edgecomp._keras import keras
from edgecomp.stages import cluster, prune, quantize


def prepare(model, x, y, steps: int, callbacks=()):
    """Compiles ``model`` and returns a function timing one epoch of ``steps`` batches (s/step)."""
    model.compile(optimizer=keras.optimizers.Adam(1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xs, ys = np.concatenate([x] * steps), np.concatenate([y] * steps)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=list(callbacks))  # trace and warm up

    def measure() -> float:
        start = time.perf_counter()
        model.fit(xs, ys, batch_size=64, epochs=1, verbose=0, shuffle=False, callbacks=list(callbacks))
        return (time.perf_counter() - start) / steps

    return measure


def wrappings(fresh, tfmot) -> dict:
    """Per stage, ``(edgecomp's wrapping, tfmot's own helpers)``: functions making a fresh wrapped model."""
    sparsity = tfmot.sparsity.keras
    schedule_params = config.PruneConfig(sparsity=0.8, epochs=1)
    cluster_params = config.ClusterConfig(clusters=16)
    kmeans = tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS

    # The same schedule object (and mask-update frequency) on both sides: only the wrapping differs.
    schedule = prune._schedule(schedule_params, 100)

    def edgecomp_pcqat():
        pruned = sparsity.strip_pruning(prune.wrap_model(fresh(), schedule_params, 100)[0])
        clustered = tfmot.clustering.keras.strip_clustering(cluster.wrap_model(pruned, cluster_params, True)[0])
        return quantize.wrap_model(clustered, ("prune", "cluster"))[0]

    def direct_pcqat():
        pruned = sparsity.strip_pruning(sparsity.prune_low_magnitude(
            fresh(), pruning_schedule=schedule))
        clustered = tfmot.clustering.keras.strip_clustering(tfmot.clustering.keras.cluster_weights(
            pruned, number_of_clusters=16, cluster_centroids_init=kmeans, preserve_sparsity=True))
        annotated = tfmot.quantization.keras.quantize_annotate_model(clustered)
        return tfmot.quantization.keras.quantize_apply(
            annotated, tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True))

    return {
        "prune": (lambda: prune.wrap_model(fresh(), schedule_params, 100)[0],
                  lambda: sparsity.prune_low_magnitude(fresh(), pruning_schedule=schedule)),
        "cluster": (lambda: cluster.wrap_model(fresh(), cluster_params, False)[0],
                    lambda: tfmot.clustering.keras.cluster_weights(fresh(), number_of_clusters=16,
                                                                   cluster_centroids_init=kmeans)),
        "qat": (lambda: quantize.wrap_model(fresh())[0], lambda: tfmot.quantization.keras.quantize_model(fresh())),
        "pcqat": (edgecomp_pcqat, direct_pcqat),
    }


def main():
    """Prints the best step time of every variant and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--verbose", action="store_true", help="print every sample (ms)")
    args = parser.parse_args()

    import tensorflow_model_optimization as tfmot

    from edgecomp._keras import tf

    tf.config.threading.set_inter_op_parallelism_threads(1)  # one op at a time: less scheduling noise
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), dtype=np.float32)
    y = rng.integers(0, 10, 64)

    def fresh():
        keras.utils.set_random_seed(0)
        return zoo.build("digits_cnn", (8, 8, 1), 10, {"width": args.width})

    cases = wrappings(fresh, tfmot)
    measures = {"plain": prepare(fresh(), x, y, args.steps)}
    for name, (ours, theirs) in cases.items():
        callbacks = [tfmot.sparsity.keras.UpdatePruningStep()] if name == "prune" else []
        measures[f"{name}/edgecomp"] = prepare(ours(), x, y, args.steps, callbacks)
        measures[f"{name}/direct"] = prepare(theirs(), x, y, args.steps, callbacks)
    samples = {key: [] for key in measures}
    order = list(measures)
    for _ in range(args.rounds):  # interleaved in a new order each round, so noise hits every variant alike
        rng.shuffle(order)
        for key in order:
            samples[key].append(measures[key]())
    print_table(args, samples, cases)


def print_table(args, samples: dict, cases: dict) -> None:
    """The best step time of every variant, as ratios to the plain model's and edgecomp's to tfmot's."""
    # Best of N (as timeit does): on this shared 2-core machine epochs are bimodal
    # (~13 or ~22 ms/step at random), and noise only ever adds time.
    median = {key: min(values) for key, values in samples.items()}
    if args.verbose:
        for key, values in samples.items():
            print(key, " ".join(f"{v * 1e3:.1f}" for v in values))
    plain = median["plain"]
    print(f"digits_cnn width {args.width}, batch 64, best of {args.rounds} interleaved epochs of {args.steps} steps")
    print(f"{'stage':8s} {'edgecomp ms':>12s} {'direct ms':>10s} {'edgecomp×':>10s} {'direct×':>8s} {'edgecomp/direct':>16s}")
    print(f"{'plain':8s} {plain * 1e3:12.2f} {'':>10s} {1.0:10.2f}")
    for name in cases:
        a, b = median[f"{name}/edgecomp"], median[f"{name}/direct"]
        print(f"{name:8s} {a * 1e3:12.2f} {b * 1e3:10.2f} {a / plain:10.2f} {b / plain:8.2f} {a / b:16.3f}")


if __name__ == "__main__":
    main()
