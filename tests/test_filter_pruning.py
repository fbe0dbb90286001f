"""prune structure filters: channels removed by norm, consumers rewired, the graph keeps working."""

import numpy as np
import pytest

from edgecomp import config, data, models, runtime, stages
from edgecomp._keras import keras
from edgecomp.errors import ConfigError
from edgecomp.stages import filter_sensitivity, filters
from edgecomp.targets.convert import convert

layers = keras.layers


def params(**overrides):
    return config.PruneConfig(**{"structure": "filters", "epochs": 0, "recovery_epochs": 0, "scope": "layer",
                                 **overrides})


def random_inputs(model, count=8, seed=0):
    shape = tuple(model.input_shape[1:])
    return np.random.default_rng(seed).standard_normal((count, *shape)).astype(np.float32)


def conv_chain(first=40, second=24, third=6):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(first, 3, padding="same", name="a")(inputs)
    x = layers.Conv2D(second, 3, padding="same", name="b")(x)
    x = layers.Conv2D(third, 1, name="c")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3, name="logits")(x))


@pytest.fixture(scope="module")
def context(tiny_dataset, tmp_path_factory):
    cfg = config.from_dict({"data": {"batch_size": 32}})
    return stages.StageContext(cfg, tiny_dataset, tmp_path_factory.mktemp("logs"))


def test_kept_count_rounds_up_to_round_to_within_bounds():
    assert filters.kept_count(40, 20, 8) == 24
    assert filters.kept_count(40, 4, 8) == 8          # never below round_to
    assert filters.kept_count(6, 3, 8) == 6           # never above the original
    assert filters.kept_count(12, 11, 8) == 12
    assert filters.kept_count(40, 20, 1) == 20


def test_channel_counts_follow_sparsity_and_round_to():
    model = conv_chain()
    pruned, details, _ = filters.prune_filters(model, params(sparsity=0.5, round_to=8))
    assert [pruned.get_layer(n).filters for n in "abc"] == [24, 16, 6]
    pruned, _, _ = filters.prune_filters(model, params(sparsity=0.5, round_to=1))
    assert [pruned.get_layer(n).filters for n in "abc"] == [20, 12, 3]
    pruned, _, _ = filters.prune_filters(model, params(sparsity=0.9, round_to=8))
    assert [pruned.get_layer(n).filters for n in "abc"] == [8, 8, 6]
    rows = {row["layer"]: row for row in details["layers"]}
    assert rows["b"]["channels_in_after"] == 24 and rows["b"]["channels_after"] == 16
    assert details["macs_after"] < details["macs_before"] and details["params_after"] < details["params_before"]
    assert rows["b"]["macs_before"] == 6 * 6 * 3 * 3 * 40 * 24 and rows["b"]["macs_after"] == 6 * 6 * 3 * 3 * 24 * 16


def test_input_model_is_left_unchanged():
    model = conv_chain()
    before = [w.copy() for w in model.get_weights()]
    filters.prune_filters(model, params(sparsity=0.5))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.parametrize("criterion, kept_column", [("l1", 0), ("l2", 1)])
def test_l1_and_l2_each_keep_the_channel_with_the_larger_norm(criterion, kept_column):
    inputs = keras.Input((4,))
    hidden = layers.Dense(2, use_bias=False, name="hidden")(inputs)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(hidden))
    # Column 0: L1 4, L2 2. Column 1: L1 3, L2 3.
    kernel = np.array([[1.0, 3.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], np.float32)
    model.get_layer("hidden").set_weights([kernel])
    pruned, _, _ = filters.prune_filters(model, params(sparsity=0.5, round_to=1, criterion=criterion))
    np.testing.assert_array_equal(pruned.get_layer("hidden").get_weights()[0], kernel[:, [kept_column]])
    head = model.get_layer("logits").get_weights()[0]
    np.testing.assert_array_equal(pruned.get_layer("logits").get_weights()[0], head[[kept_column]])


def test_global_scope_ranks_normalized_norms_across_layers():
    inputs = keras.Input((4,))
    a = layers.Dense(8, use_bias=False, name="a")(inputs)
    b = layers.Dense(8, use_bias=False, name="b")(a)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(b))
    model.get_layer("a").set_weights([np.ones((4, 8), np.float32)])                  # all alike
    model.get_layer("b").set_weights([np.ones((8, 8), np.float32) * np.array([0.01] * 4 + [1.99] * 4, np.float32)])
    pruned, _, _ = filters.prune_filters(model, params(sparsity=0.25, round_to=1, scope="global"))
    assert (pruned.get_layer("a").units, pruned.get_layer("b").units) == (8, 4)
    pruned, _, _ = filters.prune_filters(model, params(sparsity=0.25, round_to=1, scope="layer"))
    assert (pruned.get_layer("a").units, pruned.get_layer("b").units) == (6, 6)


