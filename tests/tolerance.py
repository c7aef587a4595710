"""Tolerance policy for comparing clconv results with the float64 oracle.

Every numeric check compares against ``reference.py`` computed in float64 with

    np.testing.assert_allclose(got, ref, rtol=RTOL[dtype], atol=ATOL[dtype] * scale)

where ``scale = sqrt(reduction) * magnitude``:

* ``reduction`` is the number of products summed into one output element,
  ``C_in / groups * prod(kernel)`` for a convolution, the number of
  overlapping windows for col2im, 1 for pure data movement (im2col);
* ``magnitude`` bounds the size of one product, ``max|x| * max|w|`` for a
  convolution (plus ``max|b|`` folded in by ``conv_magnitude``).

Rounding errors of a length-n float sum grow like sqrt(n) for random data,
so an absolute tolerance proportional to ``sqrt(n) * max|term|`` keeps the
test meaningful for both short and long reductions; the relative term covers
large outputs.

=========  =======  =======  =============================================
dtype      RTOL     ATOL     notes
=========  =======  =======  =============================================
float32    1e-4     1e-5     eps ~ 6e-8; leaves ~100x headroom for
                              reordered / blocked accumulation (GEMM)
float64    1e-10    1e-12    eps ~ 1e-16
float16    1e-2     1e-3     only used where the device supports fp16
=========  =======  =======  =============================================

Data movement (im2col, padding, copies) must be *exact*: use
``assert_exact``.  NaN and Inf are compared positionally by
``assert_allclose`` (NaN == NaN, +Inf == +Inf), which is what the
propagation tests need.
"""

from __future__ import annotations

import math

import numpy as np

RTOL = {
    np.dtype(np.float16): 1e-2,
    np.dtype(np.float32): 1e-4,
    np.dtype(np.float64): 1e-10,
}

ATOL = {
    np.dtype(np.float16): 1e-3,
    np.dtype(np.float32): 1e-5,
    np.dtype(np.float64): 1e-12,
}


def to_numpy(a) -> np.ndarray:
    """A host numpy copy of a numpy array or a ``pyopencl.array.Array``."""
    if hasattr(a, "get") and not isinstance(a, np.ndarray):
        return a.get()
    return np.asarray(a)


def _finite_max_abs(a) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(np.max(np.abs(a))) if a.size else 0.0


def conv_magnitude(x, w, b=None) -> float:
    """``max|x| * max|w| (+ max|b|)`` over the finite entries, at least 1e-30."""
    m = _finite_max_abs(x) * _finite_max_abs(w)
    if b is not None:
        m = max(m, _finite_max_abs(b))
    return max(m, 1e-30)


def conv_reduction(w, groups: int = 1) -> int:
    """Number of products per output element of a convolution with weight ``w``.

    ``w`` is ``(C_out, C_in / groups, *kernel)``, so this is ``prod(w.shape[1:])``
    (``groups`` is accepted for readability; it is already folded into w.shape).
    """
    del groups
    return max(1, int(math.prod(np.shape(w)[1:])))


def tolerances(dtype, reduction: int = 1, magnitude: float = 1.0) -> tuple[float, float]:
    """``(rtol, atol)`` for results of ``dtype``."""
    dtype = np.dtype(dtype)
    scale = math.sqrt(max(int(reduction), 1)) * float(magnitude)
    return RTOL[dtype], ATOL[dtype] * scale


def assert_close(got, ref, dtype=None, reduction: int = 1, magnitude: float = 1.0, err_msg: str = ""):
    """Compare ``got`` (numpy or pyopencl array) with the float64 oracle ``ref``.

    ``dtype`` defaults to ``got.dtype``; also checks the shape and, when
    ``dtype`` is omitted, nothing about it (callers check dtype explicitly).
    """
    got_np = to_numpy(got)
    ref = np.asarray(ref)
    if dtype is None:
        dtype = got_np.dtype
    assert got_np.shape == ref.shape, f"shape {got_np.shape} != expected {ref.shape}. {err_msg}"
    rtol, atol = tolerances(dtype, reduction, magnitude)
    np.testing.assert_allclose(
        got_np.astype(np.float64), ref, rtol=rtol, atol=atol, equal_nan=True, err_msg=err_msg
    )


def assert_exact(got, ref, err_msg: str = ""):
    """Bit-for-bit equality (after conversion to float64) for pure data movement."""
    got_np = to_numpy(got)
    ref = np.asarray(ref)
    assert got_np.shape == ref.shape, f"shape {got_np.shape} != expected {ref.shape}. {err_msg}"
    np.testing.assert_array_equal(got_np.astype(np.float64), ref.astype(np.float64), err_msg=err_msg)
