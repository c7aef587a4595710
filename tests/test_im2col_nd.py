"""clconv.im2col1d/col2im1d and im2col3d/col2im3d against the oracle (``reference.unfold`` and
``reference.fold``).

im2col is data movement (exact); col2im sums up to prod(kernel) overlapping entries (float
tolerance).
"""

from __future__ import annotations

import math

import numpy as np
import pyopencl.array as cla
import pytest
import reference as ref
from helpers import as_kind, random_array
from tolerance import assert_close, assert_exact


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


CASES = {
    1: [  # (kernel_size, dilation, padding, stride) for an image of length 9
        (1, 1, 0, 1), (3, 1, 0, 1), (3, 2, 1, 2), ((4,), 1, 2, 3), (2, 3, (1,), (1,)), (9, 1, 0, 1),
    ],
    3: [  # for a 4 x 5 x 3 image
        (1, 1, 0, 1), (2, 1, 0, 1), ((2, 3, 1), 1, (1, 0, 1), (1, 2, 1)), (2, (1, 2, 1), 1, 2),
        ((3, 2, 2), (1, 1, 2), 0, (2, 1, 1)), ((4, 5, 3), 1, 0, 1),
    ],
}
SIZES = {1: (9,), 3: (4, 5, 3)}


def _ids(case):
    return "k{}-d{}-p{}-s{}".format(*case).replace(" ", "")


def _kernel(k, nd):
    return k if not isinstance(k, int) else (k,) * nd


@pytest.mark.parametrize("nd, case", [(nd, c) for nd in (1, 3) for c in CASES[nd]],
                         ids=lambda v: str(v) if isinstance(v, int) else _ids(v))
def test_im2col_and_col2im(clconv, rng, nd, case):
    k, d, p, s = case
    size = SIZES[nd]
    x = random_array(rng, (2, 3) + size)
    cols = getattr(clconv, f"im2col{nd}d")(x, k, dilation=d, padding=p, stride=s)
    want = ref.unfold(x, _kernel(k, nd), d, p, s)
    assert isinstance(cols, np.ndarray) and cols.dtype == np.float32
    assert_exact(cols, want)
    c = random_array(rng, want.shape)
    img = getattr(clconv, f"col2im{nd}d")(c, size, k, dilation=d, padding=p, stride=s)
    assert img.shape == x.shape
    assert_close(img, ref.fold(c, size, _kernel(k, nd), d, p, s), np.float32,
                 reduction=math.prod(_kernel(k, nd)), magnitude=np.abs(c).max())


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("kind", ["numpy", "strided", "cl"])
def test_input_kinds_and_unbatched(clconv, dev, rng, nd, kind):
    size = SIZES[nd]
    x = random_array(rng, (3,) + size)
    cols = getattr(clconv, f"im2col{nd}d")(as_kind(x, kind, dev.queue), 2, padding=1)
    assert isinstance(cols, cla.Array if kind == "cl" else np.ndarray)
    want = ref.unfold(x, (2,) * nd, 1, 1, 1)
    assert_exact(cols, want)
    back = getattr(clconv, f"col2im{nd}d")(cols, size, 2, padding=1)
    assert back.shape == x.shape
    assert isinstance(back, cla.Array if kind == "cl" else np.ndarray)
    assert_close(back, ref.fold(want, size, (2,) * nd, 1, 1, 1), np.float32, reduction=2 ** nd,
                 magnitude=np.abs(x).max())


@pytest.mark.parametrize("nd", [1, 3])
def test_float64_and_empty(clconv, dev, rng, nd):
    size = SIZES[nd]
    if dev.fp64:
        x = rng.standard_normal((2, 2) + size)
        cols = getattr(clconv, f"im2col{nd}d")(x, 2, stride=2)
        assert cols.dtype == np.float64
        assert_exact(cols, ref.unfold(x, (2,) * nd, 1, 0, 2))
    empty = getattr(clconv, f"im2col{nd}d")(np.zeros((0, 2) + size, np.float32), 2)
    assert empty.shape[0] == 0 and empty.shape[1] == 2 * 2 ** nd
    folded = getattr(clconv, f"col2im{nd}d")(np.zeros((0,) + empty.shape[1:], np.float32), size, 2)
    assert folded.shape == (0, 2) + size


def test_conv_equals_weight_matmul_im2col(clconv, rng):
    """conv1d/conv3d == w.reshape(C_out, -1) @ im2col{1,3}d: the ops share one layout."""
    for nd, size, kernel in ((1, (9,), (3,)), (3, (4, 5, 3), (2, 3, 2))):
        x = random_array(rng, (2, 3) + size)
        w = random_array(rng, (4, 3) + kernel)
        cols = getattr(clconv, f"im2col{nd}d")(x, kernel, padding=1, stride=2)
        via = np.einsum("ok,nkl->nol", w.reshape(4, -1).astype(np.float64), cols)
        out = getattr(clconv, f"conv{nd}d")(x, w, padding=1, stride=2)
        assert_close(out, via.reshape(out.shape), np.float32, reduction=w[0].size,
                     magnitude=np.abs(x).max() * np.abs(w).max())


BAD = [
    ("im2col1d", (1, 2, 3, 4), {"kernel_size": 2}, ValueError, "input must be 2-d .* or 3-d"),
    ("im2col1d", (1, 2, 4), {"kernel_size": (2, 2)}, ValueError, "kernel_size"),
    ("im2col1d", (1, 2, 4), {"kernel_size": 5}, ValueError, "kernel_size"),
    ("im2col1d", (1, 2, 4), {"kernel_size": 2, "stride": 0}, ValueError, "stride"),
    ("im2col3d", (1, 2, 4, 4), {"kernel_size": 2, "padding": -1}, ValueError, "padding"),
    ("im2col3d", (1, 2, 4), {"kernel_size": 2}, ValueError, "input must be 4-d .* or 5-d"),
    ("im2col3d", (1, 2, 4, 4, 4), {"kernel_size": 2, "dilation": (1, 2)}, ValueError, "dilation"),
    ("col2im1d", (1, 5, 4), {"output_size": 5, "kernel_size": 2}, ValueError, "divisible"),
    ("col2im1d", (1, 4, 3), {"output_size": 5, "kernel_size": 2}, ValueError, "blocks"),
    ("col2im1d", (1, 2, 3, 4), {"output_size": 5, "kernel_size": 2}, ValueError, "input must be"),
    ("col2im3d", (1, 8, 27), {"output_size": (4, 4), "kernel_size": 2}, ValueError, "output_size"),
    ("col2im3d", (1, 8, 27), {"output_size": 4, "kernel_size": 2, "stride": "1"}, TypeError,
     "stride"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_arguments(clconv, case):
    name, shape, kwargs, exc, match = BAD[case]
    with pytest.raises(exc, match=match):
        getattr(clconv, name)(np.zeros(shape, np.float32), **kwargs)
