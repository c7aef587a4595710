"""Argument normalisation, validation and output sizes for convolutions and im2col/col2im.

Pure functions of shapes and arguments (nothing here touches a device), so every check runs before any
work is queued. Messages name the offending argument, as PyTorch's do.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np
from pyopencl import cltypes

from ..runtime.errors import ResidualShapeError

__all__ = [
    "PADDING_MODES",
    "ConvGeometry",
    "IntOrTuple",
    "PaddingArg",
    "as_tuple",
    "check_ranks_and_groups",
    "conv_geometry",
    "conv_operand_shapes",
    "fold_geometry",
    "spatial_defines",
    "unfold_geometry",
]

IntOrTuple = Union[int, Sequence[int]]
# An int, one int a spatial dim, 'same' / 'valid', or (forward convolutions only) one (lo, hi)
# pair a spatial dim: ONNX's asymmetric pads (begin, end).
PaddingArg = Union[int, Sequence[int], Sequence[Sequence[int]], str]
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_PAD_MODE_CODE = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}


def _is_plain_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_int(v: object) -> bool:
    """An int, or what torch takes as one for a size argument: an integer array or tensor of one
    element (operator.index converts it; bools are refused)."""
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, numbers.Integral):
        return True
    try:
        operator.index(v)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


def as_tuple(value: IntOrTuple, nd: int, name: str, minimum: int,
             one_for_all: bool = True) -> tuple[int, ...]:
    """An int or a tuple or list of `nd` ints (or of 1, with one_for_all, as torch's convolutions
    take), as an nd-tuple of ints >= minimum. Other sequences (bytes, a range) are a TypeError,
    as in torch: b"ab" would be the sizes (97, 98)."""
    if _is_int(value):
        items = [operator.index(value)] * nd  # type: ignore[arg-type]
    elif isinstance(value, (tuple, list)) and all(map(_is_int, value)):
        items = [operator.index(v) for v in value]
        if len(items) == 1 and one_for_all:
            items = items * nd
        if len(items) != nd:
            raise ValueError(f"{name} must be an int or a sequence of {nd} ints for a {nd}-d "
                             f"operation, got {tuple(value)}")
    else:
        padding = name == "padding"
        pairs = padding and isinstance(value, Sequence) and not isinstance(value, str) and any(
            isinstance(v, Sequence) for v in value)
        raise TypeError(f"{name} must be an int or a sequence of {nd} ints, got {value!r}" + (
            " (padding as (lo, hi) pairs is taken by the forward convolutions "
            "clconv.conv1d/2d/3d and their plans only)" if pairs else
            " ('same' and 'valid' are taken by the forward convolutions clconv.conv1d/2d/3d, "
            "their gradients and their plans only)" if padding and isinstance(value, str) else ""))
    if any(v < minimum for v in items):
        what = "negative" if minimum == 0 else f"less than {minimum}"
        raise ValueError(f"{name} must not be {what}, got {tuple(items)}")
    return tuple(items)


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about one convolution except the data: sizes per spatial dim, in PyTorch order.

    A transposed convolution is described by the geometry of the forward convolution it is the adjoint
    of: `in_size` is then the transposed op's output size.
    """

    nd: int
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad_lo: tuple[int, ...]
    pad_hi: tuple[int, ...]
    out_size: tuple[int, ...]
    padding_mode: str = "zeros"

    @property
    def ksize(self) -> int:
        return math.prod(self.kernel)

    @property
    def in_spatial(self) -> int:
        return math.prod(self.in_size)

    @property
    def out_spatial(self) -> int:
        return math.prod(self.out_size)

    @property
    def cin_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def cout_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def is_pointwise(self) -> bool:
        """True when im2col would copy the input unchanged (1x1 kernel, stride 1, no padding)."""
        return (self.ksize == 1 and set(self.stride) == {1} and not any(self.pad_lo)
                and not any(self.pad_hi))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels, *self.in_size)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.batch, self.out_channels, *self.out_size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.cin_per_group, *self.kernel)

    @property
    def column_rows(self) -> int:
        """Rows of one image's column matrix: C_in * prod(kernel)."""
        return self.in_channels * self.ksize

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the convolution (the usual GFLOP/s convention)."""
        return 2 * self.batch * self.out_channels * self.out_spatial * self.cin_per_group * self.ksize

    def defines(self) -> dict[str, object]:
        """The -D geometry of common.cl (canonical 3-D: leading dims of 1 for 1-D and 2-D)."""
        return spatial_defines(self.in_channels, self.in_size, self.out_size, self.kernel,
                               self.stride, self.pad_lo, self.dilation, self.padding_mode)

    def shape_defines(self) -> dict[str, object]:
        """The -D geometry of a RUNTIME_SIZES kernel (common.cl): kernel size, stride, dilation and
        padding mode, so that the layers of a network share its programs; `size_args` are the
        sizes. The leading dims a 1-d or 2-d problem is lifted by stay defines (ID = OD = 1,
        PD = 0): they only tell 2-d layers from 3-d ones, and as constants they spare the 2-d
        kernels the depth arithmetic (cl/conv_grouped.cl: ~15 us of the ~40 us a launch that
        runtime sizes cost on PoCL, measured on MobileNetV2's 7x7 depthwise layer)."""
        lifted = {"ID", "OD", "PD"} if self.nd < 3 else set()
        if self.nd < 2:
            lifted |= {"IH", "OH", "PH"}
        return {k: v for k, v in self.defines().items() if k not in RUNTIME_SIZES or k in lifted}

    def size_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The GEOMETRY_ARGS of a RUNTIME_SIZES kernel (common.cl), as three cl int4:
        (C, ID, IH, IW), (COUT, OD, OH, OW), (GROUPS, PD, PH, PW)."""
        return split_sizes(self.defines(), self.out_channels, self.groups)[1]


#: The sizes a RUNTIME_SIZES kernel (common.cl) takes as arguments rather than -D defines.
RUNTIME_SIZES = frozenset(("C", "ID", "IH", "IW", "OD", "OH", "OW", "PD", "PH", "PW", "GROUPS",
                           "COUT"))


def split_sizes(defines: Mapping[str, object], out_channels: int = 1, groups: int = 1
                ) -> tuple[dict[str, object], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """common.cl's geometry `defines` as a RUNTIME_SIZES kernel takes them: (the -D left: kernel
    size, stride, dilation, padding mode; the GEOMETRY_ARGS, three cl int4 (C, ID, IH, IW),
    (COUT, OD, OH, OW), (GROUPS, PD, PH, PW))."""
    d = defines
    too_large = {name: v for name, v in (("channels", d["C"]), ("out channels", out_channels),
                                         ("groups", groups)) if int(v) > MAX_PADDED_SIZE}
    if too_large:
        raise ValueError(f"{', '.join(f'{k} {v}' for k, v in too_large.items())}: the kernels "
                         f"take channel counts and groups as 32-bit ints, which must stay below "
                         f"2**31")
    sizes = (cltypes.make_int4(*(int(d[k]) for k in ("C", "ID", "IH", "IW"))),
             cltypes.make_int4(out_channels, *(int(d[k]) for k in ("OD", "OH", "OW"))),
             cltypes.make_int4(groups, *(int(d[k]) for k in ("PD", "PH", "PW"))))
    return {k: v for k, v in d.items() if k not in RUNTIME_SIZES}, sizes


def spatial_defines(channels: int, in_size: Sequence[int], out_size: Sequence[int],
                    kernel: Sequence[int], stride: Sequence[int], pad_lo: Sequence[int],
                    dilation: Sequence[int], padding_mode: str = "zeros") -> dict[str, object]:
    lift = 3 - len(in_size)

    def canon(values: Sequence[int], fill: int) -> list[int]:
        return [fill] * lift + list(values)

    # A stride only ever multiplies output index 0 when the output has one position in that dim;
    # capping it there keeps -D values (and the kernels' coordinate arithmetic) far from overflow
    # for strides up to 2**63, without changing any result.
    stride = [s if o > 1 else min(s, i + lo + 1)
              for s, o, i, lo in zip(stride, out_size, in_size, pad_lo)]
    defines: dict[str, object] = {"C": channels, "PAD_MODE": _PAD_MODE_CODE[padding_mode]}
    for prefix, values, fill in (("I", in_size, 1), ("O", out_size, 1)):
        for axis, v in zip("DHW", canon(values, fill)):
            defines[prefix + axis] = v
    for prefix, values, fill in (("K", kernel, 1), ("S", stride, 1), ("P", pad_lo, 0),
                                 ("D", dilation, 1)):
        for axis, v in zip("DHW", canon(values, fill)):
            defines[prefix + axis] = v
    return defines


def _out_size(in_size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
              dilation: Sequence[int], pad_lo: Sequence[int], pad_hi: Sequence[int]) -> tuple[int, ...]:
    return tuple((i + lo + hi - d * (k - 1) - 1) // s + 1
                 for i, k, s, d, lo, hi in zip(in_size, kernel, stride, dilation, pad_lo, pad_hi))


# The kernels compute coordinates in the padded input with 32-bit ints (flat offsets may be 64-bit).
MAX_PADDED_SIZE = 2**31 - 1


def _check_spatial(name: str, shape: Sequence[int], in_size: Sequence[int]) -> None:
    """PyTorch's rule: only the batch (and channel) dims may be empty, never a spatial one."""
    if any(s < 1 for s in in_size):
        raise ValueError(f"{name} must have non-zero spatial sizes (only the batch may be 0), got "
                         f"shape {tuple(shape)}")


