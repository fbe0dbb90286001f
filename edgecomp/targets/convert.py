"""Keras model → ``.tflite`` bytes for a quantization mode.

=========== ===================================================================
mode        converter settings
=========== ===================================================================
float32     none (the reference)
float16     ``Optimize.DEFAULT`` + ``supported_types=[float16]`` (weights fp16)
dynamic     ``Optimize.DEFAULT`` (int8 weights, float activations)
int8        ``Optimize.DEFAULT`` + representative dataset + ``TFLITE_BUILTINS_INT8``
            (full integer; I/O float unless ``io`` is int8/uint8)
int16x8     16-bit activations, 8-bit weights (``EXPERIMENTAL_..._INT16_WEIGHTS_INT8``)
=========== ===================================================================
"""

from __future__ import annotations

import warnings

import numpy as np

from edgecomp._keras import keras, tf
from edgecomp.data import representative_dataset
from edgecomp.errors import ModelError
from edgecomp.native_logs import quiet

# Targets whose runtime takes one sample at a time: their files are converted with batch 1. A dilated conv then
# stays one CONV_2D (with a dynamic batch it becomes SPACE_TO_BATCH_ND + CONV_2D + BATCH_TO_SPACE_ND, which TFLM
# computes differently); the Edge TPU compiler refuses dynamic-sized tensors; the GPU delegate leaves ops with a
# dynamic batch on the CPU (EfficientNetB0: 17 partitions and 3.5 % of the MACs on the GPU, 1 and 100 % with batch 1).
BATCH_ONE_TARGETS = ("gpu", "edgetpu", "micro")
IO_DTYPES = {"int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16, "float32": tf.float32}


def convert(model, quantization: str = "float32", io: str = "float32", calibration: np.ndarray | None = None,
            static_batch: bool = False) -> bytes:
    """Converts a tf_keras model to TFLite flatbuffer bytes.

    Args:
        model: the tf_keras model (not modified).
        quantization: float32 | float16 | dynamic | int8 | int16x8.
        io: input/output type (int8/uint8 for int8, int16 for int16x8, else float32).
        calibration: samples for the representative dataset (int8, int16x8).
        static_batch: fix the batch dimension to 1 in every tensor's shape signature
            (the Edge TPU compiler refuses dynamic-sized tensors; a Keras model's batch is
            otherwise dynamic, ``-1``).

    Raises:
        ModelError: the converter rejects the model; the message names the first cause.
    """
    model = unrolled(model)
    converter = _static_batch_converter(model) if static_batch else tf.lite.TFLiteConverter.from_keras_model(model)
    if quantization in ("float16", "dynamic", "int8", "int16x8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization in ("int8", "int16x8"):
        if calibration is None or len(calibration) == 0:
            raise ModelError(f"{quantization} conversion needs calibration samples (data.calibration_samples)")
        converter.representative_dataset = representative_dataset(calibration)
        if quantization == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
            ]
        if io != "float32":
            converter.inference_input_type = IO_DTYPES[io]
            converter.inference_output_type = IO_DTYPES[io]
    try:
        with warnings.catch_warnings(), quiet():   # the MLIR converter's C++ summary lines stay off the console
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return bytes(converter.convert())
    except Exception as error:  # noqa: BLE001 - converter errors come in many types
        lines = [line for line in str(error).splitlines() if line.strip()]
        cause = next((line for line in lines if "error" in line.lower()), lines[0] if lines else type(error).__name__)
        if "TensorList" in cause and _recurrent_layers(model):
            cause += ("; a recurrent layer on a sequence of unknown length cannot be unrolled: give the model's "
                      "Input a fixed number of time steps")
        raise ModelError(f"TFLite conversion to {quantization} failed: {cause.strip()}") from None


def _recurrent_layers(model) -> list:
    """The model's recurrent layers (LSTM, GRU, SimpleRNN, RNN), also inside QAT wrappers."""
    return [layer for layer in model.layers if isinstance(getattr(layer, "layer", layer), keras.layers.RNN)]


def unrolled(model):
    """``model``, or a copy whose recurrent layers are unrolled (same weights, same outputs).

    TensorFlow's converter turns a rolled Keras LSTM/GRU/SimpleRNN into a TensorList
    while-loop that it cannot convert with a dynamic batch ("'tf.TensorListReserve'
    op requires element_shape to be static"), and calibrating such a loop for int8
    crashed the process (GRU, SimpleRNN; TF 2.21). Unrolled over a fixed number of
    time steps, the layer is plain matrix ops that convert to float and int8 alike
    (measured on MNIST-1D: GRU, LSTM and SimpleRNN files match Keras's accuracy).
    Layers on a sequence of unknown length are left rolled (the quantize stage does
    not wrap recurrent layers: a model with one is quantized after training).
    """
    def steps(layer):
        shape = layer.input_shape[0] if isinstance(layer.input_shape, list) else layer.input_shape
        return shape[1] if isinstance(shape, tuple) and len(shape) == 3 else None

    rolled = {layer.name for layer in model.layers
              if isinstance(layer, keras.layers.RNN) and not layer.unroll and steps(layer)}
    if not rolled:
        return model

    def clone(layer):
        config = layer.get_config()
        if layer.name in rolled:
            config["unroll"] = True
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _static_batch_converter(model):
    """A converter of ``model`` traced with batch 1 (every other dimension as the model declares it)."""
    specs = [tf.TensorSpec((1, *tensor.shape[1:]), tensor.dtype) for tensor in model.inputs]

    @tf.function
    def call(*inputs):
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    return tf.lite.TFLiteConverter.from_concrete_functions([call.get_concrete_function(*specs)], model)
