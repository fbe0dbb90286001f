"""Verifier and source generator of the ``micro`` target (TensorFlow Lite for Microcontrollers).

The file is run in the real TFLM interpreter (the ``tflite-micro`` package):

- ``loads_in_tflm``: TFLM has kernels for every op and allocates the model.
- ``matches_litert``: on test samples, TFLM's int8 outputs are within one
  quantization step of LiteRT's reference kernels (``BUILTIN_REF``; the optimized
  kernels and XNNPACK round differently), or further apart on at most 0.5 % of
  outputs while every prediction is the same (``MAX_SHARE_BEYOND_ONE_STEP``).
- ``fits_flash``: the model's bytes fit the board's flash budget.
- ``fits_ram``: the smallest tensor arena that allocates and runs (searched to
  16 bytes), plus 16 bytes of alignment margin, fits the board's RAM budget.

Accuracy for this target is measured in TFLM. ``strip_strings`` removes the names
and signatures TFLM never reads (the target's ``strip_strings``, on by default);
``lut_compress`` stores clustered kernels as TFLM lookup tables. ``write_sources`` emits
``model_data.cc``/``.h`` (``alignas(16)`` array and its length) and
``op_resolver.h`` with a ``MicroMutableOpResolver`` that registers exactly the
ops the model uses.

Besides ``judge``, ``convert`` and ``finish`` (``micro_outputs``), the target's hooks
(see ``edgecomp.targets``) are ``require`` (TFLM installed) and, delegating to
``micro_report``, ``measure_baseline``/``compare_with_baseline`` (flash against the
baseline's plain int8 file), ``report_check_lines`` and ``report_section``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgecomp import runtime
from edgecomp.config import MicroTargetConfig
from edgecomp.errors import ConfigError, ModelError
from edgecomp.targets.micro_sources import (  # noqa: F401 - micro.write_sources etc., as before
    CUSTOM_RESOLVER_METHODS,
    IRREGULAR_RESOLVER_METHODS,
    op_names,
    parse_c_array,
    resolver_header,
    resolver_method,
    write_sources,
)

ALIGNMENT = 16
INSTALL_HINT = ("pip install 'edgecomp[micro]' (TFLM's Python interpreter, the tflite-micro package, has wheels "
                "for Linux x86_64 only; elsewhere run the micro target on a Linux x86_64 machine or leave it out)")
MAX_ARENA = 64 * 1024 * 1024


def require_tflm(where: str = "target micro") -> None:
    """Raises ``ConfigError`` naming ``where`` when TFLM's Python interpreter is not installed.

    The micro target judges and measures every file in it, so a run checks this
    before it trains anything.
    """
    import importlib.util

    if importlib.util.find_spec("tflite_micro") is None:
        raise ConfigError(f"{where}: the micro target runs every file in TFLM's Python interpreter, which is not "
                          f"installed: {INSTALL_HINT}")


require = require_tflm   # the target hook the run calls for each micro target before it trains anything


class _Worker:
    """A model and samples on disk, run by ``tflm_worker`` in child processes."""

    def __init__(self, content: bytes, x: np.ndarray):
        self._folder = tempfile.TemporaryDirectory(prefix="edgecomp-tflm-")
        self.model = Path(self._folder.name) / "model.tflite"
        self.inputs = Path(self._folder.name) / "inputs.npy"
        self.model.write_bytes(content)
        np.save(self.inputs, np.asarray(x, dtype=np.float32))

    def run(self, arena: int, outputs: Path | None = None, raw: bool = False) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "edgecomp.targets.tflm_worker", "--model", str(self.model),
                   "--inputs", str(self.inputs), "--arena", str(arena)]
        if outputs is not None:
            command += ["--outputs", str(outputs)] + (["--raw"] if raw else [])
        return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)

    def close(self):
        self._folder.cleanup()


# matches_litert's tolerance: TFLM and LiteRT's reference kernels may round a requantization differently, and
# a deep network carries that on; a few outputs more than one step apart pass when no prediction changes.
MAX_SHARE_BEYOND_ONE_STEP = 0.005

def _runs(content: bytes, arena_size: int, sample: np.ndarray) -> bool:
    """Whether the model allocates and runs one sample in ``arena_size`` bytes (a crash counts as no)."""
    worker = _Worker(content, sample[np.newaxis])
    try:
        return worker.run(arena_size).returncode == 0
    finally:
        worker.close()


def find_arena(content: bytes, sample: np.ndarray) -> int:
    """The smallest tensor arena (a multiple of 16 bytes) in which the model allocates and runs.

    Each probe runs in a child process: TFLM may crash on an arena that is too small.

    Raises:
        ModelError: TFLM cannot run the model with any arena up to 64 MB.
    """
    worker = _Worker(content, sample[np.newaxis])
    try:
        high = max(4096, len(content))
        while (done := worker.run(high)).returncode != 0:
            reason = _tflm_reason(done)
            if "Didn't find op" in reason:     # no arena helps: this TFLM has no kernel for an op
                raise ModelError(f"TFLM cannot run the model: {reason}")
            high *= 2
            if high > MAX_ARENA:
                raise ModelError(f"TFLM cannot run the model with any arena up to 64 MB: {reason}")
        low = 0  # known to fail (or never tried)
        while high - low > ALIGNMENT:
            middle = (low + high) // 2 // ALIGNMENT * ALIGNMENT
            if middle <= low:
                break
            if worker.run(middle).returncode == 0:
                high = middle
            else:
                low = middle
        return high
    finally:
        worker.close()


def _tflm_reason(done: subprocess.CompletedProcess) -> str:
    """One line of why a TFLM child process failed: its error message, or the signal."""
    if done.returncode < 0:
        return f"signal {-done.returncode}"
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    found = next((line for line in lines if "Didn't find op" in line), None)
    return (found or (lines[-1] if lines else f"exit {done.returncode}"))[-300:]


def predict(content: bytes, x: np.ndarray, arena_size: int, raw: bool = False) -> np.ndarray:
    """Float outputs of the model run in TFLM (in a child process), one sample at a time.

    With ``raw``, the output tensor's own values (int8 for an int8 model), not dequantized.

    Raises:
        ModelError: TFLM refused the model or crashed.
    """
    worker = _Worker(content, x)
    try:
        outputs = Path(worker.model.parent) / "outputs.npy"
        done = worker.run(arena_size, outputs, raw)
        if done.returncode != 0:
            reason = f"signal {-done.returncode}" if done.returncode < 0 else done.stderr.strip()[-200:]
            raise ModelError(f"TFLM could not run the model: {reason}")
        return np.load(outputs)
    finally:
        worker.close()


BENCHMARKED = False   # host timings do not predict a microcontroller
METADATA = False      # no TFLite metadata in the file: TFLM never reads it and flash pays for every byte


def convert(model, params: MicroTargetConfig, calibration: np.ndarray | None) -> tuple[bytes, dict]:
    """The converter's file with batch 1, its strings stripped when ``strip_strings`` (the bytes saved in facts)."""
    from edgecomp.targets import convert as converter

    content = converter.convert(model, params.quantization, params.io, calibration, static_batch=True)
    if not params.strip_strings:
        return content, {"stripped_string_bytes": 0}
    stripped = strip_strings(content)
    return stripped, {"stripped_string_bytes": len(content) - len(stripped)}