def residual_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 3))
    stem = layers.ReLU()(layers.BatchNormalization(name="stem_bn")(layers.Conv2D(16, 3, padding="same",
                                                                                name="stem")(inputs)))
    y = layers.Conv2D(16, 3, padding="same", name="branch")(stem)
    y = layers.BatchNormalization(name="branch_bn")(y)
    x = layers.ReLU()(layers.Add(name="add")([stem, y]))
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.Conv2D(16, 1, name="after")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, name="logits")(x))


def test_residual_add_prunes_both_sides_with_one_mask_and_still_runs():
    model = residual_model()
    pruned, details, _ = filters.prune_filters(model, params(sparsity=0.5, round_to=4))
    assert pruned.get_layer("stem").filters == pruned.get_layer("branch").filters == 8
    assert pruned.get_layer("dw").get_weights()[0].shape[2] == 8
    norms = filters.channel_norms(model.get_layer("stem").kernel.numpy(), "l1") + \
        filters.channel_norms(model.get_layer("branch").kernel.numpy(), "l1")
    kept = np.sort(np.argsort(-norms, kind="stable")[:8])
    for name in ("stem", "branch"):
        original = model.get_layer(name).get_weights()[0]
        np.testing.assert_array_equal(pruned.get_layer(name).get_weights()[0][..., :, :],
                                      original[..., kept] if name == "stem" else original[..., kept][..., kept, :])
    assert any(set(group["producers"]) == {"stem", "branch"} for group in details["groups"])
    x = random_inputs(model)
    assert pruned.predict(x, verbose=0).shape == model.predict(x, verbose=0).shape == (8, 4)


def test_concatenate_slices_each_input_by_its_own_mask():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(16, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(24, 3, padding="same", name="b")(inputs)
    x = layers.Concatenate(name="concat")([a, b])
    x = layers.Conv2D(8, 1, name="c")(x)
    model = keras.Model(inputs, layers.Dense(5, name="logits")(layers.GlobalAveragePooling2D()(x)))
    pruned, _, _ = filters.prune_filters(model, params(sparsity=0.5, round_to=4))
    assert (pruned.get_layer("a").filters, pruned.get_layer("b").filters) == (8, 12)
    keep_a = np.sort(np.argsort(-filters.channel_norms(model.get_layer("a").kernel.numpy(), "l1"), kind="stable")[:8])
    keep_b = np.sort(np.argsort(-filters.channel_norms(model.get_layer("b").kernel.numpy(), "l1"), kind="stable")[:12])
    rows = np.concatenate([keep_a, 16 + keep_b])
    keep_c = np.sort(np.argsort(-filters.channel_norms(model.get_layer("c").kernel.numpy(), "l1"), kind="stable")[:4])
    np.testing.assert_array_equal(pruned.get_layer("c").get_weights()[0],
                                  model.get_layer("c").get_weights()[0][:, :, rows][..., keep_c])
    x = random_inputs(model)
    assert pruned.predict(x, verbose=0).shape == (8, 5)


def test_zero_sparsity_keeps_outputs(tiny_model):
    pruned, _, _ = filters.prune_filters(tiny_model, params(sparsity=0.0))
    x = random_inputs(tiny_model, 16)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), tiny_model.predict(x, verbose=0), atol=1e-5)


