"""algorithm='depthwise' (cl/conv_depthwise.cl through clconv.ops.depthwise) against the float64
oracle of tests/reference.py and against torch, through the public API.

Shapes are chosen around the kernel's cases, through its three kernels (conv_depthwise_flat for the
smallest stride-1 planes, conv_depthwise_small for small 2-d zero-padded planes, and the row
segments of conv_depthwise, each of the last two forced for every case too): rows
whose interior holds several segments (the last one overlapping), interiors of 2-15 outputs (short
vectors), rows too narrow for any vector (the span path), padding wider than the EMAX scalars a side
(point()), strides 1, 2 and 3 (the gathered lanes), dilation, every padding_mode, channel
multipliers, 5x5/7x7 kernels, 1-d and 3-d, batch > 1, bias / residual / activations fused, float64,
and the work split over rows or planes.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import reference as ref
from helpers import check_conv, check_epilogue, random_array
from tolerance import assert_close, conv_magnitude, conv_reduction


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _conv(clconv, nd):
    """clconv's nd convolution with algorithm='depthwise' (the caller passes groups)."""
    fn = {1: clconv.conv1d, 2: clconv.conv2d, 3: clconv.conv3d}[nd]
    return functools.partial(fn, algorithm="depthwise")


# (x shape, w shape, conv kwargs)
CASES_2D = {
    "3x3-s1": ((2, 4, 13, 21), (4, 1, 3, 3), {"padding": 1}),
    "3x3-s1-wide": ((1, 3, 6, 150), (3, 1, 3, 3), {"padding": 1}),  # several segments, overlap
    "3x3-s2": ((1, 5, 15, 70), (5, 1, 3, 3), {"padding": 1, "stride": 2}),
    "3x3-s2-odd": ((1, 4, 14, 33), (4, 1, 3, 3), {"padding": 1, "stride": 2}),
    "3x3-s3": ((1, 2, 11, 40), (2, 1, 3, 3), {"padding": 1, "stride": 3}),
    "3x3-dilated": ((1, 3, 12, 25), (3, 1, 3, 3), {"padding": 2, "dilation": 2}),
    "5x5": ((1, 3, 12, 45), (3, 1, 5, 5), {"padding": 2}),
    "5x5-s2": ((1, 3, 20, 41), (3, 1, 5, 5), {"padding": 2, "stride": 2}),
    "7x7": ((2, 3, 16, 39), (3, 1, 7, 7), {"padding": 3}),
    "7x7-small": ((1, 6, 7, 7), (6, 1, 7, 7), {"padding": 3}),  # no interior at all: span path
    "valid": ((2, 2, 9, 12), (2, 1, 5, 5), {}),
    "7x7-plane": ((1, 16, 7, 7), (16, 1, 3, 3), {"padding": 1}),  # many planes a work-item
    "14x14-s2": ((1, 8, 14, 14), (8, 1, 3, 3), {"padding": 1, "stride": 2}),
    "narrow": ((1, 3, 5, 3), (3, 1, 3, 3), {"padding": 1}),
    "one-column": ((1, 2, 4, 1), (2, 1, 3, 1), {"padding": (1, 0)}),
    "wide-padding": ((1, 2, 6, 30), (2, 1, 3, 3), {"padding": 6}),  # more than EMAX a side
    "asymmetric": ((1, 3, 9, 26), (3, 1, 3, 5), {"padding": (0, 2), "stride": (2, 1)}),
    "multiplier": ((2, 3, 10, 37), (6, 1, 3, 3), {"padding": 1}),
    "multiplier-s2": ((1, 2, 9, 34), (8, 1, 3, 3), {"padding": 1, "stride": 2}),
    "reflect": ((1, 3, 7, 38), (3, 1, 3, 3), {"padding": 2, "padding_mode": "reflect"}),
    "reflect-wide": ((1, 2, 9, 30), (2, 1, 3, 3), {"padding": 5, "padding_mode": "reflect"}),
    "replicate": ((2, 2, 6, 40), (2, 1, 3, 5), {"padding": (1, 2), "padding_mode": "replicate"}),
    "circular-s2": ((1, 4, 8, 40), (4, 1, 3, 3), {"padding": 1, "stride": 2,
                                                  "padding_mode": "circular"}),
    "same": ((1, 3, 10, 27), (3, 1, 3, 3), {"padding": "same"}),
    "big-plane": ((1, 2, 64, 112), (2, 1, 3, 3), {"padding": 1}),  # rows split over work-items
    # 5 taps a row at stride 2 on small planes: the buffer's rows deinterleaved (even padded
    # columns, then odd), whatever the parity of the padding and of the width, dilated too
    "5x5-s2-small": ((2, 6, 14, 14), (6, 1, 5, 5), {"padding": 2, "stride": 2}),
    "5x5-s2-odd-pad": ((1, 3, 15, 27), (3, 1, 5, 5), {"padding": (2, 3), "stride": 2}),
    "5x5-s2-odd-width": ((1, 4, 9, 13), (4, 1, 5, 5), {"padding": 1, "stride": 2}),
    "7x7-s2-dilated": ((1, 2, 20, 22), (2, 1, 3, 7), {"padding": (2, 5), "stride": 2,
                                                        "dilation": (1, 2)}),
    "5x5-s2-multiplier": ((1, 2, 28, 28), (6, 1, 5, 5), {"padding": 2, "stride": 2}),
    # the flattened planes at stride 1 (conv_depthwise_flat): chunks of several vectors, rows
    # narrower than a vector, a row's last vector running into the next rows, dilation,
    # asymmetric and wide padding, a 1x1 plane, a tall plane, a multiplier, ConvNeXt's 7x7 taps
    "5x5-flat": ((2, 6, 14, 14), (6, 1, 5, 5), {"padding": 2}),
    "5x5-flat-7": ((1, 9, 7, 7), (9, 1, 5, 5), {"padding": 2}),
    "7x7-flat-14": ((1, 3, 14, 14), (3, 1, 7, 7), {"padding": 3}),
    "3x3-flat-odd": ((1, 5, 5, 11), (5, 1, 3, 3), {"padding": 1}),
    "flat-dilated": ((1, 3, 11, 13), (3, 1, 5, 5), {"padding": 4, "dilation": 2}),
    "flat-asymmetric": ((1, 4, 9, 12), (4, 1, 5, 5), {"padding": ((0, 4), (3, 1))}),
    "flat-wide-padding": ((1, 2, 6, 6), (2, 1, 5, 5), {"padding": 4}),
    "flat-1x1": ((1, 5, 1, 1), (5, 1, 5, 5), {"padding": 2}),
    "flat-tall": ((1, 2, 20, 3), (2, 1, 5, 5), {"padding": 2}),
    "flat-multiplier": ((2, 3, 8, 8), (9, 1, 5, 5), {"padding": 2}),
}


