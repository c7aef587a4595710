"""Tracing: the model as an fx graph (torch.fx.symbolic_trace's call_module nodes, clconv.torch's
modules kept as leaves), its in-place writes made explicit (inplace.py), with the example input's
shapes and dtypes on its nodes (fx's ShapeProp)."""

from __future__ import annotations

import contextlib
import importlib
import io
import operator
from collections import OrderedDict
from typing import Any, Callable, Iterator

import torch
from torch import fx, nn
from torch.nn.utils import prune
from torch.fx.passes.shape_prop import ShapeProp
from torch.overrides import TorchFunctionMode

from .base import leaves
from .inplace import redirect_inplace_writes, writes_input

#: Python's augmented assignments: `a += b` on a tensor writes a.
AUGMENTED = (operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
             operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor,
             operator.ilshift, operator.irshift, operator.imatmul)


class InplaceProxy(fx.Proxy):
    """fx's Proxy with `a += b` (and the other augmented assignments) recorded as the in-place
    write torch makes of it, a call of operator.iadd: fx's own Proxy has no __iadd__, so Python
    would trace `a = a + b`, a new tensor, and another name bound to a (`r = a; a += b;
    return r`) would not see the write."""


def _augmented(op: Callable[[Any, Any], Any]) -> Callable[[fx.Proxy, Any], fx.Proxy]:
    def method(self: fx.Proxy, other: Any) -> fx.Proxy:
        return self.tracer.create_proxy("call_function", op, (self, other), {})
    return method


for _op in AUGMENTED:
    setattr(InplaceProxy, f"__{_op.__name__}__", _augmented(_op))


#: Forward pre-hooks that compute a module's weight before each call (prune's weight_orig * mask,
#: the old weight_norm and spectral_norm): the lowering reads the weight they computed.
_WEIGHT_HOOKS = tuple(t for t in (
    getattr(prune, "BasePruningMethod", None),
    getattr(importlib.import_module("torch.nn.utils.weight_norm"), "WeightNorm", None),
    getattr(importlib.import_module("torch.nn.utils.spectral_norm"), "SpectralNorm", None))
    if t is not None)


def forward_hooked(m: nn.Module) -> bool:
    """Whether calling `m` runs forward hooks of a user's (its own, or torch's global ones),
    other than those computing its weight."""
    from torch.nn.modules import module as mod

    return bool(m._forward_hooks or mod._global_forward_hooks or mod._global_forward_pre_hooks) \
        or any(not isinstance(h, _WEIGHT_HOOKS) for h in m._forward_pre_hooks.values())


@contextlib.contextmanager
def backward_hooks_set_aside(model: nn.Module) -> Iterator[None]:
    """While fx traces `model`: its modules' backward hooks, and torch's global ones, set aside
    (put back after). fx calls a traced submodule through nn.Module.__call__, whose set-up of a
    `register_backward_hook` hook looks for a tensor in the output by indexing it, and a proxy's
    [0] is another proxy: the trace never ended (torch.fx.symbolic_trace's own too). A trace
    records no hook anyway; the model's calls meanwhile (other threads) run without them."""
    from torch.nn.modules import module as mod

    saved = [(m, m._backward_hooks, m._backward_pre_hooks) for m in model.modules()
             if m._backward_hooks or m._backward_pre_hooks]
    hooks, pre_hooks = mod._global_backward_hooks, mod._global_backward_pre_hooks
    try:
        for m, _, _ in saved:
            m._backward_hooks, m._backward_pre_hooks = OrderedDict(), OrderedDict()
        if hooks or pre_hooks:
            mod._global_backward_hooks, mod._global_backward_pre_hooks = OrderedDict(), \
                OrderedDict()
        yield
    finally:
        for m, h, pre in saved:
            m._backward_hooks, m._backward_pre_hooks = h, pre
        mod._global_backward_hooks, mod._global_backward_pre_hooks = hooks, pre_hooks


#: Random draws: called without a traced argument, fx runs them once, at the trace.
_RANDOM = frozenset(("rand", "randn", "randint", "randperm", "normal", "bernoulli",
                     "multinomial", "poisson", "native_dropout", "uniform_", "normal_",
                     "bernoulli_", "exponential_", "geometric_", "cauchy_", "log_normal_",
                     "random_"))