def test_removing_channels_that_are_zero_after_batch_norm_keeps_outputs():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(x))
    kernel = model.get_layer("conv").get_weights()[0]
    kernel[..., 8:] = 0.0
    model.get_layer("conv").set_weights([kernel])
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 2, 16), rng.normal(0, 1, 16)
    mean, variance = rng.normal(0, 1, 16), rng.uniform(0.5, 2, 16)
    beta[8:], mean[8:] = 0.0, 0.0                    # BN maps the zero channels to exactly 0
    bn_weights = [w.astype(np.float32) for w in (gamma, beta, mean, variance)]
    model.get_layer("bn").set_weights(bn_weights)
    pruned, details, _ = filters.prune_filters(model, params(sparsity=0.5, round_to=8))
    assert pruned.get_layer("conv").filters == 8
    for got, original in zip(pruned.get_layer("bn").get_weights(), bn_weights):
        np.testing.assert_array_equal(got, original[:8])
    x = random_inputs(model, 16)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert "flatten" in details


def test_output_layer_keeps_its_units(tiny_model, tiny_dataset):
    pruned, _, skipped = filters.prune_filters(tiny_model, params(sparsity=0.9, round_to=1))
    assert pruned.output_shape == tiny_model.output_shape
    assert pruned.layers[-1].units == tiny_dataset.num_classes
    assert {"layer": tiny_model.layers[-1].name, "reason": filters.OUTPUT_LAYER} in skipped


def test_layers_it_cannot_handle_are_skipped_with_a_reason():
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, 3, padding="same", name="feeds_separable")(inputs)
    x = layers.SeparableConv2D(16, 3, padding="same", name="separable")(x)
    x = layers.Conv2D(16, 3, padding="same", name="prunable")(x)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x)))
    pruned, _, skipped = filters.prune_filters(model, params(sparsity=0.5))
    reasons = {item["layer"]: item["reason"] for item in skipped}
    assert "separable" in reasons["feeds_separable"] and "SeparableConv2D" in reasons["feeds_separable"]
    assert "SeparableConv2D is not handled" in reasons["separable"]
    assert pruned.get_layer("feeds_separable").filters == 16 and pruned.get_layer("prunable").filters == 8
    assert pruned.predict(random_inputs(model), verbose=0).shape == (8, 3)


def test_sequential_model_is_pruned_into_a_functional_one():
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((10,)), layers.Dense(32, activation="relu"), layers.Dense(3)])
    pruned, _, _ = filters.prune_filters(model, params(sparsity=0.5))
    assert pruned.layers[1].units == 16
    assert pruned.predict(random_inputs(model), verbose=0).shape == (8, 3)


def test_pruned_model_converts_to_int8_and_runs(tiny_model, tiny_dataset):
    pruned, _, _ = filters.prune_filters(tiny_model, params(sparsity=0.5, round_to=4))
    content = convert(pruned, "int8", "float32", data.representative_samples(tiny_dataset, 32))
    result = runtime.evaluate(content, tiny_dataset.x_test, tiny_dataset.y_test)
    assert result["samples"] == len(tiny_dataset.y_test) and 0.0 <= result["accuracy"] <= 1.0


def test_filters_config_goes_through_the_prune_stage(tiny_model, context):
    cfg = config.from_dict({"stages": [{"prune": {"structure": "filters", "sparsity": 0.5, "round_to": 4,
                                                  "epochs": 1, "recovery_epochs": 3}}]})
    prune_params = config.stage_params(cfg.stages[0])
    pruned, record = stages.apply("prune", models.copy(tiny_model), prune_params, context)
    assert record.stage == "prune" and record.params < models.count_params(tiny_model)
    assert record.details["structure"] == "filters" and record.details["layers"]
    # Fine-tuning with early stopping: up to epochs + recovery_epochs, and the training loop says what it did.
    assert 1 <= record.details["finetune"]["epochs"] <= 4 and record.details["finetune"]["training"]
    assert {"accuracy_before_pruning", "accuracy_before_finetune"} <= set(record.details)
    assert 0.0 <= record.metrics["accuracy"] <= 1.0
    assert "sparsity" not in record.details   # no zeroed-weight check for the .tflite: channels are gone
    assert pruned.predict(context.dataset.x_test[:4], verbose=0).shape == (4, context.dataset.num_classes)


