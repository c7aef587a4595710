"""Per-channel passes over (N, C, inner) arrays (cl/elementwise.cl's kernels): batch normalisation
(the inference op, the batch statistics and running-statistics update of training, the backward),
a bias + activation epilogue and column sums (Linear's bias and its gradient); and the channel
norm (cl/channel_norm.cl): LayerNorm over the channels of each position, what ConvNeXt's
permute -> LayerNorm(C) -> permute computes.

    y = clconv.batch_norm(x, mean, var, gamma, beta, eps=1e-5)   # inference form

The statistics and gradient sums are reductions: a work-item per channel on CPUs (its lanes
vectorised by the compiler), a work-group per channel on GPUs (`reduction_group`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..runtime.device import Device, current_device
from ..runtime.errors import UnsupportedError
from ..runtime.interop import host_operand
from ..runtime.memory import empty
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import ArrayLike, is_device_array, result_dtype, scatter, to_device
from ..runtime.versions import bump
from .activation import Activation, ActivationArg, activation_defines, normalize_activation
from .elementwise import array_args, elementwise_defines, real_scalar
from .unary import gradient_from_output
from .plan import Plan, cached_plan, shape_ints, shape_of
from .scalars import plain_number

__all__ = ["BatchNormPlan", "ChannelNormPlan", "batch_norm", "batch_norm_plan",
           "channel_norm_plan", "check_loop_limit",
           "enqueue_batch_norm_backward", "enqueue_bias_act", "enqueue_channel_stats",
           "enqueue_column_sums", "reduction_group"]


def _channels_shape(name: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    """A per-channel op's input shape (N, C, *): ValueError naming `name` for fewer dims."""
    shape = shape_ints(input_shape, "input_shape")
    if len(shape) < 2:
        raise ValueError(f"{name}: input must have at least 2 dims (N, C, *), got shape {shape}")
    return shape


def _check_eps(name: str, eps: Any) -> None:
    """TypeError naming `name` for an eps that is no real number (a bool included)."""
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
        raise TypeError(f"{name}: eps must be a real number, got {eps!r}")


class BatchNormPlan(Plan):
    """Inference batch normalisation of (N, C, *) with given statistics, optional affine
    weight/bias and fused activation: act((x - mean) / sqrt(var + eps) * weight + bias)."""

    def __init__(self, dev: Device, input_shape: Sequence[int], has_weight: bool,
                 has_bias: bool, eps: float, dtype: np.dtype,
                 activation: ActivationArg = None) -> None:
        shape = _channels_shape("batch_norm", input_shape)
        _check_eps("batch_norm", eps)
        if eps < 0:
            raise ValueError(f"batch_norm: eps must be non-negative (torch's rule), got {eps}")
        c = shape[1]
        self.channels, self.inner, self.eps = c, math.prod(shape[2:]), float(eps)
        act = normalize_activation(activation)
        operands = {"input": shape, "running_mean": (c,), "running_var": (c,),
                    "weight": (c,) if has_weight else None, "bias": (c,) if has_bias else None}
        self._prepare(dev, dtype, operands, shape, shape, {"input": shape})
        self.label = "batch_norm"
        self._defines = elementwise_defines(self.work, math.prod(shape), **activation_defines(act))
        self.kernel = kernel(dev, "elementwise.cl", "batch_norm", self._defines)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        x, mean, var = arrays["input"], arrays["running_mean"], arrays["running_var"]
        w, b = arrays["weight"], arrays["bias"]
        assert x is not None and mean is not None and var is not None
        if out.size == 0:
            return None
        with self.device.lock:
            return self.kernel(self.device.queue, (self.inner, out.size // self.inner), None,
                               *array_args(x), *array_args(mean), *array_args(var),
                               *array_args(w if w is not None else x), np.int32(w is not None),
                               *array_args(b if b is not None else x), np.int32(b is not None),
                               *array_args(out), np.int64(self.channels), np.int64(self.inner),
                               real_scalar(self.work, self.eps))

    def __call__(self, input: ArrayLike, running_mean: ArrayLike, running_var: ArrayLike,
                 weight: ArrayLike | None = None, bias: ArrayLike | None = None, *,
                 out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input, "running_mean": running_mean,
                             "running_var": running_var, "weight": weight, "bias": bias}, out)


