"""SVD low-rank rewriting: exact at full rank, ranks obey the rules, topology and conversion survive."""

import numpy as np
import pytest

from edgecomp import config, runtime, stages
from edgecomp._keras import keras
from edgecomp.errors import ConfigError
from edgecomp.stages import low_rank
from edgecomp.targets import cpu
from edgecomp.targets.convert import convert


def branchy_model(seed=0):
    """Residual add, a strided conv, BatchNorm after an Add, a concatenation and a dense head."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    b = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="c2")(a)
    shortcut = keras.layers.Conv2D(16, 1, strides=2, name="proj")(a)
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Add(name="add")([b, shortcut]))
    x = keras.layers.Concatenate(name="concat")([x, keras.layers.Conv2D(8, 3, padding="same", name="c3")(x)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(32, activation="relu", name="d1")(x)
    return keras.Model(inputs, keras.layers.Dense(5, activation="softmax", name="out")(x))


SAMPLES = np.random.default_rng(0).random((8, 12, 12, 3), dtype=np.float32)


@pytest.mark.parametrize("mode, ranks", [
    ("channel", {"c2": 16, "c3": 8, "d1": 24, "out": 5}),     # full rank: min(rows, columns)
    ("spatial", {"c2": 48, "c3": 24}),                        # (3·16)×(3·16) and (3·16)×(3·8)
])
def test_full_rank_rewrite_reproduces_the_outputs_within_1e_4(mode, ranks):
    model = branchy_model()
    rewritten = low_rank.factorize(model, ranks, mode)
    assert len(rewritten.layers) == len(model.layers) + len(ranks)
    np.testing.assert_allclose(rewritten.predict(SAMPLES, verbose=0), model.predict(SAMPLES, verbose=0), atol=1e-4)


def test_rewrite_keeps_names_downstream_and_inserts_the_thin_layer_before():
    rewritten = low_rank.factorize(branchy_model(), {"c2": 4})
    thin, wide = rewritten.get_layer("c2_lowrank"), rewritten.get_layer("c2")
    assert thin.filters == 4 and not thin.use_bias and thin.strides == (2, 2) and thin.kernel_size == (3, 3)
    assert wide.kernel_size == (1, 1) and wide.use_bias and wide.input.shape[-1] == 4
    assert rewritten.get_layer("add").input[0].shape == rewritten.get_layer("add").input[1].shape


def test_sequential_models_are_rewritten_too():
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(64, activation="relu", name="wide"),
                              keras.layers.Dense(3, name="head")])
    rewritten = low_rank.factorize(model, {"wide": 20})
    inputs = np.random.default_rng(1).random((4, 20), dtype=np.float32)
    np.testing.assert_allclose(rewritten.predict(inputs, verbose=0), model.predict(inputs, verbose=0), atol=1e-4)
    assert [layer.name for layer in rewritten.layers] == ["wide_lowrank", "wide", "head"]


@pytest.mark.parametrize("energy, ratio, multiple, expected", [
    (0.5, None, 1, 1),          # σ² = 16, 4, 1, 1: the first value holds 16/22 ≥ 0.5
    (0.9, None, 1, 2),          # 20/22 = 0.909
    (0.99, None, 1, 4),         # 21/22 < 0.99 ≤ 22/22
    (0.9, None, 8, 4),          # rounded up to 8, capped at the full rank 4
    (None, 0.5, 1, 2),
    (None, 0.3, 1, 2),          # ceil(1.2)
])
def test_rank_obeys_energy_ratio_and_multiple(energy, ratio, multiple, expected):
    singular_values = np.array([4.0, 2.0, 1.0, 1.0])
    assert low_rank.choose_rank(singular_values, energy=energy, rank_ratio=ratio, multiple=multiple) == expected


def test_rank_is_rounded_up_to_the_simd_multiple_on_a_real_kernel():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 32, 64)).astype(np.float32)
    spectrum = np.linalg.svd(low_rank.kernel_matrix(kernel, "channel"), compute_uv=False)
    rank = low_rank.choose_rank(spectrum, energy=0.5, rank_ratio=None, multiple=8)
    assert rank % 8 == 0 and low_rank.energy_kept(spectrum, rank) >= 0.5
    assert low_rank.energy_kept(spectrum, rank - 8) < 0.5 or rank == 8


@pytest.fixture()
def context(tmp_path):
    from edgecomp import data

    cfg = config.from_dict({"data": {"source": "synthetic", "image_size": [12, 12], "channels": 3,
                                     "num_classes": 5, "samples": 200, "batch_size": 32}})
    return stages.StageContext(cfg, data.load(cfg.data, 0), tmp_path)


def test_layers_below_min_params_are_left_as_is_and_reported(context):
    params = config.LowRankConfig(rank_ratio=0.25, rank_multiple=1, min_params=1000, finetune_epochs=0)
    model, record = stages.apply("low_rank", branchy_model(), params, context)
    reasons = {item["layer"]: item["reason"] for item in record.skipped}
    assert "c1" in reasons and "< min_params 1,000" in reasons["c1"]          # 3·3·3·16 = 432 weights
    assert "d1" in reasons and "out" in reasons                                # 24·32 and 32·5 weights
    assert {row["layer"] for row in record.details["layers"]} == {"c2", "c3"}
    assert "c1_lowrank" not in [layer.name for layer in model.layers]
    assert record.details["factorized_params_ratio"] < 1.0


def test_a_rank_that_saves_nothing_is_skipped_with_the_reason(context):
    params = config.LowRankConfig(rank_ratio=1.0, min_params=0, finetune_epochs=0)
    _, record = stages.apply("low_rank", branchy_model(), params, context)
    assert not record.details["layers"]
    assert any("saves no parameters" in item["reason"] for item in record.skipped)


def test_rewritten_model_fine_tunes_converts_to_int8_and_runs(context, tmp_path):
    params = config.LowRankConfig(energy=0.8, rank_multiple=4, min_params=1000, finetune_epochs=1)
    model, record = stages.apply("low_rank", branchy_model(), params, context)
    rows = {row["layer"]: row for row in record.details["layers"]}
    assert all(0 < row["reconstruction_error"] < 1 and row["params_after"] < row["params_before"]
               for row in rows.values())
    model.save(tmp_path / "checkpoint.h5")          # with optimizer state: weight names must be unique
    content = convert(model, "int8", "float32", context.dataset.x_train[:50])
    assert cpu.verify(content, "int8", "float32")["ok"]
    outputs = runtime.predict(content, context.dataset.x_test[:10])
    assert outputs.shape == (10, 5) and np.isfinite(outputs).all()


def test_sensitivity_meets_the_params_target(context):
    params = config.LowRankConfig(sensitivity=True, target_params_ratio=0.6, min_params=1000, rank_multiple=2,
                                  finetune_epochs=0)
    _, record = stages.apply("low_rank", branchy_model(), params, context)
    assert record.details["factorized_params_after"] <= 0.6 * sum(
        int(np.prod(branchy_model().get_layer(name).kernel.shape)) for name in ("c2", "c3"))


@pytest.mark.parametrize("raw, message", [
    ({"energy": 0.9, "rank_ratio": 0.5}, "give one of energy, rank_ratio or target_params_ratio"),
    ({"sensitivity": True}, "sensitivity: true needs target_params_ratio"),
    ({"layers": ["conv("]}, "is not a regular expression"),
])
def test_bad_low_rank_settings_say_what_to_do(raw, message):
    with pytest.raises(ConfigError, match=message):
        config.from_dict({"stages": [{"low_rank": raw}]})


def test_low_rank_after_prune_is_refused():
    with pytest.raises(ConfigError, match=r"low_rank: .* move it before prune"):
        config.from_dict({"stages": [{"prune": {}}, {"low_rank": {}}]})
