"""The other layers under Oclgrind: pooling (pool.cl), activations and their gradients, broadcasts,
linear's epilogue, batch norm and cat (elementwise.cl), clconv.torch's channels-first LayerNorm
(channel_norm.cl), local_response_norm.cl and squeeze_excitation.cl; the 64-bit index path of
each."""

from __future__ import annotations

import numpy as np
import pytest
import reference_layers as ref_layers

import clconv

from .support import arr, case_id, expect, expect_adjoint, mag, need_dtype

pytestmark = pytest.mark.sanitize

F32, F64 = np.float32, np.float64
nn = clconv.nn

#: (id, x shape, clconv call, oracle, reduction: 0 = exact, NaN planted)
_POOLS = [
    ("max_pool2d-k3-s2-p1-d2-ceil", (2, 2, 5, 6), lambda x: clconv.max_pool2d(x, 3, 2, 1, 2, True),
     lambda x: ref_layers.max_pool(x, 3, 2, 1, 2, True), 0, True),
    ("max_pool2d-k3-s2-p1-indices", (2, 2, 5, 6),  # the indexed kernel (training's)
     lambda x: clconv.max_pool2d(x, 3, 2, 1, return_indices=True)[0],
     lambda x: ref_layers.max_pool(x, 3, 2, 1), 0, True),
    ("max_pool1d", (1, 2, 7), lambda x: clconv.max_pool1d(x, 2, 1, 1),
     lambda x: ref_layers.max_pool(x, 2, 1, 1), 0, False),
    ("avg_pool3d-ceil-count_include_pad=False", (1, 2, 3, 4, 5),
     lambda x: clconv.avg_pool3d(x, 2, 2, 1, True, False),
     lambda x: ref_layers.avg_pool(x, 2, 2, 1, True, False), 8, False),
    ("avg_pool2d-divisor_override", (2, 2, 5, 6),
     lambda x: clconv.avg_pool2d(x, 3, 2, 1, divisor_override=4),
     lambda x: ref_layers.avg_pool(x, 3, 2, 1, divisor_override=4), 9, False),
    ("adaptive_avg_pool2d", (2, 2, 5, 6), lambda x: clconv.adaptive_avg_pool2d(x, (2, None)),
     lambda x: ref_layers.adaptive_pool(x, (2, None)), 30, False),
    ("adaptive_max_pool2d", (2, 2, 5, 6), lambda x: clconv.adaptive_max_pool2d(x, (3, 4)),
     lambda x: ref_layers.adaptive_pool(x, (3, 4), ref_layers.adaptive_max), 0, False),
]


@pytest.mark.parametrize("shape, run, oracle, reduction, nan",
                         [pytest.param(*c[1:], id=c[0]) for c in _POOLS])
def test_pool(rng, index_t, shape, run, oracle, reduction, nan):
    """Max (dilation, ceil_mode, NaN), average (count_include_pad, divisor_override) and adaptive
    pooling in 1-3 d."""
    x = arr(rng, shape)
    if nan:
        x[0, 1, 2, 2] = np.nan
    expect(run(x), oracle(x.astype(np.float64)), F32, reduction, mag(x) if reduction else 1.0)


@pytest.mark.parametrize("layer, shape", [
    pytest.param(lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True), (2, 2, 5, 6), id="MaxPool2d"),
    pytest.param(lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True), (2, 2, 5, 6), id="AvgPool2d"),
    pytest.param(lambda: nn.AdaptiveAvgPool2d((2, 4)), (2, 2, 5, 6), id="AdaptiveAvgPool2d"),
    pytest.param(lambda: nn.AdaptiveMaxPool2d((3, 2)), (2, 2, 5, 6), id="AdaptiveMaxPool2d"),
    pytest.param(lambda: nn.MaxPool3d(2, 1), (1, 2, 3, 4, 5), id="MaxPool3d"),
])
def test_pool_backward(rng, index_t, layer, shape):
    """Every pooling gradient kernel, as the adjoint of the layer's forward."""
    layer = layer()
    x = arr(rng, shape)
    y = layer(x)
    g = arr(rng, y.shape)
    expect_adjoint(x, y, g, layer.backward(g))


def _with_nan(rng) -> np.ndarray:
    x = arr(rng, (2, 3, 4))
    x[0, 0, 0] = np.nan
    return x


