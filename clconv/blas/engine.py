"""Which GEMM engine the GEMM-based ops (transposed convolutions, gradients) run on a device.

clconv's packed GEMM (clconv.blas.packed) on CPU devices, where CLBlast's GPU-shaped kernels reach
a fifth of it (30-36 against 135-143 GFLOP/s at 1024^3-2048^3 on PoCL, AVX2); CLBlast
(clconv.blas.clblast) everywhere else. `CLCONV_GEMM=clblast` or `=packed` overrides the choice
(read when a plan is made). Both engines take the same arguments (`gemm(dev, m, n, k, a, ...)`).
The forward convolutions choose by algorithm instead ('im2col' is CLBlast's, 'implicit' and
'im2col_packed' the packed engine's; 'auto' measures them).
"""

from __future__ import annotations

import os
from types import ModuleType

from ..runtime.device import Device
from . import clblast, packed

__all__ = ["ENV_VAR", "ENGINES", "gemm_engine"]

ENV_VAR = "CLCONV_GEMM"
ENGINES = ("packed", "clblast")


def gemm_engine(dev: Device) -> ModuleType:
    """clconv.blas.packed or clconv.blas.clblast for `dev` (see the module doc)."""
    chosen = os.environ.get(ENV_VAR, "").strip().lower()
    if chosen and chosen not in ENGINES:
        raise ValueError(f"environment variable {ENV_VAR}={os.environ.get(ENV_VAR)!r} must be one "
                         f"of {ENGINES} (or unset: packed on CPUs, CLBlast elsewhere)")
    if chosen == "clblast" or (not chosen and dev.kind != "cpu"):
        return clblast
    return packed
