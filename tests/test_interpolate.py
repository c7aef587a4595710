"""clconv.interpolate (cl/interpolate.cl) against torch.nn.functional.interpolate: every mode
(nearest, nearest-exact, linear/bilinear/trilinear and bicubic with and without align_corners,
area), sizes
and scale factors (integer, fractional, shrinking, recompute_scale_factor), NaN and Inf patterns as
torch's, device operands, float64 where the device has it, and torch's errors; antialias=True
(bilinear and bicubic).
Tolerance: nearest modes copy (exact); linear and cubic modes are a few products (rtol 1e-5);
antialiased ones sums of up to ~2 * 2 * scale taps with weights worked out on the host as torch
does (rtol 1e-5 against its largest value)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyopencl.array as cla
import pytest
from helpers import random_array

import clconv

torch = pytest.importorskip("torch")

CASES = [  # (input shape, size / scale_factor arguments)
    ((2, 3, 7), {"size": 12}),
    ((2, 3, 7), {"scale_factor": 1.7}),
    ((2, 3, 9), {"size": 4}),
    ((2, 3, 5, 6), {"scale_factor": 2}),
    ((2, 3, 5, 6), {"size": (7, 13)}),
    ((2, 3, 5, 6), {"scale_factor": (1.5, 0.6)}),
    ((1, 2, 6, 5), {"scale_factor": 2.3, "recompute_scale_factor": True}),
    ((1, 2, 3, 4, 5), {"scale_factor": 2}),
    ((1, 2, 3, 4, 5), {"size": (5, 3, 7)}),
    ((1, 1, 1, 1), {"size": (4, 3)}),
    # scale factors whose sizes round to the input's or twice it (4 * 1.2 -> 4, 5 * 2.19 -> 10):
    # torch's 2-d nearest copies or halves there, its 1-d and 3-d ones scale
    ((1, 2, 4), {"scale_factor": 1.2}),
    ((1, 2, 5), {"scale_factor": 2.19}),
    ((1, 2, 4, 5), {"scale_factor": (1.2, 2.19)}),
    ((1, 2, 4, 5, 4), {"scale_factor": (2.19, 1.2, 1.2)}),
]
LINEAR = {3: "linear", 4: "bilinear", 5: "trilinear"}


def _with_specials(rng, shape):
    x = random_array(rng, shape)
    x.flat[2 % x.size] = np.nan
    x.flat[5 % x.size] = np.inf if x.size > 5 else x.flat[0]
    return x


def _check(got, want):
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact", "linear", "linear-corners", "area"])
@pytest.mark.parametrize("shape, kw", CASES, ids=[f"{s}-{k}" for s, k in CASES])
def test_matches_torch(dev, rng, shape, kw, mode):
    kw = dict(kw)
    if mode.startswith("linear"):
        kw["align_corners"] = mode == "linear-corners"
        mode = LINEAR[len(shape)]
    if mode == "area" and kw.get("recompute_scale_factor"):
        pytest.skip("area takes the output size only")
    x = _with_specials(rng, shape)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), mode=mode, **kw).numpy()
    got = clconv.interpolate(x, mode=mode, **kw)
    if mode.startswith("nearest"):
        np.testing.assert_array_equal(got, want)
    else:
        _check(got, want)


BICUBIC_CASES = [c for c in CASES if len(c[0]) == 4] + [
    ((2, 2, 8, 9), {"size": (3, 4)}), ((1, 3, 2, 2), {"scale_factor": 3})]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape, kw", BICUBIC_CASES, ids=[f"{s}-{k}" for s, k in BICUBIC_CASES])
def test_bicubic_matches_torch(dev, rng, shape, kw, align_corners):
    """'bicubic' (4-d): torch's taps (clamped at the edges), Keys' weights (A = -0.75) and NaN /
    Inf pattern (every one of the 16 taps counts). Tolerance: 16 products of weights up to 1.2
    with cancellation, so atol 4e-6 of the input's scale beside rtol 1e-5 (one float32 output
    of -0.0183 from terms near 4 differed by 1.5e-6 on llvmpipe)."""
    x = _with_specials(rng, shape)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), mode="bicubic",
                                           align_corners=align_corners, **kw).numpy()
    got = clconv.interpolate(x, mode="bicubic", align_corners=align_corners, **kw)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    scale = float(np.abs(x[np.isfinite(x)]).max(initial=1.0))
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=4e-6 * scale)
    if dev.fp64:  # float64: torch's double arithmetic, to rounding
        x64 = x.astype(np.float64)
        np.testing.assert_allclose(
            clconv.interpolate(x64, mode="bicubic", align_corners=align_corners, **kw),
            torch.nn.functional.interpolate(torch.from_numpy(x64), mode="bicubic",
                                            align_corners=align_corners, **kw).numpy(),
            rtol=1e-12, atol=1e-12 * scale, equal_nan=True)


@pytest.mark.parametrize("shape, kw", [((2, 3, 1, 6), {"scale_factor": 0.5}),
                                       ((1, 2, 3), {"size": 0}),
                                       ((1, 2, 4, 1, 5), {"scale_factor": (1, 0.5, 1)})])
def test_area_rounds_to_an_empty_output_as_torch(dev, rng, shape, kw):
    """'area' (adaptive average pooling) gives an empty output where a size rounds to 0, as
    torch's; the other modes refuse it (test_errors_as_torch)."""
    x = random_array(rng, shape)
    got = clconv.interpolate(x, mode="area", **kw)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), mode="area", **kw)
    assert got.shape == tuple(want.shape) and got.size == 0 and got.dtype == x.dtype


