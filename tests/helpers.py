"""Small helpers shared by the API tests (array layouts, input kinds)."""

from __future__ import annotations

import numpy as np

#: How a test hands an array to clconv.
#:   numpy       C-contiguous numpy array
#:   strided     numpy view with a step of 2 along the last axis
#:   transposed  numpy view whose last two axes are swapped in memory
#:   fortran     column-major numpy copy
#:   cl          pyopencl.array.Array on the current device
INPUT_KINDS = ("numpy", "strided", "transposed", "fortran", "cl")


def make_noncontiguous(a: np.ndarray, how: str = "strided") -> np.ndarray:
    """An array equal to ``a`` whose memory layout is not C-contiguous."""
    if how == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        view = big[..., ::2]
    elif how == "fortran":
        view = np.asfortranarray(a)
    elif how == "transposed":
        buf = np.ascontiguousarray(np.swapaxes(a, -1, -2))
        view = np.swapaxes(buf, -1, -2)
    else:
        raise ValueError(how)
    assert np.array_equal(view, a, equal_nan=True)
    if a.ndim >= 2 and min(a.shape[-2:]) > 1:
        assert not view.flags.c_contiguous
    return view


def as_kind(a, kind: str, queue=None):
    """``a`` (numpy) presented as input kind ``kind`` (see INPUT_KINDS)."""
    if a is None:
        return None
    if kind == "numpy":
        return np.ascontiguousarray(a)
    if kind == "cl":
        import pyopencl.array as cla

        return cla.to_device(queue, np.ascontiguousarray(a))
    return make_noncontiguous(np.asarray(a), kind)


def random_array(rng, shape, dtype=np.float32) -> np.ndarray:
    """Standard-normal data of ``dtype``."""
    return rng.standard_normal(shape).astype(dtype)


def import_torch():
    """torch if importable, else skip the calling test (torch is only an optional cross-check).

    Like ``pytest.importorskip("torch")`` but also skips on a broken install
    (ImportError that is not ModuleNotFoundError), on every pytest version.
    """
    import pytest

    try:
        import torch
    except ImportError as exc:  # includes ModuleNotFoundError
        pytest.skip(f"torch not importable: {exc}")
    return torch


def set_default_workspace_limit(monkeypatch, value: int) -> None:
    """Makes `value` bytes every device's default workspace limit for the test (and drops the cached
    plans, which were made under the old default)."""
    import clconv
    from clconv.runtime import memory

    monkeypatch.setattr(memory, "default_workspace_limit", lambda dev: value)
    for dev in clconv.devices():
        if dev.plans is not None:
            dev.plans.clear()
    clconv.current_device().plans and clconv.current_device().plans.clear()