def _check_padded_size(in_size: Sequence[int], pad_lo: Sequence[int],
                       pad_hi: Sequence[int]) -> None:
    padded = tuple(i + lo + hi for i, lo, hi in zip(in_size, pad_lo, pad_hi))
    if any(p > MAX_PADDED_SIZE for p in padded):
        raise ValueError(f"padding {tuple(zip(pad_lo, pad_hi))} is too large: the padded input "
                         f"{padded} must stay below 2**31 in every dim")


def _check_kernel_fits(in_size: Sequence[int], kernel: Sequence[int], dilation: Sequence[int],
                       pad_lo: Sequence[int], pad_hi: Sequence[int]) -> None:
    _check_padded_size(in_size, pad_lo, pad_hi)
    padded = tuple(i + lo + hi for i, lo, hi in zip(in_size, pad_lo, pad_hi))
    extent = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    if any(e > p for e, p in zip(extent, padded)):
        raise ValueError(f"kernel size {tuple(kernel)} (dilated extent {extent}) is larger than the "
                         f"padded input {padded}")


def check_ranks_and_groups(nd: int, input_shape: Sequence[int], weight_shape: Sequence[int],
                           groups: object, op: str, weight_layout: str) -> None:
    """The checks every convolution starts with: operand ranks and `groups` (a positive int)."""
    if len(input_shape) != nd + 2:
        raise ValueError(f"input must have {nd + 1} (unbatched) or {nd + 2} (batched) dims for a "
                         f"{nd}-d {op}, got shape {tuple(input_shape)}")
    if len(weight_shape) != nd + 2:
        raise ValueError(f"weight must have {nd + 2} dims {weight_layout} for a {nd}-d {op}, got "
                         f"shape {tuple(weight_shape)}")
    if not _is_plain_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups}")


