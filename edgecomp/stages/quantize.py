"""``quantize``: quantization-aware training with tfmot, keeping earlier compression.

The scheme is chosen from the stages that ran before:

=================== ==============================================================
before              scheme
=================== ==============================================================
nothing             ``Default8BitQuantizeScheme``
prune               ``Default8BitPrunePreserveQuantizeScheme`` (PQAT)
cluster             ``Default8BitClusterPreserveQuantizeScheme()`` (CQAT)
prune and cluster   ``Default8BitClusterPreserveQuantizeScheme(preserve_sparsity=True)`` (PCQAT)
=================== ==============================================================

Layers are annotated one by one, so a layer tfmot cannot handle does not fail the
whole model. Layers outside tfmot's registry (a BatchNormalization that does not
directly follow a linear Conv, which tfmot cannot fold; activations tfmot does not
know; preprocessing layers such as Rescaling; unknown layer types) are annotated
with an output-only config: QAT learns their output range, so the converter can
still make them integer, and the record lists each with its reason. Nested models
cannot be annotated at all and are reported; the int8 verifier then says whether
the converter still produced an all-integer file.

The returned model keeps its quantize wrappers: the converter reads the learned
ranges from them. Before training, ``quantize_ranges.initialize_ranges`` starts the
activation ranges at the data's; during it, ``quantize_keep``'s callbacks keep the
zeros and clusters that tfmot's quantizers do not.
"""

from __future__ import annotations

import numpy as np
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import quantize_aware_activation
from tensorflow_model_optimization.python.core.quantization.keras.collab_opts.cluster_preserve import (
    cluster_preserve_quantize_registry,
)
from tensorflow_model_optimization.python.core.quantization.keras import utils as quantize_utils
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_layout_transform,
    default_8bit_quantize_registry,
    default_8bit_quantize_scheme,
    default_8bit_transforms,
)
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import (
    model_transformer,
    transforms,
)

from edgecomp import models, training
from edgecomp._keras import keras
from edgecomp.config import QuantizeConfig
from edgecomp.stages import common, distill, prepare
from edgecomp.stages.quantize_keep import (
    KeepClusters,
    KeepZeros,
    unpreserved_clusters,
    unpreserved_zeros,
)
from edgecomp.stages.quantize_ranges import initialize_ranges

quantize_api = tfmot.quantization.keras
combine = tfmot.experimental.combine
_activations = quantize_aware_activation.QuantizeAwareActivation
SUPPORTED_ACTIVATIONS = (
    _activations._PRE_QUANT_ACTIVATIONS | _activations._POST_QUANT_ACTIVATIONS | {"linear", "relu6"}
)
FOLDABLE_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
PREPROCESSING = tuple(
    getattr(keras.layers, name)
    for name in ("Rescaling", "Normalization", "Resizing", "CenterCrop", "RandomFlip", "RandomRotation")
    if hasattr(keras.layers, name)
)


