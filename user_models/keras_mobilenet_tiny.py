"""The MobileNet-style image network of mobilenet_tiny.py, in Keras 3.

model: {arch: custom, framework: keras, module: "user_models.keras_mobilenet_tiny:build"}
"""

from __future__ import annotations

import keras
from keras import layers


def _conv(x, filters: int, kernel: int, stride: int = 1, depthwise: bool = False):
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False)(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False)(x)
    # torch's BatchNorm defaults: Keras's momentum 0.99 leaves the moving statistics far from
    # the batch ones after a short training, and validation at chance.
    return layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x))


def build(input_shape: tuple[int, ...], num_classes: int, widths=(16, 32, 64)) -> keras.Model:
    inputs = keras.Input(shape=input_shape, name="input")
    x = _conv(inputs, widths[0], 3, stride=2)
    for c_out in widths[1:]:
        x = _conv(_conv(x, 0, 3, stride=2, depthwise=True), c_out, 1)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="mobilenet_tiny")
