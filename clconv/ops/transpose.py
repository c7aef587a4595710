"""Transposed convolutions, and the GEMM -> col2im adjoint they share with the input gradients.

A transposed convolution is the adjoint of a forward convolution: the forward one maps the
transposed op's *output* grid to its *input* grid. Both are described by the forward convolution's
`ConvGeometry` (`in_size` = the transposed output size, `out_size` = the transposed input size), so
one configured routine, `Adjoint`, computes conv_transpose*d and conv*d_input:

    for each image and group g:
        cols_g (C_in/g * K, L) = W_g^T (C_in/g * K, C_out/g) @ y_g (C_out/g, L)
    col2im(cols) sums every column entry into the image position it came from (+ bias)

with W_g the forward weight of group g as a (C_out/g, C_in/g * K) matrix. The weight layout of a
transposed convolution, (C_in, C_out/groups, *k), is exactly that forward weight. The column
buffer stays within the workspace limit: chunks of images, else ranges of one image's columns
(col2im then adds each range's sums to the output).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..blas import clblast
from ..blas.engine import gemm_engine
from ..runtime.device import Device, current_device
from ..runtime.memory import column_buffer, empty, resolve_workspace_limit
from ..runtime.transfer import ArrayLike, element_offset, index_type, result_dtype
from .activation import Activation, ActivationArg, normalize_activation
from .dims import per_dimensions
from .geometry import (ConvGeometry, IntOrTuple, as_tuple, check_ranks_and_groups,
                       conv_operand_shapes)
from .adjoint_paths import adjoint_route, phase_col2im
from .launch import Col2im, Epilogue, PadAdjoint
from .precision import plan_dtype
from .plan import Plan, bias_flag, cached_plan, shape_ints, shape_of

__all__ = ["Adjoint", "TransposePlan", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "plan_conv_transpose", "plan_conv_transpose1d", "plan_conv_transpose2d",
           "plan_conv_transpose3d", "transpose_geometry", "transpose_output_size"]


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
    # (torch checks it only for a non-empty batch: batch 0 gives the padded output's shape)
    if n and any(op >= s and op >= d for op, s, d in zip(out_pad, stride_t, dilation_t)):
        raise ValueError(f"output_padding {out_pad} must be smaller than either stride {stride_t} "
                         f"or dilation {dilation_t} in every dim")
    out_size = transpose_output_size(in_size, kernel, stride_t, padding_t, out_pad, dilation_t)
    if any(o < 0 for o in out_size):  # (an output of extent 0 is empty, as torch's)
        raise ValueError(f"input of spatial size {tuple(in_size)} with kernel {tuple(kernel)}, "
                         f"stride {stride_t}, padding {padding_t}, dilation {dilation_t} and "
                         f"output_padding {out_pad} gives output size {out_size}: too small "
                         f"(reduce padding)")
    # The forward convolution runs over the transposed output, padded by `padding` in front; its
    # trailing padding is what makes its output exactly `in_size` (negative: a cropped tail).
    pad_hi = tuple(p - op for p, op in zip(padding_t, out_pad))
    return ConvGeometry(nd, n, c_out_g * groups, c_in, int(groups), out_size, tuple(kernel),
                        stride_t, dilation_t, padding_t, pad_hi, tuple(in_size))


def _transpose(nd: int, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
               stride: IntOrTuple = 1, padding: IntOrTuple = 0, output_padding: IntOrTuple = 0,
               groups: int = 1, dilation: IntOrTuple = 1, *, activation: ActivationArg = None,
               residual: ArrayLike | None = None, workspace_limit: int | None = None,
               out: ArrayLike | None = None) -> ArrayLike:
    """conv_transpose{nd}d (the template of the public functions at the end of the module)."""
    dev = current_device()
    extra = {} if residual is None else {"residual": residual}
    dtype = result_dtype(dev, input=input, weight=weight, bias=bias, **extra)
    x_shape, w_shape = shape_of(input), shape_of(weight)
    b_shape = None if bias is None else shape_of(bias)
    r_shape = None if residual is None else shape_of(residual)
    plan = cached_plan(dev, ("transpose", nd, x_shape, w_shape, b_shape, dtype, stride, padding,
                             output_padding, groups, dilation, workspace_limit, activation,
                             r_shape),
                       lambda: TransposePlan(dev, nd, x_shape, w_shape, b_shape, stride, padding,
                                             output_padding, groups, dilation, dtype,
                                             workspace_limit, activation=activation,
                                             residual_shape=r_shape))
    return plan.execute({"input": input, "weight": weight, "bias": bias, "residual": residual},
                        out, check=False)


def plan_conv_transpose(nd: int, input_shape: Sequence[int], weight_shape: Sequence[int],
                        bias: bool = True, stride: IntOrTuple = 1, padding: IntOrTuple = 0,
                        output_padding: IntOrTuple = 0, groups: int = 1,
                        dilation: IntOrTuple = 1, *, activation: ActivationArg = None,
                        residual: bool = False, workspace_limit: int | None = None,
                        dtype: Any = np.float32) -> TransposePlan:
    """A plan for an nd-d transposed convolution on the current device; see `plan_conv_transpose2d`."""
    x_shape = shape_ints(input_shape, "input_shape")
    w_shape = shape_ints(weight_shape, "weight_shape")
    c_out = w_shape[1] * groups if len(w_shape) > 1 and isinstance(groups, int) else None
    b_shape = (c_out,) if bias_flag(bias, c_out) else None
    if not isinstance(residual, (bool, np.bool_)):
        raise TypeError(f"residual must be a bool (whether calls pass one), got {residual!r}")
    r_shape = None
    if residual:  # the output's shape (unbatched when the input is)
        unbatched = len(x_shape) == nd + 1
        geo = transpose_geometry(nd, (1, *x_shape) if unbatched else x_shape, w_shape, stride,
                                 padding, output_padding, groups, dilation)
        r_shape = geo.input_shape[1:] if unbatched else geo.input_shape
    return TransposePlan(current_device(), nd, x_shape, w_shape, b_shape, stride, padding,
                         output_padding, groups, dilation, plan_dtype(dtype), workspace_limit,
                         activation=activation, residual_shape=r_shape)


class TransposePlan(Plan):
    """A transposed convolution, planned (see clconv.ops.plan). `geometry` is the forward
    convolution it is the adjoint of."""

    # The residual has the output's shape: its first dim is the batch too (sibling plans).
    _BATCH_ARGS = tuple(getattr(Plan, "_BATCH_ARGS", ())) + ("residual_shape",)
    _BATCH_OPERANDS = tuple(getattr(Plan, "_BATCH_OPERANDS", ())) + ("residual",)

    def __init__(self, dev: Device, nd: int, input_shape: tuple[int, ...],
                 weight_shape: tuple[int, ...], bias_shape: tuple[int, ...] | None,
                 stride: IntOrTuple, padding: IntOrTuple, output_padding: IntOrTuple,
                 groups: int, dilation: IntOrTuple, dtype: np.dtype,
                 workspace_limit: int | None = None, *, activation: ActivationArg = None,
                 residual_shape: tuple[int, ...] | None = None) -> None:
        act = normalize_activation(activation)
        if gemm_engine(dev) is clblast:
            clblast.require(f"conv_transpose{nd}d")
        limit = resolve_workspace_limit(dev, workspace_limit)
        unbatched = len(input_shape) == nd + 1
        batch_shape = (1, *input_shape) if unbatched else tuple(input_shape)
        geo = transpose_geometry(nd, batch_shape, weight_shape, stride, padding, output_padding,
                                 groups, dilation)
        # geo is the forward convolution: its output is this op's input and the other way round
        out_shape = geo.input_shape[1:] if unbatched else geo.input_shape
        operands = conv_operand_shapes(input_shape, weight_shape, bias_shape, residual_shape,
                                       geo.in_channels, out_shape)
        self._prepare(dev, dtype, operands, out_shape, geo.input_shape,
                      {"input": geo.output_shape, "weight": geo.weight_shape,
                       "output": geo.input_shape})
        self.geometry = geo
        self.has_bias = bias_shape is not None
        self.has_residual = residual_shape is not None
        self.activation = activation
        self.act: Activation | None = act
        self.adjoint = Adjoint(dev, geo, self.work, self.has_bias, limit, act, self.has_residual)
        self.workspace_bytes = self.adjoint.workspace_bytes
        self.label = f"conv_transpose{nd}d"
        self.needs_gemm = self.adjoint.gemm is clblast

    def __call__(self, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
                 residual: ArrayLike | None = None, out: ArrayLike | None = None) -> ArrayLike:
        """act(conv_transpose(input, weight) + bias + residual) (residual: exactly when the plan
        was made with one)."""
        if bias is None and self.has_bias:
            from .conv import zero_bias
            bias = zero_bias(self.device, self.geometry.in_channels, self.dtype, weight)
        return self.execute({"input": input, "weight": weight, "bias": bias,
                             "residual": residual}, out)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        r = arrays.get("residual")
        if r is not None:
            from .conv import unaliased
            r = unaliased(self.device, r, out)
        self.adjoint.run(arrays["input"], arrays["weight"], arrays["bias"], out, r)


def _padded_size(geo: ConvGeometry) -> tuple[int, ...]:
    """The input's spatial size with the convolution's padding on both sides."""
    return tuple(i + lo + hi for i, lo, hi in zip(geo.in_size, geo.pad_lo, geo.pad_hi))


class Adjoint:
    """out (N, C_in, *in_size) = adjoint of the convolution `geo` applied to y (N, C_out,
    *out_size), plus b (C_in,) per channel (+ a residual of out's shape, then the activation): GEMM with the transposed filters, then col2im; non-zero
    padding modes fold the padded result back (cl/pad_adjoint.cl). Configured once; `run` enqueues
    on contiguous device arrays of one dtype. MemoryError when not even one column fits `limit`."""

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 limit: int, activation: ActivationArg = None,
                 has_residual: bool = False) -> None:
        self.dev, self.geo, self.dtype = dev, geo, np.dtype(dtype)
        self.gemm = gemm_engine(dev)
        itemsize = self.dtype.itemsize
        self.padded: Adjoint | None = None
        self.pad_adjoint: PadAdjoint | None = None
        # A path without col2im (the forward machinery for stride 1, a depthwise kernel), if any.
        self.route = adjoint_route(dev, geo, self.dtype, has_bias, limit, activation,
                                   has_residual)
        if self.route is not None:
            self.workspace_bytes = self.route.workspace_bytes
            return
        if geo.padding_mode != "zeros":
            # Adjoint of (pad, then convolve unpadded): the unpadded adjoint onto the padded grid,
            # then folded back.
            padded_geo = dataclasses.replace(geo, in_size=_padded_size(geo), pad_lo=(0,) * geo.nd,
                                             pad_hi=(0,) * geo.nd, padding_mode="zeros")
            self.padded = Adjoint(dev, padded_geo, dtype, False, limit)
            self.padded_shape = padded_geo.input_shape
            self.workspace_bytes = self.padded.workspace_bytes
            index_t = index_type(geo.batch * geo.in_channels * padded_geo.in_spatial,
                                 geo.batch * geo.in_channels * geo.in_spatial)
            self.pad_adjoint = PadAdjoint(dev, geo, dtype, index_t)
        else:
            self.pointwise = geo.is_pointwise  # col2im is the identity: the GEMM writes the output
            col_image = geo.column_rows * geo.out_spatial
            if self.pointwise:
                self.batch_chunk, self.col_chunk = geo.batch, geo.out_spatial
            elif col_image * itemsize <= limit:
                self.batch_chunk = max(1, min(geo.batch, limit // (col_image * itemsize)))
                self.col_chunk = geo.out_spatial
            else:
                column = geo.column_rows * itemsize
                if column > limit:
                    raise MemoryError(f"workspace_limit={limit} bytes cannot hold even one column of "
                                      f"the im2col matrix ({geo.column_rows} values = {column} "
                                      f"bytes) of this adjoint (input {geo.output_shape})")
                self.batch_chunk, self.col_chunk = 1, limit // column
            self.workspace_bytes = (0 if self.pointwise else
                                    self.batch_chunk * geo.column_rows * self.col_chunk * itemsize)
            index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                                 geo.batch * geo.out_channels * geo.out_spatial,
                                 self.workspace_bytes // itemsize,
                                 geo.out_channels * geo.cin_per_group * geo.ksize)
            self.col2im = None if self.pointwise else Col2im(dev, geo.defines(), dtype, index_t)
            if self.col2im is not None and self.col_chunk == geo.out_spatial:
                # Whole images' columns: the phase-wise gather (clconv.ops.adjoint_paths).
                self.col2im = phase_col2im(dev, geo, self.dtype, index_t) or self.col2im
        # Bias, residual and activation: one pass over the output once col2im has summed it
        # (col2im may add a range of columns at a time).
        tail = has_bias or has_residual or normalize_activation(activation) is not None
        self.epilogue = (Epilogue(dev, dtype, index_type(geo.batch * geo.in_channels *
                                                         geo.in_spatial), has_bias, activation,
                                  has_residual) if tail else None)

    def run(self, y: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None = None) -> None:
        geo, dev = self.geo, self.dev
        if out.size == 0:
            return
        if self.route is not None:
            self.route.run(y, w, b, out, residual)
            return
        if self.padded is not None:
            padded = empty(dev, self.padded_shape, out.dtype)
            self.padded.run(y, w, None, padded)
            with dev.lock:
                self.pad_adjoint(geo.batch, padded, element_offset(padded), out,
                                 element_offset(out))
                if self.epilogue is not None:
                    self.epilogue(out, element_offset(out), b, geo.batch, geo.in_channels,
                                  geo.in_spatial, residual)
            return
        m = geo.cin_per_group * geo.ksize  # rows of one group's column block
        k = geo.cout_per_group
        l = geo.out_spatial
        y_image, out_image = geo.out_channels * l, geo.in_channels * geo.in_spatial
        y_off, w_off, out_off = element_offset(y), element_offset(w), element_offset(out)
        with dev.lock:
            for n0 in range(0, geo.batch, self.batch_chunk):
                nb = min(self.batch_chunk, geo.batch - n0)
                y0 = y_off + n0 * y_image
                for l0 in range(0, l, self.col_chunk):
                    lc = min(self.col_chunk, l - l0)
                    col_image = geo.column_rows * lc
                    if self.pointwise:
                        col, col_off = out, out_off + n0 * out_image
                    else:
                        col, col_off = column_buffer(dev, (nb * col_image,), out.dtype), 0
                    if geo.groups <= nb:
                        # One batched GEMM per group; the filters are shared by the batch.
                        for g in range(geo.groups):
                            self.gemm.gemm(dev, m, lc, k, w, w_off + g * k * m, 0,
                                      y, y0 + g * k * l + l0, y_image,
                                      col, col_off + g * m * lc, col_image, nb,
                                      a_transposed=True, ldb=l)
                    else:
                        # More groups than images: one batched GEMM per image, over the groups.
                        for i in range(nb):
                            self.gemm.gemm(dev, m, lc, k, w, w_off, k * m, y,
                                           y0 + i * y_image + l0,
                                      k * l, col, col_off + i * col_image, m * lc, geo.groups,
                                      a_transposed=True, ldb=l)
                    if not self.pointwise:
                        self.col2im(nb, col, col_off, out, out_off + n0 * out_image, l0, lc,
                                    accumulate=l0 > 0)
            if self.epilogue is not None:
                self.epilogue(out, out_off, b, geo.batch, geo.in_channels, geo.in_spatial,
                              residual)


# The public per-dimension functions (clconv.ops.dims): one template each, nd bound.

conv_transpose1d, conv_transpose2d, conv_transpose3d = per_dimensions(
    _transpose, ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
    ("""1-d transposed convolution: input (N, C_in, L) or (C_in, L), weight (C_in, C_out/groups, k)
    -> (N, C_out, L_out). Arguments as `conv_transpose2d`.""",
     """2-d transposed convolution with torch.nn.functional.conv_transpose2d's semantics.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_in, C_out/groups, kh, kw); bias
    (C_out,) or None. stride, dilation: int or pair (>= 1); padding: int or pair (>= 0), the zero
    padding of the forward convolution this is the adjoint of (it crops the output); output_padding:
    int or pair, extra size added on the trailing side, smaller than the stride or the dilation.
    activation, residual: as conv2d's (y = act(conv_transpose(x) + bias + residual), residual of
    the output's shape), applied in one pass over the output after col2im.
    workspace_limit: bytes of column buffer (as conv2d's; the work is split to fit); out: an array
    to write the result into (as conv2d's).
    Output size per dim: (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1.
    numpy in -> numpy out; pyopencl Array in -> pyopencl Array out on the current device.
    Returns (N, C_out, H_out, W_out).
    """,
     """3-d transposed convolution: input (N, C_in, D, H, W) or unbatched, weight (C_in,
    C_out/groups, kd, kh, kw) -> (N, C_out, D_out, H_out, W_out). Arguments as
    `conv_transpose2d`."""),
    batched=("input", "residual"))

plan_conv_transpose1d, plan_conv_transpose2d, plan_conv_transpose3d = per_dimensions(
    plan_conv_transpose,
    ("plan_conv_transpose1d", "plan_conv_transpose2d", "plan_conv_transpose3d"),
    ("""A plan for `conv_transpose1d`; see `plan_conv_transpose2d`.""",
     """A plan for `conv_transpose2d` on the current device, made once; `plan(x, weight, bias=None,
    out=None)` then only enqueues. input_shape (N, C_in, H, W) or unbatched, weight_shape (C_in,
    C_out/groups, kh, kw); bias: whether calls pass one (a plan with one also runs with None);
    then stride, padding, output_padding, groups, dilation as `conv_transpose2d`, and keywords
    activation (as conv_transpose2d's), residual (whether calls pass one: `plan(x, weight, bias,
    residual=r)`), workspace_limit (bytes of column buffer; the work is split to fit) and dtype.""",
     """A plan for `conv_transpose3d`; see `plan_conv_transpose2d`."""))
