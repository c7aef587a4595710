"""Forward convolutions: `plan_conv1d/2d/3d` (validate, choose, configure once) and the functional
`conv1d/2d/3d` (a cached plan per shape and arguments, then run).

Algorithms (same semantics, same results within rounding; see clconv.ops.conv_algorithms):
'im2col' (the cl/im2col.cl kernel + CLBlast's GEMM), 'direct' (loops), 'implicit' (clconv's packed
GEMM fused with the gather: no column buffer), 'im2col_packed' (im2col into the packed GEMM's
panels + that GEMM), 'winograd' (opt-in, 2-d 3x3 stride 1), and 'auto': the fastest of those that keep PyTorch's Inf/NaN semantics, measured on first
sight of a (device, shape, dtype) and remembered (clconv.ops.autotune), or the fixed `rule_choice`
with CLCONV_AUTO=rule. Candidates whose workspace cannot fit the call's `workspace_limit` are left
out ('direct' needs none).
"""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
import pyopencl.array as cla

from ..blas import clblast as gemm
from ..blas.engine import cpu_shaped
from ..runtime.device import Device, current_device
from ..runtime.group import splits_batch
from ..runtime.memory import resolve_workspace_limit
from ..runtime.transfer import ArrayLike, result_dtype
from . import autotune
from .conv_algorithms import (ColumnPlan, Direct, Im2colGemm, ImplicitGemm, PackedIm2colGemm,
                              WinogradGemm, WinogradPlan, plan_columns, plan_winograd,
                              winograd_unsupported)
from .geometry import ConvGeometry, IntOrTuple, PaddingArg, conv_geometry
from .launch import ACTIVATIONS, GROUPED_MAX_CIN
from .plan import Plan, cached_plan, shape_of

__all__ = ["ACTIVATIONS", "ALGORITHMS", "ConvPlan", "applicable_algorithms", "choose_algorithm",
           "conv1d", "conv2d", "conv3d", "plan_conv", "plan_conv1d", "plan_conv2d", "plan_conv3d",
           "rule_choice", "warmup", "winograd_unsupported", "workspace_size",
           "ColumnPlan", "WinogradPlan", "plan_columns", "plan_winograd"]

ALGORITHMS = ("auto", "im2col", "direct", "winograd", "implicit", "im2col_packed")
SMALL_FLOPS = 2**24  # below this many flops the rule picks 'direct' (see rule_choice)
#: The classes behind the algorithm names (clconv.ops.conv_algorithms).
ALGORITHM_CLASSES: dict[str, Any] = {"im2col": Im2colGemm, "direct": Direct,
                                     "winograd": WinogradGemm, "implicit": ImplicitGemm,
                                     "im2col_packed": PackedIm2colGemm}


@splits_batch("input", ndim=3)
def conv1d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None,
           out: ArrayLike | None = None) -> ArrayLike:
    """1-d convolution: input (N, C_in, L) or (C_in, L), weight (C_out, C_in/groups, k) -> (N, C_out,
    L_out). Arguments as `conv2d`."""
    return _convolve(1, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                     algorithm, activation, workspace_limit, out)


@splits_batch("input", ndim=4)
def conv2d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None,
           out: ArrayLike | None = None) -> ArrayLike:
    """2-d convolution (cross-correlation) with torch.nn.functional.conv2d's semantics.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in/groups, kh, kw); bias
    (C_out,) or None. stride, dilation: int or pair (>= 1); padding: int or pair (>= 0), 'valid' or
    'same' (stride 1; an odd total padding puts the extra element at the end, as PyTorch does).
    padding_mode: 'zeros' | 'reflect' | 'replicate' | 'circular' (as torch.nn.Conv2d's).
    algorithm: 'auto' | 'im2col' | 'direct' | 'winograd' (3x3 stride-1 only; see the module doc).
    activation: None or 'relu', fused into the last kernel.
    workspace_limit: bytes the column buffer (or Winograd's transforms) may take (None: the
    device's default, `clconv.runtime.memory.default_workspace_limit`), capped at the device's
    largest single allocation.
    out: an array to write the result into (numpy for numpy inputs, a contiguous pyopencl Array on
    the device for device inputs), of the result's shape and dtype; it is returned.
    numpy in -> numpy out; pyopencl Array in -> pyopencl Array out on the current device, nothing
    copied to the host (the call returns once the work is queued; the result carries its event).
    Returns (N, C_out, H_out, W_out). Same as `plan_conv2d(...)(input, weight, bias)`, with the plan
    cached per device.
    """
    return _convolve(2, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                     algorithm, activation, workspace_limit, out)


