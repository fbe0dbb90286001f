"""Typed, strict configuration: YAML in, a frozen ``Config`` out.

Every key is declared here; an unknown key at any depth, a wrong type, a value out
of range or two keys that exclude each other raise ``ConfigError`` with one line
that names the dotted key, the value given, and what is allowed. This module does
not import TensorFlow, so a bad config is reported in a fraction of a second.

Example:
    >>> from edgecomp import config
    >>> cfg = config.load("configs/quickstart.yaml", ["train.epochs=3"])
    >>> cfg.train.epochs
    3
"""

from __future__ import annotations

import json
import re
import reprlib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from edgecomp.errors import ConfigError
from edgecomp.targets.profiles import BOARDS

STAGE_NAMES = ("distill", "low_rank", "prune", "cluster", "quantize")
TARGET_NAMES = ("cpu", "gpu", "edgetpu", "micro")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8", "int16x8")
# Kept equal to edgecomp.zoo.ARCHITECTURES by a test; listed here so that a bad
# zoo name is reported without importing TensorFlow.
ZOO_NAMES = ("digits_cnn", "mnist1d_cnn", "ds_cnn", "resnet8", "mobilenet_v2")

# Upper bounds of the numbers a config may hold. Each is far above what a real run
# uses; without them a value such as seed 2**32, timeout_s .inf or image_size
# [100000, 100000] passed validation and crashed later with a traceback or MemoryError.
MAX_SEED = 2**31 - 1  # stages and ensemble members seed from seed + a few thousand: NumPy takes < 2**32
MAX_IMAGE_SIDE = 4096
MAX_SAMPLES = 1_000_000
MAX_CLASSES = 10_000
MAX_BATCH_SIZE = 65_536
MAX_CALIBRATION_SAMPLES = 100_000
MAX_EPOCHS = 100_000
MAX_LEARNING_RATE = 10.0
MAX_TEMPERATURE = 1000.0
MAX_TIMEOUT_S = 86_400.0  # one day
MAX_RUNS = 1_000_000
MAX_THREADS = 1024
MAX_MULTIPLE = 4096  # rank_multiple, round_to: channel counts
MAX_COUNT = 2**31 - 1  # counts with no natural limit (weights, KB, test samples)
# float32 values of a data set generated in memory (digits upsampled, synthetic): 8 GiB.
MAX_GENERATED_VALUES = 2**31
DIGITS_SAMPLES = 1797  # scikit-learn's digits
ADB_SERIAL_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]*"  # whole string: re.fullmatch


class _Strict(BaseModel):
    # allow_inf_nan: every float key refuses .inf, -.inf and .nan.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


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


# ---- stages ----------------------------------------------------------------


class FeatureMatch(_Strict):
    """One feature-distillation term: MSE between a teacher and a student layer's outputs."""

    teacher: str = Field(..., min_length=1, description="teacher layer name")
    student: str = Field(..., min_length=1, description="student layer name (same spatial size; channels may differ)")
    weight: float = Field(1.0, gt=0.0, le=1e6)


class DistillConfig(_Strict):
    teacher: ModelSpec
    teacher_epochs: int = Field(100, ge=0, le=MAX_EPOCHS,
                                description="most epochs for a zoo/builder teacher, with the baseline's early stopping "
                                            "(a teacher from path is taken as trained)")
    temperature: float = Field(4.0, gt=0.0, le=MAX_TEMPERATURE)
    alpha: float = Field(0.1, ge=0.0, le=1.0, description="weight of the hard-label loss")
    epochs: int = Field(
        100, ge=0, le=MAX_EPOCHS,
        description="epochs of the distilled student and of the student alone (no early stopping: both get the "
                    "same); at 20, MNIST-1D students ended 0.87-0.92 on validation, at 100 0.95-0.98")
    learning_rate: float = Field(0.001, gt=0.0, le=MAX_LEARNING_RATE)
    student_init: Literal["scratch", "trained"] = Field(
        "scratch", description="scratch: fresh seeded weights (Hinton et al.); trained: the baseline-trained weights"
    )
    baseline_student: bool = Field(
        True, description="also train the student alone (same init, seed, epochs) and keep whichever scores higher "
                          "on the validation split; false trains only the distilled student")
    features: tuple[FeatureMatch, ...] = ()
    teacher_ensemble: int = Field(
        1, ge=1, le=16,
        description="train this many teachers from the teacher spec, each from its own seed, and distill from "
                    "their averaged probabilities",
    )

    @model_validator(mode="after")
    def _ensemble_is_trained_here(self):
        if self.teacher_ensemble > 1 and self.teacher.path:
            raise ValueError(f"teacher_ensemble: {self.teacher_ensemble} needs teachers trained here, from a zoo or "
                             "builder teacher; a teacher loaded from path is one model (set teacher_ensemble: 1)")
        if self.teacher_ensemble > 1 and self.teacher_epochs == 0:
            raise ValueError(f"teacher_ensemble: {self.teacher_ensemble} with teacher_epochs: 0 would average "
                             "untrained teachers; give teacher_epochs > 0")
        if self.teacher_ensemble > 1 and self.features:
            raise ValueError("features match the layers of one teacher; use them with teacher_ensemble: 1")
        return self


