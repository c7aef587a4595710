"""clconv.conv1d / clconv.conv3d (exported next to conv2d) against the N-d oracle.

A small sample only: the 2-d tests cover the argument combinations in depth;
here we check that the 1-d and 3-d entry points map their dims correctly.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
from helpers import random_array
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    if not hasattr(clconv, "conv1d") or not hasattr(clconv, "conv3d"):
        pytest.skip("clconv has no conv1d/conv3d")
    return clconv


CASES_1D = {
    "basic": ((2, 3, 9), (4, 3, 3), {"padding": 1, "bias": True}),
    "stride-dilation": ((1, 2, 11), (2, 2, 2), {"stride": 2, "dilation": 3}),
    "same-even-reflect": ((2, 2, 6), (3, 2, 4), {"padding": "same", "padding_mode": "reflect"}),
    "groups-circular": ((1, 4, 7), (4, 2, 3), {"groups": 2, "padding": 2, "padding_mode": "circular"}),
    "unbatched": ((3, 8), (2, 3, 3), {}),
}

CASES_3D = {
    "basic": ((1, 2, 4, 5, 6), (3, 2, 3, 3, 3), {"padding": 1, "bias": True}),
    "anisotropic": ((2, 2, 5, 4, 6), (2, 2, 2, 3, 1), {"stride": (1, 2, 3), "dilation": (2, 1, 1), "padding": (0, 1, 0)}),
    "same-replicate": ((1, 2, 3, 4, 5), (2, 2, 2, 2, 3), {"padding": "same", "padding_mode": "replicate"}),
    "depthwise": ((1, 3, 4, 4, 4), (3, 1, 3, 3, 3), {"groups": 3, "padding": 1}),
    "unbatched": ((2, 3, 4, 5), (2, 2, 2, 2, 2), {}),
}


def _check(fn, rng, x_shape, w_shape, kwargs, algorithm):
    kwargs = dict(kwargs)
    x = random_array(rng, x_shape)
    w = random_array(rng, w_shape)
    b = random_array(rng, (w_shape[0],)) if kwargs.pop("bias", False) else None
    got = fn(x, w, b, algorithm=algorithm, **kwargs)
    want = ref.conv_nd(x, w, b, **kwargs)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert_close(got, want, np.float32, reduction=conv_reduction(w), magnitude=conv_magnitude(x, w, b))


@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
@pytest.mark.parametrize("case", list(CASES_1D))
def test_conv1d(clconv, rng, case, algorithm):
    x_shape, w_shape, kwargs = CASES_1D[case]
    _check(clconv.conv1d, rng, x_shape, w_shape, kwargs, algorithm)


@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
@pytest.mark.parametrize("case", list(CASES_3D))
def test_conv3d(clconv, rng, case, algorithm):
    x_shape, w_shape, kwargs = CASES_3D[case]
    _check(clconv.conv3d, rng, x_shape, w_shape, kwargs, algorithm)


def test_conv1d_rejects_2d_weight(clconv):
    with pytest.raises(ValueError, match="weight"):
        clconv.conv1d(np.ones((1, 2, 5), np.float32), np.ones((2, 2, 3, 3), np.float32))


def test_conv3d_rejects_4d_input_with_wrong_channels(clconv):
    with pytest.raises(ValueError, match="channel|input|weight"):
        clconv.conv3d(np.ones((4, 4, 4, 4), np.float32), np.ones((2, 3, 2, 2, 2), np.float32))
