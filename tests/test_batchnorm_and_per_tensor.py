"""Deep Compression to the letter: BatchNorm folded before clustering, weight quantizers kept before a ReLU,
one scale per kernel, so the int8 file holds at most ``clusters`` values per kernel."""

import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgecomp import config, models, runtime, stages, training
from edgecomp._keras import keras
from edgecomp.errors import ConfigError
from edgecomp.stages import batchnorm, quantize
from edgecomp.targets import cpu
from edgecomp.targets.convert import convert


@pytest.fixture(scope="module")
def context(tiny_dataset, tmp_path_factory):
    cfg = config.from_dict({"data": {"batch_size": 32}})
    return stages.StageContext(cfg, tiny_dataset, tmp_path_factory.mktemp("logs"))


def build(builder, dataset, epochs=0):
    keras.utils.set_random_seed(0)
    model = models.build(config.ModelSpec(builder=f"tests.custom_models:{builder}"), dataset.input_shape,
                         dataset.num_classes)
    if epochs:
        training.fit(model, dataset, epochs=epochs, learning_rate=0.01, batch_size=32, patience=0)
    return model


def test_fold_batchnorm_keeps_outputs_and_says_which_batchnorms_stay(tiny_dataset):
    model = build("batchnorm_everywhere", tiny_dataset, epochs=2)
    folded, pairs, kept = batchnorm.fold_batchnorm(model)
    assert sorted(pairs) == [("conv", "bn_conv"), ("dense", "bn_dense"), ("depthwise", "bn_depthwise")]
    reasons = {item["layer"]: item["reason"] for item in kept}
    assert "shared's output is used elsewhere too" in reasons["bn_shared"]
    assert "follows a Add" in reasons["bn_add"]
    assert "conv_relu has an activation before" in reasons["bn_after_relu"]
    names = [layer.name for layer in folded.layers]
    assert not {"bn_conv", "bn_dense", "bn_depthwise"} & set(names) and "bn_add" in names
    np.testing.assert_allclose(folded.predict(tiny_dataset.x_test, verbose=0),
                               model.predict(tiny_dataset.x_test, verbose=0), atol=1e-5)
    assert "bn_conv" in [layer.name for layer in model.layers]   # the caller's model is not changed


def test_fold_batchnorm_of_a_sequential_model_keeps_outputs(tiny_dataset):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(tiny_dataset.input_shape), keras.layers.Conv2D(4, 3, use_bias=False),
                              keras.layers.BatchNormalization(), keras.layers.Flatten(), keras.layers.Dense(3)])
    model.layers[1].set_weights([np.full(4, 2.0), np.full(4, 0.5), np.linspace(-1, 1, 4), np.full(4, 3.0)])
    folded, pairs, _ = batchnorm.fold_batchnorm(model)
    assert len(pairs) == 1 and len(folded.layers) == 3
    np.testing.assert_allclose(folded.predict(tiny_dataset.x_test, verbose=0),
                               model.predict(tiny_dataset.x_test, verbose=0), atol=1e-5)


def test_qat_keeps_the_weight_quantizer_of_a_conv_or_dense_before_a_relu_layer(tiny_dataset):
    model = build("conv_relu_no_batchnorm", tiny_dataset)
    quantized, _, _, _ = quantize.wrap_model(model)
    configs = {layer.name: type(layer.quantize_config).__name__ for layer in quantized.layers
               if hasattr(layer, "quantize_config")}
    assert configs["quant_conv"] == configs["quant_conv2"] == "Default8BitConvQuantizeConfig"
    assert configs["quant_dense"] == "Default8BitQuantizeConfig"   # tfmot 0.8 alone gives NoOpQuantizeConfig
    for name in ("quant_conv", "quant_conv2", "quant_dense"):   # no fake quant between the layer and its ReLU
        activation = quantized.get_layer(name).layer.activation
        assert type(getattr(activation, "activation", activation)).__name__ == "NoOpActivation", name


