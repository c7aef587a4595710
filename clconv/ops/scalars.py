"""Number arguments as torch takes them: torch's Number and int parameters (alpha=, eps=,
negative_slope=, dim=, ...) accept a 0-d tensor as the number it holds. clconv takes a 0-d torch
tensor or numpy array the same way, at the argument checks, so that every check sees a Python
number (or the unchanged argument, which it refuses as before). And a parameter torch converts to
the tensor's dtype (add's alpha, clamp's bounds, an activation's slope or threshold) is refused
where that conversion overflows, as torch refuses it (`fits_dtype`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..runtime.interop import is_torch_tensor

__all__ = ["fits_dtype", "plain_number"]


def plain_number(value: Any) -> Any:
    """`value`'s Python number if it is a 0-d numpy array or a 0-d torch tensor that needs no
    gradient (torch refuses those too), else `value` unchanged. A 0-d device array is not read:
    that would be a hidden copy from the device."""
    if isinstance(value, np.ndarray) or (is_torch_tensor(value) and not value.requires_grad):
        return value.item() if value.ndim == 0 else value
    return value


_LARGEST = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)}


def fits_dtype(op: str, name: str, value: Any, dtype: Any, in_float: bool = False) -> None:
    """ValueError when the finite real `value` (a parameter of `op` called `name`) becomes an
    infinity in `dtype` (float16 past 65504, float32 past 3.4e38), as torch's "value cannot be
    converted to type float without overflow"; infinities and NaN pass, as in torch. in_float:
    torch converts the parameter to float for a float16 tensor (leaky_relu's slope, elu's alpha,
    softplus's, threshold's threshold), so only float's range counts there."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        return
    dtype = np.dtype(dtype)
    if in_float and dtype == np.float16:
        dtype = np.dtype(np.float32)
    if -_LARGEST.get(dtype, math.inf) <= value <= _LARGEST.get(dtype, math.inf) or value != value:
        return  # (the usual case, without numpy's conversion: a few us a call on the hot path)
    with np.errstate(over="ignore"):
        converted = np.asarray(value, np.float64).astype(np.dtype(dtype))
    if np.isfinite(float(value)) and not np.isfinite(converted):
        raise ValueError(f"{op}: {name}={value!r} cannot be converted to {np.dtype(dtype)} "
                         f"without overflow (torch refuses it too)")
