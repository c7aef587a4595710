"""The gradient / transposed-convolution paths without im2col or col2im (clconv.ops.adjoint_paths,
clconv.ops.weight_grad_paths):
the forward-convolution route of stride-1 adjoints (flipped, transposed filters), the direct
depthwise adjoint (strided depthwise input gradients and transposed convolutions), the direct
depthwise weight gradient and the dense weight gradient on the packed GEMM with operands packed
from x and grad_output (PoCL), against the float64 oracle (``reference.py``) and torch.

Each case first asserts which path the plan took, so that a change in the routing cannot leave a
path untested. Shapes cover the kernels' edges: rows narrower and wider than a vector (the weight
gradient's interior / edge split, stride-2 vector loads at a row's end), asymmetric padding
('same' with an even kernel, a transposed convolution's output_padding), dilation, strides 2 and 3,
channel multipliers, batches > 1, bias / activation / residual of the transposed convolutions.
Tolerances: ``tolerance.py`` (reductions as in test_grad.py / test_conv_transpose.py).
"""

from __future__ import annotations

import math

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pytest
import reference as ref
from helpers import import_torch, random_array
from tolerance import assert_close, conv_magnitude

from clconv.blas import packed as packed_engine
from clconv.blas.engine import cpu_shaped, gemm_engine
from clconv.ops import adjoint_paths, weight_grad_paths


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv

# (input shape, weight shape, conv arguments, the input gradient's expected path)
FORWARD = "ForwardAdjoint"
DW_ADJ = "DepthwiseAdjoint"
PW_ADJ = "StridedPointwiseAdjoint"  # (on CPU-shaped devices without a loop cap; else GEMM)
GEMM = None
CASES = {
    "dense3x3": ((2, 3, 28, 30), (5, 3, 3, 3), {"padding": 1}, FORWARD),
    "dense3x3-valid": ((1, 4, 30, 29), (3, 4, 3, 3), {}, FORWARD),
    "dense-dilated": ((1, 2, 29, 28), (3, 2, 3, 3), {"padding": 2, "dilation": 2}, FORWARD),
    "dense-same-even": ((1, 3, 28, 28), (2, 3, 4, 4), {"padding": "same"}, FORWARD),
    "dense-groups": ((2, 4, 28, 28), (6, 2, 3, 3), {"padding": 1, "groups": 2}, FORWARD),
    "1x1": ((2, 8, 28, 29), (5, 8, 1, 1), {}, FORWARD),
    "1x1-small-grid-groups": ((2, 8, 5, 6), (6, 4, 1, 1), {"groups": 2}, FORWARD),
    "1x1-groups": ((2, 8, 8, 9), (6, 4, 1, 1), {"groups": 2}, FORWARD),
    # (1x1 weight gradients of few positions in all: one launch, each work-item's block of x's
    # channels transposed into local memory; C_in of one part-filled block (19, 20, 13), a full
    # block and a part-filled one (40); C_out not a multiple of the tile; one image, two, three)
    "1x1-local-wgrad": ((2, 19, 5, 7), (37, 19, 1, 1), {}, FORWARD),
    "1x1-local-wgrad-blocks": ((1, 40, 7, 7), (13, 40, 1, 1), {}, FORWARD),
    "1x1-local-wgrad-143": ((1, 20, 11, 13), (9, 20, 1, 1), {}, FORWARD),
    "1x1-local-wgrad-3images": ((3, 13, 8, 9), (7, 13, 1, 1), {}, FORWARD),
    # (C_in past one vector and >= 256 positions: the weight gradient on the split-K GEMM; C_in
    # and C_out not multiples of the tile, 306 positions, 3 images)
    "1x1-splitk-weight": ((3, 20, 17, 18), (25, 20, 1, 1), {}, FORWARD),
    "1x1-s2": ((3, 7, 13, 11), (9, 7, 1, 1), {"stride": 2}, PW_ADJ),
    "1x1-s3-groups": ((2, 6, 20, 20), (9, 2, 1, 1), {"stride": 3, "groups": 3}, PW_ADJ),
    # (weight gradients with B read from a channel-blocked copy of x: >= 512 output positions,
    # C_in a multiple of the B panel; then 136 channels, the last block part-filled, stride 2
    # over 2 images; dilation and stride along one axis each)
    "implicit-wgrad": ((1, 32, 30, 29), (6, 32, 3, 3), {"padding": 1}, FORWARD),
    "implicit-wgrad-s2-partial": ((2, 136, 34, 33), (7, 136, 3, 3), {"stride": 2, "padding": 1},
                                  GEMM),
    "implicit-wgrad-dilated-rect": ((1, 32, 26, 40), (5, 32, 3, 2),
                                    {"stride": (1, 2), "padding": (2, 1), "dilation": (2, 1)},
                                    GEMM),
    "stem-7x7-s2": ((2, 3, 23, 21), (8, 3, 7, 7), {"stride": 2, "padding": 3}, GEMM),
    # (weight gradients summed along output rows, few input channels: a row of two vectors and a
    # masked last one, C_out not a multiple of the tile's channels; stride, dilation and padding
    # per axis; then C_in past one B panel and few positions: the packed path)
    "stem-wgrad-wide": ((2, 3, 40, 70), (10, 3, 7, 7), {"stride": 2, "padding": 3}, GEMM),
    "stem-wgrad-dilated-rect": ((1, 5, 20, 60), (7, 5, 3, 5),
                                {"stride": (1, 3), "padding": (2, 1), "dilation": (2, 2)}, GEMM),
    "packed-wgrad": ((1, 40, 17, 17), (6, 40, 3, 3), {"stride": 2, "padding": 1}, GEMM),
    "dense-s2-many-cols": ((1, 12, 15, 16), (7, 12, 3, 3), {"stride": 2, "padding": 1}, GEMM),
    "dense-small-grid": ((2, 4, 9, 9), (3, 4, 3, 3), {"padding": 1}, GEMM),
    "dw-s1": ((2, 6, 9, 11), (6, 1, 3, 3), {"padding": 1, "groups": 6}, FORWARD),
    "dw-s1-mult2": ((1, 4, 12, 37), (8, 1, 3, 3), {"padding": 1, "groups": 4}, FORWARD),
    "dw-s2": ((2, 6, 9, 11), (6, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 6}, DW_ADJ),
    "dw-s2-wide": ((1, 3, 8, 41), (3, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 3}, DW_ADJ),
    "dw-s2-k5": ((1, 4, 13, 40), (4, 1, 5, 5), {"stride": 2, "padding": 2, "groups": 4}, DW_ADJ),
    # (two output channels per input channel: the later one adds to the vector interior's
    # stores; odd width, so the last column phase is one short)
    "dw-s2-mult2-wide": ((2, 3, 9, 45), (6, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 3},
                         DW_ADJ),
    "dw-s3-dil2-mult2": ((2, 3, 14, 17), (6, 1, 3, 3),
                         {"stride": 3, "padding": 1, "dilation": 2, "groups": 3}, DW_ADJ),
    # (several planes a work-item, the last block cut short: 35 planes over >= 8 work-items a
    # compute unit)
    "dw-s2-many-planes": ((1, 35, 7, 9), (35, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 35},
                          DW_ADJ),
    # (rows too wide for dw_adjoint's small-plane buffer: the gather)
    "dw-s2-gather": ((1, 3, 6, 150), (3, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 3},
                     DW_ADJ),
    "dw-s2-nopad-narrow": ((1, 5, 6, 5), (5, 1, 3, 3), {"stride": 2, "groups": 5}, DW_ADJ),
    "dw-s2-rect": ((1, 4, 17, 33), (4, 1, 3, 5), {"stride": (2, 1), "padding": (1, 2), "groups": 4},
                   DW_ADJ),
}
DEPTHWISE = {name for name, (x, w, kw, _) in CASES.items()
             if kw.get("groups", 1) > 1 and kw["groups"] == x[1]}