def batch_norm(input: ArrayLike, running_mean: ArrayLike | None, running_var: ArrayLike | None,
               weight: ArrayLike | None = None, bias: ArrayLike | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5, *,
               activation: ActivationArg = None, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.batch_norm: input (N, C, *) normalised per channel, then weight/bias
    (C,) if given, and the optional fused activation.

    training=False: by running_mean/running_var (C,). training=True: by the batch's own mean and
    biased variance, and running_mean/running_var (both or neither) are updated in place as
    torch's are: r = (1 - momentum) * r + momentum * batch statistic, the variance unbiased.
    Host running statistics (numpy arrays, CPU tensors) are written back into the arrays; device
    ones (views too) are updated on the device."""
    momentum, eps = plain_number(momentum), plain_number(eps)
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"batch_norm: training must be a bool, got {training!r}")
    if training:
        return _batch_norm_training(input, running_mean, running_var, weight, bias, momentum, eps,
                                    activation, out)
    if running_mean is None or running_var is None:
        raise ValueError("batch_norm: running_mean and running_var are required with "
                         "training=False (torch: they must be defined in evaluation mode)")
    dev = current_device()
    values = {"input": input, "running_mean": running_mean, "running_var": running_var,
              "weight": weight, "bias": bias}
    dtype = result_dtype(dev, **{k: v for k, v in values.items() if v is not None})
    shape = _check_channel_operands(input, values)
    act = normalize_activation(activation)
    plan = batch_norm_plan(dev, shape, dtype, weight is not None, bias is not None, eps, act)
    return plan.execute(values, out, check=False)


def _check_channel_operands(input: ArrayLike, values: dict[str, Any]) -> tuple[int, ...]:
    """input's shape, after checking that every (C,) operand in `values` has that shape."""
    shape = shape_of(input)
    if len(shape) < 2:
        raise ValueError(f"batch_norm: input must be (N, C, *) with at least 2 dims, got shape "
                         f"{tuple(shape)}")
    c = shape[1]
    for name in ("running_mean", "running_var", "weight", "bias"):
        if values.get(name) is not None and shape_of(values[name]) != (c,):
            raise ValueError(f"batch_norm: {name} must have shape (C,) = ({c},) for input of shape "
                             f"{shape}, got {shape_of(values[name])}")
    return shape


def _batch_norm_training(input: ArrayLike, running_mean: ArrayLike | None,
                         running_var: ArrayLike | None, weight: ArrayLike | None,
                         bias: ArrayLike | None, momentum: Any, eps: float,
                         activation: ActivationArg, out: ArrayLike | None) -> ArrayLike:
    """batch_norm(training=True): the batch statistics (channel_stats, which updates the running
    ones on the device), then the inference pass with them."""
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must either both be None or "
                         "neither be None")
    if isinstance(eps, numbers.Real) and not isinstance(eps, bool) and not eps > 0 \
            and not math.isnan(eps):
        raise ValueError(f"batch_norm: eps must be positive during training (torch's rule), got "
                         f"{eps}")
    if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool):
        raise TypeError(f"batch_norm: momentum must be a real number with training=True, got "
                        f"{momentum!r}")
    dev = current_device()
    values = {"input": input, "running_mean": running_mean, "running_var": running_var,
              "weight": weight, "bias": bias}
    dtype = result_dtype(dev, **{k: v for k, v in values.items() if v is not None})
    shape = _check_channel_operands(input, values)
    if len(shape) < 2:
        raise ValueError(f"batch_norm: input must have at least 2 dims (N, C, *), got shape "
                         f"{shape}")
    c, inner = shape[1], math.prod(shape[2:])
    if shape[0] * inner == 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got "
                         f"input of shape {shape}")
    if shape[0] * inner == 0:  # an empty input: an empty result, the running statistics kept
        unit = np.ones(c, dtype)  # (as torch's)
        return batch_norm(input, unit - 1, unit, weight, bias, False, momentum, eps,
                          activation=activation, out=out)
    if np.dtype(dtype) == np.float16:
        raise UnsupportedError("batch_norm: training=True computes the statistics in the input's "
                               "dtype; float16 is not supported there, use float32")
    x = to_device(input, dev, "input", dtype)
    update = running_mean is not None
    stored = {}
    for name, r in (("running_mean", running_mean), ("running_var", running_var)) if update else ():
        if isinstance(r, np.ndarray) and not r.flags.writeable:
            raise ValueError(f"batch_norm: {name} is updated in place with training=True, but "
                             f"it is a read-only numpy array")
        if not is_device_array(r):  # a torch tensor: one that can be written, counted as written
            host_operand(r, name, written=True)
            bump(r)
        stored[name] = to_device(r, dev, name, dtype)  # a strided device view: gathered
    stats = enqueue_channel_stats(dev, x, c, inner, stored.get("running_mean"),
                                  stored.get("running_var"), float(momentum))
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        if update and not is_device_array(r):  # a host array: the update written back into it
            np.copyto(host_operand(r, name, written=True), stored[name].get(), casting="unsafe")
        elif update:  # updated on the device: in place, or a strided view scattered back
            if stored[name] is not r:
                scatter(stored[name], r, dev)
            bump(r)
    act = normalize_activation(activation)
    plan = batch_norm_plan(dev, shape, dtype, weight is not None, bias is not None, eps, act)
    values.update(input=x, running_mean=stats[0], running_var=stats[1])
    if is_device_array(input) or out is None:
        # x is on the device already (a host input is not uploaded again): a host input's
        # result is downloaded, as the op's for a host input
        result = plan.execute(values, out, check=False)
        return result if is_device_array(input) else result.get()
    values["input"] = input  # a host input with a host `out`: the plan writes into it
    return plan.execute(values, out, check=False)


