"""dtypes of the transposed convolutions, gradients, 1-d/3-d im2col and layers (docs/precision.md).

- float16 without cl_khr_fp16: every op raises clconv.UnsupportedError naming the dtype and device.
- A device that reports cl_khr_fp16 but fails the probe kernel: UnsupportedError too.
- float16 computed in float32: on this CPU the half path is exercised by pretending the device has
  cl_khr_fp16 (conversions use vload_half / vstore_half, core OpenCL), and compared with the oracle
  under the float16 tolerance.
- The tolerance table is meaningful: float64 results are far inside the float32 tolerance (they are
  not float32 computations), float32 results are outside the float64 one, and float16 results are
  outside the float32 one (the result is really rounded to half).
"""

from __future__ import annotations

import re

import numpy as np
import pyopencl.array as cla
import pytest
import reference as ref
import reference_extra as rx
from helpers import import_torch, random_array
from tolerance import ATOL, RTOL, assert_close, conv_magnitude

HALF = np.float16


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _ops(clconv, dtype):
    """name -> (the op on tiny data of dtype as a callable, oracle result, reduction, magnitude)."""
    r = np.random.default_rng(7)

    def arr(*shape):
        return r.standard_normal(shape).astype(dtype)

    x2, w2, b2 = arr(2, 4, 3, 4), arr(4, 3, 3, 2), arr(6)
    x1, w1 = arr(2, 2, 5), arr(2, 3, 3)
    x3, w3 = arr(1, 2, 2, 3, 2), arr(2, 2, 2, 2, 2)
    cx, cw = arr(2, 4, 6, 5), arr(6, 2, 3, 3)
    g = arr(2, 6, 3, 3)
    g1 = arr(2, 3, 3)
    c1 = arr(2, 6, 5)
    c3 = arr(1, 16, 8)
    return {
        "conv_transpose2d": (lambda: clconv.conv_transpose2d(x2, w2, b2, stride=2, groups=2,
                                                             output_padding=1),
                             ref.conv_transpose_nd(x2, w2, b2, stride=2, groups=2,
                                                   output_padding=1),
                             6, conv_magnitude(x2, w2, b2)),
        "conv_transpose1d": (lambda: clconv.conv_transpose1d(x1, w1, stride=2),
                             ref.conv_transpose_nd(x1, w1, stride=2), 6, conv_magnitude(x1, w1)),
        "conv_transpose3d": (lambda: clconv.conv_transpose3d(x3, w3, padding=1),
                             ref.conv_transpose_nd(x3, w3, padding=1), 16, conv_magnitude(x3, w3)),
        "conv2d_input": (lambda: clconv.conv2d_input(cx.shape, cw, g, stride=2, padding=1,
                                                     groups=2),
                         ref.conv_nd_input(cx.shape, cw, g, stride=2, padding=1, groups=2), 27,
                         conv_magnitude(g, cw)),
        "conv2d_input_reflect": (
            lambda: clconv.conv2d_input(cx.shape, cw, g, stride=2, padding=1, groups=2,
                                        padding_mode="reflect"),
            rx.conv_nd_input(cx.shape, cw, g, stride=2, padding=1, groups=2,
                             padding_mode="reflect"), 27, conv_magnitude(g, cw)),
        "conv2d_weight": (lambda: clconv.conv2d_weight(cx, cw.shape, g, stride=2, padding=1,
                                                       groups=2),
                          ref.conv_nd_weight(cx, cw.shape, g, stride=2, padding=1, groups=2), 18,
                          conv_magnitude(g, cx)),
        "conv1d_input": (lambda: clconv.conv1d_input(x1.shape, w1.transpose(1, 0, 2).copy(), g1),
                         ref.conv_nd_input(x1.shape, w1.transpose(1, 0, 2), g1), 9,
                         conv_magnitude(g1, w1)),
        "conv1d_weight": (lambda: clconv.conv1d_weight(x1, (3, 2, 3), g1),
                          ref.conv_nd_weight(x1, (3, 2, 3), g1), 6, conv_magnitude(g1, x1)),
        "conv3d_weight": (lambda: clconv.conv3d_weight(x3, (2, 2, 2, 2, 2),
                                                       np.ones((1, 2, 1, 2, 1), dtype)),
                          ref.conv_nd_weight(x3, (2, 2, 2, 2, 2), np.ones((1, 2, 1, 2, 1))), 2,
                          conv_magnitude(x3, np.ones(1))),
        "conv3d_input": (lambda: clconv.conv3d_input(x3.shape, w3, np.ones((1, 2, 1, 2, 1), dtype)),
                         ref.conv_nd_input(x3.shape, w3, np.ones((1, 2, 1, 2, 1))), 16,
                         conv_magnitude(w3, np.ones(1))),
        "im2col1d": (lambda: clconv.im2col1d(x1, 3, padding=1), ref.unfold(x1, (3,), 1, 1, 1), 1,
                     np.abs(x1).max()),
        "col2im1d": (lambda: clconv.col2im1d(c1, 5, 3, padding=1),
                     ref.fold(c1, (5,), (3,), 1, 1, 1), 3, np.abs(c1).max()),
        "im2col3d": (lambda: clconv.im2col3d(x3, 2), ref.unfold(x3, (2, 2, 2)), 1,
                     np.abs(x3).max()),
        "col2im3d": (lambda: clconv.col2im3d(c3, (3, 3, 3), 2), ref.fold(c3, (3, 3, 3), (2, 2, 2)),
                     8, np.abs(c3).max()),
    }


