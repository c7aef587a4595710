"""The forward convolution algorithms by name (the registry: `ALGORITHM_CLASSES`) and which of
them runs a convolution.

`applicable_algorithms` lists what algorithm='auto' may pick for a geometry, ranked by the cost
model (clconv.ops.autotune.estimate); `rule_choice` is its first (CLCONV_AUTO=rule);
`choose_algorithm` answers without measuring (an explicit name checked, 'auto''s remembered or
best-estimated choice); `configure` makes the plan's configured algorithm object, measuring the
model's shortlist on first sight of a (device, geometry, dtype) for 'auto' and remembering the
winner. `algorithm_unsupported` says why a named algorithm cannot compute a geometry. Used by the
forward plans (clconv.ops.conv) and the adjoint paths that run a forward convolution.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl.array as cla

from ..blas import clblast as gemm
from ..blas import packed
from ..blas.engine import cpu_shaped
from ..runtime.device import Device
from . import autotune
from .activation import ActivationArg
from .conv_algorithms import (Direct, Im2colGemm, ImplicitGemm, PackedIm2colGemm, WinogradGemm,
                              winograd_unsupported)
from .depthwise import Depthwise, depthwise_unsupported
from .geometry import ConvGeometry
from .launch import GROUPED_MAX_CIN
from .pointwise import Pointwise, pointwise_unsupported
from .splitk import SplitK, splitk_tile, splitk_unsupported

__all__ = ["ALGORITHMS", "ALGORITHM_CLASSES", "algorithm_unsupported", "applicable_algorithms",
           "choose_algorithm", "configure", "rule_choice"]

ALGORITHMS = ("auto", "im2col", "direct", "winograd", "implicit", "im2col_packed", "depthwise",
              "pointwise", "splitk")
#: The classes behind the algorithm names (clconv.ops.conv_algorithms).
ALGORITHM_CLASSES: dict[str, Any] = {"im2col": Im2colGemm, "direct": Direct,
                                     "winograd": WinogradGemm, "implicit": ImplicitGemm,
                                     "im2col_packed": PackedIm2colGemm, "depthwise": Depthwise,
                                     "pointwise": Pointwise, "splitk": SplitK}


def configure(dev: Device, geo: ConvGeometry, algorithm: str, dtype: np.dtype, work: np.dtype,
              has_bias: bool, activation: ActivationArg, limit: int,
              has_residual: bool = False) -> Any:
    """The configured algorithm object for the plan: the named one, or 'auto''s choice."""
    if algorithm != "auto":
        return ALGORITHM_CLASSES[algorithm](dev, geo, work, has_bias, activation, limit,
                                            has_residual)
    remembered = autotune.lookup(dev, geo, dtype)
    candidates = applicable_algorithms(dev, geo, dtype)  # ranked by the cost model
    measuring = remembered not in candidates and autotune.mode() == "measure"
    short = candidates
    if remembered in candidates:
        candidates = [remembered] + [c for c in candidates if c != remembered]
    elif measuring:  # only the model's shortlist is built and measured
        short = autotune.shortlist(dev, geo, dtype, candidates)[1]
        candidates = short + [c for c in candidates if c not in short]
    configured: dict[str, Any] = {}
    error: MemoryError | None = None
    for name in candidates:  # candidates whose workspace does not fit the limit drop out
        if measuring and configured and name not in short:
            break  # past the shortlist: only reached while nothing in it could be configured
        try:
            configured[name] = ALGORITHM_CLASSES[name](dev, geo, work, has_bias, activation, limit,
                                                       has_residual)
        except MemoryError as err:
            error = err
            continue
        if name == remembered or autotune.mode() == "rule":
            return configured[name]  # the remembered choice, or the rule's first that fits
    if not configured:
        assert error is not None
        raise error
    if len(configured) == 1 or geo.batch == 0 or geo.out_spatial == 0:
        return next(iter(configured.values()))
    winner = autotune.measure(dev, geo, dtype, list(configured), _timer(dev, geo, work,
                                                                       has_bias, configured,
                                                                       has_residual))
    return configured[winner]


def _timer(dev: Device, geo: ConvGeometry, work: np.dtype, has_bias: bool,
           configured: dict[str, Any], has_residual: bool = False) -> Any:
    """run(name): one run of a configured candidate on scratch data of the plan's shapes."""
    rng = np.random.default_rng(0)
    x = cla.to_device(dev.queue, rng.standard_normal(geo.input_shape).astype(work))
    w = cla.to_device(dev.queue, rng.standard_normal(geo.weight_shape).astype(work))
    b = cla.to_device(dev.queue, rng.standard_normal(geo.out_channels).astype(work)) \
        if has_bias else None
    out = cla.empty(dev.queue, geo.output_shape, work)
    r = cla.to_device(dev.queue, rng.standard_normal(geo.output_shape).astype(work)) \
        if has_residual else None

    def run(name: str) -> None:
        if r is None:
            configured[name].run(x, w, b, out)
        else:
            configured[name].run(x, w, b, out, residual=r)
    return run