def batch_norm_plan(dev: Device, shape: tuple[int, ...], dtype: np.dtype, has_weight: bool,
                    has_bias: bool, eps: Any, act: Activation | None = None) -> BatchNormPlan:
    """The BatchNormPlan of these arguments on `dev`, made on first use (shared by every
    caller)."""
    return cached_plan(dev, ("batch_norm", shape, dtype, has_weight, has_bias,
                             float(eps) if isinstance(eps, numbers.Real) else eps, act),
                       lambda: BatchNormPlan(dev, shape, has_weight, has_bias, eps, dtype, act))


class ChannelNormPlan(Plan):
    """Layer normalisation over dim 1 of (N, C, *spatial) (each position's C values: mean and
    biased variance, two passes as torch's layer_norm), then weight and bias (C,) where given:
    F.layer_norm(x.movedim(1, -1), (C,), weight, bias, eps).movedim(-1, 1), computed on the
    channels-first data without the two transposes (cl/channel_norm.cl: a work-item a position)."""

    def __init__(self, dev: Device, input_shape: Sequence[int], has_weight: bool,
                 has_bias: bool, eps: float, dtype: np.dtype) -> None:
        shape = _channels_shape("channel_norm", input_shape)
        _check_eps("channel_norm", eps)
        c = shape[1]
        self.channels, self.spatial, self.eps = c, math.prod(shape[2:]), float(eps)
        self.positions = shape[0] * self.spatial
        operands = {"input": shape, "weight": (c,) if has_weight else None,
                    "bias": (c,) if has_bias else None}
        self._prepare(dev, dtype, operands, shape, shape, {"input": shape})
        self.label = "channel_norm"
        defines = precision_defines(self.work)
        defines.update(HAS_WEIGHT=int(has_weight), HAS_BIAS=int(has_bias))
        self.kernel = kernel(dev, "channel_norm.cl", "channel_norm", defines)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        x, w, b = arrays["input"], arrays["weight"], arrays["bias"]
        assert x is not None
        if self.positions == 0 or self.channels == 0:  # (torch: an empty result, or no values)
            return None
        with self.device.lock:
            return self.kernel(self.device.queue, (self.positions,), None, *array_args(x),
                               *array_args(out), *array_args(w if w is not None else x),
                               *array_args(b if b is not None else x),
                               np.int64(self.channels), np.int64(self.spatial),
                               np.int64(self.positions), real_scalar(self.work, self.eps))

    def __call__(self, input: ArrayLike, weight: ArrayLike | None = None,
                 bias: ArrayLike | None = None, *, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input, "weight": weight, "bias": bias}, out)


