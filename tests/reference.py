"""Independent numpy float64 oracle for convolution-related operations.

Everything here is written for clarity, not speed, and follows PyTorch
semantics (``torch.nn.functional`` / ``torch.nn.grad``).  All functions are
generic over the number of spatial dimensions (1, 2 or 3 in practice) and
compute in float64 regardless of the input dtype.

Layouts (PyTorch):

* input ``x``:            ``(N, C, *spatial)``; the batch dim may be omitted
  ("unbatched" input ``(C, *spatial)``) for ``conv_nd`` / ``unfold``.
* conv weight ``w``:      ``(C_out, C_in // groups, *kernel)``
* transposed weight ``w``: ``(C_in, C_out // groups, *kernel)``

The core building block is ``_windows``: a read-only strided view
``(N, C, *out, *kernel)`` of the (already padded) input, where
``windows[n, c, o..., k...] = xp[n, c, o*stride + k*dilation]``.  Convolution
is then a single ``einsum`` per group, ``unfold`` is a transpose + reshape of
the same view, and the scatter-style operations (``fold``, transposed
convolution, input gradient) loop over kernel offsets and add strided slices.

This module deliberately does not import ``clconv``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

__all__ = [
    "PADDING_MODES",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_nd",
    "conv_nd_input",
    "conv_nd_weight",
    "conv_output_size",
    "conv_transpose_nd",
    "fold",
    "ntuple",
    "pad_nd",
    "resolve_padding",
    "unfold",
]

#: PyTorch padding_mode -> numpy.pad mode
PADDING_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}

_OUT_LETTERS = "pqr"  # spatial output positions (up to 3 spatial dims)
_KER_LETTERS = "ijk"  # kernel offsets


# --------------------------------------------------------------------------
# argument helpers
# --------------------------------------------------------------------------
def ntuple(value, n: int, name: str = "value") -> tuple:
    """Broadcast an int to an n-tuple, or validate a length-n sequence."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * n
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value * n
    if len(value) != n:
        raise ValueError(f"{name} must have {n} elements, got {value!r}")
    return value


def resolve_padding(padding, kernel: Sequence[int], dilation: Sequence[int]):
    """Turn ``padding`` into a list of ``(lo, hi)`` pairs, one per spatial dim.

    ``padding`` may be an int, a per-dim tuple (symmetric), ``'valid'``
    (no padding) or ``'same'``: total = dilation * (k - 1), lo = total // 2,
    hi = total - lo -- exactly how PyTorch pads an even kernel (extra element
    on the high side) -- or already ``(lo, hi)`` pairs, one per dim (ONNX's
    asymmetric pads).
    """
    n = len(kernel)
    if not isinstance(padding, (str, int)) and any(isinstance(p, (tuple, list)) for p in padding):
        pairs = [(int(lo), int(hi)) for lo, hi in padding]
        assert len(pairs) == n and min(min(p) for p in pairs) >= 0, padding
        return pairs
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * n
        if padding == "same":
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                lo = total // 2
                pads.append((lo, total - lo))
            return pads
        raise ValueError(f"unknown padding string {padding!r}")
    return [(p, p) for p in ntuple(padding, n, "padding")]


def conv_output_size(size: int, k: int, stride: int, lo: int, hi: int, dilation: int) -> int:
    """Number of output positions along one dim (PyTorch formula)."""
    return (size + lo + hi - dilation * (k - 1) - 1) // stride + 1


# --------------------------------------------------------------------------
# padding
# --------------------------------------------------------------------------
def pad_nd(x, pads, mode: str = "zeros") -> np.ndarray:
    """Pad the trailing ``len(pads)`` dims of ``x``.

    ``pads`` is a list of ``(lo, hi)`` pairs (first spatial dim first, i.e.
    *not* PyTorch's reversed ``F.pad`` order).  ``mode`` is a PyTorch
    padding_mode: 'zeros', 'reflect' (mirror without repeating the edge),
    'replicate' (repeat the edge) or 'circular' (wrap around).
    """
    x = np.asarray(x)
    if mode not in PADDING_MODES:
        raise ValueError(f"unknown padding mode {mode!r}")
    pads = [tuple(int(v) for v in p) for p in pads]
    width = [(0, 0)] * (x.ndim - len(pads)) + pads
    spatial = x.shape[x.ndim - len(pads):]
    for size, (lo, hi) in zip(spatial, pads):
        if lo < 0 or hi < 0:
            raise ValueError("negative padding is not supported by the oracle")
        # PyTorch's constraints (numpy would silently accept more).
        if mode == "reflect" and (lo >= size or hi >= size) and (lo or hi):
            raise ValueError("reflect padding must be < input size")
        if mode == "circular" and (lo > size or hi > size):
            raise ValueError("circular padding must be <= input size")
    if mode == "zeros":
        return np.pad(x, width, mode="constant", constant_values=0)
    return np.pad(x, width, mode=PADDING_MODES[mode])


