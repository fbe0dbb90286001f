"""What a candidate's measurements say: the constraints it misses, its trial's verdict, the best candidate."""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

from edgecomp import study
from edgecomp.search.output import measured_text
from edgecomp.search.space import Candidate, SearchFileConfig, latency_device

log = logging.getLogger("edgecomp")


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
    row["p50_ms"] = latency_on(record, latency_device(search))   # None when that device gave no timing
    candidate.row.update(row)
    measured = Measured(row["size_bytes"], row.get("arena_bytes"), row.get("p50_ms"), row.get("accuracy"))
    if not record.compatibility.get("ok"):
        from edgecomp.pipeline import failed_rules

        candidate.verdict, candidate.reason = "rejected", f"the {record.target} target's checks failed: " \
                                                          f"{failed_rules(record)}"
    elif search.search.constraints.max_latency_ms is not None and measured.p50_ms is None:
        candidate.verdict = "rejected"
        candidate.reason = f"no latency was measured on {latency_device(search)}; see runs/{candidate.name}/report.md"
    elif why := budget_violation(search, measured):
        candidate.verdict, candidate.reason = "rejected", why
    elif why := accuracy_violation(search, measured.accuracy, reference_accuracy):
        candidate.verdict, candidate.reason, candidate.accuracy_failed = "rejected", why, True
    else:
        candidate.verdict, candidate.reason = "met", "met every constraint"
    log.info("search: %s (%s): %s, accuracy %s → %s%s", candidate.name, candidate.knob_text,
             measured_text(candidate.row), study._cell(measured.accuracy), candidate.verdict,
             f": {candidate.reason}" if candidate.verdict != "met" else "")


def latency_on(record, device: str) -> Optional[float]:
    """The typical latency a target record's benchmarks measured on ``device``, or None when it gave none."""
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
