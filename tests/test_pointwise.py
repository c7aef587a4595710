"""algorithm='pointwise' (cl/conv_pointwise.cl through clconv.ops.pointwise: unpadded 1x1
convolutions as a GEMM on the input, strided ones on their subsampled input) against the float64
oracle of tests/reference.py and torch, through the public API.

Shapes around the kernel's cases: output positions a multiple of the register tile's width and not
(the overlapping last panel), exactly one panel, C_out not a multiple of MR (the masked store and
the repeated last row of A), few panels (work spread over output channels), batch and groups in the
NDRange, 1-d and 3-d, bias / residual / activations fused, float64, device arrays with offsets, and
the clear errors for what it does not compute.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import reference as ref
from helpers import (check_conv, check_epilogue, pointwise_tile_width, random_array,
                     register_tile_width)
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


# (batch, C_in, C_out, groups, spatial as multiples/offsets of NR: a callable of nr)
CASES = {
    "one-panel": (1, 8, 12, 1, lambda nr: (1, nr)),
    "overlap": (1, 24, 20, 1, lambda nr: (7, 7) if nr <= 49 else (1, nr + 5)),
    "mobilenet-14": (1, 40, 30, 1, lambda nr: (14, 14)),
    "many-channels": (1, 96, 70, 1, lambda nr: (7, 7) if nr <= 49 else (1, nr + 17)),
    # MobileNetV2's 960-160 at 7x7: several A tiles a work-item over a long K
    "long-k": (1, 960, 160, 1, lambda nr: (7, 7) if nr <= 49 else (1, nr + 17)),
    "batch": (3, 9, 11, 1, lambda nr: (5, nr // 2 + 1)),
    "groups": (2, 12, 18, 3, lambda nr: (3, nr)),
    "cout-1": (1, 5, 1, 1, lambda nr: (2, nr + 3)),
    "cin-1": (2, 1, 7, 1, lambda nr: (nr + 1, 2)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(clconv, dev, rng, case):
    n, cin, cout, groups, spatial = CASES[case]
    size = spatial(register_tile_width(dev))
    check_conv(functools.partial(clconv.conv2d, algorithm="pointwise"), rng, (n, cin, *size),
               (cout, cin // groups, 1, 1), groups=groups)


@pytest.mark.parametrize("case", ["mobilenet-14", "overlap", "batch", "groups", "cout-1"])
@pytest.mark.parametrize("accumulators", [4, 8])
def test_the_one_vector_tile_where_the_cpu_needs_few_accumulators(clconv, dev, rng, monkeypatch,
                                                                   case, accumulators):
    """Where MR accumulators keep the FMA pipes busy (Zen 4's AVX-512; forced here on every
    device), 'pointwise' takes MR x VW tiles (for every width, so that a network's 1x1 layers
    share their programs) and matches the reference; with 8 needed it keeps MR x 2VW."""
    from clconv.blas import packed

    monkeypatch.setattr(packed, "fma_accumulators", lambda d, dtype: accumulators)
    wide = packed.tile_for(dev, np.float32, 8, 1024, 8)
    vw = wide.vw
    for n_cols in (196, 49, 3136, 100):
        tile = packed.tile_for_columns(dev, np.float32, 64, n_cols, 64)
        narrow = accumulators <= wide.mr
        assert (tile.nr, tile.vw) == ((vw if narrow else 2 * vw), vw), (n_cols, tile)
    n, cin, cout, groups, spatial = CASES[case]
    size = spatial(register_tile_width(dev))
    for dtype in (np.float32, np.float64) if dev.fp64 else (np.float32,):
        check_conv(functools.partial(clconv.conv2d, algorithm="pointwise"), rng,
                   (n, cin, *size), (cout, cin // groups, 1, 1), groups=groups, dtype=dtype)


@pytest.mark.parametrize("nd", [1, 3])
def test_1d_3d(clconv, dev, rng, nd):
    nr = register_tile_width(dev)
    x_shape = (2, 6, nr + 9) if nd == 1 else (1, 6, 2, 3, nr // 2 + 1)
    x = random_array(rng, x_shape)
    w = random_array(rng, (13, 6) + (1,) * nd)
    b = random_array(rng, (13,))
    got = (clconv.conv1d if nd == 1 else clconv.conv3d)(x, w, b, algorithm="pointwise")
    assert_close(got, ref.conv_nd(x, w, b), np.float32, conv_reduction(w),
                 conv_magnitude(x, w, b))


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "hardswish", ("leaky_relu", 0.2)])
def test_epilogue_matches_torch(clconv, rng, activation):
    """act(conv + bias + residual) in torch's order, in the full and the masked tile stores."""
    check_epilogue(functools.partial(clconv.conv2d, algorithm="pointwise"), rng, (2, 16, 9, 9),
                   (23, 16, 1, 1), activation)


