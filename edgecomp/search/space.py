"""The search file and its space: the schema, the knobs, the candidates and their run configs.

A search file is a study file plus a ``search:`` section (``SearchFileConfig``); ``load``
reads and validates it. Every recipe with every combination of its knobs' values is a
``Candidate``, ordered from the least to the most compressed; ``trial_config`` is the run
config a candidate's trial runs.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from edgecomp import config, config_file, study
from edgecomp.config import ConfigError

@dataclasses.dataclass(frozen=True)
class Knob:
    """A searchable parameter: whether larger values compress more, and whether it changes the structure."""

    larger_compresses: bool
    structural: bool


# "technique.key" → how it compresses. Structural knobs change layer shapes (file size,
# arena, latency); the others change weight values only.
KNOBS: dict[str, Knob] = {
    "prune.sparsity": Knob(larger_compresses=True, structural=False),
    "cluster.clusters": Knob(larger_compresses=False, structural=False),
    "filters.sparsity": Knob(larger_compresses=True, structural=True),
    "low_rank.rank_ratio": Knob(larger_compresses=False, structural=True),
    "low_rank.energy": Knob(larger_compresses=False, structural=True),
    "low_rank.target_params_ratio": Knob(larger_compresses=False, structural=True),
    "quantization": Knob(larger_compresses=True, structural=True),
}
# From the least to the most compressed file.
QUANTIZATION_ORDER = ("float32", "float16", "int16x8", "dynamic", "int8")
TARGET_QUANTIZATIONS = {"cpu": QUANTIZATION_ORDER, "gpu": ("float32", "float16", "int8")}


class Constraints(config._Strict):
    """What the chosen recipe must meet, on the search's target (all optional)."""

    max_size_kb: Optional[float] = Field(None, gt=0, description="file size (micro: flash, LUT-compressed if made)")
    max_latency_ms: Optional[float] = Field(None, gt=0, description="p50 on search.device")
    max_arena_kb: Optional[float] = Field(None, gt=0, description="micro: TFLM tensor arena")
    min_accuracy: Optional[float] = Field(None, ge=0, le=1, description="accuracy of the .tflite on the test split")
    max_accuracy_drop: Optional[float] = Field(None, ge=0, description="points below the float32 reference")


class SearchConfig(config._Strict):
    """The ``search:`` section."""

    target: Optional[Literal[config.TARGET_NAMES]] = Field(  # type: ignore[valid-type]
        None, description="the base target the constraints and objective apply to (default: the first)")
    device: Optional[str] = Field(None, description="benchmark device for latency (default: the first of "
                                                    "base.benchmark.devices)")
    constraints: Constraints = Constraints()
    objective: Literal["smallest", "fastest", "most_accurate"] = "smallest"
    space: dict[str, tuple] = Field(default_factory=dict, description="knob → values; knobs: " + ", ".join(KNOBS))
    max_candidates: int = Field(20, ge=1, description="candidates tried (structure-checked or trained) at most")
    backend: Literal["local", "ray"] = "local"
    address: Optional[str] = Field(None, description="ray: an existing cluster's address ('auto', 'host:6379', "
                                                     "'ray://host:10001'); none starts Ray on this machine")
    cpus_per_trial: float = Field(1.0, gt=0, description="ray: CPUs each trial task reserves")

    @field_validator("space")
    @classmethod
    def _known_knobs(cls, value):
        for key, values in value.items():
            if key not in KNOBS:
                raise ValueError(f"unknown knob {key!r}; allowed: {', '.join(KNOBS)}")
            if not values:
                raise ValueError(f"{key}: give at least one value")
            if len(set(values)) != len(values):
                raise ValueError(f"{key}: values repeat: {list(values)}")
            if key == "quantization":
                unknown = [item for item in values if item not in QUANTIZATION_ORDER]
                if unknown:
                    raise ValueError(f"quantization: unknown {unknown}; allowed: {', '.join(QUANTIZATION_ORDER)}")
            elif not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in values):
                raise ValueError(f"{key}: values must be numbers, got {list(values)}")
        return value


