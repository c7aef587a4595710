"""algorithm='direct' for groups with few channels each: cl/conv_grouped.cl (vectors of adjacent
outputs, edges through source_coord) against the float64 oracle and against cl/conv_direct.cl.

Shapes are chosen around the kernel's cases: outputs narrower than a vector, widths that are not
a multiple of it (overlapping last vector), interiors of 2/4/8 outputs, stride 1, 2 and 3, dilation,
every padding_mode, channel multipliers (C_out/groups > 1), several channels per group, 1-d and 3-d,
bias and ReLU, batch > 1.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import reference as ref
from helpers import check_conv, random_array
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


@pytest.fixture
def kernels_built(monkeypatch):
    """Names of the kernels the convolution path launches."""
    from clconv.ops import launch

    names: list[str] = []
    real = launch.DirectConv.__call__

    def spy(self, *args, **kwargs):
        names.append("conv_grouped" if self.grouped else "conv_direct")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(launch.DirectConv, "__call__", spy)
    return names


def conv(clconv, nd, x, w, b, **kw):
    return {1: clconv.conv1d, 2: clconv.conv2d, 3: clconv.conv3d}[nd](x, w, b, algorithm="direct",
                                                                       **kw)


# (x shape, w shape, conv kwargs)
CASES = {
    "depthwise": ((2, 4, 13, 21), (4, 1, 3, 3), {"padding": 1}),
    "depthwise-wide": ((1, 3, 6, 70), (3, 1, 3, 3), {"padding": 1}),  # several segments' worth
    "depthwise-s2": ((1, 4, 15, 33), (4, 1, 3, 3), {"padding": 1, "stride": 2}),
    "depthwise-s3": ((1, 2, 11, 29), (2, 1, 3, 3), {"padding": 1, "stride": 3}),
    "depthwise-dil": ((1, 3, 12, 25), (3, 1, 3, 3), {"padding": 2, "dilation": 2}),
    "depthwise-5x5-valid": ((2, 2, 9, 12), (2, 1, 5, 5), {}),
    "narrow": ((1, 3, 5, 3), (3, 1, 3, 3), {"padding": 1}),  # OW < any vector
    "interior-4": ((1, 2, 6, 7), (2, 1, 3, 3), {"padding": 1}),
    "multiplier": ((2, 3, 10, 17), (6, 1, 3, 3), {"padding": 1, "groups": 3}),
    "grouped-4ch": ((1, 8, 9, 19), (4, 4, 3, 3), {"padding": (1, 2), "groups": 2}),
    "reflect": ((1, 3, 7, 18), (3, 1, 3, 3), {"padding": 2, "padding_mode": "reflect"}),
    "replicate": ((2, 2, 6, 11), (2, 1, 3, 5), {"padding": (1, 2), "padding_mode": "replicate"}),
    "circular-s2": ((1, 4, 8, 20), (4, 1, 3, 3), {"padding": 1, "stride": 2,
                                                  "padding_mode": "circular"}),
    "dense-small": ((2, 3, 9, 16), (5, 3, 3, 3), {"padding": 1, "groups": 1}),
    # Several output channels a work-item (COB 8, 4, 2: C_out/groups a multiple of it) and rows
    # wide enough for 16-lane vectors on AVX-512 devices (a 3-channel stem, stride 1 and 2).
    "stem-s2": ((2, 3, 11, 75), (16, 3, 3, 3), {"padding": 1, "stride": 2, "groups": 1}),
    "stem-s1-residual": ((1, 3, 5, 41), (24, 3, 3, 3), {"padding": 1, "groups": 1}),
    "grouped-cob4": ((1, 8, 6, 37), (8, 4, 3, 3), {"padding": 1, "groups": 2}),
    "grouped-cob2-s2": ((1, 6, 7, 45), (6, 2, 3, 3), {"padding": (1, 0), "stride": 2,
                                                      "groups": 3, "padding_mode": "reflect"}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference_2d(clconv, rng, case, kernels_built):
    x_shape, w_shape, kw = CASES[case]
    kw = dict(kw)
    kw.setdefault("groups", x_shape[1] // w_shape[1])
    x = random_array(rng, x_shape)
    w = random_array(rng, w_shape)
    b = random_array(rng, (w_shape[0],))
    relu = case in ("depthwise", "multiplier", "reflect", "stem-s2", "stem-s1-residual")
    want = ref.conv_nd(x, w, b, kw.get("stride", 1), kw.get("padding", 0), kw.get("dilation", 1),
                       kw["groups"], kw.get("padding_mode", "zeros"))
    residual = random_array(rng, want.shape) if case.endswith("residual") else None
    if residual is not None:
        kw["residual"] = residual
        want = want + residual
    got = conv(clconv, 2, x, w, b, activation="relu" if relu else None, **kw)
    if relu:
        want = np.maximum(want, 0)
    assert_close(got, want, np.float32, conv_reduction(w), conv_magnitude(x, w, b))
    assert kernels_built == ["conv_grouped"]


@pytest.mark.parametrize("nd, x_shape, w_shape, kw", [
    (1, (2, 6, 50), (6, 1, 5), {"padding": 2, "groups": 6}),
    (1, (3, 4, 9), (8, 2, 3), {"stride": 2, "groups": 2, "padding_mode": "reflect", "padding": 1}),
    (3, (1, 3, 5, 6, 19), (3, 1, 3, 3, 3), {"padding": 1, "groups": 3}),
    (3, (2, 4, 4, 5, 9), (4, 2, 2, 3, 3), {"padding": (0, 1, 1), "groups": 2,
                                           "padding_mode": "replicate"}),
], ids=["1d-depthwise", "1d-grouped-reflect", "3d-depthwise", "3d-grouped-replicate"])
def test_matches_reference_1d_3d(clconv, rng, nd, x_shape, w_shape, kw):
    check_conv(functools.partial(conv, clconv, nd), rng, x_shape, w_shape, **kw)


def test_float64(clconv, dev, rng):
    if not dev.fp64:
        pytest.skip(f"{dev.name} has no float64 support")
    check_conv(functools.partial(conv, clconv, 2), rng, (2, 4, 7, 23), (4, 1, 3, 3), np.float64,
               bias=False, padding=1, groups=4)


def test_agrees_with_the_per_element_kernel(clconv, rng, monkeypatch, kernels_built):
    """conv_grouped.cl and conv_direct.cl compute the same depthwise convolution."""
    from clconv.ops import launch
    from clconv.ops.plan import plans

    x = random_array(rng, (2, 6, 12, 30))
    w = random_array(rng, (6, 1, 3, 3))
    b = random_array(rng, (6,))
    grouped = clconv.conv2d(x, w, b, padding=1, groups=6, algorithm="direct", activation="relu")
    monkeypatch.setattr(launch, "GROUPED_MAX_CIN", 0)
    plans(clconv.current_device()).clear()  # the plan of this shape holds the grouped kernel
    plain = clconv.conv2d(x, w, b, padding=1, groups=6, algorithm="direct", activation="relu")
    assert kernels_built == ["conv_grouped", "conv_direct"]
    assert_close(grouped, plain.astype(np.float64), np.float32, conv_reduction(w),
                 conv_magnitude(x, w, b))


def test_nonfinite_input_poisons_only_its_windows(clconv, rng):
    x = random_array(rng, (1, 2, 9, 20))
    w = random_array(rng, (2, 1, 3, 3))
    w[w == 0] = 0.5
    x[0, 1, 4, 0] = np.inf  # at the left edge (the scalar path)
    x[0, 0, 2, 9] = np.nan  # in the interior (the vector path)
    got = clconv.conv2d(x, w, padding=1, groups=2, algorithm="direct")
    want = ref.conv_nd(x, w, None, 1, 1, 1, 2)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
