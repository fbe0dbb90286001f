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

import json
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from edgecomp import config as config_module
from edgecomp.data import Dataset
from edgecomp.errors import ConfigError, DataError, ModelError

VALIDATION_SHARE = 0.1   # of the training arrays, when no validation arrays are given
TEST_SHARE = 0.2         # of the training arrays, when no test arrays are given


def dataset(x: np.ndarray, y: np.ndarray, *, x_val: Optional[np.ndarray] = None, y_val: Optional[np.ndarray] = None,
            x_test: Optional[np.ndarray] = None, y_test: Optional[np.ndarray] = None,
            num_classes: Optional[int] = None, seed: int = 0, name: str = "arrays",
            augment: Optional[dict] = None) -> Dataset:
    """A ``Dataset`` from arrays: the splits not given are held out of ``(x, y)``, stratified and seeded.

    Args:
        x, y: training samples (float32 after conversion) and integer class labels.
        x_val, y_val: validation split; default: 10 % of ``(x, y)``.
        x_test, y_test: test split; default: 20 % of ``(x, y)``.
        num_classes: default: the largest label + 1.
        seed: seed of the held-out splits.
        name: shown in logs and records.
        augment: ``train.augment``'s keys, e.g. ``{"shift": 0.1}``: every training ``compress`` runs on this
            dataset sees its training samples changed anew each epoch.

    Raises:
        DataError: shapes or labels that do not fit together.
        ConfigError: an unknown ``augment`` key or a value the data cannot take.
    """
    from edgecomp import data as data_module

    if not isinstance(seed, int) or seed < 0:
        raise DataError(f"dataset(seed=...): expected a non-negative integer; got {seed!r}")
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
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
        raise DataError(f"dataset(num_classes=...): expected an integer of at least 2; got {num_classes!r}")
    classes = int(num_classes if num_classes is not None else labels.max() + 1)
    if labels.min() < 0 or labels.max() >= classes:
        raise DataError(f"labels must lie in 0..{classes - 1} (num_classes {classes}); found {labels.min()}.."
                        f"{labels.max()}")
    if classes < 2 or len(np.unique(y)) < 2:
        raise DataError(f"the training labels hold {len(np.unique(y))} class(es): a classifier needs at least 2")
    built = Dataset(name, x, y, x_val, y_val, x_test, y_test, classes, preprocessing="the arrays as given")
    if augment is None:
        return built
    from edgecomp import augment as augmentation

    try:
        settings = config_module.from_dict({"train": {"augment": augment}}, source="dataset(augment=...)").train.augment
        return augmentation.attach(built, settings)
    except ConfigError as error:   # name the keyword the caller wrote
        raise ConfigError(str(error).replace("train.augment.", "augment.")) from None


def _samples(x, names: str) -> np.ndarray:
    """``x`` as a float32 batch ``(N, ...)`` of finite numbers, else DataError."""
    try:
        x = np.asarray(x, np.float32)
    except (TypeError, ValueError) as error:
        raise DataError(f"{names}: samples must be numbers ({error})") from None
    if x.ndim < 2:
        raise DataError(f"{names}: expected a batch of samples (N, ...); got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{names}: {int((~np.isfinite(x)).sum()):,} sample values are NaN or infinite")
    return x


