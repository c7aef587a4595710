"""clconv.torch.convert()'s folding of Conv -> BatchNorm (-> activation) chains: the chains found
by tracing the forward with torch.fx (consecutive modules of nn.Sequentials where it cannot be
traced), and the classes their modules take: in eval mode under no_grad the convolution computes
the chain as one clconv convolution (BatchNorm folded into its weight and bias, the activation in
its kernel's store) and the BatchNorm and activation pass their input through; otherwise every
module runs its own forward."""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyopencl.array as cla
import torch
from torch import nn
from torch.nn.modules import module as _module_module  # (its global hook tables)

from .ops.conv import cached_conv_plan
from .ops.fold import fold_batchnorm, fold_overflowed, foldable
from .ops.precision import check_precision, plan_dtype
from .runtime.device import Device, current_device
from .torch_graph import activation_module
from .torch_graph.activations import ACTIVATION_MODULES
from .torch_graph.tracing import StateTracer, backward_hooks_set_aside, trace_writers_whole
from .torch_ops import (
    OPS,
    autocast_dtype,
    NotScriptable,
    batched,
    conv_result_shape,
    fixed_operand,
    host,
    host_result,
    layout_source,
    module_padding,
    operand,
    refuse_pairs,
    sample_of,
    sample_view,
    to_tensor,
    upload_constant,
    uses_zero_copy,
    version_of,
)
from .torch_train import defer_result, deferred_array, flush_deferred, joined_results


class NotFoldable(Exception):
    """Fold.weights: the BatchNorm's scale is not finite (clconv.ops.fold.foldable); the chain
    then runs one module at a time."""


