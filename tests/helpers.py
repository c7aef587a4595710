"""Small helpers shared by the API tests (array layouts, input kinds, checks against oracles)."""

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


def register_tile_width(dev) -> int:
    """The packed GEMM's register tile width on `dev`: the fewest output positions 'pointwise'
    takes, and the panel width 'splitk' rounds its columns to."""
    from clconv.blas.packed import tile_for

    return tile_for(dev, np.float32, 8, 1024, 8).nr


def pointwise_tile_width(dev) -> int:
    """The fewest output positions 'pointwise' takes on `dev`: its tile's width (one vector on the
    CPUs whose FMA pipes a 6-row tile keeps busy: Zen 4; else register_tile_width)."""
    from clconv.blas.packed import tile_for_columns

    return tile_for_columns(dev, np.float32, 8, 1024, 8).nr


def torch_case(rng, case):
    """The start of a cross-check against torch on `case` (x shape, w shape, conv kwargs):
    (torch, spatial dims, standard-normal float32 x and w of the shapes, kwargs). Skips the test
    without torch."""
    torch = import_torch()
    x_shape, w_shape, kw = case
    return torch, len(w_shape) - 2, random_array(rng, x_shape), random_array(rng, w_shape), kw


def check_conv(conv, rng, x_shape, w_shape, dtype=np.float32, bias: bool = True, **kw) -> None:
    """``conv(x, w, b, **kw)`` on standard-normal x, w (and b, else None) of the shapes and `dtype`
    against the float64 oracle ``reference.conv_nd`` (so ``kw`` holds its keywords only: stride,
    padding, dilation, groups, padding_mode): dtype, shape and values."""
    import reference
    from tolerance import assert_close, conv_magnitude, conv_reduction

    x = random_array(rng, x_shape, dtype)
    w = random_array(rng, w_shape, dtype)
    b = random_array(rng, (w_shape[0],), dtype) if bias else None
    got = conv(x, w, b, **kw)
    want = reference.conv_nd(x, w, b, **kw)
    assert got.dtype == dtype and got.shape == want.shape
    assert_close(got, want, dtype, conv_reduction(w), conv_magnitude(x, w, b))


def check_epilogue(conv, rng, x_shape, w_shape, activation, **kw) -> None:
    """act(conv + bias + residual) in torch's order: ``conv(x, w, b, activation=activation,
    residual=r, **kw)`` on standard-normal float32 data against torch in float64 (``kw``: the
    keywords of torch's convolution, stride, padding, dilation, groups)."""
    from test_epilogue import output_shape, reference
    from tolerance import assert_close, conv_magnitude, conv_reduction

    x = random_array(rng, x_shape)
    w = random_array(rng, w_shape)
    b = random_array(rng, (w_shape[0],))
    r = random_array(rng, output_shape(x, w, **kw))
    got = conv(x, w, b, activation=activation, residual=r, **kw)
    assert_close(got, reference(x, w, b, r, activation, **kw), np.float32, conv_reduction(w),
                 1.5 * conv_magnitude(x, w, b) + 1.5 * float(np.abs(r).max()))


def spy_im2col(monkeypatch, module) -> list[tuple[int, int | None]]:
    """The (batch, ncols) of every im2col launch through ``module.Im2col`` (clconv.ops.
    conv_algorithms for the convolution path, clconv.ops.grad for the weight gradient) while the
    test runs."""
    launches: list[tuple[int, int | None]] = []

    class Spy(module.Im2col):
        def __call__(self, batch, x, x_offset, col, col_offset, l_start=0, ncols=None, **kw):
            launches.append((batch, ncols))
            return super().__call__(batch, x, x_offset, col, col_offset, l_start, ncols, **kw)

    monkeypatch.setattr(module, "Im2col", Spy)
    return launches