def _xy(x, y, names: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _samples(x, names), np.asarray(y)
    if y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{names}: expected samples (N, ...) and labels (N,); got {x.shape} and {y.shape}")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not (np.isfinite(y).all() and np.all(y == np.round(y))
                                                                 and np.abs(y).max(initial=0) < 2**31)):
        raise DataError(f"{names}: labels must be integer class indices 0..C-1; got {y.dtype} values "
                        "(map class names to indices first, e.g. with np.unique(names, return_inverse=True))")
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
    from edgecomp import training
    from edgecomp import stages as stages_module
    from edgecomp._keras import ensure_tf_keras_model

    if not isinstance(stages, (list, tuple)):
        raise ConfigError(f"compress(stages=...): expected a list of maps such as [{{'prune': {{}}}}]; got "
                          f"{type(stages).__name__}")
    cfg = config_module.from_dict({"seed": seed, "data": {"batch_size": batch_size}, "stages": list(stages)},
                                  source="compress(stages=...)")
    if not isinstance(data, Dataset):
        raise ConfigError("compress(data=...): expected a Dataset; build one with edgecomp.dataset(x, y)")
    _check_model_fits(ensure_tf_keras_model(model, "compress(model=...)"), data.input_shape, data.num_classes)
    current, records, previous = model, [], []
    with tempfile.TemporaryDirectory(prefix="edgecomp-logs-") as scratch:
        root = Path(log_dir) if log_dir is not None else Path(scratch)
        for index, item in enumerate(cfg.stages, start=1):
            kind, params = config_module.stage_kind(item), config_module.stage_params(item)
            context = stages_module.StageContext(cfg, data, root / f"{index:02d}_{kind}", tuple(previous))
            # Every stage gets a copy (stages.run): tfmot wraps layer objects in place, and the caller keeps ``model``.
            current, record = stages_module.run(kind, current, params, context, seed=seed + index)
            records.append(record)
            if not record.details.get("fallback"):
                previous.append(stages_module.facts(kind, params).recorded_as)
    if current is not model and not getattr(current, "optimizer", None):
        training.compile_model(current, 0.001)   # ready for evaluate() like the model the caller gave
    return current, records


def _unfit_input(model, sample_shape: tuple) -> tuple | None:
    """The model's input shape when samples of ``sample_shape`` do not fit it (None dimensions fit any); else None."""
    if isinstance(model.input_shape, list):
        return None
    expected = tuple(model.input_shape[1:])
    fits = len(expected) == len(sample_shape) and all(e is None or e == d for e, d in zip(expected, sample_shape))
    return None if fits else expected


def _check_model_fits(model, input_shape: tuple, num_classes: int) -> None:
    """DataError when the model's input or output does not fit the data (before any training)."""
    expected = _unfit_input(model, tuple(input_shape))
    if expected is not None:
        raise DataError(f"the model takes samples of shape {expected}, the data has {tuple(input_shape)}: reshape "
                        "the data or add a Reshape/Flatten layer")
    outputs = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if outputs is not None and outputs != num_classes:
        raise DataError(f"the model has {outputs} outputs, the data {num_classes} classes")


def _target_params(target: str, settings: dict):
    """The validated ``<Target>TargetConfig`` of ``target`` with ``settings`` (the config file's keys)."""
    if target not in config_module.TARGET_NAMES:
        raise ConfigError(f"target {target!r} does not exist; allowed: {', '.join(config_module.TARGET_NAMES)}")
    try:
        cfg = config_module.from_dict({"targets": [{target: settings}]}, source=f"target {target}")
    except ConfigError as error:   # name the keyword the caller wrote, not its place in a config file
        raise ConfigError(str(error).replace(f"targets[0].{target}.", "")) from None
    if target == "micro":
        from edgecomp.targets import micro

        micro.require_tflm("target micro")
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
    from edgecomp import targets
    from edgecomp._keras import ensure_tf_keras_model

    params = _target_params(target, settings)
    model = ensure_tf_keras_model(model, "convert(model=...)")
    if params.quantization in ("int8", "int16x8") and (calibration is None or len(calibration) == 0):
        raise ConfigError(f"convert: {target} {params.quantization} needs calibration=<a few hundred input samples> "
                          "(a QAT model too: the converter reads its input range from them)")
    if calibration is not None:
        calibration = _samples(calibration, "convert(calibration=...)")
        expected = _unfit_input(model, calibration.shape[1:])
        if expected is not None:
            raise DataError(f"convert(calibration=...): samples of shape {calibration.shape[1:]}, the model takes "
                            f"{expected} (pass a batch: an array of shape (N, *{expected}))")
    content, _ = targets.convert_for(target, model, params, calibration)
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
    from edgecomp import targets

    params = _target_params(target, settings)
    content = _model_bytes(content, "verify")
    x, y = _xy(x, y, "verify(x, y)")
    _check_file_fits(content, x, y)
    with tempfile.TemporaryDirectory(prefix="edgecomp-verify-") as folder:
        path = Path(folder) / "model.tflite"   # the Edge TPU compiler and the GPU analyzer read a file
        path.write_bytes(content)
        compatibility, metrics, skipped = targets.module(target).judge(content, params, path, x, y)
        # Say "the file", not the temporary copy the target's tools ran on.
        compatibility = json.loads(json.dumps(compatibility, default=str).replace(str(path), "the file"))
    details = compatibility.get("details", {})
    return {"ok": bool(compatibility.get("ok")), "rules": details.get("rules", []), "metrics": metrics,
            "skipped": skipped, "details": details}


