"""Where Deep Compression's int8 file loses its shared values: four cluster/QAT variants from one pruned model.

Question: prune → cluster 16 → QAT should leave 16 distinct values in every int8 kernel, but
the file had 41-50 per conv kernel: which step loses them?

Takes ``configs/deep_compression.yaml`` (or ``--config``), runs the pipeline for it
unless its run folder already holds the baseline and prune checkpoints, then from the
same pruned checkpoint runs the config's cluster and quantize stages four ways and
converts each to int8 with edgecomp's converter:

1. BatchNorm left for the converter to fold, per-channel weights (tfmot's default);
2. BatchNorm folded before clustering, per-channel weights;
3. BatchNorm folded, per-tensor weights, with tfmot 0.8's own Conv → ReLU transform
   (which drops the Conv's weight quantizer);
4. BatchNorm folded, per-tensor weights, edgecomp's transform (what the config runs).

For each it prints the distinct int8 values and the zero share of every conv/dense
kernel *in the .tflite*, the gzip size against the float32 reference, and the
accuracy measured by running the file.

Run (from the repository root):
    python -m experiments.deep_compression_variants [--config configs/deep_compression.yaml] [--json out.json]

Answer (docs/results.md; values per conv kernel, zeros, gzip × the float32 reference, accuracy;
the dense head had 16 values in all four): (1) 24/41/50, 0.80, 0.094, 0.9861; (2) 21/58/72,
0.80, 0.090, 0.9805; (3) 28/103/136, 0.74-0.78, 0.106, 0.9833; (4) 16/16/16, 0.80, 0.079,
0.9805. Only the shipped combination keeps 16 values per kernel: BatchNorm folded before
clustering, per-tensor weights, and edgecomp's Conv → ReLU transform, which keeps the Conv's
weight quantizer.
"""

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

from edgecomp import checkpoints, config, data, models, pipeline, runtime, stages
from edgecomp._keras import keras
from edgecomp.stages import quantize
from edgecomp.targets import cpu
from edgecomp.targets.convert import convert

VARIANTS = (
    ("BN folded by the converter, per-channel", False, "per_channel", True),
    ("BN folded first, per-channel", True, "per_channel", True),
    ("BN folded first, per-tensor, tfmot's ReLU transform", True, "per_tensor", False),
    ("BN folded first, per-tensor, edgecomp's ReLU transform", True, "per_tensor", True),
)


def main() -> int:
    """Prints one line per variant, then the float32 reference's accuracy and gzip size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/deep_compression.yaml")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    cfg = config.load(args.config)
    kinds = [config.stage_kind(item) for item in cfg.stages]
    if kinds != ["prune", "cluster", "quantize"]:
        print(f"error: {args.config}: expected stages prune, cluster, quantize; got {kinds}", file=sys.stderr)
        return 2
    pruned_file = checkpoints.stage_file(cfg.run_dir, 1, "prune")
    if not pruned_file.exists():
        print(f"running {args.config} first for its baseline and prune checkpoints ...", flush=True)
        pipeline.run(cfg, resume=True)
    dataset = data.load(cfg.data, cfg.seed)
    calibration = data.representative_samples(dataset, cfg.data.calibration_samples, cfg.seed)
    baseline = keras.models.load_model(checkpoints.baseline_file(cfg.run_dir), compile=False)
    pruned = keras.models.load_model(pruned_file, compile=False)
    reference = convert(baseline, "float32", "float32", calibration)
    reference_gzip = len(gzip.compress(reference, 9, mtime=0))
    reference_accuracy = runtime.evaluate(reference, dataset.x_test, dataset.y_test)["accuracy"]
    cluster_params, quantize_params = (config.stage_params(item) for item in cfg.stages[1:])
    own_transform = quantize._Scheme.get_layout_transformer
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, fold, weights, relu_fix in VARIANTS:
            if not relu_fix:   # tfmot's own layout transformer, as edgecomp used it before the fix
                quantize._Scheme.get_layout_transformer = lambda self: self._inner.get_layout_transformer()
            try:
                keras.utils.set_random_seed(cfg.seed + 2)
                context = stages.StageContext(cfg, dataset, Path(scratch) / "cluster", ("prune",))
                model, _ = stages.apply("cluster", models.copy(pruned),
                                        cluster_params.model_copy(update={"fold_batchnorm": fold}), context)
                keras.utils.set_random_seed(cfg.seed + 3)
                context = stages.StageContext(cfg, dataset, Path(scratch) / "quantize", ("prune", "cluster"))
                model, _ = stages.apply("quantize", model, quantize_params.model_copy(update={"weights": weights}),
                                        context)
            finally:
                quantize._Scheme.get_layout_transformer = own_transform
            content = convert(model, "int8", "float32", calibration)
            kernels = cpu.weight_statistics(content)["tensors"]
            rows.append({
                "variant": label, "values_per_kernel": [tensor["unique_values"] for tensor in kernels],
                "zeros": [round(tensor["sparsity"], 3) for tensor in kernels],
                "gzip_ratio": round(len(gzip.compress(content, 9, mtime=0)) / reference_gzip, 4),
                "accuracy": runtime.evaluate(content, dataset.x_test, dataset.y_test)["accuracy"],
            })
            print(f"{label:58s} values {rows[-1]['values_per_kernel']}  zeros {rows[-1]['zeros']}  "
                  f"gzip × {rows[-1]['gzip_ratio']:.4f}  accuracy {rows[-1]['accuracy']:.4f}", flush=True)
    print(f"float32 reference: accuracy {reference_accuracy:.4f}, gzip {reference_gzip:,} B")
    if args.json:
        Path(args.json).write_text(json.dumps({"reference_accuracy": reference_accuracy, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
