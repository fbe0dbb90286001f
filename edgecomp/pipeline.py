"""The run: baseline → stages → a reference and one file per target → verify → benchmark → report.

``run`` calls, in order: ``pipeline_baseline`` (the float model trained), the stages,
each target's file (``_variant``, through the target hooks of ``edgecomp.targets``),
``pipeline_guard`` (the accuracy guard of cpu int8 files) and ``pipeline_benchmark``
(the benchmark devices), then writes the report.

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

import edgecomp
from edgecomp import config as config_module
from edgecomp import augment, data, distribute, files, models, runtime, stages, targets, tflite_metadata
from edgecomp import pipeline_baseline, pipeline_benchmark, pipeline_guard
from edgecomp import report as report_module
from edgecomp import report_plots
from edgecomp._keras import keras, tf
from edgecomp import checkpoints as checkpoint_layout
from edgecomp.checkpoints import Checkpoints
from edgecomp.config import Config, stage_kind, stage_params
from edgecomp.errors import EdgecompError, ModelError
from edgecomp.pipeline_baseline import check_learned  # noqa: F401 - pipeline.check_learned, as before
from edgecomp.report import Report, StageRecord, TargetRecord

log = logging.getLogger("edgecomp")


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
    _require_targets(cfg)   # before anything trains
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
    checkpoints = Checkpoints(checkpoint_layout.folder(cfg.run_dir), cfg, resume)
    if resume and cfg.distribute.strategy == "multi_worker":
        distribute.check_same_everywhere(checkpoints.usable(len(cfg.stages)), "the stage checkpoints --resume reuses",
                                         f"put output_dir ({cfg.output_dir}) on a filesystem every worker mounts at "
                                         "the same path, or run without --resume")
    model = _baseline_model(cfg, dataset, run_dir, checkpoints, report)

    # The reference is converted from a deep copy before any stage touches the model:
    # tfmot wraps layer objects in place. Files are made on the chief only.
    measured = _reference(cfg, model, dataset, calibration, run_dir, report) if chief else {}
    model, previous, before_qat = _run_stages(cfg, model, dataset, run_dir, checkpoints, report)
    if not chief:
        log.info("worker: training finished; the chief converts, verifies, benchmarks and writes the report")
        return report
    _judge_targets(cfg, model, previous, before_qat, dataset, calibration, run_dir, report, measured)
    report.seconds = time.time() - started
    _write_report(report, run_dir)
    return report


def _require_targets(cfg: Config) -> None:
    """Calls each configured target's ``require`` hook: a target this machine cannot judge stops the run now.

    Raises:
        ConfigError: naming the target as ``targets[i].<target>``.
    """
    for index, item in enumerate(cfg.targets):
        require = targets.hook(stage_kind(item), "require")
        if require is not None:
            require(f"targets[{index}].{stage_kind(item)}")


def _baseline_model(cfg: Config, dataset: data.Dataset, run_dir: Path, checkpoints, report: Report):
    """The baseline: its checkpoint when resuming reuses it, else trained now and saved; recorded in ``report``."""
    model, record = checkpoints.load(0, "baseline")
    if model is None:
        keras.utils.set_random_seed(cfg.seed)
        with distribute.scope():
            model, record = pipeline_baseline.train(cfg, dataset, run_dir)
        model = _outside_strategy(model)
        checkpoints.save(0, "baseline", model, record)
    report.stages.append(record)
    report.dataset.update(input_output(dataset, model))
    return model


def _reference(cfg: Config, model, dataset: data.Dataset, calibration, run_dir: Path, report: Report) -> dict:
    """Makes the float32 reference file from a copy of ``model`` and lets targets measure that copy.

    Returns:
        What each target's ``measure_baseline`` hook returned, by target name (``_measure_baseline``).
    """
    reference_model = models.copy(model)
    reference_params = config_module.CpuTargetConfig(quantization="float32", io="float32")
    report.reference = _variant(cfg, "reference", reference_model, reference_params, dataset, calibration, run_dir)
    return _measure_baseline(cfg, reference_model, calibration)


def _measure_baseline(cfg: Config, baseline, calibration) -> dict:
    """Each target's ``measure_baseline`` of the baseline, once per target with its first params, when stages run.

    The yardstick of what the stages saved, measured in the same run before any stage.
    """
    measured = {}
    if not cfg.stages:
        return measured
    for item in cfg.targets:
        kind = stage_kind(item)
        measure = targets.hook(kind, "measure_baseline")
        if measure is not None and kind not in measured:
            measured[kind] = measure(baseline, stage_params(item), calibration)
    return measured


def _run_stages(cfg: Config, model, dataset: data.Dataset, run_dir: Path, checkpoints, report: Report):
    """Runs each stage on the model before it, or reuses its checkpoint; records each in ``report``.

    Returns:
        ``(model, previous, before_qat)``: the last stage's model, the stages that shaped it
        (``prune_filters`` for filter pruning, none that fell back) and the float model a
        quantize (QAT) stage started from, or None.
    """
    previous: list[str] = []
    before_qat = None   # the float model QAT started from: the QAT file is judged against it
    for index, item in enumerate(cfg.stages, start=1):
        kind, params = stage_kind(item), stage_params(item)
        facts = stages.facts(kind, params)
        loaded, record = checkpoints.load(index, kind) if facts.checkpointed else (None, None)
        if loaded is None:
            log.info("stage %d/%d: %s", index, len(cfg.stages), kind)
            context = stages.StageContext(cfg, dataset, run_dir / "logs" / f"{index:02d}_{kind}", tuple(previous))
            started_stage = time.time()
            before = model
            # Seeded per stage, so a resumed run trains each stage as an uninterrupted one does.
            with distribute.scope():   # models are copied, wrapped and compiled in the strategy's scope
                model, record = stages.run(kind, model, params, context, seed=cfg.seed + index)
            if not record.details.get("fallback"):
                model = _outside_strategy(model, kind, before, tuple(previous), params)
            record.seconds = time.time() - started_stage
            if facts.checkpointed:
                checkpoints.save(index, kind, model, record)
            else:   # QAT: it runs here every time, from ``before``, against which its file is judged
                before_qat = before
        else:
            model = loaded
        report.stages.append(record)
        if record.details.get("fallback"):
            continue   # e.g. QAT tfmot could not wrap: the model is the float one, quantized after training
        previous.append(facts.recorded_as)
    return model, previous, before_qat


def _judge_targets(cfg: Config, model, previous: list[str], before_qat, dataset: data.Dataset, calibration,
                   run_dir: Path, report: Report, measured: dict) -> None:
    """Makes, judges and benchmarks one file per target; compares it with the baseline and guards it.

    Args:
        previous, before_qat: what ``_run_stages`` returned with ``model``.
        measured: what ``_measure_baseline`` returned: a target's ``compare_with_baseline``
            hook gets its entry.
    """
    expect = _expectations(report.stages)
    for item in cfg.targets:
        kind, params = stage_kind(item), stage_params(item)
        record = _variant(cfg, kind, model, params, dataset, calibration, run_dir, expect)
        compare = targets.hook(kind, "compare_with_baseline")
        if compare is not None and measured.get(kind) and record.compatibility.get("details"):
            compare(record, measured[kind])
        pipeline_guard.guard_target(cfg, kind, record, params, model, before_qat, previous, dataset, calibration,
                                    run_dir, report, expect)
        record.accuracy_steps = accuracy_steps(report.stages, report.reference, record)
        report.targets.append(record)


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
    content = tflite_metadata.for_file(cfg, target, quantization, model, dataset, content)
    path = files.write_bytes(run_dir / relative, content)
    files.write_text(path.parent / "labels.txt", "".join(f"{name}\n" for name in dataset.labels))
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
    finish = targets.hook(target, "finish")   # the files a target writes beside its model
    if finish is not None:
        finish(record, content, params, path.parent, dataset, expect)
    record.skipped.extend(skipped)
    if not record.compatibility["ok"]:
        log.error("%s: %s", target, failed_rules(record))
    if record.metrics:
        log.info("%s: %s bytes, accuracy %.4f (%s, %d test samples)", target, f"{len(content):,}",
                 record.metrics["accuracy"], record.metrics.get("runtime", "LiteRT"), record.metrics["samples"])
    if judged.BENCHMARKED:
        samples = dataset.x_test[:pipeline_benchmark.CHECKED_SAMPLES]
        record.benchmarks = pipeline_benchmark.benchmark(cfg, path, samples, record)
    return record


def failed_rules(record: TargetRecord) -> str:
    """One line naming each failed rule of a target and its detail."""
    details = record.compatibility.get("details", {})
    failed = [f"{r['rule']}: {r['detail']}" for r in details.get("rules", []) if not r["ok"]]
    if "error" in details:
        failed.append(details["error"])
    return "failed " + "; ".join(failed) if failed else "passed"


def input_output(dataset, model) -> dict:
    """What a device feeds every file and what it gets back: report.json's ``dataset.input``/``dataset.output``."""
    head = models.head_activation(model)
    return {
        "input": {"shape": list(dataset.input_shape), "dtype": "float32", "preprocessing": dataset.preprocessing,
                  "range": [round(float(dataset.x_train.min()), 6), round(float(dataset.x_train.max()), 6)]},
        "output": {"classes": dataset.num_classes, "kind": "probabilities" if head == "softmax" else "logits",
                   "labels": "labels.txt"},
    }


def _write_report(report: Report, run_dir: Path) -> None:
    files.write_text(run_dir / "report.json", report.to_json())
    files.write_text(run_dir / "report.md", report_module.render(report))
    for path in report_plots.plot(report, run_dir / "plots"):
        log.info("plot %s", path)
    log.info("report %s", run_dir / "report.md")
