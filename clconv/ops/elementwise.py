"""Elementwise ops as torch names them: activations, broadcast add/mul/..., maximum/minimum.

    y = clconv.relu(x)                           # any shape; numpy -> numpy, device -> device
    y = clconv.gelu(x, approximate="tanh")
    y = clconv.mul(x, gate)                      # gate (N, C, 1, 1): squeeze-excitation
    y = clconv.add(x, shortcut, activation="relu")

Every activation is computed by cl/common.cl's one `activate()` (clconv.ops.activation gives its
-D switches), so the ops, the fused epilogues and the layers agree to the bit. The kernels are
cl/elementwise.cl's; every op is a Plan (validated and built once per shape, dtype and arguments),
sizes are kernel arguments. `UnaryPlan.backward` serves clconv.nn's layers. Batch normalisation
and the other per-channel passes are clconv.ops.channels', cat/flatten/pixel_shuffle
clconv.ops.shape's (the same kernel file).
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
from .plan import Plan, cached_plan, shape_ints, shape_of

__all__ = ["BinaryPlan", "UnaryPlan", "abs", "add", "array_args", "broadcast_layout", "celu",
           "clamp", "div", "elementwise_defines", "elu", "erf", "exp", "gelu",
           "gradient_from_output", "hardshrink", "hardsigmoid", "hardswish", "hardtanh",
           "leaky_relu", "log", "logsigmoid", "maximum", "minimum", "mish", "mul", "prelu",
           "real_scalar", "relu", "relu6", "rsqrt", "selu", "sigmoid", "silu", "softplus",
           "softshrink", "softsign", "sqrt", "sub", "tanh", "tanhshrink", "threshold", "unary_plan"]


def elementwise_defines(work: np.dtype, elements: int, **extra: object) -> dict[str, object]:
    """The defines of an elementwise.cl kernel: precision, INDEX_T for `elements`, and `extra`."""
    defines = precision_defines(work)
    defines["INDEX_T"] = index_type(elements)
    defines.update(extra)
    return defines


def array_args(a: cla.Array) -> tuple[Any, np.int64]:
    """An array as kernel arguments: (its buffer, its offset in elements)."""
    return a.base_data, np.int64(element_offset(a))


def real_scalar(work: np.dtype, value: float) -> np.generic:
    """A REAL kernel argument of the work dtype (float64 or float32: half computes in float)."""
    return np.float64(value) if work == np.float64 else np.float32(value)


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
        return input
    return out


def _unary(activation: ActivationArg, input: ArrayLike, out: ArrayLike | None,
           inplace: bool = False, clamp_inclusive: bool = False) -> ArrayLike:
    out = _target(input, out, inplace)
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
    if math.isnan(min_val) or math.isnan(max_val):
        return _nan_like(input, out, inplace)
    return _unary(("clamp", min_val, max_val), input, out, inplace)


def _nan_like(input: ArrayLike, out: ArrayLike | None, inplace: bool = False) -> ArrayLike:
    """torch's clamp / hardtanh with a NaN bound: NaN everywhere (input * NaN, so the result has
    the input's kind, shape and dtype)."""
    return _binary("mul", input, math.nan, None, _target(input, out, inplace))


