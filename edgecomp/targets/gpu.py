"""Verifier of the ``gpu`` target (TFLite / LiteRT GPU delegate on Android and Linux).

Three sources, each reported under its own name in ``compatibility["details"]``:

- ``static`` (``gpu_static.check_static``, with the op rules of ``gpu_ops``): edgecomp's
  port of the GPU delegate's own rules,
  ``tensorflow/lite/tools/versioning/gpu_compatibility.cc`` (``CheckGpuDelegateCompatibility``,
  the checks the delegate runs when it partitions a graph), plus the tensor limits of the
  delegate's model builder. Always run. Rules:

  - ``loads``: the file is a readable TFLite flatbuffer.
  - ``supported_ops``: every op is one the delegate implements, within that op's limits
    (fused activation, runtime/constant input counts, strides and dilation > 0, depthwise
    multiplier, constant int32 axes of MEAN/SUM/REDUCE_*, 3x2 or 4x2 PAD paddings,
    STRIDED_SLICE masks and rank, SOFTMAX ``beta == 1``, CAST type pairs, CUMSUM, ...).
    Weights that a float16 file stores as float16 behind a ``DEQUANTIZE`` count as constants,
    as the delegate folds them.
  - ``tensor_rank``: every tensor computed at run time has at most 4 dimensions (the
    delegate's BHWC layout; 5-D BHWDC exists for a few ops only and is not accepted here).
  - ``static_shapes``: no dimension but the batch is dynamic (``shape_signature`` −1); the
    interpreter fixes a dynamic batch before the delegate is applied.
  - ``data_types``: tensors computed at run time are float32/float16, or int8/uint8 with
    quantization parameters (int8 files: the delegate dequantizes them and computes in float);
    int32 and bool only at ops that take them (CAST, comparisons, SELECT, GATHER/ONE_HOT indices).
  - ``quantization``: the cpu verifier's check that the file is what the mode promised.

- ``analyzer``: what ``tf.lite.experimental.Analyzer.analyze(gpu_compatibility=True)``
  printed, parsed (``parse_analyzer``). In TensorFlow 2.21 its GPU check does nothing: it
  prints "Your model looks compatible with GPU delegate" for any model (seen here for a
  model with ARG_MAX and an INT64 tensor); the checks were removed from the model analyzer
  (tensorflow/tensorflow#77042, after tensorflow/tensorflow#74830). A warning it does print
  fails the ``analyzer`` rule; its "compatible" never overrules the static check.

- ``delegate``: where LiteRT's GPU accelerator loads and finds a GPU, the file is run on it
  (in a child process) and its outputs compared with the CPU interpreter's; otherwise the
  reason is recorded and the result says ``checked statically``.

Example:
    >>> compatibility = verify(content, "float16")  # doctest: +SKIP
    >>> compatibility["details"]["checked"]  # doctest: +SKIP
    'statically'
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import io
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from edgecomp.targets.gpu_ops import (  # noqa: F401 - the rules, importable from here as before
    EIGHT_BIT,
    FLOAT_TYPES,
    MAX_RANK,
    SUPPORTED_ACTIVATIONS,
    SUPPORTED_OPS,
    UNSUPPORTED_HINTS,
    op_issues,
)
from edgecomp.targets.gpu_static import (  # noqa: F401 - the static check, importable from here as before
    MAX_DELEGATED_PARTITIONS,
    check_static,
    constant_tensors,
    delegation,
    node_subsets,
)

GROUND_TRUTH = ("https://github.com/tensorflow/tensorflow/blob/master/"
                "tensorflow/lite/tools/versioning/gpu_compatibility.cc")
ANALYZER_BUG = "https://github.com/tensorflow/tensorflow/issues/77042"
INT8_NOTE = ("int8: the GPU delegate dequantizes the int8 tensors and computes in float (fp16 or fp32); "
             "the file is 4x smaller than float32, not faster. float16 is the GPU's native format")
DELEGATE_TIMEOUT_S = 120.0
# The static rules a partly supported graph turns into warnings (those ops run on the CPU) unless strict.
PER_OP_RULES = ("supported_ops", "tensor_rank", "static_shapes", "data_types")


def _delegation_rule(found: dict, strict: bool) -> dict:
    detail = (f"{found['ops_on_gpu']} of {found['ops_total']} ops, {found['mac_share_on_gpu']:.1%} of "
              f"{found['macs_total']:,} MACs on the GPU")
    if found["ops_on_gpu"] == found["ops_total"]:
        return _rule("delegation", True, detail + " (the whole graph)")
    detail += (f"; {found['ops_supported']} ops supported in {found['partitions']} partition(s), the delegate "
               f"takes the largest {MAX_DELEGATED_PARTITIONS} (its default max_delegated_partitions), the rest "
               f"runs on the CPU ({found['cpu_subsets']} CPU part(s), each a GPU↔CPU copy)")
    if strict or not found["ops_on_gpu"]:
        why = "strict: true asks for the whole graph" if strict else "nothing would run on the GPU"
        return _rule("delegation", False, f"{detail}; {why}")
    return {**_rule("delegation", True, detail + "; set strict: true to fail on this"), "warning": True}


# ---------------------------------------------------------------------------------------------
# TensorFlow's model analyzer: run it, capture what it prints, parse it.
# ---------------------------------------------------------------------------------------------

_OP_LINE = re.compile(r"^\s*Op#(\d+)\s+([A-Za-z0-9_]+)\(")
_WARNING = re.compile(r"GPU COMPATIBILITY (?:WARNING|ERROR):\s*(.*?)\s*$")
_SUMMARY = re.compile(r"Subgraph#(\d+) has GPU delegate compatibility issues at nodes ([\d,\s]+?)"
                      r"(?: with TFLite runtime version (\S+?))?\.?\s*$")
_COMPATIBLE = re.compile(r"Your model looks compatible with GPU delegate(?: (?:on|with) TFLite runtime "
                         r"version (\S+?))?\.?\s*$")


def parse_analyzer(text: str) -> dict:
    """What the model analyzer printed with ``gpu_compatibility=True``.

    Returns:
        ``{"says_compatible": True/False/None (no verdict found), "runtime_version",
        "issues": [{"index", "op", "reason"}], "nodes": [indices it names], "subgraphs": int}``;
        a warning printed before any op line has ``index`` and ``op`` None.
    """
    result = {"says_compatible": None, "runtime_version": None, "issues": [], "nodes": [], "subgraphs": 0}
    index = op = None
    for line in text.splitlines():
        if line.startswith("Subgraph#") and "(" in line and "has GPU" not in line:
            result["subgraphs"] += 1
        match = _OP_LINE.match(line)
        if match:
            index, op = int(match.group(1)), match.group(2)
            continue
        match = _WARNING.search(line)
        if match:
            summary = _SUMMARY.search(match.group(1))
            if summary:
                result["nodes"].extend(int(n) for n in re.findall(r"\d+", summary.group(2)))
                result["runtime_version"] = summary.group(3) or result["runtime_version"]
                result["says_compatible"] = False
            else:
                result["issues"].append({"index": index, "op": op, "reason": match.group(1)})
                result["says_compatible"] = False
            continue
        match = _COMPATIBLE.search(line)
        if match and result["says_compatible"] is None:
            result["says_compatible"] = True
            result["runtime_version"] = match.group(1)
    return result


def analyzer_text(content: bytes) -> str:
    """Runs TensorFlow's model analyzer on ``content`` and returns everything it printed.

    The report is printed, not returned; output is captured both from
    Python's ``sys.stdout`` and at file descriptor 1, where native code writes.
    """
    from edgecomp._keras import tf

    captured = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        saved = os.dup(1)
        try:
            os.dup2(sink.fileno(), 1)
            with contextlib.redirect_stdout(captured):
                tf.lite.experimental.Analyzer.analyze(model_content=content, gpu_compatibility=True)
        finally:
            _flush_native_stdout()
            os.dup2(saved, 1)
            os.close(saved)
        sink.seek(0)
        native = sink.read().decode("utf-8", errors="replace")
    return captured.getvalue() + native


def _flush_native_stdout() -> None:
    with contextlib.suppress(Exception):  # no C library to flush is not an error
        ctypes.CDLL(None).fflush(None)


def run_analyzer(content: bytes) -> dict:
    """``parse_analyzer(analyzer_text(content))`` plus the text; a crash is recorded in ``error``."""
    try:
        text = analyzer_text(content)
    except Exception as error:  # noqa: BLE001 - a broken analyzer must not stop the target
        return {"says_compatible": None, "issues": [], "nodes": [], "error": f"{type(error).__name__}: {error}"}
    return {**parse_analyzer(text), "text": text}


# ---------------------------------------------------------------------------------------------
# The delegate itself: LiteRT's GPU accelerator, tried in a child process.
# ---------------------------------------------------------------------------------------------

def run_on_gpu(content: bytes, sample: np.ndarray, timeout_s: float = DELEGATE_TIMEOUT_S) -> dict:
    """Runs ``content`` on LiteRT's GPU accelerator where one loads and finds a GPU.

    A child process keeps the accelerator's native logs and any crash out of this one.

    Returns:
        ``{"ran": True, "fully_accelerated", "max_abs_diff" (vs the CPU interpreter)}``, or
        ``{"ran": False, "reason"}`` when there is no GPU accelerator or no GPU.
    """
    from edgecomp import runtime

    with tempfile.TemporaryDirectory(prefix="edgecomp-gpu-") as folder:
        model, inputs, outputs = (Path(folder) / name for name in ("model.tflite", "x.npy", "y.npy"))
        model.write_bytes(content)
        np.save(inputs, sample.astype(np.float32))
        expected = runtime.predict(content, sample, delegates=False).reshape(len(sample), -1)
        command = [sys.executable, "-m", "edgecomp.targets.gpu_worker", str(model), str(inputs), str(outputs),
                   str(expected.shape[1])]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"ran": False, "reason": f"the GPU accelerator did not finish in {timeout_s:.0f} s"}
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        result = json.loads(lines[-1]) if lines else {"ran": False}
        if not result.get("ran"):
            reasons = [result.get("reason"), _why(done.stderr)]
            result["reason"] = "; ".join(r for r in reasons if r) or f"exit status {done.returncode}"
            return result
        result["max_abs_diff"] = float(np.max(np.abs(np.load(outputs) - expected)))
        return result


def _why(stderr: str) -> str:
    """The most telling lines of the accelerator's log (no GPU, no Vulkan, ...)."""
    keys = ("No adapters found", "Couldn't load Vulkan", "Failed to initialize", "not found", "Error", "ERROR")
    lines = [line.strip() for line in stderr.splitlines() if any(key in line for key in keys)]
    picked = [line for line in lines if "No adapters" in line or "Vulkan" in line] or lines[-2:]
    return "; ".join(dict.fromkeys(picked))[:400]


