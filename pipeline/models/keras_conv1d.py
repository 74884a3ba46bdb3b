"""The convolutional sequence families (cnn1d, dscnn1d, tcn) in Keras 3: the torch networks of
pipeline/models/conv1d.py layer for layer, so the same architecture params give the same
parameter counts, written to quantize fully with TFLiteConverter.

Input is NTC, as in torch. Keras's "same" padding stands in for torch's symmetric padding (the
same output lengths; an even stem kernel pads one step more at the end instead of the start),
the TCN's left-only padding is Keras's "causal", and the mean over time is an average pool over
all remaining steps (AVERAGE_POOL_2D after the converter's reshape), as in keras_cnn2d.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.models.keras_cnn2d import BN_EPSILON, BN_MOMENTUM

if TYPE_CHECKING:
    import keras

    from pipeline.models.spec import Architecture


def _conv_bn_relu(x: Any, c_out: int, kernel: int, name: str, **conv: Any) -> Any:
    from keras import layers

    x = layers.Conv1D(c_out, kernel, use_bias=False, name=f"{name}_conv", **conv)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _cnn1d(x: Any, arch: Architecture) -> Any:
    from keras import layers

    steps = arch.input_shape[0]
    for i, c_out in enumerate(arch.channels):
        stride = arch.stride if i == 0 else 1
        x = _conv_bn_relu(x, c_out, arch.kernel_size, f"block{i}", strides=stride, padding="same")
        steps = (steps - 1) // stride + 1
        if steps >= 4:
            x = layers.MaxPooling1D(2, name=f"block{i}_pool")(x)
            steps //= 2
    return x


def _dscnn1d(x: Any, arch: Architecture) -> Any:
    from keras import layers

    width = arch.channels[0]
    stem = max(arch.kernel_size, arch.stride)
    x = _conv_bn_relu(x, width, stem, "stem", strides=arch.stride, padding="same")
    for i, c_out in enumerate(arch.channels):
        x = layers.DepthwiseConv1D(
            arch.kernel_size, padding="same", use_bias=False, name=f"block{i}_dw"
        )(x)
        x = layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"block{i}_dw_bn"
        )(x)
        x = layers.ReLU(name=f"block{i}_dw_relu")(x)
        x = _conv_bn_relu(x, c_out, 1, f"block{i}_pw")
        width = c_out
    return x


def _tcn(x: Any, arch: Architecture) -> Any:
    from keras import layers

    width = arch.channels[0]
    x = _conv_bn_relu(x, width, arch.stride, "stem", strides=arch.stride)
    for i, c_out in enumerate(arch.channels):
        y = layers.Conv1D(c_out, arch.kernel_size, dilation_rate=2**i, padding="causal",
                          use_bias=False, name=f"block{i}_conv")(x)  # fmt: skip
        y = layers.BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"block{i}_bn"
        )(y)
        skip = layers.Conv1D(c_out, 1, name=f"block{i}_skip")(x) if width != c_out else x
        x = layers.ReLU(name=f"block{i}_relu")(layers.Add(name=f"block{i}_add")([y, skip]))
        width = c_out
    return x


FEATURES = {"cnn1d": _cnn1d, "dscnn1d": _dscnn1d, "tcn": _tcn}


def build(arch: Architecture) -> keras.Model:
    """The family `arch.arch` names, NTC input (weights from Keras's seeded initialisers)."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=tuple(arch.input_shape), name="input")
    x = FEATURES[arch.arch](inputs, arch)
    x = layers.AveragePooling1D(int(x.shape[1]), name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(arch.dropout, name="dropout")(x)
    outputs = layers.Dense(arch.num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"tinyops_{arch.arch}")
