"""User-style model builders for tests: branches, BatchNorm in odd places, softmax heads."""

import tf_keras as keras


def two_branch(input_shape, num_classes, width=4):
    """Two conv branches (one with BN after the activation) concatenated; softmax head."""
    inputs = keras.Input(input_shape)
    left = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    left = keras.layers.BatchNormalization()(left)
    right = keras.layers.Conv2D(width, 1, padding="same")(inputs)
    right = keras.layers.BatchNormalization()(right)
    right = keras.layers.Activation("swish")(right)
    x = keras.layers.Concatenate()([left, right])
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="two_branch")


def no_arguments():
    """A builder that takes nothing: shapes come from args in the config."""
    return keras.Sequential([keras.layers.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(3)

    def call(self, inputs):
        return self.dense(self.flatten(inputs))


def subclassed(input_shape, num_classes):
    model = Subclassed()
    model.build((None, *input_shape))
    return model


def awkward(input_shape, num_classes, elu=False):
    """What real models look like to tfmot: preprocessing, BN after an activation,
    an activation QAT does not know, a nested model, and a softmax head."""
    inner_in = keras.Input((input_shape[0], input_shape[1], 8))
    inner = keras.Model(inner_in, keras.layers.Conv2D(8, 1)(inner_in), name="nested")
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(2.0, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.BatchNormalization(name="bn_after_relu")(x)
    x = keras.layers.Activation("elu", name="elu")(x) if elu else keras.layers.LeakyReLU(name="leaky")(x)
    x = inner(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="awkward")


def batchnorm_everywhere(input_shape, num_classes):
    """BatchNorms that fold (after a Conv, a DepthwiseConv, a Dense) and ones that must stay: after an
    activation, after an Add, and after a Conv whose output also feeds a second branch."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn_conv")(x)
    x = keras.layers.ReLU(name="relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="depthwise")(x)
    y = keras.layers.BatchNormalization(name="bn_depthwise")(y)
    shared = keras.layers.Conv2D(16, 1, name="shared")(x)
    z = keras.layers.BatchNormalization(name="bn_shared")(shared)
    added = keras.layers.Add(name="add")([y, z, shared])
    added = keras.layers.BatchNormalization(name="bn_add")(added)
    relu = keras.layers.Conv2D(8, 1, activation="relu", name="conv_relu")(added)
    relu = keras.layers.BatchNormalization(name="bn_after_relu")(relu)
    pooled = keras.layers.GlobalAveragePooling2D()(relu)
    dense = keras.layers.Dense(12, name="dense")(pooled)
    dense = keras.layers.BatchNormalization(name="bn_dense")(dense)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head")(dense)
    return keras.Model(inputs, outputs, name="batchnorm_everywhere")


def conv_relu_no_batchnorm(input_shape, num_classes):
    """Conv2D → ReLU layer and Dense → Activation('relu') without BatchNorm: tfmot's ReLU transforms match here."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", name="conv2")(x)
    x = keras.layers.Activation("relu", name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(16, name="dense")(x)
    x = keras.layers.ReLU(name="relu3")(x)
    outputs = keras.layers.Dense(num_classes, name="head")(x)
    return keras.Model(inputs, outputs, name="conv_relu_no_batchnorm")


def templates_with_offset(input_shape, num_classes, offset=10000.0):
    """A nearest-class-mean classifier for scikit-learn's digits (no training needed, ~0.9 accuracy)
    whose logits ride on a huge constant: int8 output quantization (range from 0 to the offset) cannot
    tell the classes apart, while float32 can."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.reshape(len(digits.images), -1).astype("float32") / 16.0
    means = np.stack([x[digits.target == c].mean(axis=0) for c in range(num_classes)])
    inputs = keras.Input(input_shape)
    flat = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(num_classes, name="templates")
    outputs = dense(flat)
    model = keras.Model(inputs, outputs, name="templates_with_offset")
    dense.set_weights([means.T, -0.5 * (means ** 2).sum(axis=1) + offset])
    return model


def dense_on_sequence(input_shape, num_classes):
    """An MLP written for flat inputs, given MNIST-1D's (40, 1) samples: Dense acts per time step."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Dense(32, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def sigmoid_head(input_shape, num_classes):
    """A multi-label style head: one sigmoid per class."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="sigmoid")(x))