# ---------------------------------------------------------------------------------------------
# The whole verdict.
# ---------------------------------------------------------------------------------------------

def verify(content: bytes, quantization: str = "float16", io: str = "float32", analyzer: bool = True,
           sample: Optional[np.ndarray] = None, strict: bool = False) -> dict:
    """Checks ``content`` against the GPU delegate's rules; runs it on the GPU where one is present.

    Args:
        content: the ``.tflite`` bytes.
        quantization: float16 | float32 | int8, the mode it was converted with.
        io: the input/output type asked for.
        analyzer: also run TensorFlow's model analyzer and report what it said.
        sample: inputs to run on the GPU accelerator; None skips the attempt.
        strict: fail unless the delegate would take the whole graph. Otherwise ops the
            delegate refuses are warnings (``"warning": True`` on their rules) as long as
            some of the graph runs on the GPU: the delegate partitions the graph and the
            CPU runs the rest. The ``delegation`` rule gives the figures.

    Returns:
        ``{"ok": bool, "details": {"rules", "checked", "ops", "unsupported", "analyzer", "delegate",
        "notes", "ground_truth"}}``; ``unsupported`` lists ``{"index", "op", "rule", "reason",
        "source": "static" | "analyzer"}``.
    """
    from edgecomp.targets import cpu

    static = check_static(content)
    rules = static["rules"]
    details = {"rules": rules, "checked": "statically", "ops": static["ops"],
               "unsupported": static["unsupported"], "notes": [], "ground_truth": GROUND_TRUTH}
    if not rules[0]["ok"]:
        return {"ok": False, "details": details}
    details["delegation"] = found = static["delegation"]
    rules.append(_delegation_rule(found, strict))
    if not strict and found["ops_on_gpu"]:
        for rule in rules:
            if rule["rule"] in PER_OP_RULES and not rule["ok"]:
                rule.update(ok=True, warning=True, detail=f"{rule['detail']} (these ops run on the CPU)")
    verified = cpu.verify(content, quantization, io)["details"]["rules"]
    rules.extend(rule for rule in verified if rule["rule"] in ("io_type", "quantization"))
    if quantization == "int8":
        details["notes"].append(INT8_NOTE)
    details["op_counts"] = dict(sorted(collections.Counter(op["op"] for op in static["ops"]).items()))
    if analyzer:
        details["analyzer"] = found = run_analyzer(content)
        rules.append(_analyzer_rule(found, static))
        details["unsupported"] += [{**issue, "rule": "analyzer", "source": "analyzer"} for issue in found["issues"]]
    if sample is not None and all(rule["ok"] for rule in rules):
        details["delegate"] = ran = run_on_gpu(content, sample)
        if ran.get("ran"):
            details["checked"] = "on the GPU"
            rules.append(_gpu_run_rule(ran, strict))
        else:
            details["notes"].append(f"checked statically: the GPU delegate was not run ({ran['reason']})")
    elif sample is not None:
        details["delegate"] = {"ran": False, "reason": "not run: the file fails the GPU rules above"}
    return {"ok": all(rule["ok"] for rule in rules), "details": details}


