"""clconv.conv_transpose1d/2d/3d against the float64 oracle (``reference.conv_transpose_nd``).

Small products around fixed tiny problems: geometry (stride x padding x dilation x output_padding,
including output_padding's edge values: stride - 1, and dilation - 1 when that is >= stride), groups
(both GEMM batchings: groups <= N and groups > N), the 1x1 path, bias, dtypes, input kinds,
unbatched and empty inputs, batch chunking, every bad argument, and torch when importable.
Tolerances: ``tolerance.py`` (the reduction per output element is at most C_in/groups * prod(k)).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyopencl.array as cla
import pytest
import reference as ref
from helpers import as_kind, random_array, torch_case
from tolerance import assert_close, conv_magnitude


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _op(clconv, nd):
    return getattr(clconv, f"conv_transpose{nd}d")


def run_and_check(clconv, rng, x_shape, w_shape, *, bias=False, dtype=np.float32, kind="numpy",
                  queue=None, **kwargs):
    nd = len(w_shape) - 2
    x = random_array(rng, x_shape, dtype)
    w = random_array(rng, w_shape, dtype)
    groups = kwargs.get("groups", 1)
    b = random_array(rng, (w_shape[1] * groups,), dtype) if bias else None
    got = _op(clconv, nd)(as_kind(x, kind, queue), as_kind(w, kind, queue),
                          as_kind(b, "numpy" if kind != "cl" else "cl", queue), **kwargs)
    want = ref.conv_transpose_nd(x, w, b, **kwargs)
    assert isinstance(got, cla.Array if kind == "cl" else np.ndarray)
    assert got.dtype == np.dtype(dtype)
    assert got.shape == want.shape
    # each output element sums at most C_in/groups * prod(kernel) products
    reduction = (x_shape[-nd - 1] // groups) * math.prod(w_shape[2:])
    assert_close(got, want, dtype, reduction=reduction, magnitude=conv_magnitude(x, w, b))
    return got, want


# ---------------------------------------------------------------------------
# geometry, 2-d: stride x padding x dilation x output_padding
# ---------------------------------------------------------------------------

def _geometry_cases():
    cases = []
    for s, p, d in itertools.product([1, 2, (3, 1)], [0, (2, 1)], [1, (1, 3)]):
        s2, d2 = (s, s) if isinstance(s, int) else s, (d, d) if isinstance(d, int) else d
        # output_padding: 0, and its largest legal value per dim (max(stride, dilation) - 1)
        top = tuple(max(a, b) - 1 for a, b in zip(s2, d2))
        for op in {(0, 0), top}:
            cases.append((s, p, d, op))
    return cases


@pytest.mark.parametrize("stride, padding, dilation, output_padding", _geometry_cases(),
                         ids=lambda v: str(v).replace(" ", ""))
def test_geometry_2d(clconv, rng, stride, padding, dilation, output_padding):
    run_and_check(clconv, rng, (2, 3, 4, 5), (3, 2, 3, 2), stride=stride, padding=padding,
                  dilation=dilation, output_padding=output_padding)


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("stride, padding, dilation, output_padding",
                         [(1, 0, 1, 0), (2, 1, 1, 1), (3, 0, 2, 2), (1, 1, 3, 2), (2, 2, 2, 0)],
                         ids=lambda v: str(v))
def test_geometry_1d_3d(clconv, rng, nd, stride, padding, dilation, output_padding):
    spatial, kernel = {1: ((6,), (3,)), 3: ((3, 4, 3), (2, 3, 2))}[nd]
    run_and_check(clconv, rng, (2, 3) + spatial, (3, 2) + kernel, bias=True, stride=stride,
                  padding=padding, dilation=dilation, output_padding=output_padding)


def test_3d_per_dim_arguments(clconv, rng):
    run_and_check(clconv, rng, (1, 2, 3, 2, 4), (2, 3, 2, 1, 3), bias=True, stride=(2, 1, 3),
                  padding=(1, 0, 2), dilation=(1, 2, 1), output_padding=(1, 1, 0))


@pytest.mark.parametrize("output_padding, stride, dilation", [
    (1, 2, 1),        # op = stride - 1
    (2, 1, 3),        # op >= stride, allowed because op < dilation
    ((0, 2), (1, 3), (2, 1)),
    ((1, 0), (1, 1), (2, 1)),
])
def test_output_padding_edge_values(clconv, rng, output_padding, stride, dilation):
    run_and_check(clconv, rng, (2, 2, 3, 4), (2, 3, 2, 3), bias=True, stride=stride,
                  dilation=dilation, output_padding=output_padding)


# ---------------------------------------------------------------------------
# channels, groups, shapes
# ---------------------------------------------------------------------------

# id -> (x_shape, w_shape, kwargs)
SHAPE_CASES = {
    "groups2-batch2": ((2, 4, 3, 4), (4, 3, 3, 3), {"groups": 2, "stride": 2, "bias": True}),
    "groups3-batch1": ((1, 6, 4, 3), (6, 1, 2, 2), {"groups": 3, "padding": 1}),  # groups > N
    "depthwise-batch3": ((3, 4, 4, 4), (4, 2, 3, 3), {"groups": 4, "stride": (1, 2), "bias": True}),
    "pointwise": ((3, 4, 5, 6), (4, 5, 1, 1), {"bias": True}),
    "pointwise-groups": ((1, 4, 3, 3), (4, 1, 1, 1), {"groups": 2}),
    "k1-stride2": ((2, 3, 3, 4), (3, 2, 1, 1), {"stride": 2, "output_padding": 1}),
    "k1-dilation-outpad": ((2, 3, 3, 4), (3, 2, 1, 1), {"dilation": 2, "output_padding": 1}),
    "kernel-larger-than-input": ((1, 2, 2, 1), (2, 3, 4, 5), {"bias": True}),
    "crop-to-1": ((1, 1, 1, 1), (1, 1, 3, 3), {"padding": 1}),
    "cout-odd": ((2, 2, 5, 3), (2, 7, 2, 2), {"stride": (2, 3)}),
}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_shapes(clconv, rng, case):
    x_shape, w_shape, kwargs = SHAPE_CASES[case]
    run_and_check(clconv, rng, x_shape, w_shape, **kwargs)


def test_medium_shape(clconv, rng):
    """Slightly larger: GEMM tiles with ragged edges."""
    run_and_check(clconv, rng, (2, 12, 9, 7), (12, 10, 3, 3), bias=True, stride=2, padding=1,
                  output_padding=1)


def test_batch_chunks(clconv, rng, monkeypatch):
    """A small workspace splits the batch into chunks; the result does not change."""
    from helpers import set_default_workspace_limit

    x_shape, w_shape, kw = (5, 2, 4, 4), (2, 3, 3, 3), {"stride": 2, "padding": 1}
    col_image = 3 * 9 * 4 * 4 * 4  # one image's column matrix in bytes (float32)
    set_default_workspace_limit(monkeypatch, 2 * col_image)
    run_and_check(clconv, rng, x_shape, w_shape, bias=True, **kw)
    column = 3 * 9 * 4  # one column: the image is done in ranges of columns
    set_default_workspace_limit(monkeypatch, column)
    run_and_check(clconv, rng, x_shape, w_shape, groups=1, **kw)
    set_default_workspace_limit(monkeypatch, column - 1)
    with pytest.raises(MemoryError, match="one column"):
        run_and_check(clconv, rng, x_shape, w_shape, groups=1, **kw)


# ---------------------------------------------------------------------------
# dtypes, input kinds, unbatched, empty
# ---------------------------------------------------------------------------

#: nd: (spatial size, kernel size) of the 1-, 2- and 3-d cases below
SHAPES_ND = {1: ((5,), (3,)), 2: ((3, 4), (3, 2)), 3: ((2, 3, 2), (2, 2, 3))}


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_dtypes(clconv, rng, dtype, nd):
    spatial, kernel = SHAPES_ND[nd]
    run_and_check(clconv, rng, (2, 4) + spatial, (4, 3) + kernel, bias=True, dtype=dtype, groups=2,
                  stride=2, padding=1, output_padding=1)


@pytest.mark.parametrize("kind", ["numpy", "strided", "transposed", "fortran", "cl"])
def test_input_kinds(clconv, dev, rng, kind):
    run_and_check(clconv, rng, (2, 3, 4, 5), (3, 2, 3, 3), bias=True, stride=2, kind=kind,
                  queue=dev.queue)


def test_pyopencl_offset_view(clconv, dev, rng):
    x = random_array(rng, (2, 3, 4, 4))
    w = random_array(rng, (3, 2, 2, 2))
    big = cla.to_device(dev.queue, np.concatenate([np.zeros(5, np.float32), x.ravel()]))
    view = big[5:].reshape(x.shape)
    got = clconv.conv_transpose2d(view, w, stride=2)
    assert isinstance(got, cla.Array)
    assert_close(got, ref.conv_transpose_nd(x, w, stride=2), np.float32, reduction=12,
                 magnitude=conv_magnitude(x, w))


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_unbatched(clconv, dev, rng, nd, kind):
    spatial, kernel = SHAPES_ND[nd]
    _, want = run_and_check(clconv, rng, (3,) + spatial, (3, 2) + kernel, bias=True, stride=2,
                            kind=kind, queue=dev.queue)
    assert want.ndim == nd + 1


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_empty_batch(clconv, dev, rng, nd, kind):
    spatial, kernel = SHAPES_ND[nd]
    x = np.zeros((0, 2) + spatial, np.float32)
    w = random_array(rng, (2, 3) + kernel)
    got = _op(clconv, nd)(as_kind(x, kind, dev.queue), as_kind(w, kind, dev.queue), stride=2)
    want = ref.conv_transpose_nd(np.zeros((1, 2) + spatial), w, stride=2)
    assert got.shape == (0,) + want.shape[1:]
    assert got.dtype == np.float32
    assert isinstance(got, cla.Array if kind == "cl" else np.ndarray)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("stride, dilation, output_padding", [(2, 1, 2), (2, 1, 3), (1, 1, 1),
                                                              (1, 2, 2)])
@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_empty_batch_takes_any_output_padding_as_torch(clconv, dev, rng, nd, stride, dilation,
                                                        output_padding, kind):
    """torch checks output_padding < stride or dilation only for a non-empty batch: batch 0 gives
    the padded output's (empty) shape; a batch of 1 is refused by both."""
    torch = pytest.importorskip("torch")
    spatial, kernel = SHAPES_ND[nd]
    x = np.zeros((0, 2) + spatial, np.float32)
    w = random_array(rng, (2, 3) + kernel)
    kw = {"stride": stride, "dilation": dilation, "output_padding": output_padding}
    f = getattr(torch.nn.functional, f"conv_transpose{nd}d")
    want = f(torch.from_numpy(x), torch.from_numpy(w), **kw)
    got = _op(clconv, nd)(as_kind(x, kind, dev.queue), as_kind(w, kind, dev.queue), **kw)
    assert got.shape == tuple(want.shape) and got.dtype == np.float32
    assert isinstance(got, cla.Array if kind == "cl" else np.ndarray)
    x1 = np.zeros((1, 2) + spatial, np.float32)
    with pytest.raises(RuntimeError, match="output padding"):
        f(torch.from_numpy(x1), torch.from_numpy(w), **kw)
    with pytest.raises(ValueError, match="output_padding"):
        _op(clconv, nd)(x1, w, **kw)