class LowRankConfig(_Strict):
    energy: Optional[float] = Field(None, gt=0.0, le=1.0, description="keep this share of Σ² (default 0.95)")
    rank_ratio: Optional[float] = Field(None, gt=0.0, le=1.0, description="rank = ratio × full rank")
    rank_multiple: int = Field(8, ge=1, le=MAX_MULTIPLE,
                               description="round ranks up to a multiple of this (SIMD-friendly)")
    mode: Literal["channel", "spatial"] = Field(
        "channel", description="channel: k×k C→r then 1×1 r→N; spatial (Conv2D): k×1 C→r then 1×k r→N"
    )
    min_params: int = Field(4096, ge=0, le=MAX_COUNT,
                            description="layers with fewer kernel weights are left as they are")
    layers: tuple[str, ...] = Field((), description="regexes of layer names to consider (default: all)")
    exclude: tuple[str, ...] = Field((), description="regexes of layer names to leave as they are")
    sensitivity: bool = Field(False, description="choose ranks greedily by measured accuracy drop")
    target_params_ratio: Optional[float] = Field(
        None, gt=0.0, lt=1.0, description="sensitivity: factorized layers' weights after/before"
    )
    finetune_epochs: int = Field(5, ge=0, le=MAX_EPOCHS)
    learning_rate: float = Field(0.0005, gt=0.0, le=MAX_LEARNING_RATE)
    recovery_epochs: int = Field(
        50, ge=0, le=MAX_EPOCHS,
        description="at most this many more epochs, with early stopping (patience 8, best weights of these epochs "
                    "restored), when validation accuracy after fine-tuning ended over 0.5 points below the "
                    "stage's input model's; 0 disables (so do 0 fine-tuning epochs)")

    @model_validator(mode="after")
    def _one_rank_rule(self):
        rules = [key for key in ("energy", "rank_ratio", "target_params_ratio") if getattr(self, key) is not None]
        if len(rules) > 1:
            raise ValueError(f"give one of energy, rank_ratio or target_params_ratio (got {' and '.join(rules)})")
        if self.sensitivity != (self.target_params_ratio is not None):
            raise ValueError("sensitivity: true needs target_params_ratio, and target_params_ratio needs "
                             "sensitivity: true")
        for pattern in (*self.layers, *self.exclude):
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"layers/exclude: {pattern!r} is not a regular expression ({error})") from None
        return self


