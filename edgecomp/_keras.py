"""The one place where the Keras flavour is chosen.

tensorflow-model-optimization (tfmot) works only with Keras 2, which TensorFlow
2.16+ ships as the separate ``tf_keras`` package. ``TF_USE_LEGACY_KERAS=1`` must be
set before TensorFlow is first imported so that TensorFlow's own helpers (the
TFLite converter's ``from_keras_model``, SavedModel export) use ``tf_keras`` too.
Every edgecomp module gets ``tf`` and ``keras`` from here.

Example:
    >>> from edgecomp._keras import keras, tf
    >>> model = keras.Sequential([keras.layers.Dense(2, input_shape=(3,))])
"""

import os
import sys

if "tensorflow" in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    # TensorFlow was imported before edgecomp chose Keras 2; the converter will
    # still accept tf_keras models, but warn the user loudly once.
    import warnings

    warnings.warn(
        "TensorFlow was imported before edgecomp; set TF_USE_LEGACY_KERAS=1 before "
        "importing TensorFlow (or import edgecomp first) so that tfmot and the TFLite "
        "converter use tf_keras.",
        RuntimeWarning,
        stacklevel=2,
    )
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from edgecomp.native_logs import quiet  # noqa: E402

with quiet():   # TensorFlow's C++ import chatter (oneDNN, CUDA stubs, cuInit) stays off the console
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

    # Finding the devices is where a machine without a GPU logs cuInit's failure; it does not start the
    # runtime, so tf.distribute can still be configured afterwards.
    tf.config.list_physical_devices()

from edgecomp.errors import ModelError  # noqa: E402

KERAS3_HELP = (
    "edgecomp needs a tf_keras (Keras 2) model because tensorflow-model-optimization "
    "does not support Keras 3: build it with `import tf_keras as keras` (or "
    "`from edgecomp import keras`), or re-create the architecture with tf_keras and "
    "copy the weights over with `set_weights`"
)


def is_keras3_object(model) -> bool:
    """Whether ``model`` is a Keras 3 object (``keras.src...``) rather than tf_keras."""
    module = type(model).__module__ or ""
    return module == "keras" or module.startswith(("keras.", "keras.src"))


def ensure_tf_keras_model(model, where: str = "model"):
    """Returns ``model`` if it is a tf_keras model, else raises a clear ModelError.

    Args:
        model: the object to check.
        where: what to call the model in the message (e.g. the config key).

    Raises:
        ModelError: for a Keras 3 model, or for anything that is not a Keras model.
    """
    if isinstance(model, keras.Model):
        return model
    if is_keras3_object(model):
        raise ModelError(f"{where} is a Keras 3 model ({type(model).__module__}); {KERAS3_HELP}")
    raise ModelError(
        f"{where} must be a tf_keras Model, got {type(model).__name__}; return a "
        "`tf_keras.Model` (functional or Sequential)"
    )
