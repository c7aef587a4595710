"""Elementwise ops as torch names them: activations, broadcast add/mul, batch_norm, cat, flatten.

    y = clconv.relu(x)                           # any shape; numpy -> numpy, device -> device
    y = clconv.gelu(x, approximate="tanh")
    y = clconv.mul(x, gate)                      # gate (N, C, 1, 1): squeeze-excitation
    y = clconv.add(x, shortcut, activation="relu")
    y = clconv.batch_norm(x, mean, var, gamma, beta, eps=1e-5)   # inference form
    y = clconv.cat([a, b], dim=1)
    y = clconv.flatten(x, 1)                     # a view of a contiguous device array

Every activation is computed by cl/common.cl's one `activate()` (clconv.ops.activation gives its
-D switches), so the ops, the fused epilogues and the layers agree to the bit. The kernels are
cl/elementwise.cl's; every op is a Plan (validated and built once per shape, dtype and arguments),
sizes are kernel arguments. The gradients (`UnaryPlan.backward`, `batch_norm_*` helpers) serve
clconv.nn's layers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..runtime.device import Device, current_device
from ..runtime.errors import UnsupportedError
from ..runtime.memory import empty
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import (
    ArrayLike,
    dtype_of,
    element_offset,
    index_type,
    is_device_array,
    result_dtype,
    to_device,
)
from .activation import Activation, ActivationArg, activation_defines, normalize_activation
from .plan import Plan, cached_plan, shape_of

__all__ = ["BatchNormPlan", "BinaryPlan", "CatPlan", "UnaryPlan", "add", "batch_norm",
           "broadcast_layout", "cat", "celu", "clamp", "div", "elu", "enqueue_batch_norm_backward",
           "enqueue_bias_act", "enqueue_channel_stats", "enqueue_column_sums", "flatten", "gelu",
           "gradient_from_output", "batch_norm_plan", "unary_plan", "hardsigmoid", "hardswish", "hardtanh", "leaky_relu", "mish",
           "mul", "pixel_shuffle", "pixel_unshuffle", "prelu", "relu", "relu6", "selu", "sigmoid",
           "silu", "softplus", "sqrt", "sub",
           "tanh", "abs", "exp", "log", "rsqrt", "erf", "threshold", "logsigmoid", "softsign", "tanhshrink",
           "hardshrink", "softshrink", "maximum", "minimum"]


def _defines(work: np.dtype, elements: int, **extra: object) -> dict[str, object]:
    defines = precision_defines(work)
    defines["INDEX_T"] = index_type(elements)
    defines.update(extra)
    return defines


def _args(a: cla.Array) -> tuple[Any, np.int64]:
    return a.base_data, np.int64(element_offset(a))


def _real(work: np.dtype, value: float) -> np.generic:
    return np.float64(value) if work == np.float64 else np.float32(value)


class UnaryPlan(Plan):
    """y = act(x) for one shape and dtype (any shape, 0-d included); `backward(x, g)` gives the
    input gradient. clamp_inclusive: torch.clamp's gradient at the bounds rather than hardtanh's."""

    def __init__(self, dev: Device, activation: ActivationArg, shape: Sequence[int],
                 dtype: np.dtype, clamp_inclusive: bool = False) -> None:
        act = normalize_activation(activation)
        if act is None:
            raise ValueError("activation must not be None for an elementwise activation op")
        self.activation: Activation = act
        shape = tuple(int(v) for v in shape)
        self._prepare(dev, dtype, {"input": shape}, shape, shape, {"input": shape})
        self.label = str(act)
        extra: dict[str, object] = dict(activation_defines(act))
        if clamp_inclusive:
            extra["CLAMP_GRAD_INCLUSIVE"] = None
        self._defines = _defines(self.work, math.prod(shape), **extra)
        self.kernel = kernel(dev, "elementwise.cl", "unary", self._defines)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        x = arrays["input"]
        assert x is not None
        with self.device.lock:
            self.kernel(self.device.queue, (out.size,), None, *_args(x), *_args(out))

    def __call__(self, input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input}, out)

    def backward(self, x: cla.Array, grad_output: cla.Array, *, from_output: bool = False,
                 out: cla.Array | None = None) -> cla.Array:
        """act'(x) * grad_output (contiguous device arrays of the plan's shape and work dtype);
        `from_output`: `x` is the output act(x) instead (see `gradient_from_output`); written
        into `out` (such an array) when given, else a new one."""
        if from_output and not gradient_from_output(self.activation):
            raise ValueError(f"the gradient of {self.activation} needs its input, not its output")
        name = "unary_backward_output" if from_output else "unary_backward"
        dx = empty(self.device, tuple(x.shape), self.work) if out is None else out
        if dx.size:
            with self.device.lock:
                kernel(self.device, "elementwise.cl", name, self._defines)(
                    self.device.queue, (dx.size,), None, *_args(x), *_args(grad_output),
                    *_args(dx))
        return dx


def gradient_from_output(activation: ActivationArg) -> bool:
    """Whether the activation's gradient follows from its output alone (relu, relu6, leaky_relu
    with a slope >= 0, sigmoid, tanh, clamp with min < max): layers then fuse it into their store
    in training too and keep only the output."""
    act = normalize_activation(activation)
    if act is None:
        return False
    if act.kind == "leaky_relu":
        return act.a >= 0
    if act.kind == "clamp":
        return act.a < act.b
    return act.kind in ("relu", "relu6", "sigmoid", "tanh")


def _unary(activation: ActivationArg, input: ArrayLike, out: ArrayLike | None,
           inplace: bool = False, clamp_inclusive: bool = False) -> ArrayLike:
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    if inplace:
        if out is not None:
            raise ValueError("pass either inplace=True or out=, not both")
        out = input
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    shape = shape_of(input)
    plan = unary_plan(dev, normalize_activation(activation), shape, dtype, clamp_inclusive)
    return plan.execute({"input": input}, out, check=False)


def unary_plan(dev: Device, act: Activation, shape: tuple[int, ...], dtype: np.dtype,
               clamp_inclusive: bool = False) -> UnaryPlan:
    """The UnaryPlan of these arguments on `dev`, made on first use (shared by every caller)."""
    return cached_plan(dev, ("unary", act, shape, dtype, clamp_inclusive),
                       lambda: UnaryPlan(dev, act, shape, dtype, clamp_inclusive))


def relu(input: ArrayLike, inplace: bool = False, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.relu: max(x, 0), NaN kept."""
    return _unary("relu", input, out, inplace)