class PruneConfig(_Strict):
    """Magnitude pruning: zeroed weights (unstructured, 2:4) or removed channels (filters)."""

    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="share of weights (or, for filters, of channels) removed")
    schedule: Literal["polynomial", "constant"] = "polynomial"
    structure: Literal["unstructured", "2:4", "filters"] = Field(
        "unstructured", description="unstructured | 2:4 (zeroed weights) | filters (whole channels removed)"
    )
    epochs: int = Field(10, ge=0, le=MAX_EPOCHS,
                        description="fine-tuning epochs; unstructured/2:4 prune during them (≥ 1)")
    learning_rate: float = Field(0.001, gt=0.0, le=MAX_LEARNING_RATE,
                                 description="Adam's learning rate while pruning and recovering")
    ramp_share: float = Field(0.75, gt=0.0, le=1.0, description="polynomial: share of steps ramping to sparsity")
    min_weights: int = Field(
        1024, ge=0, le=MAX_COUNT,
        description="unstructured: kernels with fewer weights are left dense (a first conv of 144 weights pruned "
                    "to 0.8 cost 2.2 points of 97.8 and saved 115 weights; skipping kernels under 1,024 made "
                    "prune 0.8 lossless there); 0 prunes every kernel")
    recovery_epochs: int = Field(
        50, ge=0, le=MAX_EPOCHS,
        description="unstructured/2:4: at most this many more epochs at full sparsity, with early stopping "
                    "(patience 8), when validation accuracy ended over 0.5 points below the unpruned model's; "
                    "filters: fine-tuning lasts up to epochs + recovery_epochs, with early stopping; 0 disables")
    criterion: Literal["l1", "l2"] = Field("l1", description="filters: channel ranking norm")
    scope: Literal["layer", "global", "sensitivity"] = Field(
        "sensitivity", description="filters: remove sparsity of each layer's channels (layer), rank all channels "
                             "together (global), or choose each layer's share by its measured validation loss for "
                             "the savings of layer (sensitivity, the default: on a tiny ViT at 0.5, -0.28 points "
                             "where layer lost 7.24)"
    )
    round_to: int = Field(8, ge=1, le=MAX_MULTIPLE,
                          description="filters: kept channels are a multiple of this (SIMD-friendly)")

    @model_validator(mode="after")
    def _epochs_for_structure(self):
        if self.structure != "filters" and self.epochs < 1:
            raise ValueError(
                f"epochs: {self.structure} pruning happens while fine-tuning, so epochs must be at least 1 "
                f"(got {self.epochs}); epochs 0 is allowed only with structure 'filters'"
            )
        return self


class ClusterConfig(_Strict):
    clusters: int = Field(16, ge=2, le=256)
    epochs: int = Field(3, ge=0, le=MAX_EPOCHS)
    learning_rate: float = Field(0.0001, gt=0.0, le=MAX_LEARNING_RATE)
    recovery_epochs: int = Field(
        50, ge=0, le=MAX_EPOCHS,
        description="at most this many more epochs, with early stopping (patience 8, best weights of these epochs "
                    "restored), when validation accuracy after fine-tuning ended over 0.5 points below the "
                    "stage's input model's; 0 disables (so do 0 fine-tuning epochs)")
    fold_batchnorm: bool = Field(
        False, description="fold each BatchNormalization into the Conv/Dense before it first, so the clustered "
                           "kernels are the ones the file stores (else the converter's fold scales each channel)"
    )


class QuantizeConfig(_Strict):
    epochs: int = Field(3, ge=0, le=MAX_EPOCHS)
    learning_rate: float = Field(0.0001, gt=0.0, le=MAX_LEARNING_RATE)
    distill_from: Optional[Literal["float"]] = Field(
        None, description="float: the float model teaches its quantized copy during QAT"
    )
    distill_temperature: float = Field(2.0, gt=0.0, le=MAX_TEMPERATURE)
    distill_alpha: float = Field(0.5, ge=0.0, le=1.0)
    weights: Literal["per_channel", "per_tensor"] = Field(
        "per_channel", description="Conv2D and DepthwiseConv2D weight quantization; per_tensor (after a cluster "
                                   "stage) keeps a kernel's shared values shared in the int8 file: at most "
                                   "`clusters` values per tensor"
    )


class DistillStage(_Strict):
    distill: DistillConfig


class LowRankStage(_Strict):
    low_rank: LowRankConfig = LowRankConfig()


class PruneStage(_Strict):
    prune: PruneConfig = PruneConfig()


class ClusterStage(_Strict):
    cluster: ClusterConfig = ClusterConfig()


class QuantizeStage(_Strict):
    quantize: QuantizeConfig = QuantizeConfig()


def _single_key(value: Any) -> Optional[str]:
    if isinstance(value, BaseModel):
        return next(iter(type(value).model_fields))
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    return None


Stage = Annotated[
    Union[
        Annotated[DistillStage, Tag("distill")],
        Annotated[LowRankStage, Tag("low_rank")],
        Annotated[PruneStage, Tag("prune")],
        Annotated[ClusterStage, Tag("cluster")],
        Annotated[QuantizeStage, Tag("quantize")],
    ],
    Discriminator(
        _single_key,
        custom_error_type="stage_item",
        custom_error_message="expected a map with exactly one key, one of: " + ", ".join(STAGE_NAMES),
    ),
]

