"""algorithm='winograd' (F(2x2, 3x3), cl/winograd.cl) against the float64 oracle.

Small shapes cover: odd output sizes (tiles hanging over the edge), every padding and padding_mode,
groups, bias and ReLU, batch > 1, unbatched and pyopencl inputs, float64, and workspace limits that
split the call by images and by rows of tiles. Shapes Winograd cannot compute raise ValueError
naming 'algorithm' and the reason. Tolerances: see tolerance.py (Winograd's transforms add a few
ulps of the larger terms, well inside them).
"""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest

import reference as ref
from helpers import random_array
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def check(clconv, rng, x_shape, w_shape, *, bias=True, activation=None, padding=1,
          padding_mode="zeros", groups=1, dtype=np.float32, workspace_limit=None):
    x = random_array(rng, x_shape, dtype)
    w = random_array(rng, w_shape, dtype)
    b = random_array(rng, (w_shape[0],), dtype) if bias else None
    got = clconv.conv2d(x, w, b, padding=padding, groups=groups, padding_mode=padding_mode,
                        algorithm="winograd", activation=activation,
                        workspace_limit=workspace_limit)
    want = ref.conv_nd(x, w, b, 1, padding, 1, groups, padding_mode)
    if activation == "relu":
        want = np.maximum(want, 0)
    assert got.dtype == np.dtype(dtype) and got.shape == want.shape
    assert_close(got, want, dtype, conv_reduction(w), conv_magnitude(x, w, b))
    return got


# (x shape, w shape, padding, padding_mode, groups)
CASES = {
    "even-pad1": ((2, 5, 8, 8), (6, 5, 3, 3), 1, "zeros", 1),
    "odd-valid": ((1, 3, 9, 7), (4, 3, 3, 3), 0, "zeros", 1),  # 7x5 outputs: half tiles
    "pad2-odd": ((3, 4, 6, 5), (2, 4, 3, 3), 2, "zeros", 1),
    "same": ((1, 6, 11, 13), (5, 6, 3, 3), "same", "zeros", 1),
    "asym-pad": ((2, 3, 7, 10), (3, 3, 3, 3), (0, 2), "zeros", 1),
    "reflect": ((2, 3, 7, 6), (4, 3, 3, 3), 1, "reflect", 1),
    "replicate": ((1, 4, 5, 9), (3, 4, 3, 3), 2, "replicate", 1),
    "circular": ((2, 2, 6, 7), (3, 2, 3, 3), 1, "circular", 1),
    "groups": ((2, 6, 9, 9), (4, 3, 3, 3), 1, "zeros", 2),
    "depthwise-reflect": ((1, 4, 8, 5), (8, 1, 3, 3), 1, "reflect", 4),
    "3x3-input": ((2, 3, 3, 3), (2, 3, 3, 3), 0, "zeros", 1),  # a single output
    "wide": ((1, 40, 10, 12), (36, 40, 3, 3), 1, "zeros", 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(clconv, rng, case):
    x_shape, w_shape, padding, mode, groups = CASES[case]
    check(clconv, rng, x_shape, w_shape, padding=padding, padding_mode=mode, groups=groups,
          activation="relu" if case in ("even-pad1", "reflect", "groups") else None,
          bias=case != "odd-valid")


def test_float64(clconv, dev, rng):
    if not dev.fp64:
        pytest.skip(f"{dev.name} has no float64 support")
    check(clconv, rng, (2, 3, 7, 8), (4, 3, 3, 3), dtype=np.float64)


def test_unbatched_and_device_arrays(clconv, dev, rng):
    x = random_array(rng, (3, 9, 6))
    w = random_array(rng, (5, 3, 3, 3))
    b = random_array(rng, (5,))
    want = ref.conv_nd(x, w, b, 1, 1)
    got = clconv.conv2d(x, w, b, padding=1, algorithm="winograd")
    assert got.shape == (5, 9, 6)
    assert_close(got, want, np.float32, conv_reduction(w), conv_magnitude(x, w, b))
    # pyopencl arrays, the input at an offset inside its buffer: the result stays on the device
    big = cla.to_device(dev.queue, np.concatenate([np.zeros(7, np.float32), x.ravel()]))
    xd = big[7:].reshape(x.shape)
    got_d = clconv.conv2d(xd, cla.to_device(dev.queue, w), cla.to_device(dev.queue, b), padding=1,
                          algorithm="winograd")
    assert isinstance(got_d, cla.Array)
    np.testing.assert_array_equal(got_d.get(), got)


@pytest.mark.parametrize("limit", ["images", "tile-rows", "one-row"])
def test_workspace_limit_splits(clconv, rng, limit):
    """Chunks of images, then of tile rows, give the unsplit result (within rounding)."""
    from clconv.ops.conv import plan_winograd
    from clconv.ops.geometry import conv_geometry

    x_shape, w_shape = (3, 4, 9, 11), (5, 4, 3, 3)
    geo = conv_geometry(2, x_shape, w_shape, 1, 1, 1, 1)
    full = plan_winograd(geo, 4, 2**40)
    th, tw = (geo.out_size[0] + 1) // 2, (geo.out_size[1] + 1) // 2
    filters = 16 * 5 * 4 * 4
    per_row = 16 * (4 + 5) * 4 * tw
    nbytes = {"images": full.nbytes - 1, "tile-rows": filters + per_row * (th - 1),
              "one-row": filters + per_row}[limit]
    plan = plan_winograd(geo, 4, nbytes)
    assert plan.nbytes <= nbytes
    assert (plan.batch_chunk, plan.row_chunk) != (full.batch_chunk, full.row_chunk)
    check(clconv, rng, x_shape, w_shape, workspace_limit=nbytes, activation="relu")
    with pytest.raises(MemoryError, match="workspace_limit"):
        check(clconv, rng, x_shape, w_shape, workspace_limit=filters + per_row - 1)


@pytest.mark.parametrize("call, why", [
    (lambda c, x: c.conv2d(x, np.ones((2, 3, 5, 5), np.float32), algorithm="winograd"), "3x3"),
    (lambda c, x: c.conv2d(x, np.ones((2, 3, 3, 3), np.float32), stride=2,
                           algorithm="winograd"), "stride"),
    (lambda c, x: c.conv2d(x, np.ones((2, 3, 3, 3), np.float32), dilation=2,
                           algorithm="winograd"), "dilation"),
    (lambda c, x: c.conv1d(x[:, :, 0], np.ones((2, 3, 3), np.float32), algorithm="winograd"),
     "2-d"),
    (lambda c, x: c.conv3d(x[:, :, None], np.ones((2, 3, 1, 3, 3), np.float32),
                           algorithm="winograd"), "2-d"),
], ids=["5x5", "stride2", "dilation2", "conv1d", "conv3d"])
def test_unsupported_shapes_raise(clconv, call, why):
    x = np.ones((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=f"algorithm='winograd'.*{why}"):
        call(clconv, x)


def test_workspace_size(clconv):
    n, c, h, w, k = 2, 8, 10, 7, 6
    tiles = n * 5 * 4  # ceil(10 / 2) * ceil(7 / 2) per image (padding 1 keeps 10 x 7)
    want = 4 * (16 * k * c + 16 * (c + k) * tiles)
    assert clconv.workspace_size((n, c, h, w), (k, c, 3, 3), padding=1,
                                 algorithm="winograd") == want