def relu6(input: ArrayLike, inplace: bool = False, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.relu6: min(max(x, 0), 6), NaN kept."""
    return _unary("relu6", input, out, inplace)


def silu(input: ArrayLike, inplace: bool = False, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.silu: x * sigmoid(x)."""
    return _unary("silu", input, out, inplace)


def gelu(input: ArrayLike, approximate: str = "none", *,
         out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.gelu: the erf form, or approximate='tanh'."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return _unary(("gelu", approximate), input, out)


def sigmoid(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.sigmoid: 1 / (1 + exp(-x))."""
    return _unary("sigmoid", input, out)


def tanh(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.tanh."""
    return _unary("tanh", input, out)


def hardswish(input: ArrayLike, inplace: bool = False, *,
              out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.hardswish: x * relu6(x + 3) / 6."""
    return _unary("hardswish", input, out, inplace)


def hardsigmoid(input: ArrayLike, inplace: bool = False, *,
                out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.hardsigmoid: relu6(x + 3) / 6."""
    return _unary("hardsigmoid", input, out, inplace)


def leaky_relu(input: ArrayLike, negative_slope: float = 0.01, inplace: bool = False, *,
               out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.leaky_relu: x if x > 0 else negative_slope * x."""
    return _unary(("leaky_relu", negative_slope), input, out, inplace)


def elu(input: ArrayLike, alpha: float = 1.0, inplace: bool = False, *,
        out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.elu: x if x > 0 else alpha * (exp(x) - 1)."""
    return _unary(("elu", alpha), input, out, inplace)


def celu(input: ArrayLike, alpha: float = 1.0, inplace: bool = False, *,
         out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.celu: x if x > 0 else alpha * (exp(x / alpha) - 1) (alpha != 0)."""
    return _unary(("celu", alpha), input, out, inplace)


def selu(input: ArrayLike, inplace: bool = False, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.selu: scale * (x if x > 0 else alpha * (exp(x) - 1)), torch's
    alpha = 1.6732632... and scale = 1.0507009...."""
    return _unary("selu", input, out, inplace)


def softplus(input: ArrayLike, beta: float = 1.0, threshold: float = 20.0, *,
             out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.softplus: log(1 + exp(beta * x)) / beta, and x itself where
    beta * x > threshold."""
    return _unary(("softplus", beta, threshold), input, out)


def mish(input: ArrayLike, inplace: bool = False, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.mish: x * tanh(softplus(x))."""
    return _unary("mish", input, out, inplace)


def hardtanh(input: ArrayLike, min_val: float = -1.0, max_val: float = 1.0,
             inplace: bool = False, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.hardtanh: x clamped to [min_val, max_val] (min_val <= max_val)."""
    for name, v in (("min_val", min_val), ("max_val", max_val)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            raise TypeError(f"{name} must be a real number, got {v!r}")
    if min_val > max_val:
        raise ValueError(f"min_val ({min_val}) must not be greater than max_val ({max_val})")
    return _unary(("clamp", min_val, max_val), input, out, inplace)


def clamp(input: ArrayLike, min: float | None = None, max: float | None = None, *,
          out: ArrayLike | None = None) -> ArrayLike:
    """torch.clamp with scalar bounds (at least one given): min(max(x, min), max); when
    min > max every value becomes max, as torch's. NaN stays NaN."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must not be None")
    for name, v in (("min", min), ("max", max)):
        if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool)):
            raise TypeError(f"clamp: {name} must be a real number or None, got {v!r}")
    if min is not None and max is not None and min > max:
        min = max  # torch: min(max(x, lo), hi) is hi everywhere then
    return _unary(("clamp", min, max), input, out, clamp_inclusive=True)


# --- binary ops with broadcasting --------------------------------------------------------------
_MAX_DIMS = 5


def broadcast_layout(out_shape: tuple[int, ...], *shapes: tuple[int, ...]
                     ) -> tuple[list[int], list[list[int]]]:
    """The output's dims merged as far as every operand allows, and each operand's element strides
    along them (0 where it is broadcast): at most as many dims as the pattern of broadcasts needs."""
    nd = len(out_shape)
    strides = []
    for shape in shapes:
        full = (1,) * (nd - len(shape)) + tuple(shape)
        st, acc = [0] * nd, 1
        for i in range(nd - 1, -1, -1):
            st[i] = 0 if full[i] == 1 and out_shape[i] != 1 else acc
            acc *= full[i]
        strides.append(st)
    dims: list[int] = []
    merged: list[list[int]] = [[] for _ in shapes]
    for i, size in enumerate(out_shape):
        if size == 1:
            continue
        if dims and all(m[-1] == st[i] * size for m, st in zip(merged, strides)):
            dims[-1] *= size
            for m, st in zip(merged, strides):
                m[-1] = st[i]
            continue
        dims.append(size)
        for m, st in zip(merged, strides):
            m.append(st[i])
    return dims, merged


class BinaryPlan(Plan):
    """y = act(input OP other) for op 'add', 'sub', 'mul', 'div' or 'prelu' (other: the slopes),
    with numpy broadcasting between the shapes (same shape, per-channel (C,) / (N, C, 1, 1) /
    (1, C, 1, 1) against (N, C, *spatial), ...)."""

    def __init__(self, dev: Device, op: str, input_shape: Sequence[int],
                 other_shape: Sequence[int], dtype: np.dtype,
                 activation: ActivationArg = None) -> None:
        if op not in _BINARY_OPS:
            raise ValueError(f"op must be one of {tuple(_BINARY_OPS)}, got {op!r}")
        a_shape, b_shape = tuple(input_shape), tuple(other_shape)
        try:
            out_shape = tuple(np.broadcast_shapes(a_shape, b_shape))
        except ValueError:
            raise ValueError(f"{op}: the shapes of input {a_shape} and other {b_shape} do not "
                             f"broadcast") from None
        act = normalize_activation(activation)
        dims, (ta, tb) = broadcast_layout(out_shape, a_shape, b_shape)
        if len(dims) > _MAX_DIMS:
            raise ValueError(f"{op}: broadcasting {a_shape} with {b_shape} needs {len(dims)} "
                             f"separate dims; at most {_MAX_DIMS} are supported")
        pad = _MAX_DIMS - len(dims)
        self.dims = [1] * pad + dims
        self.strides = ([0] * pad + ta, [0] * pad + tb)
        self._prepare(dev, dtype, {"input": a_shape, "other": b_shape}, out_shape, out_shape,
                      {"output": out_shape})
        self.label = op if act is None else f"{op} + {act}"
        self.result_follows = "_kind"
        self.kernel = kernel(dev, "elementwise.cl", "binary", _defines(
            self.work, max(math.prod(out_shape), math.prod(a_shape), math.prod(b_shape)),
            OP=_BINARY_OPS[op], **activation_defines(act)))

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        a, b = arrays["input"], arrays["other"]
        assert a is not None and b is not None
        with self.device.lock:
            inner = self.dims[-1]
            self.kernel(self.device.queue, (inner, out.size // inner), None, *_args(a), *_args(b),
                        *_args(out), *(np.int64(s) for s in self.dims[1:-1]),
                        *(np.int64(t) for t in self.strides[0]),
                        *(np.int64(t) for t in self.strides[1]))

    def __call__(self, input: ArrayLike, other: ArrayLike, *,
                 out: ArrayLike | None = None) -> ArrayLike:
        return self.execute(_binary_values(input, other), out)


#: cl/elementwise.cl's binary OP codes.
_BINARY_OPS = {"add": 0, "mul": 1, "sub": 2, "prelu": 3, "div": 4, "maximum": 5, "minimum": 6}


def _binary_values(input: Any, other: Any) -> dict[str, Any]:
    kind = input if is_device_array(input) or not is_device_array(other) else other
    return {"input": input, "other": other, "_kind": kind}


def _scalar_operand(value: Any, like: Any, name: str) -> Any:
    """A Python number as a 0-d numpy array of `like`'s dtype (as torch wraps scalars)."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.ndarray)):
        try:  # numpy's, pyopencl's or a torch tensor's dtype (as its numpy view has it)
            dtype = dtype_of(like, name) if like is not None and \
                not isinstance(like, numbers.Real) else np.dtype(np.float32)
        except TypeError:
            dtype = np.dtype(np.float32)  # `like` is refused with its own message later
        return np.asarray(value, dtype=dtype)
    return value


def _binary(op: str, input: ArrayLike, other: ArrayLike, activation: ActivationArg,
            out: ArrayLike | None) -> ArrayLike:
    other = _scalar_operand(other, input, "other")
    input = _scalar_operand(input, other, "input")
    dev = current_device()
    dtype = result_dtype(dev, input=input, other=other)
    a_shape, b_shape = shape_of(input), shape_of(other)
    act = normalize_activation(activation)
    plan = cached_plan(dev, ("binary", op, a_shape, b_shape, dtype, act),
                       lambda: BinaryPlan(dev, op, a_shape, b_shape, dtype, act))
    return plan.execute(_binary_values(input, other), out, check=False)


def add(input: ArrayLike, other: ArrayLike, *, activation: ActivationArg = None,
        out: ArrayLike | None = None) -> ArrayLike:
    """torch.add(input, other) with broadcasting (other may be a Python number), then the
    optional fused activation: act(input + other)."""
    return _binary("add", input, other, activation, out)


def sub(input: ArrayLike, other: ArrayLike, *, activation: ActivationArg = None,
        out: ArrayLike | None = None) -> ArrayLike:
    """torch.sub(input, other) with broadcasting (either may be a Python number), then the
    optional fused activation: act(input - other)."""
    return _binary("sub", input, other, activation, out)


def prelu(input: ArrayLike, weight: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.prelu: input where > 0, else weight * input, with weight (1,) or (C,)
    (one slope per channel: dim 1 of an (N, C, *) input)."""
    w_shape, x_shape = shape_of(weight), shape_of(input)
    if len(w_shape) == 0:  # torch takes a 0-d slope as one for all channels
        weight, w_shape = weight.reshape((1,)), (1,)
    if len(w_shape) != 1:
        raise ValueError(f"prelu: weight must be 0-d, (1,) or (C,), got shape {w_shape}")
    if w_shape[0] == 1 and len(x_shape) == 0:  # a 0-d input stays 0-d (not broadcast to (1,))
        weight = weight.reshape(())
    elif w_shape[0] != 1:
        if len(x_shape) < 2 or x_shape[1] != w_shape[0]:
            raise ValueError(f"prelu: weight {w_shape} must have 1 or C entries, C = dim 1 of "
                             f"input {x_shape}")
        weight = weight.reshape((w_shape[0],) + (1,) * (len(x_shape) - 2))
    return _binary("prelu", input, weight, None, out)


def div(input: ArrayLike, other: ArrayLike, *, rounding_mode: None = None,
        activation: ActivationArg = None, out: ArrayLike | None = None) -> ArrayLike:
    """torch.div(input, other) (true division, IEEE: x / 0 is +-inf, 0 / 0 NaN) with broadcasting
    (either may be a Python number), then the optional fused activation. rounding_mode 'trunc'
    and 'floor' are not offered (ValueError)."""
    if rounding_mode is not None:
        raise ValueError(f"div: rounding_mode {rounding_mode!r} is not supported (only true "
                         f"division, rounding_mode=None)")
    return _binary("div", input, other, activation, out)


def sqrt(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.sqrt (NaN for negative inputs, as torch)."""
    return _unary(Activation("sqrt"), input, out)


def abs(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.abs (floating point: |x|, -0 -> 0, NaN kept)."""
    return _unary(Activation("abs"), input, out)


def exp(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.exp."""
    return _unary(Activation("exp"), input, out)


def log(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.log (natural; -inf at 0, NaN for negative inputs)."""
    return _unary(Activation("log"), input, out)


def rsqrt(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.rsqrt: 1 / sqrt(x) (inf at 0, NaN for negative inputs)."""
    return _unary(Activation("rsqrt"), input, out)


def erf(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.erf."""
    return _unary(Activation("erf"), input, out)


def threshold(input: ArrayLike, threshold: float, value: float, inplace: bool = False, *,
              out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.threshold: value where x <= threshold, else x (NaN kept)."""
    for name, v in (("threshold", threshold), ("value", value)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or math.isnan(float(v)):
            raise TypeError(f"threshold: {name} must be a real number, got {v!r}")
    return _unary(Activation("threshold", float(threshold), float(value)), input, out, inplace)


def logsigmoid(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.logsigmoid: log(1 / (1 + exp(-x))), computed as torch does
    (min(x, 0) - log1p(exp(-|x|)))."""
    return _unary("logsigmoid", input, out)


def softsign(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.softsign: x / (1 + |x|)."""
    return _unary("softsign", input, out)


def tanhshrink(input: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.tanhshrink: x - tanh(x)."""
    return _unary("tanhshrink", input, out)


def hardshrink(input: ArrayLike, lambd: float = 0.5, *,
               out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.hardshrink: 0 where -lambd <= x <= lambd, else x."""
    return _unary(("hardshrink", lambd), input, out)


def softshrink(input: ArrayLike, lambd: float = 0.5, *,
               out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.softshrink: x - lambd above lambd, x + lambd below -lambd, else 0
    (lambd >= 0)."""
    return _unary(("softshrink", lambd), input, out)


def maximum(input: ArrayLike, other: ArrayLike, *, activation: ActivationArg = None,
            out: ArrayLike | None = None) -> ArrayLike:
    """torch.maximum(input, other): the larger of each pair with broadcasting (other may be a
    Python number); NaN if either is NaN; of equal values (-0 and 0) the first, as torch; then
    the activation."""
    return _binary("maximum", input, other, activation, out)


def minimum(input: ArrayLike, other: ArrayLike, *, activation: ActivationArg = None,
            out: ArrayLike | None = None) -> ArrayLike:
    """torch.minimum(input, other): the smaller of each pair, as maximum."""
    return _binary("minimum", input, other, activation, out)


def mul(input: ArrayLike, other: ArrayLike, *, activation: ActivationArg = None,
        out: ArrayLike | None = None) -> ArrayLike:
    """torch.mul(input, other) with broadcasting (a squeeze-excitation gate (N, C, 1, 1) times the
    features (N, C, H, W)), then the optional fused activation."""
    return _binary("mul", input, other, activation, out)


# --- batch normalisation -----------------------------------------------------------------------
class BatchNormPlan(Plan):
    """Inference batch normalisation of (N, C, *) with given statistics, optional affine
    weight/bias and fused activation: act((x - mean) / sqrt(var + eps) * weight + bias)."""

    def __init__(self, dev: Device, input_shape: Sequence[int], has_weight: bool,
                 has_bias: bool, eps: float, dtype: np.dtype,
                 activation: ActivationArg = None) -> None:
        shape = tuple(int(v) for v in input_shape)
        if len(shape) < 2:
            raise ValueError(f"batch_norm: input must have at least 2 dims (N, C, *), got shape "
                             f"{shape}")
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
            raise TypeError(f"batch_norm: eps must be a real number, got {eps!r}")
        c = shape[1]
        self.channels, self.inner, self.eps = c, math.prod(shape[2:]), float(eps)
        act = normalize_activation(activation)
        operands = {"input": shape, "running_mean": (c,), "running_var": (c,),
                    "weight": (c,) if has_weight else None, "bias": (c,) if has_bias else None}
        self._prepare(dev, dtype, operands, shape, shape, {"input": shape})
        self.label = "batch_norm"
        self._defines = _defines(self.work, math.prod(shape), **activation_defines(act))
        self.kernel = kernel(dev, "elementwise.cl", "batch_norm", self._defines)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        x, mean, var = arrays["input"], arrays["running_mean"], arrays["running_var"]
        w, b = arrays["weight"], arrays["bias"]
        assert x is not None and mean is not None and var is not None
        if out.size == 0:
            return
        with self.device.lock:
            self.kernel(self.device.queue, (self.inner, out.size // self.inner), None, *_args(x),
                        *_args(mean),
                        *_args(var), *_args(w if w is not None else x), np.int32(w is not None),
                        *_args(b if b is not None else x), np.int32(b is not None), *_args(out),
                        np.int64(self.channels), np.int64(self.inner), _real(self.work, self.eps))

    def __call__(self, input: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike,
                 weight: ArrayLike | None = None, bias: ArrayLike | None = None, *,
                 out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input, "running_mean": running_mean,
                             "running_var": running_var, "weight": weight, "bias": bias}, out)


def batch_norm(input: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike,
               weight: ArrayLike | None = None, bias: ArrayLike | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5, *,
               activation: ActivationArg = None, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.batch_norm in its inference form (training=False): input (N, C, *)
    normalised per channel by running_mean/running_var (C,), then weight/bias (C,) if given, and
    the optional fused activation. training=True is refused (use clconv.nn.BatchNorm2d, which
    computes batch statistics and updates the running ones)."""
    del momentum  # only used by torch when training
    if training:
        raise ValueError("batch_norm: training=True is not supported by the functional op (it "
                         "would update running_mean/running_var); use clconv.nn.BatchNorm2d in "
                         "train() mode, or training=False for inference")
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm: running_mean and running_var are required (inference form)")
    dev = current_device()
    values = {"input": input, "running_mean": running_mean, "running_var": running_var,
              "weight": weight, "bias": bias}
    dtype = result_dtype(dev, **{k: v for k, v in values.items() if v is not None})
    shape = shape_of(input)
    c = shape[1] if len(shape) >= 2 else None
    for name in ("running_mean", "running_var", "weight", "bias"):
        if values[name] is not None and shape_of(values[name]) != (c,):
            raise ValueError(f"batch_norm: {name} must have shape (C,) = ({c},) for input of shape "
                             f"{shape}, got {shape_of(values[name])}")
    act = normalize_activation(activation)
    plan = batch_norm_plan(dev, shape, dtype, weight is not None, bias is not None, eps, act)
    return plan.execute(values, out, check=False)


def batch_norm_plan(dev: Device, shape: tuple[int, ...], dtype: np.dtype, has_weight: bool,
                    has_bias: bool, eps: Any, act: Activation | None = None) -> BatchNormPlan:
    """The BatchNormPlan of these arguments on `dev`, made on first use (shared by every
    caller)."""
    return cached_plan(dev, ("batch_norm", shape, dtype, has_weight, has_bias,
                             float(eps) if isinstance(eps, numbers.Real) else eps, act),
                       lambda: BatchNormPlan(dev, shape, has_weight, has_bias, eps, dtype, act))


def check_loop_limit(dev: Device, what: str, passes: int) -> None:
    """UnsupportedError when one work-item of a reduction kernel loops `passes` times or more than
    `dev`'s driver runs before it silently ends its loops (Device.loop_limit: Mesa's llvmpipe
    stops every loop of a work-item after 65535 passes in all, and the sum would come out short)."""
    limit = getattr(dev, "loop_limit", None)
    if limit is not None and 2 * passes > limit:
        raise UnsupportedError(
            f"{what}: one work-item would loop {passes} times, more than {dev.name} runs before it "
            f"silently stops a loop (Device.loop_limit = {limit}); use a smaller batch or another "
            f"device")


def enqueue_channel_stats(dev: Device, x: cla.Array, channels: int, inner: int,
                          running_mean: cla.Array | None, running_var: cla.Array | None,
                          momentum: float, out: cla.Array | None = None) -> cla.Array:
    """(2, C): the batch mean and biased variance per channel of x (N, C, inner) (contiguous, work
    dtype); when running_mean/var are given they are updated in place as torch's training
    BatchNorm does (momentum; unbiased variance). A work-group per channel (`reduction_group`).
    `out`: a contiguous (2, C) array to write them into (else a new one)."""
    work = np.dtype(x.dtype)
    batch = x.size // max(channels * inner, 1)
    group = reduction_group(dev, inner, batch)
    check_loop_limit(dev, "batch-norm statistics", 2 * batch * (inner // group + 2) + 2)
    stats = empty(dev, (2, channels), work) if out is None else out
    if channels == 0:
        return stats
    update = running_mean is not None and running_var is not None
    rm = running_mean if update else stats
    rv = running_var if update else stats
    with dev.lock:
        kernel(dev, "elementwise.cl", "channel_stats", _defines(work, x.size, GROUP=group))(
            dev.queue, (group, channels), (group, 1), *_args(x), np.int64(batch),
            np.int64(channels),
            np.int64(inner), stats.base_data, *_args(rm), *_args(rv), np.int32(update),
            _real(work, momentum))
    return stats


def reduction_group(dev: Device, inner: int, batch: int = 1) -> int:
    """Work-items per work-group of the per-channel reductions (channel_stats,
    channel_grad_sums) over `batch` rows of `inner` values: 64, or the largest power of two the
    device allows below it, on devices other than CPUs; 1 (a work-item per channel, its lanes
    vectorised by the compiler) on CPUs and for rows shorter than _GROUP_ROW, unless one
    work-item would loop past the device's loop limit (llvmpipe, a CPU device: a work-group then
    splits the rows)."""
    limit = getattr(dev, "loop_limit", None)
    long_loop = limit is not None and 2 * (2 * batch * (inner + 2) + 2) > limit
    if not long_loop and (inner < _GROUP_ROW or _is_cpu(dev)):
        return 1
    found = _GROUPS.get(dev)
    if found is None:
        limit = 64
        try:
            limit = min(limit, int(dev.cl_device.max_work_group_size))
        except Exception:  # noqa: BLE001 - a device that does not say: the default
            pass
        found = _GROUPS[dev] = 1 << (max(limit, 1).bit_length() - 1)
    return found


def _is_cpu(dev: Device) -> bool:
    try:
        return bool(dev.cl_device.type & cl.device_type.CPU)
    except cl.Error:
        return False


_GROUPS: dict[Device, int] = {}
#: Rows (values of a channel in an image) this long or longer are reduced by a work-group on a
#: GPU (a work-item per channel would leave most of it idle).
_GROUP_ROW = 256


def enqueue_batch_norm_backward(dev: Device, g: cla.Array, x: cla.Array, mean: cla.Array,
                                var: cla.Array, weight: cla.Array | None, eps: float,
                                training: bool, channels: int, inner: int, *,
                                activation: Activation | None = None,
                                output: cla.Array | None = None,
                                grad_through: cla.Array | None = None,
                                weight_grad: cla.Array | None = None,
                                bias_grad: cla.Array | None = None
                                ) -> tuple[cla.Array, cla.Array, cla.Array]:
    """(grad_input, weight_grad, bias_grad) of batch normalisation of x (N, C, inner) with the
    statistics mean/var (C,) (the batch's when `training`, else fixed). With `activation`
    (one whose gradient follows from its `output`: gradient_from_output), `g` is the gradient of
    that output and the activation's gradient is taken first, in the same passes; `grad_through`
    (x's shape) then receives that gradient too (a residual's, added before the activation).
    weight_grad / bias_grad: contiguous (C,) arrays to write those into (else new ones)."""
    work = np.dtype(x.dtype)
    batch = x.size // max(channels * inner, 1)
    group = reduction_group(dev, inner, batch)
    check_loop_limit(dev, "batch-norm gradient", batch * (inner // group + 2) + 1)
    if activation is not None and (output is None or not gradient_from_output(activation)):
        raise ValueError(f"the batch-norm gradient through {activation} needs an activation "
                         f"whose gradient follows from its output, and that output")
    act = activation_defines(activation) if activation is not None else {}
    defines = _defines(work, x.size, **act)
    sums = empty(dev, (2, channels), work)
    wg = empty(dev, (channels,), work) if weight_grad is None else weight_grad
    bg = empty(dev, (channels,), work) if bias_grad is None else bias_grad
    dx = empty(dev, tuple(x.shape), work)
    if channels == 0:
        return dx, wg, bg
    y = output if output is not None else g
    gz = grad_through if grad_through is not None else dx
    with dev.lock:
        kernel(dev, "elementwise.cl", "channel_grad_sums", {**defines, "GROUP": group})(
            dev.queue, (group, channels), (group, 1), *_args(g), *_args(y), *_args(x),
            *_args(mean), *_args(var), _real(work, eps), np.int64(batch), np.int64(channels),
            np.int64(inner), sums.base_data, *_args(wg), *_args(bg))
        if dx.size:
            kernel(dev, "elementwise.cl", "batch_norm_backward", defines)(
                dev.queue, (inner, dx.size // inner), None, *_args(g), *_args(y), *_args(x),
                *_args(mean), *_args(var), *_args(weight if weight is not None else x),
                np.int32(weight is not None), sums.base_data, np.int32(training), *_args(dx),
                *_args(gz), np.int32(grad_through is not None), np.int64(channels),
                np.int64(inner), np.int64(batch * inner), _real(work, eps))
    return dx, wg, bg


def enqueue_bias_act(dev: Device, y: cla.Array, bias: cla.Array | None,
                     residual: cla.Array | None, activation: Activation | None, channels: int,
                     inner: int) -> None:
    """In place: y = act(y + bias[(i // inner) % channels] + residual) (contiguous device arrays of
    one dtype; bias/residual optional)."""
    if y.size == 0:
        return
    k = kernel(dev, "elementwise.cl", "bias_act",
               _defines(y.dtype, y.size, **activation_defines(activation)))
    with dev.lock:
        k(dev.queue, (y.size,), None, *_args(y), *_args(bias if bias is not None else y),
          np.int32(bias is not None), *_args(residual if residual is not None else y),
          np.int32(residual is not None), np.int64(channels), np.int64(inner))


def enqueue_column_sums(dev: Device, g: cla.Array, rows: int, cols: int, out: cla.Array) -> None:
    """out (cols,) = the column sums of g (rows x cols), contiguous, of one dtype (zeros for no
    rows)."""
    if cols == 0:
        return
    check_loop_limit(dev, "bias gradient", rows + 1)
    with dev.lock:
        kernel(dev, "elementwise.cl", "column_sums", _defines(g.dtype, max(g.size, out.size)))(
            dev.queue, (cols,), None, *_args(g), np.int64(rows), *_args(out))


# --- cat and flatten ---------------------------------------------------------------------------
def _dim(dim: Any, ndim: int, what: str) -> int:
    if not isinstance(dim, numbers.Integral) or isinstance(dim, bool):
        raise TypeError(f"{what} must be an int, got {dim!r}")
    lo, hi = (-ndim, ndim - 1) if ndim else (-1, 0)
    if not lo <= dim <= hi:
        raise IndexError(f"{what} out of range (expected to be in range of [{lo}, {hi}], but got "
                         f"{dim})")
    return int(dim) % max(ndim, 1)


class CatPlan(Plan):
    """torch.cat of arrays of these shapes along `dim` (equal shapes but along dim)."""

    def __init__(self, dev: Device, shapes: Sequence[tuple[int, ...]], dim: int,
                 dtype: np.dtype) -> None:
        shapes = [tuple(int(v) for v in s) for s in shapes]
        if not shapes:
            raise ValueError("cat: tensors must be a non-empty sequence of arrays")
        ndim = len(shapes[0])
        if ndim == 0:
            raise ValueError("cat: zero-dimensional arrays cannot be concatenated")
        d = _dim(dim, ndim, "dim")
        for i, s in enumerate(shapes):
            if len(s) != ndim or s[:d] != shapes[0][:d] or s[d + 1:] != shapes[0][d + 1:]:
                raise ValueError(f"cat: tensors[{i}] has shape {s}; every array must have the shape "
                                 f"{shapes[0]} except along dim {d}")
        out_shape = (*shapes[0][:d], sum(s[d] for s in shapes), *shapes[0][d + 1:])
        self.names = [f"tensors[{i}]" for i in range(len(shapes))]
        self.dim, self.shapes = d, shapes
        self._prepare(dev, dtype, dict(zip(self.names, shapes)), out_shape, out_shape,
                      {"output": out_shape})
        self.label = "cat"
        self.result_follows = "_kind"
        self.kernel = kernel(dev, "elementwise.cl", "copy_rows",
                             _defines(self.work, math.prod(out_shape)))

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        d = self.dim
        outer = math.prod(self.shapes[0][:d])
        inner = math.prod(self.shapes[0][d + 1:])
        ld = out.shape[d] * inner
        start = 0
        with self.device.lock:
            for name, shape in zip(self.names, self.shapes):
                src = arrays[name]
                assert src is not None
                cols = shape[d] * inner
                if cols and outer:
                    self.kernel(self.device.queue, (cols, outer), None, *_args(src),
                                np.int64(cols), out.base_data,
                                np.int64(element_offset(out) + start), np.int64(ld))
                start += cols

    def __call__(self, tensors: Sequence[ArrayLike], *, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute(self._values(tensors), out)

    def _values(self, tensors: Sequence[ArrayLike]) -> dict[str, Any]:
        values: dict[str, Any] = dict(zip(self.names, tensors))
        values["_kind"] = next((t for t in tensors if is_device_array(t)), tensors[0])
        return values


def cat(tensors: Sequence[ArrayLike], dim: int = 0, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.cat: the arrays joined along `dim` (default 0, as torch's; dim=1 for channels). A
    device result when any array is a device array (numpy ones are uploaded)."""
    if isinstance(tensors, (np.ndarray, cla.Array)) or not isinstance(tensors, Sequence):
        raise TypeError(f"cat: tensors must be a sequence (list or tuple) of arrays, got "
                        f"{type(tensors).__name__}")
    tensors = list(tensors)
    if not tensors:
        raise ValueError("cat: tensors must be a non-empty sequence of arrays")
    dev = current_device()
    dtype = result_dtype(dev, **{f"tensors[{i}]": t for i, t in enumerate(tensors)})
    shapes = tuple(shape_of(t) for t in tensors)
    plan = cached_plan(dev, ("cat", shapes, dim, dtype),
                       lambda: CatPlan(dev, shapes, dim, dtype))
    return plan.execute(plan._values(tensors), out, check=False)


def flatten(input: ArrayLike, start_dim: int = 0, end_dim: int = -1) -> ArrayLike:
    """torch.flatten: dims start_dim..end_dim merged into one. A contiguous device array gives a
    view (no copy, no kernel); a strided one is gathered on the device first; numpy gives numpy
    (a view when numpy can)."""
    if is_device_array(input):
        dev = current_device()
        result_dtype(dev, input=input)  # context and dtype checks
    shape = shape_of(input)
    ndim = len(shape)
    s = _dim(start_dim, ndim, "start_dim")
    e = _dim(end_dim, ndim, "end_dim")
    if s > e:
        raise ValueError(f"flatten: start_dim ({start_dim}) cannot come after end_dim ({end_dim})")
    new_shape = (1,) if ndim == 0 else (*shape[:s], math.prod(shape[s:e + 1]), *shape[e + 1:])
    return reshaped(input, new_shape)


def reshaped(a: ArrayLike, shape: Sequence[int]) -> ArrayLike:
    """`a` reshaped: a contiguous device array as a view (no device work), a strided one gathered
    on the current device first; numpy (or a CPU tensor) as numpy, a view when numpy can."""
    if isinstance(a, cla.Array):
        if not a.flags.c_contiguous:
            a = to_device(a, current_device(), "input", a.dtype)
        return a.reshape(*shape)
    return np.reshape(np.asarray(a), tuple(shape))


def pixel_shuffle(input: ArrayLike, upscale_factor: int) -> ArrayLike:
    """torch.nn.functional.pixel_shuffle (sub-pixel upsampling): (*, C r^2, H, W) -> (*, C, H r,
    W r), r = upscale_factor. A device array gives a device array (one gathering copy on the
    device); numpy (or a CPU tensor) gives numpy. Exact (a permutation)."""
    return _pixel_shuffle(input, upscale_factor, False)


def pixel_unshuffle(input: ArrayLike, downscale_factor: int) -> ArrayLike:
    """torch.nn.functional.pixel_unshuffle, pixel_shuffle's inverse: (*, C, H r, W r) -> (*,
    C r^2, H, W), r = downscale_factor; as `pixel_shuffle` otherwise. An empty input gets that
    shape too (torch 2.13 returns an empty input's own shape here, unlike pixel_shuffle)."""
    return _pixel_shuffle(input, downscale_factor, True)


def _pixel_shuffle(input: ArrayLike, r: Any, inverse: bool) -> ArrayLike:
    name, arg = ("pixel_unshuffle", "downscale_factor") if inverse else \
        ("pixel_shuffle", "upscale_factor")
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"{name}: {arg} must be an int, got {r!r}")
    r = int(r)
    if r < 1:
        raise ValueError(f"{name} expects a positive {arg}, but got {r}")
    if is_device_array(input):
        dev = current_device()
        result_dtype(dev, input=input)  # context and dtype checks
    shape = shape_of(input)
    if len(shape) < 3:
        raise ValueError(f"{name} expects input to have at least 3 dimensions, but got input "
                         f"with {len(shape)} dimension(s)")
    *lead, c, h, w = (int(d) for d in shape)
    if inverse:
        if h % r or w % r:
            raise ValueError(f"pixel_unshuffle expects height ({h}) and width ({w}) to be "
                             f"divisible by downscale_factor ({r})")
        # N * C stay together: one dim of the 5-d permuted view
        view, perm = (math.prod(lead) * c, h // r, r, w // r, r), (0, 2, 4, 1, 3)
        out = (*lead, c * r * r, h // r, w // r)
    else:
        if c % (r * r):
            raise ValueError(f"pixel_shuffle expects its input's 'channel' dimension ({c}) to be "
                             f"divisible by the square of upscale_factor ({r * r})")
        view, perm = (math.prod(lead) * (c // (r * r)), r, r, h, w), (0, 3, 1, 4, 2)
        out = (*lead, c // (r * r), h * r, w * r)
    permuted = reshaped(input, view).transpose(perm)
    if isinstance(permuted, cla.Array):
        return to_device(permuted, dev, "input", permuted.dtype).reshape(*out)
    return np.ascontiguousarray(permuted).reshape(out)