def judge(content: bytes, params: MicroTargetConfig, path, x_test: np.ndarray, y_test: np.ndarray,
          expect: dict | None = None) -> tuple[dict, dict, list]:
    """The micro rules and accuracy measured in TFLM (``verify``); ``path`` and ``expect`` are not used."""
    compatibility, metrics = verify(content, params, x_test, y_test)
    return compatibility, metrics, [{"layer": "benchmark", "reason": "micro: host timings do not predict a "
                                                                     "microcontroller; see the arena and flash figures"}]


def finish(record, content: bytes, params: MicroTargetConfig, folder: Path, dataset, expect: dict | None = None) -> None:
    """Writes the LUT variant, the C sources and the buildable project beside the judged file (``micro_outputs``)."""
    from edgecomp.targets import micro_outputs

    micro_outputs.finish(record, content, params, folder, dataset, expect)


def measure_baseline(baseline, params: MicroTargetConfig, calibration: np.ndarray) -> int | None:
    """The bytes of the baseline's plain int8 file, this target's strings stripped (``micro_report``)."""
    from edgecomp.targets import micro_report

    return micro_report.plain_int8_flash(baseline, params, calibration)


def compare_with_baseline(record, plain_int8: int) -> None:
    """Adds the file's flash against the baseline's plain int8 file to ``record`` (``micro_report``)."""
    from edgecomp.targets import micro_report

    micro_report.compare_with_plain_int8(record, plain_int8)