def test_prune_then_qat_keeps_sparsity_on_conv_relu_without_batchnorm(tiny_dataset, context):
    model = build("conv_relu_no_batchnorm", tiny_dataset, epochs=2)
    pruned, _ = stages.apply("prune", model, config.PruneConfig(min_weights=0, sparsity=0.7, epochs=1), context)
    after = stages.StageContext(context.config, context.dataset, context.log_dir, ("prune",))
    quantized, record = stages.apply("quantize", pruned, config.QuantizeConfig(epochs=2, learning_rate=0.01), after)
    content = convert(quantized, "int8", calibration=tiny_dataset.x_train[:20])
    for tensor in cpu.weight_statistics(content)["tensors"]:
        if np.prod(tensor["shape"]) >= 100:
            assert tensor["sparsity"] >= 0.69, tensor    # without the fix QAT trains the zeros away


def test_fold_cluster_per_tensor_qat_leaves_at_most_clusters_values_per_kernel(tiny_model, tiny_dataset, context):
    pruned, _ = stages.apply("prune", models.copy(tiny_model), config.PruneConfig(min_weights=0, sparsity=0.6, epochs=1), context)
    after_prune = stages.StageContext(context.config, context.dataset, context.log_dir, ("prune",))
    clustered, record = stages.apply("cluster", pruned, config.ClusterConfig(clusters=8, epochs=1,
                                                                             fold_batchnorm=True), after_prune)
    assert len(record.details["folded_batchnorm"]) == 2
    after = stages.StageContext(context.config, context.dataset, context.log_dir, ("prune", "cluster"))
    quantized, record = stages.apply("quantize", clustered, config.QuantizeConfig(epochs=1, weights="per_tensor"),
                                     after)
    assert record.details["scheme"] == "PCQAT, per-tensor weights"
    content = convert(quantized, "int8", calibration=tiny_dataset.x_train[:20])
    kernels = cpu.weight_statistics(content)["tensors"]
    assert len(kernels) == 3
    for tensor in kernels:
        assert tensor["unique_values"] <= 8, tensor
        assert tensor["sparsity"] >= 0.55, tensor
    verdict = cpu.verify(content, "int8", "float32", {"sparsity": 0.55, "clusters": 8})
    assert verdict["ok"], [rule for rule in verdict["details"]["rules"] if not rule["ok"]]
    assert runtime.evaluate(content, tiny_dataset.x_test, tiny_dataset.y_test)["accuracy"] > 0.5


@pytest.mark.parametrize("weights, scales", [("per_tensor", 1), ("per_channel", 16)])
def test_per_tensor_weights_give_a_depthwise_kernel_one_scale(tiny_dataset, context, weights, scales):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(tiny_dataset.input_shape), keras.layers.Conv2D(16, 3),
                              keras.layers.DepthwiseConv2D(3), keras.layers.ReLU(),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(tiny_dataset.num_classes)])
    training.fit(model, tiny_dataset, epochs=1, learning_rate=0.01, batch_size=32, patience=0)
    clustered, _ = stages.apply("cluster", model, config.ClusterConfig(clusters=8, epochs=1), context)
    after = stages.StageContext(context.config, context.dataset, context.log_dir, ("cluster",))
    quantized, _ = stages.apply("quantize", clustered, config.QuantizeConfig(epochs=1, weights=weights), after)
    content = convert(quantized, "int8", calibration=tiny_dataset.x_train[:20])
    interpreter = runtime.make_interpreter(content, delegates=False)
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    depthwise = [op for op in interpreter._get_ops_details() if op["op_name"] == "DEPTHWISE_CONV_2D"]  # noqa: SLF001
    assert len(depthwise) == 1
    for index in depthwise[0]["inputs"][1:]:        # kernel and bias
        assert len(details[index]["quantization_parameters"]["scales"]) == scales
    # The verifier does not hold the (never clustered) depthwise kernel to the cluster count.
    verdict = cpu.verify(content, "int8", "float32", {"clusters": 8})
    assert verdict["ok"], [rule for rule in verdict["details"]["rules"] if not rule["ok"]]
    statistics = {t["op"]: t for t in cpu.weight_statistics(content)["tensors"]}
    assert statistics["DEPTHWISE_CONV_2D"]["clustered"] is False and statistics["CONV_2D"]["clustered"] is True


