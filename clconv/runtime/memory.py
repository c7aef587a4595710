"""The column buffer: one grow-only device scratch buffer per device, reused across calls.

Every user of it holds `dev.lock` from writing it to enqueueing the last command that reads it; the
device queue is in-order, so the next user's writes run only after those reads. Growing replaces the
buffer; OpenCL keeps the old one alive until the commands already queued on it have finished.
"""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from .device import Device

__all__ = ["ColumnBuffer", "column_buffer", "default_workspace_limit", "release_column_buffer"]


def default_workspace_limit(dev: Device) -> int:
    """Bytes the column buffer may take by default: a quarter of the largest allocation and at most an
    eighth of the device's memory, so that the input, weights and output fit beside it."""
    share = min(dev.max_alloc_bytes // 4, dev.global_mem_bytes // 8)
    return max(share, min(1 << 20, dev.max_alloc_bytes))


class ColumnBuffer:
    """A device buffer of at least the requested size, kept for the next call.

    It grows to exactly the largest request so far (never rounded up), so that an allocation never
    exceeds the `workspace_limit` the caller planned its request for.
    """

    def __init__(self) -> None:
        self.buffer: cl.Buffer | None = None
        self.nbytes = 0

    def get(self, dev: Device, nbytes: int) -> cl.Buffer:
        if self.buffer is None or nbytes > self.nbytes:
            self.buffer = None  # let the driver reclaim the old one before the new one is made
            self.nbytes = 0
            self.buffer = cl.Buffer(dev.context, cl.mem_flags.READ_WRITE, max(nbytes, 1))
            self.nbytes = max(nbytes, 1)
        return self.buffer

    def release(self) -> None:
        self.buffer = None
        self.nbytes = 0


def column_buffer(dev: Device, shape: tuple[int, ...], dtype: np.dtype) -> cla.Array:
    """A device array view of `shape` on the device's column buffer (call holding dev.lock)."""
    holder = dev.cache.get("column_buffer")
    if holder is None:
        holder = dev.cache["column_buffer"] = ColumnBuffer()
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return cla.Array(dev.queue, shape, dtype, data=holder.get(dev, nbytes))


def release_column_buffer(dev: Device) -> int:
    """Frees the device's cached column buffer (the next call that needs one allocates it again);
    returns the bytes it held. For long-running processes after a one-off large call."""
    with dev.lock:
        holder = dev.cache.get("column_buffer")
        if holder is None:
            return 0
        nbytes = holder.nbytes
        holder.release()
        return nbytes