def conv_operand_shapes(input_shape: Sequence[int], weight_shape: Sequence[int],
                        bias_shape: Sequence[int] | None, residual_shape: Sequence[int] | None,
                        channels: int, output_shape: Sequence[int]
                        ) -> dict[str, tuple[int, ...] | None]:
    """The operand shapes of a (transposed) convolution's plan, None for an operand its calls
    omit, after checking the bias (one per output channel: `channels`) and the residual (the
    output's shape)."""
    if bias_shape is not None and tuple(bias_shape) != (channels,):
        raise ValueError(f"bias must have shape ({channels},) (one per output channel), got "
                         f"{tuple(bias_shape)}")
    if residual_shape is not None and tuple(residual_shape) != tuple(output_shape):
        raise ResidualShapeError(f"residual must have the output's shape "
                                 f"{tuple(output_shape)}, got {tuple(residual_shape)}")
    return {"input": tuple(input_shape), "weight": tuple(weight_shape),
            "bias": None if bias_shape is None else tuple(bias_shape),
            "residual": None if residual_shape is None else tuple(residual_shape)}


def conv_geometry(nd: int, input_shape: Sequence[int], weight_shape: Sequence[int],
                  stride: IntOrTuple, padding: PaddingArg, dilation: IntOrTuple, groups: int,
                  padding_mode: str = "zeros", asymmetric: bool = False) -> ConvGeometry:
    """Validates a convolution's arguments (PyTorch's rules) and returns its geometry.

    input_shape: (N, C_in, *spatial) (batched; the caller strips unbatched inputs first);
    weight_shape: (C_out, C_in / groups, *kernel). asymmetric: padding may also be one (lo, hi)
    pair a spatial dim (the forward convolutions; ONNX's pads).
    """
    check_ranks_and_groups(nd, input_shape, weight_shape, groups, "convolution",
                           "(C_out, C_in/groups, *kernel)")
    if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    stride_t = as_tuple(stride, nd, "stride", 1)
    dilation_t = as_tuple(dilation, nd, "dilation", 1)
    n, c_in, *in_size = (int(v) for v in input_shape)
    c_out, c_in_g, *kernel = (int(v) for v in weight_shape)
    _check_spatial("input", input_shape, in_size)
    if any(k < 1 for k in kernel) or c_in_g < 1 or c_out < 1:
        raise ValueError(f"weight must have non-zero sizes (C_out, C_in/groups, *kernel), got shape "
                         f"{tuple(weight_shape)}")
    if c_out % groups:
        raise ValueError(f"groups={groups} must divide the weight's output channels {c_out} "
                         f"(weight shape {tuple(weight_shape)})")
    if c_in_g * groups != c_in:
        hint = ""
        if int(input_shape[-1]) == c_in_g * groups:
            # The channels where a channels-last (NHWC) array keeps them: say how to move them.
            perm = (0, nd + 1, *range(1, nd + 1))
            hint = (f"; the input's last dim is {c_in_g * groups}: it looks channels-last (NHWC), "
                    f"but clconv takes channels first (N, C, *spatial): pass "
                    f"np.ascontiguousarray(x.transpose{perm}) (torch: x.permute{perm}; an "
                    f"unbatched input moves its last axis to the front)")
        raise ValueError(f"input has {c_in} channels but weight {tuple(weight_shape)} with "
                         f"groups={groups} expects {c_in_g * groups} (channel mismatch){hint}")
    pad_lo, pad_hi = _conv_padding(padding, nd, kernel, stride_t, dilation_t, asymmetric)
    _check_kernel_fits(in_size, kernel, dilation_t, pad_lo, pad_hi)
    if padding_mode == "reflect" and any(p >= i for p, i in zip(pad_lo + pad_hi, in_size * 2)):
        raise ValueError(f"padding {tuple(zip(pad_lo, pad_hi))} with padding_mode='reflect' must be "
                         f"smaller than the input size {tuple(in_size)} in every dim")
    if padding_mode == "circular" and any(p > i for p, i in zip(pad_lo + pad_hi, in_size * 2)):
        raise ValueError(f"padding {tuple(zip(pad_lo, pad_hi))} with padding_mode='circular' must "
                         f"not exceed the input size {tuple(in_size)} (it would wrap more than once)")
    out_size = _out_size(in_size, kernel, stride_t, dilation_t, pad_lo, pad_hi)
    return ConvGeometry(nd, n, c_in, c_out, int(groups), tuple(in_size), tuple(kernel), stride_t,
                        dilation_t, pad_lo, pad_hi, out_size, padding_mode)


