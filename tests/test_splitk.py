"""algorithm='splitk' (clconv.ops.splitk: im2col + a GEMM split over K and output channels +
the reduction with the epilogue) against the float64 oracle of tests/reference.py and torch,
through the public API.

Shapes around its cases: K cut into one and several slices (the last one shorter), output positions
a multiple of the tile's width or not (the overlapping last panel), one and several column panels
a work-item, C_out not a multiple of MR, strides, padding modes, dilation, batch > 1, 1-d and 3-d,
bias / residual / activation, float64, and the errors for what it does not compute.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import reference as ref
from helpers import check_conv, check_epilogue, random_array, register_tile_width
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


# (x shape as a callable of nr, w shape, conv kwargs)
CASES = {
    "resnet-7x7": (lambda nr: (1, 64, 7, 7) if nr <= 49 else (1, 64, 3, nr), (40, 64, 3, 3),
                   {"padding": 1}),
    "long-k": (lambda nr: (1, 200, 6, 9) if nr <= 54 else (1, 200, 2, nr), (13, 200, 3, 3),
               {"padding": 1}),  # K = 1800: several slices
    "resnet-512": (lambda nr: (1, 512, 7, 7) if nr <= 49 else (1, 512, 3, nr), (64, 512, 3, 3),
                   {"padding": 1}),  # K = 4608: several slices, several tiles a work-item
    "stride-2": (lambda nr: (2, 32, 15, 15) if nr <= 64 else (2, 32, 3, 2 * nr),
                 (20, 32, 3, 3), {"padding": 1, "stride": 2}),
    "wide": (lambda nr: (1, 16, 9, 4 * nr + 3), (7, 16, 3, 3), {"padding": 1}),
    "reflect-dilated": (lambda nr: (1, 8, 8, nr + 6), (9, 8, 3, 3),
                        {"padding": 2, "dilation": 2, "padding_mode": "reflect"}),
    "1x1-strided": (lambda nr: (1, 24, 14, 2 * nr), (30, 24, 1, 1), {"stride": 2}),
    "1x1-padded": (lambda nr: (1, 24, 6, nr), (30, 24, 1, 1), {"padding": 1}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(clconv, dev, rng, case):
    x_shape, w_shape, kw = CASES[case]
    check_conv(functools.partial(clconv.conv2d, algorithm="splitk"), rng,
               x_shape(register_tile_width(dev)), w_shape, **kw)


@pytest.mark.parametrize("nd", [1, 3])
def test_1d_3d(clconv, dev, rng, nd):
    nr = register_tile_width(dev)
    x_shape = (2, 10, nr + 5) if nd == 1 else (1, 6, 3, 4, nr // 2 + 2)
    w = random_array(rng, (11, x_shape[1]) + (3,) * nd)
    x = random_array(rng, x_shape)
    got = (clconv.conv1d if nd == 1 else clconv.conv3d)(x, w, padding=1, algorithm="splitk")
    assert_close(got, ref.conv_nd(x, w, None, 1, 1), np.float32, conv_reduction(w),
                 conv_magnitude(x, w))


@pytest.mark.parametrize("activation", [None, "relu", "silu"])
def test_epilogue_matches_torch(clconv, dev, rng, activation):
    x_shape = (1, 40, 7, max(7, register_tile_width(dev) // 7 + 1))
    check_epilogue(functools.partial(clconv.conv2d, algorithm="splitk"), rng, x_shape,
                   (17, 40, 3, 3), activation, padding=1)


def test_float64(clconv, dev, rng):
    if not dev.fp64:
        pytest.skip(f"{dev.name} has no float64 support")
    check_conv(functools.partial(clconv.conv2d, algorithm="splitk"), rng, (1, 30, 7, 9),
               (8, 30, 3, 3), np.float64, bias=False, padding=1)


def test_rejects_groups_and_tiny_outputs(clconv, dev, rng):
    x = random_array(rng, (1, 8, 9, 9))
    with pytest.raises(ValueError, match="algorithm='splitk'.*groups=1"):
        clconv.conv2d(x, random_array(rng, (8, 4, 3, 3)), groups=2, algorithm="splitk")
    with pytest.raises(ValueError, match="algorithm='splitk'.*output positions"):
        clconv.conv2d(random_array(rng, (1, 8, 1, register_tile_width(dev) - 1)),
                      random_array(rng, (4, 8, 1, 1)), algorithm="splitk")


def test_workspace_limit(clconv, rng):
    x = random_array(rng, (1, 64, 7, 40))
    with pytest.raises(MemoryError, match="splitk"):
        clconv.conv2d(x, random_array(rng, (8, 64, 3, 3)), padding=1, algorithm="splitk",
                      workspace_limit=1024)


def test_auto_rule_picks_it_for_few_positions_on_cpu_devices(clconv, dev):
    from clconv.blas.engine import cpu_shaped
    from clconv.ops.conv_select import applicable_algorithms, rule_choice
    from clconv.ops.geometry import conv_geometry

    # 2048 @7: 151 MB of filters, which each of 'implicit''s column panels streams ('splitk' reads
    # them once: the cost model's _A_STREAM_BYTES); at ResNet-18's 512 @7 (9.4 MB) 'implicit'
    # runs its 49th column as dot products and measured 1.3-1.4x faster: both rank first two
    c7 = conv_geometry(2, (1, 2048, 7, 7), (2048, 2048, 3, 3), 1, 1, 1, 1, "zeros")
    r18 = conv_geometry(2, (1, 512, 7, 7), (512, 512, 3, 3), 1, 1, 1, 1, "zeros")
    c56 = conv_geometry(2, (1, 64, 56, 56), (64, 64, 3, 3), 1, 1, 1, 1, "zeros")
    if cpu_shaped(dev):
        assert rule_choice(dev, c7) == "splitk"
        assert sorted(applicable_algorithms(dev, r18)[:2]) == ["implicit", "splitk"]
    if not cpu_shaped(dev):
        assert "splitk" not in applicable_algorithms(dev, c7)
    assert "splitk" not in applicable_algorithms(dev, c56)
