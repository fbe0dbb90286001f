"""Reads the text TFLite's ``benchmark_model`` prints; no device, no subprocess.

Two generations of output are understood (both tested on recorded outputs in
``tests/data/benchmark_model/``):

* older: ``Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9``
* newer: ``Inference timings in us: Init: 17187, First inference: 3512391, Warmup (avg): ..., Inference (avg): ...``

plus the statistics lines ``count=50 first= curr= min= max= avg= std=`` (newest
builds add ``p5= median= p95=``), the memory lines (``Memory footprint delta from
the start of the tool (MB): init= overall=``, called ``Peak memory footprint (MB)``
in TF 2.4, and ``Overall peak memory footprint (MB) via periodic monitoring:``),
and the delegate lines ``benchmark_tflite_model.cc`` prints after applying each
delegate. Lines may carry an ``INFO:`` or a logcat prefix.

Nothing is invented: a figure the output does not contain is ``None`` in the
result and named, with the reason, in ``not_available``.

Example:
    >>> parsed = parse(open("out.txt").read())                 # doctest: +SKIP
    >>> parsed["latency_ms"]["mean"], parsed["delegate"]       # doctest: +SKIP
    (899.641, 'XNNPACK')
"""

from __future__ import annotations

import re
from typing import Optional

NEWER_SUMMARY = re.compile(
    r"Inference timings in us: Init: (?P<init>[-+.\deE]+), First inference: (?P<first>[-+.\deE]+), "
    r"Warmup \(avg\): (?P<warmup>[-+.\deE]+), Inference \(avg\): (?P<inference>[-+.\deE]+)"
)
OLDER_SUMMARY = re.compile(
    r"Average inference timings in us: Warmup: (?P<warmup>[-+.\deE]+), Init: (?P<init>[-+.\deE]+),"
    r".*?Inference: (?P<inference>[-+.\deE]+)"
)
MEMORY_DELTA = re.compile(
    r"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    r"init=(?P<init>[-+.\deE]+) overall=(?P<overall>[-+.\deE]+)"
)
PEAK_MONITORED = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: (?P<peak>[-+.\deE]+)")
STATISTIC = re.compile(r"\b(count|first|curr|min|max|avg|std|p5|median|p95)=([-+.\deE]+)")
APPLIED = re.compile(
    r"Explicitly applied (?P<name>\S+) delegate, and the model graph will be (?P<extent>completely|partially) "
    r"executed by the delegate(?: w/ (?P<kernels>\d+) delegate kernels)?"
)
NOT_EXECUTED = re.compile(r"Though (?P<name>\S+) delegate is explicitly applied, the model graph will not be executed")
FAILED_DELEGATE = re.compile(r"Failed to apply (?P<name>\S+) delegate")
DEFAULT_XNNPACK = re.compile(
    r"Created TensorFlow Lite XNNPACK delegate for CPU|with delegate \(TfLiteXNNPackDelegate\)"
)

LATENCY_KEYS = ("mean", "std", "min", "p50", "p90", "p99", "max")
NOT_PRINTED = "benchmark_model does not print it"


class OutputError(ValueError):
    """The text holds no timing summary; the message is the tool's own error, if any."""


def parse(text: str) -> dict:
    """Turns ``benchmark_model`` output into edgecomp's benchmark fields (times in ms).

    Returns:
        ``format`` (``newer``/``older``), ``count`` (timed runs), ``latency_ms`` (mean,
        std, min, p50, p90, p99, max, and p5/p95 when printed; missing ones ``None``),
        ``latency_source``, ``init_ms``, ``first_ms``, ``warmup_mean_ms``,
        ``memory_delta_mb`` (``{"init", "overall"}`` or ``None``), ``peak_memory_mb``,
        ``delegate`` (as reported: ``XNNPACK``, ``GPU``, ``NNAPI``, ... or ``none``),
        ``delegate_detail`` and ``not_available`` (field → why it is missing).

    Raises:
        OutputError: no timing summary line; the message quotes the tool's error line.
    """
    lines = [line.rstrip("\r") for line in text.splitlines()]
    summary, output_format = _summary(text)
    if summary is None:
        raise OutputError(_failure(lines))
    plain, profiler = _statistics(lines)
    run = _run_line(plain, summary["inference"])
    not_available: dict[str, str] = {}
    latency, source, stats = _latency(summary["inference"], run, profiler, not_available)
    first_ms = _first_ms(summary, plain, run, not_available)
    memory, peak = _memory(text)
    if memory is None:
        not_available["memory_delta_mb"] = "no memory footprint line in the output"
    if peak is None:
        not_available["peak_rss_mb"] = ("benchmark_model reports how much the peak RSS grew since the tool "
                                        "started (memory_delta_mb), not the peak itself")
    delegate, detail = _delegate(text)
    return {
        "format": output_format,
        "count": int(stats["count"]) if stats is not None and "count" in stats else None,
        "latency_ms": latency,
        "latency_source": source,
        "init_ms": summary["init"] / 1e3,
        "first_ms": None if first_ms is None else first_ms / 1e3,
        "warmup_mean_ms": summary["warmup"] / 1e3,
        "memory_delta_mb": memory,
        "peak_memory_mb": peak,
        "delegate": delegate,
        "delegate_detail": detail,
        "not_available": not_available,
    }


