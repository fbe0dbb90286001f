"""The accuracy guard's part in a run: a cpu int8 file judged against the float model it came from.

``guard_target`` decides whether a target's file is guarded (cpu, int8, measured) and
against which float model (the last stage's, or the one QAT started from);
``judge_and_repair`` measures the drop, repairs the file with the ladder of
``targets.accuracy_guard`` when over budget (the repaired file replaces it and is
verified and benchmarked again) and adds rule ``accuracy_budget``.
"""

from __future__ import annotations

import gzip
import logging

from edgecomp import files, runtime, tflite_metadata, training
from edgecomp.pipeline_benchmark import CHECKED_SAMPLES, benchmark
from edgecomp.report import Report, TargetRecord
from edgecomp.targets import cpu

log = logging.getLogger("edgecomp")


def guard_target(cfg, kind: str, record: TargetRecord, params, model, before_qat, previous: list[str], dataset,
                 calibration, run_dir, report: Report, expect: dict) -> None:
    """Runs the guard on a measured cpu int8 file (other files have none).

    Args:
        kind: the target's name.
        model: the last stage's model, the file's source after post-training int8.
        before_qat: the float model a quantize (QAT) stage started from, or None.
        previous: the stages that shaped ``model``: with ``quantize`` among them the file
            is QAT's, judged against ``before_qat`` (and not at all without it).
        report: the run's report so far: its stages and float32 reference.
    """
    if kind != "cpu" or params.quantization != "int8" or not record.metrics:
        return
    if "quantize" not in previous:   # post-training int8 (also when QAT fell back to it)
        judge_and_repair(cfg, record, params, model, dataset, calibration, run_dir, report.stages, expect,
                         reference=report.reference)
    elif before_qat is not None:
        judge_and_repair(cfg, record, params, before_qat, dataset, calibration, run_dir, report.stages[:-1], expect,
                         qat=True, reference=report.reference)


def judge_and_repair(cfg, record, params, model, dataset, calibration, run_dir, stages, expect, qat: bool = False,
                     reference: TargetRecord | None = None) -> None:
    """Judges the int8 file against the float model it came from; repairs it when over budget.

    The float model's accuracy is the last stage's (Keras, test split): the drop of
    this step alone. Over budget on the test or the validation split, the repair
    ladder of ``accuracy_guard.repair`` runs, measured on the validation split; the
    verdict (rule ``accuracy_budget``) is given on the test split, after repair.

    With ``qat``, the file is the QAT-trained one, ``model`` the float model QAT
    started from and ``stages`` end with that model's stage: QAT and conversion are
    judged together against it, and the ladder's rungs quantize ``model`` after
    training instead (the best file on validation wins).

    The verdict fails when, after repair, the step still loses more than the budget
    against its input *and* the file is more than the budget below the float32
    ``reference`` file: the budget is in points of the reference, so a step that
    gives back part of what earlier stages gained (pruning's regularization often
    lifts the float model) fails nothing; the report still says what the step lost.
    """
    budget = params.max_accuracy_drop
    float_test = stages[-1].metrics["accuracy"]
    has_val = len(dataset.x_val) > 0
    validation = (dataset.x_val, dataset.y_val) if has_val else (dataset.x_test, dataset.y_test)
    float_val = training.accuracy(model, *validation)
    original = (run_dir / record.path).read_bytes()
    int8_val = runtime.evaluate(original, *validation, where="validation")["accuracy"]
    test_drop = (float_test - record.metrics["accuracy"]) * 100
    val_drop = (float_val - int8_val) * 100
    guard = {"float_model_accuracy": float_test, "budget_points": budget, "drop_points": test_drop,
             "validation_drop_points": val_drop, "judged_on": "validation" if has_val else "test (no validation split)",
             "float_layers": [], "layers": [], "steps": [], "rung": None,
             "against": "the model before QAT" if qat else "the float model it was converted from"}
    record.accuracy_guard = guard
    # A QAT file is replaced only when the verdict split says it failed: on digits' 143 validation images one
    # image is 0.7 points, and choosing by them swapped a QAT file within budget for a worse post-training one.
    if test_drop > budget or (val_drop > budget and not qat):
        _repair(cfg, record, params, model, dataset, calibration, run_dir, expect, guard, validation, float_val,
                original, qat)
    guard["within_budget"] = guard["drop_points"] <= budget
    reference_accuracy = (reference.metrics or {}).get("accuracy") if reference is not None else None
    if reference_accuracy is not None:
        guard["total_drop_points"] = (reference_accuracy - record.metrics["accuracy"]) * 100
        guard["within_budget"] = guard["within_budget"] or guard["total_drop_points"] <= budget
    _budget_rule(record, guard, params)


