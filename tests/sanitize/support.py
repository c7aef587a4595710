"""What the sanitize tests share: test ids, the float64 skip, the result check (tolerance by dtype,
reduction length and operand magnitude; exact for data movement), operand magnitudes, the finest
workspace split, the adjoint check of a gradient."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest
from helpers import random_array as arr  # noqa: F401 - re-exported for the test modules
from tolerance import assert_close, assert_exact, to_numpy


def case_id(*parts: object) -> str:
    """A test id from shapes (2x3x5), keyword dicts (padding=1), dtypes and names, joined by '-'."""
    out = []
    for p in parts:
        if isinstance(p, tuple):
            out.append("x".join(map(str, p)))
        elif isinstance(p, dict):
            out.extend(f"{k}={v}".replace(" ", "") for k, v in p.items())
        elif isinstance(p, type):
            out.append(np.dtype(p).name)
        else:
            out.append(str(p))
    return "-".join(out)


def need_dtype(device: Any, dtype: Any) -> None:
    """Skips the test when `device` lacks float64 and `dtype` is float64."""
    if np.dtype(dtype) == np.float64 and not device.fp64:
        pytest.skip(f"{device.name} has no float64")


def expect(got: Any, want: np.ndarray, dtype: Any, reduction: int, magnitude: float) -> None:
    """`got` (numpy or device array) against the float64 oracle `want`: within tests/tolerance.py's
    margin for `dtype`, a sum of `reduction` products and operands up to `magnitude`; bit-exact
    when `reduction` is 0 (data movement)."""
    if reduction == 0:
        assert_exact(got, want)
    else:
        assert_close(got, want, dtype, reduction=reduction, magnitude=magnitude)


def mag(*arrays: Any) -> float:
    """The product of the operands' largest magnitudes (None skipped), at least 1e-30."""
    return max(math.prod(float(np.max(np.abs(a))) for a in arrays if a is not None), 1e-30)


def smallest_limit(call: Callable[[int], Any], start: int = 16) -> tuple[int, Any]:
    """(limit, result) of `call(workspace_limit)` for the smallest power-of-two limit >= start that
    the planner accepts (it raises MemoryError below what one step needs): the workspace is split
    as finely as it can be (chunks of images, then ranges of output positions or rows of tiles)."""
    limit = start
    while True:
        try:
            return limit, call(limit)
        except MemoryError:
            if limit > 2**24:
                raise
            limit *= 2


def expect_adjoint(x: np.ndarray, y: Any, g: np.ndarray, dx: Any) -> None:
    """A gradient checked as the adjoint of its (locally linear) forward y(x): <x, dx> = <y, g>."""
    got = np.array([float((x.astype(np.float64) * to_numpy(dx).astype(np.float64)).sum())])
    want = np.array([float((to_numpy(y).astype(np.float64) * g.astype(np.float64)).sum())])
    expect(got, want, np.float32, x.size, mag(x, g) + 1)
