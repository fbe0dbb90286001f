#!/usr/bin/env python3
"""Self-contained benchmark agent: runs one ``.tflite`` and prints one JSON line.

Needs only numpy and a TFLite runtime (``ai_edge_litert``, else ``tflite_runtime``,
else TensorFlow's ``tf.lite``); no edgecomp install. The local device runs it in a
child process (a crashing model cannot take the caller down); remote devices copy
this file next to the model and run it with the device's ``python3``.

Usage:
    python3 agent.py --model model.tflite [--runs 100] [--warmup 10] [--threads 1]
                     [--no-xnnpack] [--inputs samples.npy] [--edgetpu-library PATH]

A file compiled for the Edge TPU (it holds ``edgetpu-custom-op``) runs with the Edge
TPU delegate, loaded from the Edge TPU runtime library (``libedgetpu.so.1`` on Linux,
``libedgetpu.1.dylib`` on macOS, ``edgetpu.dll`` on Windows; ``--edgetpu-library``
names another); without it the agent exits 4 and says how to install it.

Output: a JSON object on the last line of stdout with latency statistics in ms,
init and first-inference time, peak RSS, the delegate the runtime reported, the
runtime name/version, a device description and, with ``--inputs``, the raw
outputs of up to 16 of those samples run one at a time (after timing), for the
host to compare with its own run of the same file. Exit 3: no runtime; exit 4: the
runtime cannot load the model.
"""

import argparse
import ctypes
import json
import os
import platform
import resource
import sys
import tempfile
import time

import numpy as np

EXIT_NO_RUNTIME = 3
EXIT_BAD_MODEL = 4
MAX_CHECKED = 16   # samples of --inputs whose outputs are returned for the host to compare
EDGETPU_OP = b"edgetpu-custom-op"   # the custom op edgetpu_compiler puts in place of the ops it mapped
EDGETPU_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


def compiled_for_edgetpu(content):
    """Whether ``content`` holds the Edge TPU compiler's custom op (its name is stored as a string in the file)."""
    return EDGETPU_OP in content


def load_edgetpu_delegate(module, library=None):
    """The Edge TPU delegate of ``module`` (the runtime), from ``library`` or the platform's runtime library.

    Raises:
        RuntimeError: the runtime has no ``load_delegate`` or the library cannot be loaded; the
            message names the library and how to install it.
    """
    library = library or EDGETPU_LIBRARIES.get(platform.system(), "libedgetpu.so.1")
    load = getattr(module, "load_delegate", None) or getattr(getattr(module, "experimental", None),
                                                             "load_delegate", None)
    if load is None:
        raise RuntimeError("this file was compiled for the Edge TPU (edgetpu-custom-op) and this runtime cannot "
                           "load delegates: pip install ai-edge-litert or tflite-runtime")
    # Checked with ctypes first: the runtimes' load_delegate fails on a missing library or symbol with an
    # unrelated AttributeError and a traceback from its destructor.
    try:
        found = hasattr(ctypes.CDLL(library), "tflite_plugin_create_delegate")
        problem = None if found else "it is not a TFLite delegate: no tflite_plugin_create_delegate"
    except OSError as error:
        problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if problem is None:
        try:
            return load(library)
        except Exception as error:  # noqa: BLE001 - the runtimes raise ValueError, RuntimeError or AttributeError
            problem = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise RuntimeError(
        f"this file was compiled for the Edge TPU (edgetpu-custom-op) and needs the Edge TPU runtime, but "
        f"{library} could not be loaded ({problem}): install libedgetpu1-std from Coral's package repository "
        "(https://coral.ai/software/#debian-packages), attach the accelerator, or benchmark the file from before "
        "edgetpu_compiler")


def _load_runtime():
    try:
        import ai_edge_litert
        from ai_edge_litert import interpreter as module

        return module, "ai_edge_litert", getattr(ai_edge_litert, "__version__", "?")
    except ImportError:
        pass
    try:
        import tflite_runtime
        from tflite_runtime import interpreter as module

        return module, "tflite_runtime", getattr(tflite_runtime, "__version__", "?")
    except ImportError:
        pass
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        return tf.lite, "tf.lite", tf.__version__
    except ImportError:
        return None, None, None


