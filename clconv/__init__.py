"""clconv: neural-network convolutions on any OpenCL device, with PyTorch's semantics.

    import numpy as np, clconv
    with clconv.device("cpu"):
        y = clconv.conv2d(x, w, b, stride=1, padding="same")   # x (N, C, H, W) numpy -> numpy

Algorithms: im2col + CLBlast GEMM, and a direct loop kernel; see `clconv.conv`. Transposed
convolutions (`clconv.transpose`), gradients as torch.nn.grad's (`clconv.grad`) and layers with a
backward (`clconv.nn`) make a small CNN trainable with clconv alone.
"""

from __future__ import annotations

from . import nn
from .ops.conv import ACTIVATIONS, ALGORITHMS, conv1d, conv2d, conv3d, warmup, workspace_size
from .runtime.device import Device, current_device, device, devices
from .runtime.errors import DeviceNotFoundError, KernelBuildError, UnsupportedError
from .ops.grad import (conv1d_input, conv1d_weight, conv2d_input, conv2d_weight, conv3d_input,
                   conv3d_weight)
from .ops.unfold import col2im, col2im1d, col2im3d, im2col, im2col1d, im2col3d
from .ops.transpose import conv_transpose1d, conv_transpose2d, conv_transpose3d

__version__ = "0.1.0"

__all__ = ["ACTIVATIONS", "ALGORITHMS", "Device", "DeviceNotFoundError", "KernelBuildError", "UnsupportedError",
           "col2im", "conv1d", "conv2d", "conv3d", "current_device", "device", "devices", "im2col",
           "workspace_size", "warmup", "__version__",
           "col2im1d", "col2im3d", "im2col1d", "im2col3d",
           "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "conv1d_input", "conv2d_input", "conv3d_input", "conv1d_weight", "conv2d_weight",
           "conv3d_weight", "nn"]
