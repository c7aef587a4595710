"""Fused activations: the one description of every activation clconv computes in a kernel.

An activation is given as torch.nn.functional names it: None, a name ('relu', 'relu6', 'silu',
'gelu', 'sigmoid', 'tanh', 'hardswish', 'hardsigmoid', 'leaky_relu', 'elu') or a tuple for those
with parameters: ('leaky_relu', negative_slope), ('elu', alpha), ('gelu', 'tanh') (torch's
approximate='tanh'; ('gelu', 'none') is the erf form), ('clamp', min, max) (either may be None).
`normalize_activation` validates and returns the canonical `Activation` (hashable, used in plan
keys); `activation_defines` gives the `-D ACT=<code>` (+ ACT_A, ACT_B parameters) of common.cl's
`activate()`, the single OpenCL function every kernel's store applies.

Parameters are passed as exact hex-float literals and rounded to the kernel's type in the kernel,
as torch rounds a Python scalar to the tensor's dtype.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Union

__all__ = ["ACTIVATION_NAMES", "Activation", "ActivationArg", "activation_defines",
           "normalize_activation"]

#: Activation name -> common.cl's ACT code (0: none).
_CODES = {"relu": 1, "relu6": 2, "silu": 3, "gelu": 4, "gelu_tanh": 5, "sigmoid": 6, "tanh": 7,
          "hardswish": 8, "hardsigmoid": 9, "leaky_relu": 10, "elu": 11, "clamp": 12,
          "sqrt": 13}  # sqrt: clconv.sqrt's kernel (Activation("sqrt")), not an activation= name
#: The names accepted as a plain string (parameters at torch's defaults).
ACTIVATION_NAMES = ("relu", "relu6", "silu", "gelu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
                    "leaky_relu", "elu")
_DEFAULTS = {"leaky_relu": (0.01,), "elu": (1.0,)}

ActivationArg = Union[None, str, tuple]


@dataclass(frozen=True)
class Activation:
    """A validated activation: `kind` (a key of the ACT codes: 'gelu_tanh' for ('gelu', 'tanh'))
    and its float parameters (`a`, `b`; clamp's missing bound is -inf / +inf)."""

    kind: str
    a: float = 0.0
    b: float = 0.0

    @property
    def code(self) -> int:
        return _CODES[self.kind]

    def __str__(self) -> str:
        if self.kind in ("leaky_relu", "elu"):
            return f"{self.kind}({self.a:g})"
        if self.kind == "clamp":
            return f"clamp({self.a:g}, {self.b:g})"
        return self.kind


_HELP = ("activation must be None, one of " + ", ".join(repr(n) for n in ACTIVATION_NAMES) +
         ", or a tuple ('leaky_relu', negative_slope), ('elu', alpha), ('gelu', 'tanh'|'none'), "
         "('clamp', min, max)")


def _number(value: Any, what: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{what} must be a real number, got {value!r}")
    return float(value)


def normalize_activation(activation: ActivationArg) -> Activation | None:
    """The canonical Activation of a user's `activation=` argument (None for None); ValueError
    naming the argument for anything else."""
    if activation is None or isinstance(activation, Activation):
        return activation
    if isinstance(activation, str):
        if activation not in ACTIVATION_NAMES:
            raise ValueError(f"{_HELP}; got {activation!r}")
        return Activation(activation, *_DEFAULTS.get(activation, ()))
    if not isinstance(activation, (tuple, list)) or not activation or \
            not isinstance(activation[0], str):
        raise ValueError(f"{_HELP}; got {activation!r}")
    name, *params = activation
    if name in ("leaky_relu", "elu"):
        if len(params) != 1:
            raise ValueError(f"activation ({name!r}, ...) takes one parameter "
                             f"({'negative_slope' if name == 'leaky_relu' else 'alpha'}), got "
                             f"{activation!r}")
        value = _number(params[0], f"the {name} parameter")
        if math.isnan(value):
            raise ValueError(f"the {name} parameter must not be NaN, got {activation!r}")
        return Activation(name, value)
    if name == "gelu":
        if len(params) != 1 or params[0] not in ("tanh", "none"):
            raise ValueError(f"activation ('gelu', approximate) takes 'tanh' or 'none', got "
                             f"{activation!r}")
        return Activation("gelu_tanh" if params[0] == "tanh" else "gelu")
    if name == "clamp":
        if len(params) != 2 or (params[0] is None and params[1] is None):
            raise ValueError(f"activation ('clamp', min, max) takes two bounds (one may be None), "
                             f"got {activation!r}")
        lo = -math.inf if params[0] is None else _number(params[0], "clamp's min")
        hi = math.inf if params[1] is None else _number(params[1], "clamp's max")
        if math.isnan(lo) or math.isnan(hi):
            raise ValueError(f"clamp's bounds must not be NaN, got {activation!r}")
        return Activation("clamp", lo, hi)
    if name in ACTIVATION_NAMES and not params:
        return Activation(name, *_DEFAULTS.get(name, ()))
    raise ValueError(f"{_HELP}; got {activation!r}")


def _literal(value: float) -> str:
    """An exact OpenCL C literal of a double (hex float; INFINITY for the infinities)."""
    if math.isinf(value):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    return f"({value.hex()})"


def activation_defines(activation: ActivationArg) -> dict[str, object]:
    """The -D switches of common.cl's `activate`: {} for None, else ACT (+ ACT_A, ACT_B)."""
    act = normalize_activation(activation)
    if act is None:
        return {}
    defines: dict[str, object] = {"ACT": act.code}
    if act.kind in ("leaky_relu", "elu", "clamp"):
        defines["ACT_A"] = _literal(act.a)
    if act.kind == "clamp":
        defines["ACT_B"] = _literal(act.b)
    return defines
