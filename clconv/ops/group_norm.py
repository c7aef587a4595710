"""torch.nn.functional.group_norm on the device: `group_norm(...)` and its `GroupNormPlan`: the
per-(image, group) statistics (elementwise.cl's channel_stats over an (N * G, C / G * spatial)
view), then cl/group_norm.cl's scale and shift per (image, channel) with an optional fused
activation (a diffusion U-Net's GroupNorm -> SiLU)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..runtime.device import Device, current_device
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import ArrayLike, element_offset, index_type, result_dtype
from .activation import ActivationArg, activation_defines, normalize_activation
from .channels import enqueue_channel_stats
from .plan import Plan, cached_plan, shape_ints, shape_of
from .scalars import plain_number

__all__ = ["GroupNormPlan", "group_norm", "instance_norm", "layer_norm"]


class GroupNormPlan(Plan):
    """act(group_norm(x, num_groups, weight, bias, eps)) for one input shape and dtype."""

    def __init__(self, dev: Device, input_shape: Sequence[int], num_groups: int,
                 has_weight: bool, has_bias: bool, eps: float, dtype: np.dtype,
                 activation: ActivationArg = None, zero_rstd: bool = False) -> None:
        """zero_rstd: 1 / sqrt(var + eps) is 0 where both are 0 (instance_norm: torch computes
        its statistics as batch_norm's, whose InvStd does that)."""
        shape = shape_ints(input_shape, "input_shape")
        if len(shape) < 2:
            raise ValueError(f"group_norm: input must have at least 2 dims (N, C, *), got shape "
                             f"{shape}")
        if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
            raise TypeError(f"group_norm: num_groups must be an int, got {num_groups!r}")
        if num_groups < 1 or shape[1] % num_groups:
            raise ValueError(f"group_norm: the {shape[1]} channels of input {shape} must be "
                             f"divisible by num_groups={num_groups} (>= 1)")
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool):
            raise TypeError(f"group_norm: eps must be a real number, got {eps!r}")
        if shape[0] * (shape[1] // num_groups) * math.prod(shape[2:]) == 1:
            # torch's _verify_batch_size over (N * C / G, G, *spatial): one value per group
            raise ValueError(f"group_norm: expected more than 1 value per channel, got input size "
                             f"{list(shape)} with num_groups={num_groups}")
        c = shape[1]
        self.groups, self.channels, self.inner = int(num_groups), c, math.prod(shape[2:])
        self.eps = float(eps)
        act = normalize_activation(activation)
        operands = {"input": shape, "weight": (c,) if has_weight else None,
                    "bias": (c,) if has_bias else None}
        self._prepare(dev, dtype, operands, shape, shape, {"input": shape})
        self.label = "group_norm" if act is None else f"group_norm + {act}"
        defines = precision_defines(self.work)
        defines.update(activation_defines(act), INDEX_T=index_type(math.prod(shape)))
        if zero_rstd and self.eps == 0:
            defines["ZERO_RSTD"] = None
        self.kernel = kernel(dev, "group_norm.cl", "group_norm", defines)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        x, w, b = arrays["input"], arrays["weight"], arrays["bias"]
        assert x is not None
        if out.size == 0:
            return None
        dev, work = self.device, self.work
        rows = out.size // self.inner  # N * C
        groups_total = rows // self.channels * self.groups
        stats = enqueue_channel_stats(dev, x, groups_total, rows // groups_total * self.inner,
                                      None, None, 0.0)

        def args(a: cla.Array | None) -> tuple[Any, np.int64]:
            a = x if a is None else a  # never read (has_weight / has_bias 0)
            return a.base_data, np.int64(element_offset(a))
        with dev.lock:
            return self.kernel(dev.queue, (self.inner, rows), None, *args(x), stats.base_data,
                               np.int64(groups_total), *args(w), np.int32(w is not None), *args(b),
                               np.int32(b is not None), *args(out), np.int64(self.channels),
                               np.int64(self.groups),
                               np.float64(self.eps) if work == np.float64 else np.float32(self.eps))

    def __call__(self, input: ArrayLike, weight: ArrayLike | None = None,
                 bias: ArrayLike | None = None, *, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input, "weight": weight, "bias": bias}, out)


