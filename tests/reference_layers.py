"""Float64 numpy oracle for the layers around the convolutions: pooling, activations, batch norm.

Written for clarity (explicit loops over output positions), from torch's documented formulas; it
imports nothing of clconv. Inputs are batched (N, C, *spatial).
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def pool_output_size(size: int, k: int, pad: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    """torch.nn.MaxPool/AvgPool's output length: floor or ceil of the window count; with ceil_mode
    the last window must start inside the input or its left padding."""
    span = size + 2 * pad - dilation * (k - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _tuple(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v) * (nd if len(tuple(v)) == 1 else 1)


def max_pool(x, kernel, stride=None, padding=0, dilation=1, ceil_mode=False) -> np.ndarray:
    nd = x.ndim - 2
    k, p, d = _tuple(kernel, nd), _tuple(padding, nd), _tuple(dilation, nd)
    s = k if stride is None else _tuple(stride, nd)
    size = x.shape[2:]
    out = [pool_output_size(*a, ceil_mode) for a in zip(size, k, p, s, d)]
    y = np.empty(x.shape[:2] + tuple(out))
    for o in itertools.product(*(range(n) for n in out)):
        ranges = [[o[i] * s[i] - p[i] + j * d[i] for j in range(k[i])] for i in range(nd)]
        ranges = [[v for v in r if 0 <= v < size[i]] for i, r in enumerate(ranges)]
        win = x[(slice(None), slice(None)) + np.ix_(*ranges)].reshape(x.shape[:2] + (-1,))
        # NaN wins, as torch's max pooling
        y[(slice(None), slice(None)) + o] = np.where(np.isnan(win).any(-1), np.nan,
                                                     np.max(win, -1))
    return y


def avg_pool(x, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
             divisor_override=None) -> np.ndarray:
    nd = x.ndim - 2
    k, p = _tuple(kernel, nd), _tuple(padding, nd)
    s = k if stride is None else _tuple(stride, nd)
    size = x.shape[2:]
    out = [pool_output_size(*a, 1, ceil_mode) for a in zip(size, k, p, s)]
    y = np.empty(x.shape[:2] + tuple(out))
    for o in itertools.product(*(range(n) for n in out)):
        lo = [o[i] * s[i] - p[i] for i in range(nd)]
        hi = [min(lo[i] + k[i], size[i] + p[i]) for i in range(nd)]
        padded = math.prod(h - l for l, h in zip(lo, hi))
        lo = [max(v, 0) for v in lo]
        hi = [min(h, size[i]) for i, h in enumerate(hi)]
        count = math.prod(max(h - l, 0) for l, h in zip(lo, hi))
        idx = (slice(None), slice(None)) + tuple(slice(l, h) for l, h in zip(lo, hi))
        total = x[idx].reshape(x.shape[:2] + (-1,)).sum(-1)
        div = divisor_override or (padded if count_include_pad else count)
        y[(slice(None), slice(None)) + o] = total / div if count else 0.0
    return y


def adaptive_pool(x, output_size, reduce=np.mean) -> np.ndarray:
    """Adaptive pooling: window [floor(o * I / O), ceil((o + 1) * I / O)) per dim."""
    nd = x.ndim - 2
    size = x.shape[2:]
    out = tuple(size[i] if v is None else v for i, v in enumerate(_tuple(output_size, nd)))
    y = np.empty(x.shape[:2] + out)
    for o in itertools.product(*(range(n) for n in out)):
        idx = (slice(None), slice(None)) + tuple(
            slice(o[i] * size[i] // out[i], -(-(o[i] + 1) * size[i] // out[i])) for i in range(nd))
        win = x[idx].reshape(x.shape[:2] + (-1,))
        y[(slice(None), slice(None)) + o] = reduce(win, -1)
    return y


def adaptive_max(win, axis):
    return np.where(np.isnan(win).any(axis), np.nan, np.max(win, axis))


def _erf_np(v):
    return np.vectorize(math.erf, otypes=[np.float64])(v)


def _sigmoid(v):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-v))


#: name -> f(x) in float64 (torch's formulas).
ACTIVATIONS = {
    "relu": lambda v: np.where(v < 0, 0.0, v),
    "relu6": lambda v: np.where(v < 0, 0.0, np.where(v > 6, 6.0, v)),
    "silu": lambda v: v * _sigmoid(v),
    "gelu": lambda v: 0.5 * v * (1 + _erf_np(v / math.sqrt(2))),
    "gelu_tanh": lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "hardswish": lambda v: v * np.clip(v + 3, 0, 6) / 6,
    "hardsigmoid": lambda v: np.clip(v + 3, 0, 6) / 6,
    "mish": lambda v: v * np.tanh(np.log1p(np.exp(v))),
    "softplus": lambda v: np.where(v > 20, v, np.log1p(np.exp(v))),
    "selu": lambda v: 1.0507009873554804934193349852946 * np.where(
        v > 0, v, 1.6732632423543772848170429916717 * np.expm1(v)),
    "logsigmoid": lambda v: np.minimum(v, 0) - np.log1p(np.exp(-np.abs(v))),
    "softsign": lambda v: v / (1 + np.abs(v)),
    "tanhshrink": lambda v: v - np.tanh(v),
    "hardshrink": lambda v: np.where((v >= -0.5) & (v <= 0.5), 0.0, v),
    "softshrink": lambda v: np.where(v > 0.5, v - 0.5, np.where(v < -0.5, v + 0.5, v * 0)),
    "abs": np.abs, "exp": np.exp, "log": np.log, "rsqrt": lambda v: 1 / np.sqrt(v),
}


def batch_norm(x, mean, var, weight=None, bias=None, eps=1e-5) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y
