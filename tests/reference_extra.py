"""Additions to the float64 oracle (``reference.py``) for the transposed-convolution, gradient and
layer tests: gradients of convolutions with non-zero padding modes, gradients of transposed
convolutions, bias gradients and central finite differences.

Built only from ``reference.py``'s functions and numpy; does not import ``clconv``.
"""

from __future__ import annotations

import numpy as np
import reference as ref


def _pad_index_map(spatial, pads, mode):
    """For every position of the padded grid, the flat index of the stored element it reads."""
    idx = np.arange(int(np.prod(spatial))).reshape(spatial)
    return ref.pad_nd(idx[None, None], pads, mode)[0, 0]


def conv_nd_input(input_size, w, grad_out, stride=1, padding=0, dilation=1, groups=1,
                  padding_mode="zeros"):
    """``reference.conv_nd_input`` for any padding mode: the zero-padding adjoint on the padded
    grid, then every padded position added onto the element the mode copied it from."""
    if padding_mode == "zeros":
        return ref.conv_nd_input(input_size, w, grad_out, stride, padding, dilation, groups)
    w = np.asarray(w, dtype=np.float64)
    nsp = w.ndim - 2
    dilation_t = ref.ntuple(dilation, nsp)
    pads = ref.resolve_padding(padding, w.shape[2:], dilation_t)
    spatial = tuple(input_size[-nsp:])
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pads))
    gp = ref.conv_nd_input(tuple(input_size[:2]) + padded, w, grad_out, stride, 0, dilation, groups)
    index = _pad_index_map(spatial, pads, padding_mode).ravel()
    n, c = gp.shape[:2]
    out = np.zeros((n, c, int(np.prod(spatial))))
    np.add.at(out, (slice(None), slice(None), index), gp.reshape(n, c, -1))
    return out.reshape((n, c) + spatial)


def conv_nd_weight(x, weight_size, grad_out, stride=1, padding=0, dilation=1, groups=1,
                   padding_mode="zeros"):
    """``reference.conv_nd_weight`` for any padding mode (the input padded by the mode first)."""
    if padding_mode == "zeros":
        return ref.conv_nd_weight(x, weight_size, grad_out, stride, padding, dilation, groups)
    nsp = len(weight_size) - 2
    pads = ref.resolve_padding(padding, tuple(weight_size[2:]), ref.ntuple(dilation, nsp))
    xp = ref.pad_nd(np.asarray(x, dtype=np.float64), pads, padding_mode)
    return ref.conv_nd_weight(xp, weight_size, grad_out, stride, 0, dilation, groups)


def bias_grad(grad_out) -> np.ndarray:
    """Gradient w.r.t. the bias: grad_out summed over every dim but the channels (dim 1)."""
    g = np.asarray(grad_out, dtype=np.float64)
    return g.sum(axis=(0,) + tuple(range(2, g.ndim)))


def conv_transpose_nd_input(x_shape, w, grad_out, stride=1, padding=0, output_padding=0, groups=1,
                            dilation=1):
    """Gradient of ``conv_transpose_nd`` w.r.t. its input: the forward convolution of grad_out with
    the same weight, cropped to the input's size (output_padding can make it one longer)."""
    w = np.asarray(w, dtype=np.float64)
    nsp = w.ndim - 2
    full = ref.conv_nd(grad_out, w, None, stride, padding, dilation, groups)
    return full[(slice(None), slice(None)) + tuple(slice(0, s) for s in x_shape[-nsp:])]


def conv_transpose_nd_weight(x, weight_shape, grad_out, stride=1, padding=0, output_padding=0,
                             groups=1, dilation=1):
    """Gradient of ``conv_transpose_nd`` w.r.t. its weight (C_in, C_out/groups, *k): the forward
    convolution's weight gradient with grad_out as its input and x as its output gradient."""
    del output_padding  # only the size of grad_out carries it
    return ref.conv_nd_weight(grad_out, weight_shape, x, stride, padding, dilation, groups)


def finite_difference(f, x: np.ndarray, direction: np.ndarray, eps: float = 1e-6) -> float:
    """Central difference (f(x + eps d) - f(x - eps d)) / (2 eps) of a scalar function f."""
    return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)
