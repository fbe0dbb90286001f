"""Sparsity and clusters survive QAT in layers tfmot's preserving schemes do not cover.

tfmot's concat transform gives every layer feeding a ``Concatenate`` its plain
quantize config, which keeps neither zeros nor clusters during QAT by itself; a
``SeparableConv2D`` is rewritten by the preparer into layers tfmot's preserving
quantizers cover.
"""

import tempfile
from pathlib import Path

import numpy as np

from edgecomp import config, data, stages
from edgecomp._keras import keras
from edgecomp.targets import cpu
from edgecomp.targets.convert import convert


def concat_separable_model(input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    a = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="branch_a")(x)
    b = keras.layers.Conv2D(16, 1, activation="relu", name="branch_b")(x)
    x = keras.layers.Concatenate()([a, b])
    x = keras.layers.SeparableConv2D(32, 3, padding="same", activation="relu", name="separable")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="head")(x))


def _setup():
    dataset = data.load(config.DataConfig(source="digits"), seed=0)
    keras.utils.set_random_seed(0)
    model = concat_separable_model(dataset.input_shape, dataset.num_classes)
    cfg = config.from_dict({"data": {"source": "digits", "batch_size": 64}})
    return model, dataset, cfg, Path(tempfile.mkdtemp())


def test_prune_then_qat_keeps_zeros_of_layers_feeding_a_concat_and_of_separable_convs():
    model, dataset, cfg, log_dir = _setup()
    pruned, pruning = stages.apply("prune", model, config.PruneConfig(min_weights=0, sparsity=0.8, epochs=1, recovery_epochs=0),
                             stages.StageContext(cfg, dataset, log_dir))
    quantized, record = stages.apply("quantize", pruned, config.QuantizeConfig(epochs=2, learning_rate=0.01),
                                     stages.StageContext(cfg, dataset, log_dir, ("prune",)))
    kept = " ".join(record.details.get("zeros_kept_by_edgecomp", []))
    for name in ("branch_a", "branch_b"):   # both feed a Concatenate
        assert name in kept, kept
    # tfmot's prune-preserving quantizer keeps those; the separable conv is rewritten into a DepthwiseConv2D
    # and a 1x1 Conv2D (named as the original) that it covers too.
    assert "stem" not in kept and "head" not in kept, kept
    assert [item["layer"] for item in record.details["prepared"]["rewritten"]] == ["separable"]
    pointwise = next(layer for layer in quantized.layers if getattr(layer, "layer", layer).name == "separable")
    kernel = next(w for w in pointwise.weights if w.name.split("/")[-1].startswith("kernel")).numpy()
    assert kernel.shape[:2] == (1, 1) and np.mean(kernel == 0) >= 0.79
    content = convert(quantized, "int8", calibration=dataset.x_train[:50])
    # The separable conv's depthwise kernel is not pruned by tfmot: the whole model is below 0.8.
    verdict = cpu.verify(content, "int8", "float32", {"sparsity": pruning.details["model_sparsity"]})
    assert verdict["ok"], [rule for rule in verdict["details"]["rules"] if not rule["ok"]]


def test_cluster_then_qat_keeps_clusters_of_layers_feeding_a_concat():
    model, dataset, cfg, log_dir = _setup()
    clustered, _ = stages.apply("cluster", model, config.ClusterConfig(clusters=8, epochs=1),
                                stages.StageContext(cfg, dataset, log_dir))
    quantized, record = stages.apply("quantize", clustered, config.QuantizeConfig(epochs=1, learning_rate=0.01),
                                     stages.StageContext(cfg, dataset, log_dir, ("cluster",)))
    kept = " ".join(record.details.get("clusters_kept_by_edgecomp", []))
    for name in ("branch_a", "branch_b"):
        assert name in kept, kept
    assert "stem" not in kept and "head" not in kept, kept
    for layer in quantized.layers:
        inner = getattr(layer, "layer", layer)
        if inner.name in ("branch_a", "branch_b"):
            kernel = [w for w in layer.trainable_weights if w.name.split("/")[-1].startswith("kernel")][0]
            assert np.unique(kernel.numpy()).size <= 8
