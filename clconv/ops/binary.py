"""Broadcast arithmetic as torch names it: add, sub, mul, div, maximum, minimum, prelu.

    y = clconv.mul(x, gate)                      # gate (N, C, 1, 1): squeeze-excitation
    y = clconv.add(x, shortcut, activation="relu")
    y = clconv.sub(x, 1.5)                       # a Python number as torch wraps it

numpy broadcasting between the operands (up to 5 separate broadcast dims after merging), the
optional activation fused into the store (cl/common.cl's `activate()`, as every epilogue). One
kernel, cl/elementwise.cl's `binary`, with the op as a define; every op is a Plan (validated and
built once per shapes, dtype and arguments); a Python number beside a device array is uploaded
once and kept.
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
from ..runtime.program import BoundKernel, kernel
from ..runtime.transfer import ArrayLike, dtype_of, is_device_array, result_dtype, to_device
from .activation import ActivationArg, activation_defines, normalize_activation
from .elementwise import array_args, elementwise_defines, real_scalar
from .plan import Plan, cached_plan, shape_of
from .scalars import fits_dtype, plain_number

__all__ = ["add", "binary_op", "BinaryPlan", "broadcast_layout", "div", "maximum", "minimum",
           "mul", "prelu", "sub"]

_MAX_DIMS = 5


def broadcast_layout(out_shape: tuple[int, ...], *shapes: tuple[int, ...]
                     ) -> tuple[list[int], list[list[int]]]:
    """The output's dims merged as far as every operand allows, and each operand's element
    strides along them (0 where it is broadcast): at most as many dims as the broadcasts need."""
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
        coefficient = _alpha_coefficient(op, alpha)
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
        self.alpha = real_scalar(self.work, coefficient)  # (other's coefficient)
        # This plan's own kernel object with the sizes and strides set now: a run sets the
        # operands' buffers and offsets only (a network's squeeze-excitation products and
        # residual sums run it once a block).
        self.bound = BoundKernel(self.kernel, (
            (None,) * 6 + tuple(np.int64(s) for s in self.dims[1:-1])
            + tuple(np.int64(t) for t in self.strides[0])
            + tuple(np.int64(t) for t in self.strides[1]) + (self.alpha,)), range(6))

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        a, b = arrays["input"], arrays["other"]
        assert a is not None and b is not None
        with self.device.lock:
            inner = self.dims[-1]
            return self.bound(self.device.queue, (inner, out.size // inner), None,
                              *array_args(a), *array_args(b), *array_args(out))

    def __call__(self, input: ArrayLike, other: ArrayLike, *,
                 out: ArrayLike | None = None) -> ArrayLike:
        return self.execute(binary_values(input, other), out)


#: cl/elementwise.cl's binary OP codes.
_BINARY_OPS = {"add": 0, "mul": 1, "sub": 2, "prelu": 3, "div": 4, "maximum": 5, "minimum": 6,
               "div_trunc": 7, "div_floor": 8}


def _alpha_coefficient(op: str, alpha: int | float) -> float:
    """other's coefficient in add / sub: alpha, or for sub -alpha negated as the number it is, as
    torch does (-0 of an int 0 is +0.0; of a float 0.0, -0.0: the sign of a zero result)."""
    return float(-alpha if op == "sub" else alpha)


def _alpha_key(op: str, alpha: int | float) -> bytes:
    """The plan cache's key of alpha: its coefficient's bits (0.0 == -0.0 in Python, and a NaN
    equals no other)."""
    return np.float64(_alpha_coefficient(op, alpha)).tobytes()


def _check_alpha(op: str, alpha: Any) -> int | float:
    """torch.add/sub's `alpha` (a real number or a 0-d array / tensor; other ops take none) as
    the plain number it is (an int stays one: sub negates it as torch does)."""
    alpha = plain_number(alpha)
    if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool):
        raise TypeError(f"{op}: alpha must be a real number, got {alpha!r} (torch takes a "
                        f"Boolean alpha only for Boolean results)")
    if alpha != 1 and op not in ("add", "sub"):
        raise ValueError(f"{op}: only add and sub take alpha")
    return alpha


def binary_values(input: Any, other: Any) -> dict[str, Any]:
    """A binary plan's operands by name (`execute`'s values)."""
    kind = input if is_device_array(input) or not is_device_array(other) else other
    return {"input": input, "other": other, "_kind": kind}


def _scalar_operand(value: Any, like: Any, name: str) -> Any:
    """A Python number (a bool as 0 / 1) as a 0-d numpy array of `like`'s dtype (as torch wraps
    scalars); so is a 0-d host array or tensor beside an array of one or more dims, as torch's
    type promotion takes a 0-d tensor (float32 + a float64 0-d is float32)."""
    if getattr(like, "ndim", 0) and getattr(value, "ndim", None) == 0 and \
            not isinstance(value, numbers.Number) and not is_device_array(value) and \
            not getattr(value, "requires_grad", False) and \
            np.dtype(dtype_of(value, name)).kind in "fiub":
        value = value.item()
    if isinstance(value, numbers.Real) and not isinstance(value, np.ndarray):
        try:  # numpy's, pyopencl's or a torch tensor's dtype (as its numpy view has it)
            dtype = dtype_of(like, name) if like is not None and \
                not isinstance(like, numbers.Real) else np.dtype(np.float32)
        except TypeError:
            dtype = np.dtype(np.float32)  # `like` is refused with its own message later
        with np.errstate(over="ignore"):  # (7e4 as float16 is inf, as torch's cast gives it)
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


def binary_op(op: str, input: ArrayLike, other: ArrayLike, activation: ActivationArg,
            out: ArrayLike | None, alpha: float = 1, other_name: str = "other") -> ArrayLike:
    """The binary op `op` (other_name: what messages call `other`: prelu's weight, clamp's
    bound)."""
    alpha = _check_alpha(op, alpha)
    if isinstance(input, numbers.Number) and isinstance(other, numbers.Number):
        raise TypeError(f"{op}: input and other are both numbers ({type(input).__name__}, "
                        f"{type(other).__name__}); at least one must be an array")
    if op == "sub" and any(isinstance(v, (bool, np.bool_)) for v in (input, other)):
        raise TypeError("sub: a bool operand; torch refuses subtraction with a bool (use ~ or "
                        "logical_not to invert a mask)")
    given = other  # (before a number becomes a 0-d array)
    other = _scalar_operand(other, input, other_name)
    input = _scalar_operand(input, other, "input")
    dev = current_device()
    dtype = result_dtype(dev, **{"input": input, other_name: other})
    fits_dtype(op, "alpha", alpha, dtype)
    if dtype == np.float16 and op in ("mul", "div") and type(other) is np.ndarray and \
            other.ndim == 0 and other is not given:
        # torch.mul(x, 1e-8) / torch.div(x, 7e4) of a float16 x compute in float32 with the
        # number's own value (not 0, not inf): the number goes to the float32 kernels as float32,
        # not rounded to float16. torch rounds it to float16 first as the first operand
        # (torch.mul(1e-8, x)) and in add / sub (x - 65519 is x - 65504): so does clconv.
        other = np.asarray(float(np.asarray(given).item()), np.float32)
    # A number beside a device array of its dtype: the kept device copy (same values, same kind)
    for name, value, beside in (("input", input, other), ("other", other, input)):
        if type(value) is np.ndarray and value.ndim == 0 and value.dtype == dtype \
                and is_device_array(beside) and beside.context == dev.context:
            if name == "input":
                input = _device_scalar(dev, value)
            else:
                other = _device_scalar(dev, value)
    plan = binary_plan(dev, op, shape_of(input), shape_of(other), dtype, activation, alpha)
    return plan.execute(binary_values(input, other), out, check=False)


def binary_plan(dev: Device, op: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...],
                dtype: np.dtype, activation: ActivationArg = None, alpha: float = 1) -> BinaryPlan:
    """The functional binary ops' plan (the device's plan cache): op of operands of shapes
    a_shape and b_shape (broadcast) in `dtype`, then the activation. Its operands:
    `binary_values`."""
    act = normalize_activation(activation)
    return cached_plan(dev, ("binary", op, a_shape, b_shape, dtype, act, _alpha_key(op, alpha)),
                       lambda: BinaryPlan(dev, op, a_shape, b_shape, dtype, act, alpha=alpha))


def add(input: ArrayLike, other: ArrayLike, *, alpha: float = 1,
        activation: ActivationArg = None, out: ArrayLike | None = None) -> ArrayLike:
    """torch.add(input, other, alpha=alpha) with broadcasting (other may be a Python number), then
    the optional fused activation: act(input + alpha * other), the product and sum fused (one
    rounding) as torch's CPU kernel does."""
    return binary_op("add", input, other, activation, out, alpha)


