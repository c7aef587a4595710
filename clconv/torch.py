"""PyTorch integration (torch installed beside clconv: README's "Install without make or root"):
torch.nn convolutions computed by clconv.

    import torch, clconv.torch
    conv = clconv.torch.Conv2d(3, 16, 3, padding=1)     # a torch.nn.Conv2d in every respect...
    y = conv(torch.randn(8, 3, 32, 32))                  # ...whose forward and backward run on the
    y.sum().backward()                                   # current clconv device
    model = clconv.torch.convert(torchvision_model)      # a copy with every Conv*d swapped (and
                                                         # Conv->BN->act folded in eval mode)
    cm = clconv.torch.compile(model.eval(), example)     # the whole model on the device (inference)

`Conv1d/2d/3d` and `ConvTranspose1d/2d/3d` subclass torch.nn's modules: the same constructor
arguments, parameters, `state_dict` keys, initialisation (torch's own `reset_parameters`) and repr.
Only the convolution itself is replaced, by a `torch.autograd.Function` whose forward calls
clconv's functional ops (`clconv.conv2d`, `clconv.conv_transpose2d`, ...) and whose backward calls
clconv's gradients (`clconv.conv2d_input`, `clconv.conv2d_weight`; for a transposed convolution the
input gradient is the forward convolution of the output gradient). The work runs on
`clconv.current_device()` at forward time (the backward uses the same device); tensors must be on
torch's CPU, in float32 (float64/float16 where the device has them). Data crosses as numpy views of
the tensors (no copy into numpy); each call uploads its operands and downloads its result, except
on host-memory devices (below).
`module.algorithm` ('auto' by default) picks clconv's algorithm for forward convolutions.
A channels_last input to a 2-d convolution gives a channels_last result (as torch's; with
circular padding a contiguous one, as torch's);
`torch.jit.script` on these modules raises a RuntimeError saying it is not supported;
On devices whose memory is the host's (CL_DEVICE_HOST_UNIFIED_MEMORY: PoCL's CPU devices) a
forward's contiguous operands reach the device as USE_HOST_PTR buffers over the tensors' memory and
its result is written into the returned tensor's memory (no copies; CLCONV_TORCH_ZERO_COPY=0
copies instead).

convert() also folds each Conv -> BatchNorm (-> activation) chain (found by tracing the forward
with torch.fx; nn.Sequential runs where it cannot be traced): in eval mode under no_grad the
convolution computes the chain as one clconv convolution and the BatchNorm and activation pass
their input through; in train mode or with grad enabled every module runs on its own (torch's
semantics); the modules stay in place, so state_dict keys do not change (convert's docstring has
the details; the folding is clconv.torch_fold). In inference, weights stay on the device between
calls (clconv.torch_ops.fixed_operand).

`compile(model, example_input)` (clconv.torch_graph; docs/compile.md) is the inference path: the
whole model traced with torch.fx, BatchNorm folded, epilogues fused, and run on the device with one
upload per input and one download per output. `warmup(model, example_input)` is compile() plus a
call, for services. `backend` is a torch.compile backend on top of compile()
(`torch.compile(model.eval(), backend=clconv.torch.backend, dynamic=False)`, inference under
no_grad).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import pyopencl.array as cla
import torch
from torch import nn
from torch.nn.utils import parametrize

from .runtime.device import Device, current_device
from .torch_fold import chains_in_sequentials, chains_traced, fold_chains, folded_types
from .torch_fuse import install as install_fused_forward
from .torch_graph import CompiledModel, Fallback, FallbackWarning, backend, compile, warmup
from .torch_graph.base import unparametrized_type
from .torch_ops import (
    OPS,
    autocast_dtype,
    autocast_run,
    layout_source,
    NotScriptable,
    batched,
    conv_result_shape,
    first_order,
    saved_tensors,
    fixed_operand,
    host_result,
    module_padding,
    operand,
    pause_openmp,
    result_operand,
    synced,
    to_tensor,
    torch_runs,
    uses_zero_copy,
)

__all__ = [
    "CompiledModel",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvFunction",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "ConvTransposeFunction",
    "Fallback",
    "FallbackWarning",
    "backend",
    "compile",
    "convert",
    "warmup",
]


def _bias_grad(g: torch.Tensor) -> torch.Tensor:
    """Sum of grad_output (N, C, *spatial) over every dim but the channels."""
    return g.sum(dim=[0, *range(2, g.dim())])


class ConvFunction(torch.autograd.Function):
    """y = clconv.conv{nd}d(x, weight, bias, ...), with clconv's input and weight gradients.

    x is batched: (N, C_in, *spatial)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                nd: int, stride: Any, padding: Any, dilation: Any, groups: int,
                padding_mode: str, algorithm: str, dev: Device,
                fixed: bool = False) -> torch.Tensor:
        """fixed: no gradient will reach weight and bias (the caller's autograd is off or they
        do not require grad): they go to the device as copies kept between calls
        (clconv.torch_ops.fixed_operand)."""
        ctx.conf = (nd, stride, padding, dilation, groups, padding_mode)
        shape = conv_result_shape(tuple(x.shape), tuple(weight.shape), stride, padding, dilation)
        return _forward(ctx, x, weight, bias, dev, fixed, shape, lambda x_, w, b, out: OPS[nd][0](
            x_, w, b, stride, padding, dilation, groups, padding_mode=padding_mode,
            algorithm=algorithm, out=out), layout_source(x, padding_mode))

    @staticmethod
    @first_order  # a double backward raises (its gradients are not differentiable)
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        nd, stride, padding, dilation, groups, padding_mode = ctx.conf
        return _gradients(
            ctx, g,
            lambda x, w, gh, out, put: OPS[nd][1](
                tuple(x.shape), put(w), gh, stride, padding, dilation, groups,
                padding_mode=padding_mode, out=out),
            lambda x, w, gh, out, put: OPS[nd][2](
                put(x), tuple(w.shape), gh, stride, padding, dilation, groups,
                padding_mode=padding_mode, out=out))


