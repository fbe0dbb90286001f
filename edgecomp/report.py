"""The run's report: what each stage did, what each target file measured.

``Report.to_json()`` writes report.json (the keys other tools read); ``render()`` turns it into
Markdown with one table (variant, size, gzip size, accuracy, latency p50 and ratios
to the float32 reference), then stages, checks, benchmarks and each target's own
section (the target hooks ``report_check_lines`` and ``report_section`` of
``edgecomp.targets``); ``report_plots.plot()`` draws accuracy against size, labelled
with latency, and the latency of every variant. Everything a report says about a
``.tflite`` was measured by running that file.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional

from edgecomp import targets


@dataclasses.dataclass
class StageRecord:
    """What one stage did (``baseline`` is the first)."""

    stage: str
    params: int
    nonzero_params: int
    metrics: dict[str, float]
    seconds: float
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class TargetRecord:
    """One converted file and what was measured by running it."""

    target: str
    quantization: str
    path: str
    size_bytes: int
    gzip_bytes: int
    metrics: dict[str, float]
    compatibility: dict[str, Any]
    benchmarks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    io: dict[str, Any] = dataclasses.field(default_factory=dict)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    accuracy_guard: dict[str, Any] = dataclasses.field(default_factory=dict)
    accuracy_steps: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Report:
    """The whole run (``report.json``)."""

    name: str
    edgecomp_version: str
    seconds: float = 0.0
    stages: list[StageRecord] = dataclasses.field(default_factory=list)
    reference: Optional[TargetRecord] = None
    targets: list[TargetRecord] = dataclasses.field(default_factory=list)
    dataset: dict[str, Any] = dataclasses.field(default_factory=dict)
    runtime: str = ""

    def to_dict(self) -> dict:
        """Plain data: the report.json keys other tools read (plus ``dataset`` and ``runtime``)."""
        data = dataclasses.asdict(self)
        if data["reference"] is not None:
            reference = data["reference"]
            data["reference"] = {
                key: reference[key]
                for key in ("path", "size_bytes", "gzip_bytes", "metrics", "compatibility", "benchmarks", "io")
            }
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Report":
        """The report of ``to_dict`` (or of a ``report.json``) as objects again."""
        reference = data.get("reference")
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{
            **{key: value for key, value in data.items() if key in known},
            "stages": [StageRecord(**item) for item in data.get("stages", [])],
            "reference": None if reference is None else TargetRecord(target="reference", quantization="float32",
                                                                     **reference),
            "targets": [TargetRecord(**item) for item in data.get("targets", [])],
        })

    def to_json(self) -> str:
        """``report.json`` text."""
        return json.dumps(self.to_dict(), indent=2, default=_json_default) + "\n"


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def first_p50(record: TargetRecord) -> Optional[float]:
    """The p50 latency of the file's first benchmark (ms), or None when it has none or the device gives no p50."""
    if not record.benchmarks:
        return None
    return record.benchmarks[0]["latency_ms"].get("p50")


def typical_latency(latency: dict) -> Optional[float]:
    """The p50 of a benchmark's ``latency_ms``, or its mean where the device gives no p50 (adb)."""
    return latency.get("p50") if latency.get("p50") is not None else latency.get("mean")


def _ratio(value, reference) -> str:
    if value is None or reference in (None, 0):
        return "–"
    return f"{value / reference:.3f}×"


def _figure(value, spec: str, unit: str = "") -> str:
    """``value`` formatted, or ``n/a`` when the device did not report it (adb: p90, p99, peak RSS)."""
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _kb(size: int) -> str:
    return f"{size / 1024:.1f} KB"


def _input_output_lines(dataset: dict) -> list[str]:
    """What a device must feed the files and what it gets back (empty for reports without these keys)."""
    inputs, outputs = dataset.get("input"), dataset.get("output")
    if not inputs or not outputs:
        return []
    low, high = inputs["range"]
    kind = ("probabilities (the model ends in a softmax)" if outputs["kind"] == "probabilities" else
            "logits (no softmax in the model: argmax gives the class; apply a softmax for probabilities)")
    return [f"Input: float32 {tuple(inputs['shape'])}, {inputs['preprocessing']}; training values in "
            f"[{low:g}, {high:g}] (a file with int8/uint8 input takes them quantized by its input scale and zero "
            "point)  ",
            f"Output: {outputs['classes']} class {kind}; class names, one per line in class order, in "
            f"{outputs['labels']} beside each file  "]