def test_epochs_zero_is_allowed_only_for_filters():
    assert config.from_dict({"stages": [{"prune": {"structure": "filters", "epochs": 0}}]})
    with pytest.raises(ConfigError, match=r"stages\[0\]\.prune: epochs: unstructured pruning happens while"):
        config.from_dict({"stages": [{"prune": {"structure": "unstructured", "epochs": 0}}]})


def test_layer_called_twice_keeps_the_channels_around_it():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((12,))
    a = layers.Dense(16, name="a")(inputs)
    shared = layers.Dense(16, name="shared")
    x = layers.Dense(16, name="after")(shared(shared(a)))
    model = keras.Model(inputs, layers.Dense(3, name="logits")(x))
    pruned, _, skipped = filters.prune_filters(model, params(sparsity=0.5))
    reasons = {item["layer"]: item["reason"] for item in skipped}
    assert reasons["a"] == filters.SHARED_LAYER and reasons["shared"] == filters.SHARED_LAYER
    assert (pruned.get_layer("a").units, pruned.get_layer("after").units) == (16, 8)
    x = random_inputs(model)
    np.testing.assert_allclose(pruned.predict(x, verbose=0).shape, (8, 3))


@pytest.mark.parametrize("shared_axes", [[1, 2], [1, 2, 3]])
def test_prelu_slopes_are_sliced_with_the_channels_they_follow(shared_axes):
    keras.utils.set_random_seed(4)
    inputs = keras.Input((6, 6, 2))
    x = layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
    x = layers.PReLU(shared_axes=shared_axes, name="prelu")(x)
    x = layers.Conv2D(8, 3, padding="same", name="next")(x)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x)))
    slopes = np.random.default_rng(0).uniform(0.1, 0.9, model.get_layer("prelu").alpha.shape).astype(np.float32)
    model.get_layer("prelu").set_weights([slopes])
    kernel, bias = model.get_layer("conv").get_weights()
    kernel[..., 8:], bias[8:] = 0.0, 0.0   # channels 8..15 are zero: removing them changes nothing
    model.get_layer("conv").set_weights([kernel, bias])
    pruned, _, skipped = filters.prune_filters(model, params(sparsity=0.5, round_to=8))
    assert pruned.get_layer("conv").filters == 8 and "conv" not in {item["layer"] for item in skipped}
    expected = slopes[..., :8] if slopes.shape[-1] == 16 else slopes
    np.testing.assert_array_equal(pruned.get_layer("prelu").get_weights()[0], expected)
    x = random_inputs(model, 16)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_sensitivity_spends_the_uniform_savings_where_they_cost_least_loss():
    dataset = data.load(config.DataConfig(source="digits"), seed=0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(dataset.input_shape)
    x = layers.Dense(64, activation="relu", name="a")(layers.Flatten()(inputs))
    x = layers.Dense(16, activation="relu", name="b")(x)
    model = keras.Model(inputs, layers.Dense(dataset.num_classes, name="logits")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(dataset.x_train, dataset.y_train, epochs=10, batch_size=64, verbose=0)
    validation = (dataset.x_val, dataset.y_val)
    uniform, uniform_details, _ = filters.prune_filters(model, params(sparsity=0.5, round_to=1), validation)
    chosen, details, _ = filters.prune_filters(model, params(sparsity=0.5, round_to=1, scope="sensitivity"),
                                               validation)
    widths = lambda pruned: (pruned.get_layer("a").units, pruned.get_layer("b").units)  # noqa: E731
    saved = lambda d: 2 - d["params_after"] / d["params_before"] - d["macs_after"] / d["macs_before"]  # noqa: E731
    assert widths(uniform) == (32, 8) and widths(chosen) != (32, 8)
    assert saved(details) >= saved(uniform_details) - 1e-9
    assert filter_sensitivity._cross_entropy(chosen, *validation) < filter_sensitivity._cross_entropy(uniform, *validation)
    groups = details["sensitivity"]["groups"]
    assert [group["channels_chosen"] for group in groups] == list(widths(chosen))
    assert [len(group["loss_increase"]) for group in groups] == [7, 7]       # 0.125 ... 0.875 of the channels


def test_knapsack_meets_the_savings_at_least_loss():
    options = {1: {8: (0.0, 0.0), 4: (0.5, 0.4), 2: (0.9, 0.7)},
               2: {8: (0.0, 0.0), 4: (0.1, 0.4), 2: (0.2, 0.6)}}
    assert filter_sensitivity._least_loss(options, 0.6) == {1: 8, 2: 2}
    assert filter_sensitivity._least_loss(options, 0.8) == {1: 4, 2: 4}
    assert filter_sensitivity._least_loss(options, 5.0) == {1: 2, 2: 2}         # unreachable: the most saving everywhere


def test_sensitivity_needs_validation_data():
    with pytest.raises(ValueError, match="validation data"):
        filters.prune_filters(conv_chain(), params(scope="sensitivity"))


def test_grouped_convolution_keeps_as_many_outputs_in_each_group():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    x = layers.Conv2D(16, 3, padding="same", groups=2, activation="relu", name="grouped")(x)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x)))
    kernel, bias = model.get_layer("grouped").get_weights()           # kernel (3, 3, 8, 16): two groups of 8 outputs
    dead = [0, 1, 2, 3, 12, 13, 14, 15]                               # four outputs of each group never fire
    kernel[..., dead], bias[dead] = 0.0, 0.0
    model.get_layer("grouped").set_weights([kernel, bias])
    pruned, _, skipped = filters.prune_filters(model, params(sparsity=0.5, round_to=1))
    grouped = pruned.get_layer("grouped")
    assert grouped.groups == 2 and grouped.filters == 8 and grouped.kernel.shape == (3, 3, 8, 8)
    assert pruned.get_layer("stem").filters == 16                     # its channels reach the grouped conv
    assert any(item["layer"] == "stem" and "grouped convolution `grouped`" in item["reason"] for item in skipped)
    x = random_inputs(model)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_grouped_convolution_rounds_kept_outputs_to_its_groups():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    x = layers.Conv2D(12, 3, padding="same", groups=4, name="grouped")(inputs)
    model = keras.Model(inputs, layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x)))
    pruned, _, _ = filters.prune_filters(model, params(sparsity=0.5, round_to=1))     # 6 wanted → 8 (2 per group)
    assert pruned.get_layer("grouped").filters == 8
    assert pruned.predict(random_inputs(model), verbose=0).shape == (8, 3)


