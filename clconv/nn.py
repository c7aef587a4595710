"""Layers with parameters on the device, a forward and a hand-written backward.

    layer = clconv.nn.Conv2d(1, 8, 3, padding=1)     # weight (8, 1, 3, 3), bias (8,) on the device
    y = layer(x)                                     # forward; keeps x for backward
    grad_x = layer.backward(grad_y)                  # fills layer.weight_grad, layer.bias_grad

    model = clconv.nn.Sequential(                    # a whole CNN, activations kept on the device
        nn.Conv2d(1, 16, 3, padding=1, activation="relu"), nn.MaxPool2d(2),
        nn.BatchNorm2d(16), nn.Flatten(), nn.Linear(16 * 14 * 14, 10))
    logits = model(x); grad_x = model.backward(grad_logits)

Besides the convolutions: Linear, MaxPool/AvgPool/AdaptiveAvgPool (1-3 d), AdaptiveMaxPool2d,
BatchNorm1d/2d/3d (batch statistics and running-stat updates in train(), running statistics in
eval()), the activation layers (ReLU, ReLU6, SiLU, GELU, Sigmoid, Tanh, Hardswish, Hardsigmoid,
LeakyReLU, ELU, Hardtanh), Flatten and Sequential (state_dict keys as torch.nn.Sequential's).
`activation=` on the convolution layers and Linear is fused into their store, in training too when
the output gives the activation's gradient (relu, relu6, leaky_relu, sigmoid, tanh, clamp); the
others run as a separate pass in training, where backward needs the activation's input.

Constructor arguments and default initialisation are torch.nn.ConvNd's / ConvTransposeNd's:
weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)), fan_in =
weight.shape[1] * prod(kernel). `device` is a clconv device spec (default: the current device),
`dtype` a numpy float dtype (default float32), `rng` a numpy Generator or seed for the
initialisation, `algorithm` one of clconv.ALGORITHMS for the forward convolution (for transposed
layers: for the convolution that computes their input gradient).

weight, bias, weight_grad and bias_grad are pyopencl Arrays on the layer's device that numpy and
torch convert (`np.asarray(layer.weight)`, `torch.as_tensor(layer.weight_grad)` download a copy);
`state_dict()` / `load_state_dict()` give and take numpy arrays (or torch tensors) under torch.nn's
keys ('weight', 'bias'), and `grad_dict()` the gradients under the same keys. Assigning a numpy
or pyopencl array of the right shape to weight/bias replaces it. forward/backward return numpy for
numpy arguments and device arrays for device arrays, as the functional ops do. backward uses the
input of the latest forward and overwrites the gradients (no accumulation across calls). float16
layers store half and compute in float32 (see clconv.ops.precision).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np
import pyopencl.array as cla

from .blas import clblast
from .blas.engine import gemm_engine
from .ops.activation import ActivationArg, normalize_activation
from .ops.conv import ALGORITHMS, ConvPlan
from .ops.elementwise import (
    BatchNormPlan,
    UnaryPlan,
    enqueue_batch_norm_backward,
    enqueue_channel_stats,
    enqueue_column_sums,
    flatten,
    gradient_from_output,
)
from .ops.geometry import PADDING_MODES, ConvGeometry, IntOrTuple, PaddingArg, as_tuple
from .ops.grad import InputGradPlan, WeightGradPlan, enqueue_bias_grad
from .ops.linear import LinearPlan
from .ops.plan import Plan, cached_plan
from .ops.pool import PoolPlan
from .ops.precision import check_precision, compute_dtype, convert, load, store
from .ops.transpose import TransposePlan, transpose_output_size
from .runtime.device import Device, current_device, device
from .runtime.errors import device_memory_errors, sizes_text
from .runtime.interop import host_convertible, host_operand
from .runtime.memory import empty
from .runtime.transfer import (
    ArrayLike,
    deliver,
    element_offset,
    is_device_array,
    result_dtype,
    to_device,
)

__all__ = [
    "ELU",
    "GELU",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPool3d",
    "AdaptiveMaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Flatten",
    "Hardsigmoid",
    "Hardswish",
    "Hardtanh",
    "LeakyReLU",
    "Linear",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "Module",
    "ReLU",
    "ReLU6",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Tanh",
]


def __dir__() -> list[str]:
    # dir(clconv.nn) (and tab completion) shows the layers, not the modules nn imports.
    return sorted(__all__)


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


class Module:
    """What every clconv.nn layer shares: train()/eval() (as torch.nn.Module's `training` flag),
    calling the layer runs `forward`, and empty parameter lists for the layers without any."""

    training: bool = True

    def train(self, mode: bool = True) -> Module:
        """Training mode (BatchNorm uses batch statistics; activations stay separate so that
        backward has their input); returns self."""
        if not isinstance(mode, bool):
            raise TypeError(f"mode must be a bool, got {mode!r}")
        self.training = mode
        return self

    def eval(self) -> Module:
        """Evaluation mode: train(False)."""
        return self.train(False)

    def __call__(self, *args: Any, **kwargs: Any) -> ArrayLike:
        return self.forward(*args, **kwargs)

    def forward(self, input: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def parameters(self) -> list[cla.Array]:
        return []

    def gradients(self) -> list[cla.Array | None]:
        return []

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def grad_dict(self) -> dict[str, np.ndarray | None]:
        return {}

    def load_state_dict(self, state: Any, strict: bool = True) -> tuple[list[str], list[str]]:
        unexpected = list(state)
        if strict and unexpected:
            raise ValueError(f"load_state_dict for {type(self).__name__}: unexpected keys "
                             f"{unexpected} (it has no parameters)")
        return [], unexpected


class _Layer(Module):
    """What every convolution layer shares: parameters on a device, dtype rules, saved input."""

    nd: int = 2
    transposed: bool = False
    activation: Any = None  # a normalised clconv.ops.activation.Activation, or None
    _pre: cla.Array | None = None  # the pre-activation output of the latest training forward
    _out: cla.Array | None = None  # the output, when it alone gives the activation's gradient

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple,
                 stride: IntOrTuple, padding: PaddingArg, dilation: IntOrTuple, groups: int,
                 bias: bool, padding_mode: str, device_spec: Any, dtype: Any, rng: Any,
                 algorithm: str) -> None:
        nd = self.nd
        self.in_channels = _positive_int(in_channels, "in_channels")
        self.out_channels = _positive_int(out_channels, "out_channels")
        self.groups = _positive_int(groups, "groups")
        if self.in_channels % self.groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by groups ({groups})")
        if self.out_channels % self.groups:
            raise ValueError(f"out_channels ({out_channels}) must be divisible by groups "
                             f"({groups})")
        self.kernel_size = as_tuple(kernel_size, nd, "kernel_size", 1)
        self.stride = as_tuple(stride, nd, "stride", 1)
        self.dilation = as_tuple(dilation, nd, "dilation", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be an int, a tuple of ints, 'same' or 'valid', got "
                                 f"{padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"padding='same' is not supported for strided convolutions "
                                 f"(stride={self.stride})")
            self.padding: tuple[int, ...] | str = padding
        else:
            self.padding = as_tuple(padding, nd, "padding", 0)
        if not isinstance(padding_mode, str) or padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if self.transposed and padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' for a transposed convolution layer, "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        self.algorithm = algorithm
        self.device: Device = current_device() if device_spec is None else device(device_spec)
        self.dtype = np.dtype(np.float32 if dtype is None else dtype)
        self._work = compute_dtype(self.dtype)
        result_dtype(self.device, dtype=np.empty(0, self.dtype))  # UnsupportedError before any work
        check_precision(self.device, self.dtype)

        if self.transposed:
            shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        else:
            shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        fan_in = shape[1] * math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self._weight = self._upload(gen.uniform(-bound, bound, shape), "weight", shape)
        self._bias = (self._upload(gen.uniform(-bound, bound, self.out_channels), "bias",
                                   (self.out_channels,)) if bias else None)
        self.weight_grad: cla.Array | None = None
        self.bias_grad: cla.Array | None = None
        self._saved: tuple[Any, ...] | None = None


    # -- parameters ---------------------------------------------------------------------------
    def _upload(self, value: Any, name: str, shape: tuple[int, ...]) -> cla.Array:
        got = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
        if got != shape:
            raise ValueError(f"{name} must have shape {shape}, got {got}")
        if isinstance(value, cla.Array):
            if value.dtype != self.dtype:
                raise TypeError(f"{name} has dtype {value.dtype}; this layer's dtype is "
                                f"{self.dtype}")
            return to_device(value, self.device, name, self.dtype)
        return to_device(np.asarray(value, dtype=self.dtype), self.device, name, self.dtype)

    @property
    def weight(self) -> cla.Array:
        """The weight on the device: (C_out, C_in/groups, *kernel), or (C_in, C_out/groups, *kernel)
        for a transposed convolution. `np.asarray(layer.weight)` downloads it as numpy."""
        return host_convertible(self._weight)

    @weight.setter
    def weight(self, value: ArrayLike) -> None:
        self._weight = self._upload(value, "weight", tuple(self._weight.shape))

    @property
    def bias(self) -> cla.Array | None:
        """The bias (C_out,) on the device, or None. `np.asarray(layer.bias)` downloads it."""
        return host_convertible(self._bias)

    @bias.setter
    def bias(self, value: ArrayLike | None) -> None:
        if value is None or self._bias is None:
            raise ValueError("bias can be replaced by an array of the same shape, not added or "
                             "removed (construct the layer with bias=True/False)")
        self._bias = self._upload(value, "bias", (self.out_channels,))

    def parameters(self) -> list[cla.Array]:
        """[weight, bias] (bias only when the layer has one)."""
        return [self.weight] + ([self.bias] if self._bias is not None else [])

    def gradients(self) -> list[cla.Array | None]:
        """[weight_grad, bias_grad], matching `parameters()` (None before the first backward)."""
        return [self.weight_grad] + ([self.bias_grad] if self._bias is not None else [])

    @property
    def weight_grad(self) -> cla.Array | None:
        """The latest backward's weight gradient on the device (the weight's shape), or None
        before the first backward. `np.asarray(layer.weight_grad)` downloads it."""
        return self.__dict__.get("_weight_grad_value")

    @weight_grad.setter
    def weight_grad(self, value: cla.Array | None) -> None:
        self.__dict__["_weight_grad_value"] = host_convertible(value)

    @property
    def bias_grad(self) -> cla.Array | None:
        """The latest backward's bias gradient (C_out,) on the device, or None."""
        return self.__dict__.get("_bias_grad_value")

    @bias_grad.setter
    def bias_grad(self, value: cla.Array | None) -> None:
        self.__dict__["_bias_grad_value"] = host_convertible(value)

    # -- numpy in and out, by torch.nn's names -------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """{'weight': ..., 'bias': ...} as numpy copies, torch.nn.ConvNd's keys and shapes ('bias'
        only when the layer has one), so `torch_conv.load_state_dict({k: torch.from_numpy(v) ...})`
        loads them."""
        state = {"weight": self._weight.get()}
        if self._bias is not None:
            state["bias"] = self._bias.get()
        return state

    def grad_dict(self) -> dict[str, np.ndarray | None]:
        """The latest backward's gradients under the same keys as `state_dict()`, as numpy copies
        (None before the first backward)."""
        grads = {"weight": self.weight_grad, "bias": self.bias_grad}
        return {k: (None if g is None else g.get()) for k, g in grads.items()
                if k == "weight" or self._bias is not None}

    def load_state_dict(self, state: Any, strict: bool = True) -> tuple[list[str], list[str]]:
        """Loads 'weight' and 'bias' (torch.nn's keys) from numpy arrays, torch tensors (a
        torch.nn.Conv2d's `state_dict()`) or device arrays.

        Shapes must equal the layer's (ValueError naming the key); values must be floating point
        (TypeError) and are converted to the layer's dtype, as torch's load_state_dict copies them.
        strict: missing or unexpected keys are a ValueError; otherwise they are skipped and returned
        as (missing, unexpected). Nothing is replaced unless every entry is valid.
        """
        expected = ["weight"] + (["bias"] if self._bias is not None else [])
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                             f"unexpected keys {unexpected} (expected exactly {expected})")
        values = {}
        for key in (k for k in expected if k in state):
            value = state[key]
            if not isinstance(value, cla.Array):
                value = np.asarray(host_operand(value, f"state[{key!r}]"))
            shape = tuple(self._weight.shape) if key == "weight" else (self.out_channels,)
            if tuple(value.shape) != shape:
                raise ValueError(f"state[{key!r}] has shape {tuple(value.shape)}; "
                                 f"{type(self).__name__}'s {key} has shape {shape}")
            if np.dtype(value.dtype).kind != "f":
                raise TypeError(f"state[{key!r}] has dtype {value.dtype}; parameters are floating "
                                f"point (this layer's dtype is {self.dtype})")
            if isinstance(value, cla.Array) and value.dtype != self.dtype:
                value = value.get()
            values[key] = value if isinstance(value, cla.Array) else value.astype(self.dtype)
        for key, value in values.items():
            setattr(self, key, value)  # the weight/bias setters upload and check the context
        return missing, unexpected

    # -- helpers ------------------------------------------------------------------------------
    def _in_work(self, a: cla.Array) -> cla.Array:
        """A device array of the layer's dtype in the compute dtype (float32 for float16)."""
        return a if a.dtype == self._work else convert(self.device, a, self._work)

    def _param(self, name: str) -> cla.Array | None:
        """weight or bias in the compute dtype. Converted on every call (float16 layers only; for
        the others it is the array itself): optimizers update parameters in place
        (`p -= lr * g` on `layer.parameters()`), which no cached conversion would see."""
        value = self._weight if name == "weight" else self._bias
        return None if value is None else self._in_work(value)

    def _plan(self, kind: str, make: Any, *key: Any) -> Plan:
        """A plan of the layer's device cache (shared with the functional API's)."""
        return cached_plan(self.device, (kind, "nn", type(self).__name__, *key), make)

    def _operand(self, value: ArrayLike, name: str) -> tuple[cla.Array, bool]:
        """(value batched on the device in the compute dtype, whether it was unbatched)."""
        result_dtype(self.device, **{name: value, "weight": self._weight})
        shape = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
        if len(shape) not in (self.nd + 1, self.nd + 2):
            raise ValueError(f"{name} must have {self.nd + 1} (unbatched) or {self.nd + 2} "
                             f"(batched) dims for {type(self).__name__}, got shape {shape}")
        a = self._in_work(to_device(value, self.device, name, self.dtype))
        unbatched = len(shape) == self.nd + 1
        return (a.reshape((1, *shape)) if unbatched else a), unbatched

    def _result(self, out: cla.Array, unbatched: bool, as_host: bool) -> ArrayLike:
        out = store(self.device, out, self.dtype)
        return deliver(out[0] if unbatched else out, as_host)

    def forward(self, input: ArrayLike) -> ArrayLike:
        raise NotImplementedError

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output (same shape as the latest forward's output) -> grad_input; also sets
        `weight_grad` and `bias_grad` (device arrays of the parameters' shapes)."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward call first (it "
                               f"uses that call's input)")
        x, geo, out_shape = self._saved
        if gemm_engine(self.device) is clblast:  # before grad_output is uploaded
            clblast.require(f"{type(self).__name__}.backward")
        with self.device:
            g, g_unbatched = self._operand(grad_output, "grad_output")
            if tuple(g.shape) != out_shape:
                raise ValueError(f"grad_output must have the shape of the latest forward's output "
                                 f"{out_shape}, got {tuple(g.shape)}")
            if self.activation is not None:  # through the fused activation first
                g = _activation_grad(self, g)
            grad_input, weight_grad = self._backward(geo, x, g, self._param("weight"))
            if self._bias is not None:
                what = sizes_text(f"{type(self).__name__}.backward (bias gradient)", self._work,
                                  grad_output=tuple(g.shape))
                with device_memory_errors(self.device, what):
                    bias_grad = empty(self.device, (self.out_channels,), self._work)
                    enqueue_bias_grad(self.device, g, bias_grad, g.shape[0], self.out_channels,
                                      math.prod(g.shape[2:]))
                self.bias_grad = store(self.device, bias_grad, self.dtype)
            self.weight_grad = store(self.device, weight_grad, self.dtype)
            return self._result(grad_input, g_unbatched, not is_device_array(grad_output))

    def _backward(self, geo: ConvGeometry, x: cla.Array, g: cla.Array,
                  w: cla.Array) -> tuple[cla.Array, cla.Array]:
        raise NotImplementedError

    def _weight_grad(self, geo: ConvGeometry, conv_input: cla.Array,
                     conv_grad_output: cla.Array) -> cla.Array:
        """The forward convolution `geo`'s weight gradient (zeros for an empty batch)."""
        w_shape = tuple(self._weight.shape)
        plan = self._plan("weight_grad", lambda: WeightGradPlan(
            self.device, self.nd, geo.input_shape, w_shape, geo.output_shape, geo.stride, 0,
            geo.dilation, geo.groups, geo.padding_mode, self._work, geometry=geo),
            geo, w_shape, self._work)
        return plan(conv_input, conv_grad_output)

    def _describe(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}",
                 f"stride={self.stride}"]
        if self.padding != (0,) * self.nd:
            parts.append(f"padding={self.padding!r}")
        if self.dilation != (1,) * self.nd:
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self._bias is None:
            parts.append("bias=False")
        if self.padding_mode != "zeros":
            parts.append(f"padding_mode={self.padding_mode!r}")
        if self.dtype != np.float32:
            parts.append(f"dtype={self.dtype.name}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"


class _ConvNd(_Layer):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple,
                 stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device: Any = None, dtype: Any = None, *, rng: Any = None,
                 algorithm: str = "auto", activation: ActivationArg = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype, rng, algorithm)
        self.activation = normalize_activation(activation)

    def forward(self, input: ArrayLike) -> ArrayLike:
        """input (N, C_in, *spatial) or unbatched (C_in, *spatial) -> (N, C_out, *out)."""
        if self.algorithm in ("im2col", "winograd"):  # before the input is uploaded
            clblast.require(f"{type(self).__name__} with algorithm={self.algorithm!r}")
        with self.device:
            x, unbatched = self._operand(input, "input")
            out = _with_activation(self, lambda fused: self._conv(x, fused))
            return self._result(out, unbatched, not is_device_array(input))

    def _recompute_pre(self) -> cla.Array:
        """The pre-activation output of the latest forward (run again when it was fused)."""
        assert self._saved is not None
        return self._conv(self._saved[0], fused=False)

    def _conv(self, x: cla.Array, fused: bool) -> cla.Array:
        """The convolution of x (batched, on the device, compute dtype), with the layer's
        activation fused into its store when `fused`; saves what backward needs."""
        act = self.activation if fused else None
        w_shape, x_shape = tuple(self._weight.shape), tuple(x.shape)
        b_shape = None if self._bias is None else (self.out_channels,)
        plan = self._plan("conv", lambda: ConvPlan(
            self.device, self.nd, x_shape, w_shape, b_shape, self.stride, self.padding,
            self.dilation, self.groups, self.padding_mode, self.algorithm, act, None,
            self._work), x_shape, w_shape, b_shape, self._work, self.stride, self.padding,
            self.dilation, self.groups, self.padding_mode, self.algorithm, act)
        out = plan(x, self._param("weight"), self._param("bias"))
        self._saved = (x, plan.geometry, plan.geometry.output_shape)
        return out

    def _backward(self, geo: ConvGeometry, x: cla.Array, g: cla.Array,
                  w: cla.Array) -> tuple[cla.Array, cla.Array]:
        w_shape = tuple(w.shape)
        plan = self._plan("input_grad", lambda: InputGradPlan(
            self.device, self.nd, geo.input_shape, w_shape, geo.output_shape, geo.stride, 0,
            geo.dilation, geo.groups, geo.padding_mode, self._work, geometry=geo),
            geo, w_shape, self._work)
        return plan(w, g), self._weight_grad(geo, x, g)


class _ConvTransposeNd(_Layer):
    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrTuple,
                 stride: IntOrTuple = 1, padding: IntOrTuple = 0, output_padding: IntOrTuple = 0,
                 groups: int = 1, bias: bool = True, dilation: IntOrTuple = 1,
                 padding_mode: str = "zeros", device: Any = None, dtype: Any = None, *,
                 rng: Any = None, algorithm: str = "auto",
                 activation: ActivationArg = None) -> None:
        if isinstance(padding, str):
            raise TypeError(f"padding must be an int or a sequence of {self.nd} ints for a "
                            f"transposed convolution, got {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype, rng, algorithm)
        self.activation = normalize_activation(activation)
        self.output_padding = as_tuple(output_padding, self.nd, "output_padding", 0)
        if any(op >= s and op >= d for op, s, d in zip(self.output_padding, self.stride,
                                                       self.dilation)):
            raise ValueError(f"output_padding {self.output_padding} must be smaller than either "
                             f"stride {self.stride} or dilation {self.dilation} in every dim")

    def _output_padding(self, in_size: tuple[int, ...], output_size: Any) -> tuple[int, ...]:
        """output_padding that gives `output_size` (spatial, or with batch/channel dims), as
        torch.nn.ConvTransposeNd.forward's output_size argument."""
        if output_size is None:
            return self.output_padding
        size = tuple(int(v) for v in output_size)
        if len(size) in (self.nd + 1, self.nd + 2):
            size = size[-self.nd:]
        if len(size) != self.nd:
            raise ValueError(f"output_size must have {self.nd} (spatial) or {self.nd + 2} entries, "
                             f"got {tuple(output_size)}")
        smallest = transpose_output_size(in_size, self.kernel_size, self.stride, self.padding,
                                         (0,) * self.nd, self.dilation)
        largest = tuple(s + st - 1 for s, st in zip(smallest, self.stride))
        if any(not lo <= v <= hi for v, lo, hi in zip(size, smallest, largest)):
            raise ValueError(f"output_size {size} is not reachable: for an input of spatial size "
                             f"{in_size} valid sizes range from {smallest} to {largest}")
        return tuple(v - s for v, s in zip(size, smallest))

    def forward(self, input: ArrayLike, output_size: Any = None) -> ArrayLike:
        """input (N, C_in, *spatial) or unbatched -> (N, C_out, *out); output_size (optional) picks
        the output_padding, as in torch."""
        if gemm_engine(self.device) is clblast:  # before the input is uploaded
            clblast.require(f"{type(self).__name__}.forward")
        with self.device:
            x, unbatched = self._operand(input, "input")
            out_pad = self._output_padding(tuple(x.shape[2:]), output_size)
            out = _with_activation(self, lambda fused: self._transpose(x, out_pad, fused))
            return self._result(out, unbatched, not is_device_array(input))

    def _transpose(self, x: cla.Array, out_pad: tuple[int, ...], fused: bool) -> cla.Array:
        """The transposed convolution of x (batched, on the device, compute dtype), the layer's
        activation fused into its store when `fused`; saves what backward needs."""
        act = self.activation if fused else None
        w_shape, x_shape = tuple(self._weight.shape), tuple(x.shape)
        b_shape = None if self._bias is None else (self.out_channels,)
        plan = self._plan("transpose", lambda: TransposePlan(
            self.device, self.nd, x_shape, w_shape, b_shape, self.stride, self.padding,
            out_pad, self.groups, self.dilation, self._work, activation=act), x_shape, w_shape,
            b_shape, self._work, self.stride, self.padding, out_pad, self.groups, self.dilation,
            act)
        out = plan(x, self._param("weight"), self._param("bias"))
        geo = plan.geometry
        self._saved = (x, geo, geo.input_shape)
        self._out_pad = out_pad
        return out

    def _recompute_pre(self) -> cla.Array:
        """The pre-activation output of the latest forward (run again when it was fused)."""
        assert self._saved is not None
        return self._transpose(self._saved[0], self._out_pad, fused=False)

    def _backward(self, geo: ConvGeometry, x: cla.Array, g: cla.Array,
                  w: cla.Array) -> tuple[cla.Array, cla.Array]:
        # `geo` is the forward convolution from the output grid (g) to the input grid (x): the input
        # gradient is that convolution of g, the weight gradient its weight gradient with g as the
        # convolution's input and x as its output gradient.
        w_shape = tuple(w.shape)
        plan = self._plan("conv", lambda: ConvPlan(
            self.device, self.nd, geo.input_shape, w_shape, None, geo.stride, 0, geo.dilation,
            geo.groups, "zeros", self.algorithm, None, None, self._work, geometry=geo),
            "backward", geo, w_shape, self._work, self.algorithm)
        return plan(g, w), self._weight_grad(geo, g, x)

    def _describe(self) -> str:
        text = super()._describe()
        if self.output_padding != (0,) * self.nd:
            text += f", output_padding={self.output_padding}"
        return text


class Conv1d(_ConvNd):
    """torch.nn.Conv1d on an OpenCL device: input (N, C_in, L) -> (N, C_out, L_out)."""

    nd = 1


class Conv2d(_ConvNd):
    """torch.nn.Conv2d on an OpenCL device: input (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""

    nd = 2


class Conv3d(_ConvNd):
    """torch.nn.Conv3d on an OpenCL device: input (N, C_in, D, H, W) -> (N, C_out, D', H', W')."""

    nd = 3


class ConvTranspose1d(_ConvTransposeNd):
    """torch.nn.ConvTranspose1d on an OpenCL device: (N, C_in, L) -> (N, C_out, L_out)."""

    nd = 1


class ConvTranspose2d(_ConvTransposeNd):
    """torch.nn.ConvTranspose2d on an OpenCL device: (N, C_in, H, W) -> (N, C_out, H_out, W_out)."""

    nd = 2


class ConvTranspose3d(_ConvTransposeNd):
    """torch.nn.ConvTranspose3d on an OpenCL device: (N, C_in, D, H, W) -> (N, C_out, D', H',
    W')."""

    nd = 3


# --- the other layers of a CNN ---------------------------------------------------------------------
def _activation_plan(layer: _Layer, shape: tuple[int, ...]) -> UnaryPlan:
    """The plan applying `layer.activation` to its (compute-dtype) output of `shape`."""
    act, dev = layer.activation, layer.device
    return cached_plan(dev, ("unary", act, shape, layer._work, False),
                       lambda: UnaryPlan(dev, act, shape, layer._work))


def _with_activation(layer: _Layer, run: Callable[[bool], cla.Array]) -> cla.Array:
    """`run(fused)` (the layer's product, with its activation fused into the store when `fused`)
    and the activation, keeping what backward needs: the output when it determines the gradient
    (relu, sigmoid, ...: fused in training too), else, in training, the pre-activation output (the
    activation then runs as a separate pass). In eval mode the activation is always fused (a
    later backward computes the pre-activation output again)."""
    act = layer.activation
    from_output = gradient_from_output(act)
    if act is None or from_output or not layer.training:
        out = run(True)
        layer._pre, layer._out = None, out if from_output else None
        return out
    pre = run(False)
    layer._pre, layer._out = pre, None
    return _activation_plan(layer, tuple(pre.shape))(pre)


def _activation_grad(layer: _Layer, g: cla.Array) -> cla.Array:
    """grad_output of a layer with an activation -> the gradient at the activation's input."""
    if layer._out is not None:
        return _activation_plan(layer, tuple(g.shape)).backward(layer._out, g, from_output=True)
    pre = layer._pre if layer._pre is not None else layer._recompute_pre()
    return _activation_plan(layer, tuple(pre.shape)).backward(pre, g)


def _enter(value: ArrayLike, name: str) -> tuple[Device, cla.Array, np.dtype, bool]:
    """(current device, value on it contiguous in the compute dtype, value's dtype, whether the
    caller gave numpy)."""
    dev = current_device()
    dtype = result_dtype(dev, **{name: value})
    check_precision(dev, dtype)
    return dev, load(dev, value, name, dtype), dtype, not is_device_array(value)


def _leave(dev: Device, a: cla.Array, dtype: np.dtype, host: bool) -> ArrayLike:
    return deliver(store(dev, a, dtype), host)


def _check_grad_shape(g: cla.Array, want: tuple[int, ...]) -> None:
    if tuple(g.shape) != tuple(want):
        raise ValueError(f"grad_output must have the shape of the latest forward's output "
                         f"{tuple(want)}, got {tuple(g.shape)}")


class Linear(_Layer):
    """torch.nn.Linear on an OpenCL device: (*, in_features) -> (*, out_features), y = x @ W.T + b
    (then `activation`, fused in evaluation mode). weight (out_features, in_features) and bias
    (out_features,) ~ U(-1/sqrt(in_features), 1/sqrt(in_features)) as torch's initialisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: Any = None, dtype: Any = None, *, rng: Any = None,
                 activation: ActivationArg = None) -> None:
        from .runtime.device import device as find_device

        self.in_features = self.in_channels = _positive_int(in_features, "in_features")
        self.out_features = self.out_channels = _positive_int(out_features, "out_features")
        self.groups = 1
        self.activation = normalize_activation(activation)
        self.device = current_device() if device is None else find_device(device)
        self.dtype = np.dtype(np.float32 if dtype is None else dtype)
        self._work = compute_dtype(self.dtype)
        result_dtype(self.device, dtype=np.empty(0, self.dtype))
        check_precision(self.device, self.dtype)
        bound = 1.0 / math.sqrt(self.in_features)
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        shape = (self.out_features, self.in_features)
        self._weight = self._upload(gen.uniform(-bound, bound, shape), "weight", shape)
        self._bias = (self._upload(gen.uniform(-bound, bound, self.out_features), "bias",
                                   (self.out_features,)) if bias else None)
        self.weight_grad = None
        self.bias_grad = None
        self._saved = None

    def forward(self, input: ArrayLike) -> ArrayLike:
        """input (*, in_features) -> (*, out_features)."""
        with self.device:
            result_dtype(self.device, input=input, weight=self._weight)
            shape = tuple(input.shape) if hasattr(input, "shape") else np.shape(input)
            if len(shape) < 1 or shape[-1] != self.in_features:
                raise ValueError(f"input must have shape (*, {self.in_features}) for {self!r}, "
                                 f"got {shape}")
            x = self._in_work(to_device(input, self.device, "input", self.dtype))
            out = _with_activation(self, lambda fused: self._linear(x, fused))
            return deliver(store(self.device, out, self.dtype), not is_device_array(input))

    def _linear(self, x: cla.Array, fused: bool) -> cla.Array:
        act = self.activation if fused else None
        x_shape, w_shape = tuple(x.shape), tuple(self._weight.shape)
        b_shape = None if self._bias is None else (self.out_features,)
        plan = self._plan("linear", lambda: LinearPlan(self.device, x_shape, w_shape, b_shape,
                                                       self._work, act),
                          x_shape, w_shape, b_shape, self._work, act)
        self._saved = (x,)
        return plan(x, self._param("weight"), self._param("bias"))

    def _recompute_pre(self) -> cla.Array:
        assert self._saved is not None
        return self._linear(self._saved[0], fused=False)

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output (*, out_features) -> grad_input (*, in_features); sets weight_grad
        (g^T @ x over every leading index) and bias_grad (g summed over them)."""
        if self._saved is None:
            raise RuntimeError("Linear.backward needs a forward call first (it uses that call's "
                               "input)")
        dev = self.device
        engine = gemm_engine(dev)
        if engine is clblast:
            clblast.require("Linear.backward")
        with dev:
            x = self._saved[0]
            result_dtype(dev, grad_output=grad_output, weight=self._weight)
            g = self._in_work(to_device(grad_output, dev, "grad_output", self.dtype))
            _check_grad_shape(g, (*x.shape[:-1], self.out_features))
            if self.activation is not None:
                g = _activation_grad(self, g)
            m, n, k = math.prod(x.shape[:-1]), self.out_features, self.in_features
            w = self._param("weight")
            what = sizes_text("Linear.backward", self._work, grad_output=tuple(g.shape))
            with device_memory_errors(dev, what):
                gi = empty(dev, tuple(x.shape), self._work)
                wg = empty(dev, (n, k), self._work)
                with dev.lock:
                    if m == 0:
                        wg.fill(0)
                    else:
                        # grad_input = g (m x n) @ W (n x k); weight_grad = g^T (n x m) @ x (m x k)
                        engine.gemm(dev, m, k, n, g, element_offset(g), 0, w, element_offset(w), 0,
                                    gi, element_offset(gi), 0)
                        engine.gemm(dev, n, k, m, g, element_offset(g), 0, x, element_offset(x),
                                    0, wg, element_offset(wg), 0, a_transposed=True)
                if self._bias is not None:
                    bg = empty(dev, (n,), self._work)
                    enqueue_column_sums(dev, g, m, n, bg)
                    self.bias_grad = store(dev, bg, self.dtype)
            self.weight_grad = store(dev, wg, self.dtype)
            return deliver(store(dev, gi, self.dtype), not is_device_array(grad_output))

    def __repr__(self) -> str:
        extra = "" if self._bias is not None else ", bias=False"
        if self.activation is not None:
            extra += f", activation={str(self.activation)!r}"
        return f"Linear(in_features={self.in_features}, out_features={self.out_features}{extra})"


class _Activation(Module):
    """A layer applying one activation (common.cl's activate()) elementwise; backward uses the
    input of the latest forward."""

    spec: ActivationArg = None

    def __init__(self, inplace: bool = False) -> None:
        if not isinstance(inplace, bool):
            raise TypeError(f"inplace must be a bool, got {inplace!r}")
        self.inplace = inplace  # accepted for torch's signature; results are new arrays
        self.act = normalize_activation(self.spec)
        self._saved: tuple[Any, ...] | None = None

    def _plan(self, dev: Device, shape: tuple[int, ...], work: np.dtype) -> UnaryPlan:
        return cached_plan(dev, ("unary", self.act, shape, work, False),
                           lambda: UnaryPlan(dev, self.act, shape, work))

    def forward(self, input: ArrayLike) -> ArrayLike:
        """input (any shape) -> act(input), same shape."""
        dev, x, dtype, host = _enter(input, "input")
        plan = self._plan(dev, tuple(x.shape), x.dtype)
        self._saved = (x, plan)
        return _leave(dev, plan(x), dtype, host)

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output -> act'(input) * grad_output."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward call first")
        x, plan = self._saved
        with plan.device:
            dev, g, dtype, host = _enter(grad_output, "grad_output")
            _check_grad_shape(g, tuple(x.shape))
            return _leave(dev, plan.backward(x, g), dtype, host)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ReLU(_Activation):
    """torch.nn.ReLU."""

    spec = "relu"


class ReLU6(_Activation):
    """torch.nn.ReLU6."""

    spec = "relu6"


class SiLU(_Activation):
    """torch.nn.SiLU."""

    spec = "silu"


class Sigmoid(_Activation):
    """torch.nn.Sigmoid."""

    spec = "sigmoid"

    def __init__(self) -> None:
        super().__init__()


class Tanh(_Activation):
    """torch.nn.Tanh."""

    spec = "tanh"

    def __init__(self) -> None:
        super().__init__()


class Hardswish(_Activation):
    """torch.nn.Hardswish."""

    spec = "hardswish"


class Hardsigmoid(_Activation):
    """torch.nn.Hardsigmoid."""

    spec = "hardsigmoid"


class GELU(_Activation):
    """torch.nn.GELU(approximate='none' | 'tanh')."""

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.spec = ("gelu", approximate)
        super().__init__()

    def __repr__(self) -> str:
        return f"GELU(approximate={self.approximate!r})"


class LeakyReLU(_Activation):
    """torch.nn.LeakyReLU(negative_slope=0.01)."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        self.negative_slope = negative_slope
        self.spec = ("leaky_relu", negative_slope)
        super().__init__(inplace)

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"


class ELU(_Activation):
    """torch.nn.ELU(alpha=1.0)."""

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        self.alpha = alpha
        self.spec = ("elu", alpha)
        super().__init__(inplace)

    def __repr__(self) -> str:
        return f"ELU(alpha={self.alpha})"


class Hardtanh(_Activation):
    """torch.nn.Hardtanh(min_val=-1.0, max_val=1.0)."""

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> None:
        if min_val > max_val:
            raise ValueError(f"min_val ({min_val}) must not be greater than max_val ({max_val})")
        self.min_val, self.max_val = min_val, max_val
        self.spec = ("clamp", min_val, max_val)
        super().__init__(inplace)

    def __repr__(self) -> str:
        return f"Hardtanh(min_val={self.min_val}, max_val={self.max_val})"


class _Pool(Module):
    """A pooling layer over clconv.ops.pool's PoolPlan: (N, C, *spatial) or (C, *spatial)."""

    kind = "max"
    nd = 2

    def __init__(self, **args: Any) -> None:
        self.args = args
        self._saved: tuple[Any, ...] | None = None

    def forward(self, input: ArrayLike) -> ArrayLike:
        """input (N, C, *spatial) or unbatched (C, *spatial) -> pooled."""
        dev, x, dtype, host = _enter(input, "input")
        shape = tuple(x.shape)
        unbatched = len(shape) == self.nd + 1
        xb = x.reshape((1, *shape)) if unbatched else x
        kind, nd, args = self.kind, self.nd, self.args
        plan = cached_plan(dev, ("pool", kind, nd, tuple(xb.shape), x.dtype,
                                 *sorted(args.items())),
                           lambda: PoolPlan(dev, kind, nd, tuple(xb.shape), x.dtype, **args))
        y, idx = plan.forward(xb, save=True)
        self._saved = (plan, idx, unbatched)
        return _leave(dev, y.reshape(plan.output_shape[1:]) if unbatched else y, dtype, host)

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output (the latest forward's output shape) -> grad_input."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward call first")
        plan, idx, unbatched = self._saved
        with plan.device:
            dev, g, dtype, host = _enter(grad_output, "grad_output")
            _check_grad_shape(g, plan.output_shape[1:] if unbatched else plan.output_shape)
            dx = plan.backward(g.reshape(plan.batch_shape) if unbatched else g, idx)
            return _leave(dev, dx.reshape(plan.input_shape[1:]) if unbatched else dx, dtype, host)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{type(self).__name__}({args})"


class _MaxPoolNd(_Pool):
    kind = "max"

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, dilation: IntOrTuple = 1, return_indices: bool = False,
                 ceil_mode: bool = False) -> None:
        if return_indices:
            raise ValueError("return_indices=True is not supported (the layer keeps its indices "
                             "for backward)")
        super().__init__(kernel_size=kernel_size, stride=stride, padding=padding,
                         dilation=dilation, ceil_mode=ceil_mode)


class _AvgPoolNd(_Pool):
    kind = "avg"

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:
        args: dict[str, Any] = {"kernel_size": kernel_size, "stride": stride, "padding": padding,
                                "ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
        if self.nd != 1:
            args["divisor_override"] = divisor_override
        elif divisor_override is not None:
            raise TypeError("AvgPool1d takes no divisor_override (as torch's)")
        super().__init__(**args)


class _AdaptivePoolNd(_Pool):
    def __init__(self, output_size: Any) -> None:
        super().__init__(output_size=output_size)


class MaxPool1d(_MaxPoolNd):
    """torch.nn.MaxPool1d."""

    nd = 1


class MaxPool2d(_MaxPoolNd):
    """torch.nn.MaxPool2d: (N, C, H, W) -> (N, C, H_out, W_out); backward routes each gradient
    to its window's maximum (indices saved by forward)."""

    nd = 2


class MaxPool3d(_MaxPoolNd):
    """torch.nn.MaxPool3d."""

    nd = 3


class AvgPool1d(_AvgPoolNd):
    """torch.nn.AvgPool1d."""

    nd = 1

    def __init__(self, kernel_size: IntOrTuple, stride: IntOrTuple | None = None,
                 padding: IntOrTuple = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True) -> None:
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)


class AvgPool2d(_AvgPoolNd):
    """torch.nn.AvgPool2d."""

    nd = 2


class AvgPool3d(_AvgPoolNd):
    """torch.nn.AvgPool3d."""

    nd = 3


class AdaptiveAvgPool1d(_AdaptivePoolNd):
    """torch.nn.AdaptiveAvgPool1d."""

    kind, nd = "adaptive_avg", 1


class AdaptiveAvgPool2d(_AdaptivePoolNd):
    """torch.nn.AdaptiveAvgPool2d(output_size) (None entries keep the input's size)."""

    kind, nd = "adaptive_avg", 2


class AdaptiveAvgPool3d(_AdaptivePoolNd):
    """torch.nn.AdaptiveAvgPool3d."""

    kind, nd = "adaptive_avg", 3


class AdaptiveMaxPool2d(_AdaptivePoolNd):
    """torch.nn.AdaptiveMaxPool2d(output_size) (return_indices=False)."""

    kind, nd = "adaptive_max", 2


class _BatchNorm(Module):
    """Batch normalisation over the channel dim 1 of (N, C, *) as torch.nn.BatchNormNd: in
    training mode with the batch's statistics (mean, biased variance), updating running_mean and
    running_var (unbiased variance) by `momentum` (None: the cumulative average); in evaluation
    mode with the running statistics. weight (ones) and bias (zeros) when `affine`."""

    dims: tuple[int, ...] = (4,)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device: Any = None,
                 dtype: Any = None) -> None:
        from .runtime.device import device as find_device

        self.num_features = _positive_int(num_features, "num_features")
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or eps < 0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.eps, self.momentum = float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.device = current_device() if device is None else find_device(device)
        self.dtype = np.dtype(np.float32 if dtype is None else dtype)
        self._work = compute_dtype(self.dtype)
        result_dtype(self.device, dtype=np.empty(0, self.dtype))
        check_precision(self.device, self.dtype)
        c = self.num_features
        self._weight = self._put(np.ones(c)) if affine else None
        self._bias = self._put(np.zeros(c)) if affine else None
        self.running_mean = self._put(np.zeros(c)) if track_running_stats else None
        self.running_var = self._put(np.ones(c)) if track_running_stats else None
        self.num_batches_tracked = 0
        self.weight_grad: cla.Array | None = None
        self.bias_grad: cla.Array | None = None
        self._saved: tuple[Any, ...] | None = None

    def _put(self, value: Any) -> cla.Array:
        """A (C,) parameter or statistic on the device, in the compute dtype (float32 for float16
        layers: statistics accumulate there)."""
        return to_device(np.asarray(value, dtype=self._work), self.device, "value", self._work)

    @property
    def weight(self) -> cla.Array | None:
        return host_convertible(self._weight)

    @property
    def bias(self) -> cla.Array | None:
        return host_convertible(self._bias)

    def parameters(self) -> list[cla.Array]:
        return [self.weight, self.bias] if self.affine else []

    def gradients(self) -> list[cla.Array | None]:
        return [host_convertible(self.weight_grad), host_convertible(self.bias_grad)] \
            if self.affine else []

    def _entries(self) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        if self.affine:
            entries.update(weight=self._weight, bias=self._bias)
        if self.track_running_stats:
            entries.update(running_mean=self.running_mean, running_var=self.running_var,
                           num_batches_tracked=None)
        return entries

    def state_dict(self) -> dict[str, np.ndarray]:
        """torch.nn.BatchNormNd's keys: weight, bias, running_mean, running_var,
        num_batches_tracked (int64), as numpy copies in the layer's dtype."""
        state = {}
        for key, value in self._entries().items():
            state[key] = (np.array(self.num_batches_tracked, np.int64) if value is None
                          else value.get().astype(self.dtype))
        return state

    def grad_dict(self) -> dict[str, np.ndarray | None]:
        if not self.affine:
            return {}
        return {k: None if g is None else g.get() for k, g in
                (("weight", self.weight_grad), ("bias", self.bias_grad))}

    def load_state_dict(self, state: Any, strict: bool = True) -> tuple[list[str], list[str]]:
        """Loads torch.nn.BatchNormNd's entries (numpy arrays, torch tensors or device arrays);
        shapes must be (num_features,) (ValueError naming the key)."""
        expected = list(self._entries())
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                             f"unexpected keys {unexpected} (expected exactly {expected})")
        values: dict[str, Any] = {}
        for key in (k for k in expected if k in state):
            value = state[key]
            value = value.get() if isinstance(value, cla.Array) else \
                np.asarray(host_operand(value, f"state[{key!r}]"))
            if key == "num_batches_tracked":
                values[key] = int(value)
                continue
            if value.shape != (self.num_features,):
                raise ValueError(f"state[{key!r}] has shape {value.shape}; {type(self).__name__}'s "
                                 f"{key} has shape ({self.num_features},)")
            if value.dtype.kind != "f":
                raise TypeError(f"state[{key!r}] has dtype {value.dtype}; it must be floating point")
            values[key] = value
        for key, value in values.items():
            if key == "num_batches_tracked":
                self.num_batches_tracked = value
            else:
                setattr(self, "_" + key if key in ("weight", "bias") else key, self._put(value))
        return missing, unexpected

    def forward(self, input: ArrayLike) -> ArrayLike:
        """input (N, C, *) -> normalised, same shape."""
        with self.device:
            shape = tuple(input.shape) if hasattr(input, "shape") else np.shape(input)
            if len(shape) not in self.dims:
                raise ValueError(f"{type(self).__name__}: expected {' or '.join(map(str, self.dims))}"
                                 f"-d input, got shape {shape}")
            if shape[1] != self.num_features:
                raise ValueError(f"{type(self).__name__}({self.num_features}): input has {shape[1]} "
                                 f"channels (shape {shape})")
            dev, x, dtype, host = _enter(input, "input")
            if dtype != self.dtype:
                raise TypeError(f"input has dtype {dtype}; this layer's dtype is {self.dtype}")
            c, inner = shape[1], math.prod(shape[2:])
            batch_stats = self.training or not self.track_running_stats
            if batch_stats:
                if self.training and shape[0] * inner <= 1:
                    raise ValueError(f"expected more than 1 value per channel when training, got "
                                     f"input of shape {shape}")
                update = self.training and self.track_running_stats
                factor = 0.0
                if update:
                    self.num_batches_tracked += 1
                    factor = (1.0 / self.num_batches_tracked if self.momentum is None
                              else float(self.momentum))
                stats = enqueue_channel_stats(dev, x, c, inner,
                                              self.running_mean if update else None,
                                              self.running_var if update else None, factor)
                mean, var = stats[0], stats[1]
            else:
                mean, var = self.running_mean, self.running_var
            plan = cached_plan(dev, ("batch_norm", shape, self._work, self.affine, self.affine,
                                     self.eps, None),
                               lambda: BatchNormPlan(dev, shape, self.affine, self.affine, self.eps,
                                                     self._work))
            y = plan(x, mean, var, self._weight, self._bias)
            self._saved = (x, mean, var, batch_stats)
            return _leave(dev, y, dtype, host)

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output -> grad_input; sets weight_grad and bias_grad (when affine)."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward call first")
        x, mean, var, batch_stats = self._saved
        with self.device:
            dev, g, dtype, host = _enter(grad_output, "grad_output")
            _check_grad_shape(g, tuple(x.shape))
            dx, wg, bg = enqueue_batch_norm_backward(dev, g, x, mean, var, self._weight, self.eps,
                                                     batch_stats, self.num_features,
                                                     math.prod(x.shape[2:]))
            if self.affine:
                self.weight_grad, self.bias_grad = wg, bg
            return _leave(dev, dx, dtype, host)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats})")


