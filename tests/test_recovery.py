"""Pruning, clustering and low-rank rewriting fine-tune on when validation accuracy ended short of their input."""

import numpy as np

from edgecomp import config, data
from edgecomp._keras import keras
from edgecomp.stages import StageContext, cluster, low_rank, prune


def trained_digits_cnn(tmp_path, previous=()):
    """A one-conv digits classifier trained 6 epochs, and a stage context on digits."""
    dataset = data.load(config.DataConfig(source="digits"), seed=0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(dataset.input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(dataset.num_classes)(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(dataset.x_train, dataset.y_train, epochs=6, batch_size=64, verbose=0)
    return model, StageContext(config.from_dict({"output_dir": str(tmp_path)}), dataset, tmp_path / "logs", previous)


def test_short_schedule_is_followed_by_recovery_at_full_sparsity(tmp_path):
    model, context = trained_digits_cnn(tmp_path)
    params = config.PruneConfig(min_weights=0, sparsity=0.95, epochs=1, ramp_share=1.0, recovery_epochs=4)
    pruned, record = prune.apply(model, params, context)
    recovery = record.details["recovery"]
    assert recovery["validation_before_recovery"] < recovery["validation_before_stage"] - 0.005
    assert 1 <= recovery["epochs"] <= 4
    assert recovery["validation_after_recovery"] > recovery["validation_before_recovery"]
    kernel = pruned.layers[1].get_weights()[0]
    assert np.mean(kernel == 0) >= 0.94, "recovery keeps the target sparsity"


def test_clustering_that_costs_accuracy_is_fine_tuned_on_with_its_clusters(tmp_path):
    model, context = trained_digits_cnn(tmp_path)
    params = config.ClusterConfig(clusters=2, epochs=1, recovery_epochs=4)
    clustered, record = cluster.apply(model, params, context)
    recovery = record.details["recovery"]
    assert recovery["validation_before_recovery"] < recovery["validation_before_stage"] - 0.005
    assert 1 <= recovery["epochs"] <= 4
    assert recovery["validation_after_recovery"] > recovery["validation_before_recovery"]
    for layer in clustered.layers:
        if layer.get_weights():
            assert np.unique(layer.get_weights()[0]).size <= 2, layer.name


def test_low_rank_rewrite_that_costs_accuracy_is_fine_tuned_on(tmp_path):
    model, context = trained_digits_cnn(tmp_path)
    params = config.LowRankConfig(rank_ratio=0.05, rank_multiple=1, min_params=1000, finetune_epochs=1,
                                  recovery_epochs=4, learning_rate=0.001)
    rewritten, record = low_rank.apply(model, params, context)
    recovery = record.details["recovery"]
    assert recovery["validation_before_recovery"] < recovery["validation_before_stage"] - 0.005
    assert 1 <= recovery["epochs"] <= 4
    assert recovery["validation_after_recovery"] > recovery["validation_before_recovery"]
    assert record.details["factorized_params_ratio"] < 0.2


def test_no_recovery_without_fine_tuning_epochs(tmp_path):
    model, context = trained_digits_cnn(tmp_path)
    params = config.LowRankConfig(rank_ratio=0.05, rank_multiple=1, min_params=1000, finetune_epochs=0)
    _, record = low_rank.apply(model, params, context)
    assert "recovery" not in record.details
    assert record.details["accuracy_before_finetune"] < 0.9
