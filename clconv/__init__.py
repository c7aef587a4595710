"""clconv: neural-network convolutions on any OpenCL device, with PyTorch's semantics.

    import numpy as np, clconv
    with clconv.device():                                      # the default device
        y = clconv.conv2d(x, w, b, stride=1, padding="same")   # x (N, C, H, W) numpy -> numpy
    plan = clconv.plan_conv2d(x.shape, w.shape, padding=1)     # validated and built once
    y = plan(x, w, b)                                          # then only enqueued

Algorithms (clconv.ops.conv): im2col + CLBlast GEMM, clconv's packed GEMM fused with the gather
('implicit') or fed by im2col ('im2col_packed'), direct loops, opt-in Winograd; 'auto' measures.
Transposed convolutions, gradients as torch.nn.grad's, layers with a backward (clconv.nn), PyTorch
modules (clconv.torch), device groups (`clconv.device("all")`) and Dask (clconv.dask).
"""

from __future__ import annotations

from . import nn
from .ops.conv import (ACTIVATIONS, ConvPlan, conv1d, conv2d, conv3d, plan_conv1d, plan_conv2d,
                       plan_conv3d, warmup, workspace_size)
from .ops.conv_select import ALGORITHMS
from .ops.grad import (InputGradPlan, WeightGradPlan, conv1d_input, conv1d_weight, conv2d_input,
                       conv2d_weight, conv3d_input, conv3d_weight, plan_conv1d_input,
                       plan_conv1d_weight, plan_conv2d_input, plan_conv2d_weight,
                       plan_conv3d_input, plan_conv3d_weight)
from .ops.fold import fold_batchnorm
from .ops.channels import BatchNormPlan, batch_norm
from .ops.shape import (CatPlan, cat, channel_shuffle, flatten, pixel_shuffle, pixel_unshuffle,
                        stack)
from .ops.unary import (UnaryPlan, abs, celu, clamp, elu, erf, exp, gelu, hardshrink, hardsigmoid,
                        hardswish, hardtanh, leaky_relu, log, logsigmoid, mish, relu, relu6, rsqrt,
                        selu, sigmoid, silu, softplus, softshrink, softsign, sqrt, tanh, tanhshrink,
                        threshold)
from .ops.binary import BinaryPlan, add, div, maximum, minimum, mul, prelu, sub
from .ops.device_group import DeviceGroup, device
from .ops.group_norm import GroupNormPlan, group_norm, instance_norm, layer_norm
from .ops.local_response_norm import LocalResponseNormPlan, local_response_norm
from .ops.squeeze_excitation import SqueezeExcitationPlan, squeeze_excitation
from .ops.interpolate import InterpolatePlan, interpolate
from .ops.pad import PadPlan, pad
from .ops.softmax import SoftmaxPlan, log_softmax, softmax
from .ops.linear import LinearPlan, linear
from .ops.matmul import MatmulPlan, matmul
from .ops.plan import Plan
from .ops.pool import (PoolPlan, adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d,
                       adaptive_max_pool1d, adaptive_max_pool2d, adaptive_max_pool3d, avg_pool1d,
                       avg_pool2d, avg_pool3d, max_pool1d, max_pool2d, max_pool3d)
from .ops.transpose import (TransposePlan, conv_transpose1d, conv_transpose2d, conv_transpose3d,
                            plan_conv_transpose1d, plan_conv_transpose2d, plan_conv_transpose3d)
from .ops.unfold import (FoldPlan, UnfoldPlan, col2im, col2im1d, col2im3d, im2col, im2col1d,
                         im2col3d, plan_col2im, plan_col2im1d, plan_col2im3d, plan_im2col,
                         plan_im2col1d, plan_im2col3d)
from .runtime.device import Device, current_device, devices

# torch.nn.functional's names for the 2-d ones (same arguments and results)
unfold, fold = im2col, col2im
from .runtime.errors import DeviceNotFoundError, KernelBuildError, UnsupportedError
from .runtime.memory import release_column_buffer

__version__ = "0.1.0"

__all__ = ["ACTIVATIONS", "ALGORITHMS", "Device", "DeviceGroup", "DeviceNotFoundError",
           "KernelBuildError",
           "UnsupportedError", "__version__", "nn",
           "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "conv1d_input", "conv2d_input", "conv3d_input", "conv1d_weight", "conv2d_weight",
           "conv3d_weight", "im2col", "col2im", "im2col1d", "col2im1d", "im2col3d", "col2im3d",
           "unfold", "fold",
           "plan_conv1d", "plan_conv2d", "plan_conv3d", "plan_conv_transpose1d",
           "plan_conv_transpose2d", "plan_conv_transpose3d", "plan_conv1d_input",
           "plan_conv2d_input", "plan_conv3d_input", "plan_conv1d_weight", "plan_conv2d_weight",
           "plan_conv3d_weight", "plan_im2col", "plan_im2col1d", "plan_im2col3d", "plan_col2im",
           "plan_col2im1d", "plan_col2im3d", "Plan", "ConvPlan", "TransposePlan", "InputGradPlan",
           "WeightGradPlan", "UnfoldPlan", "FoldPlan",
           "current_device", "device", "devices", "release_column_buffer", "warmup",
           "workspace_size"]

# The other layers of a CNN (pooling, activations, batch_norm, add/sub/mul/div, maximum/minimum,
# sqrt/abs/exp/log/rsqrt, cat,
# flatten, linear, matmul, pad, interpolate, group_norm, local_response_norm, softmax).
__all__ += ["BatchNormPlan", "BinaryPlan", "CatPlan", "GroupNormPlan", "InterpolatePlan",
            "LinearPlan", "LocalResponseNormPlan", "MatmulPlan", "matmul", "PadPlan", "PoolPlan", "SoftmaxPlan", "UnaryPlan",
            "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
            "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d", "add",
            "avg_pool1d", "avg_pool2d", "avg_pool3d", "batch_norm", "cat", "celu", "clamp", "div", "elu",
            "flatten", "pixel_shuffle", "pixel_unshuffle", "stack", "channel_shuffle", "gelu",
            "group_norm", "instance_norm",
            "layer_norm",
            "hardsigmoid", "hardswish", "hardtanh", "interpolate",
            "leaky_relu", "linear", "local_response_norm", "log_softmax",
            "max_pool1d", "max_pool2d", "max_pool3d", "mish", "mul", "pad", "prelu", "relu", "relu6",
            "selu", "sigmoid", "silu", "softmax", "softplus", "sqrt", "sub", "tanh",
            "abs", "exp", "log", "rsqrt", "erf", "threshold", "logsigmoid", "softsign", "tanhshrink", "hardshrink",
            "softshrink", "maximum", "minimum"]

# A squeeze-excitation block as one op (pool, two 1x1 layers and the gate's product).
__all__ += ["SqueezeExcitationPlan", "squeeze_excitation"]

# Fused epilogues: BatchNorm folded into the convolution before it.
__all__ += ["fold_batchnorm"]