@pytest.mark.parametrize("name", ["relu", "silu", "gelu", "hardswish", "mish", "softplus",
                                  "logsigmoid", "softshrink", "exp"])
def test_activation(rng, index_t, name):
    x = _with_nan(rng)
    expect(getattr(clconv, name)(x), ref_layers.ACTIVATIONS[name](x.astype(np.float64)), F32, 1,
           4.0)


def test_relu_backward(rng, index_t):
    x = _with_nan(rng)
    relu = nn.ReLU()
    relu(x)
    g = arr(rng, x.shape)
    expect(relu.backward(g), np.where(x.astype(np.float64) <= 0, 0.0, g), F32, 0, 1.0)


def test_mul_channel_gate(rng, index_t):
    x, gate = _with_nan(rng), arr(rng, (2, 3, 1))
    expect(clconv.mul(x, gate), x.astype(np.float64) * gate, F32, 1, 30.0)  # x has NaN


def test_maximum_broadcast(rng, index_t):
    x, other = _with_nan(rng), arr(rng, (2, 3, 1))
    expect(clconv.maximum(x, other), np.maximum(x.astype(np.float64), other), F32, 0, 1.0)


def test_add_relu(rng, index_t):
    x, gate = _with_nan(rng), arr(rng, (2, 3, 1))
    expect(clconv.add(x, gate, activation="relu"),
           ref_layers.ACTIVATIONS["relu"](x.astype(np.float64) + gate), F32, 1, 10.0)


def test_linear_epilogue(rng, index_t):
    """Bias + residual + activation after a GEMM."""
    a, w, b, r = arr(rng, (5, 7)), arr(rng, (3, 7)), arr(rng, (3,)), arr(rng, (5, 3))
    want = a.astype(np.float64) @ w.T + b + r
    expect(clconv.linear(a, w, b, activation="relu", residual=r), np.maximum(want, 0), F32, 7,
           mag(a, w) + mag(b) + mag(r))


@pytest.mark.parametrize("rows", [1, 3])
def test_linear_few_rows(rng, index_t, monkeypatch, rows):
    """gemv.cl (a classifier at batch 1-4): k beyond a vector of 8 with a tail, bias, residual,
    activation."""
    from clconv.ops import linear

    monkeypatch.setattr(linear, "GEMV_KINDS", ("cpu", "gpu", "accelerator"))
    a, w, b, r = arr(rng, (rows, 19)), arr(rng, (5, 19)), arr(rng, (5,)), arr(rng, (rows, 5))
    want = a.astype(np.float64) @ w.T + b + r
    expect(clconv.linear(a, w, b, activation="relu", residual=r), np.maximum(want, 0), F32, 19,
           mag(a, w) + mag(b) + mag(r))


def test_linear_bias_gradient(rng, index_t):
    """nn.Linear with ReLU fused: its bias gradient from the output."""
    a = arr(rng, (5, 7))
    fc = nn.Linear(7, 3, activation="relu", rng=0)
    y = fc(a)
    g = arr(rng, y.shape)
    fc.backward(g)
    expect(fc.bias_grad, np.where(y <= 0, 0.0, g).sum(0), F32, 5, mag(g))


def test_batch_norm_inference(rng, index_t):
    x = arr(rng, (3, 2, 2, 3))
    mean, var, w, b = arr(rng, (2,)), np.abs(arr(rng, (2,))) + 0.5, arr(rng, (2,)), arr(rng, (2,))
    expect(clconv.batch_norm(x, mean, var, w, b),
           ref_layers.batch_norm(x.astype(np.float64), mean, var, w, b), F32, 4, 10.0)


@pytest.mark.parametrize("shape", [(3, 2, 2, 3), (2, 2, 16, 17), (2, 2, 16, 17)],
                         ids=["short", "long", "group"])
