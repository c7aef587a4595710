"""Layers with parameters on the device, a forward and a hand-written backward.

    layer = clconv.nn.Conv2d(1, 8, 3, padding=1)     # weight (8, 1, 3, 3), bias (8,) on the device
    y = layer(x)                                     # forward; keeps x for backward
    grad_x = layer.backward(grad_y)                  # fills layer.weight_grad, layer.bias_grad

    model = clconv.nn.Sequential(                    # a whole CNN, activations kept on the device
        nn.Conv2d(1, 16, 3, padding=1, activation="relu"), nn.MaxPool2d(2),
        nn.BatchNorm2d(16), nn.Flatten(), nn.Linear(16 * 14 * 14, 10))
    logits = model(x); grad_x = model.backward(grad_logits)

Besides the convolutions: Linear, MaxPool/AvgPool/AdaptiveAvgPool/AdaptiveMaxPool (1-3 d),
BatchNorm1d/2d/3d (batch statistics and running-stat updates in train(), running statistics in
eval()), the activation layers (ReLU, ReLU6, SiLU, GELU, Sigmoid, Tanh, Hardswish, Hardsigmoid,
Mish, SELU, LeakyReLU, ELU, CELU, Softplus, Hardtanh), Flatten and Sequential (state_dict keys as torch.nn.Sequential's).
`activation=` on the convolution layers and Linear is fused into their store, in training too when
the output gives the activation's gradient (relu, relu6, leaky_relu, sigmoid, tanh, clamp); the
others run as a separate pass in training, where backward needs the activation's input.

Constructor arguments and default initialisation are torch.nn.ConvNd's / ConvTransposeNd's:
weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)), fan_in =
weight.shape[1] * prod(kernel). `device` is a clconv device spec (default: the current device),
`dtype` a numpy or torch float dtype (default float32), `rng` a numpy Generator or seed for the
initialisation, `algorithm` one of clconv.ALGORITHMS for the forward convolution (for transposed
layers: for the convolution that computes their input gradient).

weight, bias, weight_grad and bias_grad are pyopencl Arrays on the layer's device that numpy and
torch convert (`np.asarray(layer.weight)`, `torch.as_tensor(layer.weight_grad)` download a copy);
`state_dict()` / `load_state_dict()` give and take numpy arrays (or torch tensors) under torch.nn's
keys ('weight', 'bias'), and `grad_dict()` the gradients under the same keys. Assigning a numpy
or pyopencl array of the right shape to weight/bias replaces it. forward/backward return numpy for
numpy arguments and device arrays for device arrays, as the functional ops do. backward uses the
input of the latest forward and overwrites the gradients (no accumulation across calls). float16
layers store half and compute in float32 (see clconv.ops.precision).
"""

from __future__ import annotations

from .activation import (
    CELU,
    ELU,
    GELU,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    LeakyReLU,
    Mish,
    ReLU,
    ReLU6,
    SELU,
    Sigmoid,
    SiLU,
    Softplus,
    Tanh,
)
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .container import Flatten, Sequential
from .conv import Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d
from .linear import Linear
from .module import Module
from .pooling import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveAvgPool3d,
    AdaptiveMaxPool1d,
    AdaptiveMaxPool2d,
    AdaptiveMaxPool3d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
)

__all__ = [
    "CELU",
    "ELU",
    "GELU",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Flatten",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "LeakyReLU",
    "Linear",
    "Mish",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "Module",
    "ReLU",
    "ReLU6",
    "SELU",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Softplus",
    "Tanh",
]


def __dir__() -> list[str]:
    # dir(clconv.nn) (and tab completion) shows the layers, not the package's modules.
    return sorted(__all__)
