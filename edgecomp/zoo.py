"""Built-in architectures: small, edge-shaped tf_keras functional models.

Every builder is called as ``builder(input_shape, num_classes, **args)`` and returns
a model whose head outputs logits (no softmax); the training loss reads the head
and handles softmax heads too. Conv → BatchNorm → ReLU ordering throughout, so
BatchNorm folds into the conv on conversion and quantization-aware training.

=============== ======================================================= =================
name            shape                                                    args
=============== ======================================================= =================
digits_cnn      3 conv blocks + global pool, ~25k params at width 1      width
mnist1d_cnn     1-D conv net for length-40 signals (~94% in the paper)   width
ds_cnn          MLPerf Tiny keyword spotting DS-CNN (49x10x1 MFCC)       filters, blocks
resnet8         MLPerf Tiny image classification ResNet-8 (32x32x3)      filters
mobilenet_v2    keras.applications MobileNetV2, random init              alpha
=============== ======================================================= =================
"""

from __future__ import annotations

import inspect

from edgecomp._keras import keras
from edgecomp.errors import ConfigError

layers = keras.layers
# Small datasets give few steps per epoch; Keras' default momentum (0.99) leaves the
# moving statistics far from the data for many epochs, so validation looks random.
BN_MOMENTUM = 0.9


def _channels(count: float) -> int:
    return max(1, int(round(count)))


def _conv_bn_relu(x, filters, kernel, strides=1, name=None, conv=None):
    conv = conv or layers.Conv2D
    x = conv(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def digits_cnn(input_shape=(8, 8, 1), num_classes=10, width: float = 1.0):
    """A small CNN for 8x8 digits: 3 conv blocks, max-pool, global average pool.

    Args:
        input_shape: (height, width, channels).
        num_classes: number of logits.
        width: channel multiplier (1.0 → 16/32/64 channels).
    """
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn_relu(inputs, _channels(16 * width), 3, name="block1")
    x = _conv_bn_relu(x, _channels(32 * width), 3, name="block2")
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = _conv_bn_relu(x, _channels(64 * width), 3, name="block3")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_cnn")


def mnist1d_cnn(input_shape=(40, 1), num_classes=10, width: float = 1.0):
    """A 1-D CNN for MNIST-1D signals: three strided conv blocks and a dense head.

    Args:
        input_shape: (length, channels).
        num_classes: number of logits.
        width: channel multiplier (1.0 → 32/32/64 channels).
    """
    inputs = keras.Input(input_shape, name="signal")
    x = inputs
    for index, (filters, kernel, strides) in enumerate(((32, 5, 1), (32, 5, 2), (64, 3, 2)), start=1):
        x = layers.Conv1D(_channels(filters * width), kernel, strides=strides, padding="same", use_bias=False,
                          name=f"block{index}_conv")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{index}_bn")(x)
        x = layers.ReLU(name=f"block{index}_relu")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mnist1d_cnn")


def ds_cnn(input_shape=(49, 10, 1), num_classes=12, filters: int = 64, blocks: int = 4):
    """MLPerf Tiny keyword-spotting DS-CNN: a 10x4 conv, then depthwise-separable blocks.

    Args:
        input_shape: (frames, mfcc, 1); 49x10x1 in MLPerf Tiny.
        num_classes: number of logits (12 in MLPerf Tiny).
        filters: channels of every block (64 in MLPerf Tiny "small").
        blocks: number of depthwise-separable blocks (4).
    """
    inputs = keras.Input(input_shape, name="features")
    first_kernel = (min(10, input_shape[0]), min(4, input_shape[1]))
    x = _conv_bn_relu(inputs, filters, first_kernel, strides=2, name="conv0")
    for index in range(1, blocks + 1):
        x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"dw{index}_conv")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"dw{index}_bn")(x)
        x = layers.ReLU(name=f"dw{index}_relu")(x)
        x = _conv_bn_relu(x, filters, 1, name=f"pw{index}")
    x = layers.Dropout(0.4, name="dropout")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="ds_cnn")


