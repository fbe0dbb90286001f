"""The recipe search: the best compression recipe under the user's constraints, found by running candidates.

A search file is a study file (``name``, ``output_dir``, ``base``, ``techniques``,
``recipes``; see ``edgecomp.study``) plus a ``search:`` section: the target the
constraints apply to, the constraints, the objective, the knobs to search, the trial
budget and the backend.

How it searches:

1. The baseline is trained once (``runs/baseline``); its float32 reference is what
   ``max_accuracy_drop`` and the table's ratios compare with.
2. Each recipe (``ptq``, ``filters_qat``, ...) with every combination of its knobs
   is a candidate. A recipe's candidates are tried from the least to the most
   compressed, one per recipe per round.
3. **Structure check, before any fine-tuning**: the candidate's structural stages
   (filter pruning, low-rank rewriting) are applied to the baseline without
   fine-tuning and the result is converted with the candidate's quantization. File
   size, tensor arena (micro) and latency depend on the structure, not on the
   weights' values, so a candidate whose file is too large, whose arena is too large
   or whose latency is over 1.15 × ``max_latency_ms`` is rejected here. Unstructured
   pruning, clustering, distillation and QAT change values only: their files are
   as large as the baseline's (the check is shared and made once), except that a
   micro target stores clustered weights LUT-compressed, so for a recipe with
   ``cluster`` on a micro target the size check is left to the trial.
4. **Trial**: the candidate runs as an ordinary edgecomp run in
   ``runs/<candidate>/`` (the baseline checkpoint is reused); its ``.tflite`` is
   verified and measured, and the constraints are checked on those measurements.
5. **Dominance**: a candidate at least as compressed (every knob at least as
   aggressive) as one that missed an accuracy constraint is not tried. With
   ``objective: most_accurate`` a candidate more compressed than one that met every
   constraint is not tried either (the search assumes more compression costs
   accuracy). Candidates run least compressed first, so a size, arena or latency
   miss rules out nothing further: a later candidate is more compressed.
6. The best candidate that met every constraint (by the objective) is written as
   ``best.yaml``, a run config to run again with ``python -m edgecomp.train``;
   ``search.md``/``.csv``/``.json`` list every candidate, with why each rejected one
   was rejected, and ``pareto_<target>.png`` plots them.

Trials run one after another in this process (``backend: local``) or as tasks on a
Ray cluster (``backend: ray``; ``address`` of an existing cluster, or none to start
one on this machine). Which candidates a round tries depends only on earlier rounds'
results, never on the backend, so both backends try the same candidates and, with the
same seed, measure the same accuracies and sizes.

Example:
    python -m edgecomp.search --config configs/search_micro.yaml [--resume]
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError, field_validator, model_validator

from edgecomp import config, files, study, trials
from edgecomp.config import ConfigError
from edgecomp.errors import EdgecompError

log = logging.getLogger("edgecomp")


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
STRUCTURAL_STAGES = ("filters", "low_rank")
LATENCY_MARGIN = 1.15   # the structure check rejects only latencies clearly over the limit: timings are noisy
COLUMNS = ("candidate", "recipe", "knobs", "verdict", "reason", "size_bytes", "arena_bytes", "gzip_bytes",
           "accuracy", "accuracy_delta_pt", "p50_ms", "size_ratio", "latency_ratio", "params", "macs", "seconds")


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


def load(path: str | Path, overrides=()) -> SearchFileConfig:
    """Reads and validates a search file; every candidate's run config is validated before anything trains.

    Raises:
        ConfigError: one line naming the key, the value and what is allowed.
    """
    raw = config.read_yaml(path)
    for override in overrides:
        config.apply_override(raw, override)
    if "search" not in raw:
        raise ConfigError(f"{path}: a search file needs a search: section (constraints, objective, space); "
                          "see configs/search_micro.yaml")
    try:
        search = SearchFileConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {config.format_validation_error(error)}") from None
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
    targets = json.loads(json.dumps(search.base.get("targets", [{"cpu": {}}])))
    if quantization is not None:
        for item in targets:
            if search.target_kind in item:
                item[search.target_kind] = {**(item[search.target_kind] or {}), "quantization": quantization}
    return targets


def baseline_config(search: SearchFileConfig) -> config.Config:
    """The run that trains the baseline once: the base with no stages, in ``runs/baseline``."""
    return study.run_config(search, "ptq", name="baseline", source="search")


# ---- measurements ---------------------------------------------------------------


@dataclasses.dataclass
class Measured:
    """What a candidate's file measured on the search's target (None: not measured)."""

    size_bytes: Optional[int] = None
    arena_bytes: Optional[int] = None
    p50_ms: Optional[float] = None
    accuracy: Optional[float] = None


def budget_violation(search: SearchFileConfig, measured: Measured, *, margin: float = 1.0) -> Optional[str]:
    """Why ``measured`` misses a size, arena or latency limit, or None."""
    limits = search.search.constraints
    if limits.max_size_kb is not None and measured.size_bytes is not None \
            and measured.size_bytes > limits.max_size_kb * 1024:
        return f"size {measured.size_bytes / 1024:.1f} KB > max_size_kb {limits.max_size_kb:g}"
    if limits.max_arena_kb is not None and measured.arena_bytes is not None \
            and measured.arena_bytes > limits.max_arena_kb * 1024:
        return f"arena {measured.arena_bytes / 1024:.1f} KB > max_arena_kb {limits.max_arena_kb:g}"
    if limits.max_latency_ms is not None and measured.p50_ms is not None \
            and measured.p50_ms > limits.max_latency_ms * margin:
        over = f" × {margin:g} margin" if margin != 1.0 else ""
        return f"latency p50 {measured.p50_ms:.4g} ms > max_latency_ms {limits.max_latency_ms:g}{over}"
    return None


def accuracy_violation(search: SearchFileConfig, accuracy: Optional[float], reference: Optional[float]) -> Optional[str]:
    """Why ``accuracy`` misses ``min_accuracy`` or ``max_accuracy_drop``, or None."""
    limits = search.search.constraints
    if accuracy is None:
        return "no accuracy was measured" if (limits.min_accuracy, limits.max_accuracy_drop) != (None, None) else None
    if limits.min_accuracy is not None and accuracy < limits.min_accuracy:
        return f"accuracy {accuracy:.4f} < min_accuracy {limits.min_accuracy:g}"
    if limits.max_accuracy_drop is not None and reference is not None \
            and 100 * (reference - accuracy) > limits.max_accuracy_drop:
        return (f"accuracy {accuracy:.4f} is {100 * (reference - accuracy):.2f} pt below the float32 reference "
                f"{reference:.4f} > max_accuracy_drop {limits.max_accuracy_drop:g}")
    return None


class StructureChecks:
    """Size, arena and latency of a candidate's structure, before fine-tuning; cached by structure.

    Args:
        search: the search file.
        baseline_dir: the baseline run's folder (its checkpoint is the starting point).
    """

    def __init__(self, search: SearchFileConfig, baseline_dir: Path):
        from edgecomp import data

        self.search = search
        self.cfg = baseline_config(search)
        self.dataset = data.load(self.cfg.data, self.cfg.seed)
        self.calibration = data.representative_samples(self.dataset, self.cfg.data.calibration_samples,
                                                       self.cfg.seed)
        self.baseline_dir = baseline_dir
        self.cache: dict[str, Measured] = {}
        self._model = None

    def key(self, candidate: Candidate) -> str:
        """The candidate's structure: its structural stages' knob values and its quantization."""
        structural = {key: value for key, value in candidate.knobs.items() if KNOBS[key].structural}
        stages = [kind for kind in study.RECIPES[candidate.recipe] if kind in STRUCTURAL_STAGES]
        return json.dumps({"stages": stages, "knobs": structural}, sort_keys=True)

    def measure(self, candidate: Candidate) -> tuple[Measured, bool]:
        """``(measured, cached)`` for the candidate's structure."""
        key = self.key(candidate)
        if key in self.cache:
            return self.cache[key], True
        self.cache[key] = self._measure(candidate)
        return self.cache[key], False

    def _baseline(self):
        if self._model is None:
            from edgecomp._keras import keras
            from edgecomp.pipeline import CHECKPOINT_FILE

            self._model = keras.models.load_model(self.baseline_dir / "checkpoints" / "00_baseline" /
                                                  CHECKPOINT_FILE, compile=False)
        return self._model

    def _measure(self, candidate: Candidate) -> Measured:
        from edgecomp import models, stages, targets
        from edgecomp._keras import keras
        from edgecomp.config import stage_kind, stage_params
        from edgecomp.devices import open_configured
        from edgecomp.targets import micro

        cfg = trial_config(self.search, candidate)
        model = models.copy(self._baseline())
        with tempfile.TemporaryDirectory(prefix="edgecomp-structure-") as scratch:
            for index, item in enumerate(cfg.stages, start=1):
                kind, params = stage_kind(item), stage_params(item)
                structural = kind == "low_rank" or (kind == "prune" and params.structure == "filters")
                if not structural:
                    continue
                epochs_key = "finetune_epochs" if kind == "low_rank" else "epochs"
                no_training = params.model_copy(update={epochs_key: 0, "recovery_epochs": 0})
                keras.utils.set_random_seed(cfg.seed + index)
                context = stages.StageContext(cfg, self.dataset, Path(scratch) / f"{index:02d}_{kind}")
                model, _ = stages.apply(kind, model, no_training, context)
            target = next(stage_params(item) for item in cfg.targets if stage_kind(item) == self.search.target_kind)
            content, _ = targets.convert_for(self.search.target_kind, model, target, self.calibration)  # as the run does
            measured = Measured(size_bytes=len(content))
            if self.search.search.constraints.max_arena_kb is not None:    # micro only (the schema checks)
                measured.arena_bytes = micro.find_arena(content, self.dataset.x_test[0])
            if self.search.search.constraints.max_latency_ms is not None:
                path = Path(scratch) / "structure.tflite"
                path.write_bytes(content)
                device = open_configured(_device(self.search), cfg.benchmark)
                result = device.benchmark(path, runs=cfg.benchmark.runs, warmup=cfg.benchmark.warmup,
                                          threads=cfg.benchmark.threads[0], inputs=self.dataset.x_test[:1],
                                          timeout_s=cfg.benchmark.timeout_s)
                from edgecomp.report import typical_latency

                measured.p50_ms = typical_latency(result["latency_ms"])
        return measured


