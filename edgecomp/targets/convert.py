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

from edgecomp._keras import tf
from edgecomp.data import representative_dataset
from edgecomp.errors import ModelError

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
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return bytes(converter.convert())
    except Exception as error:  # noqa: BLE001 - converter errors come in many types
        lines = [line for line in str(error).splitlines() if line.strip()]
        cause = next((line for line in lines if "error" in line.lower()), lines[0] if lines else type(error).__name__)
        raise ModelError(f"TFLite conversion to {quantization} failed: {cause.strip()}") from None


def _static_batch_converter(model):
    """A converter of ``model`` traced with batch 1 (every other dimension as the model declares it)."""
    specs = [tf.TensorSpec((1, *tensor.shape[1:]), tensor.dtype) for tensor in model.inputs]

    @tf.function
    def call(*inputs):
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    return tf.lite.TFLiteConverter.from_concrete_functions([call.get_concrete_function(*specs)], model)
