"""Activations and math functions as torch names them, one element at a time (any shape, 0-d
included).

    y = clconv.relu(x)                           # numpy -> numpy, device -> device
    y = clconv.gelu(x, approximate="tanh")
    y = clconv.clamp(x, 0.0, 6.0)

Every activation is computed by cl/common.cl's one `activate()` (clconv.ops.activation gives its
-D switches), so the ops, the fused epilogues and the layers agree to the bit. The kernels are
cl/elementwise.cl's `unary` and its gradients; every op is a Plan (validated and built once per
shape, dtype and arguments). `UnaryPlan.backward` serves clconv.nn's layers and clconv.torch's
training. Tensor bounds of `clamp` and NaN bounds go through clconv.ops.binary.
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
from ..runtime.interop import host_operand
from ..runtime.memory import empty
from ..runtime.program import kernel
from ..runtime.transfer import ArrayLike, result_dtype
from .activation import Activation, ActivationArg, activation_defines, normalize_activation
from .binary import binary_op
from .elementwise import array_args, elementwise_defines
from .plan import Plan, cached_plan, shape_ints, shape_of
from .scalars import fits_dtype, plain_number

__all__ = ["abs", "celu", "clamp", "elu", "erf", "exp", "gelu", "gradient_from_output",
           "hardshrink", "hardsigmoid", "hardswish", "hardtanh", "leaky_relu", "log",
           "logsigmoid", "mish", "relu", "relu6", "rsqrt", "selu", "sigmoid", "silu", "softplus",
           "softshrink", "softsign", "sqrt", "tanh", "tanhshrink", "threshold", "unary_plan",
           "UnaryPlan"]


class UnaryPlan(Plan):
    """y = act(x) for one shape and dtype (any shape, 0-d included); `backward(x, g)` gives the
    input gradient. clamp_inclusive: torch.clamp's gradient at the bounds rather than hardtanh's."""

    out_may_be_operand = True  # inplace=True: each element reads its own
    _BATCH_ARGS = (*Plan._BATCH_ARGS, "shape")  # (dim 0 of any shape: another size re-plans)

    def __init__(self, dev: Device, activation: ActivationArg, shape: Sequence[int],
                 dtype: np.dtype, clamp_inclusive: bool = False) -> None:
        act = normalize_activation(activation)
        if act is None:
            raise ValueError("activation must not be None for an elementwise activation op")
        self.activation: Activation = act
        shape = shape_ints(shape, "shape")
        self._prepare(dev, dtype, {"input": shape}, shape, shape, {"input": shape})
        self.label = str(act)
        extra: dict[str, object] = dict(activation_defines(act))
        if clamp_inclusive:
            extra["CLAMP_GRAD_INCLUSIVE"] = None
        self._defines = elementwise_defines(self.work, math.prod(shape), **extra)
        self.kernel = kernel(dev, "elementwise.cl", "unary", self._defines)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        x = arrays["input"]
        assert x is not None
        with self.device.lock:
            return self.kernel(self.device.queue, (out.size,), None, *array_args(x),
                               *array_args(out))

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
                    self.device.queue, (dx.size,), None, *array_args(x), *array_args(grad_output),
                    *array_args(dx))
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


def _target(input: ArrayLike, out: ArrayLike | None, inplace: Any) -> ArrayLike | None:
    """Where an op with `inplace` and `out=` writes: `out`, or the input itself with inplace."""
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"inplace must be a bool, got {inplace!r}")
    if inplace:
        if out is not None:
            raise ValueError("pass either inplace=True or out=, not both")
        flags = getattr(input, "flags", None)
        if isinstance(input, np.ndarray) and not flags.writeable:
            raise ValueError("input is read-only, and inplace=True writes it")
        if isinstance(input, np.ndarray) and not input.dtype.isnative:
            raise ValueError(f"input has dtype {input.dtype} (not the machine's byte order), "
                             f"which inplace=True cannot write; pass a native-order array")
        host_operand(input, "input", written=True)  # (a torch tensor's refusals name it)
        return input
    return out


# What the ops call their activation's parameters (for messages).
_PARAMETERS = {"leaky_relu": ("negative_slope",), "elu": ("alpha",), "celu": ("alpha",),
               "softplus": ("beta", "threshold"), "clamp": ("min", "max"),
               "hardshrink": ("lambd",), "softshrink": ("lambd",)}
# The activations whose parameters torch converts to float, not float16, for a float16 tensor.
_IN_FLOAT = frozenset(("leaky_relu", "elu", "celu", "softplus"))


def _unary(activation: ActivationArg, input: ArrayLike, out: ArrayLike | None,
           inplace: bool = False, clamp_inclusive: bool = False) -> ArrayLike:
    out = _target(input, out, inplace)
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    if isinstance(activation, tuple):  # the parameters given, each converted to the dtype
        names = _PARAMETERS.get(activation[0], ())
        for i, value in enumerate(activation[1:]):
            fits_dtype(activation[0], names[i] if i < len(names) else f"parameter {i + 1}",
                       plain_number(value), dtype, activation[0] in _IN_FLOAT)
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
    min_val, max_val = plain_number(min_val), plain_number(max_val)
    for name, v in (("min_val", min_val), ("max_val", max_val)):
        if not isinstance(v, numbers.Real):  # (a bool: 0 or 1, as torch's)
            raise TypeError(f"{name} must be a real number, got {v!r}")
    dtype = result_dtype(current_device(), input=input)
    for name, v in (("min_val", min_val), ("max_val", max_val)):
        fits_dtype("hardtanh", name, v, dtype)
    if min_val > max_val:
        raise ValueError(f"min_val ({min_val}) must not be greater than max_val ({max_val})")
    if math.isnan(min_val) or math.isnan(max_val):
        return _nan_like(input, out, inplace)
    return _unary(("clamp", min_val, max_val), input, out, inplace)


def _nan_like(input: ArrayLike, out: ArrayLike | None, inplace: bool = False) -> ArrayLike:
    """torch's clamp / hardtanh with a NaN bound: NaN everywhere (input * NaN, so the result has
    the input's kind, shape and dtype)."""
    return binary_op("mul", input, math.nan, None, _target(input, out, inplace))


