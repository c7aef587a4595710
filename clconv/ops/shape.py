"""Shape ops as torch names them: cat (a copy kernel, cl/elementwise.cl's copy_rows), flatten and
reshape (views of contiguous device arrays), pixel_shuffle / pixel_unshuffle (one gathering copy).

    y = clconv.cat([a, b], dim=1)
    y = clconv.flatten(x, 1)                     # a view of a contiguous device array
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..runtime.device import Device, current_device
from ..runtime.interop import host_operand, is_torch_tensor
from ..runtime.program import kernel
from ..runtime.transfer import ArrayLike, element_offset, is_device_array, result_dtype, to_device
from .elementwise import array_args, elementwise_defines
from .plan import Plan, cached_plan, shape_ints, shape_of
from .scalars import plain_number

__all__ = ["CatPlan", "cat", "cat_plan", "channel_shuffle", "flatten", "pixel_shuffle",
           "pixel_unshuffle", "reshaped", "stack"]


def _dim(dim: Any, ndim: int, what: str) -> int:
    dim = plain_number(dim)
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool):
        raise TypeError(f"{what} must be an int, got {dim!r}")
    lo, hi = (-ndim, ndim - 1) if ndim else (-1, 0)
    if not lo <= dim <= hi:
        raise IndexError(f"{what} out of range (expected to be in range of [{lo}, {hi}], but got "
                         f"{dim})")
    return int(dim) % max(ndim, 1)


class CatPlan(Plan):
    """torch.cat of arrays of these shapes along `dim` (equal shapes but along dim)."""

    def __init__(self, dev: Device, shapes: Sequence[tuple[int, ...]], dim: int,
                 dtype: np.dtype) -> None:
        shapes = [shape_ints(s, "shapes") for s in shapes]
        if not shapes:
            raise ValueError("cat: tensors must be a non-empty sequence of arrays")
        ndim = len(shapes[0])
        if ndim == 0:
            raise ValueError("cat: zero-dimensional arrays cannot be concatenated")
        d = _dim(dim, ndim, "dim")
        for i, s in enumerate(shapes):
            if len(s) != ndim or s[:d] != shapes[0][:d] or s[d + 1:] != shapes[0][d + 1:]:
                raise ValueError(f"cat: tensors[{i}] has shape {s}; every array must have the shape "
                                 f"{shapes[0]} except along dim {d}")
        out_shape = (*shapes[0][:d], sum(s[d] for s in shapes), *shapes[0][d + 1:])
        self.names = [f"tensors[{i}]" for i in range(len(shapes))]
        self.dim, self.shapes = d, shapes
        self._prepare(dev, dtype, dict(zip(self.names, shapes)), out_shape, out_shape,
                      {"output": out_shape})
        self.label = "cat"
        self.result_follows = "_kind"
        self.kernel = kernel(dev, "elementwise.cl", "copy_rows",
                             elementwise_defines(self.work, math.prod(out_shape)))

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        d = self.dim
        outer = math.prod(self.shapes[0][:d])
        inner = math.prod(self.shapes[0][d + 1:])
        ld = out.shape[d] * inner
        start = 0
        with self.device.lock:
            for name, shape in zip(self.names, self.shapes):
                src = arrays[name]
                assert src is not None
                cols = shape[d] * inner
                if cols and outer:
                    self.kernel(self.device.queue, (cols, outer), None, *array_args(src),
                                np.int64(cols), out.base_data,
                                np.int64(element_offset(out) + start), np.int64(ld))
                start += cols

    def __call__(self, tensors: Sequence[ArrayLike], *, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute(self._values(tensors), out)

    def _values(self, tensors: Sequence[ArrayLike]) -> dict[str, Any]:
        if isinstance(tensors, (np.ndarray, cla.Array)) or not isinstance(tensors, Sequence):
            raise TypeError(f"tensors must be a sequence (list or tuple) of arrays, got "
                            f"{type(tensors).__name__}")
        if len(tensors) != len(self.names):
            raise ValueError(f"this plan joins {len(self.names)} arrays; got {len(tensors)}")
        values: dict[str, Any] = dict(zip(self.names, tensors))
        values["_kind"] = next((t for t in tensors if is_device_array(t)), tensors[0])
        return values


def cat_plan(dev: Device, shapes: tuple[tuple[int, ...], ...], dim: Any,
             dtype: np.dtype) -> CatPlan:
    """The CatPlan joining arrays of `shapes` along `dim` on `dev`, made on first use (shared by
    every caller: `cat`, convert's joins)."""
    return cached_plan(dev, ("cat", shapes, dim, dtype), lambda: CatPlan(dev, shapes, dim, dtype))


def cat(tensors: Sequence[ArrayLike], dim: int = 0, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.cat: the arrays joined along `dim` (default 0, as torch's; dim=1 for channels). A
    device result when any array is a device array (numpy ones are uploaded). As torch's legacy
    rule, 1-d empty arrays (shape (0,)) are left out when any other array is not one (they still
    count for the dtype, and a device one for the result's kind)."""
    dim = plain_number(dim)
    if isinstance(tensors, (np.ndarray, cla.Array)) or not isinstance(tensors, Sequence):
        raise TypeError(f"cat: tensors must be a sequence (list or tuple) of arrays, got "
                        f"{type(tensors).__name__}")
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: tensors must be a non-empty sequence of arrays")
    dev = current_device()
    dtype = result_dtype(dev, **{f"tensors[{i}]": t for i, t in enumerate(tensors)})
    on_device = next((t for t in tensors if is_device_array(t)), None)  # (a left-out one counts)
    if any(shape_of(t) != (0,) for t in tensors):
        tensors = [t for t in tensors if shape_of(t) != (0,)]
    elif isinstance(dim, numbers.Integral) and not isinstance(dim, bool):
        dim = 0  # (torch: only 1-d empty arrays joins them whatever the dim)
    plan = cat_plan(dev, tuple(shape_of(t) for t in tensors), dim, dtype)
    values = plan._values(tensors)
    if on_device is not None:
        values["_kind"] = on_device
    return plan.execute(values, out, check=False)


def stack(tensors: Sequence[ArrayLike], dim: int = 0, *,
          out: ArrayLike | None = None) -> ArrayLike:
    """torch.stack: arrays of one shape joined along a new dim `dim` (in [-ndim - 1, ndim]): `cat`
    of the arrays each given a unit dim there (a view). A device result when any array is a
    device array."""
    dim = plain_number(dim)
    if isinstance(tensors, (np.ndarray, cla.Array)) or not isinstance(tensors, Sequence):
        raise TypeError(f"stack: tensors must be a sequence (list or tuple) of arrays, got "
                        f"{type(tensors).__name__}")
    if not tensors:
        raise ValueError("stack expects a non-empty sequence of arrays")
    # (TypeError for what is not an array of a floating dtype, as cat's)
    result_dtype(current_device(), **{f"tensors[{i}]": t for i, t in enumerate(tensors)})
    shapes = [shape_of(t) for t in tensors]
    for i, sh in enumerate(shapes[1:], 1):
        if sh != shapes[0]:
            raise ValueError(f"stack expects each array to be equal size, but got "
                             f"{list(shapes[0])} at entry 0 and {list(sh)} at entry {i}")
    d = _dim(dim, len(shapes[0]) + 1, "dim")
    unit = (*shapes[0][:d], 1, *shapes[0][d:])
    return cat([reshaped(t, unit) for t in tensors], d, out=out)


def channel_shuffle(input: ArrayLike, groups: int) -> ArrayLike:
    """torch.nn.functional.channel_shuffle (ShuffleNet): (N, C, *) with the channels read as
    (groups, C / groups) and written as (C / groups, groups). A device array gives a device array
    (one gathering copy on the device); numpy (or a CPU tensor) gives numpy. Exact."""
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"channel_shuffle: groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"Number of groups to divide channels in must be positive. Value of "
                         f"groups:{groups}")
    dev = current_device()
    result_dtype(dev, input=input)  # an array of a floating dtype (and a device array's context)
    shape = tuple(int(v) for v in shape_of(input))
    if len(shape) < 3:
        raise ValueError(f"channel_shuffle expects input with > 2 dims, but got input with sizes "
                         f"{list(shape)}")
    n, c, *rest = shape
    if c % groups:
        raise ValueError(f"Number of channels must be divisible by groups. Got {c} channels and "
                         f"{groups} groups.")
    permuted = reshaped(input, (n, groups, c // groups, math.prod(rest))).transpose((0, 2, 1, 3))
    if isinstance(permuted, cla.Array):
        return to_device(permuted, dev, "input", permuted.dtype).reshape(*shape)
    return np.ascontiguousarray(permuted).reshape(shape)


def flatten(input: ArrayLike, start_dim: int = 0, end_dim: int = -1) -> ArrayLike:
    """torch.flatten: dims start_dim..end_dim merged into one. A contiguous device array gives a
    view (no copy, no kernel); a strided one is gathered on the device first; numpy gives numpy
    (a view when numpy can)."""
    if isinstance(input, np.generic):
        input = np.asarray(input)  # a numpy scalar: a 0-d array (flattened to (1,), as torch's)
    if is_device_array(input):
        dev = current_device()
        result_dtype(dev, input=input)  # context and dtype checks
    elif not isinstance(host_operand(input, "input"), np.ndarray):  # (lists: a TypeError)
        raise TypeError(f"flatten: input must be a numpy or pyopencl array, got "
                        f"{type(input).__name__}")
    shape = shape_of(input)
    ndim = len(shape)
    s = _dim(start_dim, ndim, "start_dim")
    e = _dim(end_dim, ndim, "end_dim")
    if s > e:
        raise ValueError(f"flatten: start_dim ({start_dim}) cannot come after end_dim ({end_dim})")
    new_shape = (1,) if ndim == 0 else (*shape[:s], math.prod(shape[s:e + 1]), *shape[e + 1:])
    return reshaped(input, new_shape)


def reshaped(a: ArrayLike, shape: Sequence[int]) -> ArrayLike:
    """`a` reshaped: a contiguous device array as a view (no device work), a strided one gathered
    on the current device first; numpy (or a CPU tensor) as numpy, a view when numpy can."""
    if isinstance(a, cla.Array):
        if not a.flags.c_contiguous:
            a = to_device(a, current_device(), "input", a.dtype)
        return a.reshape(*shape)
    a = np.asarray(host_operand(a, "input") if is_torch_tensor(a) else a)  # clconv's TypeErrors
    if not a.dtype.isnative:  # big-endian data: native results, as every other op gives
        a = a.astype(a.dtype.newbyteorder("="))
    return np.reshape(a, tuple(shape))


def pixel_shuffle(input: ArrayLike, upscale_factor: int) -> ArrayLike:
    """torch.nn.functional.pixel_shuffle (sub-pixel upsampling): (*, C r^2, H, W) -> (*, C, H r,
    W r), r = upscale_factor. A device array gives a device array (one gathering copy on the
    device); numpy (or a CPU tensor) gives numpy. Exact (a permutation)."""
    return _pixel_shuffle(input, upscale_factor, False)


def pixel_unshuffle(input: ArrayLike, downscale_factor: int) -> ArrayLike:
    """torch.nn.functional.pixel_unshuffle, pixel_shuffle's inverse: (*, C, H r, W r) -> (*,
    C r^2, H, W), r = downscale_factor; as `pixel_shuffle` otherwise. An empty input gets that
    shape too (torch 2.13 returns an empty input's own shape here, unlike pixel_shuffle)."""
    return _pixel_shuffle(input, downscale_factor, True)


def _pixel_shuffle(input: ArrayLike, r: Any, inverse: bool) -> ArrayLike:
    name, arg = ("pixel_unshuffle", "downscale_factor") if inverse else \
        ("pixel_shuffle", "upscale_factor")
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"{name}: {arg} must be an int, got {r!r}")
    r = int(r)
    if r < 1:
        raise ValueError(f"{name} expects a positive {arg}, but got {r}")
    if is_device_array(input):
        dev = current_device()
        result_dtype(dev, input=input)  # context and dtype checks
    elif not isinstance(host_operand(input, "input"), np.ndarray):  # (lists: a TypeError)
        raise TypeError(f"{name}: input must be a numpy or pyopencl array, got "
                        f"{type(input).__name__}")
    shape = shape_of(input)
    if len(shape) < 3:
        raise ValueError(f"{name} expects input to have at least 3 dimensions, but got input "
                         f"with {len(shape)} dimension(s)")
    *lead, c, h, w = (int(d) for d in shape)
    if inverse:
        if h % r or w % r:
            raise ValueError(f"pixel_unshuffle expects height ({h}) and width ({w}) to be "
                             f"divisible by downscale_factor ({r})")
        # N * C stay together: one dim of the 5-d permuted view
        view, perm = (math.prod(lead) * c, h // r, r, w // r, r), (0, 2, 4, 1, 3)
        out = (*lead, c * r * r, h // r, w // r)
    else:
        if c % (r * r):
            raise ValueError(f"pixel_shuffle expects its input's 'channel' dimension ({c}) to be "
                             f"divisible by the square of upscale_factor ({r * r})")
        view, perm = (math.prod(lead) * (c // (r * r)), r, r, h, w), (0, 3, 1, 4, 2)
        out = (*lead, c // (r * r), h * r, w * r)
    permuted = reshaped(input, view).transpose(perm)
    if isinstance(permuted, cla.Array):
        return to_device(permuted, dev, "input", permuted.dtype).reshape(*out)
    return np.ascontiguousarray(permuted).reshape(out)
