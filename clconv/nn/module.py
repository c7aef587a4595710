"""What clconv.nn's layers share: Module (train/eval, calling runs forward), Layer (the
parameter layers' base: weight and bias on a device, dtype rules, state_dict, backward through
the fused activation) and the helpers the layer modules use."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Callable

import numpy as np
import pyopencl.array as cla

from ..blas import clblast
from ..blas.engine import gemm_engine
from ..ops.conv_select import ALGORITHMS
from ..ops.activation import normalize_activation
from ..ops.unary import UnaryPlan, gradient_from_output, unary_plan
from ..ops.geometry import PADDING_MODES, ConvGeometry, IntOrTuple, PaddingArg, as_tuple
from ..ops.grad import WeightGradPlan, enqueue_bias_grad
from ..ops.plan import Plan, cached_plan
from ..ops.precision import check_precision, compute_dtype, convert, load, store
from ..runtime.device import Device, current_device, device
from ..runtime.errors import device_memory_errors, sizes_text
from ..runtime.interop import (HostConvertibleArray, host_convertible, host_operand,
                               is_torch_tensor, numpy_dtype)
from ..runtime.memory import empty
from ..runtime.transfer import ArrayLike, deliver, is_device_array, result_dtype, to_device
from ..runtime.versions import check_unchanged, stamp


def positive_int(value: Any, name: str) -> int:
    """`value` as an int when it is a positive integer (not a bool); TypeError/ValueError naming
    `name` otherwise."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return int(value)


def state_values(t: Any) -> Any:
    """A torch tensor of a state dict as load_state_dict reads it: detached (a Parameter too:
    its values, as torch's copy_ takes them), a floating dtype numpy lacks (bfloat16, float8) as
    float64 (exact; converted to the layer's dtype then, as torch's copy_ converts)."""
    t = t.detach()
    if t.is_floating_point() and str(t.dtype) not in ("torch.float16", "torch.float32",
                                                      "torch.float64"):
        t = t.double()
    return t


def layer_dtype(dtype: Any) -> np.dtype:
    """A layer's `dtype=` argument as a numpy dtype: None is float32; numpy dtypes, their names
    and torch's floating dtypes (torch.float64, ...) are taken; another is a TypeError."""
    dt = np.dtype(np.float32) if dtype is None else numpy_dtype(dtype)
    if dt not in (np.float16, np.float32, np.float64):
        raise TypeError(f"a layer's dtype= must be float32, float64 or float16, got {dt}")
    return dt


#: What a layer's forward leaves for its backward (None before any forward), and what it counts
#: of it (attributes with class or getattr defaults): a copied or pickled layer has neither.
_FORWARD_STATE = frozenset(("_saved", "_pre", "_out"))
_FORWARD_COUNTS = frozenset(("_stamps", "_states", "_shared"))


class _HostCopy:
    """A device array in a pickled or copied layer's state: its values (numpy) and whether it
    was a HostConvertibleArray."""

    def __init__(self, a: cla.Array) -> None:
        self.values = a.get() if a.size else np.empty(a.shape, a.dtype)
        self.convertible = isinstance(a, HostConvertibleArray)


def _portable(v: Any) -> Any:
    if isinstance(v, cla.Array):
        return _HostCopy(v)
    if type(v) in (tuple, list):
        return type(v)(_portable(x) for x in v)
    if type(v) is dict:
        return {k: _portable(x) for k, x in v.items()}
    return v


def _restored(v: Any, dev: Device) -> Any:
    if isinstance(v, _HostCopy):
        a = cla.to_device(dev.queue, v.values) if v.values.size else empty(dev, v.values.shape,
                                                                           v.values.dtype)
        return host_convertible(a) if v.convertible else a
    if type(v) in (tuple, list):
        return type(v)(_restored(x, dev) for x in v)
    if type(v) is dict:
        return {k: _restored(x, dev) for k, x in v.items()}
    return v


