"""clconv.nn layers: initialisation, forward/backward against the float64 oracle, the API around
them (parameter assignment, unbatched and device inputs, errors), and torch.nn when importable."""

from __future__ import annotations

import math

import numpy as np
import pyopencl.array as cla
import pytest
import reference as ref
import reference_extra as rx
from helpers import random_array
from tolerance import assert_close, conv_magnitude


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


def _layer_kwargs(kwargs):
    return {k: v for k, v in kwargs.items() if k not in ("output_size",)}


def check_layer(clconv, rng, cls_name, x_shape, args, kwargs, dtype=np.float32, kind="numpy",
                queue=None):
    """Forward + backward of a layer on random data against the oracle; returns the layer."""
    layer = getattr(clconv.nn, cls_name)(*args, dtype=dtype, rng=rng, **kwargs)
    transposed = cls_name.startswith("ConvTranspose")
    x = random_array(rng, x_shape, dtype)
    w = layer.weight.get()
    b = None if layer.bias is None else layer.bias.get()
    conv_kw = {k: v for k, v in kwargs.items() if k != "bias"}
    if transposed:
        want = ref.conv_transpose_nd(x, w, b, **conv_kw)
    else:
        want = ref.conv_nd(x, w, b, **conv_kw)
    xin = cla.to_device(queue, x) if kind == "cl" else x
    y = layer(xin)
    assert isinstance(y, cla.Array if kind == "cl" else np.ndarray)
    assert y.dtype == np.dtype(dtype)
    red = (x_shape[-len(w.shape) + 1] // kwargs.get("groups", 1)) * math.prod(w.shape[2:])
    assert_close(y, want, dtype, reduction=red, magnitude=conv_magnitude(x, w, b))

    g = random_array(rng, want.shape, dtype)
    gx = layer.backward(cla.to_device(queue, g) if kind == "cl" else g)
    assert isinstance(gx, cla.Array if kind == "cl" else np.ndarray)
    unbatched = len(x_shape) == w.ndim - 1
    xb, gb = (x[None], g[None]) if unbatched else (x, g)
    if transposed:
        want_x = rx.conv_transpose_nd_input(xb.shape, w, gb, **conv_kw)
        want_w = rx.conv_transpose_nd_weight(xb, w.shape, gb, **conv_kw)
    else:
        want_x = rx.conv_nd_input(xb.shape, w, gb, **conv_kw)
        want_w = rx.conv_nd_weight(xb, w.shape, gb, **conv_kw)
    if unbatched:
        want_x = want_x[0]
    assert_close(gx, want_x, dtype, reduction=w.shape[0] * math.prod(w.shape[2:]),
                 magnitude=conv_magnitude(g, w))
    assert isinstance(layer.weight_grad, cla.Array) and layer.weight_grad.dtype == np.dtype(dtype)
    big = max(1, g.size)
    assert_close(layer.weight_grad, want_w, dtype, reduction=big, magnitude=conv_magnitude(g, x))
    if layer.bias is not None:
        assert_close(layer.bias_grad, rx.bias_grad(gb), dtype, reduction=big,
                     magnitude=conv_magnitude(g, np.ones(1)))
    else:
        assert layer.bias_grad is None
    return layer


# id -> (class, x_shape, constructor args, constructor kwargs)
LAYER_CASES = {
    "conv1d": ("Conv1d", (2, 3, 9), (3, 4, 3), {"stride": 2, "padding": 1}),
    "conv1d-circular": ("Conv1d", (2, 2, 7), (2, 3, 3), {"padding": 2, "padding_mode": "circular"}),
    "conv2d": ("Conv2d", (2, 3, 6, 5), (3, 4, 3), {"padding": 1}),
    "conv2d-groups-dil": ("Conv2d", (2, 4, 7, 6), (4, 6, (3, 2)),
                          {"stride": (2, 1), "dilation": (1, 2), "groups": 2}),
    "conv2d-depthwise-n1": ("Conv2d", (1, 3, 5, 5), (3, 6, 3), {"groups": 3, "padding": 1}),
    "conv2d-same-reflect": ("Conv2d", (2, 2, 5, 6), (2, 3, (2, 3)),
                            {"padding": "same", "padding_mode": "reflect"}),
    "conv2d-nobias": ("Conv2d", (2, 2, 5, 5), (2, 2, 3), {"bias": False, "padding": "valid"}),
    "conv2d-pointwise": ("Conv2d", (3, 4, 3, 3), (4, 2, 1), {}),
    "conv2d-unbatched": ("Conv2d", (2, 5, 6), (2, 3, 3), {"padding": 1}),
    "conv3d": ("Conv3d", (2, 2, 3, 4, 3), (2, 3, (2, 3, 2)), {"padding": (1, 0, 1)}),
    "conv3d-replicate": ("Conv3d", (1, 2, 3, 3, 3), (2, 2, 2), {"padding": 1, "stride": 2,
                                                                     "padding_mode": "replicate"}),
    "convT1d": ("ConvTranspose1d", (2, 3, 5), (3, 2, 3), {"stride": 2, "output_padding": 1}),
    "convT2d": ("ConvTranspose2d", (2, 4, 3, 4), (4, 6, 3),
                {"stride": 2, "padding": 1, "groups": 2}),
    "convT2d-dil-outpad": ("ConvTranspose2d", (1, 2, 3, 3), (2, 3, (2, 3)),
                           {"dilation": (3, 1), "output_padding": (2, 0)}),
    "convT2d-pointwise": ("ConvTranspose2d", (2, 3, 4, 4), (3, 2, 1), {}),
    "convT2d-unbatched": ("ConvTranspose2d", (3, 4, 4), (3, 2, 2), {"stride": 2, "bias": False}),
    "convT3d": ("ConvTranspose3d", (1, 2, 2, 3, 2), (2, 2, 2),
                {"stride": (2, 1, 2), "padding": (0, 1, 1), "output_padding": (1, 0, 1)}),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_forward_backward(clconv, rng, case):
    cls_name, x_shape, args, kwargs = LAYER_CASES[case]
    check_layer(clconv, rng, cls_name, x_shape, args, kwargs)


@pytest.mark.parametrize("case", ["conv1d", "conv2d-groups-dil", "conv3d", "convT2d", "convT3d"])
def test_dtypes(clconv, rng, dtype, case):
    cls_name, x_shape, args, kwargs = LAYER_CASES[case]
    check_layer(clconv, rng, cls_name, x_shape, args, kwargs, dtype=dtype)


@pytest.mark.parametrize("case", ["conv2d-same-reflect", "convT2d-unbatched"])
def test_device_arrays_in_and_out(clconv, dev, rng, case):
    cls_name, x_shape, args, kwargs = LAYER_CASES[case]
    check_layer(clconv, rng, cls_name, x_shape, args, kwargs, kind="cl", queue=dev.queue)


@pytest.mark.parametrize("cls_name, x_shape, args", [
    ("Conv2d", (0, 2, 5, 5), (2, 3, 3)),
    ("ConvTranspose2d", (0, 2, 3, 3), (2, 3, 3)),
    ("Conv1d", (0, 2, 5), (2, 3, 3)),
])
def test_empty_batch(clconv, rng, cls_name, x_shape, args):
    layer = getattr(clconv.nn, cls_name)(*args, rng=rng)
    y = layer(np.zeros(x_shape, np.float32))
    assert y.shape[0] == 0 and y.shape[1] == args[1]
    gx = layer.backward(np.zeros(y.shape, np.float32))
    assert gx.shape == x_shape
    assert not layer.weight_grad.get().any() and not layer.bias_grad.get().any()


# ---------------------------------------------------------------------------
# initialisation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls_name, args, kwargs, fan_in", [
    ("Conv2d", (16, 32, 3), {}, 16 * 9),
    ("Conv2d", (8, 16, (3, 1)), {"groups": 4}, 2 * 3),
    ("Conv1d", (4, 6, 5), {}, 20),
    ("Conv3d", (2, 4, 2), {}, 16),
    ("ConvTranspose2d", (8, 12, 3), {"groups": 2}, 6 * 9),  # torch: weight.shape[1] * prod(k)
])
def test_default_initialisation(clconv, cls_name, args, kwargs, fan_in):
    """weight, bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as torch's kaiming_uniform(a=sqrt(5))."""
    layer = getattr(clconv.nn, cls_name)(*args, rng=0, **kwargs)
    bound = 1 / math.sqrt(fan_in)
    w, b = layer.weight.get(), layer.bias.get()
    assert w.dtype == np.float32 and b.shape == (args[1],)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    if w.size >= 1000:  # uniform: std = bound / sqrt(3), and it uses the whole range
        assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound
        assert np.abs(w).max() > 0.95 * bound
    again = getattr(clconv.nn, cls_name)(*args, rng=0, **kwargs)
    np.testing.assert_array_equal(again.weight.get(), w)