class ConvTransposeFunction(torch.autograd.Function):
    """y = clconv.conv_transpose{nd}d(x, weight, bias, ...); its input gradient is the forward
    convolution of grad_y with the same weight, its weight gradient that convolution's weight
    gradient (grad_y as the convolution's input, x as its output gradient). x is batched."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                nd: int, stride: Any, padding: Any, output_padding: Any, groups: int,
                dilation: Any, algorithm: str, dev: Device,
                fixed: bool = False) -> torch.Tensor:
        """fixed: as ConvFunction's."""
        ctx.conf = (nd, stride, padding, groups, dilation, algorithm)
        shape = conv_result_shape(tuple(x.shape), tuple(weight.shape), stride, padding, dilation,
                                  groups, output_padding)
        return _forward(ctx, x, weight, bias, dev, fixed, shape, lambda x_, w, b, out: OPS[nd][3](
            x_, w, b, stride, padding, output_padding, groups, dilation, out=out), x)

    @staticmethod
    @first_order
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        nd, stride, padding, groups, dilation, algorithm = ctx.conf
        x, weight = saved_tensors(ctx)
        x_size = tuple(x.shape[2:])
        # The convolution of grad_y has floor(output_padding / stride) more positions than x
        # along a dim where output_padding >= stride (legal while < dilation): no input reached
        # them, so the input gradient drops them and x, as the weight gradient's grad_output,
        # gets zeros there.
        size = tuple((gs + 2 * p - d * (k - 1) - 1) // s + 1 for gs, p, d, k, s in zip(
            g.shape[2:], _nd_tuple(padding, nd), _nd_tuple(dilation, nd),
            weight.shape[2:], _nd_tuple(stride, nd)))
        extra = [n - m for n, m in zip(size, x_size)]

        def input_grad(x: torch.Tensor, w: torch.Tensor, gh: Any, out: Any,
                       put: Callable[[torch.Tensor], Any]) -> Any:
            if any(extra):  # computed whole, cropped on the host
                gx = host_result(OPS[nd][0](gh, put(w), None, stride, padding, dilation,
                                            groups, algorithm=algorithm))
                return gx[(..., *(slice(0, m) for m in x_size))]
            return OPS[nd][0](gh, put(w), None, stride, padding, dilation, groups,
                              algorithm=algorithm, out=out)

        def weight_grad(x: torch.Tensor, w: torch.Tensor, gh: Any, out: Any,
                        put: Callable[[torch.Tensor], Any]) -> Any:
            if any(extra):
                x = torch.nn.functional.pad(x, [v for e in reversed(extra) for v in (0, e)])
            return OPS[nd][2](gh, tuple(w.shape), put(x), stride, padding, dilation, groups,
                              out=out)
        return _gradients(ctx, g, input_grad, weight_grad)


