"""A squeeze-excitation block (MobileNetV3, EfficientNet, SE-ResNet) as one op:
`squeeze_excitation(...)` and its `SqueezeExcitationPlan`, one launch of
cl/squeeze_excitation.cl.

    y = clconv.squeeze_excitation(x, w1, b1, w2, b2, activation="relu", gate="hardsigmoid")

is torchvision's SqueezeExcitation, x * gate(conv1x1(act(conv1x1(adaptive_avg_pool(x, 1), w1,
b1)), w2, b2)), which as separate ops is four launches (pool, two 1x1 convolutions on one
position, the broadcast product) of little work each: a network's small blocks pay each
launch's wake-up of the device and its host code four times. One work-group a sample computes
the means, both layers in local memory and the product.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..runtime.device import Device, current_device
from ..runtime.program import BoundKernel, kernel, precision_defines
from ..runtime.transfer import ArrayLike, element_offset, index_type, result_dtype
from .activation import ActivationArg, activation_defines, normalize_activation
from .plan import Plan, cached_plan, shape_ints, shape_of

__all__ = ["SqueezeExcitationPlan", "squeeze_excitation", "squeeze_excitation_fits"]

#: Work-items a group on CPU devices (one: its loops over contiguous rows run as vectors; PoCL's
#: loop over a group's work-items made 16 of them 2-2.5x slower) and at most on others.
_CPU_LOCAL, _GPU_LOCAL = 1, 64


def _weight_shape(shape: tuple[int, ...], rows: int | None, cols: int, name: str,
                  nd: int | None) -> int:
    """The rows of a (rows, cols) matrix given as such or as a 1x1 convolution's weight
    (rows, cols, 1, ...); ValueError naming `name` otherwise."""
    want = f"({'R' if rows is None else rows}, {cols}" + ", 1" * (nd or 0) + ")"
    if len(shape) < 2 or shape[0] < 1 or any(d != 1 for d in shape[2:]) or shape[1] != cols or \
            (rows is not None and shape[0] != rows) or (len(shape) > 2 and nd is not None and
                                                       len(shape) - 2 != nd):
        raise ValueError(f"squeeze_excitation: {name} must have shape {want} (a matrix or a 1x1 "
                         f"convolution's weight), got {shape}")
    return shape[0]


def _local_budget(dev: Device) -> int:
    """The local memory bytes a group may take (half the device's: the rest is the driver's)."""
    try:
        return int(dev.cl_device.local_mem_size) // 2
    except cl.Error:
        return 0


def squeeze_excitation_fits(dev: Device, channels: int, hidden: int, itemsize: int) -> bool:
    """Whether a block of `channels` and `hidden` values (and one work-item's partial sums)
    fits a work-group's local memory on `dev`."""
    return (channels + hidden + max(channels, hidden)) * itemsize <= _local_budget(dev)


class SqueezeExcitationPlan(Plan):
    """squeeze_excitation for one input shape (N, C, *spatial), weight shapes and dtype; any
    batch size runs on it."""

    _BATCH_OPERANDS = ("input",)

    def __init__(self, dev: Device, input_shape: Sequence[int], weight1_shape: Sequence[int],
                 bias1_shape: Sequence[int] | None, weight2_shape: Sequence[int],
                 bias2_shape: Sequence[int] | None, activation: ActivationArg = "relu",
                 gate: ActivationArg = "sigmoid", dtype: np.dtype = np.float32) -> None:
        shape = shape_ints(input_shape, "input_shape")
        w1 = shape_ints(weight1_shape, "weight1_shape")
        w2 = shape_ints(weight2_shape, "weight2_shape")
        # The spatial dims: the weights' trailing 1s where they have them (an input with one dim
        # fewer is one unbatched sample, as torch's convolutions take it), else all after C.
        nd = len(w1) - 2 if len(w1) > 2 else len(w2) - 2 if len(w2) > 2 else None
        unbatched = nd is not None and len(shape) == nd + 1
        batch_shape = (1, *shape) if unbatched else shape
        if len(batch_shape) < 3 or (nd is not None and len(batch_shape) != nd + 2):
            dims = "(N, C, *spatial) with at least one spatial dim" if nd is None else \
                f"({nd + 1} or {nd + 2} dims: (C, *spatial) or (N, C, *spatial))"
            raise ValueError(f"squeeze_excitation: input must be {dims}, got shape {shape}")
        if any(d == 0 for d in batch_shape[1:]):
            raise ValueError(f"squeeze_excitation: input of shape {shape} has no element to "
                             f"average in a channel (its non-batch dims must be non-zero)")
        channels = batch_shape[1]
        hidden = _weight_shape(w1, None, channels, "weight1", nd)
        _weight_shape(w2, channels, hidden, "weight2", nd)
        for name, given, size in (("bias1", bias1_shape, hidden),
                                  ("bias2", bias2_shape, channels)):
            if given is not None and shape_ints(given, f"{name}_shape") != (size,):
                raise ValueError(f"squeeze_excitation: {name} must have shape ({size},), got "
                                 f"{tuple(given)}")
        self.activation, self.gate = normalize_activation(activation), normalize_activation(gate)
        self.channels, self.hidden = channels, hidden
        self.positions = math.prod(batch_shape[2:])
        operands = {"input": shape, "weight1": w1,
                    "bias1": None if bias1_shape is None else (hidden,), "weight2": w2,
                    "bias2": None if bias2_shape is None else (channels,)}
        self._prepare(dev, dtype, operands, shape, batch_shape,
                      {"input": shape, "output": shape})
        if not squeeze_excitation_fits(dev, channels, hidden, self.work.itemsize):
            raise ValueError(f"squeeze_excitation: {channels} channels and {hidden} hidden "
                             f"values do not fit the local memory of {dev.name!r}; run its "
                             f"steps one by one (adaptive_avg_pool, conv, conv, mul)")
        self.label = f"squeeze_excitation({channels} -> {hidden})"
        defines = precision_defines(self.work)
        defines["INDEX_T"] = index_type(math.prod(batch_shape), math.prod(w1), math.prod(w2))
        defines.update(activation_defines(self.gate))
        defines.update({f"HIDDEN_{k}": v for k, v in activation_defines(self.activation).items()})
        shared = kernel(dev, "squeeze_excitation.cl", "squeeze_excitation", defines)
        local = _CPU_LOCAL if dev.kind == "cpu" else _GPU_LOCAL
        itemsize = self.work.itemsize
        # (each work-item's partial sums of every row: max(C, R) values a work-item)
        spare = _local_budget(dev) - (channels + hidden) * itemsize
        while local > 1 and max(channels, hidden) * local * itemsize > spare:
            local //= 2
        try:
            most = shared.get_work_group_info(cl.kernel_work_group_info.WORK_GROUP_SIZE,
                                              dev.cl_device)
            local = min(local, 1 << (int(most).bit_length() - 1))
        except (cl.Error, AttributeError):  # (a launch spy's wrapper: the default)
            pass
        self.local = local
        self.kernel = BoundKernel(shared, (
            None, None, None, None, None, None, None, None, None, None, None, None,
            np.int32(channels), np.int32(hidden), np.int64(self.positions),
            cl.LocalMemory(channels * itemsize), cl.LocalMemory(max(hidden, 1) * itemsize),
            cl.LocalMemory(max(channels, hidden) * local * itemsize)),
            tuple(range(12)))

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        x, w1, b1, w2, b2 = (arrays[n] for n in ("input", "weight1", "bias1", "weight2", "bias2"))
        assert x is not None and w1 is not None and w2 is not None
        dev, samples = self.device, out.shape[0]
        if out.size == 0:
            return None
        with dev.lock:
            return self.kernel(
                dev.queue, (samples * self.local,), (self.local,),
                x.base_data, np.int64(element_offset(x)), w1.base_data,
                np.int64(element_offset(w1)), None if b1 is None else b1.base_data,
                np.int64(0 if b1 is None else element_offset(b1)), w2.base_data,
                np.int64(element_offset(w2)), None if b2 is None else b2.base_data,
                np.int64(0 if b2 is None else element_offset(b2)), out.base_data,
                np.int64(element_offset(out)))

    def __call__(self, input: ArrayLike, weight1: ArrayLike, bias1: ArrayLike | None,
                 weight2: ArrayLike, bias2: ArrayLike | None, *,
                 out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input, "weight1": weight1, "bias1": bias1,
                             "weight2": weight2, "bias2": bias2}, out)


