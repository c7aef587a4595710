"""clconv.matmul against torch.matmul and a float64 numpy product: 1-d operands (row, column, dot),
2-d, batched with a shared operand, batch dims broadcast in part (one GEMM per matrix), empty
dims, on both GEMM engines, numpy and device operands, out=, a plan at another batch size, and
the shapes torch refuses."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
from helpers import import_torch, random_array
from tolerance import assert_close


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


SHAPES = [  # (input, other): torch.matmul's cases
    ((7,), (7,)), ((7,), (7, 5)), ((4, 7), (7,)), ((4, 7), (7, 5)), ((3, 4, 7), (7, 5)),
    ((3, 4, 7), (3, 7, 5)), ((1, 4, 7), (3, 7, 5)), ((4, 7), (3, 7, 5)), ((7,), (2, 7, 5)),
    ((2, 3, 4, 7), (7,)), ((2, 1, 4, 7), (1, 3, 7, 5)), ((4, 1, 2, 7), (3, 7, 5)),
    ((0, 4, 7), (7, 5)), ((4, 0), (0, 5)), ((4, 7), (7, 0)), ((19, 33), (33, 41)),
]


@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: f"{s[0]}@{s[1]}")
def test_matmul_matches_torch(clconv, dev, rng, engine, shapes):
    torch = import_torch()
    a_shape, b_shape = shapes
    for dtype in (np.float32, np.float64) if dev.fp64 else (np.float32,):
        a, b = random_array(rng, a_shape, dtype), random_array(rng, b_shape, dtype)
        want = torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        got = clconv.matmul(a, b)
        assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == want.shape
        k = a_shape[-1]
        exact = np.matmul(a.astype(np.float64), b.astype(np.float64))
        assert_close(got, exact, dtype, reduction=max(k, 1), magnitude=4)
        assert_close(got, want, dtype, reduction=max(k, 1), magnitude=4)
        q = dev.queue
        on_device = clconv.matmul(cla.to_device(q, a), cla.to_device(q, b))
        assert isinstance(on_device, cla.Array)
        np.testing.assert_array_equal(on_device.get(), got)


def test_matmul_plan_out_and_other_batches(clconv, dev, rng):
    """A MatmulPlan runs another batch of its input (the same GEMM, another count), writes out=
    and a strided out= view; NaN and Inf propagate as in a product."""
    q = dev.queue
    w = random_array(rng, (6, 3), np.float32)
    plan = clconv.MatmulPlan(dev, (2, 4, 6), (6, 3), np.float32)
    for n in (2, 5, 0):
        x = random_array(rng, (n, 4, 6), np.float32)
        x[:1, 0, 0] = np.nan
        got = plan(cla.to_device(q, x), cla.to_device(q, w)).get()
        want = np.matmul(x.astype(np.float64), w)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        if n:
            assert np.isnan(got[0, 0]).all()
    x = random_array(rng, (2, 4, 6), np.float32)
    out = cla.zeros(q, (2, 4, 6), np.float32)
    view = out[:, :, ::2]  # (2, 4, 3), strided
    assert clconv.matmul(cla.to_device(q, x), cla.to_device(q, w), out=view) is view
    np.testing.assert_allclose(out.get()[:, :, ::2], x @ w, rtol=1e-5, atol=1e-5)
    assert not out.get()[:, :, 1::2].any()


@pytest.mark.parametrize("a_shape, b_shape, words", [
    ((), (3,), "at least 1 dim"), ((3,), (), "at least 1 dim"),
    ((2, 3), (4, 5), r"cannot be multiplied \(2x3 and 4x5\)"),
    ((3,), (4,), "cannot be multiplied"),
    ((2, 2, 3), (3, 3, 4), "do not broadcast"),
])
def test_matmul_refuses_what_torch_refuses(clconv, dev, a_shape, b_shape, words):
    torch = import_torch()
    a, b = np.ones(a_shape, np.float32), np.ones(b_shape, np.float32)
    with pytest.raises(RuntimeError):
        torch.matmul(torch.from_numpy(a), torch.from_numpy(b))
    with pytest.raises(ValueError, match=words):
        clconv.matmul(a, b)
    with pytest.raises(TypeError, match="mixed dtypes"):
        clconv.matmul(np.ones((2, 3), np.float32), np.ones((3, 2), np.float64))
