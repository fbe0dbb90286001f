"""The trade-off study: every technique alone and the standard combinations, measured in one go.

A study file names a base run config (data, model, train, targets, benchmark), the
parameters of each technique, and the recipes to run. Each recipe is an ordinary
edgecomp run in its own folder, ``<output_dir>/<name>/runs/<recipe>/``, so each has
its own ``report.json``; the baseline is trained once, by the first recipe, and its
checkpoint is copied into every other run folder, where ``--resume`` semantics reuse
it (the checkpoint fingerprint covers seed, data, model and train, which recipes
share). The study then writes one table (``study.md``, ``study.csv``,
``study.json``) with a row per recipe and target, and a Pareto plot per target
(accuracy against gzip size and against latency, the front marked).

Recipes (a technique runs only when the study gives its parameters):

================== =========================================================
recipe             stages
================== =========================================================
ptq                none: the baseline, post-training quantized per target
prune              prune (unstructured)
cluster            cluster
qat                quantize
distill            distill
low_rank           low_rank
filters            prune with ``structure: filters``
prune_qat          prune → quantize
prune_cluster_qat  prune → cluster → quantize (Deep Compression)
distill_qat        distill → quantize
low_rank_qat       low_rank → quantize
filters_qat        filters → quantize
================== =========================================================

Example:
    python -m edgecomp.study --config configs/study_digits.yaml [--recipes ptq,prune_qat] [--resume]
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
import statistics
import time
from pathlib import Path
from typing import Optional

from pydantic import Field, field_validator

from edgecomp import checkpoints, config, config_file, files
from edgecomp import report as report_module
from edgecomp.config import ClusterConfig, ConfigError, DistillConfig, LowRankConfig, PruneConfig, QuantizeConfig

log = logging.getLogger("edgecomp")

RECIPES: dict[str, tuple[str, ...]] = {
    "ptq": (),
    "prune": ("prune",),
    "cluster": ("cluster",),
    "qat": ("quantize",),
    "distill": ("distill",),
    "low_rank": ("low_rank",),
    "filters": ("filters",),
    "prune_qat": ("prune", "quantize"),
    "prune_cluster_qat": ("prune", "cluster", "quantize"),
    "distill_qat": ("distill", "quantize"),
    "low_rank_qat": ("low_rank", "quantize"),
    "filters_qat": ("filters", "quantize"),
}
COLUMNS = ("recipe", "target", "quantization", "params", "nonzero_params", "macs", "size_bytes", "gzip_bytes",
           "accuracy", "accuracy_delta_pt", "p50_ms", "size_ratio", "gzip_ratio", "latency_ratio", "seconds", "ok")


class Techniques(config._Strict):
    """Parameters of each technique; a recipe runs only when all its techniques are given."""

    prune: Optional[PruneConfig] = None
    cluster: Optional[ClusterConfig] = None
    quantize: Optional[QuantizeConfig] = None
    distill: Optional[DistillConfig] = None
    low_rank: Optional[LowRankConfig] = None
    filters: Optional[PruneConfig] = Field(None, description="prune parameters; structure is set to filters")

    @field_validator("prune")
    @classmethod
    def _unstructured(cls, value):
        if value is not None and value.structure == "filters":
            raise ValueError("give channel pruning under techniques.filters; techniques.prune zeroes weights")
        return value


class StudyConfig(config._Strict):
    """A study file: ``name``, ``output_dir``, ``base`` (a run config), ``techniques``, ``recipes``."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    output_dir: str = "models"
    base: dict = Field(..., description="a run config without name, output_dir and stages")
    techniques: Techniques = Techniques()
    latency_rounds: int = Field(3, ge=0, description="re-time every file on the local CPU in this many interleaved "
                                                    "rounds at the end (0: keep each run's own benchmark)")
    recipes: Optional[tuple[str, ...]] = Field(None, description=f"default: every recipe whose techniques are given; "
                                                                  f"names: {', '.join(RECIPES)}")

    @field_validator("recipes")
    @classmethod
    def _known(cls, value):
        for name in value or ():
            if name not in RECIPES:
                raise ValueError(f"unknown recipe {name!r}; allowed: {', '.join(RECIPES)}")
        if value is not None and not value:
            raise ValueError("give at least one recipe, or leave recipes out to run all that are configured")
        return value

    @field_validator("base")
    @classmethod
    def _no_run_keys(cls, value):
        for key in ("name", "output_dir", "stages"):
            if key in value:
                raise ValueError(f"base.{key} is set by the study (name, output_dir) or by the recipes (stages); "
                                 "remove it")
        return value

    @property
    def study_dir(self) -> Path:
        """``<output_dir>/<name>``."""
        return Path(self.output_dir) / self.name


