"""What a search writes and prints: ``search.md``/``.csv``/``.json``, the Pareto plot, ``best.yaml``, the summary.
"""

from __future__ import annotations

import csv
import io
import json

from edgecomp import config, files, study
from edgecomp.search.space import Outcome, SearchFileConfig, trial_config

COLUMNS = ("candidate", "recipe", "knobs", "verdict", "reason", "size_bytes", "arena_bytes", "gzip_bytes",
           "accuracy", "accuracy_delta_pt", "p50_ms", "size_ratio", "latency_ratio", "params", "macs", "seconds")


def measured_text(row: dict) -> str:
    """``12.3 KB, arena 45.6 KB, p50 0.123 ms``: what of size, arena and latency a row has."""
    parts = [f"{row['size_bytes'] / 1024:.1f} KB" if row.get("size_bytes") is not None else None,
             f"arena {row['arena_bytes'] / 1024:.1f} KB" if row.get("arena_bytes") is not None else None,
             f"p50 {row['p50_ms']:.4g} ms" if row.get("p50_ms") is not None else None]
    return ", ".join(part for part in parts if part)


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
             (f"**Best: {best.name}** ({best.recipe}; {best.knob_text}): " + measured_text(best.row)
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
    """A table cell: as the study writes it, the winner's verdict in bold, no ``|`` inside."""
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
                  f"# Measured: {measured_text(best.row)}, accuracy {study._cell(best.row.get('accuracy'))}.\n"
                  f"#   python -m edgecomp.train --config {best_path}\n")
        files.write_text(best_path, header + config.to_yaml(config.from_dict(raw, source="best.yaml")))
    elif best_path.exists():
        best_path.unlink()


def summary(search: SearchFileConfig, outcome: Outcome) -> str:
    """What ``python -m edgecomp.search`` prints: where the table went, one line per candidate, the best."""
    lines = [f"wrote {search.study_dir / 'search.md'} ({outcome.tried} of {len(outcome.candidates)} candidates tried)"]
    for candidate in outcome.candidates:
        lines.append(f"  {candidate.name:22s} {candidate.knob_text:40s} {candidate.verdict:9s} "
                     f"{measured_text(candidate.row)}; accuracy {study._cell(candidate.row.get('accuracy'))}"
                     + (f"; {candidate.reason}" if candidate.verdict not in ("met", "best") else ""))
    if outcome.best is None:
        lines.append("no candidate met every constraint; loosen a constraint or widen search.space")
    else:
        lines.append(f"best: {outcome.best.name} → {search.study_dir / 'best.yaml'}")
    return "\n".join(lines)