# ---- targets ---------------------------------------------------------------


class _TargetBase(_Strict):
    io: Literal["float32", "int8", "uint8", "int16"] = Field(
        "float32", description="input/output type; quantized I/O needs the scale/zero-point in the report"
    )


class CpuTargetConfig(_TargetBase):
    quantization: Literal["float32", "float16", "dynamic", "int8", "int16x8"] = "int8"
    max_accuracy_drop: float = Field(
        1.0, ge=0.0, le=100.0, description="int8 without QAT: points of accuracy the conversion may lose against "
                                           "the float model it was given, before the guard repairs it"
    )
    fallback: Literal["none", "float"] = Field(
        "float", description="float: after recalibrating on more data, keep the layers whose fallback measurably "
                             "helps float until the drop is within max_accuracy_drop; none: recalibration only"
    )
    allow_over_budget: bool = Field(
        False, description="keep the run's exit status 0 when the int8 file is still over max_accuracy_drop "
                           "after repair (the report still says so)"
    )

    @model_validator(mode="after")
    def _io_fits_quantization(self):
        allowed = {"int8": ("float32", "int8", "uint8"), "int16x8": ("float32", "int16")}
        ok = allowed.get(self.quantization, ("float32",))
        if self.io not in ok:
            raise ValueError(
                f"io {self.io!r} does not fit quantization {self.quantization!r}; allowed: {', '.join(ok)}"
            )
        return self


class GpuTargetConfig(_TargetBase):
    quantization: Literal["float16", "float32", "int8"] = Field(
        "float16", description="float16: the GPU's native format; int8: the delegate dequantizes it to float"
    )
    strict: bool = Field(False, description="fail unless the GPU delegate would take the whole graph (default: ops "
                                            "it refuses run on the CPU, reported as warnings with the figures)")

    @model_validator(mode="after")
    def _io_fits_quantization(self):
        ok = ("float32", "int8", "uint8") if self.quantization == "int8" else ("float32",)
        if self.io not in ok:
            raise ValueError(
                f"io {self.io!r} does not fit quantization {self.quantization!r}; allowed: {', '.join(ok)}"
            )
        return self


class EdgeTpuTargetConfig(_Strict):
    quantization: Literal["int8"] = "int8"
    io: Literal["int8", "uint8"] = Field("int8", description="input/output type; the Edge TPU computes on 8 bits")
    compiler: str = Field("edgetpu_compiler", min_length=1,
                          description="Coral's compiler, run when on PATH (name or path); its absence is reported")
    compiler_timeout_s: float = Field(180.0, gt=0.0, le=MAX_TIMEOUT_S,
                                      description=f"seconds edgetpu_compiler may run, at most {MAX_TIMEOUT_S:.0f}")


class MicroTargetConfig(_Strict):
    quantization: Literal["int8"] = "int8"
    io: Literal["int8"] = "int8"
    board: str = Field("cortex_m4_256k", description="named budget: " + ", ".join(BOARDS))
    flash_kb: Optional[int] = Field(None, ge=1, le=MAX_COUNT, description="overrides the board's flash budget")
    ram_kb: Optional[int] = Field(None, ge=1, le=MAX_COUNT, description="overrides the board's RAM budget")
    test_samples: Optional[int] = Field(None, ge=1, le=MAX_COUNT, description="test samples run in TFLM (default: all)")
    strip_strings: bool = Field(True, description="drop tensor names and signatures, which TFLM never reads, "
                                                  "from the file (about 100 bytes a tensor of flash)")
    build: dict[Literal["host", "cortex_m4"], str] = Field(
        default_factory=dict,
        description="build the micro project and run its test samples: {host: TFLM tree} with g++, "
                    "{cortex_m4: TFLM tree} with arm-none-eabi-gcc, run under qemu-system-arm; each tree is a "
                    "create_tflm_tree.py export. The micro checks then use the build's flash and 32-bit arena")

    @model_validator(mode="after")
    def _board_known(self):
        if self.board not in BOARDS:
            raise ValueError(f"board {self.board!r} is unknown; allowed: {', '.join(BOARDS)} "
                             "(or give flash_kb and ram_kb)")
        for target, tree in self.build.items():
            if not (Path(tree).expanduser() / "tensorflow/lite/micro/micro_interpreter.h").is_file():
                raise ValueError(f"build.{target}: {tree!r} is not a TFLM source tree (no "
                                 "tensorflow/lite/micro/micro_interpreter.h); export one with tflite-micro's "
                                 "create_tflm_tree.py")
        return self

    @property
    def budget(self) -> tuple[int, int]:
        """(flash_kb, ram_kb): the board's, overridden by flash_kb/ram_kb."""
        board = BOARDS[self.board]
        return self.flash_kb or board.flash_kb, self.ram_kb or board.ram_kb