OP_NAMES = list(_ops(None, np.float32))  # the lambdas are not called here
LAYERS = ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d"]


# ---------------------------------------------------------------------------
# float16 where the device lacks it
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", OP_NAMES)
def test_float16_unsupported(clconv, dev, name):
    if dev.fp16:
        pytest.skip("the device has cl_khr_fp16")
    run = _ops(clconv, HALF)[name][0]
    with pytest.raises(clconv.UnsupportedError, match="float16") as info:
        run()
    assert dev.name in str(info.value)


@pytest.mark.parametrize("cls_name", LAYERS)
def test_float16_layers_unsupported(clconv, dev, cls_name):
    if dev.fp16:
        pytest.skip("the device has cl_khr_fp16")
    with pytest.raises(clconv.UnsupportedError, match=f"float16.*{re.escape(dev.name)}"):
        getattr(clconv.nn, cls_name)(2, 2, 3, dtype=np.float16)


def test_float16_device_array_unsupported(clconv, dev):
    if dev.fp16:
        pytest.skip("the device has cl_khr_fp16")
    x = cla.to_device(dev.queue, np.zeros((1, 2, 3, 3), HALF))
    w = cla.to_device(dev.queue, np.zeros((2, 2, 2, 2), HALF))
    with pytest.raises(clconv.UnsupportedError, match="float16"):
        clconv.conv_transpose2d(x, w)


def test_device_that_reports_fp16_wrongly(clconv, dev, monkeypatch):
    """cl_khr_fp16 reported but the probe kernel does not build (PoCL here): UnsupportedError."""
    if dev.fp16:
        pytest.skip("the device really has cl_khr_fp16")
    monkeypatch.setattr(dev, "fp16", True)
    monkeypatch.setattr(dev, "fp16_reason", object())  # not probed yet
    run = _ops(clconv, HALF)["conv_transpose2d"][0]
    with pytest.raises(clconv.UnsupportedError, match="reports cl_khr_fp16 but the float16 probe"):
        run()
    # the verdict is cached: the second call fails the same way without rebuilding
    assert isinstance(dev.fp16_reason, str)
    with pytest.raises(clconv.UnsupportedError, match="probe"):
        run()
    monkeypatch.setattr(dev, "fp16_reason", "the float16 probe computed wrong values for half "
                                            "arithmetic")
    with pytest.raises(clconv.UnsupportedError, match="wrong values for half arithmetic"):
        run()


def test_a_float16_plan_on_a_device_without_fp16_is_refused_before_any_build(clconv, dev,
                                                                              capfd):
    """plan_*(dtype=float16) meets the extension check of the functional ops (it skipped it and
    built the probe, whose compiler errors reached stderr)."""
    if dev.fp16:
        pytest.skip("the device reports cl_khr_fp16")
    with dev, pytest.raises(clconv.UnsupportedError, match="needs cl_khr_fp16.*lacks"):
        clconv.plan_conv2d((1, 2, 6, 6), (3, 2, 3, 3), dtype=np.float16)
    assert "error" not in capfd.readouterr().err


