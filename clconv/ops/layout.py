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

from typing import Any

import numpy as np

from ..runtime.device import Device
from ..runtime.interop import host_operand
from ..runtime.transfer import ArrayLike, gather, is_device_array
from .plan import shape_of

__all__ = ["CHANNELS_FIRST", "CHANNELS_LAST", "ChannelsLastPlan", "channels_first_axes",
           "channels_first_shape", "channels_last", "channels_last_shape"]

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
    functional op's layout= (x, residual, out and the result channels last; the checks and their
    messages in channels-last shapes). `input_shape` and `output_shape` are channels last; its
    other attributes are the inner plan's."""

    def __init__(self, nd: int, plan: Any) -> None:
        self.nd, self.plan = nd, plan

    @property
    def input_shape(self) -> tuple[int, ...]:
        return channels_last_shape(self.plan.operand_shapes["input"], self.nd)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return channels_last_shape(self.plan.output_shape, self.nd)

    def __call__(self, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
                 residual: ArrayLike | None = None, out: ArrayLike | None = None) -> ArrayLike:
        nd, plan = self.nd, self.plan
        x = host_operand(input, "input")
        want = self.input_shape
        got = shape_of(x)
        batched = plan.output_shape == plan.batch_shape  # (then any batch size)
        if len(got) != len(want) or (got[1:] if batched else got) != (want[1:] if batched
                                                                          else want):
            any_batch = f" (any batch size: its dims after the first must be {want[1:]})" \
                if batched else ""
            raise ValueError(f"input has shape {got} but this plan was made for {want} "
                             f"({CHANNELS_LAST[nd]}: channels last){any_batch}")
        # the output's channels-last shape at this call's batch size (a residual's, out's)
        expect = (got[:1] if batched else ()) + self.output_shape[1 if batched else 0:]
        r = None if residual is None else host_operand(residual, "residual")
        if plan.operand_shapes.get("residual") is not None:  # (else the plan refuses one)
            if r is None:
                raise ValueError(f"this plan was made with residual of shape {self.output_shape} "
                                 f"({CHANNELS_LAST[nd]}: channels last); got None")
            if shape_of(r) != expect:
                raise ValueError(f"residual has shape {shape_of(r)} but must have the output's "
                                 f"shape {expect} ({CHANNELS_LAST[nd]}: channels last)")
        r = None if r is None else _to_first(r, nd)
        if out is None:
            return _to_last(plan(_to_first(x, nd), weight, bias, residual=r), nd, plan.device)
        o = host_operand(out, "out")  # (a torch tensor: its numpy view, the same memory)
        if not hasattr(o, "shape") or tuple(o.shape) != expect or o.dtype != plan.dtype:
            raise ValueError(f"out must have shape {expect} and dtype {plan.dtype} (channels "
                             f"last), got {_describe(o)}")
        # the channels-first view of out: the plan checks its kind, context and memory, and
        # writes it (a strided view: scattered into it)
        plan(_to_first(x, nd), weight, bias, residual=r, out=_to_first(o, nd))
        return out

    def __getattr__(self, name: str) -> Any:
        if name == "plan":  # (not set yet: copy and pickle look before __init__ ran)
            raise AttributeError(name)
        return getattr(self.plan, name)


def _describe(a: Any) -> str:
    shape = getattr(a, "shape", None)
    return f"{tuple(shape)} {a.dtype}" if shape is not None else type(a).__name__


def channels_last_shape(shape: tuple[int, ...], nd: int) -> tuple[int, ...]:
    """The channels-last shape of a channels-first `shape` (of nd + 1 or nd + 2 dims)."""
    return tuple(shape[i] for i in _perm(len(shape), nd, True))


def channels_first_shape(shape: tuple[int, ...], nd: int, name: str) -> tuple[int, ...]:
    """The channels-first shape of a channels-last operand's `shape`; ValueError naming `name`
    for a number of dims other than nd + 1 or nd + 2."""
    if len(shape) not in (nd + 1, nd + 2):
        raise ValueError(f"{name} must have {nd + 1} or {nd + 2} dims ({CHANNELS_LAST[nd]}: "
                         f"channels last), got shape {tuple(shape)}")
    return tuple(shape[i] for i in _perm(len(shape), nd, False))


def _to_first(x: Any, nd: int) -> Any:
    """The channels-first view of a channels-last operand (numpy or device; the plan uploads or
    gathers it)."""
    return x.transpose(_perm(x.ndim, nd, False))


def _to_last(y: ArrayLike, nd: int, dev: Device) -> ArrayLike:
    perm = _perm(y.ndim, nd, True)
    if is_device_array(y):
        return gather(y.transpose(perm), dev)
    return np.ascontiguousarray(y.transpose(perm))
