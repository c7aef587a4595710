"""clconv.softmax / clconv.log_softmax (cl/softmax.cl) against a numpy float64 oracle and torch:
any dim (negative too) of 0-d to 4-d inputs, a long slice (1000 classes), NaN (the whole slice),
all -Inf (NaN, as torch), device operands, float64 where the device has it, a plan derived for
another batch, and torch's errors. Tolerance: float32 with a reduction over the slice."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
from helpers import random_array
from tolerance import assert_close

import clconv


def _oracle(x, dim, log):
    v = x.astype(np.float64)
    m = v.max(axis=dim, keepdims=True)
    e = np.exp(v - m)
    s = e.sum(axis=dim, keepdims=True)
    return (v - m) - np.log(s) if log else e / s


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("shape, dim", [((4, 10), 1), ((4, 10), -1), ((2, 3, 4, 5), 1),
                                        ((2, 3, 4, 5), 0), ((7,), 0), ((2, 3, 4), 2),
                                        ((3, 1000), 1)], ids=str)
def test_matches_oracle_and_torch(dev, rng, shape, dim, log):
    x = random_array(rng, shape) * 5
    fn = clconv.log_softmax if log else clconv.softmax
    got = fn(x, dim)
    assert_close(got, _oracle(x, dim, log), np.float32, reduction=shape[dim], magnitude=16)
    torch = pytest.importorskip("torch")
    want = (torch.log_softmax if log else torch.softmax)(torch.from_numpy(x), dim).numpy()
    assert_close(got, want, np.float32, reduction=shape[dim], magnitude=16)


def test_specials_devices_dtypes_batches(dev, rng):
    x = random_array(rng, (3, 5))
    x[1, 2] = np.nan
    x[2] = -np.inf
    got = clconv.softmax(x, 1)
    assert np.isnan(got[1:]).all() and not np.isnan(got[0]).any()
    y = clconv.log_softmax(cla.to_device(dev.queue, x[:1].copy()), -1)
    assert isinstance(y, cla.Array)
    assert_close(y.get(), _oracle(x[:1], 1, True), np.float32, reduction=5, magnitude=16)
    plan = clconv.SoftmaxPlan(dev, (4, 6), 1, np.float32)
    z = random_array(rng, (9, 6))  # another batch: a derived plan
    assert_close(plan(z), _oracle(z, 1, False), np.float32, reduction=6, magnitude=16)
    assert float(clconv.softmax(np.array(3.0, np.float32), 0)) == 1.0
    if dev.fp64:
        x64 = random_array(rng, (3, 7), np.float64)
        np.testing.assert_allclose(clconv.softmax(x64, 0), _oracle(x64, 0, False), rtol=1e-12)


def test_errors_as_torch(dev, rng):
    x = random_array(rng, (2, 3))
    with pytest.raises(IndexError, match="out of range"):
        clconv.softmax(x, 2)
    with pytest.raises(TypeError, match="dim"):
        clconv.softmax(x, 1.0)
    with pytest.warns(UserWarning, match="Implicit dimension"):
        assert_close(clconv.softmax(x), _oracle(x, 1, False), np.float32, reduction=3)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_dtype_argument_as_torch(dev, rng, log):
    """torch's dtype=: the input cast first, the result in that dtype (torch's and numpy's dtypes;
    host and device operands; the positional form F.softmax(x, dim, _stacklevel, dtype))."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ours, theirs = (clconv.log_softmax, F.log_softmax) if log else (clconv.softmax, F.softmax)
    wide = np.float64 if dev.fp64 else np.float32
    torch_wide = torch.float64 if dev.fp64 else torch.float32
    x = random_array(rng, (3, 7))
    want = theirs(torch.from_numpy(x), 1, dtype=torch_wide).numpy()
    for got in (ours(x, 1, dtype=torch_wide), ours(x, 1, 3, wide),
                ours(cla.to_device(dev.queue, x), 1, dtype=wide).get()):
        assert got.dtype == wide
        assert_close(got, want, wide, reduction=7, magnitude=4)
    with pytest.raises(TypeError, match="no clconv counterpart"):
        ours(x, 1, dtype=torch.int32)
    # an integer or bool input is cast as torch casts it: numpy, and a device array on the device
    for int_dtype in (np.int64, np.int32, np.uint8, np.bool_):
        xi = (np.arange(21).reshape(3, 7) % 4).astype(int_dtype)
        want = theirs(torch.from_numpy(xi), 1, dtype=torch.float32).numpy()
        for got in (ours(xi, 1, dtype=np.float32),
                    ours(cla.to_device(dev.queue, xi), 1, dtype=np.float32).get()):
            assert got.dtype == np.float32
            assert_close(got, want, np.float32, reduction=7, magnitude=4)
    with pytest.raises(TypeError, match="complex64"):
        ours(cla.to_device(dev.queue, np.ones((2, 3), np.complex64)), 1, dtype=np.float32)