def resnet8(input_shape=(32, 32, 3), num_classes=10, filters: int = 16):
    """MLPerf Tiny image-classification ResNet-8: three residual stacks (16/32/64).

    Args:
        input_shape: (height, width, channels); 32x32x3 in MLPerf Tiny.
        num_classes: number of logits.
        filters: channels of the first stack; doubled in each of the next two.
    """
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn_relu(inputs, filters, 3, name="stem")
    for stack, (width, strides) in enumerate(((filters, 1), (filters * 2, 2), (filters * 4, 2)), start=1):
        shortcut = x
        y = _conv_bn_relu(x, width, 3, strides=strides, name=f"stack{stack}_a")
        y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"stack{stack}_b_conv")(y)
        y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"stack{stack}_b_bn")(y)
        if strides != 1 or shortcut.shape[-1] != width:
            shortcut = layers.Conv2D(width, 1, strides=strides, use_bias=False, name=f"stack{stack}_proj")(shortcut)
            shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"stack{stack}_proj_bn")(shortcut)
        x = layers.Add(name=f"stack{stack}_add")([y, shortcut])
        x = layers.ReLU(name=f"stack{stack}_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet8")


def mobilenet_v2(input_shape=(96, 96, 3), num_classes=10, alpha: float = 0.35, bn_momentum: float = 0.9):
    """keras.applications MobileNetV2 with random weights and a logits head.

    Args:
        input_shape: (height, width, channels); height and width ≥ 32.
        num_classes: number of logits.
        alpha: width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4 as in the paper).
        bn_momentum: momentum of every BatchNormalization's moving statistics.
            keras.applications uses 0.999, made for ImageNet's thousands of steps
            per epoch: trained from scratch on a small dataset (digits: ~40 steps per
            epoch) the moving statistics lag the fast-changing weights and the model
            stays at chance accuracy in inference mode. Measured on digits at 64x64,
            alpha 0.5, after 2 epochs: validation accuracy 0.098 at 0.999 and at 0.99
            (training-mode accuracy 0.88), 0.881 at 0.9.
    """
    if len(input_shape) != 3 or min(input_shape[:2]) < 32:
        raise ConfigError(
            f"model.zoo mobilenet_v2 needs images of at least 32x32, got input shape {tuple(input_shape)}; "
            "use data.source digits, image_dir or synthetic with image_size ≥ [32, 32]"
        )
    if not 0.0 < bn_momentum < 1.0:
        raise ConfigError(f"model.args.bn_momentum must be between 0 and 1 (exclusive), got {bn_momentum}")
    model = keras.applications.MobileNetV2(
        input_shape=tuple(input_shape), alpha=alpha, weights=None, classes=num_classes,
        classifier_activation=None, include_top=True,
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = bn_momentum
    return model


ARCHITECTURES = {
    "digits_cnn": digits_cnn,
    "mnist1d_cnn": mnist1d_cnn,
    "ds_cnn": ds_cnn,
    "resnet8": resnet8,
    "mobilenet_v2": mobilenet_v2,
}


def build(name: str, input_shape, num_classes: int, args: dict | None = None):
    """Builds zoo architecture ``name`` for the data's input shape and class count.

    Raises:
        ConfigError: unknown name or an argument the architecture does not take.
    """
    if name not in ARCHITECTURES:
        raise ConfigError(f"model.zoo: unknown architecture {name!r}; allowed: {', '.join(ARCHITECTURES)}")
    builder = ARCHITECTURES[name]
    args = dict(args or {})
    accepted = set(inspect.signature(builder).parameters) - {"input_shape", "num_classes"}
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise ConfigError(
            f"model.args.{unknown[0]}: {name} does not take this argument; allowed: {', '.join(sorted(accepted))}"
        )
    return builder(tuple(input_shape), num_classes, **args)