def test_area_of_no_channels_is_empty_as_torch(dev):
    """'area' is adaptive average pooling, which torch runs on 0 channels (the other modes
    refuse them: test_errors_as_torch), without a warning where a size rounds to 0."""
    x = np.zeros((2, 0, 4, 4), np.float32)
    got = clconv.interpolate(x, size=3, mode="area")
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=3, mode="area")
    assert got.shape == tuple(want.shape) == (2, 0, 3, 3)
    assert clconv.adaptive_avg_pool2d(x, 2).shape == (2, 0, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = clconv.interpolate(np.ones((1, 1, 1, 1), np.float32), scale_factor=0.3,
                                 mode="area", recompute_scale_factor=True)
    assert got.shape == (1, 1, 0, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_source_indices_as_torch(dev, mode, nd, dtype):
    """Every output takes torch's source pixel, for sizes whose positions fall on pixel
    boundaries: torch's 1-d and 3-d kernels round the index in the tensor's type (double for
    double) and nearest-exact as floor(max(scale * (dst + 0.5) - 0.5, 0) + 0.5), its 2-d kernel
    in float."""
    if dtype == np.float64 and not dev.fp64:
        pytest.skip(f"{dev.name} has no float64")
    for n_in, n_out in ((2, 41), (12, 37), (14, 46), (5, 19), (7, 3), (9, 26), (3, 1)):
        x = np.arange(n_in, dtype=dtype).reshape((1, 1) + (1,) * (nd - 1) + (n_in,))
        size = (1,) * (nd - 1) + (n_out,)
        got = clconv.interpolate(x, size=size, mode=mode)
        want = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode=mode)
        np.testing.assert_array_equal(got, want.numpy(), err_msg=f"{n_in} -> {n_out}")


def test_device_operands_float64_and_plans(dev, rng):
    x = random_array(rng, (2, 3, 5, 6))
    xd = cla.to_device(dev.queue, x)
    y = clconv.interpolate(xd, scale_factor=2, mode="bilinear")
    assert isinstance(y, cla.Array)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bilinear")
    _check(y.get(), want.numpy())
    plan = clconv.InterpolatePlan(dev, x.shape, (4, 9), None, "nearest", None, None, np.float32)
    np.testing.assert_array_equal(plan(x), torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(4, 9)).numpy())
    if dev.fp64:
        x64 = x.astype(np.float64)
        got = clconv.interpolate(x64, size=(9, 4), mode="bilinear", align_corners=True)
        assert got.dtype == np.float64
        want = torch.nn.functional.interpolate(torch.from_numpy(x64), size=(9, 4),
                                               mode="bilinear", align_corners=True).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_in, n_out", [(2, 6), (3, 7), (3, 27), (5, 19), (6, 22), (8, 24)])
