"""clconv.layer_norm and clconv.instance_norm against torch.nn.functional (the reference: torch
in float64) through the public API: numpy and device arrays, normalized over 1-3 trailing dims,
with and without weight and bias, one value a row, NaN/Inf rows, instance statistics or running
ones, and the argument errors.

Tolerance: float32 results within 1e-5 relative of the float64 result's scale plus 1e-5 (the
statistics are float32 sums over up to a few thousand values)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _want(x, ns, w, b, eps=1e-5):
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    return F.layer_norm(t(x), ns, t(w), t(b), eps).numpy()


@pytest.mark.parametrize("shape, ns", [((4, 10), (10,)), ((2, 3, 5, 6), (5, 6)),
                                       ((2, 3, 5, 6), (3, 5, 6)), ((7,), [7]), ((0, 4), (4,))],
                         ids=["features", "spatial", "chw", "1-d", "empty"])
@pytest.mark.parametrize("affine", [False, True])
def test_matches_torch(clconv, rng, queue, shape, ns, affine):
    import pyopencl.array as cla

    x = rng.standard_normal(shape).astype(np.float32) * 3 + 1
    nst = tuple(ns)
    w = rng.standard_normal(nst).astype(np.float32) if affine else None
    b = rng.standard_normal(nst).astype(np.float32) if affine else None
    want = _want(x, nst, w, b)
    got = clconv.layer_norm(x, ns, w, b)
    assert isinstance(got, np.ndarray) and got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    d = lambda a: None if a is None else cla.to_device(queue, a)  # noqa: E731
    got = clconv.layer_norm(d(x), ns, d(w), d(b), eps=1e-5)
    assert isinstance(got, cla.Array)
    np.testing.assert_allclose(got.get(), want, rtol=1e-5, atol=1e-5)


def test_one_value_a_row_and_non_finite_rows(clconv):
    x = np.array([[1.5], [-2.0], [np.inf], [np.nan]], np.float32)
    got = clconv.layer_norm(x, (1,))
    np.testing.assert_array_equal(got, F.layer_norm(torch.from_numpy(x), (1,)).numpy())
    y = np.array([[1.0, 2.0, np.inf], [1.0, np.nan, 0.0], [3.0, 4.0, 5.0]], np.float32)
    want = F.layer_norm(torch.from_numpy(y), (3,)).numpy()
    got = clconv.layer_norm(y, (3,))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ns, w_shape, error, match", [
    ((4,), None, ValueError, "does not end in"),
    ((2, 5), None, ValueError, "does not end in"),
    ((5,), (4,), ValueError, "weight must have shape"),
    (5.0, None, TypeError, "sequence of ints"),
    (5, None, TypeError, r"sequence of ints, e\.g\. \(5,\)"),  # as F.layer_norm
    ((), None, ValueError, "does not end in"),
])
def test_bad_arguments(clconv, ns, w_shape, error, match):
    x = np.zeros((3, 5), np.float32)
    w = None if w_shape is None else np.ones(w_shape, np.float32)
    with pytest.raises(error, match=match):
        clconv.layer_norm(x, ns, w)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (3, 4, 7), (1, 2, 3, 4, 2)], ids=["2d", "1d", "3d"])
@pytest.mark.parametrize("affine", [False, True])
def test_instance_norm_matches_torch(clconv, rng, shape, affine):
    """clconv.instance_norm: each instance's statistics, or (use_input_stats=False) the running
    ones, as F.instance_norm."""
    x = rng.standard_normal(shape).astype(np.float32) * 2 - 1
    c = shape[1]
    w = rng.standard_normal(c).astype(np.float32) if affine else None
    b = rng.standard_normal(c).astype(np.float32) if affine else None
    t = lambda a: None if a is None else torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    want = F.instance_norm(t(x), weight=t(w), bias=t(b)).numpy()
    np.testing.assert_allclose(clconv.instance_norm(x, weight=w, bias=b), want, rtol=1e-5,
                               atol=1e-5)
    mean = rng.standard_normal(c).astype(np.float32)
    var = rng.random(c).astype(np.float32) + 0.5
    want = F.instance_norm(t(x), t(mean), t(var), t(w), t(b), use_input_stats=False).numpy()
    np.testing.assert_allclose(clconv.instance_norm(x, mean, var, w, b, use_input_stats=False),
                               want, rtol=1e-5, atol=1e-5)


def test_instance_norm_refusals(clconv):
    x = np.zeros((2, 3, 4, 4), np.float32)
    stats = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match="update them"):
        clconv.instance_norm(x, *stats)
    with pytest.raises(ValueError, match="needs running_mean"):
        clconv.instance_norm(x, use_input_stats=False)
    for shape in ((2, 3, 1), (0, 3, 1), (2, 0, 1, 1), (0, 0, 1)):  # (torch: empty ones too)
        with pytest.raises(ValueError, match="more than 1 spatial element"):
            clconv.instance_norm(np.zeros(shape, np.float32))
    assert clconv.instance_norm(np.zeros((0, 3, 5), np.float32)).shape == (0, 3, 5)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        clconv.instance_norm(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, C, \*spatial\)"):
        clconv.instance_norm(np.zeros(3, np.float32), *stats, use_input_stats=False)


def test_instance_norm_of_a_2d_input_with_running_stats_as_torch(clconv, rng):
    """(N, C) with use_input_stats=False: BatchNorm on the running statistics, as torch's (which
    refuses the input's own statistics there: one value an instance)."""
    x = rng.standard_normal((3, 4)).astype(np.float32)
    mean, var = rng.standard_normal(4).astype(np.float32), rng.random(4).astype(np.float32) + 0.5
    w, b = rng.standard_normal(4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    t = lambda a: torch.from_numpy(np.asarray(a, np.float64))  # noqa: E731
    want = F.instance_norm(t(x), t(mean), t(var), t(w), t(b), use_input_stats=False).numpy()
    np.testing.assert_allclose(clconv.instance_norm(x, mean, var, w, b, use_input_stats=False),
                               want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eps", [1e-5, 0.0, -1e-5])
def test_eps_at_and_below_zero_as_torch(clconv, dtype, eps):
    """eps <= 0 (torch does not refuse it here): layer_norm over one value a row is x - x times
    1 / sqrt(0 + eps), NaN for eps <= 0; instance_norm's statistics are batch_norm's, whose
    1 / sqrt(var + eps) is 0 where both are 0, so a constant instance gives 0 at eps = 0 (and NaN
    below); group_norm gives NaN there as torch's."""
    rows = np.array([[0.3], [-1.2], [np.inf], [np.nan]], dtype)
    want = F.layer_norm(torch.from_numpy(rows), (1,), eps=eps).numpy()
    np.testing.assert_array_equal(clconv.layer_norm(rows, (1,), eps=eps), want)
    x = np.concatenate([np.full((1, 2, 3), 2.0), np.arange(6.0).reshape(1, 2, 3)]).astype(dtype)
    for got, ref in ((clconv.instance_norm(x, eps=eps), F.instance_norm(torch.from_numpy(x),
                                                                        eps=eps)),
                     (clconv.group_norm(x, 2, eps=eps), F.group_norm(torch.from_numpy(x), 2,
                                                                     eps=eps))):
        ref = ref.numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
