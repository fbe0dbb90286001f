"""The search loop: the baseline once, then rounds of structure checks and trials until nothing is left to try.

A round takes the first untried candidate of each recipe, after dominance has ruled
out what earlier results make pointless; its trials run on the backend
(``edgecomp.trials``), and with ``--resume`` a finished trial of the same config is reused.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from edgecomp import checkpoints, config, study, trials
from edgecomp.search.output import write
from edgecomp.search.space import (Candidate, Outcome, SearchFileConfig, at_least_as_compressed, baseline_config,
                                   candidates)
from edgecomp.search.structure import StructureChecks, structure_step
from edgecomp.search.verdicts import choose, judge

log = logging.getLogger("edgecomp")


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
    baseline_files = _read_dir(checkpoints.baseline_folder(base_cfg.run_dir))
    checks = StructureChecks(search, base_cfg.run_dir)
    backend = trials.open_backend(search.search.backend, search.study_dir / "runs", search.search.address,
                                  search.search.cpus_per_trial)
    tried = 0
    try:
        round_number = 0
        while True:
            apply_dominance(search, found)
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
                trial = structure_step(search, checks, candidate, round_number, reference)
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
    """The folder's files, name → bytes (the baseline checkpoint every trial starts from)."""
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def _next_round(found: list[Candidate]) -> list[Candidate]:
    """The first untried candidate of each recipe, in recipe order."""
    picks, seen = [], set()
    for candidate in found:
        if candidate.verdict == "untried" and candidate.recipe not in seen:
            picks.append(candidate)
            seen.add(candidate.recipe)
    return picks


def apply_dominance(search: SearchFileConfig, found: list[Candidate]) -> None:
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
