"""clconv's elementwise ops against torch and the float64 oracle (reference_layers.py): every
activation (NaN/Inf propagation included), broadcast add/mul with a fused activation, batch_norm
(inference form), cat and flatten; device arrays, out=, empty and 0-d inputs, bad arguments."""

from __future__ import annotations

import math

import numpy as np
import pyopencl.array as cla
import pytest
import reference_layers as ref
from helpers import import_torch, random_array
from tolerance import assert_close, assert_exact


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _dtypes(dev):
    return (np.float32, np.float64) if dev.fp64 else (np.float32,)


def _special(rng, shape, dtype):
    """Random values with NaN, +-Inf, zeros and the activations' corners (+-3, 0, 6)."""
    x = (random_array(rng, shape, np.float64) * 4).astype(dtype)
    flat = x.reshape(-1)
    flat[:9] = [np.nan, np.inf, -np.inf, 0.0, -3.0, 3.0, 6.0, -0.0, 1e-3]
    return x


# (clconv call, torch call, oracle or None)
ACTS = {
    "relu": (lambda c, x: c.relu(x), lambda F, t: F.relu(t), ref.ACTIVATIONS["relu"]),
    "relu6": (lambda c, x: c.relu6(x), lambda F, t: F.relu6(t), ref.ACTIVATIONS["relu6"]),
    "silu": (lambda c, x: c.silu(x), lambda F, t: F.silu(t), ref.ACTIVATIONS["silu"]),
    "gelu": (lambda c, x: c.gelu(x), lambda F, t: F.gelu(t), ref.ACTIVATIONS["gelu"]),
    "gelu_tanh": (lambda c, x: c.gelu(x, approximate="tanh"),
                  lambda F, t: F.gelu(t, approximate="tanh"), ref.ACTIVATIONS["gelu_tanh"]),
    "sigmoid": (lambda c, x: c.sigmoid(x), lambda F, t: F.sigmoid(t), ref.ACTIVATIONS["sigmoid"]),
    "tanh": (lambda c, x: c.tanh(x), lambda F, t: F.tanh(t), ref.ACTIVATIONS["tanh"]),
    "hardswish": (lambda c, x: c.hardswish(x), lambda F, t: F.hardswish(t),
                  ref.ACTIVATIONS["hardswish"]),
    "hardsigmoid": (lambda c, x: c.hardsigmoid(x), lambda F, t: F.hardsigmoid(t),
                    ref.ACTIVATIONS["hardsigmoid"]),
    "leaky_relu": (lambda c, x: c.leaky_relu(x, 0.2), lambda F, t: F.leaky_relu(t, 0.2), None),
    "leaky_relu_default": (lambda c, x: c.leaky_relu(x), lambda F, t: F.leaky_relu(t), None),
    "elu": (lambda c, x: c.elu(x, 0.7), lambda F, t: F.elu(t, 0.7), None),
    "celu": (lambda c, x: c.celu(x, 0.7), lambda F, t: F.celu(t, 0.7), None),
    "celu_negative": (lambda c, x: c.celu(x, -0.5), lambda F, t: F.celu(t, -0.5), None),
    "selu": (lambda c, x: c.selu(x), lambda F, t: F.selu(t), ref.ACTIVATIONS["selu"]),
    "mish": (lambda c, x: c.mish(x), lambda F, t: F.mish(t), ref.ACTIVATIONS["mish"]),
    "softplus": (lambda c, x: c.softplus(x), lambda F, t: F.softplus(t),
                 ref.ACTIVATIONS["softplus"]),
    "softplus_beta": (lambda c, x: c.softplus(x, 2.0, 1.5),
                      lambda F, t: F.softplus(t, 2.0, 1.5), None),
    "softplus_negative_beta": (lambda c, x: c.softplus(x, beta=-0.5, threshold=1.0),
                               lambda F, t: F.softplus(t, beta=-0.5, threshold=1.0), None),
    "hardtanh": (lambda c, x: c.hardtanh(x, -0.5, 2.0), lambda F, t: F.hardtanh(t, -0.5, 2.0),
                 None),
    "clamp": (lambda c, x: c.clamp(x, -1.0, 0.5), lambda F, t: t.clamp(-1.0, 0.5), None),
    "clamp_min": (lambda c, x: c.clamp(x, min=0.25), lambda F, t: t.clamp(min=0.25), None),
    "clamp_max": (lambda c, x: c.clamp(x, max=0.25), lambda F, t: t.clamp(max=0.25), None),
    "clamp_crossed": (lambda c, x: c.clamp(x, 1.0, -1.0), lambda F, t: t.clamp(1.0, -1.0), None),
    "logsigmoid": (lambda c, x: c.logsigmoid(x), lambda F, t: F.logsigmoid(t),
                   ref.ACTIVATIONS["logsigmoid"]),
    "softsign": (lambda c, x: c.softsign(x), lambda F, t: F.softsign(t),
                 ref.ACTIVATIONS["softsign"]),
    "tanhshrink": (lambda c, x: c.tanhshrink(x), lambda F, t: F.tanhshrink(t),
                   ref.ACTIVATIONS["tanhshrink"]),
    "hardshrink": (lambda c, x: c.hardshrink(x), lambda F, t: F.hardshrink(t),
                   ref.ACTIVATIONS["hardshrink"]),
    "hardshrink_lambd": (lambda c, x: c.hardshrink(x, 3.0), lambda F, t: F.hardshrink(t, 3.0),
                         None),
    "softshrink": (lambda c, x: c.softshrink(x), lambda F, t: F.softshrink(t),
                   ref.ACTIVATIONS["softshrink"]),
    "softshrink_lambd": (lambda c, x: c.softshrink(x, 2.0), lambda F, t: F.softshrink(t, 2.0),
                         None),
    "abs": (lambda c, x: c.abs(x), lambda F, t: t.abs(), ref.ACTIVATIONS["abs"]),
    "exp": (lambda c, x: c.exp(x), lambda F, t: t.exp(), ref.ACTIVATIONS["exp"]),
    "log": (lambda c, x: c.log(x), lambda F, t: t.log(), ref.ACTIVATIONS["log"]),
    "rsqrt": (lambda c, x: c.rsqrt(x), lambda F, t: t.rsqrt(), ref.ACTIVATIONS["rsqrt"]),
    "erf": (lambda c, x: c.erf(x), lambda F, t: t.erf(), None),
    "threshold": (lambda c, x: c.threshold(x, 0.1, 20.0), lambda F, t: F.threshold(t, 0.1, 20.0),
                  None),
    "threshold_negative": (lambda c, x: c.threshold(x, -1.0, -7.5),
                           lambda F, t: F.threshold(t, -1.0, -7.5), None),
}


