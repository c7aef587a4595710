"""clconv.im2col / clconv.col2im against the oracle (torch.nn.functional.unfold / fold).

im2col is pure data movement and must match exactly; col2im sums
overlapping windows, so it is compared with the float32 tolerance scaled by
the kernel size (the largest possible number of overlapping terms).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyopencl.array as cla
import pytest
import reference as ref
from helpers import as_kind, import_torch, random_array
from tolerance import assert_close, assert_exact, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _prod(k):
    return k * k if isinstance(k, int) else math.prod(k)


# (kernel_size, dilation, padding, stride)
UNFOLD_CASES = [
    (k, 1, p, s)
    for k, s, p in itertools.product([1, (2, 3), 3], [1, 2, (2, 1)], [0, 1, (1, 2)])
] + [
    ((2, 3), 2, 1, 1),
    ((2, 3), (1, 2), 1, 1),
    (3, 2, 1, 1),
    (3, (1, 2), (0, 2), (1, 2)),
]

# a smaller selection for col2im (each distinct geometry costs a kernel build)
FOLD_CASES = [UNFOLD_CASES[i] for i in (0, 4, 9, 13, 17, 20, 22, 26)] + UNFOLD_CASES[27:]


def _ids(case):
    k, d, p, s = case
    return f"k{k}-d{d}-p{p}-s{s}".replace(" ", "")


@pytest.mark.parametrize("case", UNFOLD_CASES, ids=_ids)
def test_im2col_matches_reference(clconv, rng, case):
    k, d, p, s = case
    x = random_array(rng, (2, 3, 7, 6))
    got = clconv.im2col(x, k, dilation=d, padding=p, stride=s)
    want = ref.unfold(x, k, d, p, s)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == want.shape
    assert_exact(got, want)


@pytest.mark.parametrize("case", FOLD_CASES, ids=_ids)
def test_col2im_matches_reference(clconv, rng, case):
    k, d, p, s = case
    H, W = 7, 6
    L = ref.unfold(np.zeros((1, 1, H, W)), k, d, p, s).shape[-1]
    cols = random_array(rng, (2, 3 * _prod(k), L))
    got = clconv.col2im(cols, (H, W), k, dilation=d, padding=p, stride=s)
    want = ref.fold(cols, (H, W), k, d, p, s)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == (2, 3, H, W)
    assert_close(got, want, np.float32, reduction=_prod(k), magnitude=np.abs(cols).max())


@pytest.mark.parametrize(
    "case",
    [(3, 1, 1, 1), ((2, 3), 1, 0, 1), (3, 2, 1, 2), ((3, 2), (2, 1), (1, 2), (2, 1)), (2, 1, 0, 3)],
    ids=_ids,
)
def test_fold_of_unfold_is_input_times_overlap_count(clconv, rng, case):
    """col2im(im2col(x)) == x * col2im(im2col(ones)), computed entirely with clconv."""
    k, d, p, s = case
    x = random_array(rng, (2, 2, 6, 7))
    args = {"dilation": d, "padding": p, "stride": s}
    roundtrip = clconv.col2im(clconv.im2col(x, k, **args), (6, 7), k, **args)
    counts = clconv.col2im(clconv.im2col(np.ones_like(x), k, **args), (6, 7), k, **args)
    np.testing.assert_array_equal(counts, ref.fold(ref.unfold(np.ones(x.shape), k, **args), (6, 7), k, **args))
    assert_close(roundtrip, x.astype(np.float64) * counts, np.float32, reduction=_prod(k),
                 magnitude=np.abs(x).max())


def test_non_overlapping_roundtrip_is_exact(clconv, rng):
    """stride == kernel and no padding: every pixel is in exactly one block."""
    x = random_array(rng, (1, 3, 6, 8))
    cols = clconv.im2col(x, (3, 2), stride=(3, 2))
    assert cols.shape == (1, 3 * 6, 2 * 4)
    np.testing.assert_array_equal(clconv.col2im(cols, (6, 8), (3, 2), stride=(3, 2)), x)


def test_int_and_tuple_arguments_are_equivalent(clconv, rng):
    x = random_array(rng, (1, 2, 6, 6))
    a = clconv.im2col(x, 3, dilation=1, padding=1, stride=2)
    b = clconv.im2col(x, (3, 3), dilation=(1, 1), padding=(1, 1), stride=(2, 2))
    np.testing.assert_array_equal(a, b)
    c1 = clconv.col2im(a, 6, 3, padding=1, stride=2)
    c2 = clconv.col2im(a, (6, 6), (3, 3), padding=(1, 1), stride=(2, 2))
    np.testing.assert_array_equal(c1, c2)


@pytest.mark.parametrize("kind", ["numpy", "strided", "transposed", "fortran", "cl"])
def test_im2col_input_kinds(clconv, dev, rng, kind):
    x = random_array(rng, (2, 3, 6, 5))
    got = clconv.im2col(as_kind(x, kind, dev.queue), (2, 3), padding=1)
    if kind == "cl":
        assert isinstance(got, cla.Array)
        assert got.context == dev.context
    else:
        assert isinstance(got, np.ndarray)
    assert_exact(got, ref.unfold(x, (2, 3), padding=1))


@pytest.mark.parametrize("kind", ["numpy", "strided", "cl"])
def test_col2im_input_kinds(clconv, dev, rng, kind):
    L = ref.unfold(np.zeros((1, 1, 6, 5)), (2, 3), padding=1).shape[-1]
    cols = random_array(rng, (2, 3 * 6, L))  # 6x5 output, kernel 2x3, padding 1
    got = clconv.col2im(as_kind(cols, kind, dev.queue), (6, 5), (2, 3), padding=1)
    if kind == "cl":
        assert isinstance(got, cla.Array)
        assert got.context == dev.context
    else:
        assert isinstance(got, np.ndarray)
    assert_close(got, ref.fold(cols, (6, 5), (2, 3), padding=1), np.float32, reduction=6,
                 magnitude=np.abs(cols).max())


@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_unbatched(clconv, dev, rng, kind):
    """(C, H, W) -> (C*kh*kw, L) and back, like torch's unbatched unfold/fold."""
    x = random_array(rng, (3, 5, 6))
    cols = clconv.im2col(as_kind(x, kind, dev.queue), (2, 2), stride=1)
    assert cols.shape == (12, 4 * 5)
    assert_exact(cols, ref.unfold(x, (2, 2)))
    back = clconv.col2im(cols, (5, 6), (2, 2))
    assert back.shape == (3, 5, 6)
    assert_close(back, ref.fold(ref.unfold(x, (2, 2)), (5, 6), (2, 2)), np.float32, reduction=4,
                 magnitude=np.abs(x).max())