def _device(search: SearchFileConfig) -> str:
    devices = search.base.get("benchmark", {}).get("devices") or ["local"]
    return search.search.device or devices[0]


# ---- the search -------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What a search found."""

    candidates: list[Candidate]
    best: Optional[Candidate]
    reference_row: dict
    tried: int


def run(search: SearchFileConfig, *, resume: bool = False) -> Outcome:
    """Runs the search; writes ``search.md``/``.csv``/``.json``, ``pareto_<target>.png`` and ``best.yaml``."""
    from edgecomp import pipeline
    from edgecomp.report import Report

    found = candidates(search)
    base_cfg = baseline_config(search)
    log.info("search %s: %d candidates in %d recipes; objective %s; target %s; backend %s", search.name,
             len(found), len({c.recipe for c in found}), search.search.objective, search.target_kind,
             search.search.backend)
    started = time.time()
    baseline_report = pipeline.run(base_cfg, resume=resume)
    reference = baseline_report.reference
    reference_accuracy = (reference.metrics or {}).get("accuracy")
    baseline_files = _read_dir(base_cfg.run_dir / "checkpoints" / "00_baseline")
    checks = StructureChecks(search, base_cfg.run_dir)
    backend = trials.open_backend(search.search.backend, search.study_dir / "runs", search.search.address,
                                  search.search.cpus_per_trial)
    tried = 0
    try:
        round_number = 0
        while True:
            _apply_dominance(search, found)
            picks = _next_round(found)
            if not picks:
                break
            round_number += 1
            batch: list[tuple[Candidate, config.Config]] = []
            for candidate in picks:
                if tried >= search.search.max_candidates:
                    candidate.verdict, candidate.reason = "not tried", \
                        f"the budget of max_candidates {search.search.max_candidates} was spent"
                    continue
                tried += 1
                trial = _structure_step(search, checks, candidate, round_number, reference)
                if trial is not None:
                    batch.append(trial)
            _run_round(search, backend, batch, baseline_files, reference, reference_accuracy, resume, Report)
            if tried >= search.search.max_candidates:
                for candidate in found:
                    if candidate.verdict == "untried":
                        candidate.verdict, candidate.reason = "not tried", \
                            f"the budget of max_candidates {search.search.max_candidates} was spent"
    finally:
        backend.close()
    best = choose(search, found)
    if best is not None:
        best.verdict = "best"
    reference_row = study.table_rows("ptq", baseline_report, reference, 0.0, base_cfg.run_dir)[0]
    outcome = Outcome(found, best, reference_row, tried)
    write(search, outcome)
    log.info("search %s: %d candidates tried in %.0f s; best: %s", search.name, tried, time.time() - started,
             f"{best.name} ({best.knob_text})" if best else "none met every constraint")
    return outcome