@pytest.mark.parametrize("name", list(ACTS))
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), (3, 0, 2)], ids=str)
def test_activations(clconv, dev, rng, name, shape):
    torch = import_torch()
    ours, theirs, oracle = ACTS[name]
    for dtype in _dtypes(dev):
        x = _special(rng, shape, dtype) if math.prod(shape) >= 9 else random_array(rng, shape, dtype)
        if name == "gelu" and dtype == np.float32:
            # torch's float32 gelu(+inf) is NaN with its AVX-512 kernels, +inf with its AVX2 and
            # scalar ones (and in float64, compared): clconv gives +inf
            x[np.isposinf(x)] = 5.0
        got = ours(clconv, x)
        assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == x.shape
        want = theirs(torch.nn.functional, torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert_close(got, want, dtype, magnitude=4)
        if oracle is not None:
            with np.errstate(invalid="ignore", over="ignore"):
                exact = oracle(x.astype(np.float64))
            assert_close(got, exact, dtype, magnitude=4)


def test_activation_on_device_arrays_and_out(clconv, dev, rng):
    x = random_array(rng, (3, 4, 5))
    xd = cla.to_device(dev.queue, x)
    y = clconv.silu(xd)
    assert isinstance(y, cla.Array)
    assert_close(y.get(), ref.ACTIVATIONS["silu"](x.astype(np.float64)), np.float32)
    out = cla.empty(dev.queue, x.shape, np.float32)
    assert clconv.relu(xd, out=out) is out
    assert_exact(out.get(), np.maximum(x, 0))
    assert clconv.relu(xd, inplace=True) is xd
    assert_exact(xd.get(), np.maximum(x, 0))
    h = x.copy()
    assert clconv.hardtanh(h, inplace=True) is h
    assert_exact(h, np.clip(x, -1, 1))
    y0 = clconv.tanh(np.asarray(0.5, np.float32))  # 0-d
    assert y0.shape == () and abs(float(y0) - math.tanh(0.5)) < 1e-6


@pytest.mark.parametrize("a_shape, b_shape", [
    ((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (3, 1, 1)), ((2, 3, 4, 5), (2, 3, 1, 1)),
    ((2, 3, 4, 5), (1, 3, 1, 1)), ((2, 3, 4, 5), (2, 1, 4, 5)), ((2, 3, 1, 1), (2, 3, 4, 5)),
    ((2, 3, 4, 5, 6), (1, 3, 1, 1, 1)), ((4, 5), (5,)), ((2, 3, 4), ()), ((0, 3, 2), (3, 1)),
], ids=str)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "minimum"])
def test_binary_broadcast(clconv, dev, rng, op, a_shape, b_shape):
    for dtype in _dtypes(dev):
        a, b = random_array(rng, a_shape, dtype), random_array(rng, b_shape, dtype)
        if op == "div":  # divisors away from 0, so that the quotients stay O(1)
            b = (np.sign(b) * (np.abs(b) + 0.5)).astype(dtype) if b.ndim else dtype(2.5)
        f = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
             "maximum": np.maximum, "minimum": np.minimum}[op]
        want = f(a.astype(np.float64), b.astype(np.float64))
        got = getattr(clconv, op)(a, b)
        assert got.shape == want.shape and got.dtype == dtype
        assert_close(got, want, dtype, magnitude=16)
        got = getattr(clconv, op)(a, b, activation=("leaky_relu", 0.1))
        assert_close(got, np.where(want > 0, want, 0.1 * want), dtype, magnitude=16)


def test_binary_kinds_scalars_and_nan(clconv, dev, rng):
    torch = import_torch()
    x = _special(rng, (2, 3, 4, 4), np.float32)
    gate = random_array(rng, (2, 3, 1, 1))
    xd = cla.to_device(dev.queue, x)
    y = clconv.mul(xd, gate)  # a device operand gives a device result
    assert isinstance(y, cla.Array)
    want = (torch.from_numpy(x) * torch.from_numpy(gate)).numpy()
    np.testing.assert_array_equal(np.isnan(y.get()), np.isnan(want))
    assert_close(y.get(), want, np.float32, magnitude=16)
    y = clconv.add(gate, xd, activation="relu")
    assert isinstance(y, cla.Array)
    want = torch.relu(torch.from_numpy(gate) + torch.from_numpy(x)).numpy()
    assert_close(y.get(), want, np.float32, magnitude=16)
    assert_close(clconv.add(x, 2.5), x.astype(np.float64) + 2.5, np.float32, magnitude=16)
    assert_close(clconv.mul(x, 2.0), x.astype(np.float64) * 2, np.float32, magnitude=16)
    # sub: either side a number or broadcast, NaN and Inf as torch (Inf - Inf = NaN)
    for a, b in ((x, 2.5), (2.5, x), (gate, xd), (xd, x[::-1].copy())):
        got = clconv.sub(a, b)
        got = got.get() if isinstance(got, cla.Array) else got
        ta, tb = (torch.from_numpy(v.get() if isinstance(v, cla.Array) else v)
                  if not isinstance(v, float) else v for v in (a, b))
        want = torch.sub(ta, tb).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert_close(got, want, np.float32, magnitude=16)
    # a bool is the number 0 or 1 (x + True), as torch's (which refuses it in sub); two
    # numbers are torch's TypeError
    for a, b in ((x, True), (False, gate), (xd, np.bool_(True))):
        with pytest.raises(TypeError, match="bool"):
            clconv.sub(a, b)
    for op in ("add", "mul", "div"):
        for a, b in ((x, True), (False, gate), (xd, True)):
            got = getattr(clconv, op)(a, b)
            got = got.get() if isinstance(got, cla.Array) else got
            ta, tb = (v if isinstance(v, bool) else torch.from_numpy(
                v.get() if isinstance(v, cla.Array) else v) for v in (a, b))
            want = getattr(torch, op)(ta, tb).numpy()
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want)
    for op in ("add", "sub", "mul", "div", "maximum"):
        for a, b in ((2.0, 3.0), (np.int32(-1), np.int32(0)), (True, 1.5)):
            with pytest.raises(TypeError, match="both numbers"):
                getattr(clconv, op)(a, b)


