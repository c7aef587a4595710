"""im2col / col2im: the column-buffer transforms, as kernel launches and as public ops.

`im2col(input, ...)` equals torch.nn.functional.unfold and `col2im(input, ...)` equals
torch.nn.functional.fold (2-d, as torch's). The 1-d and 3-d forms are separate functions,
`im2col1d`/`col2im1d` and `im2col3d`/`col2im3d` (the same layout, one or three spatial dims):
deciding the dimensionality from the arguments would be ambiguous (an int kernel_size fits every
nd).
`enqueue_im2col` / `enqueue_col2im` are the launches the GEMM paths use.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyopencl.array as cla

from ..runtime.transfer import (ArrayLike, check_fits, deliver, element_offset, empty, index_type,
                     is_device_array, result_dtype, to_device)
from ..runtime.device import Device, current_device
from ..runtime.errors import device_memory_errors, sizes_text
from .geometry import IntOrTuple, fold_geometry, unfold_geometry
from ..runtime.program import kernel, precision_defines

__all__ = ["im2col", "col2im", "im2col1d", "col2im1d", "im2col3d", "col2im3d", "unfold", "fold",
           "enqueue_im2col", "enqueue_col2im"]


def _defines(geometry: Mapping[str, object], dtype: np.dtype, *sizes: int) -> dict[str, object]:
    defines = dict(geometry)
    defines.update(precision_defines(dtype))
    defines["INDEX_T"] = index_type(*sizes)
    return defines


_RUN = 64  # elements each im2col work-item writes at least (when the window has that many)


def enqueue_im2col(dev: Device, geometry: Mapping[str, object], batch: int, x: cla.Array,
                   x_offset: int, col: cla.Array, col_offset: int, l_start: int = 0,
                   ncols: int | None = None, *, ld: int | None = None,
                   batch_stride: int | None = None) -> None:
    """Writes the columns of `batch` images (layout of cl/im2col.cl). Call holding dev.lock.

    geometry: the -D geometry (`ConvGeometry.defines()` or `UnfoldGeometry.defines()`); offsets in
    elements, pointing at the first image and the first column. Only the kernel positions
    [l_start, l_start + ncols) are written (default: all), as a (rows x ncols) matrix per image.
    ld / batch_stride (elements between rows / images; default ncols / rows * ncols) can lay the
    images side by side instead: ld=batch * ncols, batch_stride=ncols gives one
    (rows x batch * ncols) matrix, the batch folded into the GEMM's N.
    """
    rows = geometry["C"] * geometry["KD"] * geometry["KH"] * geometry["KW"]
    ow = geometry["OW"]
    geo_lines = geometry["OD"] * geometry["OH"]
    blocks = geo_lines * ow
    ncols = blocks - l_start if ncols is None else ncols
    if ncols <= 0 or batch <= 0 or rows <= 0:
        return
    ld = ncols if ld is None else ld
    batch_stride = rows * ncols if batch_stride is None else batch_stride
    end = col_offset + (batch - 1) * batch_stride + (rows - 1) * ld + ncols
    lines = (l_start + ncols - 1) // ow - l_start // ow + 1
    # Output lines per work-item, for runs of >= _RUN elements (a function of the geometry only,
    # so that every window of a split call shares one build).
    per_item = min(geo_lines, -(-_RUN // ow))
    # The kernel counts positions through l_start + ncols <= blocks and rows through rows * lines
    # (its NDRange) in idx_t: those decide INDEX_T too, not only the buffers (a column range of a
    # huge padded image can fit a small buffer).
    defines = _defines(geometry, x.dtype, x_offset + x.size, end, blocks, rows * lines)
    defines["LINES_PER_ITEM"] = per_item
    kernel(dev, "im2col.cl", "im2col", defines)(
        dev.queue, (rows * -(-lines // per_item), batch), None, x.base_data, np.int64(x_offset),
        col.base_data, np.int64(col_offset), np.int64(l_start), np.int64(ncols), np.int64(ld),
        np.int64(batch_stride))


def enqueue_col2im(dev: Device, geometry: Mapping[str, object], batch: int, col: cla.Array,
                   col_offset: int, x: cla.Array, x_offset: int) -> None:
    """Sums `batch` images' columns back into images (layout of cl/col2im.cl). Call holding dev.lock."""
    depth, height, width = geometry["ID"], geometry["IH"], geometry["IW"]
    defines = _defines(geometry, x.dtype, col_offset + col.size, x_offset + x.size)
    kernel(dev, "col2im.cl", "col2im", defines)(
        dev.queue, (width, height, batch * geometry["C"] * depth), None, col.base_data,
        np.int64(col_offset), x.base_data, np.int64(x_offset))


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


_DIMS = {1: "L", 2: "H, W", 3: "D, H, W"}
_KERNEL = {1: "k", 2: "kh*kw", 3: "kd*kh*kw"}


