"""clconv.group_norm (channel_stats + cl/group_norm.cl) against torch.nn.functional.group_norm
and a numpy float64 oracle: 1-3 spatial dims and none, one group to one group per channel, with
and without the affine weight and bias, a fused activation, device operands, float64 where the
device has it, and torch's errors. Tolerance: float32, a reduction over a group's elements."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
from helpers import random_array
from tolerance import assert_close

import clconv


def _oracle(x, groups, w, b, eps):
    n, c = x.shape[:2]
    v = x.astype(np.float64).reshape(n, groups, -1)
    mean = v.mean(axis=2, keepdims=True)
    var = v.var(axis=2, keepdims=True)
    y = ((v - mean) / np.sqrt(var + eps)).reshape(x.shape)
    shape = (1, c) + (1,) * (x.ndim - 2)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y


@pytest.mark.parametrize("shape, groups", [
    ((2, 8, 5, 6), 4), ((3, 6, 7), 3), ((1, 32, 9, 9), 32), ((2, 4), 2), ((2, 6, 3, 4, 5), 1),
], ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_matches_oracle_and_torch(dev, rng, shape, groups, affine):
    x = random_array(rng, shape) * 3 + 1
    w = random_array(rng, (shape[1],)) if affine else None
    b = random_array(rng, (shape[1],)) if affine else None
    got = clconv.group_norm(x, groups, w, b, eps=1e-5)
    want = _oracle(x, groups, w, b, 1e-5)
    reduction = x.size // (shape[0] * groups)
    assert_close(got, want, np.float32, reduction=reduction, magnitude=8)
    torch = pytest.importorskip("torch")
    t = torch.nn.functional.group_norm(
        torch.from_numpy(x), groups, None if w is None else torch.from_numpy(w),
        None if b is None else torch.from_numpy(b), 1e-5).numpy()
    assert_close(got, t, np.float32, reduction=reduction, magnitude=8)


def test_nan_and_inf_make_their_group_nan_as_torch(dev):
    """An inf in a group makes its variance NaN (inf - inf): the whole group is NaN in torch, and
    here (a clamp of the variance at 0 once made it 0 and the outputs +-inf); a NaN likewise;
    the other groups are untouched."""
    torch = pytest.importorskip("torch")
    x = np.arange(16, dtype=np.float32).reshape(2, 4, 2)
    x[0, 1, 0] = np.inf
    x[1, 3, 1] = np.nan
    got = clconv.group_norm(x, 2)
    want = torch.nn.functional.group_norm(torch.from_numpy(x), 2).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[0, :2]).all() and np.isnan(got[1, 2:]).all()
    np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2, 4, "instance"])
def test_infinite_weights_as_torch(dev, rng, groups):
    """An inf / -inf / NaN weight (and inf biases): NaN, +-inf and finite values where torch has
    them (torch's x * (rstd * w) + (b - mean * rstd * w) makes an infinite scale NaN where
    x * a and mean * a cancel; (x - mean) * a gave +-inf for the channel), in every dtype."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for dtype in (np.float32, np.float64) if dev.fp64 else (np.float32,):
        for trial in range(12):
            x = rng.standard_normal((2, 4, 5)).astype(dtype)
            x[0, trial % 4, trial % 5] = 0  # 0 * inf
            if trial % 3 == 0:
                x[1, 1] = -np.abs(x[1, 1])  # a channel of one sign, its mean too
            w = rng.standard_normal(4).astype(dtype)
            b = rng.standard_normal(4).astype(dtype)
            w[trial % 4] = (np.inf, -np.inf, np.nan)[trial % 3]
            if trial % 4 == 1:
                b[(trial + 1) % 4] = np.inf
            t = torch.from_numpy
            if groups == "instance":
                got = clconv.instance_norm(x, weight=w, bias=b)
                want = F.instance_norm(t(x), weight=t(w), bias=t(b)).numpy()
            else:
                got = clconv.group_norm(x, groups, w, b)
                want = F.group_norm(t(x), groups, t(w), t(b)).numpy()
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
            np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
            finite = np.isfinite(want)
            np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4)