def test_initialisation_matches_torch_statistics(clconv):
    torch = pytest.importorskip("torch")
    m = torch.nn.Conv2d(16, 32, 3)
    bound = float(m.weight.detach().abs().max())
    layer = clconv.nn.Conv2d(16, 32, 3, rng=1)
    assert abs(float(np.abs(layer.weight.get()).max()) - bound) < 0.01 * bound


# ---------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------

def test_parameters_assignment_and_repr(clconv, dev, rng):
    layer = clconv.nn.Conv2d(2, 3, 3, padding=1, rng=rng)
    w = random_array(rng, (3, 2, 3, 3))
    layer.weight = w
    np.testing.assert_array_equal(layer.weight.get(), w)
    layer.bias = cla.to_device(dev.queue, np.arange(3, dtype=np.float32))
    assert layer.parameters()[1] is layer.bias
    assert layer.gradients() == [None, None]
    x = random_array(rng, (1, 2, 4, 4))
    assert_close(layer(x), ref.conv_nd(x, w, np.arange(3), padding=1), np.float32, reduction=18,
                 magnitude=conv_magnitude(x, w, np.arange(3)))
    with pytest.raises(ValueError, match="weight must have shape"):
        layer.weight = np.zeros((3, 2, 2, 2), np.float32)
    with pytest.raises(TypeError, match="weight has dtype float64"):
        layer.weight = cla.to_device(dev.queue, np.zeros((3, 2, 3, 3)))
    with pytest.raises(ValueError, match="bias"):
        layer.bias = None
    assert repr(layer) == "Conv2d(2, 3, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))"
    t = clconv.nn.ConvTranspose2d(2, 3, 2, stride=2, output_padding=1, bias=False)
    assert repr(t) == ("ConvTranspose2d(2, 3, kernel_size=(2, 2), stride=(2, 2), bias=False, "
                       "output_padding=(1, 1))")
    fused = clconv.nn.Conv2d(2, 3, 1, activation=("leaky_relu", 0.2))
    assert repr(fused) == ("Conv2d(2, 3, kernel_size=(1, 1), stride=(1, 1), "
                           "activation='leaky_relu(0.2)')")


