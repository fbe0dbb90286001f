"""What the micro target writes beside its file after judging it: the LUT variant, the C sources, the project.

``micro.finish`` calls ``finish`` (the run calls every target's ``finish`` when it
has one). In order: when clustering promised at most N values per channel and the
file runs right, the TFLM lookup-table variant (``model_lut.tflite``, kept when its
outputs are identical); the C sources of whichever file is smaller
(``model_data.cc/.h``, ``op_resolver.h``); and, when the arena is known, the
buildable project (``micro_project``), built and run for each ``build`` TFLM tree
(``micro_build``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from edgecomp import files
from edgecomp.errors import ModelError
from edgecomp.progress import Ticker
from edgecomp.targets import micro, micro_build, micro_project

log = logging.getLogger("edgecomp")


def finish(record, content: bytes, params, folder: Path, dataset, expect: dict | None = None) -> None:
    """Writes the LUT variant, the sources and the project for a judged micro file; updates ``record``."""
    details = record.compatibility["details"]
    sources = content
    runs_right = all(rule["ok"] for rule in details["rules"]
                     if not rule["rule"].startswith("fits_"))   # a LUT may make a model fit
    if expect and expect.get("clusters") and runs_right:
        # judge searched the arena on the same first test sample
        compressed, lut = micro.lut_variant(content, expect["clusters"], dataset.x_test[:50], details["arena_bytes"])
        details["lut"] = lut
        if compressed is not None:
            files.write_bytes(folder / "model_lut.tflite", compressed)
            sources = compressed
            micro.apply_lut(record.compatibility, params, compressed)
            log.info("micro: LUT compression %s → %s bytes, TFLM outputs identical", f"{len(content):,}",
                     f"{len(compressed):,}")
    for source in micro.write_sources(sources, folder):
        log.info("micro: wrote %s", source)
    details = record.compatibility["details"]   # apply_lut may have rebuilt it
    lut = details.get("lut") or {}
    arena = lut.get("arena_bytes") if sources is not content else details.get("arena_bytes")
    if arena:
        _project(record, sources, params, folder, dataset, arena)


def _project(record, content: bytes, params, folder: Path, dataset, arena: int) -> None:
    """Writes the micro project (API, example, Makefile); builds and runs it where ``build`` names a TFLM tree."""
    count = micro_project.example_samples(record.io, dataset.x_test)
    x, y = dataset.x_test[:count], dataset.y_test[:count]
    try:
        expected = micro.predict(content, x, arena, raw=True)
    except ModelError as error:
        log.error("micro: the example program's expected outputs could not be computed: %s", error)
        return
    micro_project.write_project(content, record.io, folder, x, y, expected, arena)
    log.info("micro: wrote the project (edgecomp_model.h/.cc, main.cc, Makefile) with %d test samples", count)
    if not params.build:
        record.compatibility["details"]["checked"] = "in the Python TFLM interpreter only (no build: micro.build)"
        return
    with Ticker("micro: building and running the project for " + ", ".join(params.build)):
        builds = micro_build.check(content, folder, dict(params.build), expected, y)
    micro.apply_builds(record.compatibility, params, builds)
    record.compatibility["details"]["checked"] = ("in the Python TFLM interpreter and by building and running "
                                                  "for " + ", ".join(params.build))
    for target, built in builds.items():
        for rule in built["rules"]:
            (log.info if rule["ok"] else log.error)("micro %s: %s: %s", target, rule["rule"], rule["detail"])