def _model_bytes(model, where: str) -> bytes:
    """The ``.tflite`` bytes of ``model`` (bytes, or a path to read); ModelError when they are not a TFLite model."""
    from edgecomp import runtime

    if isinstance(model, (str, Path)):
        return runtime.read_model(model)
    if not isinstance(model, (bytes, bytearray, memoryview)):
        raise ModelError(f"{where}: expected the .tflite file's bytes or its path; got {type(model).__name__}")
    content = bytes(model)
    runtime.check_model(content, f"{where}: the bytes")
    return content


def _check_file_fits(content: bytes, x: np.ndarray, y: np.ndarray) -> None:
    """DataError when the samples' shape or the labels do not fit the file's input and output."""
    from edgecomp import runtime

    io = runtime.io_details(content)
    expected = tuple(int(d) for d in io["inputs"][0]["shape"][1:])
    if expected != tuple(x.shape[1:]):
        raise DataError(f"the file takes samples of shape {expected}, the data has {tuple(x.shape[1:])}")
    outputs = int(io["outputs"][0]["shape"][-1])
    if len(y) and (y.min() < 0 or y.max() >= outputs):
        raise DataError(f"labels {y.min()}..{y.max()} do not fit the file's {outputs} outputs (classes 0.."
                        f"{outputs - 1})")


def benchmark(model: bytes | str | Path, device: str = "local", *, runs: int = 100, warmup: int = 10,
              threads: int = 1, inputs: Optional[np.ndarray] = None, ssh_options: Sequence[str] = (),
              adb_binary: Optional[str] = None) -> dict:
    """Times a ``.tflite`` (bytes or a path) on ``device``: ``local``, ``ssh://user@host`` or ``adb://SERIAL``.

    Returns:
        The device's record: ``latency_ms`` (mean, p50, p90, ...), ``init_ms``, ``peak_rss_mb``, ``delegate``,
        ``device_info`` and the per-run samples, as in a run's report.

    Raises:
        DeviceError: the device cannot be reached or the file does not run there.
    """
    from edgecomp.devices import open_device

    for name, value, lowest in (("runs", runs, 1), ("warmup", warmup, 0), ("threads", threads, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise ConfigError(f"benchmark({name}=...): expected an integer ≥ {lowest}; got {value!r}")
    content = _model_bytes(model, "benchmark")
    if inputs is not None:
        inputs = _samples(inputs, "benchmark(inputs=...)")
        _check_file_fits(content, inputs, np.zeros(0, np.int64))
    target = open_device(device, ssh_options=ssh_options, adb_binary=adb_binary)
    with tempfile.TemporaryDirectory(prefix="edgecomp-bench-") as folder:
        path = Path(folder) / "model.tflite"
        path.write_bytes(content)
        return target.benchmark(path, runs=runs, warmup=warmup, threads=threads, inputs=inputs)