def sub(input: ArrayLike, other: ArrayLike, *, alpha: float = 1,
        activation: ActivationArg = None, out: ArrayLike | None = None) -> ArrayLike:
    """torch.sub(input, other, alpha=alpha) with broadcasting (either may be a Python number),
    then the optional fused activation: act(input - alpha * other) (fused, as add's)."""
    return binary_op("sub", input, other, activation, out, alpha)


def prelu(input: ArrayLike, weight: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.prelu: input where > 0, else weight * input, with weight (1,) or (C,)
    (one slope per channel: dim 1 of an (N, C, *) input)."""
    for name, value in (("input", input), ("weight", weight)):
        if not (hasattr(value, "shape") and hasattr(value, "reshape")):  # (a list, a number)
            what = "an array of slopes" if name == "weight" else "an array"
            raise TypeError(f"prelu: {name} must be {what} (torch: a tensor), got "
                            f"{type(value).__name__}")
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
    return binary_op("prelu", input, weight, None, out, other_name="weight")


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
    return binary_op(ops[rounding_mode], input, other, activation, out)


def maximum(input: ArrayLike, other: ArrayLike, *, activation: ActivationArg = None,
            out: ArrayLike | None = None) -> ArrayLike:
    """torch.maximum(input, other): the larger of each pair with broadcasting (other may be a
    Python number); NaN if either is NaN; of equal values (-0 and 0) the first, as torch; then
    the activation."""
    return binary_op("maximum", input, other, activation, out)


def minimum(input: ArrayLike, other: ArrayLike, *, activation: ActivationArg = None,
            out: ArrayLike | None = None) -> ArrayLike:
    """torch.minimum(input, other): the smaller of each pair, as maximum."""
    return binary_op("minimum", input, other, activation, out)


def mul(input: ArrayLike, other: ArrayLike, *, activation: ActivationArg = None,
        out: ArrayLike | None = None) -> ArrayLike:
    """torch.mul(input, other) with broadcasting (a squeeze-excitation gate (N, C, 1, 1) times the
    features (N, C, H, W)), then the optional fused activation."""
    return binary_op("mul", input, other, activation, out)