@splits_batch("input", ndim=5)
def conv3d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None,
           out: ArrayLike | None = None) -> ArrayLike:
    """3-d convolution: input (N, C_in, D, H, W) or unbatched, weight (C_out, C_in/groups, kd, kh,
    kw) -> (N, C_out, D_out, H_out, W_out). Arguments as `conv2d`."""
    return _convolve(3, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                     algorithm, activation, workspace_limit, out)


def _convolve(nd: int, input: Any, weight: Any, bias: Any, stride: Any, padding: Any,
              dilation: Any, groups: Any, padding_mode: Any, algorithm: Any, activation: Any,
              workspace_limit: Any, out: Any) -> ArrayLike:
    dev = current_device()
    dtype = result_dtype(dev, input=input, weight=weight, bias=bias)
    x_shape, w_shape = shape_of(input), shape_of(weight)
    b_shape = None if bias is None else shape_of(bias)
    plan = cached_plan(dev, ("conv", nd, x_shape, w_shape, b_shape, dtype, stride, padding,
                             dilation, groups, padding_mode, algorithm, activation,
                             workspace_limit),
                       lambda: ConvPlan(dev, nd, x_shape, w_shape, b_shape, stride, padding,
                                        dilation, groups, padding_mode, algorithm, activation,
                                        workspace_limit, dtype))
    return plan._execute({"input": input, "weight": weight, "bias": bias}, out, check=False)


def plan_conv(nd: int, input_shape: Sequence[int], weight_shape: Sequence[int], bias: bool = True,
              stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
              groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
              activation: str | None = None, workspace_limit: int | None = None,
              dtype: Any = np.float32) -> ConvPlan:
    """A plan for an nd-d convolution (nd in 1, 2, 3) on the current device; see `plan_conv2d`."""
    x_shape = tuple(_ints(input_shape, "input_shape"))
    w_shape = tuple(_ints(weight_shape, "weight_shape"))
    b_shape = (w_shape[0],) if bias and w_shape else None
    return ConvPlan(current_device(), nd, x_shape, w_shape, b_shape, stride, padding, dilation,
                    groups, padding_mode, algorithm, activation, workspace_limit, np.dtype(dtype))


def plan_conv1d(input_shape: Sequence[int], weight_shape: Sequence[int], bias: bool = True,
                stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                groups: int = 1, **kwargs: Any) -> ConvPlan:
    """A plan for `conv1d` with these shapes and arguments; see `plan_conv2d`."""
    return plan_conv(1, input_shape, weight_shape, bias, stride, padding, dilation, groups,
                     **kwargs)


def plan_conv2d(input_shape: Sequence[int], weight_shape: Sequence[int], bias: bool = True,
                stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                groups: int = 1, **kwargs: Any) -> ConvPlan:
    """A plan for `conv2d` on the current device: validated, its algorithm chosen (measured, for
    'auto' on a new shape) and its kernels built now; `plan(x, weight, bias=None, out=None)` then
    only enqueues.

    input_shape (N, C_in, H, W) or unbatched; weight_shape (C_out, C_in/groups, kh, kw); bias: whether
    calls pass a bias (a plan with one also runs with bias=None, adding zeros); keywords
    padding_mode, algorithm, activation, workspace_limit as `conv2d`, and dtype (default float32).
    `plan.algorithm` is the algorithm it runs, `plan.workspace_bytes` its workspace.
    """
    return plan_conv(2, input_shape, weight_shape, bias, stride, padding, dilation, groups,
                     **kwargs)