class SearchFileConfig(study.StudyConfig):
    """A search file: a study file whose ``search`` section says what to find."""

    search: SearchConfig
    latency_rounds: int = Field(0, ge=0, description="not used by the search (it keeps each trial's timing)")

    @model_validator(mode="after")
    def _consistent(self):
        targets = _target_kinds(self.base)
        kind = self.search.target or (targets[0] if targets else "cpu")
        if kind not in targets:
            raise ValueError(f"search.target: {kind} is not among base.targets ({', '.join(targets)}); add it there")
        limits = self.search.constraints
        if limits.max_arena_kb is not None and kind != "micro":
            raise ValueError("search.constraints.max_arena_kb: only a micro target has a tensor arena; "
                             "drop the key or search for a micro target")
        timed = limits.max_latency_ms is not None or self.search.objective == "fastest"
        if timed and kind != "cpu":
            raise ValueError(f"search: the {kind} target's files are not timed by the benchmark devices (only cpu "
                             "files are); drop max_latency_ms and use objective smallest or most_accurate, or "
                             "search for a cpu target")
        devices = list(self.base.get("benchmark", {}).get("devices") or ["local"])
        if self.search.device is not None and self.search.device not in devices:
            raise ValueError(f"search.device: {self.search.device} is not among base.benchmark.devices "
                             f"({', '.join(devices)}); add it there")
        if "quantization" in self.search.space:
            allowed = TARGET_QUANTIZATIONS.get(kind, ("int8",))
            wrong = [value for value in self.search.space["quantization"] if value not in allowed]
            if wrong:
                raise ValueError(f"search.space.quantization: the {kind} target takes {', '.join(allowed)}, "
                                 f"not {', '.join(wrong)}")
        return self

    @property
    def target_kind(self) -> str:
        """The kind of the target the constraints apply to."""
        return self.search.target or (_target_kinds(self.base) or ["cpu"])[0]


def _target_kinds(base: dict) -> list[str]:
    """The target kinds of a raw base config (malformed items are left to the run config's validation)."""
    targets = base.get("targets", [{"cpu": {}}])
    if not isinstance(targets, list):
        return []
    return [next(iter(item)) for item in targets if isinstance(item, dict) and len(item) == 1]


@dataclasses.dataclass
class Candidate:
    """One recipe with one value per knob, and what became of it."""

    name: str
    recipe: str
    knobs: dict
    ranks: dict = dataclasses.field(default_factory=dict)   # each knob's place in its ladder, 0: least compressing
    verdict: str = "untried"   # untried → met | rejected | not tried | failed; the winner becomes best
    reason: str = ""
    accuracy_failed: bool = False
    row: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def knob_text(self) -> str:
        """``filters.sparsity=0.5, quantization=int8``, or ``-``."""
        return ", ".join(f"{key}={value}" for key, value in self.knobs.items()) or "-"


@dataclasses.dataclass
class Outcome:
    """What a search found."""

    candidates: list[Candidate]
    best: Optional[Candidate]
    reference_row: dict
    tried: int


def load(path: str | Path, overrides=()) -> SearchFileConfig:
    """Reads and validates a search file; every candidate's run config is validated before anything trains.

    Raises:
        ConfigError: one line naming the key, the value and what is allowed.
    """

    def has_search_section(raw: dict) -> None:
        if "search" not in raw:
            raise ConfigError(f"{path}: a search file needs a search: section (constraints, objective, space); "
                              "see configs/search_micro.yaml")

    search = config_file.load_file(path, overrides, SearchFileConfig, prepare=has_search_section)
    _check_space(path, search)
    found = candidates(search)
    if not found:
        raise ConfigError(f"{path}: search: no recipe to search; give techniques (or space knobs) for a recipe "
                          f"in recipes, e.g. techniques.filters and recipes: [filters_qat]")
    for candidate in found:
        try:
            trial_config(search, candidate)
        except ConfigError as error:
            raise ConfigError(f"{path}: search.space: candidate {candidate.name} ({candidate.knob_text}) is not a "
                              f"valid run: {str(error).split(': ', 1)[-1]}") from None
    return search


