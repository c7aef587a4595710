"""BatchNorm1d/2d/3d: batch statistics and running-stat updates in train(), running
statistics in eval(), as torch.nn.BatchNormNd."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..ops.channels import batch_norm_plan, enqueue_batch_norm_backward, enqueue_channel_stats
from ..ops.precision import check_precision, compute_dtype
from ..runtime.device import current_device
from ..runtime.device import device as find_device
from ..runtime.interop import host_convertible, host_operand, is_torch_tensor
from ..runtime.memory import empty
from ..runtime.transfer import ArrayLike, result_dtype, to_device
from ..runtime.versions import stamp
from .module import (Module, check_grad, check_saved, check_state, enter, layer_dtype, leave,
                     positive_int, state_values)


class _BatchNorm(Module):
    """Batch normalisation over the channel dim 1 of (N, C, *) as torch.nn.BatchNormNd: in
    training mode with the batch's statistics (mean, biased variance), updating running_mean and
    running_var (unbiased variance) by `momentum` (None: the cumulative average); in evaluation
    mode with the running statistics. weight (ones) and bias (zeros) when `affine` (no bias with
    bias=False, torch 2.13's keyword)."""

    dims: tuple[int, ...] = (4,)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device: Any = None,
                 dtype: Any = None, *, bias: bool = True) -> None:
        self.num_features = positive_int(num_features, "num_features")
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or eps < 0:
            raise ValueError(f"eps must be a non-negative number, got {eps!r}")
        self.eps, self.momentum = float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.has_bias = self.affine and bool(bias)
        self.device = current_device() if device is None else find_device(device)
        self.dtype = layer_dtype(dtype)
        self._work = compute_dtype(self.dtype)
        result_dtype(self.device, dtype=np.empty(0, self.dtype))
        check_precision(self.device, self.dtype)
        c = self.num_features
        self._weight = self._put(np.ones(c)) if affine else None
        self._bias = self._put(np.zeros(c)) if self.has_bias else None
        self._running_mean = self._put(np.zeros(c)) if track_running_stats else None
        self._running_var = self._put(np.ones(c)) if track_running_stats else None
        self.num_batches_tracked = 0
        self.weight_grad: cla.Array | None = None
        self.bias_grad: cla.Array | None = None
        self._saved: tuple[Any, ...] | None = None

    def _put(self, value: Any) -> cla.Array:
        """A (C,) parameter or statistic on the device, in the compute dtype (float32 for float16
        layers: statistics accumulate there); `np.asarray` of it downloads it."""
        return host_convertible(to_device(np.asarray(value, dtype=self._work), self.device,
                                          "value", self._work))

    @property
    def weight(self) -> cla.Array | None:
        """The scale (C,) on the device (None without `affine`)."""
        return host_convertible(self._weight)

    @weight.setter
    def weight(self, value: ArrayLike) -> None:
        self._weight = self._replacing("weight", self._weight, value, "affine=True")

    @property
    def bias(self) -> cla.Array | None:
        """The shift (C,) on the device (None without `affine` or with bias=False)."""
        return host_convertible(self._bias)

    @bias.setter
    def bias(self, value: ArrayLike) -> None:
        self._bias = self._replacing("bias", self._bias, value, "affine=True and bias=True")

    @property
    def running_mean(self) -> cla.Array | None:
        """The running mean (C,) on the device (None without `track_running_stats`)."""
        return host_convertible(self._running_mean)

    @running_mean.setter
    def running_mean(self, value: ArrayLike) -> None:
        self._running_mean = self._replacing("running_mean", self._running_mean, value,
                                             "track_running_stats=True")

    @property
    def running_var(self) -> cla.Array | None:
        """The running variance (C,) on the device (None without `track_running_stats`)."""
        return host_convertible(self._running_var)

    @running_var.setter
    def running_var(self, value: ArrayLike) -> None:
        self._running_var = self._replacing("running_var", self._running_var, value,
                                            "track_running_stats=True")

    def _replacing(self, name: str, current: cla.Array | None, value: Any,
                   needs: str) -> cla.Array:
        """The replacement of parameter `name` (see `_parameter`); a layer without it refuses
        one (`needs`: the constructor arguments that give it)."""
        if current is None:
            raise ValueError(f"{name} can be replaced by an array of the same shape, not added "
                             f"(construct the layer with {needs})")
        return self._parameter(name, value)

    def _parameter(self, name: str, value: Any) -> cla.Array:
        """A replacement weight, bias or running statistic on the layer's device: a device array
        of the compute dtype is used itself (an optimizer's in-place updates reach the layer, as a
        torch Parameter assigned to a module), anything else is checked and uploaded."""
        if isinstance(value, cla.Array) and value.dtype == self._work \
                and tuple(value.shape) == (self.num_features,):
            return to_device(value, self.device, name, self._work)
        return self._put(self._host_entry(name, value, name))

    def parameters(self) -> list[cla.Array]:
        return [self.weight, self.bias][:2 if self.has_bias else 1] if self.affine else []

    def gradients(self) -> list[cla.Array | None]:
        return [self.weight_grad, self.bias_grad][:2 if self.has_bias else 1] \
            if self.affine else []

    def _entries(self) -> dict[str, Any]:
        entries: dict[str, Any] = {}
        if self.affine:
            entries.update(weight=self._weight)
        if self.has_bias:
            entries.update(bias=self._bias)
        if self.track_running_stats:
            entries.update(running_mean=self._running_mean, running_var=self._running_var,
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
        grads = (("weight", self.weight_grad), ("bias", self.bias_grad))[:2 if self.has_bias else 1]
        return {k: None if g is None else g.get() for k, g in grads}

    def load_state_dict(self, state: Any, strict: bool = True) -> tuple[list[str], list[str]]:
        """Loads torch.nn.BatchNormNd's entries (numpy arrays, torch tensors or device arrays);
        shapes must be (num_features,) (ValueError naming the key)."""
        check_state(state)
        expected = list(self._entries())
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                             f"unexpected keys {unexpected} (expected exactly {expected})")
        values: dict[str, Any] = {}
        for key in (k for k in expected if k in state):
            if key == "num_batches_tracked":
                values[key] = self._count(state[key], f"state[{key!r}]")
            else:
                values[key] = self._host_entry(key, state[key], f"state[{key!r}]")
        for key, value in values.items():
            if key == "num_batches_tracked":
                self.num_batches_tracked = value
            else:
                setattr(self, "_" + key, self._put(value))
        return missing, unexpected

    @staticmethod
    def _host(value: Any, what: str) -> np.ndarray:
        if isinstance(value, cla.Array):
            return value.get()
        if is_torch_tensor(value):
            value = state_values(value)
        return np.asarray(host_operand(value, what))

    def _count(self, value: Any, what: str) -> int:
        """num_batches_tracked's entry as an int: one number (torch copies it into its int64
        buffer, so a float is truncated); ValueError naming `what` otherwise."""
        value = self._host(value, what)
        if value.size != 1 or value.dtype.kind not in "biuf":
            raise ValueError(f"{what} must be one number (torch's int64 count of batches), got "
                             f"shape {value.shape} and dtype {value.dtype}")
        return int(value.reshape(()))

    def _host_entry(self, key: str, value: Any, what: str) -> np.ndarray:
        """`value` for the (C,) entry `key` as numpy (ValueError/TypeError naming `what`)."""
        value = self._host(value, what)
        if value.shape != (self.num_features,):
            raise ValueError(f"{what} has shape {value.shape}; {type(self).__name__}'s {key} has "
                             f"shape ({self.num_features},)")
        if value.dtype.kind != "f":
            raise TypeError(f"{what} has dtype {value.dtype}; it must be floating point")
        return value

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
            dev, x, dtype, host = enter(input, "input")
            if dtype != self.dtype:
                raise TypeError(f"input has dtype {dtype}; this layer's dtype is {self.dtype}")
            c, inner = shape[1], math.prod(shape[2:])
            batch_stats = self.training or not self.track_running_stats
            if batch_stats and not self.eps > 0:  # (an eps of 0 divides by a variance of 0)
                raise ValueError(f"{type(self).__name__}: eps must be positive when normalising "
                                 f"with the batch's statistics (training, or no running ones; "
                                 f"torch's rule), got {self.eps}")
            if batch_stats:
                if shape[0] * inner == 1:  # torch's rule whenever batch statistics are used
                    raise ValueError(f"expected more than 1 value per channel when training, got "
                                     f"input of shape {shape}")
                update = self.training and self.track_running_stats
                factor = 0.0
                if update:
                    self.num_batches_tracked += 1
                    factor = (1.0 / self.num_batches_tracked if self.momentum is None
                              else float(self.momentum))
                if x.size == 0:  # an empty batch: counted, the running statistics kept (torch's)
                    mean = var = empty(dev, (c,), self._work)
                else:
                    stats = enqueue_channel_stats(dev, x, c, inner,
                                                  self.running_mean if update else None,
                                                  self.running_var if update else None, factor)
                    mean, var = stats[0], stats[1]
            else:
                mean, var = self.running_mean, self.running_var
            plan = batch_norm_plan(dev, shape, self._work, self.affine, self.has_bias, self.eps)
            y = plan(x, mean, var, self._weight, self._bias)
            self._saved = (x, mean, var, batch_stats)
            self._stamps = stamp(x, mean, var)
            return leave(dev, y, dtype, host)

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output -> grad_input; sets weight_grad and bias_grad (when affine)."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward call first")
        x, mean, var, batch_stats = self._saved
        check_saved(self, (x, mean, var))
        with self.device:
            dev, g, dtype, host = enter(grad_output, "grad_output")
            check_grad(g, tuple(x.shape), x.dtype)
            if x.size == 0:  # an empty batch: no gradient reaches the parameters (torch's zeros)
                dx = empty(dev, tuple(x.shape), self._work)
                wg, bg = (empty(dev, (self.num_features,), self._work) for _ in range(2))
                with dev.lock:
                    wg.fill(0, queue=dev.queue)
                    bg.fill(0, queue=dev.queue)
            else:
                dx, wg, bg = enqueue_batch_norm_backward(dev, g, x, mean, var, self._weight,
                                                         self.eps, batch_stats, self.num_features,
                                                         math.prod(x.shape[2:]))
            if self.affine:  # host-convertible, as the other layers' gradients
                self.weight_grad = host_convertible(wg)
                self.bias_grad = host_convertible(bg) if self.has_bias else None
            return leave(dev, dx, dtype, host)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}"
                f"{'' if self.has_bias or not self.affine else ', bias=False'})")


class BatchNorm1d(_BatchNorm):
    """torch.nn.BatchNorm1d: (N, C) or (N, C, L)."""

    dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """torch.nn.BatchNorm2d: (N, C, H, W)."""

    dims = (4,)


class BatchNorm3d(_BatchNorm):
    """torch.nn.BatchNorm3d: (N, C, D, H, W)."""

    dims = (5,)