def test_real_fp16_device_passes_the_probe(clconv, dev):
    if not dev.fp16:
        pytest.skip("the device has no cl_khr_fp16")
    from clconv.ops.precision import _probe_fp16

    assert _probe_fp16(dev) is None


# ---------------------------------------------------------------------------
# the float16 path (half storage, float32 compute), on a device pretending to have cl_khr_fp16
# ---------------------------------------------------------------------------

def _really_fp16(dev) -> bool:
    return "cl_khr_fp16" in dev.cl_device.extensions.split()


@pytest.fixture
def fp16_device(dev, monkeypatch):
    """The test device with float16 enabled: real where it has cl_khr_fp16, else pretended (the
    float16 paths of these ops only need vload_half / vstore_half, which every device has)."""
    if not dev.fp16:
        monkeypatch.setattr(dev, "fp16", True)
        monkeypatch.setattr(dev, "fp16_reason", None)
    return dev


@pytest.mark.parametrize("name", OP_NAMES)
def test_float16_results(clconv, dev, fp16_device, name):
    if name.startswith(("im2col", "col2im")) and not _really_fp16(dev):
        # im2col/col2im run half kernels natively (data movement; col2im accumulates in float):
        # they need a device that really has cl_khr_fp16.
        pytest.skip("needs a real cl_khr_fp16 device")
    run, want, reduction, magnitude = _ops(clconv, HALF)[name]
    got = run()
    assert got.dtype == HALF and isinstance(got, np.ndarray)
    assert_close(got, want, HALF, reduction=reduction, magnitude=magnitude)


def test_float16_device_arrays(clconv, fp16_device, rng):
    x = random_array(rng, (2, 4, 3, 4), HALF)
    w = random_array(rng, (4, 3, 3, 3), HALF)
    q = fp16_device.queue
    got = clconv.conv_transpose2d(cla.to_device(q, x), cla.to_device(q, w), stride=2)
    assert isinstance(got, cla.Array) and got.dtype == HALF
    assert_close(got, ref.conv_transpose_nd(x, w, stride=2), HALF, reduction=36,
                 magnitude=conv_magnitude(x, w))
    g = random_array(rng, (2, 3, 3, 4), HALF)
    gw = clconv.conv2d_weight(cla.to_device(q, x), (3, 4, 3, 3), cla.to_device(q, g), padding=1)
    assert isinstance(gw, cla.Array) and gw.dtype == HALF
    assert_close(gw, ref.conv_nd_weight(x, (3, 4, 3, 3), g, padding=1), HALF, reduction=24,
                 magnitude=conv_magnitude(x, g))


@pytest.mark.parametrize("cls_name, x_shape", [("Conv2d", (2, 2, 5, 5)),
                                               ("ConvTranspose2d", (2, 2, 3, 3)),
                                               ("Conv1d", (2, 2, 6))])
def test_float16_layers(clconv, fp16_device, rng, cls_name, x_shape):
    layer = getattr(clconv.nn, cls_name)(2, 3, 3, dtype=HALF, rng=rng)
    assert layer.weight.dtype == HALF
    x = random_array(rng, x_shape, HALF)
    y = layer(x)
    w, b = layer.weight.get(), layer.bias.get()
    transposed = cls_name.startswith("ConvTranspose")
    want = ref.conv_transpose_nd(x, w, b) if transposed else ref.conv_nd(x, w, b)
    assert y.dtype == HALF
    assert_close(y, want, HALF, reduction=18, magnitude=conv_magnitude(x, w, b))
    g = random_array(rng, y.shape, HALF)
    gx = layer.backward(g)
    assert gx.dtype == HALF and layer.weight_grad.dtype == HALF and layer.bias_grad.dtype == HALF
    assert_close(layer.bias_grad, rx.bias_grad(g), HALF, reduction=g.size // 3,
                 magnitude=np.abs(g).max())