def load(path: str | Path, overrides=(), recipes: Optional[list[str]] = None) -> StudyConfig:
    """Reads and validates a study file; ``overrides`` as in ``edgecomp.train --set``.

    Raises:
        ConfigError: one line naming the key, the value and what is allowed, also
            for a recipe whose run config would be invalid.
    """

    def chosen(raw: dict) -> None:
        if recipes:
            raw["recipes"] = list(recipes)

    study = config_file.load_file(path, overrides, StudyConfig, prepare=chosen)
    for name in selected(study):
        run_config(study, name)  # every recipe's run config is valid before anything trains
    return study


def selected(study: StudyConfig) -> list[str]:
    """The recipes to run, in table order: those asked for, else all whose techniques are given."""
    given = {name for name, value in study.techniques if value is not None}
    if study.recipes is not None:
        missing = [(name, kind) for name in study.recipes for kind in RECIPES[name] if kind not in given]
        if missing:
            name, kind = missing[0]
            raise ConfigError(f"recipes: {name} needs techniques.{kind}; add its parameters or drop the recipe")
        return list(study.recipes)
    return [name for name, kinds in RECIPES.items() if set(kinds) <= given]


def run_config(study: StudyConfig, recipe: str, *, name: Optional[str] = None,
               knobs: Optional[dict[str, dict]] = None, targets: Optional[list] = None,
               source: str = "study") -> config.Config:
    """The run config of one recipe: the base, this recipe's stages, its own run folder.

    Args:
        study: the study (or search) file.
        recipe: a key of ``RECIPES``.
        name: the run's name (default: the recipe's).
        knobs: per technique, parameters that replace the file's (the recipe search's knobs);
            a technique the file does not configure starts from its defaults.
        targets: the run's targets as raw config items (default: the base's).
        source: how an error names the file's kind.
    """
    stages = []
    for kind in RECIPES[recipe]:
        given = getattr(study.techniques, kind)
        params = given.model_dump(mode="json", exclude_unset=True) if given is not None else {}
        params.update((knobs or {}).get(kind, {}))
        if kind == "quantize" and "cluster" not in RECIPES[recipe]:
            params.pop("weights", None)   # per-tensor weights are for clustered kernels; the others keep per-channel
        if kind == "filters":
            stages.append({"prune": {**params, "structure": "filters"}})
        else:
            stages.append({kind: params})
    raw = {**json.loads(json.dumps(study.base)), "name": name or recipe, "output_dir": str(study.study_dir / "runs"),
           "stages": stages}
    if targets is not None:
        raw["targets"] = targets
    return config.from_dict(raw, source=f"{source} recipe {name or recipe}")


def run(study: StudyConfig, *, resume: bool = False) -> list[dict]:
    """Runs every selected recipe, sharing one trained baseline; writes and returns the table rows."""
    from edgecomp import pipeline

    names = selected(study)
    rows, reports = [], {}
    shared: Optional[Path] = None
    for number, name in enumerate(names, start=1):
        cfg = run_config(study, name)
        log.info("study %s: recipe %d/%d: %s (%s)", study.name, number, len(names), name,
                 " → ".join(RECIPES[name]) or "no stages")
        baseline = checkpoints.baseline_folder(cfg.run_dir)
        if shared is not None and not baseline.exists():
            shutil.copytree(shared, baseline)
        started = time.time()
        report = pipeline.run(cfg, resume=True if shared is not None else resume)
        reports[name] = (report, time.time() - started, cfg)
        if shared is None and baseline.exists():
            shared = baseline
    reference = next(iter(reports.values()))[0].reference
    for name, (report, seconds, cfg) in reports.items():
        rows.extend(table_rows(name, report, reference, seconds, cfg.run_dir))
    if study.latency_rounds:
        remeasure_latency(study, rows)
    write(study, rows)
    return rows