def test_activation_device_operands_float64(dev, rng):
    x = random_array(rng, (2, 6, 4, 5))
    w, b = random_array(rng, (6,)), random_array(rng, (6,))
    y = clconv.group_norm(cla.to_device(dev.queue, x), 3, w, b, activation="silu")
    assert isinstance(y, cla.Array)
    v = _oracle(x, 3, w, b, 1e-5)
    assert_close(y.get(), v / (1 + np.exp(-v)), np.float32, reduction=40, magnitude=8)
    x[0, 1, 2, 2] = np.nan  # poisons its image's group only
    got = clconv.group_norm(x, 3)
    assert np.isnan(got[0, :2]).all() and not np.isnan(got[0, 2:]).any()
    assert not np.isnan(got[1]).any()
    if dev.fp64:
        x64 = random_array(rng, (2, 6, 4, 5), np.float64)
        got = clconv.GroupNormPlan(dev, x64.shape, 2, False, False, 1e-6, np.float64)(x64)
        np.testing.assert_allclose(got, _oracle(x64, 2, None, None, 1e-6), rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize("args, error, words", [
    ((4,), ValueError, "divisible"),
    ((0,), ValueError, "divisible"),
    ((2.0,), TypeError, "num_groups"),
    ((3, np.ones(5, np.float32)), ValueError, "weight"),
], ids=str)
def test_errors_as_torch(dev, rng, args, error, words):
    x = random_array(rng, (2, 6, 3, 3))
    with pytest.raises(error, match=words):
        clconv.group_norm(x, *args)
    torch = pytest.importorskip("torch")
    targs = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises((RuntimeError, ValueError, TypeError, ZeroDivisionError)):
        torch.nn.functional.group_norm(torch.from_numpy(x), *targs)


@pytest.mark.parametrize("shape, groups, refused", [
    ((1, 3), 3, True), ((1, 3, 1), 3, True), ((2, 3), 3, False), ((1, 6), 3, False),
], ids=str)
def test_one_value_per_channel_as_torch(dev, shape, groups, refused):
    """torch refuses an input whose (N * C / G) * spatial is 1 (its batch-size check)."""
    torch = pytest.importorskip("torch")
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    if refused:
        with pytest.raises(ValueError, match="more than 1 value"):
            clconv.group_norm(x, groups)
        with pytest.raises(ValueError):
            torch.nn.functional.group_norm(torch.from_numpy(x), groups)
    else:
        want = torch.nn.functional.group_norm(torch.from_numpy(x), groups).numpy()
        np.testing.assert_allclose(clconv.group_norm(x, groups), want, atol=1e-5)


def test_instance_norm_of_no_channels_is_empty_as_torch(dev):
    torch = pytest.importorskip("torch")
    x = np.zeros((4, 0, 5), np.float32)
    got = clconv.instance_norm(x)
    assert got.shape == tuple(torch.nn.functional.instance_norm(torch.from_numpy(x)).shape)


@pytest.mark.parametrize("value, size", [(3e4, 7), (1e6, 7), (1234.5, 7), (7.7, 1000),
                                         (0.1, 4097)])
def test_constant_groups_normalise_to_zero_as_torch(dev, value, size):
    """A constant group is 0 after normalising (torch gives exactly 0): x * a + (bias - a * mean)
    cancelled two values of ~x / sqrt(eps) (0.496 for 3e4), and a rounded mean of many values
    left (x - mean) * rstd = 0.0027 for 1000 values of 7.7; now x - mean first, and the mean
    summed as deviations from the group's first value. layer_norm and instance_norm share it. (batch_norm with batch
    statistics keeps torch's scale-and-shift form: torch's float32 gives -0.42 for 3e4 there.)"""
    x = np.full((2, 2, size), value, np.float32)
    want = np.zeros_like(x)
    np.testing.assert_array_equal(clconv.group_norm(x, 1), want)
    np.testing.assert_array_equal(clconv.layer_norm(x, (size,)), want)
    np.testing.assert_array_equal(clconv.instance_norm(x), want)