# --------------------------------------------------------------------------
# windows
# --------------------------------------------------------------------------
def _windows(xp: np.ndarray, kernel, stride, dilation, out_shape=None) -> np.ndarray:
    """Strided view ``(N, C, *out, *kernel)`` of the padded input ``xp``.

    ``view[n, c, o..., k...] == xp[n, c, o*stride + k*dilation]``.
    """
    nsp = len(kernel)
    axes = tuple(range(2, 2 + nsp))
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    for size, e in zip(xp.shape[2:], extent):
        if e > size:
            raise ValueError(f"kernel extent {extent} larger than padded input {xp.shape[2:]}")
    # (N, C, *positions, *extent)
    view = np.lib.stride_tricks.sliding_window_view(xp, extent, axis=axes)
    idx = (
        (slice(None), slice(None))
        + tuple(slice(None, None, s) for s in stride)
        + tuple(slice(None, None, d) for d in dilation)
    )
    view = view[idx]
    if out_shape is not None:
        view = view[(slice(None), slice(None)) + tuple(slice(0, o) for o in out_shape)]
    return view


def _add_batch(x: np.ndarray, nsp: int):
    """Return (batched x, was_unbatched)."""
    if x.ndim == nsp + 1:
        return x[None], True
    if x.ndim != nsp + 2:
        raise ValueError(f"expected {nsp + 1}-D or {nsp + 2}-D input, got {x.ndim}-D")
    return x, False


def _operands(x, w):
    """(x batched, w, spatial dims, whether x was unbatched), x and w as float64 arrays."""
    w = np.asarray(w, dtype=np.float64)
    nsp = w.ndim - 2
    x, unbatched = _add_batch(np.asarray(x, dtype=np.float64), nsp)
    return x, w, nsp, unbatched


# --------------------------------------------------------------------------
# convolution
# --------------------------------------------------------------------------
def conv_nd(x, w, b=None, stride=1, padding=0, dilation=1, groups: int = 1,
            padding_mode: str = "zeros") -> np.ndarray:
    """N-d cross-correlation with PyTorch ``nn.ConvNd`` semantics, in float64.

    The number of spatial dims is taken from ``w.ndim - 2``.  ``x`` may be
    batched ``(N, C, *s)`` or unbatched ``(C, *s)``.  With a non-'zeros'
    ``padding_mode`` the input is padded with that mode and then convolved
    without padding, like ``torch.nn.Conv2d(padding_mode=...)``.
    """
    x, w, nsp, unbatched = _operands(x, w)
    stride = ntuple(stride, nsp, "stride")
    dilation = ntuple(dilation, nsp, "dilation")
    kernel = w.shape[2:]
    N, C = x.shape[:2]
    Cout, cin_g = w.shape[:2]
    if C != cin_g * groups:
        raise ValueError(f"input channels {C} != weight in-channels {cin_g} * groups {groups}")
    if Cout % groups:
        raise ValueError("out channels not divisible by groups")
    cout_g = Cout // groups

    pads = resolve_padding(padding, kernel, dilation)
    xp = pad_nd(x, pads, padding_mode)
    win = _windows(xp, kernel, stride, dilation)  # (N, C, *out, *k)

    o = _OUT_LETTERS[:nsp]
    k = _KER_LETTERS[:nsp]
    spec = f"nc{o}{k},dc{k}->nd{o}"  # d = output channel within the group
    parts = []
    for g in range(groups):
        xg = win[:, g * cin_g:(g + 1) * cin_g]
        wg = w[g * cout_g:(g + 1) * cout_g]
        parts.append(np.einsum(spec, xg, wg))
    out = np.concatenate(parts, axis=1) if parts else np.zeros((N, 0) + win.shape[2:2 + nsp])
    if b is not None:
        b = np.asarray(b, dtype=np.float64)
        out = out + b.reshape((1, Cout) + (1,) * nsp)
    return out[0] if unbatched else out


def conv1d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    assert np.ndim(w) == 3
    return conv_nd(x, w, b, stride, padding, dilation, groups, padding_mode)


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    assert np.ndim(w) == 4
    return conv_nd(x, w, b, stride, padding, dilation, groups, padding_mode)


