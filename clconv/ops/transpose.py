"""Transposed convolutions, and the GEMM -> col2im adjoint they share with the input gradients.

A transposed convolution is the adjoint of a forward convolution: the forward one maps the
transposed op's *output* grid to its *input* grid. Both are described by the forward convolution's
`ConvGeometry` (`in_size` = the transposed output size, `out_size` = the transposed input size), so
one routine, `enqueue_adjoint`, computes conv_transpose*d and conv*d_input:

    for each image and group g:
        cols_g (C_in/g * K, L) = W_g^T (C_in/g * K, C_out/g) @ y_g (C_out/g, L)
    col2im(cols) sums every column entry into the image position it came from (+ bias)

with W_g the forward weight of group g as a (C_out/g, C_in/g * K) matrix. The weight layout of a
transposed convolution, (C_in, C_out/groups, *k), is exactly that forward weight.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..blas import clblast as gemm
from ..runtime.transfer import (
    ArrayLike,
    check_fits,
    deliver,
    element_offset,
    empty,
    index_type,
    is_device_array,
    result_dtype,
)
from .conv import enqueue_bias, require_gemm
from ..runtime.device import Device, current_device
from ..runtime.errors import device_memory_errors, sizes_text
from .unfold import enqueue_col2im
from .geometry import ConvGeometry, IntOrTuple, as_tuple, check_ranks_and_groups
from .precision import check_precision, compute_dtype, load, store
from ..runtime.program import kernel, precision_defines
from ..runtime.memory import column_buffer, default_workspace_limit

__all__ = ["conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "enqueue_adjoint",
           "enqueue_pad_adjoint", "transpose_geometry", "transpose_output_size"]


def conv_transpose1d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
                     stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1) -> ArrayLike:
    """1-d transposed convolution: input (N, C_in, L) or (C_in, L), weight (C_in, C_out/groups, k)
    -> (N, C_out, L_out). Arguments as `conv_transpose2d`."""
    return conv_transpose(1, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
                     stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1) -> ArrayLike:
    """2-d transposed convolution with torch.nn.functional.conv_transpose2d's semantics.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_in, C_out/groups, kh, kw); bias
    (C_out,) or None. stride, dilation: int or pair (>= 1); padding: int or pair (>= 0), the zero
    padding of the forward convolution this is the adjoint of (it crops the output); output_padding:
    int or pair, extra size added on the trailing side, smaller than the stride or the dilation.
    Output size per dim: (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1.
    numpy in -> numpy out; pyopencl Array in -> pyopencl Array out on the current device.
    Returns (N, C_out, H_out, W_out).
    """
    return conv_transpose(2, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose3d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
                     stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                     output_padding: IntOrTuple = 0, groups: int = 1,
                     dilation: IntOrTuple = 1) -> ArrayLike:
    """3-d transposed convolution: input (N, C_in, D, H, W) or unbatched, weight (C_in,
    C_out/groups, kd, kh, kw) -> (N, C_out, D_out, H_out, W_out). Arguments as
    `conv_transpose2d`."""
    return conv_transpose(3, input, weight, bias, stride, padding, output_padding, groups, dilation)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def transpose_output_size(in_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                          padding: Sequence[int], output_padding: Sequence[int],
                          dilation: Sequence[int]) -> tuple[int, ...]:
    """(in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1, per dim."""
    return tuple((i - 1) * s - 2 * p + d * (k - 1) + op + 1
                 for i, k, s, p, op, d in zip(in_size, kernel, stride, padding, output_padding,
                                              dilation))


def transpose_geometry(nd: int, input_shape: Sequence[int], weight_shape: Sequence[int],
                       stride: IntOrTuple, padding: IntOrTuple, output_padding: IntOrTuple,
                       groups: int, dilation: IntOrTuple) -> ConvGeometry:
    """Validates a transposed convolution's arguments (PyTorch's rules) and returns the geometry of
    the forward convolution it is the adjoint of.

    input_shape: (N, C_in, *spatial) (batched); weight_shape: (C_in, C_out / groups, *kernel).
    """
    check_ranks_and_groups(nd, input_shape, weight_shape, groups, "transposed convolution",
                           "(C_in, C_out/groups, *kernel)")
    stride_t = as_tuple(stride, nd, "stride", 1)
    padding_t = as_tuple(padding, nd, "padding", 0)
    out_pad = as_tuple(output_padding, nd, "output_padding", 0)
    dilation_t = as_tuple(dilation, nd, "dilation", 1)
    n, c_in, *in_size = (int(v) for v in input_shape)
    w_in, c_out_g, *kernel = (int(v) for v in weight_shape)
    if any(k < 1 for k in kernel) or w_in < 1 or c_out_g < 1:
        raise ValueError(f"weight must have non-zero sizes (C_in, C_out/groups, *kernel), got "
                         f"shape {tuple(weight_shape)}")
    if w_in != c_in:
        raise ValueError(f"input has {c_in} channels but weight {tuple(weight_shape)} of a "
                         f"transposed convolution expects {w_in} (its dim 0 is C_in) (channel "
                         f"mismatch)")
    if c_in % groups:
        raise ValueError(f"groups={groups} must divide the input channels {c_in} (weight's dim 0)")
    if any(i < 1 for i in in_size):
        raise ValueError(f"input must have non-zero spatial sizes, got shape {tuple(input_shape)}")
    if any(op >= s and op >= d for op, s, d in zip(out_pad, stride_t, dilation_t)):
        raise ValueError(f"output_padding {out_pad} must be smaller than either stride {stride_t} "
                         f"or dilation {dilation_t} in every dim")
    out_size = transpose_output_size(in_size, kernel, stride_t, padding_t, out_pad, dilation_t)
    if any(o < 1 for o in out_size):
        raise ValueError(f"input of spatial size {tuple(in_size)} with kernel {tuple(kernel)}, "
                         f"stride {stride_t}, padding {padding_t}, dilation {dilation_t} and "
                         f"output_padding {out_pad} gives output size {out_size}: too small "
                         f"(reduce padding)")
    # The forward convolution runs over the transposed output, padded by `padding` in front; its
    # trailing padding is what makes its output exactly `in_size` (negative: a cropped tail).
    pad_hi = tuple(p - op for p, op in zip(padding_t, out_pad))
    return ConvGeometry(nd, n, c_out_g * groups, c_in, int(groups), out_size, tuple(kernel),
                        stride_t, dilation_t, padding_t, pad_hi, tuple(in_size))


def conv_transpose(nd: int, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None,
                   stride: IntOrTuple, padding: IntOrTuple, output_padding: IntOrTuple,
                   groups: int, dilation: IntOrTuple) -> ArrayLike:
    """N-d transposed convolution (nd in 1, 2, 3); see conv_transpose2d."""
    dev = current_device()
    dtype = result_dtype(dev, input=input, weight=weight, bias=bias)
    require_gemm(f"conv_transpose{nd}d")
    x_shape = _shape(input)
    unbatched = len(x_shape) == nd + 1
    geo = transpose_geometry(nd, (1, *x_shape) if unbatched else x_shape, _shape(weight), stride,
                             padding, output_padding, groups, dilation)
    if bias is not None and _shape(bias) != (geo.in_channels,):
        raise ValueError(f"bias must have shape ({geo.in_channels},) (one per output channel), got "
                         f"{_shape(bias)}")
    check_precision(dev, dtype)
    work = compute_dtype(dtype)
    # geo is the forward convolution: its output is this op's input and the other way round
    shapes = {"input": geo.output_shape, "weight": geo.weight_shape, "output": geo.input_shape}
    for what, shape in shapes.items():
        check_fits(dev, what, shape, work)
    with device_memory_errors(dev, lambda: sizes_text(f"conv_transpose{nd}d", work, **shapes)):
        out = empty(dev, geo.input_shape, work)
        if out.size:
            y = load(dev, input, "input", dtype)
            w = load(dev, weight, "weight", dtype)
            b = None if bias is None else load(dev, bias, "bias", dtype)
            enqueue_adjoint(dev, geo, y, w, b, out)
        out = store(dev, out, dtype)
        return deliver(out[0] if unbatched else out, not is_device_array(input))


def enqueue_adjoint(dev: Device, geo: ConvGeometry, y: cla.Array, w: cla.Array,
                    b: cla.Array | None, out: cla.Array) -> None:
    """out (N, C_in, *in_size) = adjoint of the convolution `geo` applied to y (N, C_out,
    *out_size), plus b (C_in,) per channel: GEMM with the transposed filters, then col2im; non-zero
    padding modes fold the padded result back with `enqueue_pad_adjoint`. All operands contiguous,
    of one dtype.
    """
    if out.size == 0:
        return
    if geo.padding_mode != "zeros":
        # Adjoint of (pad, then convolve unpadded): the unpadded adjoint onto the padded grid,
        # then folded back.
        padded_geo = dataclasses.replace(geo, in_size=_padded_size(geo), pad_lo=(0,) * geo.nd,
                                         pad_hi=(0,) * geo.nd, padding_mode="zeros")
        padded = empty(dev, padded_geo.input_shape, out.dtype)
        enqueue_adjoint(dev, padded_geo, y, w, None, padded)
        with dev.lock:
            enqueue_pad_adjoint(dev, geo, padded, out)
            if b is not None:
                enqueue_bias(dev, out, b, geo.batch, geo.in_channels, geo.in_spatial)
        return
    m = geo.cin_per_group * geo.ksize  # rows of one group's column block
    k = geo.cout_per_group
    l = geo.out_spatial
    col_image = geo.column_rows * l
    y_image, out_image = geo.out_channels * l, geo.in_channels * geo.in_spatial
    y_off, w_off, out_off = element_offset(y), element_offset(w), element_offset(out)
    # A 1x1, stride-1, unpadded kernel makes col2im the identity: the GEMM writes the output itself.
    pointwise = geo.is_pointwise
    chunk = geo.batch if pointwise else max(
        1, min(geo.batch, default_workspace_limit(dev) // (col_image * out.dtype.itemsize)))
    defines = geo.defines()
    with dev.lock:
        for n0 in range(0, geo.batch, chunk):
            nb = min(chunk, geo.batch - n0)
            if pointwise:
                col, col_off = out, out_off + n0 * out_image
            else:
                col, col_off = column_buffer(dev, (nb * col_image,), out.dtype), 0
            y0 = y_off + n0 * y_image
            if geo.groups <= nb:
                # One batched GEMM per group; the filters are shared by the batch (A stride 0).
                for g in range(geo.groups):
                    gemm.gemm(dev, m, l, k, w, w_off + g * k * m, 0, y, y0 + g * k * l, y_image,
                              col, col_off + g * m * l, col_image, nb, a_transposed=True)
            else:
                # More groups than images: one batched GEMM per image, over the groups.
                for i in range(nb):
                    gemm.gemm(dev, m, l, k, w, w_off, k * m, y, y0 + i * y_image, k * l,
                              col, col_off + i * col_image, m * l, geo.groups, a_transposed=True)
            if not pointwise:
                enqueue_col2im(dev, defines, nb, col, col_off, out, out_off + n0 * out_image)
        if b is not None:
            enqueue_bias(dev, out, b, geo.batch, geo.in_channels, geo.in_spatial)


def _padded_size(geo: ConvGeometry) -> tuple[int, ...]:
    """The input's spatial size with the convolution's padding on both sides."""
    return tuple(i + lo + hi for i, lo, hi in zip(geo.in_size, geo.pad_lo, geo.pad_hi))


def enqueue_pad_adjoint(dev: Device, geo: ConvGeometry, padded: cla.Array, out: cla.Array) -> None:
    """out (N, C_in, *in_size) = the sum of padded (N, C_in, *(in + pad_lo + pad_hi)) onto the
    elements that `geo.padding_mode` reads each padded position from (cl/pad_adjoint.cl). Call
    holding dev.lock.
    """
    lift = 3 - geo.nd
    padded_size = (1,) * lift + _padded_size(geo)
    defines = geo.defines()
    defines.update(precision_defines(out.dtype), QD=padded_size[0], QH=padded_size[1],
                   QW=padded_size[2], INDEX_T=index_type(element_offset(padded) + padded.size,
                                                         element_offset(out) + out.size))
    depth, height, width = (1,) * lift + geo.in_size
    kernel(dev, "pad_adjoint.cl", "pad_adjoint", defines)(
        dev.queue, (width, height, geo.batch * geo.in_channels * depth), None, padded.base_data,
        np.int64(element_offset(padded)), out.base_data, np.int64(element_offset(out)))