def applicable_algorithms(dev: Device, geo: ConvGeometry, dtype: Any = np.float32) -> list[str]:
    """The algorithms algorithm='auto' may pick for `geo` on `dev`, ranked by the cost model
    (clconv.ops.autotune.estimate), best first.

    'winograd' is never among them: its transforms mix the inputs of a whole tile, so one Inf or NaN
    input turns neighbouring outputs into NaN where PyTorch keeps them finite. It is opt-in. The
    packed-GEMM paths ('implicit', 'im2col_packed') are shaped for CPUs but measured everywhere:
    on a GPU they are chosen only where they measure faster.
    """
    found = ["direct", "implicit", "im2col_packed"]
    if gemm.available() and not cpu_shaped(dev):
        # On PoCL's CPU devices CLBlast's GEMM never measured fastest, and its kernels compile
        # for 10-20 s of CPU time the first time: a tiny layer the model gave it within 4% of
        # 'direct' cost a ResNeXt's first forward 12.5 of its 22 s. 'im2col' stays a choice there.
        found.append("im2col")
    if geo.groups > 1 and geo.cin_per_group <= GROUPED_MAX_CIN:
        found = [a for a in found if a not in ("implicit", "im2col_packed")]  # tiles of 1-4 rows
    if cpu_shaped(dev) and depthwise_unsupported(geo) is None:
        found.append("depthwise")  # CPU-shaped (local size 1), as 'implicit' in the rule
    if cpu_shaped(dev) and _pointwise_applies(dev, geo, dtype):
        found.append("pointwise")
    if cpu_shaped(dev) and _splitk_suits(dev, geo, dtype, 128):
        found.append("splitk")  # few output positions: measured against 'implicit'
    return autotune.shortlist(dev, geo, dtype, found)[0]


def _pointwise_applies(dev: Device, geo: ConvGeometry, dtype: Any) -> bool:
    """Whether algorithm='pointwise' can compute `geo` on `dev` (its tile's width included)."""
    return geo.ksize == 1 and algorithm_unsupported(dev, geo, "pointwise", dtype) is None


def algorithm_unsupported(dev: Device, geo: ConvGeometry, algorithm: str,
                          dtype: Any = np.float32) -> str | None:
    """Why the named algorithm (not 'auto') cannot compute `geo` in `dtype` on `dev`, or None when
    it can: what its class checks when configured (it then raises ValueError with this reason).
    Not covered: a device without the dtype, and CLBlast missing for 'im2col' and 'winograd'
    (UnsupportedError at configure time)."""
    if algorithm not in ALGORITHM_CLASSES:
        raise ValueError(f"algorithm must be one of {tuple(ALGORITHM_CLASSES)}, got {algorithm!r}")
    dtype = np.dtype(dtype)
    if algorithm == "winograd":
        return winograd_unsupported(geo, dtype)
    if algorithm == "depthwise":
        return depthwise_unsupported(geo)
    if algorithm == "pointwise":  # the register tile's width, as Pointwise and SplitK take it
        nr = packed.tile_for_columns(dev, np.float32 if dtype == np.float16 else dtype,
                                     geo.cout_per_group, geo.out_spatial, geo.cin_per_group).nr
        return pointwise_unsupported(geo, dtype, nr)
    if algorithm == "splitk":
        return splitk_unsupported(geo, dtype, splitk_tile(dev, geo, dtype).nr)
    return None  # the GEMM and loop paths compute every geometry


def _splitk_suits(dev: Device, geo: ConvGeometry, dtype: Any, positions: int) -> bool:
    """Whether algorithm='splitk' can compute `geo` and it has at most `positions` output
    positions (batch 1 at 7x7: 49)."""
    if geo.groups != 1 or geo.batch * geo.out_spatial > positions or \
            (geo.ksize == 1 and _pointwise_applies(dev, geo, dtype)):
        return False
    return splitk_unsupported(geo, dtype, splitk_tile(dev, geo, dtype).nr) is None


def rule_choice(dev: Device, geo: ConvGeometry, dtype: Any = np.float32) -> str:
    """What algorithm='auto' runs without measuring (CLCONV_AUTO=rule, and the cost model's
    favourite where it shortlists one): the first of `applicable_algorithms`, ranked by the cost
    model (clconv.ops.autotune.estimate). One selector: the rule is the model's best estimate, and
    measuring times only the model's shortlist. On PoCL's CPU devices that gives 'depthwise' for
    depthwise convolutions, 'pointwise' for unpadded 1x1 ones, 'direct' for narrow groups and
    layers of a few hundred kFLOP, 'splitk' for dense layers of a few output positions whose long
    K outgrows 'implicit''s panel budget by more than its padded columns cost, else 'implicit';
    elsewhere (GPUs, llvmpipe) 'im2col' (CLBlast) or 'direct' for
    the smallest layers. Never 'winograd' (see `applicable_algorithms`)."""
    return applicable_algorithms(dev, geo, dtype)[0]


def choose_algorithm(dev: Device, geo: ConvGeometry, algorithm: str,
                     dtype: Any = np.float32) -> str:
    """The algorithm that runs for `algorithm`, without measuring anything.

    An explicit name is checked (ValueError for shapes it cannot compute: `algorithm_unsupported`)
    and returned. 'auto' gives the remembered choice for (device, geometry, dtype) if there is one
    (see clconv.ops.autotune), else with CLCONV_AUTO=rule `rule_choice`, else the cost model's
    best estimate (what a plan runs when the model shortlists one algorithm; measuring may pick
    another of a longer shortlist).
    """
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm != "auto":
        why = algorithm_unsupported(dev, geo, algorithm, dtype)
        if why is not None:
            raise ValueError(f"algorithm={algorithm!r} cannot compute this convolution: {why}; use "
                             f"algorithm='auto', 'im2col' or 'direct'")
        return algorithm
    remembered = autotune.lookup(dev, geo, dtype)
    candidates = applicable_algorithms(dev, geo, dtype)
    if remembered is not None and remembered in candidates:
        return remembered
    return candidates[0]  # the cost model's best estimate (rule_choice)
