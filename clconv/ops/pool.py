"""Pooling: max, average and adaptive pooling in 1-3 d, as torch.nn.functional's, and their gradients.

    y = clconv.max_pool2d(x, 3, stride=2, padding=1)          # (N, C, H, W) -> (N, C, H', W')
    y = clconv.adaptive_avg_pool2d(x, 1)                       # global average pooling

Every op is a `PoolPlan` (cl/pool.cl) on the canonical 3-D geometry: the N * C planes of an input
are pooled independently, 1-d and 2-d problems are 3-d ones with leading extents 1, and all sizes
are kernel arguments, so every pooling layer of a network shares one program per dtype. Validation
is torch's (kernel_size/stride/padding/dilation as an int or one int per dim, stride None or () =
kernel_size, padding at most half the kernel, torch's ceil_mode rule: the last window must start
inside the input or the left padding), with ValueError/TypeError naming the argument where torch
raises RuntimeError. Inputs are batched (N, C, *spatial) (N may be 0) or unbatched (C, *spatial).
NaN propagates through max pooling as in torch.

The gradients (`PoolPlan.backward`) are what clconv.nn's pooling layers use: max pooling saves the
index of each window's maximum (torch's flat index in the plane) and routes the gradient there.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
from pyopencl import cltypes

from ..blas.engine import cpu_shaped
from ..runtime.device import Device, current_device
from ..runtime.errors import UnsupportedError
from ..runtime.memory import empty
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import (
    ArrayLike,
    deliver,
    element_offset,
    index_type,
    is_device_array,
    result_dtype,
)
from .dims import per_dimensions
from .geometry import IntOrTuple, as_tuple
from .launch import cpu_work_group
from .plan import Plan, cached_plan, shape_ints, shape_of
from .precision import check_precision, load, store

__all__ = ["POOL_KINDS", "PoolPlan", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
           "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
           "adaptive_max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d",
           "max_pool2d", "max_pool3d", "pool_output_size"]

POOL_KINDS = ("max", "avg", "adaptive_avg", "adaptive_max")
_DIMS = {1: "L", 2: "H, W", 3: "D, H, W"}


def pool_output_size(size: int, k: int, pad: int, stride: int, dilation: int,
                     ceil_mode: bool) -> int:
    """torch's pooling_output_shape: floor (or ceil) of the window count, and with ceil_mode the
    last window dropped when it would start past the input and its left padding."""
    out = (size + 2 * pad - dilation * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


@functools.lru_cache(maxsize=1024)
def _int4(values: tuple[int, ...]) -> np.ndarray:
    """An int4 kernel argument of 3 sizes, made once per value (pyopencl's make_int4 runs eval:
    ~12 us, six a call of a pool; the arrays are only read)."""
    return cltypes.make_int4(*values, 0)


def _lift(values: Sequence[int], fill: int) -> tuple[int, int, int]:
    return tuple([fill] * (3 - len(values)) + list(values))  # type: ignore[return-value]


def _adaptive_size(output_size: Any, nd: int, in_size: Sequence[int], name: str
                   ) -> tuple[int, ...]:
    """output_size (an int, or nd entries that are ints or None = the input's size) as nd ints."""
    def one(v: Any, i: int) -> int:
        if v is None and nd > 1:  # torch's 1-d adaptive pools take ints only
            return int(in_size[i])
        if not isinstance(v, numbers.Integral) or isinstance(v, bool):
            raise TypeError(f"{name}: output_size must be an int or a sequence of {nd} ints"
                            f"{' or None' if nd > 1 else ''}, got {output_size!r}")
        if v < 0:
            raise ValueError(f"{name}: output_size must not be negative, got {output_size!r}")
        return int(v)

    if isinstance(output_size, (numbers.Integral, type(None))) and not isinstance(output_size, bool):
        if output_size is None:
            raise TypeError(f"{name}: output_size must be an int or a sequence of {nd} ints or "
                            f"None entries, got None")
        return tuple(one(output_size, i) for i in range(nd))
    if isinstance(output_size, (tuple, list)):
        if len(output_size) != nd:  # torch expands no 1-tuple here (its pools' sizes: yes)
            raise ValueError(f"{name}: output_size must have {nd} entries, got {output_size!r}")
        return tuple(one(v, i) for i, v in enumerate(output_size))
    raise TypeError(f"{name}: output_size must be an int or a sequence of {nd} ints or None, got "
                    f"{output_size!r}")


def _check_loop_limit(dev: Device, name: str, in_size: tuple[int, int, int],
                      out_size: tuple[int, int, int], window: tuple | None) -> None:
    """UnsupportedError when one output's window needs more loop iterations than `dev`'s driver
    runs in a work-item (Device.loop_limit: Mesa's llvmpipe silently ends every loop after 65535
    in all, so a global pool over a 300 x 300 plane averaged a part of it)."""
    limit = getattr(dev, "loop_limit", None)
    if limit is None:
        return
    # Window extent a dimension: the kernel size (dilation only spaces it), or the adaptive
    # window's: in / out, at most ceil(in / out) + 1 when out does not divide in (no outputs:
    # no window).
    win = window[0] if window is not None else tuple(
        -(-i // o) + (i % o != 0) if o else 0 for i, o in zip(in_size, out_size))
    loops = win[0] * (win[1] * (win[2] + 1) + 1) + 1  # each loop's exit pass counted too
    if 2 * loops > limit:  # room for the rest of the kernel and the compiler's own loops
        raise UnsupportedError(
            f"{name}: a pooling window of {'x'.join(map(str, win))} needs more loop iterations a "
            f"work-item than {dev.name} runs before it silently stops a loop (Device.loop_limit "
            f"= {limit}); pool in steps (e.g. a smaller window first) or use another device")


class PoolPlan(Plan):
    """A pooling op planned for one input shape and dtype: (N, C, *spatial) or (C, *spatial) ->
    (N, C, *out). kind: 'max', 'avg', 'adaptive_avg' or 'adaptive_max'; arguments as
    torch.nn.functional's (unused ones ignored for a kind: output_size for the fixed windows,
    the window arguments for the adaptive ones)."""

    def __init__(self, dev: Device, kind: str, nd: int, input_shape: Sequence[int],
                 dtype: np.dtype, kernel_size: IntOrTuple = 1, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None,
                 output_size: Any = None) -> None:
        if kind not in POOL_KINDS:
            raise ValueError(f"kind must be one of {POOL_KINDS}, got {kind!r}")
        if isinstance(nd, bool) or nd not in (1, 2, 3):
            raise ValueError(f"nd must be 1, 2 or 3 (the pooled dims), got {nd!r}")
        name = f"{kind}_pool{nd}d"
        self.kind, self.nd = kind, nd
        shape = shape_ints(input_shape, "input_shape")
        # torch's adaptive average pool to all ones is a mean over the pooled dims: any rank with
        # them (2-d and 3-d pools; a sized output_size: one more dim), empty planes giving NaN
        whole = kind == "adaptive_avg" and len(shape) >= nd and (
            nd == 1 and len(shape) in (2, 3) or nd > 1 and (
                len(shape) > nd or not isinstance(output_size, (tuple, list)))) and \
            _adaptive_size(output_size, nd, shape[-nd:], name) == (1,) * nd
        if len(shape) not in (nd + 1, nd + 2) and not whole:
            raise ValueError(f"{name}: input must be {nd + 1}-d (C, {_DIMS[nd]}) or {nd + 2}-d "
                             f"(N, C, {_DIMS[nd]}), got shape {shape}")
        unbatched = len(shape) == nd + 1
        if whole and len(shape) not in (nd + 1, nd + 2):  # planes of one channel
            n, c, *size = (math.prod(shape[:-nd]), 1, *shape[-nd:])
        else:
            n, c, *size = (1, *shape) if unbatched else shape
        self.empty_planes = whole and any(s == 0 for s in size)
        # (torch's adaptive average pool alone takes 0 channels)
        if (c == 0 and kind != "adaptive_avg") or any(s == 0 for s in size) and not whole:
            raise ValueError(f"{name}: input must have non-zero sizes except the batch, got shape "
                             f"{shape}")
        if kind.startswith("adaptive"):
            out = _adaptive_size(output_size, nd, size, name)
            self.window = None
        else:
            k = as_tuple(kernel_size, nd, "kernel_size", 1)
            if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
                s = k
            else:
                s = as_tuple(stride, nd, "stride", 1)
            p = as_tuple(padding, nd, "padding", 0)
            d = as_tuple(dilation, nd, "dilation", 1) if kind == "max" else (1,) * nd
            ceil_mode = _flag(ceil_mode, "ceil_mode")
            # torch: "cannot be converted to type int"; its max_pool1d takes 64-bit strides (a
            # window along the dim), and truncates the other values (wrong results): refused
            for arg, vals in (("kernel_size", k), ("stride", s), ("padding", p),
                              ("dilation", d)):
                if any(v >= 2**31 for v in vals) and not (arg == "stride" and kind == "max" and
                                                          nd == 1):
                    raise ValueError(f"{name}: {arg} {vals} must be below 2**31 (torch's "
                                     f"limit)")
            if any(pi > ki // 2 for pi, ki in zip(p, k)):
                raise ValueError(f"{name}: padding {p} must be at most half of kernel_size {k}")
            if kind == "avg" and nd == 3 and any(i < ki for i, ki in zip(size, k)):
                # torch's 3-d average pool (alone among the pools) refuses an unpadded input
                # smaller than its window, whatever the padding
                raise ValueError(f"{name}: input of spatial size {tuple(size)} is smaller than "
                                 f"kernel_size {k}")
            out = tuple(pool_output_size(*a, ceil_mode) for a in zip(size, k, p, s, d))
            if any(o < 1 for o in out):
                raise ValueError(f"{name}: input of spatial size {tuple(size)} gives output size "
                                 f"{out}: too small for kernel_size {k}, stride {s}, padding {p}, "
                                 f"dilation {d}")
            # The kernels take the window as 32-bit ints. A stride only scales the output index
            # and a dilation the kernel index: along a dim of one output (or a kernel of 1) any
            # value gives the same windows, so a huge one (torch takes stride=2**40) runs as 1.
            s = tuple(1 if o == 1 else si for o, si in zip(out, s))
            d = tuple(1 if ki == 1 else di for ki, di in zip(k, d))
            self.window = (_lift(k, 1), _lift(s, 1), _lift(p, 0), _lift(d, 1))
        if kind == "avg":
            self.count_include_pad = _flag(count_include_pad, "count_include_pad")
            if divisor_override is not None and (
                    not isinstance(divisor_override, numbers.Integral) or
                    isinstance(divisor_override, bool)):
                raise TypeError(f"{name}: divisor_override must be None or an int, got "
                                f"{divisor_override!r}")
            if divisor_override == 0:
                raise ValueError(f"{name}: divisor_override must not be zero")
            if divisor_override is not None and not -2**63 <= divisor_override < 2**63:
                raise ValueError(f"{name}: divisor_override must fit int64 (torch's), got "
                                 f"{divisor_override}")
            self.divisor = 0 if divisor_override is None else int(divisor_override)
        self.planes = n * c
        self.in_size, self.out_size = _lift(size, 1), _lift(out, 1)
        _check_loop_limit(dev, name, self.in_size, self.out_size, self.window)
        out_shape = (c, *out) if unbatched else (*shape[:-nd], *out)
        self._prepare(dev, dtype, {"input": shape}, out_shape, (n, c, *out),
                      {"input": shape, "output": out_shape})
        self.input_shape = shape
        self.label = name
        elements = max(self.planes * math.prod(self.in_size), self.planes * math.prod(out))
        self.index_t = index_type(elements)
        defines = precision_defines(self.work)
        defines["INDEX_T"] = self.index_t
        self._defines = defines
        od, oh, ow = self.out_size
        self._grid = (ow, oh, self.planes * od)  # avg_pool's 3-D NDRange
        # (the max pool runs a row of outputs a work-item: its NDRange is _grid[1:])
        self._cpu = cpu_shaped(dev)
        # the sizes as the kernels' int4s (made once: a struct argument costs ~1 us to make)
        self._shapes = (_int4(self.in_size), _int4(self.out_size))
        self.kernel = kernel(dev, "pool.cl", "max_pool_rows" if kind == "max" else "avg_pool"
                             if kind == "avg" else "adaptive_pool", defines)
        # (training's: the same program's kernel that also writes the maxima's indices)
        self.indices_kernel = kernel(dev, "pool.cl", "max_pool_rows_indices", defines) \
            if kind == "max" else None

    def _local(self, items: int) -> tuple[int] | None:
        """The adaptive pools' local size: launch.cpu_work_group's on CPU devices (left to PoCL,
        each channel count of a network's global pools, as EfficientNet's squeeze-excitations,
        was a work-group function built at its first launch), the driver's choice elsewhere."""
        if not self._cpu:
            return None
        return (cpu_work_group(items, self.device.cl_device.max_compute_units),)

    @property
    def saves_indices(self) -> bool:
        return self.kind in ("max", "adaptive_max")

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array,
                indices: cla.Array | None = None) -> cl.Event | None:
        """out = pooling of arrays['input'] (both contiguous device arrays of `work` dtype);
        `indices` (int64, out's size) receives each maximum's flat index in its plane."""
        x = arrays["input"]
        assert x is not None
        size = out.size
        if size == 0:
            return None
        if self.empty_planes:  # torch's mean over no elements
            with self.device.lock:
                out.fill(np.nan)
            return None
        save = np.int32(indices is not None)
        idx = indices if indices is not None else out
        idx_args = (idx.base_data, np.int64(element_offset(idx)), )
        io = (x.base_data, np.int64(element_offset(x)), out.base_data,
              np.int64(element_offset(out)))
        shapes = self._shapes
        dev = self.device
        with dev.lock:
            if self.kind == "max":
                k, s, p, d = self.window  # type: ignore[misc]
                window = (*shapes, _int4(k), _int4(s), _int4(p), _int4(d))
                if indices is None:
                    return self.kernel(dev.queue, self._grid[1:], None, *io, *window)
                return self.indices_kernel(dev.queue, self._grid[1:], None, *io, *idx_args,
                                           *window)
            elif self.kind == "avg":
                k, s, p, _ = self.window  # type: ignore[misc]
                return self.kernel(dev.queue, self._grid, None, *io,
                                   np.int32(self.count_include_pad), np.int64(self.divisor),
                                   *shapes, _int4(k), _int4(s), _int4(p))
            else:
                return self.kernel(dev.queue, (size,), self._local(size), *io, *idx_args,
                                   np.int32(self.kind == "adaptive_max"), save, *shapes)

    def __call__(self, input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input}, out)

    # -- for clconv.nn: device arrays of `work` dtype in batch_shape -------------------------------
    def forward(self, x: cla.Array, save: bool = False) -> tuple[cla.Array, cla.Array | None]:
        """(y, indices) for a contiguous device input of the plan's batched shape and work dtype;
        indices (int64) only when `save` and the kind is a max."""
        y = empty(self.device, self.batch_shape, self.work)
        idx = empty(self.device, self.batch_shape, np.dtype(np.int64)) \
            if save and self.saves_indices else None
        self.enqueue({"input": x}, y, idx)
        return y, idx

    def backward(self, grad_output: cla.Array, indices: cla.Array | None = None) -> cla.Array:
        """grad_input (the batched input shape) from grad_output (batch_shape; contiguous, work
        dtype) and, for the max kinds, the indices saved by `forward(..., save=True)`."""
        dev = self.device
        n_c = self.batch_shape[:2]
        dx = empty(dev, (*n_c, *self.input_shape[-self.nd:]), self.work)
        if dx.size == 0:
            return dx
        if grad_output.size == 0:  # an output of extent 0 (adaptive): no gradient
            with dev.lock:
                dx.fill(0)
            return dx
        g = (grad_output.base_data, np.int64(element_offset(grad_output)))
        d = (dx.base_data, np.int64(element_offset(dx)))
        shapes = self._shapes
        with dev.lock:
            if self.saves_indices and indices is None:
                raise ValueError(f"{self.label} backward needs the indices of its forward")
            if self.kind == "max":  # a row of inputs a work-item
                k, s, p, dl = self.window  # type: ignore[misc]
                idi, ihi, _ = self.in_size
                kernel(dev, "pool.cl", "max_pool_backward_rows", self._defines)(
                    dev.queue, (ihi, self.planes * idi), None, *g, indices.base_data,
                    np.int64(element_offset(indices)), *d, *shapes, _int4(k), _int4(s), _int4(p),
                    _int4(dl))
            elif self.kind == "adaptive_max":
                kernel(dev, "pool.cl", "adaptive_max_pool_backward", self._defines)(
                    dev.queue, (dx.size,), None, *g, indices.base_data,
                    np.int64(element_offset(indices)), *d, *shapes)
            elif self.kind == "avg":
                k, s, p, _ = self.window  # type: ignore[misc]
                kernel(dev, "pool.cl", "avg_pool_backward", self._defines)(
                    dev.queue, (dx.size,), None, *g, *d, np.int32(self.count_include_pad),
                    np.int64(self.divisor), *shapes, _int4(k), _int4(s), _int4(p))
            else:
                kernel(dev, "pool.cl", "adaptive_avg_pool_backward", self._defines)(
                    dev.queue, (dx.size,), None, *g, *d, *shapes)
        return dx


def pool_plan(dev: Device, kind: str, nd: int, shape: tuple[int, ...], dtype: np.dtype,
              **args: Any) -> PoolPlan:
    """The functional pools' plan of `kind` for an input of `shape` and `dtype` on `dev` with
    PoolPlan's keyword arguments `args` (the device's plan cache)."""
    return cached_plan(dev, ("pool", kind, nd, shape, dtype, *sorted(args.items())),
                       lambda: PoolPlan(dev, kind, nd, shape, dtype, **args))


def _pool(kind: str, nd: int, input: ArrayLike, out: ArrayLike | None,
          return_indices: bool = False, **args: Any) -> Any:
    if not isinstance(return_indices, (bool, np.bool_, numbers.Integral)):
        # (torch's functional pools take any truth value here: their Python code tests it)
        raise TypeError(f"return_indices must be a bool, got {return_indices!r}")
    return_indices = bool(return_indices)
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    shape = shape_of(input)
    plan = pool_plan(dev, kind, nd, shape, dtype, **args)
    if not return_indices:
        return plan.execute({"input": input}, out, check=False)
    if out is not None:
        raise ValueError("out= cannot be combined with return_indices=True")
    # (output, indices): torch's flat index of each maximum within its plane, int64, of the
    # output's shape and the input's kind.
    check_precision(dev, dtype)
    y, idx = plan.forward(load(dev, input, "input", dtype), save=True)
    assert idx is not None
    host = not is_device_array(input)
    y = store(dev, y, dtype).reshape(plan.output_shape)
    return deliver(y, host), deliver(idx.reshape(plan.output_shape), host)


def _max_pool(nd: int, input: ArrayLike, kernel_size: IntOrTuple,
              stride: IntOrTuple | None = None, padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
              ceil_mode: bool = False, return_indices: bool = False, *,
              out: ArrayLike | None = None) -> Any:
    """max_pool{nd}d (the template of max_pool1d/2d/3d, made with per_dimensions below)."""
    return _pool("max", nd, input, out, return_indices, kernel_size=kernel_size, stride=stride,
                 padding=padding, dilation=dilation, ceil_mode=ceil_mode)


max_pool1d, max_pool2d, max_pool3d = per_dimensions(
    _max_pool, ("max_pool1d", "max_pool2d", "max_pool3d"),
    ("""torch.nn.functional.max_pool1d: (N, C, L) or (C, L) -> (N, C, L_out).""",
     """torch.nn.functional.max_pool2d: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out);
    return_indices=True also gives each maximum's flat index in its plane (int64, torch's).""",
     """torch.nn.functional.max_pool3d: (N, C, D, H, W) or (C, D, H, W) -> (N, C, D', H', W')."""))


def avg_pool1d(input: ArrayLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.avg_pool1d: (N, C, L) or (C, L) -> (N, C, L_out) (torch's has no
    divisor_override in 1-d)."""
    return _pool("avg", 1, input, out, kernel_size=kernel_size, stride=stride, padding=padding,
                 ceil_mode=ceil_mode, count_include_pad=count_include_pad)


def avg_pool2d(input: ArrayLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None, *,
               out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.avg_pool2d: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out)."""
    return _pool("avg", 2, input, out, kernel_size=kernel_size, stride=stride, padding=padding,
                 ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                 divisor_override=divisor_override)


def avg_pool3d(input: ArrayLike, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
               padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: int | None = None, *,
               out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.avg_pool3d: (N, C, D, H, W) or (C, D, H, W) -> (N, C, D', H', W')."""
    return _pool("avg", 3, input, out, kernel_size=kernel_size, stride=stride, padding=padding,
                 ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                 divisor_override=divisor_override)


def adaptive_avg_pool1d(input: ArrayLike, output_size: Any, *,
                        out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.adaptive_avg_pool1d: (N, C, L) or (C, L) -> (N, C, output_size)."""
    return _pool("adaptive_avg", 1, input, out, output_size=output_size)


def adaptive_avg_pool2d(input: ArrayLike, output_size: Any, *,
                        out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.adaptive_avg_pool2d: (N, C, H, W) or (C, H, W) -> (N, C, *output_size);
    output_size an int or (H_out, W_out), None entries keeping the input's size."""
    return _pool("adaptive_avg", 2, input, out, output_size=output_size)


def adaptive_avg_pool3d(input: ArrayLike, output_size: Any, *,
                        out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.adaptive_avg_pool3d: (N, C, D, H, W) or (C, D, H, W) -> (N, C,
    *output_size)."""
    return _pool("adaptive_avg", 3, input, out, output_size=output_size)


def adaptive_max_pool1d(input: ArrayLike, output_size: Any, return_indices: bool = False, *,
                        out: ArrayLike | None = None) -> Any:
    """torch.nn.functional.adaptive_max_pool1d: (N, C, L) -> (N, C, out);
    return_indices=True also gives the int64 index of each maximum."""
    return _pool("adaptive_max", 1, input, out, return_indices, output_size=output_size)


def adaptive_max_pool2d(input: ArrayLike, output_size: Any, return_indices: bool = False, *,
                        out: ArrayLike | None = None) -> Any:
    """torch.nn.functional.adaptive_max_pool2d: (N, C, H, W) or (C, H, W) -> (N, C,
    *output_size); return_indices=True also gives the int64 index of each maximum."""
    return _pool("adaptive_max", 2, input, out, return_indices, output_size=output_size)


def adaptive_max_pool3d(input: ArrayLike, output_size: Any, return_indices: bool = False, *,
                        out: ArrayLike | None = None) -> Any:
    """torch.nn.functional.adaptive_max_pool3d: (N, C, D, H, W) -> (N, C, *output_size);
    return_indices=True also gives the int64 index of each maximum."""
    return _pool("adaptive_max", 3, input, out, return_indices, output_size=output_size)
