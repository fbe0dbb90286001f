"""The micro project of several models built against real TFLM trees, run, and measured; one table.

Question: does the C++ edgecomp hands over build and give the Python check's outputs, and what
flash and RAM does it take on a Cortex-M4? Each model goes through ``edgecomp.train``'s pipeline
(in this process, so TFLM's objects are compiled once per tree) with a micro target whose
``build`` names the trees; the table is read from each run's report.

    python tools/micro_builds.py --host-tree ~/tflm_tree --cortex-m4-tree ~/tflm_tree_cm4 --out /tmp/micro_builds
    python tools/micro_builds.py ... --models digits_cnn,tiny_vit     # a subset

Models: the corpus models that run on digits / MNIST-1D (``tools/corpus_models.py``; its tiny_vit uses
GELU, which TFLM has no kernel for, so a ReLU copy stands in: BATCH_MATMUL), the zoo's ``digits_cnn``,
and the zoo's DS-CNN clustered so that its file is LUT-compressed (TFLM's DECODE op).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# The corpus models' builders ("corpus_models:NAME") import tools/corpus_models.py: python puts a
# script's folder on the path, so run this file as a script (python tools/micro_builds.py).

DIGITS = {"source": "digits", "calibration_samples": 200}
MNIST1D = {"source": "mnist1d", "calibration_samples": 200}
DS_CNN_DATA = {"source": "synthetic", "image_size": [49, 10], "channels": 1, "num_classes": 12, "samples": 1200,
               "calibration_samples": 200}
# name → (model key, data, stages)
MODELS = {
    "digits_cnn": ({"zoo": "digits_cnn"}, DIGITS, []),
    "ds_cnn_lut": ({"zoo": "ds_cnn", "args": {"filters": 64, "blocks": 4}}, DS_CNN_DATA,
                   [{"cluster": {"clusters": 16, "epochs": 2}}]),
    "awkward_cnn": ({"builder": "corpus_models:awkward_cnn"}, DIGITS, []),
    "separable_prelu": ({"builder": "corpus_models:separable_prelu"}, DIGITS, []),
    "conv1d_kws": ({"builder": "corpus_models:conv1d_kws"}, MNIST1D, []),
    "gru_kws": ({"builder": "corpus_models:gru_kws"}, MNIST1D, []),
    # the corpus's tiny ViT with ReLU for GELU (TFLM has no GELU kernel): BATCH_MATMUL, SOFTMAX, LayerNorm
    "attention_relu": ({"builder": "corpus_models:tiny_vit", "args": {"activation": "relu"}}, DIGITS, []),
}


def measure(name: str, trees: dict, out: Path, epochs: int) -> dict:
    """Runs one model through the pipeline with the micro builds; returns its table row."""
    from edgecomp import config, pipeline
    from edgecomp.targets import micro

    model, data, stages = MODELS[name]
    cfg = config.from_dict({"name": name, "output_dir": str(out), "data": data, "model": model,
                            "train": {"epochs": epochs, "stop_if_not_learned": False}, "stages": stages,
                            "targets": [{"micro": {"build": trees}}]})
    started = time.time()
    record = pipeline.run(cfg).targets[0]
    details = record.compatibility.get("details", {})
    builds = details.get("builds", {})
    folder = cfg.run_dir / "micro"
    shipped = folder / ("model_lut.tflite" if (folder / "model_lut.tflite").exists() else "model.tflite")
    row = {"model": name, "ops": ", ".join(micro.op_names(shipped.read_bytes())), "model_bytes": shipped.stat().st_size,
           "arena_python": (details.get("lut") or {}).get("arena_bytes") or details.get("arena_bytes"),
           "accuracy": record.metrics.get("accuracy"), "seconds": time.time() - started}
    for target, build in builds.items():
        row[target] = {key: build.get(key) for key in ("ok", "samples", "arena_used_bytes", "runtime_bytes",
                                                       "flash_bytes", "ram_bytes")}
        row[target]["identical"] = next((rule["detail"].split(" samples")[0] for rule in build["rules"]
                                         if rule["rule"] == f"identical_{target}"), "not run")
        if not build.get("ok"):
            row[target]["error"] = build["rules"][0]["detail"][:200]
    return row


def render(rows: list[dict]) -> str:
    lines = ["| model | ops | model | runtime + kernels (Cortex-M4) | flash (Cortex-M4) | arena: Python (64-bit) / host "
             "/ Cortex-M4 | outputs identical: host / Cortex-M4 |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        host, arm = row.get("host", {}), row.get("cortex_m4", {})

        def cell(build, key):
            value = build.get(key)
            return "–" if value is None else f"{value:,} B"

        lines.append(f"| {row['model']} | {row['ops']} | {row['model_bytes']:,} B | {cell(arm, 'runtime_bytes')} | "
                     f"{cell(arm, 'flash_bytes')} | {row['arena_python'] or 0:,} / {cell(host, 'arena_used_bytes')} / "
                     f"{cell(arm, 'arena_used_bytes')} | {host.get('identical', '–')} / {arm.get('identical', '–')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host-tree", help="a create_tflm_tree.py export (reference kernels)")
    parser.add_argument("--cortex-m4-tree", help="a create_tflm_tree.py export for cortex_m_generic + CMSIS-NN")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated; of {', '.join(MODELS)}")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (accuracy is not the question)")
    parser.add_argument("--out", default="micro_builds", type=Path)
    args = parser.parse_args(argv)
    trees = {target: tree for target, tree in (("host", args.host_tree), ("cortex_m4", args.cortex_m4_tree)) if tree}
    if not trees:
        parser.error("give --host-tree and/or --cortex-m4-tree")
    rows = []
    for name in args.models.split(","):
        rows.append(measure(name, trees, args.out / "runs", args.epochs))
        print(f"{name}: done in {rows[-1]['seconds']:.0f} s", flush=True)
    table = render(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "micro_builds.md").write_text(table)
    print(table)
    return 0 if all(row.get(t, {}).get("ok", True) for row in rows for t in trees) else 1


if __name__ == "__main__":
    sys.exit(main())
