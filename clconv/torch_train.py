"""clconv.torch.convert()'s fused training chains: with autograd on, a converted model's forward
runs its torch.fx trace (clconv.torch_fuse) with each conv -> [BatchNorm] -> [+ residual] ->
[activation] run of the data flow as one autograd Function whose forward and backward run on the
device: the convolution, BatchNorm (batch statistics in train mode, running statistics in eval
mode), the residual add and the activation; in backward the activation's, BatchNorm's and the
convolution's gradients. No torch op then runs between a network's convolutions: on few cores a
clconv launch that follows a torch op competes with torch's spinning OpenMP workers
(docs/performance.md), and the torch ops' own passes over the activations go too.

torch's semantics: BatchNorm's running statistics and num_batches_tracked updated as its forward
does (momentum, or the cumulative average for momentum=None; the unbiased variance), gradients
to the input, the residual and every parameter, a double backward refused as clconv.torch's
convolutions do. Activations are those whose gradient follows from their output (ReLU, ReLU6,
Hardtanh, LeakyReLU with a slope >= 0, Sigmoid, Tanh: `gradient_from_output`); a chain stops
before any other. What the kernels would compute differently runs module by module in torch:
see `trainable`."""

from __future__ import annotations

import functools
import math
import threading
import weakref
from typing import Any, Callable

import numpy as np
import pyopencl.array as cla
import torch
from torch import nn

from .ops.activation import Activation, normalize_activation
from .ops.channels import (
    batch_norm_plan,
    enqueue_batch_norm_backward,
    enqueue_bias_act,
    enqueue_channel_stats,
)
from .ops.unary import gradient_from_output, unary_plan
from .ops.conv import cached_conv_plan
from .ops.grad import cached_grad_plan, enqueue_bias_grad
from .ops.precision import plan_dtype
from .runtime.device import Device, current_device
from .runtime.memory import empty, rows_of
from .torch_ops import (ResultPool, conv_result_shape, first_order, layout_source, pause_openmp,
                        saved_tensors,
                        make_host_visible, module_padding, operand, result_operand, to_tensor,
                        uses_zero_copy, version_of)

_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def trains_fused(spec: Any, written: bool = False) -> bool:
    """Whether a chain may end with activation `spec` in training (None: no activation). The
    chain keeps its result for the activation's gradient, so where a later op writes that result
    in place (`written`) only the activations whose torch function keeps its output too (ReLU,
    Sigmoid, Tanh: torch's own in-place error then) fuse; ReLU6, Hardtanh, LeakyReLU and clamp
    keep their input in torch, which such a write leaves intact, so they run as torch's there."""
    if spec is None:
        return True
    if not gradient_from_output(spec):
        return False
    return not written or normalize_activation(spec).kind in ("relu", "sigmoid", "tanh")


def _device_operand(t: torch.Tensor, dev: Device, zero_copy: bool, kept: list[Any]) -> cla.Array:
    """t as a contiguous device array: over its memory where the device's memory is the host's,
    else uploaded. `kept` holds what must live until the kernels reading it are done."""
    c = t.contiguous()
    a = operand(c, dev, zero_copy)
    if not isinstance(a, cla.Array):
        a = cla.to_device(dev.queue, np.ascontiguousarray(a))
    kept.append((c, a))
    return a


