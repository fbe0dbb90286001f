"""Train, compress, convert, verify, benchmark and report: ``python -m edgecomp.train``.

Example:
    python -m edgecomp.train --config configs/quickstart.yaml --set train.epochs=3
"""

import sys

from absl import flags

from edgecomp import cli, config, distribute  # neither imports TensorFlow

flags.DEFINE_string("config", None, "YAML config file (see configs/ and configs/schema.json).")
flags.DEFINE_multi_string("set", [], "Override a key: --set train.epochs=3 (values parsed as YAML).")
flags.DEFINE_bool("resume", False, "Reuse finished stage checkpoints of an earlier run of this config.")
flags.DEFINE_bool("trust_model", False, "Allow model files whose Lambda layers run stored code (model.trust: true).")
FLAGS = flags.FLAGS


def main(argv):
    path = cli.config_flag(argv, FLAGS.config, "configs/quickstart.yaml")
    overrides = list(FLAGS.set) + (["model.trust=true"] if FLAGS.trust_model else [])
    cfg = config.load(path, overrides)  # validated before TensorFlow is imported
    if cfg.distribute.strategy == "multi_worker":
        distribute.read_tf_config()  # a missing or bad TF_CONFIG is reported before TensorFlow starts

    from edgecomp import pipeline

    report = pipeline.run(cfg, resume=FLAGS.resume)
    if not distribute.is_chief():
        print(f"worker done: trained {len(report.stages)} stage(s); the chief writes {cfg.run_dir / 'report.md'}")
        return 0
    failed = [t.target for t in [report.reference, *report.targets] if t and not t.compatibility.get("ok")]
    print(f"wrote {cfg.run_dir / 'report.md'}")
    for record in [report.reference, *report.targets]:
        accuracy = record.metrics.get("accuracy") if record.metrics else None
        p50 = record.benchmarks[0]["latency_ms"]["p50"] if record.benchmarks else None
        print(f"  {record.target:10s} {record.quantization:8s} {record.size_bytes:>9,d} B  "
              f"accuracy {accuracy if accuracy is None else round(accuracy, 4)}  "
              f"p50 {'-' if p50 is None else f'{p50:.4f} ms'}")
    if failed:
        records = {r.target: r for r in [report.reference, *report.targets]}
        reasons = "; ".join(f"{name} {pipeline.failed_rules(records[name])}" for name in failed)
        print(f"error: {reasons} (see {cfg.run_dir / 'report.md'})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run_main(main)