def _nd_tuple(v: Any, nd: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * nd


def _forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             dev: Device, fixed: bool, shape: tuple[int, ...],
             conv: Callable[[Any, Any, Any, Any], Any],
             like: torch.Tensor | None) -> torch.Tensor:
    """The Functions' forward: saves what backward needs and returns `conv(x, weight, bias,
    out)` (on their device operands, on `dev`; `out` None or a device array of the result's
    `shape` over a new tensor's memory) as a tensor (channels_last as `like`: x, or None for
    a contiguous result)."""
    ctx.save_for_backward(x, weight)
    ctx.dev, ctx.has_bias = dev, bias is not None
    pause_openmp(dev)
    with dev:
        zc = uses_zero_copy(dev)
        w, b = _parameters(weight, bias, dev, zc, fixed)
        xd = operand(x, dev, zc)
        # the result written into a new tensor's memory where the input crossed so too
        result = result_operand(shape, x, dev, zc and isinstance(xd, cla.Array))
        y = conv(xd, w, b, None if result is None else result[1])
        y = host_result(y) if result is None else synced(result, dev)
    return to_tensor(y, like)


def _gradients(ctx: Any, g: torch.Tensor, input_grad: Callable[..., Any],
               weight_grad: Callable[..., Any]) -> tuple[Any, ...]:
    """The Functions' backward: (grad_x, grad_weight, grad_bias, None for the other arguments),
    grad_x = input_grad(x, weight, grad_output, out, put) and grad_weight = weight_grad(...) on
    the forward's device, each only when autograd needs it. grad_output, and what `put` makes
    of a tensor, are operands as `operand` makes them (no copies on host-memory devices); `out`
    is None or a device array over the gradient's new tensor (`result_operand`)."""
    x, weight = saved_tensors(ctx)
    gx = gw = gb = None
    dev = ctx.dev
    needs = ctx.needs_input_grad
    if g.numel() == 0:  # an empty output (a batch of 0, an output extent of 0): zeros, as torch
        gx, gw = (torch.zeros_like(t) if need else None for t, need in zip((x, weight), needs))
        gb = weight.new_zeros(g.shape[1]) if ctx.has_bias and needs[2] else None
        return (gx, gw, gb) + (None,) * (len(needs) - 3)
    pause_openmp(dev)
    with dev:
        zc = uses_zero_copy(dev)
        gh = operand(g.contiguous() if zc else g, dev, zc)
        # every operand a device array (as the results' out= needs), or the copying path
        in_place = zc and isinstance(gh, cla.Array)

        kept: list[Any] = []  # the operands put() made, alive until their kernels are done

        def put(t: torch.Tensor) -> Any:
            a = operand(t.contiguous() if in_place else t, dev, zc)
            if in_place and not isinstance(a, cla.Array):
                a = cla.to_device(dev.queue, np.ascontiguousarray(a))
            kept.append(a)  # over the memory of a tensor that may be a temporary (a padded x)
            return a

        def run(grad: Callable[..., Any], like: torch.Tensor) -> torch.Tensor:
            result = result_operand(tuple(like.shape), like, dev, in_place)
            y = grad(x, weight, gh, None if result is None else result[1], put)
            # (a transposed layer's cropped input gradient comes back as numpy, not in `out`)
            y = synced(result, dev) if result is not None and y is result[1] else host_result(y)
            kept.clear()
            return to_tensor(y)
        if ctx.needs_input_grad[0]:
            gx = run(input_grad, x)
        if ctx.needs_input_grad[1]:
            gw = run(weight_grad, weight)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = _bias_grad(g)
    return (gx, gw, gb) + (None,) * (len(ctx.needs_input_grad) - 3)


def _parameters(weight: torch.Tensor, bias: torch.Tensor | None, dev: Device, zero_copy: bool,
                fixed: bool) -> tuple[Any, Any]:
    """A forward's weight and bias operands: kept device copies when `fixed`, else as
    operand makes them (each call)."""
    if fixed:
        return fixed_operand(weight, dev), fixed_operand(bias, dev)
    return operand(weight, dev, zero_copy), operand(bias, dev, zero_copy)


def _fixed(*params: torch.Tensor | None) -> bool:
    """Whether no gradient can reach `params` from this forward (autograd off, or none of them
    requires grad)."""
    return not torch.is_grad_enabled() or not any(
        p is not None and p.requires_grad for p in params)