def plan_conv3d(input_shape: Sequence[int], weight_shape: Sequence[int], bias: bool = True,
                stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                groups: int = 1, **kwargs: Any) -> ConvPlan:
    """A plan for `conv3d` with these shapes and arguments; see `plan_conv2d`."""
    return plan_conv(3, input_shape, weight_shape, bias, stride, padding, dilation, groups,
                     **kwargs)


def _ints(value: Any, name: str) -> list[int]:
    try:
        items = list(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}") from None
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in items):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    return [int(v) for v in items]


class ConvPlan(Plan):
    """A forward convolution, planned (see clconv.ops.plan). Attributes: geometry (ConvGeometry),
    algorithm (the one that runs), workspace_bytes, activation."""

    def __init__(self, dev: Device, nd: int, input_shape: tuple[int, ...],
                 weight_shape: tuple[int, ...], bias_shape: tuple[int, ...] | None,
                 stride: IntOrTuple, padding: PaddingArg, dilation: IntOrTuple, groups: int,
                 padding_mode: str, algorithm: str, activation: str | None,
                 workspace_limit: int | None, dtype: np.dtype,
                 geometry: ConvGeometry | None = None) -> None:
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        limit = resolve_workspace_limit(dev, workspace_limit)
        if np.dtype(dtype).kind != "f":
            raise TypeError(f"dtype must be a floating dtype, got {np.dtype(dtype)}")
        unbatched = len(input_shape) == nd + 1
        batch_shape = (1, *input_shape) if unbatched else tuple(input_shape)
        # `geometry` (internal: the layers' backward) gives an already validated geometry, such as
        # a transposed convolution's forward one with its asymmetric padding.
        geo = geometry or conv_geometry(nd, batch_shape, weight_shape, stride, padding, dilation,
                                        groups, padding_mode)
        if bias_shape is not None and tuple(bias_shape) != (geo.out_channels,):
            raise ValueError(f"bias must have shape ({geo.out_channels},) (one per output "
                             f"channel), got {tuple(bias_shape)}")
        out_shape = geo.output_shape[1:] if unbatched else geo.output_shape
        self._prepare(dev, dtype, {"input": tuple(input_shape), "weight": tuple(weight_shape),
                                   "bias": None if bias_shape is None else tuple(bias_shape)},
                      out_shape, geo.output_shape,
                      {"input": geo.input_shape, "weight": geo.weight_shape,
                       "output": geo.output_shape}, ("output", "input", "weight"))
        self.geometry = geo
        self.activation = activation
        self.nd = nd
        self.has_bias = bias_shape is not None
        self.impl = _configure(dev, geo, algorithm, self.dtype, self.work, self.has_bias,
                               activation, limit)
        self.algorithm = self.impl.name
        self.workspace_bytes = self.impl.workspace_bytes
        self.label = f"conv{nd}d ({self.algorithm})"
        self.needs_gemm = self.algorithm in ("im2col", "winograd")  # CLBlast's

    def __call__(self, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
                 out: ArrayLike | None = None) -> ArrayLike:
        """The convolution of `input` by `weight` (+ `bias`), as the functional conv*d."""
        if bias is None and self.has_bias:
            bias = _zeros(self.device, self.geometry.out_channels, self.dtype, weight)
        return self._execute({"input": input, "weight": weight, "bias": bias}, out)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        self.impl.run(arrays["input"], arrays["weight"], arrays["bias"], out)

    def __repr__(self) -> str:
        return (f"<clconv ConvPlan conv{self.nd}d {self.geometry.input_shape} x "
                f"{self.geometry.weight_shape} -> {self.geometry.output_shape}, "
                f"algorithm={self.algorithm!r}, workspace {self.workspace_bytes} bytes>")


def _zeros(dev: Device, n: int, dtype: np.dtype, like: Any) -> Any:
    """A zero bias for a plan made with one but called without (numpy or device, as `like`)."""
    if not isinstance(like, cla.Array):
        return np.zeros(n, dtype)
    key = ("zeros", n, np.dtype(dtype).str)
    found = dev.constants.get(key)
    if found is None:
        with dev.lock:
            found = cla.zeros(dev.queue, (n,), dtype)
            dev.constants[key] = found
    return found