class CpuTarget(_Strict):
    cpu: CpuTargetConfig = CpuTargetConfig()


class GpuTarget(_Strict):
    gpu: GpuTargetConfig = GpuTargetConfig()


class EdgeTpuTarget(_Strict):
    edgetpu: EdgeTpuTargetConfig = EdgeTpuTargetConfig()


class MicroTarget(_Strict):
    micro: MicroTargetConfig = MicroTargetConfig()


Target = Annotated[
    Union[
        Annotated[CpuTarget, Tag("cpu")],
        Annotated[GpuTarget, Tag("gpu")],
        Annotated[EdgeTpuTarget, Tag("edgetpu")],
        Annotated[MicroTarget, Tag("micro")],
    ],
    Discriminator(
        _single_key,
        custom_error_type="target_item",
        custom_error_message="expected a map with exactly one key, one of: " + ", ".join(TARGET_NAMES),
    ),
]


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


class Config(_Strict):
    """The whole run configuration.

    ``Config(**values)`` and ``from_dict(values)`` validate alike: a bad key or value raises
    ``ConfigError`` naming it (never pydantic's ``ValidationError``).
    """

    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: int = Field(0, ge=0, le=MAX_SEED, description=f"0..{MAX_SEED} (2**31 - 1)")
    output_dir: str = "models"
    data: DataConfig = DataConfig()
    model: ModelSpec = ModelSpec(zoo="digits_cnn")
    train: TrainConfig = TrainConfig()
    stages: tuple[Stage, ...] = ()
    targets: tuple[Target, ...] = (CpuTarget(),)
    benchmark: BenchmarkConfig = BenchmarkConfig()
    distribute: DistributeConfig = DistributeConfig()

    def __init__(self, **values):
        # Only the top level: pydantic calls a custom __init__ for nested models too, which would lose the path.
        # ``from_dict`` (model_validate) comes through here as well and puts the file's name in front.
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ConfigError(format_validation_error(error)) from None

    @model_validator(mode="after")
    def _stages_and_targets_fit_together(self):
        kinds = [stage_kind(item) for item in self.stages]
        if "distill" in kinds and kinds.index("distill") != 0:
            raise ValueError(f"stages[{kinds.index('distill')}].distill: distillation must be the first stage "
                             "(it retrains the student's weights); move it before the others")
        for later in ("prune", "cluster"):
            if "low_rank" in kinds and later in kinds[:kinds.index("low_rank")]:
                raise ValueError(f"stages[{kinds.index('low_rank')}].low_rank: low-rank rewriting replaces the "
                                 f"kernels {later} produced; move it before {later}")
        if "quantize" in kinds and stage_params(self.stages[kinds.index("quantize")]).weights == "per_tensor" \
                and "cluster" not in kinds:
            raise ValueError(f"stages[{kinds.index('quantize')}].quantize.weights: per_tensor is for clustered models "
                             "(one scale for a kernel's shared values); add a cluster stage before it, or use "
                             "per_channel")
        if "quantize" in kinds and kinds.index("quantize") != len(kinds) - 1:
            raise ValueError(f"stages[{kinds.index('quantize')}].quantize: quantization-aware training must be "
                             "the last stage; move it after the others")
        seen = set()
        for index, item in enumerate(self.targets):
            kind = stage_kind(item)
            if kind in seen:
                raise ValueError(f"targets[{index}].{kind}: each target may appear once")
            seen.add(kind)
            quantization = stage_params(item).quantization
            if "quantize" in kinds and quantization != "int8":
                raise ValueError(
                    f"targets[{index}].{kind}.quantization: {quantization} cannot follow a quantize stage: "
                    "quantization-aware training makes an int8 model, and the converter writes its learned ranges "
                    "into any file made from it; use quantization: int8"
                    + (" (the GPU delegate dequantizes it)" if kind == "gpu" else "")
                    + ", or drop the quantize stage"
                )
        return self

    @property
    def run_dir(self) -> Path:
        """The folder this run writes to: ``<output_dir>/<name>``."""
        return Path(self.output_dir) / self.name