class _Results:
    """New tensors written by the kernels: over the tensor's memory where the device's memory is
    the host's (made the tensors' by one wait for all of them: `sync`), else a pool array
    downloaded then."""

    def __init__(self, dev: Device, zero_copy: bool) -> None:
        self.dev, self.zero_copy = dev, zero_copy
        self._made: list[tuple[Any, cla.Array]] = []
        self._synced = 0  # how many of _made are synced

    def new(self, shape: tuple[int, ...], like: torch.Tensor, kept: bool = False) -> cla.Array:
        """A device array for a result of `shape` and `like`'s dtype. kept: only the forward's
        own clconv nodes read it (a deferred result): from the running inference forward's
        `ResultPool`, where one is set."""
        pool = _DEFERRED.pool if kept and self.zero_copy else None
        result = pool.result(shape, like, self.dev) if pool is not None else \
            result_operand(shape, like, self.dev, self.zero_copy)
        if result is None:
            arr = empty(self.dev, shape, plan_dtype(like.dtype))
            self._made.append((None, arr))
            return arr
        self._made.append(result)
        return result[1]

    def sync(self) -> None:
        """Makes the contents of every tensor made since the last sync the tensor's, with one
        wait for all of them (`make_host_visible`)."""
        pending = [a for t, a in self._made[self._synced:] if t is not None]
        self._synced = len(self._made)
        make_host_visible(self.dev, pending)

    def over_tensor(self, arr: cla.Array) -> bool:
        """Whether a `new` array is over a tensor's memory (not a pool array to download)."""
        for t, a in reversed(self._made):  # (asked of the latest: a forward's set grows)
            if a is arr:
                return t is not None
        return False

    def unsynced(self, arr: cla.Array) -> torch.Tensor:
        """The tensor over a `new` array's memory, its contents the kernels' only after the next
        `sync` (for a result that only the device reads until then)."""
        for t, a in reversed(self._made):  # (the latest last: a forward's set grows)
            if a is arr and t is not None:
                return t
        raise KeyError("not a result of this set over a tensor's memory")

    def tensor(self, arr: cla.Array, like: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor of a `new` array once its kernels are done (channels_last as `like`)."""
        made = self._made
        for i in range(len(made) - 1, -1, -1):  # (the latest last: a forward's set grows)
            t, a = made[i]
            if a is arr:
                if t is None:
                    return to_tensor(arr.get(), like)
                if i >= self._synced:
                    self.sync()
                return to_tensor(t, like)
        raise KeyError("not a result of this set")


class _Deferred(threading.local):
    """The results of a fused training forward's chains whose every user is another chain (the
    trace marks them `defer`; devices whose memory is the host's): not waited for at the chain's
    end but with the next chain's that is not deferred, or at the forward's end (`flush`), so
    that the host enqueues the next chains while the device computes, and one wait serves them
    all. `arrays`: the pending results' device arrays by (data pointer, shape, dtype), passed on
    to the chains that read them; `after`: what reads them on the host (the running statistics'
    update), run after the wait; `kept`: the deferred chains' operands (tensors such as a
    residual that nothing else holds, contiguous copies), alive until their kernels are done;
    `pool`: the running inference forward's ResultPool (None: new results)."""

    def __init__(self) -> None:
        self.results: _Results | None = None
        self.arrays: dict[tuple[int, tuple[int, ...], torch.dtype], cla.Array] = {}
        self.after: list[Callable[[], None]] = []
        self.kept: list[Any] = []
        self.pool: ResultPool | None = None


_DEFERRED = _Deferred()


def set_result_pool(pool: ResultPool | None) -> ResultPool | None:
    """Makes `pool` the one this thread's deferred results come from (None: new results each);
    returns the one before."""
    d = _DEFERRED
    before, d.pool = d.pool, pool
    return before


def joined_results(dev: Device, zero_copy: bool) -> _Results:
    """The set a chain's new results join: the deferred chains' when they are on `dev` (another
    device's are waited for first), else a new one."""
    d = _DEFERRED
    if d.results is not None and d.results.dev is not dev:
        flush_deferred()
    return d.results if d.results is not None else _Results(dev, zero_copy)


def deferred_array(t: torch.Tensor | None) -> cla.Array | None:
    """The device array a deferred chain writes `t` through (a chain reading t passes it on, as
    t's contents are not the kernels' yet), or None where t is no pending result."""
    d = _DEFERRED
    if t is None or d.results is None or not t.is_contiguous():
        return None
    return d.arrays.get((t.data_ptr(), tuple(t.shape), t.dtype))