class _ClconvConv(NotScriptable):
    """The forward of clconv.torch.Conv1d/2d/3d (mixed into torch.nn.ConvNd subclasses)."""

    algorithm: str = "auto"

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        if torch_runs(input, type(self).__name__):  # a meta tensor: torch's shapes
            return super()._conv_forward(input, weight, bias)  # type: ignore[misc]
        low = autocast_dtype(input)
        if low is not None:  # (torch.autocast: its dtype's rounding, computed in float32)
            return autocast_run(low, self._conv_forward, input, weight, bias)
        nd = len(self.kernel_size)
        x, unbatched = batched(input, nd)
        # clconv pads natively for every padding_mode (torch pads with F.pad first, then runs an
        # unpadded convolution; the results are the same), by the amounts torch pads by.
        y = ConvFunction.apply(x, weight, bias, nd, self.stride, module_padding(self),
                               self.dilation, self.groups, self.padding_mode, self.algorithm,
                               current_device(), _fixed(weight, bias))
        return y[0] if unbatched else y


class _ClconvConvTranspose(NotScriptable):
    """The forward of clconv.torch.ConvTranspose1d/2d/3d (mixed into torch.nn.ConvTransposeNd)."""

    algorithm: str = "auto"

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for "
                             f"{type(self).__name__}")  # torch's own message and type
        if torch_runs(input, type(self).__name__):  # a meta tensor: torch's shapes
            return super().forward(input, output_size)  # type: ignore[misc]
        low = autocast_dtype(input)
        if low is not None:  # (torch.autocast: its dtype's rounding, computed in float32)
            return autocast_run(low, lambda x, w, b: self._transposed(x, w, b, output_size),
                                input, self.weight, self.bias)
        return self._transposed(input, self.weight, self.bias, output_size)

    def _transposed(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    output_size: list[int] | None) -> torch.Tensor:
        nd = len(self.kernel_size)
        x, unbatched = batched(input, nd)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, nd, self.dilation)
        y = ConvTransposeFunction.apply(x, weight, bias, nd, self.stride, self.padding,
                                        tuple(output_padding), self.groups, self.dilation,
                                        self.algorithm, current_device(), _fixed(weight, bias))
        return y[0] if unbatched else y


class Conv1d(_ClconvConv, nn.Conv1d):
    """torch.nn.Conv1d computed by clconv: (N, C_in, L) -> (N, C_out, L_out)."""