def _status_mb(key):
    """A memory figure from /proc/self/status (VmRSS, VmHWM) in MB, NaN elsewhere."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _peak_rss_mb():
    # VmHWM is this process image's peak; ru_maxrss would include the parent's peak
    # from before exec on Linux, so it is only the fallback where /proc is missing.
    peak = _status_mb("VmHWM")
    if peak == peak:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


def cpu_name(cpuinfo: str) -> str:
    """The board or CPU named by /proc/cpuinfo text: a Pi's ``Model``, else ``model name`` (x86), else ``Hardware``.

    x86 also has a numeric ``model`` line (e.g. "167") before ``model name``: it names nothing.
    """
    fields = {}
    for line in cpuinfo.splitlines():
        key, colon, value = line.partition(":")
        if colon and value.strip():
            fields.setdefault(key.strip().lower(), value.strip())
    for key in ("model", "model name", "hardware", "cpu model"):
        if key in fields and not fields[key].isdigit():
            return fields[key]
    return ""


def _device():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = cpu_name(handle.read())
    except OSError:
        pass
    cpu = cpu or platform.processor() or ""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        # Each figure as the benchmark process reads it on the device: a container, chroot or
        # emulator shows its host's kernel, /proc/cpuinfo and core count, not the board's.
        "read_from": {
            "machine": "platform.machine() (uname of the kernel the process runs on)",
            "cpu": "/proc/cpuinfo as the process sees it (under qemu-user: the host's)",
            "cores": "os.cpu_count() (the kernel's CPUs)",
            "cores_usable": "os.sched_getaffinity(0) (the CPUs this process may run on)",
            "os": "platform.system() and release() (the kernel's)",
            "python": "the interpreter that ran the benchmark",
        },
    }


class _CaptureStderr:
    """Captures what native code writes to file descriptor 2 (delegate messages)."""

    def __enter__(self):
        sys.stderr.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()
        return False


def _make_interpreter(module, content, threads, xnnpack, edgetpu_library=None):
    kwargs = {"model_content": content, "num_threads": threads}
    if compiled_for_edgetpu(content):
        kwargs["experimental_delegates"] = [load_edgetpu_delegate(module, edgetpu_library)]
    elif not xnnpack:
        resolver = getattr(module, "OpResolverType", None) or getattr(
            getattr(module, "experimental", None), "OpResolverType", None
        )
        if resolver is None:
            raise RuntimeError("this runtime cannot turn XNNPACK off")
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = module.Interpreter(**kwargs)
    interpreter.allocate_tensors()
    return interpreter


def quantized(data, detail):
    """``data`` (float samples) in the input's type: scaled and rounded when the input is integer."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind in "iu":
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        data = np.clip(np.round(data / (scale or 1.0) + zero), info.min, info.max)
    return data.astype(dtype)


def _inputs(interpreter, path, rng):
    details = interpreter.get_input_details()
    samples = np.load(path, allow_pickle=False) if path else None
    batches = []
    for position, detail in enumerate(details):
        shape = [int(d) for d in detail["shape"]]
        dtype = np.dtype(detail["dtype"])
        if samples is not None and position == 0:
            data = samples.reshape((-1, *shape[1:]))[: max(1, shape[0])]
            batches.append(quantized(data, detail).reshape(shape))
        elif dtype.kind == "f":
            batches.append(rng.standard_normal(shape).astype(dtype))
        elif dtype == np.bool_:
            batches.append(rng.integers(0, 2, shape).astype(dtype))
        else:
            info = np.iinfo(dtype)
            batches.append(rng.integers(max(info.min, -128), min(info.max, 127) + 1, shape).astype(dtype))
    return details, batches


def _stats(latencies_ms):
    values = np.asarray(latencies_ms, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
    }


