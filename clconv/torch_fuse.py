"""clconv.torch.convert()'s fused forward: a converted model runs its torch.fx trace with every
convolution -> [BatchNorm] -> [+ residual] -> [activation] run of the data flow computed as one
clconv node, so that the torch ops between the convolutions (ResNet's residual add and ReLU,
MobileNetV2's skip add, a shared ReLU module) do not run; for inference, on devices whose memory
is the host's, so do pools, joins, squeeze-excitation gates and ConvNeXt's channels-last runs;
every other node runs as the model's own code does. In eval mode under no_grad the node is one
clconv convolution (BatchNorm folded into the weights, the residual and the activation in the
kernel's store); with autograd on, it is clconv.torch_train's chain Function (forward and
backward on the device, BatchNorm on batch statistics in train mode). With hooks, keyword
arguments, or while fx or torch.compile traces, the model's own forward runs."""

from __future__ import annotations

import contextlib
import math
import operator
import threading
from typing import Any, Callable, Iterator

import numpy as np
import pyopencl.array as cla
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import parametrize

from .ops.activation import Activation, normalize_activation
from .torch_fold import (BATCHNORM_ND, Fold, NotFoldable, backward_hooked, global_hooks,
                         run_folded)
from .torch_train import (defer_result, deferred_array, flush_deferred, joined_results,
                          run_chain, set_result_pool, trainable, trains_fused)
from .torch_graph.activations import activation_module, activation_of, activation_spec
from .torch_graph.tracing import (AUGMENTED, InplaceTracer, backward_hooks_set_aside,
                                  trace_writers_whole)
from .ops.binary import binary_plan, binary_values
from .ops.channels import batch_norm_plan, channel_norm_plan
from .ops.conv import cached_conv_plan
from .ops.plan import cached_plan, derived, mark_constant
from .ops.pool import pool_output_size, pool_plan
from .ops.precision import plan_dtype
from .ops.prebuild import (MIN_LAYERS, Recorded, chain_spec, is_recording, note, pool_spec,
                           squeeze_excitation_spec)
from .ops.shape import cat_plan
from .ops.squeeze_excitation import SqueezeExcitationPlan, squeeze_excitation_fits
from .runtime.device import current_device
from .torch_prebuild import SIGNATURES_KEPT, first_forward, signature
from .torch_ops import (ResultPool, autocast_dtype, conv_result_shape, fixed_operand, pause_openmp,
                        module_padding, nd_tuple, operand, uses_zero_copy)

# A residual add: the conv chain's tensor and another one (either order; iadd only as the first:
# it writes its first argument).
_ADD_FUNCTIONS = (operator.add, torch.add)
_ADD_METHODS = ("add", "add_")


def _torch_activation(y: torch.Tensor, spec: Any) -> torch.Tensor:
    """torch's own activation `spec` of y (the unfused path's)."""
    act: Activation | None = normalize_activation(spec)
    if act is None:
        return y
    kind, a, b = act.kind, act.a, act.b
    simple: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": torch.relu, "relu6": F.relu6, "silu": F.silu, "sigmoid": torch.sigmoid,
        "tanh": torch.tanh, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
        "mish": F.mish, "selu": F.selu, "gelu": F.gelu, "logsigmoid": F.logsigmoid,
        "softsign": F.softsign, "tanhshrink": F.tanhshrink, "abs": torch.abs, "exp": torch.exp,
        "log": torch.log, "rsqrt": torch.rsqrt, "sqrt": torch.sqrt, "erf": torch.erf}
    if kind in simple:
        return simple[kind](y)
    if kind == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if kind == "leaky_relu":
        return F.leaky_relu(y, a)
    if kind == "elu":
        return F.elu(y, a)
    if kind == "celu":
        return F.celu(y, a)
    if kind == "softplus":
        return F.softplus(y, a, b)
    if kind in ("hardshrink", "softshrink"):
        return getattr(F, kind)(y, a)
    if kind == "threshold":
        return F.threshold(y, a, b)
    if kind == "clamp":
        return torch.clamp(y, None if a == -float("inf") else a, None if b == float("inf") else b)
    raise ValueError(f"no torch function for activation {act}")  # not reached: specs come from torch


def _site_fold(conv: nn.Module, bn: nn.Module | None) -> Fold:
    """The folded-weights cache of (conv, bn): the module-level chain's when it is the same one,
    else one kept on the conv per BatchNorm."""
    fold = getattr(conv, "_clconv_fold", None)
    if fold is not None and fold.bn is bn:
        return fold
    sites = conv.__dict__.setdefault("_clconv_sites", {})
    fold = sites.get(id(bn))
    if fold is None or fold.bn is not bn:
        fold = sites[id(bn)] = Fold(conv, bn, None, None)
    return fold


@contextlib.contextmanager
def _untraceable_refused(training: bool) -> Iterator[None]:
    """While a trace is made, in the tracing thread (another's calls run as before): for the
    autograd trace (`training`), switches of autograd's mode (torch.no_grad(), enable_grad(),
    set_grad_enabled(), inference_mode()) and torch.utils.checkpoint raising, for the inference
    trace (made and run under no_grad) a switch that enables gradients, so that a forward using
    them is not traced (the model's own forward runs then). fx traces through them and keeps
    nothing of them: a `with torch.no_grad():` block's parameters and input got gradients, an
    `enable_grad()` block's result under no_grad none; a checkpointed block's activations were
    kept, nothing was recomputed in backward, and its BatchNorms' running statistics were
    updated once where torch's recomputation updates them again."""
    import torch.utils.checkpoint as cp

    tracing = threading.get_ident()

    def refusing(what: str, original: Any, only: Callable[..., bool] | None = None) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == tracing and (only is None or only(*args, **kwargs)):
                raise TypeError(f"{what} in the traced forward")
            return original(*args, **kwargs)
        return refuse

    swaps: list[tuple[Any, str, str, Any]] = [
        (torch._C, "_set_grad_enabled", "a switch of autograd's mode",
         None if training else lambda mode: bool(mode))]
    if training:
        swaps += [(torch._C, "_InferenceMode", "torch.inference_mode", None),
                  (cp, "_checkpoint_without_reentrant_generator", "torch.utils.checkpoint", None)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _, _ in swaps
             if hasattr(owner, name)]
    if training and hasattr(cp, "CheckpointFunction"):
        original_function = cp.CheckpointFunction

        class Refused:
            apply = staticmethod(refusing("torch.utils.checkpoint", original_function.apply))
        saved.append((cp, "CheckpointFunction", original_function))
    grad = torch.is_grad_enabled()  # (a refused exit of a `with` would leave its mode on)
    try:
        for owner, name, what, only in swaps:
            if hasattr(owner, name):
                setattr(owner, name, refusing(what, getattr(owner, name), only))
        if training and hasattr(cp, "CheckpointFunction"):
            cp.CheckpointFunction = Refused
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
        torch.set_grad_enabled(grad)


def _parametrized(m: nn.Module) -> bool:
    """parametrize.is_parametrized(m) as a dict lookup (it is asked on every chain's call; the
    attribute lookup that torch's makes raises inside nn.Module for a plain module)."""
    return isinstance(m._modules.get("parametrizations"), nn.ModuleDict)


def _caching() -> bool:
    """Whether torch.nn.utils.parametrize's cache is on (within `parametrize.cached()`)."""
    return bool(getattr(parametrize, "_cache_enabled", 0))


def fused_conv(conv: nn.Module, bn: nn.Module | None, spec: Any, input: torch.Tensor,
               residual: torch.Tensor | None = None, defer: bool = False) -> torch.Tensor:
    """act(bn(conv(input)) + residual) as one clconv convolution (the node a fused run becomes);
    torch's modules and ops one by one where the fused kernel would differ from them (BatchNorm
    without running statistics, an unbatched input, a residual that broadcasts or has another
    dtype). defer: every user of the result is such a node or a fused pool (the trace's
    `_mark_deferred_inference`): its kernels are waited for with a later node's or at the
    forward's end."""
    if _parametrized(conv) and not _caching():
        if is_recording():  # (the listing pass: not evaluated once more; nothing built ahead)
            return _listed(conv, input)
        with parametrize.cached():  # its weight computed once for the chain, as torch's call
            return fused_conv(conv, bn, spec, input, residual, defer)
    nd = len(conv.kernel_size)
    fold = _site_fold(conv, bn)
    if fold.active() and isinstance(input, torch.Tensor) and input.device.type == "cpu" and \
            input.dim() == nd + 2 and (residual is None or (
            isinstance(residual, torch.Tensor) and  # (`conv(x) + x.size(1)`: torch's add)
            residual.dtype == input.dtype and tuple(residual.shape) == conv_result_shape(
                tuple(input.shape), tuple(conv.weight.shape), conv.stride, module_padding(conv),
                conv.dilation, conv.groups))):
        try:
            return run_folded(conv, fold, spec, input, residual, defer)
        except NotFoldable:  # (before any work: the modules one by one below)
            pass
        except Recorded:  # (the listing pass of a first forward: only the shape matters)
            return _listed(conv, input)
    flush_deferred()  # torch reads the operands
    return _one_by_one(conv, bn, spec, input, residual)


def fused_conv_train(conv: nn.Module, bn: nn.Module | None, spec: Any, input: torch.Tensor,
                     residual: torch.Tensor | None = None, defer: bool = False) -> torch.Tensor:
    """act(bn(conv(input)) + residual) with autograd: clconv.torch_train's chain Function
    (forward and backward on the device) where it computes what torch would, else torch's
    modules and ops one by one. defer: every user of the result is such a node (the trace's
    `_mark_deferred`): its kernels are waited for with a later chain's or at the forward's end."""
    if _parametrized(conv) and not _caching():
        # its weight (a parametrization's: spectral_norm's power iteration, which advances on
        # each evaluation) computed once for the chain, as torch's call of the module does
        with parametrize.cached():
            return fused_conv_train(conv, bn, spec, input, residual, defer)
    if torch.is_grad_enabled() and trainable(conv, bn, input, residual):
        if note(chain_spec(conv, bn, spec, input, residual)):
            return _listed(conv, input)  # (a first step's listing pass: BatchNorm's untouched)
        return run_chain(conv, bn, spec, input, residual, defer)
    flush_deferred()  # torch reads the operands
    return _one_by_one(conv, bn, spec, input, residual)