def defer_result(results: _Results, out: cla.Array, kept: Any) -> torch.Tensor:
    """The tensor over `out` (a `results.new` array over a tensor's memory), not waited for: its
    contents are the kernels' after the next wait (`flush_deferred`, or a chain's that is not
    deferred); `kept` (the operands) lives until then."""
    d = _DEFERRED
    d.results = results
    t = results.unsynced(out)
    d.arrays[(t.data_ptr(), tuple(t.shape), t.dtype)] = out
    d.kept.append(kept)
    return t


def flush_deferred() -> None:
    """Waits for the deferred chains' kernels, making their results the tensors', then runs what
    was deferred after them (a no-op when nothing is pending)."""
    d = _DEFERRED
    results, after, kept = d.results, d.after, d.kept
    if results is None:
        return
    d.results, d.arrays, d.after, d.kept = None, {}, [], []
    results.sync()
    del kept  # (the operands, read now)
    for f in after:
        f()


class _ChainPlans:
    """The plans one chain runs for one input shape and dtype on one device (made once: a call
    runs them, skipping the functional API's argument handling): the convolution (with the
    activation and residual in its store when there is no BatchNorm), BatchNorm's normalisation,
    the activation's gradient without BatchNorm, and the input and weight gradients."""

    def __init__(self, dev: Device, conv: nn.Module, bn: nn.Module | None,
                 act: Activation | None, x_shape: tuple[int, ...], dtype: np.dtype,
                 has_bias: bool, has_residual: bool, has_gamma: bool, has_beta: bool) -> None:
        nd = len(conv.kernel_size)
        w_shape = tuple(conv.weight.shape)
        padding = module_padding(conv)
        self.shape = shape = conv_result_shape(x_shape, w_shape, conv.stride, padding,
                                               conv.dilation, conv.groups)
        self.channels, self.inner = shape[1], math.prod(shape[2:])
        conv_args = (conv.stride, padding, conv.dilation, conv.groups, conv.padding_mode)
        fused = bn is None  # activation and residual in the convolution's store
        self.conv = cached_conv_plan(
            dev, nd, x_shape, w_shape, (w_shape[0],) if has_bias else None, dtype,
            *conv_args, conv.algorithm, act if fused else None, None,
            shape if fused and has_residual else None)
        self.norm = None
        if bn is not None:
            norm_act = None if has_residual else act
            self.norm = batch_norm_plan(dev, shape, dtype, has_gamma, has_beta, bn.eps,
                                        norm_act)
        self.act_grad = None
        if bn is None and act is not None:
            self.act_grad = unary_plan(dev, act, shape, dtype)
        self.input_grad = cached_grad_plan(dev, "input_grad", nd, (x_shape, w_shape, shape),
                                           dtype, conv_args)
        self.weight_grad = cached_grad_plan(dev, "weight_grad", nd, (x_shape, w_shape, shape),
                                            dtype, conv_args)
        self._params: dict[tuple[Any, ...], tuple[torch.Tensor, cla.Array]] = {}

    def parameter(self, t: torch.Tensor | None, dev: Device, zero_copy: bool,
                  kept: list[Any]) -> cla.Array | None:
        """A parameter's (or buffer's) device array: over its memory on a host-memory device,
        kept while the tensor's storage and in-place version stay (the forward's serves the
        backward: a driver may copy a USE_HOST_PTR buffer's memory when it is made, so one made
        before an optimizer's step is not used after it), else as _device_operand makes it."""
        if t is None:
            return None
        version = version_of(t)
        if not zero_copy or not t.is_contiguous() or version is None:
            return _device_operand(t, dev, zero_copy, kept)
        key = (t.data_ptr(), tuple(t.shape), t.dtype, version)
        found = self._params.get(key)
        if found is None or found[0] is not t:
            a = operand(t, dev, True)
            if not isinstance(a, cla.Array):
                return _device_operand(t, dev, zero_copy, kept)
            if len(self._params) > 16:  # older versions: start again
                self._params.clear()
            found = self._params[key] = (t, a)
        return found[1]


