"""Operands in and results out: numpy or pyopencl arrays to contiguous device arrays, dtype rules.

A numpy input gives a numpy result (one upload, one download); a `pyopencl.array.Array` input stays on
the device and gives a `pyopencl.array.Array` on the device's queue, with nothing copied to the host.
Device arrays that are contiguous enter the kernels as they are (offset included); strided ones are
gathered on the device first.
"""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from .device import Device
from .errors import UnsupportedError
from .interop import host_operand, supported_dtypes
from .memory import empty
from .program import kernel, precision_defines

__all__ = [
    "FORCE_INDEX_T",
    "ArrayLike",
    "check_fits",
    "deliver",
    "device_dtype",
    "dtype_of",
    "element_offset",
    "empty",
    "gather",
    "index_type",
    "is_device_array",
    "result_dtype",
    "to_device",
]

ArrayLike = Union[np.ndarray, cla.Array]
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def is_device_array(x: object) -> bool:
    return isinstance(x, cla.Array)


def dtype_of(x: object, name: str) -> np.dtype:
    """The dtype of an operand (numpy, pyopencl, a torch tensor's numpy view); TypeError naming
    `name` for anything else."""
    x = host_operand(x, name)  # torch tensors as numpy views; lists and scalars refused
    if isinstance(x, cla.Array):
        return np.dtype(x.dtype)
    if isinstance(x, np.ndarray):
        # A byte-swapped float (">f4" on x86) is still a float: the upload converts it.
        return x.dtype.newbyteorder("=") if x.dtype.kind == "f" else x.dtype
    if x is None or isinstance(x, (str, bytes, dict, set)):
        raise TypeError(f"{name} must be a numpy or pyopencl array, got {type(x).__name__}")
    try:
        return np.asarray(x).dtype
    except Exception as err:
        raise TypeError(f"{name} must be a numpy or pyopencl array, got {type(x).__name__}") from err


def result_dtype(dev: Device, **operands: Any) -> np.dtype:
    """The common floating dtype of the operands (a None bias is skipped; any other None operand
    is a TypeError).

    Raises TypeError (naming the argument) for non-float or mixed dtypes, ValueError for a pyopencl
    array of another context than the device's (checked here, before any work, so that even a call
    with nothing to compute refuses it), and UnsupportedError when the device lacks the precision.
    """
    for name, x in operands.items():
        if isinstance(x, cla.Array):
            _check_context(x, dev, name)
    dtypes = {name: dtype_of(x, name) for name, x in operands.items()
              if x is not None or name != "bias"}
    for name, dt in dtypes.items():
        if dt not in _FLOATS:
            raise TypeError(f"{name} has dtype {dt}; clconv computes in "
                            f"{supported_dtypes(dev)} on this device (convert with "
                            f".astype(np.float32))")
    if len(set(dtypes.values())) > 1:
        listed = ", ".join(f"{n}: {d}" for n, d in dtypes.items())
        raise TypeError(f"mixed dtypes ({listed}); all operands must have the same dtype")
    dtype = next(iter(dtypes.values()))
    if dtype == np.float64 and not dev.fp64:
        raise UnsupportedError(f"dtype float64 needs cl_khr_fp64, which device {dev.name!r} "
                               f"({dev.platform_name}) lacks; use float32")
    if dtype == np.float16 and not dev.fp16:
        raise UnsupportedError(f"dtype float16 needs cl_khr_fp16, which device {dev.name!r} "
                               f"({dev.platform_name}) lacks; use float32")
    return dtype


_FLOAT32 = np.dtype(np.float32)


def device_dtype(dev: Device, operands: tuple[Any, ...],
                 optional: tuple[Any, ...] = ()) -> np.dtype | None:
    """float32 when every operand (and every optional one that is not None) is a float32 device
    array on `dev`'s own queue: what `result_dtype` returns for them, with nothing to check (a
    layer's common call); else None (the caller then asks `result_dtype`)."""
    queue = dev.queue
    for x in operands:
        if type(x) is not cla.Array or x.queue is not queue or x.dtype != _FLOAT32:
            return None
    for x in optional:
        if x is not None and (type(x) is not cla.Array or x.queue is not queue
                              or x.dtype != _FLOAT32):
            return None
    return _FLOAT32