def _listed(conv: nn.Module, input: torch.Tensor) -> torch.Tensor:
    """A chain's result in the listing pass of a first forward (clconv.torch_prebuild): zeros of
    its shape, nothing computed."""
    return input.new_zeros(conv_result_shape(tuple(input.shape), tuple(conv.weight.shape),
                                             conv.stride, module_padding(conv), conv.dilation,
                                             conv.groups))


_TORCH_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _one_by_one(conv: nn.Module, bn: nn.Module | None, spec: Any, input: torch.Tensor,
                residual: torch.Tensor | None) -> torch.Tensor:
    """The chain as each module's own forward (a folded chain's modules as their torch classes)
    and torch's add and activation; in the listing pass of a first forward (clconv.torch_prebuild)
    the convolution as torch's, whose class clconv.torch's overrides."""
    torch_conv = _TORCH_CONV.get(len(conv.kernel_size))
    if is_recording() and isinstance(conv, torch_conv):  # (torch's convolution: see above)
        y = torch_conv._conv_forward(conv, input, conv.weight, conv.bias)
    else:
        y = getattr(type(conv), "_clconv_base", type(conv)).forward(conv, input)
    if bn is not None:
        y = getattr(type(bn), "_clconv_base", type(bn)).forward(bn, y)
    if residual is not None:
        y = y + residual
    return _torch_activation(y, spec)


_ADAPTIVE_AVG_POOL_MODULES = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2,
                              nn.AdaptiveAvgPool3d: 3}
_ADAPTIVE_AVG_POOL_FUNCTIONS = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2,
                                F.adaptive_avg_pool3d: 3}
_TORCH_ADAPTIVE_AVG_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d,
                            3: F.adaptive_avg_pool3d}
