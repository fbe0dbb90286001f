"""``cluster``: weight clustering with tfmot (k-means++ init), fine-tuned, then stripped.

Each clusterable kernel ends with at most ``clusters`` distinct values (plus zero
when a ``prune`` stage ran before: sparsity is preserved then, so pruned weights
stay zero). Kernels with fewer weights than clusters are left as they are.

With ``fold_batchnorm``, each BatchNormalization is first folded into the Conv/Dense
before it (``edgecomp.stages.batchnorm``): the converter would otherwise fold it after
clustering and scale every output channel differently, so the file's kernels would
hold a different set of values per channel. With ``quantize: {weights: per_tensor}``
after it, every Conv2D and Dense kernel in the int8 file holds at most ``clusters``
values. tfmot never clusters DepthwiseConv2D kernels ("big unrecoverable accuracy
loss"); ``per_tensor`` gives them one scale each, which saves only quantization
parameters.

Example:
    >>> new_model, record = cluster.apply(model, config.ClusterConfig(clusters=16), context)  # doctest: +SKIP
"""

from __future__ import annotations

import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.clustering.keras import clustering_registry

from edgecomp import models
from edgecomp._keras import keras
from edgecomp.config import ClusterConfig
from edgecomp.stages import batchnorm, common

clustering_api = tfmot.clustering.keras


def _clusterable(layer, clusters: int) -> str | None:
    """None when ``layer`` can be clustered, else the reason it cannot ("" = nothing to report)."""
    if isinstance(layer, keras.Model):
        return common.NESTED_MODEL
    kernels = common.kernel_weights(layer)
    if not kernels:
        return ""
    if not (isinstance(layer, clustering_api.ClusterableLayer)
            or clustering_registry.ClusteringRegistry.supports(layer)):
        return common.NOT_SUPPORTED
    if min(k.size for k in kernels) < clusters:
        return common.TOO_SMALL
    return None


def wrap_model(model, params: ClusterConfig, preserve_sparsity: bool):
    """Wraps every clusterable layer in tfmot's clustering wrapper (k-means++ init).

    Returns:
        ``(wrapped model, names of wrapped layers, skipped [{"layer", "reason"}])``.
    """
    skipped, clustered = [], []

    def wrap(layer):
        reason = _clusterable(layer, params.clusters)
        if reason is None:
            clustered.append(layer.name)
            return clustering_api.cluster_weights(
                layer,
                number_of_clusters=params.clusters,
                cluster_centroids_init=clustering_api.CentroidInitialization.KMEANS_PLUS_PLUS,
                preserve_sparsity=preserve_sparsity,
            )
        if reason:
            skipped.append({"layer": layer.name, "reason": reason})
        return layer

    return keras.models.clone_model(model, clone_function=wrap), clustered, skipped



def facts(params: ClusterConfig):
    """Clustering keeps the architecture and reloads from a checkpoint."""
    from edgecomp.stages import Facts

    return Facts(structural=False, checkpointed=True, recorded_as="cluster", training_keys=("epochs", "recovery_epochs"))

def apply(model, params: ClusterConfig, context):
    """Returns ``(clustered model, StageRecord)``; ``model`` is consumed (pass a copy)."""
    preserve_sparsity = "prune" in context.previous
    model_accuracy = common.validation_accuracy(model, context) if params.recovery_epochs else None
    folded, kept = [], []
    if params.fold_batchnorm:
        model, folded, kept = batchnorm.fold_batchnorm(model)
    wrapped, clustered, skipped = wrap_model(model, params, preserve_sparsity)
    skipped = kept + skipped
    common.finetune(wrapped, context, params.epochs, params.learning_rate)
    # Every epoch trains clustered weights (the wrapper clusters from the start), so restoring the best is safe.
    recovery = common.recover(wrapped, model_accuracy, context, stage="cluster",
                              epochs=params.recovery_epochs if params.epochs else 0,
                              learning_rate=params.learning_rate)
    # A fresh build's weight order: strip_clustering leaves a MultiHeadAttention's variables in another order,
    # which neither a copy by position nor an HDF5 checkpoint could load.
    stripped = models.copy(clustering_api.strip_clustering(wrapped))
    statistics = {name: s for name, s in common.layer_statistics(stripped).items() if name in clustered}
    details = {
        "clusters": params.clusters,
        "preserve_sparsity": preserve_sparsity,
        "max_unique_values": max((s["unique_values"] for s in statistics.values()), default=0),
        "achieved_sparsity": common.total_sparsity(statistics),
        "folded_batchnorm": [{"layer": producer, "batchnorm": norm} for producer, norm in folded],
        "layers": statistics,
    }
    if recovery:
        details["recovery"] = recovery
    return stripped, common.record("cluster", stripped, context, skipped, details)
