"""The run: baseline → stages → a reference and one file per target → verify → benchmark → report.

Example:
    >>> from edgecomp import config, pipeline
    >>> report = pipeline.run(config.load("configs/quickstart.yaml"))   # doctest: +SKIP
    >>> report.targets[0].metrics["accuracy"]                         # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

import edgecomp
from edgecomp import config as config_module
from edgecomp import augment, data, distribute, files, models, runtime, stages, targets, training
from edgecomp import report as report_module
from edgecomp._keras import keras, tf
from edgecomp.checkpoints import UNCHECKPOINTED_STAGES, Checkpoints
from edgecomp.config import Config, stage_kind, stage_params
from edgecomp.devices import open_configured, output_check
from edgecomp.errors import DeviceError, EdgecompError, ModelError, NotLearnedError
from edgecomp.report import Report, StageRecord, TargetRecord
from edgecomp.targets import convert as converter
from edgecomp.targets import cpu, micro

log = logging.getLogger("edgecomp")
CHECKED_SAMPLES = 8   # test samples whose outputs every benchmarked device must reproduce


def run(cfg: Config, *, resume: bool = False) -> Report:
    """Runs the whole pipeline for ``cfg`` and writes everything under ``cfg.run_dir``.

    Args:
        cfg: a validated config (``config.load``).
        resume: reuse finished stage checkpoints whose config is unchanged.

    Returns:
        The report, also written as ``report.json`` and ``report.md``.

    Raises:
        EdgecompError: bad data, model, or an output folder that cannot be written.
    """
    started = time.time()
    for index, item in enumerate(cfg.targets):   # before anything trains
        if stage_kind(item) == "micro":
            micro.require_tflm(f"targets[{index}].micro")
    # Then: multi_worker must be set up before TensorFlow runs any other op.
    distribute.setup(cfg.distribute)
    chief = distribute.is_chief()   # only the chief writes; a worker's scratch folder is deleted at exit
    run_dir = _prepare_run_dir(cfg) if chief else distribute.worker_dir()
    if cfg.distribute.strategy != "none":
        _log_distribution(cfg, chief)
    files.write_text(run_dir / "config.yaml", config_module.to_yaml(cfg))
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()

    dataset = augment.attach(data.load(cfg.data, cfg.seed), cfg.train.augment)   # every training below uses it
    log.info("data %s", dataset.summary())
    calibration = data.representative_samples(dataset, cfg.data.calibration_samples, cfg.seed)
    report = Report(name=cfg.name, edgecomp_version=edgecomp.__version__, runtime=runtime.runtime_name(),
                    dataset={"source": cfg.data.source, "summary": dataset.summary()})
    # Workers read the chief's checkpoints (a folder all of them share) and write none.
    checkpoints = Checkpoints(cfg.run_dir / "checkpoints", cfg, resume)
    if resume and cfg.distribute.strategy == "multi_worker":
        distribute.check_same_everywhere(checkpoints.usable(len(cfg.stages)), "the stage checkpoints --resume reuses",
                                         f"put output_dir ({cfg.output_dir}) on a filesystem every worker mounts at "
                                         "the same path, or run without --resume")

    model, record = checkpoints.load(0, "baseline")
    if model is None:
        keras.utils.set_random_seed(cfg.seed)
        with distribute.scope():
            model, record = _baseline(cfg, dataset, run_dir)
        model = _outside_strategy(model)
        checkpoints.save(0, "baseline", model, record)
    report.stages.append(record)
    report.dataset.update(input_output(dataset, model))

    # The reference is converted from a deep copy before any stage touches the model:
    # tfmot wraps layer objects in place (DESIGN.md §9). Files are made on the chief only.
    plain_int8 = None
    if chief:
        reference_model = models.copy(model)
        reference_params = config_module.CpuTargetConfig(quantization="float32", io="float32")
        report.reference = _variant(cfg, "reference", reference_model, reference_params, dataset, calibration,
                                    run_dir)
        plain_int8 = _plain_int8_flash(cfg, reference_model, calibration)
        del reference_model

    previous: list[str] = []
    before_qat = None   # the float model QAT started from: the QAT file is judged against it
    for index, item in enumerate(cfg.stages, start=1):
        kind = stage_kind(item)
        loaded, record = checkpoints.load(index, kind)
        if loaded is None:
            log.info("stage %d/%d: %s", index, len(cfg.stages), kind)
            context = stages.StageContext(cfg, dataset, run_dir / "logs" / f"{index:02d}_{kind}", tuple(previous))
            started_stage = time.time()
            # Seeded per stage, so a resumed run trains each stage as an uninterrupted one does.
            keras.utils.set_random_seed(cfg.seed + index)
            before = model
            with distribute.scope():   # models are copied, wrapped and compiled in the strategy's scope
                model, record = stages.apply(kind, models.copy(model), stage_params(item), context)
            if not record.details.get("fallback"):
                model = _outside_strategy(model, kind, before, tuple(previous), stage_params(item))
            record.seconds = time.time() - started_stage
            if kind not in UNCHECKPOINTED_STAGES:
                checkpoints.save(index, kind, model, record)
            if kind == "quantize":   # never checkpointed: QAT always runs here, from ``before``
                before_qat = before
        else:
            model = loaded
        report.stages.append(record)
        if record.details.get("fallback"):
            continue   # e.g. QAT tfmot could not wrap: the model is the float one, quantized after training
        # Filter pruning removes channels and leaves no zeros for a later stage to preserve.
        zeroes_weights = kind != "prune" or stage_params(item).structure != "filters"
        previous.append(kind if zeroes_weights else "prune_filters")

    if not chief:
        log.info("worker: training finished; the chief converts, verifies, benchmarks and writes the report")
        return report
    expect = _expectations(report.stages)
    for item in cfg.targets:
        params = stage_params(item)
        record = _variant(cfg, stage_kind(item), model, params, dataset, calibration, run_dir, expect)
        if stage_kind(item) == "micro" and plain_int8 and record.compatibility.get("details"):
            _compare_with_plain_int8(record, plain_int8)
        if stage_kind(item) == "cpu" and params.quantization == "int8" and record.metrics:
            if "quantize" not in previous:   # post-training int8 (also when QAT fell back to it)
                _guard(cfg, record, params, model, dataset, calibration, run_dir, report.stages, expect,
                       reference=report.reference)
            elif before_qat is not None:
                _guard(cfg, record, params, before_qat, dataset, calibration, run_dir, report.stages[:-1], expect,
                       qat=True, reference=report.reference)
        record.accuracy_steps = accuracy_steps(report.stages, report.reference, record)
        report.targets.append(record)
    report.seconds = time.time() - started
    _write_report(report, run_dir)
    return report


def accuracy_steps(records: list[StageRecord], reference: TargetRecord | None, target: TargetRecord) -> dict:
    """Where the accuracy went: each stage against the model it was given, then conversion, then the total.

    Stage figures are Keras test accuracies of the stage's model; ``conversion_points``
    is the file's measured test accuracy against the last stage's model;
    ``total_points`` is against the float32 reference file.
    """
    if not target.metrics or "accuracy" not in target.metrics:
        return {}
    steps, before = [], None
    for stage in records:
        accuracy = stage.metrics.get("accuracy")
        if before is not None and accuracy is not None:
            steps.append({"stage": stage.stage, "delta_points": (accuracy - before) * 100})
        before = accuracy if accuracy is not None else before
    result = {"stages": steps}
    if before is not None:
        result["conversion_points"] = (target.metrics["accuracy"] - before) * 100
    if reference is not None and reference.metrics.get("accuracy") is not None:
        result["total_points"] = (target.metrics["accuracy"] - reference.metrics["accuracy"]) * 100
    return result


def _outside_strategy(model, kind: str = "baseline", before=None, previous: tuple[str, ...] = (), params=None):
    """The trained model with ordinary variables: what is saved, converted and trained next.

    Without a strategy this is ``model`` itself. Under one, every worker makes the
    copy at the same point (reading distributed variables runs collective ops that
    all workers must join), so the chief can then save and convert alone. QAT
    wrappers of tfmot's preserving schemes cannot be cloned (their quantizers come
    back with the default scheme), so a QAT model is wrapped again from ``before``.
    """
    if distribute.current() is None:
        return model
    if kind == "quantize":
        from edgecomp.stages import quantize

        plain = quantize.wrap_model(models.copy(before), previous, params.weights)[0]
    else:
        plain = keras.models.clone_model(model)
    plain.set_weights(model.get_weights())
    return plain


def _log_distribution(cfg: Config, chief: bool) -> None:
    replicas = distribute.replicas()
    batch = cfg.data.batch_size
    log.info("distribute: %s, %d replica(s) in sync, global batch %d (%s per replica)%s", cfg.distribute.strategy,
             replicas, batch, f"{batch / replicas:g}", "" if chief else "; this worker writes no files")
    if batch % replicas:
        log.warning("distribute: data.batch_size %d is not a multiple of the %d replicas; replicas get unequal "
                    "shares of each batch", batch, replicas)


def _prepare_run_dir(cfg: Config) -> Path:
    run_dir = cfg.run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-", delete=True)
        probe.close()
        removed = files.remove_stale_temporaries(run_dir)
    except OSError as error:
        raise EdgecompError(
            f"output_dir: cannot write to {run_dir} ({error.strerror or error}); choose a writable output_dir"
        ) from None
    if removed:
        names = ", ".join(str(path.relative_to(run_dir)) for path in removed[:5])
        log.info("removed %d temporary file(s) or folder(s) an interrupted run left in %s (only edgecomp's "
                 "own, named .<name>.<8 characters>.tmp): %s%s", len(removed), run_dir, names,
                 ", ..." if len(removed) > 5 else "")
    return run_dir


def _baseline(cfg: Config, dataset: data.Dataset, run_dir: Path):
    started = time.time()
    samples = dataset.x_val if len(dataset.x_val) else dataset.x_train
    model = models.build(cfg.model, dataset.input_shape, dataset.num_classes, samples=samples[:32])
    log.info("baseline: %s, %s params, training %d epochs", model.name, f"{models.count_params(model):,}",
             cfg.train.epochs)
    history = training.fit(
        model, dataset, epochs=cfg.train.epochs, learning_rate=cfg.train.learning_rate,
        batch_size=cfg.data.batch_size, log_dir=run_dir / "logs" / "00_baseline",
        patience=cfg.train.early_stopping_patience,
    )
    accuracy = training.accuracy(model, dataset.x_test, dataset.y_test)
    log.info("baseline Keras test accuracy %.4f", accuracy)
    details = {"model": model.name, "epochs": cfg.train.epochs}
    if history is not None:
        details["epochs_run"] = len(history.epoch)
        details["training"] = history.notes
    check_learned(cfg, accuracy, training.chance_accuracy(dataset.y_test), details)
    record = StageRecord(
        stage="baseline", params=models.count_params(model), nonzero_params=models.count_nonzero_params(model),
        metrics={"accuracy": accuracy}, seconds=time.time() - started, details=details,
    )
    return model, record


def check_learned(cfg: Config, accuracy: float, chance: float, details: dict) -> None:
    """Stops the run when the float model's test accuracy is near chance: nothing after it would mean anything.

    Raises:
        NotLearnedError: with the figures, the likely causes and the keys to change.
    """
    if not cfg.train.stop_if_not_learned or not training.near_chance(accuracy, chance):
        return
    if cfg.train.epochs == 0:
        causes = ("the given weights were not trained for this data (set train.epochs > 0), or the data is scaled "
                  "differently from what the model was trained on")
    else:
        causes = ("too few epochs (train.epochs), a learning rate too high or too low (train.learning_rate), "
                  "inputs scaled differently from what the model expects, or BatchNorm statistics that never "
                  "caught up (edgecomp re-estimates them when it sees the gap)")
    done = "; ".join(details.get("training", [])) or "no training decisions recorded"
    raise NotLearnedError(
        f"the float model's test accuracy is {accuracy:.4f}, near chance ({chance:.4f}): compressing it would "
        f"measure nothing. Likely causes: {causes}. Training: {done}. "
        "Set train.stop_if_not_learned: false to go on anyway")


def _plain_int8_flash(cfg: Config, baseline, calibration) -> int | None:
    """Bytes of the baseline converted to plain int8 for the first micro target, when stages run.

    The yardstick of what the stages (and LUT compression) saved on flash, measured
    in the same run: the same model, post-training int8, with the micro target's
    string stripping, before any stage.
    """
    micro_targets = [stage_params(item) for item in cfg.targets if stage_kind(item) == "micro"]
    if not micro_targets or not cfg.stages:
        return None
    try:
        content = converter.convert(baseline, "int8", "int8", calibration)
    except ModelError as error:
        log.warning("micro: the baseline's plain int8 file for comparison could not be made: %s", error)
        return None
    return len(micro.strip_strings(content) if micro_targets[0].strip_strings else content)


def _compare_with_plain_int8(record: TargetRecord, plain_int8: int) -> None:
    details = record.compatibility["details"]
    details["plain_int8_flash_bytes"] = plain_int8
    details["flash_ratio_to_plain_int8"] = record.size_bytes / plain_int8
    lut = details.get("lut")
    if lut and lut.get("outputs_identical"):
        lut["ratio_to_plain_int8"] = lut["flash_bytes_after"] / plain_int8
        log.info("micro: LUT-compressed file %s bytes, %.3f× the baseline's plain int8 file (%s bytes)",
                 f"{lut['flash_bytes_after']:,}", lut["ratio_to_plain_int8"], f"{plain_int8:,}")


def _expectations(records: list[StageRecord]) -> dict:
    """What the files must show of earlier stages: sparsity of prune, cluster count of cluster."""
    expect = {}
    for record in records:
        if record.stage == "prune" and record.details.get("sparsity"):
            expect["sparsity"] = record.details.get("model_sparsity", record.details["sparsity"])
        if record.stage == "cluster":
            expect["clusters"] = record.details["clusters"]
    return expect


def _variant(cfg, target, model, params, dataset, calibration, run_dir, expect=None) -> TargetRecord:
    """Converts, writes, verifies, evaluates and benchmarks one file."""
    quantization, io = params.quantization, params.io
    relative = f"{target}/model.tflite"
    log.info("%s: converting to %s (io %s)", target, quantization, io)
    try:
        content, facts = targets.convert_for(target, model, params, calibration)
    except ModelError as error:
        log.error("%s: %s", target, error)
        return TargetRecord(target, quantization, "", 0, 0, {}, {"ok": False, "details": {"error": str(error)}})
    path = files.write_bytes(run_dir / relative, content)
    files.write_text(path.parent / "labels.txt", "".join(f"{name}\n" for name in class_labels(dataset)))
    record = TargetRecord(
        target=target, quantization=quantization, path=relative, size_bytes=path.stat().st_size,
        gzip_bytes=len(gzip.compress(content, compresslevel=9, mtime=0)), metrics={},
        compatibility={}, io=runtime.io_details(content),
    )
    judged = targets.module(target)
    record.compatibility, record.metrics, skipped = judged.judge(content, params, path, dataset.x_test,
                                                                 dataset.y_test, expect)
    if facts:
        record.compatibility["details"].update(facts)
    finish = getattr(judged, "finish", None)   # files a target writes beside its model (micro: sources, project)
    if finish is not None:
        finish(record, content, params, path.parent, dataset, expect)
    record.skipped.extend(skipped)
    if not record.compatibility["ok"]:
        log.error("%s: %s", target, failed_rules(record))
    if record.metrics:
        log.info("%s: %s bytes, accuracy %.4f (%s, %d test samples)", target, f"{len(content):,}",
                 record.metrics["accuracy"], record.metrics.get("runtime", "LiteRT"), record.metrics["samples"])
    if judged.BENCHMARKED:
        record.benchmarks = _benchmark(cfg, path, dataset.x_test[:CHECKED_SAMPLES], record)
    return record


def class_labels(dataset) -> list[str]:
    """One label per output index: the data's class names (image folders), else the index itself."""
    names = list(dataset.class_names)
    return names if len(names) == dataset.num_classes else [str(index) for index in range(dataset.num_classes)]


