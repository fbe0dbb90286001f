"""prune, cluster and quantize on tfmot: what each promises holds, odd models survive."""

from pathlib import Path

import numpy as np
import pytest

from edgecomp import config, models, runtime, stages
from edgecomp._keras import keras
from edgecomp.errors import ConfigError
from edgecomp.stages import common
from edgecomp.stages.quantize import choose_scheme
from edgecomp.targets import cpu
from edgecomp.targets.convert import convert


@pytest.fixture(scope="module")
def context(tiny_dataset, tmp_path_factory):
    cfg = config.from_dict({"data": {"batch_size": 32}})
    return stages.StageContext(cfg, tiny_dataset, tmp_path_factory.mktemp("logs"))


def kernels(model):
    return {layer.name: k for layer in model.layers for k in common.kernel_weights(layer)}


def test_prune_zero_sparsity_is_noop(tiny_model, context):
    before = models.copy(tiny_model)
    pruned, record = stages.apply("prune", models.copy(tiny_model), config.PruneConfig(min_weights=0, sparsity=0.0, epochs=1),
                                  context)
    assert all(np.array_equal(a, b) for a, b in zip(before.get_weights(), pruned.get_weights()))
    assert record.nonzero_params == record.params


def test_prune_reaches_sparsity_within_one_point_per_layer(tiny_model, context):
    pruned, record = stages.apply("prune", models.copy(tiny_model),
                                  config.PruneConfig(min_weights=0, sparsity=0.6, epochs=2, schedule="polynomial"), context)
    assert record.details["layers"], "no layer was pruned"
    for name, stats in record.details["layers"].items():
        measured = float(np.mean(kernels(pruned)[name] == 0))
        assert stats["sparsity"] == pytest.approx(measured)
        assert abs(measured - 0.6) <= 0.01, name
    assert record.nonzero_params < record.params
    assert "prune" not in [type(layer).__name__ for layer in pruned.layers]  # stripped


def test_prune_constant_schedule_also_reaches_sparsity(tiny_model, context):
    _, record = stages.apply("prune", models.copy(tiny_model),
                             config.PruneConfig(min_weights=0, sparsity=0.5, epochs=1, schedule="constant"), context)
    assert abs(record.details["achieved_sparsity"] - 0.5) <= 0.01