def _conv_padding(padding: PaddingArg, nd: int, kernel: Sequence[int], stride: tuple[int, ...],
                  dilation: tuple[int, ...],
                  asymmetric: bool = False) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(leading, trailing) padding per dim; 'same' pads an odd total with the extra on the end,
    as PyTorch does for even kernels; with `asymmetric`, one (lo, hi) pair a dim is taken as
    given."""
    pairs = _padding_pairs(padding, nd)
    if pairs is not None:
        if not asymmetric:
            raise ValueError(f"padding as (lo, hi) pairs is taken by the forward convolutions "
                             f"clconv.conv1d/2d/3d and their plans only (not by gradients, "
                             f"transposed convolutions, unfold or clconv.dask), got {padding!r}")
        return tuple(lo for lo, _ in pairs), tuple(hi for _, hi in pairs)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * nd, (0,) * nd
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"padding='same' is not supported for strided convolutions "
                                 f"(stride={stride})")
            total = [d * (k - 1) for k, d in zip(kernel, dilation)]
            lo = tuple(t // 2 for t in total)
            return lo, tuple(t - low for t, low in zip(total, lo))
        raise ValueError(f"padding must be an int, a tuple of ints, 'same' or 'valid', got {padding!r}")
    pad = as_tuple(padding, nd, "padding", 0)
    return pad, pad


def _padding_pairs(padding: PaddingArg, nd: int) -> list[tuple[int, int]] | None:
    """`padding` as nd (lo, hi) pairs when it is written so (a sequence whose items are
    sequences), else None; ValueError/TypeError for a malformed or negative one."""
    if isinstance(padding, str) or not isinstance(padding, Sequence) or \
            not any(isinstance(p, Sequence) and not isinstance(p, str) for p in padding):
        return None
    if len(padding) != nd:
        raise ValueError(f"padding as (lo, hi) pairs needs one pair for each of the {nd} spatial "
                         f"dims, got {padding!r}")
    pairs = []
    for p in padding:
        if isinstance(p, str) or not isinstance(p, Sequence) or len(p) != 2 or \
                not all(map(_is_int, p)):
            raise TypeError(f"padding as (lo, hi) pairs needs a pair of ints for every spatial dim, "
                            f"got {padding!r}")
        lo, hi = operator.index(p[0]), operator.index(p[1])
        if lo < 0 or hi < 0:
            raise ValueError(f"padding must not be negative, got {padding!r}")
        pairs.append((lo, hi))
    return pairs


@dataclass(frozen=True)
class UnfoldGeometry:
    """im2col/col2im geometry: an image of `channels` x `in_size` and its `out_size` grid of blocks."""

    channels: int
    in_size: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...]
    out_size: tuple[int, ...]

    @property
    def blocks(self) -> int:
        return math.prod(self.out_size)

    @property
    def ksize(self) -> int:
        return math.prod(self.kernel)

    def defines(self) -> dict[str, object]:
        return spatial_defines(self.channels, self.in_size, self.out_size, self.kernel, self.stride,
                               self.padding, self.dilation)


def _block_args(nd: int, kernel_size: IntOrTuple, dilation: IntOrTuple, padding: IntOrTuple,
                stride: IntOrTuple) -> tuple[tuple[int, ...], ...]:
    # torch's unfold/fold take an int or exactly nd values (a 1-tuple is an error there)
    return (as_tuple(kernel_size, nd, "kernel_size", 1, False),
            as_tuple(dilation, nd, "dilation", 1, False),
            as_tuple(padding, nd, "padding", 0, False), as_tuple(stride, nd, "stride", 1, False))


def unfold_geometry(nd: int, channels: int, in_size: Sequence[int], kernel_size: IntOrTuple,
                    dilation: IntOrTuple, padding: IntOrTuple, stride: IntOrTuple) -> UnfoldGeometry:
    """Validates torch.nn.functional.unfold's arguments for an image of `in_size`."""
    kernel, dil, pad, st = _block_args(nd, kernel_size, dilation, padding, stride)
    if channels < 1:
        raise ValueError(f"input must have at least one channel (only the batch may be 0), got "
                         f"{channels} channels")
    _check_spatial("input", (channels, *in_size), in_size)
    _check_padded_size(in_size, pad, pad)
    out_size = _out_size(in_size, kernel, st, dil, pad, pad)
    if any(o < 1 for o in out_size):
        raise ValueError(f"kernel_size {kernel} with dilation {dil} does not fit the input of spatial "
                         f"size {tuple(in_size)} padded by {pad}: it gives {out_size} blocks")
    return UnfoldGeometry(channels, tuple(in_size), kernel, st, dil, pad, out_size)