def clamp(input: ArrayLike, min: float | ArrayLike | None = None,
          max: float | ArrayLike | None = None, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.clamp (at least one bound given): min(max(x, min), max); when min > max every value
    becomes max, as torch's. NaN stays NaN; a NaN bound makes every value NaN (torch's). Bounds are
    numbers, or arrays that broadcast with the input (then `maximum` and `minimum`, which
    propagate a NaN of either side, as torch's clamp with tensor bounds); not one of each."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must not be None")
    if any(v is not None and not isinstance(v, numbers.Number) for v in (min, max)):
        if any(isinstance(v, numbers.Number) for v in (min, max)):
            raise TypeError("clamp: min and max must both be numbers or both be arrays (or "
                            "None), as torch's")
        if min is not None and max is not None:
            return _binary("minimum", _binary("maximum", input, min, None, None,
                                              other_name="min"), max, None, out,
                           other_name="max")
        return _binary("maximum" if max is None else "minimum", input,
                       min if max is None else max, None, out,
                       other_name="min" if max is None else "max")
    for name, v in (("min", min), ("max", max)):
        if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, bool)):
            raise TypeError(f"clamp: {name} must be a real number or None, got {v!r}")
    if any(v is not None and math.isnan(v) for v in (min, max)):
        return _nan_like(input, out)
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
    """y = act(input OP other) for op 'add', 'sub', 'mul', 'div' ('div_trunc', 'div_floor': its
    rounding modes), 'maximum', 'minimum' or 'prelu' (other: the slopes),
    with numpy broadcasting between the shapes (same shape, per-channel (C,) / (N, C, 1, 1) /
    (1, C, 1, 1) against (N, C, *spatial), ...)."""

    out_may_be_operand = True  # inplace=True: each element reads its own

    def __init__(self, dev: Device, op: str, input_shape: Sequence[int],
                 other_shape: Sequence[int], dtype: np.dtype,
                 activation: ActivationArg = None, *, alpha: float = 1) -> None:
        if op not in _BINARY_OPS:
            raise ValueError(f"op must be one of {tuple(_BINARY_OPS)}, got {op!r}")
        alpha = _check_alpha(op, alpha)
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
        if len(b_shape) == len(a_shape) and a_shape and b_shape[0] == a_shape[0] != 1:
            # other has the input's batch (not broadcast along it): a call with another batch
            # size of both re-plans both
            self._BATCH_ARGS = (*Plan._BATCH_ARGS, "other_shape")
            self._BATCH_OPERANDS = (*Plan._BATCH_OPERANDS, "other")
        self._prepare(dev, dtype, {"input": a_shape, "other": b_shape}, out_shape, out_shape,
                      {"output": out_shape})
        self.label = op if act is None else f"{op} + {act}"
        self.result_follows = "_kind"
        self.kernel = kernel(dev, "elementwise.cl", "binary", elementwise_defines(
            self.work, max(math.prod(out_shape), math.prod(a_shape), math.prod(b_shape)),
            OP=_BINARY_OPS[op], **activation_defines(act),
            **({} if alpha == 1 else {"HAS_ALPHA": None})))
        self.alpha = real_scalar(self.work, alpha)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        a, b = arrays["input"], arrays["other"]
        assert a is not None and b is not None
        with self.device.lock:
            inner = self.dims[-1]
            return self.kernel(self.device.queue, (inner, out.size // inner), None, *array_args(a),
                               *array_args(b), *array_args(out),
                               *(np.int64(s) for s in self.dims[1:-1]),
                               *(np.int64(t) for t in self.strides[0]),
                               *(np.int64(t) for t in self.strides[1]), self.alpha)

    def __call__(self, input: ArrayLike, other: ArrayLike, *,
                 out: ArrayLike | None = None) -> ArrayLike:
        return self.execute(_binary_values(input, other), out)


#: cl/elementwise.cl's binary OP codes.
_BINARY_OPS = {"add": 0, "mul": 1, "sub": 2, "prelu": 3, "div": 4, "maximum": 5, "minimum": 6,
               "div_trunc": 7, "div_floor": 8}


def _check_alpha(op: str, alpha: Any) -> float:
    """torch.add/sub's `alpha` (a real number; other ops take none) as a float."""
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool):
        raise TypeError(f"{op}: alpha must be a real number, got {alpha!r} (torch takes a "
                        f"Boolean alpha only for Boolean results)")
    if alpha != 1 and op not in ("add", "sub"):
        raise ValueError(f"{op}: only add and sub take alpha")
    return float(alpha)


def _binary_values(input: Any, other: Any) -> dict[str, Any]:
    kind = input if is_device_array(input) or not is_device_array(other) else other
    return {"input": input, "other": other, "_kind": kind}


def _scalar_operand(value: Any, like: Any, name: str) -> Any:
    """A Python number (a bool as 0 / 1) as a 0-d numpy array of `like`'s dtype (as torch wraps
    scalars)."""
    if isinstance(value, numbers.Real) and not isinstance(value, np.ndarray):
        try:  # numpy's, pyopencl's or a torch tensor's dtype (as its numpy view has it)
            dtype = dtype_of(like, name) if like is not None and \
                not isinstance(like, numbers.Real) else np.dtype(np.float32)
        except TypeError:
            dtype = np.dtype(np.float32)  # `like` is refused with its own message later
        return np.asarray(value, dtype=dtype)
    return value


#: How many Python numbers `_device_scalar` keeps on each device.
SCALARS_KEPT = 64


