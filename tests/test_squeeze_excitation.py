"""clconv.squeeze_excitation (cl/squeeze_excitation.cl) against torch's ops one by one
(F.adaptive_avg_pool, two 1x1 convolutions with their activations, the broadcast product) and a
numpy float64 oracle: 1-3 spatial dims, batch 1-3 and unbatched, matrices and 1x1 convolution
weights, with and without biases, every kind of activation pair (parameters included), NaN and
Inf, float64 where the device has it, device operands and out=, a plan across batch sizes, and
the argument errors. Tolerance: the float64 oracle with the reduction of the longest sum (the
positions' mean, then the two layers': magnitudes from the data)."""

from __future__ import annotations

import numpy as np
import pyopencl.array as cla
import pytest
from helpers import random_array
from tolerance import assert_close

import clconv
from clconv.ops.squeeze_excitation import SqueezeExcitationPlan

torch = pytest.importorskip("torch")
F = torch.nn.functional

_TORCH_ACT = {None: lambda v: v, "relu": F.relu, "silu": F.silu, "sigmoid": torch.sigmoid,
              "hardsigmoid": F.hardsigmoid, "hardswish": F.hardswish, "relu6": F.relu6,
              "gelu": F.gelu, "tanh": torch.tanh,
              ("leaky_relu", 0.2): lambda v: F.leaky_relu(v, 0.2),
              ("clamp", -0.5, 0.5): lambda v: torch.clamp(v, -0.5, 0.5)}


def _torch_se(x, w1, b1, w2, b2, act, gate):
    """torchvision's SqueezeExcitation as torch's ops (x a tensor; weights as given)."""
    nd = x.dim() - 2
    s = x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    as_conv = lambda w: w.reshape(*w.shape[:2], *(1,) * nd)  # noqa: E731
    h = _TORCH_ACT[act](conv(s, as_conv(w1), b1))
    return x * _TORCH_ACT[gate](conv(h, as_conv(w2), b2))


def _dtypes(dev):
    return (np.float32, np.float64) if dev.fp64 else (np.float32,)


def _operands(rng, shape, hidden, bias, dtype, conv_weights=True):
    c, nd = shape[1], len(shape) - 2
    tail = (1,) * nd if conv_weights else ()
    x = random_array(rng, shape, np.float64).astype(dtype)
    w1 = (random_array(rng, (hidden, c, *tail), np.float64) / np.sqrt(c)).astype(dtype)
    w2 = (random_array(rng, (c, hidden, *tail), np.float64) / np.sqrt(hidden)).astype(dtype)
    b1 = random_array(rng, (hidden,), np.float64).astype(dtype) if bias else None
    b2 = random_array(rng, (c,), np.float64).astype(dtype) if bias else None
    return x, w1, b1, w2, b2


def _check(got, x, w1, b1, w2, b2, act, gate, dtype):
    t = lambda a: None if a is None else torch.from_numpy(a.astype(np.float64))  # noqa: E731
    want = _torch_se(t(x), t(w1), t(b1), t(w2), t(b2), act, gate).numpy()
    positions = int(np.prod(x.shape[2:]))
    assert_close(got, want, dtype, reduction=max(positions, x.shape[1], w1.shape[0]),
                 magnitude=4)
    tt = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    want32 = _torch_se(tt(x), tt(w1), tt(b1), tt(w2), tt(b2), act, gate).numpy()
    assert_close(got, want32, dtype, reduction=max(positions, x.shape[1], w1.shape[0]),
                 magnitude=4)


