"""linear: torch.nn.functional.linear on the convolutions' GEMM engines, epilogue in one pass.

    y = clconv.linear(x, w, b)                                   # x (*, in), w (out, in) -> (*, out)
    y = clconv.linear(x, w, b, activation="relu", residual=r)    # act(x @ w.T + b + r)

The product is one GEMM, (rows x in) @ (in x out)^T with rows = prod(leading dims), on the engine
`clconv.blas.engine.gemm_engine` picks for the device (clconv's packed GEMM on PoCL's CPU devices,
CLBlast elsewhere; CLCONV_GEMM overrides), the rule the transposed convolutions and gradients follow.
Bias, residual and activation are applied together: on the packed engine in the GEMM's store (the
GEMM is computed as W @ X^T, so that the bias is per row of the tile, and stored transposed into
(rows, out)), otherwise in one pass of cl/elementwise.cl's bias_act after CLBlast's GEMM.
A few rows (GEMV_ROWS, a classifier at batch 1-4) on CPU devices are cl/gemv.cl instead: no
GEMM, the weight read once, the epilogue in its store.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..blas import clblast, packed
from ..blas.engine import gemm_engine
from ..runtime.device import Device, current_device
from ..runtime.errors import ResidualShapeError
from ..runtime.interop import host_operand
from ..runtime.program import BoundKernel, kernel, precision_defines
from ..runtime.transfer import (ArrayLike, element_offset, index_type, is_device_array,
                                result_dtype)
from .activation import ActivationArg, activation_defines, normalize_activation
from .channels import enqueue_bias_act
from .binary import add
from .plan import Plan, cached_plan, derived, is_constant, shape_of

__all__ = ["LinearPlan", "linear"]

#: The most rows (the input's leading dims together) cl/gemv.cl computes, and the device kinds
#: it runs on (where it was measured: GPUs keep their GEMM).
GEMV_ROWS, GEMV_KINDS = 4, ("cpu",)


def _packed_epilogue_ready() -> bool:
    """Whether clconv.blas.packed.enqueue_gemm takes any activation and a residual (its store then
    computes the whole epilogue)."""
    return "residual" in inspect.signature(packed.enqueue_gemm).parameters


class LinearPlan(Plan):
    """y = act(input @ weight.T + bias + residual) for fixed shapes: input (*, in), weight
    (out, in), bias (out,) or None, residual (*, out) or None."""

    def _batched(self) -> bool:
        return len(self.output_shape) >= 2  # (*, out): dim 0 of any batched input

    def __init__(self, dev: Device, input_shape: Sequence[int], weight_shape: Sequence[int],
                 bias_shape: Sequence[int] | None, dtype: np.dtype,
                 activation: ActivationArg = None,
                 residual_shape: Sequence[int] | None = None) -> None:
        x_shape, w_shape = tuple(input_shape), tuple(weight_shape)
        if len(w_shape) != 2:
            raise ValueError(f"linear: weight must be 2-d (out_features, in_features), got shape "
                             f"{w_shape}")
        if len(x_shape) < 1:
            raise ValueError("linear: input must have at least 1 dim (*, in_features), got a 0-d "
                             "array")
        n_out, k = w_shape
        if x_shape[-1] != k:
            raise ValueError(f"linear: input has {x_shape[-1]} features (last dim of shape "
                             f"{x_shape}) but weight {w_shape} expects {k}")
        if bias_shape is not None and tuple(bias_shape) != (n_out,):
            raise ValueError(f"linear: bias must have shape ({n_out},), got {tuple(bias_shape)}")
        out_shape = (*x_shape[:-1], n_out)
        if residual_shape is not None and tuple(residual_shape) != out_shape:
            raise ResidualShapeError(f"linear: residual must have the output's shape {out_shape}, "
                                     f"got {tuple(residual_shape)}")
        self.act = normalize_activation(activation)
        self.rows, self.k, self.n = math.prod(x_shape[:-1]), k, n_out
        operands = {"input": x_shape, "weight": w_shape,
                    "bias": None if bias_shape is None else (n_out,),
                    "residual": None if residual_shape is None else out_shape}
        self._prepare(dev, dtype, operands, out_shape, (self.rows, n_out),
                      {"input": x_shape, "weight": w_shape, "output": out_shape})
        self.engine = gemm_engine(dev)
        self.needs_gemm = self.engine is clblast
        if self.needs_gemm:
            clblast.require("linear")
        self.fused = self.engine is packed and _packed_epilogue_ready()
        self.has_epilogue = (bias_shape is not None or residual_shape is not None or
                             self.act is not None)
        self.label = "linear" + (f" + {self.act}" if self.act is not None else "")
        # A few rows on a CPU device (a classifier at batch 1-4): cl/gemv.cl, the weight read
        # once (the packed GEMM's 16-column tile computes 15 columns it throws away: ResNet-18's
        # fc at batch 1 0.30 ms against torch's 0.05)
        self.gemv = None
        if dev.kind in GEMV_KINDS and 1 <= self.rows <= GEMV_ROWS and k > 0 and n_out > 0:
            defines = precision_defines(self.work)
            defines.update(activation_defines(self.act), ROWS=self.rows,
                           INDEX_T=index_type(n_out * k, self.rows * max(n_out, k)),
                           BIAS_AT_RUN_TIME=None, RESIDUAL_AT_RUN_TIME=None)
            self.gemv = BoundKernel(kernel(dev, "gemv.cl", "gemv", defines),
                                    (*(None,) * 10, np.int32(k), np.int32(n_out)), range(10))
            self.needs_gemm = False

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> Any:
        x, w, b, r = (arrays[n] for n in ("input", "weight", "bias", "residual"))
        assert x is not None and w is not None
        dev = self.device
        m, n, k = self.rows, self.n, self.k
        if self.gemv is not None:
            with dev.lock:
                return self.gemv(dev.queue, (n,), None, x.base_data, np.int64(element_offset(x)),
                                 w.base_data, np.int64(element_offset(w)),
                                 None if b is None else b.base_data,
                                 np.int64(0 if b is None else element_offset(b)),
                                 None if r is None else r.base_data,
                                 np.int64(0 if r is None else element_offset(r)), out.base_data,
                                 np.int64(element_offset(out)))
        with dev.lock:
            if k == 0:
                out.fill(0)
            elif self.fused and self.has_epilogue:
                self._packed_fused(x, w, b, r, out)
                return
            else:
                self.engine.gemm(dev, m, n, k, x, element_offset(x), 0, w, element_offset(w), 0,
                                 out, element_offset(out), 0, b_transposed=True)
            if self.has_epilogue:
                enqueue_bias_act(dev, out, b, r, self.act, n, 1)

    def _packed_fused(self, x: cla.Array, w: cla.Array, b: cla.Array | None,
                      r: cla.Array | None, out: cla.Array) -> None:
        """C' = W (out x in) @ X^T (in x rows) on the packed engine, stored transposed into out
        (rows, out): C' row i (a feature) at stride 1, column j (a row of x) at j * out; the bias
        is per row of C', the residual laid out as out. Call holding dev.lock."""
        dev = self.device
        m, n, k = self.n, self.rows, self.k
        tile = packed.tile_for(dev, self.work, m, n, k)
        a_size, b_size = tile.packed_a_size(m, k), tile.packed_b_size(n, k)
        if is_constant(w):  # weights that never change (a compiled model's): packed once
            ready = derived(w, ("packed linear", tile, m, k), lambda: packed.pack_a(
                dev, m, k, w, element_offset(w), tile=tile))
            a_buf, a_off = ready.data, ready.offset
            scratch = packed.packed_scratch(dev, b_size, self.work)
            b_off = 0
        else:
            scratch = packed.packed_scratch(dev, a_size + b_size, self.work)
            packed.enqueue_pack_a(dev, tile, m, k, w, element_offset(w), 0, 1, k, False, scratch,
                                  0, a_size)
            a_buf, a_off, b_off = scratch, 0, a_size
        packed.enqueue_pack_b(dev, tile, n, k, x, element_offset(x), 0, 1, k, True, scratch,
                              b_off, b_size)
        packed.enqueue_gemm(dev, tile, m, n, k, a_buf, a_off, 0, scratch, b_off, 0, out,
                            element_offset(out), 0, 1, segment=1, segment_stride=self.n,
                            bias=b, bias_offset=0 if b is None else element_offset(b),
                            activation=self.act, residual=r,
                            residual_offset=0 if r is None else element_offset(r))

    def __call__(self, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
                 residual: ArrayLike | None = None, out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input, "weight": weight, "bias": bias,
                             "residual": residual}, out)