class _ConcreteValuesRefused(TorchFunctionMode):
    """While fx traces: a random draw on no traced value (`torch.rand(6)`, `torch.empty(6)
    .uniform_()`), and an in-place write of traced values into a tensor that is no traced value
    (`z = torch.zeros(6); z[0] = x.mean()`), raise a TypeError. fx runs a call of no traced
    argument once, at the trace, and keeps its result as a constant of the graph: the draw would
    be the same on every call, and the written tensor a constant that every call writes again
    (the compiled program uploaded it once). The module (or model) doing so is then left to
    torch, which runs it as written."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        traced = [v for v in leaves((args, tuple(kwargs.values()))) if isinstance(v, fx.Proxy)]
        if name in _RANDOM and not traced:
            raise TypeError(f"torch {name} of no traced value: a trace would keep one draw")
        if traced and args and isinstance(args[0], torch.Tensor) and \
                not isinstance(args[0], fx.Proxy) and (name == "__setitem__" or (
                    name.endswith("_") and not name.startswith("_"))):
            raise TypeError(f"{name} of traced values into a tensor made at the trace: the trace "
                            f"would keep that tensor as a constant")
        return func(*args, **kwargs)


class InplaceTracer(fx.Tracer):
    """torch.fx's tracer making InplaceProxy's, refusing what a trace would freeze
    (_ConcreteValuesRefused)."""

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return InplaceProxy(node, self)

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        with _ConcreteValuesRefused():
            return super().trace(root, concrete_args)


class Tracer(InplaceTracer):
    """torch.fx's tracer, with clconv.torch's modules (converted convolutions, folded chains) as
    leaves like torch.nn's: their forward runs clconv from Python, which fx cannot trace into.
    `leaves`: qualified names of submodules kept whole too (those whose forward fx cannot trace);
    `failed`: after a trace that raised, the innermost submodule being traced then ('' for the
    model's own forward)."""

    def __init__(self, leaves: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed: str | None = None
        self._path: list[str] = [""]

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # (a module with forward hooks stays whole: the lowering leaves it to torch, which calls
        # the hooks on each call; traced into, they would have run once, on the trace's proxies)
        return module_qualified_name in self.leaves or type(m).__module__ == "clconv.torch" or \
            forward_hooked(m) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        self._path.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:  # the innermost module sees the error first
                self.failed = self._path[-1]
            raise
        finally:
            self._path.pop()

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        try:
            return super().trace(root, concrete_args)
        except Exception:
            if self.failed is None:
                self.failed = ""
            raise


def trace(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """`model`'s fx trace, its nodes annotated with the shapes and dtypes of `example_inputs`.

    A submodule whose forward fx cannot trace (control flow on tensor values, Python calls on
    proxies, ...) is kept whole as one call_module node (the lowering leaves it to torch on the
    host: `untraced(gm)` says why), and the trace is made again, until it succeeds; if the
    model's own forward cannot be traced, a TypeError says so."""
    leaves: dict[str, str] = {}
    while True:
        tracer = Tracer(frozenset(leaves))
        try:
            with backward_hooks_set_aside(model):
                graph = tracer.trace(model)
            break
        except Exception as err:  # noqa: BLE001 - fx raises many kinds; all mean "not traceable"
            why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            if not tracer.failed or tracer.failed in leaves:
                raise TypeError(
                    f"clconv.torch.compile cannot trace {type(model).__name__}'s forward with "
                    f"torch.fx ({why}); use clconv.torch.convert(model) for it (every "
                    f"convolution on the device, the rest in torch), or move the part fx cannot "
                    f"trace into a submodule (compile then runs that submodule in torch)") from err
            leaves[tracer.failed] = why
    gm = fx.GraphModule(model, graph, type(model).__name__)
    gm.meta["clconv_untraced"] = leaves
    with torch.no_grad():
        if writes_input(gm):  # (copies: the caller's example stays as it was)
            example_inputs = tuple(t.clone() if isinstance(t, torch.Tensor) else t
                                   for t in example_inputs)
        _propagate(gm, example_inputs)
    redirect_inplace_writes(gm)  # (after: it tells `t += 1` of a tensor from that of a number)
    return gm


def _propagate(gm: fx.GraphModule, example_inputs: tuple[Any, ...]) -> None:
    """fx's ShapeProp on the example; where the model itself fails on it (a wrong channel
    count, dtype, a size below the kernel's), that error (its type and torch's message), not
    ShapeProp's "ShapeProp error for: node=..." (which also printed a traceback on stderr)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(*example_inputs)
    except RuntimeError as err:
        cause = err.__cause__
        if cause is None or not str(err).startswith("ShapeProp error"):
            raise
        try:
            plain = type(cause)(f"clconv.torch.compile: the model fails on the example input: "
                                f"{cause}")
        except Exception:  # noqa: BLE001 - an exception type that takes other arguments
            raise cause from None
        raise plain from cause


def untraced(gm: fx.GraphModule) -> dict[str, str]:
    """Qualified name -> why, for the submodules `trace` kept whole because fx cannot trace their
    forward."""
    return gm.meta.get("clconv_untraced", {})