class OutputQuantizeConfig(quantize_api.QuantizeConfig):
    """Learns the output range of a layer tfmot does not know; leaves its weights alone."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [quantize_api.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                               narrow_range=False)]

    def get_config(self):
        return {}


class _ConsistentRegistry:
    """A scheme's registry whose ``supports`` agrees with what it can configure.

    tfmot 0.8.1's prune/cluster-preserving registries answer ``supports`` for layers
    (e.g. ``Rescaling`` feeding an annotated Conv) whose config they then cannot
    build, so ``quantize_apply`` raises "get_quantize_config() called on an
    unsupported layer". Such layers are left float instead.
    """

    def __init__(self, inner):
        self._inner = inner
        self._default = default_8bit_quantize_registry.Default8BitQuantizeRegistry()

    def supports(self, layer):
        return self._inner.supports(layer) and self._default.supports(layer)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _LayerReLUQuantize(default_8bit_transforms.LayerReLUQuantize):
    """tfmot's ``Conv2D|DepthwiseConv2D|Dense → ReLU`` transform, keeping the layer's weight quantizer.

    tfmot 0.8 gives the layer before a ReLU a ``NoOpQuantizeConfig`` so that no fake
    quant sits between them; for a Conv or Dense that also drops its *weight*
    quantizer: QAT then trains float weights (the converter quantizes them after),
    and the prune/cluster-preserving quantizers never run, so sparsity and clusters
    drift during QAT (measured: a folded, pruned, clustered digits CNN went from
    0.80 to 0.74 sparsity and from 16 to 136 distinct int8 values per kernel). Here
    such a layer keeps its registry config and only its activation becomes a no-op,
    as tfmot's own ``Conv2D → BatchNormalization`` transform does.
    """

    def replacement(self, match_layer):
        producer = match_layer.input_layers[0]
        weighted = producer.layer["class_name"] in ("Conv2D", "DepthwiseConv2D", "Dense")
        linear = producer.layer["config"].get("activation") in ("linear", None)
        if not weighted or not linear or producer.metadata.get("quantize_config") is not None:
            return super().replacement(match_layer)
        producer.layer["config"]["activation"] = quantize_utils.serialize_activation(
            quantize_aware_activation.NoOpActivation(), use_legacy_format=True)
        return match_layer

    def custom_objects(self):
        return {**super().custom_objects(), "NoOpActivation": quantize_aware_activation.NoOpActivation}


class _LayerReluActivationQuantize(_LayerReLUQuantize):
    """The same for ``Activation("relu")``."""

    def pattern(self):
        return transforms.LayerPattern("Activation", config={"activation": "relu"},
                                       inputs=[transforms.LayerPattern("Add|Conv2D|DepthwiseConv2D|Dense")])


class _LayoutTransform(default_8bit_quantize_layout_transform.Default8BitQuantizeLayoutTransform):
    """tfmot 0.8's default 8-bit layout transforms, in its order, with the two ReLU transforms above."""

    def apply(self, model, layer_quantize_map):
        names = ("InputLayerQuantize", "SeparableConv1DQuantize", "SeparableConvQuantize",
                 "Conv2DReshapeBatchNormReLUQuantize", "Conv2DReshapeBatchNormActivationQuantize",
                 "Conv2DBatchNormReLUQuantize", "Conv2DBatchNormActivationQuantize",
                 "Conv2DReshapeBatchNormQuantize", "Conv2DBatchNormQuantize", "ConcatTransform6Inputs",
                 "ConcatTransform5Inputs", "ConcatTransform4Inputs", "ConcatTransform3Inputs", "ConcatTransform",
                 "DenseBatchNormQuantize", "DenseBatchNormReLUQuantize", "DenseBatchNormActivationQuantize")
        steps = [getattr(default_8bit_transforms, name)() for name in names]
        steps += [_LayerReLUQuantize(), _LayerReluActivationQuantize()]
        return model_transformer.ModelTransformer(model, steps, set(layer_quantize_map), layer_quantize_map).transform()


class _Scheme(quantize_api.QuantizeScheme):
    """Wraps a tfmot scheme with ``_ConsistentRegistry`` and the fixed ReLU layout transforms."""

    def __init__(self, inner):
        self._inner = inner

    def get_layout_transformer(self):
        inner = self._inner.get_layout_transformer()
        if type(inner) is default_8bit_quantize_layout_transform.Default8BitQuantizeLayoutTransform:
            return _LayoutTransform()
        return inner

    def get_quantize_registry(self):
        return _ConsistentRegistry(self._inner.get_quantize_registry())


class _PerTensorClusterRegistry(cluster_preserve_quantize_registry.Default8bitClusterPreserveQuantizeRegistry):
    """The cluster-preserving registry with one scale per kernel, not per channel.

    Conv2D gets tfmot's cluster-preserving Dense quantizer. DepthwiseConv2D, which
    tfmot neither clusters nor preserves, gets tfmot's plain per-tensor weight
    quantizer: one scale instead of 64 scales and zero points for a 64-channel
    layer and its bias (1.5 KB of a micro model's flash).
    """

    def __init__(self, preserve_sparsity):
        super().__init__(preserve_sparsity)
        self._config_quantizer_map["Default8BitConvQuantizeConfig"] = (
            cluster_preserve_quantize_registry.ClusterPreserveDefault8BitWeightsQuantizer(preserve_sparsity))

    def get_quantize_config(self, layer):
        config = super().get_quantize_config(layer)
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            config.weight_quantizer = quantize_api.quantizers.LastValueQuantizer(
                num_bits=8, per_axis=False, symmetric=True, narrow_range=True)
        return config


class _PerTensorClusterScheme(combine.Default8BitClusterPreserveQuantizeScheme):
    """CQAT/PCQAT with ``_PerTensorClusterRegistry``."""

    def get_quantize_registry(self):
        return _PerTensorClusterRegistry(self.preserve_sparsity)