def _device_scalar(dev: Device, value: np.ndarray) -> cla.Array:
    """A Python number's 0-d operand (`value`, as `_scalar_operand` made it) on `dev`, uploaded
    once and kept (the last SCALARS_KEPT numbers): `x + 1` on device arrays then costs one kernel
    launch, not an upload as well (~20 us a call on PoCL). The kept arrays are only ever read."""
    key = ("scalar", value.dtype.str, value.tobytes())
    with dev.lock:
        found = dev.constants.pop(key, None)  # re-inserted last: the dict keeps insertion order
        if found is None:
            found = to_device(value, dev, "scalar", value.dtype)
            scalars = [k for k in dev.constants if k[0] == "scalar"]
            for old in scalars[:max(0, len(scalars) + 1 - SCALARS_KEPT)]:
                del dev.constants[old]
        dev.constants[key] = found
    return found


def _binary(op: str, input: ArrayLike, other: ArrayLike, activation: ActivationArg,
            out: ArrayLike | None, alpha: float = 1, other_name: str = "other") -> ArrayLike:
    """The binary op `op` (other_name: what messages call `other`: prelu's weight, clamp's
    bound)."""
    alpha = _check_alpha(op, alpha)
    if isinstance(input, numbers.Number) and isinstance(other, numbers.Number):
        raise TypeError(f"{op}: input and other are both numbers ({type(input).__name__}, "
                        f"{type(other).__name__}); at least one must be an array, as in torch")
    if op == "sub" and any(isinstance(v, (bool, np.bool_)) for v in (input, other)):
        raise TypeError("sub: a bool operand; torch refuses subtraction with a bool (use ~ or "
                        "logical_not to invert a mask)")
    other = _scalar_operand(other, input, other_name)
    input = _scalar_operand(input, other, "input")
    dev = current_device()
    dtype = result_dtype(dev, **{"input": input, other_name: other})
    # A number beside a device array of its dtype: the kept device copy (same values, same kind)
    for name, value, beside in (("input", input, other), ("other", other, input)):
        if type(value) is np.ndarray and value.ndim == 0 and value.dtype == dtype \
                and is_device_array(beside) and beside.context == dev.context:
            if name == "input":
                input = _device_scalar(dev, value)
            else:
                other = _device_scalar(dev, value)
    a_shape, b_shape = shape_of(input), shape_of(other)
    act = normalize_activation(activation)
    plan = cached_plan(dev, ("binary", op, a_shape, b_shape, dtype, act, alpha),
                       lambda: BinaryPlan(dev, op, a_shape, b_shape, dtype, act, alpha=alpha))
    return plan.execute(_binary_values(input, other), out, check=False)


def add(input: ArrayLike, other: ArrayLike, *, alpha: float = 1,
        activation: ActivationArg = None, out: ArrayLike | None = None) -> ArrayLike:
    """torch.add(input, other, alpha=alpha) with broadcasting (other may be a Python number), then
    the optional fused activation: act(input + alpha * other), the product and sum fused (one
    rounding) as torch's CPU kernel does."""
    return _binary("add", input, other, activation, out, alpha)


def sub(input: ArrayLike, other: ArrayLike, *, alpha: float = 1,
        activation: ActivationArg = None, out: ArrayLike | None = None) -> ArrayLike:
    """torch.sub(input, other, alpha=alpha) with broadcasting (either may be a Python number),
    then the optional fused activation: act(input - alpha * other) (fused, as add's)."""
    return _binary("sub", input, other, activation, out, alpha)


def prelu(input: ArrayLike, weight: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.prelu: input where > 0, else weight * input, with weight (1,) or (C,)
    (one slope per channel: dim 1 of an (N, C, *) input)."""
    if isinstance(weight, (numbers.Number, bool)) or weight is None:
        raise TypeError(f"prelu: weight must be an array of slopes (torch: a tensor), got "
                        f"{weight!r}")
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
    return _binary("prelu", input, weight, None, out, other_name="weight")


def div(input: ArrayLike, other: ArrayLike, *, rounding_mode: str | None = None,
        activation: ActivationArg = None, out: ArrayLike | None = None) -> ArrayLike:
    """torch.div(input, other, rounding_mode=...) with broadcasting (either may be a Python
    number), then the optional fused activation: true division (IEEE: x / 0 is +-inf, 0 / 0
    NaN), 'trunc' (rounded toward zero) or 'floor' (toward -inf, Python's //, by torch's
    steps: fmod, then the quotient corrected; x / 0 as true division)."""
    ops = {None: "div", "trunc": "div_trunc", "floor": "div_floor"}
    if not isinstance(rounding_mode, (str, type(None))) or rounding_mode not in ops:
        raise ValueError(f"div expected rounding_mode to be one of None, 'trunc', or 'floor' but "
                         f"found {rounding_mode!r}")
    return _binary(ops[rounding_mode], input, other, activation, out)


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
    for name, v in (("threshold", threshold), ("value", value)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
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