def squeeze_excitation(input: ArrayLike, weight1: ArrayLike, bias1: ArrayLike | None,
                       weight2: ArrayLike, bias2: ArrayLike | None, *,
                       activation: ActivationArg = "relu", gate: ActivationArg = "sigmoid",
                       out: ArrayLike | None = None) -> ArrayLike:
    """torchvision's SqueezeExcitation: input * gate(W2 act(W1 s + b1) + b2), s the mean of
    input (N, C, *spatial) over its positions (adaptive average pooling to 1), W1 (R, C) and W2
    (C, R) matrices or 1x1 convolutions' weights (R, C, 1, 1) and (C, R, 1, 1) (then (C, H, W)
    is one unbatched sample), biases (R,) and (C,) or None; `activation` and `gate` as every
    activation= of clconv (None: none). Returns numpy for a numpy input, else a device array of
    input's shape."""
    dev = current_device()
    operands = {"input": input, "weight1": weight1, "weight2": weight2}
    operands.update({n: b for n, b in (("bias1", bias1), ("bias2", bias2)) if b is not None})
    dtype = result_dtype(dev, **operands)
    shapes = (shape_of(input), shape_of(weight1), None if bias1 is None else shape_of(bias1),
              shape_of(weight2), None if bias2 is None else shape_of(bias2))
    act, gate_act = normalize_activation(activation), normalize_activation(gate)
    plan = cached_plan(dev, ("squeeze_excitation", *shapes, act, gate_act, dtype),
                       lambda: SqueezeExcitationPlan(dev, *shapes, act, gate_act, dtype))
    return plan.execute({"input": input, "weight1": weight1, "bias1": bias1,
                         "weight2": weight2, "bias2": bias2}, out, check=False)
