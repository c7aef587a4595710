"""PyTorch integration (`pip install 'clconv[torch]'`): torch.nn convolutions computed by clconv.

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
the tensors (no copy into numpy); each call uploads its operands and downloads its result.
`module.algorithm` ('auto' by default) picks clconv's algorithm for forward convolutions.
A channels_last input to a 2-d convolution gives a channels_last result (as torch's);
`torch.jit.script` on these modules raises a RuntimeError saying it is not supported;
CLCONV_TORCH_ZERO_COPY=1 passes forward operands as USE_HOST_PTR buffers on devices whose memory
is the host's (opt-in: not measured faster).

convert() also folds each Conv -> BatchNorm (-> activation) chain (found by tracing the forward
with torch.fx; nn.Sequential runs where it cannot be traced): in eval mode under no_grad the
convolution computes the chain as one clconv convolution and the BatchNorm and activation pass
their input through; in train mode or with grad enabled every module runs on its own (torch's
semantics); the modules stay in place, so state_dict keys do not change (convert's docstring has
the details). In inference, weights stay on the device between calls (_fixed_operand).

`compile(model, example_input)` (clconv.torch_graph; docs/compile.md) is the inference path: the
whole model traced with torch.fx, BatchNorm folded, epilogues fused, and run on the device with one
upload per input and one download per output. `warmup(model, example_input)` is compile() plus a
call, for services. `backend` is a torch.compile backend on top of compile()
(`torch.compile(model.eval(), backend=clconv.torch.backend, dynamic=False)`, inference under
no_grad).
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import torch
from torch import fx, nn

from .ops.conv import conv1d, conv2d, conv3d
from .ops.fold import fold_batchnorm
from .ops.grad import (
    conv1d_input,
    conv1d_weight,
    conv2d_input,
    conv2d_weight,
    conv3d_input,
    conv3d_weight,
)
from .ops.plan import mark_constant
from .ops.transpose import conv_transpose1d, conv_transpose2d, conv_transpose3d
from .runtime import config
from .runtime.device import Device, current_device
from .torch_graph import (
    CompiledModel,
    Fallback,
    FallbackWarning,
    _act_module,
    backend,
    compile,
    warmup,
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


#: nd -> clconv's (forward, input gradient, weight gradient, transposed) functions.
_OPS = {1: (conv1d, conv1d_input, conv1d_weight, conv_transpose1d),
        2: (conv2d, conv2d_input, conv2d_weight, conv_transpose2d),
        3: (conv3d, conv3d_input, conv3d_weight, conv_transpose3d)}


def _host(t: torch.Tensor | None) -> np.ndarray | None:
    """A tensor's values as a numpy view (no copy); None stays None."""
    return None if t is None else t.detach().numpy()


#: Device -> whether its memory is the host's (CL_DEVICE_HOST_UNIFIED_MEMORY).
_UNIFIED: dict[Device, bool] = {}


def _zero_copy(dev: Device) -> bool:
    """Whether forward operands reach `dev` as USE_HOST_PTR buffers over the tensors' own memory
    instead of being copied: opt-in (CLCONV_TORCH_ZERO_COPY=1), on devices whose memory is the
    host's (CL_DEVICE_HOST_UNIFIED_MEMORY: PoCL's CPU devices). Off by default: on PoCL 3.1 (2
    cores, busy machine) it measured 12% faster on a ResNet-18 forward and 25% slower on a
    MobileNetV2 one, within that machine's noise (docs/compile.md)."""
    if not config.torch_zero_copy():
        return False
    found = _UNIFIED.get(dev)
    if found is None:
        try:
            found = bool(dev.cl_device.host_unified_memory)
        except cl.Error:
            found = False
        _UNIFIED[dev] = found
    return found


def _operand(t: torch.Tensor | None, dev: Device, zero_copy: bool) -> Any:
    """A forward operand: a device array over the tensor's memory (zero_copy, for contiguous
    tensors), else its numpy view (uploaded by the op)."""
    if t is None:
        return None
    a = t.detach().numpy()
    if not zero_copy or not a.flags.c_contiguous or a.size == 0 or not a.flags.aligned:
        return a
    buf = cl.Buffer(dev.context, cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR, hostbuf=a)
    return cla.Array(dev.queue, a.shape, a.dtype, data=buf)


#: id(tensor) -> (key, device copy, sample): the device copies of weights (see _fixed_operand);
#: an entry goes with its tensor.
_DEVICE_COPIES: dict[int, tuple[tuple[Any, ...], cla.Array, np.ndarray]] = {}
#: Elements compared on each call to notice writes that bypass the version counter (`.data`).
_SAMPLE = 64


