"""im2col / col2im: the column-buffer transforms, as kernel launches and as public ops.

`im2col(input, ...)` equals torch.nn.functional.unfold and `col2im(input, ...)` equals
torch.nn.functional.fold (2-d, as torch's). The 1-d and 3-d forms are separate functions,
`im2col1d`/`col2im1d` and `im2col3d`/`col2im3d` (the same layout, one or three spatial dims):
deciding the dimensionality from the arguments would be ambiguous (an int kernel_size fits every
nd).
`enqueue_im2col` is one im2col launch for the layout tests; the GEMM paths keep
`launch.Im2col` / `launch.Col2im` in their plans.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl.array as cla

from ..runtime.device import Device, current_device
from ..runtime.transfer import ArrayLike, element_offset, index_type, result_dtype
from .dims import per_dimensions
from .geometry import IntOrTuple, fold_geometry, unfold_geometry
from .launch import Col2im, Im2col
from .precision import plan_dtype
from .plan import Plan, cached_plan, shape_ints, shape_of

__all__ = ["FoldPlan", "UnfoldPlan", "col2im", "col2im1d", "col2im3d", "fold", "im2col",
           "enqueue_im2col", "im2col1d", "im2col3d", "plan_fold", "plan_unfold", "unfold"]

_DIMS = {1: "L", 2: "H, W", 3: "D, H, W"}
_KERNEL = {1: "k", 2: "kh*kw", 3: "kd*kh*kw"}


class _OneLaunchPlan(Plan):
    """A plan whose run is one launch over its input (`self.launch`, `self.batch` images)."""

    launch: Any
    batch: int

    def __call__(self, input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input}, out)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        x = arrays["input"]
        with self.device.lock:
            self.launch(self.batch, x, element_offset(x), out, element_offset(out))


class UnfoldPlan(_OneLaunchPlan):
    """im2col (torch.nn.functional.unfold), planned: (N, C, *spatial) -> (N, C*prod(kernel), L)."""

    def __init__(self, dev: Device, nd: int, input_shape: tuple[int, ...],
                 kernel_size: IntOrTuple, dilation: IntOrTuple, padding: IntOrTuple,
                 stride: IntOrTuple, dtype: np.dtype) -> None:
        name = "im2col" if nd == 2 else f"im2col{nd}d"
        shape = tuple(input_shape)
        if len(shape) not in (nd + 1, nd + 2):
            raise ValueError(f"input must be {nd + 1}-d (C, {_DIMS[nd]}) or {nd + 2}-d (N, C, "
                             f"{_DIMS[nd]}) for {name}, got shape {shape}")
        unbatched = len(shape) == nd + 1
        n, c, *size = (1, *shape) if unbatched else shape
        geo = unfold_geometry(nd, c, size, kernel_size, dilation, padding, stride)
        out_shape = (n, c * geo.ksize, geo.blocks)
        self._prepare(dev, dtype, {"input": shape}, out_shape[1:] if unbatched else out_shape,
                      out_shape, {"input": (n, c, *size), "output": out_shape}, ("output",))
        self.label = name
        self.batch = n
        self.launch = Im2col(dev, geo.defines(), self.work,
                             index_type(n * c * geo.blocks * geo.ksize, n * c * np.prod(size),
                                        geo.blocks, c * geo.ksize * geo.blocks))


class FoldPlan(_OneLaunchPlan):
    """col2im (torch.nn.functional.fold), planned: (N, C*prod(kernel), L) -> (N, C, *output_size),
    overlaps summed."""

    def __init__(self, dev: Device, nd: int, input_shape: tuple[int, ...],
                 output_size: IntOrTuple, kernel_size: IntOrTuple, dilation: IntOrTuple,
                 padding: IntOrTuple, stride: IntOrTuple, dtype: np.dtype) -> None:
        name = "col2im" if nd == 2 else f"col2im{nd}d"
        shape = tuple(input_shape)
        if len(shape) not in (2, 3):
            raise ValueError(f"input must be 2-d (C*{_KERNEL[nd]}, L) or 3-d (N, C*{_KERNEL[nd]}, "
                             f"L) for {name}, got shape {shape}")
        unbatched = len(shape) == 2
        n, rows, blocks = (1, *shape) if unbatched else shape
        geo = fold_geometry(nd, rows, blocks, output_size, kernel_size, dilation, padding, stride)
        out_shape = (n, geo.channels, *geo.in_size)
        self._prepare(dev, dtype, {"input": shape}, out_shape[1:] if unbatched else out_shape,
                      out_shape, {"input": (n, rows, blocks), "output": out_shape}, ("output",))
        self.label = name
        self.batch = n
        self.launch = Col2im(dev, geo.defines(), self.work,
                             index_type(n * rows * blocks, int(np.prod(out_shape))))


def plan_unfold(nd: int, input_shape: Any, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
                padding: IntOrTuple = 0, stride: IntOrTuple = 1, *,
                dtype: Any = np.float32) -> UnfoldPlan:
    """A plan for im2col (nd = 2), im2col1d or im2col3d on the current device: `plan(x, out=None)`."""
    return UnfoldPlan(current_device(), nd, shape_ints(input_shape, "input_shape"), kernel_size,
                      dilation, padding, stride, plan_dtype(dtype))


def plan_fold(nd: int, input_shape: Any, output_size: IntOrTuple, kernel_size: IntOrTuple,
              dilation: IntOrTuple = 1, padding: IntOrTuple = 0, stride: IntOrTuple = 1, *,
              dtype: Any = np.float32) -> FoldPlan:
    """A plan for col2im (nd = 2), col2im1d or col2im3d on the current device: `plan(cols, out=None)`."""
    return FoldPlan(current_device(), nd, shape_ints(input_shape, "input_shape"), output_size,
                    kernel_size, dilation, padding, stride, plan_dtype(dtype))


def unfold(nd: int, input: ArrayLike, kernel_size: IntOrTuple, dilation: IntOrTuple = 1,
           padding: IntOrTuple = 0, stride: IntOrTuple = 1, *,
           out: ArrayLike | None = None) -> ArrayLike:
    """N-d im2col (nd in 1, 2, 3): (N, C, *spatial) -> (N, C*prod(kernel), L), or unbatched
    (C, *spatial) -> (C*prod(kernel), L); L is the number of kernel positions. Zero padding."""
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    shape = shape_of(input)
    plan = cached_plan(dev, ("unfold", nd, shape, dtype, kernel_size, dilation, padding, stride),
                       lambda: UnfoldPlan(dev, nd, shape, kernel_size, dilation, padding, stride,
                                          dtype))
    return plan.execute({"input": input}, out, check=False)


def fold(nd: int, input: ArrayLike, output_size: IntOrTuple, kernel_size: IntOrTuple,
         dilation: IntOrTuple = 1, padding: IntOrTuple = 0, stride: IntOrTuple = 1, *,
         out: ArrayLike | None = None) -> ArrayLike:
    """N-d col2im (nd in 1, 2, 3): (N, C*prod(kernel), L) -> (N, C, *output_size), or unbatched
    (C*prod(kernel), L) -> (C, *output_size), summing the overlapping entries."""
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    shape = shape_of(input)
    plan = cached_plan(dev, ("fold", nd, shape, dtype, output_size, kernel_size, dilation, padding,
                             stride),
                       lambda: FoldPlan(dev, nd, shape, output_size, kernel_size, dilation,
                                        padding, stride, dtype))
    return plan.execute({"input": input}, out, check=False)


def enqueue_im2col(dev: Device, geometry: dict, batch: int, x: cla.Array, x_offset: int,
                   col: cla.Array, col_offset: int, l_start: int = 0, ncols: int | None = None,
                   *, ld: int | None = None, batch_stride: int | None = None) -> None:
    """One cl/im2col.cl launch outside a plan (for tests and tools; plans keep an `Im2col`): the
    columns [l_start, l_start + ncols) of `batch` images, layout as `launch.Im2col`. Call holding
    dev.lock."""
    launch = Im2col(dev, geometry, x.dtype, "int")
    ncols = launch.blocks - l_start if ncols is None else ncols
    rows = launch.rows
    ld = ncols if ld is None else ld
    batch_stride = rows * ncols if batch_stride is None else batch_stride
    end = col_offset + (batch - 1) * batch_stride + (rows - 1) * ld + ncols
    lines = (l_start + ncols - 1) // launch.ow - l_start // launch.ow + 1
    index_t = index_type(x_offset + x.size, end, launch.blocks, rows * lines, l_start + ncols)
    if index_t != "int":
        launch = Im2col(dev, geometry, x.dtype, index_t)
    launch(batch, x, x_offset, col, col_offset, l_start, ncols, ld=ld, batch_stride=batch_stride)


# The public per-dimension functions (clconv.ops.dims): one template each, nd bound.

im2col1d, im2col, im2col3d = per_dimensions(
    unfold, ("im2col1d", "im2col", "im2col3d"),
    ("""1-d im2col: (N, C, L_in) -> (N, C*k, L), or unbatched (C, L_in) -> (C*k, L). Row c*k + i
    holds x[c, l*stride + i*dilation - padding] (zero outside).""",
     """Unfolds (N, C, H, W) -> (N, C*kh*kw, L), or unbatched (C, H, W) -> (C*kh*kw, L), exactly as
    torch.nn.functional.unfold; L is the number of kernel positions. Zero padding.""",
     """3-d im2col: (N, C, D, H, W) -> (N, C*kd*kh*kw, L), or unbatched (C, D, H, W); rows ordered
    channel, then kernel offsets (kd, kh, kw) row-major; columns the positions (od, oh, ow)."""),
    batched=("input",))

col2im1d, col2im, col2im3d = per_dimensions(
    fold, ("col2im1d", "col2im", "col2im3d"),
    ("""1-d col2im, the adjoint of im2col1d: (N, C*k, L) -> (N, C, output_size), or unbatched.""",
     """Folds (N, C*kh*kw, L) -> (N, C, H, W), or unbatched (C*kh*kw, L) -> (C, H, W), summing the
    overlapping entries, exactly as torch.nn.functional.fold; (H, W) = output_size.""",
     """3-d col2im, the adjoint of im2col3d: (N, C*kd*kh*kw, L) -> (N, C, D, H, W), or unbatched."""),
    batched=("input",), ndim=3)

plan_im2col1d, plan_im2col, plan_im2col3d = per_dimensions(
    plan_unfold, ("plan_im2col1d", "plan_im2col", "plan_im2col3d"),
    ("""A plan for `im2col1d`; see `plan_im2col`.""",
     """A plan for `im2col` on the current device: input_shape, kernel_size, then dilation, padding,
    stride and keyword dtype; `plan(x, out=None)` enqueues.""",
     """A plan for `im2col3d`; see `plan_im2col`."""))

plan_col2im1d, plan_col2im, plan_col2im3d = per_dimensions(
    plan_fold, ("plan_col2im1d", "plan_col2im", "plan_col2im3d"),
    ("""A plan for `col2im1d`; see `plan_col2im`.""",
     """A plan for `col2im` on the current device: input_shape (N, C*kh*kw, L), output_size,
    kernel_size, then dilation, padding, stride and keyword dtype; `plan(cols, out=None)`.""",
     """A plan for `col2im3d`; see `plan_col2im`."""))