def _read_dir(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def _next_round(found: list[Candidate]) -> list[Candidate]:
    """The first untried candidate of each recipe, in recipe order."""
    picks, seen = [], set()
    for candidate in found:
        if candidate.verdict == "untried" and candidate.recipe not in seen:
            picks.append(candidate)
            seen.add(candidate.recipe)
    return picks


def _apply_dominance(search: SearchFileConfig, found: list[Candidate]) -> None:
    """Marks the untried candidates that earlier results rule out."""
    for candidate in found:
        if candidate.verdict != "untried":
            continue
        for other in found:
            if other is candidate or other.recipe != candidate.recipe:
                continue
            # Candidates run least compressed first, so only rules about *more* compressed ones can fire.
            if other.accuracy_failed and at_least_as_compressed(candidate, other):
                candidate.verdict = "not tried"
                candidate.reason = f"at least as compressed as {other.name}, which missed: {other.reason}"
            elif other.verdict == "met" and search.search.objective == "most_accurate" \
                    and at_least_as_compressed(candidate, other):
                candidate.verdict = "not tried"
                candidate.reason = (f"objective most_accurate: {other.name}, less compressed, already met every "
                                    "constraint")
            if candidate.verdict != "untried":
                break


def _structure_step(search, checks: StructureChecks, candidate: Candidate, round_number: int,
                    reference) -> Optional[tuple[Candidate, config.Config]]:
    """The structure check; returns the trial to run, or None when the candidate is rejected here."""
    cfg = trial_config(search, candidate)
    lut_pending = search.target_kind == "micro" and "cluster" in study.RECIPES[candidate.recipe]
    try:
        measured, cached = checks.measure(candidate)
    except EdgecompError as error:
        candidate.verdict, candidate.reason = "failed", f"structure check: {error}"
        log.warning("search: %s %s", candidate.name, candidate.reason)
        return None
    candidate.row.update(size_bytes=measured.size_bytes, arena_bytes=measured.arena_bytes, p50_ms=measured.p50_ms,
                         size_ratio=study._ratio(measured.size_bytes, reference.size_bytes))
    if lut_pending:
        measured = dataclasses.replace(measured, size_bytes=None)
    why = budget_violation(search, measured, margin=LATENCY_MARGIN)
    log.info("search: round %d: %s (%s): structure %s%s → %s", round_number, candidate.name, candidate.knob_text,
             _measured_text(candidate.row), " (shared with an earlier candidate)" if cached else "",
             f"rejected: {why}" if why else "trial")
    if why:
        candidate.verdict, candidate.reason = "rejected", f"structure check, before fine-tuning: {why}"
        return None
    return candidate, cfg


def _measured_text(row: dict) -> str:
    parts = [f"{row['size_bytes'] / 1024:.1f} KB" if row.get("size_bytes") is not None else None,
             f"arena {row['arena_bytes'] / 1024:.1f} KB" if row.get("arena_bytes") is not None else None,
             f"p50 {row['p50_ms']:.4g} ms" if row.get("p50_ms") is not None else None]
    return ", ".join(part for part in parts if part)


def _run_round(search, backend, batch, baseline_files, reference, reference_accuracy, resume, report_type) -> None:
    """Runs the round's trials on the backend (reusing finished ones with --resume) and judges them."""
    pending, results = [], {}
    for candidate, cfg in batch:
        reused = _finished_report(cfg) if resume else None
        if reused is not None:
            log.info("search: resume: reusing %s's finished run", candidate.name)
            results[candidate.name] = {"report": reused, "seconds": 0.0}
        else:
            pending.append((candidate, cfg))
    if pending:
        log.info("search: running %d trial(s) on the %s backend: %s", len(pending), backend.name,
                 ", ".join(candidate.name for candidate, _ in pending))
        outputs = backend.run([config.to_dict(cfg) for _, cfg in pending], baseline_files)
        results.update({candidate.name: output for (candidate, _), output in zip(pending, outputs)})
    for candidate, cfg in batch:
        judge(search, candidate, results[candidate.name], reference, reference_accuracy, cfg, report_type)


def _finished_report(cfg: config.Config) -> Optional[dict]:
    """The report of an earlier run of the same candidate config (the output folder may have moved), or None."""
    import yaml

    folder = cfg.run_dir
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text())
        wanted = config.to_dict(cfg)
        same = {**saved, "output_dir": None} == {**wanted, "output_dir": None}
        # A run writes config.yaml first and report.json last: an older report belongs to an earlier config.
        finished = (folder / "report.json").stat().st_mtime_ns >= (folder / "config.yaml").stat().st_mtime_ns
        return json.loads((folder / "report.json").read_text()) if same and finished else None
    except (OSError, ValueError, TypeError, yaml.YAMLError):
        return None


