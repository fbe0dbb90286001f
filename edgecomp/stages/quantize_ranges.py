"""Activation ranges of a fresh QAT model, started at the ranges its data really have (``initialize_ranges``).

tfmot's moving-average quantizers start every range at [-6, 6]; a short QAT fine-tune
barely moves them. ``initialize_ranges`` sets them from the float model's outputs and
from the batch ranges tfmot itself computes, before any training step.
"""

from __future__ import annotations

import numpy as np

from edgecomp import models
from edgecomp._keras import keras, tf


EMA_DECAY = 0.999   # tfmot's MovingAverageQuantizer, fixed in its code
RANGE_INIT = 6.0    # ... and the initial range it starts from, [-6, 6]


def _is_range(variable) -> bool:
    name = variable.name.split(":")[0].split("/")[-1]
    return name.endswith("_min") or name.endswith("_max")


def _range_variables(quantized, initial: float) -> list:
    """Activation range variables (``*_min``/``*_max``, not weights') still at ``[-initial, initial]``."""
    found = []
    for variable in quantized.non_trainable_variables:
        name = variable.name.split(":")[0].split("/")[-1]
        if not _is_range(variable) or "kernel" in name or name.startswith("bias"):
            continue
        expected = -initial if name.endswith("_min") else initial
        if np.all(variable.numpy() == expected):
            found.append(variable)
    return found


def _float_ranges(model, x: np.ndarray, batch_size: int, batches: int, names: set[str]) -> dict:
    """Layer name → (min, max) of its output in the float ``model``, averaged over ``batches`` batches.

    Reduced inside one graph, so no layer's full output is kept in memory. Probed on
    a copy: a layer the user's model shares with another graph has more than one output.
    """
    model = models.copy(model)
    probed = [layer for layer in model.layers if layer.name in names and not isinstance(layer.output, (list, tuple))]
    if not probed:
        return {}
    probe = keras.Model(model.inputs, [layer.output for layer in probed])

    @tf.function
    def extremes(batch):
        outputs = probe(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return [tf.reduce_min(o) for o in outputs], [tf.reduce_max(o) for o in outputs]

    low, high = [], []
    for start in range(0, min(len(x), batches * batch_size), batch_size):
        mins, maxs = extremes(tf.constant(x[start:start + batch_size]))
        low.append([float(v) for v in mins])
        high.append([float(v) for v in maxs])
    low, high = np.mean(low, axis=0), np.mean(high, axis=0)
    return {layer.name: (min(float(a), 0.0), max(float(b), 0.0)) for layer, a, b in zip(probed, low, high)}


def initialize_ranges(quantized, x: np.ndarray, batch_size: int, float_model=None, batches: int = 4,
                      rounds: int = 3) -> int:
    """Starts the activation ranges of a fresh QAT model at the ranges its data really have.

    tfmot's moving-average quantizers start every activation range at [-6, 6] and
    move it by 0.1 % per training step: after the few hundred steps of a short QAT
    fine-tune a range is still mostly [-6, 6], so activations beyond ±6 are clipped,
    and activations much smaller than 6 are rounded to zero, during training and in
    the converted file (measured: a squeeze-excite digits net lost 6 points after 2
    epochs of QAT while post-training int8 lost none; EfficientNetB0, whose in-model
    ``Rescaling(1/255)`` makes every early activation tiny, sat at chance).

    - A layer's output range (``output_*``, ``post_activation_*``) is set to the
      range of the same layer's output in ``float_model`` (the model that was wrapped),
      averaged over ``batches`` batches.
    - The input's all-values quantizer (it starts at [0, 0] and widens to every
      batch) takes the range of those batches.
    - Ranges left (layers the wrapping renamed or split, pre-activation ranges) are
      set to the mean of the batch ranges tfmot itself computes, read back from
      training-mode passes (``v1 = d·v0 + (1−d)·r`` gives ``r``), in a few rounds.
    - The weights' ranges keep the weights' own (tfmot's last-value quantizers start
      at [-6, 6] too, which rounds most small weights to zero until the first step).

    BatchNorm statistics are restored afterwards; no weight is trained. Returns the
    number of activation ranges set.
    """
    variables = _range_variables(quantized, RANGE_INIT)
    widening = _range_variables(quantized, 0.0)
    if not (variables or widening) or len(x) == 0:
        return 0
    set_from_float = _set_from_float(quantized, float_model, x, batch_size, batches, variables)
    variables = [v for v in variables if all(v is not w for w in set_from_float)]
    # BatchNorm statistics and the like, and the ranges already set; the weights' own ranges are left to the passes.
    keep = [(v, v.numpy()) for v in quantized.non_trainable_variables
            if not _is_range(v) or any(v is w for w in set_from_float)]
    samples = [x[start:start + batch_size] for start in range(0, len(x), batch_size)][:batches]
    for batch in samples:   # the all-values ranges first: every later pass sees real inputs
        quantized(batch, training=True)
    for variable, value in keep:
        variable.assign(value)
    for _ in range(rounds if variables else 0):
        observed = [[] for _ in variables]
        for batch in samples:
            before = [v.numpy() for v in variables]
            quantized(batch, training=True)
            for seen, variable, old in zip(observed, variables, before):
                seen.append((variable.numpy() - EMA_DECAY * old) / (1.0 - EMA_DECAY))
                variable.assign(old)
        for variable, seen in zip(variables, observed):
            variable.assign(np.mean(seen, axis=0).astype(variable.dtype.as_numpy_dtype))
        for variable, value in keep:
            variable.assign(value)
    return len(variables) + len(widening) + len(set_from_float)


def _set_from_float(quantized, float_model, x, batch_size: int, batches: int, variables: list) -> list:
    """Sets the output ranges of wrapped layers found by name in ``float_model``; returns the variables set."""
    if float_model is None:
        return []
    owners = {}
    for layer in quantized.layers:
        inner = getattr(layer, "layer", None)
        if inner is None:
            continue
        for variable in layer.non_trainable_variables:
            name = variable.name.split(":")[0].split("/")[-1]
            if any(variable is v for v in variables) and name.startswith(("output_", "post_activation_")):
                owners.setdefault(inner.name, []).append(variable)
    ranges = _float_ranges(float_model, x, batch_size, batches, set(owners))
    done = []
    for name, (low, high) in ranges.items():
        for variable in owners[name]:
            variable.assign(np.full(variable.shape, low if variable.name.split(":")[0].endswith("_min") else high,
                                    dtype=variable.dtype.as_numpy_dtype))
            done.append(variable)
    return done