def render(report: Report) -> str:
    """The Markdown report: run summary, variants table, stages table, checks."""
    lines = [f"# edgecomp report: {report.name}", ""]
    if report.dataset:
        lines.append(f"Data: {report.dataset.get('summary', '')}  ")
        lines.extend(_input_output_lines(report.dataset))
    lines.append(f"edgecomp {report.edgecomp_version}, {report.runtime}, run time {report.seconds:.0f} s.")
    lines.append("")
    lines.append("Accuracy of every file was measured by running that `.tflite` on the test split; "
                 "ratios are to the float32 reference measured in the same run.")
    lines.append("")
    lines += _variants_lines(report)
    lines += _stages_lines(report.stages)
    lines += _checks_lines(report)
    lines += _benchmarks_lines(report)
    lines += _accuracy_steps_lines(report)
    lines += _guard_lines(report)
    lines += _target_sections(report)
    lines += _quantized_io_lines(report)
    return "\n".join(lines) + "\n"


def _labelled(report: Report) -> list[tuple[str, TargetRecord]]:
    """``(label, record)`` of every file: the reference first (when there is one), then the targets'."""
    reference = report.reference
    return [("reference" if record is reference else record.target, record)
            for record in ([reference] if reference else []) + report.targets]


def _variants_lines(report: Report) -> list[str]:
    """The variants table: size, gzip size, accuracy, latency p50 and ratios to the float32 reference."""
    lines = []
    reference = report.reference
    ref_acc = reference.metrics.get("accuracy") if reference else None
    ref_p50 = first_p50(reference) if reference else None
    lines.append("| variant | quantization | size | gzip | accuracy | Δ accuracy | p50 latency | size × | gzip × | latency × |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for label, record in _labelled(report):
        accuracy = record.metrics.get("accuracy")
        delta = "–" if record is reference or accuracy is None or ref_acc is None else f"{(accuracy - ref_acc) * 100:+.2f} pt"
        p50 = first_p50(record)
        lines.append(
            f"| {label} | {record.quantization} | {_kb(record.size_bytes)} | {_kb(record.gzip_bytes)} | "
            f"{_figure(accuracy, '.4f')} | {delta} | {'–' if p50 is None else f'{p50:.4f} ms'} | "
            f"{_ratio(record.size_bytes, reference.size_bytes if reference else None)} | "
            f"{_ratio(record.gzip_bytes, reference.gzip_bytes if reference else None)} | "
            f"{_ratio(p50, ref_p50)} |"
        )
    return lines


def _stages_lines(stages: list[StageRecord]) -> list[str]:
    """The stages table, then distillation, QAT coverage and the layers stages skipped."""
    lines = ["", "## Stages", "", "| stage | params | non-zero | accuracy (Keras) | seconds | skipped |", "|---|---|---|---|---|---|"]
    for stage in stages:
        accuracy = stage.metrics.get("accuracy", float("nan"))
        lines.append(
            f"| {stage.stage} | {stage.params:,} | {stage.nonzero_params:,} | {accuracy:.4f} | "
            f"{stage.seconds:.1f} | {len(stage.skipped)} |"
        )
    lines += _distillation_lines(stages)
    lines += _coverage_lines(stages)
    skipped = [(stage.stage, item) for stage in stages for item in stage.skipped]
    if skipped:
        lines += ["", "Skipped layers:", ""]
        lines += [f"- {stage}: `{item['layer']}`: {item['reason']}" for stage, item in skipped]
    return lines


def _checks_lines(report: Report) -> list[str]:
    """Every file's verdict and rules, its target's own lines (``report_check_lines`` hook) and what was skipped."""
    lines = ["", "## Checks", ""]
    for label, record in _labelled(report):
        status = "pass" if record.compatibility.get("ok") else "FAIL"
        checked = record.compatibility.get("details", {}).get("checked")
        lines.append(f"- **{label}** ({record.quantization}): {status}" + (f", checked {checked}" if checked else ""))
        for rule in record.compatibility.get("details", {}).get("rules", []):
            verdict = "FAILED" if not rule["ok"] else "WARNING" if rule.get("warning") else "ok"
            lines.append(f"  - {verdict} `{rule['rule']}`: {rule['detail']}")
        target_lines = targets.hook(record.target, "report_check_lines")
        if target_lines is not None:
            lines += target_lines(record)
        for item in record.skipped:
            lines.append(f"  - skipped {item['layer']}: {item['reason']}")
    return lines


def _benchmarks_lines(report: Report) -> list[str]:
    """The benchmarks table: one row per file, device and thread count."""
    lines = ["", "## Benchmarks", "", "Latencies in ms per invoke; init is loading the model and allocating tensors, "
                                      "first the first invoke. *outputs*: the device's outputs on test samples "
                                      "against this machine's run of the same file.", "",
             "| variant | device | threads | runs | delegate | mean | p50 | p90 | p99 | init | first | peak RSS "
             "| outputs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, record in _labelled(report):
        for bench in record.benchmarks:
            latency = bench["latency_ms"]
            lines.append(
                f"| {label} | {bench['device']} | {bench['threads']} | {bench['runs']} | {bench['delegate']} | "
                f"{_figure(latency['mean'], '.4f')} | {_figure(latency.get('p50'), '.4f')} | "
                f"{_figure(latency.get('p90'), '.4f')} | {_figure(latency.get('p99'), '.4f')} | "
                f"{_figure(bench.get('init_ms'), '.2f')} | {_figure(bench.get('first_ms'), '.3f')} | "
                f"{_figure(bench.get('peak_rss_mb'), '.0f', ' MB')} | {_outputs_cell(bench.get('output_check'))} |"
            )
    return lines


def _target_sections(report: Report) -> list[str]:
    """Each target's own section (``report_section`` hook), given its records, in the order targets first appear."""
    lines = []
    for name in dict.fromkeys(record.target for record in report.targets):
        section = targets.hook(name, "report_section")
        if section is not None:
            lines += section([record for record in report.targets if record.target == name])
    return lines


def _quantized_io_lines(report: Report) -> list[str]:
    """How to feed and read the files whose inputs are quantized: each tensor's scale and zero point."""
    lines = []
    io_notes = [(r.target, r.io) for r in report.targets if any(d["dtype"] != "float32" for d in r.io.get("inputs", []))]
    if io_notes:
        lines += ["", "## Quantized inputs and outputs", "",
                  "Feed `q = round(x / scale + zero_point)`; read `x = (q - zero_point) * scale`.", ""]
        for target, io in io_notes:
            for kind in ("inputs", "outputs"):
                for position, d in enumerate(io[kind]):
                    name = f"`{d['name']}`" if d["name"] else f"{position} (names stripped)"
                    lines.append(f"- {target} {kind[:-1]} {name} {d['dtype']} {d['shape']}: "
                                 f"scale {d['scale']:.8g}, zero_point {d['zero_point']}")
    return lines


def _outputs_cell(check: dict | None) -> str:
    if not check:
        return "–"
    if check["verdict"] in ("not checked", "identical"):
        return check["verdict"] + (f" ({check['samples']} samples)" if "samples" in check else "")
    if "max_steps" in check:
        return f"{check['verdict']} ({check['samples']} samples, max {check['max_steps']} step(s))"
    if "max_relative_difference" in check:
        return f"{check['verdict']} ({check['samples']} samples, max {check['max_relative_difference']:.1g} rel.)"
    return check["verdict"]


def _accuracy_steps_lines(report: Report) -> list[str]:
    """Where accuracy went, per file: each stage against its input, conversion, total against the reference."""
    rows = [record for record in report.targets if record.accuracy_steps]
    if not rows:
        return []
    lines = ["", "## Where accuracy went", "",
             "Each step against the model it was given (stages: Keras accuracy on the test split; conversion: the "
             "file's measured accuracy against the last stage's model); total: the file against the float32 "
             "reference.", "", "| variant | " + " | ".join(
                 item["stage"] for item in rows[0].accuracy_steps.get("stages", [])) + (
                 " | " if rows[0].accuracy_steps.get("stages") else "") + "conversion | total |",
             "|---|" + "---|" * (len(rows[0].accuracy_steps.get("stages", [])) + 2)]
    for record in rows:
        steps = record.accuracy_steps
        cells = [f"{item['delta_points']:+.2f} pt" for item in steps.get("stages", [])]
        cells += [f"{steps[key]:+.2f} pt" if key in steps else "–" for key in ("conversion_points", "total_points")]
        lines.append(f"| {record.target} {record.quantization} | " + " | ".join(cells) + " |")
    return lines


def _coverage_lines(stages) -> list[str]:
    """What QAT covered: per layer kind, layers fake-quantized while training, range only, not wrapped;
    and the layers the preparer rewrote so that tfmot could wrap them."""
    lines = []
    for stage in stages:
        coverage, prepared = stage.details.get("coverage"), stage.details.get("prepared", {})
        if stage.stage != "quantize" or not (coverage or prepared):
            continue
        if coverage:
            lines += ["", "QAT coverage (layers inside the quantize wrappers; *range only*: the output range is "
                          "learned, the weights are quantized at conversion; reasons under Skipped layers):", "",
                      "| layer kind | QAT | range only | not wrapped |", "|---|---|---|---|"]
            lines += [f"| {kind} | {row['qat']} | {row['output_only']} | {row['not_wrapped']} |"
                      for kind, row in coverage.items()]
        if prepared.get("rewritten"):
            lines += ["", f"Rewritten before QAT (outputs identical within "
                          f"{prepared.get('max_difference', 0.0):.1g}):", ""]
            lines += [f"- `{item['layer']}`: {item['from']} → {item['to']}" for item in prepared["rewritten"]]
    return lines


def _guard_lines(report: Report) -> list[str]:
    """The accuracy guard's verdict and the repair rungs it measured."""
    guarded = [r for r in report.targets if r.accuracy_guard]
    if not guarded:
        return []
    lines = ["", "## Accuracy guard (int8 against the float model it came from)", ""]
    for record in guarded:
        guard = record.accuracy_guard
        verdict = "within budget" if guard.get("within_budget") else "OVER BUDGET"
        how = {None: "no repair needed" if guard.get("within_budget") else "no rung met the budget",
               "plain": "no repair needed", "qat": "no repair needed",
               "calibration": "repaired by calibrating on more data",
               "float_fallback": "repaired by keeping layers float"}.get(guard.get("rung"), guard.get("rung"))
        against = guard.get("against", "the float model it was converted from")
        if guard.get("rung") in ("calibration", "float_fallback") and against == "the model before QAT":
            how = "QAT's file replaced by post-training int8 of the model before QAT, " + how
        lines.append(f"- **{record.target}**: {guard['drop_points']:.2f} points lost against {against} "
                     f"(test split; budget {guard['budget_points']:.2f}): {verdict}; {how}"
                     + (f" (the file is {-guard['total_drop_points']:+.2f} points against the float32 reference)"
                        if guard["drop_points"] > guard["budget_points"] and guard.get("within_budget") else "")
                     + (f"; {len(guard['float_layers'])} layer(s) kept float: "
                        + ", ".join(f"`{name}`" for name in guard["float_layers"]) if guard.get("float_layers") else ""))
        if guard.get("steps"):
            lines += ["", f"  Repair rungs, measured on the {guard.get('judged_on', 'validation')} split:", "",
                      "  | rung | what | accuracy | drop | size |", "  |---|---|---|---|---|"]
            for step in guard["steps"]:
                what = step["detail"] + (f" ({step['note']})" if step.get("note") else "")
                lines.append(f"  | {step['rung']} | {what} | {step['validation_accuracy']:.4f} | "
                             f"{step['drop_points']:+.2f} pt | {_kb(step['size_bytes'])} |")
        if guard.get("alternatives"):
            lines += ["", "  Alternatives measured (offered, not adopted: set the target's `quantization`):", "",
                      "  | quantization | validation accuracy | drop | test accuracy | drop | size | latency vs int8 |",
                      "  |---|---|---|---|---|---|---|"]
            for row in guard["alternatives"]:
                if "error" in row:
                    lines.append(f"  | {row['quantization']} | – | – | – | – | – | {row['error']} |")
                    continue
                lines.append(f"  | {row['quantization']} | {row['validation_accuracy']:.4f} | "
                             f"{row['drop_points']:+.2f} pt | {row['test_accuracy']:.4f} | "
                             f"{row['test_drop_points']:+.2f} pt | {_kb(row['size_bytes'])} | "
                             f"{row['latency_vs_int8']:.2f}× |")
        if guard.get("layers"):
            lines += ["", "  | layer output | op | RMSE / scale |", "  |---|---|---|"]
            lines += [f"  | `{row['tensor']}` | {row['op']} | {row['rmse_per_scale']:.3f} |" for row in guard["layers"]]
    return lines


def _distillation_lines(stages: list[StageRecord]) -> list[str]:
    """Teacher, student alone and distilled student, when a distill stage ran (Keras accuracy)."""
    lines = []
    for stage in stages:
        if stage.stage == "distill":
            details = stage.details
            teacher, distilled = details["teacher"], details["distilled"]
            lines += ["", "## Distillation", "", "| model | params | accuracy (Keras) | test errors |",
                      "|---|---|---|---|",
                      f"| {_teacher_label(teacher)} | {teacher['params']:,} | {teacher['accuracy']:.4f} | "
                      f"{teacher['test_errors']} |"]
            alone = details.get("student_alone")
            if alone:
                lines.append(f"| student alone | {details['student']['params']:,} | {alone['accuracy']:.4f} | "
                             f"{alone['test_errors']} |")
            lines.append(f"| distilled student | {details['student']['params']:,} | {distilled['accuracy']:.4f} | "
                         f"{distilled['test_errors']} |")
            lines += ["", f"Student/teacher params {details['params_ratio']:.3f}×, T={details['temperature']:g}, "
                          f"alpha={details['alpha']:g}, {details['epochs']} epochs"
                      + _error_change(details.get("error_reduction"))]
            if details.get("kept"):
                kept = "the student trained alone" if details["kept"] == "student_alone" else "the distilled student"
                lines += ["", f"Kept {kept} (higher validation accuracy; the distilled one on a tie)."]
                lines += [f"- {note}" for note in details.get("notes", [])]
            if teacher.get("members"):
                lines += ["", f"The teacher averages the probabilities of {len(teacher['members'])} models trained "
                              "from different seeds; their own test errors: "
                              + ", ".join(str(member["test_errors"]) for member in teacher["members"]) + "."]
        distill_from = stage.details.get("distill_from")
        if stage.stage == "quantize" and distill_from:
            lines += ["", f"QAT was distilled from the float model (T={distill_from['temperature']:g}, "
                          f"alpha={distill_from['alpha']:g})."]
    return lines


def _error_change(reduction: float | None) -> str:
    """The end of the distillation summary line: how the distilled student's test errors compare with alone."""
    if reduction is None:
        return "."
    if reduction == 0:
        return "; as many test errors as the student alone."
    percent = abs(reduction) * 100
    # Whole percent reads best; below 1 % two significant digits keep one error in hundreds from reading "0%".
    shown = f"{percent:.0f}" if percent >= 1 else f"{percent:.2g}"
    return f"; {shown}% {'more' if reduction < 0 else 'fewer'} test errors than the student alone."


def _teacher_label(teacher: dict) -> str:
    return f"teacher (ensemble of {len(teacher['members'])})" if teacher.get("members") else "teacher"
