"""PyTorch integration (`pip install 'clconv[torch]'`): torch.nn convolutions computed by clconv.

    import torch, clconv.torch
    conv = clconv.torch.Conv2d(3, 16, 3, padding=1)     # a torch.nn.Conv2d in every respect...
    y = conv(torch.randn(8, 3, 32, 32))                  # ...whose forward and backward run on the
    y.sum().backward()                                   # current clconv device
    model = clconv.torch.convert(torchvision_model)      # a copy with every Conv*d swapped

`Conv1d/2d/3d` and `ConvTranspose1d/2d/3d` subclass torch.nn's modules: the same constructor
arguments, parameters, `state_dict` keys, initialisation (torch's own `reset_parameters`) and repr.
Only the convolution itself is replaced, by a `torch.autograd.Function` whose forward calls
clconv's functional ops (`clconv.conv2d`, `clconv.conv_transpose2d`, ...) and whose backward calls
clconv's gradients (`clconv.conv2d_input`, `clconv.conv2d_weight`; for a transposed convolution the
input gradient is the forward convolution of the output gradient). The work runs on
`clconv.current_device()` at forward time (the backward uses the same device); tensors must be on
torch's CPU, in float32 (float64/float16 where the device has them). Data crosses as numpy views of
the tensors (no copy into numpy); each call uploads its operands and downloads its result.
`module.algorithm` ('auto' by default) picks clconv's algorithm for forward convolutions.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from .ops.conv import conv1d, conv2d, conv3d
from .ops.grad import (
    conv1d_input,
    conv1d_weight,
    conv2d_input,
    conv2d_weight,
    conv3d_input,
    conv3d_weight,
)
from .ops.transpose import conv_transpose1d, conv_transpose2d, conv_transpose3d
from .runtime.device import Device, current_device

__all__ = [
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvFunction",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "ConvTransposeFunction",
    "convert",
]


#: nd -> clconv's (forward, input gradient, weight gradient, transposed) functions.
_OPS = {1: (conv1d, conv1d_input, conv1d_weight, conv_transpose1d),
        2: (conv2d, conv2d_input, conv2d_weight, conv_transpose2d),
        3: (conv3d, conv3d_input, conv3d_weight, conv_transpose3d)}


def _host(t: torch.Tensor | None) -> np.ndarray | None:
    """A tensor's values as a numpy view (no copy); None stays None."""
    return None if t is None else t.detach().numpy()


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def _bias_grad(g: torch.Tensor) -> torch.Tensor:
    """Sum of grad_output (N, C, *spatial) over every dim but the channels."""
    return g.sum(dim=[0, *range(2, g.dim())])


class ConvFunction(torch.autograd.Function):
    """y = clconv.conv{nd}d(x, weight, bias, ...), with clconv's input and weight gradients.

    x is batched: (N, C_in, *spatial)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                nd: int, stride: Any, padding: Any, dilation: Any, groups: int,
                padding_mode: str, algorithm: str, dev: Device) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (nd, stride, padding, dilation, groups, padding_mode, dev, bias is not None)
        with dev:
            y = _OPS[nd][0](_host(x), _host(weight), _host(bias), stride, padding, dilation,
                            groups, padding_mode=padding_mode, algorithm=algorithm)
        return _tensor(y)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        nd, stride, padding, dilation, groups, padding_mode, dev, has_bias = ctx.conf
        gx = gw = gb = None
        gh = _host(g)
        with dev:
            if ctx.needs_input_grad[0]:
                gx = _tensor(_OPS[nd][1](tuple(x.shape), _host(weight), gh, stride, padding,
                                         dilation, groups, padding_mode=padding_mode))
            if ctx.needs_input_grad[1]:
                gw = _tensor(_OPS[nd][2](_host(x), tuple(weight.shape), gh, stride, padding,
                                         dilation, groups, padding_mode=padding_mode))
        if has_bias and ctx.needs_input_grad[2]:
            gb = _bias_grad(g)
        return gx, gw, gb, None, None, None, None, None, None, None, None


class ConvTransposeFunction(torch.autograd.Function):
    """y = clconv.conv_transpose{nd}d(x, weight, bias, ...); its input gradient is the forward
    convolution of grad_y with the same weight, its weight gradient that convolution's weight
    gradient (grad_y as the convolution's input, x as its output gradient). x is batched."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                nd: int, stride: Any, padding: Any, output_padding: Any, groups: int,
                dilation: Any, algorithm: str, dev: Device) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (nd, stride, padding, groups, dilation, algorithm, dev, bias is not None)
        with dev:
            y = _OPS[nd][3](_host(x), _host(weight), _host(bias), stride, padding,
                            output_padding, groups, dilation)
        return _tensor(y)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        nd, stride, padding, groups, dilation, algorithm, dev, has_bias = ctx.conf
        gx = gw = gb = None
        gh = _host(g)
        with dev:
            if ctx.needs_input_grad[0]:
                gx = _tensor(_OPS[nd][0](gh, _host(weight), None, stride, padding, dilation,
                                         groups, algorithm=algorithm))
            if ctx.needs_input_grad[1]:
                gw = _tensor(_OPS[nd][2](gh, tuple(weight.shape), _host(x), stride, padding,
                                         dilation, groups))
        if has_bias and ctx.needs_input_grad[2]:
            gb = _bias_grad(g)
        return gx, gw, gb, None, None, None, None, None, None, None, None


