"""Which GEMM engine the GEMM-based ops (transposed convolutions, gradients) run on a device.

clconv's packed GEMM (clconv.blas.packed) on PoCL's CPU devices, where CLBlast's GPU-shaped kernels
reach a fifth of it (30-36 against 135-143 GFLOP/s at 1024^3-2048^3, AVX2); CLBlast
(clconv.blas.clblast) everywhere else, Mesa's llvmpipe included (its compiler maps work-items to
vector lanes, so the packed kernels' one work-item per work-group runs 20x slower there than
CLBlast's: measured on a 32->32 3x3 28x28 layer, 1381 against 52 ms). `CLCONV_GEMM=clblast` or `=packed` overrides the choice
(read when a plan is made). Both engines take the same arguments (`gemm(dev, m, n, k, a, ...)`).
The forward convolutions choose by algorithm instead ('im2col' is CLBlast's, 'implicit' and
'im2col_packed' the packed engine's; 'auto' measures them).
"""

from __future__ import annotations

from types import ModuleType

from ..runtime import config
from ..runtime.device import Device
from . import clblast, packed

__all__ = ["ENGINES", "ENV_VAR", "cpu_shaped", "gemm_engine"]

ENV_VAR = config.GEMM
ENGINES = config.GEMM_ENGINES


def cpu_shaped(dev: Device) -> bool:
    """Whether the packed engine's kernels (one work-item per tile, local size 1, shaped for a CPU's
    registers) suit `dev`: PoCL's CPU devices, which run a work-group as a loop on one core."""
    return dev.kind == "cpu" and "pocl" in dev.match_text


def gemm_engine(dev: Device) -> ModuleType:
    """clconv.blas.packed or clconv.blas.clblast for `dev` (see the module doc)."""
    chosen = config.gemm_engine()
    if chosen == "clblast" or (not chosen and not cpu_shaped(dev) and clblast.available()):
        return clblast
    return packed
