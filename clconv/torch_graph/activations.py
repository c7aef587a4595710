"""Activations: torch's modules, functions and Tensor methods -> clconv's activation specs
(clconv.ops.activation), and a standalone activation run by clconv's elementwise ops."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyopencl.array as cla
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..ops.activation import MATH_FUNCTIONS, Activation, normalize_activation
from .base import Unlowerable, clconv_op, torch_type


#: torch activation module type -> its clconv activation spec (from the module's parameters).
ACTIVATION_MODULES: dict[type, Callable[[Any], Any]] = {
    nn.ReLU: lambda m: "relu", nn.ReLU6: lambda m: "relu6", nn.SiLU: lambda m: "silu",
    nn.Sigmoid: lambda m: "sigmoid", nn.Tanh: lambda m: "tanh",
    nn.Hardswish: lambda m: "hardswish", nn.Hardsigmoid: lambda m: "hardsigmoid",
    nn.SELU: lambda m: "selu", nn.Mish: lambda m: "mish",
    nn.Hardtanh: lambda m: ("clamp", float(m.min_val), float(m.max_val)),
    nn.GELU: lambda m: ("gelu", m.approximate),
    nn.LeakyReLU: lambda m: ("leaky_relu", float(m.negative_slope)),
    nn.ELU: lambda m: ("elu", float(m.alpha)), nn.CELU: lambda m: ("celu", float(m.alpha)),
    nn.Softplus: lambda m: ("softplus", float(m.beta), float(m.threshold)),
    nn.LogSigmoid: lambda m: "logsigmoid", nn.Softsign: lambda m: "softsign",
    nn.Tanhshrink: lambda m: "tanhshrink",
    nn.Hardshrink: lambda m: ("hardshrink", float(m.lambd)),
    nn.Softshrink: lambda m: ("softshrink", float(m.lambd)),
    nn.Threshold: lambda m: Activation("threshold", float(m.threshold), float(m.value)),
}


def activation_module(m: nn.Module) -> Any:
    """The clconv activation spec of torch activation module `m` ('relu', ('gelu', 'tanh'),
    ('leaky_relu', 0.1), ...), or None when `m` is no activation clconv has."""
    spec = ACTIVATION_MODULES.get(torch_type(m))
    return None if spec is None else spec(m)


def _plain(name: str) -> Callable[..., Any]:
    def spec(input: Any, inplace: bool = False) -> Any:
        return name
    return spec


def _gelu(input: Any, approximate: str = "none") -> Any:
    return ("gelu", approximate)


def _leaky(input: Any, negative_slope: float = 0.01, inplace: bool = False) -> Any:
    return ("leaky_relu", negative_slope)


def _elu(input: Any, alpha: float = 1.0, inplace: bool = False) -> Any:
    return ("elu", alpha)


def _celu(input: Any, alpha: float = 1.0, inplace: bool = False) -> Any:
    return ("celu", alpha)


def _softplus(input: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    return ("softplus", beta, threshold)


def _hardtanh(input: Any, min_val: float = -1.0, max_val: float = 1.0,
              inplace: bool = False) -> Any:
    return ("clamp", min_val, max_val)


def _clamp(input: Any, min: Any = None, max: Any = None) -> Any:
    return ("clamp", min, max)


def _clamp_min(input: Any, min: Any) -> Any:
    return ("clamp", min, None)


def _clamp_max(input: Any, max: Any) -> Any:
    return ("clamp", None, max)


def _unary(name: str) -> Callable[..., Any]:
    def spec(input: Any) -> Any:
        return name
    return spec


def _math(name: str) -> Callable[..., Any]:
    """A math function clconv runs as an activation (no activation= name: the Activation)."""
    def spec(input: Any) -> Any:
        return Activation(name)
    return spec


def _threshold(input: Any, threshold: float, value: float, inplace: bool = False) -> Any:
    return Activation("threshold", float(threshold), float(value))


def _shrink(name: str) -> Callable[..., Any]:
    def spec(input: Any, lambd: float = 0.5) -> Any:
        return (name, lambd)
    return spec


#: call_function targets that are activations -> a function of the node's arguments giving the spec.
_ACT_FUNCTIONS: dict[Any, Callable[..., Any]] = {
    F.relu: _plain("relu"), torch.relu: _unary("relu"), torch.relu_: _unary("relu"),
    F.relu6: _plain("relu6"), F.silu: _plain("silu"), F.gelu: _gelu,
    torch.sigmoid: _unary("sigmoid"), F.sigmoid: _unary("sigmoid"), torch.tanh: _unary("tanh"),
    F.tanh: _unary("tanh"), F.hardswish: _plain("hardswish"),
    F.hardsigmoid: _plain("hardsigmoid"), F.leaky_relu: _leaky, F.elu: _elu,
    F.hardtanh: _hardtanh, torch.clamp: _clamp, torch.clip: _clamp,
    F.celu: _celu, torch.celu: _celu, F.selu: _plain("selu"), torch.selu: _unary("selu"),
    F.mish: _plain("mish"), F.softplus: _softplus,
    torch.clamp_min: _clamp_min, torch.clamp_max: _clamp_max,
    F.logsigmoid: _unary("logsigmoid"), F.softsign: _unary("softsign"),
    F.tanhshrink: _unary("tanhshrink"), F.hardshrink: _shrink("hardshrink"),
    torch.hardshrink: _shrink("hardshrink"), F.softshrink: _shrink("softshrink"),
    torch.abs: _math("abs"), torch.exp: _math("exp"), torch.log: _math("log"),
    torch.rsqrt: _math("rsqrt"), torch.erf: _math("erf"), torch.special.erf: _math("erf"),
    F.threshold: _threshold, torch.threshold: _threshold,
    # the in-place functions (inplace.py makes their writes explicit)
    F.relu_: _unary("relu"), F.leaky_relu_: _leaky, F.elu_: _elu, F.hardtanh_: _hardtanh,
    F.celu_: _celu, F.selu_: _unary("selu"), F.threshold_: _threshold,
    torch.sigmoid_: _unary("sigmoid"), torch.tanh_: _unary("tanh"), torch.selu_: _unary("selu"),
    torch.celu_: _celu, torch.clamp_: _clamp, torch.clamp_min_: _clamp_min,
    torch.clamp_max_: _clamp_max, torch.abs_: _math("abs"), torch.exp_: _math("exp"),
}
#: call_method names that are activations.
_ACT_METHODS: dict[Any, Callable[..., Any]] = {
    "relu": _unary("relu"), "relu_": _unary("relu"), "sigmoid": _unary("sigmoid"),
    "sigmoid_": _unary("sigmoid"), "tanh": _unary("tanh"), "tanh_": _unary("tanh"),
    "clamp": _clamp, "clamp_": _clamp, "clip": _clamp, "clamp_min": _clamp_min,
    "clamp_min_": _clamp_min, "clamp_max": _clamp_max, "clamp_max_": _clamp_max,
    "abs": _math("abs"), "abs_": _math("abs"), "exp": _math("exp"), "exp_": _math("exp"),
    "log": _math("log"), "log_": _math("log"), "rsqrt": _math("rsqrt"),
    "rsqrt_": _math("rsqrt"), "hardshrink": _shrink("hardshrink"), "erf": _math("erf"),
    "erf_": _math("erf"),
}
_ACT_RULES = {"call_function": _ACT_FUNCTIONS, "call_method": _ACT_METHODS}


def activation_of(node: fx.Node,
                  modules: dict[str, nn.Module]) -> tuple[Activation, fx.Node] | None:
    """(the canonical activation, its input node) when `node` is an activation of one tensor."""
    args, kwargs = node.args, node.kwargs
    if node.op == "call_module":
        spec = activation_module(modules[node.target])
        if spec is None or len(args) != 1 or kwargs:
            return None
    else:
        rule = _ACT_RULES.get(node.op, {}).get(node.target)
        if rule is None:
            return None
        try:
            spec = rule(*args, **kwargs)
        except TypeError:
            return None
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, fx.Node) or any(isinstance(v, fx.Node) for v in
                                         (*args[1:], *kwargs.values())):
        return None
    if isinstance(spec, tuple) and any(isinstance(v, fx.Node) for v in spec):
        return None
    try:
        return normalize_activation(spec), x
    except ValueError:
        return None


def apply_activation(x: cla.Array, act: Activation) -> cla.Array:
    """A standalone activation by clconv's elementwise ops (H2's clconv.relu, ...)."""
    kind = act.kind
    if kind in ("relu", "relu6", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "selu",
                "mish", "logsigmoid", "softsign", "tanhshrink",
                *(k for k in MATH_FUNCTIONS if k != "threshold")):
        return clconv_op(kind)(x)
    if kind in ("hardshrink", "softshrink"):
        return clconv_op(kind)(x, act.a)
    if kind == "threshold":
        return clconv_op("threshold")(x, act.a, act.b)
    if kind == "gelu":
        return clconv_op("gelu")(x, approximate="none")
    if kind == "gelu_tanh":
        return clconv_op("gelu")(x, approximate="tanh")
    if kind == "leaky_relu":
        return clconv_op("leaky_relu")(x, act.a)
    if kind in ("elu", "celu"):
        return clconv_op(kind)(x, act.a)
    if kind == "softplus":
        return clconv_op("softplus")(x, act.a, act.b)
    if kind == "clamp":
        lo = None if act.a == -np.inf else act.a
        hi = None if act.b == np.inf else act.b
        return clconv_op("clamp")(x, lo, hi)
    raise Unlowerable(f"no clconv op for activation {act}")


def activation_spec(act: Activation) -> Any:
    """The user-level spec of an Activation ('relu', ('leaky_relu', 0.1), ...)."""
    if act.kind == "gelu_tanh":
        return ("gelu", "tanh")
    if act.kind in MATH_FUNCTIONS:
        return act  # no activation= name: the Activation itself (normalize_activation keeps it)
    if act.kind in ("leaky_relu", "elu", "celu", "hardshrink", "softshrink"):
        return (act.kind, act.a)
    if act.kind == "softplus":
        return ("softplus", act.a, act.b)
    if act.kind == "clamp":
        return ("clamp", None if act.a == -np.inf else act.a, None if act.b == np.inf else act.b)
    return act.kind


def activation_op_name(act: Activation) -> str:
    """The clconv op that runs `act` alone."""
    return {"gelu_tanh": "gelu"}.get(act.kind, act.kind)
