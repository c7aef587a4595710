"""torch.nn.functional.pad on the device: `pad(input, pad, mode, value)` and its `PadPlan`
(cl/pad.cl: one gather per output element through common.cl's padding modes).

`pad` lists (left, right) amounts from the last dim backwards, as torch's; negative amounts crop.
'constant' (the default, `value` or 0) pads up to the last three dims of any tensor;
'reflect', 'replicate' and 'circular' pad the last 1, 2 or 3 dims of a (batched or unbatched)
tensor with 1 or 2 more dims, as torch requires. Errors follow torch's rules (ValueError where
torch raises RuntimeError or NotImplementedError; TypeError for non-int amounts).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
from pyopencl import cltypes

from ..runtime.device import Device, current_device
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import ArrayLike, element_offset, index_type, result_dtype
from .plan import Plan, cached_plan, shape_ints, shape_of

__all__ = ["GatherPlan", "PadPlan", "pad"]

#: torch's padding modes -> common.cl's PAD_MODE codes.
PAD_MODES = {"constant": 0, "reflect": 1, "replicate": 2, "circular": 3}


def _amounts(pad: Any) -> tuple[int, ...]:
    if not isinstance(pad, (tuple, list)) or any(
            isinstance(p, bool) or not isinstance(p, numbers.Integral) for p in pad):
        raise TypeError(f"pad must be a tuple of ints, got {pad!r}")
    if len(pad) % 2:
        raise ValueError(f"pad must have an even length ((left, right) per dim), got {pad!r}")
    return tuple(int(p) for p in pad)


def _validate(shape: tuple[int, ...], pad: tuple[int, ...], mode: str,
              value: Any) -> tuple[int, ...]:
    """The output shape of F.pad(input of `shape`, pad, mode, value), or the error torch gives."""
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {tuple(PAD_MODES)}, got {mode!r}")
    dims = len(pad) // 2
    if dims > len(shape):
        raise ValueError(f"pad: {len(pad)} padding values for a {len(shape)}-d input (two per "
                         f"padded dim, from the last)")
    if mode != "constant":
        if value is not None and value != 0:  # (torch takes 0 there, as for no value)
            raise ValueError(f"pad: mode {mode!r} takes no value (only 'constant' does)")
        if dims not in (1, 2, 3) or len(shape) not in (dims + 1, dims + 2):
            raise ValueError(f"pad: mode {mode!r} pads the last 1, 2 or 3 dims of a tensor with 1 "
                             f"or 2 more dims; got {len(pad)} values for a {len(shape)}-d input")
        if mode != "circular" and any(s == 0 for s in shape[-dims - 1:]):
            # (torch: only a batch dim may be empty; circular takes any, wrapping within them)
            raise ValueError(f"pad: mode {mode!r} needs non-empty dims besides the batch, got "
                             f"input {shape}")
    elif dims > 3:
        raise ValueError(f"pad: clconv pads at most the last 3 dims, got {len(pad)} values")
    out = list(shape)
    for i in range(dims):
        lo, hi = pad[2 * i], pad[2 * i + 1]
        d = len(shape) - 1 - i
        if mode == "reflect" and max(lo, hi) >= shape[d]:
            raise ValueError(f"pad: reflect padding ({lo}, {hi}) must be less than the size "
                             f"{shape[d]} of dim {d}")
        out[d] = shape[d] + lo + hi
        if out[d] < 0:
            raise ValueError(f"pad: padding ({lo}, {hi}) leaves dim {d} of size {shape[d]} with "
                             f"a negative size")
        left = shape[d] - max(-lo, 0) - max(-hi, 0)  # what cropping leaves
        if mode == "constant" and left < 0:  # torch crops first (narrow) and refuses this
            raise ValueError(f"pad: padding ({lo}, {hi}) crops more than the size {shape[d]} of "
                             f"dim {d}")
        if mode == "circular" and max(lo, hi) > left:
            raise ValueError(f"pad: circular padding ({lo}, {hi}) of dim {d} (size {shape[d]}) "
                             f"wraps around more than once")
    padded = out[len(shape) - dims:]
    if mode in ("reflect", "replicate") and all(size < 1 for size in padded):
        # (torch refuses a result whose padded dims are all empty; one of them may be)
        raise ValueError(f"pad: {mode} padding {tuple(pad)} leaves every padded dim of input "
                         f"{tuple(shape)} empty (torch: the input is too small)")
    return tuple(out)


class GatherPlan(Plan):
    """A plan whose kernel gathers every output element of a tensor viewed as (planes, OD, OH,
    OW) (common.cl's GATHER_POSITION: NDRange (OW, OH, planes * OD)) from the input: the
    operands, then `sizes` (the kernel's own arguments, set at plan time)."""

    kernel: Any
    planes: int
    out_dims: tuple[int, int, int]
    sizes: tuple[Any, ...]

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        x = arrays["input"]
        assert x is not None
        od, oh, ow = self.out_dims
        if out.size == 0:
            return None
        with self.device.lock:
            return self.kernel(self.device.queue, (ow, oh, self.planes * od), None, x.base_data,
                               np.int64(element_offset(x)), out.base_data,
                               np.int64(element_offset(out)), *self.sizes)

    def __call__(self, input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input}, out)


class PadPlan(GatherPlan):
    """F.pad(x, pad, mode, value) for one input shape and dtype (cl/pad.cl)."""

    _BATCH_ARGS = (*Plan._BATCH_ARGS, "shape")  # (dim 0: another size re-plans)

    def __init__(self, dev: Device, shape: Sequence[int], pad: Sequence[int], mode: str,
                 value: Any, dtype: np.dtype) -> None:
        shape = shape_ints(shape, "shape")
        pad = _amounts(pad)
        out_shape = _validate(shape, pad, mode, value)
        self._prepare(dev, dtype, {"input": shape}, out_shape, out_shape,
                      {"input": shape, "output": out_shape})
        self.label = f"pad ({mode})"
        dims = len(pad) // 2
        lead = len(shape) - dims  # the dims gathered into planes
        padded_in = (1,) * (3 - dims) + shape[lead:]
        padded_out = (1,) * (3 - dims) + out_shape[lead:]
        lo = (0,) * (3 - dims) + tuple(pad[2 * i] for i in reversed(range(dims)))
        hi = (0,) * (3 - dims) + tuple(pad[2 * i + 1] for i in reversed(range(dims)))
        # circular: torch crops first, then wraps around within what is left
        first = tuple(max(-a, 0) for a in lo)
        span = tuple(n - max(-a, 0) - max(-b, 0) for n, a, b in zip(padded_in, lo, hi))
        if mode == "circular":
            lo = tuple(max(a, 0) for a in lo)
        self.planes = math.prod(shape[:lead])
        self.out_dims = padded_out
        fill = 0.0 if value is None else float(value)
        with np.errstate(over="ignore"):
            overflows = math.isfinite(fill) and not np.isfinite(np.asarray(fill, self.dtype))
        if overflows:
            raise ValueError(f"pad: value {value!r} cannot be converted to {self.dtype} without "
                             f"overflow (torch refuses it too)")
        self.sizes = (*(cltypes.make_int4(0, *v) for v in (padded_in, padded_out, lo, first,
                                                             span)),
                      np.float64(fill) if self.work == np.float64 else np.float32(fill))
        defines = precision_defines(self.work)
        defines.update(PAD_MODE=PAD_MODES[mode], INDEX_T=index_type(
            math.prod(shape), math.prod(out_shape)))
        self.kernel = kernel(dev, "pad.cl", "pad", defines)


def pad(input: ArrayLike, pad: Sequence[int], mode: str = "constant", value: float | None = None,
        *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.pad: `input` padded by `pad` ((left, right) amounts from the last dim
    backwards; negative amounts crop) in `mode` ('constant' with `value`, default 0; 'reflect',
    'replicate', 'circular'). Returns numpy for a numpy input, else a device array."""
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    amounts = _amounts(pad)
    shape = shape_of(input)
    plan = cached_plan(dev, ("pad", shape, amounts, mode, value, dtype),
                       lambda: PadPlan(dev, shape, amounts, mode, value, dtype))
    return plan.execute({"input": input}, out)