@pytest.mark.parametrize("case", list(CASES_2D))
def test_matches_reference_2d(clconv, rng, case):
    x_shape, w_shape, kw = CASES_2D[case]
    check_conv(_conv(clconv, 2), rng, x_shape, w_shape, groups=x_shape[1], **kw)


@pytest.mark.parametrize("kernel", ["flat", "small", "rows"])
@pytest.mark.parametrize("case", [c for c in CASES_2D if c not in ("big-plane",)])
def test_matches_reference_2d_each_kernel(clconv, rng, case, kernel, monkeypatch):
    """The same cases through the flat kernel (conv_depthwise_flat) wherever it fits, whatever
    the device's rule (`flat_pays`), through the small-plane kernel (conv_depthwise_small) where
    the flat one would take them, and through the row-segment kernel (conv_depthwise) where
    either would: each must be right wherever it applies."""
    from clconv.ops import depthwise
    from clconv.ops.plan import plans

    if kernel == "flat":
        monkeypatch.setattr(depthwise, "flat_pays", lambda *args: True)
    else:
        monkeypatch.setattr(depthwise, "flat_plane", lambda *args: None)
    if kernel == "rows":
        monkeypatch.setattr(depthwise, "small_plane", lambda *args: None)
    plans(clconv.current_device()).clear()  # plans made before hold the other kernel
    x_shape, w_shape, kw = CASES_2D[case]
    check_conv(_conv(clconv, 2), rng, x_shape, w_shape, groups=x_shape[1], **kw)
    plans(clconv.current_device()).clear()