def stage_kind(item: BaseModel) -> str:
    """The single key of a stage or target item, e.g. ``"prune"``."""
    return next(iter(type(item).model_fields))


def stage_params(item: BaseModel) -> BaseModel:
    """The parameters of a stage or target item, e.g. its ``PruneConfig``."""
    return getattr(item, stage_kind(item))


# ---- loading ---------------------------------------------------------------


def load(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Reads a YAML config, applies ``key.path=value`` overrides, validates it.

    Args:
        path: the YAML file.
        overrides: ``"a.b=value"`` strings; values are parsed as YAML, list items
            are addressed by index (``stages.0.prune.sparsity=0.5``).

    Returns:
        The frozen, validated ``Config``.

    Raises:
        ConfigError: one line naming the file or key, the value and what is allowed.
    """
    raw = read_yaml(path)
    for override in overrides:
        apply_override(raw, override)
    return from_dict(raw, source=str(path))


def read_yaml(path: str | Path) -> dict:
    """The top-level map of a YAML config file (safe YAML, bounded), not yet validated.

    Raises:
        ConfigError: the file is missing, unreadable, larger than ``MAX_CONFIG_BYTES``,
            not YAML, a YAML bomb or otherwise refused by ``parse_yaml``, empty or not a map.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file to --config")
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a directory; pass a YAML file to --config")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file is (/dev/zero too)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: the config file is larger than {MAX_CONFIG_BYTES // 1024} KiB, the limit "
                              "for a config (they take a few KiB); is this the right file?")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {_short_text(str(error), 200)}") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raise ConfigError(f"{path}: the config file is empty; start from configs/quickstart.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a map of keys (name, data, model, ...), got a {_kind(raw)}")
    return raw


# What a config may hold. Real configs have a few dozen values, a handful of levels,
# rarely an alias; the bounds stop "billion laughs" alias bombs (a few hundred bytes
# that expand to 10⁹ values), deep nesting and huge files before any of it is built,
# rendered or validated.
MAX_CONFIG_BYTES = 1 << 20
MAX_YAML_ALIASES = 100
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


class _Refused(Exception):
    """A YAML document the bounded loader refuses; the message says why (and where)."""


