"""The run's sections other than stages and targets: data, model, train, distribute, benchmark."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, model_validator

from edgecomp.config.base import (
    ADB_SERIAL_PATTERN,
    DIGITS_SAMPLES,
    MAX_BATCH_SIZE,
    MAX_CALIBRATION_SAMPLES,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_GENERATED_VALUES,
    MAX_IMAGE_SIDE,
    MAX_LEARNING_RATE,
    MAX_RUNS,
    MAX_SAMPLES,
    MAX_THREADS,
    MAX_TIMEOUT_S,
    ZOO_NAMES,
    _Strict,
)


class DataConfig(_Strict):
    """Where the data comes from and how it is split."""

    source: Literal["digits", "mnist1d", "npz", "image_dir", "synthetic"] = "digits"
    path: Optional[str] = Field(None, description="npz file or image_dir folder")
    image_size: Optional[tuple[Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)],
                               Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]]] = Field(
        None, description=f"image_dir (required), synthetic and digits (bilinear upsampling): [height, width], "
                          f"each 1..{MAX_IMAGE_SIDE}; digits and synthetic data, generated in memory, may hold at "
                          f"most {MAX_GENERATED_VALUES:,} values (samples x height x width x channels)"
    )
    channels: Optional[Literal[1, 3]] = Field(
        None, description="image_dir, synthetic and digits: 1 or 3 (digits: the gray image replicated)"
    )
    num_classes: Optional[Annotated[int, Field(ge=2, le=MAX_CLASSES)]] = Field(None, description="synthetic only")
    samples: Optional[Annotated[int, Field(ge=20, le=MAX_SAMPLES)]] = Field(None, description="synthetic only")
    validation_split: float = Field(0.1, ge=0.0, lt=1.0)
    test_split: float = Field(
        0.2, gt=0.0, lt=1.0, description="share held out for testing where the source has no test split"
    )
    batch_size: int = Field(64, ge=1, le=MAX_BATCH_SIZE)
    calibration_samples: int = Field(200, ge=1, le=MAX_CALIBRATION_SAMPLES, description="representative dataset size")

    @model_validator(mode="after")
    def _check_source_keys(self):
        if self.source in ("npz", "image_dir") and not self.path:
            raise ValueError(f"path is required when source is {self.source!r}")
        if self.source not in ("npz", "image_dir") and self.path:
            raise ValueError(f"path is used only with source npz or image_dir, not {self.source!r}")
        if self.image_size is not None and self.source not in ("image_dir", "synthetic", "digits"):
            raise ValueError("image_size is used only with source image_dir, synthetic or digits")
        if self.source == "image_dir" and self.image_size is None:
            raise ValueError("image_size is required when source is 'image_dir', e.g. [96, 96]")
        for key in ("num_classes", "samples"):
            if getattr(self, key) is not None and self.source != "synthetic":
                raise ValueError(f"{key} is used only with source synthetic")
        self._check_generated_size()
        return self

    def _check_generated_size(self) -> None:
        """Refuses digits or synthetic data that would not fit in memory (``MAX_GENERATED_VALUES``)."""
        if self.source not in ("digits", "synthetic"):
            return
        samples = DIGITS_SAMPLES if self.source == "digits" else self.samples or 400
        height, width = self.image_size or (8, 8)
        channels = self.channels or 1
        values = samples * height * width * channels
        if values > MAX_GENERATED_VALUES:
            raise ValueError(
                f"{self.source} data of {samples} samples at image_size [{height}, {width}] with {channels} "
                f"channel(s) is {values:,} float32 values ({values * 4 / 2**30:.0f} GiB), over the "
                f"{MAX_GENERATED_VALUES:,} ({MAX_GENERATED_VALUES * 4 >> 30} GiB) edgecomp generates in memory; "
                "choose a smaller image_size" + (" or fewer samples" if self.source == "synthetic" else ""))


class ModelSpec(_Strict):
    """A model: exactly one of ``zoo``, ``path`` or ``builder``."""

    zoo: Optional[str] = Field(None, description="built-in architecture, see edgecomp.zoo")
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for zoo or builder")
    path: Optional[str] = Field(None, description="tf_keras model file (.keras, .h5, SavedModel dir)")
    builder: Optional[str] = Field(None, description="'package.module:function' returning a tf_keras model")
    trust: bool = Field(False, description="allow loading model files with Lambda layers / custom code")

    @model_validator(mode="after")
    def _exactly_one_source(self):
        given = [k for k in ("zoo", "path", "builder") if getattr(self, k)]
        if len(given) != 1:
            got = "none" if not given else " and ".join(given)
            raise ValueError(f"give exactly one of zoo, path or builder (got {got})")
        if self.zoo and self.zoo not in ZOO_NAMES:
            raise ValueError(f"zoo {self.zoo!r} is not a built-in architecture; allowed: {', '.join(ZOO_NAMES)}")
        if self.builder and ":" not in self.builder:
            raise ValueError(f"builder must look like 'package.module:function', got {self.builder!r}")
        if self.path and self.args:
            raise ValueError("args apply to zoo or builder, not to a model path")
        return self


class AugmentConfig(_Strict):
    """Random changes to every training sample, drawn anew each epoch; validation and test data are never changed.

    Applied to every training of the run: the baseline, each stage's fine-tuning and
    recovery, distillation (teacher and students) and QAT.
    """

    shift: float = Field(
        0.0, ge=0.0, le=0.5,
        description="largest shift along each spatial axis (height and width of an image, the steps of a "
                    "sequence) as a share of its length, e.g. 0.1; shifted-in values are zeros")
    flip: bool = Field(False, description="mirror images left-right at random (samples of shape (h, w, c) only; "
                                          "not for digits, text or anything whose mirror image is another class)")
    noise: float = Field(0.0, ge=0.0, le=1.0,
                         description="add Gaussian noise of this many standard deviations of the training data")


class TrainConfig(_Strict):
    """Baseline training; ``epochs: 0`` keeps the given weights."""

    epochs: int = Field(
        100, ge=0, le=MAX_EPOCHS,
        description="most epochs; early stopping usually ends training before (the default 20 of earlier versions "
                    "left MNIST-1D models at 0.62-0.78 accuracy, still improving; trained on, 0.92-0.95)")
    learning_rate: float = Field(0.001, gt=0.0, le=MAX_LEARNING_RATE)
    early_stopping_patience: int = Field(
        5, ge=0, le=MAX_EPOCHS,
        description="epochs without val_loss improvement before stopping; 0 disables (epochs while validation "
                    "accuracy is near chance count none)"
    )
    stop_if_not_learned: bool = Field(
        True, description="stop the run (exit 1) when the float model's test accuracy is near chance "
                          "(within a tenth of the way from the majority class share to 1)"
    )
    augment: Optional[AugmentConfig] = Field(
        None, description="random shifts, flips or noise for every training of the run (baseline, stages, "
                          "distillation, QAT); off by default")


class DistributeConfig(_Strict):
    """Where training runs: one process (``none``), several local devices, or several hosts.

    ``data.batch_size`` is the global batch: each of the N replicas gets
    ``batch_size / N`` samples per step. Learning rates are never scaled here.
    """

    strategy: Literal["none", "mirrored", "multi_worker"] = Field(
        "none", description="none: one device, as without this section; mirrored: tf.distribute.MirroredStrategy "
                            "on this host's devices; multi_worker: tf.distribute.MultiWorkerMirroredStrategy, "
                            "cluster and task read from the TF_CONFIG environment variable")
    devices: Optional[tuple[Annotated[str, Field(min_length=1)], ...]] = Field(
        None, min_length=1,
        description="mirrored only: the devices to train on, e.g. ['/gpu:0', '/gpu:1'] (default: all GPUs, "
                    "else the CPU)")

    @model_validator(mode="after")
    def _devices_only_with_mirrored(self):
        if self.devices is not None and self.strategy != "mirrored":
            raise ValueError(f"devices applies to strategy 'mirrored' only (strategy is {self.strategy!r}); "
                             "remove devices or set strategy: mirrored")
        for device in self.devices or ():
            if not re.fullmatch(r"/?(job:[a-z]+/(replica:\d+/)?(task:\d+/)?)?(device:)?(cpu|gpu|CPU|GPU):\d+",
                                device):
                raise ValueError(f"device {device!r} is not a TensorFlow device name; expected e.g. "
                                 "'/gpu:0' or '/cpu:0'")
        return self



class BenchmarkConfig(_Strict):
    devices: tuple[str, ...] = ("local",)
    runs: int = Field(100, ge=1, le=MAX_RUNS)
    warmup: int = Field(10, ge=0, le=MAX_RUNS)
    threads: tuple[Annotated[int, Field(ge=1, le=MAX_THREADS)], ...] = (1,)
    timeout_s: float = Field(600.0, gt=0.0, le=MAX_TIMEOUT_S,
                             description=f"per device and model, at most {MAX_TIMEOUT_S:.0f} (one day)")
    ssh_options: tuple[str, ...] = Field((), description="extra ssh/scp options, e.g. ['-i', '~/.ssh/pi_key']")
    adb_binary: Optional[str] = Field(
        None, description="adb:// devices: path here to TFLite's benchmark_model built for the phone's ABI "
                          "(edgecomp cannot ship it)")
    adb_delegate: Literal["xnnpack", "gpu", "nnapi", "none"] = Field(
        "xnnpack", description="adb:// devices: the delegate benchmark_model is asked for; the report records the "
                               "one it says it applied")
    adb_cpu_mask: Optional[str] = Field(
        None, pattern=r"^[0-9a-fA-F]{1,16}$",
        description="adb:// devices: taskset CPU mask in hex, e.g. f0 for the big cores of many phones")

    @model_validator(mode="after")
    def _devices_known(self):
        for device in self.devices:
            if device.startswith("adb://"):
                if not re.fullmatch(ADB_SERIAL_PATTERN, device[len("adb://"):]):
                    raise ValueError(f"device {device!r}: expected adb://SERIAL with the serial `adb devices` "
                                     "prints, e.g. adb://R58M123 or adb://192.168.1.5:5555")
                if not self.adb_binary:
                    raise ValueError(f"device {device!r} needs benchmark.adb_binary: the path to TFLite's "
                                     "benchmark_model built for the phone")
            elif device != "local" and not device.startswith("ssh://"):
                raise ValueError(
                    f"device {device!r} is not available in this version; "
                    "allowed: local, ssh://user@host[:port], adb://SERIAL"
                )
        return self


class MetadataConfig(_Strict):
    """What the ``.tflite`` files say about themselves (TFLite metadata: labels, normalization, description)."""

    write: bool = Field(True, description="write TFLite metadata into every file but micro's (labels.txt packed "
                                          "in the file, input normalization, image kind, description); false "
                                          "leaves the converter's bytes as they are")
    description: str = Field("", max_length=1000, description="what the model does; default: one made from the "
                                                               "data, the target and the quantization")
    version: str = Field("", max_length=100, description="the model's version, as its maker numbers it")
    author: str = Field("", max_length=200)
    license: str = Field("", max_length=200)

