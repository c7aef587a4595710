"""Tracing: the model as an fx graph (torch.fx.symbolic_trace's call_module nodes, clconv.torch's
modules kept as leaves), its in-place writes made explicit (inplace.py), with the example input's
shapes and dtypes on its nodes (fx's ShapeProp)."""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import io
import operator
import threading
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


class ModuleStateWritten(TypeError):
    """The traced forward wrote its modules' Python state: `module` (a qualified name, '' for
    the root) is the one whose forward did, or whose container changed."""

    def __init__(self, message: str, module: str | None = None) -> None:
        super().__init__(message)
        self.module = module


#: Threads tracing now (a count each), whose module attribute writes _module_writes_refused
#: refuses; nn.Module.__setattr__ is swapped while there is one.
_WRITING_TRACES: dict[int, int] = {}
_WRITING_LOCK = threading.Lock()
_MODULE_SETATTR = nn.Module.__setattr__
#: nn.Module's own attributes (parameter, buffer, module and hook tables), no user state.
_MODULE_OWN = frozenset(vars(nn.Module()))


#: `fx` > 0 while fx's tracer makes a node's argument in this thread: it sets the graph's
#: constants (tensors of no traced value) on the root itself.
_IN_FX = threading.local()


def _setattr_refused_while_tracing(self: nn.Module, name: str, value: Any) -> None:
    if threading.get_ident() in _WRITING_TRACES and not getattr(_IN_FX, "fx", 0):
        raise ModuleStateWritten(f"{type(self).__name__}.{name} set in the traced forward (a "
                                 f"trace would set it once, no call again)")
    _MODULE_SETATTR(self, name, value)


def _changed(now: Any, saved: Any) -> bool:
    if isinstance(now, dict):
        return now.keys() != saved.keys() or any(now[k] is not saved[k] for k in now)
    if isinstance(now, set):
        return {id(v) for v in now} != {id(v) for v in saved}
    return len(now) != len(saved) or any(a is not b for a, b in zip(now, saved))


def _put_back(now: Any, saved: Any) -> None:
    if isinstance(now, list):
        now[:] = saved
    else:
        now.clear()
        now.update(saved)


@contextlib.contextmanager
def _module_writes_refused(root: Any) -> Iterator[None]:
    """While fx traces `root`, in the tracing thread: a module attribute's write (`self.feat =
    x`, `self.calls += 1`) raises ModuleStateWritten, and a list, dict or set a module holds
    that the trace changed (`self.features.append(x)`) is put back as it was, and raises one
    after the trace. fx runs the forward once, at the trace, and records no such write: the
    model would keep a proxy, or the state of that one run, and no call would write it again.
    The module whose forward writes is then left whole, to torch (which runs it as written)."""
    ident = threading.get_ident()
    names = {id(m): n for n, m in root.named_modules()} if isinstance(root, nn.Module) else {}
    held = [(names[id(m)], name, v, copy.copy(v)) for m in (
        root.modules() if isinstance(root, nn.Module) else ()) for name, v in vars(m).items()
        if name not in _MODULE_OWN and type(v) in (list, dict, set)]
    with _WRITING_LOCK:
        if not _WRITING_TRACES:
            nn.Module.__setattr__ = _setattr_refused_while_tracing  # type: ignore[method-assign]
        _WRITING_TRACES[ident] = _WRITING_TRACES.get(ident, 0) + 1
    changed: list[tuple[str, str]] = []
    try:
        yield
    finally:
        with _WRITING_LOCK:
            _WRITING_TRACES[ident] -= 1
            if not _WRITING_TRACES[ident]:
                del _WRITING_TRACES[ident]
            if not _WRITING_TRACES:
                nn.Module.__setattr__ = _MODULE_SETATTR  # type: ignore[method-assign]
        for module, name, now, saved in held:
            if _changed(now, saved):
                _put_back(now, saved)
                changed.append((module, name))
    if changed:
        module, name = changed[0]
        raise ModuleStateWritten(f"{module or 'the model'}'s {name} changed in the traced "
                                 f"forward", module)


