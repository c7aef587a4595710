"""clconv: neural-network convolutions on any OpenCL device, with PyTorch's semantics.

    import numpy as np, clconv
    with clconv.device("cpu"):
        y = clconv.conv2d(x, w, b, stride=1, padding="same")   # x (N, C, H, W) numpy -> numpy

Algorithms: im2col + CLBlast GEMM, and a direct loop kernel; see `clconv.conv`.
"""

from __future__ import annotations

from .conv import ACTIVATIONS, ALGORITHMS, conv1d, conv2d, conv3d, workspace_size
from .device import Device, current_device, device, devices
from .errors import DeviceNotFoundError, KernelBuildError, UnsupportedError
from .im2col import col2im, im2col

__version__ = "0.1.0"

__all__ = ["ACTIVATIONS", "ALGORITHMS", "Device", "DeviceNotFoundError", "KernelBuildError", "UnsupportedError",
           "col2im", "conv1d", "conv2d", "conv3d", "current_device", "device", "devices", "im2col",
           "workspace_size", "__version__"]
