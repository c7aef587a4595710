"""Asymmetric padding of the forward convolutions: `padding` as one (lo, hi) pair a spatial dim
(ONNX's `pads`, begin and end), against torch (F.pad with the same mode, then an unpadded
convolution) through the public API, and the argument errors.

Every algorithm's results with pairs are checked against the float64 oracle in
tests/test_algorithms.py; here: the public forms (numpy, device arrays, plans, 1-3 d), their
equivalence with the symmetric and 'same' forms, and what is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import random_array
from tolerance import assert_close, conv_magnitude, conv_reduction

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(scope="module")
def clconv():
    import clconv

    return clconv


_TORCH_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
               "circular": "circular"}


def _torch_conv(x, w, b, pairs, mode, **kw):
    """torch's result for (lo, hi) pairs: F.pad (last dim first) in `mode`, then F.convNd."""
    flat = [p for lo_hi in reversed(pairs) for p in lo_hi]
    xt = torch.from_numpy(x.astype(np.float64))
    xt = F.pad(xt, flat, mode=_TORCH_MODE[mode]) if any(flat) else xt
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}[w.ndim]
    bt = None if b is None else torch.from_numpy(b.astype(np.float64))
    return conv(xt, torch.from_numpy(w.astype(np.float64)), bt, **kw).numpy()


@pytest.mark.parametrize("nd, x_shape, w_shape, pairs, kw", [
    (1, (2, 3, 17), (4, 3, 5), ((4, 0),), {}),
    (2, (2, 3, 10, 9), (5, 3, 3, 3), ((0, 2), (3, 1)), {"stride": 2}),
    (2, (1, 6, 8, 8), (6, 1, 3, 3), ((2, 0), (0, 2)), {"groups": 6}),
    (2, (1, 4, 9, 7), (4, 4, 2, 4), ((1, 0), (1, 2)), {"dilation": (2, 1)}),
    (3, (1, 2, 4, 5, 6), (3, 2, 2, 3, 3), ((0, 1), (1, 1), (2, 0)), {}),
], ids=["1d", "2d-s2", "2d-depthwise", "2d-dilated-even", "3d"])
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_pairs_match_torch(clconv, rng, dev, nd, x_shape, w_shape, pairs, kw, mode):
    x = random_array(rng, x_shape)
    w = random_array(rng, w_shape)
    b = random_array(rng, (w_shape[0],))
    want = _torch_conv(x, w, b, pairs, mode, **kw)
    conv = getattr(clconv, f"conv{nd}d")
    got = conv(x, w, b, padding=pairs, padding_mode=mode, **kw)
    tol = (np.float32, conv_reduction(w, kw.get("groups", 1)), conv_magnitude(x, w, b))
    assert_close(got, want, *tol)
    # device arrays, and a plan made once
    import pyopencl.array as cla

    q = dev.queue
    dx, dw, db = (cla.to_device(q, a) for a in (x, w, b))
    assert_close(conv(dx, dw, db, padding=pairs, padding_mode=mode, **kw), want, *tol)
    plan = getattr(clconv, f"plan_conv{nd}d")(x.shape, w.shape, b.shape, padding=pairs,
                                               padding_mode=mode, **kw)
    assert plan.output_shape == want.shape
    assert_close(plan(dx, dw, db), want, *tol)