@pytest.mark.parametrize("what", ["forward", "backward", "running_mean"])
def test_batch_norm_training(rng, index_t, what, shape, request, monkeypatch):
    """BatchNorm2d in training: the batch statistics, their gradient, the running mean; rows of
    6 and 272 values a work-item per channel (CPUs), and of 272 a work-group per channel with
    local memory (as on GPUs: forced here)."""
    if request.node.callspec.id.endswith("group"):
        from clconv.ops import channels
        monkeypatch.setattr(channels, "_is_cpu", lambda dev: False)
    x = arr(rng, shape)
    bn = nn.BatchNorm2d(2)
    y = bn(x)
    xx = x.astype(np.float64)
    mu, var = xx.mean(axis=(0, 2, 3)), xx.var(axis=(0, 2, 3))
    if what == "forward":
        expect(y, ref_layers.batch_norm(xx, mu, var), F32, 18, 10.0)
    elif what == "running_mean":
        expect(bn.running_mean, 0.1 * mu, F32, 18, 1.0)
    else:
        g = arr(rng, x.shape).astype(np.float64)
        std = np.sqrt(var + 1e-5)[None, :, None, None]
        xhat = (xx - mu[None, :, None, None]) / std
        m = xx.size // 2
        want = (g - g.mean(axis=(0, 2, 3), keepdims=True)
                - xhat * (g * xhat).sum(axis=(0, 2, 3), keepdims=True) / m) / std
        expect(bn.backward(g.astype(np.float32)), want, F32, 18, 30.0)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax(rng, index_t, log):
    """softmax.cl along the middle dim (a strided slice), a NaN poisoning its slice."""
    x = _with_nan(rng)
    v = x.astype(np.float64)
    m = v.max(axis=1, keepdims=True)
    s = np.exp(v - m).sum(axis=1, keepdims=True)
    want = (v - m) - np.log(s) if log else np.exp(v - m) / s
    expect((clconv.log_softmax if log else clconv.softmax)(x, 1), want, F32, 3, 10.0)


def test_prelu(rng, index_t):
    x, w = _with_nan(rng), arr(rng, (3,))
    want = np.where(x > 0, x, w.reshape(1, 3, 1) * x).astype(np.float64)
    expect(clconv.prelu(x, w), want, F32, 1, 10.0)


def test_sub(rng, index_t):
    x, gate = _with_nan(rng), arr(rng, (2, 3, 1))
    expect(clconv.sub(gate, x), gate - x.astype(np.float64), F32, 1, 30.0)
    expect(clconv.sub(gate, x, alpha=0.5), gate - 0.5 * x.astype(np.float64), F32, 1, 30.0)
    expect(clconv.add(x, gate, alpha=-2), x.astype(np.float64) - 2 * gate, F32, 1, 30.0)
    divisor = gate + np.float32(3)  # away from 0
    for mode, f in (("trunc", np.trunc), ("floor", np.floor)):
        expect(clconv.div(x, divisor, rounding_mode=mode),
               f(x.astype(np.float64) / divisor), F32, 1, 30.0)


@pytest.mark.parametrize("mode, pad", [
    ("constant", (1, -1, 2, 0)), ("reflect", (2, 1, 1, 2)), ("replicate", (0, 2, -1, 1)),
    ("circular", (-1, 2, 1, 1))], ids=lambda v: str(v))
def test_pad(rng, index_t, mode, pad):
    """pad.cl in every mode, cropping included (circular crops, then wraps: torch's order)."""
    x = _with_nan(rng)[:, :, None, :].repeat(3, axis=2)  # (2, 3, 3, 4), a NaN in it
    want = x.astype(np.float64)
    np_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge",
               "circular": "wrap"}[mode]
    for i in range(2):  # torch's order: the last dim first
        ax, lo, hi = x.ndim - 1 - i, pad[2 * i], pad[2 * i + 1]
        want = np.take(want, range(max(-lo, 0), want.shape[ax] - max(-hi, 0)), axis=ax)
        width = [(0, 0)] * x.ndim
        width[ax] = (max(lo, 0), max(hi, 0))
        want = np.pad(want, width, mode=np_mode)
    expect(clconv.pad(x, pad, mode), want, F32, 0, 1.0)


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-d linear interpolation with align_corners=True."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        real = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        i = min(int(np.floor(real)), n_in - 1)
        j = i + (1 if i < n_in - 1 else 0)
        m[o, i] += 1 - (real - i)
        m[o, j] += real - i
    return m


def _cubic_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of torch's bicubic interpolation along one dim (half-pixel source
    index, Keys' kernel with A = -0.75, taps clamped at the edges), in float64."""
    a = -0.75
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        real = (n_in / n_out) * (o + 0.5) - 0.5
        i = int(np.floor(real))
        t = real - i
        for j, d in enumerate((t + 1, t, 1 - t, 2 - t)):
            d = abs(d)
            w = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else \
                ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
            m[o, min(max(i - 1 + j, 0), n_in - 1)] += w
    return m