def test_linear_nan_reaches_the_outputs_torch_gives(dev, n_in, n_out, dtype):
    """The source index scale * (dst + 0.5) - 0.5 rounded as torch rounds it in each dtype, so
    that a NaN reaches exactly torch's outputs: in double a fused multiply-add put some indices
    one ulp below an integer (sizes whose scale is 1/3, 3/7, ...: one more output took the NaN)."""
    if dtype == np.float64 and not dev.fp64:
        pytest.skip(f"{dev.name} has no float64")
    x = np.zeros((n_in, 1, n_in), dtype)
    x[np.arange(n_in), 0, np.arange(n_in)] = np.nan  # row j: the NaN at position j
    got = clconv.interpolate(x, size=n_out, mode="linear")
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=n_out, mode="linear")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want.numpy()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode, size_in, size_out", [
    ("linear", (1,), (5,)), ("linear", (2,), (10,)), ("linear", (3,), (7,)),
    ("linear", (3,), (15,)), ("linear", (5,), (19,)), ("linear", (3,), (9,)),
    ("bilinear", (1, 8), (5, 9)), ("bilinear", (2, 3), (22, 24)), ("bilinear", (4, 1), (11, 13)),
    ("bicubic", (1, 3), (1, 9)), ("bicubic", (1, 4), (1, 12)), ("bicubic", (2, 5), (10, 23)),
    ("bicubic", (1, 5), (1, 27)), ("trilinear", (1, 2, 3), (5, 7, 9)),
])
def test_an_inf_gives_inf_or_nan_where_torch_does(dev, mode, size_in, size_out, dtype):
    """An Inf times a tap weight that is exactly 0 is NaN, times a tiny one Inf. torch computes
    the source coordinate scale * (dst + 0.5) - 0.5 as one fused multiply-add (0.2f * 2.5f -
    0.5f: 7.45e-9, not 0), in float and double, and takes the tap index as floorf of it, a float
    even for double tensors (1/3 * 4.5 - 0.5 fused: 0.9999999999999999, index 1, weight 0); every
    driver must do the same, those that do not contract a * b + c by themselves (llvmpipe)
    included. One Inf at each input position in turn, one per batch item."""
    if dtype == np.float64 and not dev.fp64:
        pytest.skip(f"{dev.name} has no float64")
    count = int(np.prod(size_in))
    x = np.zeros((count, 1, *size_in), dtype)
    x.reshape(count, count)[np.arange(count), np.arange(count)] = np.inf
    got = clconv.interpolate(x, size=size_out, mode=mode)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=size_out, mode=mode).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, kw, error, words", [
    ((2, 3, 5, 6), {}, ValueError, "exactly one"),
    ((2, 3, 5, 6), {"size": 4, "scale_factor": 2}, ValueError, "exactly one"),
    ((2, 3, 5, 6), {"size": 4, "mode": "linear"}, ValueError, "3-d"),
    ((2, 3, 5, 6), {"size": 4, "align_corners": True}, ValueError, "align_corners"),
    ((2, 3, 5, 6), {"size": (4, 5, 6)}, ValueError, "2 entries"),
    ((2, 3, 5, 6), {"size": 4.5}, TypeError, "ints"),
    ((2, 3, 5, 6), {"scale_factor": 0.1}, ValueError, "greater than 0"),
    ((2, 3, 5, 6), {"size": 4, "mode": "cubic"}, ValueError, "mode"),
    ((2, 3, 5), {"size": 4, "mode": "bicubic"}, ValueError, "4-d"),
    ((5, 6), {"size": 4}, ValueError, "3-d, 4-d or 5-d"),
    ((2, 3, 5, 6), {"size": 4, "recompute_scale_factor": True}, ValueError, "explicit size"),
    ((2, 3, 1, 6), {"scale_factor": 0.5}, ValueError, "greater than 0"),
    ((1, 1, 4, 4), {"scale_factor": float("inf")}, ValueError, "scale_factor"),
    ((1, 1, 4, 4), {"scale_factor": float("nan")}, ValueError, "scale_factor"),
    ((2, 0, 4, 4), {"scale_factor": 2, "mode": "bilinear"}, ValueError, "channels"),
    ((2, 0, 4, 4), {"size": 3}, ValueError, "channels"),
], ids=lambda v: str(v))
def test_errors_as_torch(dev, rng, shape, kw, error, words):
    x = random_array(rng, shape)
    with pytest.raises(error, match=words):
        clconv.interpolate(x, **kw)
    with pytest.raises((RuntimeError, ValueError, TypeError, NotImplementedError)):
        torch.nn.functional.interpolate(torch.from_numpy(x), **kw)