def element_offset(a: cla.Array) -> int:
    """The array's start inside its buffer, in elements (pyopencl keeps it in bytes); ValueError
    for a start between two elements (the kernels address whole elements)."""
    size = a.dtype.itemsize
    if a.offset % size:
        _check_aligned(a, "an operand or out=")
    return a.offset // size


def _check_aligned(x: cla.Array, name: str) -> None:
    """ValueError for a device array whose byte offset or strides are not whole elements (a
    float32 view of a byte buffer at an odd position: pyopencl allows it, kernels address whole
    elements, so it would be read from the wrong place)."""
    size = x.dtype.itemsize
    if x.offset % size or any(t % size for t in x.strides):
        raise ValueError(f"{name} is a pyopencl array whose byte offset ({x.offset}) or strides "
                         f"({x.strides}) are not multiples of its item size ({size}); clconv's "
                         f"kernels address whole elements: pass an aligned copy of it")


#: Testing hook: "long" makes every kernel use 64-bit flat offsets, whatever the sizes (the long path
#: is otherwise taken only past 2**31 elements, more than many devices can allocate).
FORCE_INDEX_T: str | None = None


def index_type(*element_counts: int) -> str:
    """INDEX_T for kernels whose buffers hold up to these many elements (end offsets, in elements)."""
    if FORCE_INDEX_T is not None:
        return FORCE_INDEX_T
    return "long" if max(element_counts, default=0) >= 2**31 else "int"


