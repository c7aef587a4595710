"""Transposed convolutions and gradients under Oclgrind: conv_transpose1d/2d/3d (col2im + GEMM),
conv{1,2,3}d_input and _weight (every padding mode: pad_adjoint.cl; groups, strides, dilation,
float64, a weight gradient split by a small workspace) and the kernels of clconv.ops.adjoint_paths / weight_grad_paths
(conv_grad_paths.cl)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
import reference_extra as ref_extra

import clconv

from .support import arr, case_id, expect, mag, need_dtype, smallest_limit

pytestmark = pytest.mark.sanitize

F32, F64 = np.float32, np.float64


@pytest.mark.parametrize("fn, xs, ws, kw", [pytest.param(*c, id=case_id(*c)) for c in [
    ("conv_transpose1d", (2, 3, 5), (3, 2, 3), {"stride": 2, "padding": 1, "output_padding": 1}),
    ("conv_transpose2d", (1, 4, 3, 4), (4, 3, 3, 2), {"stride": (2, 1), "groups": 2,
                                                      "dilation": (1, 2)}),
    ("conv_transpose2d", (2, 2, 3, 3), (2, 3, 3, 3), {"stride": 2, "padding": 1,
                                                      "output_padding": 1}),
    ("conv_transpose3d", (1, 2, 2, 3, 2), (2, 2, 2, 2, 3), {"stride": 2}),
]])
def test_conv_transpose(rng, fn, xs, ws, kw):
    groups = kw.get("groups", 1)
    x, w, b = arr(rng, xs), arr(rng, ws), arr(rng, (ws[1] * groups,))
    got = getattr(clconv, fn)(x, w, b, **kw)
    expect(got, ref.conv_transpose_nd(x, w, b, **kw), F32, ws[0] // groups * math.prod(ws[2:]),
           mag(x, w))


_GRADIENTS = [
    (2, (2, 4, 5, 6), (6, 2, 3, 3), {"stride": 2, "padding": 1, "groups": 2}, F32),
    (2, (1, 2, 5, 5), (3, 2, 3, 3), {"padding": 2, "padding_mode": "reflect"}, F32),
    (2, (1, 2, 4, 5), (2, 2, 2, 3), {"padding": 1, "padding_mode": "replicate",
                                     "dilation": (2, 1)}, F32),
    (2, (2, 2, 4, 4), (2, 2, 3, 3), {"padding": 2, "padding_mode": "circular"}, F64),
    (1, (2, 3, 8), (3, 3, 3), {"stride": 2, "padding": 1, "padding_mode": "reflect"}, F32),
    (3, (1, 2, 3, 4, 4), (2, 1, 2, 3, 3), {"groups": 2, "padding": 1,
                                           "padding_mode": "replicate"}, F32),
]


def _gradient_check(rng, nd, xs, ws, kw, dtype, which, split=False):
    """conv{nd}d_input or _weight (`which`) against the oracle; `split`: the weight gradient with
    the smallest workspace it accepts."""
    x, w = arr(rng, xs, dtype), arr(rng, ws, dtype)
    g = arr(rng, ref.conv_nd(x, w, **kw).shape, dtype)
    fn = getattr(clconv, f"conv{nd}d_{which}")
    if which == "input":
        expect(fn(xs, w, g, **kw), ref_extra.conv_nd_input(xs, w, g, **kw), dtype,
               ws[0] // kw.get("groups", 1) * math.prod(ws[2:]), mag(w, g))
        return
    got = smallest_limit(lambda n: fn(x, ws, g, workspace_limit=n, **kw))[1] if split else \
        fn(x, ws, g, **kw)
    expect(got, ref_extra.conv_nd_weight(x, ws, g, **kw), dtype,
           xs[0] * math.prod(g.shape[2:]), mag(x, g))


@pytest.mark.parametrize("which, split", [("input", False), ("weight", False), ("weight", True)],
                         ids=["input", "weight", "weight-split"])
@pytest.mark.parametrize("nd, xs, ws, kw, dtype",
                         [pytest.param(*c, id=case_id(f"{c[0]}d", *c[1:])) for c in _GRADIENTS])
def test_gradient(device, rng, index_t, nd, xs, ws, kw, dtype, which, split):
    need_dtype(device, dtype)
    _gradient_check(rng, nd, xs, ws, kw, dtype, which, split)


_GRAD_PATHS = [
    # (dimensions, x shape, w shape, kwargs, float64 too)
    (2, (2, 3, 5, 6), (3, 1, 3, 3), {"padding": 1, "groups": 3}, True),         # flip + forward
    (2, (1, 4, 6, 5), (2, 4, 1, 1), {}, False),                                  # 1x1: flip
    (2, (2, 2, 7, 9), (4, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 2}, True),  # dw
    # dw, rows wide enough for dw_adjoint's vector interior (both phases, 2 channels each)
    (2, (1, 2, 4, 37), (4, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 2}, True),
    # dw, rows too wide for dw_adjoint's small-plane buffer (the gather)
    (2, (1, 2, 3, 140), (2, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 2}, False),
    # dw, several planes a work-item (the last one's block cut short)
    (2, (1, 19, 3, 4), (19, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 19}, False),
    (2, (1, 3, 6, 9), (3, 1, 3, 2), {"stride": (1, 2), "padding": (1, 0), "groups": 3,
                                     "dilation": (2, 1)}, False),                # dw
    (2, (2, 3, 7, 6), (4, 3, 3, 3), {"stride": 2, "padding": 1}, True),          # phase col2im
    (2, (1, 2, 8, 7), (3, 2, 3, 2), {"stride": (3, 2), "dilation": (1, 2)}, False),
    (2, (2, 3, 5, 9), (2, 3, 3, 3), {"padding": (1, 2)}, False),                 # packed wgrad
    (1, (2, 2, 11), (3, 2, 3), {"stride": 2, "padding": 1}, False),              # 1-d
]


@pytest.fixture
def packed_gemm(monkeypatch: pytest.MonkeyPatch) -> None:
    """$CLCONV_GEMM=packed: PackedWeightGrad runs on clconv's packed GEMM only. (Plans made
    meanwhile keep that engine: these tests use shapes of their own, so that no other test reuses
    them.)"""
    monkeypatch.setenv("CLCONV_GEMM", "packed")


@pytest.mark.parametrize("which", ["input", "weight"])
@pytest.mark.parametrize("nd, xs, ws, kw, dtype", [
    pytest.param(nd, xs, ws, kw, dt, id=case_id(f"{nd}d", xs, ws, kw, dt))
    for nd, xs, ws, kw, wide in _GRAD_PATHS for dt in [F32] + ([F64] if wide else [])])
def test_grad_paths(device, rng, index_t, packed_gemm, nd, xs, ws, kw, dtype, which):
    """conv_grad_paths.cl (clconv.ops.grad_paths): the stride-1 adjoint as a forward convolution of
    the flipped filters (flip_transpose), the strided depthwise adjoint (dw_adjoint), the depthwise
    weight gradient (dw_weight_grad), the whole-image col2im of the GEMM adjoint (col2im_phase)
    and the dense weight gradient on clconv's packed GEMM (wg_pack_g, wg_pack_x)."""
    need_dtype(device, dtype)
    _gradient_check(rng, nd, xs, ws, kw, dtype, which)


