"""clconv.conv2d against the float64 numpy oracle (``reference.conv_nd``).

The parametrizations are split into several small products instead of one
huge one, each varying a few arguments around a fixed tiny problem:

* geometry:       stride x padding x dilation            (both algorithms)
* channels:       groups x padding_mode, with bias        (both algorithms)
* shapes:         batch sizes, 1x1 / 1xN / kernel == input, odd sizes ...
                                                          (all three algorithms)
* input kinds:    numpy (contiguous, strided, transposed, Fortran) and
                  pyopencl arrays (plain, with offset, strided)
* dtypes, unbatched and empty inputs, NaN/Inf propagation, a seeded fuzz,
  and an optional cross-check against torch.

Tolerances: see ``tolerance.py``.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pytest
import reference as ref
from helpers import as_kind, import_torch, random_array
from tolerance import assert_close, conv_magnitude, conv_reduction

ALGORITHMS = ("im2col", "direct")
ALL_ALGORITHMS = ("auto", "im2col", "direct")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def run_and_check(
    clconv,
    rng,
    x_shape,
    w_shape,
    *,
    bias=False,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    algorithm="auto",
    dtype=np.float32,
    kind="numpy",
    queue=None,
):
    """Run clconv.conv2d on random data and compare with the oracle.

    Returns (result as numpy, oracle result)."""
    dtype = np.dtype(dtype)
    if queue is None:
        queue = clconv.current_device().queue
    x = random_array(rng, x_shape, dtype)
    w = random_array(rng, w_shape, dtype)
    b = random_array(rng, (w_shape[0],), dtype) if bias else None
    b_kind = kind if kind in ("numpy", "strided") or kind.startswith("cl") else "strided"
    got = clconv.conv2d(
        as_kind(x, kind, queue),
        as_kind(w, kind, queue),
        as_kind(b, b_kind, queue),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        padding_mode=padding_mode,
        algorithm=algorithm,
    )
    want = ref.conv_nd(x, w, b, stride, padding, dilation, groups, padding_mode)
    if kind.startswith("cl"):
        assert isinstance(got, cla.Array), f"pyopencl input must give a pyopencl result, got {type(got)}"
        got_np = got.get()
    else:
        assert isinstance(got, np.ndarray), f"numpy input must give a numpy result, got {type(got)}"
        got_np = got
    assert got.dtype == dtype
    assert got.shape == want.shape
    assert_close(got_np, want, dtype, reduction=conv_reduction(w), magnitude=conv_magnitude(x, w, b))
    return got_np, want


# ---------------------------------------------------------------------------
# geometry: stride x padding x dilation
# ---------------------------------------------------------------------------

STRIDES = [1, 2, (2, 1)]
PADDINGS = [0, 1, (1, 2), "same", "valid"]
DILATIONS = [1, 2, (1, 2)]

GEOMETRY_CASES = [
    (s, p, d)
    for s, p, d in itertools.product(STRIDES, PADDINGS, DILATIONS)
    if not (p == "same" and s != 1)  # PyTorch rejects 'same' with stride > 1 (see test_errors)
]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("stride, padding, dilation", GEOMETRY_CASES, ids=lambda v: str(v).replace(" ", ""))
def test_geometry(clconv, rng, stride, padding, dilation, algorithm):
    """Non-square 3x2 kernel on a 7x8 image, every stride/padding/dilation combination."""
    run_and_check(
        clconv, rng, (2, 3, 7, 8), (2, 3, 3, 2),
        stride=stride, padding=padding, dilation=dilation, algorithm=algorithm,
    )


# ---------------------------------------------------------------------------
# channels: groups x padding_mode (with bias)
# ---------------------------------------------------------------------------

# name -> (C_in, C_out, groups)
GROUPINGS = {
    "g1": (4, 4, 1),
    "g2": (4, 6, 2),
    "depthwise": (4, 8, 4),  # groups == C, channel multiplier 2
}


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("grouping", list(GROUPINGS))
def test_groups_and_padding_modes(clconv, rng, grouping, padding_mode, algorithm):
    cin, cout, groups = GROUPINGS[grouping]
    run_and_check(
        clconv, rng, (2, cin, 6, 5), (cout, cin // groups, 3, 3),
        bias=True, padding=(1, 2), groups=groups, padding_mode=padding_mode, algorithm=algorithm,
    )


@pytest.mark.parametrize("c_in, groups", [(20, 1), (8, 4)], ids=["conv_direct", "conv_grouped"])
def test_direct_64_bit_index_build(clconv, rng, monkeypatch, c_in, groups):
    """'direct''s two kernels built with INDEX_T=long (what tensors of 2**31 elements or more
    select; forced here on a small shape through clconv's testing hook) against the oracle, on
    every device: Mesa's llvmpipe once summed nothing in cl/conv_direct.cl's 64-bit build."""
    from clconv.runtime import transfer

    monkeypatch.setattr(transfer, "FORCE_INDEX_T", "long")
    run_and_check(clconv, rng, (2, c_in, 7, 6), (8, c_in // groups, 3, 3), bias=True,
                  stride=(2, 1), padding=1, groups=groups, algorithm="direct")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_padding_mode_with_same_even_kernel(clconv, rng, padding_mode, algorithm):
    """'same' + non-zero padding mode: asymmetric (lo=0, hi=1) padding for the even kernel dim."""
    run_and_check(
        clconv, rng, (1, 2, 5, 6), (3, 2, 2, 3),
        padding="same", dilation=(1, 2), padding_mode=padding_mode, algorithm=algorithm,
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("padding_mode", ["reflect", "circular"])
def test_padding_mode_at_size_limit(clconv, rng, padding_mode, algorithm):
    """Largest legal padding: reflect pad = size - 1, circular pad = size."""
    pad = (2, 3) if padding_mode == "reflect" else (3, 4)
    run_and_check(
        clconv, rng, (1, 2, 3, 4), (2, 2, 3, 3),
        padding=pad, padding_mode=padding_mode, algorithm=algorithm,
    )


# ---------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------

# id -> (x_shape, w_shape, kwargs)
SHAPE_CASES = {
    "n1-c1-k3": ((1, 1, 5, 5), (1, 1, 3, 3), {}),
    "n3-k2x3-bias": ((3, 2, 6, 4), (3, 2, 2, 3), {"bias": True}),
    "n4-pointwise": ((4, 3, 5, 7), (5, 3, 1, 1), {"bias": True}),
    "pointwise-stride2-pad1": ((2, 3, 5, 6), (2, 3, 1, 1), {"stride": 2, "padding": 1}),
    "kernel-eq-input": ((2, 2, 4, 5), (3, 2, 4, 5), {"bias": True}),
    "kernel-eq-input-same": ((1, 2, 5, 5), (2, 2, 5, 5), {"padding": "same"}),
    "kernel-1x3": ((2, 2, 3, 7), (2, 2, 1, 3), {"padding": (0, 1)}),
    "kernel-3x1-width1": ((2, 2, 9, 1), (2, 2, 3, 1), {"stride": (2, 1)}),
    "height1-k1x4-stride3": ((1, 3, 1, 9), (2, 3, 1, 4), {"stride": 3}),
    "cin1-cout4": ((2, 1, 6, 6), (4, 1, 3, 3), {"padding": 1, "bias": True}),
    "depthwise-mult2": ((2, 3, 5, 5), (6, 1, 3, 3), {"groups": 3, "padding": 1}),
    "groups2-uneven": ((1, 4, 5, 6), (6, 2, 2, 2), {"groups": 2, "stride": (1, 2)}),
    "same-even-dilated": ((1, 2, 7, 8), (2, 2, 2, 4), {"padding": "same", "dilation": 2}),
    "odd-9x7-stride2-pad": ((2, 3, 9, 7), (4, 3, 3, 3), {"stride": 2, "padding": 1, "bias": True}),
}


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_shapes(clconv, rng, case, algorithm):
    x_shape, w_shape, kwargs = SHAPE_CASES[case]
    run_and_check(clconv, rng, x_shape, w_shape, algorithm=algorithm, **kwargs)


# 3x3 stride-1 convolutions are where 'auto' may pick a specialised kernel
# (e.g. Winograd / grouped loops): vary the image size around tile multiples.
AUTO_3X3_CASES = {
    "5x5-pad0": ((1, 2, 5, 5), (3, 2, 3, 3), {}),
    "6x7-pad1-bias": ((2, 3, 6, 7), (4, 3, 3, 3), {"padding": 1, "bias": True}),
    "9x8-same": ((1, 4, 9, 8), (5, 4, 3, 3), {"padding": "same"}),
    "3x10-pad1": ((2, 8, 3, 10), (8, 8, 3, 3), {"padding": 1}),
    "8x8-groups2": ((1, 4, 8, 8), (4, 2, 3, 3), {"padding": 1, "groups": 2}),
    "7x7-depthwise-reflect": ((1, 3, 7, 7), (3, 1, 3, 3), {"padding": 1, "groups": 3, "padding_mode": "reflect"}),
}


@pytest.mark.parametrize("case", list(AUTO_3X3_CASES))
def test_auto_3x3_stride1(clconv, rng, case):
    x_shape, w_shape, kwargs = AUTO_3X3_CASES[case]
    run_and_check(clconv, rng, x_shape, w_shape, algorithm="auto", **kwargs)


MEDIUM_CASES = {
    "c8-17x15-cout12": ((2, 8, 17, 15), (12, 8, 3, 3), {"padding": 1, "bias": True}),
    "c16-cout33-groups1": ((1, 16, 9, 9), (33, 16, 3, 3), {}),
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", list(MEDIUM_CASES))
def test_medium_shapes(clconv, rng, case, algorithm):
    """Slightly larger problems so GEMM tiles / work-groups have ragged edges."""
    x_shape, w_shape, kwargs = MEDIUM_CASES[case]
    run_and_check(clconv, rng, x_shape, w_shape, algorithm=algorithm, **kwargs)


# ---------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------

DTYPE_CASES = [
    # (x_shape, w_shape, kwargs)
    ((2, 3, 7, 8), (2, 3, 3, 2), {"stride": 2, "padding": 1}),
    ((1, 4, 6, 5), (8, 1, 3, 3), {"groups": 4, "padding": (1, 2), "padding_mode": "reflect", "bias": True}),
    ((2, 2, 5, 6), (3, 2, 2, 3), {"padding": "same", "dilation": (1, 2), "padding_mode": "circular"}),
]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("case", range(len(DTYPE_CASES)))
def test_dtypes(clconv, rng, dtype, case, algorithm):
    """float32 always, float64 where the device supports it; result keeps the input dtype."""
    x_shape, w_shape, kwargs = DTYPE_CASES[case]
    run_and_check(clconv, rng, x_shape, w_shape, dtype=dtype, algorithm=algorithm, **kwargs)


# ---------------------------------------------------------------------------
# input kinds and result types
# ---------------------------------------------------------------------------


def _cl_variant(a: np.ndarray, variant: str, queue):
    """A pyopencl array equal to ``a``: plain, inside a bigger buffer (offset), or strided."""
    if variant == "cl":
        return cla.to_device(queue, np.ascontiguousarray(a))
    if variant == "cl_offset":
        flat = np.concatenate([np.zeros(3, a.dtype), a.ravel()])
        big = cla.to_device(queue, flat)
        view = big[3:].reshape(a.shape)
        assert view.offset != 0
        return view
    if variant == "cl_strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        view = cla.to_device(queue, big)[..., ::2]
        assert not view.flags.c_contiguous
        return view
    raise ValueError(variant)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("kind", ["numpy", "strided", "transposed", "fortran"])
def test_numpy_input_layouts(clconv, rng, kind, algorithm):
    """Non-contiguous numpy inputs give the same result as contiguous ones."""
    run_and_check(
        clconv, rng, (2, 3, 6, 7), (4, 3, 3, 3),
        bias=True, padding=1, algorithm=algorithm, kind=kind,
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("variant", ["cl", "cl_offset", "cl_strided"])
def test_pyopencl_inputs(clconv, dev, rng, variant, algorithm):
    """pyopencl inputs (plain, sub-buffer offset, strided view) give a pyopencl result on the same context."""
    x = random_array(rng, (2, 3, 6, 7))
    w = random_array(rng, (4, 3, 3, 3))
    b = random_array(rng, (4,))
    q = dev.queue
    got = clconv.conv2d(
        _cl_variant(x, variant, q), _cl_variant(w, variant, q), _cl_variant(b, variant, q),
        padding=1, algorithm=algorithm,
    )
    assert isinstance(got, cla.Array)
    assert got.context == dev.context
    assert got.dtype == np.float32
    want = ref.conv_nd(x, w, b, padding=1)
    assert_close(got.get(), want, np.float32, reduction=conv_reduction(w), magnitude=conv_magnitude(x, w, b))


def test_pyopencl_result_is_not_copied_to_host(clconv, dev, rng, monkeypatch):
    """With pyopencl inputs nothing is read back to the host during the call."""
    x = cla.to_device(dev.queue, random_array(rng, (1, 2, 5, 5)))
    w = cla.to_device(dev.queue, random_array(rng, (3, 2, 3, 3)))
    b = cla.to_device(dev.queue, random_array(rng, (3,)))
    clconv.conv2d(x, w, b, padding=1)  # warm-up: build the kernels outside the check

    reads = []
    real_enqueue_copy = cl.enqueue_copy
    real_get = cla.Array.get

    def spy_enqueue_copy(queue, dest, src, *args, **kwargs):
        if isinstance(dest, np.ndarray):
            reads.append("enqueue_copy to host")
        return real_enqueue_copy(queue, dest, src, *args, **kwargs)

    def spy_get(self, *args, **kwargs):
        reads.append("Array.get")
        return real_get(self, *args, **kwargs)

    monkeypatch.setattr(cl, "enqueue_copy", spy_enqueue_copy)
    monkeypatch.setattr(cla.Array, "get", spy_get)
    out = clconv.conv2d(x, w, b, padding=1)
    monkeypatch.undo()
    assert isinstance(out, cla.Array)
    assert reads == [], f"device->host copies during conv2d on pyopencl inputs: {reads}"
    want = ref.conv_nd(x.get(), w.get(), b.get(), padding=1)
    assert_close(out.get(), want, np.float32, reduction=18, magnitude=conv_magnitude(x.get(), w.get(), b.get()))


def test_numpy_result_is_a_fresh_contiguous_array(clconv, rng):
    x = random_array(rng, (1, 2, 5, 5))
    w = random_array(rng, (3, 2, 3, 3))
    out = clconv.conv2d(x, w)
    assert type(out) is np.ndarray
    assert out.flags.c_contiguous
    assert not np.shares_memory(out, x) and not np.shares_memory(out, w)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_inputs_are_not_modified(clconv, rng, algorithm):
    x = random_array(rng, (2, 3, 6, 6))
    w = random_array(rng, (2, 3, 3, 3))
    b = random_array(rng, (2,))
    copies = [a.copy() for a in (x, w, b)]
    clconv.conv2d(x, w, b, padding=1, padding_mode="reflect", algorithm=algorithm)
    for before, after in zip(copies, (x, w, b)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_repeated_calls_are_deterministic(clconv, rng, algorithm):
    x = random_array(rng, (2, 3, 7, 7))
    w = random_array(rng, (4, 3, 3, 3))
    first = clconv.conv2d(x, w, padding=1, algorithm=algorithm)
    for _ in range(3):
        np.testing.assert_array_equal(clconv.conv2d(x, w, padding=1, algorithm=algorithm), first)


def test_algorithms_agree(clconv, rng):
    """'im2col', 'direct' and 'auto' compute the same convolution."""
    x = random_array(rng, (2, 4, 8, 7))
    w = random_array(rng, (6, 2, 3, 2))
    kw = {"stride": (1, 2), "padding": (2, 1), "dilation": (2, 1), "groups": 2}
    results = {a: clconv.conv2d(x, w, **kw, algorithm=a) for a in ALL_ALGORITHMS}
    for a in ALL_ALGORITHMS[1:]:
        assert_close(results[a], results["auto"].astype(np.float64), np.float32,
                     reduction=conv_reduction(w), magnitude=conv_magnitude(x, w))


# ---------------------------------------------------------------------------
# unbatched and empty inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_unbatched_input(clconv, dev, rng, kind, algorithm):
    """(C, H, W) input gives (C_out, H_out, W_out) output, like torch."""
    x = random_array(rng, (3, 6, 5))
    w = random_array(rng, (2, 3, 3, 3))
    b = random_array(rng, (2,))
    got = clconv.conv2d(as_kind(x, kind, dev.queue), as_kind(w, kind, dev.queue),
                        as_kind(b, kind, dev.queue), padding=1, algorithm=algorithm)
    want = ref.conv_nd(x, w, b, padding=1)
    assert want.shape == (2, 6, 5)
    assert got.shape == want.shape
    assert isinstance(got, cla.Array if kind == "cl" else np.ndarray)
    assert_close(got, want, np.float32, reduction=conv_reduction(w), magnitude=conv_magnitude(x, w, b))


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
@pytest.mark.parametrize("kind", ["numpy", "cl"])
def test_empty_batch(clconv, dev, rng, kind, algorithm):
    """N == 0 returns an empty array of the right shape and dtype."""
    x = np.zeros((0, 3, 7, 6), np.float32)
    w = random_array(rng, (4, 3, 3, 2))
    if kind == "cl":
        x_in = cla.empty(dev.queue, x.shape, np.float32)
        w_in = cla.to_device(dev.queue, w)
    else:
        x_in, w_in = x, w
    got = clconv.conv2d(x_in, w_in, stride=2, padding=1, algorithm=algorithm)
    assert got.shape == (0, 4, 4, 4)
    assert got.dtype == np.float32
    assert isinstance(got, cla.Array if kind == "cl" else np.ndarray)


# ---------------------------------------------------------------------------
# NaN / Inf propagation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("geometry", [{"padding": 1}, {"stride": 2, "dilation": 2, "padding": (2, 1)}],
                         ids=["pad1", "stride2-dil2"])
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_propagation(clconv, rng, special, geometry, algorithm):
    """A NaN/Inf input poisons exactly the outputs whose window covers it (as in torch);
    outputs whose window does not cover it stay finite."""
    x = random_array(rng, (1, 2, 7, 7))
    w = random_array(rng, (3, 2, 3, 3))
    w[w == 0] = 0.5  # keep 0 * inf out of the weights
    x[0, 1, 4, 3] = special  # covered by windows of both geometries
    got = clconv.conv2d(x, w, algorithm=algorithm, **geometry)
    want = ref.conv_nd(x, w, None, **geometry)
    assert np.isfinite(want).any() and not np.isfinite(want).all()  # the test is meaningful
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN positions differ")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg="+Inf positions differ")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg="-Inf positions differ")
    assert_close(got, want, np.float32, reduction=conv_reduction(w), magnitude=conv_magnitude(x, w))


def test_nan_in_weight_poisons_its_output_channel(clconv, rng):
    x = random_array(rng, (1, 2, 5, 5))
    w = random_array(rng, (3, 2, 3, 3))
    w[1, 0, 1, 1] = np.nan
    for algorithm in ALGORITHMS:
        got = clconv.conv2d(x, w, padding=1, algorithm=algorithm)
        assert np.isnan(got[:, 1]).all(), algorithm
        assert np.isfinite(got[:, [0, 2]]).all(), algorithm


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
@pytest.mark.parametrize("case", [
    ((1, 2, 6, 7), (3, 2, 3, 3), {"padding": 1}),
    ((1, 18, 5, 6), (2, 18, 3, 3), {"padding": (2, 1), "dilation": (2, 1)}),
    ((1, 4, 7, 9), (4, 2, 3, 3), {"padding": 1, "groups": 2}),
    ((1, 3, 5, 5), (2, 3, 1, 1), {"stride": 2, "padding": 1}),
], ids=["few-channels", "wide", "groups", "1x1-padded"])
def test_nonfinite_weight_meets_zero_padding(clconv, rng, case, algorithm):
    """A tap that reads zero padding adds 0 * w, as torch and the oracle: an Inf weight there gives
    NaN (0 * Inf) in the border outputs that reach the padding through it, +-Inf elsewhere. 'direct'
    covers its two kernels (conv_grouped.cl up to 16 channels a group, conv_direct.cl past that)."""
    x_shape, w_shape, kw = case
    x = random_array(rng, x_shape)
    w = random_array(rng, w_shape)
    w[w == 0] = 0.5
    w[0, 0, 0, 0] = np.inf  # the first tap: reads the padding above and to the left
    w[-1, -1, -1, -1] = -np.inf  # the last: below and to the right
    got = clconv.conv2d(x, w, algorithm=algorithm, **kw)
    want = ref.conv_nd(x, w, None, **kw)
    assert np.isnan(want).any() and np.isinf(want).any()  # the test is meaningful
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN positions differ")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want), err_msg="+Inf differ")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want), err_msg="-Inf differ")


# ---------------------------------------------------------------------------
# seeded fuzz over valid argument combinations
# ---------------------------------------------------------------------------


def _random_config(r: np.random.Generator):
    """A random valid conv2d configuration (tiny)."""
    while True:
        groups = int(r.choice([1, 1, 2, 3]))
        cin = groups * int(r.integers(1, 3))
        cout = groups * int(r.integers(1, 3))
        kh, kw = (int(v) for v in r.integers(1, 4, size=2))
        h, w = (int(v) for v in r.integers(1, 9, size=2))
        n = int(r.integers(1, 3))
        dil = tuple(int(v) for v in r.integers(1, 3, size=2))
        mode = str(r.choice(PADDING_MODES))
        if r.random() < 0.25:
            stride = (1, 1)
            padding = str(r.choice(["same", "valid"]))
        else:
            stride = tuple(int(v) for v in r.integers(1, 4, size=2))
            padding = tuple(int(v) for v in r.integers(0, 3, size=2))
        pads = ref.resolve_padding(padding, (kh, kw), dil)
        ok = all(d * (k - 1) + 1 <= s + lo + hi for d, k, s, (lo, hi) in zip(dil, (kh, kw), (h, w), pads))
        if mode == "reflect":
            ok = ok and all(max(p) < s for p, s in zip(pads, (h, w)))
        if mode == "circular":
            ok = ok and all(max(p) <= s for p, s in zip(pads, (h, w)))
        if ok:
            return {
                "x_shape": (n, cin, h, w), "w_shape": (cout, cin // groups, kh, kw), "bias": bool(r.random() < 0.5),
                "stride": stride, "padding": padding, "dilation": dil, "groups": groups, "padding_mode": mode,
                "algorithm": str(r.choice(ALL_ALGORITHMS)),
            }


FUZZ_SEEDS = range(20)


@pytest.mark.parametrize("seed", FUZZ_SEEDS)
def test_fuzz(clconv, seed):
    cfg = _random_config(np.random.default_rng(1000 + seed))
    r = np.random.default_rng(seed)
    x_shape, w_shape = cfg.pop("x_shape"), cfg.pop("w_shape")
    try:
        run_and_check(clconv, r, x_shape, w_shape, **cfg)
    except AssertionError as e:
        raise AssertionError(f"config x={x_shape} w={w_shape} {cfg}: {e}") from None


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------


def test_concurrent_calls_from_threads(clconv, rng):
    """Two threads calling conv2d at once on the same device both get right answers."""
    problems = []
    for i in range(4):
        x = random_array(rng, (1, 2, 6, 6))
        w = random_array(rng, (3, 2, 3, 3))
        problems.append((x, w, ALGORITHMS[i % 2], ref.conv_nd(x, w, padding=1)))
    errors = []

    def worker(offset):
        try:
            for _ in range(3):
                for x, w, algorithm, want in problems[offset::2]:
                    got = clconv.conv2d(x, w, padding=1, algorithm=algorithm)
                    assert_close(got, want, np.float32, reduction=18, magnitude=conv_magnitude(x, w))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


# ---------------------------------------------------------------------------
# optional cross-check against torch
# ---------------------------------------------------------------------------

TORCH_CASES = [
    # (x_shape, C_out, kernel, kwargs for nn.Conv2d)
    ((2, 3, 7, 6), 4, (3, 3), {"padding": 1}),
    ((1, 4, 8, 8), 4, (3, 2), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}),
    ((2, 2, 6, 7), 3, (2, 3), {"padding": "same", "padding_mode": "reflect"}),
    ((1, 3, 5, 5), 6, (3, 3), {"padding": 2, "groups": 3, "padding_mode": "circular"}),
    ((2, 2, 5, 4), 2, (1, 1), {"stride": 2, "padding": 1, "padding_mode": "replicate"}),
    ((1, 2, 6, 6), 2, (4, 4), {"padding": "valid", "bias": False}),
]


@pytest.mark.parametrize("case", range(len(TORCH_CASES)))
def test_matches_torch(clconv, rng, case):
    torch = import_torch()
    x_shape, cout, k, kwargs = TORCH_CASES[case]
    m = torch.nn.Conv2d(x_shape[1], cout, k, **kwargs)
    x = random_array(rng, x_shape)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    w = m.weight.detach().numpy()
    b = None if m.bias is None else m.bias.detach().numpy()
    got = clconv.conv2d(
        x, w, b, stride=m.stride, padding=kwargs.get("padding", 0), dilation=m.dilation,
        groups=m.groups, padding_mode=m.padding_mode,
    )
    assert got.shape == want.shape
    assert_close(got, want.astype(np.float64), np.float32,
                 reduction=conv_reduction(w), magnitude=conv_magnitude(x, w, b))