def test_div_and_sqrt_as_torch(clconv, dev, rng):
    """clconv.div: IEEE quotients as torch's (x / 0 is +-inf by the zero's sign, 0 / 0 and
    inf / inf NaN), numbers on either side, broadcasting, device operands; clconv.sqrt: NaN for
    negative inputs, sqrt(-0) = -0, inf and NaN kept."""
    torch = import_torch()
    for dtype in _dtypes(dev):
        x = _special(rng, (2, 3, 4, 4), dtype)
        d = _special(rng, (3, 1, 4), dtype)
        d.reshape(-1)[9:12] = [0.0, -0.0, np.inf]
        tx, td = torch.from_numpy(x), torch.from_numpy(d)
        for a, b, want in ((x, d, tx / td), (x, 2.5, tx / 2.5), (1.5, d, 1.5 / td),
                           (cla.to_device(dev.queue, x), d, tx / td)):
            got = clconv.div(a, b)
            got = got.get() if isinstance(got, cla.Array) else got
            want = want.numpy()
            assert got.dtype == dtype
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_array_equal(np.isinf(got) * np.sign(got),
                                          np.isinf(want) * np.sign(want))
            assert_close(np.nan_to_num(got, posinf=0, neginf=0),
                         np.nan_to_num(want, posinf=0, neginf=0), dtype, magnitude=16)
        got = clconv.div(x, d, activation="relu")
        np.testing.assert_array_equal(np.isnan(got), np.isnan(torch.relu(tx / td).numpy()))
        r = clconv.sqrt(x)
        want = torch.sqrt(tx).numpy()
        np.testing.assert_array_equal(np.isnan(r), np.isnan(want))
        kept = ~np.isnan(want)  # (a NaN's sign bit is not specified)
        np.testing.assert_array_equal(np.signbit(r[kept]), np.signbit(want[kept]))
        assert_close(np.nan_to_num(r, posinf=0), np.nan_to_num(want, posinf=0), dtype)
    with pytest.raises(ValueError, match="rounding_mode"):
        clconv.div(x, d, rounding_mode="nearest")


def test_torch_tensors_with_numbers_in_place_and_as_out(clconv, dev):
    """torch tensors beside Python numbers take the tensor's dtype; inplace=True and out= write
    into a CPU tensor's own memory and return that tensor, as torch does."""
    torch = import_torch()
    t = torch.tensor([-1.0, 2.0, 0.5])
    np.testing.assert_array_equal(clconv.add(t, 1.5), [0.5, 3.5, 2.0])
    np.testing.assert_array_equal(clconv.sub(1.5, t), [2.5, -0.5, 1.0])
    if dev.fp64:
        got = clconv.mul(t.double(), 2)
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, [-2.0, 4.0, 1.0])
    x = torch.tensor([-1.0, 2.0, float("nan"), -0.5])
    assert clconv.relu(x, inplace=True) is x
    np.testing.assert_array_equal(x.numpy(), [0.0, 2.0, np.nan, 0.0])
    out = torch.empty(3)
    assert clconv.div(t, 2.0, out=out) is out
    np.testing.assert_array_equal(out.numpy(), [-0.5, 1.0, 0.25])
    with pytest.raises(ValueError, match="out must have shape"):
        clconv.add(t, t, out=torch.empty(4))


@pytest.mark.parametrize("mode", ["trunc", "floor"])
def test_div_rounding_modes_bitwise_as_torch(clconv, dev, rng, mode):
    """torch.div's rounding modes: 'trunc' and 'floor' (torch's fmod-based steps, so results and
    the sign of zero match bitwise), x / 0 as true division, infinities and NaN, integers, numbers
    on either side and broadcasting; any other mode is refused as torch's."""
    torch = import_torch()
    for dtype in _dtypes(dev):
        a = (random_array(rng, (3, 40), np.float64) * 10).astype(dtype)
        b = (random_array(rng, (40,), np.float64) * 3).astype(dtype)
        a[0, :12] = [0, -0.0, 5, -5, np.inf, -np.inf, np.nan, 7, -7, 1e30, 3, -3]
        b[:12] = [3, 3, 0, 0, 2, -2, 1, -0.0, 0.0, 1e-30, 0.5, -0.5]
        a[1] = np.round(a[1])
        b[20:] = np.round(b[20:]) + 0.5
        for x, y in ((a, b), (a, 2.5), (-7.5, b)):
            want = torch.div(*(torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                               for v in (x, y)), rounding_mode=mode).numpy()
            got = clconv.div(x, y, rounding_mode=mode)
            np.testing.assert_array_equal(got, want)
            finite = ~np.isnan(want)  # (a NaN's sign is not torch's contract)
            np.testing.assert_array_equal(np.signbit(got[finite]), np.signbit(want[finite]))
    with pytest.raises(ValueError, match="rounding_mode"):
        clconv.div(a, b, rounding_mode="round")


