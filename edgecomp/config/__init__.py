"""Typed, strict configuration: YAML in, a frozen ``Config`` out.

Every key is declared in this package; an unknown key at any depth, a wrong type, a
value out of range or two keys that exclude each other raise ``ConfigError`` with one
line that names the dotted key, the value given, and what is allowed. The package
does not import TensorFlow, so a bad config is reported in a fraction of a second.

Modules:
    base: the names of stages, targets and zoo models, the bounds of numbers, the strict base model.
    sections: data, model, train (and its augment), distribute and benchmark.
    stages: the compression stages' parameters and ``Stage``, an item of ``stages:``.
    targets: the deployment targets' parameters and ``Target``, an item of ``targets:``.
    run: ``Config``, the whole run; ``stage_kind``/``stage_params``; ``to_dict``, ``to_yaml``, the JSON schema.
    messages: pydantic's validation error as one line naming the key.
    loading: the bounded YAML parser, ``--set`` overrides, ``load`` and ``from_dict``.

Every name is importable from ``edgecomp.config`` itself.

Example:
    >>> from edgecomp import config
    >>> cfg = config.load("configs/quickstart.yaml", ["train.epochs=3"])
    >>> cfg.train.epochs
    3
"""

from edgecomp.config.base import (
    ADB_SERIAL_PATTERN,
    DIGITS_SAMPLES,
    MAX_BATCH_SIZE,
    MAX_CALIBRATION_SAMPLES,
    MAX_CLASSES,
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_GENERATED_VALUES,
    MAX_IMAGE_SIDE,
    MAX_LEARNING_RATE,
    MAX_MULTIPLE,
    MAX_RUNS,
    MAX_SAMPLES,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_THREADS,
    MAX_TIMEOUT_S,
    QUANTIZATIONS,
    STAGE_NAMES,
    TARGET_NAMES,
    ZOO_NAMES,
    _Strict,
)
from edgecomp.config.loading import (
    MAX_CONFIG_BYTES,
    MAX_YAML_ALIASES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    apply_override,
    from_dict,
    load,
    parse_yaml,
    read_yaml,
)
from edgecomp.config.messages import _short, format_validation_error
from edgecomp.config.run import Config, json_schema, stage_kind, stage_params, to_dict, to_yaml, write_schema
from edgecomp.config.sections import (
    AugmentConfig,
    BenchmarkConfig,
    DataConfig,
    DistributeConfig,
    MetadataConfig,
    ModelSpec,
    TrainConfig,
)
from edgecomp.config.stages import (
    ClusterConfig,
    ClusterStage,
    DistillConfig,
    DistillStage,
    FeatureMatch,
    LowRankConfig,
    LowRankStage,
    PruneConfig,
    PruneStage,
    QuantizeConfig,
    QuantizeStage,
    Stage,
)
from edgecomp.config.targets import (
    CpuTarget,
    CpuTargetConfig,
    EdgeTpuTarget,
    EdgeTpuTargetConfig,
    GpuTarget,
    GpuTargetConfig,
    MicroTarget,
    MicroTargetConfig,
    Target,
)
from edgecomp.errors import ConfigError

__all__ = [
    "ADB_SERIAL_PATTERN", "DIGITS_SAMPLES", "MAX_BATCH_SIZE", "MAX_CALIBRATION_SAMPLES", "MAX_CLASSES",
    "MAX_CONFIG_BYTES", "MAX_COUNT", "MAX_EPOCHS", "MAX_GENERATED_VALUES", "MAX_IMAGE_SIDE", "MAX_LEARNING_RATE",
    "MAX_MULTIPLE", "MAX_RUNS", "MAX_SAMPLES", "MAX_SEED", "MAX_TEMPERATURE", "MAX_THREADS", "MAX_TIMEOUT_S",
    "MAX_YAML_ALIASES", "MAX_YAML_DEPTH", "MAX_YAML_VALUES", "QUANTIZATIONS", "STAGE_NAMES", "TARGET_NAMES",
    "ZOO_NAMES",
    "AugmentConfig", "BenchmarkConfig", "ClusterConfig", "ClusterStage", "Config", "ConfigError", "CpuTarget",
    "CpuTargetConfig", "DataConfig", "DistillConfig", "DistillStage", "DistributeConfig", "EdgeTpuTarget",
    "EdgeTpuTargetConfig", "FeatureMatch", "GpuTarget", "GpuTargetConfig", "LowRankConfig", "LowRankStage",
    "MetadataConfig",
    "MicroTarget", "MicroTargetConfig", "ModelSpec", "PruneConfig", "PruneStage", "QuantizeConfig", "QuantizeStage",
    "Stage", "Target", "TrainConfig",
    "apply_override", "format_validation_error", "from_dict", "json_schema", "load", "parse_yaml", "read_yaml",
    "stage_kind", "stage_params", "to_dict", "to_yaml", "write_schema",
]
