"""The generality corpus: architectures that are not in edgecomp's zoo and were never tuned for it.

Each function is a user-style ``builder`` (``model: {builder: "corpus_models:NAME"}``)
taking ``input_shape`` and ``num_classes``. ``MODELS`` lists them with the data each
runs on; ``tools/corpus.py`` runs every recipe on every model with default settings.
"""

from __future__ import annotations

from edgecomp import keras   # tf_keras, chosen by edgecomp before TensorFlow is imported

layers = keras.layers
DIGITS = {"source": "digits"}
DIGITS_RGB = {"source": "digits", "image_size": [32, 32], "channels": 3}
MNIST1D = {"source": "mnist1d"}


def plain_cnn(input_shape, num_classes):
    """Three convs, Dense 64, logits: the benign case."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="plain_cnn")


def vgg_rgb32(input_shape, num_classes, width: int = 1):
    """VGG-style stacks on 32x32 RGB (about 28M MACs): compute, not per-op overhead, sets its latency."""
    inputs = keras.Input(input_shape)
    x = inputs
    for filters, convs in ((32 * width, 2), (64 * width, 2), (128 * width, 1)):
        for _ in range(convs):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="vgg_rgb32" if width == 1 else "vgg_rgb32_wide")


def vgg_rgb32_wide(input_shape, num_classes):
    """vgg_rgb32 at twice the channels (about 115M MACs): above the ~0.11 ms at which XNNPACK's int8 path on an
    AMX x86 CPU stops getting faster, so removed filters show in its int8 latency."""
    return vgg_rgb32(input_shape, num_classes, width=2)


def awkward_cnn(input_shape, num_classes):
    """Residual, depthwise, concat, BatchNorm after an activation, softmax head."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.BatchNormalization()(x)
    y = layers.DepthwiseConv2D(3, padding="same")(x)
    y = layers.Conv2D(16, 1, activation="relu")(y)
    x = layers.Add()([x, y])
    a = layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    b = layers.Conv2D(8, 1, activation="relu")(x)
    x = layers.Concatenate()([a, b])
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x), name="awkward_cnn")


def squeeze_excite(input_shape, num_classes):
    """Hard-swish and a squeeze-excite gate written with tensor operators."""
    import tensorflow as tf   # after edgecomp (imported above) has chosen tf_keras

    def hard_swish(t):
        return t * tf.nn.relu6(t + 3.0) * (1.0 / 6.0)

    inputs = keras.Input(input_shape)
    x = hard_swish(layers.Conv2D(16, 3, padding="same")(inputs))
    x = hard_swish(layers.Conv2D(32, 3, padding="same")(x))
    gate = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Conv2D(8, 1, activation="relu")(gate)
    gate = tf.nn.relu6(layers.Conv2D(32, 1)(gate) + 3.0) / 6.0
    x = layers.Flatten()(x * gate)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="squeeze_excite")


def batchnorm_odd(input_shape, num_classes):
    """BatchNorm after an Add, after an activation and after a Dense; swish; softmax head."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("swish")(x)
    y = layers.Conv2D(16, 3, padding="same")(x)
    x = layers.BatchNormalization()(layers.Add()([x, y]))
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.BatchNormalization()(layers.Dense(32)(x))
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax")(x), name="batchnorm_odd")


def mlp(input_shape, num_classes):
    """Flatten and three Dense layers."""
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="mlp")


def separable_prelu(input_shape, num_classes):
    """In-model preprocessing, SeparableConv2D and PReLU."""
    inputs = keras.Input(input_shape)
    x = layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = layers.SeparableConv2D(16, 3, padding="same")(x)
    x = layers.PReLU(shared_axes=[1, 2])(x)
    x = layers.SeparableConv2D(32, 3, padding="same")(x)
    x = layers.PReLU(shared_axes=[1, 2])(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="separable_prelu")


def conv1d_kws(input_shape, num_classes):
    """A keyword-spotter-style 1-D conv net with a dilated conv."""
    inputs = keras.Input(input_shape)
    x = layers.Conv1D(32, 5, padding="same", activation="relu")(inputs)
    x = layers.Conv1D(32, 3, padding="same", dilation_rate=2, activation="relu")(x)
    x = layers.MaxPooling1D()(x)
    x = layers.Conv1D(64, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="conv1d_kws")


def gru_kws(input_shape, num_classes):
    """A strided Conv1D front end and a GRU: the recurrent case (unrolled at conversion)."""
    inputs = keras.Input(input_shape)
    x = layers.Conv1D(32, 3, strides=2, padding="same", activation="relu")(inputs)
    x = layers.GRU(48)(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="gru_kws")


def tiny_vit(input_shape, num_classes, activation="gelu"):
    """Patches, LayerNormalization and MultiHeadAttention: a two-block transformer."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(32, 2, strides=2)(inputs)
    x = layers.Reshape((-1, 32))(x)
    for _ in range(2):
        y = layers.LayerNormalization()(x)
        x = layers.Add()([x, layers.MultiHeadAttention(num_heads=2, key_dim=16)(y, y)])
        y = layers.LayerNormalization()(x)
        x = layers.Add()([x, layers.Dense(32)(layers.Dense(64, activation=activation)(y))])
    x = layers.GlobalAveragePooling1D()(layers.LayerNormalization()(x))
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="tiny_vit")


def mobilenet_v3_small(input_shape, num_classes):
    """keras.applications MobileNetV3Small (α 0.75), from scratch."""
    return keras.applications.MobileNetV3Small(input_shape=tuple(input_shape), alpha=0.75, weights=None,
                                               classes=num_classes, include_preprocessing=False)


def mobilenet_v2(input_shape, num_classes):
    """keras.applications MobileNetV2 (α 0.35), from scratch."""
    return keras.applications.MobileNetV2(input_shape=tuple(input_shape), alpha=0.35, weights=None,
                                          classes=num_classes)


def efficientnet_b0(input_shape, num_classes):
    """keras.applications EfficientNetB0, from scratch (in-model Rescaling and Normalization)."""
    return keras.applications.EfficientNetB0(input_shape=tuple(input_shape), weights=None, classes=num_classes)


# name → (data, slow): slow models are keras.applications and the wide VGG at 32×32 (minutes each on 2 cores).
MODELS = {
    "plain_cnn": (DIGITS, False),
    "awkward_cnn": (DIGITS, False),
    "squeeze_excite": (DIGITS, False),
    "batchnorm_odd": (DIGITS, False),
    "mlp": (DIGITS, False),
    "separable_prelu": (DIGITS, False),
    "conv1d_kws": (MNIST1D, False),
    "gru_kws": (MNIST1D, False),
    "tiny_vit": (DIGITS, False),
    "vgg_rgb32": (DIGITS_RGB, False),
    "mobilenet_v3_small": (DIGITS_RGB, True),
    "mobilenet_v2": (DIGITS_RGB, True),
    "efficientnet_b0": (DIGITS_RGB, True),
    "vgg_rgb32_wide": (DIGITS_RGB, True),
}
