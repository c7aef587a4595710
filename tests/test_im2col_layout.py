"""The im2col launch (cl/im2col.cl) of the convolution paths: windows of columns [l_start, l_start +
ncols) that start and end mid-line, several output lines per work-item, and the folded layout
(images side by side: ld = batch * ncols, batch_stride = ncols), all exactly equal to
reference.unfold (pure data movement). Padding modes other than zeros against padding first with
reference.pad_nd."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest

import reference as ref
from helpers import random_array
from tolerance import assert_exact


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def unfold(x, w_shape, kw):
    """reference columns (N, C*k, L) for conv kwargs (padding via pad_nd for every mode)."""
    pads = ref.resolve_padding(kw.get("padding", 0), w_shape[2:], ref.ntuple(kw.get("dilation", 1),
                                                                              2))
    xp = ref.pad_nd(x, pads, kw.get("padding_mode", "zeros"))
    return ref.unfold(xp, w_shape[2:], kw.get("dilation", 1), 0, kw.get("stride", 1))


CASES = {
    "short-lines": ((3, 4, 7, 7), (2, 4, 3, 3), {"padding": 1}),
    "long-lines": ((2, 2, 5, 90), (2, 2, 3, 3), {"padding": (0, 2), "stride": (1, 2)}),
    "dilated-reflect": ((2, 3, 9, 11), (2, 3, 3, 2), {"padding": 2, "dilation": (2, 3),
                                                      "padding_mode": "reflect"}),
    "kernel-past-input": ((1, 2, 4, 3), (1, 2, 2, 5), {"padding": (0, 3), "dilation": (1, 2)}),
    "circular-s3": ((2, 2, 8, 13), (2, 2, 3, 3), {"padding": 1, "stride": 3,
                                                  "padding_mode": "circular"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_windows_and_folded_layout(clconv, dev, rng, case):
    from clconv.ops.unfold import enqueue_im2col
    from clconv.ops.geometry import conv_geometry

    x_shape, w_shape, kw = CASES[case]
    x = random_array(rng, x_shape)
    want = unfold(x, w_shape, kw)  # (N, rows, L)
    n, rows, l = want.shape
    geo = conv_geometry(2, x_shape, w_shape, kw.get("stride", 1), kw.get("padding", 0),
                        kw.get("dilation", 1), 1, kw.get("padding_mode", "zeros"))
    assert (geo.column_rows, geo.out_spatial) == (rows, l)
    xd = cla.to_device(dev.queue, x)
    ow = geo.out_size[-1]
    windows = [(0, l), (1, l - 1), (ow - 1, 2), (ow + 1, min(l - ow - 1, 2 * ow + 3)), (l - 1, 1)]
    for l0, nc in windows:
        col = cla.empty(dev.queue, (n * rows * nc + 5,), np.float32)
        col.fill(np.float32(np.nan))
        with dev.lock:
            enqueue_im2col(dev, geo.defines(), n, xd, 0, col, 5, l0, nc)
        got = col.get()
        assert np.isnan(got[:5]).all()  # nothing before the offset
        assert_exact(got[5:].reshape(n, rows, nc), want[:, :, l0:l0 + nc], f"window {l0}+{nc}")
    # folded: the images side by side, one (rows, n * l) matrix
    col = cla.empty(dev.queue, (rows * n * l,), np.float32)
    with dev.lock:
        enqueue_im2col(dev, geo.defines(), n, xd, 0, col, 0, ld=n * l, batch_stride=l)
    assert_exact(col.get().reshape(rows, n, l), want.transpose(1, 0, 2))