#: conv module -> {key: _ChainPlans} (kept beside the module, not in it: plans do not pickle),
#: the _PLANS_KEPT keys (input shapes, devices) used last
_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], _ChainPlans]] = \
    weakref.WeakKeyDictionary()
_PLANS_KEPT = 16


def _plans(dev: Device, conv: nn.Module, bn: nn.Module | None, act: Activation | None,
           x: torch.Tensor, has_bias: bool, has_residual: bool, has_gamma: bool,
           has_beta: bool) -> _ChainPlans:
    # (the conv's settings too: a stride, padding or padding mode changed after a call is a
    # new chain, as torch reads them on each call)
    settings = tuple(tuple(v) if isinstance(v, list) else v for v in (
        conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode,
        getattr(conv, "algorithm", None)))
    key = (dev, tuple(x.shape), x.dtype, tuple(conv.weight.shape), id(bn), act, has_bias,
           has_residual, has_gamma, has_beta, None if bn is None else float(bn.eps), settings)
    found = _PLANS.setdefault(conv, {})
    plans = found.pop(key, None)  # (re-inserted last: the dict keeps the order of use)
    if plans is None:
        plans = _ChainPlans(dev, conv, bn, act, tuple(x.shape), _DTYPES[x.dtype], has_bias,
                            has_residual, has_gamma, has_beta)
        while len(found) >= _PLANS_KEPT:  # (multi-scale training meets many shapes)
            del found[next(iter(found))]
    found[key] = plans
    return plans