@pytest.mark.parametrize("name", ["leaky_relu", "elu"])
@pytest.mark.parametrize("param", [0.0, -0.0, 0.5])
def test_a_zero_slope_keeps_nan_and_signs_as_torch(clconv, dev, name, param):
    """leaky_relu(x, 0) and elu(x, 0): -inf * 0 and NaN stay NaN and zeros keep torch's signs,
    as a function, fused into a convolution's store and after one in a converted model (Mesa's
    compiler folded the product with the literal 0 to +0 on rusticl)."""
    torch = import_torch()
    x = np.array([np.nan, -np.inf, np.inf, -1.0, 2.0, -0.0, 0.0, -3e38], np.float32)
    layer = torch.nn.LeakyReLU(param) if name == "leaky_relu" else torch.nn.ELU(param)
    conv = torch.nn.Conv2d(1, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(-1.0)
    model = torch.nn.Sequential(conv, layer).eval()
    x4 = torch.from_numpy(x.reshape(1, 1, 2, 4))

    def check(got, want):
        got, want = np.asarray(got).reshape(-1), want.numpy().reshape(-1)
        np.testing.assert_array_equal(got, want)
        kept = ~np.isnan(want)  # (a NaN's sign is not torch's contract)
        np.testing.assert_array_equal(np.signbit(got[kept]), np.signbit(want[kept]))
    check(getattr(clconv, name)(x, param), layer(torch.from_numpy(x)))
    with torch.no_grad():
        want = model(x4)
    check(clconv.conv2d(x.reshape(1, 1, 2, 4), -np.ones((1, 1, 1, 1), np.float32),
                        activation=(name, param)), want)
    from clconv.torch import convert

    with torch.no_grad():
        check(convert(model)(x4), want)


@pytest.mark.parametrize("beta, threshold", [(0.0, 20.0), (-0.0, 20.0), (0.0, -1.0),
                                             (math.nan, 20.0), (2.0, math.nan)])
def test_softplus_of_zero_or_nan_beta_as_torch(clconv, dev, beta, threshold):
    """softplus with beta +-0 (+-inf for finite x, NaN for the others: Mesa folded x * 0 on
    rusticl) or NaN (NaN, and a NaN gradient: PoCL's exp of the folded NaN gave 0 for some x),
    as a function, fused into a convolution's store, and nn.Softplus's backward."""
    torch = import_torch()
    x = np.array([np.nan, -np.inf, np.inf, 1.0, -2.0, 0.0, -0.0, 30.0], np.float32)
    t = torch.from_numpy(x.copy()).requires_grad_()
    want = torch.nn.functional.softplus(t, beta, threshold)
    want.backward(torch.ones(8))
    want = want.detach().numpy()
    np.testing.assert_array_equal(clconv.softplus(x, beta, threshold), want)
    fused = clconv.conv1d(x.reshape(1, 1, 8), np.ones((1, 1, 1), np.float32),
                          activation=("softplus", beta, threshold))
    np.testing.assert_array_equal(fused.reshape(-1), want)
    layer = clconv.nn.Softplus(beta, threshold)
    layer(x)
    np.testing.assert_array_equal(np.asarray(layer.backward(np.ones(8, np.float32))),
                                  t.grad.numpy())


def test_tanh_saturates_as_torch(clconv, dev):
    """tanh is exactly +-1 from |x| = 9.0108404 on, where torch's is (PoCL's float tanh stopped
    one ulp short), so that gelu's tanh form is -0 for large negative x and NaN at -inf, as
    torch's; through the fused epilogue of a convolution too. Below that, within an ulp."""
    torch = import_torch()
    far = np.array([-20, -1e4, -1e30, -np.inf, 20, np.inf, np.nan, 0.0], np.float32)
    t = torch.from_numpy(far)
    np.testing.assert_array_equal(clconv.tanh(far), torch.tanh(t).numpy())
    got, want = clconv.gelu(far, approximate="tanh"), torch.nn.functional.gelu(t, approximate="tanh")
    np.testing.assert_array_equal(got, want.numpy())
    assert (got[:3] == 0).all() and np.signbit(got[:3]).all() and np.isnan(got[3])  # -0 .., NaN
    w = np.ones((1, 1, 1, 1), np.float32)
    y = clconv.conv2d(far.reshape(1, 1, 2, 4), w, activation=("gelu", "tanh"))
    np.testing.assert_array_equal(y.reshape(-1), want.numpy())
    sweep = np.arange(8.99, 9.03, 2e-6, dtype=np.float32)
    sweep = np.concatenate([sweep, -sweep])
    got = clconv.tanh(sweep)
    np.testing.assert_allclose(got, torch.tanh(torch.from_numpy(sweep)).numpy(), rtol=1.2e-7,
                               atol=0)
    saturated = np.abs(sweep) >= np.float32(9.0108404)
    np.testing.assert_array_equal(got[saturated], np.sign(sweep[saturated]))


def test_add_sub_alpha_as_torch(clconv, dev, rng):
    """torch.add/sub's alpha: input +- alpha * other in one rounding, as torch's CPU kernel for
    operands of one shape (bitwise its results there; its broadcasting loops round the product
    on some elements, hence a tolerance with a broadcast operand); a NaN or Inf alpha, alpha 0
    against an Inf (NaN, as torch's 0 * inf), a number as other, device operands; a Boolean alpha
    is refused."""
    torch = import_torch()
    for dtype in _dtypes(dev):
        a = _special(rng, (3, 4, 5), dtype)
        for b in (random_array(rng, (3, 4, 5), dtype), random_array(rng, (4, 1), dtype)):
            b.reshape(-1)[3] = np.inf  # where a is 0: 0 + 0 * inf is NaN with alpha 0
            for alpha in (2, 0.3, -1.5, 0, math.nan, math.inf):
                for op in ("add", "sub"):
                    want = getattr(torch, op)(torch.from_numpy(a), torch.from_numpy(b),
                                              alpha=alpha).numpy()
                    got = getattr(clconv, op)(a, b, alpha=alpha)
                    if b.shape == a.shape:
                        np.testing.assert_array_equal(got, want)
                    else:
                        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
                        assert_close(got, want, dtype, magnitude=16)
        want = torch.add(torch.from_numpy(a), 2.5, alpha=0.7).numpy()  # a broadcast 0-d other
        got = clconv.add(cla.to_device(dev.queue, a), 2.5, alpha=0.7, activation=None)
        np.testing.assert_array_equal(np.isnan(got.get()), np.isnan(want))
        assert_close(got.get(), want, dtype, magnitude=16)
    got = clconv.sub(a, b, alpha=0.5, activation="relu")
    want = torch.relu(torch.sub(torch.from_numpy(a), torch.from_numpy(b), alpha=0.5)).numpy()
    np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="alpha"):
        clconv.add(a, b, alpha=True)
    with pytest.raises(TypeError, match="alpha"):
        clconv.sub(a, b, alpha="2")


