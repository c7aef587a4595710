"""The convolution layers: Conv1d/2d/3d and ConvTranspose1d/2d/3d (torch.nn's arguments)."""

from __future__ import annotations

from typing import Any

import pyopencl.array as cla

from ..blas import clblast
from ..blas.engine import gemm_engine
from ..ops.activation import ActivationArg, normalize_activation
from ..ops.conv import ConvPlan
from ..ops.geometry import ConvGeometry, IntOrTuple, PaddingArg, as_tuple
from ..ops.grad import InputGradPlan
from ..ops.transpose import TransposePlan, transpose_output_size
from ..runtime.transfer import ArrayLike, is_device_array
from .module import Layer, with_activation


def _operands(layer: Layer, x: cla.Array, fused: bool) -> tuple[Any, tuple[int, ...],
                                                               tuple[int, ...],
                                                               tuple[int, ...] | None]:
    """(activation to fuse, input shape, weight shape, bias shape or None) of a convolution
    layer's call on x."""
    act = layer.activation if fused else None
    b_shape = None if layer._bias is None else (layer.out_channels,)
    return act, tuple(x.shape), tuple(layer._weight.shape), b_shape


class _ConvNd(Layer):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple,
                 stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: Any = None, dtype: Any = None, *, rng: Any = None,
                 algorithm: str = "auto", activation: ActivationArg = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype, rng, algorithm)
        self.activation = normalize_activation(activation)

    def forward(self, input: ArrayLike) -> ArrayLike:
        """input (N, C_in, *spatial) or unbatched (C_in, *spatial) -> (N, C_out, *out)."""
        if self.algorithm in ("im2col", "winograd"):  # before the input is uploaded
            clblast.require(f"{type(self).__name__} with algorithm={self.algorithm!r}")
        with self.device:
            x, unbatched = self._operand(input, "input")
            out = with_activation(self, lambda fused: self._conv(x, fused))
            return self._result(out, unbatched, not is_device_array(input))

    def _recompute_pre(self) -> cla.Array:
        """The pre-activation output of the latest forward (run again when it was fused)."""
        assert self._saved is not None
        return self._conv(self._saved[0], fused=False)

    def _conv(self, x: cla.Array, fused: bool) -> cla.Array:
        """The convolution of x (batched, on the device, compute dtype), with the layer's
        activation fused into its store when `fused`; saves what backward needs."""
        act, x_shape, w_shape, b_shape = _operands(self, x, fused)
        plan = self._plan("conv", lambda: ConvPlan(
            self.device, self.nd, x_shape, w_shape, b_shape, self.stride, self.padding,
            self.dilation, self.groups, self.padding_mode, self.algorithm, act, None,
            self._work), x_shape, w_shape, b_shape, self._work, self.stride, self.padding,
            self.dilation, self.groups, self.padding_mode, self.algorithm, act)
        out = plan(x, self._param("weight"), self._param("bias"))
        self._saved = (x, plan.geometry, plan.geometry.output_shape)
        return out

    def _backward(self, geo: ConvGeometry, x: cla.Array, g: cla.Array,
                  w: cla.Array) -> tuple[cla.Array, cla.Array]:
        w_shape = tuple(w.shape)
        plan = self._plan("input_grad", lambda: InputGradPlan(
            self.device, self.nd, geo.input_shape, w_shape, geo.output_shape, geo.stride, 0,
            geo.dilation, geo.groups, geo.padding_mode, self._work, geometry=geo),
            geo, w_shape, self._work)
        return plan(w, g), self._weight_grad(geo, x, g)