class ConvChainFunction(torch.autograd.Function):
    """out = act(bn(conv(x, weight, bias); gamma, beta) + residual) with its gradients, on the
    current device. bn None: no normalisation; batch_stats: BatchNorm on the batch's mean and
    biased variance (else its running statistics); momentum: the running statistics' update
    factor (None: no update)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                gamma: torch.Tensor | None, beta: torch.Tensor | None,
                residual: torch.Tensor | None, conv: nn.Module, bn: nn.Module | None,
                act: Activation | None, batch_stats: bool,
                momentum: float | None, defer: bool) -> torch.Tensor:
        dev = current_device()
        kept: list[Any] = []
        pause_openmp(dev)
        with dev:
            plans = _plans(dev, conv, bn, act, x, bias is not None, residual is not None,
                           gamma is not None, beta is not None)
            shape, channels, inner = plans.shape, plans.channels, plans.inner
            zc = uses_zero_copy(dev)
            # (a contiguous x: the result is not made channels_last, which would read it)
            defer = defer and zc and x.is_contiguous()
            results = joined_results(dev, zc)

            def put(t: torch.Tensor | None) -> cla.Array | None:
                if t is None:
                    return None
                found = deferred_array(t)  # a deferred chain's result: its array
                return found if found is not None else _device_operand(t, dev, zc, kept)

            def param(t: torch.Tensor | None) -> cla.Array | None:
                return plans.parameter(t, dev, zc, kept)
            xd, wd, bd, rd = put(x), param(weight), param(bias), put(residual)
            out = results.new(shape, x)
            y = mean = var = stats = None
            if bn is None:
                plans.conv.execute({"input": xd, "weight": wd, "bias": bd, "residual": rd}, out,
                                   check=False, events=False)
            else:
                # BatchNorm's input, kept for its gradient: a tensor where the device's memory
                # is the host's (saved for backward as torch saves its own: freed after it unless
                # retain_graph), else a device array of the pool held by ctx
                y = results.new(shape, x) if zc else empty(dev, shape, _DTYPES[x.dtype])
                plans.conv.execute({"input": xd, "weight": wd, "bias": bd, "residual": None}, y,
                                   check=False, events=False)
                if batch_stats:
                    # (into a tensor's memory where that is the device's: the running
                    # statistics' update reads it without a download)
                    stats = enqueue_channel_stats(dev, y, channels, inner, None, None, 0.0,
                                                  out=results.new((2, channels), x))
                    mean, var = rows_of(stats)
                else:
                    mean, var = param(bn.running_mean), param(bn.running_var)
                plans.norm.enqueue({"input": y, "running_mean": mean, "running_var": var,
                                    "weight": param(gamma), "bias": param(beta)}, out)
                if rd is not None:
                    enqueue_bias_act(dev, out, None, rd, act, channels, inner)
            update = bn is not None and batch_stats and momentum is not None
            if defer:
                result = defer_result(results, out, kept)
                stats_t = results.unsynced(stats) if stats is not None else None
                y_t = results.unsynced(y) if y is not None else None
                if update:
                    _DEFERRED.after.append(functools.partial(
                        _update_running_stats, bn, stats_t, shape[0] * inner, momentum))
            else:
                # (and every deferred result before it)
                result = results.tensor(out, layout_source(x, conv.padding_mode))
                stats_t = results.tensor(stats) if stats is not None else None
                y_t = results.tensor(y) if y is not None and zc else None
                flush_deferred()  # the earlier chains' statistics updates first (torch's order)
                if update:
                    _update_running_stats(bn, stats_t, shape[0] * inner, momentum)
        # The result only where backward reads it (the chain's own activation's gradient): a
        # chain that ends before an activation in place (BatchNorm -> SiLU(inplace=True)) may
        # have its result overwritten, as torch's BatchNorm output may.
        ctx.save_for_backward(x, weight, gamma, result if act is not None else None, y_t,
                              stats_t if zc else None)
        ctx.conf = (conv, bn, act, batch_stats, dev, plans)
        # without tensors over the device's memory: the device arrays (held until the graph goes)
        ctx.kept = None if zc else (y, mean, var)
        return result

    @staticmethod
    @first_order  # a double backward raises (its gradients are not differentiable)
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight, gamma, result, y_t, stats_t = saved_tensors(ctx)
        conv, bn, act, batch_stats, dev, plans = ctx.conf
        needs = ctx.needs_input_grad
        shape, channels, inner = plans.shape, plans.channels, plans.inner
        kept: list[Any] = []
        grads: list[Any] = [None] * 6
        pause_openmp(dev)
        with dev:
            zc = uses_zero_copy(dev)
            results = _Results(dev, zc)

            def put(t: torch.Tensor | None) -> cla.Array | None:
                return None if t is None else _device_operand(t, dev, zc, kept)
            gz = put(g)
            gamma_grad = beta_grad = None
            if bn is not None:
                if ctx.kept is not None:
                    y, mean, var = ctx.kept
                else:
                    y = put(y_t)
                    if stats_t is not None:
                        mean, var = rows_of(put(stats_t))
                    else:
                        mean, var = (plans.parameter(t, dev, zc, kept)
                                     for t in (bn.running_mean, bn.running_var))
                # the activation's gradient taken in BatchNorm's gradient passes
                through = results.new(shape, g) if needs[5] and act is not None else None
                gy, gamma_grad, beta_grad = enqueue_batch_norm_backward(
                    dev, gz, y, mean, var, plans.parameter(gamma, dev, zc, kept),
                    bn.eps, batch_stats,
                    channels, inner, activation=act,
                    output=None if act is None else put(result), grad_through=through,
                    weight_grad=results.new((channels,), g), bias_grad=results.new((channels,), g))
                gz = gz if through is None else through
            elif act is not None:
                through = results.new(shape, g) if needs[5] else empty(dev, shape, gz.dtype)
                gz = gy = plans.act_grad.backward(put(result), gz, from_output=True, out=through)
            else:
                gy = gz
            wd = plans.parameter(weight, dev, zc, kept)
            # (the gradients written into `out`: the arrays results.tensor knows)
            if needs[0]:
                gx = results.new(tuple(x.shape), x)
                plans.input_grad.execute({"weight": wd, "grad_output": gy}, gx, check=False,
                                           events=False)
            if needs[1]:
                gw = results.new(tuple(weight.shape), weight)
                plans.weight_grad.execute({"input": put(x), "grad_output": gy}, gw,
                                            check=False, events=False)
            if needs[2]:
                gb = results.new((channels,), g)
                enqueue_bias_grad(dev, gy, gb, shape[0], channels, inner)
                grads[2] = results.tensor(gb)
            if needs[0]:
                grads[0] = results.tensor(gx, x)
            if needs[1]:
                grads[1] = results.tensor(gw)
            if needs[3] and gamma_grad is not None:
                grads[3] = results.tensor(gamma_grad)
            if needs[4] and beta_grad is not None:
                grads[4] = results.tensor(beta_grad)
            if needs[5]:
                grads[5] = results.tensor(gz, g) if act is not None else g
        return (*grads, None, None, None, None, None, None)


def _update_running_stats(bn: nn.Module, stats: torch.Tensor, count: int,
                          momentum: float) -> None:
    """BatchNorm's running-statistics update from the batch's (mean, biased var) `stats` (2, C)
    of `count` values a channel, as torch's batch_norm does (the variance unbiased)."""
    mean = stats[0].to(bn.running_mean.dtype)
    var = stats[1].to(bn.running_var.dtype) * (count / (count - 1))
    with torch.no_grad():
        bn.running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(var, alpha=momentum)


