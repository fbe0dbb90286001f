"""Builds and runs the micro target's project against a real TFLM tree, and measures the build.

``build`` runs the project's Makefile (``micro_project``) with only the kernel sources
the model needs: it links, reads the linker's undefined references, finds the TFLM
sources that define them, and links again (a model's kernels compile in seconds; the
whole tree takes minutes). ``run`` runs the program (natively, or under
``qemu-system-arm -M mps2-an386 -cpu cortex-m4`` with semihosting) and parses what it
prints. ``memory`` reads flash and RAM from the linked program.

Example:
    >>> program = build(folder, tree, "cortex_m4", build_dir)  # doctest: +SKIP
    >>> result = run(program, "cortex_m4")                   # doctest: +SKIP
    >>> result.identical, result.arena_used_bytes            # doctest: +SKIP
    (32, 5680)
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from edgecomp.errors import ModelError

TARGETS = ("host", "cortex_m4")
TOOLS = {"host": ("make", "g++", "gcc", "ar", "size", "nm"),
         "cortex_m4": ("make", "arm-none-eabi-g++", "arm-none-eabi-gcc", "arm-none-eabi-ar", "arm-none-eabi-size",
                       "arm-none-eabi-nm", "qemu-system-arm")}
# Kernel sources the link can draw on (the Makefile's KERNEL_SRCS), relative to the tree.
KERNEL_GLOBS = ("tensorflow/lite/micro/kernels/*.cc", "tensorflow/lite/micro/kernels/cmsis_nn/*.cc",
                "third_party/cmsis_nn/Source/*/*.c")
MAX_LINKS = 12
BUILD_TIMEOUT_S = 1800
RUN_TIMEOUT_S = 600
# Arrays of the example program that are not part of what a user's firmware would hold.
EXAMPLE_SYMBOLS = ("kTestInputs", "kTestLabels", "kExpectedOutputs")


@dataclasses.dataclass
class Run:
    """What the example program printed."""

    outputs: np.ndarray          # raw int8 outputs, one row per sample
    labels: np.ndarray
    predicted: np.ndarray
    arena_used_bytes: int
    arena_bytes: int
    identical: int               # samples whose outputs equal the Python TFLM run's (the program's own check)


def missing_tools(target: str) -> list[str]:
    """The programs a build for ``target`` needs that are not on PATH."""
    return [tool for tool in TOOLS[target] if shutil.which(tool) is None]


def check_tree(tree: Path) -> Path:
    """The TFLM tree, resolved, after checking it looks like a ``create_tflm_tree.py`` export.

    Raises:
        ModelError: the folder is missing or has no ``tensorflow/lite/micro/micro_interpreter.h``.
    """
    tree = Path(tree).expanduser().resolve()
    if not (tree / "tensorflow/lite/micro/micro_interpreter.h").is_file():
        raise ModelError(f"{tree} is not a TFLM source tree (no tensorflow/lite/micro/micro_interpreter.h); "
                         "export one with tflite-micro's tensorflow/lite/micro/tools/project_generation/"
                         "create_tflm_tree.py")
    return tree


def _symbol_name(demangled: str) -> str:
    """``tflite::ConvParamsQuantized(TfLiteConvParams const&, ...)`` → ``ConvParamsQuantized``.

    A class's vtable or typeinfo (``vtable for tflite::DecodeStateHuffman``) → ``DecodeStateHuffman::``:
    it is emitted where the class's methods are defined.
    """
    text = demangled.strip()
    if text.startswith(("vtable for ", "typeinfo for ")):
        return text.split()[-1].split("::")[-1] + "::"
    if text.endswith(")"):
        depth = 0
        for position in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[position], 0)
            if depth == 0:
                text = text[:position]
                break
    text = re.sub(r"<[^<>]*>$", "", text.strip())
    return text.split("::")[-1].split()[-1] if text else ""


def _defines(source: str, name: str) -> bool:
    """Whether C/C++ ``source`` defines function or variable ``name`` (a line that begins with its type).

    ``Class::`` asks whether it defines a method of ``Class`` outside the class body.
    """
    if name.endswith("::"):
        return re.search(rf"^[\w:<>*& \t]*\b{re.escape(name)}~?\w+[ \t]*\([^;]*$", source, re.M) is not None
    for match in re.finditer(rf"^[ \t]*(?:[\w:<>,*&]+[ \t*&]+)+(?:\w+::)*{re.escape(name)}[ \t]*([(={{\[])", source, re.M):
        if match.group(0).lstrip().startswith(("return ", "else ")):
            continue
        if match.group(1) != "(":
            return True
        rest = source[match.end():]
        semicolon, brace = rest.find(";"), rest.find("{")
        if brace != -1 and (semicolon == -1 or brace < semicolon):
            return True
    return False


def _definers(tree: Path, names: set[str], chosen: set[str]) -> dict[str, str]:
    """``{name: source}``: for each symbol, a kernel source of the tree (not yet chosen) that defines it."""
    found = {}
    for pattern in KERNEL_GLOBS:
        for path in sorted(tree.glob(pattern)):
            relative = str(path.relative_to(tree))
            if relative in chosen or path.name.endswith(("_test.cc", "_test_config.cc")):
                continue
            text = path.read_text(errors="replace")
            for name in names - found.keys():
                if name in text and _defines(text, name):
                    found[name] = relative
    return found


def _first_error(log: str) -> str:
    """The compiler's first error line, with what to do when it is a known gap of TFLM's source export."""
    line = next((line.strip() for line in log.splitlines() if "error:" in line or "Error " in line), "see the log")
    if "compression/metadata_saved.h" in line:
        line += (" (a LUT-compressed model needs TFLM's compression sources: copy "
                 "tensorflow/lite/micro/compression/metadata_saved.h from tflite-micro into the tree)")
    return line


def _make(folder: Path, tree: Path, target: str, variables: dict, goal: str = "all",
          timeout: float = BUILD_TIMEOUT_S) -> subprocess.CompletedProcess:
    command = ["make", "-C", str(folder), f"-j{os.cpu_count() or 1}", goal, f"TFLM_TREE={tree}", f"TARGET={target}"]
    command += [f"{key}={value}" for key, value in variables.items()]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise ModelError(f"building the micro project for {target} took over {timeout:.0f} s") from error


def build(folder: Path, tree: Path, target: str, build_dir: Path, library_cache: Path | None = None) -> Path:
    """Builds the project in ``folder`` for ``target`` with only the TFLM sources the model needs.

    Args:
        folder: a micro target folder (``micro_project.write_project`` wrote its Makefile).
        tree: a TFLM source tree (a ``create_tflm_tree.py`` export for that target).
        target: ``host`` or ``cortex_m4``.
        build_dir: where the project's objects and program go (the folder itself stays as it is).
        library_cache: where TFLM's objects are kept between builds (same tree, target and
            flags); ``build_dir`` when None.

    Returns:
        The linked program.

    Raises:
        ModelError: the toolchain is missing, a source does not compile, or a symbol is
            defined nowhere in the tree (the message ends with the compiler's output).
    """
    if target not in TARGETS:
        raise ModelError(f"micro build target {target!r} is unknown; allowed: {', '.join(TARGETS)}")
    missing = missing_tools(target)
    if missing:
        raise ModelError(f"cannot build for {target}: {', '.join(missing)} not found on PATH")
    tree = check_tree(tree)
    variables = {"BUILD": str(Path(build_dir).resolve())}
    if library_cache is not None:
        variables["LIB_BUILD"] = str(Path(library_cache).resolve())
    chosen: list[str] = []
    for _ in range(MAX_LINKS):
        variables["KERNEL_SRCS"] = " ".join(f"$(TFLM_TREE)/{source}" for source in chosen)
        done = _make(folder, tree, target, variables)
        if done.returncode == 0:
            return Path(build_dir) / "edgecomp_example"
        log = done.stdout + done.stderr
        undefined = {_symbol_name(name) for name in re.findall(r"undefined reference to [`'](.+?)'", log)}
        undefined.discard("")
        if not undefined:
            raise ModelError(f"the micro project does not build for {target}: {_first_error(log)}\n{log[-3000:]}")
        found = _definers(tree, undefined, set(chosen))
        if not found:
            raise ModelError(f"the micro project does not link for {target}: no source in {tree} defines "
                             f"{', '.join(sorted(undefined))}:\n{log[-2000:]}")
        chosen += sorted(set(found.values()))
    raise ModelError(f"the micro project still did not link for {target} after {MAX_LINKS} rounds of sources")


def run(program: Path, target: str, timeout: float = RUN_TIMEOUT_S) -> Run:
    """Runs the built example program (cortex_m4: under QEMU's mps2-an386) and parses its output.

    Raises:
        ModelError: the program failed to start, crashed or printed something unexpected.
    """
    if target == "host":
        command = [str(program.resolve())]
    else:
        command = ["qemu-system-arm", "-M", "mps2-an386", "-cpu", "cortex-m4", "-nographic", "-monitor", "none",
                   "-serial", "none", "-semihosting-config", "enable=on,target=native", "-kernel", str(program)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise ModelError(f"the micro example program on {target} ran over {timeout:.0f} s") from error
    samples = re.findall(r"^sample (\d+) label (-?\d+) predicted (\d+) outputs((?: -?\d+)+)$", done.stdout, re.M)
    arena = re.search(r"^arena_used_bytes (\d+) of (\d+)$", done.stdout, re.M)
    identical = re.search(r"^identical_to_python_tflm (\d+)/(\d+)$", done.stdout, re.M)
    if done.returncode not in (0, 1) or not samples or arena is None or identical is None:
        reason = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        tail = (done.stdout + done.stderr).strip()[-600:]
        raise ModelError(f"the micro example program on {target} failed ({reason}): {tail}")
    return Run(outputs=np.array([[int(v) for v in row[3].split()] for row in samples], dtype=np.int8),
               labels=np.array([int(row[1]) for row in samples]), predicted=np.array([int(row[2]) for row in samples]),
               arena_used_bytes=int(arena.group(1)), arena_bytes=int(arena.group(2)),
               identical=int(identical.group(1)))


def memory(program: Path, target: str, model_bytes: int) -> dict:
    """Flash and RAM of the linked program, without the example's test arrays.

    Returns:
        ``{"flash_bytes", "model_bytes", "runtime_bytes", "ram_bytes", "arena_bytes"}``:
        flash = text + data, split into the model array and the rest (TFLM's runtime, the
        model's kernels, the API and the C library); RAM = data + bss (the arena included).
    """
    prefix = "" if target == "host" else "arm-none-eabi-"
    sizes = subprocess.run([f"{prefix}size", "-B", str(program)], capture_output=True, text=True, check=True).stdout
    text, data, bss = (int(value) for value in sizes.splitlines()[1].split()[:3])
    symbols = subprocess.run([f"{prefix}nm", "-S", "-C", str(program)], capture_output=True, text=True,
                             check=True).stdout
    example = 0
    arena = 0
    for line in symbols.splitlines():
        parts = line.split(maxsplit=3)
        if len(parts) == 4 and parts[3] in EXAMPLE_SYMBOLS:
            example += int(parts[1], 16)
        if len(parts) == 4 and parts[3] == "edgecomp::(anonymous namespace)::arena":
            arena = int(parts[1], 16)
    flash = text + data - example
    return {"flash_bytes": flash, "model_bytes": model_bytes, "runtime_bytes": flash - model_bytes,
            "ram_bytes": data + bss, "arena_bytes": arena, "example_bytes": example}


_LIBRARY_CACHES: dict[tuple, Path] = {}


def _library_cache(tree: Path, target: str, defines: list[str]) -> Path:
    """A folder for TFLM's objects, shared by every build of this process with the same tree, target and flags."""
    key = (str(tree), target, tuple(defines))
    if key not in _LIBRARY_CACHES:
        folder = Path(tempfile.mkdtemp(prefix=f"edgecomp-tflm-{target}-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _LIBRARY_CACHES[key] = folder
    return _LIBRARY_CACHES[key]


def check(content: bytes, folder: Path, builds: dict[str, str], expected: np.ndarray, labels: np.ndarray) -> dict:
    """Builds the project in ``folder`` for each target, runs it and compares its outputs byte for byte.

    Args:
        content: the model in ``folder``'s ``model_data.cc``.
        folder: the micro target's folder, with the project ``micro_project.write_project`` wrote.
        builds: ``{target: TFLM tree}`` (the micro target's ``build`` key).
        expected: the raw outputs of the Python TFLM interpreter on the project's test samples.
        labels: their labels.

    Returns:
        ``{target: record}``: each record has ``ok``, ``rules`` (``builds_<target>``,
        ``identical_<target>``) and, when the program ran, the figures of ``memory`` plus
        ``arena_used_bytes``, ``samples`` and ``accuracy``.
    """
    from edgecomp.targets import micro_project

    results = {}
    for target, tree in builds.items():
        label = "on the host" if target == "host" else "for a Cortex-M4 (run under QEMU mps2-an386)"
        record: dict = {"tree": str(tree)}
        with tempfile.TemporaryDirectory(prefix=f"edgecomp-micro-{target}-") as build_dir:
            try:
                resolved = check_tree(Path(tree))
                cache = _library_cache(resolved, target, micro_project.model_defines(content))
                program = build(folder, resolved, target, Path(build_dir), cache)
                ran = run(program, target)
                record.update(memory(program, target, len(content)))
            except (ModelError, OSError, subprocess.SubprocessError) as error:
                message = str(error).splitlines()[0] if str(error) else type(error).__name__
                record.update(ok=False, error=str(error)[-3000:],
                              rules=[{"rule": f"builds_{target}", "ok": False, "detail": f"{label}: {message}"}])
                results[target] = record
                continue
        identical = int(sum(np.array_equal(a, b) for a, b in zip(ran.outputs, expected)))
        same_count = len(ran.outputs) == len(expected)
        record.update(arena_used_bytes=ran.arena_used_bytes, samples=len(ran.outputs),
                      accuracy=float((ran.predicted == labels[: len(ran.predicted)]).mean()))
        record["rules"] = [
            {"rule": f"builds_{target}", "ok": True,
             "detail": f"built {label} against {tree}; ran {len(ran.outputs)} test samples, accuracy "
                       f"{record['accuracy']:.4f} on them, arena_used_bytes {ran.arena_used_bytes:,}"},
            {"rule": f"identical_{target}", "ok": bool(same_count and identical == len(expected)),
             "detail": f"{identical} of {len(expected)} samples' outputs byte-identical to the Python TFLM "
                       "interpreter's on the same quantized inputs"},
        ]
        record["ok"] = all(rule["ok"] for rule in record["rules"])
        results[target] = record
    return results
