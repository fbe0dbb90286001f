"""The library verbs: compress, convert, verify and benchmark in-memory models and arrays.

Each verb takes what a user already holds (a tf_keras model, numpy arrays, ``.tflite``
bytes) and returns something new; none changes its input. Settings are the config
file's keys, validated by the same schema, so a bad key raises ``ConfigError`` naming
it and the allowed values. ``edgecomp.run(config)`` is the whole pipeline (baseline,
reference, guard, report) on top of the same stages and targets.

Example:
    >>> import edgecomp
    >>> data = edgecomp.dataset(x, y)                                   # doctest: +SKIP
    >>> small, records = edgecomp.compress(model, [{"prune": {"sparsity": 0.5}}], data)  # doctest: +SKIP
    >>> content = edgecomp.convert(small, "cpu", calibration=data.x_train[:200])          # doctest: +SKIP
    >>> edgecomp.verify(content, "cpu", data.x_test, data.y_test)["ok"]                  # doctest: +SKIP
    True
    >>> edgecomp.benchmark(content, runs=50)["latency_ms"]["p50"]                         # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgecomp import config as config_module
from edgecomp.data import Dataset
from edgecomp.errors import ConfigError, DataError

VALIDATION_SHARE = 0.1   # of the training arrays, when no validation arrays are given
TEST_SHARE = 0.2         # of the training arrays, when no test arrays are given


def dataset(x: np.ndarray, y: np.ndarray, *, x_val: Optional[np.ndarray] = None, y_val: Optional[np.ndarray] = None,
            x_test: Optional[np.ndarray] = None, y_test: Optional[np.ndarray] = None,
            num_classes: Optional[int] = None, seed: int = 0, name: str = "arrays") -> Dataset:
    """A ``Dataset`` from arrays: the splits not given are held out of ``(x, y)``, stratified and seeded.

    Args:
        x, y: training samples (float32 after conversion) and integer class labels.
        x_val, y_val: validation split; default: 10 % of ``(x, y)``.
        x_test, y_test: test split; default: 20 % of ``(x, y)``.
        num_classes: default: the largest label + 1.
        seed: seed of the held-out splits.
        name: shown in logs and records.

    Raises:
        DataError: shapes or labels that do not fit together.
    """
    from edgecomp import data as data_module

    x, y = _xy(x, y, "x, y")
    if (x_test is None) != (y_test is None) or (x_val is None) != (y_val is None):
        raise DataError("give x_val with y_val and x_test with y_test (or neither of a pair)")
    if x_test is None:
        x, y, x_test, y_test = data_module._split(x, y, TEST_SHARE, seed)
    if x_val is None:
        x, y, x_val, y_val = data_module._split(x, y, VALIDATION_SHARE, seed + 1)
    x_val, y_val = _xy(x_val, y_val, "x_val, y_val")
    x_test, y_test = _xy(x_test, y_test, "x_test, y_test")
    for split, array in (("x_val", x_val), ("x_test", x_test)):
        if array.shape[1:] != x.shape[1:]:
            raise DataError(f"{split} samples have shape {array.shape[1:]}, the training samples {x.shape[1:]}")
    labels = np.concatenate([y, y_val, y_test])
    classes = int(num_classes if num_classes is not None else labels.max() + 1)
    if labels.min() < 0 or labels.max() >= classes:
        raise DataError(f"labels must lie in 0..{classes - 1} (num_classes {classes}); found {labels.min()}.."
                        f"{labels.max()}")
    return Dataset(name, x, y, x_val, y_val, x_test, y_test, classes)


def _xy(x, y, names: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float32), np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{names}: expected samples (N, ...) and labels (N,); got {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"{names}: labels must be integer class indices; got {y.dtype} values")
    return x, y.astype(np.int64)


def compress(model, stages: Sequence[dict], data: Dataset, *, seed: int = 0, batch_size: int = 64,
             log_dir: Optional[str | Path] = None):
    """Runs ``stages`` (the config's ``stages:`` list) on a copy of ``model``; returns ``(new model, records)``.

    Args:
        model: a tf_keras model (Keras 3 models: bring them in with ``edgecomp.models.build`` or a run config).
        stages: e.g. ``[{"prune": {"sparsity": 0.8}}, {"quantize": {}}]``; defaults as in a config file.
        data: a ``Dataset`` (see ``dataset``); the stages fine-tune on its train split, judge on validation.
        seed: stage ``i`` runs with seed ``seed + i``, as the pipeline does.
        batch_size: the fine-tuning batch.
        log_dir: TensorBoard folder per stage; default: a temporary folder, removed afterwards.

    Returns:
        The compressed model (after ``quantize``, a QAT model: ``convert`` gives its int8 file) and one
        ``StageRecord`` per stage (what it did, what it skipped and why).

    Raises:
        ConfigError: a stage or key that does not exist, or values out of range.
    """
    from edgecomp import models
    from edgecomp import stages as stages_module
    from edgecomp._keras import keras

    cfg = config_module.from_dict({"seed": seed, "data": {"batch_size": batch_size}, "stages": list(stages)},
                                  source="compress(stages=...)")
    if not isinstance(data, Dataset):
        raise ConfigError("compress(data=...): expected a Dataset; build one with edgecomp.dataset(x, y)")
    current, records, previous = model, [], []
    with tempfile.TemporaryDirectory(prefix="edgecomp-logs-") as scratch:
        root = Path(log_dir) if log_dir is not None else Path(scratch)
        for index, item in enumerate(cfg.stages, start=1):
            kind, params = config_module.stage_kind(item), config_module.stage_params(item)
            context = stages_module.StageContext(cfg, data, root / f"{index:02d}_{kind}", tuple(previous))
            keras.utils.set_random_seed(seed + index)
            # Every stage gets a copy: tfmot wraps layer objects in place, and the caller keeps ``model``.
            current, record = stages_module.apply(kind, models.copy(current), params, context)
            records.append(record)
            if record.details.get("fallback"):
                continue
            filters = kind == "prune" and params.structure == "filters"
            previous.append("prune_filters" if filters else kind)
    return current, records


def _target_params(target: str, settings: dict):
    """The validated ``<Target>TargetConfig`` of ``target`` with ``settings`` (the config file's keys)."""
    if target not in config_module.TARGET_NAMES:
        raise ConfigError(f"target {target!r} does not exist; allowed: {', '.join(config_module.TARGET_NAMES)}")
    cfg = config_module.from_dict({"targets": [{target: settings}]}, source=f"target {target}")
    return config_module.stage_params(cfg.targets[0])


def convert(model, target: str = "cpu", *, calibration: Optional[np.ndarray] = None, **settings) -> bytes:
    """The ``.tflite`` bytes of ``model`` for ``target``, converted as a run converts them.

    Args:
        model: a tf_keras model (a QAT model from ``compress`` gives its int8 file).
        target: ``cpu``, ``gpu``, ``edgetpu`` or ``micro``.
        calibration: representative inputs for int8/int16x8 (a few hundred training samples).
        **settings: the target's config keys, e.g. ``quantization="float16"``, ``io="int8"``.

    Raises:
        ConfigError: an unknown target or key, or calibration missing where the quantization needs it.
        ModelError: the converter refused the model (the message names the op).
    """
    from edgecomp.targets import convert as converter
    from edgecomp.targets import micro

    params = _target_params(target, settings)
    if params.quantization in ("int8", "int16x8") and calibration is None:
        raise ConfigError(f"convert: {target} {params.quantization} needs calibration=<a few hundred input samples>")
    content = converter.convert(model, params.quantization, params.io,
                                None if calibration is None else np.asarray(calibration, np.float32),
                                static_batch=target in converter.BATCH_ONE_TARGETS)
    if target == "micro" and params.strip_strings:
        content = micro.strip_strings(content)
    return content


def verify(content: bytes, target: str, x: np.ndarray, y: np.ndarray, **settings) -> dict:
    """Checks a ``.tflite`` against ``target``'s rules and measures its accuracy by running it on ``(x, y)``.

    Args:
        content: the file's bytes (from ``convert`` or any converter).
        target: ``cpu``, ``gpu``, ``edgetpu`` or ``micro``.
        x, y: samples and labels to measure on (the test split).
        **settings: the target's config keys; for cpu, ``quantization`` is what the file should hold.

    Returns:
        ``{"ok", "rules": [{"rule", "ok", "detail"}, ...], "metrics": {"accuracy", "samples", ...},
        "details"}``: the same verdict and figures a run's report gives that target.
    """
    from edgecomp import runtime
    from edgecomp.targets import cpu, edgetpu, gpu, micro

    params = _target_params(target, settings)
    x, y = _xy(x, y, "verify(x, y)")
    skipped = []
    if target == "cpu":
        compatibility = cpu.verify(content, params.quantization, params.io)
        metrics = runtime.evaluate(content, x, y, where="verify") if compatibility["details"].get("rules") \
            and compatibility["details"]["rules"][0]["ok"] else {}
    elif target == "micro":
        compatibility, metrics = micro.verify(content, params, x, y)
    else:
        with tempfile.TemporaryDirectory(prefix="edgecomp-verify-") as folder:
            path = Path(folder) / "model.tflite"
            path.write_bytes(content)
            compatibility, metrics, skipped = (gpu if target == "gpu" else edgetpu).run(content, params, path, x, y)
    details = compatibility.get("details", {})
    return {"ok": bool(compatibility.get("ok")), "rules": details.get("rules", []), "metrics": metrics,
            "skipped": skipped, "details": details}


def benchmark(model: bytes | str | Path, device: str = "local", *, runs: int = 100, warmup: int = 10,
              threads: int = 1, inputs: Optional[np.ndarray] = None, **device_options) -> dict:
    """Times a ``.tflite`` (bytes or a path) on ``device``: ``local``, ``ssh://user@host`` or ``adb://SERIAL``.

    Returns:
        The device's record: ``latency_ms`` (mean, p50, p90, ...), ``init_ms``, ``peak_rss_mb``, ``delegate``,
        ``device_info`` and the per-run samples, as in a run's report.

    Raises:
        DeviceError: the device cannot be reached or the file does not run there.
    """
    from edgecomp.devices import open_device

    target = open_device(device, **device_options)
    if isinstance(model, (bytes, bytearray)):
        with tempfile.TemporaryDirectory(prefix="edgecomp-bench-") as folder:
            path = Path(folder) / "model.tflite"
            path.write_bytes(bytes(model))
            return target.benchmark(path, runs=runs, warmup=warmup, threads=threads, inputs=inputs)
    return target.benchmark(Path(model), runs=runs, warmup=warmup, threads=threads, inputs=inputs)