def test_prune_2_4_pattern_holds_in_every_prunable_kernel(tiny_model, context):
    pruned, record = stages.apply("prune", models.copy(tiny_model), config.PruneConfig(structure="2:4", epochs=1),
                                  context)
    assert record.details["layers"]
    for name in record.details["layers"]:
        kernel = kernels(pruned)[name]
        rows = np.moveaxis(kernel, -2, -1).reshape(-1, kernel.shape[-2])  # groups run along input channels
        usable = rows[:, : rows.shape[1] // 4 * 4].reshape(rows.shape[0], -1, 4)
        assert usable.size, name
        assert (np.count_nonzero(usable, axis=-1) <= 2).all(), name


def test_prune_does_not_touch_the_callers_model(tiny_model, context):
    before = [w.copy() for w in tiny_model.get_weights()]
    stages.apply("prune", models.copy(tiny_model), config.PruneConfig(min_weights=0, sparsity=0.7, epochs=1), context)
    assert all(np.array_equal(a, b) for a, b in zip(before, tiny_model.get_weights()))


def test_cluster_count_holds_after_strip(tiny_model, context):
    clustered, record = stages.apply("cluster", models.copy(tiny_model), config.ClusterConfig(clusters=8, epochs=1),
                                     context)
    assert record.details["layers"]
    for name in record.details["layers"]:
        assert np.unique(kernels(clustered)[name]).size <= 8, name


def test_cluster_after_prune_keeps_the_zeros(tiny_model, context):
    pruned, _ = stages.apply("prune", models.copy(tiny_model), config.PruneConfig(min_weights=0, sparsity=0.7, epochs=1), context)
    after_prune = stages.StageContext(context.config, context.dataset, context.log_dir, ("prune",))
    clustered, record = stages.apply("cluster", models.copy(pruned), config.ClusterConfig(clusters=8, epochs=1),
                                     after_prune)
    assert record.details["preserve_sparsity"]
    assert record.details["achieved_sparsity"] >= 0.69


@pytest.mark.parametrize("previous, name", [((), "QAT"), (("prune",), "PQAT"), (("cluster",), "CQAT"),
                                            (("prune", "cluster"), "PCQAT")])
def test_quantize_scheme_follows_earlier_stages(previous, name):
    assert choose_scheme(previous)[1] == name


def test_qat_model_converts_to_int8_that_runs_and_passes(tiny_model, tiny_dataset, context):
    quantized, record = stages.apply("quantize", models.copy(tiny_model), config.QuantizeConfig(epochs=1), context)
    assert record.details["scheme"] == "QAT" and not record.skipped
    content = convert(quantized, "int8", calibration=tiny_dataset.x_train[:20])
    assert cpu.verify(content, "int8")["ok"]
    accuracy = runtime.evaluate(content, tiny_dataset.x_test, tiny_dataset.y_test)["accuracy"]
    assert accuracy >= record.metrics["accuracy"] - 0.05


def test_awkward_model_goes_through_prune_qat_int8_and_says_what_it_skipped(tiny_dataset, context):
    model = models.build(config.ModelSpec(builder="tests.custom_models:awkward"), tiny_dataset.input_shape,
                         tiny_dataset.num_classes)
    pruned, prune_record = stages.apply("prune", models.copy(model), config.PruneConfig(min_weights=0, sparsity=0.5, epochs=1),
                                        context)
    assert {"layer": "nested", "reason": common.NESTED_MODEL} in prune_record.skipped
    after = stages.StageContext(context.config, context.dataset, context.log_dir, ("prune",))
    quantized, record = stages.apply("quantize", models.copy(pruned), config.QuantizeConfig(epochs=1), after)
    reasons = {item["layer"]: item["reason"] for item in record.skipped}
    assert reasons["bn_after_relu"] == common.BN_NOT_AFTER_CONV
    assert reasons["nested"] == common.NESTED_MODEL
    assert common.PREPROCESSING in reasons.values(), reasons
    content = convert(quantized, "int8", calibration=tiny_dataset.x_train[:20])
    result = cpu.verify(content, "int8")
    assert result["ok"], result["details"]["rules"]
    runtime.evaluate(content, tiny_dataset.x_test, tiny_dataset.y_test)


def test_activation_tflite_cannot_make_integer_is_caught_by_the_int8_verifier(tiny_dataset, context):
    model = models.build(config.ModelSpec(builder="tests.custom_models:awkward", args={"elu": True}),
                         tiny_dataset.input_shape, tiny_dataset.num_classes)
    quantized, record = stages.apply("quantize", model, config.QuantizeConfig(epochs=1), context)
    assert {item["layer"]: item["reason"] for item in record.skipped}["elu"].startswith(common.UNKNOWN_ACTIVATION)
    result = cpu.verify(convert(quantized, "int8", calibration=tiny_dataset.x_train[:20]), "int8")
    failed = [r for r in result["details"]["rules"] if not r["ok"]]
    assert [r["rule"] for r in failed] == ["quantization"] and "ELU" in failed[0]["detail"]


def test_quantize_must_be_the_last_stage():
    with pytest.raises(ConfigError, match="must be the last stage"):
        config.from_dict({"stages": [{"quantize": {}}, {"prune": {}}]})


def test_depthwise_kernels_tfmot_cannot_prune_are_reported_and_the_file_check_accounts_for_them(tiny_dataset,
                                                                                                  context):
    from edgecomp import zoo

    model = zoo.build("ds_cnn", tiny_dataset.input_shape, tiny_dataset.num_classes, {"filters": 8, "blocks": 1})
    pruned, record = stages.apply("prune", model, config.PruneConfig(min_weights=0, sparsity=0.8, epochs=1), context)
    reasons = {item["layer"]: item["reason"] for item in record.skipped}
    assert reasons["dw1_conv"] == "tfmot does not prune DepthwiseConv2D weights"
    assert record.details["model_sparsity"] < record.details["achieved_sparsity"]
    content = convert(pruned, "int8", calibration=tiny_dataset.x_train[:20])
    result = cpu.verify(content, "int8", expect={"sparsity": record.details["model_sparsity"]})
    assert result["ok"], result["details"]["rules"]


def test_prune_leaves_kernels_under_min_weights_dense_and_says_so(tiny_dataset, context):
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inputs = keras.Input(tiny_dataset.input_shape)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="small")(inputs)          # 36 weights
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="large")(x)             # 1,152 weights
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(tiny_dataset.num_classes, name="head")(x))    # 96 weights
    pruned, record = stages.apply("prune", model, config.PruneConfig(sparsity=0.8, epochs=1), context)
    reasons = {item["layer"]: item["reason"] for item in record.skipped}
    assert set(reasons) == {"small", "head"} and "under prune.min_weights (1,024)" in reasons["small"]
    weights = kernels(pruned)
    assert np.count_nonzero(np.asarray(weights["small"]) == 0) == 0
    assert np.mean(np.asarray(weights["large"]) == 0) >= 0.79
    unchanged, nothing = stages.apply("prune", models.copy(model), config.PruneConfig(sparsity=0.8, min_weights=2000,
                                                                                       epochs=1), context)
    assert nothing.details["achieved_sparsity"] == 0.0 and "returned unchanged" in nothing.details["note"]