class BatchNorm1d(_BatchNorm):
    """torch.nn.BatchNorm1d: (N, C) or (N, C, L)."""

    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """torch.nn.BatchNorm2d: (N, C, H, W)."""

    dims = (4,)


class BatchNorm3d(_BatchNorm):
    """torch.nn.BatchNorm3d: (N, C, D, H, W)."""

    dims = (5,)


class Flatten(Module):
    """torch.nn.Flatten(start_dim=1, end_dim=-1): a view of a contiguous device array (no copy)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        self.start_dim, self.end_dim = start_dim, end_dim
        self._shape: tuple[int, ...] | None = None

    def forward(self, input: ArrayLike) -> ArrayLike:
        self._shape = tuple(input.shape) if hasattr(input, "shape") else np.shape(input)
        return flatten(input, self.start_dim, self.end_dim)

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output reshaped back to the latest forward's input shape."""
        if self._shape is None:
            raise RuntimeError("Flatten.backward needs a forward call first")
        if isinstance(grad_output, cla.Array):
            g = grad_output
            if not g.flags.c_contiguous:
                g = to_device(g, current_device(), "grad_output", g.dtype)
            return g.reshape(self._shape)
        return np.reshape(np.asarray(grad_output), self._shape)

    def __repr__(self) -> str:
        return f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim})"


