"""clconv.pad (cl/pad.cl) against torch.nn.functional.pad and numpy's np.pad: every mode, 1-3
padded dims, batched and unbatched, negative amounts (cropping, and circular's crop-then-wrap),
NaN kept, device operands, float64 where the device has it, and torch's errors. Data movement:
the results must be exact."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
from helpers import random_array

import clconv

CASES = [  # (input shape, pad)
    ((2, 3, 7), (1, 2)),
    ((3, 7), (2, 0)),
    ((2, 3, 7), (-1, 2)),
    ((2, 3, 7), (3, -2)),
    ((2, 3, 5, 6), (1, 2, 2, 1)),
    ((2, 3, 5, 6), (-1, 1, 3, 0)),
    ((3, 5, 6), (4, 4, 2, 2)),
    ((1, 2, 4, 5, 3), (1, 1, 1, 1, 1, 1)),
    ((1, 2, 4, 5, 3), (2, 0, -1, 3, 1, 0)),
    ((2, 3, 4, 5), (1, 1, 1, 1, 1, 1)),  # pads C too (an unbatched 3-d view)
]
MODES = ["constant", "reflect", "replicate", "circular"]


def _numpy_pad(x, pad, mode, value):
    """np.pad with torch's argument order, cropping for negative amounts; circular as torch's:
    crop first, then wrap around within what is left."""
    dims = len(pad) // 2
    for i in range(dims):
        ax = x.ndim - 1 - i
        lo, hi = pad[2 * i], pad[2 * i + 1]
        n = x.shape[ax]
        x = np.take(x, range(max(-lo, 0), n - max(-hi, 0)), axis=ax)
        width = [(0, 0)] * x.ndim
        width[ax] = (max(lo, 0), max(hi, 0))
        np_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
                   "circular": "wrap"}[mode]
        kw = {"constant_values": 0.0 if value is None else value} if mode == "constant" else {}
        x = np.pad(x, width, mode=np_mode, **kw)
    return x


def _valid(shape, pad, mode):
    if mode == "constant":
        return True
    dims = len(pad) // 2
    if len(shape) not in (dims + 1, dims + 2):
        return False
    for i in range(dims):
        n, lo, hi = shape[-1 - i], pad[2 * i], pad[2 * i + 1]
        left = n - max(-lo, 0) - max(-hi, 0)
        if mode == "reflect" and max(lo, hi) >= n or mode == "circular" and max(lo, hi) > left:
            return False
    return True


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape, pad", CASES, ids=[f"{s}-{p}" for s, p in CASES])
def test_matches_numpy_and_torch(dev, rng, shape, pad, mode):
    if not _valid(shape, pad, mode):
        pytest.skip("torch refuses it (test_errors_as_torch covers those)")
    x = random_array(rng, shape)
    x.flat[1] = np.nan
    value = 2.5 if mode == "constant" else None
    got = clconv.pad(x, pad, mode, value)
    want = _numpy_pad(x, pad, mode, value)
    np.testing.assert_array_equal(got, want)
    torch = pytest.importorskip("torch")
    kw = {"value": value} if value is not None else {}
    np.testing.assert_array_equal(
        got, torch.nn.functional.pad(torch.from_numpy(x), pad, mode=mode, **kw).numpy())


def test_device_operands_float64_and_plans(dev, rng):
    x = random_array(rng, (2, 3, 5, 6))
    xd = cla.to_device(dev.queue, x)
    y = clconv.pad(xd, (1, 2, 0, 1), "reflect")
    assert isinstance(y, cla.Array)
    np.testing.assert_array_equal(y.get(), _numpy_pad(x, (1, 2, 0, 1), "reflect", None))
    plan = clconv.PadPlan(dev, x.shape, (2, 2, 1, 0), "replicate", None, np.float32)
    np.testing.assert_array_equal(plan(x), _numpy_pad(x, (2, 2, 1, 0), "replicate", None))
    np.testing.assert_array_equal(clconv.pad(x[:0], (1, 1)), np.zeros((0, 3, 5, 8), np.float32))
    if dev.fp64:
        x64 = x.astype(np.float64)
        got = clconv.pad(x64, (1, 0, 2, 1), value=-1.0)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, _numpy_pad(x64, (1, 0, 2, 1), "constant", -1.0))


@pytest.mark.parametrize("shape, pad, kwargs, error, words", [
    ((2, 3, 5), (1,), {}, ValueError, "even"),
    ((2, 3, 5), (1.5, 1), {}, TypeError, "ints"),
    ((2, 3, 5), (1, 1), {"mode": "wrap"}, ValueError, "mode"),
    ((2, 3, 5), (5, 0), {"mode": "reflect"}, ValueError, "less than"),
    ((2, 3, 5), (6, 0), {"mode": "circular"}, ValueError, "more than once"),
    ((2, 3, 5), (1, 1), {"mode": "reflect", "value": 1.0}, ValueError, "value"),
    ((2, 3, 5, 6), (1, 1), {"mode": "reflect"}, ValueError, "last 1, 2 or 3"),
    ((2, 3, 5), (-4, -2), {}, ValueError, "negative"),
    ((2, 3, 5), (-6, 2), {}, ValueError, "crops more than"),  # torch crops first
    ((2, 3, 5), (2, -6), {}, ValueError, "crops more than"),
    ((2, 3, 5), (0, -5), {"mode": "reflect"}, ValueError, "empty"),
    ((2, 3, 5), (-2, -3), {"mode": "replicate"}, ValueError, "empty"),
    ((2, 3, 5), (-5, 0), {}, None, None),  # constant padding may leave a dim empty
    # reflect/replicate crops to an empty dim: empty, as torch, unless every padded dim is empty
    ((2, 5, 4, 3), (-3, 0, 0, 0), {"mode": "replicate"}, None, None),
    ((2, 5, 4, 3), (0, 0, -1, -3), {"mode": "reflect"}, None, None),
    ((1, 2, 3, 4, 3), (-1, -2, 0, 0, 0, 0), {"mode": "replicate"}, None, None),
    ((1, 1, 2, 3, 2), (-2, 0, -3, 0, 0, 0), {"mode": "reflect"}, None, None),
    ((1, 1, 3, 2), (-2, 0, -3, 0), {"mode": "replicate"}, ValueError, "every padded dim"),
    ((1, 1, 3, 2), (-2, 0, -3, 0), {"mode": "reflect"}, ValueError, "every padded dim"),
    ((1, 1, 2, 3, 2), (-2, 0, -3, 0, -2, 0), {"mode": "replicate"}, ValueError,
     "every padded dim"),
    ((0, 3, 5), (1, 1), {"mode": "reflect"}, None, None),  # an empty batch is fine
    ((2, 3, 5), (1, 2), {"mode": "replicate", "value": 0.0}, None, None),  # 0: as no value
    ((2, 3, 5), (2, 1), {"mode": "circular", "value": 0}, None, None),
    ((2, 0, 5), (1, 1), {"mode": "replicate"}, ValueError, "non-empty"),
    # circular takes empty dims (it wraps within each dim), as torch
    ((2, 0, 4, 5), (1, 1, 1, 1), {"mode": "circular"}, None, None),
    ((2, 3, 0, 5), (1, 1, 0, 0), {"mode": "circular"}, None, None),
    ((2, 3, 0, 5), (1, 1, 1, 1), {"mode": "circular"}, ValueError, "more than once"),
    # a value the dtype cannot hold (an infinite one it can), as torch
    ((2, 3, 5), (1, 1), {"value": 1e40}, ValueError, "without overflow"),
    ((2, 3, 5), (1, 1), {"value": -np.inf}, None, None),
], ids=lambda v: str(v))
def test_errors_as_torch(dev, rng, shape, pad, kwargs, error, words):
    x = random_array(rng, shape)
    torch = pytest.importorskip("torch")
    if error is None:
        got = clconv.pad(x, pad, **kwargs)
        np.testing.assert_array_equal(
            got, torch.nn.functional.pad(torch.from_numpy(x), pad, **kwargs).numpy())
        return
    with pytest.raises(error, match=words):
        clconv.pad(x, pad, **kwargs)
    with pytest.raises((RuntimeError, ValueError, TypeError, NotImplementedError)):
        torch.nn.functional.pad(torch.from_numpy(x), pad, **kwargs)