def test_the_new_small_cases_run_the_small_plane_kernel(clconv, dev):
    """The deinterleaved stride-2 cases above are conv_depthwise_small's (what they test)."""
    from clconv.blas.packed import vector_width
    from clconv.ops.depthwise import small_plane
    from clconv.ops.geometry import conv_geometry

    vw = vector_width(dev, np.float32)
    for case in ("5x5-s2-small", "5x5-s2-odd-pad", "5x5-s2-odd-width", "7x7-s2-dilated",
                 "5x5-s2-multiplier"):
        x_shape, w_shape, kw = CASES_2D[case]
        geo = conv_geometry(2, x_shape, w_shape, kw.get("stride", 1), kw["padding"],
                            kw.get("dilation", 1), x_shape[1])
        assert small_plane(geo, vw, 2) is not None, case


@pytest.fixture
def forced_flat(clconv, dev, monkeypatch):
    """conv_depthwise_flat wherever it fits (`flat_pays` ignored), fresh plans before and after."""
    from clconv.ops import depthwise
    from clconv.ops.plan import plans

    monkeypatch.setattr(depthwise, "flat_pays", lambda *args: True)
    plans(dev).clear()
    yield
    plans(dev).clear()


def test_the_flat_cases_fit_the_flat_kernel_and_match_the_small_one_to_the_bit(clconv, dev,
                                                                               forced_flat):
    """The stride-1 small planes above fit conv_depthwise_flat (what they test), and its results
    are conv_depthwise_small's to the bit (each output sums its taps in the same order)."""
    import clconv.ops.depthwise as depthwise
    from clconv.blas.packed import vector_width
    from clconv.ops.geometry import conv_geometry
    from clconv.ops.plan import plans

    vw = vector_width(dev, np.float32)
    rng = np.random.default_rng(5)
    for case in [c for c in CASES_2D if "flat" in c]:
        x_shape, w_shape, kw = CASES_2D[case]
        geo = conv_geometry(2, x_shape, w_shape, 1, kw["padding"], kw.get("dilation", 1),
                            x_shape[1], asymmetric=True)
        assert depthwise.flat_plane(geo, vw, 2) is not None, case
        x, w = random_array(rng, x_shape), random_array(rng, w_shape)
        flat = clconv.conv2d(x, w, groups=x_shape[1], algorithm="depthwise", **kw)
        saved = depthwise.flat_plane
        depthwise.flat_plane = lambda *args: None
        try:
            plans(dev).clear()
            small = clconv.conv2d(x, w, groups=x_shape[1], algorithm="depthwise", **kw)
        finally:
            depthwise.flat_plane = saved
            plans(dev).clear()
        np.testing.assert_array_equal(flat, small, err_msg=case)


def test_flat_kernel_float64(clconv, dev, rng, forced_flat):
    """conv_depthwise_flat in float64 (its vectors of the device's double width), with bias."""
    if not dev.fp64:
        pytest.skip(f"{dev.name} has no float64 support")
    for x_shape, w_shape, kw in (((1, 4, 14, 14), (4, 1, 5, 5), {"padding": 2}),
                                 ((2, 3, 7, 7), (6, 1, 3, 3), {"padding": 1})):
        check_conv(_conv(clconv, 2), rng, x_shape, w_shape, np.float64, groups=x_shape[1], **kw)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_flat_kernel_nonfinite_weights(clconv, dev, rng, forced_flat, bad):
    """conv_depthwise_flat with an Inf / NaN tap: the forward adds 0 * w at the zero padding (NaN
    there, as torch), the adjoint (a transposed convolution: FLIP_TAPS) only the taps that exist
    (its plane computed one output at a time)."""
    torch = pytest.importorskip("torch")
    x = random_array(rng, (1, 4, 9, 9))
    w = random_array(rng, (4, 1, 5, 5))
    w[1, 0, 0, 0] = bad
    w[2, 0, 4, 4] = -np.inf
    got = clconv.conv2d(x, w, padding=2, groups=4, algorithm="depthwise")
    with np.errstate(invalid="ignore"):
        want = ref.conv_nd(np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2))), w, None, 1, 0, 1, 4)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    got = clconv.conv_transpose2d(x, w, padding=2, groups=4)
    want = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w),
                                                padding=2, groups=4).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], np.float32, 25,
                 conv_magnitude(x, np.nan_to_num(w, nan=0.0, posinf=0.0, neginf=0.0)))


