"""Datasets: every source becomes the same ``Dataset`` of numpy arrays.

Sources (``data.source``):

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 real images, bundled
  with scikit-learn, nothing downloaded), scaled to [0, 1], shape (8, 8, 1);
  ``image_size`` upsamples them (bilinear, e.g. to 48x48) and ``channels: 3``
  replicates the gray image into three channels, so image architectures
  (resnet8, mobilenet_v2) train on real digits offline.
- ``mnist1d``: MNIST-1D generated locally by the ``mnist1d`` package (4,000
  train / 1,000 test signals of length 40), shape (40, 1).
- ``npz``: a file with ``x_train, y_train, x_test, y_test`` and optionally
  ``x_val, y_val``. Arrays are used as given (cast to float32); labels are class
  indices or one-hot rows.
- ``image_dir``: one folder per class with images (png, jpg, bmp, gif), resized to
  ``image_size`` and scaled to [0, 1]; ``train/`` and ``test/`` sub-folders are used
  as the split when both exist.
- ``synthetic``: seeded class prototypes plus noise, for tests and smoke runs.

Splits are deterministic for a given ``seed``.

Example:
    >>> from edgecomp import config, data
    >>> ds = data.load(config.DataConfig(source="digits"), seed=0)
    >>> ds.input_shape, ds.num_classes
    ((8, 8, 1), 10)
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from edgecomp.config import DataConfig
from edgecomp.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits as numpy arrays (x float32, y int64 labels)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    # How the samples were made from the raw data: what a device must do to its own inputs before inference.
    preprocessing: str = ""
    # The same as numbers, for the files' metadata: a device computes (raw - mean) / std (None: fed as stored),
    # and "grayscale"/"rgb" when the samples are images.
    normalization: tuple[float, float] | None = None
    image: str | None = None
    # train.augment (an AugmentConfig): every training on this dataset augments its training split.
    augment: object = None

    @property
    def labels(self) -> list[str]:
        """One label per output index: the class names (image folders), else the index itself."""
        names = list(self.class_names)
        return names if len(names) == self.num_classes else [str(index) for index in range(self.num_classes)]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch dimension."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def summary(self) -> str:
        """One line: sizes of the splits, sample shape, class count."""
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_val)} val / {len(self.x_test)} test, "
            f"input {self.input_shape}, {self.num_classes} classes"
        )


def load(cfg: DataConfig, seed: int) -> Dataset:
    """Loads the configured source and splits it deterministically.

    Args:
        cfg: the ``data`` section of the config.
        seed: seed for the splits and for synthetic data.

    Raises:
        DataError: the source cannot be read or has inconsistent shapes.
    """
    loaders = {
        "digits": _digits,
        "mnist1d": _mnist1d,
        "npz": _npz,
        "image_dir": _image_dir,
        "synthetic": _synthetic,
    }
    return loaders[cfg.source](cfg, seed)


def representative_samples(dataset: Dataset, count: int, seed: int = 0) -> np.ndarray:
    """Up to ``count`` training samples, drawn without replacement, for calibration."""
    rng = np.random.default_rng(seed)
    count = min(count, len(dataset.x_train))
    index = rng.choice(len(dataset.x_train), size=count, replace=False)
    return dataset.x_train[np.sort(index)]


def representative_dataset(samples: np.ndarray):
    """A callable for ``TFLiteConverter.representative_dataset`` yielding one sample at a time."""

    def generate() -> Iterator[list[np.ndarray]]:
        for sample in samples:
            yield [sample[np.newaxis].astype(np.float32)]

    return generate


# ---- sources ---------------------------------------------------------------


def _digits(cfg: DataConfig, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = _resize_gray(bunch.images.astype(np.float32) / 16.0, cfg.image_size)[..., np.newaxis]
    if (cfg.channels or 1) == 3:
        x = np.repeat(x, 3, axis=-1)
    y = bunch.target.astype(np.int64)
    x_rest, y_rest, x_test, y_test = _split(x, y, cfg.test_split, seed)
    x_train, y_train, x_val, y_val = _split(x_rest, y_rest, cfg.validation_split, seed + 1)
    resized = "" if cfg.image_size is None else f", resized to {cfg.image_size[0]}x{cfg.image_size[1]} (bilinear)"
    copies = ", the gray value copied to 3 channels" if (cfg.channels or 1) == 3 else ""
    return Dataset("digits", x_train, y_train, x_val, y_val, x_test, y_test, 10, tuple(map(str, range(10))),
                   f"8x8 gray pixels 0-16 divided by 16 (float32 in [0, 1]){resized}{copies}",
                   normalization=(0.0, 16.0), image="rgb" if (cfg.channels or 1) == 3 else "grayscale")


def _resize_gray(images: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of gray float images ``(n, h, w)`` to ``size`` (``None`` keeps them), clipped to [0, 1]."""
    if size is None or tuple(size) == images.shape[1:3]:
        return images
    from PIL import Image

    height, width = size
    resized = [np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR))
               for image in images]
    return np.clip(np.stack(resized).astype(np.float32), 0.0, 1.0)