def test_device_arrays_with_offsets_no_bias(clconv, dev, rng):
    import pyopencl.array as cla

    x = random_array(rng, (2, 10, 8, 8))
    w = random_array(rng, (14, 10, 1, 1))
    big = cla.to_device(dev.queue, np.concatenate([np.zeros(5, np.float32), x.ravel()]))
    wbig = cla.to_device(dev.queue, np.concatenate([np.zeros(3, np.float32), w.ravel()]))
    got = clconv.conv2d(big[5:].reshape(x.shape), wbig[3:].reshape(w.shape),
                        algorithm="pointwise")
    assert isinstance(got, cla.Array)
    assert_close(got.get(), ref.conv_nd(x, w), np.float32, conv_reduction(w),
                 conv_magnitude(x, w))


@pytest.mark.parametrize("extra", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("n, cin, cout, groups", [(2, 13, 7, 1), (1, 37, 11, 1), (2, 12, 15, 3)])
def test_a_narrow_last_panel_as_dot_products(clconv, dev, rng, extra, n, cin, cout, groups):
    """Positions two panels and `extra` columns wide: a last panel of at most TAIL_DOT columns
    runs as dot products along K (C_in/groups not a multiple of the vector: its scalar rest),
    first in the launch; 5 columns take the overlapping panel. float32 with bias, residual and
    an activation against torch, float64 against the float64 oracle."""
    from clconv.ops.pointwise import TAIL_DOT, Pointwise
    from clconv.ops.geometry import conv_geometry

    nr = pointwise_tile_width(dev)
    size = (1, 2 * nr + extra)
    geo = conv_geometry(2, (n, cin, *size), (cout, cin // groups, 1, 1), 1, 0, 1, groups,
                        "zeros")
    assert Pointwise(dev, geo, np.float32, True, None, 1 << 30).narrow == (extra <= TAIL_DOT)
    conv = functools.partial(clconv.conv2d, algorithm="pointwise")
    check_epilogue(conv, rng, (n, cin, *size), (cout, cin // groups, 1, 1), "silu",
                   groups=groups)
    if dev.fp64:
        check_conv(conv, rng, (n, cin, *size), (cout, cin // groups, 1, 1), np.float64,
                   groups=groups)
    # an Inf in a narrow panel's column reaches that column alone
    x = random_array(rng, (n, cin, *size))
    w = random_array(rng, (cout, cin // groups, 1, 1))
    w[w == 0] = 0.5
    x[-1, -1, 0, -1] = np.inf
    got = conv(x, w, groups=groups)
    want = ref.conv_nd(x, w, groups=groups)
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_float64(clconv, dev, rng):
    if not dev.fp64:
        pytest.skip(f"{dev.name} has no float64 support")
    check_conv(functools.partial(clconv.conv2d, algorithm="pointwise"), rng, (2, 7, 6, 9),
               (9, 7, 1, 1), np.float64, bias=False)


def test_nonfinite_input_poisons_only_its_columns(clconv, rng):
    x = random_array(rng, (1, 6, 8, 8))
    w = random_array(rng, (5, 6, 1, 1))
    w[w == 0] = 0.5
    x[0, 2, 3, 4] = np.nan
    x[0, 4, 7, 7] = np.inf  # in the last (overlapping) panel
    got = clconv.conv2d(x, w, algorithm="pointwise")
    want = ref.conv_nd(x, w)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


@pytest.mark.parametrize("nd, x_shape, stride", [
    (2, (1, 20, 14, 14), 2),  # ResNet's downsampling at 14x14: 49 positions
    (2, (2, 9, 16, 70), (2, 3)),
    (1, (2, 7, 150), 3),
    (3, (1, 6, 5, 9, 40), (2, 1, 2)),
], ids=["resnet-14", "2d-anisotropic", "1d", "3d"])
def test_strided(clconv, dev, rng, nd, x_shape, stride):
    """Strided 1x1 convolutions: the subsampled input gathered first, then the same GEMM."""
    x = random_array(rng, x_shape)
    w = random_array(rng, (26, x_shape[1]) + (1,) * nd)
    b = random_array(rng, (26,))
    fn = {1: clconv.conv1d, 2: clconv.conv2d, 3: clconv.conv3d}[nd]
    want = ref.conv_nd(x, w, b, stride)
    if int(np.prod(want.shape[2:])) < pointwise_tile_width(dev):
        pytest.skip("fewer output positions than the register tile's width")
    got = fn(x, w, b, stride=stride, algorithm="pointwise", activation="relu")
    assert_close(got, np.maximum(want, 0), np.float32, conv_reduction(w), conv_magnitude(x, w, b))


@pytest.mark.parametrize("w_shape, kwargs, match", [
    ((4, 4, 3, 3), {"padding": 1}, "1x1 kernel"),
    ((4, 4, 1, 1), {"padding": 1}, "padding 0"),
], ids=["3x3", "padded"])
def test_rejects_what_it_does_not_compute(clconv, rng, w_shape, kwargs, match):
    x = random_array(rng, (1, 4, 12, 12))
    with pytest.raises(ValueError, match=f"algorithm='pointwise'.*{match}"):
        clconv.conv2d(x, random_array(rng, w_shape), algorithm="pointwise", **kwargs)


def test_rejects_fewer_positions_than_the_tile(clconv, dev, rng):
    x = random_array(rng, (1, 4, 1, pointwise_tile_width(dev) - 1))
    with pytest.raises(ValueError, match="algorithm='pointwise'.*output positions"):
        clconv.conv2d(x, random_array(rng, (3, 4, 1, 1)), algorithm="pointwise")


def test_auto_rule_picks_it_on_cpu_devices(clconv, dev):
    """The rule prefers 'pointwise' for unpadded 1x1 layers on PoCL's CPU devices (small ones
    too, where 'direct' would be the small-layer choice, and strided ones), and never for padded
    ones."""
    from clconv.blas.engine import cpu_shaped
    from clconv.ops.conv_select import applicable_algorithms, rule_choice
    from clconv.ops.geometry import conv_geometry

    small = conv_geometry(2, (1, 384, 14, 14), (64, 384, 1, 1), 1, 0, 1, 1, "zeros")
    strided = conv_geometry(2, (1, 64, 56, 56), (128, 64, 1, 1), 2, 0, 1, 1, "zeros")
    padded = conv_geometry(2, (1, 64, 56, 56), (128, 64, 1, 1), 1, 1, 1, 1, "zeros")
    if cpu_shaped(dev):
        assert rule_choice(dev, small) == "pointwise"
        assert rule_choice(dev, strided) == "pointwise"
    else:
        assert "pointwise" not in applicable_algorithms(dev, small)
    assert "pointwise" not in applicable_algorithms(dev, padded)
