"""What the ops of cl/elementwise.cl share: their defines and the form of their arguments.

The ops are clconv.ops.unary's (activations and math functions), clconv.ops.binary's (broadcast
arithmetic), clconv.ops.channels' (batch normalisation and the other per-channel passes) and
clconv.ops.shape's (cat, flatten, pixel_shuffle).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl.array as cla

from ..runtime.program import precision_defines
from ..runtime.transfer import element_offset, index_type

__all__ = ["array_args", "elementwise_defines", "real_scalar"]


def elementwise_defines(work: np.dtype, elements: int, **extra: object) -> dict[str, object]:
    """The defines of an elementwise.cl kernel: precision, INDEX_T for `elements`, and `extra`."""
    defines = precision_defines(work)
    defines["INDEX_T"] = index_type(elements)
    defines.update(extra)
    return defines


def array_args(a: cla.Array) -> tuple[Any, np.int64]:
    """An array as kernel arguments: (its buffer, its offset in elements)."""
    return a.base_data, np.int64(element_offset(a))


def real_scalar(work: np.dtype, value: float) -> np.generic:
    """A REAL kernel argument of the work dtype (float64 or float32: half computes in float)."""
    return np.float64(value) if work == np.float64 else np.float32(value)
