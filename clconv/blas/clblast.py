"""Matrix multiplication through CLBlast (pyclblast): the only module that imports pyclblast.

All matrices are row-major and live in device buffers; offsets and strides are in elements. pyclblast
ignores `Array.offset`, so callers pass every offset explicitly (see `element_offset`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from types import ModuleType
from typing import Any, Mapping

import pyopencl as cl
import pyopencl.array as cla

from ..runtime.device import Device
from ..runtime.errors import UnsupportedError
from ..runtime.memory import BufferView
from .tuning_db import ENV_VAR, enabled, find_entry

__all__ = ["TuningState", "apply_tuning", "available", "gemm", "missing_reason",
           "override_parameters", "require", "tuning_state"]

_INSTALL = ("CLBlast's Python binding `pyclblast` (a dependency of clconv, built against the "
            "system's CLBlast) is needed for algorithm='im2col' and 'winograd', and, on GPUs, "
            "transposed convolutions and gradients. On Debian/Ubuntu: `sudo apt-get install "
            "libclblast-dev`, then `pip install pyclblast` (it builds from source; add "
            "`--force-reinstall --no-cache-dir` to rebuild one already installed). "
            "algorithm='direct' and 'implicit' (clconv's own GEMM) work without it.")


@lru_cache(maxsize=1)
def _pyclblast() -> ModuleType | str:
    try:
        import pyclblast
    except (ImportError, OSError) as err:  # not installed, or libclblast.so missing/broken
        return f"{_INSTALL} (import failed: {err})"
    return pyclblast


def available() -> bool:
    return not isinstance(_pyclblast(), str)


def missing_reason() -> str | None:
    mod = _pyclblast()
    return mod if isinstance(mod, str) else None


def require(what: str) -> None:
    """Raises UnsupportedError, saying how to install pyclblast, when `what` (an operation that runs
    CLBlast's GEMM) cannot run because pyclblast is missing. Plans call it before anything is
    uploaded or allocated."""
    if not available():
        raise UnsupportedError(f"{what} needs CLBlast's GEMM. {missing_reason()}")


def _require() -> ModuleType:
    mod = _pyclblast()
    if isinstance(mod, str):
        raise UnsupportedError(mod)
    return mod


@lru_cache(maxsize=1)
def _returns_extra_reference() -> bool:
    """True for the pyclblast releases known to return CLBlast's event wrapped with an extra retain
    (up to 1.4.0: `cl.Event.from_int_ptr(event)` with pyopencl's default retain=True). Unknown or
    later versions are left alone: a leak is safer than releasing an event twice."""
    try:
        from importlib.metadata import version
        parts = version("pyclblast").split(".")[:3]
        return tuple(int(p) for p in parts) <= (1, 4, 0)
    except Exception:
        return False


def _drop(event: cl.Event | None) -> None:
    # pyclblast <= 1.4.0 wraps CLBlast's event with an extra retain, so dropping the Python object leaks
    # the OpenCL event (~300 bytes a call measured on PoCL). Give that reference back through a
    # non-retaining wrapper, released (clReleaseEvent, via pyopencl's own loader) as it is dropped.
    if event is not None and _returns_extra_reference():
        cl.Event.from_int_ptr(event.int_ptr, retain=False)


def override_parameters(dev: Device, kernel: str, precision: int,
                        parameters: dict[str, int]) -> None:
    """CLBlast's OverrideParameters: `kernel`'s tuned parameters for `dev`, process-wide (see
    clconv.blas.tuning). Raises RuntimeError when CLBlast rejects them."""
    _require().override_parameters(dev.cl_device, kernel, precision, dict(parameters))


def _tuned(dev: Device) -> None:
    # Tuned CLBlast parameters (user file or shipped database) go in before the device's first GEMM.
    if dev.blas_tuning is None:
        apply_tuning(dev)


# --------------------------------------------------------------------------------------------------
# Applying

@dataclass
class TuningState:
    """What `apply_tuning` did on a device."""

    source: str
    applied: list[str] = field(default_factory=list)  # 'Xgemm/32', ...
    errors: list[str] = field(default_factory=list)


def tuning_state(dev: Device) -> TuningState | None:
    """The state `apply_tuning` left on `dev`, or None before the device's first GEMM."""
    return dev.blas_tuning


def apply_tuning(dev: Device, entry: Mapping[str, Any] | None = None,
                 source: str | None = None) -> TuningState:
    """Hands the device's tuned parameters to CLBlast, once per device (later calls return the
    first state) unless `entry` is given explicitly. Never raises for a bad or mismatched entry:
    the problem is recorded in the state and CLBlast keeps its defaults for that kernel."""
    with dev.lock:
        state = dev.blas_tuning
        if state is not None and entry is None:
            return state
        if entry is None:
            if not enabled():
                state = TuningState(f"disabled by {ENV_VAR}={os.environ.get(ENV_VAR)}")
                dev.blas_tuning = state
                return state
            try:
                entry, source = find_entry(dev)
            except (OSError, ValueError) as err:  # a broken shipped file must not break GEMM
                entry, source = None, f"tuning database unreadable: {err}"
            if entry is None:  # once per device: this runs before the device's first GEMM only
                warnings.warn(f"clconv: CLBlast runs on its default GEMM parameters on {dev.name!r} "
                              f"({source}); `python -m clconv tune` (make tune) tunes it for this "
                              f"device, CLCONV_TUNING=off silences this", RuntimeWarning,
                              stacklevel=4)
        state = TuningState(source or "explicit entry")
        for precision, kernels in (entry or {}).get("parameters", {}).items():
            for kernel, params in kernels.items():
                try:
                    params = fit_vector_widths(params, _native_lanes(dev, int(precision)))
                    override_parameters(dev, kernel, int(precision), params)
                    state.applied.append(f"{kernel}/{precision}")
                except Exception as err:  # CLBlast rejects parameters it does not know
                    state.errors.append(f"{kernel}/{precision}: {err}")
        dev.blas_tuning = state
        return state


#: CLBlast's vector-width parameters (elements per vector: GEMM kernels, the copy kernel, the
#: transpose kernel, whose vectors are TRA_WPT wide).
_VECTOR_WIDTHS = ("VWM", "VWN", "VWMD", "VWND", "COPY_VW", "TRA_WPT")


def _native_lanes(dev: Device, precision: int) -> int | None:
    """The CPU's vector register width in elements of `precision` bits (None: no cap, as on GPUs,
    whose tuned vector widths are not bounded by registers)."""
    if dev.kind != "cpu":
        return None
    name = {16: "half", 32: "float", 64: "double"}.get(precision)
    try:
        lanes = int(getattr(dev.cl_device, f"native_vector_width_{name}")) if name else 0
    except (cl.Error, AttributeError, TypeError):
        return None
    return lanes if lanes > 0 else None


def fit_vector_widths(params: Mapping[str, int], lanes: int | None) -> dict[str, int]:
    """`params` with each vector width at most `lanes` (halved, so CLBlast's divisibility rules
    still hold). An entry tuned on wider registers (an AVX-512 entry on an AVX2 CPU: double8)
    makes CLBlast's kernels pass vectors wider than the registers between functions, which
    changes the x86 ABI, and PoCL's compiler then prints "N warnings generated." at each CLBlast
    build, where clconv cannot hold it back. The lanes are independent: results are the same."""
    fitted = dict(params)
    for name in _VECTOR_WIDTHS:
        while lanes and name in fitted and fitted[name] > max(lanes, 1):
            fitted[name] //= 2
    return fitted


def gemm(dev: Device, m: int, n: int, k: int,
         a: cla.Array, a_offset: int, a_stride: int,
         b: cla.Array, b_offset: int, b_stride: int,
         c: cla.Array, c_offset: int, c_stride: int,
         batch: int = 1, *, a_transposed: bool = False, b_transposed: bool = False,
         alpha: float = 1.0, beta: float = 0.0, ldb: int | None = None,
         ldc: int | None = None, lda: int | None = None) -> None:
    """C[i] = alpha * op(A[i]) @ op(B[i]) + beta * C[i] for i < batch, enqueued on dev.queue.

    op(A) is m x k, op(B) is k x n, C is m x n, all row-major and dense (leading dims follow from the
    shapes) unless lda/ldb/ldc say that A/B/C are column blocks of wider matrices. Matrix i starts at
    `offset + i * stride` elements; a stride of 0 reuses one matrix for the whole batch (the filters
    of a convolution). One CLBlast call, whatever the batch.
    Call while holding dev.lock.
    """
    clblast = _require()
    if m == 0 or n == 0 or batch == 0:
        return
    _tuned(dev)
    lda = lda if lda is not None else (m if a_transposed else k)
    ldb = ldb if ldb is not None else (k if b_transposed else n)
    ldc = ldc if ldc is not None else n
    # pyclblast checks only that a, b and c are 2-D pyopencl Arrays, then uses their base buffers
    # and dtype (offsets are passed): light 2-D views, as reshape would cost ~50 us each.
    a2, b2, c2 = (x if type(x) is BufferView else BufferView(x.base_data, x.dtype, x.size)
                  for x in (a, b, c))
    if batch == 1:
        event = clblast.gemm(dev.queue, m, n, k, a2, b2, c2, lda, ldb, ldc, alpha=alpha, beta=beta,
                             a_transp=a_transposed, b_transp=b_transposed, a_offset=a_offset,
                             b_offset=b_offset, c_offset=c_offset)
    else:
        event = clblast.gemmStridedBatched(dev.queue, m, n, k, batch, a2, b2, c2, lda, ldb, ldc,
                                           a_stride, b_stride, c_stride, alpha=alpha, beta=beta,
                                           a_transp=a_transposed, b_transp=b_transposed,
                                           a_offset=a_offset, b_offset=b_offset, c_offset=c_offset)
    _drop(event)