def judge(search, candidate: Candidate, result: dict, reference, reference_accuracy, cfg, report_type) -> None:
    """Reads a trial's measurements into the candidate's row and verdict."""
    candidate.seconds = result.get("seconds", 0.0)
    if "error" in result:
        candidate.verdict, candidate.reason = "failed", f"the run failed: {result['error']}"
        log.warning("search: %s %s", candidate.name, candidate.reason)
        return
    report = report_type.from_dict(result["report"])
    record = next((item for item in report.targets if item.target == search.target_kind), None)
    if record is None:
        candidate.verdict, candidate.reason = "failed", f"the run's report has no {search.target_kind} target"
        return
    rows = study.table_rows(candidate.recipe, report, reference, candidate.seconds, cfg.run_dir)
    row = next(item for item in rows if item["target"] == search.target_kind)
    details = record.compatibility.get("details") or {}
    lut = details.get("lut") or {}
    if lut.get("flash_bytes_after") is not None and lut.get("outputs_identical"):
        row["size_bytes"], row["arena_bytes"] = lut["flash_bytes_after"], lut.get("arena_bytes")
    else:
        row["arena_bytes"] = details.get("arena_bytes")
    row["p50_ms"] = _latency_on(record, _device(search))   # None when that device gave no timing
    candidate.row.update(row)
    measured = Measured(row["size_bytes"], row.get("arena_bytes"), row.get("p50_ms"), row.get("accuracy"))
    if not record.compatibility.get("ok"):
        from edgecomp.pipeline import failed_rules

        candidate.verdict, candidate.reason = "rejected", f"the {record.target} target's checks failed: " \
                                                          f"{failed_rules(record)}"
    elif search.search.constraints.max_latency_ms is not None and measured.p50_ms is None:
        candidate.verdict = "rejected"
        candidate.reason = f"no latency was measured on {_device(search)}; see runs/{candidate.name}/report.md"
    elif why := budget_violation(search, measured):
        candidate.verdict, candidate.reason = "rejected", why
    elif why := accuracy_violation(search, measured.accuracy, reference_accuracy):
        candidate.verdict, candidate.reason, candidate.accuracy_failed = "rejected", why, True
    else:
        candidate.verdict, candidate.reason = "met", "met every constraint"
    log.info("search: %s (%s): %s, accuracy %s → %s%s", candidate.name, candidate.knob_text,
             _measured_text(candidate.row), study._cell(measured.accuracy), candidate.verdict,
             f": {candidate.reason}" if candidate.verdict != "met" else "")


