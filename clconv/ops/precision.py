"""float16 for the GEMM paths: a probe that the device really computes half, and conversions.

CLBlast's HGEMM (pyclblast supports float16) accumulates in half, so the transposed convolutions,
the gradients and the layers keep float16 only as the storage type: operands are widened to float32
on the device (cl/convert.cl, vload_half), everything is computed and accumulated in float32, and
the result is rounded once to float16 (vstore_half, round to nearest even). That costs a float32
copy of each operand and gives float32 accumulation whatever the reduction length.

A device may report cl_khr_fp16 and still fail to build or compute it right, so `check_precision`
runs cl/fp16_probe.cl once per device before the first float16 operation and raises UnsupportedError
if the results are not exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl.array as cla

from ..runtime.memory import empty
from ..runtime.transfer import element_offset, index_type, to_device
from ..runtime.device import Device
from ..runtime.errors import UnsupportedError
from ..runtime.interop import numpy_dtype
from ..runtime.program import kernel

__all__ = ["check_precision", "compute_dtype", "convert", "convert_into", "load", "store"]

_HALF = np.dtype(np.float16)
_CL_NAMES = {np.dtype(np.float16): "half", np.dtype(np.float32): "float",
             np.dtype(np.float64): "double"}
# what convert_into also reads (softmax's dtype= casts an integer device array, as torch's)
_SOURCE_NAMES = {**_CL_NAMES, np.dtype(np.bool_): "uchar", np.dtype(np.int8): "char",
                 np.dtype(np.uint8): "uchar", np.dtype(np.int16): "short",
                 np.dtype(np.uint16): "ushort", np.dtype(np.int32): "int",
                 np.dtype(np.uint32): "uint", np.dtype(np.int64): "long",
                 np.dtype(np.uint64): "ulong"}


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the kernels and GEMMs compute in for operands of `dtype` (float32 for float16)."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == _HALF else dtype


def plan_dtype(dtype: Any) -> np.dtype:
    """A plan function's `dtype=` (numpy's, or torch's floating dtypes) as a numpy dtype;
    TypeError for None (np.dtype(None) would be float64) and for a dtype that is not floating."""
    if dtype is not None:
        try:
            dtype = numpy_dtype(dtype)  # (torch.float32 -> float32)
        except TypeError as err:
            raise TypeError(f"dtype must be a floating dtype (float32, float64 or float16), got "
                            f"{dtype}") from err
    if dtype is None or dtype not in (np.float32, np.float64, _HALF):
        raise TypeError(f"dtype must be a floating dtype (float32, float64 or float16), got "
                        f"{dtype}")
    return dtype


def check_precision(dev: Device, dtype: np.dtype) -> None:
    """Raises UnsupportedError when the device does not compute `dtype`: float64 without
    cl_khr_fp64, float16 without cl_khr_fp16 or failing the probe (run once per device). Plans call
    it before any build (a plan made with `dtype=` has no operand for result_dtype to check)."""
    if np.dtype(dtype) == np.float64 and not dev.fp64:
        raise UnsupportedError(f"dtype float64 needs cl_khr_fp64, which device {dev.name!r} "
                               f"({dev.platform_name}) lacks; use float32")
    if np.dtype(dtype) != _HALF:
        return
    if not dev.fp16:  # a plan made with dtype=float16 comes here without result_dtype's check
        raise UnsupportedError(f"dtype float16 needs cl_khr_fp16, which device {dev.name!r} "
                               f"({dev.platform_name}) lacks; use float32")
    if not isinstance(dev.fp16_reason, (str, type(None))):  # not probed yet
        with dev.lock:
            if not isinstance(dev.fp16_reason, (str, type(None))):
                dev.fp16_reason = _probe_fp16(dev)
    reason = dev.fp16_reason
    if reason is not None:
        raise UnsupportedError(f"dtype float16: device {dev.name!r} ({dev.platform_name}) reports "
                               f"cl_khr_fp16 but {reason}; use float32")


def _probe_fp16(dev: Device) -> str | None:
    """None if cl/fp16_probe.cl builds and computes exact results, else what went wrong."""
    a = np.array([1.5, -2.25, 1024.0, 0.125, -3.0, 2048.0, 2.0**-14, 0.0], np.float16)
    b = np.array([2.0, 0.5, 0.25, -8.0, 3.0, 2.0, 1.0, 7.0], np.float16)
    try:
        k = kernel(dev, "fp16_probe.cl", "fp16_probe", {})
        args = [cla.to_device(dev.queue, a), cla.to_device(dev.queue, b)]
        outs = [cla.empty(dev.queue, a.shape, dt) for dt in (np.float16, np.float32, np.float16)]
        with dev.lock:
            k(dev.queue, a.shape, None, *(x.data for x in args + outs))
        fma, widened, narrowed = (o.get() for o in outs)
    except Exception as err:  # noqa: BLE001 (a build or driver failure: half is unusable either way)
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        return f"the float16 probe kernel failed ({first})"
    want = (a.astype(np.float32) * b.astype(np.float32) + a.astype(np.float32)).astype(np.float16)
    checks = (("half arithmetic", fma, want), ("vload_half", widened, a.astype(np.float32)),
              ("vstore_half", narrowed, (b.astype(np.float32) * 0.5).astype(np.float16)))
    for what, got, expected in checks:
        if not np.array_equal(got, expected):
            return f"the float16 probe computed wrong values for {what} ({got} != {expected})"
    return None


def convert(dev: Device, a: cla.Array, dtype: np.dtype) -> cla.Array:
    """A contiguous copy of the contiguous device array `a` in `dtype`, converted on the device."""
    out = empty(dev, a.shape, np.dtype(dtype))
    convert_into(dev, a, out)
    return out


def convert_into(dev: Device, a: cla.Array, out: cla.Array) -> None:
    """out[...] = a converted to out's dtype, on the device (both contiguous, of one size; a a
    float or an integer or bool dtype, out a float one); TypeError for other dtypes."""
    dtype = out.dtype
    if a.dtype not in _SOURCE_NAMES or dtype not in _CL_NAMES:
        raise TypeError(f"cannot convert a device array of dtype {a.dtype} to {dtype} on the "
                        f"device (from a float, integer or bool dtype to float16, float32 or "
                        f"float64)")
    if a.size == 0:
        return
    defines: dict[str, Any] = {"SRC": _SOURCE_NAMES[a.dtype], "DST": _CL_NAMES[dtype],
                               "INDEX_T": index_type(element_offset(a) + a.size,
                                                     element_offset(out) + out.size)}
    if a.dtype == _HALF:
        defines["SRC_HALF"] = None
    if dtype == _HALF:
        defines["DST_HALF"] = None
    if np.dtype(np.float64) in (a.dtype, dtype):
        defines["USE_FP64"] = 1
    with dev.lock:
        kernel(dev, "convert.cl", "convert", defines)(
            dev.queue, (a.size,), None, a.base_data, np.int64(element_offset(a)), out.base_data,
            np.int64(element_offset(out)))


def load(dev: Device, x: Any, name: str, dtype: np.dtype) -> cla.Array:
    """Operand `x` (numpy or device array of `dtype`) as a contiguous device array of
    `compute_dtype(dtype)`: host float16 data is widened on the host, device data on the device."""
    work = compute_dtype(dtype)
    if isinstance(x, cla.Array):
        a = to_device(x, dev, name, dtype)
        return a if work == a.dtype else convert(dev, a, work)
    return to_device(x, dev, name, work)


def store(dev: Device, a: cla.Array, dtype: np.dtype) -> cla.Array:
    """The computed result `a` in the caller's `dtype` (rounded once on the device for float16)."""
    return a if a.dtype == np.dtype(dtype) else convert(dev, a, dtype)
