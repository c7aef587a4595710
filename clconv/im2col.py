"""im2col / col2im: the column-buffer transforms, as kernel launches and as public ops.

`im2col(input, ...)` equals torch.nn.functional.unfold and `col2im(input, ...)` equals
torch.nn.functional.fold; `enqueue_im2col` / `enqueue_col2im` are the launches the GEMM paths use.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyopencl.array as cla

from .arrays import (ArrayLike, deliver, element_offset, empty, index_type, is_device_array,
                     result_dtype, to_device)
from .device import Device, current_device
from .params import IntOrTuple, fold_geometry, unfold_geometry
from .program import kernel, precision_defines

__all__ = ["im2col", "col2im", "enqueue_im2col", "enqueue_col2im"]


def _defines(geometry: Mapping[str, object], dtype: np.dtype, *sizes: int) -> dict[str, object]:
    defines = dict(geometry)
    defines.update(precision_defines(dtype))
    defines["INDEX_T"] = index_type(*sizes)
    return defines


def enqueue_im2col(dev: Device, geometry: Mapping[str, object], batch: int, x: cla.Array,
                   x_offset: int, col: cla.Array, col_offset: int, l_start: int = 0,
                   ncols: int | None = None) -> None:
    """Writes the columns of `batch` images (layout of cl/im2col.cl). Call holding dev.lock.

    geometry: the -D geometry (`ConvGeometry.defines()` or `UnfoldGeometry.defines()`); offsets in
    elements, pointing at the first image and the first column. Only the kernel positions
    [l_start, l_start + ncols) are written (default: all), as a (rows x ncols) matrix per image.
    """
    rows = geometry["C"] * geometry["KD"] * geometry["KH"] * geometry["KW"]
    blocks = geometry["OD"] * geometry["OH"] * geometry["OW"]
    ncols = blocks - l_start if ncols is None else ncols
    defines = _defines(geometry, x.dtype, x_offset + x.size, col_offset + batch * rows * ncols)
    kernel(dev, "im2col.cl", "im2col", defines)(
        dev.queue, (ncols, rows, batch), None, x.base_data, np.int64(x_offset), col.base_data,
        np.int64(col_offset), np.int32(l_start), np.int32(ncols))


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


def im2col(input: ArrayLike, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
           padding: IntOrTuple = 0, stride: IntOrTuple = 1) -> ArrayLike:
    """Unfolds (N, C, H, W) -> (N, C*kh*kw, L), or unbatched (C, H, W) -> (C*kh*kw, L), exactly as
    torch.nn.functional.unfold; L is the number of kernel positions. Zero padding."""
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    shape = _shape(input)
    if len(shape) not in (3, 4):
        raise ValueError(f"input must be 3-d (C, H, W) or 4-d (N, C, H, W) for im2col, got shape "
                         f"{shape}")
    unbatched = len(shape) == 3
    n, c, *size = (1, *shape) if unbatched else shape
    geo = unfold_geometry(2, c, size, kernel_size, dilation, padding, stride)
    out = empty(dev, (n, c * geo.ksize, geo.blocks), dtype)
    if out.size:
        x = to_device(input, dev, "input", dtype)
        with dev.lock:
            enqueue_im2col(dev, geo.defines(), n, x, element_offset(x), out, element_offset(out))
    return deliver(out[0] if unbatched else out, not is_device_array(input))


def col2im(input: ArrayLike, output_size: IntOrTuple, kernel_size: IntOrTuple,
           dilation: IntOrTuple = 1, padding: IntOrTuple = 0, stride: IntOrTuple = 1) -> ArrayLike:
    """Folds (N, C*kh*kw, L) -> (N, C, H, W), or unbatched (C*kh*kw, L) -> (C, H, W), summing the
    overlapping entries, exactly as torch.nn.functional.fold; (H, W) = output_size."""
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    shape = _shape(input)
    if len(shape) not in (2, 3):
        raise ValueError(f"input must be 2-d (C*kh*kw, L) or 3-d (N, C*kh*kw, L) for col2im, got "
                         f"shape {shape}")
    unbatched = len(shape) == 2
    n, rows, blocks = (1, *shape) if unbatched else shape
    geo = fold_geometry(2, rows, blocks, output_size, kernel_size, dilation, padding, stride)
    out = empty(dev, (n, geo.channels, *geo.in_size), dtype)
    if out.size:
        cols = to_device(input, dev, "input", dtype)
        with dev.lock:
            enqueue_col2im(dev, geo.defines(), n, cols, element_offset(cols), out,
                           element_offset(out))
    return deliver(out[0] if unbatched else out, not is_device_array(input))
