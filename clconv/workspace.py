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

__all__ = ["ColumnBuffer", "column_buffer", "default_workspace_limit"]


def default_workspace_limit(dev: Device) -> int:
    """Bytes the column buffer may take by default: a quarter of the largest allocation, so that the
    input, weights and output fit beside it."""
    return max(dev.max_alloc_bytes // 4, 1 << 20)


class ColumnBuffer:
    """A device buffer of at least the requested size, kept for the next call."""

    def __init__(self) -> None:
        self.buffer: cl.Buffer | None = None
        self.nbytes = 0

    def get(self, dev: Device, nbytes: int) -> cl.Buffer:
        if self.buffer is None or nbytes > self.nbytes:
            # Round up so that a slowly growing sequence of shapes does not reallocate every call.
            size = max(nbytes, self.nbytes + self.nbytes // 2, 1 << 16)
            self.buffer = cl.Buffer(dev.context, cl.mem_flags.READ_WRITE, size)
            self.nbytes = size
        return self.buffer


def column_buffer(dev: Device, shape: tuple[int, ...], dtype: np.dtype) -> cla.Array:
    """A device array view of `shape` on the device's column buffer (call holding dev.lock)."""
    holder = dev.cache.get("column_buffer")
    if holder is None:
        holder = dev.cache["column_buffer"] = ColumnBuffer()
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return cla.Array(dev.queue, shape, dtype, data=holder.get(dev, nbytes))