def test_add_sub_alpha_signed_zeros_as_torch(clconv, dev):
    """The sign of a zero result as torch's: sub computes input + (-alpha) * other with -alpha
    negated as the number given (an int 0 gives +0, a float 0.0 -0.0, -0.0 +0), add input +
    alpha * other; 0.0 and -0.0 (equal in Python) get plans of their own."""
    torch = import_torch()
    for dtype in _dtypes(dev):
        a = np.array([-0.0, 0.0, -0.0, -0.0, 0.0], dtype)
        b = np.array([3.0, -3.0, -3.0, 0.0, -0.0], dtype)
        for alpha in (0, 0.0, -0.0, 0, 2, -0.0, 0.0):
            for op in ("add", "sub"):
                want = getattr(torch, op)(torch.from_numpy(a), torch.from_numpy(b),
                                          alpha=alpha).numpy()
                got = getattr(clconv, op)(a, b, alpha=alpha)
                np.testing.assert_array_equal(got, want)
                np.testing.assert_array_equal(np.signbit(got), np.signbit(want),
                                              err_msg=f"{op} alpha={alpha!r} {dtype}")


def test_clamp_nan_bound_as_torch(clconv, dev, rng):
    """A NaN bound of clamp / hardtanh makes every value NaN (torch's), the input's shape, dtype
    and kind kept; finite bounds leave NaN inputs NaN."""
    torch = import_torch()
    x = _special(rng, (2, 3, 4), np.float32)
    t = torch.from_numpy(x)
    for kw in ({"min": math.nan}, {"max": math.nan}, {"min": -1.0, "max": math.nan},
               {"min": math.nan, "max": 1.0}, {"min": -1.0, "max": 1.0}):
        want = torch.clamp(t, **kw).numpy()
        got = clconv.clamp(x, **kw)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    got = clconv.hardtanh(cla.to_device(dev.queue, x), math.nan, 1.0)
    assert isinstance(got, cla.Array)
    np.testing.assert_array_equal(got.get(), torch.nn.functional.hardtanh(t, math.nan, 1.0))
    y = x.copy()
    assert clconv.hardtanh(y, -1.0, math.nan, inplace=True) is y
    assert np.isnan(y).all()


def test_clamp_with_array_bounds_as_torch(clconv, dev, rng):
    """Array bounds that broadcast with the input (torch.clamp's tensor min / max): NaN from the
    input or a bound, min > max giving max, numpy and device operands; a number beside an array
    bound is torch's TypeError."""
    torch = import_torch()
    x = _special(rng, (2, 3, 4), np.float32)
    lo = random_array(rng, (3, 1))
    hi = lo + random_array(rng, (3, 1)) - 0.3  # some min > max
    hi[1, 0] = np.nan
    t, tlo, thi = (torch.from_numpy(v) for v in (x, lo, hi))
    for a, b, ta, tb in ((lo, None, tlo, None), (None, hi, None, thi), (lo, hi, tlo, thi)):
        want = torch.clamp(t, ta, tb).numpy()
        for got in (clconv.clamp(x, a, b), clconv.clamp(cla.to_device(dev.queue, x), a, b).get()):
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="or both be arrays"):
        clconv.clamp(x, lo, 0.5)
    # a 0-d bound is its number (torch parses a 0-d tensor as a number), beside a number too
    want = torch.clamp(t, -0.2, torch.tensor(0.5)).numpy()
    for bound in (np.array(0.5, np.float32), torch.tensor(0.5)):
        np.testing.assert_array_equal(clconv.clamp(x, -0.2, bound), want)


@pytest.mark.parametrize("call, torch_call", [
    (lambda c, x: c.add(x, x, alpha=1e40), lambda F, t: t.add(t, alpha=1e40)),
    (lambda c, x: c.sub(x, x, alpha=-1e39), lambda F, t: t.sub(t, alpha=-1e39)),
    (lambda c, x: c.clamp(x, 1e39), lambda F, t: t.clamp(1e39)),
    (lambda c, x: c.clamp(x, None, -1e39), lambda F, t: t.clamp(None, -1e39)),
    (lambda c, x: c.hardtanh(x, -1e39, 1.0), lambda F, t: F.hardtanh(t, -1e39, 1.0)),
    (lambda c, x: c.leaky_relu(x, 1e39), lambda F, t: F.leaky_relu(t, 1e39)),
    (lambda c, x: c.elu(x, 1e39), lambda F, t: F.elu(t, 1e39)),
    (lambda c, x: c.softplus(x, 1.0, 1e39), lambda F, t: F.softplus(t, 1.0, 1e39)),
    (lambda c, x: c.hardshrink(x, 1e39), lambda F, t: F.hardshrink(t, 1e39)),
    (lambda c, x: c.threshold(x, 0.0, 1e39), lambda F, t: F.threshold(t, 0.0, 1e39)),
    # what torch takes: numbers in range, infinities, a number operand that overflows
    (lambda c, x: c.add(x, x, alpha=3e38), lambda F, t: t.add(t, alpha=3e38)),
    (lambda c, x: c.clamp(x, -np.inf, np.inf), lambda F, t: t.clamp(-np.inf, np.inf)),
    (lambda c, x: c.add(x, 1e40), lambda F, t: t.add(1e40)),
], ids=lambda v: "")
def test_number_arguments_past_the_dtype_as_torch(clconv, dev, rng, call, torch_call):
    """A parameter torch converts to the tensor's dtype is refused where that overflows (torch's
    "cannot be converted ... without overflow"); a float64 input takes it (where the device has
    float64)."""
    torch = import_torch()
    F = torch.nn.functional
    x = random_array(rng, (2, 3))
    try:
        want = torch_call(F, torch.from_numpy(x)).numpy()
    except RuntimeError:
        with pytest.raises(ValueError, match="without overflow"):
            call(clconv, x)
        if not dev.fp64:
            return
        x64 = x.astype(np.float64)
        np.testing.assert_array_equal(call(clconv, x64), torch_call(F, torch.from_numpy(x64)))
        return
    np.testing.assert_array_equal(call(clconv, x), want)


