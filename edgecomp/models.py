"""Getting a model: from the zoo, a file, or the user's own builder; copying and counting.

Example:
    >>> from edgecomp import config, models
    >>> spec = config.ModelSpec(zoo="digits_cnn", args={"width": 0.5})
    >>> model = models.build(spec, input_shape=(8, 8, 1), num_classes=10)
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import zipfile
from pathlib import Path

import numpy as np

from edgecomp import zoo
from edgecomp._keras import KERAS3_HELP, ensure_tf_keras_model, keras
from edgecomp.config import ModelSpec
from edgecomp.errors import ConfigError, ModelError

UNSAFE_LAYERS = ("Lambda", "TFOpLambda")


def build(spec: ModelSpec, input_shape, num_classes: int, where: str = "model"):
    """Builds or loads the model a ``ModelSpec`` names.

    A builder ``"package.module:function"`` is called with ``**args``; if the function
    takes ``input_shape`` or ``num_classes`` and ``args`` does not set them, they are
    passed from the data. The current folder is importable, so a ``my_models.py``
    next to the config works.

    Raises:
        ConfigError: bad zoo name, arguments or builder path.
        ModelError: the file or builder does not give a usable tf_keras model.
    """
    if spec.zoo:
        model = zoo.build(spec.zoo, input_shape, num_classes, spec.args)
    elif spec.builder:
        model = _from_builder(spec, input_shape, num_classes, where)
    else:
        model = load(spec.path, trust=spec.trust, where=f"{where}.path")
    model = ensure_tf_keras_model(model, where)
    check_functional(model, where)
    expected = tuple(input_shape)
    got = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if got is None:
        raise ModelError(f"{where} has {len(model.inputs)} inputs; edgecomp supports single-input models")
    if got != expected and not any(d is None for d in got):
        raise ModelError(
            f"{where} expects input shape {got} but the data has {expected}; "
            "change data.image_size/channels or the model's Input"
        )
    outputs = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if outputs is not None and outputs != num_classes:
        raise ModelError(
            f"{where} has {outputs} outputs but the data has {num_classes} classes; "
            "give the model a head with one output per class"
        )
    return model


def _from_builder(spec: ModelSpec, input_shape, num_classes: int, where: str):
    module_name, _, function_name = spec.builder.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"{where}.builder: cannot import module {module_name!r} ({error})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(f"{where}.builder: module {module_name!r} has no function {function_name!r}")
    args = dict(spec.args)
    parameters = inspect.signature(function).parameters
    if "input_shape" in parameters and "input_shape" not in args:
        args["input_shape"] = tuple(input_shape)
    if "num_classes" in parameters and "num_classes" not in args:
        args["num_classes"] = num_classes
    try:
        return function(**args)
    except TypeError as error:
        raise ConfigError(f"{where}.args do not fit {spec.builder}: {error}") from None


def load(path: str | Path, trust: bool = False, where: str = "model.path"):
    """Loads a tf_keras model file (.keras, .h5 or SavedModel folder) without compiling it.

    Raises:
        ModelError: missing file, a Keras 3 file, unsafe layers without ``trust``, or
            a file tf_keras cannot read.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{where}: {str(path)!r} does not exist")
    _reject_keras3_file(path, where)
    if not trust:
        unsafe = _unsafe_layers(path)
        if unsafe:
            raise ModelError(
                f"{where}: {path} contains {', '.join(sorted(set(unsafe)))} layers, which run code stored "
                "in the file; load it only if you trust its origin, with model.trust: true (or --trust_model)"
            )
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not trust)
    except TypeError:
        model = keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - any loader failure is the file's fault
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"{where}: tf_keras cannot load {path}: {message}") from None
    return model


def _reject_keras3_file(path: Path, where: str) -> None:
    version = None
    if path.suffix == ".keras" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "metadata.json" in archive.namelist():
                version = json.loads(archive.read("metadata.json")).get("keras_version")
    elif path.suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                version = handle.attrs.get("keras_version")
        except OSError as error:
            raise ModelError(f"{where}: {path} is not a readable HDF5 model ({error})") from None
        if isinstance(version, bytes):
            version = version.decode()
    if version and str(version).startswith("3"):
        raise ModelError(f"{where}: {path} was saved by Keras {version}; {KERAS3_HELP}")


def _unsafe_layers(path: Path) -> list[str]:
    text = ""
    if path.suffix == ".keras" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if "config.json" in archive.namelist():
                text = archive.read("config.json").decode("utf-8", "replace")
    elif path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as handle:
            raw = handle.attrs.get("model_config")
            text = raw.decode() if isinstance(raw, bytes) else str(raw or "")
    elif path.is_dir() and (path / "keras_metadata.pb").exists():
        text = (path / "keras_metadata.pb").read_bytes().decode("utf-8", "replace")
    return [name for name in UNSAFE_LAYERS if f'"class_name": "{name}"' in text]


def check_functional(model, where: str = "model") -> None:
    """Rejects subclassed models, which cannot be cloned, rewritten or wrapped by tfmot."""
    if not (getattr(model, "_is_graph_network", False) or isinstance(model, keras.Sequential)):
        raise ModelError(
            f"{where} is a subclassed model ({type(model).__name__}); edgecomp rewrites models layer by "
            "layer and needs a functional or Sequential tf_keras model: build it with keras.Input and "
            "layer calls, or keras.Sequential"
        )


def copy(model):
    """A deep copy: new layer objects with the same weights (never shares variables)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def to_h5_bytes(model) -> bytes:
    """The model as an HDF5 file (tf_keras ``model.save`` format ``h5``), built in memory.

    Checkpoints go to disk through ``files.write_dir`` like every other artifact: h5py
    writing straight to a disk that fills up raised ``RuntimeError: Can't destroy
    cache`` and then crashed the process at exit (seen with a 64 KB tmpfs).
    """
    import io

    import h5py

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        model.save(handle, save_format="h5")
    return buffer.getvalue()


def count_params(model) -> int:
    """Number of weights, trainable and not."""
    return int(sum(np.prod(w.shape) for w in model.weights))


def count_nonzero_params(model) -> int:
    """Number of weights that are not exactly zero."""
    return int(sum(np.count_nonzero(w) for w in model.get_weights()))


def ends_with_softmax(model) -> bool:
    """Whether the model's output already is a probability distribution (softmax head)."""
    layer = model.layers[-1]
    activation = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Softmax):
        return True
    if activation is not None:
        name = getattr(activation, "__name__", "") or getattr(layer, "get_config", lambda: {})().get("activation", "")
        return name == "softmax"
    return False
