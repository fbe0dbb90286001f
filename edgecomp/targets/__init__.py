"""Targets: a frozen profile per target (converter settings, rules) and its verifier.

``profiles.py`` is plain data with no TensorFlow import; ``convert.py`` turns a
Keras model into ``.tflite`` bytes for a profile; one module per target proves that
a file meets its target's rules: ``cpu.py`` (with ``accuracy_guard.py``), ``gpu.py``,
``edgetpu.py``, ``micro.py`` (with ``micro_project.py`` and ``micro_build.py``).

Each of those four modules is a target to the run and to ``edgecomp.verify``: it has
``judge(content, params, path, x_test, y_test, expect=None) -> (compatibility, metrics,
skipped)`` (the rules with their state, accuracy measured by running the file, and what
was not checked, with why) and ``BENCHMARKED`` (whether the run times its files on the
benchmark devices); optionally ``convert(model, params, calibration) -> (content, facts)``
when its files are more than the converter's bytes (micro strips strings) and
``finish`` for the files it writes beside the model. ``module(target)`` finds it;
``convert_for(target, ...)`` makes a target's file the same way for the run, the search
and ``edgecomp.convert``.

Example:
    >>> from edgecomp import targets
    >>> targets.module("reference").__name__          # the float32 reference is judged as a cpu file
    'edgecomp.targets.cpu'
"""

import importlib

MODULES = {"reference": "cpu", "cpu": "cpu", "gpu": "gpu", "edgetpu": "edgetpu", "micro": "micro"}


def module(target: str):
    """The module that judges ``target``'s files (``judge`` and ``BENCHMARKED``)."""
    return importlib.import_module(f"edgecomp.targets.{MODULES[target]}")


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