def channel_norm_plan(dev: Device, shape: tuple[int, ...], dtype: np.dtype, has_weight: bool,
                      has_bias: bool, eps: Any) -> ChannelNormPlan:
    """The ChannelNormPlan of these arguments on `dev`, made on first use (shared by every
    caller)."""
    return cached_plan(dev, ("channel_norm", shape, dtype, has_weight, has_bias,
                             float(eps) if isinstance(eps, numbers.Real) else eps),
                       lambda: ChannelNormPlan(dev, shape, has_weight, has_bias, eps, dtype))


def check_loop_limit(dev: Device, what: str, passes: int) -> None:
    """UnsupportedError when one work-item of a reduction kernel loops `passes` times or more than
    `dev`'s driver runs before it silently ends its loops (Device.loop_limit: Mesa's llvmpipe
    stops every loop of a work-item after 65535 passes in all, and the sum would come out short)."""
    limit = getattr(dev, "loop_limit", None)
    if limit is not None and 2 * passes > limit:
        raise UnsupportedError(
            f"{what}: one work-item would loop {passes} times, more than {dev.name} runs before it "
            f"silently stops a loop (Device.loop_limit = {limit}); use a smaller batch or another "
            f"device")


def enqueue_channel_stats(dev: Device, x: cla.Array, channels: int, inner: int,
                          running_mean: cla.Array | None, running_var: cla.Array | None,
                          momentum: float, out: cla.Array | None = None) -> cla.Array:
    """(2, C): the batch mean and biased variance per channel of x (N, C, inner) (contiguous, work
    dtype); when running_mean/var are given they are updated in place as torch's training
    BatchNorm does (momentum; unbiased variance). A work-group per channel (`reduction_group`).
    `out`: a contiguous (2, C) array to write them into (else a new one)."""
    work = np.dtype(x.dtype)
    batch = x.size // max(channels * inner, 1)
    group = reduction_group(dev, inner, batch)
    check_loop_limit(dev, "batch-norm statistics", 2 * batch * (inner // group + 2) + 2)
    stats = empty(dev, (2, channels), work) if out is None else out
    if channels == 0:
        return stats
    update = running_mean is not None and running_var is not None
    rm = running_mean if update else stats
    rv = running_var if update else stats
    with dev.lock:
        kernel(dev, "elementwise.cl", "channel_stats", elementwise_defines(work, x.size, GROUP=group))(
            dev.queue, (group, channels), (group, 1), *array_args(x), np.int64(batch),
            np.int64(channels),
            np.int64(inner), stats.base_data, *array_args(rm), *array_args(rv), np.int32(update),
            real_scalar(work, momentum))
    return stats


def reduction_group(dev: Device, inner: int, batch: int = 1) -> int:
    """Work-items per work-group of the per-channel reductions (channel_stats,
    channel_grad_sums) over `batch` rows of `inner` values: 64, or the largest power of two the
    device allows below it, on devices other than CPUs; 1 (a work-item per channel, its lanes
    vectorised by the compiler) on CPUs and for rows shorter than _GROUP_ROW, unless one
    work-item would loop past the device's loop limit (llvmpipe, a CPU device: a work-group then
    splits the rows)."""
    limit = getattr(dev, "loop_limit", None)
    long_loop = limit is not None and 2 * (2 * batch * (inner + 2) + 2) > limit
    if not long_loop and (inner < _GROUP_ROW or _is_cpu(dev)):
        return 1
    found = _GROUPS.get(dev)
    if found is None:
        limit = 64
        try:
            limit = min(limit, int(dev.cl_device.max_work_group_size))
        except Exception:  # noqa: BLE001 - a device that does not say: the default
            pass
        found = _GROUPS[dev] = 1 << (max(limit, 1).bit_length() - 1)
    return found


def _is_cpu(dev: Device) -> bool:
    try:
        return bool(dev.cl_device.type & cl.device_type.CPU)
    except cl.Error:
        return False


_GROUPS: dict[Device, int] = {}
#: Rows (values of a channel in an image) this long or longer are reduced by a work-group on a
#: GPU (a work-item per channel would leave most of it idle).
_GROUP_ROW = 256


def enqueue_batch_norm_backward(dev: Device, g: cla.Array, x: cla.Array, mean: cla.Array,
                                var: cla.Array, weight: cla.Array | None, eps: float,
                                training: bool, channels: int, inner: int, *,
                                activation: Activation | None = None,
                                output: cla.Array | None = None,
                                grad_through: cla.Array | None = None,
                                weight_grad: cla.Array | None = None,
                                bias_grad: cla.Array | None = None
                                ) -> tuple[cla.Array, cla.Array, cla.Array]:
    """(grad_input, weight_grad, bias_grad) of batch normalisation of x (N, C, inner) with the
    statistics mean/var (C,) (the batch's when `training`, else fixed). With `activation`
    (one whose gradient follows from its `output`: gradient_from_output), `g` is the gradient of
    that output and the activation's gradient is taken first, in the same passes; `grad_through`
    (x's shape) then receives that gradient too (a residual's, added before the activation).
    weight_grad / bias_grad: contiguous (C,) arrays to write those into (else new ones)."""
    work = np.dtype(x.dtype)
    batch = x.size // max(channels * inner, 1)
    group = reduction_group(dev, inner, batch)
    check_loop_limit(dev, "batch-norm gradient", batch * (inner // group + 2) + 1)
    if activation is not None and (output is None or not gradient_from_output(activation)):
        raise ValueError(f"the batch-norm gradient through {activation} needs an activation "
                         f"whose gradient follows from its output, and that output")
    act = activation_defines(activation) if activation is not None else {}
    defines = elementwise_defines(work, x.size, **act)
    sums = empty(dev, (2, channels), work)
    wg = empty(dev, (channels,), work) if weight_grad is None else weight_grad
    bg = empty(dev, (channels,), work) if bias_grad is None else bias_grad
    dx = empty(dev, tuple(x.shape), work)
    if channels == 0:
        return dx, wg, bg
    y = output if output is not None else g
    gz = grad_through if grad_through is not None else dx
    with dev.lock:
        kernel(dev, "elementwise.cl", "channel_grad_sums", {**defines, "GROUP": group})(
            dev.queue, (group, channels), (group, 1), *array_args(g), *array_args(y), *array_args(x),
            *array_args(mean), *array_args(var), real_scalar(work, eps), np.int64(batch), np.int64(channels),
            np.int64(inner), sums.base_data, *array_args(wg), *array_args(bg))
        if dx.size:
            kernel(dev, "elementwise.cl", "batch_norm_backward", defines)(
                dev.queue, (inner, dx.size // inner), None, *array_args(g), *array_args(y), *array_args(x),
                *array_args(mean), *array_args(var), *array_args(weight if weight is not None else x),
                np.int32(weight is not None), sums.base_data, np.int32(training), *array_args(dx),
                *array_args(gz), np.int32(grad_through is not None), np.int64(channels),
                np.int64(inner), np.int64(batch * inner), real_scalar(work, eps))
    return dx, wg, bg


def enqueue_bias_act(dev: Device, y: cla.Array, bias: cla.Array | None,
                     residual: cla.Array | None, activation: Activation | None, channels: int,
                     inner: int) -> None:
    """In place: y = act(y + bias[(i // inner) % channels] + residual) (contiguous device arrays of
    one dtype; bias/residual optional)."""
    if y.size == 0:
        return
    k = kernel(dev, "elementwise.cl", "bias_act",
               elementwise_defines(y.dtype, y.size, **activation_defines(activation)))
    with dev.lock:
        k(dev.queue, (y.size,), None, *array_args(y), *array_args(bias if bias is not None else y),
          np.int32(bias is not None), *array_args(residual if residual is not None else y),
          np.int32(residual is not None), np.int64(channels), np.int64(inner))


def enqueue_column_sums(dev: Device, g: cla.Array, rows: int, cols: int, out: cla.Array) -> None:
    """out (cols,) = the column sums of g (rows x cols), contiguous, of one dtype (zeros for no
    rows)."""
    if cols == 0:
        return
    check_loop_limit(dev, "bias gradient", rows + 1)
    with dev.lock:
        kernel(dev, "elementwise.cl", "column_sums", elementwise_defines(g.dtype, max(g.size, out.size)))(
            dev.queue, (cols,), None, *array_args(g), np.int64(rows), *array_args(out))