class Sequential(Module):
    """torch.nn.Sequential: layers applied in order. Activations stay on the device from one layer
    to the next (a numpy input is uploaded once and the result downloaded once); backward runs the
    layers' backward in reverse. state_dict()/load_state_dict() use torch.nn.Sequential's keys
    ('0.weight', '1.running_mean', ... by position)."""

    def __init__(self, *layers: Module) -> None:
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} must be a clconv.nn layer, got {type(layer).__name__}")
        self.layers = list(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __iter__(self) -> Any:
        return iter(self.layers)

    def append(self, layer: Module) -> Sequential:
        if not isinstance(layer, Module):
            raise TypeError(f"layer must be a clconv.nn layer, got {type(layer).__name__}")
        self.layers.append(layer)
        return self

    def train(self, mode: bool = True) -> Sequential:
        super().train(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    @property
    def device(self) -> Device:
        """The device of the first layer with parameters (the current device if none has)."""
        for layer in self.layers:
            dev = getattr(layer, "device", None)
            if isinstance(dev, Device):
                return dev
        return current_device()

    def parameters(self) -> list[cla.Array]:
        return [p for layer in self.layers for p in layer.parameters()]

    def gradients(self) -> list[cla.Array | None]:
        return [g for layer in self.layers for g in layer.gradients()]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers)
                for k, v in layer.state_dict().items()}

    def grad_dict(self) -> dict[str, np.ndarray | None]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers)
                for k, v in layer.grad_dict().items()}

    def load_state_dict(self, state: Any, strict: bool = True) -> tuple[list[str], list[str]]:
        """Loads '<index>.<key>' entries (a torch.nn.Sequential's state_dict() loads as it is);
        strict: missing or unexpected keys are a ValueError, checked before anything changes."""
        parts: list[dict[str, Any]] = [{} for _ in self.layers]
        unexpected = []
        for key, value in state.items():
            head, _, rest = str(key).partition(".")
            if head.isdigit() and int(head) < len(self.layers) and rest:
                parts[int(head)][rest] = value
            else:
                unexpected.append(key)
        missing = []
        for i, layer in enumerate(self.layers):
            keys = list(layer.state_dict())
            missing += [f"{i}.{k}" for k in keys if k not in parts[i]]
            unexpected += [f"{i}.{k}" for k in parts[i] if k not in keys]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict for Sequential: missing keys {missing}, unexpected "
                             f"keys {unexpected}")
        for layer, part in zip(self.layers, parts):
            layer.load_state_dict(part, strict=False)
        return missing, unexpected

    def forward(self, input: ArrayLike) -> ArrayLike:
        """input -> the last layer's output (numpy for numpy, device array for device array)."""
        dev = self.device
        with dev:
            x = to_device(input, dev, "input", result_dtype(dev, input=input))
            for layer in self.layers:
                x = layer(x)
            return deliver(x, not is_device_array(input))

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output -> grad_input through every layer in reverse (each fills its gradients)."""
        dev = self.device
        with dev:
            g = to_device(grad_output, dev, "grad_output", result_dtype(dev, grad_output=grad_output))
            for layer in reversed(self.layers):
                g = layer.backward(g)
            return deliver(g, not is_device_array(grad_output))

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"
