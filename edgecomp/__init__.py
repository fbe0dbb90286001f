"""edgecomp: Keras models in, small, fast, verified TensorFlow Lite models out.

The public API. Importing ``edgecomp`` does not import TensorFlow; the names that
need it (``run``, ``keras``) are loaded on first use.

Example:
    >>> import edgecomp
    >>> cfg = edgecomp.load_config("configs/quickstart.yaml", ["train.epochs=1"])
    >>> report = edgecomp.run(cfg)                      # doctest: +SKIP
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
    "keras",
    "load_config",
    "run",
    "__version__",
]


def __getattr__(name):
    if name == "run":
        from edgecomp.pipeline import run

        return run
    if name == "keras":
        from edgecomp._keras import keras

        return keras
    raise AttributeError(f"module 'edgecomp' has no attribute {name!r}")