def test_convert_rounds_like_numpy(clconv, dev):
    """float32 -> float16 -> float32 on the device equals numpy's conversions (round to nearest
    even, subnormals, overflow to inf, NaN)."""
    from clconv.ops.precision import convert

    r = np.random.default_rng(0)
    values = np.concatenate([
        r.standard_normal(1000) * 10.0 ** r.integers(-9, 6, 1000),
        [0.0, -0.0, 65504.0, 65520.0, 1e6, -1e6, np.inf, -np.inf, 2.0**-24, 2.0**-25,
         3 * 2.0**-26, 1 + 2.0**-11, 1 + 3 * 2.0**-11],
    ]).astype(np.float32)
    half = convert(dev, cla.to_device(dev.queue, values), HALF).get()
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(half, values.astype(HALF))
    back = convert(dev, cla.to_device(dev.queue, half), np.float32).get()
    np.testing.assert_array_equal(back, half.astype(np.float32))
    nan = convert(dev, cla.to_device(dev.queue, np.array([np.nan], np.float32)), HALF).get()
    assert np.isnan(nan).all()


# ---------------------------------------------------------------------------
# the tolerance table means something
# ---------------------------------------------------------------------------

def _error(got, want, reduction, magnitude):
    """max |got - want| in units of the (float64, float32, float16) absolute tolerances."""
    err = np.abs(np.asarray(got, np.float64) - want).max()
    scale = np.sqrt(reduction) * magnitude
    return err, {d: ATOL[np.dtype(d)] * scale + RTOL[np.dtype(d)] * np.abs(want).max()
                 for d in (np.float64, np.float32, HALF)}


@pytest.mark.parametrize("name", ["conv_transpose2d", "conv2d_input", "conv2d_weight",
                                  "conv2d_input_reflect", "conv_transpose3d"])
def test_tolerances_separate_the_dtypes(clconv, dev, fp16_device, name):
    if not dev.fp64:
        pytest.skip("needs float64")
    results = {}
    for dt in (np.float64, np.float32, HALF):
        run, want, reduction, magnitude = _ops(clconv, dt)[name]
        results[np.dtype(dt)] = _error(run(), want, reduction, magnitude)
    err64, tol = results[np.dtype(np.float64)]
    assert err64 <= tol[np.float64]
    assert err64 < 1e-3 * tol[np.float32], "float64 results look like float32 computations"
    err32, tol = results[np.dtype(np.float32)]
    assert tol[np.float64] < err32 <= tol[np.float32]
    err16, tol = results[np.dtype(HALF)]
    assert tol[np.float32] < err16 <= tol[HALF], "float16 results must be rounded to half"