def _latency(inference_avg: float, run: Optional[dict], profiler: list[dict],
             not_available: dict[str, str]) -> tuple[dict, str, Optional[dict]]:
    """``(latency_ms, latency_source, statistics used)``: the mean from the summary, the rest from statistics.

    The statistics are the run line's, else the op profiler's per-run totals, else
    none; each figure missing is named in ``not_available``.
    """
    latency = dict.fromkeys(LATENCY_KEYS)
    latency["mean"] = inference_avg / 1e3
    source = "run statistics line"
    stats = run
    if stats is None and profiler:
        stats = profiler[-1]
        source = "op profiler's per-run totals (the output has no plain run statistics line)"
    if stats is None:
        source = "timing summary only"
    else:
        for ours, theirs in (("std", "std"), ("min", "min"), ("max", "max"), ("p50", "median"),
                             ("p5", "p5"), ("p95", "p95")):
            if theirs in stats:
                latency[ours] = stats[theirs] / 1e3
    for key in ("std", "min", "max"):
        if latency[key] is None:
            not_available[f"latency_ms.{key}"] = "no statistics line in the output"
    if latency["p50"] is None:
        not_available["latency_ms.p50"] = "only newer benchmark_model builds print median="
    not_available["latency_ms.p90"] = NOT_PRINTED
    not_available["latency_ms.p99"] = NOT_PRINTED
    not_available["latency_samples_ms"] = "benchmark_model prints statistics, not each run"
    return latency, source, stats


def _first_ms(summary: dict, plain: list[dict], run: Optional[dict],
              not_available: dict[str, str]) -> Optional[float]:
    """The first inference in us: the newer summary's, else the warmup statistics line's (before the run line)."""
    warmup = None
    if run is not None and plain.index(run) > 0:
        warmup = plain[plain.index(run) - 1]
    first_ms = summary.get("first")
    if first_ms is None and warmup is not None:
        first_ms = warmup.get("first", warmup.get("curr") if warmup.get("count") == 1 else None)
    if first_ms is None:
        not_available["first_ms"] = "the older output format has no first-inference figure"
    return first_ms


def _summary(text: str) -> tuple[Optional[dict], str]:
    match = NEWER_SUMMARY.search(text)
    if match:
        return {key: float(value) for key, value in match.groupdict().items()}, "newer"
    match = OLDER_SUMMARY.search(text)
    if match:
        return {key: float(value) for key, value in match.groupdict().items()}, "older"
    return None, ""


def _statistics(lines: list[str]) -> tuple[list[dict], list[dict]]:
    """Plain ``count=`` lines (warm-up, then timed runs) and the op profiler's ``Timings`` lines."""
    plain, profiler = [], []
    for line in lines:
        start = line.find("count=")
        if start < 0 or "Memory (bytes)" in line:
            continue
        values = {key: float(value) for key, value in STATISTIC.findall(line[start:])}
        (profiler if "Timings (microseconds)" in line else plain).append(values)
    return plain, profiler


def _run_line(plain: list[dict], inference_avg: float) -> Optional[dict]:
    """The timed runs' statistics: the last plain line whose average is the summary's."""
    for stats in reversed(plain):
        if "avg" not in stats or abs(stats["avg"] - inference_avg) <= 1e-3 * max(abs(inference_avg), 1.0):
            return stats
    return None


def _memory(text: str) -> tuple[Optional[dict], Optional[float]]:
    match = MEMORY_DELTA.search(text)
    memory = {"init": float(match["init"]), "overall": float(match["overall"])} if match else None
    peak = PEAK_MONITORED.search(text)
    return memory, float(peak["peak"]) if peak else None


def _delegate(text: str) -> tuple[str, str]:
    """The delegate(s) the tool says it applied, never the one that was asked for."""
    applied, notes = [], []
    for match in APPLIED.finditer(text):
        applied.append(match["name"])
        extent = f"{match['extent']} executed by it"
        if match["kernels"]:
            extent += f" ({match['kernels']} delegate kernels)"
        notes.append(f"{match['name']}: {extent}")
    for match in NOT_EXECUTED.finditer(text):
        notes.append(f"{match['name']}: applied but executes none of the graph")
    if applied:
        return "+".join(applied), "; ".join(notes)
    if DEFAULT_XNNPACK.search(text):
        return "XNNPACK", "; ".join(notes + ["the runtime's default XNNPACK delegate (\"Created TensorFlow Lite "
                                             "XNNPACK delegate for CPU\")"])
    return "none", "; ".join(notes + ["the output names no applied delegate"])


def _failure(lines: list[str]) -> str:
    """One line: the delegate failure (with the first error that explains it) or the last error."""
    errors = [line.strip() for line in lines if "ERROR" in line]
    failed = [line.strip() for line in lines if FAILED_DELEGATE.search(line)]
    if failed:
        return failed[-1] + (f" ({errors[0]})" if errors else "")
    errors += [line.strip() for line in lines if "failed" in line.lower() and "ERROR" not in line]
    if errors:
        return errors[-1]
    meaningful = [line.strip() for line in lines if line.strip()]
    return meaningful[-1] if meaningful else "benchmark_model printed nothing"


__all__ = ["OutputError", "parse"]
