"""Number arguments as torch takes them: torch's Number and int parameters (alpha=, eps=,
negative_slope=, dim=, ...) accept a 0-d tensor as the number it holds. clconv takes a 0-d torch
tensor or numpy array the same way, at the argument checks, so that every check sees a Python
number (or the unchanged argument, which it refuses as before).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..runtime.interop import is_torch_tensor

__all__ = ["plain_number"]


def plain_number(value: Any) -> Any:
    """`value`'s Python number if it is a 0-d numpy array or a 0-d torch tensor that needs no
    gradient (torch refuses those too), else `value` unchanged. A 0-d device array is not read:
    that would be a hidden copy from the device."""
    if isinstance(value, np.ndarray) or (is_torch_tensor(value) and not value.requires_grad):
        return value.item() if value.ndim == 0 else value
    return value