def report_check_lines(record) -> list[str]:
    """The file's flash and LUT compression lines under the report's checks (``micro_report``)."""
    from edgecomp.targets import micro_report

    return micro_report.check_lines(record)


def report_section(records) -> list[str]:
    """The report's Microcontroller section for the micro files ``records`` (``micro_report``)."""
    from edgecomp.targets import micro_report

    return micro_report.section_lines(records)


def verify(content: bytes, params: MicroTargetConfig, x_test: np.ndarray, y_test: np.ndarray) -> tuple[dict, dict]:
    """Runs the micro rules; returns ``(compatibility, metrics measured in TFLM)``."""
    rules = []
    x = x_test[: params.test_samples] if params.test_samples else x_test
    y = y_test[: params.test_samples] if params.test_samples else y_test
    try:
        runtime.check_model(content)  # a corrupt file is refused at once, not after 15 arena probes
        arena = find_arena(content, x[0])
    except ModelError as error:
        return {"ok": False, "details": {"rules": [_rule("loads_in_tflm", False, str(error))]}}, {}
    rules.append(_rule("loads_in_tflm", True, f"runs with a {arena:,} byte arena"))
    # TFLM's kernels are int8: a float file may load in the Python interpreter and still be no micro file.
    from edgecomp.targets import cpu

    rules += [rule for rule in cpu.verify(content, params.quantization, params.io)["details"]["rules"]
              if rule["rule"] in ("io_type", "quantization")]

    tflm_out = predict(content, x, arena)
    # LiteRT's reference kernels, the ones TFLM's are ported from: XNNPACK and LiteRT's
    # optimized builtin kernels round differently, and on a deep network the differences
    # add up (an int8 MobileNetV2: 13-21 output steps from TFLM with the optimized builtin
    # kernels, at most 1 with the reference ones).
    litert_out = runtime.predict(content, x, reference=True)
    step = runtime.io_details(content)["outputs"][0]["scale"] or 1.0
    steps = np.rint(np.abs(tflm_out - litert_out) / step) if len(x) else np.zeros(1)
    worst = int(steps.max())
    beyond = float((steps > 1).mean())
    same_answers = bool(len(x) == 0 or np.array_equal(tflm_out.argmax(-1), litert_out.argmax(-1)))
    tolerated = worst <= 1 or (same_answers and beyond <= MAX_SHARE_BEYOND_ONE_STEP)
    rules.append(_rule("matches_litert", tolerated,
                       f"largest output difference {worst} quantization step(s) from LiteRT's reference kernels "
                       f"on {len(x)} samples; {float((steps == 0).mean()):.1%} of outputs identical, "
                       f"{beyond:.2%} more than 1 step apart, predictions "
                       f"{'identical' if same_answers else 'DIFFERENT'} (allowed: ≤ 1 step, or more on at most "
                       f"{MAX_SHARE_BEYOND_ONE_STEP:.1%} of outputs when every prediction is the same)"))

    flash_kb, ram_kb = params.budget
    runtime_estimate = runtime_flash_estimate(len(op_names(content)))
    rules.append(fits_flash_estimate(len(content), runtime_estimate, flash_kb))
    ram = arena + ALIGNMENT
    rules.append(_rule("fits_ram", ram <= ram_kb * 1024,
                       f"arena {arena:,} B (the Python TFLM interpreter on this 64-bit host) + {ALIGNMENT} B "
                       f"alignment = {ram / 1024:.1f} KB of {ram_kb} KB RAM"))
    metrics = {
        "accuracy": float((tflm_out.argmax(-1) == y).mean()),
        "samples": int(len(y)),
        "runtime": "tflm",
        "litert_accuracy": float((litert_out.argmax(-1) == y).mean()),
    }
    details = {"rules": rules, "arena_bytes": arena, "ram_bytes": ram, "flash_bytes": len(content),
               "runtime_flash_estimate_bytes": runtime_estimate, "figures": "estimated",
               "board": params.board, "budget_kb": {"flash": flash_kb, "ram": ram_kb}}
    return {"ok": all(r["ok"] for r in rules), "details": details}, metrics


# Flash TFLM's runtime and a model's kernels take besides the model on a Cortex-M4 (-Os, CMSIS-NN, soft float):
# 83 KB measured for a 3-op model with edgecomp's project, 91-100 KB for 4-6 ops, ~136 KB for a DS-CNN and
# ~216 KB for a 22-op model. The estimate used when no cortex_m4 build measured it; it errs high on small models.
RUNTIME_FLASH_BASE_BYTES = 80 * 1024
RUNTIME_FLASH_PER_OP_BYTES = 7 * 1024