def _latency_on(record, device: str) -> Optional[float]:
    from edgecomp.report import typical_latency

    for result in record.benchmarks:
        if result.get("device") == device:
            return typical_latency(result["latency_ms"])
    return None


def choose(search: SearchFileConfig, found: list[Candidate]) -> Optional[Candidate]:
    """The best candidate that met every constraint, by the objective (ties: the more accurate, then the smaller)."""
    met = [candidate for candidate in found if candidate.verdict == "met"]
    if not met:
        return None
    accuracy = {id(c): c.row.get("accuracy") or 0.0 for c in met}
    size = {id(c): c.row.get("size_bytes") or float("inf") for c in met}
    latency = {id(c): c.row.get("p50_ms") if c.row.get("p50_ms") is not None else float("inf") for c in met}
    if search.search.objective == "smallest":
        return min(met, key=lambda c: (size[id(c)], -accuracy[id(c)]))
    if search.search.objective == "fastest":
        return min(met, key=lambda c: (latency[id(c)], -accuracy[id(c)]))
    return min(met, key=lambda c: (-accuracy[id(c)], size[id(c)]))


# ---- output -----------------------------------------------------------------------


def rows(outcome: Outcome) -> list[dict]:
    """The table: one row per candidate (plus the float32 reference first)."""
    table = [{**outcome.reference_row, "candidate": "reference", "knobs": "-", "verdict": "reference",
              "reason": "the float32 baseline", "arena_bytes": None, "recipe": "-"}]
    for candidate in outcome.candidates:
        table.append({**{key: None for key in COLUMNS}, **candidate.row, "candidate": candidate.name,
                      "recipe": candidate.recipe, "knobs": candidate.knob_text, "verdict": candidate.verdict,
                      "reason": candidate.reason, "seconds": round(candidate.seconds, 1)})
    return table