def failed_rules(record: TargetRecord) -> str:
    """One line naming each failed rule of a target and its detail."""
    details = record.compatibility.get("details", {})
    failed = [f"{r['rule']}: {r['detail']}" for r in details.get("rules", []) if not r["ok"]]
    if "error" in details:
        failed.append(details["error"])
    return "failed " + "; ".join(failed) if failed else "passed"


def _guard(cfg, record, params, model, dataset, calibration, run_dir, stages, expect, qat: bool = False,
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
    from edgecomp.targets import accuracy_guard

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
            _replace_file(cfg, record, params, result["content"], dataset, run_dir, expect,
                          len(result["float_layers"]))
        guard["drop_points"] = (float_test - record.metrics["accuracy"]) * 100
        if guard["drop_points"] > budget:
            guard["alternatives"] = accuracy_guard.alternatives(
                model, result["calibration"], validation, (dataset.x_test, dataset.y_test),
                {"validation": float_val, "test": float_test}, result["content"], budget)
    guard["within_budget"] = guard["drop_points"] <= budget
    reference_accuracy = (reference.metrics or {}).get("accuracy") if reference is not None else None
    if reference_accuracy is not None:
        guard["total_drop_points"] = (reference_accuracy - record.metrics["accuracy"]) * 100
        guard["within_budget"] = guard["within_budget"] or guard["total_drop_points"] <= budget
    _budget_rule(record, guard, params)


def input_output(dataset, model) -> dict:
    """What a device feeds every file and what it gets back: report.json's ``dataset.input``/``dataset.output``."""
    head = models.head_activation(model)
    return {
        "input": {"shape": list(dataset.input_shape), "dtype": "float32", "preprocessing": dataset.preprocessing,
                  "range": [round(float(dataset.x_train.min()), 6), round(float(dataset.x_train.max()), 6)]},
        "output": {"classes": dataset.num_classes, "kind": "probabilities" if head == "softmax" else "logits",
                   "labels": "labels.txt"},
    }


def _replace_file(cfg, record, params, content, dataset, run_dir, expect, float_layers: int) -> None:
    path = files.write_bytes(run_dir / record.path, content)
    record.size_bytes = path.stat().st_size
    record.gzip_bytes = len(gzip.compress(content, compresslevel=9, mtime=0))
    record.metrics = runtime.evaluate(content, dataset.x_test, dataset.y_test, where=record.path)
    record.compatibility = cpu.verify(content, params.quantization, params.io, expect, float_fallback=float_layers)
    record.io = runtime.io_details(content)
    record.benchmarks = _benchmark(cfg, path, dataset.x_test[:CHECKED_SAMPLES], record)


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


def _benchmark(cfg: Config, path: Path, samples: np.ndarray, record: TargetRecord) -> list[dict]:
    """Benchmarks ``path`` on every configured device, timing the first sample; checks the device's outputs.

    Devices that run edgecomp's agent (local, ssh) return the outputs of ``samples``;
    they are compared with this machine's run of the same file (``output_check``),
    and a device that computes something else fails rule ``outputs_on_<device>``.
    """
    results, expected = [], None
    for spec in cfg.benchmark.devices:
        try:
            device = open_configured(spec, cfg.benchmark)
        except DeviceError as error:
            raise EdgecompError(f"benchmark.devices: {error}") from None
        for threads in cfg.benchmark.threads:
            log.info("%s: benchmarking on %s, %d thread(s), %d runs", record.target, spec, threads, cfg.benchmark.runs)
            try:
                result = device.benchmark(path, runs=cfg.benchmark.runs, warmup=cfg.benchmark.warmup,
                                          threads=threads, inputs=samples, timeout_s=cfg.benchmark.timeout_s)
            except DeviceError as error:
                log.error("%s: %s", record.target, error)
                record.skipped.append({"layer": f"benchmark {spec}", "reason": str(error)})
                continue
            if "outputs" in result:
                if expected is None:
                    expected = output_check.reference(path.read_bytes(), samples)
                result["output_check"] = check = output_check.compare(result.pop("outputs"), expected)
            else:
                result["output_check"] = check = {"verdict": "not checked",
                                                  "reason": "this device's benchmark returns no outputs"}
            if check["verdict"] != "not checked":
                _output_rule(record, spec, threads, check)
            latency = result["latency_ms"]
            which = "p50" if latency.get("p50") is not None else "mean"
            log.info("%s: %s %.4f ms on %s (%s)", record.target, which, latency[which], spec, result["delegate"])
            results.append(result)
    return results


def _output_rule(record: TargetRecord, spec: str, threads: int, check: dict) -> None:
    """Rule ``outputs_on_<device>``: the device computed what this machine does (within tolerance).

    Only ``wrong`` (a top class changed) fails; ``differs`` (beyond tolerance, same classes) is a warning.
    """
    ok = check["verdict"] != "wrong"
    name = f"outputs_on_{spec.split('://')[0]}"
    detail = f"{spec}, {threads} thread(s): {output_check.describe(check)}"
    (log.error if not ok else log.warning if check["verdict"] == "differs" else log.info)("%s: %s", record.target,
                                                                                       detail)
    details = record.compatibility.setdefault("details", {})
    details.setdefault("rules", []).append({"rule": name, "ok": ok, "detail": detail})
    record.compatibility["ok"] = bool(record.compatibility.get("ok", True)) and ok


def _write_report(report: Report, run_dir: Path) -> None:
    files.write_text(run_dir / "report.json", report.to_json())
    files.write_text(run_dir / "report.md", report_module.render(report))
    for path in report_module.plot(report, run_dir / "plots"):
        log.info("plot %s", path)
    log.info("report %s", run_dir / "report.md")