def _configure(dev: Device, geo: ConvGeometry, algorithm: str, dtype: np.dtype, work: np.dtype,
               has_bias: bool, activation: str | None, limit: int) -> Any:
    """The configured algorithm object for the plan: the named one, or 'auto''s choice."""
    if algorithm != "auto":
        return ALGORITHM_CLASSES[algorithm](dev, geo, work, has_bias, activation, limit)
    remembered = autotune.lookup(dev, geo, dtype)
    candidates = applicable_algorithms(dev, geo, dtype)
    if remembered in candidates:
        candidates = [remembered] + [c for c in candidates if c != remembered]
    configured: dict[str, Any] = {}
    error: MemoryError | None = None
    for name in candidates:  # candidates whose workspace does not fit the limit drop out
        try:
            configured[name] = ALGORITHM_CLASSES[name](dev, geo, work, has_bias, activation, limit)
        except MemoryError as err:
            error = err
            continue
        if name == remembered or autotune.mode() == "rule":
            return configured[name]  # the remembered choice, or the rule's first that fits
    if not configured:
        assert error is not None
        raise error
    if len(configured) == 1 or geo.batch == 0 or geo.out_spatial == 0:
        return next(iter(configured.values()))
    winner = autotune.measure(dev, geo, dtype, list(configured), _timer(dev, geo, work,
                                                                       has_bias, configured))
    return configured[winner]


def _timer(dev: Device, geo: ConvGeometry, work: np.dtype, has_bias: bool,
           configured: dict[str, Any]) -> Any:
    """run(name): one run of a configured candidate on scratch data of the plan's shapes."""
    rng = np.random.default_rng(0)
    x = cla.to_device(dev.queue, rng.standard_normal(geo.input_shape).astype(work))
    w = cla.to_device(dev.queue, rng.standard_normal(geo.weight_shape).astype(work))
    b = cla.to_device(dev.queue, rng.standard_normal(geo.out_channels).astype(work)) \
        if has_bias else None
    out = cla.empty(dev.queue, geo.output_shape, work)

    def run(name: str) -> None:
        configured[name].run(x, w, b, out)
    return run


def applicable_algorithms(dev: Device, geo: ConvGeometry, dtype: Any = np.float32) -> list[str]:
    """The algorithms algorithm='auto' may pick for `geo` on `dev` (what it measures), rule's first.

    'winograd' is never among them: its transforms mix the inputs of a whole tile, so one Inf or NaN
    input turns neighbouring outputs into NaN where PyTorch keeps them finite. It is opt-in. The
    packed-GEMM paths ('implicit', 'im2col_packed') are shaped for CPUs but measured everywhere:
    on a GPU they are chosen only where they measure faster.
    """
    found = ["direct", "implicit", "im2col_packed"]
    if gemm.available():
        found.append("im2col")
    if geo.groups > 1 and geo.cin_per_group <= GROUPED_MAX_CIN:
        found = [a for a in found if a not in ("implicit", "im2col_packed")]  # tiles of 1-4 rows
    first = rule_choice(dev, geo, dtype)
    return [first] + [a for a in found if a != first]


def rule_choice(dev: Device, geo: ConvGeometry, dtype: Any = np.float32) -> str:
    """The fixed rule for algorithm='auto' (used with CLCONV_AUTO=rule, and first when measuring):

    'direct' for groups with few input channels each (C_in/groups <= GROUPED_MAX_CIN: depthwise
    and narrow grouped convolutions, where a GEMM per group has a handful of rows and
    cl/conv_grouped.cl wins) and for convolutions of fewer than SMALL_FLOPS (one kernel launch, the
    least per-call time: (1,16,32,32) x (16,16,3,3), 4.7 MFLOP, ran in 0.41 ms 'direct', 0.56 ms
    'implicit', 0.84 ms 'im2col' on PoCL, AVX2); else 'implicit' on PoCL's CPU devices (clconv's
    packed GEMM: 0.7-1.35x torch CPU there, where CLBlast's GPU-shaped GEMM reaches a fifth of it;
    `clconv.blas.engine.cpu_shaped`) and 'im2col' (CLBlast) elsewhere, GPUs and Mesa's llvmpipe
    included, or 'implicit' there too when CLBlast is not installed. Never
    'winograd' (see `applicable_algorithms`): ask for it by name where inputs are known to be
    finite.
    """
    if geo.groups > 1 and geo.cin_per_group <= GROUPED_MAX_CIN:
        return "direct"
    if geo.flops < SMALL_FLOPS:
        return "direct"
    if cpu_shaped(dev) or not gemm.available():
        return "implicit"
    return "im2col"


