"""torch.nn.functional.local_response_norm on the device (AlexNet's and GoogLeNet v1's LRN):
`local_response_norm(...)` and its `LocalResponseNormPlan`, one pass of
cl/local_response_norm.cl."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..runtime.device import Device, current_device
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import ArrayLike, element_offset, index_type, result_dtype
from .plan import Plan, cached_plan, shape_ints, shape_of
from .scalars import plain_number

__all__ = ["LocalResponseNormPlan", "local_response_norm"]


def _real(value: object, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"local_response_norm: {name} must be a real number, got {value!r}")
    return float(value)


def _size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, numbers.Integral):
        raise TypeError(f"local_response_norm: size must be an int, got {size!r}")
    if size < 1:
        raise ValueError(f"local_response_norm: size must be positive, got {size}")
    return int(size)


class LocalResponseNormPlan(Plan):
    """local_response_norm(x, size, alpha, beta, k) for one input shape (N, C, *) and dtype; any
    batch size runs on it."""

    def __init__(self, dev: Device, input_shape: Sequence[int], size: int, alpha: float,
                 beta: float, k: float, dtype: np.dtype) -> None:
        shape = shape_ints(input_shape, "input_shape")
        if len(shape) < 3:
            raise ValueError(f"local_response_norm: expected 3D or higher dimensionality input "
                             f"(got {len(shape)} dimensions)")
        self.size = _size(size)
        self.alpha, self.beta, self.k = (_real(alpha, "alpha"), _real(beta, "beta"),
                                         _real(k, "k"))
        self.channels, self.inner = shape[1], math.prod(shape[2:])
        self._prepare(dev, dtype, {"input": shape}, shape, shape, {"input": shape})
        self.label = f"local_response_norm({self.size})"
        defines = precision_defines(self.work)
        defines["INDEX_T"] = index_type(math.prod(shape))
        self.kernel = kernel(dev, "local_response_norm.cl", "local_response_norm", defines)
        scalar = np.float64 if self.work == np.float64 else np.float32
        self._scalars = (np.int32(self.channels), np.int64(self.inner), np.int32(self.size),
                         scalar(self.alpha), scalar(self.beta), scalar(self.k))

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        x = arrays["input"]
        assert x is not None
        if out.size == 0:
            return None
        dev = self.device
        with dev.lock:
            return self.kernel(dev.queue, (out.size,), None, x.base_data,
                               np.int64(element_offset(x)), out.base_data,
                               np.int64(element_offset(out)), *self._scalars)

    def __call__(self, input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input}, out)


def local_response_norm(input: ArrayLike, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.local_response_norm: input (N, C, *) divided by
    (k + alpha * mean of x^2 over the `size` neighbouring channels) ** beta, the window
    [c - size // 2, c + (size - 1) // 2] clipped to the channels and averaged over `size`.
    Returns numpy for a numpy input, else a device array."""
    size, alpha, beta, k = (plain_number(v) for v in (size, alpha, beta, k))
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    shape = shape_of(input)
    key = tuple(v if isinstance(v, (bool, str)) or not isinstance(v, numbers.Real) else float(v)
                for v in (alpha, beta, k))
    plan = cached_plan(dev, ("local_response_norm", shape, _size(size), key, dtype),
                       lambda: LocalResponseNormPlan(dev, shape, size, alpha, beta, k, dtype))
    return plan.execute({"input": input}, out, check=False)
