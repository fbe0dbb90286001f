"""The run's plots: accuracy against size, each guarded file's int8 error per layer, latency.

``plot`` writes them as PNG files beside ``report.md`` (``plots/``); every figure is
drawn from a ``report.Report``, so a ``report.json`` can be plotted again.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from edgecomp import files
from edgecomp.report import Report, first_p50, typical_latency


def plot(report: Report, folder: Path) -> list[Path]:
    """Writes ``accuracy_vs_size.png`` and ``latency.png`` to ``folder``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = ([report.reference] if report.reference else []) + report.targets
    labels = ["reference float32" if r is report.reference else f"{r.target} {r.quantization}" for r in records]
    paths = [_accuracy_vs_size(plt, report, records, labels, folder)]
    paths += _quantization_errors(plt, report, folder)
    benchmarked = [(r, label) for r, label in zip(records, labels) if r.benchmarks]
    if benchmarked:
        paths.append(_latency(plt, report, benchmarked, folder))
    return paths


def _accuracy_vs_size(plt, report: Report, records: list, labels: list[str], folder: Path) -> Path:
    """``accuracy_vs_size.png``: each file's accuracy against its size (log scale), labelled with its p50."""
    from matplotlib import ticker

    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for record, label in zip(records, labels):
        size_kb = record.size_bytes / 1024
        accuracy = record.metrics.get("accuracy", math.nan)
        axes.scatter(size_kb, accuracy, s=60)
        p50 = first_p50(record)
        text = label + (f"\np50 {p50:.3f} ms" if p50 is not None else "")
        axes.annotate(text, (size_kb, accuracy), textcoords="offset points", xytext=(6, 6), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("file size (KB, log scale)")
    axes.set_ylabel("accuracy (test split, measured from the .tflite)")
    axes.set_title(f"{report.name}: accuracy vs size")
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.3, y=0.15)
    bottom, top = axes.get_ylim()
    axes.set_ylim(bottom, min(top, 1.01))
    axes.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    axes.xaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    figure.tight_layout()
    path = folder / "accuracy_vs_size.png"
    _save(figure, path)
    plt.close(figure)
    return path


def _quantization_errors(plt, report: Report, folder: Path) -> list[Path]:
    """``quantization_error_<target>.png`` per file the accuracy guard ranked layers of: RMSE / scale per layer."""
    paths = []
    for record in report.targets:
        if record.accuracy_guard.get("layers"):
            rows = record.accuracy_guard["layers"]
            figure, axes = plt.subplots(figsize=(6.4, 0.8 + 0.35 * len(rows)))
            axes.barh([row["tensor"][-40:] for row in rows][::-1], [row["rmse_per_scale"] for row in rows][::-1])
            axes.set_xlabel("RMSE / scale of the layer output (quantization steps)")
            axes.set_title(f"{report.name}: {record.target} int8 error per layer")
            axes.tick_params(axis="y", labelsize=7)
            figure.tight_layout()
            path = folder / f"quantization_error_{record.target}.png"
            _save(figure, path)
            plt.close(figure)
            paths.append(path)
    return paths


def _latency(plt, report: Report, benchmarked: list, folder: Path) -> Path:
    """``latency.png``: the latency distribution of each benchmarked file per device and thread count."""
    figure, axes = plt.subplots(figsize=(6.4, 0.6 + 0.7 * len(benchmarked) * max(len(r.benchmarks) for r, _ in benchmarked)))
    names, samples = [], []
    for record, label in benchmarked:
        for bench in record.benchmarks:
            names.append(f"{label}\n{bench['device']}, {bench['threads']} thr")
            samples.append(bench.get("latency_samples_ms") or [typical_latency(bench["latency_ms"])])
    axes.boxplot(samples, vert=False, showfliers=False)
    axes.set_yticks(range(1, len(names) + 1), names, fontsize=8)
    axes.set_xlabel("latency per inference (ms)")
    axes.set_title(f"{report.name}: latency distribution")
    axes.grid(True, axis="x", alpha=0.3)
    figure.tight_layout()
    path = folder / "latency.png"
    _save(figure, path)
    plt.close(figure)
    return path


def _save(figure, path: Path) -> None:
    """Renders a PNG in memory and writes it atomically (no half-written picture on a full disk)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=120, format="png")
    files.write_bytes(path, buffer.getvalue())