@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_output_of_extent_zero_is_empty_as_torch(clconv, dev, rng, kind):
    """Padding that leaves an output dim of extent exactly 0 gives an empty result (torch's;
    a negative extent is refused: BAD_CASES), with a bias, an activation and through a plan."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for nd, x_shape, w_shape, kw in (
            (2, (2, 2, 1, 5), (2, 2, 2, 1),
             {"stride": 2, "padding": (1, 2), "output_padding": (0, 1), "dilation": (1, 2)}),
            (1, (2, 3, 4), (3, 2, 3), {"padding": 3}),
            (3, (1, 2, 2, 2, 2), (2, 1, 1, 2, 3), {"padding": (0, 0, 2), "groups": 2})):
        x, w = random_array(rng, x_shape), random_array(rng, w_shape)
        b = random_array(rng, (w_shape[1] * kw.get("groups", 1),))
        want = getattr(F, f"conv_transpose{nd}d")(torch.from_numpy(x), torch.from_numpy(w),
                                                  torch.from_numpy(b), **kw)
        assert 0 in want.shape
        got = _op(clconv, nd)(as_kind(x, kind, dev.queue), w, b, activation="relu", **kw)
        assert isinstance(got, cla.Array if kind == "cl" else np.ndarray)
        assert got.shape == tuple(want.shape) and got.dtype == np.float32
        plan = getattr(clconv, f"plan_conv_transpose{nd}d")(x_shape, w_shape, **kw)
        assert plan(x, w, b).shape == tuple(want.shape)


def test_nan_propagates_to_the_window(clconv, rng):
    x = random_array(rng, (1, 1, 4, 4))
    w = random_array(rng, (1, 1, 3, 3))
    w[w == 0] = 0.5
    x[0, 0, 1, 2] = np.nan
    got = clconv.conv_transpose2d(x, w, stride=2)
    want = ref.conv_transpose_nd(x, w, stride=2)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isfinite(want).any()


def test_adjoint_of_conv(clconv, rng):
    """<conv(x, w), y> == <x, conv_transpose(y, w)>: the two public ops are adjoint (in float32
    on a device without float64, e.g. rusticl's llvmpipe, to within float32 rounding of the sums)."""
    dt = np.float64 if clconv.current_device().fp64 else np.float32
    x = rng.standard_normal((2, 4, 7, 6)).astype(dt)
    w = rng.standard_normal((6, 2, 3, 2)).astype(dt)
    kw = {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}
    y = rng.standard_normal(ref.conv_nd(x, w, **kw).shape).astype(dt)
    lhs = (clconv.conv2d(x, w, **kw).astype(np.float64) * y).sum()
    xt = clconv.conv_transpose2d(y, w, **kw, output_padding=(0, 0)).astype(np.float64)
    assert xt.shape == x.shape
    scale = np.abs(x * xt).sum()  # the size of the terms, not of their (cancelling) sum
    rtol = 1e-10 if dt == np.float64 else 1e-5
    np.testing.assert_allclose(lhs, (x * xt).sum(), rtol=0, atol=rtol * scale)


# ---------------------------------------------------------------------------
# bad arguments: each message names the argument
# ---------------------------------------------------------------------------

X, W = (1, 2, 3, 3), (2, 3, 3, 3)

BAD_CASES = [
    # (kwargs overriding the call, exception, match)
    ({"x": (3, 3, 3)}, ValueError, "channel"),  # unbatched (C, H, W) with the wrong C
    ({"x": (1, 1, 2, 3, 3)}, ValueError, "input must have"),
    ({"w": (2, 3, 3)}, ValueError, "weight must have"),
    ({"w": (2, 0, 3, 3)}, ValueError, "weight must have non-zero"),
    ({"x": (1, 3, 3, 3)}, ValueError, "channel"),
    ({"x": (1, 2, 0, 3)}, ValueError, "input must have non-zero spatial"),
    ({"groups": 0}, ValueError, "groups"),
    ({"groups": 1.5}, TypeError, "groups"),
    ({"groups": True}, TypeError, "groups"),
    ({"x": (1, 3, 3, 3), "w": (3, 2, 3, 3), "groups": 2}, ValueError, "groups"),
    ({"stride": 0}, ValueError, "stride"),
    ({"stride": (1, 2, 3)}, ValueError, "stride"),
    ({"stride": "1"}, TypeError, "stride"),
    ({"padding": -1}, ValueError, "padding"),
    ({"padding": "same"}, TypeError, "padding"),
    ({"dilation": 0}, ValueError, "dilation"),
    ({"output_padding": -1}, ValueError, "output_padding"),
    ({"output_padding": 1}, ValueError, "output_padding"),                 # stride 1, dilation 1
    ({"output_padding": 2, "stride": 2, "dilation": 2}, ValueError, "output_padding"),
    ({"output_padding": (0, 1), "stride": (2, 1)}, ValueError, "output_padding"),
    ({"output_padding": (1,) * 3}, ValueError, "output_padding"),
    ({"padding": 3}, ValueError, "too small"),
    ({"bias": (4,)}, ValueError, "bias"),
    ({"bias": (2,)}, ValueError, "bias"),
    ({"bias": (3, 1)}, ValueError, "bias"),
]


@pytest.mark.parametrize("case", range(len(BAD_CASES)))
def test_bad_arguments(clconv, case):
    overrides, exc, match = BAD_CASES[case]
    overrides = dict(overrides)
    x = np.zeros(overrides.pop("x", X), np.float32)
    w = np.zeros(overrides.pop("w", W), np.float32)
    b = overrides.pop("bias", None)
    b = None if b is None else np.zeros(b, np.float32)
    with pytest.raises(exc, match=match):
        clconv.conv_transpose2d(x, w, b, **overrides)


def test_bad_dtypes(clconv):
    x = np.zeros(X, np.float32)
    w = np.zeros(W, np.float32)
    with pytest.raises(TypeError, match="input has dtype int32"):
        clconv.conv_transpose2d(x.astype(np.int32), w)
    with pytest.raises(TypeError, match="mixed dtypes"):
        clconv.conv_transpose2d(x, w.astype(np.float64))
    with pytest.raises((TypeError, ValueError), match="weight"):
        clconv.conv_transpose2d(x, None)


@pytest.mark.parametrize("nd", [1, 3])
def test_wrong_dimensionality(clconv, nd):
    x = np.zeros((1, 2, 3, 3), np.float32)
    w = np.zeros((2, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=f"{nd}-d transposed convolution"):
        _op(clconv, nd)(x, w)


# ---------------------------------------------------------------------------
# optional cross-check against torch
# ---------------------------------------------------------------------------

TORCH_CASES = [
    ((2, 4, 3, 4), (4, 3, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2}),
    ((1, 2, 4, 3), (2, 2, 2, 3), {"stride": (1, 2), "dilation": (3, 1), "output_padding": (2, 1)}),
    ((2, 3, 5), (3, 2, 4), {"stride": 3, "padding": 2, "output_padding": 2}),
    ((1, 2, 2, 3, 2), (2, 2, 2, 2, 3),
     {"stride": 2, "padding": (0, 1, 1), "output_padding": (1, 0, 1)}),
]


@pytest.mark.parametrize("case", range(len(TORCH_CASES)))
def test_matches_torch(clconv, rng, case):
    torch, nd, x, w, kwargs = torch_case(rng, TORCH_CASES[case])
    b = random_array(rng, (w.shape[1] * kwargs.get("groups", 1),))
    fn = getattr(torch.nn.functional, f"conv_transpose{nd}d")
    want = fn(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), **kwargs).numpy()
    got = _op(clconv, nd)(x, w, b, **kwargs)
    assert_close(got, want.astype(np.float64), np.float32,
                 reduction=x.shape[1] * math.prod(w.shape[2:]), magnitude=conv_magnitude(x, w, b))