class Module:
    """What every clconv.nn layer shares: train()/eval() (as torch.nn.Module's `training` flag),
    calling the layer runs `forward`, and empty parameter lists for the layers without any."""

    training: bool = True
    _stamps: tuple[int, ...] = ()  # the versions of what the latest forward saved (check_saved)

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

    # copy.deepcopy and pickle (a model's best-so-far or averaged copy, a checkpoint of the
    # object): device arrays travel as numpy copies and are uploaded again to the layer's device
    # (found by its platform and name when unpickled), so a copy shares no buffer with the
    # original; the latest forward's state does not travel (as torch's autograd graph does not:
    # a copy's backward needs a forward of its own); everything else as it is.
    def __getstate__(self) -> dict[str, Any]:
        return {k: None if k in _FORWARD_STATE else _portable(v) for k, v in vars(self).items()
                if k not in _FORWARD_COUNTS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        dev = state.get("device")
        if not isinstance(dev, Device):
            dev = current_device()
        self.__dict__.update({k: _restored(v, dev) for k, v in state.items()})

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
        check_state(state)
        unexpected = list(state)
        if strict and unexpected:
            raise ValueError(f"load_state_dict for {type(self).__name__}: unexpected keys "
                             f"{unexpected} (it has no parameters)")
        return [], unexpected


class Layer(Module):
    """What the layers with a weight and bias (the convolutions, Linear) share: parameters on a
    device, dtype rules, saved input, backward through the fused activation."""

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
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.groups = positive_int(groups, "groups")
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
        self.dtype = layer_dtype(dtype)
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
        """A new weight or bias: a floating-point array of `shape` (numpy, a torch tensor or
        Parameter: its values, a device array of the layer's dtype: used itself)."""
        if value is None:
            raise TypeError(f"{name} must be an array of shape {shape}, got None")
        if is_torch_tensor(value):
            value = value.detach()
        value = host_operand(value, name)  # lists and numbers: a TypeError naming numpy
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
        if np.dtype(value.dtype).kind != "f":
            raise TypeError(f"{name} has dtype {value.dtype}; parameters are floating point")
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
        check_state(state)
        expected = ["weight"] + (["bias"] if self._bias is not None else [])
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                             f"unexpected keys {unexpected} (expected exactly {expected})")
        values = {}
        for key in (k for k in expected if k in state):
            value = state[key]
            if is_torch_tensor(value):
                value = state_values(value)
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
        check_saved(self, saved_arrays(self))
        if gemm_engine(self.device) is clblast:  # before grad_output is uploaded
            clblast.require(f"{type(self).__name__}.backward")
        with self.device:
            g, g_unbatched = self._operand(grad_output, "grad_output")
            if tuple(g.shape) != out_shape:
                raise ValueError(f"grad_output must have the shape of the latest forward's output "
                                 f"{out_shape}, got {tuple(g.shape)}")
            if self.activation is not None:  # through the fused activation first
                g = activation_grad(self, g)
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
        if self.activation is not None:  # (as Linear's repr shows it)
            parts.append(f"activation={str(self.activation)!r}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"


def _activation_plan(layer: Layer, shape: tuple[int, ...]) -> UnaryPlan:
    """The plan applying `layer.activation` to its (compute-dtype) output of `shape`."""
    act, dev = layer.activation, layer.device
    return unary_plan(dev, normalize_activation(act), shape, layer._work)


def with_activation(layer: Layer, run: Callable[[bool], cla.Array]) -> cla.Array:
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
    else:
        pre = run(False)
        layer._pre, layer._out = pre, None
        out = _activation_plan(layer, tuple(pre.shape))(pre)
    layer._stamps = stamp(*saved_arrays(layer))
    return out


def saved_arrays(layer: Layer) -> tuple[Any, ...]:
    """What `layer`'s backward reads of its latest forward: the input, and the output or the
    pre-activation output kept for the activation's gradient."""
    return (None if layer._saved is None else layer._saved[0], layer._out, layer._pre)


def check_saved(layer: Module, arrays: tuple[Any, ...]) -> None:
    """RuntimeError (torch's in-place error) when one of `arrays`, what `layer`'s latest forward
    saved, was written since (out=, inplace=True: clconv.runtime.versions)."""
    check_unchanged(f"{type(layer).__name__}.backward", arrays, layer._stamps)


def activation_grad(layer: Layer, g: cla.Array) -> cla.Array:
    """grad_output of a layer with an activation -> the gradient at the activation's input."""
    if layer._out is not None:
        return _activation_plan(layer, tuple(g.shape)).backward(layer._out, g, from_output=True)
    pre = layer._pre if layer._pre is not None else layer._recompute_pre()
    return _activation_plan(layer, tuple(pre.shape)).backward(pre, g)


def enter(value: ArrayLike, name: str) -> tuple[Device, cla.Array, np.dtype, bool]:
    """(current device, value on it contiguous in the compute dtype, value's dtype, whether the
    caller gave numpy)."""
    dev = current_device()
    dtype = result_dtype(dev, **{name: value})
    check_precision(dev, dtype)
    return dev, load(dev, value, name, dtype), dtype, not is_device_array(value)


def leave(dev: Device, a: cla.Array, dtype: np.dtype, host: bool) -> ArrayLike:
    """A result in the compute dtype back in `dtype`, as numpy when `host` (enter's counterpart)."""
    return deliver(store(dev, a, dtype), host)


def check_state(state: Any) -> None:
    """TypeError unless `state` is a mapping (what load_state_dict takes: a state_dict)."""
    if not isinstance(state, Mapping):
        raise TypeError(f"load_state_dict takes a mapping of names to arrays (a state_dict), got "
                        f"{type(state).__name__}")


def check_grad(g: cla.Array, want: tuple[int, ...], work: np.dtype) -> None:
    """ValueError unless grad_output `g` has the shape of the latest forward's output `want`;
    TypeError unless it is in the forward's compute dtype `work` (as the convolutions and
    Linear refuse another dtype)."""
    if g.dtype != work:
        raise TypeError(f"grad_output has dtype {g.dtype} but the latest forward computed "
                        f"{np.dtype(work)}: pass it in that dtype")
    if tuple(g.shape) != tuple(want):
        raise ValueError(f"grad_output must have the shape of the latest forward's output "
                         f"{tuple(want)}, got {tuple(g.shape)}")