def _gpu_run_rule(ran: dict, strict: bool) -> dict:
    """The delegate's own verdict: outputs close to the CPU's; the whole graph delegated (else a warning)."""
    close = ran.get("max_abs_diff", 0.0) < 1e-2
    whole = ran.get("fully_accelerated") is not False
    rule = _rule("runs_on_gpu", close and (whole or not strict),
                 f"ran on LiteRT's GPU accelerator (fully accelerated: {ran.get('fully_accelerated')}); "
                 f"max |GPU − CPU| {ran.get('max_abs_diff', float('nan')):.3g}")
    return {**rule, "warning": True} if rule["ok"] and not whole else rule


def _analyzer_rule(found: dict, static: dict) -> dict:
    if found.get("error"):
        return _rule("analyzer", True, f"the model analyzer failed ({found['error']}); the static check decides")
    if found["says_compatible"] is False:
        named = sorted({issue["op"] or "?" for issue in found["issues"]}) or found["nodes"]
        return _rule("analyzer", False, f"the model analyzer reports {len(found['issues']) or len(found['nodes'])} "
                                        f"GPU incompatibilit(y/ies) at {named}")
    disagree = [u for u in static["unsupported"] if u["rule"] == "supported_ops"]
    said = "says 'looks compatible'" if found["says_compatible"] else "gave no GPU verdict"
    detail = (f"the model analyzer (TFLite {found.get('runtime_version') or '?'}) {said}; it runs no GPU checks in "
              f"this TensorFlow ({ANALYZER_BUG}), so the static check decides")
    if disagree:
        detail += f"; the static check found {len(disagree)} unsupported op(s) it missed"
    return _rule("analyzer", True, detail)


def judge(content: bytes, params, path: Path, x_test: np.ndarray, y_test: np.ndarray,
          expect: dict | None = None) -> tuple[dict, dict, list]:
    """The whole target: verify, try the GPU, measure accuracy with the CPU interpreter (``expect`` unused).

    Returns:
        ``(compatibility, metrics, skipped)``; ``metrics["runtime"]`` says where accuracy was measured.
    """
    from edgecomp import runtime

    compatibility = verify(content, params.quantization, params.io, sample=x_test[:8], strict=params.strict)
    metrics = runtime.evaluate(content, x_test, y_test, where=str(path))
    metrics["runtime"] = f"{runtime.runtime_name()} on the CPU, not the GPU delegate"
    skipped = [{"layer": "benchmark", "reason": "gpu: timings need a device with the GPU delegate; host CPU "
                                                "timings of this file would not predict them"}]
    return compatibility, metrics, skipped


BENCHMARKED = False   # host CPU timings of a GPU file would not predict the GPU



def _rule(name: str, ok: bool, detail: str) -> dict:
    return {"rule": name, "ok": bool(ok), "detail": detail}
