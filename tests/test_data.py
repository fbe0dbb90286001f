"""Datasets: each source gives the same shapes, deterministic splits, clear errors."""

import numpy as np
import pytest

from edgecomp import config, data
from edgecomp.errors import DataError


def test_digits_is_real_8x8_images_in_three_stratified_splits():
    ds = data.load(config.DataConfig(source="digits"), seed=0)
    assert ds.input_shape == (8, 8, 1)
    assert ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 1797
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert set(np.unique(ds.y_test)) == set(range(10))  # stratified: every class is tested


def test_splits_are_deterministic_per_seed():
    a = data.load(config.DataConfig(source="digits"), seed=3)
    b = data.load(config.DataConfig(source="digits"), seed=3)
    c = data.load(config.DataConfig(source="digits"), seed=4)
    assert np.array_equal(a.y_test, b.y_test) and np.array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_train, c.y_train)


def test_digits_upsample_to_image_size_and_replicate_to_three_channels():
    small = data.load(config.DataConfig(source="digits"), seed=0)
    big = data.load(config.DataConfig(source="digits", image_size=(32, 48), channels=3), seed=0)
    assert big.input_shape == (32, 48, 3) and big.x_train.dtype == np.float32
    assert np.array_equal(big.y_train, small.y_train) and np.array_equal(big.y_test, small.y_test)  # same split
    assert np.array_equal(big.x_train[..., 0], big.x_train[..., 2])                                 # gray × 3
    assert 0.0 <= big.x_train.min() and big.x_train.max() <= 1.0
    # Bilinear upsampling keeps the picture: block means come back close to the 8x8 pixels.
    blocks = big.x_test[..., 0].reshape(len(big.x_test), 8, 4, 8, 6).mean(axis=(2, 4))
    assert np.abs(blocks - small.x_test[..., 0]).mean() < 0.1


def test_mnist1d_is_generated_locally_with_its_test_split():
    ds = data.load(config.DataConfig(source="mnist1d"), seed=0)
    assert ds.input_shape == (40, 1)
    assert len(ds.x_test) == 1000
    assert len(ds.x_train) + len(ds.x_val) == 4000


def test_npz_with_one_hot_labels_and_own_validation(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.random((30, 5)), y_train=np.eye(3)[rng.integers(0, 3, 30)],
             x_test=rng.random((9, 5)), y_test=rng.integers(0, 3, 9), x_val=rng.random((6, 5)), y_val=rng.integers(0, 3, 6))
    ds = data.load(config.DataConfig(source="npz", path=str(path)), seed=0)
    assert ds.input_shape == (5,)
    assert ds.y_train.shape == (30,) and ds.num_classes == 3
    assert len(ds.x_val) == 6


@pytest.mark.parametrize("arrays, expected", [
    ({"x_train": np.zeros((4, 2))}, "lacks y_train, x_test, y_test"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(3), "x_test": np.zeros((2, 2)), "y_test": np.zeros(2)},
     "x_train has 4 samples but y_train has 3"),
    ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4), "x_test": np.zeros((2, 3)), "y_test": np.zeros(2)},
     "x_test samples have shape (3,)"),
])
def test_npz_problems_are_named(tmp_path, arrays, expected):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as caught:
        data.load(config.DataConfig(source="npz", path=str(path), validation_split=0.0), seed=0)
    assert expected in str(caught.value)


def test_npz_that_is_not_an_npz(tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"garbage" * 10)
    with pytest.raises(DataError, match="not a readable .npz"):
        data.load(config.DataConfig(source="npz", path=str(path)), seed=0)


def _write_images(root, classes=("cat", "dog"), per_class=6, size=(10, 12)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = (rng.random((*size, 3)) * 80 + label * 150).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")


def test_image_dir_resizes_and_labels_by_folder(tmp_path):
    _write_images(tmp_path)
    cfg = config.DataConfig(source="image_dir", path=str(tmp_path), image_size=(4, 5), channels=3,
                            validation_split=0.0, test_split=0.5)
    ds = data.load(cfg, seed=0)
    assert ds.input_shape == (4, 5, 3)
    assert ds.class_names == ("cat", "dog")
    assert len(ds.x_train) == 6 and len(ds.x_test) == 6
    # dog images are brighter: the label follows the folder
    assert ds.x_test[ds.y_test == 1].mean() > ds.x_test[ds.y_test == 0].mean()
    assert ds.labels == ["cat", "dog"]   # what labels.txt beside every file says


def test_image_dir_with_a_broken_image_names_the_file(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "cat" / "broken.png").write_bytes(b"not a png")
    cfg = config.DataConfig(source="image_dir", path=str(tmp_path), image_size=(4, 4))
    with pytest.raises(DataError, match="broken.png"):
        data.load(cfg, seed=0)


def test_synthetic_has_requested_shape_and_classes():
    cfg = config.DataConfig(source="synthetic", image_size=(5, 7), channels=3, num_classes=5, samples=100)
    ds = data.load(cfg, seed=1)
    assert ds.input_shape == (5, 7, 3)
    assert set(np.unique(ds.y_train)) == set(range(5))


def test_representative_samples_come_from_train():
    ds = data.load(config.DataConfig(source="digits"), seed=0)
    samples = data.representative_samples(ds, 20)
    assert samples.shape == (20, 8, 8, 1)
    rows = {row.tobytes() for row in ds.x_train}
    assert all(sample.tobytes() in rows for sample in samples)