def trainable(conv: nn.Module, bn: nn.Module | None, input: torch.Tensor,
              residual: torch.Tensor | None) -> bool:
    """Whether ConvChainFunction computes the chain as torch would: a batched input of the
    weights' floating dtype (float64 where the device has it), a residual of the result's shape
    and dtype, more than one value a channel for batch statistics (torch raises otherwise), and
    no transposed convolution."""
    nd = len(conv.kernel_size)
    dev = current_device()
    if not isinstance(input, torch.Tensor) or residual is not None and \
            not isinstance(residual, torch.Tensor):
        return False  # (the modules one by one: the conv's own error)
    if isinstance(conv, nn.modules.conv._ConvTransposeNd) or input.dim() != nd + 2 or \
            input.dtype not in _DTYPES or conv.weight.dtype != input.dtype or \
            (input.dtype == torch.float64 and not dev.fp64) or input.device.type != "cpu":
        return False
    params = [conv.bias] + ([] if bn is None else [bn.weight, bn.bias, bn.running_mean,
                                                   bn.running_var])
    if any(p is not None and p.dtype != input.dtype for p in params):
        return False
    try:
        shape = conv_result_shape(tuple(input.shape), tuple(conv.weight.shape), conv.stride,
                                  module_padding(conv), conv.dilation, conv.groups)
    except (TypeError, ValueError):
        return False
    if min(shape) < 1 or input.numel() == 0:
        return False
    if residual is not None and (residual.dtype != input.dtype or
                                 tuple(residual.shape) != shape):
        return False
    if bn is not None and _batch_stats(bn) and shape[0] * math.prod(shape[2:]) < 2:
        return False
    return True


def _batch_stats(bn: nn.Module) -> bool:
    """Whether BatchNorm normalises by the batch's statistics now (as its forward decides)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def run_chain(conv: nn.Module, bn: nn.Module | None, act: Activation | None,
              input: torch.Tensor, residual: torch.Tensor | None,
              defer: bool = False) -> torch.Tensor:
    """act(bn(conv(input)) + residual) by ConvChainFunction, with BatchNorm's bookkeeping
    (num_batches_tracked, the momentum) done as its forward does; `trainable` must hold.
    defer: only other chains read the result before `flush_deferred` (see _Deferred)."""
    batch_stats = bn is not None and _batch_stats(bn)
    momentum = None
    if bn is not None and bn.training and bn.track_running_stats:
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        momentum = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                    else float(bn.momentum))
    if bn is not None and (not bn.training or bn.running_mean is None):
        momentum = None  # no running statistics to update
    return ConvChainFunction.apply(
        input, conv.weight, conv.bias, None if bn is None else bn.weight,
        None if bn is None else bn.bias, residual, conv, bn, normalize_activation(act),
        batch_stats, momentum, defer)
