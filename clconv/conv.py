"""Convolutions: validate -> choose an algorithm -> enqueue.

Algorithms (same semantics, same results within rounding):
- 'im2col': the cl/im2col.cl kernel writes the column buffer, CLBlast's GEMM multiplies the filters
  (C_out/groups x C_in/groups*k) by it, one strided-batched call over the batch per group (or over the
  groups per image when there are more groups than images); 1x1 stride-1 unpadded convolutions use the
  input as the column buffer directly. Bias is added on the device afterwards.
- 'direct': cl/conv_direct.cl, one work-item per output element, bias fused.
- 'auto': see `choose_algorithm`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl.array as cla

from . import gemm
from .arrays import (ArrayLike, deliver, element_offset, empty, index_type, is_device_array,
                     result_dtype, to_device)
from .device import Device, current_device
from .im2col import enqueue_im2col
from .params import ConvGeometry, IntOrTuple, PaddingArg, conv_geometry
from .program import kernel, precision_defines
from .workspace import column_buffer, default_workspace_limit

__all__ = ["ALGORITHMS", "conv1d", "conv2d", "conv3d", "choose_algorithm"]

ALGORITHMS = ("auto", "im2col", "direct")


def conv1d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto") -> ArrayLike:
    """1-d convolution: input (N, C_in, L) or (C_in, L), weight (C_out, C_in/groups, k) -> (N, C_out,
    L_out). Arguments as `conv2d`."""
    return convolution(1, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       algorithm)


def conv2d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto") -> ArrayLike:
    """2-d convolution (cross-correlation) with torch.nn.functional.conv2d's semantics.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in/groups, kh, kw); bias
    (C_out,) or None. stride, dilation: int or pair (>= 1); padding: int or pair (>= 0), 'valid' or
    'same' (stride 1; an odd total padding puts the extra element at the end, as PyTorch does).
    padding_mode: 'zeros' | 'reflect' | 'replicate' | 'circular' (as torch.nn.Conv2d's).
    algorithm: 'auto' | 'im2col' | 'direct'. numpy in -> numpy out; pyopencl Array in -> pyopencl
    Array out on the current device, nothing copied to the host. Returns (N, C_out, H_out, W_out).
    """
    return convolution(2, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       algorithm)


def conv3d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto") -> ArrayLike:
    """3-d convolution: input (N, C_in, D, H, W) or unbatched, weight (C_out, C_in/groups, kd, kh,
    kw) -> (N, C_out, D_out, H_out, W_out). Arguments as `conv2d`."""
    return convolution(3, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       algorithm)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def choose_algorithm(dev: Device, geo: ConvGeometry, algorithm: str) -> str:
    """The algorithm that runs for `algorithm` ('auto' resolved by a fixed rule, for now):

    'direct' when CLBlast is not installed, or when each group's GEMM would be tiny
    (C_in/groups * prod(kernel) < 32, e.g. depthwise convolutions: a GEMM per group with a handful of
    rows costs more in launches than the loops do); 'im2col' otherwise.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm != "auto":
        return algorithm
    if not gemm.available():
        return "direct"
    if geo.groups > 1 and geo.cin_per_group * geo.ksize < 32:
        return "direct"
    return "im2col"


def convolution(nd: int, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None,
                stride: IntOrTuple, padding: PaddingArg, dilation: IntOrTuple, groups: int,
                padding_mode: str, algorithm: str) -> ArrayLike:
    """N-d convolution (nd in 1, 2, 3); see conv2d."""
    dev = current_device()
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    dtype = result_dtype(dev, input=input, weight=weight, bias=bias)
    x_shape = _shape(input)
    unbatched = len(x_shape) == nd + 1
    geo = conv_geometry(nd, (1, *x_shape) if unbatched else x_shape, _shape(weight), stride,
                        padding, dilation, groups, padding_mode)
    if bias is not None and _shape(bias) != (geo.out_channels,):
        raise ValueError(f"bias must have shape ({geo.out_channels},) (one per output channel), got "
                         f"{_shape(bias)}")
    algo = choose_algorithm(dev, geo, algorithm)
    out = empty(dev, geo.output_shape, dtype)
    if out.size:
        x = to_device(input, dev, "input", dtype)
        w = to_device(weight, dev, "weight", dtype)
        b = None if bias is None else to_device(bias, dev, "bias", dtype)
        if algo == "im2col":
            run_im2col(dev, geo, x, w, b, out)
        else:
            run_direct(dev, geo, x, w, b, out)
    return deliver(out[0] if unbatched else out, not is_device_array(input))


def run_direct(dev: Device, geo: ConvGeometry, x: cla.Array, w: cla.Array, b: cla.Array | None,
               out: cla.Array) -> None:
    """Enqueues cl/conv_direct.cl for the whole batch."""
    defines = geo.defines()
    defines.update(precision_defines(out.dtype), GROUPS=geo.groups, COUT=geo.out_channels,
                   INDEX_T=index_type(element_offset(x) + x.size, element_offset(out) + out.size))
    if b is not None:
        defines["HAS_BIAS"] = None
    od, oh, ow = (1,) * (3 - geo.nd) + geo.out_size
    bias_buf, bias_off = (b.base_data, element_offset(b)) if b is not None else (out.base_data, 0)
    with dev.lock:
        kernel(dev, "conv_direct.cl", "conv_direct", defines)(
            dev.queue, (ow, oh, geo.batch * geo.out_channels * od), None,
            x.base_data, np.int64(element_offset(x)), w.base_data, np.int64(element_offset(w)),
            bias_buf, np.int64(bias_off), out.base_data, np.int64(element_offset(out)))


def run_im2col(dev: Device, geo: ConvGeometry, x: cla.Array, w: cla.Array, b: cla.Array | None,
               out: cla.Array) -> None:
    """Enqueues im2col + GEMM (+ bias) for the whole batch, in batch chunks that fit the workspace."""
    m, k, l = geo.cout_per_group, geo.cin_per_group * geo.ksize, geo.out_spatial
    col_image = geo.column_rows * l  # elements of one image's column matrix
    x_image, out_image = geo.in_channels * geo.in_spatial, geo.out_channels * l
    x_off, w_off, out_off = element_offset(x), element_offset(w), element_offset(out)
    pointwise = geo.is_pointwise  # the input already is the column matrix
    chunk = geo.batch if pointwise else max(
        1, min(geo.batch, default_workspace_limit(dev) // (col_image * out.dtype.itemsize)))
    defines = geo.defines()
    with dev.lock:
        for n0 in range(0, geo.batch, chunk):
            nb = min(chunk, geo.batch - n0)
            if pointwise:
                col, col_off = x, x_off + n0 * x_image
            else:
                col, col_off = column_buffer(dev, (nb * col_image,), out.dtype), 0
                enqueue_im2col(dev, defines, nb, x, x_off + n0 * x_image, col, col_off)
            c_off = out_off + n0 * out_image
            if geo.groups <= nb:
                # One batched GEMM per group; the filters are shared by the batch (A stride 0).
                for g in range(geo.groups):
                    gemm.gemm(dev, m, l, k, w, w_off + g * m * k, 0, col, col_off + g * k * l,
                              col_image, out, c_off + g * m * l, out_image, nb)
            else:
                # More groups than images: one batched GEMM per image, over the groups.
                for i in range(nb):
                    gemm.gemm(dev, m, l, k, w, w_off, m * k, col, col_off + i * col_image, k * l,
                              out, c_off + i * out_image, m * l, geo.groups)
        if b is not None:
            enqueue_bias(dev, out, b, geo.batch, geo.out_channels, l)


def enqueue_bias(dev: Device, out: cla.Array, b: cla.Array, batch: int, channels: int,
                 spatial: int) -> None:
    """out[n, c, :] += b[c] for a (batch, channels, spatial) tensor. Call holding dev.lock."""
    defines = precision_defines(out.dtype)
    defines.update(CHANNELS=channels, SPATIAL=spatial,
                   INDEX_T=index_type(element_offset(out) + out.size))
    kernel(dev, "bias.cl", "add_bias", defines)(
        dev.queue, (spatial, channels, batch), None, out.base_data, np.int64(element_offset(out)),
        b.base_data, np.int64(element_offset(b)))