def test_normalization_and_rescaling_inside_the_model_follow_the_channels():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
    normalization = layers.Normalization(axis=-1, name="norm")
    x = layers.Rescaling(0.5, offset=0.1, name="rescale")(normalization(x))
    model = keras.Model(inputs, layers.Dense(3, name="logits")(layers.GlobalAveragePooling2D()(x)))
    normalization.adapt(keras.Model(inputs, model.get_layer("conv").output).predict(random_inputs(model, 32),
                                                                                    verbose=0))
    kernel, bias = model.get_layer("conv").get_weights()
    kernel[..., 8:], bias[8:] = 0.0, 0.0                     # channels 8-15 give conv output 0 ...
    model.get_layer("conv").set_weights([kernel, bias])
    mean, variance, count = normalization.get_weights()
    mean[8:] = 0.0                                           # ... normalized to 0 and rescaled to the offset
    normalization.set_weights([mean, variance, count])
    logits_kernel, logits_bias = model.get_layer("logits").get_weights()
    logits_kernel[8:] = 0.0                                  # which the head ignores
    model.get_layer("logits").set_weights([logits_kernel, logits_bias])
    pruned, _, skipped = filters.prune_filters(model, params(sparsity=0.5, round_to=1))
    assert pruned.get_layer("conv").filters == 8
    assert [item["layer"] for item in skipped] == ["logits"]  # only the classes; norm and rescale follow the conv
    assert pruned.get_layer("norm").get_weights()[0].shape == (8,)
    x = random_inputs(model)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