AA_CASES = [  # (input shape, size / scale_factor arguments) for antialias=True
    ((2, 3, 17, 23), {"size": (5, 7)}),            # downscales by ~3.3: wide supports
    ((1, 2, 40, 9), {"size": (13, 4)}),
    ((2, 1, 6, 7), {"size": (15, 16)}),            # upscales: plain supports, edges renormalised
    ((1, 2, 12, 10), {"scale_factor": (0.37, 0.5)}),
    ((1, 2, 12, 10), {"scale_factor": (2.3, 0.45), "recompute_scale_factor": True}),
    ((1, 2, 9, 11), {"size": (9, 4)}),             # the height's size stays: only the width
    ((1, 1, 8, 8), {"size": (8, 8)}),              # no size changes: a copy, as torch's
    ((1, 1, 9, 5), {"size": (1, 3)}),
]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape, kw", AA_CASES, ids=[f"{s}-{k}" for s, k in AA_CASES])
def test_antialias_matches_torch(dev, rng, shape, kw, mode, align_corners):
    """antialias=True: torch's separable resampling, each output an average over the downscaled
    footprint (the width first, then the height); NaN and Inf reach the outputs torch's do."""
    x = _with_specials(rng, shape)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), mode=mode, antialias=True,
                                           align_corners=align_corners, **kw).numpy()
    got = clconv.interpolate(x, mode=mode, antialias=True, align_corners=align_corners, **kw)
    assert got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-5,
                               atol=1e-5 * float(np.abs(want[finite]).max(initial=1.0)))
    if dev.fp64:
        x64 = random_array(rng, shape).astype(np.float64)
        np.testing.assert_allclose(
            clconv.interpolate(x64, mode=mode, antialias=True, align_corners=align_corners, **kw),
            torch.nn.functional.interpolate(torch.from_numpy(x64), mode=mode, antialias=True,
                                            align_corners=align_corners, **kw).numpy(),
            rtol=1e-12, atol=1e-12)


def test_antialias_of_a_width_1_input_as_torchs_channels_last_kernel(dev):
    """A width-1 result's vertical pass: torch 2.13's kernel for contiguous tensors gives each
    column the first output's value there ([1, 1] for 0..4 shrunk to 2 rows), its channels-last
    kernel the filter's ([1, 3]; a 3-channel input: with one, channels-last is contiguous):
    clconv's are the latter."""
    x = np.arange(15, dtype=np.float32).reshape(1, 3, 5, 1)
    got = clconv.interpolate(x, size=(2, 1), mode="bilinear", antialias=True)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(x).contiguous(memory_format=torch.channels_last), size=(2, 1),
        mode="bilinear", antialias=True).contiguous().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got.ravel(), [1, 3, 6, 8, 11, 13], rtol=1e-6)


@pytest.mark.parametrize("shape, mode", [((1, 2, 5), "linear"), ((1, 2, 5, 6), "nearest"),
                                         ((1, 2, 5, 6), "area"), ((1, 1, 2, 3, 4), "trilinear")])
def test_antialias_is_for_bilinear_and_bicubic_of_4d_inputs(dev, rng, shape, mode):
    x = random_array(rng, shape)
    with pytest.raises(ValueError, match="antialias=True is restricted to the bilinear and"):
        clconv.interpolate(x, size=3, mode=mode, antialias=True)
    with pytest.raises(ValueError, match="Anti-alias option"):
        torch.nn.functional.interpolate(torch.from_numpy(x), size=3, mode=mode, antialias=True)


def test_antialias_plan_on_device_arrays(dev, rng):
    x = random_array(rng, (2, 3, 20, 16))
    plan = clconv.InterpolatePlan(dev, x.shape, (6, 5), None, "bicubic", None, None, np.float32,
                                  antialias=True)
    y = plan(cla.to_device(dev.queue, x))
    assert isinstance(y, cla.Array)
    np.testing.assert_allclose(y.get(), torch.nn.functional.interpolate(
        torch.from_numpy(x), size=(6, 5), mode="bicubic", antialias=True).numpy(),
        rtol=1e-5, atol=1e-6)


def test_antialias_on_random_shapes_matches_torch(dev):
    """60 seeded random 4-d inputs, sizes or scale factors (recompute_scale_factor too), both
    modes and align_corners, against torch's channels-last kernel (its contiguous one is wrong
    for one-column results)."""
    rng = np.random.default_rng(2026)
    for case in range(60):
        mode = ("bilinear", "bicubic")[case % 2]
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
        if case % 3:
            kw = {"size": tuple(int(v) for v in rng.integers(1, 40, 2))}
        else:
            kw = {"scale_factor": tuple(float(v) for v in rng.uniform(0.15, 2.5, 2)),
                  "recompute_scale_factor": bool(case % 2)}
        if min(math.floor(n * f) for n, f in zip((h, w), kw.get("scale_factor", (1, 1)))) < 1:
            continue
        kw["align_corners"] = bool(case % 4 == 1)
        want = torch.nn.functional.interpolate(
            torch.from_numpy(x).contiguous(memory_format=torch.channels_last), mode=mode,
            antialias=True, **kw).contiguous().numpy()
        got = clconv.interpolate(x, mode=mode, antialias=True, **kw)
        assert got.shape == want.shape, (case, kw)
        np.testing.assert_allclose(got, want, rtol=1e-5,
                                   atol=1e-5 * float(np.abs(want).max()), err_msg=str(kw))
