"""Gradients of the convolutions, equal to torch.nn.grad's conv{1,2,3}d_input / conv{1,2,3}d_weight.

- conv*d_input: the gradient w.r.t. the input is the adjoint of the convolution applied to
  grad_output: GEMM with the transposed filters, then col2im (`transpose.enqueue_adjoint`, the same
  code as the transposed convolutions).
- conv*d_weight: im2col of the input, then per group grad_W_g += grad_out_g (C_out/g x L) @
  cols_g^T (L x C_in/g * K). CLBlast's batched GEMM writes one matrix per image, so the images'
  products land in a partial buffer (batch, C_out, C_in/g * K) and one more GEMM with a row of ones
  sums them (2 + groups GEMM calls per batch chunk instead of one per image and group). The columns
  and partials stay within `workspace_limit` (`plan_weight_grad`): batch chunks, else one image at a
  time straight into the weight, else ranges of an image's output positions, each range's product
  added to the weight (GEMM beta = 1).
- `enqueue_bias_grad`: the bias gradient (sum of grad_output over batch and space) the same way.

Beyond torch.nn.grad: a keyword `padding_mode` ('zeros' | 'reflect' | 'replicate' | 'circular') for
the gradients of convolutions with non-zero padding, and padding='same' / 'valid' as conv2d accepts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..blas import clblast as gemm
from ..runtime.transfer import (ArrayLike, check_fits, deliver, element_offset, empty, is_device_array,
                     result_dtype)
from .conv import ColumnPlan, require_gemm, resolve_workspace_limit
from ..runtime.device import Device, current_device
from ..runtime.errors import device_memory_errors, sizes_text
from .unfold import enqueue_im2col
from .geometry import ConvGeometry, IntOrTuple, PaddingArg, conv_geometry
from .precision import check_precision, compute_dtype, load, store
from .transpose import enqueue_adjoint
from ..runtime.memory import column_buffer, default_workspace_limit

__all__ = ["conv1d_input", "conv1d_weight", "conv2d_input", "conv2d_weight", "conv3d_input",
           "conv3d_weight", "conv_input", "conv_weight", "enqueue_bias_grad", "enqueue_weight_grad",
           "plan_weight_grad"]


def conv1d_input(input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                 stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                 groups: int = 1, *, padding_mode: str = "zeros") -> ArrayLike:
    """Gradient of conv1d w.r.t. its input (N, C_in, L); arguments as `conv2d_input`."""
    return conv_input(1, input_size, weight, grad_output, stride, padding, dilation, groups,
                      padding_mode)


def conv2d_input(input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                 stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                 groups: int = 1, *, padding_mode: str = "zeros") -> ArrayLike:
    """Gradient of conv2d w.r.t. its input, as torch.nn.grad.conv2d_input.

    input_size: the input's shape (N, C_in, H, W); weight (C_out, C_in/groups, kh, kw); grad_output
    (N, C_out, H_out, W_out), exactly the output shape of that convolution. Convolution arguments as
    `clconv.conv2d`. Returns (N, C_in, H, W): numpy for a numpy grad_output, else a pyopencl Array.
    """
    return conv_input(2, input_size, weight, grad_output, stride, padding, dilation, groups,
                      padding_mode)


def conv3d_input(input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                 stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                 groups: int = 1, *, padding_mode: str = "zeros") -> ArrayLike:
    """Gradient of conv3d w.r.t. its input (N, C_in, D, H, W); arguments as `conv2d_input`."""
    return conv_input(3, input_size, weight, grad_output, stride, padding, dilation, groups,
                      padding_mode)


def conv1d_weight(input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                  stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                  groups: int = 1, *, padding_mode: str = "zeros",
                  workspace_limit: int | None = None) -> ArrayLike:
    """Gradient of conv1d w.r.t. its weight (C_out, C_in/groups, k); as `conv2d_weight`."""
    return conv_weight(1, input, weight_size, grad_output, stride, padding, dilation, groups,
                       padding_mode, workspace_limit)


def conv2d_weight(input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                  stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                  groups: int = 1, *, padding_mode: str = "zeros",
                  workspace_limit: int | None = None) -> ArrayLike:
    """Gradient of conv2d w.r.t. its weight, as torch.nn.grad.conv2d_weight.

    input (N, C_in, H, W); weight_size: the weight's shape (C_out, C_in/groups, kh, kw); grad_output
    (N, C_out, H_out, W_out), exactly the output shape of that convolution. Summed over the batch
    (zeros for N = 0). workspace_limit: bytes the column buffer (and the per-image partial sums)
    may take, as for `clconv.conv2d` (None: the device's default; capped at its largest
    allocation); the work is split to fit, and a limit that cannot hold one column of the im2col
    matrix is a MemoryError. Returns weight_size: numpy for a numpy input, else a pyopencl Array.
    """
    return conv_weight(2, input, weight_size, grad_output, stride, padding, dilation, groups,
                       padding_mode, workspace_limit)


def conv3d_weight(input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                  stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                  groups: int = 1, *, padding_mode: str = "zeros",
                  workspace_limit: int | None = None) -> ArrayLike:
    """Gradient of conv3d w.r.t. its weight (C_out, C_in/groups, kd, kh, kw); as `conv2d_weight`."""
    return conv_weight(3, input, weight_size, grad_output, stride, padding, dilation, groups,
                       padding_mode, workspace_limit)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _size_arg(value: Any, nd: int, name: str, layout: str) -> tuple[int, ...]:
    """A shape argument (tuple, list or torch.Size of ints >= 0) with nd + 2 entries."""
    try:
        size = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints {layout}, got {value!r}") from None
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
               for v in size):
        raise TypeError(f"{name} must be a sequence of non-negative ints {layout}, got {value!r}")
    if len(size) != nd + 2:
        raise ValueError(f"{name} must have {nd + 2} entries {layout} for a {nd}-d convolution, "
                         f"got {size}")
    return tuple(int(v) for v in size)


def _check_grad_output(geo: ConvGeometry, grad_output: Any, what: str) -> None:
    shape = _shape(grad_output)
    if shape != geo.output_shape:
        raise ValueError(f"grad_output must have the convolution's output shape {geo.output_shape} "
                         f"(for {what}), got {shape}")


def conv_input(nd: int, input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
               stride: IntOrTuple, padding: PaddingArg, dilation: IntOrTuple, groups: int,
               padding_mode: str = "zeros") -> ArrayLike:
    """N-d input gradient (nd in 1, 2, 3); see conv2d_input."""
    dev = current_device()
    dtype = result_dtype(dev, weight=weight, grad_output=grad_output)
    size = _size_arg(input_size, nd, "input_size", "(N, C_in, *spatial)")
    require_gemm(f"conv{nd}d_input")
    w_shape = _shape(weight)
    if len(w_shape) == nd + 2 and isinstance(groups, int) and groups > 0 \
            and size[1] != w_shape[1] * groups:
        raise ValueError(f"input_size has {size[1]} channels but weight {w_shape} with "
                         f"groups={groups} expects {w_shape[1] * groups} (channel mismatch)")
    geo = conv_geometry(nd, size, w_shape, stride, padding, dilation, groups, padding_mode)
    _check_grad_output(geo, grad_output, f"input_size {size} and weight {w_shape}")
    check_precision(dev, dtype)
    work = compute_dtype(dtype)
    shapes = {"grad_output": geo.output_shape, "weight": geo.weight_shape,
              "output": geo.input_shape}
    for what, shape in shapes.items():
        check_fits(dev, what, shape, work)
    with device_memory_errors(dev, lambda: sizes_text(f"conv{nd}d_input", work, **shapes)):
        out = empty(dev, geo.input_shape, work)
        if out.size:
            w = load(dev, weight, "weight", dtype)
            g = load(dev, grad_output, "grad_output", dtype)
            enqueue_adjoint(dev, geo, g, w, None, out)
        return deliver(store(dev, out, dtype), not is_device_array(grad_output))


def conv_weight(nd: int, input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                stride: IntOrTuple, padding: PaddingArg, dilation: IntOrTuple, groups: int,
                padding_mode: str = "zeros", workspace_limit: int | None = None) -> ArrayLike:
    """N-d weight gradient (nd in 1, 2, 3); see conv2d_weight."""
    dev = current_device()
    limit = (default_workspace_limit(dev) if workspace_limit is None
             else resolve_workspace_limit(dev, workspace_limit))
    dtype = result_dtype(dev, input=input, grad_output=grad_output)
    size = _size_arg(weight_size, nd, "weight_size", "(C_out, C_in/groups, *kernel)")
    require_gemm(f"conv{nd}d_weight")
    x_shape = _shape(input)
    if len(x_shape) != nd + 2:
        raise ValueError(f"input must be batched, (N, C_in, *spatial) with {nd + 2} dims, for the "
                         f"weight gradient of a {nd}-d convolution, got shape {x_shape}")
    geo = conv_geometry(nd, x_shape, size, stride, padding, dilation, groups, padding_mode)
    _check_grad_output(geo, grad_output, f"input {x_shape} and weight_size {size}")
    check_precision(dev, dtype)
    work = compute_dtype(dtype)
    shapes = {"input": geo.input_shape, "grad_output": geo.output_shape, "output": size}
    for what, shape in shapes.items():
        check_fits(dev, what, shape, work)
    plan = plan_weight_grad(geo, work.itemsize, limit) if geo.batch else None
    with device_memory_errors(dev, lambda: sizes_text(f"conv{nd}d_weight", work,
                                                      plan.nbytes if plan else 0, **shapes)):
        out = empty(dev, size, work)
        if geo.batch == 0:
            with dev.lock:  # pyopencl's fill kernel is shared per context
                out.fill(0)
        elif out.size:
            x = load(dev, input, "input", dtype)
            g = load(dev, grad_output, "grad_output", dtype)
            enqueue_weight_grad(dev, geo, x, g, out, plan=plan)
        return deliver(store(dev, out, dtype), not is_device_array(input))


def _ones(dev: Device, n: int, dtype: np.dtype) -> cla.Array:
    """A device vector of at least n ones (grow-only, one per device and dtype). Hold dev.lock."""
    key = ("ones", np.dtype(dtype))
    ones = dev.cache.get(key)
    if ones is None or ones.size < n:
        ones = cla.empty(dev.queue, (max(n, 256),), dtype)
        ones.fill(1)
        dev.cache[key] = ones
    return ones


def plan_weight_grad(geo: ConvGeometry, itemsize: int, limit: int) -> ColumnPlan:
    """How `enqueue_weight_grad` splits its workspace to fit in `limit` bytes.

    `batch_chunk` images at a time when at least two fit with their columns and partial weights
    (nbytes = batch_chunk * (columns + weight)); else one image at a time, its product written
    straight into the weight (no partial: nbytes = its columns, 0 for a 1x1 convolution, whose
    columns are the input); else, within an image, `col_chunk` output positions at a time. Raises
    MemoryError, naming the sizes, when not even one column (C_in * prod(kernel) values) fits.
    """
    wsize = geo.out_channels * geo.cin_per_group * geo.ksize  # one partial weight
    columns = 0 if geo.is_pointwise else geo.column_rows * geo.out_spatial  # one image's
    per_image = (columns + wsize) * itemsize
    nb = min(geo.batch, limit // per_image)
    if nb >= 2:
        return ColumnPlan(nb, geo.out_spatial, nb * per_image)
    if columns * itemsize <= limit:
        return ColumnPlan(1, geo.out_spatial, columns * itemsize)
    column = geo.column_rows * itemsize
    if column > limit:
        raise MemoryError(f"workspace_limit={limit} bytes cannot hold even one column of the "
                          f"im2col matrix ({geo.column_rows} values = {column} bytes) of the "
                          f"weight gradient of input {geo.input_shape} (one image's columns: "
                          f"{columns * itemsize} bytes); raise workspace_limit")
    cols = limit // column
    return ColumnPlan(1, cols, cols * column)


def enqueue_weight_grad(dev: Device, geo: ConvGeometry, x: cla.Array, g: cla.Array,
                        out: cla.Array, limit: int | None = None,
                        plan: ColumnPlan | None = None) -> None:
    """out (C_out, C_in/groups, *kernel) = sum over the batch of grad_W for the convolution `geo`
    of x (N, C_in, *in_size) with output gradient g (N, C_out, *out_size). Contiguous operands of
    one dtype; needs geo.batch >= 1. The workspace stays within `limit` bytes (default: the
    device's), split as `plan` (default: `plan_weight_grad`) says; every product after the first
    adds to out (GEMM beta = 1)."""
    if plan is None:
        limit = default_workspace_limit(dev) if limit is None else limit
        plan = plan_weight_grad(geo, out.dtype.itemsize, limit)
    mg, kg, l = geo.cout_per_group, geo.cin_per_group * geo.ksize, geo.out_spatial
    wsize = geo.out_channels * kg  # elements of the weight (and of one image's partial)
    rows = geo.column_rows
    col_image = rows * l
    x_image, g_image = geo.in_channels * geo.in_spatial, geo.out_channels * l
    x_off, g_off, out_off = element_offset(x), element_offset(g), element_offset(out)
    pointwise = geo.is_pointwise  # the input already is the column matrix
    col_stride = x_image if pointwise else col_image
    per_image = (0 if pointwise else col_image) + wsize
    defines = geo.defines()
    with dev.lock:
        for n0 in range(0, geo.batch, plan.batch_chunk):
            nb = min(plan.batch_chunk, geo.batch - n0)
            g0 = g_off + n0 * g_image
            if nb == 1:
                # One image: each range of its output positions adds g_grp[:, l0:l0 + lc]
                # (lda = l) @ cols_grp^T to the weight, in one GEMM batched over the groups.
                for l0 in range(0, l, plan.col_chunk):
                    lc = min(plan.col_chunk, l - l0)
                    beta = 0.0 if n0 == 0 and l0 == 0 else 1.0
                    if pointwise:
                        col, col_off, ldb = x, x_off + n0 * x_image + l0, l
                    else:
                        col, col_off, ldb = column_buffer(dev, (rows * lc,), out.dtype), 0, lc
                        enqueue_im2col(dev, defines, 1, x, x_off + n0 * x_image, col, 0, l0, lc)
                    gemm.gemm(dev, mg, kg, lc, g, g0 + l0, mg * l, col, col_off, kg * ldb,
                              out, out_off, mg * kg, geo.groups, b_transposed=True, beta=beta,
                              lda=l, ldb=ldb)
                continue
            beta = 1.0 if n0 > 0 else 0.0
            work = column_buffer(dev, (nb * per_image,), out.dtype)
            if pointwise:
                col, col_off, part_off = x, x_off + n0 * x_image, 0
            else:
                col, col_off, part_off = work, 0, nb * col_image
                enqueue_im2col(dev, defines, nb, x, x_off + n0 * x_image, col, col_off)
            if geo.groups <= nb:
                for grp in range(geo.groups):  # batched over the images of the chunk
                    gemm.gemm(dev, mg, kg, l, g, g0 + grp * mg * l, g_image, col,
                              col_off + grp * kg * l, col_stride,
                              work, part_off + grp * mg * kg, wsize, nb, b_transposed=True)
            else:
                for i in range(nb):  # batched over the groups of one image
                    gemm.gemm(dev, mg, kg, l, g, g0 + i * g_image, mg * l, col,
                              col_off + i * col_stride, kg * l,
                              work, part_off + i * wsize, mg * kg, geo.groups, b_transposed=True)
            # out (1 x wsize) = ones (1 x nb) @ partials (nb x wsize)  (+ out after chunk 1)
            gemm.gemm(dev, 1, wsize, nb, _ones(dev, nb, out.dtype), 0, 0, work, part_off, 0, out,
                      out_off, 0, beta=beta)


def enqueue_bias_grad(dev: Device, g: cla.Array, out: cla.Array, batch: int, channels: int,
                      spatial: int) -> None:
    """out (channels,) = sum of g (batch, channels, spatial) over batch and space (zeros for an
    empty batch). Contiguous operands of one dtype."""
    if batch == 0 or spatial == 0:
        with dev.lock:  # pyopencl's fill kernel is shared per context
            out.fill(0)
        return
    g_off, out_off = element_offset(g), element_offset(out)
    with dev.lock:
        ones = _ones(dev, max(batch, spatial), out.dtype)
        if batch == 1:
            gemm.gemm(dev, channels, 1, spatial, g, g_off, 0, ones, 0, 0, out, out_off, 0)
            return
        # partials (batch, channels) = g_n (channels x spatial) @ ones (spatial), then summed.
        partial = column_buffer(dev, (batch * channels,), out.dtype)
        gemm.gemm(dev, channels, 1, spatial, g, g_off, channels * spatial, ones, 0, 0, partial, 0,
                  channels, batch)
        gemm.gemm(dev, 1, channels, batch, ones, 0, 0, partial, 0, 0, out, out_off, 0)
