"""torch.softmax and torch.log_softmax along one dim on the device: `softmax`, `log_softmax` and
their `SoftmaxPlan` (cl/softmax.cl: max, sum of exponentials, write, per slice)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..runtime.device import Device, current_device
from ..runtime.interop import host_operand, numpy_dtype
from ..runtime.memory import empty
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import ArrayLike, element_offset, gather, index_type, result_dtype
from .channels import check_loop_limit
from .plan import Plan, cached_plan, shape_ints, shape_of
from .precision import convert_into
from .scalars import plain_number

__all__ = ["SoftmaxPlan", "log_softmax", "softmax"]


def _softmax_dim(dim: Any, ndim: int, name: str) -> int:
    dim = plain_number(dim)
    if dim is None:  # torch's legacy implicit choice, with its warning
        warnings.warn(f"Implicit dimension choice for {name} has been deprecated. Change the "
                      f"call to include dim=X as an argument.", UserWarning, stacklevel=3)
        return 0 if ndim in (0, 1, 3) else 1
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{name}: dim must be an int, got {dim!r}")
    size = max(ndim, 1)
    if not -size <= dim < size:
        raise IndexError(f"{name}: dim {dim} is out of range for a {ndim}-d input "
                         f"(expected to be in range of [{-size}, {size - 1}])")
    return int(dim) % size


class SoftmaxPlan(Plan):
    """softmax (or log_softmax: `log`) of one input shape and dtype along `dim`."""

    def __init__(self, dev: Device, input_shape: Sequence[int], dim: int, dtype: np.dtype,
                 log: bool = False) -> None:
        shape = shape_ints(input_shape, "input_shape")
        name = "log_softmax" if log else "softmax"
        d = _softmax_dim(dim, len(shape), name)
        # Along dim 0 (or of a 0-d input) the batch is the softmax's own dim: such a plan is not
        # derived for other batch sizes (a batch shape unlike the output's says so).
        batch_shape = (1, *shape) if d == 0 else shape
        self._prepare(dev, dtype, {"input": shape}, shape, batch_shape, {"input": shape})
        self.label = name
        lifted = shape or (1,)
        self.outer, self.n = math.prod(lifted[:d]), lifted[d]
        self.inner = math.prod(lifted[d + 1:])
        check_loop_limit(dev, name, 3 * self.n + 3)
        defines = precision_defines(self.work)
        defines["INDEX_T"] = index_type(math.prod(shape))
        if log:
            defines["LOG"] = None
        self.kernel = kernel(dev, "softmax.cl", "softmax", defines)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        x = arrays["input"]
        assert x is not None
        if out.size == 0:
            return None
        with self.device.lock:
            return self.kernel(self.device.queue, (self.inner, self.outer), None, x.base_data,
                               np.int64(element_offset(x)), out.base_data,
                               np.int64(element_offset(out)), np.int64(self.n))

    def __call__(self, input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input}, out)


def _run(input: ArrayLike, dim: Any, log: bool, out: ArrayLike | None,
         dtype: Any = None) -> ArrayLike:
    dev = current_device()
    if dtype is not None:  # torch's dtype=: the input cast to it first
        input = _cast(dev, input, numpy_dtype(dtype))
    dtype = result_dtype(dev, input=input)
    shape = shape_of(input)
    d = _softmax_dim(dim, len(shape), "log_softmax" if log else "softmax") \
        if dim is not None else None
    plan = cached_plan(dev, ("softmax", shape, d, dtype, log),
                       lambda: SoftmaxPlan(dev, shape, dim, dtype, log))
    return plan.execute({"input": input}, out)


def softmax(input: ArrayLike, dim: int | None = None, _stacklevel: int = 3,
            dtype: Any = None, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.softmax(input, dim, dtype=...): exp(x - max) / sum(exp(x - max))
    along `dim` (NaN in a slice makes it all NaN, as torch's); with `dtype` (numpy's or torch's
    float dtypes) the input is cast to it first. Returns numpy for a numpy input, else a device
    array."""
    return _run(input, dim, False, out, dtype)


def log_softmax(input: ArrayLike, dim: int | None = None, _stacklevel: int = 3,
                dtype: Any = None, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.log_softmax(input, dim, dtype=...): (x - max) - log(sum(exp(x -
    max))) along `dim`, the input cast to `dtype` first when given."""
    return _run(input, dim, True, out, dtype)


def _cast(dev: Device, x: ArrayLike, dtype: np.dtype) -> ArrayLike:
    """`x` in `dtype`: a device array converted on the device, a host one on the host."""
    if isinstance(x, cla.Array):
        if x.dtype == dtype:
            return x
        a = gather(x, dev)
        out = empty(dev, a.shape, dtype)
        convert_into(dev, a, out)
        return out
    host = np.asarray(host_operand(x, "input"))
    return host if host.dtype == dtype else host.astype(dtype)