def _mnist1d(cfg: DataConfig, seed: int) -> Dataset:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:  # pragma: no cover - a dependency of edgecomp
        raise DataError(f"data.source 'mnist1d' needs the mnist1d package: pip install mnist1d ({error})") from None
    state = np.random.get_state()
    try:
        # make_dataset generates locally; get_dataset would download, never use it.
        raw = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    x = raw["x"].astype(np.float32)[..., np.newaxis]
    y = np.asarray(raw["y"], dtype=np.int64)
    x_test = raw["x_test"].astype(np.float32)[..., np.newaxis]
    y_test = np.asarray(raw["y_test"], dtype=np.int64)
    x_train, y_train, x_val, y_val = _split(x, y, cfg.validation_split, seed)
    return Dataset("mnist1d", x_train, y_train, x_val, y_val, x_test, y_test, 10, tuple(map(str, range(10))),
                   "MNIST-1D signals of 40 steps as mnist1d generates them (float32, not rescaled)")


def _npz(cfg: DataConfig, seed: int) -> Dataset:
    path = Path(cfg.path)
    if not path.is_file():
        raise DataError(f"data.path {str(path)!r}: no such file; give an .npz with x_train, y_train, x_test, y_test")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(f"data.path {str(path)!r} is not a readable .npz file: {error}") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DataError(
            f"data.path {str(path)!r} lacks {', '.join(missing)}; it has {', '.join(sorted(arrays)) or 'no arrays'}"
        )
    x_train, y_train = _xy(arrays, "train", path)
    x_test, y_test = _xy(arrays, "test", path)
    if "x_val" in arrays and "y_val" in arrays:
        x_val, y_val = _xy(arrays, "val", path)
    else:
        x_train, y_train, x_val, y_val = _split(x_train, y_train, cfg.validation_split, seed)
    for split, x in (("test", x_test), ("val", x_val)):
        if len(x) and x.shape[1:] != x_train.shape[1:]:
            raise DataError(f"{path}: x_{split} samples have shape {x.shape[1:]}, x_train has {x_train.shape[1:]}")
    num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0), y_val.max(initial=0))) + 1
    return Dataset(path.stem, x_train, y_train, x_val, y_val, x_test, y_test, max(num_classes, 2),
                   preprocessing="the .npz arrays as stored (cast to float32, not rescaled)")