def test_grad_paths_conv_transpose2d(rng, index_t, packed_gemm):
    """The adjoint as a layer: conv_transpose2d's bias + ReLU through the forward machinery."""
    x, w, b = arr(rng, (1, 2, 4, 5)), arr(rng, (2, 3, 3, 3)), arr(rng, (3,))
    got = clconv.conv_transpose2d(x, w, b, padding=1, activation="relu")
    expect(got, np.maximum(ref.conv_transpose_nd(x, w, b, padding=1), 0), F32, 2 * 9, mag(x, w))


@pytest.mark.parametrize("groups", [1, 2])
def test_adjoint_exact_borders(rng, index_t, groups):
    """adjoint_borders.cl: an Inf and a NaN weight in a stride-1 adjoint on the forward route
    (a 28x28 grid), with bias and ReLU; the NaN border outputs the forward made are recomputed
    from the taps that exist (the float64 oracle scatters only those)."""
    x, w, b = arr(rng, (1, 2, 28, 28)), arr(rng, (2, 4 // groups, 3, 3)), arr(rng, (4,))
    w[0, 0, 0, 0], w[1, 1, 2, 2] = np.inf, np.nan
    plan = clconv.plan_conv_transpose2d(x.shape, w.shape, True, padding=1, groups=groups,
                                        activation="relu")
    assert plan.adjoint.route.borders is not None
    got = plan(x, w, b)
    conv = ref.conv_transpose_nd(x, w, b, padding=1, groups=groups)
    want = np.where(np.isnan(conv), np.nan, np.maximum(conv, 0))
    expect(got, want, F32, 2 // groups * 9, mag(x, np.nan_to_num(w, posinf=0, neginf=0)))


def _weight_grad_route_check(device, rng, route_class, dtype, xs, ws, kw) -> None:
    """A 2-d weight-gradient route of clconv.ops.weight_grad_paths configured directly for (xs, ws, kw)
    and run once, against the oracle."""
    import pyopencl.array as cla

    from clconv.ops.geometry import conv_geometry

    need_dtype(device, dtype)
    x = arr(rng, xs, dtype)
    g = arr(rng, ref.conv_nd(x, np.zeros(ws), None, **kw).shape, dtype)
    geo = conv_geometry(2, xs, ws, kw.get("stride", 1), kw.get("padding", 0),
                        kw.get("dilation", 1), 1)
    route = route_class(device, geo, dtype)
    out = cla.empty(device.queue, ws, dtype)
    route.run(cla.to_device(device.queue, x), cla.to_device(device.queue, g), out)
    expect(out, ref.conv_nd_weight(x, ws, g, **kw), dtype, 2 * math.prod(g.shape[2:]),
           mag(x, g))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("xs, ws, kw", [
    ((2, 19, 5, 7), (3, 19, 3, 3), {"padding": 1}),
    ((1, 9, 7, 8), (4, 9, 3, 2), {"stride": (2, 1), "padding": (0, 1), "dilation": (1, 2)})],
    ids=["3x3-2images", "strided-dilated"])
def test_implicit_weight_grad(device, rng, index_t, dtype, xs, ws, kw):
    """clconv.ops.weight_grad_paths.ImplicitWeightGrad configured directly (the rule takes it for large
    layers on PoCL only): cl/wgrad_implicit.cl's channel-blocked copy of x (wg_pack_xp: padding
    rows and columns, a part-filled last block) and the GEMM reading its B panels from it
    (wg_gemm_xp: every tap, strided and dilated rows, scattered stores)."""
    from clconv.ops.weight_grad_paths import ImplicitWeightGrad

    _weight_grad_route_check(device, rng, ImplicitWeightGrad, dtype, xs, ws, kw)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("xs, ws, kw, chunk_bytes", [
    ((1, 2, 5, 40), (5, 2, 3, 3), {"stride": (1, 2), "padding": 1}, None),
    ((2, 3, 6, 21), (4, 3, 2, 3), {"padding": (1, 0), "dilation": (1, 2)}, None),
    ((3, 1, 4, 18), (3, 1, 3, 3), {"padding": 1}, 1)],
    ids=["strided-masked-tail", "dilated-2images", "image-chunks"])
def test_stem_weight_grad(device, rng, index_t, dtype, xs, ws, kw, chunk_bytes, monkeypatch):
    """clconv.ops.weight_grad_paths.StemWeightGrad configured directly (the rule takes it on PoCL only):
    cl/wgrad_stem.cl's phase-split copy of x (wg_phase_x: padding rows and columns, two phases)
    and the sums along output rows (wg_stem: full vectors, a row's masked last vector, a part-
    filled tile of output channels; a dW per image, added by splitk_reduce.cl)."""
    from clconv.ops import weight_grad_paths
    from clconv.ops.weight_grad_paths import StemWeightGrad

    if chunk_bytes is not None:
        monkeypatch.setattr(weight_grad_paths, "_STEM_WG_CHUNK_BYTES", chunk_bytes)

    # (output rows of 16+ columns: at least one vector of any width, the kernel's premise)
    _weight_grad_route_check(device, rng, StemWeightGrad, dtype, xs, ws, kw)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("ys, ws, kw", [
    ((2, 19, 6, 7), (19, 5, 3, 3), {"padding": 1}),
    ((1, 8, 7, 9), (8, 3, 3, 2), {"padding": (2, 1), "dilation": (2, 1), "groups": 2})],
    ids=["3x3-2images", "grouped-dilated"])
def test_implicit_flipped_adjoint(device, rng, index_t, dtype, ys, ws, kw, monkeypatch):
    """conv_implicit.cl with A_FLIPPED (the stride-1 adjoint's forward convolution reading the
    layer's filters as its flipped ones: clconv.ops.adjoint_paths), configured directly as
    conv_transpose2d's: edge tiles of output channels, K in chunks that end inside a channel's
    taps (a small panel budget), two images."""
    import pyopencl.array as cla

    from clconv.ops import packed_conv
    from clconv.ops.adjoint_paths import forward_geometry
    from clconv.ops.conv_algorithms import ImplicitGemm
    from clconv.ops.geometry import conv_geometry

    need_dtype(device, dtype)
    y, w, b = arr(rng, ys, dtype), arr(rng, ws, dtype), arr(rng, (ws[1] * kw.get("groups", 1),),
                                                            dtype)
    want = ref.conv_transpose_nd(y, w, b, **kw)
    # the layer whose adjoint this is: input `want`'s shape, filters w
    geo = conv_geometry(2, want.shape, ws, 1, kw.get("padding", 0), kw.get("dilation", 1),
                        kw.get("groups", 1))
    fgeo = forward_geometry(geo)
    tile = packed_conv.conv_tile(device, fgeo, dtype)  # chunks of 7 rows of K (taps: 9, 6)
    monkeypatch.setattr(packed_conv, "PANEL_BUDGET",
                        7 * (tile.nr + packed_conv.TAIL_DOT) * np.dtype(dtype).itemsize)
    impl = ImplicitGemm(device, fgeo, dtype, True, None, 1 << 30, flipped=True)
    out = cla.empty(device.queue, want.shape, dtype)
    q = device.queue
    impl.run(cla.to_device(q, y), cla.to_device(q, w), cla.to_device(q, b), out)
    expect(out, want, dtype, ws[0] * 6, mag(y, w))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_local_gemm_weight_grad(device, rng, index_t, dtype):
    """clconv.ops.weight_grad_paths.LocalGemmWeightGrad configured directly (the rule takes it on
    PoCL only): wgrad_implicit.cl's wg_gemm_1x1 over 2 images of 11 positions, a full channel
    block (vector stores) and a part-filled one, an edge tile of output channels, the A panels
    of a block split between work-items."""
    import pyopencl.array as cla

    from clconv.blas import packed
    from clconv.ops.geometry import conv_geometry
    from clconv.ops.weight_grad_paths import LocalGemmWeightGrad

    need_dtype(device, dtype)
    nr = packed.tile_for(device, dtype, 64, 64, 22).nr
    xs, ws = (2, nr + 5, 1, 11), (41, nr + 5, 1, 1)
    x, g = arr(rng, xs, dtype), arr(rng, (2, 41, 1, 11), dtype)
    route = LocalGemmWeightGrad(device, conv_geometry(2, xs, ws, 1, 0, 1, 1), dtype)
    assert route.range[0] == 2 and route.range[1] > 1  # two blocks, A panels split
    out = cla.empty(device.queue, ws, dtype)
    route.run(cla.to_device(device.queue, x), cla.to_device(device.queue, g), out)
    expect(out, ref.conv_nd_weight(x, ws, g), dtype, 2 * 11, mag(x, g))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("groups", [1, 2])
def test_pointwise_adjoint_weight_in_place(device, rng, index_t, dtype, groups):
    """conv_pointwise.cl with A_TRANSPOSED (the 1x1 adjoint's GEMM reading the layer's weight as
    its transpose, per group: adjoint_paths.ForwardAdjoint on PoCL), configured directly, with a
    bias and ReLU: conv_transpose2d's semantics."""
    import pyopencl.array as cla

    from clconv.ops.geometry import conv_geometry
    from clconv.ops.pointwise import Pointwise

    need_dtype(device, dtype)
    y, w, b = arr(rng, (2, 6, 5, 8), dtype), arr(rng, (6, 4 // groups, 1, 1), dtype), \
        arr(rng, (4,), dtype)
    # the forward 1x1 convolution 6 -> 4 channels whose weight is w transposed per group
    fgeo = conv_geometry(2, y.shape, (4, 6 // groups, 1, 1), 1, 0, 1, groups)
    impl = Pointwise(device, fgeo, dtype, True, "relu", 0, weight_transposed=True)
    out = cla.empty(device.queue, (2, 4, 5, 8), dtype)
    q = device.queue
    impl.run(cla.to_device(q, y), cla.to_device(q, w), cla.to_device(q, b), out)
    expect(out, np.maximum(ref.conv_transpose_nd(y, w, b, groups=groups), 0), dtype, 2 * 6,
           mag(y, w))


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_splitk_weight_grad(device, rng, index_t, dtype):
    """clconv.ops.weight_grad_paths.SplitKWeightGrad configured directly (the rule takes it on PoCL's CPU
    devices only): conv_grad_paths.cl's transpose_rows (partial 16 x 16 tiles) and gemm_splitk.cl
    with an output gradient a image (a_stride), every image's K slices in one reduction."""
    import pyopencl.array as cla

    from clconv.ops.geometry import conv_geometry
    from clconv.ops.weight_grad_paths import SplitKWeightGrad

    need_dtype(device, dtype)
    xs, ws = (2, 17, 5, 7), (13, 17, 1, 1)
    x, g = arr(rng, xs, dtype), arr(rng, (2, 13, 5, 7), dtype)
    route = SplitKWeightGrad(device, conv_geometry(2, xs, ws, 1, 0, 1, 1), dtype)
    out = cla.empty(device.queue, ws, dtype)
    route.run(cla.to_device(device.queue, x), cla.to_device(device.queue, g), out)
    expect(out, ref.conv_nd_weight(x, ws, g), dtype, 2 * 35, mag(x, g))