_AVG_POOL_MODULES = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}
_AVG_POOL_FUNCTIONS = {F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3}
_TORCH_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_CAT_FUNCTIONS = (torch.cat, torch.concat, torch.concatenate)
_MAX_POOL_MODULES = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3}
_MAX_POOL_FUNCTIONS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3}
_TORCH_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def fused_max_pool(nd: int, input: torch.Tensor, kernel_size: Any, stride: Any = None,
                   padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False,
                   return_indices: bool = False, *, defer: bool = False) -> Any:
    """F.max_pool{nd}d run by clconv on a device whose memory is the host's (the tensors' memory
    read and written in place; 1.9x faster than torch's on PoCL for ResNet's 3x3 / 2 pool); torch's
    own everywhere else (indices, other devices, dtypes or layouts). defer: as fused_conv's."""
    dev = current_device()
    if not return_indices:
        _listed_pool(dev, "max", nd, input, kernel_size=kernel_size, stride=stride,
                     padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    if return_indices or input.dim() != nd + 2 or not _device_reads(dev, input):
        flush_deferred()  # torch reads the input
        return _TORCH_MAX_POOL[nd](input, kernel_size, stride, padding, dilation,
                                   ceil_mode=ceil_mode, return_indices=return_indices)
    try:
        k = nd_tuple(kernel_size, nd)
        st = k if stride is None or (isinstance(stride, (tuple, list)) and not stride) else \
            nd_tuple(stride, nd)
        size = tuple(pool_output_size(*a, bool(ceil_mode)) for a in zip(
            input.shape[2:], k, nd_tuple(padding, nd), st, nd_tuple(dilation, nd)))
    except (TypeError, ValueError):  # torch's own error for bad arguments
        size = None
    if size is None or min(size) < 1:
        flush_deferred()
        return _TORCH_MAX_POOL[nd](input, kernel_size, stride, padding, dilation,
                                   ceil_mode=ceil_mode)
    plan = pool_plan(dev, "max", nd, tuple(input.shape), plan_dtype(input.dtype),
                     kernel_size=kernel_size, stride=stride, padding=padding,
                     dilation=dilation, ceil_mode=ceil_mode)
    return _run_on_device(dev, (input,), plan, _input_values, defer)


def _module_max_pool(pool: nn.Module, input: torch.Tensor, defer: bool = False) -> Any:
    """A MaxPool module's forward by fused_max_pool (the module read at call time)."""
    nd = _MAX_POOL_MODULES.get(type(pool))
    if nd is None or pool.return_indices:
        flush_deferred()
        return pool(input)
    return fused_max_pool(nd, input, pool.kernel_size, pool.stride, pool.padding,
                          pool.dilation, pool.ceil_mode, defer=defer)


def _pools_to_clconv(graph: fx.Graph, modules: dict[str, nn.Module]) -> int:
    """Max pooling nodes (modules without indices, F.max_pool*d) -> fused_max_pool nodes."""
    count = 0
    for node in list(graph.nodes):
        if node.op == "call_module" and type(modules.get(str(node.target))) in \
                _MAX_POOL_MODULES and not modules[node.target].return_indices and \
                len(node.args) == 1 and not node.kwargs:
            with graph.inserting_before(node):
                ref = graph.get_attr(node.target)
                new = graph.call_function(_module_max_pool, (ref, node.args[0]))
        elif node.op == "call_function" and node.target in _MAX_POOL_FUNCTIONS and \
                not node.kwargs.get("return_indices", False) and len(node.args) < 7:
            with graph.inserting_before(node):
                new = graph.call_function(fused_max_pool, (
                    _MAX_POOL_FUNCTIONS[node.target], *node.args), dict(node.kwargs))
        else:
            continue
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    return count


def _device_reads(dev: Any, *tensors: Any) -> bool:
    """Whether clconv runs an op of `tensors` in place of torch's (the inference forward's
    pools and SE gates): `_readable`, and not in the listing pass of a first forward
    (clconv.torch_prebuild: torch computes it, nothing is built)."""
    return not is_recording() and _readable(dev, *tensors)


def _listed_pool(dev: Any, kind: str, nd: int, input: Any, **args: Any) -> None:
    """In the listing pass of a first forward: the pooling clconv would run (a readable input)
    noted for the helpers, which build its kernel (torch computes the value)."""
    if is_recording() and isinstance(input, torch.Tensor) and input.dim() == nd + 2 and \
            _readable(dev, input):
        try:
            hash(tuple(args.items()))
        except TypeError:  # (an argument that could not be a plan's key)
            return
        note(pool_spec(kind, nd, tuple(input.shape), plan_dtype(input.dtype), args))


def _readable(dev: Any, *tensors: Any) -> bool:
    """Contiguous CPU float tensors of one dtype the device has, of at least one element and
    one dim, on a device whose memory is the host's."""
    first = tensors[0]
    return uses_zero_copy(dev) and all(
        isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dtype == first.dtype and
        t.dim() >= 1 and t.numel() > 0 and t.is_contiguous() for t in tensors) and \
        first.dtype in (torch.float32, torch.float64) and \
        (first.dtype == torch.float32 or dev.fp64)


def _run_on_device(dev: Any, inputs: tuple[torch.Tensor, ...], plan: Any,
                   values: Callable[..., dict[str, Any]], defer: bool) -> torch.Tensor:
    """`plan` (a functional op's, of `inputs`' shapes and dtype on `dev`) run on device arrays of
    inputs (`values(*arrays)`: its execute's operands) into a new result; the result's tensor
    (not waited for with `defer`, as fused_conv's). The plan is run as a folded chain's: no
    functional-API argument handling, plan-cache key or completion marker a call (~0.15 ms of
    host Python an op, measured with the kernels stubbed: docs/performance.md)."""
    with dev:
        results = joined_results(dev, True)  # (another device's deferred ones waited for first)
        arrays = []
        for t in inputs:
            a = deferred_array(t)
            arrays.append(operand(t, dev, True) if a is None else a)
        out = results.new(plan.output_shape, inputs[0], defer)
        # (the result is waited for by the queue, `make_host_visible`: no event)
        plan.execute(values(*arrays), out, check=False, events=False)
        if defer and results.over_tensor(out):
            return defer_result(results, out, (inputs, arrays))
        y = results.tensor(out)  # (and the deferred results before it)
        flush_deferred()
        return y


def _input_values(x: Any) -> dict[str, Any]:
    return {"input": x}


def fused_adaptive_avg_pool(nd: int, input: torch.Tensor, output_size: Any, *,
                            defer: bool = False) -> torch.Tensor:
    """F.adaptive_avg_pool{nd}d (a squeeze-excitation gate's squeeze) by clconv on a device
    whose memory is the host's, torch's elsewhere. defer: as fused_conv's."""
    dev = current_device()
    size = None
    if isinstance(input, torch.Tensor) and input.dim() == nd + 2:
        sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else \
            (output_size,) * nd
        try:
            size = tuple(s if o is None else operator.index(o)
                         for s, o in zip(input.shape[2:], sizes, strict=True))
        except (TypeError, ValueError):  # torch's own error for a bad size
            size = None
    if size is not None and min(size) >= 1:
        _listed_pool(dev, "adaptive_avg", nd, input, output_size=size)
    if size is None or min(size) < 1 or not _device_reads(dev, input):
        flush_deferred()  # torch reads the input
        return _TORCH_ADAPTIVE_AVG_POOL[nd](input, output_size)
    plan = pool_plan(dev, "adaptive_avg", nd, tuple(input.shape), plan_dtype(input.dtype),
                     output_size=size)
    return _run_on_device(dev, (input,), plan, _input_values, defer)


def _pointwise_layer(m: Any, nd: int) -> bool:
    """Whether `m` is a plain 1x1 convolution of `nd` spatial dims (stride 1, no padding, one
    group): on one position, a matrix times a vector."""
    return isinstance(m, _TORCH_CONV.get(nd, ())) and not isinstance(
        m, nn.modules.conv._ConvTransposeNd) and tuple(m.kernel_size) == (1,) * nd and \
        tuple(m.stride) == (1,) * nd and m.groups == 1 and \
        module_padding(m) in ((0,) * nd, "valid") and not _parametrized(m)


def fused_squeeze_excitation(nd: int, input: torch.Tensor, conv1: nn.Module, spec1: Any,
                             conv2: nn.Module, spec2: Any, input_first: bool, *,
                             defer: bool = False) -> torch.Tensor:
    """A squeeze-excitation block, input * gate(conv2(act(conv1(adaptive_avg_pool(input, 1))))),
    as one clconv.squeeze_excitation launch on a device whose memory is the host's (conv1 and
    conv2 plain 1x1 convolutions in eval mode without hooks, under no_grad); else its four nodes
    as they were (the pool, the two chains and the product: torch's where they do not run in
    clconv). input_first: the product was written input * gate. defer: as fused_conv's."""
    dev = current_device()
    block = _pointwise_layer(conv1, nd) and _pointwise_layer(conv2, nd) and \
        _readable(dev, input) and input.dim() == nd + 2 and \
        conv1.in_channels == input.shape[1] == conv2.out_channels and \
        conv2.in_channels == conv1.out_channels
    if block and is_recording():  # (the listing pass of a first forward: only the shape matters)
        bias = lambda m: None if m.bias is None else tuple(m.bias.shape)  # noqa: E731
        note(squeeze_excitation_spec(
            tuple(input.shape), tuple(conv1.weight.shape), bias(conv1),
            tuple(conv2.weight.shape), bias(conv2), spec1, spec2, plan_dtype(input.dtype)))
        return input.new_zeros(input.shape)
    f1 = f2 = None
    if block and not is_recording():
        f1, f2 = _site_fold(conv1, None), _site_fold(conv2, None)
    if f1 is not None and f1.active() and f2.active():
        dtype = plan_dtype(input.dtype)
        w1, b1 = f1.weights(dev)
        w2, b2 = f2.weights(dev)
        if all(a is None or a.dtype == dtype for a in (w1, b1, w2, b2)) and \
                squeeze_excitation_fits(dev, conv1.in_channels, conv1.out_channels,
                                        dtype.itemsize):
            args = (tuple(input.shape), w1.shape, None if b1 is None else b1.shape, w2.shape,
                    None if b2 is None else b2.shape, spec1, spec2, dtype)
            plan = cached_plan(dev, ("squeeze_excitation", *args),
                               lambda: SqueezeExcitationPlan(dev, *args))
            return _run_on_device(dev, (input,), plan, lambda x: {
                "input": x, "weight1": w1, "bias1": b1, "weight2": w2, "bias2": b2}, defer)
    s = fused_adaptive_avg_pool(nd, input, 1)
    g = fused_conv(conv2, None, spec2, fused_conv(conv1, None, spec1, s))
    return fused_mul(input, g, defer=defer) if input_first else fused_mul(g, input, defer=defer)


def fused_avg_pool(nd: int, input: torch.Tensor, kernel_size: Any, stride: Any = None,
                   padding: Any = 0, ceil_mode: bool = False, count_include_pad: bool = True,
                   divisor_override: Any = None, *, defer: bool = False) -> Any:
    """F.avg_pool{nd}d (DenseNet's transitions) by clconv on a device whose memory is the
    host's, torch's own elsewhere (and for its errors). defer: as fused_conv's."""
    dev = current_device()
    args = {"kernel_size": kernel_size, "stride": stride, "padding": padding,
            "ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
    if nd > 1:
        args["divisor_override"] = divisor_override
    _listed_pool(dev, "avg", nd, input, **args)
    plan = None
    if input.dim() == nd + 2 and _device_reads(dev, input):
        try:
            plan = pool_plan(dev, "avg", nd, tuple(input.shape), plan_dtype(input.dtype), **args)
        except (TypeError, ValueError):  # torch's own error for bad arguments
            plan = None
    if plan is None or min(plan.output_shape) < 1:
        flush_deferred()  # torch reads the input
        return _TORCH_AVG_POOL[nd](input, **args)
    return _run_on_device(dev, (input,), plan, _input_values, defer)


def _module_avg_pool(pool: nn.Module, input: torch.Tensor, defer: bool = False) -> Any:
    """An AvgPool module's forward by fused_avg_pool (the module read at call time)."""
    nd = _AVG_POOL_MODULES.get(type(pool))
    if nd is None:
        flush_deferred()
        return pool(input)
    return fused_avg_pool(nd, input, pool.kernel_size, pool.stride, pool.padding,
                          pool.ceil_mode, pool.count_include_pad,
                          getattr(pool, "divisor_override", None), defer=defer)


def fused_cat(tensors: Any, dim: Any = 0, *, defer: bool = False) -> Any:
    """torch.cat (DenseNet's feature maps, a U-Net's skips) by clconv on a device whose memory
    is the host's; torch's own for other operands, torch's legacy empty ones, and its errors.
    defer: as fused_conv's."""
    dev = current_device()
    if isinstance(tensors, (list, tuple)) and tensors and isinstance(dim, int) and \
            not isinstance(dim, bool) and _device_reads(dev, *tensors):
        shapes = tuple(tuple(t.shape) for t in tensors)
        n = len(shapes[0])
        d = dim + n if -n <= dim < 0 else dim
        if 0 <= d < n and all(len(sh) == n and sh[:d] == shapes[0][:d] and
                              sh[d + 1:] == shapes[0][d + 1:] for sh in shapes):
            dtype = plan_dtype(tensors[0].dtype)
            plan = cat_plan(dev, shapes, d, dtype)
            return _run_on_device(dev, tuple(tensors), plan,
                                  lambda *arrays: plan._values(arrays), defer)
    flush_deferred()
    return torch.cat(tensors, dim)


def fused_batch_norm(bn: nn.Module, spec: Any, input: torch.Tensor, *,
                     defer: bool = False) -> Any:
    """An eval-mode BatchNorm module's forward and the activation after it (`spec`, or None):
    DenseNet's and pre-activation networks' BatchNorm -> ReLU before a convolution, which no
    fold reaches. By clconv on a device whose memory is the host's, with the module's running
    statistics, weight and bias read at call time; the module's own forward (and torch's
    activation) where it uses batch statistics, and for other operands. defer: as
    fused_conv's."""
    dev = current_device()
    nd = BATCHNORM_ND.get(type(bn))
    mean, var, weight, bias = bn.running_mean, bn.running_var, bn.weight, bn.bias
    params = tuple(t.detach() for t in (weight, bias) if t is not None)
    if nd is None or bn.training or mean is None or var is None or input.dim() != nd + 2 or \
            input.shape[1] != mean.numel() or not _device_reads(dev, input, mean, var, *params):
        flush_deferred()  # torch reads the input
        return _torch_activation(bn(input), spec)
    has_w, has_b = weight is not None, bias is not None
    plan = batch_norm_plan(dev, tuple(input.shape), plan_dtype(input.dtype), has_w, has_b,
                           bn.eps, normalize_activation(spec))

    def values(x: Any, m: Any, v: Any, *wb: Any) -> dict[str, Any]:
        return {"input": x, "running_mean": m, "running_var": v,
                "weight": wb[0] if has_w else None, "bias": wb[-1] if has_b else None}
    return _run_on_device(dev, (input, mean, var, *params), plan, values, defer)


def _broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """torch.broadcast_shapes(a, b) (a dict-free few us, asked at every gate), or None where
    they do not broadcast."""
    if a == b:
        return a
    n = max(len(a), len(b))
    shape = []
    for i, j in zip((1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b):
        if i == j or j == 1:
            shape.append(i)
        elif i == 1:
            shape.append(j)
        else:
            return None
    return tuple(shape)


def _fused_binary(op: str, a: Any, b: Any, defer: bool) -> Any:
    """clconv's `op` ("add", "mul") of two tensors, broadcasting, on a device whose memory is the
    host's, else None (the caller's torch op then: its own error where they do not broadcast)."""
    dev = current_device()
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and _device_reads(dev, a, b):
        a_shape, b_shape = tuple(a.shape), tuple(b.shape)
        shape = _broadcast_shape(a_shape, b_shape)
        if shape is not None and min(shape) > 0:
            plan = binary_plan(dev, op, a_shape, b_shape, plan_dtype(a.dtype))
            return _run_on_device(dev, (a, b), plan, binary_values, defer)
    flush_deferred()  # torch reads the operands
    return None


def fused_mul(a: Any, b: Any, *, defer: bool = False) -> Any:
    """a * b of two tensors (a squeeze-excitation gate's excitation, broadcasting (N, C, 1, 1)
    over the feature map) by clconv on a device whose memory is the host's; torch's `*` for
    other operands. defer: as fused_conv's."""
    y = _fused_binary("mul", a, b, defer)
    return a * b if y is None else y


def fused_add(a: Any, b: Any, *, defer: bool = False) -> Any:
    """a + b of two tensors (ConvNeXt's residual add after its layer scale) by clconv on a
    device whose memory is the host's; torch's `+` for other operands. defer: as
    fused_conv's."""
    y = _fused_binary("add", a, b, defer)
    return a + b if y is None else y


# ConvNeXt's channels-last runs: x.permute(0, 2, 3, 1) -> LayerNorm(C) / Linear / activation /
# a per-channel scale -> .permute(0, 3, 1, 2), computed by clconv on x's channels-first data
# (what compile() does with its channels-last views), each step a node of its own. Each node
# takes and returns channels-first (N, C, H, W) tensors; where clconv does not run it (another
# device, dtype or layout), it runs torch's op between the two permutes.
_TO_CHANNELS_LAST, _TO_CHANNELS_FIRST = (0, 2, 3, 1), (0, 3, 1, 2)


def _channels_first_reads(dev: Any, x: Any, channels: int, *tensors: Any) -> bool:
    """Whether clconv runs a channels-last step of `x`: a 4-d tensor of `channels` channels that
    the device reads (_device_reads) with `tensors` (the step's parameters)."""
    return isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] == channels and \
        all(isinstance(t, torch.Tensor) for t in tensors) and \
        _device_reads(dev, x, *(t.detach() for t in tensors))


def fused_channel_norm(input: torch.Tensor, normalized_shape: Any, weight: Any = None,
                       bias: Any = None, eps: Any = 1e-5, *, defer: bool = False) -> Any:
    """F.layer_norm(input.permute(0, 2, 3, 1), normalized_shape, weight, bias,
    eps).permute(0, 3, 1, 2) of a channels-first (N, C, H, W) input: LayerNorm over its
    channels, by clconv's channel norm on the channels-first data where normalized_shape is
    (C,); torch's ops elsewhere. defer: as fused_conv's."""
    dev = current_device()
    shape = normalized_shape  # (an int is torch's TypeError)
    params = tuple(t for t in (weight, bias) if t is not None)
    if isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 1 and \
            isinstance(eps, (int, float)) and not isinstance(eps, bool) and \
            isinstance(input, torch.Tensor) and input.dim() == 4 and \
            tuple(shape) == (input.shape[1],) and \
            all(isinstance(t, torch.Tensor) and tuple(t.shape) == tuple(shape) for t in params) \
            and _channels_first_reads(dev, input, input.shape[1], *params):
        has_w, has_b = weight is not None, bias is not None
        plan = channel_norm_plan(dev, tuple(input.shape), plan_dtype(input.dtype), has_w, has_b,
                                 float(eps))

        def values(x: Any, *wb: Any) -> dict[str, Any]:
            return {"input": x, "weight": wb[0] if has_w else None,
                    "bias": wb[-1] if has_b else None}
        return _run_on_device(dev, (input, *(t.detach() for t in params)), plan, values, defer)
    flush_deferred()  # torch reads the input
    return F.layer_norm(input.permute(*_TO_CHANNELS_LAST), normalized_shape, weight, bias,
                        eps).permute(*_TO_CHANNELS_FIRST)


def _module_channel_norm(norm: nn.Module, input: torch.Tensor, *, defer: bool = False) -> Any:
    """A LayerNorm module's forward between the two permutes (fused_channel_norm; the module
    read at call time)."""
    return fused_channel_norm(input, norm.normalized_shape, norm.weight, norm.bias, norm.eps,
                              defer=defer)


def _as_1x1(w: Any) -> Any:
    """A Linear's (out, in) weight as a 1x1 convolution's (out, in, 1, 1), kept with a constant
    device copy (its reshape, also constant: the plan keeps what it derives from it)."""
    shape = (*w.shape, 1, 1)
    if isinstance(w, cla.Array):
        return derived(w, "as_1x1", lambda: mark_constant(w.reshape(shape)))
    return w.reshape(shape)


def fused_channels_linear(linear: nn.Module, spec: Any, input: torch.Tensor, *,
                          defer: bool = False) -> Any:
    """act(linear(input.permute(0, 2, 3, 1))).permute(0, 3, 1, 2) (`spec`: the activation
    after it, or None) of a channels-first (N, C, H, W) input: ConvNeXt's pointwise layers, a
    1x1 convolution by clconv of the channels-first data (the weight kept on the device while
    it is unchanged, as a convolution's) with the activation in its store; torch's ops
    elsewhere. defer: as fused_conv's."""
    dev = current_device()
    w, b = linear.weight, linear.bias
    if type(linear) is nn.Linear and w.dim() == 2 and (b is None or b.shape == w.shape[:1]) \
            and _channels_first_reads(dev, input, w.shape[1], w, *(() if b is None else (b,))):
        weight, bias = _as_1x1(fixed_operand(w, dev)), fixed_operand(b, dev)
        plan = cached_conv_plan(dev, 2, tuple(input.shape), tuple(weight.shape),
                                None if b is None else tuple(b.shape), plan_dtype(input.dtype),
                                (1, 1), (0, 0), (1, 1), 1, "zeros", "auto", spec, None, None)

        def values(x: Any) -> dict[str, Any]:
            return {"input": x, "weight": weight, "bias": bias, "residual": None}
        return _run_on_device(dev, (input,), plan, values, defer)
    flush_deferred()  # torch reads the input
    return _torch_activation(linear(input.permute(*_TO_CHANNELS_LAST)),
                             spec).permute(*_TO_CHANNELS_FIRST)


def fused_channels_scale(scale: Any, input: torch.Tensor, scale_first: bool = True, *,
                         defer: bool = False) -> Any:
    """(scale * input.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) of a channels-first (N, C, H, W)
    input and a (C,) tensor (ConvNeXt's layer scale; the operands in the other order where not
    `scale_first`): clconv's product with the scale over (C, 1, 1); torch's ops elsewhere.
    defer: as fused_conv's."""
    dev = current_device()
    if isinstance(scale, torch.Tensor) and scale.dim() == 1 and \
            _channels_first_reads(dev, input, scale.shape[0], scale):
        c = scale.shape[0]
        plan = binary_plan(dev, "mul", tuple(input.shape), (c, 1, 1), plan_dtype(input.dtype))
        return _run_on_device(dev, (input, scale.detach().view(c, 1, 1)), plan, binary_values,
                              defer)
    flush_deferred()  # torch reads the input
    y = input.permute(*_TO_CHANNELS_LAST)
    return (scale * y if scale_first else y * scale).permute(*_TO_CHANNELS_FIRST)


def _permute_of(node: fx.Node) -> tuple[fx.Node, tuple[int, ...]] | None:
    """(x, dims) where `node` permutes the 4 dims of x by constant dims (x.permute(0, 2, 3, 1),
    x.permute((0, 2, 3, 1)), torch.permute(x, dims); negative dims as torch counts them)."""
    if node.kwargs or not node.args:
        return None
    x, dims = node.args[0], node.args[1:]
    if node.op == "call_method" and node.target == "permute":
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
    elif node.op == "call_function" and node.target is torch.permute and len(dims) == 1 and \
            isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    else:
        return None
    if not isinstance(x, fx.Node) or len(dims) != 4 or \
            not all(type(d) is int and -4 <= d < 4 for d in dims):
        return None
    return x, tuple(d % 4 for d in dims)


def _layer_norm_call(node: fx.Node, x: fx.Node) -> tuple[Any, ...] | None:
    """(normalized_shape, weight, bias, eps) of an F.layer_norm node of x whose arguments but
    the weight and bias (parameters: get_attr nodes) are constants, else None."""
    if node.op != "call_function" or node.target is not F.layer_norm:
        return None
    names = ("input", "normalized_shape", "weight", "bias", "eps")
    if len(node.args) > len(names) or set(node.kwargs) - set(names[len(node.args):]):
        return None
    bound = {**dict(zip(names, node.args)), **node.kwargs}
    if bound.get("input") is not x or "normalized_shape" not in bound:
        return None
    w, b = bound.get("weight"), bound.get("bias")
    shape = bound["normalized_shape"]
    if any(isinstance(v, fx.Node) and v.op != "get_attr" for v in (w, b)) or \
            isinstance(bound.get("eps"), fx.Node) or not (
                isinstance(shape, (tuple, list)) and len(shape) == 1 and
                isinstance(shape[0], int)):
        return None  # (over more dims than the channels, or torch's error: torch's)
    return shape, w, b, bound.get("eps", 1e-5)


def _channels_last_to_clconv(graph: fx.Graph, modules: dict[str, nn.Module]) -> int:
    """Each x.permute(0, 2, 3, 1) -> steps -> .permute(0, 3, 1, 2) run of `graph` (each node the
    only user of the one before), the steps LayerNorm modules or F.layer_norm calls, Linear
    modules (with the activation after one), or products with a parameter (layer scale) ->
    fused_channel_norm, fused_channels_linear and fused_channels_scale nodes of x's
    channels-first data, so that ConvNeXt's blocks run on the device without a wait (returns
    how many steps)."""
    count = 0
    for start in list(graph.nodes):
        found = _permute_of(start)
        if found is None or found[1] != _TO_CHANNELS_LAST:
            continue
        x, chain, steps, cur, end = found[0], [start], [], start, None
        while (user := _only_user(cur)) is not None:
            permuted = _permute_of(user)
            if permuted is not None:
                if permuted == (cur, _TO_CHANNELS_FIRST):
                    end = user
                break
            m = modules.get(str(user.target)) if user.op == "call_module" else None
            plain = user.args == (cur,) and not user.kwargs
            norm = _layer_norm_call(user, cur)
            if norm is not None:
                steps.append((fused_channel_norm, norm, None))
            elif type(m) is nn.LayerNorm and plain and len(m.normalized_shape) == 1:
                steps.append((_module_channel_norm, (), user.target))
            elif type(m) is nn.Linear and plain:
                act, spec, target = _only_user(user), None, user.target
                found_act = activation_of(act, modules) if act is not None else None
                if found_act is not None and found_act[1] is user:
                    spec = activation_spec(found_act[0])
                    chain.append(user)
                    user = act
                steps.append((fused_channels_linear, (spec,), target))
            elif ((user.op == "call_function" and user.target in (operator.mul, torch.mul)) or
                  (user.op == "call_method" and user.target == "mul")) and \
                    len(user.args) == 2 and not user.kwargs and cur in user.args:
                other = user.args[1] if user.args[0] is cur else user.args[0]
                if not isinstance(other, fx.Node) or other.op != "get_attr" or other is cur:
                    break
                steps.append((fused_channels_scale, (other, user.args[0] is other), None))
            else:
                break
            chain.append(user)
            cur = user
        if end is None or not steps:
            continue
        with graph.inserting_before(end):
            value = x
            for target, args, module in steps:
                if target is fused_channel_norm:
                    value = graph.call_function(target, (value, *args))
                elif target is _module_channel_norm:
                    value = graph.call_function(target, (graph.get_attr(module), value))
                elif target is fused_channels_linear:
                    value = graph.call_function(target, (graph.get_attr(module), *args, value))
                else:  # the scale
                    value = graph.call_function(target, (args[0], value, args[1]))
        end.replace_all_uses_with(value)
        for n in reversed([*chain, end]):
            graph.erase_node(n)
        # torch's LayerNorm and Linear give a contiguous channels-last result, which the
        # permute back makes channels_last in memory (a run of scales alone keeps x's layout:
        # `_torch_layouts`)
        value.meta["clconv_channels_last"] = True if any(
            target is not fused_channels_scale for target, _, _ in steps) else x
        count += len(steps)
    return count


def _channels_last_result(y: Any) -> Any:
    """A channels-last run's result as torch code reads it: channels_last in memory as torch's
    own (its permute back of a contiguous channels-last tensor), where clconv computed it
    channels-first (contiguous); torch's own result as it is."""
    if isinstance(y, torch.Tensor) and y.dim() == 4 and y.is_contiguous():
        return y.contiguous(memory_format=torch.channels_last)
    return y


def _torch_layouts(graph: fx.Graph) -> int:
    """Gives the torch nodes (and the graph's output) that read a value that is channels_last in
    memory in torch's forward but channels-first in clconv's the value in torch's memory format
    (`_channels_last_result`: a `.view` of it then fails as torch's does); clconv's nodes read
    the channels-first one (returns how many values). Such values: a channels-last run's result
    (`_channels_last_to_clconv`), and what clconv's nodes compute from them as torch's would (a
    convolution's, pool's or BatchNorm's result takes its input's layout, a sum or product its
    first operand's, a join its operands' where all share it; a chain's residual added too:
    both, the order being gone)."""
    marked: set[fx.Node] = set()
    # the clconv nodes whose result takes the layout of one operand: its position (after the nd
    # or module argument), else the `input=` keyword
    follows = {fused_max_pool: 1, _module_max_pool: 1, fused_avg_pool: 1, _module_avg_pool: 1,
               fused_adaptive_avg_pool: 1, fused_batch_norm: 2, fused_add: 0, fused_mul: 0}

    def channels_last(v: Any) -> bool:
        return isinstance(v, fx.Node) and v in marked

    for node in graph.nodes:
        found = node.meta.get("clconv_channels_last")
        if found is not None:
            cl = found is True or channels_last(found)
        elif node.op != "call_function":
            cl = False
        elif node.target is fused_conv:
            x, residual = node.args[3], node.args[4]
            cl = channels_last(x) and (residual is None or channels_last(residual))
        elif node.target in follows:
            at = follows[node.target]
            cl = channels_last(node.args[at] if len(node.args) > at else
                               node.kwargs.get("input"))
        elif node.target is fused_cat:
            operands = node.args[0]
            cl = bool(operands) and all(channels_last(v) for v in operands)
        else:
            cl = False
        if cl:
            marked.add(node)
    count = 0
    for node in list(graph.nodes):
        if node not in marked:
            continue
        readers = [u for u in node.users
                   if not (u.op == "call_function" and u.target in _INFERENCE_NODES)]
        if not readers:
            continue
        with graph.inserting_after(node):
            layout = graph.call_function(_channels_last_result, (node,))
        for u in readers:
            u.replace_input_with(node, layout)
        count += 1
    return count


def _gates_to_clconv(graph: fx.Graph, modules: dict[str, nn.Module]) -> int:
    """Adaptive average pooling (modules, F.adaptive_avg_pool*d) and products of two tensors
    (`x * s`, torch.mul, x.mul) -> fused_adaptive_avg_pool / fused_mul nodes, so that a
    squeeze-excitation block runs on the device without a wait (returns how many)."""
    count = 0
    for node in list(graph.nodes):
        args = node.args
        if node.op == "call_module" and type(modules.get(str(node.target))) in \
                _ADAPTIVE_AVG_POOL_MODULES and len(args) == 1 and not node.kwargs:
            m = modules[str(node.target)]
            target, new_args = fused_adaptive_avg_pool, (
                _ADAPTIVE_AVG_POOL_MODULES[type(m)], args[0], m.output_size)
        elif node.op == "call_function" and node.target in _ADAPTIVE_AVG_POOL_FUNCTIONS and \
                len(args) == 2 and not node.kwargs:
            target, new_args = fused_adaptive_avg_pool, (
                _ADAPTIVE_AVG_POOL_FUNCTIONS[node.target], *args)
        elif ((node.op == "call_function" and node.target in (operator.mul, torch.mul)) or
              (node.op == "call_method" and node.target == "mul")) and len(args) == 2 and \
                not node.kwargs and all(isinstance(v, fx.Node) for v in args):
            target, new_args = fused_mul, tuple(args)
        else:
            continue
        with graph.inserting_before(node):
            new = graph.call_function(target, new_args)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    return count


def _squeeze_excitations_to_clconv(graph: fx.Graph, modules: dict[str, nn.Module]) -> int:
    """Each squeeze-excitation block of the fused graph, adaptive_avg_pool(x, 1) -> a 1x1
    convolution chain -> another -> x * gate (each node the only user of the one before, nothing
    between them writing in place), -> one fused_squeeze_excitation node (returns how many)."""
    count = 0

    def layer(node: fx.Node | None, source: fx.Node, nd: int) -> bool:
        if node is None or node.op != "call_function" or node.target is not fused_conv or \
                node.kwargs or len(node.args) != 5 or node.args[1] is not None or \
                node.args[3] is not source or node.args[4] is not None:
            return False
        ref = node.args[0]
        return isinstance(ref, fx.Node) and ref.op == "get_attr" and \
            _pointwise_layer(modules.get(str(ref.target)), nd)

    for pool in list(graph.nodes):
        if pool.op != "call_function" or pool.target is not fused_adaptive_avg_pool or \
                pool.kwargs or len(pool.args) != 3:
            continue
        nd, x, size = pool.args
        sizes = tuple(size) if isinstance(size, (tuple, list)) else (size,) * nd
        if len(sizes) != nd or any(type(s) is not int or s != 1 for s in sizes):
            continue
        fc1 = _only_user(pool)
        fc2 = _only_user(fc1) if layer(fc1, pool, nd) else None
        mul = _only_user(fc2) if layer(fc2, fc1, nd) else None
        if mul is None or mul.op != "call_function" or mul.target is not fused_mul or \
                mul.kwargs or len(mul.args) != 2 or set(mul.args) != {x, fc2}:
            continue
        between, node = [], pool.next
        while node is not mul:
            between.append(node)
            node = node.next
        if any(_writes_in_place(n, modules) for n in between):
            continue
        with graph.inserting_before(mul):
            new = graph.call_function(fused_squeeze_excitation, (
                nd, x, fc1.args[0], fc1.args[2], fc2.args[0], fc2.args[2], mul.args[0] is x))
        mul.replace_all_uses_with(new)
        for n in (mul, fc2, fc1, pool):
            graph.erase_node(n)
        count += 1
    return count


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _residual_of(add: fx.Node, x: fx.Node) -> fx.Node | None:
    """The other operand when `add` is x + other (other a tensor node), else None."""
    if add.kwargs or len(add.args) != 2:
        return None
    a, b = add.args
    if add.op == "call_function" and add.target in _ADD_FUNCTIONS:
        other = b if a is x else a if b is x else None
    elif (add.op == "call_function" and add.target is operator.iadd) or (
            add.op == "call_method" and add.target in _ADD_METHODS):
        other = b if a is x else None
    else:
        return None
    return other if isinstance(other, fx.Node) and other is not x else None


def _writes_in_place(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether `node` may write a tensor (in-place methods and operators, inplace= arguments and
    modules, out= arguments): a convolution is not moved past such a node, and nothing is
    deferred in a trace that has one."""
    if node.op in ("call_method", "call_function") and node.kwargs.get("out") is not None or \
            node.target is operator.setitem:
        return True  # torch.add(y, 1, out=y) and y[...] = v write y
    if node.op == "call_method":
        return str(node.target).endswith("_")
    if node.op == "call_function":
        name = getattr(node.target, "__name__", "")
        return name.startswith("i") and node.target in vars(operator).values() or \
            name.endswith("_") or bool(node.kwargs.get("inplace"))
    if node.op == "call_module":
        return bool(getattr(modules.get(str(node.target)), "inplace", False))
    return False


#: Methods and functions whose result may share its input's memory (and version counter).
_ALIASING_METHODS = frozenset(("view", "view_as", "reshape", "reshape_as", "flatten",
                               "unflatten", "transpose", "permute", "squeeze", "unsqueeze",
                               "narrow", "expand", "expand_as", "t", "chunk", "split", "unbind",
                               "contiguous", "detach", "__getitem__"))
_ALIASING_FUNCTIONS = frozenset((torch.flatten, torch.reshape, torch.transpose, torch.permute,
                                 torch.squeeze, torch.unsqueeze, torch.narrow, torch.chunk,
                                 torch.split, torch.unbind, torch.detach, operator.getitem))


def _written_in_place(node: fx.Node, modules: dict[str, nn.Module], depth: int = 0) -> bool:
    """Whether a later node may write `node`'s result in place, itself or through a view of it
    (its first argument of an in-place op, an out=, an item assignment)."""
    for user in node.users:
        if user.kwargs.get("out") is node or \
                (user.args and user.args[0] is node and _writes_in_place(user, modules)):
            return True
        if _aliasing(user, modules) and depth < 16 and \
                _written_in_place(user, modules, depth + 1):
            return True
    return False


def _aliasing(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether `node`'s result may be a view of its first argument."""
    return (node.op == "call_method" and str(node.target) in _ALIASING_METHODS) or \
        (node.op == "call_function" and node.target in _ALIASING_FUNCTIONS) or \
        (node.op == "call_module" and isinstance(modules.get(str(node.target)),
                                                 (nn.Flatten, nn.Unflatten, nn.Identity)))


def fuse_graph(graph: fx.Graph, modules: dict[str, nn.Module],
               is_conv: Callable[[nn.Module], bool], replacement: Callable[..., Any] = fused_conv,
               takes_activation: Callable[[Any, bool], bool] = lambda spec, written: True) -> int:
    """Replaces each conv -> [BatchNorm] -> [+ residual] -> [activation] run of `graph` (each
    node the only user of the one before; at least one step beyond the conv; an activation
    only where `takes_activation(spec, written)`, `written`: whether a later node writes the
    activation's result in place) by one `replacement(conv, bn, spec, x, residual)` node
    (fused_conv or fused_conv_train); returns how many."""
    fused, erased = 0, set()
    for conv in list(graph.nodes):
        if conv in erased or conv.op != "call_module" or not is_conv(modules[conv.target]) or \
                len(conv.args) != 1 or conv.kwargs or not isinstance(conv.args[0], fx.Node):
            continue
        x = conv.args[0]
        chain, bn, residual, spec = [conv], None, None, None
        nxt = _only_user(conv)
        m = modules.get(str(nxt.target)) if nxt is not None and nxt.op == "call_module" else None
        cm = modules[conv.target]
        if m is not None and BATCHNORM_ND.get(getattr(type(m), "_clconv_base", type(m))) == \
                len(cm.kernel_size) and nxt.args == (conv,) and not nxt.kwargs and \
                m.num_features == cm.out_channels:
            bn = nxt
            chain.append(nxt)
        nxt = _only_user(chain[-1])
        other = _residual_of(nxt, chain[-1]) if nxt is not None else None
        if other is not None:
            # the convolution moves to the add: no node between may write what it reads
            between, node = [], conv.next
            while node is not nxt:
                between.append(node)
                node = node.next
            if not any(_writes_in_place(n, modules) for n in between if n not in chain):
                residual = other
                chain.append(nxt)
        nxt = _only_user(chain[-1])
        found = activation_of(nxt, modules) if nxt is not None else None
        if found is not None and found[1] is chain[-1] and \
                takes_activation(activation_spec(found[0]), _written_in_place(nxt, modules)):
            spec = activation_spec(found[0])
            chain.append(nxt)
        if len(chain) == 1:
            continue
        end = chain[-1]
        with graph.inserting_before(end):
            conv_ref = graph.get_attr(conv.target)
            bn_ref = graph.get_attr(bn.target) if bn is not None else None
            new = graph.call_function(replacement, (conv_ref, bn_ref, spec, x, residual))
        end.replace_all_uses_with(new)
        for n in reversed(chain):
            graph.erase_node(n)
            erased.add(n)
        fused += 1
    return fused


def _features_to_clconv(graph: fx.Graph, modules: dict[str, nn.Module]) -> int:
    """Average pooling (modules, F.avg_pool*d), BatchNorm modules of no fold (with the activation
    after one, when it is its only user) and then torch.cat of tensors -> fused_avg_pool,
    fused_batch_norm and fused_cat nodes, so that DenseNet's dense layers and transitions run on
    the device without a wait (returns how many)."""
    count = 0
    for node in list(graph.nodes):
        args, kwargs, end = node.args, node.kwargs, node
        m = modules.get(str(node.target)) if node.op == "call_module" else None
        if node.op == "call_function" and node.target in _AVG_POOL_FUNCTIONS and \
                len(args) <= 7 and args and isinstance(args[0], fx.Node) and \
                not any(isinstance(v, fx.Node) for v in (*args[1:], *kwargs.values())):
            with graph.inserting_before(node):
                new = graph.call_function(fused_avg_pool, (_AVG_POOL_FUNCTIONS[node.target],
                                                           *args), dict(kwargs))
        elif m is not None and type(m) in _AVG_POOL_MODULES and len(args) == 1 and not kwargs:
            with graph.inserting_before(node):
                new = graph.call_function(_module_avg_pool, (graph.get_attr(node.target),
                                                             args[0]))
        elif m is not None and type(m) in BATCHNORM_ND and len(args) == 1 and \
                isinstance(args[0], fx.Node) and not kwargs:
            # (torch's own classes only: a folded chain's BatchNorm passes its input through)
            spec, nxt = None, _only_user(node)
            # (the activation only where it comes next: nothing between writes the input)
            found = activation_of(nxt, modules) if nxt is node.next else None
            if found is not None and found[1] is node:
                spec, end = activation_spec(found[0]), nxt
            with graph.inserting_before(end):
                new = graph.call_function(fused_batch_norm, (graph.get_attr(node.target), spec,
                                                             args[0]))
        else:
            continue
        end.replace_all_uses_with(new)
        graph.erase_node(end)
        if end is not node:
            graph.erase_node(node)
        count += 1
    # DenseNet's dense layers join all the features before them: a join whose operands begin
    # with an earlier join's (of 2 or more, along the same dim) starts from that one's result,
    # 2 copies instead of k, where nothing in the trace writes a tensor in place (what the
    # earlier join read could have changed since: its operands, its result, a view of either)
    reuse = not any(_writes_in_place(n, modules) for n in graph.nodes)
    cats: list[tuple[int, tuple[fx.Node, ...], fx.Node]] = []  # (dim, operands, fused node)
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _CAT_FUNCTIONS:
            continue
        args, kwargs = node.args, node.kwargs
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if len(args) > 2 or set(kwargs) - {"tensors", "dim"} or \
                not isinstance(tensors, (list, tuple)) or not tensors or \
                not all(isinstance(t, fx.Node) for t in tensors) or \
                not isinstance(dim, int) or isinstance(dim, bool):
            continue
        operands = tuple(tensors)
        earlier = max((c for c in cats if c[0] == dim and 1 < len(c[1]) < len(operands) and
                       operands[:len(c[1])] == c[1]),
                      key=lambda c: len(c[1]), default=None) if reuse else None
        joined = operands if earlier is None else (earlier[2], *operands[len(earlier[1]):])
        with graph.inserting_before(node):
            new = graph.call_function(fused_cat, (list(joined), dim))
        cats.append((dim, operands, new))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    return count


#: The inference trace's nodes that read deferred results through their device arrays.
_INFERENCE_NODES = (fused_conv, fused_max_pool, _module_max_pool, fused_adaptive_avg_pool,
                    fused_mul, fused_cat, fused_avg_pool, _module_avg_pool, fused_batch_norm,
                    fused_channel_norm, _module_channel_norm, fused_channels_linear,
                    fused_channels_scale, fused_add, fused_squeeze_excitation)


def _adds_to_clconv(graph: fx.Graph, modules: dict[str, nn.Module],
                    is_conv: Callable[[nn.Module], bool]) -> int:
    """Sums of two values (`a + b`, torch.add, a.add without alpha) one of which a clconv node
    (or a convolution, `is_conv`, which _lone_convs_to_clconv may make one) computes ->
    fused_add nodes, so that ConvNeXt's residual adds after a channels-last run do not wait
    (returns how many)."""
    def on_device(v: Any) -> bool:
        return isinstance(v, fx.Node) and (
            (v.op == "call_function" and v.target in _INFERENCE_NODES) or
            (v.op == "call_module" and is_conv(modules[str(v.target)])))
    count = 0
    for node in list(graph.nodes):
        if not ((node.op == "call_function" and node.target in _ADD_FUNCTIONS) or
                (node.op == "call_method" and node.target == "add")) or node.kwargs or \
                len(node.args) != 2 or not all(isinstance(v, fx.Node) for v in node.args) or \
                not any(on_device(v) for v in node.args):
            continue
        with graph.inserting_before(node):
            new = graph.call_function(fused_add, tuple(node.args))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    return count


def _identities_removed(graph: fx.Graph, modules: dict[str, nn.Module]) -> int:
    """Removes the inference trace's calls of nn.Identity modules (a drop path of rate 0, as
    ConvNeXt's code writes it), their readers reading the input, so that the runs around them
    are found (returns how many). (Not dropout's: in eval mode it returns its input too, but
    checks its rate and the input's dims at each call, and raises or warns as torch does.)"""
    count = 0
    for node in list(graph.nodes):
        if node.op == "call_module" and type(modules.get(str(node.target))) is nn.Identity and \
                len(node.args) == 1 and not node.kwargs and isinstance(node.args[0], fx.Node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            count += 1
    return count


def _lone_convs_to_clconv(graph: fx.Graph, modules: dict[str, nn.Module],
                          is_conv: Callable[[nn.Module], bool]) -> int:
    """Convolutions (`is_conv`: transposed ones too) of no chain whose every user is a clconv
    node of the inference trace -> fused_conv nodes of the convolution alone, so that their
    results are not waited for (DenseNet's 3x3 convolutions, read by the next joins, and its
    transitions', by their pools; a U-Net's transposed convolutions, by the joins with the
    skips). Returns how many."""
    count = 0
    # (the last first: a convolution read by a later one that becomes such a node is one too)
    for conv in reversed(list(graph.nodes)):
        if conv.op != "call_module" or not is_conv(modules[str(conv.target)]) or \
                len(conv.args) != 1 or conv.kwargs or not isinstance(conv.args[0], fx.Node) or \
                not conv.users or not all(u.op == "call_function" and u.target in
                                          _INFERENCE_NODES for u in conv.users):
            continue
        with graph.inserting_before(conv):
            ref = graph.get_attr(conv.target)
            new = graph.call_function(fused_conv, (ref, None, None, conv.args[0], None))
        conv.replace_all_uses_with(new)
        graph.erase_node(conv)
        count += 1
    return count


def _mark_deferred_inference(graph: fx.Graph, modules: dict[str, nn.Module]) -> int:
    """Gives each node of the inference trace's fused convolutions and pools whose every user is
    one too `defer=True` (returns how many): no torch op reads its result before the next wait.
    None (0) where any node may write a tensor in place (it could write what a deferred kernel
    still reads)."""
    nodes = list(graph.nodes)
    if any(_writes_in_place(n, modules) for n in nodes):
        return 0
    return _defer_where_users_are(nodes, _INFERENCE_NODES)


def _mark_deferred(graph: fx.Graph) -> int:
    """Gives each fused_conv_train node whose every user is one too `defer=True` (returns how
    many): no torch op reads its result before the chains' next wait. None (0) where the graph
    reads a parameter or buffer itself (get_attr of a tensor) or calls a chain's module elsewhere:
    such a read or update of BatchNorm's running statistics would come before their deferred
    update."""
    nodes = list(graph.nodes)
    if any(n.op == "get_attr" and not any(u.target is fused_conv_train for u in n.users)
           for n in nodes):
        return 0
    # a chain's BatchNorm also called as a module elsewhere: its updates would change order
    chained = {str(n.target) for n in nodes if n.op == "get_attr"}
    if any(n.op == "call_module" and str(n.target) in chained for n in nodes):
        return 0
    return _defer_where_users_are(nodes, (fused_conv_train,))


def _defer_where_users_are(nodes: list[fx.Node], targets: tuple[Callable[..., Any], ...]) -> int:
    """Gives each call of one of `targets` whose every user is one too `defer=True`; returns how
    many."""
    marked = 0
    for node in nodes:
        if node.op == "call_function" and node.target in targets and node.users and \
                all(u.op == "call_function" and u.target in targets for u in node.users):
            node.kwargs = {**node.kwargs, "defer": True}
            marked += 1
    return marked


class _Tracer(InplaceTracer):
    """torch.fx's tracer with clconv.torch's module classes (`classes`: converted convolutions,
    folded chains' BatchNorms and activations) as leaves, as torch.nn's own are, the submodules
    named in `whole` too (their forward writes their state: run as written), and `a += b`
    traced as the write it is (InplaceProxy)."""

    def __init__(self, classes: tuple[type, ...], whole: frozenset[str] = frozenset()) -> None:
        super().__init__(whole)
        self.classes = classes

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.classes) or hasattr(type(m), "_clconv_base") or \
            super().is_leaf_module(m, qualname)


def _as_call(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def call(a: Any, b: Any) -> Any:
        return op(a, b)
    call.__name__ = call.__qualname__ = f"augmented_{op.__name__}"
    return call


#: operator.iadd, ... as plain functions: fx generates `a += b; iadd = a` for operator.iadd,
#: which rebinds `a`: right for a tensor (written in place, every name sees it) but not for a
#: number (`n = x.size(0); m = n; n += 1`: m keeps the old value).
_AUGMENTED_CALLS = {op: _as_call(op) for op in AUGMENTED}


def _augmented_as_calls(graph: fx.Graph) -> None:
    for node in graph.nodes:
        if node.op == "call_function" and node.target in _AUGMENTED_CALLS:
            node.target = _AUGMENTED_CALLS[node.target]


#: Whether torch.fx traces now (the fused forward is no traceable code): the newer name, which
#: leaves torch.export out and does not warn, where torch has it.
_fx_tracing = getattr(fx._symbolic_trace, "is_fx_symbolic_tracing",
                      fx._symbolic_trace.is_fx_tracing)
#: Held while a fused forward is traced: torch.fx patches nn.Module calls and sets its tracing flag
#: process-wide for the trace, so a converted model called from another thread meanwhile waits.
_TRACE_LOCK = threading.RLock()
#: Module class -> whether clconv has an activation of it (activation_module: not None).
_ACTIVATION_CLASS: dict[type, bool] = {}
#: Traces a FusedForward keeps of each kind (one a module structure and train / eval state met).
_TRACES_KEPT = 8


def submodule(root: nn.Module, path: tuple[str, ...]) -> Any:
    """root's submodule at `path`, read from the modules' `_modules` tables (the attribute
    lookup falls back to nn.Module.__getattr__ at each step: ~4 us for a module 4 deep, two a
    fused chain); the attribute where a table lacks the name (its error, as the lookup's)."""
    m = root
    for name in path:
        child = m._modules.get(name)
        m = child if child is not None else getattr(m, name)
    return m


def _submodules_from_tables(src: str, graph: fx.Graph, model: nn.Module) -> str:
    """The generated forward's source with each submodule fetch (fx writes a get_attr or
    call_module node's module as `self.a.b` / getattr(..., "0") steps) as a `submodule` call,
    where every step is a module's child that no class on the way defines as an attribute (the
    lookup would find that first); the source as it is where fx writes the fetch otherwise."""
    try:
        from torch.fx.graph import _format_target
    except ImportError:  # (fx's own writer: the fetches stay as written)
        return src
    for node in graph.nodes:
        if node.op not in ("get_attr", "call_module") or not isinstance(node.target, str):
            continue
        path = tuple(node.target.split("."))
        m, plain = model, True
        for name in path:
            child = m._modules.get(name) if isinstance(m, nn.Module) else None
            if child is None or hasattr(type(m), name) or name in m.__dict__:
                plain = False
                break
            m = child
        call = "(" if node.op == "call_module" else ""
        old = f"\n    {node.name} = {_format_target('self', node.target)}{call}"
        if plain and src.count(old) == 1:
            src = src.replace(old, f"\n    {node.name} = clconv_submodule(self, {path!r}){call}")
    return src


class _Trace:
    """A fused forward's generated source and the names it reads beyond the fixed ones (fx's
    globals: modules kept by name), so that a copied or unpickled converted model makes its
    function again from them instead of tracing again: torch.fx patches nn.Module calls
    process-wide while it traces, so a first call's trace breaks other threads' module calls."""

    def __init__(self, source: str, filename: str, names: dict[str, Any]) -> None:
        self.source, self.filename = source, filename
        self.names = {k: ("module", v.__name__) if isinstance(v, type(np)) else ("value", v)
                      for k, v in names.items()}

    def function(self) -> Callable[..., Any]:
        """The forward (model, *args) this source defines; the function keeps this trace."""
        import importlib

        # An activation with no activation= name (threshold) is its Activation in the graph,
        # written out as its repr: the class (and non-finite parameters) must be in scope.
        # (a numpy scalar argument, F.layer_norm(..., eps=np.float64(0.1)), is written out as
        # numpy 2's repr)
        scope = {"Activation": Activation, "inf": math.inf, "nan": math.nan, "np": np,
                 "clconv_submodule": submodule}
        for k, (kind, v) in self.names.items():
            scope[k] = importlib.import_module(v) if kind == "module" else v
        exec(compile(self.source, self.filename, "exec"), scope)
        fn = scope["forward"]
        fn.clconv_trace = self
        return fn


def _portable(traces: dict[tuple[Any, ...], tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
    """`traces` with each function replaced by its _Trace, for pickling; a trace whose key or
    names do not pickle (a function of the user's forward defined inside another one) is left
    out (made again by tracing at the first call that needs it)."""
    import pickle

    kept = {}
    for key, (fn, *counts) in traces.items():
        entry = (None if fn is None else fn.clconv_trace, *counts)
        try:
            pickle.dumps((key, entry))
        except Exception:  # noqa: BLE001 - (any pickling failure: traced again)
            continue
        kept[key] = entry
    return kept


def _functions(traces: dict[tuple[Any, ...], tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
    """`_portable`'s inverse: each _Trace made a function again."""
    return {key: (None if t is None else t.function(), *counts)
            for key, (t, *counts) in traces.items()}


class FusedForward:
    """A converted model's `forward` (an instance attribute): a fused trace of the model's
    forward, the one for inference (eval mode, no_grad: `fused_conv`, `fused_max_pool`) or the
    one for autograd (`fused_conv_train`), else the model's class forward. Each trace is made by
    convert() (`prepare`) and again at a call after the model's modules changed (their classes,
    in module order, the activation modules' parameters, and their train / eval flags: a forward
    that reads `self.training`, as F.dropout(x, p, self.training), is traced with the flags it
    runs with; the traces of every such state met are kept). `fused` / `pools`: the inference
    trace's fused chains and max pools, `gates` its squeeze-excitation ops run by clconv
    (adaptive average pools, products of two tensors, and whole blocks as one
    `fused_squeeze_excitation` each, whose two chains `fused` does not count), `features` its
    other ops run by clconv
    (joins, average pools, BatchNorms of no fold, the steps of channels-last runs, sums),
    `deferred` of them waited for with a later one;
    `fused_train`: the autograd trace's chains, `deferred_train` of them waited for with a later
    one (clconv.torch_train._Deferred); `writers`: the last trace run's submodules kept whole, as
    their forward writes their Python state (clconv.torch_graph.tracing)."""

    def __init__(self, model: nn.Module, leaves: tuple[type, ...]) -> None:
        self.model, self.leaves = model, leaves
        # key (`_structure`) -> (forward or None, fused, pools, gates, features, deferred,
        # writers), one dict a trace kind
        self._traces: dict[tuple[Any, ...], tuple[Any, int, int, int, int, int, int]] = {}
        self._train_traces: dict[tuple[Any, ...], tuple[Any, int, int, int, int, int, int]] = {}
        self.fused = self.pools = self.gates = self.features = self.deferred = 0
        self.fused_train = self.deferred_train = self.writers = 0
        # (trace, input signature) pairs met: a new one's first forward lists its layers for
        # clconv.torch_prebuild
        self._met: set[tuple[Any, ...]] = set()
        self._building: Any = None  # a first autograd forward's helpers, still building
        self._pool = ResultPool()  # the inference forward's deferred results, reused

    def __getstate__(self) -> dict[str, Any]:
        # The traces as their sources (functions do not pickle); made again by __setstate__.
        return {**self._copied_state(), "_traces": _portable(self._traces),
                "_train_traces": _portable(self._train_traces)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for name in ("_traces", "_train_traces"):
            state[name] = _functions(state.get(name, {}))
        self.__dict__.update(state)

    def __deepcopy__(self, memo: dict[int, Any]) -> FusedForward:
        # The generated functions fetch every module from the model they are given: the copy
        # shares them (and traces nothing at its first call).
        import copy

        new = FusedForward.__new__(FusedForward)
        memo[id(self)] = new
        state = self._copied_state()
        state["model"] = copy.deepcopy(self.model, memo)
        new.__dict__.update(state, _traces=dict(self._traces),
                            _train_traces=dict(self._train_traces))
        return new

    def _copied_state(self) -> dict[str, Any]:
        """What a copy starts with besides the traces: the counts, no inputs met, no helpers
        building, an empty result pool."""
        return {"model": self.model, "leaves": self.leaves, "fused": self.fused,
                "pools": self.pools, "gates": self.gates, "features": self.features,
                "deferred": self.deferred, "fused_train": self.fused_train,
                "deferred_train": self.deferred_train, "_met": set(), "_building": None,
                "_pool": ResultPool()}

    def _structure(self, training: bool | None) -> tuple[Any, ...] | None:
        """The module classes in order with their train / eval flags (a forward may read
        `self.training`: the trace holds the value it read), an activation module's with its spec
        (the trace writes a fused activation's slope or bounds into the chain's node: another
        value is a new trace), or None when any module has forward hooks or backward hooks (for
        the autograd trace, `training` not False: a fused chain's backward calls none of its
        modules'). Modules in train mode do not refuse the inference trace (`training` False):
        its nodes check the modes they depend on at each call (a chain whose convolution or
        BatchNorm trains runs module by module, `fused_batch_norm` and the squeeze-excitation
        block likewise), and the modules it leaves to torch (dropout) run in their own mode."""
        key: list[Any] = []
        append = key.append
        # (model.modules()'s order and sharing, walked without its generators: this runs at
        # every call, ~10 us a hundred modules less)
        stack, seen = [self.model], set()
        inference = training is False
        while stack:
            m = stack.pop()
            if m is None or id(m) in seen:  # (an empty slot of _modules; a shared module)
                continue
            seen.add(id(m))
            flag = m.training
            if m._forward_hooks or m._forward_pre_hooks or \
                    (not inference and backward_hooked(m)):
                return None
            kind = type(m)
            acts = _ACTIVATION_CLASS.get(kind)
            if acts is None:  # (a parametrized module's class is its own: one answer a class)
                acts = _ACTIVATION_CLASS[kind] = activation_module(m) is not None
            append((kind, flag, activation_module(m)) if acts else (kind, flag))
            children = m._modules
            if children:
                stack.extend(reversed(children.values()))
        return tuple(key)

    def prepare(self) -> None:
        """Both traces made now (by convert(): a first call, maybe from several threads at once,
        then traces nothing; see _TRACE_LOCK): the autograd one with the modules' modes as they
        are, the inference one with every module in eval mode (its flags set for the trace and
        put back, without calling `eval()`, which a model may override)."""
        key = self._structure(None)
        if key is None:
            return
        self._traced(True, key)
        modules = list(self.model.modules())
        flags = [m.training for m in modules]
        try:
            for m in modules:
                m.training = False
            key = self._structure(False)
            if key is not None:
                self._traced(False, key)
        finally:
            for m, flag in zip(modules, flags):
                m.training = flag

    def _traced(self, training: bool, key: tuple[Any, ...]) -> Callable[..., Any] | None:
        """The fused forward for autograd (`training`) or inference, traced unless it was for
        `key` (checked again under _TRACE_LOCK: one thread traces, others wait)."""
        traces = self._train_traces if training else self._traces
        found = traces.get(key)
        if found is None:
            with _TRACE_LOCK:
                found = traces.get(key)
                if found is None:
                    if len(traces) >= _TRACES_KEPT:  # the oldest goes (a model swapping modules)
                        del traces[next(iter(traces))]
                    found = traces[key] = self._build(training)
        fn, fused, pools, gates, features, deferred, *writers = found
        self.writers = writers[0] if writers else 0  # (traces pickled before it counted them)
        if training:
            self.fused_train, self.deferred_train = fused, deferred
        else:
            self.fused, self.pools, self.gates, self.features, self.deferred = \
                fused, pools, gates, features, deferred
        return fn

    def _build(self, training: bool) -> tuple[Callable[..., Any] | None, int, int, int, int, int,
                                              int]:
        """(the fused forward or None where nothing fused, chains fused, max pools, gate ops and
        feature ops (cat, average pools, BatchNorms left, channels-last steps, sums) replaced
        (for inference), nodes deferred, submodules kept whole as they write their state)."""
        model = self.model
        try:
            # (under the autograd mode the trace runs in: a forward may read it; a submodule
            # writing its state runs as written, in torch, within the trace)
            with torch.set_grad_enabled(training), backward_hooks_set_aside(model), \
                    _untraceable_refused(training):
                graph, whole = trace_writers_whole(lambda w: _Tracer(self.leaves, w), model)
        except Exception:  # noqa: BLE001 - an untraceable forward runs as written
            return None, 0, 0, 0, 0, 0, 0
        modules = dict(model.named_modules())

        def is_conv(m: nn.Module) -> bool:
            return isinstance(m, self.leaves) and not isinstance(
                m, nn.modules.conv._ConvTransposeNd)
        if training:
            fused = fuse_graph(graph, modules, is_conv, fused_conv_train, trains_fused)
            # (max pooling stays torch's: its gradient needs the indices)
            pools = gates = features = 0
            deferred = _mark_deferred(graph)
            changed = fused
        else:
            _identities_removed(graph, modules)
            fused = fuse_graph(graph, modules, is_conv)
            # (ConvNeXt's blocks: no chain, channels-last runs between the convolutions)
            channels_last = _channels_last_to_clconv(graph, modules)
            if fused or channels_last:
                pools = _pools_to_clconv(graph, modules)
                gates = _gates_to_clconv(graph, modules)
                leaf = lambda m: isinstance(m, self.leaves)  # noqa: E731
                features = _features_to_clconv(graph, modules) + channels_last + \
                    _adds_to_clconv(graph, modules, leaf)
                fused += _lone_convs_to_clconv(graph, modules, leaf)
                # (a block's two chains, pool and product become one node)
                blocks = _squeeze_excitations_to_clconv(graph, modules)
                fused, gates = fused - 2 * blocks, gates - blocks
                _torch_layouts(graph)
                deferred = _mark_deferred_inference(graph, modules)
            else:
                pools = gates = features = deferred = 0
            changed = fused + features
        if not changed:
            return None, 0, 0, 0, 0, 0, 0
        graph.lint()
        _augmented_as_calls(graph)
        code = graph.python_code(root_module="self")
        name = "training" if training else "inference"
        trace = _Trace(_submodules_from_tables(code.src, graph, model),
                       f"<clconv fused {name} forward of {type(model).__name__}>", code.globals)
        return trace.function(), fused, pools, gates, features, deferred, len(whole)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        model = self.model
        if self._building is not None:  # (the helpers of a first training step's backward)
            building, self._building = self._building, None
            building.done(True)
        plain = type(model).forward
        if _fx_tracing():
            # this thread's own trace (the user's, or one of a model holding this one), or
            # clconv's in another thread: wait for that one to end
            with _TRACE_LOCK:
                tracing = _fx_tracing()
            if tracing:
                return plain(model, *args, **kwargs)
        grad = torch.is_grad_enabled()
        # (under torch.autocast the modules run one by one, each as torch's does there)
        if kwargs or torch.compiler.is_compiling() or torch.jit.is_tracing() or \
                global_hooks(backward=grad) or autocast_dtype("cpu") is not None:
            return plain(model, *args, **kwargs)
        key = self._structure(grad)
        if key is None:
            return plain(model, *args, **kwargs)
        fn = self._traced(grad, key)
        if fn is None:
            return plain(model, *args, **kwargs)
        first = None
        # (no shape pass where a module writes its state: it would see two calls)
        if (self.fused_train if grad else self.fused) >= MIN_LAYERS and not self.writers and \
                len(self._met) < SIGNATURES_KEPT:
            met = (id(fn), signature(args))
            if met not in self._met:
                self._met.add(met)
                first = first_forward(fn, model, args, key, grad)  # (kernels built alongside)
        ok = False
        # (a converted model inside another's forward: the outer one's pool again after it)
        outer = set_result_pool(None if grad else self._pool)
        pause_openmp(current_device())  # (torch's ops before this call: their idle workers)
        try:
            y = fn(model, *args)
            ok = True
            return y
        finally:
            flush_deferred()  # the deferred chains' results (and running statistics)
            set_result_pool(outer)
            if first is not None and grad and ok:
                self._building = first  # (building the backward's kernels: stopped at the
            elif first is not None:     # next call)
                first.done(ok)


def install(model: nn.Module, leaves: tuple[type, ...]) -> None:
    """Gives `model` (converted) the fused inference forward, unless it has a forward of its own
    as an attribute already or is itself one of the leaves."""
    if "forward" in model.__dict__ or isinstance(model, leaves) or \
            hasattr(type(model), "_clconv_base"):
        return
    fused = FusedForward(model, leaves)
    fused.prepare()
    model.forward = fused  # type: ignore[method-assign]