def check_fits(dev: Device, what: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Raises MemoryError naming `what`, its shape and bytes when one buffer of it exceeds the
    device's largest allocation (before anything is allocated, so no driver error is met)."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes > dev.max_alloc_bytes:
        raise MemoryError(f"the {what} {tuple(shape)} of {np.dtype(dtype)} needs {nbytes} bytes, more "
                          f"than device {dev.name!r} can allocate at once ({dev.max_alloc_bytes} "
                          f"bytes); split the batch or use a smaller input")


def to_device(x: Any, dev: Device, name: str, dtype: np.dtype) -> cla.Array:
    """`x` as a C-contiguous device array of `dtype` on `dev` (no copy when it already is one).

    Never waits on the host: a numpy array is uploaded asynchronously (pyopencl keeps the host
    array alive until the copy is done), and a device array still being written on another queue
    is waited for by the device's queue (a marker on its events), not by the caller.
    """
    if isinstance(x, cla.Array):
        _check_context(x, dev, name)
        if x.queue is not None and x.queue != dev.queue:
            # Everything already queued on the producer's queue (its own kernels too, which the
            # array's events do not list) before the device's queue reads it.
            cl.enqueue_marker(dev.queue, wait_for=[cl.enqueue_marker(x.queue)])
            # A queue waiting on another's event needs that queue flushed (OpenCL leaves it to
            # the caller): rusticl otherwise never submits the marker and the wait never ends.
            x.queue.flush()
        if x.size and not x.flags.c_contiguous:
            return _gather(x, dev)
        return x
    given = np.asarray(host_operand(x, name))
    # (ascontiguousarray makes a 0-d array 1-d: the shape is kept as given)
    host = np.ascontiguousarray(given, dtype=dtype).reshape(given.shape)
    out = empty(dev, host.shape, dtype)
    if host.size:
        # `out.set` would block; a non-blocking copy holds `host` until the driver has read it.
        cl.enqueue_copy(dev.queue, out.base_data, host, dst_offset=out.offset, is_blocking=False)
    return out


def _check_context(x: cla.Array, dev: Device, name: str) -> None:
    """ValueError for a device array of another context than `dev`'s, or not element-aligned."""
    _check_aligned(x, name)
    if x.context != dev.context:
        raise ValueError(f"{name} is a pyopencl array of another OpenCL context than the one of "
                         f"device {dev.name!r}, where this runs (the current device, or the one a "
                         f"plan or layer was made on); move it with {name}.get(), or compute "
                         f"inside `with clconv.device(...)` for its device (a plan or layer: "
                         f"made there)")


def gather(x: cla.Array, dev: Device) -> cla.Array:
    """`x` as a C-contiguous device array (x itself when it is one; else a copy made on `dev`:
    a transposed view becomes the transposed array)."""
    _check_context(x, dev, "array")
    return _gather(x, dev) if x.size and not x.flags.c_contiguous else x


def _gather(x: cla.Array, dev: Device) -> cla.Array:
    """Contiguous copy of a strided device array (its dims collapsing to 5) made on the device."""
    out = empty(dev, x.shape, x.dtype)
    defines, sizes = _strided_args(x)
    with dev.lock:
        kernel(dev, "strided_copy.cl", "strided_copy", defines)(
            dev.queue, (x.size,), None, x.base_data, np.int64(element_offset(x)), out.data, *sizes)
    return out


def scatter(src: cla.Array, dst: cla.Array, dev: Device) -> None:
    """dst[...] = src on the device, for a strided view `dst` (dims collapsing to 5) of src's shape and
    dtype; src contiguous. A view whose elements share memory (a stride of 0 over more than one
    element, as a broadcast's) is refused, as torch refuses writing one."""
    check_distinct_elements(dst)
    defines, sizes = _strided_args(dst)
    with dev.lock:
        kernel(dev, "strided_copy.cl", "strided_store", defines)(
            dev.queue, (dst.size,), None, src.base_data if src.offset == 0 else src.data,
            dst.base_data, np.int64(element_offset(dst)), *sizes)


def _collapsed(shape: tuple[int, ...], strides: tuple[int, ...]
               ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The same view with fewer dims: size-1 dims left out, and each dim merged into the one
    before it where that one steps over it exactly (stride = its stride * its size)."""
    dims = [(n, t) for n, t in zip(shape, strides) if n != 1]
    merged: list[tuple[int, int]] = []
    for n, t in dims:
        if merged and merged[-1][1] == t * n:
            merged[-1] = (merged[-1][0] * n, t)
        else:
            merged.append((n, t))
    return tuple(n for n, _ in merged), tuple(t for _, t in merged)


def check_distinct_elements(a: Any) -> None:
    """ValueError for an array to be written (numpy or device) in which several elements share
    one memory location (a stride of 0 over more than one element: a broadcast view), as torch
    refuses writing one."""
    if a.size and any(t == 0 and n > 1 for n, t in zip(a.shape, a.strides)):
        # (an empty array has no element to share one: numpy gives some of them strides of 0)
        raise ValueError("unsupported operation: more than one element of the written-to array "
                         "refers to a single memory location (a stride of 0, as a broadcast "
                         "view's); write to a copy of it instead")


def _strided_args(x: cla.Array) -> tuple[dict[str, object], tuple[np.int64, ...]]:
    """strided_copy.cl's defines for `x` and its size and stride arguments (any number of dims
    that collapses to at most 5)."""
    _check_aligned(x, "an operand or out=")
    shape, strides = _collapsed(tuple(x.shape), tuple(s // x.dtype.itemsize for s in x.strides))
    if len(shape) > 5:
        raise ValueError(f"strided device arrays whose strides do not collapse to 5 dims are not "
                         f"supported (shape {x.shape}, strides {x.strides})")
    lift = 5 - len(shape)
    shape = (1,) * lift + shape
    strides = (0,) * lift + strides
    span = sum((s - 1) * abs(t) for s, t in zip(shape, strides)) + element_offset(x) + 1
    defines = precision_defines(x.dtype)
    defines["INDEX_T"] = index_type(span, x.size)
    return defines, tuple(np.int64(v) for v in (*shape[1:], *strides))


def deliver(out: cla.Array, as_host: bool) -> ArrayLike:
    """The result as the caller gave its input: numpy (downloaded, blocking) or the device array."""
    if not as_host:
        return out
    if out.size == 0:
        return np.empty(out.shape, out.dtype)
    return out.get()
