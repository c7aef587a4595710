"""clconv.conv{1,2,3}d_input / conv{1,2,3}d_weight (torch.nn.grad's) against the float64 oracle.

The oracle is ``reference.conv_nd_input`` / ``conv_nd_weight`` (zero padding) and
``reference_extra`` for the other padding modes. Also: both GEMM batchings (groups <= N, groups >
N), the single-image and 1x1 paths, batch chunks, N = 0, input kinds, every bad argument, finite
differences of clconv's own conv*d, and torch.nn.grad when importable.

Tolerances (``tolerance.py``): an input-gradient element sums at most C_out/groups * prod(k)
products of grad_output and weight; a weight-gradient element sums N * prod(out) products of
grad_output and input.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyopencl.array as cla
import pytest
import reference as ref
import reference_extra as rx
from helpers import as_kind, random_array, torch_case
from tolerance import assert_close, conv_magnitude

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def check_grads(clconv, rng, x_shape, w_shape, *, dtype=np.float32, kind="numpy", queue=None,
                padding_mode="zeros", **kwargs):
    """Runs conv{nd}d_input and conv{nd}d_weight on random data and compares with the oracle."""
    nd = len(w_shape) - 2
    x = random_array(rng, x_shape, dtype)
    w = random_array(rng, w_shape, dtype)
    out_shape = ref.conv_nd(np.zeros(x_shape), np.zeros(w_shape), None,
                            padding_mode=padding_mode, **kwargs).shape
    g = random_array(rng, out_shape, dtype)
    extra = {} if padding_mode == "zeros" else {"padding_mode": padding_mode}
    gi = getattr(clconv, f"conv{nd}d_input")(x_shape, as_kind(w, kind, queue),
                                             as_kind(g, kind, queue), **kwargs, **extra)
    gw = getattr(clconv, f"conv{nd}d_weight")(as_kind(x, kind, queue), w_shape,
                                              as_kind(g, kind, queue), **kwargs, **extra)
    want_i = rx.conv_nd_input(x_shape, w, g, padding_mode=padding_mode, **kwargs)
    want_w = rx.conv_nd_weight(x, w_shape, g, padding_mode=padding_mode, **kwargs)
    for got in (gi, gw):
        assert isinstance(got, cla.Array if kind == "cl" else np.ndarray)
        assert got.dtype == np.dtype(dtype)
    groups = kwargs.get("groups", 1)
    assert_close(gi, want_i, dtype, reduction=w_shape[0] // groups * math.prod(w_shape[2:]),
                 magnitude=conv_magnitude(g, w))
    assert_close(gw, want_w, dtype, reduction=max(1, x_shape[0] * math.prod(out_shape[2:])),
                 magnitude=conv_magnitude(g, x))
    return gi, gw


# ---------------------------------------------------------------------------
# 2-d geometry
# ---------------------------------------------------------------------------

GEOMETRY_CASES = [
    (s, p, d) for s, p, d in itertools.product([1, 2, (2, 1)], [0, (1, 2), "same", "valid"],
                                               [1, (1, 2)])
    if not (p == "same" and s != 1)
]


@pytest.mark.parametrize("stride, padding, dilation", GEOMETRY_CASES,
                         ids=lambda v: str(v).replace(" ", ""))
def test_geometry_2d(clconv, rng, stride, padding, dilation):
    check_grads(clconv, rng, (2, 3, 7, 8), (2, 3, 3, 2), stride=stride, padding=padding,
                dilation=dilation)


def test_input_not_covered_by_windows(clconv, rng):
    """Stride 3 leaves trailing rows/columns no window reads: their input gradient is zero."""
    gi, _ = check_grads(clconv, rng, (1, 2, 9, 7), (2, 2, 2, 2), stride=3)
    assert not gi[..., -1].any() and not gi[..., -1, :].any()


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("stride, padding, dilation",
                         [(1, 0, 1), (2, 1, 1), (3, 2, 2), (1, "same", 2), (2, "valid", 1)],
                         ids=lambda v: str(v))
def test_geometry_1d_3d(clconv, rng, nd, stride, padding, dilation):
    spatial, kernel = {1: ((9,), (3,)), 3: ((4, 5, 4), (2, 3, 2))}[nd]
    check_grads(clconv, rng, (2, 3) + spatial, (4, 3) + kernel, stride=stride, padding=padding,
                dilation=dilation)


# ---------------------------------------------------------------------------
# groups x padding modes, shapes
# ---------------------------------------------------------------------------

# name -> (N, C_in, C_out, groups): N >= groups batches over images, N < groups over groups
GROUPINGS = {
    "g1": (2, 4, 4, 1),
    "g2-n2": (2, 4, 6, 2),
    "g2-n1": (1, 4, 6, 2),
    "depthwise-n3": (3, 4, 8, 4),
    "depthwise-n1": (1, 3, 3, 3),
}


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("grouping", list(GROUPINGS))
def test_groups_and_padding_modes(clconv, rng, grouping, padding_mode):
    n, cin, cout, groups = GROUPINGS[grouping]
    check_grads(clconv, rng, (n, cin, 5, 6), (cout, cin // groups, 3, 3), padding=(1, 2),
                groups=groups, padding_mode=padding_mode)


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_padding_modes_1d_3d(clconv, rng, nd, padding_mode):
    spatial, kernel, pad = {1: ((6,), (3,), 2), 3: ((3, 4, 3), (2, 3, 2), (1, 2, 1))}[nd]
    check_grads(clconv, rng, (2, 2) + spatial, (3, 2) + kernel, padding=pad, stride=2,
                padding_mode=padding_mode)


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_padding_modes_same_and_limits(clconv, rng, padding_mode):
    """'same' with an even kernel (asymmetric padding), and the largest legal padding."""
    check_grads(clconv, rng, (1, 2, 5, 6), (3, 2, 2, 3), padding="same", dilation=(1, 2),
                padding_mode=padding_mode)
    pad = (2, 3) if padding_mode == "reflect" else (3, 4)
    check_grads(clconv, rng, (1, 2, 3, 4), (2, 2, 3, 3), padding=pad, padding_mode=padding_mode)


SHAPE_CASES = {
    "pointwise": ((3, 4, 5, 6), (5, 4, 1, 1), {}),
    "pointwise-n1-groups2": ((1, 4, 3, 3), (4, 2, 1, 1), {"groups": 2}),
    "pointwise-stride2": ((2, 3, 5, 6), (2, 3, 1, 1), {"stride": 2}),
    "kernel-eq-input": ((2, 2, 4, 5), (3, 2, 4, 5), {}),
    "n1": ((1, 3, 6, 5), (4, 3, 3, 3), {"padding": 1}),
    "medium": ((2, 8, 11, 9), (12, 8, 3, 3), {"padding": 1, "stride": 2}),
}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_shapes(clconv, rng, case):
    x_shape, w_shape, kwargs = SHAPE_CASES[case]
    check_grads(clconv, rng, x_shape, w_shape, **kwargs)


@pytest.mark.parametrize("limit", ["two-images", "one-column"])
def test_batch_chunks(clconv, rng, monkeypatch, limit):
    """A small workspace splits the batch; the chunks' weight gradients are summed (beta = 1). The
    smallest limit the weight gradient takes holds one column of its im2col matrix (then it works
    one image at a time, in ranges of output positions); below that it is a MemoryError (see
    tests/test_review_fixes.py)."""
    from helpers import set_default_workspace_limit

    col_image = 3 * 9 * 5 * 5 * 4 + 4 * 27 * 4  # columns + partial of one image, float32 bytes
    value = 2 * col_image if limit == "two-images" else 4 * 9 * 4  # the widest column, 4 * 3x3
    set_default_workspace_limit(monkeypatch, value)
    check_grads(clconv, rng, (5, 3, 5, 5), (4, 3, 3, 3), padding=1)
    check_grads(clconv, rng, (3, 4, 5, 5), (4, 2, 3, 3), padding=1, groups=2,
                padding_mode="reflect")


# ---------------------------------------------------------------------------
# dtypes, kinds, empty
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("nd", [1, 2, 3])
def test_dtypes(clconv, rng, dtype, nd):
    spatial, kernel = {1: ((7,), (3,)), 2: ((5, 4), (3, 2)), 3: ((3, 4, 3), (2, 2, 3))}[nd]
    check_grads(clconv, rng, (2, 4) + spatial, (4, 2) + kernel, dtype=dtype, groups=2, stride=2,
                padding=1)


@pytest.mark.parametrize("kind", ["numpy", "strided", "fortran", "cl"])
def test_input_kinds(clconv, dev, rng, kind):
    check_grads(clconv, rng, (2, 3, 6, 5), (4, 3, 3, 3), padding=1, kind=kind, queue=dev.queue)


def test_result_kind_follows_the_data_argument(clconv, dev, rng):
    """conv*_input returns what grad_output is; conv*_weight what input is."""
    x = random_array(rng, (1, 2, 4, 4))
    w = random_array(rng, (3, 2, 3, 3))
    g = random_array(rng, (1, 3, 2, 2))
    gd = cla.to_device(dev.queue, g)
    assert isinstance(clconv.conv2d_input(x.shape, w, gd), cla.Array)
    assert isinstance(clconv.conv2d_input(x.shape, cla.to_device(dev.queue, w), g), np.ndarray)
    assert isinstance(clconv.conv2d_weight(x, w.shape, gd), np.ndarray)
    assert isinstance(clconv.conv2d_weight(cla.to_device(dev.queue, x), w.shape, g), cla.Array)


def test_size_arguments_accept_lists_and_torch_sizes(clconv, rng):
    x = random_array(rng, (1, 2, 4, 4))
    w = random_array(rng, (3, 2, 3, 3))
    g = random_array(rng, (1, 3, 2, 2))
    a = clconv.conv2d_input([1, 2, 4, 4], w, g)
    b = clconv.conv2d_input(np.array([1, 2, 4, 4]), w, g)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(clconv.conv2d_weight(x, [3, 2, 3, 3], g),
                                  clconv.conv2d_weight(x, (3, 2, 3, 3), g))


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_empty_batch(clconv, dev, rng, nd, kind):
    """N = 0: an empty input gradient and an all-zero weight gradient (torch gives the same)."""
    spatial, kernel = {1: ((7,), (3,)), 2: ((5, 4), (3, 2)), 3: ((3, 4, 3), (2, 2, 3))}[nd]
    x = np.zeros((0, 2) + spatial, np.float32)
    w = random_array(rng, (3, 2) + kernel)
    out = ref.conv_nd(np.zeros((1, 2) + spatial), w).shape[2:]
    g = np.zeros((0, 3) + out, np.float32)
    gi = getattr(clconv, f"conv{nd}d_input")(x.shape, as_kind(w, kind, dev.queue),
                                             as_kind(g, kind, dev.queue))
    gw = getattr(clconv, f"conv{nd}d_weight")(as_kind(x, kind, dev.queue), w.shape,
                                              as_kind(g, kind, dev.queue))
    assert gi.shape == x.shape and gi.dtype == np.float32
    assert gw.shape == w.shape and gw.dtype == np.float32
    assert isinstance(gw, cla.Array if kind == "cl" else np.ndarray)
    assert not (gw.get() if kind == "cl" else gw).any()


def test_no_stale_workspace(clconv, rng):
    """A NaN left in the shared column buffer by an earlier call must not leak into a result."""
    x = random_array(rng, (2, 3, 6, 6))
    x[0, 0, 2, 2] = np.nan
    clconv.conv2d_weight(x, (4, 3, 3, 3), random_array(rng, (2, 4, 4, 4)))  # fills the buffer
    check_grads(clconv, rng, (3, 3, 6, 6), (4, 3, 3, 3))


# ---------------------------------------------------------------------------
# finite differences of clconv's own forward convolution (float64)
# ---------------------------------------------------------------------------

FD_CASES = [
    ((2, 4, 5, 6), (6, 2, 3, 2), {"stride": (2, 1), "padding": 1, "dilation": (1, 2), "groups": 2}),
    ((1, 2, 7), (3, 2, 3), {"stride": 2, "padding": 2, "padding_mode": "reflect"}),
    ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), {"padding": "same", "padding_mode": "circular"}),
    ((2, 2, 4, 4), (2, 2, 3, 3), {"padding": (2, 1), "padding_mode": "replicate"}),
]


@pytest.mark.parametrize("case", range(len(FD_CASES)))
def test_finite_differences(clconv, dev, rng, case):
    """d/dt sum(conv(x + t dx, w + t dw) * g) at t = 0 equals <grad_x, dx> + <grad_w, dw>."""
    if not dev.fp64:
        pytest.skip("finite differences need float64")
    x_shape, w_shape, kw = FD_CASES[case]
    nd = len(w_shape) - 2
    conv = getattr(clconv, f"conv{nd}d")
    x, dx = rng.standard_normal(x_shape), rng.standard_normal(x_shape)
    w, dw = rng.standard_normal(w_shape), rng.standard_normal(w_shape)
    g = rng.standard_normal(conv(x, w, **kw).shape)
    mode = kw.pop("padding_mode", "zeros")

    def loss(t):
        return float((conv(x + t * dx, w + t * dw, padding_mode=mode, **kw) * g).sum())

    eps = 1e-4
    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    gi = getattr(clconv, f"conv{nd}d_input")(x_shape, w, g, padding_mode=mode, **kw)
    gw = getattr(clconv, f"conv{nd}d_weight")(x, w_shape, g, padding_mode=mode, **kw)
    analytic = float((gi * dx).sum() + (gw * dw).sum())
    np.testing.assert_allclose(analytic, fd, rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------

XS, WS, GS = (1, 2, 5, 5), (3, 2, 3, 3), (1, 3, 3, 3)

INPUT_BAD = [
    # (overrides, exception, match)
    ({"input_size": (2, 5, 5)}, ValueError, "input_size must have 4 entries"),
    ({"input_size": 5}, TypeError, "input_size"),
    ({"input_size": (1, 2, 5.0, 5)}, TypeError, "input_size"),
    ({"input_size": (1, 2, -5, 5)}, ValueError, "input_size .* has a negative size"),
    ({"input_size": (1, 4, 5, 5)}, ValueError, "input_size has 4 channels"),
    ({"input_size": (1, 2, 6, 6)}, ValueError, "grad_output must have"),
    ({"grad": (1, 3, 3, 4)}, ValueError, "grad_output must have"),
    ({"grad": (3, 3, 3)}, ValueError, "grad_output must have"),
    ({"w": (3, 2, 3)}, ValueError, "weight must have 4 dims"),
    ({"stride": 0}, ValueError, "stride"),
    ({"padding": -1}, ValueError, "padding"),
    ({"padding": "full"}, ValueError, "padding"),
    ({"dilation": (1, 0)}, ValueError, "dilation"),
    ({"groups": 2}, ValueError, "input_size has 2 channels"),
    ({"groups": 0}, ValueError, "groups"),
    ({"padding_mode": "mirror"}, ValueError, "padding_mode"),
    ({"padding": 5, "padding_mode": "reflect"}, ValueError, "reflect"),
]

WEIGHT_BAD = [
    ({"weight_size": (3, 2, 3)}, ValueError, "weight_size must have 4 entries"),
    ({"weight_size": None}, TypeError, "weight_size"),
    ({"weight_size": (3, 2, 3, 3.5)}, TypeError, "weight_size"),
    ({"weight_size": (3, 3, 3, 3)}, ValueError, "channel"),
    ({"weight_size": (3, 2, 2, 2)}, ValueError, "grad_output must have"),
    ({"weight_size": (0, 2, 3, 3)}, ValueError, "weight must have non-zero"),
    ({"x": (2, 5, 5)}, ValueError, "input must be batched"),
    ({"grad": (1, 2, 3, 3)}, ValueError, "grad_output must have"),
    ({"stride": (1, 2, 3)}, ValueError, "stride"),
    ({"groups": 1.0}, TypeError, "groups"),
    ({"padding": "same", "stride": 2}, ValueError, "same"),
]


@pytest.mark.parametrize("which, case", [("input", i) for i in range(len(INPUT_BAD))] +
                         [("weight", i) for i in range(len(WEIGHT_BAD))])
def test_bad_arguments(clconv, which, case):
    """conv2d_input(input_size, w, g) and conv2d_weight(x, weight_size, g) with one argument bad
    (the others XS, WS, GS)."""
    changes, error, match = (INPUT_BAD if which == "input" else WEIGHT_BAD)[case]
    o = dict(changes)
    if which == "input":
        args = (o.pop("input_size", XS), np.zeros(o.pop("w", WS), np.float32))
    else:
        args = (np.zeros(o.pop("x", XS), np.float32), o.pop("weight_size", WS))
    g = np.zeros(o.pop("grad", GS), np.float32)
    with pytest.raises(error, match=match):
        getattr(clconv, f"conv2d_{which}")(*args, g, **o)


def test_bad_dtypes(clconv):
    w = np.zeros(WS, np.float32)
    g = np.zeros(GS, np.float32)
    with pytest.raises(TypeError, match="grad_output has dtype int64"):
        clconv.conv2d_input(XS, w, g.astype(np.int64))
    with pytest.raises(TypeError, match="mixed dtypes"):
        clconv.conv2d_weight(np.zeros(XS, np.float64), WS, g)


def test_oversized_operands_are_memory_errors(clconv, dev):
    """Operands larger than the device's largest allocation: MemoryError naming the shape, raised
    before anything is allocated (the broadcast arrays have no memory behind them)."""
    side = int((dev.max_alloc_bytes // 4) ** 0.5) + 2
    huge = np.broadcast_to(np.float32(1), (1, 1, side, side))
    w = np.ones((1, 1, 2, 2), np.float32)
    g = np.broadcast_to(np.float32(1), (1, 1, side - 1, side - 1))
    with pytest.raises(MemoryError, match=f"input \\(1, 1, {side}, {side}\\)"):
        clconv.conv2d_weight(huge, (1, 1, 2, 2), g)
    with pytest.raises(MemoryError, match=f"grad_output \\(1, 1, {side}, {side}\\)"):
        clconv.conv2d_input((1, 1, side + 1, side + 1), w, huge)


@pytest.mark.parametrize("nd", [1, 3])
def test_wrong_dimensionality(clconv, nd):
    with pytest.raises(ValueError, match=f"input_size must have {nd + 2} entries"):
        getattr(clconv, f"conv{nd}d_input")(XS, np.zeros(WS, np.float32), np.zeros(GS, np.float32))
    with pytest.raises(ValueError, match=f"weight_size must have {nd + 2} entries"):
        getattr(clconv, f"conv{nd}d_weight")(np.zeros(XS, np.float32), WS,
                                             np.zeros(GS, np.float32))


# ---------------------------------------------------------------------------
# optional cross-check against torch.nn.grad
# ---------------------------------------------------------------------------

TORCH_CASES = [
    ((2, 4, 7, 6), (6, 2, 3, 2), {"stride": 2, "padding": 1, "groups": 2}),
    ((1, 3, 8, 7), (2, 3, 2, 3), {"stride": (3, 2), "padding": (0, 1), "dilation": (2, 1)}),
    ((2, 2, 9), (3, 2, 4), {"stride": 2, "padding": 1, "dilation": 2}),
    ((1, 2, 4, 5, 3), (2, 2, 2, 3, 2), {"stride": (1, 2, 1), "padding": 1}),
]


@pytest.mark.parametrize("case", range(len(TORCH_CASES)))
def test_matches_torch(clconv, rng, case):
    torch, nd, x, w, kw = torch_case(rng, TORCH_CASES[case])
    x_shape, w_shape = x.shape, w.shape
    g = random_array(rng, ref.conv_nd(x, w, **kw).shape)
    tg = getattr(torch.nn.grad, f"conv{nd}d_input")(x_shape, torch.from_numpy(w),
                                                   torch.from_numpy(g), **kw).numpy()
    tw = getattr(torch.nn.grad, f"conv{nd}d_weight")(torch.from_numpy(x), w_shape,
                                                    torch.from_numpy(g), **kw).numpy()
    gi = getattr(clconv, f"conv{nd}d_input")(x_shape, w, g, **kw)
    gw = getattr(clconv, f"conv{nd}d_weight")(x, w_shape, g, **kw)
    groups = kw.get("groups", 1)
    assert_close(gi, tg.astype(np.float64), np.float32,
                 reduction=w_shape[0] // groups * math.prod(w_shape[2:]),
                 magnitude=conv_magnitude(g, w))
    assert_close(gw, tw.astype(np.float64), np.float32,
                 reduction=math.prod(g.shape[2:]) * x_shape[0], magnitude=conv_magnitude(g, x))