class _ConvTransposeNd(Layer):
    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple,
                 stride: IntOrTuple = 1, padding: IntOrTuple = 0, output_padding: IntOrTuple = 0,
                 groups: int = 1, bias: bool = True, dilation: IntOrTuple = 1,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, *,
                 rng: Any = None, algorithm: str = "auto",
                 activation: ActivationArg = None) -> None:
        if isinstance(padding, str):
            raise TypeError(f"padding must be an int or a sequence of {self.nd} ints for a "
                            f"transposed convolution, got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype, rng, algorithm)
        self.activation = normalize_activation(activation)
        # (checked against stride and dilation by forward, as torch's: for a non-empty batch)
        self.output_padding = as_tuple(output_padding, self.nd, "output_padding", 0)

    def _output_padding(self, in_size: tuple[int, ...], output_size: Any,
                        input_dims: int) -> tuple[int, ...]:
        """output_padding that gives `output_size` (spatial, or with the input's leading dims:
        `input_dims` entries in all), as torch.nn.ConvTransposeNd.forward's output_size."""
        if output_size is None:
            return self.output_padding
        size = tuple(int(v) for v in output_size)
        if len(size) == input_dims:
            size = size[-self.nd:]
        if len(size) != self.nd:
            raise ValueError(f"output_size must have {self.nd} (spatial) or {input_dims} entries "
                             f"for a {input_dims}-d input, got {tuple(output_size)}")
        smallest = transpose_output_size(in_size, self.kernel_size, self.stride, self.padding,
                                         (0,) * self.nd, self.dilation)
        largest = tuple(s + st - 1 for s, st in zip(smallest, self.stride))
        if any(not lo <= v <= hi for v, lo, hi in zip(size, smallest, largest)):
            raise ValueError(f"output_size {size} is not reachable: for an input of spatial size "
                             f"{in_size} valid sizes range from {smallest} to {largest}")
        return tuple(v - s for v, s in zip(size, smallest))

    def forward(self, input: ArrayLike, output_size: Any = None) -> ArrayLike:
        """input (N, C_in, *spatial) or unbatched -> (N, C_out, *out); output_size (optional) picks
        the output_padding, as in torch."""
        if gemm_engine(self.device) is clblast:  # before the input is uploaded
            clblast.require(f"{type(self).__name__}.forward")
        with self.device:
            x, unbatched = self._operand(input, "input")
            out_pad = self._output_padding(tuple(x.shape[2:]), output_size, x.ndim - unbatched)
            out = with_activation(self, lambda fused: self._transpose(x, out_pad, fused))
            return self._result(out, unbatched, not is_device_array(input))

    def _transpose(self, x: cla.Array, out_pad: tuple[int, ...], fused: bool) -> cla.Array:
        """The transposed convolution of x (batched, on the device, compute dtype), the layer's
        activation fused into its store when `fused`; saves what backward needs."""
        act, x_shape, w_shape, b_shape = _operands(self, x, fused)
        plan = self._plan("transpose", lambda: TransposePlan(
            self.device, self.nd, x_shape, w_shape, b_shape, self.stride, self.padding,
            out_pad, self.groups, self.dilation, self._work, activation=act), x_shape, w_shape,
            b_shape, self._work, self.stride, self.padding, out_pad, self.groups, self.dilation,
            act)
        out = plan(x, self._param("weight"), self._param("bias"))
        geo = plan.geometry
        self._saved = (x, geo, geo.input_shape)
        self._out_pad = out_pad
        return out

    def _recompute_pre(self) -> cla.Array:
        """The pre-activation output of the latest forward (run again when it was fused)."""
        assert self._saved is not None
        return self._transpose(self._saved[0], self._out_pad, fused=False)

    def _backward(self, geo: ConvGeometry, x: cla.Array, g: cla.Array,
                  w: cla.Array) -> tuple[cla.Array, cla.Array]:
        # `geo` is the forward convolution from the output grid (g) to the input grid (x): the input
        # gradient is that convolution of g, the weight gradient its weight gradient with g as the
        # convolution's input and x as its output gradient.
        w_shape = tuple(w.shape)
        plan = self._plan("conv", lambda: ConvPlan(
            self.device, self.nd, geo.input_shape, w_shape, None, geo.stride, 0, geo.dilation,
            geo.groups, "zeros", self.algorithm, None, None, self._work, geometry=geo),
            "backward", geo, w_shape, self._work, self.algorithm)
        return plan(g, w), self._weight_grad(geo, g, x)

    def _describe(self) -> str:
        text = super()._describe()
        if self.output_padding != (0,) * self.nd:
            text += f", output_padding={self.output_padding}"
        return text


class Conv1d(_ConvNd):
    """torch.nn.Conv1d on an OpenCL device: input (N, C_in, L) -> (N, C_out, L_out)."""

    nd = 1


class Conv2d(_ConvNd):
    """torch.nn.Conv2d on an OpenCL device: input (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""

    nd = 2


class Conv3d(_ConvNd):
    """torch.nn.Conv3d on an OpenCL device: input (N, C_in, D, H, W) -> (N, C_out, D', H', W')."""

    nd = 3


class ConvTranspose1d(_ConvTransposeNd):
    """torch.nn.ConvTranspose1d on an OpenCL device: (N, C_in, L) -> (N, C_out, L_out)."""

    nd = 1


class ConvTranspose2d(_ConvTransposeNd):
    """torch.nn.ConvTranspose2d on an OpenCL device: (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""

    nd = 2


class ConvTranspose3d(_ConvTransposeNd):
    """torch.nn.ConvTranspose3d on an OpenCL device: (N, C_in, D, H, W) -> (N, C_out, D', H',
    W')."""

    nd = 3