def _batched(x: torch.Tensor, nd: int) -> tuple[torch.Tensor, bool]:
    """(x with a batch dim, whether it had none): unbatched inputs work as in torch."""
    if x.dim() == nd + 1:
        return x.unsqueeze(0), True
    return x, False


class _ClconvConv:
    """The forward of clconv.torch.Conv1d/2d/3d (mixed into torch.nn.ConvNd subclasses)."""

    algorithm: str = "auto"

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        nd = len(self.kernel_size)
        x, unbatched = _batched(input, nd)
        # clconv pads natively for every padding_mode (torch pads with F.pad first, then runs an
        # unpadded convolution; the results are the same).
        y = ConvFunction.apply(x, weight, bias, nd, self.stride, self.padding, self.dilation,
                               self.groups, self.padding_mode, self.algorithm, current_device())
        return y[0] if unbatched else y


class _ClconvConvTranspose:
    """The forward of clconv.torch.ConvTranspose1d/2d/3d (mixed into torch.nn.ConvTransposeNd)."""

    algorithm: str = "auto"

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for "
                             f"{type(self).__name__}")  # torch's own message and type
        nd = len(self.kernel_size)
        x, unbatched = _batched(input, nd)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, nd, self.dilation)
        y = ConvTransposeFunction.apply(x, self.weight, self.bias, nd, self.stride, self.padding,
                                        tuple(output_padding), self.groups, self.dilation,
                                        self.algorithm, current_device())
        return y[0] if unbatched else y


class Conv1d(_ClconvConv, nn.Conv1d):
    """torch.nn.Conv1d computed by clconv: (N, C_in, L) -> (N, C_out, L_out)."""


class Conv2d(_ClconvConv, nn.Conv2d):
    """torch.nn.Conv2d computed by clconv: (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""


class Conv3d(_ClconvConv, nn.Conv3d):
    """torch.nn.Conv3d computed by clconv: (N, C_in, D, H, W) -> (N, C_out, D', H', W')."""


class ConvTranspose1d(_ClconvConvTranspose, nn.ConvTranspose1d):
    """torch.nn.ConvTranspose1d computed by clconv."""


class ConvTranspose2d(_ClconvConvTranspose, nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d computed by clconv."""


class ConvTranspose3d(_ClconvConvTranspose, nn.ConvTranspose3d):
    """torch.nn.ConvTranspose3d computed by clconv."""


#: torch.nn type -> its clconv.torch counterpart (exact types only: a user's subclass of
#: torch.nn.Conv2d may have its own forward, which convert() must not replace).
SWAPS: dict[type, type] = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d,
                           nn.ConvTranspose1d: ConvTranspose1d,
                           nn.ConvTranspose2d: ConvTranspose2d,
                           nn.ConvTranspose3d: ConvTranspose3d}


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """`model` (a copy unless inplace) with every torch.nn.Conv*d / ConvTranspose*d module made
    its clconv.torch counterpart, keeping parameters, buffers, hooks and training mode (only the
    module's class changes, so state_dict keys and optimizers built on the parameters of an
    in-place conversion stay valid). A model that is itself such a module is converted too."""
    model = model if inplace else copy.deepcopy(model)
    for module in model.modules():
        swap = SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
    return model