def test_pairs_equal_the_other_forms(clconv, rng):
    """Equal pairs are the int form, bit for bit; 'same' for an even kernel is its pairs (the
    extra element at the end, as torch); lists work as tuples."""
    x = random_array(rng, (2, 3, 9, 8))
    w = random_array(rng, (4, 3, 3, 3))
    np.testing.assert_array_equal(clconv.conv2d(x, w, padding=((1, 1), (2, 2))),
                                  clconv.conv2d(x, w, padding=(1, 2)))
    w4 = random_array(rng, (4, 3, 4, 2))
    np.testing.assert_array_equal(clconv.conv2d(x, w4, padding=[[1, 2], [0, 1]]),
                                  clconv.conv2d(x, w4, padding="same"))
    # unbatched and residual of the padded output's shape
    y = clconv.conv2d(x[0], w, padding=((0, 3), (1, 0)))
    assert y.shape == (4, 10, 7)
    r = random_array(rng, y.shape)
    np.testing.assert_allclose(clconv.conv2d(x[0], w, padding=((0, 3), (1, 0)), residual=r),
                               y + r, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("padding, error, match", [
    (((1, 1),), ValueError, "one pair for each of the 2"),
    (((1, 1), (1, 1), (1, 1)), ValueError, "one pair for each of the 2"),
    (((1, 1), 2), TypeError, "pair of ints"),
    (((1, 1), (1, 2, 3)), TypeError, "pair of ints"),
    (((1, 1), (1.5, 0)), TypeError, "pair of ints"),
    (((1, -1), (0, 0)), ValueError, "negative"),
    (((0, 0), (9, 0)), ValueError, "reflect"),
])
def test_bad_pairs_are_refused(clconv, rng, padding, error, match):
    x = random_array(rng, (1, 2, 6, 7))
    w = random_array(rng, (3, 2, 3, 3))
    with pytest.raises(error, match=match):
        clconv.conv2d(x, w, padding=padding, padding_mode="reflect")


def test_pairs_are_forward_only(clconv, rng):
    """The gradients, transposed convolutions and unfold take torch's symmetric forms only: pairs
    there are a ValueError that says where they are taken."""
    x = random_array(rng, (1, 2, 6, 7))
    w = random_array(rng, (3, 2, 3, 3))
    g = random_array(rng, (1, 3, 6, 7))
    pairs = ((1, 1), (1, 1))
    with pytest.raises(ValueError, match="forward convolutions"):
        clconv.conv2d_input(x.shape, w, g, padding=pairs)
    with pytest.raises(ValueError, match="forward convolutions"):
        clconv.conv2d_weight(x, w.shape, g, padding=pairs)
    # (torch's TypeError for the ops whose padding is ints: the message says where pairs go)
    for call in (lambda: clconv.conv_transpose2d(g, w.transpose(1, 0, 2, 3).copy(),
                                                 padding=pairs),
                 lambda: clconv.im2col(x, 3, padding=pairs),
                 lambda: clconv.max_pool2d(x, 3, padding=pairs),
                 lambda: clconv.nn.Conv2d(2, 3, 3, padding=pairs)):
        with pytest.raises(TypeError, match=r"sequence of 2 ints.*pairs is taken by the forward"):
            call()
    # 'same' / 'valid' there: torch's TypeError too, with no word of pairs
    with pytest.raises(TypeError, match=r"got 'same' \('same' and 'valid' are taken by the "
                                        r"forward convolutions") as err:
        clconv.conv_transpose2d(g, w.transpose(1, 0, 2, 3).copy(), padding="same")
    assert "pairs" not in str(err.value)


def test_clconv_torch_modules_refuse_pairs_clearly(clconv, rng):
    """torch's modules take no pairs (torch raises a TypeError in F.conv2d); clconv.torch's say
    where pairs are taken, instead of failing inside a shape helper."""
    torch = pytest.importorskip("torch")
    import clconv.torch as ct

    layer = ct.Conv2d(2, 3, 3, padding=((1, 0), (1, 0)))
    with pytest.raises(TypeError, match=r"pairs are taken by clconv.conv1d/2d/3d.*ZeroPad2d"):
        layer(torch.randn(2, 2, 6, 5))


@pytest.mark.parametrize("chain", ["folded", "plain", "residual"])
def test_converted_chains_refuse_pairs_as_torch(clconv, chain):
    """A converted model's fused chains (BatchNorm folded, none, a residual add) refuse a
    padding of pairs assigned after convert, as torch's F.conv2d does, rather than computing
    what the functional API's plans would."""
    torch = pytest.importorskip("torch")
    from torch import nn

    import clconv.torch as ct

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x) + x)

    model = {"folded": lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU()),
             "plain": lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU()),
             "residual": Residual}[chain]().eval()
    converted = ct.convert(model)
    x = torch.randn(1, 2, 6, 5)
    with torch.no_grad():
        converted(x)  # (traced and run with its own padding)
        conv = converted.conv if chain == "residual" else converted[0]
        conv.padding = ((1, 0), (1, 0))
        with pytest.raises(TypeError, match=r"pairs are taken by clconv.conv1d/2d/3d"):
            converted(x)