def test_per_tensor_weights_without_a_cluster_stage_is_refused():
    with pytest.raises(ConfigError, match=r"stages\[1\].quantize.weights: per_tensor is for clustered models"):
        config.from_dict({"stages": [{"prune": {}}, {"quantize": {"weights": "per_tensor"}}]})


def test_per_tensor_clustered_kernels_get_one_lut_each_and_tflm_outputs_stay_identical(tiny_model, tiny_dataset,
                                                                                       context):
    from edgecomp import data
    from edgecomp.targets import micro

    wide = keras.Sequential([keras.Input(tiny_dataset.input_shape), keras.layers.Conv2D(64, 3, use_bias=False),
                             keras.layers.BatchNormalization(), keras.layers.ReLU(),
                             keras.layers.Conv2D(64, 3, use_bias=False), keras.layers.BatchNormalization(),
                             keras.layers.ReLU(), keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(tiny_dataset.num_classes)])
    keras.utils.set_random_seed(0)
    training.fit(wide, tiny_dataset, epochs=2, learning_rate=0.01, batch_size=32, patience=0)
    pruned, _ = stages.apply("prune", models.copy(wide), config.PruneConfig(min_weights=0, sparsity=0.5, epochs=1), context)
    after_prune = stages.StageContext(context.config, context.dataset, context.log_dir, ("prune",))
    clustered, _ = stages.apply("cluster", pruned, config.ClusterConfig(clusters=8, epochs=1, fold_batchnorm=True),
                                after_prune)
    after = stages.StageContext(context.config, context.dataset, context.log_dir, ("prune", "cluster"))
    # No QAT epochs: this checks the lookup tables, not how well QAT keeps the clusters.
    quantized, _ = stages.apply("quantize", clustered, config.QuantizeConfig(epochs=0, weights="per_tensor"), after)
    content = convert(quantized, "int8", "int8", data.representative_samples(tiny_dataset, 30))
    compressed, record = micro.lut_variant(content, 8, tiny_dataset.x_test[:20])
    assert compressed is not None, record
    assert record["outputs_identical"]
    saved = max(item["saved_bytes"] for item in record["tensors"])   # the 64x64x3x3 kernel
    # 3-bit indices instead of 8-bit values save 23,040 of 36,864 B, less the DECODE operator's
    # ancillary data: measured 22,544 B saved with one table; 64 per-channel 8-entry tables cost 512 B more.
    assert saved > 22_300


def test_fold_batchnorm_handles_conv1d_dense_on_sequences_and_batchnorm_without_gamma_or_beta():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 3))
    x = keras.layers.Conv1D(6, 3, padding="same", name="conv1d")(inputs)
    x = keras.layers.BatchNormalization(center=False, name="bn_no_beta")(x)
    x = keras.layers.Dense(5, name="dense_seq")(x)
    x = keras.layers.BatchNormalization(scale=False, name="bn_no_gamma")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    for name in ("bn_no_beta", "bn_no_gamma"):
        layer = model.get_layer(name)
        layer.set_weights([np.random.default_rng(1).uniform(0.5, 2.0, w.shape).astype("float32")
                           for w in layer.get_weights()])
    folded, pairs, kept = batchnorm.fold_batchnorm(model)
    assert sorted(pairs) == [("conv1d", "bn_no_beta"), ("dense_seq", "bn_no_gamma")] and not kept
    x = np.random.default_rng(2).normal(size=(4, 12, 3)).astype("float32")
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-4)