def clamp(input: ArrayLike, min: float | ArrayLike | None = None,
          max: float | ArrayLike | None = None, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.clamp (at least one bound given): min(max(x, min), max); when min > max every value
    becomes max, as torch's. NaN stays NaN; a NaN bound makes every value NaN (torch's). Bounds are
    numbers, or arrays that broadcast with the input (then `maximum` and `minimum`, which
    propagate a NaN of either side, as torch's clamp with tensor bounds); not one of each."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must not be None")
    min, max = plain_number(min), plain_number(max)  # a 0-d array or tensor is its number
    if any(v is not None and not isinstance(v, numbers.Number) for v in (min, max)):
        if any(isinstance(v, numbers.Number) for v in (min, max)):
            raise TypeError("clamp: min and max must both be numbers (or 0-d arrays) or both "
                            "be arrays (or None), as torch's")
        if min is not None and max is not None:
            return binary_op("minimum", binary_op("maximum", input, min, None, None,
                                              other_name="min"), max, None, out,
                           other_name="max")
        return binary_op("maximum" if max is None else "minimum", input,
                       min if max is None else max, None, out,
                       other_name="min" if max is None else "max")
    for name, v in (("min", min), ("max", max)):
        if v is not None and not isinstance(v, numbers.Real):  # (a bool: 0 or 1, as torch's)
            raise TypeError(f"clamp: {name} must be a real number or None, got {v!r}")
    if any(v is not None and math.isnan(v) for v in (min, max)):
        return _nan_like(input, out)
    return _unary(("clamp", min, max), input, out, clamp_inclusive=True)


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
    """torch.nn.functional.threshold: value where x <= threshold, else x (NaN kept; a NaN
    threshold keeps every x, a NaN value puts NaN where x <= threshold, as torch's)."""
    threshold, value = plain_number(threshold), plain_number(value)
    for name, v in (("threshold", threshold), ("value", value)):
        if not isinstance(v, numbers.Real):  # (a bool: 0 or 1, as torch's)
            raise TypeError(f"threshold: {name} must be a real number, got {v!r}")
    dtype = result_dtype(current_device(), input=input)
    for name, v in (("threshold", threshold), ("value", value)):
        fits_dtype("threshold", name, v, dtype, in_float=name == "threshold")
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
