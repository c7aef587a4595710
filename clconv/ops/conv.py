"""Forward convolutions: `plan_conv1d/2d/3d` (validate, choose, configure once) and the functional
`conv1d/2d/3d` (a cached plan per shape and arguments, then run).

Algorithms (same semantics, same results within rounding; see clconv.ops.conv_algorithms):
'im2col' (the cl/im2col.cl kernel + CLBlast's GEMM), 'direct' (loops), 'implicit' (clconv's packed
GEMM fused with the gather: no column buffer), 'im2col_packed' (im2col into the packed GEMM's
panels + that GEMM), 'winograd' (opt-in, 2-d 3x3 stride 1), the shape-specific CPU kernels
'depthwise' (groups == C_in: clconv.ops.depthwise), 'pointwise' (unpadded 1x1: clconv.ops.pointwise)
and 'splitk' (few output positions: clconv.ops.splitk), which raise ValueError for other shapes
(`algorithm_unsupported` says why, for any named algorithm), and 'auto': the fastest of those
that keep PyTorch's Inf/NaN semantics, measured on first sight of a (device, shape, dtype) and
remembered (clconv.ops.autotune), or the fixed `rule_choice` with CLCONV_AUTO=rule. Candidates
whose workspace cannot fit the call's `workspace_limit` are left out ('direct' needs none).
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..runtime.device import Device, current_device
from ..runtime.errors import ResidualShapeError
from ..runtime.memory import empty, resolve_workspace_limit
from ..runtime.transfer import ArrayLike, device_dtype, result_dtype
from .activation import Activation, ActivationArg, normalize_activation
from .layout import (CHANNELS_LAST, ChannelsLastPlan, channels_first_axes, channels_first_shape,
                     channels_last, channels_last_shape)
from .conv_algorithms import (ColumnPlan, WinogradPlan, plan_columns, plan_winograd,
                              winograd_unsupported)
from .conv_select import ALGORITHM_CLASSES, ALGORITHMS, choose_algorithm, configure
from . import prebuild
from .dims import per_dimensions
from .geometry import ConvGeometry, IntOrTuple, PaddingArg, conv_geometry, conv_operand_shapes
from .launch import ACTIVATIONS
from .precision import plan_dtype
from .plan import Plan, bias_flag, cached_plan, derived, is_constant, shape_ints, shape_of

__all__ = ["ACTIVATIONS", "ConvPlan", "conv1d", "conv2d", "conv3d", "plan_conv", "plan_conv1d",
           "plan_conv2d", "plan_conv3d", "cached_conv_plan", "warmup", "workspace_size",
           "winograd_unsupported", "ColumnPlan", "WinogradPlan", "plan_columns", "plan_winograd"]


def _convolve(nd: int, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
              stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
              groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
              activation: ActivationArg = None, residual: ArrayLike | None = None,
              workspace_limit: int | None = None, out: ArrayLike | None = None,
              layout: str | None = None) -> ArrayLike:
    """conv{nd}d (the template of the public functions at the end of the module)."""
    last = layout is not None and channels_last(layout, nd)
    dev = current_device()
    dtype = device_dtype(dev, (input, weight), (bias, residual))
    if dtype is None:
        extra = {} if residual is None else {"residual": residual}
        dtype = result_dtype(dev, input=input, weight=weight, bias=bias, **extra)
    x_shape, w_shape = shape_of(input), shape_of(weight)
    b_shape = None if bias is None else shape_of(bias)
    r_shape = None if residual is None else shape_of(residual)
    if last:  # the plan of the channels-first shapes, called with channels-last operands
        x_shape = channels_first_shape(x_shape, nd, "input")
        if r_shape is not None:  # checked against the output's channels-last shape
            first = _residual_shape(nd, x_shape, w_shape, stride, padding, dilation, groups,
                                    padding_mode)
            if tuple(r_shape) != channels_last_shape(first, nd):
                raise ResidualShapeError(f"residual must have the output's shape "
                                         f"{channels_last_shape(first, nd)} ({CHANNELS_LAST[nd]}: "
                                         f"channels last), got {tuple(r_shape)}")
            r_shape = first
    plan = cached_conv_plan(dev, nd, x_shape, w_shape, b_shape, dtype, stride, padding, dilation,
                            groups, padding_mode, algorithm, activation, workspace_limit, r_shape)
    if last:
        return ChannelsLastPlan(nd, plan)(input, weight, bias, residual=residual, out=out)
    return plan.execute({"input": input, "weight": weight, "bias": bias, "residual": residual},
                        out, check=False)


def plan_conv(nd: int, input_shape: Sequence[int], weight_shape: Sequence[int], bias: Any = True,
              stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
              groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
              activation: ActivationArg = None, residual: bool = False,
              workspace_limit: int | None = None, dtype: Any = np.float32,
              layout: str | None = None) -> ConvPlan | ChannelsLastPlan:
    """A plan for an nd-d convolution (nd in 1, 2, 3) on the current device; see `plan_conv2d`."""
    if layout is not None and channels_last(layout, nd):  # a plan of the channels-first shapes
        x_shape = shape_ints(input_shape, "input_shape")
        if len(x_shape) not in (nd + 1, nd + 2):
            raise ValueError(f"input_shape must have {nd + 1} or {nd + 2} dims "
                             f"({CHANNELS_LAST[nd]}: channels last), got {x_shape}")
        first = tuple(x_shape[i] for i in channels_first_axes(len(x_shape), nd))
        return ChannelsLastPlan(nd, plan_conv(
            nd, first, weight_shape, bias, stride, padding, dilation, groups,
            padding_mode=padding_mode, algorithm=algorithm, activation=activation,
            residual=residual, workspace_limit=workspace_limit, dtype=dtype))
    x_shape = shape_ints(input_shape, "input_shape")
    w_shape = shape_ints(weight_shape, "weight_shape")
    if not isinstance(residual, (bool, np.bool_)):
        raise TypeError(f"residual must be a bool (whether calls pass one), got {residual!r}")
    b_shape = (w_shape[0],) if bias_flag(bias, w_shape[0] if w_shape else None) else None
    r_shape = _residual_shape(nd, x_shape, w_shape, stride, padding, dilation, groups,
                              padding_mode) if residual else None
    return ConvPlan(current_device(), nd, x_shape, w_shape, b_shape, stride, padding, dilation,
                    groups, padding_mode, algorithm, activation, workspace_limit, plan_dtype(dtype),
                    residual_shape=r_shape)


class ConvPlan(Plan):
    """A forward convolution, planned (see clconv.ops.plan). Attributes: geometry (ConvGeometry),
    algorithm (the one that runs), workspace_bytes, activation (as given), act (the validated
    Activation or None), has_residual."""

    # The residual has the output's shape: its first dim is the batch too (for sibling plans of
    # another batch size, clconv.ops.plan).
    _BATCH_ARGS = tuple(getattr(Plan, "_BATCH_ARGS", ())) + ("residual_shape",)
    _BATCH_OPERANDS = tuple(getattr(Plan, "_BATCH_OPERANDS", ())) + ("residual",)

    def __init__(self, dev: Device, nd: int, input_shape: tuple[int, ...],
                 weight_shape: tuple[int, ...], bias_shape: tuple[int, ...] | None,
                 stride: IntOrTuple, padding: PaddingArg, dilation: IntOrTuple, groups: int,
                 padding_mode: str, algorithm: str, activation: ActivationArg,
                 workspace_limit: int | None, dtype: np.dtype,
                 geometry: ConvGeometry | None = None,
                 residual_shape: tuple[int, ...] | None = None) -> None:
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        act = normalize_activation(activation)
        limit = resolve_workspace_limit(dev, workspace_limit)
        dtype = plan_dtype(dtype)
        unbatched = len(input_shape) == nd + 1
        batch_shape = (1, *input_shape) if unbatched else tuple(input_shape)
        # `geometry` (internal: the layers' backward) gives an already validated geometry, such as
        # a transposed convolution's forward one with its asymmetric padding.
        geo = geometry or conv_geometry(nd, batch_shape, weight_shape, stride, padding, dilation,
                                        groups, padding_mode, asymmetric=True)
        out_shape = geo.output_shape[1:] if unbatched else geo.output_shape
        operands = conv_operand_shapes(input_shape, weight_shape, bias_shape, residual_shape,
                                       geo.out_channels, out_shape)
        self._prepare(dev, dtype, operands, out_shape, geo.output_shape,
                      {"input": geo.input_shape, "weight": geo.weight_shape,
                       "output": geo.output_shape}, ("output", "input", "weight"))
        self.geometry = geo
        self.activation = activation
        self.act: Activation | None = act
        self.nd = nd
        self.has_bias = bias_shape is not None
        self.has_residual = residual_shape is not None
        self.impl = configure(dev, geo, algorithm, self.dtype, self.work, self.has_bias,
                              act, limit, self.has_residual)
        self.algorithm = self.impl.name
        self.workspace_bytes = self.impl.workspace_bytes
        self.label = f"conv{nd}d ({self.algorithm})"
        self.needs_gemm = self.algorithm in ("im2col", "winograd")  # CLBlast's

    def __call__(self, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
                 residual: ArrayLike | None = None, out: ArrayLike | None = None) -> ArrayLike:
        """act(conv(input, weight) + bias + residual), as the functional conv*d (residual: exactly
        when the plan was made with one)."""
        if bias is None and self.has_bias:
            bias = zero_bias(self.device, self.geometry.out_channels, self.dtype, weight)
        return self.execute({"input": input, "weight": weight, "bias": bias,
                             "residual": residual}, out)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        # The algorithms that return their last kernel's event spare the run a marker.
        w = arrays["weight"]
        kw: dict[str, Any] = {}
        prepare = getattr(self.impl, "prepare", None)
        if prepare is not None and is_constant(w):  # weights that never change (a
            # compiled model's): packed once per packing layout, not on every run
            geo = self.geometry
            kw["prepared"] = derived(w, ("packed", self.impl.tile, geo.cout_per_group,
                                         geo.cin_per_group * geo.ksize, geo.groups),
                                     lambda: prepare(w))
        if arrays.get("residual") is not None:
            kw["residual"] = unaliased(self.device, arrays["residual"], out)
        return self.impl.run(arrays["input"], w, arrays["bias"], out, **kw)

    def __repr__(self) -> str:
        return (f"<clconv ConvPlan conv{self.nd}d {self.geometry.input_shape} x "
                f"{self.geometry.weight_shape} -> {self.geometry.output_shape}, "
                f"algorithm={self.algorithm!r}, workspace {self.workspace_bytes} bytes>")


def unaliased(dev: Device, residual: cla.Array, out: cla.Array) -> cla.Array:
    """The residual, copied first when it overlaps the result buffer (`out=residual` on device
    arrays): some paths write the output before their epilogue reads the residual (a GEMM into
    the output, col2im, chunked partial sums)."""
    if residual.base_data != out.base_data:
        return residual
    lo, hi = residual.offset, residual.offset + residual.nbytes
    if hi <= out.offset or out.offset + out.nbytes <= lo:
        return residual
    copy = empty(dev, residual.shape, residual.dtype)
    cl.enqueue_copy(dev.queue, copy.base_data, residual.base_data, byte_count=residual.nbytes,
                    src_offset=residual.offset, dst_offset=copy.offset)
    return copy


def zero_bias(dev: Device, n: int, dtype: np.dtype, like: Any) -> Any:
    """A zero bias for a plan made with one but called without (numpy or device, as `like`;
    of like's floating dtype, so that a call of another dtype is refused for its operands, not
    for this bias)."""
    like_dtype = getattr(like, "dtype", None)
    if isinstance(like_dtype, np.dtype) and like_dtype.kind == "f":
        dtype = like_dtype
    if not isinstance(like, cla.Array):
        return np.zeros(n, dtype)
    key = ("zeros", n, np.dtype(dtype).str)
    found = dev.constants.get(key)
    if found is None:
        with dev.lock:
            found = cla.zeros(dev.queue, (n,), dtype)
            dev.constants[key] = found
    return found


def workspace_size(input: Any, weight: Any, stride: IntOrTuple = 1, padding: PaddingArg = 0,
                   dilation: IntOrTuple = 1, groups: int = 1, *, algorithm: str = "auto",
                   padding_mode: str = "zeros", dtype: Any = np.float32) -> int:
    """Bytes of workspace a convolution needs unsplit (0 for 'direct', 'implicit' and unpadded
    stride-1 1x1 convolutions): the im2col
    column buffer, or Winograd's transforms. (Given more, the im2col path folds the batch into the
    GEMM, which also stages the (C_out, N * L) GEMM result there: (C_in * k + C_out) * L values an
    image; the default limit usually allows it.)

    input/weight: arrays or shapes ((N, C_in, *spatial), (C_out, C_in/groups, *kernel)); the
    dimensionality follows the weight. A call with a smaller `workspace_limit` splits to fit it.
    """
    def dims(v: Any) -> tuple[int, ...]:
        is_shape = isinstance(v, (tuple, list)) and all(isinstance(d, numbers.Integral) for d in v)
        return tuple(int(d) for d in v) if is_shape else shape_of(v)

    x_shape, w_shape = dims(input), dims(weight)
    nd = len(w_shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"weight must have 3, 4 or 5 dims, got shape {w_shape}")
    if len(x_shape) == nd + 1:
        x_shape = (1, *x_shape)
    geo = conv_geometry(nd, x_shape, w_shape, stride, padding, dilation, groups, padding_mode,
                        asymmetric=True)
    dt = np.dtype(getattr(input, "dtype", dtype))
    if dt not in (np.float16, np.float32, np.float64):
        raise TypeError(f"workspace_size: dtype must be float32, float64 or float16 (what clconv "
                        f"computes), got {dt}")
    algo = choose_algorithm(current_device(), geo, algorithm, dt)
    if algo == "winograd":
        return plan_winograd(geo, dt.itemsize, 2**62).nbytes
    if algo == "im2col_packed":
        from .packed_conv import IM2COL_PACKED, workspace_bytes

        return workspace_bytes(geo, dt, IM2COL_PACKED, current_device())
    if algo in ("pointwise", "splitk"):  # a strided 1x1's subsampled input; columns + K slices
        return ALGORITHM_CLASSES[algo].workspace_for(current_device(), geo, dt)
    if algo != "im2col" or geo.is_pointwise:
        return 0  # 'direct', 'implicit' and 1x1 im2col need none
    return geo.batch * geo.column_rows * geo.out_spatial * dt.itemsize


def warmup(input_shape: Sequence[int], weight_shape: Sequence[int], bias: bool = True,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: ActivationArg = None, workspace_limit: int | None = None,
           dtype: Any = np.float32, residual: bool = False) -> str:
    """Plans a convolution ahead of time: builds its kernels, makes algorithm='auto''s choice and
    caches the plan for the functional API, so that the first real call neither builds nor
    measures. Arguments as `plan_conv2d` (the dimensionality follows the weight; residual=True for
    calls that pass one). Returns the algorithm that calls with these arguments will run."""
    dev = current_device()
    x_shape = shape_ints(input_shape, "input_shape")
    w_shape = shape_ints(weight_shape, "weight_shape")
    nd = len(w_shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"weight_shape must have 3, 4 or 5 dims, got {w_shape}")
    dt = np.dtype(dtype)
    b_shape = (w_shape[0],) if bias else None
    r_shape = _residual_shape(nd, x_shape, w_shape, stride, padding, dilation, groups,
                              padding_mode) if residual else None  # as the call's residual
    return cached_conv_plan(dev, nd, x_shape, w_shape, b_shape, dt, stride, padding, dilation,
                            groups, padding_mode, algorithm, activation, workspace_limit,
                            r_shape).algorithm


def cached_conv_plan(dev: Device, nd: int, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                     b_shape: tuple[int, ...] | None, dtype: np.dtype, stride: Any, padding: Any,
                     dilation: Any, groups: Any, padding_mode: Any, algorithm: Any,
                     activation: Any, workspace_limit: Any,
                     r_shape: tuple[int, ...] | None) -> ConvPlan:
    """The functional API's plan for these arguments, made on first use (`_convolve`, `warmup`);
    within clconv.ops.prebuild's `recording()`, the arguments listed and `Recorded` raised."""
    if prebuild.is_recording():
        prebuild.record((nd, x_shape, w_shape, b_shape, dtype, stride, padding, dilation, groups,
                         padding_mode, algorithm, activation, workspace_limit, r_shape))
    return cached_plan(dev, ("conv", nd, x_shape, w_shape, b_shape, dtype, stride, padding,
                             dilation, groups, padding_mode, algorithm, activation,
                             workspace_limit, r_shape),
                       lambda: ConvPlan(dev, nd, x_shape, w_shape, b_shape, stride, padding,
                                        dilation, groups, padding_mode, algorithm, activation,
                                        workspace_limit, dtype, residual_shape=r_shape))


