"""Unpruned int8 against filter-pruned int8: accuracy and latency side by side in one process.

The pipeline's report compares every file with the float32 reference; the question
filter pruning answers is "how much faster is the int8 file than the *unpruned int8*
file, at what accuracy". This tool takes a config with a ``prune: {structure: filters}``
stage (default ``configs/filters_resnet8.yaml``), runs the pipeline for it unless its
run folder already holds the baseline and prune checkpoints (``--resume`` semantics:
nothing is retrained when the config is unchanged), loads both checkpoints, converts
each to full-integer int8 with edgecomp's converter and the run's calibration samples,
measures accuracy by running each ``.tflite`` on the test split
(``edgecomp.runtime.evaluate``), and times both with the LiteRT interpreter (XNNPACK,
1 thread, a real test sample) in interleaved rounds, the order alternating every
round, so both see the same machine state. Prints the best-of-rounds median latency
of each, the latency ratio (goal ≤ 0.6) and the accuracy drop (goal ≤ 1.0 point).

    python tools/bench_filter_pruning.py [--config configs/filters_resnet8.yaml] [--rounds 15]
                                         [--invokes 50] [--threads 1] [--no-xnnpack] [--json out.json]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from edgecomp import checkpoints, config, data, models, pipeline, runtime
from edgecomp.targets.convert import convert
from invoke_timer import timer  # tools/, beside this script


def checkpoint_paths(cfg) -> tuple[Path, Path]:
    """The baseline checkpoint and the filter-prune stage's checkpoint of ``cfg``'s run folder."""
    kinds = [config.stage_kind(item) for item in cfg.stages]
    prune_indices = [index for index, item in enumerate(cfg.stages, start=1)
                     if config.stage_kind(item) == "prune" and config.stage_params(item).structure == "filters"]
    if not prune_indices:
        raise SystemExit(f"error: {cfg.name}: no prune stage with structure filters in stages ({', '.join(kinds)})")
    return checkpoints.baseline_file(cfg.run_dir), checkpoints.stage_file(cfg.run_dir, prune_indices[0], "prune")


def main():
    """Prints both files' params, size, accuracy and latency, the latency ratio and the accuracy drop."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/filters_resnet8.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override, as in edgecomp.train")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--invokes", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-xnnpack", action="store_true", help="time LiteRT's builtin kernels instead of XNNPACK")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    started = time.perf_counter()
    cfg = config.load(args.config, args.set)
    baseline_path, pruned_path = checkpoint_paths(cfg)
    if not (baseline_path.exists() and pruned_path.exists()):
        print(f"running the pipeline for {args.config} (checkpoints not found in {cfg.run_dir})", flush=True)
        pipeline.run(cfg, resume=True)
    dataset = data.load(cfg.data, cfg.seed)
    calibration = data.representative_samples(dataset, cfg.data.calibration_samples, cfg.seed)
    variants = {}
    for label, path in (("unpruned int8", baseline_path), ("filter-pruned int8", pruned_path)):
        model = models.load(path, where=label)
        content = convert(model, "int8", "float32", calibration)
        accuracy = runtime.evaluate(content, dataset.x_test, dataset.y_test, where=label)["accuracy"]
        variants[label] = {"params": models.count_params(model), "size_bytes": len(content),
                           "accuracy": accuracy, "content": content}
    prepared = time.perf_counter() - started

    sample = dataset.x_test[:1]
    timers = {label: timer(v["content"], sample, args.invokes, args.threads, xnnpack=not args.no_xnnpack)
              for label, v in variants.items()}
    rounds = {label: [] for label in variants}
    for index in range(args.rounds):
        order = list(variants) if index % 2 == 0 else list(reversed(list(variants)))
        for label in order:
            rounds[label].append(timers[label]())
    for label, values in rounds.items():
        variants[label]["p50_ms_best"] = min(values)
        variants[label]["p50_ms_median"] = statistics.median(values)

    base, pruned = variants["unpruned int8"], variants["filter-pruned int8"]
    paired = statistics.median(p / b for p, b in zip(rounds["filter-pruned int8"], rounds["unpruned int8"]))
    ratio = pruned["p50_ms_best"] / base["p50_ms_best"]
    drop = (base["accuracy"] - pruned["accuracy"]) * 100
    print(f"\n{cfg.name}: {dataset.summary()}; {runtime.runtime_name()}, {args.threads} thread(s), "
          f"{'builtin kernels' if args.no_xnnpack else 'XNNPACK'}; "
          f"prepared in {prepared:.0f} s")
    print(f"{args.rounds} interleaved rounds of {args.invokes} invokes; latency = median per round, best round")
    print(f"{'variant':<20}{'params':>10}{'int8 bytes':>12}{'accuracy':>10}{'p50 ms':>10}{'median ms':>11}")
    for label, v in variants.items():
        print(f"{label:<20}{v['params']:>10,}{v['size_bytes']:>12,}{v['accuracy']:>10.4f}"
              f"{v['p50_ms_best']:>10.4f}{v['p50_ms_median']:>11.4f}")
    print(f"latency ratio pruned/unpruned: {ratio:.3f} (best rounds), {paired:.3f} (median of paired rounds); "
          f"goal ≤ 0.6: {'met' if ratio <= 0.6 else 'NOT met'}")
    print(f"accuracy drop: {drop:+.2f} points ({len(dataset.y_test)} test samples); "
          f"goal ≤ 1.0: {'met' if drop <= 1.0 else 'NOT met'}")
    if args.json:
        figures = {label: {k: v for k, v in values.items() if k != "content"} for label, values in variants.items()}
        figures.update(latency_ratio=ratio, latency_ratio_paired_median=paired, accuracy_drop_points=drop,
                       rounds=args.rounds, invokes=args.invokes, threads=args.threads, xnnpack=not args.no_xnnpack)
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