def _route_name(route) -> str | None:
    return None if route is None else type(route).__name__


def _adjoint_path(dev, path: str | None) -> str | None:
    """The adjoint route a case expects on `dev` (the strided 1x1 one needs a CPU-shaped device
    without a loop cap)."""
    if path == PW_ADJ and not (cpu_shaped(dev) and getattr(dev, "loop_limit", None) is None):
        return GEMM
    return path


def _out_shape(x_shape, w_shape, kw):
    return ref.conv_nd(np.zeros(x_shape), np.zeros(w_shape), None, **kw).shape


@pytest.mark.parametrize("case", sorted(CASES))
def test_paths_taken(clconv, dev, case):
    x_shape, w_shape, kw, path = CASES[case]
    pi = clconv.plan_conv2d_input(x_shape, w_shape, **kw)
    path = _adjoint_path(dev, path)
    assert _route_name(pi.adjoint.route) == path
    if path == FORWARD and w_shape[2:] == (1, 1) and pi.adjoint.route.algorithm == "pointwise":
        # the 1x1 GEMM reads the layer's weight as its transpose: no flip pass
        assert pi.adjoint.route.flipped is None and pi.adjoint.route.impl.kernel is not \
            clconv.plan_conv2d(x_shape, w_shape, **kw).impl.kernel
    if path == DW_ADJ:  # small planes from a private copy, wide rows (and stride 3) gathered
        small = x_shape[3] <= 64 and kw.get("stride", 1) in (1, 2, (2, 1))
        assert pi.adjoint.route.small == small
    if path == FORWARD and pi.adjoint.route.algorithm == "implicit":
        # the implicit GEMM reads the layer's filters as the flipped ones (A_FLIPPED): no flip
        assert pi.adjoint.route.flipped is None
    if path == FORWARD and pi.adjoint.route.algorithm == "depthwise":
        # the depthwise kernel reads the filters' taps backwards (FLIP_TAPS): no flip pass; only
        # a channel multiplier of 1 makes the adjoint depthwise
        assert w_shape[0] == x_shape[1] and kw.get("groups") == x_shape[1]
        assert pi.adjoint.route.flipped is None and pi.adjoint.route.impl.flipped
    if path is GEMM and not (w_shape[2:] == (1, 1) and kw.get("stride", 1) == 1):
        # the whole image's columns fit: col2im is the phase-wise gather
        assert type(pi.adjoint.col2im).__name__ == "PhaseCol2im"
    pw = clconv.plan_conv2d_weight(x_shape, w_shape, **kw)
    packed = dev.cl_device.type & cl.device_type.CPU and gemm_engine(dev) is packed_engine
    if case in DEPTHWISE:
        want = "DepthwiseWeightGrad"
    elif packed and kw.get("groups", 1) == 1:
        # unpadded stride-1 1x1 layers with C_in of a vector or more and >= 256 positions an
        # image: the split-K GEMM (one vector of columns: 8 or 16 floats)
        splitk = (w_shape[2:] == (1, 1) and not kw and math.prod(x_shape[2:]) >= 256
                  and x_shape[1] >= weight_grad_paths.SplitKWeightGrad.tile(dev, np.float32).nr)
        # B read in place from a channel-blocked copy of x: C_in of one B panel or more,
        # padded by at most a quarter, >= 512 output positions in all, no loop cap
        cin, positions = x_shape[1], x_shape[0] * math.prod(pw.geometry.out_size)
        nr = packed_engine.tile_for(dev, np.float32, w_shape[0], cin * math.prod(w_shape[2:]),
                                    positions).nr
        uncapped = getattr(dev, "loop_limit", None) is None
        implicit = (cin >= nr and 4 * -(-cin // nr) * nr <= 5 * cin and positions >= 512
                    and uncapped)
        # fewer input channels than a B panel, output rows of a vector or more, KW <= 11:
        # summed along the rows
        stem = (cin < nr and pw.geometry.out_size[-1] >= packed_engine.vector_width(
            dev, np.dtype(np.float32)) and w_shape[-1] <= 11 and uncapped)
        # unpadded stride-1 1x1 layers of at most 64 KiB of B panel (positions x NR floats): the
        # GEMM in one launch, each work-item's panel transposed from x into local memory
        local = (w_shape[2:] == (1, 1) and not kw and uncapped and positions * nr * 4 <= 65536)
        want = ("LocalGemmWeightGrad" if local else "SplitKWeightGrad" if splitk
                else "StemWeightGrad" if stem
                else "ImplicitWeightGrad" if implicit else "PackedWeightGrad")
    else:
        want = None
    assert _route_name(pw.impl.route) == want


@pytest.mark.parametrize("kind", ["numpy", "cl"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_grads_match_oracle(clconv, dev, rng, dtype, case, kind):
    x_shape, w_shape, kw, _ = CASES[case]
    x, w = random_array(rng, x_shape, dtype), random_array(rng, w_shape, dtype)
    g = random_array(rng, _out_shape(x_shape, w_shape, kw), dtype)
    wrap = (lambda a: cla.to_device(dev.queue, a)) if kind == "cl" else (lambda a: a)
    gi = clconv.conv2d_input(x_shape, wrap(w), wrap(g), **kw)
    gw = clconv.conv2d_weight(wrap(x), w_shape, wrap(g), **kw)
    assert isinstance(gi, cla.Array if kind == "cl" else np.ndarray) and gi.dtype == dtype
    groups = kw.get("groups", 1)
    assert_close(gi, ref.conv_nd_input(x_shape, w, g, **kw), dtype,
                 reduction=w_shape[0] // groups * math.prod(w_shape[2:]),
                 magnitude=conv_magnitude(g, w))
    assert_close(gw, ref.conv_nd_weight(x, w_shape, g, **kw), dtype,
                 reduction=x_shape[0] * math.prod(g.shape[2:]), magnitude=conv_magnitude(g, x))


@pytest.mark.parametrize("case", sorted(CASES))
def test_grads_match_torch(clconv, dev, rng, case):
    torch = import_torch()
    x_shape, w_shape, kw, _ = CASES[case]
    x, w = random_array(rng, x_shape), random_array(rng, w_shape)
    g = random_array(rng, _out_shape(x_shape, w_shape, kw))
    xt = torch.from_numpy(x).requires_grad_()
    wt = torch.from_numpy(w).requires_grad_()
    y = torch.nn.functional.conv2d(xt, wt, None, **kw)
    tgi, tgw = torch.autograd.grad(y, (xt, wt), torch.from_numpy(g))
    groups = kw.get("groups", 1)
    assert_close(clconv.conv2d_input(x_shape, w, g, **kw), tgi.numpy(), np.float32,
                 reduction=w_shape[0] // groups * math.prod(w_shape[2:]),
                 magnitude=conv_magnitude(g, w))
    assert_close(clconv.conv2d_weight(x, w_shape, g, **kw), tgw.numpy(), np.float32,
                 reduction=x_shape[0] * math.prod(g.shape[2:]), magnitude=conv_magnitude(g, x))


# Non-finite weights in the adjoints: torch's transposed convolutions and input gradients sum only
# the taps that exist, so an Inf or NaN weight gives no NaN where its tap would fall on padding
# (the forward route must not add 0 * w there: the depthwise kernel skips those taps, the other
# forward kernels' NaN border outputs are recomputed, cl/adjoint_borders.cl). (y shape, weight
# shape, arguments): the depthwise kernel's small planes, row segments, wide padding (point()),
# tiny rows (the span path), the strided gather; the dense forward route (implicit on PoCL),
# grouped, dilated with output_padding, split-K (512 channels at 7x7: its GEMM reads the filters
# flipped), 1-d and 3-d; a fused epilogue (bias, residual, activation).
NONFINITE_ADJOINTS = {
    "dw-small": ((2, 8, 10, 10), (8, 1, 3, 3), {"padding": 1, "groups": 8}),
    "dw-rows": ((1, 4, 9, 90), (4, 1, 3, 3), {"padding": 1, "groups": 4}),
    "dw-rows-k7": ((1, 4, 9, 90), (4, 1, 7, 7), {"padding": 3, "groups": 4}),
    "dw-small-k7-p2": ((1, 4, 12, 12), (4, 1, 7, 7), {"padding": 2, "groups": 4}),
    "dw-tiny": ((2, 4, 2, 3), (4, 1, 3, 3), {"padding": 1, "groups": 4}),
    "dw-s2": ((2, 6, 9, 11), (6, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 6}),
    "dense": ((2, 5, 28, 29), (5, 3, 3, 3), {"padding": 1}),
    "dense-grouped": ((1, 6, 28, 28), (6, 2, 3, 3), {"padding": 1, "groups": 3}),
    "dense-dil-outpad": ((1, 4, 27, 28), (4, 3, 3, 3),
                         {"padding": 1, "dilation": 2, "output_padding": 1}),
    "splitk": ((1, 512, 7, 7), (512, 4, 3, 3), {"padding": 1}),
    "dense-1d": ((2, 4, 40), (4, 3, 5), {"padding": 2}),
    "dense-3d": ((1, 3, 6, 7, 8), (3, 2, 3, 3, 3), {"padding": 1}),
    "dense-epilogue": ((2, 5, 28, 29), (5, 3, 3, 3), {"padding": 1, "activation": "relu6",
                                                      "residual": True}),
}


@pytest.mark.parametrize("y_shape, w_shape, kw", [
    ((1, 40, 14, 14), (40, 19, 3, 3), {"padding": 1}),
    ((1, 48, 9, 9), (48, 20, 3, 3), {"padding": 1, "groups": 2}),
    ((1, 16, 12, 11), (16, 7, 5, 3), {"padding": (2, 1), "dilation": (1, 2)}),
], ids=["3x3@14", "grouped@9", "5x3-dilated"])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole-k", "k-chunks"])
def test_implicit_adjoint_reads_filters_flipped(clconv, dev, rng, dtype, y_shape, w_shape, kw,
                                                chunked, monkeypatch):
    """A stride-1 adjoint whose forward convolution 'auto''s rule runs as 'implicit' (small grids
    too) reads the layer's filters as the flipped ones in place, no flip pass: conv_transpose2d
    and conv2d_input against the oracle, K whole or in chunks of 7 rows (ending inside a
    channel's taps), where the rule ranks 'implicit' first for it."""
    from clconv.ops import packed_conv
    from clconv.ops.conv_select import rule_choice
    from clconv.ops.geometry import conv_geometry

    b = random_array(rng, (w_shape[1] * kw.get("groups", 1),), dtype)
    y, w = random_array(rng, y_shape, dtype), random_array(rng, w_shape, dtype)
    # (a new batch for the chunked runs: plans made under their budget)
    y = np.concatenate([y, y])[:y_shape[0] + chunked]
    want = ref.conv_transpose_nd(y, w, b, **kw)
    geo = conv_geometry(2, want.shape, w_shape, 1, kw["padding"], kw.get("dilation", 1),
                        kw.get("groups", 1))
    fgeo = adjoint_paths.forward_geometry(geo)
    if chunked:
        tile = packed_conv.conv_tile(dev, fgeo, dtype)
        monkeypatch.setattr(packed_conv, "PANEL_BUDGET",
                            7 * (tile.nr + packed_conv.TAIL_DOT) * np.dtype(dtype).itemsize)
    got = clconv.conv_transpose2d(y, w, b, **kw)
    plan = clconv.plan_conv2d_input(want.shape, w_shape, dtype=dtype, **kw)
    route = plan.adjoint.route
    if rule_choice(dev, fgeo, np.dtype(dtype)) == "implicit" and not \
            adjoint_paths._splitk_first(dev, fgeo, np.dtype(dtype)):
        assert _route_name(route) == FORWARD and route.algorithm == "implicit"
        assert route.flipped is None
    reduction = w_shape[0] // kw.get("groups", 1) * math.prod(w_shape[2:])
    assert_close(got, want, dtype, reduction=reduction, magnitude=conv_magnitude(y, w, b))
    gi = plan(w, y)
    assert_close(gi, want - b.reshape(-1, 1, 1), dtype, reduction=reduction,
                 magnitude=conv_magnitude(y, w))


@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.parametrize("case", sorted(NONFINITE_ADJOINTS))
def test_adjoint_of_nonfinite_weights_is_torchs(clconv, dev, rng, case, bad):
    torch = import_torch()
    y_shape, w_shape, kw = NONFINITE_ADJOINTS[case]
    kw = dict(kw)
    activation, fused = kw.pop("activation", None), kw.pop("residual", False)
    nd = len(w_shape) - 2
    y, w = random_array(rng, y_shape), random_array(rng, w_shape)
    b = random_array(rng, (w_shape[1] * kw.get("groups", 1),))
    corner = (0,) * nd  # a corner tap falls on the padding of every border output
    w[(1, 0) + corner] = bad
    w[(2, 0) + tuple(k - 1 for k in w_shape[2:])] = -np.inf
    transpose = getattr(torch.nn.functional, f"conv_transpose{nd}d")
    want = transpose(torch.from_numpy(y), torch.from_numpy(w), torch.from_numpy(b), **kw)
    extra = {}
    if fused:
        extra["residual"] = random_array(rng, tuple(want.shape))
        want = torch.clamp(want + torch.from_numpy(extra["residual"]), 0, 6)
    want = want.numpy()
    assert 0 < np.isnan(want).sum() < want.size // 2 or bad == np.inf
    tol = {"reduction": math.prod(w_shape[1:]), "magnitude": conv_magnitude(y, w)}
    got = getattr(clconv, f"conv_transpose{nd}d")(y, w, b, activation=activation, **kw, **extra)
    assert_close(got, want, np.float32, **tol)
    if not fused and "output_padding" not in kw:  # (as an input gradient too)
        gi = getattr(clconv, f"conv{nd}d_input")(want.shape, w, y, **kw)
        assert_close(gi, want - b.reshape((-1,) + (1,) * nd), np.float32, **tol)


# Transposed convolutions: (input shape, weight shape (C_in, C_out/groups, *k), arguments, path).
TRANSPOSE_CASES = {
    "dense-s1": ((2, 5, 28, 29), (5, 3, 3, 3), {"padding": 1}, FORWARD),
    "dense-s1-dil-outpad": ((1, 4, 27, 28), (4, 2, 3, 3),
                            {"padding": 1, "dilation": 2, "output_padding": 1}, FORWARD),
    "dw-s1": ((2, 6, 10, 12), (6, 1, 3, 3), {"padding": 1, "groups": 6}, FORWARD),
    "dw-s2-outpad": ((2, 6, 10, 12), (6, 1, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1,
                                                        "groups": 6}, DW_ADJ),
    "dw-s2-mult2": ((1, 8, 7, 9), (8, 1, 3, 3), {"stride": 2, "padding": 1, "groups": 4}, DW_ADJ),
    "grouped-s2-gemm": ((1, 4, 7, 9), (4, 3, 3, 3), {"stride": 2, "padding": 1, "groups": 4}, GEMM),
    "dense-s2-outpad": ((2, 5, 7, 8), (5, 3, 3, 3), {"stride": 2, "padding": 1, "output_padding": 1},
                        GEMM),
    "dense-s3-k4-dil": ((1, 4, 5, 6), (4, 2, 4, 3), {"stride": (3, 2), "padding": (2, 1),
                                                         "dilation": (1, 2)}, GEMM),
    "stem-like-k7-s2": ((1, 6, 9, 10), (6, 3, 7, 7), {"stride": 2, "padding": 3, "output_padding": 1},
                        GEMM),
    "1x1-s2-outpad": ((2, 10, 7, 8), (10, 6, 1, 1), {"stride": 2, "output_padding": 1}, PW_ADJ),
    "1x1-s3-groups": ((1, 6, 8, 9), (6, 3, 1, 1), {"stride": 3, "groups": 2}, PW_ADJ),
}


@pytest.mark.parametrize("bias_act_res", [(False, None, False), (True, "relu", True)],
                         ids=["plain", "bias-relu-residual"])
@pytest.mark.parametrize("case", sorted(TRANSPOSE_CASES))
def test_conv_transpose_paths(clconv, dev, rng, dtype, case, bias_act_res):
    x_shape, w_shape, kw, path = TRANSPOSE_CASES[case]
    has_bias, act, has_res = bias_act_res
    x, w = random_array(rng, x_shape, dtype), random_array(rng, w_shape, dtype)
    groups = kw.get("groups", 1)
    b = random_array(rng, (w_shape[1] * groups,), dtype) if has_bias else None
    want = ref.conv_transpose_nd(x, w, b, **kw)
    r = random_array(rng, want.shape, dtype) if has_res else None
    plan = clconv.plan_conv_transpose2d(x_shape, w_shape, has_bias, **kw, activation=act,
                                        residual=has_res, dtype=dtype)
    assert _route_name(plan.adjoint.route) == _adjoint_path(dev, path)
    got = clconv.conv_transpose2d(x, w, b, **kw, activation=act, residual=r)
    if has_res:
        want = want + r
    if act == "relu":
        want = np.maximum(want, 0)
    assert got.dtype == dtype and got.shape == want.shape
    assert_close(got, want, dtype, reduction=x_shape[1] // groups * math.prod(w_shape[2:]),
                 magnitude=conv_magnitude(x, w, b) + (0 if r is None else np.abs(r).max()))


def test_forward_geometry_is_the_adjoint(clconv):
    """The forward geometry of a stride-1 adjoint maps y's grid back onto the input's exactly;
    strided, non-zero padding modes and padding beyond dilation * (k - 1) get none."""
    from clconv.ops.geometry import conv_geometry

    geo = conv_geometry(2, (1, 3, 11, 10), (4, 3, 4, 3), 1, "same", (2, 1), 1, "zeros")
    f = adjoint_paths.forward_geometry(geo)
    assert f.in_size == geo.out_size and f.out_size == geo.in_size
    assert (f.in_channels, f.out_channels) == (4, 3)
    assert f.pad_lo == (6 - geo.pad_lo[0], 2 - geo.pad_lo[1])
    assert f.pad_hi == (6 - geo.pad_hi[0], 2 - geo.pad_hi[1])
    for args in ((2, 1, 1, "zeros"), (1, 1, 1, "reflect"), (1, 3, 1, "zeros")):
        stride, padding, dilation, mode = args
        g2 = conv_geometry(2, (1, 3, 11, 10), (4, 3, 3, 3), stride, padding, dilation, 1, mode)
        assert adjoint_paths.forward_geometry(g2) is None


@pytest.mark.parametrize("limit_columns", [None, 3])
def test_phase_col2im_and_chunked_fallback(clconv, dev, rng, dtype, limit_columns):
    """A strided input gradient through PhaseCol2im (whole columns) and, with a workspace limit of
    a few columns, through cl/col2im.cl's ranges (PhaseCol2im sums whole images only)."""
    x_shape, w_shape, kw = (2, 5, 13, 11), (4, 5, 3, 3), {"stride": 2, "padding": 1}
    w = random_array(rng, w_shape, dtype)
    g = random_array(rng, _out_shape(x_shape, w_shape, kw), dtype)
    limit = None if limit_columns is None else limit_columns * 5 * 9 * np.dtype(dtype).itemsize
    plan = clconv.plan_conv2d_input(x_shape, w_shape, **kw, workspace_limit=limit, dtype=dtype)
    want_type = "PhaseCol2im" if limit is None else "Col2im"
    assert type(plan.adjoint.col2im).__name__ == want_type
    assert_close(plan(w, g), ref.conv_nd_input(x_shape, w, g, **kw), dtype, reduction=4 * 9,
                 magnitude=conv_magnitude(g, w))
    with pytest.raises(ValueError, match="whole images"):
        adjoint_paths.PhaseCol2im(dev, plan.geometry, dtype, "int")(1, None, 0, None, 0, l_start=1)


def test_conv_transpose1d_phase_col2im(clconv, dev, rng, dtype):
    """1-d: the lifted geometry (IH = 1) through col2im_phase, stride 3, output_padding."""
    x, w = random_array(rng, (2, 4, 9), dtype), random_array(rng, (4, 3, 5), dtype)
    b = random_array(rng, (3,), dtype)
    plan = clconv.plan_conv_transpose1d(x.shape, w.shape, True, 3, 1, 2, dtype=dtype)
    assert type(plan.adjoint.col2im).__name__ == "PhaseCol2im"
    got = clconv.conv_transpose1d(x, w, b, 3, 1, 2)
    assert_close(got, ref.conv_transpose_nd(x, w, b, 3, 1, 2), dtype, reduction=4 * 5,
                 magnitude=conv_magnitude(x, w, b))


# Stride-1 adjoints whose forward convolution 'auto''s rule runs as 'splitk' (few output positions,
# a long K): on PoCL's CPU devices the split-K GEMM reads the filters flipped and transposed itself
# (cl/gemm_splitk.cl's FLIP_KS: K slices of whole filters, taps read backwards), with no flip pass;
# on other devices GEMM + col2im. The geometries below check the flipped reads with the route
# forced (the rule ranks 'splitk' and 'implicit' within a few percent of each other at these
# sizes); `test_the_rule_sends_resnets_7x7_adjoint_through_splitk` checks the hand-off itself.
# (input shape, weight shape, arguments)
SPLITK_ADJOINTS = {
    "7x7-3x3": ((1, 64, 7, 7), (64, 64, 3, 3), {"padding": 1}),
    "rect-dilated": ((1, 96, 7, 6), (64, 96, 3, 2), {"padding": (2, 1), "dilation": 2}),
    "same-even": ((1, 64, 8, 8), (48, 64, 4, 4), {"padding": "same"}),
    "1d-k5": ((1, 160, 40), (96, 160, 5), {"padding": 2}),
    "3d": ((1, 48, 3, 3, 4), (40, 48, 3, 3, 3), {"padding": 1}),
}


def _flipped_splitk(route) -> bool:
    return (_route_name(route) == FORWARD and route.flipped is None
            and route.impl.name == "splitk" and route.impl.flipped)


@pytest.mark.parametrize("case", sorted(SPLITK_ADJOINTS))
def test_splitk_adjoint_reads_the_filters_flipped(clconv, dev, rng, dtype, case, monkeypatch):
    from clconv.ops import adjoint_paths

    monkeypatch.setattr(adjoint_paths, "_splitk_first",
                        lambda dev, fgeo, dtype: fgeo.groups == 1 and cpu_shaped(dev))
    x_shape, w_shape, kw = SPLITK_ADJOINTS[case]
    nd = len(x_shape) - 2
    w = random_array(rng, w_shape, dtype)
    g = random_array(rng, _out_shape(x_shape, w_shape, kw), dtype)
    plan = getattr(clconv, f"plan_conv{nd}d_input")(x_shape, w_shape, **kw, dtype=dtype)
    assert _flipped_splitk(plan.adjoint.route) == cpu_shaped(dev)
    assert_close(plan(w, g), ref.conv_nd_input(x_shape, w, g, **kw), dtype,
                 reduction=w_shape[0] * math.prod(w_shape[2:]), magnitude=conv_magnitude(g, w))


def test_the_rule_sends_resnets_7x7_adjoint_through_splitk(clconv, dev):
    """ResNet's 512 @7 3x3 layer at batch 1 (K = 4608: a K x NR panel past a core's L2 share):
    its input gradient is the flipped split-K GEMM on CPU devices (the plan only: no run)."""
    plan = clconv.plan_conv2d_input((1, 512, 7, 7), (512, 512, 3, 3), padding=1)
    assert _flipped_splitk(plan.adjoint.route) == cpu_shaped(dev)


def test_splitk_adjoint_transposed_with_epilogue(clconv, dev, rng, dtype):
    """conv_transpose2d through the flipped split-K route: bias, activation and residual applied
    by the reduction, as the forward's."""
    x_shape, w_shape, kw = (1, 64, 7, 7), (64, 48, 3, 3), {"padding": 1}
    x, w = random_array(rng, x_shape, dtype), random_array(rng, w_shape, dtype)
    b = random_array(rng, (48,), dtype)
    want = ref.conv_transpose_nd(x, w, b, **kw)
    r = random_array(rng, want.shape, dtype)
    plan = clconv.plan_conv_transpose2d(x_shape, w_shape, True, **kw, activation="relu",
                                        residual=True, dtype=dtype)
    # the route is the flipped split-K GEMM where 'splitk' goes first for the forward convolution
    # it is (the rule's choice, or within a flip pass of it over 49 positions; on PoCL: float32,
    # and float64 with AVX-512's wider tiles)
    from clconv.ops.adjoint_paths import _splitk_first, forward_geometry

    fgeo = forward_geometry(plan.adjoint.geo)
    first = cpu_shaped(dev) and _splitk_first(dev, fgeo, dtype)
    assert _flipped_splitk(plan.adjoint.route) == first
    assert first or not cpu_shaped(dev) or dtype == np.float64  # float32 takes it everywhere
    got = clconv.conv_transpose2d(x, w, b, **kw, activation="relu", residual=r)
    assert_close(got, np.maximum(want + r, 0), dtype, reduction=64 * 9,
                 magnitude=conv_magnitude(x, w, b) + np.abs(r).max())


@pytest.mark.parametrize("nd, x_shape, w_shape", [
    (1, (2, 17, 600), (9, 17, 1)),
    (3, (2, 16, 4, 8, 18), (5, 16, 1, 1, 1)),
])
def test_splitk_weight_grad_1d_3d(clconv, dev, rng, dtype, nd, x_shape, w_shape):
    """The 1x1 weight gradient's split-K GEMM over 1-d and 3-d positions (on CPU-shaped devices;
    elsewhere the GEMM path), against the oracle. Over 1024 positions in all: more than
    LocalGemmWeightGrad's 64 KiB of B panel holds with any tile (AVX2's 16 floats)."""
    x = random_array(rng, x_shape, dtype)
    g = random_array(rng, _out_shape(x_shape, w_shape, {}), dtype)
    plan = getattr(clconv, f"plan_conv{nd}d_weight")(x_shape, w_shape, dtype=dtype)
    taken = _route_name(plan.impl.route) == "SplitKWeightGrad"
    assert taken == (cpu_shaped(dev) and x_shape[1] >= weight_grad_paths.SplitKWeightGrad.tile(
        dev, dtype).nr)
    assert_close(plan(x, g), ref.conv_nd_weight(x, w_shape, g), dtype,
                 reduction=x_shape[0] * math.prod(x_shape[2:]), magnitude=conv_magnitude(g, x))


@pytest.mark.parametrize("kw", [{"padding": 1}, {"stride": 2, "dilation": 3, "padding": 2}],
                         ids=["same", "strided-dilated"])
def test_implicit_weight_grad_1d(clconv, dev, rng, dtype, kw):
    """The weight gradient with B read from a channel-blocked copy of x over 1-d positions (taken
    on the packed GEMM's devices without a loop cap; elsewhere the packed path), against the
    oracle."""
    x_shape, w_shape = (2, 32, 700), (5, 32, 3)
    x = random_array(rng, x_shape, dtype)
    g = random_array(rng, _out_shape(x_shape, w_shape, kw), dtype)
    plan = clconv.plan_conv1d_weight(x_shape, w_shape, dtype=dtype, **kw)
    packed = dev.cl_device.type & cl.device_type.CPU and gemm_engine(dev) is packed_engine
    taken = _route_name(plan.impl.route) == "ImplicitWeightGrad"
    assert taken == bool(packed and getattr(dev, "loop_limit", None) is None)
    assert_close(plan(x, g), ref.conv_nd_weight(x, w_shape, g, **kw), dtype,
                 reduction=x_shape[0] * g.shape[2], magnitude=conv_magnitude(g, x))


def _stem_taken(dev, dtype, out_w: int) -> bool:
    """Whether the stem weight gradient's rule holds on `dev` for the cases below (they have fewer
    input channels than a B panel and kernels of at most 7 taps a row) with rows of `out_w`."""
    return bool(dev.cl_device.type & cl.device_type.CPU and gemm_engine(dev) is packed_engine
                and getattr(dev, "loop_limit", None) is None
                and packed_engine.vector_width(dev, np.dtype(dtype)) <= out_w)


@pytest.mark.parametrize("kw", [{"stride": 2, "padding": 3}, {"dilation": 3, "padding": 2}],
                         ids=["stem-s2", "dilated"])
def test_stem_weight_grad_1d(clconv, dev, rng, dtype, kw):
    """The weight gradient summed along output rows over 1-d positions (taken on the packed GEMM's
    devices without a loop cap; elsewhere the packed path), against the oracle."""
    x_shape, w_shape = (3, 2, 301), (5, 2, 7)
    x = random_array(rng, x_shape, dtype)
    g = random_array(rng, _out_shape(x_shape, w_shape, kw), dtype)
    plan = clconv.plan_conv1d_weight(x_shape, w_shape, dtype=dtype, **kw)
    assert (_route_name(plan.impl.route) == "StemWeightGrad") == _stem_taken(dev, dtype,
                                                                             g.shape[2])
    assert_close(plan(x, g), ref.conv_nd_weight(x, w_shape, g, **kw), dtype,
                 reduction=x_shape[0] * g.shape[2], magnitude=conv_magnitude(g, x))


def test_stem_weight_grad_image_chunks(clconv, dev, rng, dtype, monkeypatch):
    """A batch summed in chunks of images (a dW per chunk, then added up): 5 images in chunks of
    2, the last one short, against the oracle."""
    x_shape, w_shape, kw = (5, 3, 11, 44), (6, 3, 3, 5), {"stride": (1, 2), "padding": 2}
    x = random_array(rng, x_shape, dtype)
    g = random_array(rng, _out_shape(x_shape, w_shape, kw), dtype)
    co_t = min(weight_grad_paths.StemWeightGrad.channels_per_item(dev, dtype, 5), 6)
    # two images' G rows of a work-item's channels fit, three do not
    monkeypatch.setattr(weight_grad_paths, "_STEM_WG_CHUNK_BYTES",
                        2 * co_t * g.shape[2] * g.shape[3] * np.dtype(dtype).itemsize)
    plan = clconv.plan_conv2d_weight(x_shape, w_shape, dtype=dtype, **kw)
    route = plan.impl.route
    if _stem_taken(dev, dtype, g.shape[3]):
        assert _route_name(route) == "StemWeightGrad" and (route.chunk, route.chunks) == (2, 3)
    assert_close(plan(x, g), ref.conv_nd_weight(x, w_shape, g, **kw), dtype,
                 reduction=x_shape[0] * g.shape[2] * g.shape[3], magnitude=conv_magnitude(g, x))


def test_stem_weight_grad_nonfinite(clconv, dev, rng, dtype):
    """Inf and NaN as torch counts them: an Inf in x read only by an output column that the
    row's last (masked, overlapping) vector covers again gives +Inf once, not NaN (0 * Inf), and
    a NaN in an input column no output reads (stride 2, no padding) does not reach dW."""
    x_shape, w_shape, kw = (1, 3, 6, 42), (4, 3, 3, 3), {"stride": 2}
    x = random_array(rng, x_shape, dtype)
    g = np.abs(random_array(rng, _out_shape(x_shape, w_shape, kw), dtype)) + 0.1  # 20 columns
    x[0, 1, 2, 27] = np.inf  # read by output column 13, tap kw = 1 only
    x[0, 2, :, 41] = np.nan  # past the last column read (output column 19 reads 38..40)
    plan = clconv.plan_conv2d_weight(x_shape, w_shape, dtype=dtype, **kw)
    assert (_route_name(plan.impl.route) == "StemWeightGrad") == _stem_taken(dev, dtype, 20)
    got, want = plan(x, g), ref.conv_nd_weight(x, w_shape, g, **kw)
    assert np.isposinf(want).sum() > 0 and not np.isnan(want).any()
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    assert not np.isnan(got).any()
    finite = np.isfinite(want)
    assert_close(np.where(finite, got, 0), np.where(finite, want, 0), dtype,
                 reduction=g.shape[2] * g.shape[3], magnitude=conv_magnitude(g, np.nan_to_num(
                     x, nan=0.0, posinf=0.0)))


def test_depthwise_weight_grad_zero_padding_nonfinite(clconv, dev, rng, dtype):
    """An Inf in the output gradient at a position whose taps read zero padding adds Inf * 0 = NaN
    to those taps' weight gradients, as torch (the padding rows above and the columns left of the
    top-left output), and +Inf to the others of its channel."""
    x_shape, w_shape = (1, 4, 5, 9), (4, 1, 3, 3)
    kw = {"stride": (1, 2), "padding": 1, "groups": 4}
    x = np.abs(random_array(rng, x_shape, dtype)) + 0.1
    g = np.abs(random_array(rng, _out_shape(x_shape, w_shape, kw), dtype)) + 0.1
    g[0, 1, 0, 0] = np.inf  # the top-left output of channel 1: taps kh = 0 and kw = 0 in padding
    g[0, 3, 2, 2] = np.inf  # an interior output of channel 3: no padding, +Inf in every tap
    plan = clconv.plan_conv2d_weight(x_shape, w_shape, dtype=dtype, **kw)
    got, want = plan(x, g), ref.conv_nd_weight(x, w_shape, g, **kw)
    assert np.isnan(want[1]).sum() == 5 and np.isposinf(want[1]).sum() == 4
    assert np.isposinf(want[3]).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    assert_close(got[[0, 2]], want[[0, 2]], dtype, reduction=g.shape[2] * g.shape[3],
                 magnitude=conv_magnitude(g[:, [0, 2]], x))


def test_local_weight_grad_nonfinite(clconv, dev, rng, dtype):
    """The 1x1 weight gradient with x's channel block in local memory: an Inf in x makes its
    input channel's column +Inf, one in the output gradient its row, and the block's lanes past
    C_in (zeros, times the Inf: NaN) are not stored."""
    x_shape, w_shape = (1, 7, 10, 15), (5, 7, 1, 1)  # C_in 7: one part-filled block
    x = np.abs(random_array(rng, x_shape, dtype)) + 0.1
    g = np.abs(random_array(rng, (1, 5, 10, 15), dtype)) + 0.1
    x[0, 3, 9, 8] = np.inf
    g[0, 2, 4, 4] = np.inf
    plan = clconv.plan_conv2d_weight(x_shape, w_shape, dtype=dtype)
    taken = bool(dev.cl_device.type & cl.device_type.CPU and gemm_engine(dev) is packed_engine
                 and getattr(dev, "loop_limit", None) is None)
    assert (_route_name(plan.impl.route) == "LocalGemmWeightGrad") == taken
    got, want = plan(x, g), ref.conv_nd_weight(x, w_shape, g)
    assert np.isposinf(want).sum() == 5 + 7 - 1 and not np.isnan(want).any()
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    assert not np.isnan(got).any()
    finite = np.isfinite(want)
    assert_close(np.where(finite, got, 0), np.where(finite, want, 0), dtype, reduction=150,
                 magnitude=conv_magnitude(np.nan_to_num(g, posinf=0.0),
                                          np.nan_to_num(x, posinf=0.0)))


def test_stem_weight_grad_layers_share_programs(clconv, dev):
    """StemWeightGrad's kernels take the sizes, strides, dilation and KH as arguments: layers of
    one kernel width share one cl/wgrad_stem.cl program (7 and 3 taps: two)."""
    from clconv.runtime.program import programs

    layers = [((1, 3, 40, 70), (10, 3, 7, 7), {"stride": 2, "padding": 3}),
              ((2, 2, 30, 50), (5, 2, 5, 7), {"padding": (2, 3), "dilation": (1, 2)}),
              ((1, 3, 31, 45), (8, 3, 3, 3), {"stride": 2, "padding": 1}),
              ((1, 1, 20, 33), (8, 1, 2, 3), {})]
    routes = [clconv.plan_conv2d_weight(x, w, **kw).impl.route for x, w, kw in layers]
    if not _stem_taken(dev, np.float32, 16):
        assert all(_route_name(r) != "StemWeightGrad" for r in routes)
        return
    assert all(_route_name(r) == "StemWeightGrad" for r in routes)
    built = {(source, opts) for (source, opts, _), k in programs(dev).kernels.items()
             if any(k is r.sum_rows or k is r.phase_x for r in routes)}
    assert len(built) == 2


def test_implicit_weight_grad_layers_share_programs(clconv, dev):
    """ImplicitWeightGrad's kernels take the kernel size, stride and dilation as arguments: layers
    of different ones (and sizes, paddings, batches) use the same cl/wgrad_implicit.cl program."""
    from clconv.runtime.program import programs

    layers = [((1, 32, 30, 29), (6, 32, 3, 3), {"padding": 1}),
              ((2, 32, 34, 33), (7, 32, 3, 3), {"stride": 2, "padding": 1}),
              ((1, 64, 50, 50), (8, 64, 1, 1), {"stride": 2}),
              ((1, 32, 26, 40), (5, 32, 3, 2), {"stride": (1, 2), "padding": (2, 1),
                                                "dilation": (2, 1)})]
    routes = [clconv.plan_conv2d_weight(x, w, **kw).impl.route for x, w, kw in layers]
    if any(_route_name(r) != "ImplicitWeightGrad" for r in routes):
        # (a loop-capped driver or another GEMM engine: the packed path's own programs)
        assert not (dev.cl_device.type & cl.device_type.CPU and gemm_engine(dev) is packed_engine
                    and getattr(dev, "loop_limit", None) is None)
        return
    built = {key for key, k in programs(dev).kernels.items()
             if any(k is r.gemm or k is r.pack_xp for r in routes)}
    tiles = {(r.tile.mr, r.tile.nr) for r in routes}
    assert {(source, opts) for source, opts, _ in built} and \
        len({(source, opts) for source, opts, _ in built}) == len(tiles)


@pytest.mark.parametrize("bad", [None, np.inf])
def test_exact_borders_of_a_constant_weight_checked_once(clconv, dev, rng, bad):
    """A weight declared constant (a compiled model's) is read once for non-finite values: finite,
    the border pass is skipped on every call; not, it runs (and the result is torch's)."""
    from clconv.ops.plan import mark_constant

    torch = import_torch()
    y, w = random_array(rng, (1, 5, 28, 29)), random_array(rng, (5, 3, 3, 3))
    if bad is not None:
        w[1, 0, 0, 0] = bad
    plan = clconv.plan_conv_transpose2d(y.shape, w.shape, False, padding=1)
    route = plan.adjoint.route
    assert route is not None and route.borders is not None  # (a padded forward convolution)
    wd = mark_constant(cla.to_device(dev.queue, w))
    assert route._borders_needed(wd) == (bad is not None)
    want = torch.nn.functional.conv_transpose2d(torch.from_numpy(y), torch.from_numpy(w),
                                                padding=1).numpy()
    for _ in range(2):
        got = plan(cla.to_device(dev.queue, y), wd).get()
        assert_close(got, want, np.float32, reduction=45, magnitude=conv_magnitude(
            y, np.nan_to_num(w, posinf=0)))


@pytest.mark.parametrize("limit", [4096, 16384, None])
def test_a_splitk_adjoint_over_the_workspace_limit_takes_another_route(clconv, dev, rng, limit):
    """Where 'auto''s rule ranks 'splitk' first for the flipped forward (32 channels at 7x7 on
    PoCL), a workspace_limit below its columns and partial sums is met by another forward
    algorithm or GEMM + col2im's ranges, at every batch size of the plan, not a MemoryError."""
    torch = import_torch()
    w = random_array(rng, (32, 32, 3, 3))
    plan = clconv.plan_conv2d_input((1, 32, 7, 7), w.shape, padding=1, workspace_limit=limit)
    assert plan.workspace_bytes <= (limit or plan.workspace_bytes)
    for batch in (1, 2):
        g = random_array(rng, (batch, 32, 7, 7))
        want = torch.nn.grad.conv2d_input((batch, 32, 7, 7), torch.from_numpy(w),
                                          torch.from_numpy(g), padding=1).numpy()
        tol = {"reduction": 288, "magnitude": conv_magnitude(g, w)}
        assert_close(plan(w, g), want, np.float32, **tol)
        assert_close(clconv.conv_transpose2d(g, w, padding=1, workspace_limit=limit), want,
                     np.float32, **tol)
