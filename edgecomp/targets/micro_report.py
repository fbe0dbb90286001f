"""What the micro target adds to a run and its report beyond judging the file.

``micro`` exposes these as its target hooks (see ``edgecomp.targets``):
``plain_int8_flash`` measures the baseline's plain int8 file before any stage,
``compare_with_plain_int8`` sets a micro file's flash (and its LUT variant's) against
it, ``check_lines`` are the flash and LUT lines of a micro file under the report's
checks, and ``section_lines`` the report's Microcontroller section.
"""

from __future__ import annotations

import logging

from edgecomp.errors import ModelError
from edgecomp.targets import micro

log = logging.getLogger("edgecomp")


def plain_int8_flash(baseline, params, calibration) -> int | None:
    """Bytes of the baseline converted to plain int8 for the first micro target, when stages run.

    The yardstick of what the stages (and LUT compression) saved on flash, measured
    in the same run: the same model, post-training int8, with the micro target's
    string stripping, before any stage.
    """
    from edgecomp.targets import convert as converter

    try:
        content = converter.convert(baseline, "int8", "int8", calibration)
    except ModelError as error:
        log.warning("micro: the baseline's plain int8 file for comparison could not be made: %s", error)
        return None
    return len(micro.strip_strings(content) if params.strip_strings else content)


def compare_with_plain_int8(record, plain_int8: int) -> None:
    """Adds the file's flash (and its LUT variant's) against the baseline's plain int8 file to ``record``."""
    details = record.compatibility["details"]
    details["plain_int8_flash_bytes"] = plain_int8
    details["flash_ratio_to_plain_int8"] = record.size_bytes / plain_int8
    lut = details.get("lut")
    if lut and lut.get("outputs_identical"):
        lut["ratio_to_plain_int8"] = lut["flash_bytes_after"] / plain_int8
        log.info("micro: LUT-compressed file %s bytes, %.3f× the baseline's plain int8 file (%s bytes)",
                 f"{lut['flash_bytes_after']:,}", lut["ratio_to_plain_int8"], f"{plain_int8:,}")


def check_lines(record) -> list[str]:
    """The file's flash against the baseline's plain int8 file and what LUT compression did (report's checks)."""
    lines = []
    plain_int8 = record.compatibility.get("details", {}).get("plain_int8_flash_bytes")
    if plain_int8:
        lines.append(f"  - flash {record.size_bytes:,} B, "
                     f"{record.compatibility['details']['flash_ratio_to_plain_int8']:.3f}× the baseline's plain "
                     f"int8 file ({plain_int8:,} B, converted in this run)")
    lut = record.compatibility.get("details", {}).get("lut")
    if lut:
        if lut.get("outputs_identical"):
            plain = (f", {lut['ratio_to_plain_int8']:.3f}× the baseline's plain int8 file"
                     if "ratio_to_plain_int8" in lut else "")
            lines.append(f"  - LUT compression (TFLM): {lut['flash_bytes_before']:,} → {lut['flash_bytes_after']:,} B "
                         f"({lut['ratio']:.3f}×{plain}), TFLM outputs identical, arena {lut['arena_bytes']:,} B; "
                         "C sources hold the compressed model")
        else:
            lines.append(f"  - LUT compression not used: {lut.get('note', 'TFLM outputs differed')}")
    return lines


def section_lines(records) -> list[str]:
    """Flash and RAM of each micro file: from a Cortex-M4 build where one ran, else estimated; what each build did."""
    rows = [record for record in records if record.compatibility.get("details", {}).get("arena_bytes")]
    if not rows:
        return []
    lines = ["", "## Microcontroller", "",
             "Flash = model + TFLM runtime and kernels; RAM = tensor arena + the program's static data. "
             "*measured*: linked for a Cortex-M4 (arm-none-eabi-gcc -Os, newlib) and run under QEMU (mps2-an386), "
             "which proves correctness and memory, not timing; *estimated*: the model's bytes plus a runtime "
             "estimate, and the arena of the Python TFLM interpreter on this 64-bit host.", "",
             "| variant | model | runtime + kernels | flash | arena | RAM | budget (flash / RAM) | figures | builds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for record in rows:
        details = record.compatibility["details"]
        builds = details.get("builds", {})
        arm = builds.get("cortex_m4", {})
        budget = details.get("budget_kb", {})
        if "arena_used_bytes" in arm:
            model, runtime = arm["model_bytes"], arm["runtime_bytes"]
            arena = f"{arm['arena_used_bytes']:,} B (32-bit)"
        else:
            model, runtime = details["flash_bytes"], details.get("runtime_flash_estimate_bytes")
            arena = f"{details['arena_bytes']:,} B (64-bit host)"
        built = "; ".join(f"{target}: {build['samples']} samples byte-identical" if build.get("ok")
                          else f"{target}: FAILED" for target, build in builds.items()) or "not built"
        lines.append(
            f"| {record.target} | {model:,} B | {'–' if runtime is None else f'{runtime:,} B'} | "
            f"{'–' if runtime is None else f'{model + runtime:,} B'} | {arena} | {details.get('ram_bytes', 0):,} B | "
            f"{budget.get('flash', '?')} KB / {budget.get('ram', '?')} KB | {details.get('figures', 'estimated')} | "
            f"{built} |")
    return lines