@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_empty_batch(clconv, dev, kind):
    x = np.zeros((0, 2, 5, 5), np.float32)
    cols_np = np.zeros((0, 2 * 9, 9), np.float32)
    if kind == "cl":
        x_in, cols_in = cla.empty(dev.queue, x.shape, np.float32), cla.empty(dev.queue, cols_np.shape, np.float32)
    else:
        x_in, cols_in = x, cols_np
    cols = clconv.im2col(x_in, 3)
    assert cols.shape == (0, 18, 9) and cols.dtype == np.float32
    img = clconv.col2im(cols_in, (5, 5), 3)
    assert img.shape == (0, 2, 5, 5) and img.dtype == np.float32


def test_float64(clconv, dev, rng):
    if not dev.fp64:
        pytest.skip("device has no float64")
    x = rng.standard_normal((2, 2, 6, 5))
    cols = clconv.im2col(x, (3, 2), dilation=(1, 2), padding=1, stride=(2, 1))
    assert cols.dtype == np.float64
    assert_exact(cols, ref.unfold(x, (3, 2), (1, 2), 1, (2, 1)))
    img = clconv.col2im(cols, (6, 5), (3, 2), dilation=(1, 2), padding=1, stride=(2, 1))
    assert img.dtype == np.float64
    assert_close(img, ref.fold(cols, (6, 5), (3, 2), (1, 2), 1, (2, 1)), np.float64, reduction=6,
                 magnitude=np.abs(x).max())