def time_invokes(invoke, runs, clock=time.perf_counter):
    """The timing loop: one clock read before and one after each ``invoke()``; seconds per call.

    Nothing else happens between the two reads (experiments/bench_harness_overhead.py measures
    what the loop adds over a bare ``invoke()`` loop).
    """
    latencies = []
    append = latencies.append
    for _ in range(runs):
        start = clock()
        invoke()
        append(clock() - start)
    return latencies


def outputs_for(interpreter, samples, count=MAX_CHECKED):
    """The first output's raw values for each of the first ``count`` samples, fed one at a time.

    The host runs this same function on its own interpreter to compare (``edgecomp.devices.output_check``).
    Returns None for a model with more than one input or a batch other than 1.
    """
    inputs = interpreter.get_input_details()
    shape = [int(d) for d in inputs[0]["shape"]]
    if len(inputs) != 1 or shape[0] != 1:
        return None
    output = interpreter.get_output_details()[0]
    values = []
    for sample in np.asarray(samples, dtype=np.float32).reshape((-1, *shape[1:]))[:count]:
        interpreter.set_tensor(inputs[0]["index"], quantized(sample[None], inputs[0]))
        interpreter.invoke()
        values.append(interpreter.get_tensor(output["index"]).ravel().tolist())
    scale, zero = output["quantization"]
    return {"dtype": np.dtype(output["dtype"]).name, "scale": float(scale), "zero_point": int(zero), "values": values}


def run(model_path, runs, warmup, threads, xnnpack=True, inputs_path=None, seed=0, edgetpu_library=None):
    """Benchmarks ``model_path``; returns the result dict (see module docstring)."""
    module, runtime_name, runtime_version = _load_runtime()
    if module is None:
        raise SystemExit(EXIT_NO_RUNTIME)
    with open(model_path, "rb") as handle:
        content = handle.read()
    rss_before = _status_mb("VmRSS")
    with _CaptureStderr() as captured:
        start = time.perf_counter()
        interpreter = _make_interpreter(module, content, threads, xnnpack, edgetpu_library)
        init_ms = (time.perf_counter() - start) * 1e3
    log = captured.text
    details, batches = _inputs(interpreter, inputs_path, np.random.default_rng(seed))
    for detail, batch in zip(details, batches):
        interpreter.set_tensor(detail["index"], batch)
    start = time.perf_counter()
    interpreter.invoke()
    first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(warmup):
        interpreter.invoke()
    latencies_ms = [value * 1e3 for value in time_invokes(interpreter.invoke, runs)]
    delegate = "EdgeTPU" if compiled_for_edgetpu(content) else "XNNPACK" if "XNNPACK delegate" in log else "none"
    outputs = outputs_for(interpreter, np.load(inputs_path, allow_pickle=False)) if inputs_path else None
    return {
        "outputs": outputs,
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "latency_ms": _stats(latencies_ms),
        "init_ms": init_ms,
        "first_ms": first_ms,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_delta_mb": _peak_rss_mb() - rss_before,
        "delegate": delegate,
        "runtime": f"{runtime_name} {runtime_version}",
        "device_info": _device(),
        "latency_samples_ms": [round(v, 5) for v in latencies_ms],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-xnnpack", action="store_true")
    parser.add_argument("--inputs", default=None, help=".npy samples to feed (first input)")
    parser.add_argument("--edgetpu-library", default=None,
                        help="the Edge TPU runtime library for files compiled for the Edge TPU "
                             "(default: the platform's, e.g. libedgetpu.so.1)")
    args = parser.parse_args(argv)
    try:
        result = run(args.model, args.runs, args.warmup, args.threads, not args.no_xnnpack, args.inputs,
                     edgetpu_library=args.edgetpu_library)
    except SystemExit as stop:
        if stop.code == EXIT_NO_RUNTIME:
            print("no TFLite runtime: pip install ai-edge-litert (64-bit) or tflite-runtime 'numpy<2' (armv7)", file=sys.stderr)
        raise
    except (ValueError, RuntimeError) as error:
        print(f"cannot run {args.model}: {str(error).strip().splitlines()[0] if str(error).strip() else error}",
              file=sys.stderr)
        return EXIT_BAD_MODEL
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