def unfold(nd: int, input: ArrayLike, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
           padding: IntOrTuple = 0, stride: IntOrTuple = 1) -> ArrayLike:
    """N-d im2col (nd in 1, 2, 3): (N, C, *spatial) -> (N, C*prod(kernel), L), or unbatched
    (C, *spatial) -> (C*prod(kernel), L); L is the number of kernel positions. Zero padding."""
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    shape = _shape(input)
    name = "im2col" if nd == 2 else f"im2col{nd}d"
    if len(shape) not in (nd + 1, nd + 2):
        raise ValueError(f"input must be {nd + 1}-d (C, {_DIMS[nd]}) or {nd + 2}-d (N, C, "
                         f"{_DIMS[nd]}) for {name}, got shape {shape}")
    unbatched = len(shape) == nd + 1
    n, c, *size = (1, *shape) if unbatched else shape
    geo = unfold_geometry(nd, c, size, kernel_size, dilation, padding, stride)
    out_shape = (n, c * geo.ksize, geo.blocks)
    check_fits(dev, "output", out_shape, dtype)
    with device_memory_errors(dev, lambda: sizes_text(name, dtype, input=(n, c, *size),
                                                      output=out_shape)):
        out = empty(dev, out_shape, dtype)
        if out.size:
            x = to_device(input, dev, "input", dtype)
            with dev.lock:
                enqueue_im2col(dev, geo.defines(), n, x, element_offset(x), out,
                               element_offset(out))
        return deliver(out[0] if unbatched else out, not is_device_array(input))


def fold(nd: int, input: ArrayLike, output_size: IntOrTuple, kernel_size: IntOrTuple,
         dilation: IntOrTuple = 1, padding: IntOrTuple = 0, stride: IntOrTuple = 1) -> ArrayLike:
    """N-d col2im (nd in 1, 2, 3): (N, C*prod(kernel), L) -> (N, C, *output_size), or unbatched
    (C*prod(kernel), L) -> (C, *output_size), summing the overlapping entries."""
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    shape = _shape(input)
    name = "col2im" if nd == 2 else f"col2im{nd}d"
    if len(shape) not in (2, 3):
        raise ValueError(f"input must be 2-d (C*{_KERNEL[nd]}, L) or 3-d (N, C*{_KERNEL[nd]}, L) "
                         f"for {name}, got shape {shape}")
    unbatched = len(shape) == 2
    n, rows, blocks = (1, *shape) if unbatched else shape
    geo = fold_geometry(nd, rows, blocks, output_size, kernel_size, dilation, padding, stride)
    out_shape = (n, geo.channels, *geo.in_size)
    check_fits(dev, "output", out_shape, dtype)
    with device_memory_errors(dev, lambda: sizes_text(name, dtype, input=(n, rows, blocks),
                                                      output=out_shape)):
        out = empty(dev, out_shape, dtype)
        if out.size:
            cols = to_device(input, dev, "input", dtype)
            with dev.lock:
                enqueue_col2im(dev, geo.defines(), n, cols, element_offset(cols), out,
                               element_offset(out))
        return deliver(out[0] if unbatched else out, not is_device_array(input))


def im2col(input: ArrayLike, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
           padding: IntOrTuple = 0, stride: IntOrTuple = 1) -> ArrayLike:
    """Unfolds (N, C, H, W) -> (N, C*kh*kw, L), or unbatched (C, H, W) -> (C*kh*kw, L), exactly as
    torch.nn.functional.unfold; L is the number of kernel positions. Zero padding."""
    return unfold(2, input, kernel_size, dilation, padding, stride)


def col2im(input: ArrayLike, output_size: IntOrTuple, kernel_size: IntOrTuple,
           dilation: IntOrTuple = 1, padding: IntOrTuple = 0, stride: IntOrTuple = 1) -> ArrayLike:
    """Folds (N, C*kh*kw, L) -> (N, C, H, W), or unbatched (C*kh*kw, L) -> (C, H, W), summing the
    overlapping entries, exactly as torch.nn.functional.fold; (H, W) = output_size."""
    return fold(2, input, output_size, kernel_size, dilation, padding, stride)


def im2col1d(input: ArrayLike, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
             padding: IntOrTuple = 0, stride: IntOrTuple = 1) -> ArrayLike:
    """1-d im2col: (N, C, L_in) -> (N, C*k, L), or unbatched (C, L_in) -> (C*k, L). Row c*k + i
    holds x[c, l*stride + i*dilation - padding] (zero outside)."""
    return unfold(1, input, kernel_size, dilation, padding, stride)


def col2im1d(input: ArrayLike, output_size: IntOrTuple, kernel_size: IntOrTuple,
             dilation: IntOrTuple = 1, padding: IntOrTuple = 0,
             stride: IntOrTuple = 1) -> ArrayLike:
    """1-d col2im, the adjoint of im2col1d: (N, C*k, L) -> (N, C, output_size), or unbatched."""
    return fold(1, input, output_size, kernel_size, dilation, padding, stride)


def im2col3d(input: ArrayLike, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
             padding: IntOrTuple = 0, stride: IntOrTuple = 1) -> ArrayLike:
    """3-d im2col: (N, C, D, H, W) -> (N, C*kd*kh*kw, L), or unbatched (C, D, H, W); rows ordered
    channel, then kernel offsets (kd, kh, kw) row-major; columns the positions (od, oh, ow)."""
    return unfold(3, input, kernel_size, dilation, padding, stride)


def col2im3d(input: ArrayLike, output_size: IntOrTuple, kernel_size: IntOrTuple,
             dilation: IntOrTuple = 1, padding: IntOrTuple = 0,
             stride: IntOrTuple = 1) -> ArrayLike:
    """3-d col2im, the adjoint of im2col3d: (N, C*kd*kh*kw, L) -> (N, C, D, H, W), or unbatched."""
    return fold(3, input, output_size, kernel_size, dilation, padding, stride)