def test_number_range_of_float16_as_torch():
    """float16: torch converts clamp's and hardtanh's bounds, add's alpha, the shrinks' lambd and
    threshold's value to half (past 65504: refused), leaky_relu's, elu's, celu's and softplus's
    parameters and threshold's threshold to float."""
    from clconv.ops.scalars import fits_dtype

    with pytest.raises(ValueError, match="without overflow"):
        fits_dtype("clamp", "min", 1e5, np.float16)
    fits_dtype("leaky_relu", "negative_slope", 1e5, np.float16, in_float=True)
    with pytest.raises(ValueError, match="without overflow"):
        fits_dtype("leaky_relu", "negative_slope", 1e39, np.float16, in_float=True)
    for value in (65504, -np.inf, np.nan, 2**200):
        fits_dtype("add", "alpha", value, np.float64)
        if value != 2**200:
            fits_dtype("add", "alpha", value, np.float16)


def test_binary_bad_arguments(clconv, rng):
    a = random_array(rng, (2, 3, 4))
    with pytest.raises(ValueError, match="broadcast"):
        clconv.add(a, random_array(rng, (4, 3)))
    with pytest.raises(TypeError, match="dtype"):
        clconv.mul(a, a.astype(np.float64))
    with pytest.raises(ValueError, match="activation"):
        clconv.add(a, a, activation="swish")


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (4, 3), (2, 3, 7), (2, 3, 2, 3, 2), (0, 3, 4)],
                         ids=str)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_inference(clconv, dev, rng, shape, affine):
    torch = import_torch()
    c = shape[1]
    for dtype in _dtypes(dev):
        x = random_array(rng, shape, dtype)
        mean = random_array(rng, (c,), dtype)
        var = (rng.random(c) + 0.1).astype(dtype)
        w = random_array(rng, (c,), dtype) if affine else None
        b = random_array(rng, (c,), dtype) if affine else None
        got = clconv.batch_norm(x, mean, var, w, b, eps=1e-3)
        want = ref.batch_norm(*(None if v is None else v.astype(np.float64)
                                for v in (x, mean, var, w, b)), eps=1e-3)
        assert_close(got, want, dtype, magnitude=30)
        tw = None if w is None else torch.from_numpy(w)
        tb = None if b is None else torch.from_numpy(b)
        want_t = torch.nn.functional.batch_norm(torch.from_numpy(x), torch.from_numpy(mean),
                                                torch.from_numpy(var), tw, tb, eps=1e-3).numpy()
        assert_close(got, want_t, dtype, magnitude=30)


def test_batch_norm_fused_activation_and_errors(clconv, dev, rng):
    x = random_array(rng, (2, 3, 4, 4))
    mean, var = random_array(rng, (3,)), np.ones(3, np.float32)
    got = clconv.batch_norm(cla.to_device(dev.queue, x), mean, var, activation="relu6")
    assert isinstance(got, cla.Array)
    want = ref.ACTIVATIONS["relu6"](ref.batch_norm(x.astype(np.float64), mean, var))
    assert_close(got.get(), want, np.float32, magnitude=10)
    with pytest.raises(ValueError, match="running_mean and running_var are required"):
        clconv.batch_norm(x, None, None)
    with pytest.raises(ValueError, match="running_var"):
        clconv.batch_norm(x, mean, np.ones(4, np.float32))
    with pytest.raises(ValueError, match="weight"):
        clconv.batch_norm(x, mean, var, weight=np.ones(2, np.float32))


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 5), (3, 2, 7), (2, 3, 2, 3, 2)], ids=str)
@pytest.mark.parametrize("stats", ["numpy", "device", "device view", "tensor", None])
def test_batch_norm_training_as_torch(clconv, dev, rng, shape, stats):
    """training=True: normalised by the batch's mean and biased variance; the running statistics
    (numpy arrays, device arrays or CPU tensors, updated in place) move by momentum towards the
    batch mean and unbiased variance, as torch's F.batch_norm. Oracle: numpy in float64."""
    torch = import_torch()
    c, axes = shape[1], tuple(i for i in range(len(shape)) if i != 1)
    for dtype in _dtypes(dev):
        x = random_array(rng, shape, dtype) * 3 + 1
        w, b = random_array(rng, (c,), dtype), random_array(rng, (c,), dtype)
        rm0, rv0 = random_array(rng, (c,), dtype), (rng.random(c) + 0.5).astype(dtype)
        x64 = x.astype(np.float64)
        mean, var = x64.mean(axis=axes), x64.var(axis=axes)
        count = x.size // c
        bshape = (1, c) + (1,) * (len(shape) - 2)
        want = (x64 - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-4) \
            * w.reshape(bshape) + b.reshape(bshape)
        if stats is None:
            rm = rv = None
        elif stats == "numpy":
            rm, rv = rm0.copy(), rv0.copy()
        elif stats == "device":
            rm, rv = cla.to_device(dev.queue, rm0), cla.to_device(dev.queue, rv0)
        elif stats == "device view":  # every other element of a buffer: written through it
            spread = lambda a: cla.to_device(dev.queue, np.stack([a, a * 0 + 7], 1).ravel())
            whole_m, whole_v = spread(rm0), spread(rv0)
            rm, rv = whole_m[::2], whole_v[::2]
        else:
            rm, rv = torch.from_numpy(rm0.copy()), torch.from_numpy(rv0.copy())
        got = clconv.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, eps=1e-4,
                                activation="relu")
        assert_close(got, np.maximum(want, 0), dtype, magnitude=30)
        t_rm, t_rv = torch.from_numpy(rm0.copy()), torch.from_numpy(rv0.copy())
        want_t = torch.nn.functional.batch_norm(
            torch.from_numpy(x), t_rm, t_rv, torch.from_numpy(w), torch.from_numpy(b),
            training=True, momentum=0.3, eps=1e-4).relu().numpy()
        assert_close(got, want_t, dtype, magnitude=30)
        if stats == "device view":
            np.testing.assert_array_equal(whole_m.get()[1::2], 7)
            np.testing.assert_array_equal(whole_v.get()[1::2], 7)
            rm, rv = whole_m.get()[::2], whole_v.get()[::2]
        if stats is not None:
            host = lambda a: a.get() if isinstance(a, cla.Array) else np.asarray(a)
            want_rm = 0.7 * rm0 + 0.3 * mean
            want_rv = 0.7 * rv0 + 0.3 * var * count / (count - 1)
            assert_close(host(rm), want_rm, dtype, magnitude=30)
            assert_close(host(rv), want_rv, dtype, magnitude=30)
            assert_close(host(rm), t_rm.numpy(), dtype, magnitude=30)
            assert_close(host(rv), t_rv.numpy(), dtype, magnitude=30)