def _sample(t: torch.Tensor) -> np.ndarray:
    """Up to _SAMPLE evenly spaced elements of `t`, copied (numpy: a tenth of torch's cost)."""
    flat = t.detach().numpy().reshape(-1)
    return flat[::max(1, flat.size // _SAMPLE)].copy()


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two samples are equal (NaN never is: such weights are uploaded every call)."""
    return a is b or (a is not None and b is not None and np.array_equal(a, b))


def _fixed_operand(t: torch.Tensor | None, dev: Device) -> Any:
    """A weight or bias that does not change from call to call (inference: no autograd through
    it), as a device copy kept with the tensor and reused while the tensor is unchanged: its
    storage, shape, in-place version counter (bumped by optimizers, load_state_dict and any
    in-place op) and a sample of its values (writes through `.data` bypass the counter) all the
    same. The copy is marked constant, so that plans keep what they derive from it (the packed
    filters): no upload and no packing per call. Inference tensors (no version counter) and
    empty ones go as numpy, uploaded by the op each call."""
    if t is None:
        return None
    version = _version(t)
    if version is None or t.numel() == 0:
        return _host(t)
    key = (dev, t.data_ptr(), version, t.dtype, tuple(t.shape), tuple(t.stride()))
    sample = _sample(t)
    found = _DEVICE_COPIES.get(id(t))
    if found is not None and found[0] == key and _same(found[2], sample):
        return found[1]
    copy_ = _upload_constant(t.detach().numpy(), dev)
    if found is None:
        weakref.finalize(t, _DEVICE_COPIES.pop, id(t), None)
    _DEVICE_COPIES[id(t)] = (key, copy_, sample)
    return copy_


def _upload_constant(a: np.ndarray, dev: Device) -> cla.Array:
    """`a` uploaded into a buffer of its own, marked constant (clconv.ops.plan.mark_constant)."""
    return mark_constant(cla.to_device(dev.queue, np.ascontiguousarray(a)))


def _result(y: Any) -> np.ndarray:
    """A forward's result as numpy (a device result is downloaded; that waits for the kernels,
    after which the operands' host memory is free again)."""
    return y.get() if isinstance(y, cla.Array) else y


def _tensor(a: np.ndarray, like: torch.Tensor | None = None) -> torch.Tensor:
    """A result as a tensor; in channels-last memory when the input `like` was (as torch's convs
    return a channels_last result for a channels_last input)."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    fmt = _channels_last_format(like) if like is not None else None
    return t if fmt is None else t.contiguous(memory_format=fmt)


def _channels_last_format(x: torch.Tensor) -> torch.memory_format | None:
    """torch.channels_last when a 4-d `x` is stored so (and not also plainly contiguous, as
    tensors with a single channel or pixel are), else None. torch's CPU convolutions keep
    channels_last for 2-d convolutions only (a channels_last_3d input to Conv3d gives a contiguous
    result), and so does clconv.torch."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return torch.channels_last
    return None


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
        (_fixed_operand)."""
        ctx.save_for_backward(x, weight)
        ctx.conf = (nd, stride, padding, dilation, groups, padding_mode, dev, bias is not None)
        with dev:
            zc = _zero_copy(dev)
            w, b = _parameters(weight, bias, dev, zc, fixed)
            y = _OPS[nd][0](_operand(x, dev, zc), w, b, stride, padding, dilation, groups,
                            padding_mode=padding_mode, algorithm=algorithm)
            y = _result(y)
        return _tensor(y, x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        nd, stride, padding, dilation, groups, padding_mode, dev, has_bias = ctx.conf
        gx = gw = gb = None
        gh = _host(g)
        with dev:
            if ctx.needs_input_grad[0]:
                gx = _tensor(_OPS[nd][1](tuple(x.shape), _host(weight), gh, stride, padding,
                                         dilation, groups, padding_mode=padding_mode))
            if ctx.needs_input_grad[1]:
                gw = _tensor(_OPS[nd][2](_host(x), tuple(weight.shape), gh, stride, padding,
                                         dilation, groups, padding_mode=padding_mode))
        if has_bias and ctx.needs_input_grad[2]:
            gb = _bias_grad(g)
        return (gx, gw, gb) + (None,) * (len(ctx.needs_input_grad) - 3)


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
        ctx.save_for_backward(x, weight)
        ctx.conf = (nd, stride, padding, groups, dilation, algorithm, dev, bias is not None)
        with dev:
            zc = _zero_copy(dev)
            w, b = _parameters(weight, bias, dev, zc, fixed)
            y = _OPS[nd][3](_operand(x, dev, zc), w, b, stride, padding, output_padding, groups,
                            dilation)
            y = _result(y)
        return _tensor(y, x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:
        x, weight = ctx.saved_tensors
        nd, stride, padding, groups, dilation, algorithm, dev, has_bias = ctx.conf
        gx = gw = gb = None
        gh = _host(g)
        with dev:
            if ctx.needs_input_grad[0]:
                gx = _tensor(_OPS[nd][0](gh, _host(weight), None, stride, padding, dilation,
                                         groups, algorithm=algorithm))
            if ctx.needs_input_grad[1]:
                gw = _tensor(_OPS[nd][2](gh, tuple(weight.shape), _host(x), stride, padding,
                                         dilation, groups))
        if has_bias and ctx.needs_input_grad[2]:
            gb = _bias_grad(g)
        return (gx, gw, gb) + (None,) * (len(ctx.needs_input_grad) - 3)


def _parameters(weight: torch.Tensor, bias: torch.Tensor | None, dev: Device, zero_copy: bool,
                fixed: bool) -> tuple[Any, Any]:
    """A forward's weight and bias operands: kept device copies when `fixed`, else as
    _operand makes them (each call)."""
    if fixed:
        return _fixed_operand(weight, dev), _fixed_operand(bias, dev)
    return _operand(weight, dev, zero_copy), _operand(bias, dev, zero_copy)


def _fixed(*params: torch.Tensor | None) -> bool:
    """Whether no gradient can reach `params` from this forward (autograd off, or none of them
    requires grad)."""
    return not torch.is_grad_enabled() or not any(
        p is not None and p.requires_grad for p in params)


def _batched(x: torch.Tensor, nd: int) -> tuple[torch.Tensor, bool]:
    """(x with a batch dim, whether it had none): unbatched inputs work as in torch."""
    if x.dim() == nd + 1:
        return x.unsqueeze(0), True
    return x, False


class _NotScriptable:
    """torch.jit.script refuses clconv.torch modules with a clear error (TorchScript cannot call
    the Python and OpenCL code their forward runs); torch.jit.script calls this hook on every
    module it compiles, submodules included."""

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(
            f"torch.jit.script does not support clconv.torch.{type(self).__name__}: its forward "
            f"runs clconv's OpenCL kernels from Python, which TorchScript cannot call. Script the "
            f"model before clconv.torch.convert (it then runs in torch), or for inference use "
            f"clconv.torch.compile(model, example_input).")


class _ClconvConv(_NotScriptable):
    """The forward of clconv.torch.Conv1d/2d/3d (mixed into torch.nn.ConvNd subclasses)."""

    algorithm: str = "auto"

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
        nd = len(self.kernel_size)
        x, unbatched = _batched(input, nd)
        # clconv pads natively for every padding_mode (torch pads with F.pad first, then runs an
        # unpadded convolution; the results are the same).
        y = ConvFunction.apply(x, weight, bias, nd, self.stride, self.padding, self.dilation,
                               self.groups, self.padding_mode, self.algorithm, current_device(),
                               _fixed(weight, bias))
        return y[0] if unbatched else y


class _ClconvConvTranspose(_NotScriptable):
    """The forward of clconv.torch.ConvTranspose1d/2d/3d (mixed into torch.nn.ConvTransposeNd)."""

    algorithm: str = "auto"

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for "
                             f"{type(self).__name__}")  # torch's own message and type
        nd = len(self.kernel_size)
        x, unbatched = _batched(input, nd)
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, nd, self.dilation)
        y = ConvTransposeFunction.apply(x, self.weight, self.bias, nd, self.stride, self.padding,
                                        tuple(output_padding), self.groups, self.dilation,
                                        self.algorithm, current_device(),
                                        _fixed(self.weight, self.bias))
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


# ---------------------------------------------------------------------------------------------------
# convert(): Conv -> BatchNorm -> activation in an nn.Sequential, folded and fused in eval mode.

class _Fold:
    """One folded chain: the conv, its BatchNorm and (or None) its activation, as they sit in their
    nn.Sequential. Not an nn.Module (so nothing is registered twice and state_dict keys do not
    change); the three modules each hold this object as `_clconv_fold`."""

    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module | None,
                 spec: Any) -> None:
        self.conv, self.bn, self.act, self.spec = conv, bn, act, spec
        self._key: tuple[Any, ...] | None = None
        self._samples: list[np.ndarray | None] = []
        self._folded: tuple[np.ndarray, np.ndarray] | None = None
        self._on_device: dict[Device, tuple[cla.Array, cla.Array]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Device copies stay behind (a copy or pickle of the model uploads its own).
        return {**self.__dict__, "_on_device": {}}

    def active(self) -> bool:
        """Whether the chain computes as one fused convolution now: conv and BatchNorm in eval
        mode, BatchNorm with running statistics, and no autograd (torch.no_grad() or
        torch.inference_mode()): with grad enabled the modules run one by one, so gradients reach
        the input and every parameter as in torch."""
        bn = self.bn
        return (not self.conv.training and not bn.training and not torch.is_grad_enabled()
                and bn.running_mean is not None and bn.running_var is not None)

    def weights(self, dev: Device) -> tuple[cla.Array, cla.Array]:
        """(weight, bias) with the BatchNorm folded in (clconv.fold_batchnorm, float64 on the
        host), on `dev`, marked constant (their packing is kept too); remade when a parameter or
        buffer changed: its storage or in-place version counter (an optimizer step,
        load_state_dict) or a sample of its values (writes through `.data`)."""
        conv, bn = self.conv, self.bn
        tensors = (conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias)
        key = tuple(None if t is None else (t.data_ptr(), _version(t), t.dtype, tuple(t.shape))
                    for t in tensors)
        samples = [None if t is None else _sample(t) for t in tensors]
        if key != self._key or self._folded is None or None in (k[1] for k in key if k) or \
                not all(map(_same, samples, self._samples)):
            w, b, mean, var, gamma, beta = (_host(t) for t in tensors)
            transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
            self._folded = fold_batchnorm(w, b, mean, var, gamma, beta, float(bn.eps),
                                          transposed=transposed,
                                          groups=conv.groups if transposed else 1)
            self._key, self._samples, self._on_device = key, samples, {}
        found = self._on_device.get(dev)
        if found is None:
            found = self._on_device[dev] = tuple(  # type: ignore[assignment]
                _upload_constant(a, dev) for a in self._folded)
        return found


def _version(t: torch.Tensor) -> int | None:
    """The tensor's in-place version counter; None for inference tensors (made under
    torch.inference_mode), which have none: their chain is folded on every call."""
    try:
        return t._version
    except RuntimeError:
        return None


class _FoldedConv(_NotScriptable):
    """A convolution of convert()'s folded chains: while `_clconv_fold.active()`, its forward is
    act(bn(conv(x))) as one clconv convolution (folded weights, activation in the kernel's store)
    and the BatchNorm and activation after it pass their input through; otherwise its own
    clconv.torch forward."""

    _clconv_fold: _Fold

    def forward(self, input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        fold = self._clconv_fold
        if args or kwargs or not fold.active():
            return super().forward(input, *args, **kwargs)
        nd = len(self.kernel_size)
        x, unbatched = _batched(input, nd)
        dev = current_device()
        transposed = isinstance(self, nn.modules.conv._ConvTransposeNd)
        with dev:
            operands = (_operand(x, dev, _zero_copy(dev)), *fold.weights(dev))
            if transposed:
                output_padding = self._output_padding(input, None, self.stride, self.padding,
                                                      self.kernel_size, nd, self.dilation)
                y = _OPS[nd][3](*operands, self.stride, self.padding, tuple(output_padding),
                                self.groups, self.dilation, activation=fold.spec)
            else:
                y = _OPS[nd][0](*operands, self.stride, self.padding, self.dilation, self.groups,
                                padding_mode=self.padding_mode, algorithm=self.algorithm,
                                activation=fold.spec)
            y = _tensor(_result(y), x)
        return y[0] if unbatched else y

    def _get_name(self) -> str:
        return self._clconv_base.__name__  # the class name before folding

    def extra_repr(self) -> str:
        fold = self._clconv_fold
        parts = [m._clconv_base.__name__ for m in (fold.bn, fold.act) if m is not None]
        return f"{super().extra_repr()}, folds={'+'.join(parts)} in eval mode"


class _PassThrough(_NotScriptable):
    """The BatchNorm or activation of a folded chain: its input unchanged while the chain is
    active (the convolution before it computed it), else its torch forward."""

    _clconv_fold: _Fold

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._clconv_fold.active():
            return input
        return super().forward(input)

    def _get_name(self) -> str:
        return self._clconv_base.__name__  # torch's class name, as before folding


def _folded_class(base: type, mixin: type) -> type:
    """`mixin` over `base`, a module-level class of this module (so pickle finds it)."""
    name = f"_Folded{base.__name__}"
    cls = type(name, (mixin, base), {"__module__": __name__, "__qualname__": name,
                                     "_clconv_base": base,
                                     "__doc__": f"{base.__name__} in a folded chain of "
                                                f"clconv.torch.convert."})
    globals()[name] = cls
    return cls


#: clconv.torch conv type -> its folded type; torch BatchNorm / activation type -> pass-through.
_FOLDED_CONVS: dict[type, type] = {t: _folded_class(t, _FoldedConv) for t in (
    Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d)}
_BATCHNORM_ND = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}
_PASS_THROUGH: dict[type, type] = {t: _folded_class(t, _PassThrough) for t in (
    *_BATCHNORM_ND, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU, nn.ELU)}


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or
                getattr(m, "_backward_pre_hooks", None))


def _chains_in_sequentials(model: nn.Module) -> list[tuple[nn.Module, ...]]:
    """(conv, BatchNorm[, activation]) runs of consecutive modules of the nn.Sequentials in
    `model`: in a Sequential each module's output goes to the next one only."""
    chains = []
    for seq in [m for m in model.modules() if type(m) is nn.Sequential]:
        items = list(seq)
        for i in range(len(items) - 1):
            chains.append(tuple(items[i:i + 3]))
    return chains


def _chains_traced(model: nn.Module) -> list[tuple[nn.Module, ...]] | None:
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
            graphs.append(fx.symbolic_trace(model).graph)
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


def _fold_chains(model: nn.Module, chains: list[tuple[nn.Module, ...]]) -> int:
    """Folds each (conv, BatchNorm[, activation]) of `chains` (modules of `model`, already
    converted) that qualifies; returns how many it folded."""
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    folded = 0
    for conv, bn, *rest in chains:
        fold_type = _FOLDED_CONVS.get(type(conv))
        if fold_type is None or type(bn) not in _BATCHNORM_ND:
            continue
        # Only modules used once, without hooks (a hook would see other values), whose
        # BatchNorm has running statistics for exactly the conv's output channels.
        if _BATCHNORM_ND[type(bn)] != len(conv.kernel_size) or bn.num_features != \
                conv.out_channels or not bn.track_running_stats or \
                any(uses[id(m)] != 1 or _hooked(m) for m in (conv, bn)):
            continue
        act = rest[0] if rest else None
        spec = _act_module(act) if act is not None and type(act) in _PASS_THROUGH else None
        if spec is None or uses[id(act)] != 1 or _hooked(act):
            act, spec = None, None
        fold = _Fold(conv, bn, act, spec)
        for m in (conv, bn) + ((act,) if act is not None else ()):
            m.__class__ = fold_type if m is conv else _PASS_THROUGH[type(m)]
            m._clconv_fold = fold
        folded += 1
    return folded


def convert(model: nn.Module, inplace: bool = False, *, fold: bool = True) -> nn.Module:
    """`model` (a copy unless inplace) with every torch.nn.Conv*d / ConvTranspose*d module made
    its clconv.torch counterpart, keeping parameters, buffers, hooks and training mode (only the
    module's class changes, so state_dict keys and optimizers built on the parameters of an
    in-place conversion stay valid). A model that is itself such a module is converted too.

    fold (default True): where a convolution's output goes only to its BatchNorm
    (BatchNorm1d/2d/3d with running statistics, as many features as the conv's output channels)
    and optionally that BatchNorm's only to an activation module (ReLU, ReLU6, Hardtanh, SiLU,
    GELU, Sigmoid, Tanh, Hardswish, Hardsigmoid, LeakyReLU, ELU) -- as torch.fx traces of the
    forward in train and eval mode both show it, or, where the forward cannot be traced, as
    consecutive modules of an nn.Sequential -- the three compute as one when the model is in eval
    mode and autograd is off (torch.no_grad() / torch.inference_mode()): the convolution runs in
    clconv with the BatchNorm folded into its weight and bias (clconv.fold_batchnorm, remade
    whenever a weight or running statistic changed) and the activation in its kernel's store, and
    the BatchNorm and activation modules pass their input through. In train mode, or with grad
    enabled, every module runs on its own exactly as before (BatchNorm's batch statistics and
    running-stat updates, gradients to every parameter). The modules stay where they are (only
    their classes change), so state_dict keys, checkpoints and optimizers are unaffected. Not
    folded: modules used more than once in the model or carrying hooks (an activation that is
    shared is left out of the chain, its BatchNorm still folds). Calling a folded conv on its own
    (`seq[0](x)`) in eval mode under no_grad gives the whole chain's result.
    """
    model = model if inplace else copy.deepcopy(model)
    # Traced before the swap: torch.fx treats torch.nn's own modules as leaves.
    chains = _chains_traced(model) if fold else None
    for module in model.modules():
        swap = SWAPS.get(type(module))
        if swap is not None:
            module.__class__ = swap
    if fold:
        _fold_chains(model, _chains_in_sequentials(model) if chains is None else chains)
    return model