def _antialias_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of an antialiased bicubic resize (PIL's filter, A = -0.5, widened
    by the downscale, normalised), in float64."""
    scale = n_in / n_out
    support, stretch = 2 * max(scale, 1.0), max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        center = scale * (o + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        for j in range(lo, hi):
            d, a = abs((j - center + 0.5) / stretch), -0.5
            m[o, j] = ((a + 2) * d - (a + 3)) * d * d + 1 if d < 1 else \
                ((a * d - 5 * a) * d + 8 * a) * d - 4 * a if d < 2 else 0.0
        m[o] /= m[o].sum()
    return m


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact-1d", "bilinear", "bicubic",
                                  "antialias"])
def test_interpolate(rng, index_t, mode):
    """interpolate.cl: nearest at a fractional scale (the general index path), 1-d nearest-exact
    (the separable kernel's rounding), bilinear with align_corners and bicubic (separable
    weights), an antialiased bicubic downscale (resample_aa: the width, then the height)."""
    x = arr(rng, (2, 3, 4, 5))
    if mode == "antialias":
        x = arr(rng, (2, 3, 9, 10))
        want = np.einsum("oh,nchw,pw->ncop", _antialias_weights(9, 4), x.astype(np.float64),
                         _antialias_weights(10, 3))
        expect(clconv.interpolate(x, size=(4, 3), mode="bicubic", antialias=True), want, F32,
               2 * 9, 2 * mag(x))
    elif mode == "nearest-exact-1d":
        x = arr(rng, (2, 3, 5))
        s = np.float32(5 / 11)
        src = np.maximum(s * (np.arange(11, dtype=np.float32) + np.float32(0.5)) -
                         np.float32(0.5), np.float32(0))
        cols = np.minimum(np.floor(src + np.float32(0.5)), 4).astype(int)
        expect(clconv.interpolate(x, size=11, mode="nearest-exact"),
               x.astype(np.float64)[:, :, cols], F32, 0, 1.0)
    elif mode == "nearest":
        rows = np.minimum(np.floor(np.arange(7) * np.float32(4 / 7)), 3).astype(int)
        cols = np.minimum(np.floor(np.arange(8) * np.float32(5 / 8)), 4).astype(int)
        want = x.astype(np.float64)[:, :, rows][:, :, :, cols]
        expect(clconv.interpolate(x, size=(7, 8)), want, F32, 0, 1.0)
    elif mode == "bilinear":
        want = np.einsum("oh,nchw,pw->ncop", _linear_weights(4, 7), x.astype(np.float64),
                         _linear_weights(5, 8))
        expect(clconv.interpolate(x, size=(7, 8), mode="bilinear", align_corners=True), want,
               F32, 4, mag(x))
    else:
        want = np.einsum("oh,nchw,pw->ncop", _cubic_weights(4, 7), x.astype(np.float64),
                         _cubic_weights(5, 8))
        expect(clconv.interpolate(x, size=(7, 8), mode="bicubic"), want, F32, 16, 2 * mag(x))


def test_group_norm(rng, index_t):
    """group_norm.cl after channel_stats over the (N * G, C / G * spatial) view, affine + SiLU."""
    x, w, b = arr(rng, (2, 6, 3, 4)), arr(rng, (6,)), arr(rng, (6,))
    v = x.astype(np.float64).reshape(2, 3, -1)
    v = ((v - v.mean(axis=2, keepdims=True)) / np.sqrt(v.var(axis=2, keepdims=True) + 1e-5))
    v = v.reshape(x.shape) * w.reshape(1, 6, 1, 1) + b.reshape(1, 6, 1, 1)
    expect(clconv.group_norm(x, 3, w, b, activation="silu"), v / (1 + np.exp(-v)), F32, 24,
           10.0)


def test_instance_norm_at_zero_eps(rng, index_t):
    """group_norm.cl with ZERO_RSTD (instance_norm at eps = 0, torch's InvStd): a constant
    instance gives 0, the others their normalised values."""
    x = arr(rng, (2, 3, 4, 5))
    x[1, 2] = 1.5
    v = x.astype(np.float64).reshape(2, 3, -1)
    dev = v - v.mean(axis=2, keepdims=True)
    var = (dev * dev).mean(axis=2, keepdims=True)
    want = np.where(var == 0, 0.0, dev / np.sqrt(np.where(var == 0, 1.0, var)))
    expect(clconv.instance_norm(x, eps=0.0), want.reshape(x.shape), F32, 24, 10.0)


def test_local_response_norm(rng, index_t):
    """local_response_norm.cl: a window clipped at both channel ends, the paper's k = 2."""
    x = arr(rng, (2, 5, 3, 2))
    v = x.astype(np.float64)
    sq = np.pad(v * v, ((0, 0), (1, 1), (0, 0), (0, 0)))
    mean = (sq[:, :-2] + sq[:, 1:-1] + sq[:, 2:]) / 3
    expect(clconv.local_response_norm(x, 3, 0.5, 0.75, 2.0), v / (mean * 0.5 + 2.0) ** 0.75, F32,
           3, 1.0)


def test_cat(rng, index_t):
    parts = [arr(rng, (2, c, 3)) for c in (1, 3, 2)]
    expect(clconv.cat(parts, 1), np.concatenate(parts, 1), F32, 0, 1.0)


@pytest.mark.parametrize("shape, affine, dtype", [
    pytest.param(*c, id=case_id(*c[:1], c[1], c[2])) for c in [
        ((2, 5, 3, 4), "affine", F32), ((1, 3, 7), "plain", F32), ((2, 4, 3, 3), "affine", F64),
        ((2, 3, 5), "weight-at-offset", F32)]])
def test_channel_norm(device, rng, shape, affine, dtype):
    """channel_norm.cl (clconv.torch's channels-first LayerNorm), with and without the affine
    weight and bias, an odd number of positions; the input and weight as views one image (one
    value) into their buffers, without a bias."""
    import pyopencl.array as cla

    from clconv.torch_graph import channel_norm

    need_dtype(device, dtype)
    x = arr(rng, shape, dtype)
    x[0, :, 0] += 100  # a large mean: the centred second pass
    c = shape[1]
    w = arr(rng, (c,), dtype) if affine != "plain" else None
    b = arr(rng, (c,), dtype) if affine == "affine" else None
    xx = x.astype(np.float64)
    want = (xx - xx.mean(axis=1, keepdims=True)) / np.sqrt(xx.var(axis=1, keepdims=True) + 1e-6)
    bshape = (1, c) + (1,) * (len(shape) - 2)
    if w is not None:
        want = want * w.reshape(bshape)
    if b is not None:
        want = want + b.reshape(bshape)

    def on_device(a):
        if a is None or affine != "weight-at-offset":
            return None if a is None else cla.to_device(device.queue, a)
        return cla.to_device(device.queue, np.concatenate([a[:1], a]))[1:]

    got = channel_norm(on_device(x), on_device(w), on_device(b), 1e-6)
    # (x - mean) rounds at |x|'s scale (100): that over a standard deviation of ~1
    expect(got, want, dtype, 2 * c, mag(x) * (mag(w) if w is not None else 1.0)
           + (mag(b) if b is not None else 0.0))


@pytest.mark.parametrize("local", [1, 4])
def test_squeeze_excitation(rng, index_t, monkeypatch, local):
    """squeeze_excitation.cl: one work-item a sample (CPUs) and several (GPUs: partial sums in
    local memory between barriers), a row shorter than a vector, no second bias, a NaN that
    spreads over its sample."""
    from clconv.ops import squeeze_excitation as se

    monkeypatch.setattr(se, "_CPU_LOCAL", local)
    monkeypatch.setattr(se, "_GPU_LOCAL", local)
    x, w1, b1, w2 = arr(rng, (2, 11, 3, 3)), arr(rng, (5, 11)), arr(rng, (5,)), arr(rng, (11, 5))
    x[1, 4, 2, 0] = np.nan
    v = x.astype(np.float64)
    h = np.maximum(v.mean(axis=(2, 3)) @ w1.astype(np.float64).T + b1, 0)
    with np.errstate(invalid="ignore"):
        gate = 1 / (1 + np.exp(-(h @ w2.astype(np.float64).T)))
    expect(clconv.squeeze_excitation(x, w1, b1, w2, None), v * gate[:, :, None, None], F32, 11,
           mag(np.nan_to_num(x), w1) * mag(w2))