def test_fold_batchnorm_keeps_an_output_batchnorm_a_keyword_input_and_a_shared_one():
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    shared = keras.layers.BatchNormalization(name="bn_shared")
    small = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="conv_small")(inputs)
    a, b = shared(conv), shared(small)
    seq = keras.layers.Reshape((16, 4))(b)
    query = keras.layers.Dense(4, name="query")(seq)
    value = keras.layers.BatchNormalization(name="bn_value")(keras.layers.Dense(4, name="value_dense")(seq))
    attended = keras.layers.MultiHeadAttention(1, 4)(query, value)
    head = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(attended))
    out = keras.layers.BatchNormalization(name="bn_out")(head)
    model = keras.Model(inputs, [out, keras.layers.GlobalAveragePooling2D()(a)])
    folded, pairs, kept = batchnorm.fold_batchnorm(model)
    reasons = {item["layer"]: item["reason"] for item in kept}
    assert not pairs
    assert "not a single call" in reasons["bn_shared"]
    assert "keyword argument" in reasons["bn_value"]
    assert "model output" in reasons["bn_out"]


def mnist1d_cnn_and_context():
    """An untrained MNIST-1D CNN (three Conv1D kernels), its data set and a stage context."""
    from edgecomp import data

    dataset = data.load(config.DataConfig(source="mnist1d"), seed=0)
    keras.utils.set_random_seed(0)
    model = models.build(config.ModelSpec(zoo="mnist1d_cnn", args={"width": 0.5}), dataset.input_shape,
                         dataset.num_classes)
    cfg = config.from_dict({"data": {"source": "mnist1d", "batch_size": 128}})
    return model, dataset, cfg, stages.StageContext(cfg, dataset, Path(tempfile.mkdtemp()))


def test_prune_then_qat_keeps_the_zeros_of_conv1d_rewritten_for_tfmots_preserving_quantizer():
    model, dataset, cfg, context = mnist1d_cnn_and_context()
    pruned, _ = stages.apply("prune", model, config.PruneConfig(min_weights=0, sparsity=0.8, epochs=1), context)
    after = stages.StageContext(cfg, dataset, context.log_dir, ("prune",))
    quantized, record = stages.apply("quantize", pruned, config.QuantizeConfig(epochs=1, learning_rate=0.01), after)
    content = convert(quantized, "int8", calibration=dataset.x_train[:50])
    verdict = cpu.verify(content, "int8", "float32", {"sparsity": 0.8})
    assert verdict["ok"], [rule for rule in verdict["details"]["rules"] if not rule["ok"]]
    # The preparer rewrote the three Conv1D into Conv2D, whose zeros tfmot's own quantizer keeps.
    assert [item["from"] for item in record.details["prepared"]["rewritten"]] == ["Conv1D"] * 3
    assert not record.details.get("zeros_kept_by_edgecomp")


def test_prune_cluster_then_qat_keeps_the_clusters_of_conv1d_rewritten_for_tfmots_preserving_quantizer():
    model, dataset, cfg, context = mnist1d_cnn_and_context()
    pruned, _ = stages.apply("prune", model, config.PruneConfig(min_weights=0, sparsity=0.7, epochs=1), context)
    after_prune = stages.StageContext(cfg, dataset, context.log_dir, ("prune",))
    clustered, _ = stages.apply("cluster", pruned, config.ClusterConfig(clusters=8, epochs=1), after_prune)
    after = stages.StageContext(cfg, dataset, context.log_dir, ("prune", "cluster"))
    quantized, record = stages.apply("quantize", clustered, config.QuantizeConfig(epochs=1, learning_rate=0.01),
                                     after)
    assert record.details["scheme"] == "PCQAT"
    assert [item["from"] for item in record.details["prepared"]["rewritten"]] == ["Conv1D"] * 3
    assert not record.details.get("clusters_kept_by_edgecomp")
    content = convert(quantized, "int8", calibration=dataset.x_train[:50])
    verdict = cpu.verify(content, "int8", "float32", {"sparsity": 0.7, "clusters": 8})
    assert verdict["ok"], [rule for rule in verdict["details"]["rules"] if not rule["ok"]]
