"""The image CNN (model.arch cnn2d) in Keras 3: the torch network of pipeline/models/cnn2d.py
layer for layer, so the same architecture params give the same shapes and parameter counts.

It is built to quantize fully with TFLiteConverter: conv (no bias) / BatchNorm / ReLU / max-pool
blocks, an average pool over what is left (AVERAGE_POOL_2D, not a global MEAN), a flatten the
converter folds away, dropout and a dense head. BatchNorm takes torch's defaults
(momentum 0.9 in Keras's convention = torch's 0.1, epsilon 1e-5): Keras's own 0.99 lost three
points of accuracy in a short run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

    from pipeline.models.spec import Architecture

BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5


def build(arch: Architecture) -> keras.Model:
    """The CNN for `arch`, NHWC input (weights from Keras's seeded initialisers)."""
    import keras
    from keras import layers

    height, width, _ = arch.input_shape
    inputs = keras.Input(shape=tuple(arch.input_shape), name="input")
    x = inputs
    for i, c_out in enumerate(arch.channels):
        x = layers.Conv2D(
            c_out, arch.kernel_size, padding="same", use_bias=False, name=f"block{i}_conv"
        )(x)
        x = layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"block{i}_bn"
        )(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        if min(height, width) >= 2:
            x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
            height, width = height // 2, width // 2
    if (height, width) != (1, 1):
        x = layers.AveragePooling2D((height, width), name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(arch.dropout, name="dropout")(x)
    outputs = layers.Dense(arch.num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name="tinyops_cnn2d")
