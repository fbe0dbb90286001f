"""train.augment: every training sample shifted / flipped / noised anew each epoch, reproducibly; bad settings
are refused before training with the key named."""

import numpy as np
import pytest

from conftest import run_cli
from edgecomp import augment, config, distribute
from edgecomp.errors import ConfigError
from test_cli import assert_one_line_error


def _batches(x, y, settings, epochs=1, seed=0):
    from edgecomp._keras import keras

    keras.utils.set_random_seed(seed)
    inputs = distribute.fit_inputs(x, y, x[:0], y[:0], batch_size=len(x), augment=config.AugmentConfig(**settings))
    epochs_seen = []
    for _ in range(epochs):   # samples back in their original order (the labels here are their indices)
        batches = list(inputs["x"])
        samples = np.concatenate([b[0].numpy() for b in batches])
        labels = np.concatenate([b[1].numpy() for b in batches])
        epochs_seen.append(samples[np.argsort(labels, kind="stable")] if len(set(labels)) == len(labels)
                           else samples)
    return epochs_seen, inputs


def _shifted(image, dy, dx):
    out = np.zeros_like(image)
    h, w = image.shape[:2]
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h - max(dy, 0),
                                                                         max(-dx, 0):w - max(dx, 0)]
    return out


def test_shift_moves_each_image_by_at_most_the_share_with_zeros_shifted_in():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, size=(64, 10, 10, 1)).astype(np.float32)   # no zeros: shifted-in zeros show
    y = np.arange(64)
    (epoch,), inputs = _batches(x, y, {"shift": 0.2})
    seen = set()
    for out, original in zip(epoch, x):
        shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                  if np.allclose(out, _shifted(original, dy, dx))]
        assert shifts, "an output is not its input shifted by at most 2 pixels with zeros shifted in"
        seen.add(shifts[0])
    assert len(seen) > 10   # shifts are drawn per sample
    assert inputs["validation_data"] is None or len(inputs["validation_data"][0]) == 0


def test_samples_change_every_epoch_and_the_same_seed_gives_the_same_batches():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 40, 1)).astype(np.float32)   # MNIST-1D-like sequences: shifts along the steps
    y = np.arange(32)
    first, _ = _batches(x, y, {"shift": 0.1, "noise": 0.1}, epochs=2, seed=3)
    again, _ = _batches(x, y, {"shift": 0.1, "noise": 0.1}, epochs=2, seed=3)
    assert not np.allclose(first[0], first[1])
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_noise_has_the_asked_share_of_the_data_std_and_flip_mirrors():
    x = np.tile(np.arange(6, dtype=np.float32).reshape(1, 1, 6, 1), (400, 3, 1, 1))   # std of x: 1.708
    y = np.zeros(400, dtype=np.int64)
    (noisy,), _ = _batches(x, y, {"noise": 0.5})
    assert abs((noisy - x).std() - 0.5 * x.std()) < 0.05 * x.std()
    (flipped,), _ = _batches(x, y, {"flip": True})
    mirrored = np.all(flipped == x[:, :, ::-1], axis=(1, 2, 3))
    same = np.all(flipped == x, axis=(1, 2, 3))
    assert np.all(mirrored | same) and 0.35 < mirrored.mean() < 0.65


@pytest.mark.parametrize("settings, shape, expected", [
    ({"flip": True}, (40, 1), "train.augment.flip: mirrors images of shape (h, w, c)"),
    ({"shift": 0.1}, (64,), "train.augment.shift: needs samples with a spatial axis"),
    ({"shift": 0.01}, (8, 8, 1), "train.augment.shift: 0.01 of (8, 8) rounds to no shift at all"),
])
def test_settings_the_data_cannot_take_are_refused_naming_the_key(settings, shape, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        augment.check(config.AugmentConfig(**settings), shape)


def test_a_run_refuses_flip_on_sequences_before_training(tmp_path):
    path = tmp_path / "flip.yaml"
    path.write_text(f"name: f\noutput_dir: {tmp_path}\ndata: {{source: mnist1d}}\nmodel: {{zoo: mnist1d_cnn}}\n"
                    "train: {augment: {flip: true}}\n")
    assert_one_line_error(run_cli("edgecomp.train", f"--config={path}"), "train.augment.flip")
    assert not (tmp_path / "f" / "checkpoints").exists()


def test_a_run_with_shift_trains_on_shifted_digits(tmp_path):
    from edgecomp import pipeline

    cfg = config.from_dict({
        "name": "shifted", "output_dir": str(tmp_path), "data": {"source": "digits", "calibration_samples": 50},
        "model": {"zoo": "digits_cnn", "args": {"width": 0.5}},
        "train": {"epochs": 3, "stop_if_not_learned": False, "augment": {"shift": 0.125}},
        "targets": [{"cpu": {"quantization": "int8"}}], "benchmark": {"runs": 2, "warmup": 0},
    })
    report = pipeline.run(cfg)
    assert report.stages[0].details["epochs_run"] == 3 and report.targets[0].metrics["accuracy"] > 0.2
    saved = config.load(cfg.run_dir / "config.yaml")
    assert saved.train.augment.shift == 0.125


def test_the_library_dataset_takes_augment_and_names_the_keyword():
    import edgecomp

    x = np.random.default_rng(0).random((60, 8, 8, 1)).astype(np.float32)
    y = np.arange(60) % 3
    assert edgecomp.dataset(x, y, augment={"shift": 0.125}).augment.shift == 0.125
    with pytest.raises(edgecomp.ConfigError, match=r"unknown key 'augment.shfit'"):
        edgecomp.dataset(x, y, augment={"shfit": 0.1})