class Conv2d(_ClconvConv, nn.Conv2d):
    """torch.nn.Conv2d computed by clconv: (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""


class Conv3d(_ClconvConv, nn.Conv3d):
    """torch.nn.Conv3d computed by clconv: (N, C_in, D, H, W) -> (N, C_out, D', H', W')."""


class ConvTranspose1d(_ClconvConvTranspose, nn.ConvTranspose1d):
    """torch.nn.ConvTranspose1d computed by clconv."""


class ConvTranspose2d(_ClconvConvTranspose, nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d computed by clconv."""


class ConvTranspose3d(_ClconvConvTranspose, nn.ConvTranspose3d):
    """torch.nn.ConvTranspose3d computed by clconv."""


#: torch.nn type -> its clconv.torch counterpart (exact types only: a user's subclass of
#: torch.nn.Conv2d may have its own forward, which convert() must not replace).
SWAPS: dict[type, type] = {nn.Conv1d: Conv1d, nn.Conv2d: Conv2d, nn.Conv3d: Conv3d,
                           nn.ConvTranspose1d: ConvTranspose1d,
                           nn.ConvTranspose2d: ConvTranspose2d,
                           nn.ConvTranspose3d: ConvTranspose3d}

def _deepcopy(model: nn.Module) -> nn.Module:
    """copy.deepcopy(model), also for a model with torch.nn.utils.weight_norm (the old one), whose
    computed `weight` is a non-leaf tensor that deepcopy refuses (torch's PR 103001): such tensors
    are copied detached (the weight-norm hook computes them again at each forward anyway)."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for value in vars(m).values():
            if isinstance(value, torch.Tensor) and not value.is_leaf:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


_PARAMETRIZED_SWAPS: dict[tuple[type, type], type] = {}


def _swap_for(module: nn.Module) -> type | None:
    """The class convert() gives `module`: its SWAPS entry; for a parametrized convolution
    (torch.nn.utils.parametrize: weight_norm, spectral_norm) a class over both its parametrized
    class (whose `weight` computes the parametrized value, gradients reaching the originals) and
    the clconv.torch convolution (whose forward runs it); None: left as it is."""
    kind = type(module)
    swap = SWAPS.get(kind)
    if swap is not None or not parametrize.is_parametrized(module):
        return swap
    swap = SWAPS.get(unparametrized_type(kind))
    if swap is None:
        return None
    combined = _PARAMETRIZED_SWAPS.get((kind, swap))
    if combined is None:
        combined = _PARAMETRIZED_SWAPS[(kind, swap)] = type(
            f"Parametrized{swap.__name__}", (kind, swap), {"__module__": __name__})
    return combined


#: convert()'s folded types (clconv.torch_fold): clconv.torch conv type -> its folded type, torch
#: BatchNorm / activation type -> its pass-through type. Named as this module's classes and kept in
#: its namespace: compile() traces clconv.torch's modules as leaves, and pickle finds them here.
_FOLDED_CONVS, _PASS_THROUGH = folded_types(SWAPS.values(), __name__)
globals().update({t.__name__: t for t in (*_FOLDED_CONVS.values(), *_PASS_THROUGH.values())})


def convert(model: nn.Module, inplace: bool = False, *, fold: bool = True) -> nn.Module:
    """`model` (a copy unless inplace) with every torch.nn.Conv*d / ConvTranspose*d module made
    its clconv.torch counterpart, keeping parameters, buffers, hooks and training mode (only the
    module's class changes, so state_dict keys and optimizers built on the parameters of an
    in-place conversion stay valid). A model that is itself such a module is converted too.

    fold (default True): where a convolution's output goes only to its BatchNorm
    (BatchNorm1d/2d/3d with running statistics, as many features as the conv's output channels)
    and optionally that BatchNorm's only to an activation module (ReLU, ReLU6, Hardtanh, SiLU,
    GELU, Sigmoid, Tanh, Hardswish, Hardsigmoid, LeakyReLU, ELU, ...: compile's activation
    modules) -- as torch.fx traces of the
    forward in train and eval mode both show it, or, where the forward cannot be traced, as
    consecutive modules of an nn.Sequential -- the three compute as one when the model is in eval
    mode and autograd is off (torch.no_grad() / torch.inference_mode()): the convolution runs in
    clconv with the BatchNorm folded into its weight and bias (clconv.fold_batchnorm, remade
    whenever a weight or running statistic changed) and the activation in its kernel's store, and
    the BatchNorm and activation modules pass their input through. In train mode, or with grad
    enabled, these modules each compute their own step when called (BatchNorm's batch statistics
    and running-stat updates, gradients to every parameter; the fused training forward below
    computes the same). The modules stay where they are (only
    their classes change), so state_dict keys, checkpoints and optimizers are unaffected. Not
    folded: modules used more than once in the model or carrying hooks (an activation that is
    shared is left out of the chain, its BatchNorm still folds). Calling a folded conv on its own
    (`seq[0](x)`) in eval mode under no_grad gives the whole chain's result.

    With fold, the converted model also gets fused forwards (clconv.torch_fuse): in eval mode
    under no_grad its torch.fx trace runs with each conv -> [BatchNorm] -> [+ residual] ->
    [activation] of the data flow as one clconv convolution (ResNet's residual add and ReLU,
    MobileNetV2's skip, conv + activation without BatchNorm) and max pooling in clconv on
    host-memory devices; with grad enabled (training) each such run is one autograd Function
    computed forward and backward on the device (clconv.torch_train: BatchNorm on batch
    statistics with torch's running-stat updates in train mode, activations whose gradient follows
    from their output). Under no_grad the inference trace runs whatever the modules' modes (a
    chain whose BatchNorm trains runs module by module; dropout modules draw as torch's). The
    model's own forward runs with hooks and for a forward fx cannot trace (docs/compile.md).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert takes a torch.nn.Module, got {type(model).__name__}")
    model = model if inplace else _deepcopy(model)
    # Traced before the swap: torch.fx treats torch.nn's own modules as leaves.
    chains = chains_traced(model) if fold else None
    for module in model.modules():
        swap = _swap_for(module)
        if swap is not None:
            module.__class__ = swap
    if fold:
        fold_chains(model, chains_in_sequentials(model) if chains is None else chains,
                    _FOLDED_CONVS, _PASS_THROUGH)
        install_fused_forward(model, (_ClconvConv, _ClconvConvTranspose))
    return model