def choose_scheme(previous: tuple[str, ...], weights: str = "per_channel"):
    """The tfmot scheme that keeps what earlier stages did; returns ``(scheme, name)``.

    ``weights="per_tensor"`` (clustered models only) gives each Conv2D and
    DepthwiseConv2D kernel one scale, so a Conv2D's shared values stay shared in
    the int8 file.
    """
    pruned, clustered = "prune" in previous, "cluster" in previous
    if weights == "per_tensor" and not clustered:
        raise ValueError("per-tensor weights are for clustered models; add a cluster stage before quantize")
    cluster_scheme = (_PerTensorClusterScheme if weights == "per_tensor"
                      else combine.Default8BitClusterPreserveQuantizeScheme)
    suffix = ", per-tensor weights" if weights == "per_tensor" else ""
    if pruned and clustered:
        return cluster_scheme(preserve_sparsity=True), "PCQAT" + suffix
    if clustered:
        return cluster_scheme(preserve_sparsity=False), "CQAT" + suffix
    if pruned:
        return combine.Default8BitPrunePreserveQuantizeScheme(), "PQAT"
    return default_8bit_quantize_scheme.Default8BitQuantizeScheme(), "QAT"


def _activation_name(layer) -> str | None:
    activation = getattr(layer, "activation", None)
    if activation is None:
        return None
    return getattr(activation, "__name__", None) or type(activation).__name__


def _inbound_layers(layer) -> list:
    nodes = getattr(layer, "inbound_nodes", None) or getattr(layer, "_inbound_nodes", [])
    if not nodes:
        return []
    inbound = nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


# Layers called with separate tensors (query, value, key): tfmot's wrapper calls compute_output_shape with one.
MULTI_INPUT_CALLS = (keras.layers.MultiHeadAttention, keras.layers.Attention, keras.layers.AdditiveAttention)


def _annotation_issue(layer, registry) -> str | None:
    """None when tfmot's registry handles the layer, else why it gets an output-only config.

    "" means: leave the layer alone silently (inputs); ``common.NESTED_MODEL`` and
    ``common.NOT_WRAPPABLE`` mean it cannot be annotated at all (it stays float while training).
    """
    if isinstance(layer, keras.layers.InputLayer):
        return ""
    if isinstance(layer, keras.Model):
        return common.NESTED_MODEL
    if isinstance(layer, MULTI_INPUT_CALLS):
        return common.NOT_WRAPPABLE
    if PREPROCESSING and isinstance(layer, PREPROCESSING):
        return common.PREPROCESSING
    if isinstance(layer, keras.layers.BatchNormalization):
        inbound = _inbound_layers(layer)
        if not (len(inbound) == 1 and isinstance(inbound[0], FOLDABLE_CONVS)
                and _activation_name(inbound[0]) == "linear"):
            return common.BN_NOT_AFTER_CONV
        return None  # not in the registry: tfmot's Conv→BN transform folds it
    activation = _activation_name(layer)
    if activation is not None and activation not in SUPPORTED_ACTIVATIONS:
        return f"{common.UNKNOWN_ACTIVATION} ({activation})"
    if not registry.supports(layer):
        return f"{common.OUTPUT_ONLY} ({type(layer).__name__})"
    return None


def wrap_model(model, previous: tuple[str, ...] = (), weights: str = "per_channel"):
    """Annotates layer by layer and applies the scheme that keeps ``previous`` stages' work.

    Returns:
        ``(QAT model, scheme name, number of annotated layers, skipped [{"layer", "reason"}])``.
    """
    scheme, scheme_name = choose_scheme(previous, weights)
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()
    skipped, annotated_names = [], []

    def annotate(layer):
        reason = _annotation_issue(layer, registry)
        if reason is None:
            annotated_names.append(layer.name)
            return quantize_api.quantize_annotate_layer(layer)
        if reason:
            skipped.append({"layer": layer.name, "reason": reason})
        if reason and reason not in (common.NESTED_MODEL, common.NOT_WRAPPABLE):
            return quantize_api.quantize_annotate_layer(layer, quantize_config=OutputQuantizeConfig())
        return layer

    with quantize_api.quantize_scope({"OutputQuantizeConfig": OutputQuantizeConfig, **prepare.QAT_OBJECTS}):
        annotated = keras.models.clone_model(model, clone_function=annotate)
        quantized = quantize_api.quantize_apply(annotated, _Scheme(scheme))
    return quantized, scheme_name, len(annotated_names), skipped


def _samples(dataset, count: int = 32) -> np.ndarray:
    """Real inputs the preparer checks its rewrite on: validation samples, else training ones."""
    source = dataset.x_val if len(dataset.x_val) else dataset.x_train
    return np.asarray(source[:count])


def _post_training_fallback(model, context, preparation: dict, error: Exception):
    """The float model unchanged, recorded as not QAT-trained: the targets then quantize after training."""
    cause = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300] if str(error).strip() else ''}"
    reason = (f"tfmot could not wrap this model for quantization-aware training ({cause}); the int8 files are "
              "made by post-training quantization, with the accuracy guard")
    common.log.warning("quantize: %s", reason)
    details = {"scheme": "none", "fallback": "post-training quantization", "error": cause}
    if preparation["rewritten"] or preparation["left"]:
        details["prepared"] = preparation
    return model, common.record("quantize", model, context, [{"layer": "quantize", "reason": reason}], details)