@pytest.mark.parametrize("shape, hidden", [
    ((1, 16, 56, 56), 8),       # MobileNetV3-Small's first block
    ((2, 96, 7, 7), 24),
    ((3, 5, 3, 4), 1),          # one hidden value
    ((1, 72, 1, 1), 24),        # one position
    ((2, 20, 11), 3),           # 1-d
    ((1, 12, 3, 4, 5), 7),      # 3-d
    ((2, 9, 13, 13), 30),       # more hidden values than channels
], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_matches_torch(dev, rng, shape, hidden, bias):
    for dtype in _dtypes(dev):
        x, w1, b1, w2, b2 = _operands(rng, shape, hidden, bias, dtype)
        got = clconv.squeeze_excitation(x, w1, b1, w2, b2, activation="relu",
                                        gate="hardsigmoid")
        assert isinstance(got, np.ndarray) and got.dtype == dtype and got.shape == x.shape
        _check(got, x, w1, b1, w2, b2, "relu", "hardsigmoid", dtype)


@pytest.mark.parametrize("act, gate", [
    ("relu", "sigmoid"), ("silu", "sigmoid"), ("hardswish", "hardsigmoid"), (None, None),
    ("gelu", "tanh"), (("leaky_relu", 0.2), ("clamp", -0.5, 0.5)), ("relu6", "relu"),
], ids=str)
def test_activation_pairs(dev, rng, act, gate):
    """Each of the two activations is its own (a program of both: cl/activation.cl twice)."""
    x, w1, b1, w2, b2 = _operands(rng, (2, 24, 5, 6), 6, True, np.float32)
    got = clconv.squeeze_excitation(x, w1, b1, w2, b2, activation=act, gate=gate)
    _check(got, x, w1, b1, w2, b2, act, gate, np.float32)


def test_matrix_weights_and_unbatched_input(dev, rng):
    """Weights as (R, C) matrices; a (C, H, W) input with 1x1 convolution weights is one sample,
    as torch's convolutions take it."""
    x, w1, b1, w2, b2 = _operands(rng, (2, 10, 4, 5), 4, True, np.float32, conv_weights=False)
    got = clconv.squeeze_excitation(x, w1, b1, w2, b2)
    _check(got, x, w1, b1, w2, b2, "relu", "sigmoid", np.float32)
    x, w1, b1, w2, b2 = _operands(rng, (1, 10, 4, 5), 4, True, np.float32)
    got = clconv.squeeze_excitation(x[0], w1, b1, w2, b2)
    assert got.shape == x.shape[1:]
    _check(got[None], x, w1, b1, w2, b2, "relu", "sigmoid", np.float32)


def test_nan_and_inf_as_torch(dev):
    """A NaN in one channel reaches its mean, every hidden value and every gate: the whole sample
    is NaN in torch and here; an Inf gives Inf times its gate (or NaN where a gate is 0)."""
    x = np.linspace(-1, 1, 2 * 6 * 4 * 4, dtype=np.float32).reshape(2, 6, 4, 4)
    x[0, 2, 1, 1] = np.nan
    x[1, 4, 0, 3] = np.inf
    w1 = np.linspace(-0.5, 0.5, 3 * 6, dtype=np.float32).reshape(3, 6, 1, 1)
    w2 = np.linspace(-0.4, 0.6, 6 * 3, dtype=np.float32).reshape(6, 3, 1, 1)
    b1, b2 = np.zeros(3, np.float32), np.full(6, 0.1, np.float32)
    got = clconv.squeeze_excitation(x, w1, b1, w2, b2, activation="relu", gate="sigmoid")
    want = _torch_se(*(torch.from_numpy(a) for a in (x, w1, b1, w2, b2)), "relu",
                     "sigmoid").numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert np.isnan(got[0]).all()
    assert_close(got, want, np.float32, reduction=16, magnitude=4)


def test_device_operands_out_and_batches(dev, rng, queue):
    """Device arrays in, a device array out (also into out=); one plan runs other batch sizes."""
    x, w1, b1, w2, b2 = _operands(rng, (3, 8, 6, 6), 4, True, np.float32)
    d = [cla.to_device(queue, a) for a in (x, w1, b1, w2, b2)]
    got = clconv.squeeze_excitation(*d, activation="silu")
    assert isinstance(got, cla.Array)
    _check(got.get(), x, w1, b1, w2, b2, "silu", "sigmoid", np.float32)
    out = cla.empty_like(d[0])
    assert clconv.squeeze_excitation(*d, activation="silu", out=out) is out
    _check(out.get(), x, w1, b1, w2, b2, "silu", "sigmoid", np.float32)
    plan = SqueezeExcitationPlan(dev, (1, 8, 6, 6), w1.shape, b1.shape, w2.shape, b2.shape,
                                 "silu", "sigmoid", np.float32)
    for n in (1, 3):
        got = plan(x[:n], w1, b1, w2, b2)
        _check(got, x[:n], w1, b1, w2, b2, "silu", "sigmoid", np.float32)


@pytest.mark.parametrize("args, match", [
    (((2, 8, 4, 4), (4, 7, 1, 1), (4,), (8, 4, 1, 1), (8,)), "weight1 must have shape"),
    (((2, 8, 4, 4), (4, 8, 1, 1), (4,), (8, 5, 1, 1), (8,)), "weight2 must have shape"),
    (((2, 8, 4, 4), (4, 8, 3, 3), (4,), (8, 4, 1, 1), (8,)), "weight1 must have shape"),
    (((2, 8, 4, 4), (0, 8, 1, 1), (0,), (8, 0, 1, 1), (8,)), "weight1 must have shape"),
    (((2, 8, 4, 4), (4, 8, 1, 1), (5,), (8, 4, 1, 1), (8,)), "bias1 must have shape"),
    (((2, 8, 4, 4), (4, 8, 1, 1), (4,), (8, 4, 1, 1), (4,)), "bias2 must have shape"),
    (((2, 8), (4, 8), (4,), (8, 4), (8,)), "input must be"),
    (((2, 8, 4, 4), (4, 8, 1), (4,), (8, 4, 1), (8,)), "input must be"),
    (((2, 8, 0, 4), (4, 8, 1, 1), (4,), (8, 4, 1, 1), (8,)), "no element to average"),
], ids=str)
def test_bad_shapes_are_named(dev, args, match):
    ops = [None if s is None else np.ones(s, np.float32) for s in args]
    with pytest.raises(ValueError, match=match):
        clconv.squeeze_excitation(*ops)


def test_bad_dtypes_and_activations(dev):
    x, w = np.ones((1, 4, 2, 2), np.float32), np.ones((2, 4, 1, 1), np.float32)
    w2 = np.ones((4, 2, 1, 1), np.float32)
    with pytest.raises(TypeError):
        clconv.squeeze_excitation(x.astype(np.int32), w, None, w2, None)
    with pytest.raises((TypeError, ValueError)):
        clconv.squeeze_excitation(x, w, None, w2, None, gate="no such activation")
    if dev.fp64:
        with pytest.raises(TypeError):
            clconv.squeeze_excitation(x, w.astype(np.float64), None, w2, None)


def test_empty_batch(dev):
    x = np.ones((0, 4, 3, 3), np.float32)
    got = clconv.squeeze_excitation(x, np.ones((2, 4, 1, 1), np.float32), None,
                                    np.ones((4, 2, 1, 1), np.float32), None)
    assert got.shape == (0, 4, 3, 3)


@pytest.mark.parametrize("local", [2, 16, 64])
def test_several_work_items_a_group(dev, rng, monkeypatch, local):
    """The work-group of GPUs (several work-items striding each row, their partial sums added
    in order): the same values. CPU devices run one."""
    from clconv.ops import squeeze_excitation as se

    monkeypatch.setattr(se, "_CPU_LOCAL", local)
    monkeypatch.setattr(se, "_GPU_LOCAL", local)
    for shape, hidden in (((2, 40, 9, 7), 10), ((1, 7, 3, 3), 19), ((1, 600, 2, 2), 150)):
        x, w1, b1, w2, b2 = _operands(rng, shape, hidden, True, np.float32)
        plan = SqueezeExcitationPlan(dev, x.shape, w1.shape, b1.shape, w2.shape, b2.shape,
                                     "silu", "hardsigmoid", np.float32)
        budget = se._local_budget(dev) - (shape[1] + hidden) * 4
        # (fewer where the local memory or the kernel's work-group size is short)
        assert 1 <= plan.local <= local and max(shape[1], hidden) * plan.local * 4 <= budget
        _check(plan(x, w1, b1, w2, b2), x, w1, b1, w2, b2, "silu", "hardsigmoid", np.float32)
