"""clconv.local_response_norm (cl/local_response_norm.cl) against
torch.nn.functional.local_response_norm and a numpy float64 oracle: 1-3 spatial dims, windows of
one channel to wider than the channels (clipped, still averaged over `size`), torch's defaults
and other alpha / beta / k, NaN and Inf, float64 where the device has it, device operands, a plan
across batch sizes, and torch's errors. Tolerance: a sum of `size` squares, a pow and a divide."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
from helpers import random_array
from tolerance import assert_close

import clconv


def _oracle(x, size, alpha=1e-4, beta=0.75, k=1.0):
    v = x.astype(np.float64)
    c = v.shape[1]
    sq = v * v
    out = np.empty_like(v)
    for ch in range(c):
        lo, hi = max(ch - size // 2, 0), min(ch + (size - 1) // 2, c - 1)
        mean = sq[:, lo:hi + 1].sum(axis=1) / size
        with np.errstate(invalid="ignore"):
            out[:, ch] = v[:, ch] / (mean * alpha + k) ** beta
    return out


def _dtypes(dev):
    return (np.float32, np.float64) if dev.fp64 else (np.float32,)


@pytest.mark.parametrize("shape, args", [
    ((2, 8, 5, 6), (5,)),                       # AlexNet's: size 5, torch's alpha, beta, k
    ((2, 8, 5, 6), (5, 1e-4, 0.75, 2.0)),       # the paper's k = 2
    ((3, 6, 7), (3, 0.5, 0.5, 1.0)),            # 1-d
    ((1, 4, 3, 5, 2), (2, 1.0, 1.5, 0.5)),      # 3-d, an even window
    ((2, 3, 4, 4), (7, 0.1, 0.75, 1.0)),        # window wider than the channels
    ((2, 5, 3, 3), (1, 2.0, 0.75, 1.0)),        # a channel alone
], ids=str)
def test_matches_oracle_and_torch(dev, rng, shape, args):
    torch = pytest.importorskip("torch")
    for dtype in _dtypes(dev):
        x = (random_array(rng, shape, np.float64) * 3).astype(dtype)
        got = clconv.local_response_norm(x, *args)
        assert got.dtype == dtype and got.shape == x.shape
        assert_close(got, _oracle(x, *args), dtype, reduction=args[0], magnitude=8)
        want = torch.nn.functional.local_response_norm(torch.from_numpy(x), *args).numpy()
        assert_close(got, want, dtype, reduction=args[0], magnitude=8)


def test_nan_inf_and_negative_bases_as_torch(dev):
    """A NaN or Inf reaches its window's outputs as torch's; k < 0 gives a negative base, whose
    power is NaN."""
    torch = pytest.importorskip("torch")
    x = np.linspace(-2, 2, 2 * 6 * 3, dtype=np.float32).reshape(2, 6, 3)
    x[0, 1, 0], x[1, 4, 2] = np.nan, np.inf
    for k in (1.0, -0.5):
        got = clconv.local_response_norm(x, 3, 1.0, 0.75, k)
        want = torch.nn.functional.local_response_norm(torch.from_numpy(x), 3, 1.0, 0.75,
                                                       k).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isnan(want).any()
        finite = np.isfinite(want)
        assert_close(got[finite], want[finite], np.float32, reduction=3, magnitude=8)


def test_device_operands_out_and_batch_sizes(dev, rng):
    x = random_array(rng, (4, 6, 5, 5))
    xd = cla.to_device(dev.queue, x)
    y = clconv.local_response_norm(xd, 3)
    assert isinstance(y, cla.Array)
    assert_close(y.get(), _oracle(x, 3), np.float32, reduction=3, magnitude=8)
    out = cla.empty(dev.queue, x.shape, np.float32)
    assert clconv.local_response_norm(xd, 3, out=out) is out
    assert_close(out.get(), _oracle(x, 3), np.float32, reduction=3, magnitude=8)
    plan = clconv.LocalResponseNormPlan(dev, x.shape, 4, 1e-3, 0.75, 1.0, np.float32)
    for n in (4, 1, 3):
        assert_close(plan(x[:n]), _oracle(x[:n], 4, 1e-3), np.float32, reduction=4, magnitude=8)
    assert clconv.local_response_norm(np.zeros((0, 3, 2), np.float32), 2).shape == (0, 3, 2)


@pytest.mark.parametrize("shape, args, error, match", [
    ((3, 4), (2,), ValueError, "3D or higher"),
    ((2, 3, 4), (0,), ValueError, "positive"),
    ((2, 3, 4), (-1,), ValueError, "positive"),
    ((2, 3, 4), (2.5,), TypeError, "size must be an int"),
    ((2, 3, 4), (True,), TypeError, "size must be an int"),
    ((2, 3, 4), (2, "a"), TypeError, "alpha"),
    ((2, 3, 4), (2, 1e-4, None), TypeError, "beta"),
], ids=str)
def test_bad_arguments(dev, shape, args, error, match):
    with pytest.raises(error, match=match):
        clconv.local_response_norm(np.ones(shape, np.float32), *args)
