"""The structure check: a candidate's size, arena and latency before any fine-tuning, and the verdict on them.

The candidate's structural stages (filter pruning, low-rank rewriting) are applied to
the baseline without training and the result is converted for the search's target;
file size, tensor arena and latency depend on the structure only, so a candidate that
cannot fit is rejected before it is trained. Results are cached by structure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path
from typing import Optional

from edgecomp import checkpoints, config, study
from edgecomp.errors import EdgecompError
from edgecomp.search.output import measured_text
from edgecomp.search.space import KNOBS, Candidate, SearchFileConfig, baseline_config, latency_device, trial_config
from edgecomp.search.verdicts import Measured, budget_violation

log = logging.getLogger("edgecomp")

STRUCTURAL_STAGES = ("filters", "low_rank")
LATENCY_MARGIN = 1.15   # the structure check rejects only latencies clearly over the limit: timings are noisy


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
        """The baseline's trained model, loaded once from its checkpoint."""
        if self._model is None:
            from edgecomp._keras import keras

            self._model = keras.models.load_model(checkpoints.baseline_file(self.baseline_dir), compile=False)
        return self._model

    def _measure(self, candidate: Candidate) -> Measured:
        """Applies the structural stages without training, converts, and measures the file."""
        from edgecomp import stages, targets, tflite_metadata
        from edgecomp.config import stage_kind, stage_params
        from edgecomp.devices import open_configured
        from edgecomp.targets import micro

        cfg = trial_config(self.search, candidate)
        model = self._baseline()   # stages.run works on a copy
        with tempfile.TemporaryDirectory(prefix="edgecomp-structure-") as scratch:
            for index, item in enumerate(cfg.stages, start=1):
                kind, params = stage_kind(item), stage_params(item)
                facts = stages.facts(kind, params)
                if not facts.structural:
                    continue
                context = stages.StageContext(cfg, self.dataset, Path(scratch) / f"{index:02d}_{kind}")
                model, _ = stages.run(kind, model, facts.untrained(params), context, seed=cfg.seed + index)
            target = next(stage_params(item) for item in cfg.targets if stage_kind(item) == self.search.target_kind)
            content, _ = targets.convert_for(self.search.target_kind, model, target, self.calibration)  # as the run does
            content = tflite_metadata.for_file(cfg, self.search.target_kind, target.quantization, model, self.dataset,
                                               content)
            measured = Measured(size_bytes=len(content))
            if self.search.search.constraints.max_arena_kb is not None:    # micro only (the schema checks)
                measured.arena_bytes = micro.find_arena(content, self.dataset.x_test[0])
            if self.search.search.constraints.max_latency_ms is not None:
                path = Path(scratch) / "structure.tflite"
                path.write_bytes(content)
                device = open_configured(latency_device(self.search), cfg.benchmark)
                result = device.benchmark(path, runs=cfg.benchmark.runs, warmup=cfg.benchmark.warmup,
                                          threads=cfg.benchmark.threads[0], inputs=self.dataset.x_test[:1],
                                          timeout_s=cfg.benchmark.timeout_s)
                from edgecomp.report import typical_latency

                measured.p50_ms = typical_latency(result["latency_ms"])
        return measured


def structure_step(search, checks: StructureChecks, candidate: Candidate, round_number: int,
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
             measured_text(candidate.row), " (shared with an earlier candidate)" if cached else "",
             f"rejected: {why}" if why else "trial")
    if why:
        candidate.verdict, candidate.reason = "rejected", f"structure check, before fine-tuning: {why}"
        return None
    return candidate, cfg
