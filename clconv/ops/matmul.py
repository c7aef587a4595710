"""matmul: torch.matmul on the GEMM engines (clconv.blas.engine: the packed GEMM on PoCL's CPU
devices, CLBlast elsewhere).

    y = clconv.matmul(a, b)          # (*, n, k) @ (*, k, m) -> (*, n, m), batch dims broadcast
    y = clconv.matmul(x, w)          # (*, n, k) @ (k, m): one GEMM batch, w shared

torch's rules: a 1-d first operand is a row (its dim dropped from the result), a 1-d second one a
column (likewise; two 1-d operands give their dot product, 0-d); the dims before the last two
broadcast. Operands whose batch dims are either the broadcast ones or all 1 run as one batched
GEMM (a shared operand has stride 0); other broadcasts run one GEMM per matrix of the result.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pyopencl.array as cla

from ..blas import clblast
from ..blas.engine import gemm_engine
from ..runtime.device import Device, current_device
from ..runtime.transfer import ArrayLike, element_offset, result_dtype
from .plan import Plan, cached_plan, shape_of

__all__ = ["MatmulPlan", "matmul"]


class MatmulPlan(Plan):
    """torch.matmul(input, other) for fixed shapes and dtype (see the module doc)."""

    _BATCH_OPERANDS = ("input",)

    def __init__(self, dev: Device, input_shape: Sequence[int], other_shape: Sequence[int],
                 dtype: np.dtype) -> None:
        a_shape, b_shape = tuple(input_shape), tuple(other_shape)
        if not a_shape or not b_shape:
            raise ValueError(f"matmul: both arguments need at least 1 dim, got shapes {a_shape} "
                             f"and {b_shape}")
        a = a_shape if len(a_shape) > 1 else (1, *a_shape)  # a row
        b = b_shape if len(b_shape) > 1 else (*b_shape, 1)  # a column
        if a[-1] != b[-2]:
            raise ValueError(f"matmul: shapes {a_shape} and {b_shape} cannot be multiplied "
                             f"({a[-2]}x{a[-1]} and {b[-2]}x{b[-1]})")
        try:
            batch = np.broadcast_shapes(a[:-2], b[:-2])
        except ValueError:
            raise ValueError(f"matmul: the batch dims of shapes {a_shape} and {b_shape} do not "
                             f"broadcast ({a[:-2]} and {b[:-2]})") from None
        self.n, self.k, self.m = a[-2], a[-1], b[-1]
        self.batch = tuple(batch)
        self.a_batch = (1,) * (len(batch) - len(a) + 2) + a[:-2]  # padded to batch's length
        self.b_batch = (1,) * (len(batch) - len(b) + 2) + b[:-2]
        out_shape = (*batch, *(a_shape[-2:-1] if len(a_shape) > 1 else ()),
                     *(b_shape[-1:] if len(b_shape) > 1 else ()))
        self._prepare(dev, dtype, {"input": a_shape, "other": b_shape}, out_shape, out_shape,
                      {"input": a_shape, "other": b_shape, "output": out_shape})
        self.engine = gemm_engine(dev)
        self.needs_gemm = self.engine is clblast
        if self.needs_gemm:
            clblast.require("matmul")
        self.label = "matmul"

    def _stride(self, own: tuple[int, ...], size: int) -> int | None:
        """An operand's matrix stride in one batched GEMM: `size` when its batch dims are the
        result's, 0 when it is one matrix for all, None otherwise (a partial broadcast)."""
        if own == self.batch:
            return size
        return 0 if math.prod(own) == 1 else None

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        a, b = arrays["input"], arrays["other"]
        assert a is not None and b is not None
        dev, n, k, m = self.device, self.n, self.k, self.m
        count = math.prod(self.batch)
        if count == 0 or n == 0 or m == 0:
            return
        a_off, b_off, c_off = element_offset(a), element_offset(b), element_offset(out)
        with dev.lock:
            if k == 0:  # no products: zeros, as torch's
                out.fill(0)
                return
            a_stride, b_stride = self._stride(self.a_batch, n * k), self._stride(self.b_batch, k * m)
            if a_stride is not None and b_stride is not None:
                self.engine.gemm(dev, n, m, k, a, a_off, a_stride, b, b_off, b_stride, out, c_off,
                                 n * m, count)
                return
            # A partial broadcast ((2, 1) against (1, 3)): one GEMM per matrix of the result.
            a_steps = _steps(self.a_batch, n * k)
            b_steps = _steps(self.b_batch, k * m)
            for i, index in enumerate(itertools.product(*map(range, self.batch))):
                self.engine.gemm(dev, n, m, k, a, a_off + _at(index, a_steps), 0, b,
                                 b_off + _at(index, b_steps), 0, out, c_off + i * n * m, 0, 1)

    def __call__(self, input: ArrayLike, other: ArrayLike, *,
                 out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input, "other": other}, out)


def _steps(own: tuple[int, ...], size: int) -> list[int]:
    """Element steps of a contiguous operand's batch dims, 0 along its broadcast (size-1) dims."""
    steps, step = [], size
    for d in reversed(own):
        steps.append(0 if d == 1 else step)
        step *= d
    return steps[::-1]


def _at(index: tuple[int, ...], steps: list[int]) -> int:
    return sum(i * s for i, s in zip(index, steps))


def matmul(input: ArrayLike, other: ArrayLike, *, out: ArrayLike | None = None) -> ArrayLike:
    """torch.matmul: the matrix product of the last two dims, batch dims broadcast; 1-d operands
    as torch's (a row first, a column second, their dims dropped; two 1-d: the dot product).
    input (*, n, k), other (*, k, m) -> (*, n, m). Returns numpy for numpy operands, else a device
    array."""
    dev = current_device()
    dtype = result_dtype(dev, input=input, other=other)
    a_shape, b_shape = shape_of(input), shape_of(other)
    plan = cached_plan(dev, ("matmul", a_shape, b_shape, dtype),
                       lambda: MatmulPlan(dev, a_shape, b_shape, dtype))
    return plan.execute({"input": input, "other": other}, out, check=False)