class Fold:
    """One folded chain: the conv, its BatchNorm and (or None) its activation, as they sit in their
    nn.Sequential. Not an nn.Module (so nothing is registered twice and state_dict keys do not
    change); the three modules each hold this object as `_clconv_fold`. The fused forward
    (torch_fuse) keeps one for each (conv, BatchNorm or None) it runs."""

    def __init__(self, conv: nn.Module, bn: nn.Module | None, act: nn.Module | None,
                 spec: Any, places: tuple[tuple[nn.Module, str, nn.Module], ...] = ()) -> None:
        """places: (parent, name, module) of the BatchNorm and activation where the model holds
        them (`parent._modules[name]`): the chain folds only while they are still there."""
        self.conv, self.bn, self.act, self.spec = conv, bn, act, spec
        self.places = places
        self._key: tuple[Any, ...] | None = None
        self._samples: bytes = b""
        self._views: list[np.ndarray | torch.Tensor | None] = []
        self._folded: tuple[np.ndarray, np.ndarray] | None = None
        self._finite = True  # whether the BatchNorm's scale is finite (else it is not folded)
        self._on_device: dict[Device, tuple[cla.Array, cla.Array]] = {}
        # the forward's plans by their arguments (`plan`): a call skips the functional API
        self._plans: dict[tuple[Any, ...], Any] = {}
        # thread id -> a weak reference to that thread's last folded result (per thread: threads
        # running the model at once each pass their own result through the BatchNorm)
        self._produced: dict[int, Any] = {}

    def produced(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor` is the folded chain's latest result (the BatchNorm and activation
        after the conv then pass it through; any other input they compute themselves: a conv
        call that did not fold, with extra arguments, leaves its BatchNorm to run)."""
        ref = self._produced.get(threading.get_ident())
        return ref is not None and ref() is tensor

    def mark(self, result: torch.Tensor | None) -> None:
        """Records `result` as the chain's latest folded result in this thread (None: the conv
        ran unfolded)."""
        produced, me = self._produced, threading.get_ident()
        if result is None:
            produced.pop(me, None)
            return
        if len(produced) > 8:  # (results of threads gone: their references are dead)
            for thread in [t for t, ref in produced.items() if ref() is None]:
                produced.pop(thread, None)
        produced[me] = weakref.ref(result)

    def __getstate__(self) -> dict[str, Any]:
        # Device copies stay behind (a copy or pickle of the model uploads its own), and so do the
        # sample views (numpy views of the tensors: remade on the first call).
        return {**self.__dict__, "_on_device": {}, "_views": [], "_key": None,
                "_produced": {}, "_plans": {}}

    def __deepcopy__(self, memo: dict[int, Any]) -> Fold:
        """A copy made with the model (its modules' parents copied too: the chain's places in
        the copy), or, where a module of the chain is copied alone (torch's fuse_conv_bn_eval
        deep-copies the conv), a fold that never applies: the lone copy has no chain (it folded
        its own copy of the BatchNorm, which then ran again after it)."""
        new = Fold.__new__(Fold)
        memo[id(self)] = new
        state = self.__getstate__()
        if any(id(parent) not in memo for parent, _, _ in self.places or ()):
            state["places"] = None
        new.__dict__.update(copy.deepcopy(state, memo))
        return new

    def _sample_bytes(self) -> bytes:
        """The current values at the sample views, as bytes (bitwise: a NaN equals itself)."""
        return b"".join(b"" if v is None else v.tobytes() if isinstance(v, np.ndarray)
                        else sample_of(v) for v in self._views)

    def active(self) -> bool:
        """Whether the chain computes as one fused convolution now: conv and BatchNorm in eval
        mode, BatchNorm with running statistics, no autograd (torch.no_grad() or
        torch.inference_mode()) and no torch.autocast: with grad enabled the modules run one by
        one, so gradients reach the input and every parameter as in torch (under autocast too,
        each as torch's runs there)."""
        bn = self.bn
        return (not self.conv.training and not torch.is_grad_enabled()
                and autocast_dtype("cpu") is None and (bn is None or (
                    not bn.training and _tensor(bn, "running_mean") is not None
                    and _tensor(bn, "running_var") is not None))
                and not self.hooked() and self.in_place())

    def in_place(self) -> bool:
        """Whether the model still holds the chain's BatchNorm and activation where they were
        when it was folded: one replaced after convert() (`model[1] = nn.Identity()`) ends the
        chain, and its modules then run one by one."""
        return self.places is not None and \
            all(parent._modules.get(name) is m for parent, name, m in self.places)

    def hooked(self) -> bool:
        """Whether a module of the chain, or every module (torch's global hooks), has hooks now:
        registered after convert(), they must see each module's own input and output."""
        for m in (self.conv, self.bn, self.act):  # (a loop: asked on every chain's call)
            if m is not None and _hooked(m):
                return True
        return global_hooks()

    def weights(self, dev: Device) -> tuple[cla.Array, cla.Array]:
        """(weight, bias) with the BatchNorm folded in (clconv.fold_batchnorm, float64 on the
        host), on `dev`, marked constant (their packing is kept too); remade when a parameter or
        buffer changed: its storage or in-place version counter (an optimizer step,
        load_state_dict), a sample of its values (writes through `.data`), or the BatchNorm's
        eps. Without a BatchNorm: the conv's own weight and bias (fixed_operand's kept copies)."""
        conv, bn = self.conv, self.bn
        if bn is None:
            return fixed_operand(conv.weight, dev), fixed_operand(conv.bias, dev)
        tensors = (_tensor(conv, "weight"), _tensor(conv, "bias"), _tensor(bn, "running_mean"),
                   _tensor(bn, "running_var"), _tensor(bn, "weight"), _tensor(bn, "bias"))
        held = tuple(None if t is None else (t.data_ptr(), version_of(t), t.dtype, t.shape)
                     for t in tensors)
        key = (*held, float(bn.eps))
        # The samples' views are kept while the key holds (same storage, so the views stay
        # valid; they keep the tensors alive, so no other tensor takes that address): a call
        # then reads ~64 values of each as bytes (~1 us), not a new sample (~7 us a tensor).
        fresh = key != self._key or self._folded is None or None in (k[1] for k in held if k)
        if not fresh:
            fresh = self._sample_bytes() != self._samples
        if fresh:
            # (a non-contiguous tensor has no flat view: it is sampled anew each call)
            self._views = [None if t is None else sample_view(t) if t.is_contiguous() else t
                           for t in tensors]
            w, b, mean, var, gamma, beta = (host(t) for t in tensors)
            transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
            self._folded = fold_batchnorm(w, b, mean, var, gamma, beta, float(bn.eps),
                                          transposed=transposed,
                                          groups=conv.groups if transposed else 1)
            self._finite = foldable(var, gamma, float(bn.eps)) and not fold_overflowed(
                (w, b, mean, var, gamma, beta), self._folded)
            self._key, self._samples, self._on_device = key, self._sample_bytes(), {}
        if not self._finite:
            raise NotFoldable
        found = self._on_device.get(dev)
        if found is None:
            found = self._on_device[dev] = tuple(  # type: ignore[assignment]
                upload_constant(a, dev) for a in self._folded)
        return found



def _tensor(m: nn.Module, name: str) -> torch.Tensor | None:
    """`m.<name>` for a parameter or buffer, read from its table (nn.Module's __getattr__, which
    the attribute lookup falls back to, costs ~1 us a call); a parametrization's computed
    tensor through the attribute."""
    table = m._parameters
    if name in table:
        return table[name]
    table = m._buffers
    return table[name] if name in table else getattr(m, name)


def _forward_plan(fold: Fold, dev: Device, nd: int, conv: nn.Module, x: torch.Tensor,
                  operands: tuple[Any, ...], padding: Any, spec: Any, has_residual: bool,
                  dtype: np.dtype) -> Any:
    """The functional API's plan of this chain's convolution (`cached_conv_plan`), kept by the
    chain under its arguments, so that a call runs it without the API's argument handling and
    plan-cache key (~25 us a call of a network's ~0.1 ms layers); None where an argument is
    not hashable (the API's call then)."""
    w, b = operands[1], operands[2]
    if w.dtype != dtype or (b is not None and b.dtype != dtype):
        return None  # (the API's call names the mixed dtypes)
    key = (dev, tuple(x.shape), dtype, w.shape, None if b is None else b.shape, has_residual,
           spec, conv.stride, padding, conv.dilation, conv.groups, conv.padding_mode,
           conv.algorithm)
    try:
        plan = fold._plans.get(key)
    except TypeError:  # (an unhashable spec or padding)
        return None
    if plan is None:
        if len(fold._plans) >= 8:  # (a model called at many input sizes)
            fold._plans.clear()
        x_shape = tuple(x.shape)
        r_shape = conv_result_shape(x_shape, tuple(w.shape), conv.stride, padding,
                                    conv.dilation, conv.groups) if has_residual else None
        plan = fold._plans[key] = cached_conv_plan(
            dev, nd, x_shape, tuple(w.shape), None if b is None else tuple(b.shape), dtype,
            conv.stride, padding, conv.dilation, conv.groups, conv.padding_mode, conv.algorithm,
            spec, None, r_shape)
    return plan


def run_folded(conv: nn.Module, fold: Fold, spec: Any, input: torch.Tensor,
               residual: torch.Tensor | None = None, defer: bool = False) -> torch.Tensor:
    """act(bn(conv(input)) + residual) as one clconv convolution on the current device: `fold`'s
    weights, activation `spec` in the kernel's store, `residual` (the result's shape and dtype,
    or None; not with a transposed conv) added before it. Operands that deferred chains write
    are read through their device arrays; defer: only such chains (and pools) read the result,
    so it is not waited for here (clconv.torch_train's deferral) where it is written in place."""
    nd = len(conv.kernel_size)
    x, unbatched = batched(input, nd)
    dev = current_device()
    dtype = plan_dtype(x.dtype)
    check_precision(dev, dtype)  # (float16 where the device lacks it: named)
    transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    with dev:
        zero_copy = uses_zero_copy(dev)
        results = joined_results(dev, True)  # (another device's deferred ones waited for first)
        pending = deferred_array(x)
        operands = (operand(x, dev, zero_copy) if pending is None else pending,
                    *fold.weights(dev))
        # the result written into a new tensor's memory where the input crossed so too
        on_host = zero_copy and isinstance(operands[0], cla.Array)
        output_padding = conv._output_padding(
            input, None, conv.stride, conv.padding, conv.kernel_size, nd,
            conv.dilation) if transposed else None
        padding = module_padding(conv)  # conv.padding for the transposed ones (zeros only)
        refuse_pairs(padding, nd)  # (torch's error: the plan below would take them)
        plan = _forward_plan(fold, dev, nd, conv, x, operands, padding, spec,
                             residual is not None, dtype) \
            if on_host and not transposed and isinstance(dev, Device) else None
        # (the plan's result shape: the same, kept with it)
        shape = plan.output_shape if plan is not None else conv_result_shape(
            tuple(x.shape), tuple(conv.weight.shape), conv.stride, padding, conv.dilation,
            conv.groups, output_padding)
        # (a result only later clconv nodes read, deferred below: from the forward's pool)
        kept = defer and not unbatched and x.is_contiguous()
        out = results.new(shape, x, kept) if on_host else None
        r = None
        if transposed:
            y = OPS[nd][3](*operands, conv.stride, conv.padding, tuple(output_padding),
                           conv.groups, conv.dilation, activation=spec, out=out)
        else:
            if residual is not None:
                r = deferred_array(residual)
                r = operand(residual, dev, zero_copy) if r is None else r
            if plan is not None:
                # (the result is waited for by the queue, `make_host_visible`: no event)
                y = plan.execute({"input": operands[0], "weight": operands[1],
                                  "bias": operands[2], "residual": r}, out, check=False,
                                 events=False)
            else:
                y = OPS[nd][0](*operands, conv.stride, padding, conv.dilation, conv.groups,
                               padding_mode=conv.padding_mode, algorithm=conv.algorithm,
                               activation=spec, residual=r, out=out)
        if out is None:
            y = to_tensor(host_result(y), layout_source(x, conv.padding_mode))
        elif kept and results.over_tensor(out):
            # (a contiguous x: the result is not made channels_last, which would read it)
            return defer_result(results, out, (input, residual, operands, r))
        else:
            # (and the deferred results before it)
            y = results.tensor(out, layout_source(x, conv.padding_mode))
            flush_deferred()
    return y[0] if unbatched else y


class _FoldedConv(NotScriptable):
    """A convolution of convert()'s folded chains: while `_clconv_fold.active()`, its forward is
    act(bn(conv(x))) as one clconv convolution (folded weights, activation in the kernel's store)
    and the BatchNorm and activation after it pass their input through; otherwise its own
    clconv.torch forward."""

    _clconv_fold: Fold

    def forward(self, input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        fold = self._clconv_fold
        if args or kwargs or not fold.active():
            fold.mark(None)
            return super().forward(input, *args, **kwargs)
        try:
            result = run_folded(self, fold, fold.spec, input)
        except NotFoldable:
            fold.mark(None)  # (the BatchNorm and activation then run themselves)
            return super().forward(input)
        fold.mark(result)
        return result

    def _get_name(self) -> str:
        return self._clconv_base.__name__  # the class name before folding

    def extra_repr(self) -> str:
        fold = self._clconv_fold
        if fold.places is None:  # a copy of the conv alone: no chain
            return super().extra_repr()
        parts = [m._clconv_base.__name__ for m in (fold.bn, fold.act) if m is not None]
        return f"{super().extra_repr()}, folds={'+'.join(parts)} in eval mode"


class _PassThrough(NotScriptable):
    """The BatchNorm or activation of a folded chain: its input unchanged when it is the chain's
    folded result (the convolution before it computed this layer too), else its torch forward."""

    _clconv_fold: Fold

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        fold = self._clconv_fold
        if fold.active() and fold.produced(input):
            return input
        return super().forward(input)

    def _get_name(self) -> str:
        return self._clconv_base.__name__  # torch's class name, as before folding


BATCHNORM_ND = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}
#: The activation modules a chain may end with (their clconv activation fused into the conv).
_ACTIVATIONS = tuple(ACTIVATION_MODULES)


def folded_types(convs: Iterable[type], module: str) -> tuple[dict[type, type], dict[type, type]]:
    """(conv type of `convs` -> its folded type, torch BatchNorm / activation type -> its
    pass-through type): `mixin` over the type, named as a module-level class of `module` (whose
    namespace must hold it, so that pickle finds it)."""

    def folded(base: type, mixin: type) -> type:
        name = f"_Folded{base.__name__}"
        return type(name, (mixin, base), {"__module__": module, "__qualname__": name,
                                          "_clconv_base": base,
                                          "__doc__": f"{base.__name__} in a folded chain of "
                                                     f"clconv.torch.convert."})

    return ({t: folded(t, _FoldedConv) for t in convs},
            {t: folded(t, _PassThrough) for t in (*BATCHNORM_ND, *_ACTIVATIONS)})


def global_hooks(backward: bool = True) -> bool:
    """Whether torch's global module hooks (register_module_forward_hook ...) are set; backward:
    the backward ones too (register_module_full_backward_hook ...)."""
    mod = _module_module
    return bool(mod._global_forward_hooks or mod._global_forward_pre_hooks) or (backward and bool(
        mod._global_backward_hooks or getattr(mod, "_global_backward_pre_hooks", None)))


def backward_hooked(m: nn.Module) -> bool:
    """Whether `m` has backward hooks (full, pre or the old register_backward_hook)."""
    return bool(m._backward_hooks or getattr(m, "_backward_pre_hooks", None))


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks) or backward_hooked(m)


def chains_in_sequentials(model: nn.Module) -> list[tuple[nn.Module, ...]]:
    """(conv, BatchNorm[, activation]) runs of consecutive modules of the nn.Sequentials in
    `model`: in a Sequential each module's output goes to the next one only."""
    chains = []
    for seq in [m for m in model.modules() if type(m) is nn.Sequential]:
        items = list(seq)
        for i in range(len(items) - 1):
            chains.append(tuple(items[i:i + 3]))
    return chains


def chains_traced(model: nn.Module) -> list[tuple[nn.Module, ...]] | None:
    """(conv, BatchNorm[, activation]) module calls of `model`'s forward where each one's output
    goes to the next one only, found by tracing it with torch.fx in train and in eval mode (a
    forward may take other paths in either) and kept where both traces agree; None when the
    forward cannot be traced (data-dependent control flow, ...). The modules' training flags are
    restored."""
    modes = [(m, m.training) for m in model.modules()]
    graphs = []
    try:
        for training in (True, False):
            model.train(training)
            with backward_hooks_set_aside(model):
                graphs.append(trace_writers_whole(StateTracer, model)[0])
    except Exception:  # noqa: BLE001 - any failure to trace means: no traced chains
        return None
    finally:
        for m, training in modes:
            m.training = training
    found: list[set[tuple[str, ...]]] = []
    for graph in graphs:
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        chains = set()
        for node in graph.nodes:
            chain = [node]
            while len(chain) < 3 and len(chain[-1].users) == 1:
                user = next(iter(chain[-1].users))
                if user.op != "call_module" or user.args != (chain[-1],) or user.kwargs:
                    break
                chain.append(user)
            if node.op != "call_module":
                continue
            while chain and calls[chain[-1].target] != 1:  # a shared activation stays out
                chain.pop()
            if len(chain) >= 2 and all(calls[n.target] == 1 for n in chain):
                chains.add(tuple(n.target for n in chain))
        found.append(chains)
    return [tuple(model.get_submodule(t) for t in chain) for chain in found[0] & found[1]]


def fold_chains(model: nn.Module, chains: list[tuple[nn.Module, ...]],
                folded_convs: dict[type, type], pass_through: dict[type, type]) -> int:
    """Folds each (conv, BatchNorm[, activation]) of `chains` (modules of `model`, already
    converted) that qualifies, giving them the classes of `folded_types`' two maps; returns how
    many it folded."""
    uses: dict[int, int] = {}
    places: dict[int, tuple[nn.Module, str, nn.Module]] = {}  # where each module is held
    for parent in model.modules():
        for name, m in parent._modules.items():
            if m is not None:
                places[id(m)] = (parent, name, m)
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    folded = 0
    for conv, bn, *rest in chains:
        fold_type = folded_convs.get(type(conv))
        if fold_type is None or type(bn) not in BATCHNORM_ND:
            continue
        # Only modules used once, without hooks (a hook would see other values), whose
        # BatchNorm has running statistics for exactly the conv's output channels.
        if BATCHNORM_ND[type(bn)] != len(conv.kernel_size) or bn.num_features != \
                conv.out_channels or not bn.track_running_stats or \
                any(uses[id(m)] != 1 or _hooked(m) for m in (conv, bn)):
            continue
        act = rest[0] if rest else None
        spec = activation_module(act) if act is not None and type(act) in pass_through else None
        if spec is None or uses[id(act)] != 1 or _hooked(act):
            act, spec = None, None
        fold = Fold(conv, bn, act, spec,
                    tuple(places[id(m)] for m in (bn, act) if m is not None))
        for m in (conv, bn) + ((act,) if act is not None else ()):
            m.__class__ = fold_type if m is conv else pass_through[type(m)]
            m._clconv_fold = fold
        folded += 1
    return folded