def _check_space(path: str | Path, search: SearchFileConfig) -> None:
    """Refuses knobs no searched recipe uses, and float-only quantizations with a QAT recipe."""
    chosen = recipes(search)
    used = {kind for name in chosen for kind in study.RECIPES[name]}
    for key in search.search.space:
        if key != "quantization" and key.split(".")[0] not in used:
            raise ConfigError(f"{path}: search.space.{key}: no recipe searched uses {key.split('.')[0]} "
                              f"(recipes: {', '.join(chosen)}); drop the knob or add a recipe with it")
    if "int8" not in search.search.space.get("quantization", ("int8",)):
        qat = [name for name in chosen if "quantize" in study.RECIPES[name]]
        if qat:
            raise ConfigError(f"{path}: search.space.quantization: recipe {qat[0]} (QAT) makes int8 files; add int8 "
                              "to the values or drop the QAT recipes")


def recipes(search: SearchFileConfig) -> list[str]:
    """The recipes searched: those named in ``recipes``, else all whose techniques are given or have a knob."""
    given = {name for name, value in search.techniques if value is not None}
    given |= {key.split(".")[0] for key in search.search.space if "." in key}
    if search.recipes is not None:
        for name in search.recipes:
            missing = [kind for kind in study.RECIPES[name] if kind not in given]
            if missing:
                raise ConfigError(f"recipes: {name} needs techniques.{missing[0]} or a knob of it in search.space")
        return list(search.recipes)
    return [name for name, kinds in study.RECIPES.items() if set(kinds) <= given]


def ordered_values(key: str, values) -> list:
    """A knob's values from the least to the most compressing."""
    if key == "quantization":
        return sorted(values, key=QUANTIZATION_ORDER.index)
    return sorted(values, reverse=not KNOBS[key].larger_compresses)


def candidates(search: SearchFileConfig) -> list[Candidate]:
    """Every candidate, recipe by recipe, each recipe's from the least to the most compressed.

    A QAT recipe makes int8 files, so it is paired only with ``quantization: int8``.
    """
    found = []
    for recipe in recipes(search):
        kinds = study.RECIPES[recipe]
        keys = [key for key in search.search.space if key != "quantization" and key.split(".")[0] in kinds]
        if "quantization" in search.search.space:
            keys.append("quantization")
        ladders = [ordered_values(key, search.search.space[key]) for key in keys]
        for places in itertools.product(*(range(len(ladder)) for ladder in ladders)):
            knobs = {key: ladder[place] for key, ladder, place in zip(keys, ladders, places)}
            if "quantize" in kinds and knobs.get("quantization", "int8") != "int8":
                continue
            found.append(Candidate(name=f"{len(found) + 1:02d}_{recipe}", recipe=recipe, knobs=knobs,
                                   ranks=dict(zip(keys, places))))
    return found


def at_least_as_compressed(a: Candidate, b: Candidate) -> bool:
    """Whether ``a`` compresses at least as much as ``b``: same recipe, every knob at least as aggressive."""
    if a.recipe != b.recipe:
        return False
    return all(a.ranks[key] >= b.ranks[key] for key in b.ranks)


def trial_config(search: SearchFileConfig, candidate: Candidate) -> config.Config:
    """The candidate's run config: the recipe's stages with the candidate's knob values."""
    knobs: dict[str, dict] = {}
    for key, value in candidate.knobs.items():
        if key != "quantization":
            technique, parameter = key.split(".")
            knobs.setdefault(technique, {})[parameter] = value
    return study.run_config(search, candidate.recipe, name=candidate.name, knobs=knobs,
                            targets=_targets(search, candidate.knobs.get("quantization")), source="search")


def _targets(search: SearchFileConfig, quantization: Optional[str]) -> list:
    """The base's targets as raw config items, the search's target with the candidate's quantization."""
    targets = json.loads(json.dumps(search.base.get("targets", [{"cpu": {}}])))
    if quantization is not None:
        for item in targets:
            if search.target_kind in item:
                item[search.target_kind] = {**(item[search.target_kind] or {}), "quantization": quantization}
    return targets


def baseline_config(search: SearchFileConfig) -> config.Config:
    """The run that trains the baseline once: the base with no stages, in ``runs/baseline``."""
    return study.run_config(search, "ptq", name="baseline", source="search")


def latency_device(search: SearchFileConfig) -> str:
    """The benchmark device whose latency the constraints and the objective use."""
    devices = search.base.get("benchmark", {}).get("devices") or ["local"]
    return search.search.device or devices[0]
