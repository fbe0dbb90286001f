"""Targets: a frozen profile per target (converter settings, rules) and its verifier.

``profiles.py`` is plain data with no TensorFlow import; ``convert.py`` turns a
Keras model into ``.tflite`` bytes for a profile; one module per target proves that
a file meets its target's rules: ``cpu.py`` (with ``accuracy_guard.py``), ``gpu.py``,
``edgetpu.py``, ``micro.py`` (with ``micro_project.py`` and ``micro_build.py``).

Each of those four modules is a target to the run and to ``edgecomp.verify``: it has
``judge(content, params, path, x_test, y_test, expect=None) -> (compatibility, metrics,
skipped)`` (the rules with their state, accuracy measured by running the file, and what
was not checked, with why) and ``BENCHMARKED`` (whether the run times its files on the
benchmark devices). ``module(target)`` finds it.

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
