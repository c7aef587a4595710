"""Device memory: the column buffer (one grow-only scratch buffer per device, reused across calls)
and a per-device memory pool for outputs and temporaries.

Every user of it holds `dev.lock` from writing it to enqueueing the last command that reads it; the
device queue is in-order, so the next user's writes run only after those reads. Growing replaces the
buffer; OpenCL keeps the old one alive until the commands already queued on it have finished.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
import pyopencl.tools as cl_tools

from .device import Device, current_device

__all__ = ["ColumnBuffer", "array_over", "column_buffer", "default_workspace_limit", "empty", "pool",
           "release_column_buffer", "release_pool", "resolve_workspace_limit", "rows_of",
           "trim_idle"]


def default_workspace_limit(dev: Device) -> int:
    """Bytes the column buffer may take by default: a quarter of the largest allocation and at most an
    eighth of the device's memory, so that the input, weights and output fit beside it."""
    share = min(dev.max_alloc_bytes // 4, dev.global_mem_bytes // 8)
    return max(share, min(1 << 20, dev.max_alloc_bytes))


def resolve_workspace_limit(dev: Device, workspace_limit: int | None) -> int:
    """The workspace bound in bytes: the default, or the caller's limit capped at the device's
    largest single allocation (the workspace is one buffer; a bigger one the driver refuses)."""
    if workspace_limit is None:
        return default_workspace_limit(dev)
    if isinstance(workspace_limit, bool) or not isinstance(workspace_limit, numbers.Integral):
        raise TypeError(f"workspace_limit must be an int number of bytes, got {workspace_limit!r}")
    if workspace_limit < 1:
        raise ValueError(f"workspace_limit must be positive, got {workspace_limit}")
    return min(int(workspace_limit), dev.max_alloc_bytes)


class ColumnBuffer:
    """A device buffer of at least the requested size, kept for the next call.

    It grows to exactly the largest request so far (never rounded up), so that an allocation never
    exceeds the `workspace_limit` the caller planned its request for. `largest_request`: the
    largest request since it was last set to 0 (what a run needed of it, whatever earlier calls
    made it grow to).
    """

    def __init__(self) -> None:
        self.buffer: cl.Buffer | None = None
        self.nbytes = 0
        self.largest_request = 0

    def get(self, dev: Device, nbytes: int) -> cl.Buffer:
        self.largest_request = max(self.largest_request, nbytes)
        if self.buffer is None or nbytes > self.nbytes:
            self.buffer = None  # let the driver reclaim the old one before the new one is made
            self.nbytes = 0
            self.buffer = cl.Buffer(dev.context, cl.mem_flags.READ_WRITE, max(nbytes, 1))
            self.nbytes = max(nbytes, 1)
        return self.buffer

    def release(self) -> None:
        self.buffer = None
        self.nbytes = 0


class BufferView(cla.Array):
    """A 2-D (size x 1) pyopencl Array over a raw buffer at offset 0, made without pyopencl's checks
    (about 100x cheaper than `cla.Array(...)` or `reshape`): for clconv's internal operands, which
    the kernels and CLBlast only read `base_data`, `dtype`, `shape` and `offset` of. Not for users'
    hands (it has no queue and supports no Array arithmetic)."""

    __slots__ = ()

    def __init__(self, buffer: cl.MemoryObjectHolder, dtype: np.dtype, size: int) -> None:
        self.base_data = buffer
        self.dtype = np.dtype(dtype)
        self.shape = (size, 1)
        self.size = size
        self.offset = 0


def column_buffer(dev: Device, shape: tuple[int, ...], dtype: np.dtype) -> cla.Array:
    """A view of `prod(shape)` elements of `dtype` on the device's column buffer (call holding
    dev.lock); offsets into it are passed to the kernels explicitly."""
    holder = dev.workspace
    if holder is None:
        holder = dev.workspace = ColumnBuffer()
    size = 1
    for d in shape:
        size *= int(d)
    dtype = np.dtype(dtype)
    return BufferView(holder.get(dev, size * dtype.itemsize), dtype, size)


def release_column_buffer(dev: Any = None) -> int:
    """Frees the device's cached column buffer (the next call that needs one allocates it again);
    returns the bytes it held. For long-running processes after a one-off large call. `dev`: a
    Device, a device group (each of its devices), or None for the current device."""
    if dev is None:
        dev = current_device()
    if not isinstance(dev, Device):
        members = getattr(dev, "devices", None)  # a DeviceGroup (clconv.device("all"))
        if isinstance(members, tuple) and all(isinstance(d, Device) for d in members):
            return sum(release_column_buffer(d) for d in members)
        raise TypeError(f"release_column_buffer takes a clconv Device (clconv.current_device(), "
                        f"or what `with clconv.device(...) as dev` gives), a device group or "
                        f"None, got {type(dev).__name__}")
    with dev.lock:
        holder = dev.workspace
        if holder is None:
            return 0
        nbytes = holder.nbytes
        holder.release()
        return nbytes


def pool(dev: Device) -> cl_tools.MemoryPool:
    """The device's memory pool (pyopencl's): outputs and temporaries come from it, so that a call
    that follows another of the same sizes allocates nothing. A buffer returns to the pool when its
    array is dropped; the queue is in-order, so a later user of that memory runs after the earlier
    commands that read or wrote it."""
    return dev.slot("pool", lambda: cl_tools.MemoryPool(cl_tools.ImmediateAllocator(dev.queue)))


#: (shape, dtype) -> (size, strides, np.dtype) of the arrays `empty` made: pyopencl's checked
#: constructor takes ~10 us (numpy calls to validate the shape), its fast one ~1 us, and a plan's
#: result and temporaries have the same few shapes on every run.
_LAYOUTS: dict[tuple[Any, Any], tuple[int, tuple[int, ...], np.dtype]] = {}


def empty(dev: Device, shape: tuple[int, ...], dtype: np.dtype) -> cla.Array:
    """An uninitialised C-contiguous device array on dev.queue, from the device's memory pool."""
    try:
        layout = _LAYOUTS.get((shape, dtype))
    except TypeError:  # an unhashable shape (a list): the checked path
        layout = None
    if layout is not None:  # a shape met before: validated then
        size, strides, dt = layout
        return cla.Array(None, shape, dt, allocator=dev.pool or pool(dev), strides=strides,
                         _fast=True, _size=size, _context=dev.context, _queue=dev.queue)
    a = cla.empty(dev.queue, shape, dtype, allocator=pool(dev))
    if type(shape) is tuple and len(_LAYOUTS) < 4096:
        _LAYOUTS[(shape, dtype)] = (a.size, a.strides, a.dtype)
    return a


def array_over(dev: Device, buffer: cl.Buffer, shape: tuple[int, ...],
               dtype: np.dtype) -> cla.Array:
    """A C-contiguous device array on dev.queue over all of `buffer` (of shape's size), made by
    pyopencl's fast constructor for a shape met before (as `empty`)."""
    try:
        layout = _LAYOUTS.get((shape, dtype))
    except TypeError:
        layout = None
    if layout is None:
        a = cla.Array(dev.queue, shape, dtype, data=buffer)
        if type(shape) is tuple and len(_LAYOUTS) < 4096:
            _LAYOUTS[(shape, dtype)] = (a.size, a.strides, a.dtype)
        return a
    size, strides, dt = layout
    return cla.Array(None, shape, dt, data=buffer, strides=strides, _fast=True, _size=size,
                     _context=dev.context, _queue=dev.queue)


def rows_of(a: cla.Array) -> list[cla.Array]:
    """The rows of a C-contiguous 2-d device array as 1-d views over its buffer, made by pyopencl's
    fast constructor (indexing, a[i], costs ~50 us a view: a training chain's statistics took
    two a call)."""
    n = a.shape[1]
    row = n * a.dtype.itemsize
    return [cla.Array(None, (n,), a.dtype, data=a.base_data, offset=a.offset + i * row,
                      strides=(a.dtype.itemsize,), _fast=True, _size=n, _context=a.context,
                      _queue=a.queue) for i in range(a.shape[0])]


#: Idle bytes the pool may hold beyond twice its active ones before a new plan gives them back.
IDLE_SLACK = 64 << 20


def trim_idle(dev: Device) -> bool:
    """Gives the pool's held (unused) buffers back to the driver when they exceed twice the active
    ones plus IDLE_SLACK; whether it did. Called when a plan is made, that is when new shapes
    come: the pool keeps a freed buffer for its size class forever, so a model fed many input
    sizes held ~20x its active bytes idle (a compiled MobileNetV2 x0.25 at 120 random sizes: 234
    MB held for 11 MB of activations). A model at sizes it has met makes no plan and keeps its
    buffers."""
    p = dev.pool
    if p is None:
        return False
    active = p.active_bytes
    if p.managed_bytes - active <= 2 * active + IDLE_SLACK:
        return False
    with dev.lock:
        p.free_held()
    return True


def release_pool(dev: Device) -> int:
    """Gives the pool's unused buffers back to the driver; returns how many were held."""
    with dev.lock:
        if dev.pool is None:
            return 0
        held = dev.pool.held_blocks
        dev.pool.free_held()
        return held
