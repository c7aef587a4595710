"""clconv.torch.compile's own kernel and a small compiled network on every device under test (this
module is in conftest's EVERY_DEVICE_MODULES; tests/test_compile.py runs the families on the
default device only): the channel norm (cl/channel_norm.cl) against a numpy float64 reference and
torch's F.layer_norm, in float32 and, where the device has it, float64; a network with folded
BatchNorm, residual and activation epilogues, a depthwise convolution, a channels-last LayerNorm and
Linear (the channel norm and a 1x1 convolution), a transposed convolution, pooling and a classifier
against torch's eval output, nothing on the host."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import models
from torch import nn
from torch.nn import functional as F


def _channel_norm_reference(x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None,
                            eps: float) -> np.ndarray:
    """LayerNorm over dim 1 in float64 (biased variance, as torch's layer_norm)."""
    x = x.astype(np.float64)
    mean = x.mean(axis=1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if w is not None:
        y = y * w.astype(np.float64).reshape(shape)
    if b is not None:
        y = y + b.astype(np.float64).reshape(shape)
    return y


@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (1, 7, 2, 3, 2), (3, 6), (1, 96, 5, 5)])
@pytest.mark.parametrize("affine", ["both", "weight", "bias", "none"])
@pytest.mark.parametrize("offset", [False, True], ids=["at-start", "view-at-offset"])
def test_channel_norm_is_layer_norm_over_channels(dev, dtype, shape, affine, offset, rng):
    import pyopencl.array as cla

    from clconv.torch_graph import channel_norm

    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w = (rng.random(c) + 0.5).astype(dtype) if affine in ("both", "weight") else None
    b = rng.standard_normal(c).astype(dtype) if affine in ("both", "bias") else None
    eps = 1e-6
    up = (lambda a: None if a is None else cla.to_device(dev.queue, a))
    if offset:  # (the input a view one image into its buffer, the weight and bias too)
        xd = up(np.concatenate([np.full((1, *shape[1:]), np.nan, dtype), x]))[1:]
        wb = [None if a is None else up(np.concatenate([[np.nan], a]).astype(dtype))[1:]
              for a in (w, b)]
        got = channel_norm(xd, *wb, eps)
    else:
        got = channel_norm(up(x), up(w), up(b), eps)
    assert isinstance(got, cla.Array) and got.dtype == dtype and got.shape == shape
    got = got.get()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, _channel_norm_reference(x, w, b, eps), rtol=tol, atol=tol)
    # torch's own, as ConvNeXt writes it: permute to channels-last, layer_norm, permute back
    dims = (0, *range(2, len(shape)), 1)
    tw = None if w is None else torch.from_numpy(w)
    tb = None if b is None else torch.from_numpy(b)
    want = F.layer_norm(torch.from_numpy(x).permute(*dims), (c,), tw, tb, eps)
    want = want.permute(0, len(shape) - 1, *range(1, len(shape) - 1))
    np.testing.assert_allclose(got, want.numpy(), rtol=tol, atol=tol)


class SmallNet(nn.Module):
    """One of each kind of step compile() makes, at sizes small enough for a software device."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.stem = models.conv_bn(3, c, 3)                       # conv + folded BN + ReLU
        self.block = nn.Sequential(models.conv_bn(c, c, 3), models.conv_bn(c, c, 3, act=None))
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)          # ConvNeXt's depthwise conv
        self.norm = nn.LayerNorm(c, eps=1e-6)                      # channel norm
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.up = nn.ConvTranspose2d(c, c // 2, 2, stride=2)       # transposed conv
        self.bn = nn.BatchNorm2d(c // 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c // 2, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.block(x) + x)                               # residual epilogue
        y = self.dw(x).permute(0, 2, 3, 1)
        x = x + self.mlp(self.norm(y)).permute(0, 3, 1, 2)
        x = F.max_pool2d(x, 2)
        x = F.silu(self.bn(self.up(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def test_small_network_matches_torch_on_every_device(dev):
    import clconv.torch as ct

    torch.manual_seed(0)
    model = models.randomize(SmallNet(), seed=1).eval()
    x = torch.randn(2, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ct.FallbackWarning)  # nothing may fall back to the host
        cm = ct.compile(model, x, device=dev)
    assert cm.fallbacks == [] and cm.device is dev
    ops = " ".join(s.op for s in cm.steps)
    assert "BN folded" in ops and "+ residual" in ops and "channel_norm" in ops
    assert "clconv.conv_transpose2d" in ops
    with torch.no_grad():
        want = model(x)
        for batch in (x, x[:1]):  # another batch size too
            got = cm(batch)
            scale = float(want.abs().max())
            np.testing.assert_allclose(got.numpy(), model(batch).numpy(), rtol=2e-3,
                                       atol=2e-3 * scale)