def test_batch_norm_training_result_kinds(clconv, dev, rng):
    """training=True returns what the op returns for the input's kind (numpy for numpy and CPU
    tensors, a device array for one), and writes into `out` when given."""
    torch = import_torch()
    x = random_array(rng, (3, 2, 4, 5))
    want = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True).numpy()
    got = clconv.batch_norm(x, None, None, training=True)
    assert isinstance(got, np.ndarray)
    assert_close(got, want, np.float32, magnitude=10)
    assert isinstance(clconv.batch_norm(torch.from_numpy(x), None, None, training=True),
                      np.ndarray)
    out = np.empty_like(x)
    assert clconv.batch_norm(x, None, None, training=True, out=out) is out
    assert_close(out, want, np.float32, magnitude=10)
    got_d = clconv.batch_norm(cla.to_device(dev.queue, x), None, None, training=True)
    assert isinstance(got_d, cla.Array)
    assert_close(got_d.get(), want, np.float32, magnitude=10)


def test_batch_norm_training_errors_as_torch(clconv, dev, rng):
    x = random_array(rng, (2, 3, 4))
    with pytest.raises(ValueError, match="both be None or neither"):
        clconv.batch_norm(x, np.zeros(3, np.float32), None, training=True)
    with pytest.raises(TypeError, match="momentum"):
        clconv.batch_norm(x, None, None, training=True, momentum=None)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        clconv.batch_norm(random_array(rng, (1, 3, 1)), None, None, training=True)
    with pytest.raises(TypeError, match="training must be a bool"):
        clconv.batch_norm(x, None, None, training="yes")


def test_batch_norm_training_of_an_empty_batch_as_torch(clconv, dev):
    """N = 0 with batch statistics: an empty result, the running statistics unchanged (torch's:
    only one value a channel is its error); the clconv.nn layer also counts the batch."""
    torch = import_torch()
    for shape in ((0, 3, 4, 4), (0, 3)):
        mean, var = np.full(3, 0.5, np.float32), np.full(3, 2.0, np.float32)
        got = clconv.batch_norm(np.zeros(shape, np.float32), mean, var, training=True)
        assert got.shape == shape and got.dtype == np.float32
        np.testing.assert_array_equal(mean, 0.5)
        np.testing.assert_array_equal(var, 2.0)
        assert clconv.batch_norm(cla.to_device(dev.queue, np.zeros(shape, np.float32)), None,
                                 None, training=True).shape == shape
    for kwargs in ({}, {"momentum": None}, {"track_running_stats": False}):
        ours, theirs = clconv.nn.BatchNorm2d(3, **kwargs), torch.nn.BatchNorm2d(3, **kwargs)
        for mode in ("train", "eval"):
            getattr(ours, mode)()
            getattr(theirs, mode)()
            y = ours(np.zeros((0, 3, 4, 4), np.float32))
            want = theirs(torch.zeros(0, 3, 4, 4))
            assert y.shape == tuple(want.shape)
            assert ours.backward(np.zeros_like(y)).shape == y.shape
            np.testing.assert_array_equal(ours.weight_grad, np.zeros(3, np.float32))
            np.testing.assert_array_equal(ours.bias_grad, np.zeros(3, np.float32))
            if theirs.running_mean is not None:
                np.testing.assert_array_equal(ours.running_mean, theirs.running_mean.numpy())
                np.testing.assert_array_equal(ours.running_var, theirs.running_var.numpy())
                assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)


@pytest.mark.parametrize("dim", [0, 1, 2, -1, 3])
def test_cat(clconv, dev, rng, dim):
    base = [2, 3, 4, 5]
    arrays = []
    for extra in (1, 3, 0, 2):
        shape = list(base)
        shape[dim] = extra
        arrays.append(random_array(rng, tuple(shape)))
    got = clconv.cat(arrays, dim)
    assert_exact(got, np.concatenate(arrays, dim))
    mixed = [cla.to_device(dev.queue, a) if i % 2 else a for i, a in enumerate(arrays)]
    got = clconv.cat(mixed, dim=dim)
    assert isinstance(got, cla.Array)
    assert_exact(got.get(), np.concatenate(arrays, dim))


def test_cat_default_dim_and_errors(clconv, rng):
    torch = import_torch()
    a, b = random_array(rng, (2, 3)), random_array(rng, (1, 3))
    assert_exact(clconv.cat((a, b)), torch.cat((torch.from_numpy(a), torch.from_numpy(b))).numpy())
    with pytest.raises(ValueError, match="tensors\\[1\\]"):
        clconv.cat([a, b], dim=1)
    with pytest.raises(IndexError, match="dim"):
        clconv.cat([a, a], dim=2)
    with pytest.raises(ValueError, match="non-empty"):
        clconv.cat([])
    with pytest.raises(TypeError, match="sequence"):
        clconv.cat(a)
    with pytest.raises(IndexError):
        torch.cat([torch.from_numpy(a)] * 2, dim=2)