def tiny_transformer(dataset):
    layers = keras.layers
    keras.utils.set_random_seed(0)
    inputs = keras.Input(dataset.input_shape)
    x = layers.Conv2D(8, 2, strides=2, name="patches")(inputs)
    x = layers.Reshape((-1, 8))(x)
    y = layers.LayerNormalization()(x)
    x = layers.Add()([x, layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attention")(y, y)])
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(dataset.num_classes, name="head")(x))


def test_clustered_transformer_can_be_copied_and_checkpointed(tiny_dataset, context, tmp_path):
    """strip_clustering left MultiHeadAttention's variables in another order (a bias where a kernel belongs): the
    next stage's copy and the HDF5 checkpoint of prune 0.8 -> cluster -> QAT on a transformer both failed."""
    model = tiny_transformer(tiny_dataset)
    clustered, _ = stages.apply("cluster", models.copy(model), config.ClusterConfig(clusters=8, epochs=1), context)
    copied = models.copy(clustered)
    x = tiny_dataset.x_test[:8]
    np.testing.assert_array_equal(copied.predict(x, verbose=0), clustered.predict(x, verbose=0))
    path = tmp_path / "clustered.h5"
    path.write_bytes(models.to_h5_bytes(clustered))
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), clustered.predict(x, verbose=0))


def test_attention_stays_float_while_the_rest_of_a_transformer_gets_qat(tiny_dataset, context):
    """MultiHeadAttention is called with query and value; tfmot's wrapper cannot build it, which used to make
    the whole model fall back to post-training int8. Now only that layer is left unwrapped, with the reason."""
    model = tiny_transformer(tiny_dataset)
    quantized, record = stages.apply("quantize", model, config.QuantizeConfig(epochs=1), context)
    assert "fallback" not in record.details, record.details
    assert {"layer": "attention", "reason": common.NOT_WRAPPABLE} in record.skipped
    coverage = record.details["coverage"]
    assert coverage["MultiHeadAttention"] == {"qat": 0, "output_only": 0, "not_wrapped": 1}
    assert coverage["Dense"]["qat"] == 1 and coverage["Conv2D"]["qat"] == 1
    content = convert(quantized, "int8", calibration=tiny_dataset.x_train[:20])
    result = cpu.verify(content, "int8")
    assert result["ok"], result["details"]["rules"]
    accuracy = runtime.evaluate(content, tiny_dataset.x_test, tiny_dataset.y_test)["accuracy"]
    assert accuracy >= record.metrics["accuracy"] - 0.1
