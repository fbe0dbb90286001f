"""Targets: a frozen profile per target (converter settings, rules) and its verifier.

``profiles.py`` is plain data with no TensorFlow import; ``convert.py`` turns a
Keras model into ``.tflite`` bytes for a profile; one module per target proves that
a file meets its target's rules: ``cpu.py`` (with ``accuracy_guard.py``), ``gpu.py``,
``edgetpu.py``, ``micro.py`` (with ``micro_project.py`` and ``micro_build.py``).
"""
