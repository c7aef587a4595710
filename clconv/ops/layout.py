"""Channels-last operands for the functional convolutions (`conv2d(..., layout='nhwc')`).

clconv's kernels read and write channels-first arrays (N, C, *spatial). A channels-last call
(N, *spatial, C): 'nlc' (1-d), 'nhwc' (2-d), 'ndhwc' (3-d); unbatched (*spatial, C)) is computed
as the channels-first one around a copy each way, made where the operand lives: a numpy operand
is transposed on the host as it is uploaded (the upload copies anyway) and the numpy result
transposed as it is downloaded; a device operand is gathered on the device (one strided-copy
kernel, cl/strided_copy.cl) and the device result gathered back into a contiguous channels-last
array. No algorithm reads channels-last strides directly, so the copies are the whole cost (see
the README's Channels-last section for the measured share).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..runtime.device import current_device
from ..runtime.transfer import (ArrayLike, check_distinct_elements, element_offset, gather,
                                 is_device_array, scatter)
from ..runtime.versions import bump

__all__ = ["CHANNELS_FIRST", "CHANNELS_LAST", "channels_last", "convolve_channels_last"]

#: Per number of spatial dims: the layout names `layout=` takes (channels first is the default).
CHANNELS_FIRST = {1: "ncl", 2: "nchw", 3: "ncdhw"}
CHANNELS_LAST = {1: "nlc", 2: "nhwc", 3: "ndhwc"}


def channels_last(layout: Any, nd: int) -> bool:
    """Whether `layout` names the channels-last layout of an nd-d convolution (None or the
    channels-first name: False); ValueError naming `layout` otherwise."""
    if layout is None or layout == CHANNELS_FIRST[nd]:
        return False
    if layout == CHANNELS_LAST[nd]:
        return True
    raise ValueError(f"layout must be {CHANNELS_FIRST[nd]!r} (the default) or "
                     f"{CHANNELS_LAST[nd]!r} (channels last) for a {nd}-d convolution, got "
                     f"{layout!r}")


def _perm(ndim: int, nd: int, to_last: bool) -> tuple[int, ...]:
    """The axes permutation between channels first and last for an array of `ndim` dims."""
    lead = 1 if ndim == nd + 2 else 0  # the batch axis stays first
    rest = list(range(lead, ndim))
    order = rest[1:] + rest[:1] if to_last else rest[-1:] + rest[:-1]
    return (*range(lead), *order)


def channels_first_axes(ndim: int, nd: int) -> tuple[int, ...]:
    """The axes of a channels-last array (of `ndim` dims) in channels-first order."""
    return _perm(ndim, nd, False)


class ChannelsLastPlan:
    """A convolution plan (clconv.ops.conv.ConvPlan, made for the channels-first shapes) called
    with channels-last operands: `plan(x, weight, bias=None, *, residual=None, out=None)` as the
    functional op's layout= (x, residual, out and the result channels last). Its other
    attributes are the inner plan's."""

    def __init__(self, nd: int, plan: Any) -> None:
        self.nd, self.plan = nd, plan

    def __call__(self, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
                 residual: ArrayLike | None = None, out: ArrayLike | None = None) -> ArrayLike:
        return convolve_channels_last(
            self.nd, lambda x, r: self.plan(x, weight, bias, residual=r), input, residual, out)

    def __getattr__(self, name: str) -> Any:
        if name == "plan":  # (not set yet: copy and pickle look before __init__ ran)
            raise AttributeError(name)
        return getattr(self.plan, name)


def _to_first(x: Any, nd: int) -> Any:
    if x is None:
        return None
    if is_device_array(x):
        return x.transpose(_perm(x.ndim, nd, False))  # a strided view: gathered on the device
    a = np.asarray(x)
    return a.transpose(_perm(a.ndim, nd, False))  # a view: the upload makes it contiguous


def _to_last(y: ArrayLike, nd: int) -> ArrayLike:
    perm = _perm(y.ndim, nd, True)
    if is_device_array(y):
        return gather(y.transpose(perm), current_device())
    return np.ascontiguousarray(y.transpose(perm))


def convolve_channels_last(nd: int, run: Callable[[Any, Any], ArrayLike], input: Any,
                           residual: Any, out: Any) -> ArrayLike:
    """`run(input, residual)` (the channels-first convolution) on channels-last operands; the
    result channels last, written into `out` when given (its shape checked)."""
    if getattr(input, "ndim", np.ndim(input)) not in (nd + 1, nd + 2):
        raise ValueError(f"input must have {nd + 1} or {nd + 2} dims ({CHANNELS_LAST[nd]}: "
                         f"channels last), got shape {tuple(np.shape(input))}")
    result = _to_last(run(_to_first(input, nd), _to_first(residual, nd)), nd)
    if out is None:
        return result
    if tuple(out.shape) != tuple(result.shape) or out.dtype != result.dtype:
        raise ValueError(f"out must have shape {tuple(result.shape)} and dtype {result.dtype} "
                         f"(channels last), got {tuple(out.shape)} {out.dtype}")
    if is_device_array(out) != is_device_array(result):
        kind = "a pyopencl Array" if is_device_array(result) else "a numpy array"
        raise TypeError(f"out must be {kind}, as the input, got {type(out).__name__}")
    check_distinct_elements(out)
    if isinstance(out, cla.Array):
        dev = current_device()
        bump(out)
        if not out.flags.c_contiguous:  # a strided view: scattered into it
            scatter(result, out, dev)
            with dev.lock:
                out.add_event(cl.enqueue_marker(dev.queue))
            return out
        with dev.lock:
            cl.enqueue_copy(dev.queue, out.base_data, result.base_data, byte_count=result.nbytes,
                            dst_offset=element_offset(out) * out.dtype.itemsize,
                            src_offset=element_offset(result) * result.dtype.itemsize)
            out.add_event(cl.enqueue_marker(dev.queue))
        return out
    np.copyto(out, result)
    return out