def test_backward_errors(clconv, rng):
    layer = clconv.nn.Conv2d(2, 3, 3)
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.zeros((1, 3, 2, 2), np.float32))
    layer(random_array(rng, (1, 2, 4, 4)))
    with pytest.raises(ValueError, match="grad_output must have the shape"):
        layer.backward(np.zeros((1, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match=r"mixed dtypes \(grad_output: float64"):
        layer.backward(np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="grad_output must have 3 .* or 4"):
        layer.backward(np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="input must have 3 .* or 4"):
        layer(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="channel"):
        layer(np.zeros((1, 3, 4, 4), np.float32))
    # Flatten as every other layer: a grad_output of another shape (even of the same size) is
    # refused, numpy and device arrays alike, alone or ending a Sequential
    flat = clconv.nn.Flatten()
    flat(np.ones((2, 3, 2), np.float32))
    for bad in (np.ones((3, 4), np.float32), np.ones((2, 5), np.float32)):
        for g in (bad, cla.to_device(clconv.current_device().queue, bad)):
            with pytest.raises(ValueError, match=r"grad_output must have the shape .*\(2, 6\)"):
                flat.backward(g)
    assert flat.backward(np.ones((2, 6), np.float32)).shape == (2, 3, 2)
    model = clconv.nn.Sequential(clconv.nn.ReLU(), clconv.nn.Flatten())
    model(np.ones((2, 3, 2), np.float32))
    with pytest.raises(ValueError, match="grad_output must have the shape"):
        model.backward(np.ones((3, 4), np.float32))


def test_transposed_output_size(clconv, rng):
    layer = clconv.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, rng=rng)
    x = random_array(rng, (1, 2, 4, 4))
    assert layer(x).shape == (1, 3, 7, 7)
    y = layer(x, output_size=(8, 7))
    w, b = layer.weight.get(), layer.bias.get()
    want = ref.conv_transpose_nd(x, w, b, stride=2, padding=1, output_padding=(1, 0))
    assert_close(y, want, np.float32, reduction=18, magnitude=conv_magnitude(x, w, b))
    assert layer(x, output_size=(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    gx = layer.backward(np.ones((1, 3, 8, 8), np.float32))
    assert gx.shape == x.shape
    with pytest.raises(ValueError, match="output_size"):
        layer(x, output_size=(9, 9))
    with pytest.raises(ValueError, match="output_size"):
        layer(x, output_size=(8,))
    # torch's lengths: nd, or the input's dims (batched 4, unbatched 3), nothing in between
    with pytest.raises(ValueError, match="2 .spatial. or 4 entries for a 4-d input"):
        layer(x, output_size=(3, 8, 8))
    assert layer(x[0], output_size=(3, 8, 8)).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="2 .spatial. or 3 entries for a 3-d input"):
        layer(x[0], output_size=(1, 3, 8, 8))


CONSTRUCTOR_BAD = [
    ("Conv2d", (3, 4, 3), {"groups": 2}, ValueError, "in_channels"),
    ("Conv2d", (4, 3, 3), {"groups": 2}, ValueError, "out_channels"),
    ("Conv2d", (0, 3, 3), {}, ValueError, "in_channels"),
    ("Conv2d", (2.0, 3, 3), {}, TypeError, "in_channels"),
    ("Conv2d", (2, 3, 0), {}, ValueError, "kernel_size"),
    ("Conv2d", (2, 3, (3, 3, 3)), {}, ValueError, "kernel_size"),
    ("Conv2d", (2, 3, 3), {"stride": 0}, ValueError, "stride"),
    ("Conv2d", (2, 3, 3), {"padding": "same", "stride": 2}, ValueError, "same"),
    ("Conv2d", (2, 3, 3), {"padding": "full"}, ValueError, "padding"),
    ("Conv2d", (2, 3, 3), {"dilation": -1}, ValueError, "dilation"),
    ("Conv2d", (2, 3, 3), {"padding_mode": "mirror"}, ValueError, "padding_mode"),
    ("Conv2d", (2, 3, 3), {"algorithm": "fft"}, ValueError, "algorithm"),
    ("Conv2d", (2, 3, 3), {"dtype": np.int32}, TypeError, "dtype"),
    ("Conv2d", (2, 3, 3), {"device": "no-such-device"}, LookupError, "no-such-device"),
    ("ConvTranspose2d", (2, 3, 3), {"padding_mode": "reflect"}, ValueError, "padding_mode"),
    ("ConvTranspose2d", (2, 3, 3), {"padding": "same"}, TypeError, "padding"),
    ("ConvTranspose1d", (2, 3, 3), {"output_padding": (1, 1)}, ValueError, "output_padding"),
]


@pytest.mark.parametrize("case", range(len(CONSTRUCTOR_BAD)))
def test_constructor_errors(clconv, case):
    cls_name, args, kwargs, exc, match = CONSTRUCTOR_BAD[case]
    with pytest.raises(exc, match=match):
        getattr(clconv.nn, cls_name)(*args, **kwargs)


def test_transposed_output_padding_is_checked_by_forward_as_torchs(clconv):
    """An output_padding not below stride or dilation: torch's module takes it, its forward
    refuses it for a non-empty batch and gives the padded shape for an empty one."""
    torch = pytest.importorskip("torch")
    layer = clconv.nn.ConvTranspose2d(2, 3, 3, output_padding=1)
    want = torch.nn.ConvTranspose2d(2, 3, 3, output_padding=1)(torch.zeros(0, 2, 4, 4))
    assert layer.forward(np.zeros((0, 2, 4, 4), np.float32)).shape == tuple(want.shape)
    with pytest.raises(ValueError, match="output_padding"):
        layer.forward(np.zeros((1, 2, 4, 4), np.float32))


# ---------------------------------------------------------------------------
# torch.nn cross-check: the same parameters give the same forward and backward
# ---------------------------------------------------------------------------

TORCH_CASES = [
    ("Conv2d", (2, 4, 6, 5), (4, 6, 3), {"stride": (2, 1), "padding": 1, "groups": 2}),
    ("Conv2d", (2, 2, 5, 6), (2, 3, 3), {"padding": "same", "padding_mode": "circular"}),
    ("Conv1d", (2, 3, 8), (3, 2, 4), {"dilation": 2, "padding": 3, "padding_mode": "reflect"}),
    ("Conv3d", (1, 2, 3, 4, 3), (2, 2, 2), {"padding": 1}),
    ("ConvTranspose2d", (2, 4, 3, 3), (4, 2, 3), {"stride": 2, "padding": 1, "output_padding": 1,
                                                      "groups": 2}),
    ("ConvTranspose1d", (2, 2, 4), (2, 3, 2), {"stride": 1, "dilation": 3, "output_padding": 2}),
]


@pytest.mark.parametrize("case", range(len(TORCH_CASES)))
def test_matches_torch(clconv, rng, case):
    torch = pytest.importorskip("torch")
    cls_name, x_shape, args, kwargs = TORCH_CASES[case]
    tm = getattr(torch.nn, cls_name)(*args, **kwargs, dtype=torch.float64)
    layer = getattr(clconv.nn, cls_name)(*args, **kwargs, dtype=np.float32)
    layer.weight = tm.weight.detach().numpy().astype(np.float32)
    layer.bias = tm.bias.detach().numpy().astype(np.float32)
    x = random_array(rng, x_shape)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = tm(xt)
    g = random_array(rng, tuple(yt.shape))
    yt.backward(torch.from_numpy(g.astype(np.float64)))
    y = layer(x)
    gx = layer.backward(g)
    w = tm.weight.detach().numpy()
    red = 200  # generous bound on the products per element for these tiny cases
    assert_close(y, yt.detach().numpy(), np.float32, reduction=red, magnitude=conv_magnitude(x, w))
    assert_close(gx, xt.grad.numpy(), np.float32, reduction=red, magnitude=conv_magnitude(g, w))
    assert_close(layer.weight_grad, tm.weight.grad.numpy(), np.float32, reduction=red,
                 magnitude=conv_magnitude(g, x))
    assert_close(layer.bias_grad, tm.bias.grad.numpy(), np.float32, reduction=red,
                 magnitude=conv_magnitude(g, np.ones(1)))