def test_cat_skips_1d_empty_arrays_as_torch(clconv, dev, rng):
    """torch.cat's legacy rule: a 1-d empty array (shape (0,)) is left out whatever the others'
    shapes; only such arrays give one of shape (0,); an empty array of another shape must fit."""
    torch = import_torch()
    a = random_array(rng, (2, 3))
    e = np.empty(0, np.float32)
    t = torch.from_numpy
    for arrays, dim in (([a, e, a], 0), ([e, a], 1), ([e, cla.to_device(dev.queue, a)], -1),
                        ([e, e], 0)):
        got = clconv.cat(arrays, dim)
        got = got.get() if isinstance(got, cla.Array) else got
        want = torch.cat([t(v.get() if isinstance(v, cla.Array) else v) for v in arrays], dim)
        assert_exact(got, want.numpy())
    with pytest.raises(ValueError, match="shape"):
        clconv.cat([a, np.empty((0, 5), np.float32)])
    # a left-out device array still makes the result a device array, as any device operand does
    got = clconv.cat([a, cla.to_device(dev.queue, e)])
    assert isinstance(got, cla.Array)
    assert_exact(got.get(), a)


def test_reshaping_ops_take_operands_as_the_others(clconv, rng):
    """flatten / pixel_shuffle / layer_norm read their operand as every op does: a bfloat16
    tensor is clconv's TypeError (not torch's raw one), big-endian numpy gives native results."""
    torch = import_torch()
    x = random_array(rng, (2, 8, 4, 4))
    for op in (lambda a: clconv.flatten(a), lambda a: clconv.pixel_shuffle(a, 2),
               lambda a: clconv.layer_norm(a, (4, 4))):
        with pytest.raises(TypeError, match="numpy cannot read"):
            op(torch.from_numpy(x).bfloat16())
        got = op(x.astype(">f4"))
        assert got.dtype == np.float32 and got.dtype.isnative
        np.testing.assert_array_equal(got, op(x))
    # what is not an array is a TypeError, for these as for every op (not a list's values, not a
    # string's rank)
    for op in (clconv.pixel_shuffle, clconv.pixel_unshuffle, clconv.channel_shuffle):
        with pytest.raises(TypeError, match="list"):
            op(x.tolist(), 2)
        with pytest.raises(TypeError, match="str"):
            op("abc", 1)


def test_flatten(clconv, dev, rng):
    torch = import_torch()
    x = random_array(rng, (2, 3, 4, 5))
    for args in ((), (1,), (1, 2), (0, -2), (-1,), (2, 3)):
        want = torch.flatten(torch.from_numpy(x), *args).numpy()
        assert_exact(clconv.flatten(x, *args), want)
    xd = cla.to_device(dev.queue, x)
    y = clconv.flatten(xd, 1)
    assert isinstance(y, cla.Array) and y.shape == (2, 60)
    assert y.base_data is xd.base_data  # a view: nothing copied
    strided = xd[:, :, :, ::2]
    assert_exact(clconv.flatten(strided, 1).get(), x[:, :, :, ::2].reshape(2, -1))
    assert clconv.flatten(np.float32(3.0) * np.ones((), np.float32)).shape == (1,)
    with pytest.raises(ValueError, match="start_dim"):
        clconv.flatten(x, 2, 1)
    with pytest.raises(IndexError, match="end_dim"):
        clconv.flatten(x, 0, 4)


@pytest.mark.parametrize("shape, slopes", [((2, 3, 4, 5), 3), ((2, 3, 4, 5), 1), ((4, 6), 6),
                                           ((2, 5, 7), 1)], ids=str)
def test_prelu_matches_torch(clconv, dev, rng, shape, slopes):
    """One slope or one per channel (dim 1); NaN, -0 and -Inf land as torch's kernel puts them."""
    torch = import_torch()
    x = random_array(rng, shape)
    x.flat[:3] = (np.nan, -0.0, -np.inf)
    w = random_array(rng, (slopes,))
    want = torch.nn.functional.prelu(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    for got in (clconv.prelu(x, w), clconv.prelu(cla.to_device(dev.queue, x), w).get()):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
        assert_close(got, want, np.float32, magnitude=16)
    with pytest.raises(ValueError, match="prelu"):
        clconv.prelu(x, random_array(rng, (shape[1] + 1,)))


def test_prelu_0d_as_torch(clconv):
    """A 0-d slope is one slope; a 0-d input stays 0-d."""
    torch = import_torch()
    x = np.array([[-2.0, 3.0], [-1.0, 0.5]], np.float32)
    slope = np.array(0.25, np.float32)
    want = torch.nn.functional.prelu(torch.from_numpy(x), torch.from_numpy(slope)).numpy()
    np.testing.assert_array_equal(clconv.prelu(x, slope), want)
    got = clconv.prelu(np.array(-2.0, np.float32), np.array([0.25], np.float32))
    assert got.shape == () and float(got) == -0.5


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_as_torch(clconv, dev, rng, op):
    """NaN from either side, -0 against 0 (the first of equal values), infinities, a number as
    either operand: torch's values bitwise (NaN's payload aside: torch's vector path makes its
    own)."""
    torch = import_torch()
    x = _special(rng, (3, 4, 5), np.float32)
    y = _special(rng, (3, 4, 5), np.float32)[::-1].copy()
    y.reshape(-1)[-4:] = [0.0, -0.0, np.nan, -np.inf]
    x.reshape(-1)[-4:] = [-0.0, 0.0, 1.0, np.nan]
    fn = getattr(torch, op)
    for a, b in ((x, y), (y, x), (x, y[:1, :, :1].copy())):
        got = getattr(clconv, op)(a, b)
        want = fn(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        nan = np.isnan(want)
        np.testing.assert_array_equal(got[~nan].view(np.int32), want[~nan].view(np.int32))
    got = getattr(clconv, op)(x, 0.5)
    want = fn(torch.from_numpy(x), torch.tensor(0.5)).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~np.isnan(got)], want[~np.isnan(want)])
