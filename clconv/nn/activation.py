"""The activation layers (ReLU, ReLU6, SiLU, GELU, Sigmoid, Tanh, Hardswish, Hardsigmoid, Mish,
SELU, LeakyReLU, ELU, CELU, Softplus, Hardtanh): one elementwise pass forward and one backward."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..ops.activation import ActivationArg, normalize_activation
from ..ops.unary import UnaryPlan, unary_plan
from ..runtime.device import Device
from ..runtime.transfer import ArrayLike
from ..runtime.versions import stamp
from .module import Module, check_grad, check_saved, enter, leave


class _Activation(Module):
    """A layer applying one activation (common.cl's activate()) elementwise; backward uses the
    input of the latest forward."""

    spec: ActivationArg = None

    def __init__(self, inplace: bool = False) -> None:
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace must be a bool, got {inplace!r}")
        self.inplace = inplace
        self.act = normalize_activation(self.spec)
        self._saved: tuple[Any, ...] | None = None

    def _plan(self, dev: Device, shape: tuple[int, ...], work: np.dtype) -> UnaryPlan:
        return unary_plan(dev, self.act, shape, work)

    def forward(self, input: ArrayLike) -> ArrayLike:
        """input (any shape) -> act(input), same shape; with `inplace`, written into input
        (a numpy array, CPU torch tensor or device array) and input returned, as torch's."""
        dev, x, dtype, host = enter(input, "input")
        plan = self._plan(dev, tuple(x.shape), x.dtype)
        if not self.inplace:
            self._saved, self._stamps = (x, plan), stamp(x)
            return leave(dev, plan(x), dtype, host)
        if isinstance(input, cla.Array) and x.base_data == input.base_data:
            x = x.copy()  # backward reads the input as it was before the write
        self._saved, self._stamps = (x, plan), stamp(x)
        # The functional in-place path: it writes any kind of input (strided device views, other
        # dtypes) and returns the caller's object itself.
        return self._plan(dev, tuple(x.shape), dtype).execute({"input": input}, input, check=False)

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output -> act'(input) * grad_output."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward call first")
        x, plan = self._saved
        check_saved(self, (x,))
        with plan.device:
            dev, g, dtype, host = enter(grad_output, "grad_output")
            check_grad(g, tuple(x.shape), x.dtype)
            return leave(dev, plan.backward(x, g), dtype, host)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({'inplace=True' if self.inplace else ''})"


def _activation_layer(name: str, spec: str, takes_inplace: bool = True) -> type[_Activation]:
    """The layer class torch.nn.<name> of the parameterless activation `spec`; without
    `takes_inplace` its constructor takes no arguments, as torch's (Sigmoid(inplace=True) is a
    TypeError there too)."""
    namespace: dict[str, Any] = {"spec": spec, "__doc__": f"torch.nn.{name}.",
                                 "__module__": __name__, "__qualname__": name}
    if not takes_inplace:
        def __init__(self: _Activation) -> None:
            _Activation.__init__(self)

        __init__.__qualname__ = f"{name}.__init__"  # (what a TypeError names)
        namespace["__init__"] = __init__
    return type(name, (_Activation,), namespace)


ReLU = _activation_layer("ReLU", "relu")
ReLU6 = _activation_layer("ReLU6", "relu6")
SiLU = _activation_layer("SiLU", "silu")
Sigmoid = _activation_layer("Sigmoid", "sigmoid", takes_inplace=False)
Tanh = _activation_layer("Tanh", "tanh", takes_inplace=False)
Hardswish = _activation_layer("Hardswish", "hardswish")
Hardsigmoid = _activation_layer("Hardsigmoid", "hardsigmoid")
Mish = _activation_layer("Mish", "mish")
SELU = _activation_layer("SELU", "selu")


class GELU(_Activation):
    """torch.nn.GELU(approximate='none' | 'tanh')."""

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.spec = ("gelu", approximate)
        super().__init__()

    def __repr__(self) -> str:
        return f"GELU(approximate={self.approximate!r})"


class _ParametrisedActivation(_Activation):
    """An activation with numeric parameters: attributes named `params` (torch's argument names,
    shown so by repr), the arguments of clconv's activation `kind`."""

    kind = ""
    params: tuple[str, ...] = ()

    def _set(self, inplace: bool, *values: float) -> None:
        for name, value in zip(self.params, values):
            setattr(self, name, value)
        self.spec = (self.kind, *values)
        super().__init__(inplace)

    def __repr__(self) -> str:
        args = [f"{name}={getattr(self, name)}" for name in self.params]
        return f"{type(self).__name__}({', '.join(args + ['inplace=True'] * self.inplace)})"


class LeakyReLU(_ParametrisedActivation):
    """torch.nn.LeakyReLU(negative_slope=0.01)."""

    kind, params = "leaky_relu", ("negative_slope",)

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        self._set(inplace, negative_slope)


class ELU(_ParametrisedActivation):
    """torch.nn.ELU(alpha=1.0)."""

    kind, params = "elu", ("alpha",)

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        self._set(inplace, alpha)


class CELU(_ParametrisedActivation):
    """torch.nn.CELU(alpha=1.0) (alpha != 0)."""

    kind, params = "celu", ("alpha",)

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        self._set(inplace, alpha)


class Softplus(_ParametrisedActivation):
    """torch.nn.Softplus(beta=1.0, threshold=20.0)."""

    kind, params = "softplus", ("beta", "threshold")

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        self._set(False, beta, threshold)


class Hardtanh(_ParametrisedActivation):
    """torch.nn.Hardtanh(min_val=-1.0, max_val=1.0, inplace=False, min_value=None,
    max_value=None): max_val must be greater than min_val; min_value / max_value are torch's
    deprecated spellings."""

    kind, params = "clamp", ("min_val", "max_val")

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False,
                 min_value: float | None = None, max_value: float | None = None) -> None:
        # torch's deprecated spellings, taken with its warning
        for old, value in (("min_value", min_value), ("max_value", max_value)):
            if value is not None:
                warnings.warn(f"keyword argument `{old}` is deprecated and renamed to "
                              f"`{old.replace('value', 'val')}`", FutureWarning, stacklevel=2)
        min_val = min_val if min_value is None else min_value
        max_val = max_val if max_value is None else max_value
        if max_val <= min_val:  # (torch's module refuses it, with an AssertionError)
            raise ValueError(f"max_val ({max_val}) must be greater than min_val ({min_val})")
        self._set(inplace, min_val, max_val)