def coverage(quantized, skipped: list[dict]) -> dict[str, dict]:
    """Per layer kind: layers with tfmot's full QAT config, with the output range only, and left out.

    Kinds are the classes of the layers inside the quantize wrappers (a rewritten
    TFOpLambda counts under its new class).
    """
    reasons = {item["layer"]: item["reason"] for item in skipped}
    table: dict[str, dict] = {}
    for layer in quantized.layers:
        inner = getattr(layer, "layer", layer)
        kind = type(inner).__name__
        if kind == "InputLayer" or type(layer).__name__ == "QuantizeLayer":
            continue
        row = table.setdefault(kind, {"qat": 0, "output_only": 0, "not_wrapped": 0})
        wrapped = inner is not layer
        if not wrapped:
            row["not_wrapped"] += 1
        elif inner.name in reasons:
            row["output_only"] += 1
        else:
            row["qat"] += 1
    return dict(sorted(table.items()))



def facts(params: QuantizeConfig):
    """QAT keeps the architecture and is not checkpointed: tfmot's cluster/prune-preserving QAT wrappers do not
    reload from any format (their quantizers are rebuilt with the default scheme: "Layer expects 4 weight(s),
    received 7"); QAT is always the last stage, so --resume runs it again from the stage before."""
    from edgecomp.stages import Facts

    return Facts(structural=False, checkpointed=False, recorded_as="quantize", training_keys=("epochs",))

def apply(model, params: QuantizeConfig, context):
    """Returns ``(QAT model with quantize wrappers, StageRecord)``; ``model`` is consumed."""
    teacher = models.copy(model) if params.distill_from == "float" and params.epochs > 0 else None
    model, preparation = prepare.prepare_for_qat(model, _samples(context.dataset))
    recurrent = [layer.name for layer in model.layers if isinstance(layer, keras.layers.RNN)]
    if recurrent:
        return _post_training_fallback(model, context, preparation, ValueError(
            f"recurrent layers ({', '.join(recurrent)}) get no QAT config in tfmot, and the int8 file of a "
            "QAT-wrapped LSTM could not be loaded by XNNPACK (TensorFlow 2.21)"))
    try:
        quantized, scheme_name, annotated, skipped = wrap_model(model, context.previous, params.weights)
        if quantized.output_shape != model.output_shape:
            raise ValueError(f"the wrapped model's output shape {quantized.output_shape} is not the model's "
                             f"{model.output_shape}")
    except Exception as error:  # noqa: BLE001 - tfmot fails in many ways on unusual graphs
        return _post_training_fallback(model, context, preparation, error)
    details = {"scheme": scheme_name, "annotated_layers": annotated, "coverage": coverage(quantized, skipped),
               "ranges_initialized": initialize_ranges(quantized, context.dataset.x_train,
                                                       context.config.data.batch_size, float_model=model)}
    if preparation["rewritten"] or preparation["left"]:
        details["prepared"] = preparation
        skipped = skipped + [{"layer": item["layer"], "reason": f"{common.NOT_REWRITTEN}: {item['reason']}"}
                             for item in preparation["left"]]
    callbacks = []
    kernels = unpreserved_clusters(quantized) if "cluster" in context.previous else []
    if kernels:   # before KeepZeros: a weight snapped to a small cluster value is zeroed again
        callbacks.append(KeepClusters(kernels))
        details["clusters_kept_by_edgecomp"] = [variable.name for variable, _ in kernels]
    masks = unpreserved_zeros(quantized) if "prune" in context.previous else []
    if masks:
        callbacks.append(KeepZeros(masks))
        details["zeros_kept_by_edgecomp"] = [variable.name for variable, _ in masks]
    if teacher is None:
        common.finetune(quantized, context, params.epochs, params.learning_rate, callbacks=callbacks)
    else:
        # The float model teaches its quantized copy (it is the same network, so only
        # the soft targets differ from plain QAT).
        distiller = distill.Distiller(quantized, teacher, temperature=params.distill_temperature,
                                      alpha=params.distill_alpha)
        details["distill_from"] = {
            "teacher": "float", "temperature": params.distill_temperature, "alpha": params.distill_alpha,
            "history": distill.fit(distiller, context, epochs=params.epochs, learning_rate=params.learning_rate),
        }
        training.compile_model(quantized, params.learning_rate)
        for callback in callbacks:   # no per-batch hook in the Distiller: once, at the end
            callback.restore()
    return quantized, common.record("quantize", quantized, context, skipped, details)
