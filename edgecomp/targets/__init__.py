"""Targets: a frozen profile per target (converter settings, rules) and its verifier.

``profiles.py`` is plain data with no TensorFlow import; ``convert.py`` turns a
Keras model into ``.tflite`` bytes for a profile; one module per target proves that
a file meets its target's rules: ``cpu.py`` (with ``accuracy_guard.py``), ``gpu.py``,
``edgetpu.py``, ``micro.py`` (with ``micro_sources.py``, ``micro_project.py``,
``micro_build.py`` and ``micro_report.py``).

Each of those four modules is a target to the run and to ``edgecomp.verify``: it has
``judge(content, params, path, x_test, y_test, expect=None) -> (compatibility, metrics,
skipped)`` (the rules with their state, accuracy measured by running the file, and what
was not checked, with why) and ``BENCHMARKED`` (whether the run times its files on the
benchmark devices). ``module(target)`` finds it; ``convert_for(target, ...)`` makes a
target's file the same way for the run, the search and ``edgecomp.convert``.

A target module may also have these hooks (``hook(target, name)`` finds one; the run
and the report call each for every target whose module has it):

- ``convert(model, params, calibration) -> (content, facts)``: its files are more
  than the converter's bytes (micro strips strings); ``convert_for`` calls it.
- ``require(where)``: raises ``ConfigError`` naming ``where`` (``targets[i].<target>``)
  when this machine cannot judge the target's files (micro: TFLM's interpreter is
  not installed); the run calls it for each configured target before anything trains.
- ``finish(record, content, params, folder, dataset, expect)``: writes the files
  a target leaves beside its model (micro: the LUT variant, C sources, project).
- ``measure_baseline(baseline, params, calibration)``: a yardstick measured on the
  baseline model before any stage, or None (micro: the bytes of its plain int8
  file); the run calls it once per target, with the first such target's params,
  when stages run.
- ``compare_with_baseline(record, measured)``: adds the comparison of a judged
  file with what ``measure_baseline`` returned (micro: flash against the plain int8
  file) to ``record``; called when that was not None.
- ``report_check_lines(record) -> list[str]``: Markdown lines under the file's entry
  in the report's checks (micro: flash against plain int8, LUT compression).
- ``report_section(records) -> list[str]``: the target's own Markdown section,
  given its records in the report, or no lines (micro: flash and RAM).

And a constant: ``METADATA = False`` keeps the target's files free of TFLite metadata
(micro: TFLM never reads it); every other file carries it (``edgecomp.tflite_metadata``).

Example:
    >>> from edgecomp import targets
    >>> targets.module("reference").__name__          # the float32 reference is judged as a cpu file
    'edgecomp.targets.cpu'
    >>> targets.hook("cpu", "report_section") is None
    True
"""

import importlib

MODULES = {"reference": "cpu", "cpu": "cpu", "gpu": "gpu", "edgetpu": "edgetpu", "micro": "micro"}


def module(target: str):
    """The module that judges ``target``'s files (``judge`` and ``BENCHMARKED``)."""
    return importlib.import_module(f"edgecomp.targets.{MODULES[target]}")


def hook(target: str, name: str):
    """``target``'s optional hook ``name`` (listed above), or None when its module has none or it is no target."""
    if target not in MODULES:
        return None
    return getattr(module(target), name, None)


def convert_for(target: str, model, params, calibration=None) -> tuple[bytes, dict]:
    """``target``'s file for ``model`` with its config ``params``, and facts about how it was made.

    Raises:
        ModelError: the converter refused the model.
    """
    own = getattr(module(target), "convert", None)
    if own is not None:
        return own(model, params, calibration)
    from edgecomp.targets import convert as converter

    content = converter.convert(model, params.quantization, params.io, calibration,
                                static_batch=target in converter.BATCH_ONE_TARGETS)
    return content, {}
