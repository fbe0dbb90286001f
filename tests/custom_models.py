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