def remeasure_latency(study: StudyConfig, rows: list[dict]) -> None:
    """Times every row's file again on the local CPU, interleaved, so the latency column is comparable.

    Each recipe's own run benchmarks its files minutes apart from the others', and a
    shared machine's load changes in between. Here every file runs once per round
    (``study.latency_rounds`` rounds, the order reversed every other round, each
    benchmark ``base.benchmark.runs`` invokes after its warm-up, in its own child
    process); a row's ``p50_ms`` becomes the median of its per-round p50s, and the
    latency ratios are recomputed from those. The run folders keep their own figures.
    """
    from edgecomp import data as data_module
    from edgecomp.devices import open_device

    cfg = run_config(study, rows[0]["recipe"])
    sample = data_module.load(cfg.data, cfg.seed).x_test[:1]
    device = open_device("local")
    paths = [Path(row["path"]) for row in rows]
    samples: list[list[float]] = [[] for _ in rows]
    timed = [index for index, path in enumerate(paths) if path.is_file()]
    for round_index in range(study.latency_rounds):
        order = timed[:: -1 if round_index % 2 else 1]
        log.info("study %s: interleaved latency, round %d/%d", study.name, round_index + 1, study.latency_rounds)
        for index in order:
            result = device.benchmark(paths[index], runs=cfg.benchmark.runs, warmup=cfg.benchmark.warmup,
                                      threads=cfg.benchmark.threads[0], inputs=sample)
            samples[index].append(result["latency_ms"]["p50"])
    reference = next((statistics.median(values) for row, values in zip(rows, samples)
                      if row["target"] == "reference" and values), None)
    for row, values in zip(rows, samples):
        if not values:
            continue
        row["p50_ms"] = round(statistics.median(values), 6)
        row["latency_ratio"] = _ratio(row["p50_ms"], reference)
        row["latency"] = f"local, {study.latency_rounds} interleaved rounds"


def table_rows(recipe: str, report, reference, seconds: float, run_dir: Path) -> list[dict]:
    """One row per target of ``report`` (plus the float32 reference for the ``ptq`` recipe)."""
    from edgecomp import graph

    # QAT's record counts the quantize wrappers' variables too; it changes no weight count.
    final = next(record for record in reversed(report.stages) if record.stage != "quantize")
    records = ([report.reference] if recipe == "ptq" else []) + list(report.targets)
    rows = []
    for record in records:
        path = run_dir / record.path
        macs = None
        if record.path and path.is_file():
            try:
                operators, tensors, _, _ = graph.read_model(path.read_bytes())
                macs = int(sum(graph.macs(op, tensors) for op in operators))
            except Exception:  # noqa: BLE001 - MACs are a figure of the table, not a check
                macs = None
        accuracy = (record.metrics or {}).get("accuracy")
        p50 = _p50(record)
        rows.append({
            "path": str(path),
            "recipe": recipe,
            "target": "reference" if record is report.reference else record.target,
            "quantization": record.quantization,
            "params": final.params, "nonzero_params": final.nonzero_params, "macs": macs,
            "size_bytes": record.size_bytes, "gzip_bytes": record.gzip_bytes,
            "accuracy": accuracy,
            "accuracy_delta_pt": _delta(accuracy, reference),
            "p50_ms": p50,
            "size_ratio": _ratio(record.size_bytes, reference.size_bytes),
            "gzip_ratio": _ratio(record.gzip_bytes, reference.gzip_bytes),
            "latency_ratio": _ratio(p50, _p50(reference)),
            "seconds": round(seconds, 1),
            "ok": bool(record.compatibility.get("ok")),
        })
    return rows


def _p50(record) -> Optional[float]:
    return report_module.typical_latency(record.benchmarks[0]["latency_ms"]) if record.benchmarks else None


def _ratio(value, reference) -> Optional[float]:
    return None if value is None or not reference else round(value / reference, 4)