def conv3d(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    assert np.ndim(w) == 5
    return conv_nd(x, w, b, stride, padding, dilation, groups, padding_mode)


# --------------------------------------------------------------------------
# im2col / col2im
# --------------------------------------------------------------------------
def unfold(x, kernel_size, dilation=1, padding=0, stride=1, nsp: int | None = None) -> np.ndarray:
    """``torch.nn.functional.unfold`` (im2col), N-d generic.

    ``x``: ``(N, C, *s)`` or unbatched ``(C, *s)``; the number of spatial dims
    is ``len(kernel_size)`` when it is a sequence, else ``nsp`` (default 2).
    Returns ``(N, C * prod(k), L)``, rows ordered channel-major then kernel
    offsets row-major, columns = output positions row-major.
    """
    x = np.asarray(x, dtype=np.float64)
    if nsp is None:
        nsp = 2 if isinstance(kernel_size, (int, np.integer)) else len(kernel_size)
    x, unbatched = _add_batch(x, nsp)
    kernel = ntuple(kernel_size, nsp, "kernel_size")
    dilation = ntuple(dilation, nsp, "dilation")
    stride = ntuple(stride, nsp, "stride")
    pads = [(p, p) for p in ntuple(padding, nsp, "padding")]
    xp = pad_nd(x, pads, "zeros")
    win = _windows(xp, kernel, stride, dilation)  # (N, C, *out, *k)
    N, C = x.shape[:2]
    out_shape = win.shape[2:2 + nsp]
    # -> (N, C, *k, *out)
    perm = (0, 1) + tuple(range(2 + nsp, 2 + 2 * nsp)) + tuple(range(2, 2 + nsp))
    cols = win.transpose(perm).reshape(N, C * int(np.prod(kernel)), int(np.prod(out_shape)))
    cols = np.ascontiguousarray(cols)
    return cols[0] if unbatched else cols


def fold(cols, output_size, kernel_size, dilation=1, padding=0, stride=1) -> np.ndarray:
    """``torch.nn.functional.fold`` (col2im, overlapping values are summed).

    ``cols``: ``(N, C * prod(k), L)`` or unbatched ``(C * prod(k), L)``;
    returns ``(N, C, *output_size)``.  N-d generic: the number of spatial dims
    is ``len(output_size)`` (an int output_size means 2-D).
    """
    cols = np.asarray(cols, dtype=np.float64)
    nsp = 2 if isinstance(output_size, (int, np.integer)) else len(output_size)
    size = ntuple(output_size, nsp, "output_size")
    kernel = ntuple(kernel_size, nsp, "kernel_size")
    dilation = ntuple(dilation, nsp, "dilation")
    stride = ntuple(stride, nsp, "stride")
    padding = ntuple(padding, nsp, "padding")
    unbatched = cols.ndim == 2
    if unbatched:
        cols = cols[None]
    N, CK, L = cols.shape
    kprod = int(np.prod(kernel))
    if CK % kprod:
        raise ValueError("cols.shape[1] must be divisible by prod(kernel_size)")
    C = CK // kprod
    blocks = tuple(
        conv_output_size(s, k, st, p, p, d)
        for s, k, st, p, d in zip(size, kernel, stride, padding, dilation)
    )
    if int(np.prod(blocks)) != L:
        raise ValueError(f"expected L={int(np.prod(blocks))} blocks, got {L}")
    cols = cols.reshape((N, C) + kernel + blocks)
    padded = np.zeros((N, C) + tuple(s + 2 * p for s, p in zip(size, padding)))
    for koff in itertools.product(*(range(k) for k in kernel)):
        target = (slice(None), slice(None)) + tuple(
            slice(kk * d, kk * d + st * (nb - 1) + 1, st)
            for kk, d, st, nb in zip(koff, dilation, stride, blocks)
        )
        padded[target] += cols[(slice(None), slice(None)) + koff]
    crop = (slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(padding, size))
    out = padded[crop]
    return out[0] if unbatched else out


# --------------------------------------------------------------------------
# transposed convolution and gradients (scatter formulations)
# --------------------------------------------------------------------------
def conv_transpose_nd(x, w, b=None, stride=1, padding=0, output_padding=0, groups: int = 1,
                      dilation=1) -> np.ndarray:
    """``torch.nn.functional.conv_transposeNd`` (argument order as PyTorch).

    ``w``: ``(C_in, C_out // groups, *k)``.  Every input element scatters
    ``x * w`` into the output at ``i*stride + k*dilation - padding``; the
    output size is ``(in-1)*stride - 2*padding + dilation*(k-1) +
    output_padding + 1``.
    """
    x, w, nsp, unbatched = _operands(x, w)
    stride = ntuple(stride, nsp, "stride")
    padding = ntuple(padding, nsp, "padding")
    output_padding = ntuple(output_padding, nsp, "output_padding")
    dilation = ntuple(dilation, nsp, "dilation")
    Cin = x.shape[1]
    in_size = x.shape[2:]
    kernel = w.shape[2:]
    if w.shape[0] != Cin or Cin % groups:
        raise ValueError("weight.shape[0] must equal input channels, divisible by groups")
    cout_g = w.shape[1]
    Cout = cout_g * groups
    out_size = tuple(
        (i - 1) * s - 2 * p + d * (k - 1) + op + 1
        for i, s, p, d, k, op in zip(in_size, stride, padding, dilation, kernel, output_padding)
    )
    full = tuple(o + 2 * p for o, p in zip(out_size, padding))
    buf = _scatter(x, w, groups, cout_g, full, stride, dilation)
    out = buf[(slice(None), slice(None)) + tuple(slice(p, p + o) for p, o in zip(padding, out_size))]
    if b is not None:
        out = out + np.asarray(b, dtype=np.float64).reshape((1, Cout) + (1,) * nsp)
    return out[0] if unbatched else out


def _scatter(src, w, groups: int, dst_per_group: int, full, stride, dilation) -> np.ndarray:
    """The adjoint of a convolution's gather: every ``src[n, g*S + s, p]`` (S = src channels per
    group) times ``w[g*S + s, d, k]`` added at ``p*stride + k*dilation`` of channel ``g*D + d``
    (D = ``dst_per_group``) in a zero ``(N, groups*D, *full)`` buffer, which is returned."""
    nsp = w.ndim - 2
    src_per_group = src.shape[1] // groups
    buf = np.zeros((src.shape[0], groups * dst_per_group) + tuple(full))
    sp = _OUT_LETTERS[:nsp]
    for koff in itertools.product(*(range(k) for k in w.shape[2:])):
        target_sp = tuple(
            slice(kk * d, kk * d + s * (i - 1) + 1, s)
            for kk, d, s, i in zip(koff, dilation, stride, src.shape[2:])
        )
        for g in range(groups):
            sg = src[:, g * src_per_group:(g + 1) * src_per_group]
            wg = w[(slice(g * src_per_group, (g + 1) * src_per_group), slice(None)) + koff]
            contrib = np.einsum(f"nc{sp},cd->nd{sp}", sg, wg)  # wg: (S, D)
            buf[(slice(None), slice(g * dst_per_group, (g + 1) * dst_per_group)) + target_sp] += \
                contrib
    return buf


def conv_nd_input(input_size, w, grad_out, stride=1, padding=0, dilation=1, groups: int = 1):
    """``torch.nn.grad.convNd_input``: gradient of ``conv_nd`` w.r.t. its input.

    ``input_size`` is the full input shape ``(N, C, *s)`` (only the spatial
    part is needed).  Each ``grad_out[n, o, p]`` scatters ``grad_out * w``
    back onto the input positions its window covered; contributions that
    land in the padding are dropped.
    """
    w = np.asarray(w, dtype=np.float64)
    go = np.asarray(grad_out, dtype=np.float64)
    nsp = w.ndim - 2
    stride = ntuple(stride, nsp, "stride")
    dilation = ntuple(dilation, nsp, "dilation")
    kernel = w.shape[2:]
    pads = resolve_padding(padding, kernel, dilation)
    in_sp = tuple(input_size[-nsp:])
    cin_g = w.shape[1]
    full = tuple(s + lo + hi for s, (lo, hi) in zip(in_sp, pads))
    buf = _scatter(go, w, groups, cin_g, full, stride, dilation)
    return buf[(slice(None), slice(None)) + tuple(slice(lo, lo + s) for (lo, _), s in zip(pads, in_sp))]


def conv_nd_weight(x, weight_size, grad_out, stride=1, padding=0, dilation=1, groups: int = 1):
    """``torch.nn.grad.convNd_weight``: gradient of ``conv_nd`` w.r.t. its weight.

    ``gw[o, c, k] = sum_{n, p} grad_out[n, o, p] * xpad[n, g*cin_g + c, p*stride + k*dilation]``.
    """
    x = np.asarray(x, dtype=np.float64)
    go = np.asarray(grad_out, dtype=np.float64)
    weight_size = tuple(weight_size)
    nsp = len(weight_size) - 2
    stride = ntuple(stride, nsp, "stride")
    dilation = ntuple(dilation, nsp, "dilation")
    Cout, cin_g = weight_size[:2]
    kernel = weight_size[2:]
    pads = resolve_padding(padding, kernel, dilation)
    xp = pad_nd(x, pads, "zeros")
    win = _windows(xp, kernel, stride, dilation, out_shape=go.shape[2:])
    cout_g = Cout // groups
    o = _OUT_LETTERS[:nsp]
    k = _KER_LETTERS[:nsp]
    parts = []
    for g in range(groups):
        xg = win[:, g * cin_g:(g + 1) * cin_g]
        gog = go[:, g * cout_g:(g + 1) * cout_g]
        parts.append(np.einsum(f"nc{o}{k},nd{o}->dc{k}", xg, gog))
    return np.concatenate(parts, axis=0)