def test_flat_kernel_rule(clconv):
    """Where conv_depthwise_flat pays (`flat_pays`): EfficientNet-B0's 5x5 layers at 7x7 and
    14x14 and MobileNetV2's 3x3 ones at 14x14 with 16-lane vectors (AVX-512), ConvNeXt-like 7x7
    filters at 14x14; with 8 lanes (AVX2), whose rows of 14 are two vectors, only 5x5 at 7x7. Never
    3x3 at 7x7 (64 lanes for 49 outputs, where the rows compute 56); larger planes, strides and
    other padding modes do not fit it."""
    from clconv.ops.depthwise import flat_pays, flat_plane
    from clconv.ops.geometry import conv_geometry

    def geo(size, k=3, stride=1, mode="zeros"):
        return conv_geometry(2, (1, 8, size, size), (8, 1, k, k), stride, k // 2, 1, 8, mode)

    def takes(g, vw):
        flat = flat_plane(g, vw, 2)
        return flat is not None and flat_pays(g, vw, flat)

    taken = {16: {(14, 3), (7, 5), (14, 5), (14, 7)}, 8: {(7, 5)}}
    for vw in (8, 16):
        for size in (7, 14):
            for k in (3, 5, 7):
                assert flat_plane(geo(size, k), vw, 2) is not None, (vw, size, k)
                assert takes(geo(size, k), vw) == ((size, k) in taken[vw]), (vw, size, k)
        assert flat_plane(geo(28), vw, 2) is None
        assert flat_plane(geo(14, 3, 2), vw, 2) is None
        assert flat_plane(geo(14, 3, 1, "reflect"), vw, 2) is None


def test_small_plane_kernel_takes_mobilenet_layers(clconv, dev):
    """MobileNetV2's 7x7 to 56x56 depthwise layers run the small-plane kernel; 112x112 and other
    padding modes the row segments."""
    from clconv.ops.depthwise import small_plane
    from clconv.ops.geometry import conv_geometry

    def geo(size, stride=1, mode="zeros"):
        return conv_geometry(2, (1, 8, size, size), (8, 1, 3, 3), stride, 1, 1, 8, mode)

    for size, stride in ((7, 1), (14, 1), (14, 2), (28, 1), (28, 2), (56, 1), (56, 2)):
        assert small_plane(geo(size, stride), 16, 2) is not None, (size, stride)
    assert small_plane(geo(112), 16, 2) is None
    assert small_plane(geo(14, 1, "reflect"), 16, 2) is None


@pytest.mark.parametrize("nd, x_shape, w_shape, kw", [
    (1, (2, 6, 50), (6, 1, 5), {"padding": 2}),
    (1, (1, 4, 37), (8, 1, 3), {"stride": 2, "padding": 1, "padding_mode": "reflect"}),
    (3, (1, 3, 5, 6, 19), (3, 1, 3, 3, 3), {"padding": 1}),
    (3, (2, 2, 4, 7, 40), (4, 1, 3, 3, 3), {"padding": (0, 1, 1), "stride": (1, 2, 2),
                                            "padding_mode": "replicate"}),
], ids=["1d", "1d-s2-reflect-multiplier", "3d", "3d-s2-replicate-multiplier"])
def test_matches_reference_1d_3d(clconv, rng, nd, x_shape, w_shape, kw):
    check_conv(_conv(clconv, nd), rng, x_shape, w_shape, groups=x_shape[1], **kw)


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "silu", ("clamp", -0.5, 0.8)])
@pytest.mark.parametrize("shape, stride", [((1, 6, 14, 14), 1), ((2, 4, 9, 45), 2)],
                         ids=["14x14", "s2"])
def test_epilogue_matches_torch(clconv, rng, activation, shape, stride):
    """act(conv + bias + residual) in torch's order, in the vector, edge and partial stores."""
    check_epilogue(_conv(clconv, 2), rng, shape, (shape[1], 1, 3, 3), activation, stride=stride,
                   padding=1, groups=shape[1])


def test_without_bias_on_device_arrays(clconv, dev, rng):
    """Device arrays in and out (offsets honoured), no bias."""
    import pyopencl.array as cla

    x = random_array(rng, (2, 5, 11, 30))
    w = random_array(rng, (5, 1, 3, 3))
    big = cla.to_device(dev.queue, np.concatenate([np.zeros(7, np.float32), x.ravel()]))
    xd = big[7:].reshape(x.shape)
    got = clconv.conv2d(xd, cla.to_device(dev.queue, w), padding=1, groups=5,
                        algorithm="depthwise")
    assert isinstance(got, cla.Array)
    assert_close(got.get(), ref.conv_nd(x, w, None, 1, 1, 1, 5), np.float32, conv_reduction(w),
                 conv_magnitude(x, w))