def _delta(accuracy, reference) -> Optional[float]:
    base = (reference.metrics or {}).get("accuracy")
    return None if accuracy is None or base is None else round(100 * (accuracy - base), 2)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: lower cost (x) and higher accuracy (y), both at least as good.

    Example:
        >>> pareto_front([(1.0, 0.9), (2.0, 0.95), (3.0, 0.93), (0.5, 0.5)])
        [0, 1, 3]
    """
    front = []
    for index, (cost, accuracy) in enumerate(points):
        dominated = any(
            other_cost <= cost and other_accuracy >= accuracy and (other_cost, other_accuracy) != (cost, accuracy)
            for other_cost, other_accuracy in points
        )
        if not dominated:
            front.append(index)
    return front


def render(study: StudyConfig, rows: list[dict]) -> str:
    """``study.md``: the table, then what was skipped."""
    lines = [f"# Study {study.name}", "",
             "Ratios are to the float32 reference of the baseline; accuracy is measured by running each "
             "`.tflite` on the test split; " + (
                 f"latency is the median of each file's p50 over {study.latency_rounds} rounds on the local CPU, "
                 "every file timed once per round, interleaved." if study.latency_rounds else
                 "latency is p50 on the first benchmark device, measured in each recipe's own run."), "",
             "| recipe | target | quant | params | non-zero | MACs | size | gzip | accuracy | Δ pt | p50 ms | "
             "size × | gzip × | latency × | s | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[key]) for key in COLUMNS) + " |")
    not_run = [name for name in RECIPES if name not in {row["recipe"] for row in rows}]
    if not_run:
        lines += ["", f"Not run (their techniques are not configured, or not asked for): {', '.join(not_run)}."]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write(study: StudyConfig, rows: list[dict]) -> None:
    """Writes ``study.md``, ``study.csv``, ``study.json`` and ``pareto_<target>.png`` atomically."""
    folder = study.study_dir
    files.write_text(folder / "study.md", render(study, rows))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=(*COLUMNS, "path"), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(folder / "study.csv", buffer.getvalue())
    files.write_text(folder / "study.json", json.dumps({"name": study.name, "rows": rows}, indent=2) + "\n")
    for target in sorted({row["target"] for row in rows if row["target"] != "reference"}):
        plot(rows, target, folder / f"pareto_{target}.png")


def plot(rows: list[dict], target: str, path: Path) -> None:
    """Accuracy against size and against latency for ``target`` (and the reference), Pareto front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used as matplotlib.ticker

    chosen = [row for row in rows if row["target"] in (target, "reference") and row["accuracy"] is not None]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    # gzip size: what pruning and clustering save shows there (a sparse int8 file is as large as a dense one).
    for axis, key, label in ((axes[0], "gzip_bytes", "gzip size of the file (KB)"),
                             (axes[1], "p50_ms", "latency p50 (ms)")):
        points = [row for row in chosen if row[key] is not None]
        values = [(row[key] / 1024 if key == "gzip_bytes" else row[key], row["accuracy"]) for row in points]
        front = set(pareto_front(values))
        for index, ((x, y), row) in enumerate(zip(values, points)):
            axis.scatter([x], [y], marker="*" if index in front else "o", s=90 if index in front else 30,
                         color="tab:red" if index in front else "tab:blue")
            axis.annotate(row["recipe"] if row["target"] != "reference" else "float32", (x, y), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")
        ordered = sorted(values[i] for i in front)
        if ordered:
            axis.plot([x for x, _ in ordered], [y for _, y in ordered], color="tab:red", alpha=0.4)
        if values:
            axis.set_xscale("log")
            axis.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xlabel(label)
        axis.set_ylabel("accuracy (from the .tflite)")
        axis.grid(True, alpha=0.3)
    figure.suptitle(f"{target}: Pareto front (red stars)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=110, format="png")
    plt.close(figure)
    files.write_bytes(path, buffer.getvalue())


def summary(study: StudyConfig, rows: list[dict]) -> str:
    """What ``python -m edgecomp.study`` prints: where the table went, then one line per row."""
    lines = [f"wrote {study.study_dir / 'study.md'} ({len(rows)} rows)"]
    for row in rows:
        lines.append(f"  {row['recipe']:18s} {row['target']:9s} {row['quantization']:8s} {row['size_bytes']:>9,d} B  "
                     f"accuracy {_cell(row['accuracy'])}  p50 {_cell(row['p50_ms'])} ms  "
                     f"size × {_cell(row['size_ratio'])}")
    return "\n".join(lines)


def main(argv) -> int:
    """``python -m edgecomp.study``: flags are defined only when run as a program."""
    from absl import flags

    from edgecomp import cli

    options = flags.FLAGS
    path = cli.config_flag(argv, options.config, "configs/study_digits.yaml")
    recipes = [name.strip() for name in options.recipes.split(",") if name.strip()] if options.recipes else None
    study = load(path, list(options.set), recipes)
    print(summary(study, run(study, resume=options.resume)))
    return 0


if __name__ == "__main__":
    from absl import flags

    from edgecomp import cli

    flags.DEFINE_string("config", None, "study YAML file (see configs/study_digits.yaml).")
    flags.DEFINE_multi_string("set", [], "Override a key: --set base.train.epochs=3 (values parsed as YAML).")
    flags.DEFINE_string("recipes", None, f"comma-separated recipes to run (default: all configured): "
                                         f"{', '.join(RECIPES)}")
    flags.DEFINE_bool("resume", False, "Reuse finished checkpoints of an earlier run of this study.")
    cli.run_main(main)
