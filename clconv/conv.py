"""Convolutions: validate -> choose an algorithm -> enqueue.

Algorithms (same semantics, same results within rounding):
- 'im2col': the cl/im2col.cl kernel writes the column buffer, CLBlast's GEMM multiplies the filters
  (C_out/groups x C_in/groups*k) by it, one strided-batched call over the batch per group (or over the
  groups per image when there are more groups than images); 1x1 stride-1 unpadded convolutions use the
  input as the column buffer directly. Bias is added on the device afterwards.
- 'direct': cl/conv_direct.cl, one work-item per output element, bias fused.
- 'auto': see `choose_algorithm`.

The column buffer is bounded by `workspace_limit` bytes (default: `default_workspace_limit`): the
batch is processed in chunks, and an image whose columns alone exceed the limit in ranges of output
positions; results do not depend on the split.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
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

__all__ = ["ALGORITHMS", "ACTIVATIONS", "conv1d", "conv2d", "conv3d", "choose_algorithm",
           "workspace_size", "ColumnPlan", "plan_columns"]

ALGORITHMS = ("auto", "im2col", "direct")
ACTIVATIONS = (None, "relu")


def conv1d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None) -> ArrayLike:
    """1-d convolution: input (N, C_in, L) or (C_in, L), weight (C_out, C_in/groups, k) -> (N, C_out,
    L_out). Arguments as `conv2d`."""
    return convolution(1, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       algorithm, activation, workspace_limit)


def conv2d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None) -> ArrayLike:
    """2-d convolution (cross-correlation) with torch.nn.functional.conv2d's semantics.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in/groups, kh, kw); bias
    (C_out,) or None. stride, dilation: int or pair (>= 1); padding: int or pair (>= 0), 'valid' or
    'same' (stride 1; an odd total padding puts the extra element at the end, as PyTorch does).
    padding_mode: 'zeros' | 'reflect' | 'replicate' | 'circular' (as torch.nn.Conv2d's).
    algorithm: 'auto' | 'im2col' | 'direct'. activation: None or 'relu', fused into the last kernel.
    workspace_limit: bytes the column buffer may take (None: the device's default).
    numpy in -> numpy out; pyopencl Array in -> pyopencl Array out on the current device, nothing
    copied to the host. Returns (N, C_out, H_out, W_out).
    """
    return convolution(2, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       algorithm, activation, workspace_limit)


def conv3d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None) -> ArrayLike:
    """3-d convolution: input (N, C_in, D, H, W) or unbatched, weight (C_out, C_in/groups, kd, kh,
    kw) -> (N, C_out, D_out, H_out, W_out). Arguments as `conv2d`."""
    return convolution(3, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       algorithm, activation, workspace_limit)


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


@dataclass(frozen=True)
class ColumnPlan:
    """How the im2col path splits a call: `batch_chunk` images at a time and, within an image,
    `col_chunk` output positions at a time; `nbytes` is the column buffer that takes."""

    batch_chunk: int
    col_chunk: int
    nbytes: int


def plan_columns(geo: ConvGeometry, itemsize: int, limit: int) -> ColumnPlan:
    """The largest split of the column matrix whose buffer fits in `limit` bytes.

    Raises MemoryError when not even one column (C_in * prod(kernel) values) fits.
    """
    if geo.is_pointwise:  # the input is the column matrix: no buffer
        return ColumnPlan(max(geo.batch, 1), geo.out_spatial, 0)
    column = geo.column_rows * itemsize
    image = column * geo.out_spatial
    if image <= limit:
        nb = max(1, min(geo.batch, limit // image))
        return ColumnPlan(nb, geo.out_spatial, nb * image)
    if column > limit:
        raise MemoryError(f"workspace_limit={limit} bytes cannot hold even one column of the im2col "
                          f"matrix ({geo.column_rows} values = {column} bytes)")
    cols = limit // column
    return ColumnPlan(1, cols, cols * column)


def _limit(dev: Device, workspace_limit: int | None) -> int:
    if workspace_limit is None:
        return default_workspace_limit(dev)
    if isinstance(workspace_limit, bool) or not isinstance(workspace_limit, numbers.Integral):
        raise TypeError(f"workspace_limit must be an int number of bytes, got {workspace_limit!r}")
    if workspace_limit < 1:
        raise ValueError(f"workspace_limit must be positive, got {workspace_limit}")
    return int(workspace_limit)


def workspace_size(input: Any, weight: Any, stride: IntOrTuple = 1, padding: PaddingArg = 0,
                   dilation: IntOrTuple = 1, groups: int = 1, *, algorithm: str = "auto",
                   padding_mode: str = "zeros", dtype: Any = np.float32) -> int:
    """Bytes of column buffer a convolution needs unsplit (0 for the direct and 1x1 paths).

    input/weight: arrays or shapes ((N, C_in, *spatial), (C_out, C_in/groups, *kernel)); the
    dimensionality follows the weight. A call with a smaller `workspace_limit` splits to fit it.
    """
    def dims(v: Any) -> tuple[int, ...]:
        is_shape = isinstance(v, (tuple, list)) and all(isinstance(d, numbers.Integral) for d in v)
        return tuple(int(d) for d in v) if is_shape else _shape(v)

    x_shape, w_shape = dims(input), dims(weight)
    nd = len(w_shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"weight must have 3, 4 or 5 dims, got shape {w_shape}")
    if len(x_shape) == nd + 1:
        x_shape = (1, *x_shape)
    geo = conv_geometry(nd, x_shape, w_shape, stride, padding, dilation, groups, padding_mode)
    dt = np.dtype(getattr(input, "dtype", dtype))
    if choose_algorithm(current_device(), geo, algorithm) != "im2col" or geo.is_pointwise:
        return 0
    return geo.batch * geo.column_rows * geo.out_spatial * dt.itemsize


def _check_fits(dev: Device, what: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes > dev.max_alloc_bytes:
        raise MemoryError(f"the {what} {shape} of {dtype} needs {nbytes} bytes, more than device "
                          f"{dev.name!r} can allocate at once ({dev.max_alloc_bytes} bytes)")


def convolution(nd: int, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None,
                stride: IntOrTuple, padding: PaddingArg, dilation: IntOrTuple, groups: int,
                padding_mode: str, algorithm: str, activation: str | None = None,
                workspace_limit: int | None = None) -> ArrayLike:
    """N-d convolution (nd in 1, 2, 3); see conv2d."""
    dev = current_device()
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    limit = _limit(dev, workspace_limit)
    dtype = result_dtype(dev, input=input, weight=weight, bias=bias)
    x_shape = _shape(input)
    unbatched = len(x_shape) == nd + 1
    geo = conv_geometry(nd, (1, *x_shape) if unbatched else x_shape, _shape(weight), stride,
                        padding, dilation, groups, padding_mode)
    if bias is not None and _shape(bias) != (geo.out_channels,):
        raise ValueError(f"bias must have shape ({geo.out_channels},) (one per output channel), got "
                         f"{_shape(bias)}")
    algo = choose_algorithm(dev, geo, algorithm)
    for what, shape in (("output", geo.output_shape), ("input", geo.input_shape),
                        ("weight", geo.weight_shape)):
        _check_fits(dev, what, shape, dtype)
    plan = plan_columns(geo, dtype.itemsize, limit) if algo == "im2col" else None
    out = empty(dev, geo.output_shape, dtype)
    if out.size:
        x = to_device(input, dev, "input", dtype)
        w = to_device(weight, dev, "weight", dtype)
        b = None if bias is None else to_device(bias, dev, "bias", dtype)
        if plan is not None:
            run_im2col(dev, geo, plan, x, w, b, out, activation)
        else:
            run_direct(dev, geo, x, w, b, out, activation)
    return deliver(out[0] if unbatched else out, not is_device_array(input))


def run_direct(dev: Device, geo: ConvGeometry, x: cla.Array, w: cla.Array, b: cla.Array | None,
               out: cla.Array, activation: str | None = None) -> None:
    """Enqueues cl/conv_direct.cl for the whole batch (bias and activation fused)."""
    defines = geo.defines()
    defines.update(precision_defines(out.dtype), GROUPS=geo.groups, COUT=geo.out_channels,
                   INDEX_T=index_type(element_offset(x) + x.size, element_offset(out) + out.size))
    if b is not None:
        defines["HAS_BIAS"] = None
    if activation == "relu":
        defines["RELU"] = None
    od, oh, ow = (1,) * (3 - geo.nd) + geo.out_size
    bias_buf, bias_off = (b.base_data, element_offset(b)) if b is not None else (out.base_data, 0)
    with dev.lock:
        kernel(dev, "conv_direct.cl", "conv_direct", defines)(
            dev.queue, (ow, oh, geo.batch * geo.out_channels * od), None,
            x.base_data, np.int64(element_offset(x)), w.base_data, np.int64(element_offset(w)),
            bias_buf, np.int64(bias_off), out.base_data, np.int64(element_offset(out)))


def run_im2col(dev: Device, geo: ConvGeometry, plan: ColumnPlan, x: cla.Array, w: cla.Array,
               b: cla.Array | None, out: cla.Array, activation: str | None = None) -> None:
    """Enqueues im2col + GEMM (+ epilogue) for the whole batch, split as `plan` says."""
    m, k, l = geo.cout_per_group, geo.cin_per_group * geo.ksize, geo.out_spatial
    rows = geo.column_rows
    x_image, out_image = geo.in_channels * geo.in_spatial, geo.out_channels * l
    x_off, w_off, out_off = element_offset(x), element_offset(w), element_offset(out)
    defines = geo.defines()
    with dev.lock:
        for n0 in range(0, geo.batch, plan.batch_chunk):
            nb = min(plan.batch_chunk, geo.batch - n0)
            for l0 in range(0, l, plan.col_chunk):
                lc = min(plan.col_chunk, l - l0)
                if geo.is_pointwise:  # the input already is the column matrix (ld = l)
                    col, col_off, ldb = x, x_off + n0 * x_image + l0, l
                    col_image = x_image
                else:
                    col = column_buffer(dev, (nb * rows * lc,), out.dtype)
                    col_off, ldb, col_image = 0, lc, rows * lc
                    enqueue_im2col(dev, defines, nb, x, x_off + n0 * x_image, col, 0, l0, lc)
                c_off = out_off + n0 * out_image + l0
                if geo.groups <= nb:
                    # One batched GEMM per group; the filters are shared by the batch (A stride 0).
                    for g in range(geo.groups):
                        gemm.gemm(dev, m, lc, k, w, w_off + g * m * k, 0,
                                  col, col_off + g * k * ldb, col_image,
                                  out, c_off + g * m * l, out_image, nb, ldb=ldb, ldc=l)
                else:
                    # More groups than images: one batched GEMM per image, over the groups.
                    for i in range(nb):
                        gemm.gemm(dev, m, lc, k, w, w_off, m * k,
                                  col, col_off + i * col_image, k * ldb,
                                  out, c_off + i * out_image, m * l, geo.groups, ldb=ldb, ldc=l)
        if b is not None or activation is not None:
            enqueue_epilogue(dev, out, b, geo.batch, geo.out_channels, l, activation)


def enqueue_epilogue(dev: Device, out: cla.Array, b: cla.Array | None, batch: int, channels: int,
                     spatial: int, activation: str | None = None) -> None:
    """out[n, c, :] = act(out[n, c, :] + b[c]) on a (batch, channels, spatial) tensor, in place.
    Call holding dev.lock."""
    defines = precision_defines(out.dtype)
    defines.update(CHANNELS=channels, SPATIAL=spatial,
                   INDEX_T=index_type(element_offset(out) + out.size))
    if b is not None:
        defines["HAS_BIAS"] = None
    if activation == "relu":
        defines["RELU"] = None
    bias_buf, bias_off = (b.base_data, element_offset(b)) if b is not None else (out.base_data, 0)
    kernel(dev, "epilogue.cl", "epilogue", defines)(
        dev.queue, (spatial, channels, batch), None, out.base_data, np.int64(element_offset(out)),
        bias_buf, np.int64(bias_off))


def enqueue_bias(dev: Device, out: cla.Array, b: cla.Array, batch: int, channels: int,
                 spatial: int) -> None:
    """out[n, c, :] += b[c] (the epilogue without activation). Call holding dev.lock."""
    enqueue_epilogue(dev, out, b, batch, channels, spatial)