def linear(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *,
           activation: ActivationArg = None, residual: ArrayLike | None = None,
           out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.linear, with an optional fused epilogue: input (*, in_features),
    weight (out_features, in_features), bias (out_features,) -> act(input @ weight.T + bias +
    residual) of shape (*, out_features); residual (optional) has the output's shape;
    activation as the convolutions' (None, 'relu', ('leaky_relu', 0.2), ...).
    A 1-d weight (in_features,) gives an output of shape (*) (torch's matrix-vector form; a bias
    then is 0-d or of >= 2 dims broadcasting to the output, and, as torch's, not allowed with a
    2-d input). A 0-d or (1,) bias is broadcast
    over the features, as torch's; another bias that broadcasts to the output (torch's addmm:
    (N, out_features), (N, 1)) is added in a second pass, with the activation."""
    if len(shape_of(weight)) == 1:
        return _linear_vector(input, weight, bias, activation, residual, out)
    w_shape = shape_of(weight)
    if bias is not None and len(w_shape) == 2 and w_shape[0] != 1 and \
            tuple(shape_of(bias)) in ((), (1,)):
        bias = _spread_bias(bias, w_shape[0])  # torch broadcasts a 0-d or (1,) bias
    if bias is not None and len(w_shape) == 2 and tuple(shape_of(bias)) != (w_shape[0],):
        return _linear_broadcast_bias(input, weight, bias, activation, residual, out)
    dev = current_device()
    values = {"input": input, "weight": weight, "bias": bias, "residual": residual}
    dtype = result_dtype(dev, **{n: v for n, v in values.items() if v is not None})
    shapes = {n: None if v is None else shape_of(v) for n, v in values.items()}
    act = normalize_activation(activation)
    plan = cached_plan(dev, ("linear", shapes["input"], shapes["weight"], shapes["bias"],
                             shapes["residual"], dtype, act),
                       lambda: LinearPlan(dev, shapes["input"], shapes["weight"], shapes["bias"],
                                          dtype, act, shapes["residual"]))
    return plan.execute(values, out, check=False)


def _linear_broadcast_bias(input: ArrayLike, weight: ArrayLike, bias: ArrayLike,
                           activation: ActivationArg, residual: ArrayLike | None,
                           out: ArrayLike | None) -> ArrayLike:
    """linear with a bias of another shape that broadcasts to the output (*, out_features)
    (torch's addmm takes a (N, out_features) or (N, 1) one beside a 2-d input): the product
    (with the residual) first, then the bias added with the activation fused."""
    out_shape = (*shape_of(input)[:-1], shape_of(weight)[0])
    b_shape = tuple(shape_of(bias))
    if not _broadcasts_to(b_shape, out_shape):
        raise ValueError(f"linear: bias must have shape ({out_shape[-1]},) or one that "
                         f"broadcasts to the output's {out_shape}, got {b_shape}")
    return add(linear(input, weight, None, residual=residual), bias, activation=activation,
               out=out)


def _linear_vector(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None,
                   activation: ActivationArg, residual: ArrayLike | None,
                   out: ArrayLike | None) -> ArrayLike:
    """linear with a 1-d weight (k,): the (1, k) weight's product with its last dim dropped."""
    k = shape_of(weight)[0]
    x_shape = shape_of(input)
    out_shape = tuple(x_shape[:-1])
    b_shape = None if bias is None else tuple(shape_of(bias))
    if b_shape is not None and len(b_shape) == 1:
        # (torch's matrix path takes a 1-d bias for a matrix weight only)
        raise ValueError(f"linear: with a 1-d weight the bias must be 0-d or of >= 2 dims "
                         f"broadcasting to the output, got shape {b_shape}")
    if bias is not None and len(x_shape) == 2:
        # torch sends a 2-d input with a bias to addmm, which refuses a 1-d weight
        raise ValueError("linear: a 1-d weight with a bias takes an input of 1 or >= 3 dims "
                         "(torch's addmm refuses a 2-d one: 'mat2 must be a matrix')")
    for name, v in (("residual", residual), ("out", out)):
        if v is not None and tuple(shape_of(v)) != out_shape:
            raise ValueError(f"linear: {name} must have the output's shape {out_shape}, got "
                             f"{tuple(shape_of(v))}")
    if b_shape is not None and len(b_shape) >= 2:
        # torch adds it to the product in place: it broadcasts to the output, not beyond
        if not _broadcasts_to(b_shape, out_shape):
            raise ValueError(f"linear: bias of shape {b_shape} does not broadcast to the "
                             f"output's {out_shape}")
        return add(_linear_vector(input, weight, None, None, residual, None), bias,
                   activation=activation, out=out)
    if out is not None and not _contiguous(out):
        raise ValueError("linear: with a 1-d weight, out must be contiguous")
    col = lambda a: None if a is None else a.reshape(*out_shape, 1)
    y = linear(input, weight.reshape(1, k), None if bias is None else bias.reshape(1),
               activation=activation, residual=col(residual), out=col(out))
    return out if out is not None else y.reshape(out_shape)


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether `shape` broadcasts to `target` without enlarging it."""
    try:
        return np.broadcast_shapes(target, shape) == target
    except ValueError:
        return False


def _contiguous(a: Any) -> bool:
    """Whether `a` (numpy, pyopencl or torch) is C-contiguous (reshape gives a view of it)."""
    if isinstance(a, np.ndarray):
        return a.flags.c_contiguous
    if isinstance(a, cla.Array):
        return a.flags.c_contiguous
    return bool(getattr(a, "is_contiguous", lambda: False)())


def _spread_bias(bias: ArrayLike, n: int) -> ArrayLike:
    """A 0-d or (1,) bias as (n,): on the device for a device array (clconv.add of zeros)."""
    if is_device_array(bias):
        return add(np.zeros(n, bias.dtype), bias.reshape(()) if bias.shape else bias)
    value = np.asarray(host_operand(bias, "bias"))
    return np.broadcast_to(value.reshape(()), (n,)).copy()