@pytest.mark.parametrize("algorithm", ["im2col", "direct", "auto"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_float16_forward_convolutions(clconv, fp16_device, rng, algorithm, nd):
    """conv1d/2d/3d in float16: half in and out, float32 inside (widened operands, float32 GEMM)."""
    spatial = (7, 6, 5)[:nd]
    x = random_array(rng, (2, 4, *spatial), HALF)
    w = random_array(rng, (6, 2, *(3,) * nd), HALF)
    b = random_array(rng, (6,), HALF)
    conv = getattr(clconv, f"conv{nd}d")
    got = conv(x, w, b, padding=1, groups=2, algorithm=algorithm)
    assert got.dtype == HALF and isinstance(got, np.ndarray)
    want = ref.conv_nd(x, w, b, padding=1, groups=2)
    assert_close(got, want, HALF, reduction=2 * 3**nd, magnitude=conv_magnitude(x, w))
    q = fp16_device.queue
    got_dev = conv(cla.to_device(q, x), cla.to_device(q, w), cla.to_device(q, b), padding=1,
                   groups=2, algorithm=algorithm)
    assert isinstance(got_dev, cla.Array) and got_dev.dtype == HALF
    np.testing.assert_array_equal(got_dev.get(), got)


def test_a_float64_plan_on_a_device_without_fp64_is_refused_before_any_build(clconv, dev,
                                                                              monkeypatch):
    """plan_*(dtype=float64) and the op plans made with a dtype on a device without cl_khr_fp64
    (llvmpipe, many GPUs; the extension switched off here): UnsupportedError, as the functional
    ops give, not a KernelBuildError from a double kernel."""
    from clconv.ops.binary import BinaryPlan
    from clconv.ops.pool import PoolPlan

    monkeypatch.setattr(dev, "fp64", False)
    with dev:
        for make in (lambda: clconv.plan_conv2d((1, 3, 6, 6), (4, 3, 3, 3), dtype=np.float64),
                     lambda: clconv.plan_conv_transpose2d((1, 3, 6, 6), (3, 4, 3, 3),
                                                          dtype=np.float64),
                     lambda: clconv.plan_conv2d_input((1, 3, 6, 6), (4, 3, 3, 3),
                                                      dtype=np.float64),
                     lambda: clconv.plan_conv2d_weight((1, 3, 6, 6), (4, 3, 3, 3),
                                                       dtype=np.float64),
                     lambda: PoolPlan(dev, "max", 2, (1, 3, 6, 6), np.float64, 2),
                     lambda: BinaryPlan(dev, "add", (2, 3), (2, 3), np.float64)):
            with pytest.raises(clconv.UnsupportedError, match="float64 needs cl_khr_fp64"):
                make()


def test_float16_batchnorm_whose_folded_weights_overflow_runs_on_its_own(clconv, fp16_device):
    """A half model's conv -> BatchNorm over a dead channel (running_var 0): the folded weight
    w * gamma / sqrt(eps) = 300 / 0.00316 is past float16's 65504, so convert and compile gave
    Inf where torch's half model gives ~949. The BatchNorm now runs after the convolution; a
    float32 model of the same weights still folds."""
    torch = import_torch()
    import warnings

    import clconv.torch as ct
    from torch import nn

    m = nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU()).eval()
    with torch.no_grad():
        m[0].weight.fill_(300.0)
        m[1].running_var.copy_(torch.tensor([0.0, 1.0]))
    assert clconv.ops.fold.fold_overflowed(
        [np.float16(300), np.float16(0)], [np.array([np.inf], np.float16)])
    x = torch.full((1, 2, 4, 4), 0.01)
    for dtype in (torch.float16, torch.float32):
        model, inp = m.to(dtype), x.to(dtype)  # (in place: one module)
        with torch.no_grad():
            want = model(inp)
            with warnings.catch_warnings():
                warnings.simplefilter("error", ct.FallbackWarning)
                cm = ct.compile(model, inp, progress=False)
            ops = [s.op for s in cm.steps]
            assert any(op.startswith("clconv.batch_norm") for op in ops) == \
                (inp.dtype == torch.float16), ops
            for got in (cm(inp), ct.convert(model)(inp)):
                assert got.dtype == want.dtype and torch.isfinite(got).all()
                torch.testing.assert_close(got.float(), want.float(), rtol=2e-3, atol=2e-3)


def test_float16_ops_with_a_number_keep_the_numbers_value(clconv, fp16_device):
    """torch.mul(x, 1e-8) of a float16 x computes in float32 with 1e-8 itself, then rounds: clconv
    rounded the number to float16 first (1e-8 -> 0, 7e4 -> inf), so x * 1e-8 was 0 and x * 7e4
    NaN at 0. Python numbers and 0-d arrays or tensors alike, numpy and device operands; add and
    sub, and a number as the first operand, torch rounds to float16 first, as clconv."""
    torch = import_torch()

    x = np.array([2556.0, 0.0, 0.0004182, -5.676, 1.0, 3.0], np.float16)
    t = torch.from_numpy(x)
    q = fp16_device.queue
    for op, value in (("mul", 1e-8), ("mul", 7e4), ("div", 7e4), ("div", 1e-8), ("mul", 0.1),
                      ("div", 1 / 3), ("div", 3e-6), ("add", 1e-4), ("sub", 65519.0)):
        want = getattr(torch, op)(t, value)
        for v in (value, np.array(value, np.float32), torch.tensor(value)):
            for operand in (x, cla.to_device(q, x)):
                got = getattr(clconv, op)(operand, v)
                got = got.get() if isinstance(got, cla.Array) else got
                assert got.dtype == np.float16
                np.testing.assert_array_equal(got, want.numpy(), err_msg=f"{op} {value!r}")
        # (the number first: torch rounds it to float16 first, torch.mul(1e-8, x) is 0)
        np.testing.assert_array_equal(getattr(clconv, op)(value, x),
                                      getattr(torch, op)(value, t).numpy())