def group_norm(input: ArrayLike, num_groups: int, weight: ArrayLike | None = None,
               bias: ArrayLike | None = None, eps: float = 1e-5, *,
               activation: ActivationArg = None, out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.group_norm: input (N, C, *) normalised over each image's groups of
    C / num_groups channels (biased variance, as torch's), then weight/bias (C,) if given and the
    optional fused activation. Returns numpy for a numpy input, else a device array."""
    return _group_norm(input, num_groups, weight, bias, eps, activation, out)


def _group_norm(input: ArrayLike, num_groups: int, weight: ArrayLike | None,
                bias: ArrayLike | None, eps: float, activation: ActivationArg,
                out: ArrayLike | None, zero_rstd: bool = False) -> ArrayLike:
    """group_norm, with GroupNormPlan's zero_rstd rule where asked (instance_norm)."""
    num_groups, eps = plain_number(num_groups), plain_number(eps)
    dev = current_device()
    values = {"input": input, "weight": weight, "bias": bias}
    dtype = result_dtype(dev, **{k: v for k, v in values.items() if v is not None})
    shape = shape_of(input)
    c = shape[1] if len(shape) >= 2 else None
    for name in ("weight", "bias"):
        if values[name] is not None and shape_of(values[name]) != (c,):
            raise ValueError(f"group_norm: {name} must have shape (C,) = ({c},) for input of "
                             f"shape {shape}, got {shape_of(values[name])}")
    act = normalize_activation(activation)
    plan = cached_plan(dev, ("group_norm", shape, num_groups, dtype, weight is not None,
                             bias is not None, float(eps) if isinstance(eps, numbers.Real)
                             else eps, act, zero_rstd),
                       lambda: GroupNormPlan(dev, shape, num_groups, weight is not None,
                                             bias is not None, eps, dtype, act, zero_rstd))
    return plan.execute(values, out, check=False)


def layer_norm(input: ArrayLike, normalized_shape: Sequence[int],
               weight: ArrayLike | None = None, bias: ArrayLike | None = None,
               eps: float = 1e-5) -> ArrayLike:
    """torch.nn.functional.layer_norm: input (*, *normalized_shape) normalised over its last
    len(normalized_shape) dims (biased variance, as torch's), then * weight + bias (each of
    normalized_shape, optional). On the device as group_norm with one group over a (rows, 1,
    size) view of the same data, then clconv.mul / add. Returns numpy for a numpy input, else a
    device array."""
    eps = plain_number(eps)
    from .binary import add, mul, sub
    from .shape import reshaped

    if isinstance(normalized_shape, (tuple, list)) and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in normalized_shape):
        ns: tuple[int, ...] = tuple(int(v) for v in normalized_shape)
    else:  # an int too, as F.layer_norm (nn.LayerNorm's constructor takes one)
        hint = f", e.g. ({normalized_shape},) for the last dim" \
            if isinstance(normalized_shape, numbers.Integral) else " (a tuple or list)"
        raise TypeError(f"layer_norm: normalized_shape must be a sequence of ints{hint}, got "
                        f"{normalized_shape!r}")
    shape = tuple(int(v) for v in shape_of(input))
    if not ns or len(ns) > len(shape) or shape[len(shape) - len(ns):] != ns:
        raise ValueError(f"layer_norm: input of shape {shape} does not end in normalized_shape "
                         f"{ns}")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and tuple(shape_of(a)) != ns:
            raise ValueError(f"layer_norm: {name} must have shape normalized_shape {ns}, got "
                             f"{tuple(shape_of(a))}")
    dtype = result_dtype(current_device(), **{k: v for k, v in  # (mixed dtypes named)
                                              (("input", input), ("weight", weight),
                                               ("bias", bias)) if v is not None})
    size = math.prod(ns)
    flat = reshaped(input, (-1, 1, size) if size else (0, 1, 0))
    if size == 1:
        # one value a row: its deviation from its own mean, x - x (torch's 0; NaN for NaN, Inf),
        # times 1 / sqrt(0 + eps): NaN for an eps that is not positive in the working precision
        y = reshaped(sub(flat, flat), shape)
        work = np.float64 if dtype == np.float64 else np.float32  # (float16 computes in float)
        if not work(eps) > 0:
            y = mul(y, math.nan, out=y if isinstance(y, cla.Array) else None)
    else:
        y = reshaped(group_norm(flat, 1, None, None, eps), shape)
    if weight is not None:
        y = mul(y, weight, out=y if isinstance(y, cla.Array) else None)
    if bias is not None:
        y = add(y, bias, out=y if isinstance(y, cla.Array) else None)
    return y


def instance_norm(input: ArrayLike, running_mean: ArrayLike | None = None,
                  running_var: ArrayLike | None = None, weight: ArrayLike | None = None,
                  bias: ArrayLike | None = None, use_input_stats: bool = True,
                  momentum: float = 0.1, eps: float = 1e-5) -> ArrayLike:
    """torch.nn.functional.instance_norm: input (N, C, *spatial) (a spatial dim needed only for
    the input's own statistics) normalised per image and channel by its
    own statistics (use_input_stats=True: group_norm with one channel a group), or by
    running_mean / running_var (C,) when use_input_stats=False (an eval-mode InstanceNorm with
    track_running_stats: batch_norm on them); then weight / bias (C,) if given. Updating running
    statistics (use_input_stats=True with them given, torch's training mode) is refused: pass
    use_input_stats=False to normalise with them. Returns numpy for a numpy input, else a device
    array."""
    momentum, eps = plain_number(momentum), plain_number(eps)
    from .channels import batch_norm

    shape = tuple(int(v) for v in shape_of(input))
    if len(shape) < 2:
        raise ValueError(f"instance_norm: input must be (N, C, *spatial), got shape {shape}")
    if len(shape) == 2 and use_input_stats:  # (torch's words: one value an instance)
        raise ValueError(f"instance_norm: expected more than 1 spatial element, got input size "
                         f"{list(shape)}")
    if not use_input_stats:
        if running_mean is None or running_var is None:
            raise ValueError("instance_norm: use_input_stats=False needs running_mean and "
                             "running_var")
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    if running_mean is not None or running_var is not None:
        raise ValueError("instance_norm: use_input_stats=True with running statistics would "
                         "update them (torch's training mode), which clconv does not do: pass "
                         "use_input_stats=False to normalise with them, or leave them out")
    for name, v in (("weight", weight), ("bias", bias)):  # (in its own name, not group_norm's)
        if v is not None and tuple(shape_of(v)) != (shape[1],):
            raise ValueError(f"instance_norm: {name} must have shape (C,) = ({shape[1]},) for "
                             f"input of shape {shape}, got {tuple(shape_of(v))}")
    if math.prod(shape[2:]) == 1:  # (torch asks it of the shape, empty batches too)
        raise ValueError(f"instance_norm: expected more than 1 spatial element, got input size "
                         f"{list(shape)}")
    if shape[1] == 0:  # no channels: nothing to normalise (group_norm needs a group)
        return group_norm(input, 1, weight, bias, eps)
    # torch's statistics are batch_norm's: a constant instance with eps = 0 gives 0 (InvStd)
    return _group_norm(input, shape[1], weight, bias, eps, None, None, zero_rstd=True)