def choose_algorithm(dev: Device, geo: ConvGeometry, algorithm: str,
                     dtype: Any = np.float32) -> str:
    """The algorithm that runs for `algorithm`, without measuring anything.

    An explicit name is checked ('winograd' raises ValueError for shapes it cannot compute) and
    returned. 'auto' gives the remembered choice for (device, geometry, dtype) if there is one
    (see clconv.ops.autotune), else `rule_choice`.
    """
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "winograd":
        why = winograd_unsupported(geo, dtype)
        if why is not None:
            raise ValueError(f"algorithm='winograd' cannot compute this convolution: {why}; use "
                             f"algorithm='auto', 'im2col' or 'direct'")
    if algorithm != "auto":
        return algorithm
    remembered = autotune.lookup(dev, geo, dtype)
    if remembered is not None and remembered in applicable_algorithms(dev, geo, dtype):
        return remembered
    return rule_choice(dev, geo, dtype)


def workspace_size(input: Any, weight: Any, stride: IntOrTuple = 1, padding: PaddingArg = 0,
                   dilation: IntOrTuple = 1, groups: int = 1, *, algorithm: str = "auto",
                   padding_mode: str = "zeros", dtype: Any = np.float32) -> int:
    """Bytes of workspace a convolution needs unsplit (0 for the direct and 1x1 paths): the im2col
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
    geo = conv_geometry(nd, x_shape, w_shape, stride, padding, dilation, groups, padding_mode)
    dt = np.dtype(getattr(input, "dtype", dtype))
    algo = choose_algorithm(current_device(), geo, algorithm, dt)
    if algo == "winograd":
        return plan_winograd(geo, dt.itemsize, 2**62).nbytes
    if algo == "im2col_packed":
        from .packed_conv import IM2COL_PACKED, workspace_bytes

        return workspace_bytes(geo, dt, IM2COL_PACKED, current_device())
    if algo != "im2col" or geo.is_pointwise:
        return 0  # 'direct', 'implicit' and 1x1 im2col need none
    return geo.batch * geo.column_rows * geo.out_spatial * dt.itemsize


def warmup(input_shape: Sequence[int], weight_shape: Sequence[int], bias: bool = True,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None,
           dtype: Any = np.float32) -> str:
    """Plans a convolution ahead of time: builds its kernels, makes algorithm='auto''s choice and
    caches the plan for the functional API, so that the first real call neither builds nor
    measures. Arguments as `plan_conv2d` (the dimensionality follows the weight). Returns the
    algorithm that calls with these arguments will run."""
    dev = current_device()
    x_shape, w_shape = tuple(_ints(input_shape, "input_shape")), tuple(_ints(weight_shape,
                                                                             "weight_shape"))
    nd = len(w_shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"weight_shape must have 3, 4 or 5 dims, got {w_shape}")
    dt = np.dtype(dtype)
    b_shape = (w_shape[0],) if bias else None
    plan = cached_plan(dev, ("conv", nd, x_shape, w_shape, b_shape, dt, stride, padding, dilation,
                             groups, padding_mode, algorithm, activation, workspace_limit),
                       lambda: ConvPlan(dev, nd, x_shape, w_shape, b_shape, stride, padding,
                                        dilation, groups, padding_mode, algorithm, activation,
                                        workspace_limit, dt))
    return plan.algorithm
