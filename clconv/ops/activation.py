"""Fused activations: the one description of every activation clconv computes in a kernel.

An activation is given as torch.nn.functional names it: None, a name ('relu', 'relu6', 'silu',
'gelu', 'sigmoid', 'tanh', 'hardswish', 'hardsigmoid', 'leaky_relu', 'elu', 'softplus', 'mish',
'selu', 'celu') or a tuple for those with parameters: ('leaky_relu', negative_slope),
('elu', alpha), ('celu', alpha), ('softplus', beta, threshold), ('gelu', 'tanh') (torch's
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

from .scalars import plain_number

__all__ = ["ACTIVATION_NAMES", "MATH_FUNCTIONS", "Activation", "ActivationArg",
           "activation_defines", "float_literal", "normalize_activation"]

#: Activation name -> common.cl's ACT code (0: none).
_CODES = {"relu": 1, "relu6": 2, "silu": 3, "gelu": 4, "gelu_tanh": 5, "sigmoid": 6, "tanh": 7,
          "hardswish": 8, "hardsigmoid": 9, "leaky_relu": 10, "elu": 11, "clamp": 12,
          "sqrt": 13,  # sqrt: clconv.sqrt's kernel (Activation("sqrt")), not an activation= name
          "softplus": 14, "mish": 15, "selu": 16, "celu": 17, "logsigmoid": 18,
          "softsign": 19, "tanhshrink": 20, "hardshrink": 21, "softshrink": 22,
          # math functions: clconv.abs, exp, log, rsqrt (Activation(kind)), not activation= names
          "abs": 23, "exp": 24, "log": 25, "rsqrt": 26, "erf": 27,
          "threshold": 28}  # threshold: (threshold ACT_A, value ACT_B), clconv.threshold's
#: The math functions among the codes (with sqrt): run alone by clconv's elementwise ops, and
#: fused into a convolution's store by compile, but no activation= name.
MATH_FUNCTIONS = ("sqrt", "abs", "exp", "log", "rsqrt", "erf", "threshold")
#: The names accepted as a plain string (parameters at torch's defaults).
ACTIVATION_NAMES = ("relu", "relu6", "silu", "gelu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
                    "leaky_relu", "elu", "softplus", "mish", "selu", "celu", "logsigmoid",
                    "softsign", "tanhshrink", "hardshrink", "softshrink")
# torch's SELU constants (aten/src/ATen/native/Activation.cpp): selu is elu with alpha * scale
# below zero and scale above it.
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
# Activation parameters (a, b) at torch's defaults; celu's b is its input scale 1 / alpha, rounded
# once in double as torch does.
_DEFAULTS = {"leaky_relu": (0.01,), "elu": (1.0,), "softplus": (1.0, 20.0),
             "hardshrink": (0.5,), "softshrink": (0.5,),
             "selu": (_SELU_ALPHA, _SELU_SCALE), "celu": (1.0, 1.0)}
#: The kinds whose kernel reads ACT_A (and ACT_B).
_WITH_A = ("leaky_relu", "elu", "clamp", "softplus", "selu", "celu", "hardshrink", "softshrink",
           "threshold")
_WITH_B = ("clamp", "softplus", "selu", "celu", "threshold")

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
        if self.kind in ("leaky_relu", "elu", "celu", "hardshrink", "softshrink"):
            return f"{self.kind}({self.a:g})"
        if self.kind == "softplus":
            return f"softplus({self.a:g}, {self.b:g})"
        if self.kind in ("clamp", "threshold"):
            return f"{self.kind}({self.a:g}, {self.b:g})"
        return self.kind


_HELP = ("activation must be None, one of " + ", ".join(repr(n) for n in ACTIVATION_NAMES) +
         ", or a tuple ('leaky_relu', negative_slope), ('elu', alpha), ('celu', alpha), "
         "('hardshrink', lambd), ('softshrink', lambd >= 0), "
         "('softplus', beta, threshold), ('gelu', 'tanh'|'none'), ('clamp', min, max)")


def _number(value: Any, what: str) -> float:
    """`value` as a float (a bool its 0 or 1, as torch takes it); TypeError (torch's, for a
    parameter of another type) otherwise."""
    value = plain_number(value)
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {value!r}")
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
    if name in ("leaky_relu", "elu", "celu"):
        if len(params) != 1:
            raise ValueError(f"activation ({name!r}, ...) takes one parameter "
                             f"({'negative_slope' if name == 'leaky_relu' else 'alpha'}), got "
                             f"{activation!r}")
        value = _number(params[0], f"{name}'s "
                        f"{'negative_slope' if name == 'leaky_relu' else 'alpha'}")
        # (a NaN parameter is torch's too: NaN below zero)
        if name == "celu":
            if value == 0:
                raise ValueError(f"celu's alpha must not be 0 (torch: ZeroDivisionError), got "
                                 f"{activation!r}")
            return Activation(name, value, 1.0 / value)
        return Activation(name, value)
    if name in ("hardshrink", "softshrink"):
        if len(params) != 1:
            raise ValueError(f"activation ({name!r}, lambd) takes one parameter, got "
                             f"{activation!r}")
        value = _number(params[0], f"{name}'s lambd")
        if name == "softshrink" and not value >= 0:  # (hardshrink takes NaN: x itself, as torch)
            raise ValueError(f"softshrink's lambd must be a number >= 0 (torch's rule), got "
                             f"{activation!r}")
        return Activation(name, value)
    if name == "softplus":
        if len(params) != 2:
            raise ValueError(f"activation ('softplus', beta, threshold) takes two parameters, got "
                             f"{activation!r}")
        beta = _number(params[0], "softplus's beta")
        threshold = _number(params[1], "softplus's threshold")
        return Activation(name, beta, threshold)  # (NaN ones as torch's: beta NaN, NaN out)
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
            return Activation("clamp", math.nan, math.nan)  # torch's: NaN everywhere
        # torch: min(max(v, lo), hi), which is hi everywhere when lo > hi (the kernels' clip
        # tests v < lo first)
        return Activation("clamp", min(lo, hi), hi)
    if name in ACTIVATION_NAMES and not params:
        return Activation(name, *_DEFAULTS.get(name, ()))
    raise ValueError(f"{_HELP}; got {activation!r}")


def float_literal(value: float) -> str:
    """An exact OpenCL C literal of a double (hex float; INFINITY and NAN for the non-finite)."""
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INFINITY" if value > 0 else "(-INFINITY)"
    return f"({value.hex()})"


def activation_defines(activation: ActivationArg) -> dict[str, object]:
    """The -D switches of common.cl's `activate`: {} for None, else ACT (+ ACT_A, ACT_B)."""
    act = normalize_activation(activation)
    if act is None:
        return {}
    defines: dict[str, object] = {"ACT": act.code}
    if act.kind in _WITH_A:
        defines["ACT_A"] = float_literal(act.a)
        if act.kind == "clamp" and math.isnan(act.a):
            defines["ACT_ALL_NAN"] = None  # (NaN bounds: common.cl writes NaN everywhere)
        if act.kind == "softplus" and math.isnan(act.a):
            defines["ACT_A_NAN"] = None
        if act.kind in ("leaky_relu", "elu", "softplus") and act.a == 0:
            # (common.cl writes the product with a zero out: Mesa folds it to 0, NaN or not)
            defines["ACT_A_ZERO"] = int(math.copysign(1, act.a))
    if act.kind in _WITH_B:
        defines["ACT_B"] = float_literal(act.b)
    return defines
