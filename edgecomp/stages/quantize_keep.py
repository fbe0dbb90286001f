"""What QAT keeps that tfmot does not: the zeros of pruned kernels and the values of clustered ones.

tfmot's prune- and cluster-preserving quantizers cover only some layers.
``unpreserved_zeros`` and ``unpreserved_clusters`` find, in a freshly wrapped QAT
model, the kernels no tfmot quantizer keeps; the callbacks ``KeepZeros`` and
``KeepClusters`` restore them after every training batch.
"""

from __future__ import annotations

import numpy as np

from edgecomp._keras import keras, tf


class KeepZeros(keras.callbacks.Callback):
    """Sets the pruned weights of listed kernels back to zero after every training batch.

    tfmot 0.8's prune-preserving scheme leaves some layer types out (Conv1D is commented
    out of its registry): their QAT kernels train freely and the zeros are gone (measured
    on the MNIST-1D CNN: 0.80 → 0.53 zeros). For those kernels edgecomp keeps the zeros
    itself. The fake-quant ranges follow, as they are computed from the kernel each step.

    Args:
        masks: ``[(kernel variable, keep mask)]``; ``keep`` is 1 where the weight was not zero.
    """

    def __init__(self, masks):
        super().__init__()
        self.masks = masks

    def on_train_batch_end(self, batch, logs=None):
        self.restore()

    def restore(self):
        for variable, keep in self.masks:
            variable.assign(variable * keep)


class KeepClusters(keras.callbacks.Callback):
    """Moves every weight of listed kernels back to its nearest cluster value after every training batch.

    tfmot 0.8's cluster-preserving scheme leaves the same layer types out (Conv1D,
    Conv2DTranspose, Conv3D): their kernels train freely during QAT and the clusters
    are gone (measured on the MNIST-1D CNN: 35 values per channel for 16 clusters).
    The cluster values themselves stay as the cluster stage left them.

    Args:
        kernels: ``[(kernel variable, cluster values)]``; zero is one of them for a pruned kernel.
    """

    def __init__(self, kernels):
        super().__init__()
        self.kernels = [(variable, tf.constant(values, dtype=variable.dtype)) for variable, values in kernels]

    def on_train_batch_end(self, batch, logs=None):
        self.restore()

    def restore(self):
        for variable, centroids in self.kernels:
            nearest = tf.argmin(tf.abs(variable[..., None] - centroids), axis=-1)
            variable.assign(tf.gather(centroids, nearest))


def _kernel_weights(layer) -> list:
    """The kernels of a layer, wrapped or not: ``kernel``, ``depthwise_kernel``, ``pointwise_kernel``..."""
    return [weight for weight in layer.trainable_weights if "kernel" in weight.name.split("/")[-1]]


def _keeps(quantizer, what: str) -> bool:
    """Whether a tfmot weight quantizer keeps a kernel's ``"zeros"`` or ``"clusters"`` during QAT."""
    name = type(quantizer).__name__
    if what == "clusters":
        return "ClusterPreserve" in name
    return "PrunePreserve" in name or ("ClusterPreserve" in name and bool(getattr(quantizer, "preserve_sparsity",
                                                                                   False)))


def _not_kept(quantized, what: str) -> list:
    """``(kernel variable, values)`` of the QAT model's kernels whose tfmot quantizer does not keep ``what``."""
    found = []
    for layer in quantized.layers:
        kept = [weight for weight, quantizer, _ in getattr(layer, "_weight_vars", []) if _keeps(quantizer, what)]
        found += [(weight, weight.numpy()) for weight in _kernel_weights(layer)
                  if all(weight is not other for other in kept)]
    return found


def unpreserved_zeros(quantized) -> list:
    """``[(kernel variable, keep mask)]`` of the pruned kernels no tfmot quantizer keeps sparse.

    Read from the freshly wrapped QAT model, before any training step. tfmot's
    prune-preserving quantizers cover only the layer types of their registry, and
    only where a layer keeps its registry config: tfmot's concat transform gives each
    layer feeding a ``Concatenate`` its plain config, ``SeparableConv2D`` is split
    into new layers, ``Conv1D`` is left out (measured before: a concat CNN's feeding
    convs went from 0.80 to 0.33–0.69 zeros, SeparableConv2D pointwise kernels to
    0.31–0.37). ``KeepZeros`` keeps these.
    """
    return [(variable, (values != 0).astype(values.dtype)) for variable, values in _not_kept(quantized, "zeros")
            if np.mean(values == 0) >= 0.05]   # pruned: a trained kernel has no exact zeros to speak of


def unpreserved_clusters(quantized) -> list:
    """``[(kernel variable, cluster values)]`` of clustered kernels no tfmot cluster-preserving quantizer keeps.

    A kernel counts as clustered when it holds at most 257 distinct values (256
    clusters and zero) and at least four weights per value. Read from the freshly
    wrapped QAT model, before any training step.
    """
    clusters = []
    for variable, values in _not_kept(quantized, "clusters"):
        distinct = np.unique(values)
        if distinct.size <= 257 and values.size >= 4 * distinct.size:
            clusters.append((variable, distinct))
    return clusters
