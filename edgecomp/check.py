"""Check an existing ``.tflite`` against a target and measure it on data: ``python -m edgecomp.check``.

The same rules and accuracy a run's report gives its own files, for a file made
anywhere: does it load, is it quantized as the target needs, does the GPU delegate,
the Edge TPU compiler or TFLM take it, and how accurate is it on the data (run in
LiteRT, or in TFLM for micro). Exit 0 when every rule passes, 1 when one fails,
2 for bad input (a missing or corrupt file, a bad key).

Example:
    python -m edgecomp.check --model models/quickstart/cpu/model.tflite --target cpu --data digits
    python -m edgecomp.check --model m.tflite --target micro --data npz --data_path my.npz --set board=cortex_m4_256k
    python -m edgecomp.check --model m.tflite --target cpu --set quantization=float16 --json verdict.json
    python -m edgecomp.check --model m.tflite --data image_dir --data_path photos/ --image_size 96,96
"""

import json

from absl import flags

from edgecomp import cli, files
from edgecomp.config import TARGET_NAMES

flags.DEFINE_string("model", None, "The .tflite file to check.")
flags.DEFINE_enum("target", "cpu", list(TARGET_NAMES), "The target whose rules the file must meet.")
flags.DEFINE_enum("data", "digits", ["digits", "mnist1d", "npz", "image_dir"],
                  "Where the samples come from (data.source); the test split is measured.")
flags.DEFINE_string("data_path", None, "npz file or image folder (data.path) for --data npz / image_dir.")
flags.DEFINE_list("image_size", None, "--data image_dir: height,width the images are resized to (data.image_size).")
flags.DEFINE_multi_string("set", [], "A target key, repeatable: --set quantization=float16 --set io=int8.")
flags.DEFINE_string("json", None, "Also write the verdict as JSON to this file.")
FLAGS = flags.FLAGS


def main(argv):
    content = cli.read_model_flag(argv, FLAGS.model)
    from edgecomp import api, config, data

    settings: dict = {}
    for pair in FLAGS.set:   # the target's keys, parsed as train's --set parses config keys
        config.apply_override(settings, pair)
    raw_data = {"source": FLAGS.data, **({"path": FLAGS.data_path} if FLAGS.data_path else {}),
                **({"image_size": FLAGS.image_size} if FLAGS.image_size else {})}
    dataset = data.load(config.from_dict({"data": raw_data}, source="--data").data, seed=0)
    verdict = api.verify(content, FLAGS.target, dataset.x_test, dataset.y_test, **settings)
    print(f"{FLAGS.model} for {FLAGS.target}: {'passed' if verdict['ok'] else 'FAILED'}")
    for rule in verdict["rules"]:
        print(f"  {'ok  ' if rule['ok'] else 'FAIL'} {rule['rule']}: {rule['detail']}")
    metrics = verdict["metrics"]
    if metrics:
        print(f"accuracy {metrics['accuracy']:.4f} on {metrics['samples']} test samples of {dataset.name} "
              f"({metrics.get('runtime', 'LiteRT')})")
    for item in verdict["skipped"]:
        print(f"  not checked: {item['layer']}: {item['reason']}")
    if FLAGS.json:
        files.write_text(FLAGS.json, json.dumps(verdict, indent=2, default=str) + "\n")
        print(f"wrote {FLAGS.json}")
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    cli.run_main(main)