def fold_geometry(nd: int, rows: int, blocks: int, output_size: IntOrTuple, kernel_size: IntOrTuple,
                  dilation: IntOrTuple, padding: IntOrTuple, stride: IntOrTuple) -> UnfoldGeometry:
    """Validates torch.nn.functional.fold's arguments for columns of `rows` x `blocks`."""
    size = as_tuple(output_size, nd, "output_size", 1, False)
    kernel, dil, pad, st = _block_args(nd, kernel_size, dilation, padding, stride)
    ksize = math.prod(kernel)
    if rows < 1 or blocks < 1:
        raise ValueError(f"input must have non-zero sizes (C*prod(kernel_size), L) (only the batch may "
                         f"be 0), got ({rows}, {blocks})")
    _check_padded_size(size, pad, pad)
    if rows % ksize:
        raise ValueError(f"input's dim 1 ({rows}) must be divisible by the product of kernel_size "
                         f"{kernel} ({ksize})")
    out_size = _out_size(size, kernel, st, dil, pad, pad)
    if any(o < 1 for o in out_size) or math.prod(out_size) != blocks:
        raise ValueError(f"input has {blocks} blocks in its last dim, but output_size {size} with "
                         f"kernel_size {kernel}, dilation {dil}, padding {pad} and stride {st} gives "
                         f"{out_size} = {math.prod(out_size) if all(o > 0 for o in out_size) else 0}")
    return UnfoldGeometry(rows // ksize, size, kernel, st, dil, pad, out_size)