def runtime_flash_estimate(op_count: int) -> int:
    """Estimated flash of TFLM's runtime and kernels for a model of ``op_count`` distinct ops."""
    return RUNTIME_FLASH_BASE_BYTES + RUNTIME_FLASH_PER_OP_BYTES * op_count


def fits_flash_estimate(model_bytes: int, runtime_estimate: int, flash_kb: int) -> dict:
    """The ``fits_flash`` rule from the model's bytes and an estimate of the runtime's."""
    flash = model_bytes + runtime_estimate
    return _rule("fits_flash", flash <= flash_kb * 1024,
                 f"model {model_bytes / 1024:.1f} KB + TFLM runtime and kernels ≈ {runtime_estimate / 1024:.0f} KB "
                 f"(an estimate; build for cortex_m4 to measure) = {flash / 1024:.1f} KB of {flash_kb} KB flash")


def apply_lut(compatibility: dict, params: MicroTargetConfig, compressed: bytes) -> None:
    """The verdict of a model whose sources carry the LUT-compressed file: ``fits_flash`` counts that file."""
    details = compatibility["details"]
    rule = fits_flash_estimate(len(compressed), details["runtime_flash_estimate_bytes"], params.budget[0])
    details["rules"] = [rule if old["rule"] == "fits_flash" else old for old in details["rules"]]
    details["flash_bytes"] = len(compressed)
    compatibility["ok"] = all(old["ok"] for old in details["rules"])


def apply_builds(compatibility: dict, params: MicroTargetConfig, builds: dict) -> None:
    """Adds the builds' rules to the micro verdict; a Cortex-M4 build's figures replace the fits rules' estimates.

    ``builds`` is what ``micro_build.check`` returned. With a cortex_m4 build that ran,
    ``fits_flash`` uses its flash (text + data: model + runtime and kernels) and ``fits_ram``
    its RAM (data + bss, with the arena at what the 32-bit target used plus alignment).
    """
    details = compatibility["details"]
    details["builds"] = builds
    details["rules"] += [rule for record in builds.values() for rule in record["rules"]]
    measured = builds.get("cortex_m4")
    if measured and "flash_bytes" in measured and "arena_used_bytes" in measured:
        flash_kb, ram_kb = params.budget
        statics = measured["ram_bytes"] - measured["arena_bytes"]
        ram = measured["arena_used_bytes"] + ALIGNMENT + statics
        replaced = {
            "fits_flash": _rule("fits_flash", measured["flash_bytes"] <= flash_kb * 1024,
                                f"{measured['flash_bytes'] / 1024:.1f} KB of {flash_kb} KB flash, measured by a "
                                f"Cortex-M4 build (text + data): model {measured['model_bytes'] / 1024:.1f} KB + "
                                f"TFLM runtime, kernels and C library {measured['runtime_bytes'] / 1024:.1f} KB"),
            "fits_ram": _rule("fits_ram", ram <= ram_kb * 1024,
                              f"{ram / 1024:.1f} KB of {ram_kb} KB RAM, measured by a Cortex-M4 build: arena used "
                              f"{measured['arena_used_bytes']:,} B (32-bit) + {ALIGNMENT} B alignment + "
                              f"{statics:,} B of static data (stack not counted)"),
        }
        details["rules"] = [replaced.get(rule["rule"], rule) for rule in details["rules"]]
        details.update(figures="measured by a Cortex-M4 build", ram_bytes=ram,
                       build_flash_bytes=measured["flash_bytes"], arena_bytes_32bit=measured["arena_used_bytes"])
    compatibility["ok"] = all(rule["ok"] for rule in details["rules"])


def strip_strings(content: bytes) -> bytes:
    """The model without the strings TFLM never reads: tensor and subgraph names, signatures.

    What TensorFlow's ``flatbuffer_utils.strip_strings`` removes (operator custom
    codes and metadata names stay), repacked with TFLM's aligning writer so every
    buffer keeps the 16-byte alignment the schema asks for (Python's flatbuffers
    writer drops it).

    Example:
        >>> stripped = strip_strings(content)   # doctest: +SKIP
        >>> len(stripped) < len(content)        # doctest: +SKIP
        True
    """
    import flatbuffers
    from tflite_micro.python.tflite_micro import runtime as tflm
    from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper

    model = tflm.convert_bytearray_to_object(bytearray(content))
    model.description = None
    model.signatureDefs = None
    for subgraph in model.subgraphs:
        subgraph.name = None
        for tensor in subgraph.tensors:
            tensor.name = None
    builder = flatbuffers.Builder(len(content))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with tempfile.TemporaryDirectory(prefix="edgecomp-strip-") as folder:
        unaligned, aligned = Path(folder) / "in.tflite", Path(folder) / "out.tflite"
        unaligned.write_bytes(bytes(builder.Output()))
        tflite_flatbuffer_align_wrapper.align_tflite_model(str(unaligned), str(aligned))
        return aligned.read_bytes()


