"""Pruning fine-tunes on at full sparsity when its schedule left validation accuracy short."""

import numpy as np

from edgecomp import config, data
from edgecomp._keras import keras
from edgecomp.stages import StageContext, prune


def test_short_schedule_is_followed_by_recovery_at_full_sparsity(tmp_path):
    dataset = data.load(config.DataConfig(source="digits"), seed=0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(dataset.input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(dataset.num_classes)(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(dataset.x_train, dataset.y_train, epochs=6, batch_size=64, verbose=0)
    context = StageContext(config.from_dict({"output_dir": str(tmp_path)}), dataset, tmp_path / "logs", ())
    params = config.PruneConfig(min_weights=0, sparsity=0.95, epochs=1, ramp_share=1.0, recovery_epochs=4)
    pruned, record = prune.apply(model, params, context)
    recovery = record.details["recovery"]
    assert recovery["validation_after_schedule"] < recovery["validation_before_pruning"] - 0.005
    assert 1 <= recovery["epochs"] <= 4
    assert recovery["validation_after_recovery"] > recovery["validation_after_schedule"]
    kernel = pruned.layers[1].get_weights()[0]
    assert np.mean(kernel == 0) >= 0.94, "recovery keeps the target sparsity"
