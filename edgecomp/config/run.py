"""The whole run configuration, ``Config``; reading its stage and target items; writing it out.

``to_dict``, ``to_yaml`` and ``json_schema`` write a ``Config`` as plain data, as
YAML (saved beside the run's outputs) and as the JSON Schema editors read
(``configs/schema.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from edgecomp.config.base import MAX_SEED, _Strict
from edgecomp.config.messages import format_validation_error
from edgecomp.config.sections import (BenchmarkConfig, DataConfig, DistributeConfig, MetadataConfig, ModelSpec,
                                      TrainConfig)
from edgecomp.config.stages import Stage
from edgecomp.config.targets import CpuTarget, Target
from edgecomp.errors import ConfigError


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
    metadata: MetadataConfig = MetadataConfig()

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
