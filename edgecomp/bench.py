"""Benchmark any ``.tflite`` on a device: ``python -m edgecomp.bench``.

Example:
    python -m edgecomp.bench --model models/quickstart/cpu/model.tflite --runs 200 --json out.json
"""

import json

from absl import flags

from edgecomp import cli, files
from edgecomp.errors import ConfigError

flags.DEFINE_string("model", None, "The .tflite file to run.")
flags.DEFINE_string("device", "local", "local or ssh://user@host[:port][?python=/path/to/python3].")
flags.DEFINE_multi_string("ssh_option", [], "Extra ssh/scp option, repeatable: --ssh_option=-i --ssh_option=~/.ssh/pi")
flags.DEFINE_integer("runs", 100, "Timed invocations.", lower_bound=1)
flags.DEFINE_integer("warmup", 10, "Untimed invocations first.", lower_bound=0)
flags.DEFINE_integer("threads", 1, "Interpreter threads.", lower_bound=1)
flags.DEFINE_bool("xnnpack", True, "Apply the XNNPACK delegate (--noxnnpack turns it off).")
flags.DEFINE_string("json", None, "Also write the result as JSON to this file.")
flags.DEFINE_float("timeout", 600.0, "Seconds before the benchmark is stopped.", lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; pass options as --flag=value")
    if not FLAGS.model:
        raise ConfigError("--model is required, e.g. --model models/quickstart/cpu/model.tflite")
    from edgecomp import runtime
    from edgecomp.devices import LocalDevice, open_device

    runtime.read_model(FLAGS.model)  # a clear error for a missing or non-TFLite file
    device = open_device(FLAGS.device, ssh_options=FLAGS.ssh_option)
    if not FLAGS.xnnpack:
        if FLAGS.device != "local":
            raise ConfigError("--noxnnpack is supported on the local device only")
        device = LocalDevice(xnnpack=False)
    result = device.benchmark(FLAGS.model, runs=FLAGS.runs, warmup=FLAGS.warmup, threads=FLAGS.threads,
                              timeout_s=FLAGS.timeout)
    latency = result["latency_ms"]
    print(f"{FLAGS.model} on {result['device']} ({result['runtime']}, {result['delegate']}, "
          f"{result['threads']} thread(s), {result['runs']} runs)")
    print("latency ms: " + "  ".join(f"{key} {latency[key]:.4f}" for key in ("mean", "std", "min", "p50", "p90", "p99", "max")))
    print(f"init {result['init_ms']:.2f} ms  first {result['first_ms']:.3f} ms  peak RSS {result['peak_rss_mb']:.1f} MB")
    if FLAGS.json:
        files.write_text(FLAGS.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {FLAGS.json}")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