def _xy(arrays: dict, split: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(arrays[f"x_{split}"])
    y = np.asarray(arrays[f"y_{split}"])
    if x.dtype == object or y.dtype == object:
        raise DataError(f"{path}: x_{split}/y_{split} must be numeric arrays")
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if len(x) != len(y):
        raise DataError(f"{path}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
    if x.ndim < 2:
        raise DataError(f"{path}: x_{split} must have a sample dimension and at least one feature, got shape {x.shape}")
    if len(y) and (y.min() < 0 or not np.all(np.equal(np.mod(y, 1), 0))):
        raise DataError(f"{path}: y_{split} must hold class indices 0..N-1 (or one-hot rows)")
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


def _image_dir(cfg: DataConfig, seed: int) -> Dataset:
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(f"data.path {str(root)!r}: no such folder; give a folder with one sub-folder per class")
    channels = cfg.channels or 3
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes = _class_names(root / "train")
        x_rest, y_rest = _read_images(root / "train", classes, cfg.image_size, channels)
        x_test, y_test = _read_images(root / "test", classes, cfg.image_size, channels)
    else:
        classes = _class_names(root)
        x, y = _read_images(root, classes, cfg.image_size, channels)
        x_rest, y_rest, x_test, y_test = _split(x, y, cfg.test_split, seed)
    x_train, y_train, x_val, y_val = _split(x_rest, y_rest, cfg.validation_split, seed + 1)
    size = "" if cfg.image_size is None else f", resized to {cfg.image_size[0]}x{cfg.image_size[1]}"
    mode = "RGB" if channels == 3 else "gray"
    return Dataset(root.name, x_train, y_train, x_val, y_val, x_test, y_test, len(classes), classes,
                   f"{mode} image files{size}, 8-bit pixels divided by 255 (float32 in [0, 1])",
                   normalization=(0.0, 255.0), image="rgb" if channels == 3 else "grayscale")


def _class_names(folder: Path) -> tuple[str, ...]:
    classes = tuple(sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if len(classes) < 2:
        raise DataError(f"{folder}: image_dir needs at least two class sub-folders, found {len(classes)}")
    return classes


def _read_images(folder: Path, classes: tuple[str, ...], size, channels: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for file in files:
            try:
                with Image.open(file) as image:
                    image = image.convert(mode).resize((size[1], size[0]), Image.BILINEAR)
                    array = np.asarray(image, dtype=np.float32) / 255.0
            except (OSError, UnidentifiedImageError) as error:
                raise DataError(f"{file}: cannot read this image ({error}); remove or replace it") from None
            images.append(array.reshape(size[0], size[1], channels))
            labels.append(label)
    if not images:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _synthetic(cfg: DataConfig, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    height, width = cfg.image_size or (8, 8)
    channels = cfg.channels or 1
    num_classes = cfg.num_classes or 4
    samples = cfg.samples or 400
    shape = (height, width, channels)
    prototypes = rng.normal(0.0, 1.0, size=(num_classes, *shape)).astype(np.float32)
    y = np.arange(samples) % num_classes
    rng.shuffle(y)
    x = prototypes[y] + rng.normal(0.0, 0.8, size=(samples, *shape)).astype(np.float32)
    x_rest, y_rest, x_test, y_test = _split(x.astype(np.float32), y.astype(np.int64), cfg.test_split, seed)
    x_train, y_train, x_val, y_val = _split(x_rest, y_rest, cfg.validation_split, seed + 1)
    return Dataset("synthetic", x_train, y_train, x_val, y_val, x_test, y_test, num_classes,
                   preprocessing="generated float32 values (class prototypes plus noise)")


def _split(x: np.ndarray, y: np.ndarray, share: float, seed: int):
    """Stratified split: (x_keep, y_keep, x_held, y_held), ``share`` of each class held out."""
    if share <= 0:
        return x, y, x[:0], y[:0]
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(y):
        index = np.flatnonzero(y == label)
        rng.shuffle(index)
        held.extend(index[: int(round(share * len(index)))])
    mask = np.zeros(len(y), dtype=bool)
    mask[np.asarray(held, dtype=np.int64)] = True
    if mask.all() or not mask.any():
        raise DataError(f"cannot split {len(y)} samples with share {share}: too few samples per class")
    keep = np.flatnonzero(~mask)
    held_index = np.flatnonzero(mask)
    rng.shuffle(keep)
    return x[keep], y[keep], x[held_index], y[held_index]