def render(search: SearchFileConfig, outcome: Outcome) -> str:
    """``search.md``: the constraints, the best recipe, then every candidate and why."""
    limits = {key: value for key, value in search.search.constraints.model_dump().items() if value is not None}
    best = outcome.best
    lines = [f"# Search {search.name}", "",
             f"Target **{search.target_kind}**, objective **{search.search.objective}**, constraints: "
             + (", ".join(f"{key} {value:g}" for key, value in limits.items()) or "none") + ".",
             f"{outcome.tried} of {len(outcome.candidates)} candidates tried (budget {search.search.max_candidates});"
             f" backend {search.search.backend}.", "",
             (f"**Best: {best.name}** ({best.recipe}; {best.knob_text}): " + _measured_text(best.row)
              + f", accuracy {study._cell(best.row.get('accuracy'))}. Run it again: "
                f"`python -m edgecomp.train --config {search.study_dir / 'best.yaml'}`")
             if best else "**No candidate met every constraint**; see the reasons below.", "",
             "Sizes, arenas and accuracies are measured on the target's `.tflite` (a rejected-before-training "
             "candidate's on its structure without fine-tuning); ratios are to the float32 reference.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows(outcome):
        lines.append("| " + " | ".join(_cell(row.get(key), key) for key in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _cell(value, key: str) -> str:
    if key == "verdict" and value == "best":
        return "**best**"
    return study._cell(value).replace("|", "/")


def write(search: SearchFileConfig, outcome: Outcome) -> None:
    """Writes ``search.md``, ``search.csv``, ``search.json``, ``pareto_<target>.png`` and ``best.yaml``."""
    folder = search.study_dir
    table = rows(outcome)
    files.write_text(folder / "search.md", render(search, outcome))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    files.write_text(folder / "search.csv", buffer.getvalue())
    best = outcome.best
    files.write_text(folder / "search.json", json.dumps({
        "name": search.name, "target": search.target_kind, "objective": search.search.objective,
        "constraints": search.search.constraints.model_dump(), "tried": outcome.tried,
        "best": best.name if best else None, "rows": table}, indent=2, default=str) + "\n")
    plotted = [{**row, "recipe": row["candidate"], "target": search.target_kind if row["candidate"] != "reference"
                else "reference"} for row in table if row.get("accuracy") is not None]
    if plotted:
        study.plot(plotted, search.target_kind, folder / f"pareto_{search.target_kind}.png")
    best_path = folder / "best.yaml"
    if best is not None:
        cfg = trial_config(search, best)
        raw = {**config.to_dict(cfg), "name": f"{search.name}_best", "output_dir": search.output_dir}
        header = (f"# The best recipe of search {search.name}: {best.name} ({best.recipe}; {best.knob_text}).\n"
                  f"# Measured: {_measured_text(best.row)}, accuracy {study._cell(best.row.get('accuracy'))}.\n"
                  f"#   python -m edgecomp.train --config {best_path}\n")
        files.write_text(best_path, header + config.to_yaml(config.from_dict(raw, source="best.yaml")))
    elif best_path.exists():
        best_path.unlink()


def main(argv) -> int:
    """``python -m edgecomp.search``: flags are defined only when run as a program."""
    from absl import flags

    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]}; pass options as --flag=value")
    options = flags.FLAGS
    if not options.config:
        raise ConfigError("--config is required, e.g. --config configs/search_micro.yaml")
    search = load(options.config, list(options.set))
    outcome = run(search, resume=options.resume)
    print(f"wrote {search.study_dir / 'search.md'} ({outcome.tried} of {len(outcome.candidates)} candidates tried)")
    for candidate in outcome.candidates:
        print(f"  {candidate.name:22s} {candidate.knob_text:40s} {candidate.verdict:9s} "
              f"{_measured_text(candidate.row)}; accuracy {study._cell(candidate.row.get('accuracy'))}"
              + (f"; {candidate.reason}" if candidate.verdict not in ("met", "best") else ""))
    if outcome.best is None:
        print("no candidate met every constraint; loosen a constraint or widen search.space")
        return 1
    print(f"best: {outcome.best.name} → {search.study_dir / 'best.yaml'}")
    return 0


if __name__ == "__main__":
    from absl import flags

    from edgecomp import cli

    flags.DEFINE_string("config", None, "search YAML file (see configs/search_micro.yaml).")
    flags.DEFINE_multi_string("set", [], "Override a key: --set search.max_candidates=10 (values parsed as YAML).")
    flags.DEFINE_bool("resume", False, "Reuse the baseline and the finished trials of an earlier run of this search.")
    cli.run_main(main)