class StateTracer(fx.Tracer):
    """torch.fx's tracer refusing writes of the modules' own state (_module_writes_refused).
    `leaves`: qualified names of submodules kept whole (traced as one call, run as written);
    `failed`: after a trace that raised, the submodule that failed: the innermost one being
    traced then, or the one whose state it wrote ('' for the model's own forward)."""

    def __init__(self, leaves: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed: str | None = None
        self._path: list[str] = [""]

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or \
            super().is_leaf_module(m, module_qualified_name)

    def create_arg(self, a: Any) -> Any:
        _IN_FX.fx = getattr(_IN_FX, "fx", 0) + 1
        try:
            return super().create_arg(a)
        finally:
            _IN_FX.fx -= 1

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
            with _module_writes_refused(root):
                return super().trace(root, concrete_args)
        except ModuleStateWritten as err:
            if err.module is not None:  # (a container: its module, whatever failed first)
                self.failed = err.module
            elif self.failed is None:
                self.failed = ""
            raise
        except Exception:
            if self.failed is None:
                self.failed = ""
            raise


def trace_writers_whole(make: Callable[[frozenset[str]], StateTracer],
                        root: nn.Module) -> tuple[fx.Graph, frozenset[str]]:
    """`make(leaves).trace(root)`'s graph, with every submodule whose forward writes its state
    kept whole (traced again with it as a leaf: it runs as written), and those submodules'
    qualified names; ModuleStateWritten where the root's own forward writes, and the trace's
    other errors as they are."""
    whole: frozenset[str] = frozenset()
    while True:
        tracer = make(whole)
        try:
            return tracer.trace(root), whole
        except ModuleStateWritten:
            if not tracer.failed or tracer.failed in whole:
                raise
            whole |= {tracer.failed}


class InplaceTracer(StateTracer):
    """StateTracer making InplaceProxy's, refusing what a trace would freeze as well
    (_ConcreteValuesRefused)."""

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return InplaceProxy(node, self)

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        with _ConcreteValuesRefused():
            return super().trace(root, concrete_args)


class Tracer(InplaceTracer):
    """torch.fx's tracer, with clconv.torch's modules (converted convolutions, folded chains) as
    leaves like torch.nn's: their forward runs clconv from Python, which fx cannot trace into;
    `leaves` (InplaceTracer's) are those whose forward fx cannot trace."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # (a module with forward hooks stays whole: the lowering leaves it to torch, which calls
        # the hooks on each call; traced into, they would have run once, on the trace's proxies)
        return type(m).__module__ == "clconv.torch" or forward_hooked(m) or \
            super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """`model`'s fx trace, its nodes annotated with the shapes and dtypes of `example_inputs`.

    A submodule whose forward fx cannot trace (control flow on tensor values, Python calls on
    proxies, ...) is kept whole as one call_module node (the lowering leaves it to torch on the
    host: `untraced(gm)` says why), and the trace is made again, until it succeeds; if the
    model's own forward cannot be traced, a TypeError says so."""
    leaves: dict[str, str] = {}
    hint = _defaults_hint(model, len(example_inputs))
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
                    f"trace into a submodule (compile then runs that submodule in torch)"
                    f"{hint}") from err
            leaves[tracer.failed] = why
    gm = fx.GraphModule(model, graph, type(model).__name__)
    gm.meta["clconv_untraced"] = leaves
    with torch.no_grad():
        if writes_input(gm):  # (copies: the caller's example stays as it was)
            example_inputs = tuple(t.clone() if isinstance(t, torch.Tensor) else t
                                   for t in example_inputs)
        _propagate(gm, example_inputs, hint)
    redirect_inplace_writes(gm)  # (after: it tells `t += 1` of a tensor from that of a number)
    return gm


def _defaults_hint(model: nn.Module, given: int) -> str:
    """A sentence for trace's errors naming the forward's arguments the example leaves to their
    defaults: fx traces those as inputs too (`if scale is None` then takes a traced value's
    path); '' where there are none."""
    try:
        params = list(inspect.signature(type(model).forward).parameters.values())[1 + given:]
    except (TypeError, ValueError):
        return ""
    left = [f"{p.name}={p.default!r}" for p in params if p.default is not p.empty]
    if not left:
        return ""
    return (f". The example leaves {', '.join(left)} to the default, and fx traces such an "
            f"argument as an input as well, so a branch on it (`if scale is None:`) takes the "
            f"path of a traced value: give it in the example, or compile a module that calls "
            f"the model with it fixed")


def _propagate(gm: fx.GraphModule, example_inputs: tuple[Any, ...], hint: str = "") -> None:
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
                                f"{cause}{hint}")
        except Exception:  # noqa: BLE001 - an exception type that takes other arguments
            raise cause from None
        raise plain from cause


def untraced(gm: fx.GraphModule) -> dict[str, str]:
    """Qualified name -> why, for the submodules `trace` kept whole because fx cannot trace their
    forward."""
    return gm.meta.get("clconv_untraced", {})