class _BoundedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """``yaml.safe_load``'s loader (libyaml when available) that also refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # "<<: *base" then keys that override it: YAML's merge, not a duplicate
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: the base class reports it
                if first is not None:
                    raise _Refused(f"duplicate key {_short(key)} at line {line} (first at line {first}); "
                                   "each key may appear once in a map")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _check_yaml_graph(root: yaml.Node) -> None:
    """Refuses a composed YAML graph whose aliases would expand too far, without expanding it.

    Walks the node graph once, iteratively, in document order: a node reached again
    is an alias and counts the expanded size of its anchor (memoized when the anchor
    was finished), an alias inside its own anchor is a cycle. The running count of
    expanded values stops the walk as soon as it passes ``MAX_YAML_VALUES``.
    """
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, height)
    open_nodes: set[int] = set()
    aliases = total = 0
    stack: list = [(root, None)]
    while stack:
        node, children = stack.pop()
        key = id(node)
        if children is not None:  # all children done: memoize this node's size and height
            open_nodes.discard(key)
            height = 1 + max((sizes[id(child)][1] for child in children), default=0)
            if height > MAX_YAML_DEPTH:
                raise _Refused(f"the YAML at line {node.start_mark.line + 1} nests more than {MAX_YAML_DEPTH} "
                               "levels deep" + (" once its aliases (*name) are expanded" if aliases else ""))
            sizes[key] = (1 + sum(sizes[id(child)][0] for child in children), height)
            continue
        if key in sizes:
            aliases += 1
            total += sizes[key][0]
            if aliases > MAX_YAML_ALIASES:
                raise _Refused(f"more than {MAX_YAML_ALIASES} YAML aliases (*name), the {aliases}th at line "
                               f"{node.start_mark.line + 1}; a config needs few, if any: write the values out")
        elif key in open_nodes:
            raise _Refused(f"the YAML alias at line {node.start_mark.line + 1} refers to a node that contains it "
                           "(a cycle)")
        else:
            total += 1
            if isinstance(node, yaml.ScalarNode):
                sizes[key] = (1, 1)
            else:
                children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) \
                    else node.value
                open_nodes.add(key)
                stack.append((node, children))
                stack.extend((child, None) for child in reversed(children))
        if total > MAX_YAML_VALUES:
            raise _Refused(f"the YAML expands to more than {MAX_YAML_VALUES} values"
                           + (f" through its aliases (*name), a YAML alias bomb (the {aliases}th at line "
                              f"{node.start_mark.line + 1})" if aliases else "")
                           + "; a config needs far fewer")


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` with bounds: size, aliases, expanded values, depth, duplicate keys.

    Args:
        text: the YAML document.
        source: what to call it in errors: the file path, or ``--set key``.

    Raises:
        ConfigError: one line naming ``source``: a syntax error (with its line), or what
            was refused and the limit.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: the YAML is longer than {MAX_CONFIG_BYTES // 1024} KiB, the limit for a config")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_graph(node)
        return loader.construct_document(node)
    except _Refused as refused:
        raise ConfigError(f"{source}: {refused}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{source}: YAML syntax error{where}: {_short_text(problem, 200)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML nests more than {MAX_YAML_DEPTH} levels deep") from None
    except (ValueError, OverflowError) as error:  # e.g. an integer of 5,000 digits, a 30 February
        raise ConfigError(f"{source}: a YAML value cannot be read: {_short_text(str(error), 200)}") from None
    finally:
        loader.dispose()


def from_dict(raw: dict, source: str = "config") -> Config:
    """Validates a plain dict (as read from YAML) into a ``Config``."""
    if isinstance(raw, dict) and "base" in raw and "data" not in raw:
        tool = "search" if "search" in raw else "study"
        raise ConfigError(f"{source}: this is a {tool} file (it has base:), not a run config; run it with "
                          f"python -m edgecomp.{tool} --config {source}")
    try:
        return Config.model_validate(raw)
    except ValidationError as error:        # not a map at all: pydantic refuses it before Config.__init__
        raise ConfigError(f"{source}: {format_validation_error(error)}") from None
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def apply_override(raw: dict, override: str) -> None:
    """Applies one ``dotted.key=value`` override to the raw config dict in place."""
    if "=" not in override:
        raise ConfigError(f"--set {_short(override)}: expected key=value, e.g. --set train.epochs=3")
    key, _, text = override.partition("=")
    key = key.strip().replace("[", ".").replace("]", "")
    parts = [p for p in key.split(".") if p]
    if not parts:
        raise ConfigError(f"--set {_short(override)}: the key is empty")
    if len(key) > 200:
        raise ConfigError(f"--set {_short(key)}: the key is longer than 200 characters")
    value = parse_yaml(text, f"--set {key}") if text.strip() else None
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"--set {key}: {where!r} must be a list index below {len(node)}, got {_short(part)}"
                )
            index = int(part)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])!r} is a {_kind(node)}, not a map or list")


def format_validation_error(error: ValidationError) -> str:
    """Turns pydantic's error into one line: dotted key, value, what is allowed."""
    errors = error.errors(include_url=False)
    first = errors[0]
    loc = _clean_loc(first["loc"])
    dotted = _dotted(loc)
    kind = first["type"]
    value = first.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        message = f"unknown key '{dotted}'" + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "")
    elif kind == "missing":
        message = f"{dotted}: required key is missing"
    else:
        text = first["msg"].replace("a valid tuple", "a list")
        if text.startswith("Value error, "):
            text = text[len("Value error, ") :]
        message = f"{dotted}: {text}" if dotted else text
        if kind not in ("value_error", "assertion_error") or not isinstance(value, (dict, list)):
            if dotted:
                message += f" (got {_short(value)})"
        if kind in ("finite_number", "int_parsing_size"):  # .inf, .nan, 1e300: say what the key takes
            allowed = _allowed_range(loc)
            message += f"; allowed: {allowed}" if allowed else ""
    if len(message) > 500:  # a validator's message can quote a long user value
        message = message[:497] + "..."
    if len(errors) > 1:
        message += f" [and {len(errors) - 1} more error(s)]"
    return message


