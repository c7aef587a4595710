"""What every stage of compile() shares: its reports (Fallback, FallbackWarning, Unlowerable),
the class a module is matched as, clconv's ops by name, and the fx node metadata and arguments the
lowering rules read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import fx, nn
from torch.nn.utils import parametrize

import clconv


class FallbackWarning(UserWarning):
    """compile() could not lower some nodes; they run in torch on the host (see cm.fallbacks)."""


@dataclass(frozen=True)
class Fallback:
    """A node that runs in torch on the host: its fx name, its op (module type or function) and
    why clconv does not run it."""

    node: str
    op: str
    why: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.why}"


class Unlowerable(Exception):
    """Raised by a lowering rule: the node stays on the host; the message says why."""


def torch_type(m: nn.Module) -> type:
    """The class the lowering matches: a module of clconv.torch.convert's folded chains is matched
    as the class it had before folding (its weights and arguments are that class's), and a
    parametrized module (torch.nn.utils.parametrize: weight_norm, spectral_norm, ...) as the class
    it was before (its `weight` computes the parametrized value)."""
    t = getattr(type(m), "_clconv_base", type(m))
    return unparametrized_type(t) if parametrize.is_parametrized(m) else t


def unparametrized_type(kind: type) -> type:
    """The class a parametrized module's class (torch.nn.utils.parametrize makes a subclass named
    Parametrized<Class> of it) was made from: the first in its MRO not so named."""
    return next((b for b in kind.__mro__ if not b.__name__.startswith("Parametrized")), kind)


def clconv_op(name: str) -> Callable[..., Any]:
    """clconv's public op `name`, or Unlowerable when this clconv has none (ops land over time)."""
    fn = getattr(clconv, name, None)
    if fn is None:
        raise Unlowerable(f"clconv.{name} does not exist in this clconv")
    return fn


def meta(node: Any) -> Any:
    """The tensor metadata (shape, dtype) fx's ShapeProp left on `node`, or None."""
    return node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None


def shape(node: Any) -> tuple[int, ...] | None:
    m = meta(node)
    return tuple(m.shape) if m is not None and hasattr(m, "shape") else None


def is_tensor(node: Any) -> bool:
    return isinstance(node, fx.Node) and shape(node) is not None


def bind(node: fx.Node, signature: Callable[..., Any]) -> Any:
    """`signature` (a lambda with the op's parameters) called on the node's arguments."""
    try:
        return signature(*node.args, **node.kwargs)
    except TypeError as err:
        raise Unlowerable(f"unexpected arguments ({err})") from None


def attr(gm: nn.Module, target: str) -> Any:
    """The attribute a get_attr node names (a dotted path below `gm`)."""
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def leaves(v: Any) -> list[Any]:
    """The items of nested lists/tuples (v itself when it is neither)."""
    if isinstance(v, (list, tuple)):
        return [leaf for e in v for leaf in leaves(e)]
    return [v]


# Calls whose value is not a function of their operands (random, uninitialised), or that write.
IMPURE = frozenset(("rand", "randn", "rand_like", "randn_like", "randint", "randint_like",
                    "randperm", "bernoulli", "multinomial", "normal", "poisson", "dropout",
                    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
                    "rrelu", "empty", "empty_like", "uniform", "exponential", "geometric",
                    "cauchy", "log_normal", "copy_", "item", "tolist", "numpy", "native_dropout",
                    "random_"))


def pure_call(node: fx.Node) -> bool:
    """Whether an fx call's value depends on its operands alone and it writes nothing."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return bool(name) and name not in IMPURE and not name.endswith("_") and \
        node.kwargs.get("out") is None and "inplace" not in node.kwargs and \
        not (node.op == "call_function" and name.startswith("i") and
             getattr(node.target, "__module__", "") in ("_operator", "operator"))
