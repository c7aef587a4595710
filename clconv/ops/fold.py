"""Folding an inference-mode BatchNorm into the convolution before it.

For eval-mode BatchNorm after a convolution, bn(conv(x, W) + b) = conv(x, W') + b' with, per output
channel c,

    s[c] = gamma[c] / sqrt(running_var[c] + eps)
    W'[c, ...] = W[c, ...] * s[c]            (forward weight (C_out, C_in/groups, *k))
    b'[c] = (b[c] - running_mean[c]) * s[c] + beta[c]

(torch.nn.utils.fuse_conv_bn_weights' formula and order). For a transposed convolution the weight is
(C_in, C_out/groups, *k) and output channel c = g * C_out/groups + j is weight[ci, j] for the input
channels ci of group g: the scale applies along dim 1, per group. The folded weight and bias then go
to clconv.conv*d / conv_transpose*d (with the activation and the residual fused there too).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl.array as cla
from pyopencl import clmath
from pyopencl.elementwise import ElementwiseKernel

from ..runtime.interop import host_operand
from .scalars import plain_number

__all__ = ["fold_batchnorm", "fold_overflowed", "foldable"]


def fold_batchnorm(weight: Any, bias: Any, running_mean: Any, running_var: Any,
                   gamma: Any = None, beta: Any = None, eps: float = 1e-5, *,
                   transposed: bool = False, groups: int = 1) -> tuple[Any, Any]:
    """(weight, bias) of the convolution whose output is BatchNorm (eval mode) of this one's.

    weight: forward (C_out, C_in/groups, *k) or, with transposed=True, (C_in, C_out/groups, *k)
    (any nd; a linear layer's (out, in) works as a forward weight); bias: (C_out,) or None (zero);
    running_mean, running_var: (C_out,); gamma, beta: BatchNorm's weight and bias, (C_out,) or None
    (affine=False: 1 and 0); eps: BatchNorm's eps (>= 0); groups: the transposed convolution's
    groups (the forward layout needs none). C_out is weight.shape[0] forward, weight.shape[1] *
    groups transposed.

    numpy in -> numpy out (computed in float64, returned in the weight's dtype); a pyopencl Array
    weight -> pyopencl Arrays on its queue, computed there in its dtype (numpy operands are
    uploaded). Returns a new (weight, bias); the arguments are not modified.
    """
    eps = plain_number(eps)
    on_device = isinstance(weight, cla.Array)
    weight = host_operand(weight, "weight")  # (lists, scalars, tensors that need grad: TypeError)
    if weight.dtype.kind != "f":
        raise TypeError(f"weight must be a floating array, got dtype {weight.dtype}")
    shape = tuple(weight.shape) if on_device else np.shape(weight)
    if len(shape) < 2:
        raise ValueError(f"weight must have at least 2 dims ((C_out, C_in/groups, *k), or (C_in, "
                         f"C_out/groups, *k) transposed), got shape {shape}")
    if not isinstance(groups, numbers.Integral) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if not transposed and groups != 1:
        # The forward layout already has one row per output channel.
        groups_note = " (groups only matters for transposed weights)"
    else:
        groups_note = ""
    if transposed and shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the transposed weight's C_in "
                         f"(dim 0, {shape[0]})")
    channels = shape[1] * groups if transposed else shape[0]
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or not math.isfinite(eps) \
            or eps < 0:
        raise ValueError(f"eps must be a finite real number >= 0, got {eps!r}")
    operands = {"bias": bias, "running_mean": running_mean, "running_var": running_var,
                "gamma": gamma, "beta": beta}
    for name, v in operands.items():
        if v is None and name in ("running_mean", "running_var"):
            raise ValueError(f"{name} is required (BatchNorm's running statistics), got None")
        if v is not None:
            v = operands[name] = host_operand(v, name)
            if v.dtype.kind != "f":
                raise TypeError(f"{name} must be a floating array, got dtype {v.dtype}")
            got = tuple(v.shape) if isinstance(v, cla.Array) else np.shape(v)
            if got != (channels,):
                raise ValueError(f"{name} must have shape ({channels},) (one per output "
                                 f"channel{groups_note}), got {got}")
    if on_device:
        return _fold_device(weight, operands, float(eps), transposed, groups, channels)
    return _fold_host(np.asarray(weight), operands, float(eps), transposed, groups, channels)


def foldable(running_var: Any, gamma: Any = None, eps: float = 1e-5) -> bool:
    """Whether BatchNorm's scale gamma / sqrt(running_var + eps) is finite (host arrays). Not
    (an Inf gamma, a zero variance with eps 0): the folded weights would be multiplied by Inf, and
    sums of Inf of both signs and the padding's 0 * Inf give NaN where torch's BatchNorm of the
    convolution's output gives an Inf; such a BatchNorm must run on its own."""
    with np.errstate(all="ignore"):
        scale = (1.0 if gamma is None else np.asarray(gamma, np.float64)) / \
            np.sqrt(np.asarray(running_var, np.float64) + float(eps))
    return bool(np.isfinite(scale).all())


def fold_overflowed(originals: Sequence[Any], folded: Sequence[Any]) -> bool:
    """Whether folding made a finite model infinite: every operand in `originals` (host arrays
    or None) is finite but a value of `folded` is not. A folded weight can leave its dtype's
    range where neither the convolution's output nor BatchNorm's did (float16, whose largest value
    is 65504: a weight of 300 over a dead channel's sqrt(eps) = 0.003); such a BatchNorm must run
    on its own, as torch's does."""
    with np.errstate(invalid="ignore"):
        finite = all(v is None or np.isfinite(np.asarray(v, np.float64)).all() for v in originals)
        return finite and not all(np.isfinite(np.asarray(v)).all() for v in folded)


def _scale_shape(shape: tuple[int, ...], transposed: bool, groups: int) -> tuple[int, ...]:
    """The weight viewed so that the (groups, C_out/groups) scale broadcasts over it."""
    if transposed:
        return (groups, shape[0] // groups, shape[1], *shape[2:])
    return shape


def _fold_host(w: np.ndarray, operands: dict[str, Any], eps: float, transposed: bool,
               groups: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    dtype = w.dtype if w.dtype.kind == "f" else np.dtype(np.float64)

    def get(name: str, default: float) -> np.ndarray:
        v = operands[name]
        if isinstance(v, cla.Array):
            raise TypeError(f"{name} is a pyopencl Array but weight is numpy: pass one kind")
        return np.full(channels, default) if v is None else np.asarray(v, np.float64)

    # Inf and NaN as the formula gives them (a zero variance with eps 0), without numpy's
    # warnings: the values are the result, and callers that refuse them check them.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rsqrt = 1.0 / np.sqrt(get("running_var", 1.0) + eps)
        scale = get("gamma", 1.0) * rsqrt
        b = (get("bias", 0.0) - get("running_mean", 0.0)) * rsqrt * get("gamma", 1.0) + \
            get("beta", 0.0)
        w64 = w.astype(np.float64)
        if transposed:
            view = w64.reshape(_scale_shape(w.shape, True, groups))
            s = scale.reshape((groups, 1, channels // groups) + (1,) * (w.ndim - 2))
            folded = (view * s).reshape(w.shape)
        else:
            folded = w64 * scale.reshape((channels,) + (1,) * (w.ndim - 1))
        return folded.astype(dtype), b.astype(dtype)


_KERNELS: dict[tuple[Any, str], ElementwiseKernel] = {}


def _scale_kernel(context: Any, dtype: np.dtype) -> ElementwiseKernel:
    """out[i] = w[i] * s[channel of i]: forward (inner = elements per output channel) or
    transposed (weight (C_in, C_out/g, K): channel = (i / (C_out/g * K) / cin_g) * C_out/g +
    (i / K) % (C_out/g))."""
    key = (context, np.dtype(dtype).str)
    found = _KERNELS.get(key)
    if found is None:
        ctype = "double" if dtype == np.float64 else "float"
        found = ElementwiseKernel(
            context,
            f"__global {ctype} *out, __global const {ctype} *w, __global const {ctype} *s, "
            "long inner, long cout_g, long cin_g, int transposed",
            "long c = transposed ? ((i / (cout_g * inner)) / cin_g) * cout_g + "
            "(i / inner) % cout_g : i / inner; out[i] = w[i] * s[c]",
            "clconv_fold_batchnorm",
            preamble="#pragma OPENCL EXTENSION cl_khr_fp64 : enable" if ctype == "double" else "")
        _KERNELS[key] = found
    return found


def _fold_device(w: cla.Array, operands: dict[str, Any], eps: float, transposed: bool,
                 groups: int, channels: int) -> tuple[cla.Array, cla.Array]:
    queue, dtype = w.queue, w.dtype

    def get(name: str, default: float) -> cla.Array:
        v = operands[name]
        if v is None:
            return cla.empty(queue, (channels,), dtype).fill(default)
        if isinstance(v, cla.Array):
            if v.context != w.context:
                raise ValueError(f"{name} is a pyopencl Array of another context than weight's")
            if v.dtype != dtype:
                raise TypeError(f"{name} has dtype {v.dtype} but weight {dtype}: one dtype")
            return v
        return cla.to_device(queue, np.ascontiguousarray(v, dtype))

    rsqrt = 1.0 / clmath.sqrt(get("running_var", 1.0) + eps)
    gamma = get("gamma", 1.0)
    scale = gamma * rsqrt
    b = (get("bias", 0.0) - get("running_mean", 0.0)) * rsqrt * gamma + get("beta", 0.0)
    src = w if w.flags.c_contiguous else w.copy()
    out = cla.empty(queue, w.shape, dtype)
    shape = tuple(w.shape)
    k = int(np.prod(shape[2:], dtype=np.int64))
    if transposed:
        inner, cout_g, cin_g = k, shape[1], shape[0] // groups
    else:
        inner, cout_g, cin_g = int(np.prod(shape[1:], dtype=np.int64)), 1, 1
    if out.size:
        _scale_kernel(w.context, dtype)(out, src, scale, np.int64(inner), np.int64(cout_g),
                                        np.int64(cin_g), np.int32(1 if transposed else 0),
                                        queue=queue)
    return out, b