def _clean_loc(loc: tuple) -> tuple:
    # Tagged unions add the tag to the location: ('stages', 0, 'prune', 'prune', ...).
    cleaned: list = []
    for part in loc:
        if cleaned and part == cleaned[-1] and isinstance(part, str):
            continue
        cleaned.append(part)
    return tuple(cleaned)


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            # Keys come from the user's file: escape newlines and control characters.
            text += ("." if text else "") + _short_text(str(part), 60).encode("unicode_escape").decode("ascii")
    return text


def _allowed_keys(loc: tuple) -> list[str]:
    node = _unwrap(_declared(loc)[0])
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return []


def _declared(loc: tuple) -> tuple[Any, list]:
    """What the schema declares at ``loc``: (annotation, constraint metadata); (None, []) where nothing is."""
    node: Any = Config
    metadata: list = []
    for part in loc:
        node = _unwrap(node)
        if isinstance(part, int):
            args = typing.get_args(node)
            node = args[0] if args else None
            metadata = []
            continue
        if isinstance(node, type) and issubclass(node, BaseModel) and part in node.model_fields:
            owner = node
        else:
            match = [m for m in _union_members(node) if part in m.model_fields]
            if not match:
                return None, []
            owner = match[0]
        node = owner.model_fields[part].annotation
        metadata = list(owner.model_fields[part].metadata)
    inner = node
    while typing.get_origin(inner) is Union and type(None) in typing.get_args(inner):
        inner = next(a for a in typing.get_args(inner) if a is not type(None))   # Optional[X] -> X
    for item in (typing.get_args(inner)[1:] if typing.get_origin(inner) is Annotated else ()):
        metadata.extend(getattr(item, "metadata", [item]))   # Annotated[int, Field(ge=1)]: Field's bounds
    return node, metadata


def _allowed_range(loc: tuple) -> str:
    """The bounds declared for the number at ``loc``, e.g. "a finite number > 0 and <= 86400"; "" if none."""
    annotation, metadata = _declared(loc)
    if typing.get_origin(_unwrap(annotation)) is Literal:
        return "one of " + ", ".join(str(value) for value in typing.get_args(_unwrap(annotation)))
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    bounds = []
    for item in metadata:
        for name, symbol in symbols.items():
            bound = getattr(item, name, None)
            if bound is not None:
                bounds.append(f"{symbol} {bound:g}" if isinstance(bound, float) else f"{symbol} {bound}")
    if not bounds:
        return ""
    kind = "an integer" if _unwrap(annotation) is int else "a finite number"
    return f"{kind} " + " and ".join(bounds)


def _unwrap(node: Any) -> Any:
    while True:
        origin = typing.get_origin(node)
        if origin is Annotated:
            node = typing.get_args(node)[0]
        elif origin is Union:
            args = [a for a in typing.get_args(node) if a is not type(None)]
            if len(args) == 1:
                node = args[0]
            else:
                return node
        else:
            return node


def _union_members(node: Any) -> list:
    if typing.get_origin(node) is not Union:
        return []
    return [m for m in (_unwrap(a) for a in typing.get_args(node)) if isinstance(m, type) and issubclass(m, BaseModel)]


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = 6


def _short(value: Any) -> str:
    """A user value for an error message: at most 80 characters, and never the whole value rendered first.

    ``reprlib`` looks at no more than 6 items on each of 3 levels, and cuts long
    strings before quoting them, so an alias bomb, a huge list or a 1 MiB string
    cost microseconds here.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails: name its type
        text = f"<{type(value).__name__}>"
    return _short_text(text, 80)


def _short_text(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    return {list: "list", dict: "map", str: "string"}.get(type(value), type(value).__name__)


# ---- writing ---------------------------------------------------------------


def to_dict(cfg: Config) -> dict:
    """The config as plain data, with every default filled in."""
    return cfg.model_dump(mode="json")


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, as saved next to the run's outputs."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


def json_schema() -> dict:
    """JSON Schema of the config file, for editors (``configs/schema.json``)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "edgecomp config"
    return schema


def write_schema(path: str | Path) -> None:
    """Writes ``json_schema()`` to ``path`` (keeps ``configs/schema.json`` current)."""
    Path(path).write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")
