"""A float model that learned: BatchNorm statistics that lag are repaired, early stopping waits
while the model is at chance, and a run whose float model stays at chance stops with exit 1."""

import numpy as np
import pytest
import yaml

from conftest import run_cli
from edgecomp import config, data, training
from edgecomp._keras import keras
from edgecomp.errors import NotLearnedError


@pytest.fixture(scope="module")
def digits():
    return data.load(config.DataConfig(source="digits"), seed=0)


def lagging_batchnorm_net(dataset):
    """BatchNorms with momentum 0.999 (as keras.applications use) on inputs far from mean 0, variance 1:
    after a few hundred steps their moving statistics are still mostly the initial ones."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(dataset.input_shape)
    x = keras.layers.Rescaling(40.0, offset=25.0)(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.999)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization(momentum=0.999)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(dataset.num_classes)(x))


def test_lagging_batchnorm_statistics_leave_inference_at_chance_until_reestimated(digits):
    model = lagging_batchnorm_net(digits)
    training.compile_model(model, 0.01)
    model.fit(digits.x_train, digits.y_train, epochs=3, batch_size=64, verbose=0)
    chance = training.chance_accuracy(digits.y_test)
    before = training.accuracy(model, digits.x_test, digits.y_test)
    assert training.near_chance(before, chance), f"the setup no longer shows the lag (accuracy {before:.3f})"
    used = training.reestimate_batchnorm(model, digits.x_train, 64)
    after = training.accuracy(model, digits.x_test, digits.y_test)
    assert used == 10
    assert after > 0.8, f"re-estimated statistics should repair inference ({before:.3f} -> {after:.3f})"
    assert all(layer.momentum == 0.999 for layer in training.batchnorm_layers(model))


def test_fit_repairs_lagging_batchnorm_and_says_so(digits):
    model = lagging_batchnorm_net(digits)
    history = training.fit(model, digits, epochs=3, learning_rate=0.01, batch_size=64, patience=5)
    accuracy = training.accuracy(model, digits.x_test, digits.y_test)
    assert accuracy > 0.8
    assert any("BatchNorm moving statistics" in note for note in history.notes), history.notes


def test_fit_leaves_a_healthy_batchnorm_model_alone(digits):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(digits.input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(digits.num_classes)(x))
    history = training.fit(model, digits, epochs=2, learning_rate=0.01, batch_size=64, patience=5)
    assert not any("BatchNorm" in note for note in history.notes), history.notes


def _drive(stopper, logs):
    """Feeds epoch logs to an early-stopping callback; returns the epoch it stopped at (or None)."""
    stopper.on_train_begin()
    for epoch, (val_loss, val_accuracy) in enumerate(logs):
        stopper.on_epoch_end(epoch, {"val_loss": val_loss, "val_accuracy": val_accuracy})
        if stopper.model.stop_training:
            return epoch
    return None


def test_early_stopping_counts_no_patience_while_validation_is_at_chance():
    model = keras.Sequential([keras.layers.Input((2,)), keras.layers.Dense(2)])
    model.stop_training = False
    stopper = training.LearningEarlyStopping(patience=2, chance=0.1)
    stopper.set_model(model)
    # Keras' own early stopping would stop at epoch 2 (val_loss rising, no improvement).
    at_chance = [(2.30 + 0.01 * epoch, 0.10) for epoch in range(6)]
    learning = [(1.0, 0.6), (0.8, 0.7), (0.9, 0.7), (0.95, 0.7)]
    stopped = _drive(stopper, at_chance + learning)
    assert stopped == 9, "patience counts from the best epoch after leaving chance"
    assert stopper.best_epoch == 7
    assert "left chance" in stopper.notes[0]


def test_early_stopping_never_stops_a_model_that_stays_at_chance():
    model = keras.Sequential([keras.layers.Input((2,)), keras.layers.Dense(2)])
    model.stop_training = False
    stopper = training.LearningEarlyStopping(patience=1, chance=0.5)
    stopper.set_model(model)
    assert _drive(stopper, [(0.7 + 0.01 * epoch, 0.52) for epoch in range(8)]) is None
    stopper.on_train_end()
    assert "stayed near chance" in stopper.notes[-1]


@pytest.mark.parametrize("accuracy, chance, near", [(0.18, 0.1, True), (0.20, 0.1, False), (0.54, 0.5, True),
                                                    (0.56, 0.5, False)])
def test_near_chance_is_a_tenth_of_the_way_to_one(accuracy, chance, near):
    assert training.near_chance(accuracy, chance) is near


def test_check_learned_names_the_causes_and_the_key(tmp_path):
    from edgecomp import pipeline

    cfg = config.from_dict({"output_dir": str(tmp_path)})
    with pytest.raises(NotLearnedError, match=r"near chance \(0\.1000\).*train\.learning_rate.*stop_if_not_learned"):
        pipeline.check_learned(cfg, 0.11, 0.10, {"training": ["early stopping at epoch 8"]})
    pipeline.check_learned(cfg, 0.5, 0.10, {})
    relaxed = config.from_dict({"output_dir": str(tmp_path), "train": {"stop_if_not_learned": False}})
    pipeline.check_learned(relaxed, 0.11, 0.10, {})


def test_run_whose_float_model_is_at_chance_exits_1_with_one_line(tmp_path):
    cfg = {"name": "chance", "output_dir": str(tmp_path),
           "data": {"source": "synthetic", "image_size": [6, 6], "num_classes": 3, "samples": 120},
           "model": {"zoo": "digits_cnn", "args": {"width": 0.25}}, "train": {"epochs": 0}}
    path = tmp_path / "chance.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = run_cli("edgecomp.train", "--config", str(path))
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "near chance" in errors[0] and "train.epochs > 0" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "chance" / "report.json").exists()


def test_fit_warns_when_validation_loss_still_improves_at_the_last_epoch(digits):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(digits.input_shape)
    x = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(digits.num_classes)(x))
    history = training.fit(model, digits, epochs=3, learning_rate=0.001, batch_size=64, patience=5)
    assert any("still improving" in note for note in history.notes), history.notes


def test_default_training_runs_until_early_stopping_not_a_short_fixed_count():
    assert config.TrainConfig().epochs >= 100 and config.TrainConfig().early_stopping_patience > 0
