"""Forward convolutions under Oclgrind: every algorithm ('im2col' folded, chunked and in ranges of
positions, 'direct', 'implicit', 'im2col_packed', 'winograd', 'depthwise', 'pointwise', 'splitk'),
every padding mode, groups, strides, dilations, fused epilogues, strided device operands, float32
and float64, the 64-bit index path (conv_direct, conv_grouped, conv_implicit, im2col, im2col_packed,
gemm_packed, winograd, conv_depthwise, conv_pointwise, gemm_splitk, epilogue, strided_copy's two
kernels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref

import clconv

from .support import arr, case_id, expect, mag, need_dtype, smallest_limit

pytestmark = pytest.mark.sanitize

F32, F64 = np.float32, np.float64


#: (x shape, w shape, kwargs) of conv2d, float64 too on every third.
_CONV2D = [
    ((1, 2, 5, 6), (3, 2, 3, 3), {"padding": 1}),
    ((2, 3, 6, 5), (4, 3, 2, 3), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)}),
    ((1, 4, 5, 5), (4, 2, 3, 3), {"groups": 2, "padding": "same"}),
    ((2, 4, 5, 7), (4, 1, 3, 3), {"groups": 4, "padding": 1}),            # depthwise: conv_grouped
    ((1, 17, 4, 4), (2, 17, 3, 3), {"padding": 1}),                       # C_in/groups > 16: direct
    ((2, 3, 4, 5), (5, 3, 1, 1), {}),                                      # pointwise: GEMM on x
    ((1, 2, 5, 5), (2, 2, 3, 3), {"padding": 2, "padding_mode": "reflect"}),
    ((1, 2, 4, 5), (3, 2, 3, 2), {"padding": (2, 1), "padding_mode": "replicate"}),
    ((2, 2, 4, 4), (2, 2, 3, 3), {"padding": 3, "padding_mode": "circular"}),
    ((2, 3, 3), (3, 2, 3, 3), {"padding": 1}),                             # unbatched
    # stride 2 along lines of 10: the packed gather's vector runs, stopped one short of the row end
    ((1, 2, 4, 20), (3, 2, 3, 3), {"stride": 2, "padding": 1}),
    # 33 columns: a narrow last panel of 1 (panels of 8, 16 or 32: conv_implicit.cl's tail_dot)
    ((1, 2, 3, 11), (5, 2, 3, 3), {"padding": 1}),
]
_CONV2D_RUNS = [pytest.param(xs, ws, kw, dt, id=case_id(xs, ws, kw, dt))
                for i, (xs, ws, kw) in enumerate(_CONV2D)
                for dt in [F32] + ([F64] if i % 3 == 0 else [])]


@pytest.mark.parametrize("algorithm", ["im2col", "direct", "implicit", "im2col_packed"])
@pytest.mark.parametrize("xs, ws, kw, dtype", _CONV2D_RUNS)
def test_conv2d(device, rng, index_t, xs, ws, kw, dtype, algorithm):
    """conv2d with bias through each general algorithm ('implicit' and 'im2col_packed' are
    clconv's packed GEMM: conv_implicit.cl, im2col_packed.cl)."""
    need_dtype(device, dtype)
    x, w, b = arr(rng, xs, dtype), arr(rng, ws, dtype), arr(rng, (ws[0],), dtype)
    got = clconv.conv2d(x, w, b, algorithm=algorithm, **kw)
    expect(got, ref.conv_nd(x, w, b, **kw), dtype, math.prod(ws[1:]), mag(x, w))


@pytest.mark.parametrize("xs, ws, kw, dtype", _CONV2D_RUNS)
def test_conv2d_im2col_split(device, rng, index_t, xs, ws, kw, dtype):
    """'im2col' + ReLU with a column buffer too small for one image: chunks of images, then ranges
    of output positions."""
    need_dtype(device, dtype)
    x, w, b = arr(rng, xs, dtype), arr(rng, ws, dtype), arr(rng, (ws[0],), dtype)
    _, got = smallest_limit(lambda n: clconv.conv2d(
        x, w, b, algorithm="im2col", workspace_limit=n, activation="relu", **kw))
    expect(got, np.maximum(ref.conv_nd(x, w, b, **kw), 0), dtype, math.prod(ws[1:]), mag(x, w))


_ALL = ("im2col", "direct", "implicit", "im2col_packed")
_CONV1D3D = [
    ("conv1d", (2, 3, 9), (4, 3, 3), {"stride": 2, "padding": 1, "dilation": 2}, _ALL),
    # 'direct' only: Oclgrind 21.10 cannot create the 1-d reflect im2col kernel even at
    # -cl-opt-disable ("Undefined external function: llvm.abs.i32"); 2-d reflect im2col runs above
    ("conv1d", (1, 4, 7), (4, 1, 3), {"groups": 4, "padding": 1, "padding_mode": "reflect"},
     ("direct",)),
    ("conv1d", (1, 4, 7), (4, 2, 3), {"groups": 2, "padding": 2, "padding_mode": "replicate"},
     _ALL),
    ("conv3d", (1, 2, 4, 4, 5), (3, 2, 2, 3, 3), {"padding": (1, 0, 1)}, _ALL),
    ("conv3d", (2, 2, 3, 4, 4), (2, 1, 3, 3, 3), {"groups": 2, "padding": 1,
                                                  "padding_mode": "circular"}, _ALL),
]


@pytest.mark.parametrize("fn, xs, ws, kw, algorithm", [
    pytest.param(fn, xs, ws, kw, a, id=case_id(fn, a, xs, ws, kw))
    for fn, xs, ws, kw, algorithms in _CONV1D3D for a in algorithms])
def test_conv1d_conv3d(rng, fn, xs, ws, kw, algorithm):
    x, w, b = arr(rng, xs), arr(rng, ws), arr(rng, (ws[0],))
    got = getattr(clconv, fn)(x, w, b, algorithm=algorithm, **kw)
    expect(got, ref.conv_nd(x, w, b, **kw), F32, math.prod(ws[1:]), mag(x, w))


@pytest.mark.parametrize("xs, ws, kw, dtype, split", [
    pytest.param(*c, id=case_id(*c[:4], "split" if c[4] else "whole")) for c in [
        ((1, 2, 5, 7), (3, 2, 3, 3), {"padding": 1}, F32, False),   # odd sizes: edge tiles
        ((2, 4, 6, 5), (4, 2, 3, 3), {"groups": 2}, F32, False),
        ((2, 2, 9, 9), (2, 2, 3, 3), {"padding": 1}, F32, True),    # rows of tiles
        ((1, 2, 4, 4), (2, 2, 3, 3), {"padding": 1}, F64, False)]])
def test_winograd(device, rng, index_t, xs, ws, kw, dtype, split):
    """Winograd F(2x2, 3x3) with bias + ReLU; `split`: the smallest workspace it accepts."""
    need_dtype(device, dtype)
    x, w, b = arr(rng, xs, dtype), arr(rng, ws, dtype), arr(rng, (ws[0],), dtype)

    def run(n: int | None):
        return clconv.conv2d(x, w, b, algorithm="winograd", activation="relu", workspace_limit=n,
                             **kw)

    got = smallest_limit(run)[1] if split else run(None)
    # Winograd's transforms add rounding: the tests' reduction for it is 4x the direct one
    expect(got, np.maximum(ref.conv_nd(x, w, b, **kw), 0), dtype, 4 * math.prod(ws[1:]),
           mag(x, w))


#: Fused epilogue activations with their numpy float64 formulas (torch's).
_EPILOGUE_ACTS = [
    (("leaky_relu", 0.2), lambda v: np.where(v > 0, v, 0.2 * v)),
    ("relu6", lambda v: np.clip(v, 0, 6)),
    ("sigmoid", lambda v: 1 / (1 + np.exp(-v))),
    (("clamp", -0.5, 0.5), lambda v: np.clip(v, -0.5, 0.5)),
]
_EPILOGUE_CASES = [
    ((2, 3, 4, 19), (7, 3, 3, 3), {"padding": 1},
     ["direct", "implicit", "im2col_packed", "im2col", "winograd"]),
    ((1, 4, 3, 21), (4, 1, 3, 3), {"padding": 1, "groups": 4}, ["direct"]),
    ((1, 17, 3, 4), (2, 17, 3, 3), {"padding": 1}, ["direct"]),
]
_EPILOGUE_RUNS = [(xs, ws, kw, a) for xs, ws, kw, algorithms in _EPILOGUE_CASES for a in algorithms]


@pytest.mark.parametrize("xs, ws, kw, algorithm, act, formula", [
    pytest.param(*run, *_EPILOGUE_ACTS[i % len(_EPILOGUE_ACTS)],
                 id=case_id(run[3], *run[:3], _EPILOGUE_ACTS[i % len(_EPILOGUE_ACTS)][0]))
    for i, run in enumerate(_EPILOGUE_RUNS)])
def test_epilogue(rng, xs, ws, kw, algorithm, act, formula):
    """act(conv + bias + residual) fused (common.cl's epilogue_residual, gemm_packed.cl's vector
    store, conv_grouped.cl's vector interior, conv_direct.cl, the im2col epilogue kernels,
    Winograd)."""
    from clconv.blas import clblast

    if algorithm in ("im2col", "winograd") and not clblast.available():
        pytest.skip(f"'{algorithm}' needs CLBlast")
    x, w, b = arr(rng, xs), arr(rng, ws), arr(rng, (ws[0],))
    conv = ref.conv_nd(x, w, b, **kw)
    r = arr(rng, conv.shape)
    got = clconv.conv2d(x, w, b, algorithm=algorithm, activation=act, residual=r, **kw)
    red = math.prod(ws[1:]) * (4 if algorithm == "winograd" else 1)
    expect(got, formula(conv + r), F32, red, max(mag(x, w), mag(r)))


def test_epilogue_conv_transpose2d(rng):
    x, w, b = arr(rng, (1, 4, 3, 4)), arr(rng, (4, 3, 3, 2)), arr(rng, (6,))
    kw = {"stride": (2, 1), "groups": 2}
    conv = ref.conv_transpose_nd(x, w, b, **kw)
    r = arr(rng, conv.shape)
    got = clconv.conv_transpose2d(x, w, b, activation="relu6", residual=r, **kw)
    expect(got, np.clip(conv + r, 0, 6), F32, 2 * 6, max(mag(x, w), mag(r)))


_SPECIAL = [
    # (function, x shape, w shape, kwargs, algorithm, dtypes)
    ("conv2d", (2, 3, 5, 7), (3, 1, 3, 3), {"padding": 1, "groups": 3}, "depthwise", [F32, F64]),
    ("conv2d", (1, 2, 7, 9), (4, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 2}, "depthwise",
     [F32]),
    ("conv2d", (1, 2, 6, 6), (4, 1, 5, 5), {"padding": 2, "groups": 2}, "depthwise", [F32]),
    ("conv2d", (1, 2, 24, 20), (2, 1, 3, 3), {"padding": 1, "groups": 2}, "depthwise", [F32]),
    ("conv2d", (1, 3, 5, 6), (3, 1, 3, 3), {"padding": 1, "groups": 3, "padding_mode": "reflect"},
     "depthwise", [F32]),
    ("conv1d", (2, 2, 11), (2, 1, 5), {"padding": 2, "groups": 2, "dilation": 2}, "depthwise",
     [F32]),
    ("conv3d", (1, 2, 3, 4, 5), (2, 1, 2, 3, 3), {"padding": (0, 1, 1), "groups": 2}, "depthwise",
     [F32]),
    # 'pointwise' and 'splitk' need a register tile's width of output positions (<= 64)
    ("conv2d", (2, 3, 8, 9), (4, 3, 1, 1), {}, "pointwise", [F32, F64]),
    # 49 positions: a narrow last panel of one column (dot products, its columns in local memory)
    ("conv2d", (2, 5, 7, 7), (6, 5, 1, 1), {}, "pointwise", [F32, F64]),
    ("conv2d", (1, 3, 16, 17), (4, 3, 1, 1), {"stride": 2}, "pointwise", [F32]),
    ("conv2d", (1, 5, 8, 9), (3, 5, 3, 3), {"padding": 1}, "splitk", [F32, F64]),
]


@pytest.mark.parametrize("fn, xs, ws, kw, algorithm, dtype, fused", [
    pytest.param(fn, xs, ws, kw, a, dt, bool(i % 2),
                 id=case_id(a, fn, xs, ws, kw, dt, *(["relu+residual"] if i % 2 else [])))
    for i, (fn, xs, ws, kw, a, dtypes) in enumerate(_SPECIAL) for dt in dtypes])
def test_depthwise_pointwise_splitk(device, rng, index_t, fn, xs, ws, kw, algorithm, dtype,
                                    fused):
    """'depthwise' (conv_depthwise.cl: conv_depthwise_flat's flattened planes at stride 1,
    conv_depthwise_small's whole zero-padded planes, stride 1 (a larger plane) and 2,
    conv_depthwise for other padding modes, 1-d and 3-d, channel multipliers), 'pointwise'
    (conv_pointwise.cl, with the strided layer's subsample), 'splitk' (im2col + gemm_splitk.cl's
    slices and reduction); `fused`: bias + residual + ReLU in the epilogue."""
    need_dtype(device, dtype)
    x, w, b = arr(rng, xs, dtype), arr(rng, ws, dtype), arr(rng, (ws[0],), dtype)
    conv = ref.conv_nd(x, w, b, **kw)
    if fused:
        r = arr(rng, conv.shape, dtype)
        got = getattr(clconv, fn)(x, w, b, algorithm=algorithm, activation="relu", residual=r,
                                  **kw)
        want, magnitude = np.maximum(conv + r, 0), max(mag(x, w), mag(r))
    else:
        got, want, magnitude = getattr(clconv, fn)(x, w, b, algorithm=algorithm, **kw), conv, \
            mag(x, w)
    expect(got, want, dtype, math.prod(ws[1:]), magnitude)


@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
def test_strided_input(device, rng, index_t, algorithm):
    """A device operand with an offset and strides (copied on the device: strided_copy.cl)."""
    import pyopencl.array as cla

    x, w = arr(rng, (2, 3, 6, 10)), arr(rng, (2, 3, 3, 3))
    xd = cla.to_device(device.queue, x)[:, :, 1:, ::2]
    got = clconv.conv2d(xd, w, padding=1, algorithm=algorithm)
    expect(got, ref.conv_nd(x[:, :, 1:, ::2], w, padding=1), F32, 27, mag(x, w))


def test_strided_out(device, rng, index_t):
    """out= a strided device view with an offset: computed contiguous, then scattered into the
    view (strided_copy.cl's strided_store); the elements between stay."""
    import pyopencl.array as cla

    x, w = arr(rng, (2, 3, 5, 5)), arr(rng, (2, 3, 3, 3))
    base = cla.to_device(device.queue, np.full((2, 3, 5, 12), 7.0, F32))
    clconv.conv2d(cla.to_device(device.queue, x), w, padding=1, out=base[:, 1:, :, 1:11:2])
    got = base.get()
    expect(got[:, 1:, :, 1:11:2], ref.conv_nd(x, w, padding=1), F32, 27, mag(x, w))
    got[:, 1:, :, 1:11:2] = 7.0
    np.testing.assert_array_equal(got, 7.0)


@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_splitk_flipped_filters(device, rng, index_t, dtype):
    """gemm_splitk.cl's FLIP_KS (the input gradient of a stride-1 convolution as the forward one,
    the filters read flipped and transposed by the GEMM, K slices of whole filters), configured
    directly: 'auto''s rule takes that route on PoCL's CPU devices only."""
    import pyopencl.array as cla

    from clconv.ops.geometry import conv_geometry
    from clconv.ops.adjoint_paths import forward_geometry
    from clconv.ops.splitk import SplitK

    need_dtype(device, dtype)
    xs, ws, kw = (1, 5, 8, 9), (3, 5, 3, 2), {"padding": (1, 0)}
    w = arr(rng, ws, dtype)
    g = arr(rng, ref.conv_nd(np.zeros(xs), np.zeros(ws), **kw).shape, dtype)
    fgeo = forward_geometry(conv_geometry(2, xs, ws, 1, kw["padding"], 1, 1))
    impl = SplitK(device, fgeo, dtype, False, None, 1 << 30, flipped=True)
    out = cla.empty(device.queue, xs, dtype)
    impl.run(cla.to_device(device.queue, g), cla.to_device(device.queue, w), None, out)
    expect(out, ref.conv_nd_input(xs, w, g, **kw), dtype, ws[0] * 6, mag(w, g))