def test_float64(clconv, dev, rng):
    if not dev.fp64:
        pytest.skip(f"{dev.name} has no float64 support")
    check_conv(_conv(clconv, 2), rng, (2, 4, 7, 45), (8, 1, 3, 3), np.float64, bias=False,
               padding=1, stride=2, groups=4)


def test_nonfinite_input_poisons_only_its_windows(clconv, rng):
    x = random_array(rng, (1, 2, 9, 40))
    w = random_array(rng, (2, 1, 3, 3))
    w[w == 0] = 0.5
    x[0, 1, 4, 0] = np.inf  # at the left edge (the scalar outputs)
    x[0, 0, 2, 19] = np.nan  # in the interior (the vectors)
    x[0, 0, 6, 39] = -np.inf  # at the right edge
    got = clconv.conv2d(x, w, padding=1, groups=2, algorithm="depthwise")
    want = ref.conv_nd(x, w, None, 1, 1, 1, 2)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


@pytest.mark.parametrize("nd, x_shape, k, padding, stride, mult", [
    (1, (1, 4, 5), 3, 1, 1, 1), (1, (1, 4, 20), 5, 2, 2, 2), (2, (1, 4, 12, 40), 3, 1, 1, 1),
    (2, (1, 4, 9, 9), 5, 2, 2, 2), (2, (1, 4, 9, 9), 5, 2, 1, 2), (3, (1, 4, 4, 5, 6), 3, 1, 1, 1),
    (3, (1, 4, 7, 7, 7), 3, 1, 2, 2)])
def test_nonfinite_weights_poison_the_windows_that_read_zero_padding(clconv, dev, rng, nd, x_shape,
                                                                    k, padding, stride, mult):
    """Zero padding adds 0 * w, as in torch's convolutions of explicitly padded input and in
    clconv's other kernels: an Inf or NaN weight gives NaN exactly where its tap reads padding
    (the kernel skipped the padded lines and columns, leaving those outputs finite)."""
    for dtype in (np.float32, np.float64):
        if dtype == np.float64 and not dev.fp64:
            continue
        x = random_array(rng, x_shape, dtype)
        w = random_array(rng, (4 * mult, 1) + (k,) * nd, dtype)
        w[0].reshape(-1)[0] = np.inf
        w[-1].reshape(-1)[-1] = np.nan
        got = _conv(clconv, nd)(x, w, stride=stride, padding=padding, groups=4,
                                algorithm="depthwise")
        padded = np.pad(x, ((0, 0), (0, 0)) + ((padding, padding),) * nd)
        with np.errstate(invalid="ignore"):
            want = ref.conv_nd(padded, w, None, stride, 0, 1, 4)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


@pytest.mark.parametrize("w_shape, groups", [((8, 2, 3, 3), 2), ((4, 4, 3, 3), 1)],
                         ids=["grouped", "dense"])
def test_rejects_non_depthwise(clconv, rng, w_shape, groups):
    x = random_array(rng, (1, 4, 8, 8))
    with pytest.raises(ValueError, match="algorithm='depthwise'.*groups == in_channels"):
        clconv.conv2d(x, random_array(rng, w_shape), groups=groups, algorithm="depthwise")


def test_auto_rule_picks_it_on_cpu_devices(clconv, dev, monkeypatch):
    """The rule prefers 'depthwise' for depthwise layers on PoCL's CPU devices only (the kernel
    is CPU-shaped), and never for grouped or dense ones."""
    from clconv.blas.engine import cpu_shaped
    from clconv.ops.conv_select import applicable_algorithms, rule_choice
    from clconv.ops.geometry import conv_geometry

    dw = conv_geometry(2, (1, 32, 28, 28), (32, 1, 3, 3), 1, 1, 1, 32, "zeros")
    grouped = conv_geometry(2, (1, 32, 28, 28), (32, 2, 3, 3), 1, 1, 1, 16, "zeros")
    if cpu_shaped(dev):
        assert rule_choice(dev, dw) == "depthwise"
        assert "depthwise" in applicable_algorithms(dev, dw)
    else:
        assert "depthwise" not in applicable_algorithms(dev, dw)
    assert "depthwise" not in applicable_algorithms(dev, grouped)