def lut_compress(content: bytes, clusters: int) -> tuple[bytes, list[dict]]:
    """TFLM LUT compression of the conv/dense weight tensors where it saves flash.

    Each candidate (int8 weights with at most ``clusters`` + 1 distinct values per
    output channel; the +1 is the zero of pruned weights) is tried alone and kept
    only if the file shrinks: per-channel tables cost bytes, and on small tensors
    they outweigh the packed indices. A tensor with one quantization scale
    (``quantize: {weights: per_tensor}``) gets one table for the whole tensor.

    Returns:
        ``(compressed bytes, [{"tensor", "saved_bytes"}])``; the input when nothing saves.
    """
    from tflite_micro.tensorflow.lite.micro.compression import compress, spec
    from tflite_micro.tensorflow.lite.micro.compression.spec_builder import SpecBuilder

    interpreter = runtime.make_interpreter(content, delegates=False)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    candidates = []
    for op in interpreter._get_ops_details():  # noqa: SLF001
        if op["op_name"] not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(op["inputs"]) < 2:
            continue
        index = int(op["inputs"][1])
        try:
            values = interpreter.get_tensor(index)
        except ValueError:
            continue
        quantization = details[index]["quantization_parameters"]
        if len(quantization["scales"]) <= 1:   # one scale (quantize weights: per_tensor): one table
            mode, distinct = spec.PerTensor(), np.unique(values).size
        else:
            axis = int(quantization["quantized_dimension"])
            rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
            mode, distinct = spec.PerChannel(axis=axis), max(np.unique(row).size for row in rows)
        if values.dtype == np.int8 and distinct <= clusters + 1:
            label = details[index]["name"] or f"weights of op {op['index']} ({op['op_name']})"  # stripped names
            candidates.append((index, mode, max(1, int(np.ceil(np.log2(distinct)))), label))

    def build(chosen):
        builder = SpecBuilder()
        for index, mode, bits, _ in chosen:
            builder.add_tensor(0, index).with_lut(index_bitwidth=bits, mode=mode)
        with warnings.catch_warnings():  # "resulted in expansion": measured below, and such tensors are left out
            warnings.simplefilter("ignore", UserWarning)
            return bytes(compress(content, builder.build()))

    kept, savings = [], []
    for candidate in candidates:
        saved = len(content) - len(build([candidate]))
        if saved > 0:
            kept.append(candidate)
            savings.append({"tensor": candidate[3], "saved_bytes": saved})
    if not kept:
        return content, []
    return build(kept), savings


def lut_variant(content: bytes, clusters: int, x: np.ndarray,
                arena_before: int | None = None) -> tuple[bytes | None, dict]:
    """LUT-compresses a clustered model and proves TFLM gives identical outputs.

    ``arena_before`` is the uncompressed model's arena for ``x[0]`` when the caller
    has it (``verify`` searched it); otherwise it is searched here.

    Returns:
        ``(compressed bytes or None, record)``; None when nothing saved flash or the
        outputs differ (the record says which).
    """
    compressed, savings = lut_compress(content, clusters)
    record = {"tensors": savings, "flash_bytes_before": len(content), "flash_bytes_after": len(compressed)}
    if not savings:
        record["note"] = "no tensor shrank with a lookup table"
        return None, record
    try:
        arena = find_arena(compressed, x[0])
        arena_before = arena_before or find_arena(content, x[0])
        identical = bool(np.array_equal(predict(compressed, x, arena), predict(content, x, arena_before)))
    except ModelError as error:
        record["note"] = f"this TFLM build cannot run the compressed model: {error}"
        return None, record
    record.update(arena_bytes=arena, outputs_identical=identical, ratio=len(compressed) / len(content))
    return (compressed if identical else None), record


def _rule(name: str, ok: bool, detail: str) -> dict:
    return {"rule": name, "ok": bool(ok), "detail": detail}