def _residual_shape(nd: int, x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any,
                    padding: Any, dilation: Any, groups: Any,
                    padding_mode: Any) -> tuple[int, ...]:
    """The output's shape, which a residual must have (unbatched when the input is)."""
    unbatched = len(x_shape) == nd + 1
    geo = conv_geometry(nd, (1, *x_shape) if unbatched else x_shape, w_shape, stride, padding,
                        dilation, groups, padding_mode, asymmetric=True)
    return geo.output_shape[1:] if unbatched else geo.output_shape


# The public per-dimension functions (clconv.ops.dims): one template each, nd bound.

conv1d, conv2d, conv3d = per_dimensions(
    _convolve, ("conv1d", "conv2d", "conv3d"),
    ("""1-d convolution: input (N, C_in, L) or (C_in, L), weight (C_out, C_in/groups, k) -> (N, C_out,
    L_out). Arguments as `conv2d`.""",
     """2-d convolution (cross-correlation) with torch.nn.functional.conv2d's semantics.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in/groups, kh, kw); bias
    (C_out,) or None. stride, dilation: int or pair (>= 1); padding: int or pair (>= 0), 'valid' or
    'same' (stride 1; an odd total padding puts the extra element at the end, as PyTorch does), or
    one (lo, hi) pair a spatial dim, ((top, bottom), (left, right)): asymmetric, as ONNX's pads
    (begin, end); the forward convolutions only.
    padding_mode: 'zeros' | 'reflect' | 'replicate' | 'circular' (as torch.nn.Conv2d's).
    algorithm: 'auto' | 'implicit' | 'im2col_packed' | 'im2col' | 'direct' | 'winograd' (3x3
    stride-1 only) | 'depthwise' (groups == C_in) | 'pointwise' (1x1, no padding) | 'splitk'
    (groups=1, few output positions); 'auto' measures and keeps the fastest (on CPUs usually
    'implicit' or 'im2col_packed', clconv's own GEMM, and the three shape-specific kernels where
    they apply); see the module doc.
    activation: fused into the kernels' store after bias and residual: None, 'relu', 'relu6',
    'silu', 'gelu', 'sigmoid', 'tanh', 'hardswish', 'hardsigmoid', 'leaky_relu', 'elu',
    'softplus', 'mish', 'selu', 'celu', 'logsigmoid', 'softsign', 'tanhshrink', 'hardshrink',
    'softshrink' (torch's defaults), or ('leaky_relu', negative_slope), ('hardshrink', lambd),
    ('softshrink', lambd), ('elu', alpha), ('celu', alpha), ('softplus', beta, threshold),
    ('gelu', 'tanh') (torch's
    approximate='tanh'), ('clamp', min, max) (a bound may be None; hardtanh). NaN/Inf propagate
    as in torch.
    residual: None or an array of the output's shape (N, C_out, H_out, W_out) (same kind and dtype
    as input), added in the same store: y = act(conv(x) + bias + residual) (ResNet's skip).
    workspace_limit: bytes the column buffer (or Winograd's transforms) may take (None: the
    device's default, `clconv.runtime.memory.default_workspace_limit`), capped at the device's
    largest single allocation.
    out: an array to write the result into (numpy for numpy inputs, a pyopencl Array on the device
    for device inputs; strided views too), of the result's shape and dtype; it is returned.
    layout: None or 'nchw' (the default) or 'nhwc': channels-last input, residual, out and result
    ((N, H, W, C); conv1d 'nlc', conv3d 'ndhwc'), computed as NCHW around one transposing copy
    each way.
    numpy in -> numpy out; pyopencl Array in -> pyopencl Array out on the current device, nothing
    copied to the host (the call returns once the work is queued; the result carries its event).
    Returns (N, C_out, H_out, W_out). Same as `plan_conv2d(...)(input, weight, bias)`, with the plan
    cached per device.
    """,
     """3-d convolution: input (N, C_in, D, H, W) or unbatched, weight (C_out, C_in/groups, kd, kh,
    kw) -> (N, C_out, D_out, H_out, W_out). Arguments as `conv2d`."""),
    batched=("input", "residual"))

plan_conv1d, plan_conv2d, plan_conv3d = per_dimensions(
    plan_conv, ("plan_conv1d", "plan_conv2d", "plan_conv3d"),
    ("""A plan for `conv1d` with these shapes and arguments; see `plan_conv2d`.""",
     """A plan for `conv2d` on the current device: validated, its algorithm chosen (measured, for
    'auto' on a new shape) and its kernels built now; `plan(x, weight, bias=None, residual=None,
    out=None)` then only enqueues.

    input_shape (N, C_in, H, W) or unbatched; weight_shape (C_out, C_in/groups, kh, kw); bias: whether
    calls pass a bias (a bool, or the bias's shape (C_out,); None: no bias; a plan with one also
    runs with bias=None, adding zeros); keywords
    padding_mode, algorithm, activation, workspace_limit as `conv2d`, residual: whether calls pass
    one (of the output's shape; then every call must, and a plan without one takes none),
    dtype (default float32) and layout ('nhwc': input_shape (N, H, W, C_in), and calls take and
    give channels-last arrays, as `conv2d`'s layout=).
    `plan.algorithm` is the algorithm it runs, `plan.workspace_bytes` its workspace.
    """,
     """A plan for `conv3d` with these shapes and arguments; see `plan_conv2d`."""))
