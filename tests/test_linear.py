"""clconv.linear against torch.nn.functional.linear and a float64 numpy product: any leading dims
(none, empty), bias, a 1-d weight, the fused epilogue (activation and residual) on both GEMM engines, device
arrays, out= and bad arguments."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
import reference_layers as ref
from helpers import import_torch, random_array
from tolerance import assert_close


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _dtypes(dev):
    return (np.float32, np.float64) if dev.fp64 else (np.float32,)


@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (0,), (1, 1, 4)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(clconv, dev, rng, engine, lead, bias):
    torch = import_torch()
    for dtype in _dtypes(dev):
        x = random_array(rng, (*lead, 13), dtype)
        w = random_array(rng, (7, 13), dtype)
        b = random_array(rng, (7,), dtype) if bias else None
        got = clconv.linear(x, w, b)
        assert got.shape == (*lead, 7) and got.dtype == dtype
        want = x.astype(np.float64) @ w.astype(np.float64).T + (0 if b is None else b)
        assert_close(got, want, dtype, reduction=13, magnitude=16)
        want_t = torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w),
                                            None if b is None else torch.from_numpy(b)).numpy()
        assert_close(got, want_t, dtype, reduction=13, magnitude=16)


@pytest.mark.parametrize("activation, oracle", [
    ("relu", ref.ACTIVATIONS["relu"]), ("gelu", ref.ACTIVATIONS["gelu"]),
    (("leaky_relu", 0.3), lambda v: np.where(v > 0, v, 0.3 * v)),
    (("clamp", -1.0, 1.5), lambda v: np.clip(v, -1.0, 1.5)), ("sigmoid", ref.ACTIVATIONS["sigmoid"]),
], ids=["relu", "gelu", "leaky_relu-0.3", "clamp--1-1.5", "sigmoid"])  # stable ids: no addresses
@pytest.mark.parametrize("residual", [True, False])
def test_fused_epilogue(clconv, dev, rng, engine, activation, oracle, residual):
    for dtype in _dtypes(dev):
        x = random_array(rng, (3, 9, 40), dtype)  # 27 rows: edge tiles of every register block
        w, b = random_array(rng, (21, 40), dtype), random_array(rng, (21,), dtype)
        r = random_array(rng, (3, 9, 21), dtype) if residual else None
        got = clconv.linear(x, w, b, activation=activation, residual=r)
        pre = x.astype(np.float64) @ w.astype(np.float64).T + b + (0 if r is None else r)
        assert_close(got, oracle(pre), dtype, reduction=40, magnitude=16)


def test_nan_propagates(clconv, rng, engine):
    x = random_array(rng, (4, 6))
    x[1, 2] = np.nan
    w = random_array(rng, (5, 6))
    got = clconv.linear(x, w, np.zeros(5, np.float32), activation="relu")
    assert np.isnan(got[1]).all() and not np.isnan(np.delete(got, 1, 0)).any()


def test_device_arrays_and_out(clconv, dev, rng):
    x, w, b = random_array(rng, (6, 8)), random_array(rng, (4, 8)), random_array(rng, (4,))
    xd, wd = cla.to_device(dev.queue, x), cla.to_device(dev.queue, w)
    y = clconv.linear(xd, wd, b)
    assert isinstance(y, cla.Array)
    want = x.astype(np.float64) @ w.T + b
    assert_close(y.get(), want, np.float32, reduction=8, magnitude=16)
    out = cla.empty(dev.queue, (6, 4), np.float32)
    assert clconv.linear(xd, wd, b, out=out) is out
    assert_close(out.get(), want, np.float32, reduction=8, magnitude=16)
    host = np.empty((6, 4), np.float32)
    assert clconv.linear(x, w, b, out=host) is host
    plan = clconv.LinearPlan(dev, x.shape, w.shape, b.shape, np.float32)
    assert_close(plan(x, w, b), want, np.float32, reduction=8, magnitude=16)


@pytest.mark.parametrize("lead", [(), (2, 3), (0, 3)], ids=str)
def test_vector_weight_as_torch(clconv, dev, rng, lead):
    """A 1-d weight (in,) is torch's matrix-vector form: output (*lead), a 0-d bias; the fused
    activation and residual, device arrays and out= as with a 2-d weight; a 1-d bias refused, and
    a bias with a 2-d input (torch's addmm refuses that)."""
    torch = import_torch()
    t = torch.from_numpy
    for dtype in _dtypes(dev):
        x, w = random_array(rng, (*lead, 11), dtype), random_array(rng, (11,), dtype)
        b = np.asarray(0.25, dtype)
        want = torch.nn.functional.linear(t(x), t(w), t(b)).numpy()
        got = clconv.linear(x, w, b)
        assert got.shape == lead and got.dtype == dtype
        assert_close(got, want, dtype, reduction=11, magnitude=16)
        assert_close(clconv.linear(x, w), torch.nn.functional.linear(t(x), t(w)).numpy(), dtype,
                     reduction=11, magnitude=16)
        r = random_array(rng, lead, dtype)
        got = clconv.linear(cla.to_device(dev.queue, x), cla.to_device(dev.queue, w), b,
                            activation="relu", residual=r)
        assert isinstance(got, cla.Array) and got.shape == lead
        assert_close(got.get(), np.maximum(want + r, 0), dtype, reduction=11, magnitude=16)
        out = np.empty(lead, dtype)
        assert clconv.linear(x, w, b, out=out) is out
        assert_close(out, want, dtype, reduction=11, magnitude=16)
    with pytest.raises(ValueError, match="0-d"):  # (a 1-d bias: torch's matrix path refuses)
        clconv.linear(x, w, np.ones(1, w.dtype))
    x2, w, b = random_array(rng, (5, 11)), random_array(rng, (11,)), np.asarray(0.5, np.float32)
    assert_close(clconv.linear(x2, w), torch.nn.functional.linear(t(x2), t(w)).numpy(),
                 np.float32, reduction=11, magnitude=16)
    with pytest.raises(RuntimeError, match="matrix"):
        torch.nn.functional.linear(t(x2), t(w), t(b))
    with pytest.raises(ValueError, match="matrix"):
        clconv.linear(x2, w, b)
    with pytest.raises(ValueError, match="features"):
        clconv.linear(x, random_array(rng, (7,), x.dtype))


@pytest.mark.parametrize("lead, bias", [((2, 3), (2, 3)), ((2, 3), (1, 1)),
                                        ((4, 2, 3), (1, 2, 3)), ((4, 2, 3), (4, 2, 1)),
                                        ((4, 2, 3), (2, 3))], ids=str)
def test_vector_weight_takes_a_bias_broadcasting_to_the_output(clconv, dev, rng, lead, bias):
    """With a 1-d weight, torch adds a bias of >= 2 dims to the product in place: one that
    broadcasts to the output (*lead) is added (with the activation after it, device arrays and
    out= too); one that would broadcast the output beyond its shape is refused, as torch does."""
    torch = import_torch()
    t = torch.from_numpy
    x, w, b = (random_array(rng, s) for s in ((*lead, 11), (11,), bias))
    want = torch.nn.functional.linear(t(x), t(w), t(b)).numpy()
    got = clconv.linear(x, w, b)
    assert got.shape == lead
    assert_close(got, want, np.float32, reduction=11, magnitude=16)
    r = random_array(rng, lead)
    got = clconv.linear(cla.to_device(dev.queue, x), w, cla.to_device(dev.queue, b),
                        activation="relu", residual=r)
    assert isinstance(got, cla.Array)
    assert_close(got.get(), np.maximum(want + r, 0), np.float32, reduction=11, magnitude=16)
    out = np.empty(lead, np.float32)
    assert clconv.linear(x, w, b, out=out) is out
    assert_close(out, want, np.float32, reduction=11, magnitude=16)
    wide = random_array(rng, (5, *lead[1:]))
    with pytest.raises(RuntimeError):
        torch.nn.functional.linear(t(x), t(w), t(wide))
    with pytest.raises(ValueError, match="broadcast"):
        clconv.linear(x, w, wide)


def test_scalar_bias_broadcasts_as_torch(clconv, dev, rng):
    """A 0-d or (1,) bias is spread over the features, as torch's F.linear does (numpy, torch
    and device arrays)."""
    torch = import_torch()
    x, w = random_array(rng, (3, 6)), random_array(rng, (5, 6))
    t = torch.from_numpy
    for b in (np.asarray(0.5, np.float32), np.asarray([-1.5], np.float32)):
        want = torch.nn.functional.linear(t(x), t(w), t(b)).numpy()
        for kind in (b, t(b), cla.to_device(dev.queue, b)):
            got = clconv.linear(x, w, kind)
            assert_close(got, want, np.float32, reduction=6, magnitude=16)


@pytest.mark.parametrize("x_shape, b_shape", [((3, 6), (3, 5)), ((3, 6), (3, 1)), ((3, 6), (1, 5)),
                                              ((2, 3, 6), (3, 5)), ((2, 3, 6), (2, 3, 5))])
def test_a_bias_that_broadcasts_to_the_output_as_torch(clconv, dev, rng, x_shape, b_shape):
    """A bias of another shape that broadcasts to the output (torch's addmm beside a 2-d input
    takes (N, out) or (N, 1)), with the residual and the activation in torch's order; one that
    would widen the output is refused."""
    torch = import_torch()
    x, w, b = (random_array(rng, s) for s in (x_shape, (5, 6), b_shape))
    r = random_array(rng, (*x_shape[:-1], 5))
    t = torch.from_numpy
    want = torch.relu(torch.nn.functional.linear(t(x), t(w), t(b)) + t(r)).numpy()
    for kind in (b, t(b), cla.to_device(dev.queue, b)):
        got = clconv.linear(x, w, kind, activation="relu", residual=r)
        assert_close(got, want, np.float32, reduction=6, magnitude=16)
    with pytest.raises(ValueError, match="broadcasts to the output's"):
        clconv.linear(x, w, random_array(rng, (4, *x_shape[:-1], 5)))


def test_zero_features(clconv, rng):
    got = clconv.linear(np.ones((3, 0), np.float32), np.ones((2, 0), np.float32),
                        np.array([1.0, -2.0], np.float32))
    np.testing.assert_array_equal(got, [[1.0, -2.0]] * 3)


@pytest.mark.parametrize("shapes, error, words", [
    (((3, 5), (4, 6), None, None), ValueError, "features"),
    (((3, 5), (4, 5, 1), None, None), ValueError, "weight"),
    (((3, 5), (4, 5), (3,), None), ValueError, "bias"),
    (((3, 5), (4, 5), (4,), (3, 5)), ValueError, "residual"),
], ids=["features", "weight-dims", "bias", "residual"])
def test_bad_arguments(clconv, rng, shapes, error, words):
    x, w, b, r = (None if s is None else random_array(rng, s) for s in shapes)
    with pytest.raises(error, match=words):
        clconv.linear(x, w, b, residual=r)


def test_bad_activation_and_dtypes(clconv, rng):
    x, w = random_array(rng, (3, 5)), random_array(rng, (4, 5))
    with pytest.raises(ValueError, match="activation"):
        clconv.linear(x, w, activation="swish")
    with pytest.raises(TypeError, match="dtype"):
        clconv.linear(x, w.astype(np.float64))
    torch = import_torch()
    with pytest.raises(RuntimeError):  # torch refuses mixed dtypes too
        torch.nn.functional.linear(torch.from_numpy(x), torch.from_numpy(w.astype(np.float64)))


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("k", [5, 8, 203])
def test_few_rows_as_torch(clconv, dev, rng, rows, k):
    """A few rows (a classifier at batch 1-4) on CPU devices run cl/gemv.cl (a weight row read
    once for every row; k below, at and beyond a vector of 8), five the GEMM: bias, residual and
    activation in its store, device operands at an offset, float64."""
    from clconv.ops.linear import GEMV_KINDS, GEMV_ROWS, LinearPlan

    torch = import_torch()
    for dtype in _dtypes(dev):
        x = random_array(rng, (rows, k), dtype)
        w, b = random_array(rng, (33, k), dtype), random_array(rng, (33,), dtype)
        r = random_array(rng, (rows, 33), dtype)
        plan = LinearPlan(dev, x.shape, w.shape, b.shape, dtype, "silu", r.shape)
        assert (plan.gemv is not None) == (dev.kind in GEMV_KINDS and rows <= GEMV_ROWS)
        want = torch.nn.functional.silu(torch.nn.functional.linear(
            *(torch.from_numpy(a.astype(np.float64)) for a in (x, w, b))) +
            torch.from_numpy(r.astype(np.float64))).numpy()
        assert_close(plan(x, w, b, residual=r), want, dtype, reduction=k, magnitude=16)
        big = cla.to_device(dev.queue, np.concatenate([np.zeros(3, dtype), w.ravel()]))
        got = clconv.linear(cla.to_device(dev.queue, x), big[3:].reshape(w.shape), None)
        want = (x.astype(np.float64) @ w.astype(np.float64).T)
        assert_close(got.get(), want, dtype, reduction=k, magnitude=16)