def _repair(cfg, record, params, model, dataset, calibration, run_dir, expect, guard: dict, validation,
            float_val: float, original: bytes, qat: bool) -> None:
    """Climbs ``accuracy_guard.repair``'s ladder for a file over budget and keeps the file it chose.

    Records the rungs in ``guard`` and the drop on the test split after repair; when that is
    still over budget, the alternatives ``accuracy_guard.alternatives`` measured.
    """
    from edgecomp.targets import accuracy_guard

    budget, float_test, test_drop = guard["budget_points"], guard["float_model_accuracy"], guard["drop_points"]
    fallback = params.fallback
    if fallback == "float" and params.io != "float32":
        log.warning("%s: fallback: float needs io: float32 (layers kept float cannot take %s input); "
                    "calibration rung only", record.target, params.io)
        fallback = "none"
    log.info("%s: int8 loses %.2f points against %s (budget %.2f); repairing",
             record.target, test_drop, guard["against"], budget)
    result = accuracy_guard.repair(model, calibration, dataset.x_train, validation, float_val, original,
                                   budget, fallback, plain_failed=test_drop > budget,
                                   first_rung="qat" if qat else "plain")
    guard.update(steps=result["steps"], layers=result["layers"], float_layers=result["float_layers"],
                 rung=result["rung"], calibration_samples=result["calibration_samples"])
    if result["content"] != original:
        _replace_file(cfg, record, params, model, result["content"], dataset, run_dir, expect,
                      len(result["float_layers"]))
    guard["drop_points"] = (float_test - record.metrics["accuracy"]) * 100
    if guard["drop_points"] > budget:
        guard["alternatives"] = accuracy_guard.alternatives(
            model, result["calibration"], validation, (dataset.x_test, dataset.y_test),
            {"validation": float_val, "test": float_test}, result["content"], budget)


def _replace_file(cfg, record, params, model, content, dataset, run_dir, expect, float_layers: int) -> None:
    """Writes the repaired file over the target's and measures, verifies and benchmarks it again."""
    content = tflite_metadata.for_file(cfg, record.target, params.quantization, model, dataset, content)
    path = files.write_bytes(run_dir / record.path, content)
    record.size_bytes = path.stat().st_size
    record.gzip_bytes = len(gzip.compress(content, compresslevel=9, mtime=0))
    record.metrics = runtime.evaluate(content, dataset.x_test, dataset.y_test, where=record.path)
    record.compatibility = cpu.verify(content, params.quantization, params.io, expect, float_fallback=float_layers)
    record.io = runtime.io_details(content)
    record.benchmarks = benchmark(cfg, path, dataset.x_test[:CHECKED_SAMPLES], record)


def _budget_rule(record: TargetRecord, guard: dict, params) -> None:
    """Adds ``accuracy_budget`` to the target's rules: the conversion's own drop, on the test split."""
    drop, budget = guard["drop_points"], guard["budget_points"]
    against = guard.get("against", "the float model it was converted from")
    detail = (f"int8 {record.metrics['accuracy']:.4f} vs {against} (Keras) "
              f"{guard['float_model_accuracy']:.4f}: loses {drop:.2f} points (budget {budget:.2f})")
    if guard["rung"] and guard["rung"] not in ("plain", "qat"):
        detail += f"; repaired by {guard['rung'].replace('_', ' ')}"
    if drop > budget and guard["within_budget"]:
        detail += (f", but the file is {abs(guard['total_drop_points']):.2f} points "
                   f"{'below' if guard['total_drop_points'] > 0 else 'above'} the float32 reference: within budget "
                   "(earlier stages gained what this step lost)")
    ok = guard["within_budget"]
    if not ok:
        detail += "; over budget after every repair rung: " + _next_try(guard.get("alternatives", []))
        if params.allow_over_budget:
            detail += " (allowed: allow_over_budget)"
    details = record.compatibility.setdefault("details", {})
    details.setdefault("rules", []).append({"rule": "accuracy_budget", "ok": ok or params.allow_over_budget,
                                            "detail": detail})
    record.compatibility["ok"] = bool(record.compatibility.get("ok", True)) and (ok or params.allow_over_budget)


def _next_try(alternatives: list[dict]) -> str:
    """What to try after a failed ladder: the measured alternatives that met the budget first."""
    fits = [row for row in alternatives if row.get("within_budget")]
    advice = [f"quantization: {row['quantization']} (measured: loses {row['test_drop_points']:.2f} points, "
              f"{row['latency_vs_int8']:.1f}x the int8 file's latency)" for row in fits]
    advice.append("a quantize (QAT) stage, fallback: float or more data.calibration_samples")
    return "try " + "; or ".join(advice)