def test_im2col_copies_nan_and_inf(clconv):
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4)
    x[0, 0, 1, 1] = np.nan
    x[0, 1, 2, 3] = -np.inf
    assert_exact(clconv.im2col(x, 2, padding=1), ref.unfold(x, 2, padding=1))


def test_conv2d_equals_weight_matmul_im2col(clconv, rng):
    """conv2d(x, w) == w.reshape(C_out, -1) @ im2col(x): the two public ops are consistent."""
    x = random_array(rng, (2, 3, 7, 6))
    w = random_array(rng, (4, 3, 2, 3))
    kw = {"dilation": (2, 1), "padding": (1, 2), "stride": (1, 2)}
    cols = clconv.im2col(x, (2, 3), **kw)
    via_cols = np.einsum("ok,nkl->nol", w.reshape(4, -1).astype(np.float64), cols.astype(np.float64))
    out = clconv.conv2d(x, w, **kw)
    assert_close(out, via_cols.reshape(out.shape), np.float32, reduction=conv_reduction(w),
                 magnitude=conv_magnitude(x, w))


TORCH_CASES = [(3, 1, 1, 1), ((2, 3), (2, 1), (1, 0), (2, 1)), (1, 1, 0, 2), (4, 1, 2, 3)]


@pytest.mark.parametrize("case", TORCH_CASES, ids=_ids)
def test_matches_torch(clconv, rng, case):
    torch = import_torch()
    F = torch.nn.functional
    k, d, p, s = case
    x = random_array(rng, (2, 2, 7, 6))
    want = F.unfold(torch.from_numpy(x), k, dilation=d, padding=p, stride=s).numpy()
    got = clconv.im2col(x, k, dilation=d, padding=p, stride=s)
    assert_exact(got, want)
    cols = random_array(rng, want.shape)
    want_f = F.fold(torch.from_numpy(cols), (7, 6), k, dilation=d, padding=p, stride=s).numpy()
    got_f = clconv.col2im(cols, (7, 6), k, dilation=d, padding=p, stride=s)
    assert_close(got_f, want_f.astype(np.float64), np.float32, reduction=_prod(k), magnitude=np.abs(cols).max())


@pytest.mark.parametrize("kw", [{"kernel_size": 3, "padding": 1},
                                {"kernel_size": (2, 3), "dilation": (1, 2), "stride": (2, 1)}])
def test_torch_names_unfold_and_fold_match_torch(clconv, rng, kw):
    """clconv.unfold / clconv.fold are im2col / col2im under torch.nn.functional's names, with
    its arguments (keywords included) and results."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    assert clconv.unfold is clconv.im2col and clconv.fold is clconv.col2im
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    cols = clconv.unfold(x, **kw)
    want = F.unfold(torch.from_numpy(x), **kw).numpy()
    np.testing.assert_array_equal(cols, want)  # a pure gather: exact
    back = clconv.fold(cols, output_size=(9, 8), **kw)
    np.testing.assert_allclose(back, F.fold(torch.from_numpy(want), (9, 8), **kw).numpy(),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["kernel_size", "dilation", "padding", "stride", "output_size"])
def test_one_tuples_refused_as_torch(clconv, rng, name):
    """torch's unfold/fold take an int or exactly 2 values: a 1-tuple (which the convolutions
    expand) is an error there, and here."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    cols = rng.standard_normal((1, 18, 9)).astype(np.float32)
    kw = {"kernel_size": 3, name: (3,) if name in ("kernel_size", "output_size") else (1,)}
    if name != "output_size":
        with pytest.raises(RuntimeError):
            F.unfold(torch.from_numpy(x), **kw)
        with pytest.raises(ValueError, match=name):
            clconv.unfold(x, **kw)
    kw.setdefault("output_size", 5)
    with pytest.raises(RuntimeError):
        F.fold(torch.from_numpy(cols), **kw)
    with pytest.raises(ValueError, match=name):
        clconv.fold(cols, **kw)
