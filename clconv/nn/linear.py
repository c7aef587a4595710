"""Linear: torch.nn.Linear on an OpenCL device, its activation fused as the convolutions'."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..blas import clblast
from ..blas.engine import gemm_engine
from ..ops.activation import ActivationArg, normalize_activation
from ..ops.channels import enqueue_column_sums
from ..ops.linear import LinearPlan
from ..ops.precision import check_precision, compute_dtype, store
from ..runtime.device import current_device
from ..runtime.device import device as find_device
from ..runtime.errors import device_memory_errors, sizes_text
from ..runtime.memory import empty
from ..runtime.transfer import (
    ArrayLike,
    deliver,
    element_offset,
    is_device_array,
    result_dtype,
    to_device,
)
from .module import (Layer, activation_grad, check_grad, check_saved, layer_dtype,
                     positive_int, saved_arrays, with_activation)


class Linear(Layer):
    """torch.nn.Linear on an OpenCL device: (*, in_features) -> (*, out_features), y = x @ W.T + b
    (then `activation`: fused into the GEMM's store, except in training for an activation whose
    gradient needs its input (SiLU, GELU, ...): then a separate pass). weight (out_features,
    in_features) and bias (out_features,) ~ U(-1/sqrt(in_features), 1/sqrt(in_features)) as
    torch's initialisation."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: Any = None, dtype: Any = None, *, rng: Any = None,
                 activation: ActivationArg = None) -> None:
        self.in_features = self.in_channels = positive_int(in_features, "in_features")
        self.out_features = self.out_channels = positive_int(out_features, "out_features")
        self.groups = 1
        self.activation = normalize_activation(activation)
        self.device = current_device() if device is None else find_device(device)
        self.dtype = layer_dtype(dtype)
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
            out = with_activation(self, lambda fused: self._linear(x, fused))
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
            check_saved(self, saved_arrays(self))
            result_dtype(dev, grad_output=grad_output, weight=self._weight)
            g = self._in_work(to_device(grad_output, dev, "grad_output", self.dtype))
            check_grad(g, (*x.shape[:-1], self.out_features), x.dtype)
            if self.activation is not None:
                g = activation_grad(self, g)
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
