"""edgecomp: Keras models in, small, fast, verified TensorFlow Lite models out.

The public API. Importing ``edgecomp`` does not import TensorFlow; the names that
need it (``run``, ``keras``) are loaded on first use.

Example:
    >>> import edgecomp
    >>> cfg = edgecomp.load_config("configs/quickstart.yaml", ["train.epochs=1"])
    >>> report = edgecomp.run(cfg)                      # doctest: +SKIP

The verbs on in-memory models and arrays (``dataset``, ``compress``, ``convert``,
``verify``, ``benchmark``) are in ``edgecomp.api``; none changes its input.
"""

from edgecomp.config import Config
from edgecomp.config import load as load_config
from edgecomp.errors import ConfigError, DataError, DeviceError, EdgecompError, ModelError, OutputError, TargetError

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "DeviceError",
    "EdgecompError",
    "ModelError",
    "OutputError",
    "TargetError",
    "benchmark",
    "compress",
    "convert",
    "dataset",
    "keras",
    "load_config",
    "run",
    "verify",
    "__version__",
]


VERBS = ("dataset", "compress", "convert", "verify", "benchmark")


def __getattr__(name):
    if name in VERBS:
        from edgecomp import api

        return getattr(api, name)
    if name == "run":
        from edgecomp.pipeline import run

        return run
    if name == "keras":
        from edgecomp._keras import keras

        return keras
    raise AttributeError(f"module 'edgecomp' has no attribute {name!r}")
