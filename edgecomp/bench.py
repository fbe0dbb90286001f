"""Benchmark any ``.tflite`` on a device: ``python -m edgecomp.bench``.

Example:
    python -m edgecomp.bench --model models/quickstart/cpu/model.tflite --runs 200 --json out.json
    python -m edgecomp.bench --model m.tflite --device adb://R58M123 --benchmark_binary android_aarch64_benchmark_model
"""

import json
import math
import sys

from absl import flags

from edgecomp import cli, files
from edgecomp.config import MAX_RUNS, MAX_THREADS, MAX_TIMEOUT_S
from edgecomp.devices.agent import MAX_CHECKED
from edgecomp.errors import ConfigError

flags.DEFINE_string("model", None, "The .tflite file to run.")
flags.DEFINE_string("device", "local", "local, ssh://user@host[:port][?python=/path/to/python3] or adb://SERIAL.")
flags.DEFINE_multi_string("ssh_option", [], "Extra ssh/scp option, repeatable: --ssh_option=-i --ssh_option=~/.ssh/pi")
flags.DEFINE_string("benchmark_binary", None, "adb:// only: TFLite's benchmark_model built for the phone.")
flags.DEFINE_alias("benchmark-binary", "benchmark_binary")
flags.DEFINE_enum("adb_delegate", "xnnpack", ["xnnpack", "gpu", "nnapi", "none"], "adb:// only: delegate to ask for.")
flags.DEFINE_string("adb_cpu_mask", None, "adb:// only: taskset CPU mask in hex, e.g. f0.")
flags.DEFINE_integer("runs", 100, "Timed invocations.", lower_bound=1, upper_bound=MAX_RUNS)
flags.DEFINE_integer("warmup", 10, "Untimed invocations first.", lower_bound=0, upper_bound=MAX_RUNS)
flags.DEFINE_integer("threads", 1, "Interpreter threads.", lower_bound=1, upper_bound=MAX_THREADS)
flags.DEFINE_bool("xnnpack", True, "Apply the XNNPACK delegate (--noxnnpack turns it off).")
flags.DEFINE_integer("check_samples", 8, "Inputs run on the device after timing, with the timed runtime, and "
                     "compared with this machine's run of the same file; 0 skips the output check.",
                     lower_bound=0, upper_bound=MAX_CHECKED)
flags.DEFINE_string("inputs", None, "An .npy of input samples for the output check (default: seeded random inputs "
                                    "spanning the input tensor's range).")
flags.DEFINE_string("json", None, "Also write the result as JSON to this file.")
flags.DEFINE_float("timeout", 600.0, f"Seconds before the benchmark is stopped, 1 to {MAX_TIMEOUT_S:.0f}.",
                   lower_bound=1, upper_bound=MAX_TIMEOUT_S)
# absl's bounds let nan through (every comparison with nan is false): the validator does not.
flags.register_validator("timeout", lambda seconds: math.isfinite(seconds) and 1 <= seconds <= MAX_TIMEOUT_S,
                         message=f"must be a finite number of seconds from 1 to {MAX_TIMEOUT_S:.0f} (one day)")
FLAGS = flags.FLAGS


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def check_inputs(content: bytes, count: int, path: str | None):
    """Samples for the output check: the given .npy, or seeded random inputs in the input tensor's range."""
    import numpy as np

    from edgecomp import runtime

    detail = runtime.io_details(content)["inputs"][0]
    shape = tuple(int(d) for d in detail["shape"][1:])
    if path:
        try:
            samples = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise ConfigError(f"--inputs {path}: not a readable .npy file ({error})") from None
        if tuple(samples.shape[1:]) != shape:
            raise ConfigError(f"--inputs {path}: samples of shape {tuple(samples.shape[1:])}, the model takes {shape}")
        return samples[:count].astype(np.float32)
    low, high = 0.0, 1.0
    scale, zero = detail.get("scale") or 0.0, detail.get("zero_point") or 0
    if scale and detail["dtype"] in ("int8", "uint8"):
        info = np.iinfo(detail["dtype"])
        low, high = (info.min - zero) * scale, (info.max - zero) * scale
    return np.random.default_rng(0).uniform(low, high, (count, *shape)).astype(np.float32)


def main(argv):
    content = cli.read_model_flag(argv, FLAGS.model)
    from edgecomp.devices import LocalDevice, open_device

    device = open_device(FLAGS.device, ssh_options=FLAGS.ssh_option, adb_binary=FLAGS.benchmark_binary,
                         adb_delegate=FLAGS.adb_delegate, adb_cpu_mask=FLAGS.adb_cpu_mask)
    if not FLAGS.xnnpack:
        if FLAGS.device != "local":
            raise ConfigError("--noxnnpack is supported on the local device only (adb://: --adb_delegate=none)")
        device = LocalDevice(xnnpack=False)
    from edgecomp.devices import output_check

    samples = check_inputs(content, FLAGS.check_samples, FLAGS.inputs) if FLAGS.check_samples else None
    result = device.benchmark(FLAGS.model, runs=FLAGS.runs, warmup=FLAGS.warmup, threads=FLAGS.threads,
                              inputs=samples, timeout_s=FLAGS.timeout)
    if samples is None:
        check = {"verdict": "not checked", "reason": "--check_samples=0"}
    elif "outputs" in result:
        check = output_check.compare(result.pop("outputs"), output_check.reference(content, samples))
    else:
        check = {"verdict": "not checked", "reason": "this device's benchmark returns no outputs"}
    result["output_check"] = check
    latency = result["latency_ms"]
    print(f"{FLAGS.model} on {result['device']} ({result['runtime']}, {result['delegate']}, "
          f"{result['threads']} thread(s), {result['runs']} runs)")
    print("latency ms: " + "  ".join(f"{key} {_number(latency[key], '.4f')}"
                                     for key in ("mean", "std", "min", "p50", "p90", "p99", "max")))
    print(f"init {_number(result['init_ms'], '.2f')} ms  first {_number(result['first_ms'], '.3f')} ms  "
          f"peak RSS {_number(result['peak_rss_mb'], '.1f')} MB")
    for field, reason in result.get("not_available", {}).items():
        print(f"not available: {field}: {reason}")
    print(f"outputs: {output_check.describe(check)}")
    if FLAGS.json:
        files.write_text(FLAGS.json, json.dumps(result, indent=2) + "\n")
        print(f"wrote {FLAGS.json}")
    if check["verdict"] == "wrong":
        print(f"error: {result['device']} computes something different from this machine for {FLAGS.model}: "
              f"{output_check.describe(check)}; its latency is not a result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run_main(main)
