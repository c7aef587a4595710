"""The exceptions clconv raises on purpose (besides ValueError/TypeError for bad arguments), and the
translation of the drivers' out-of-memory failures into MemoryError."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pyopencl as cl

if TYPE_CHECKING:
    from .device import Device

__all__ = ["DeviceNotFoundError", "KernelBuildError", "ResidualShapeError", "UnsupportedError",
           "allocation_failure", "device_memory_errors", "sizes_text"]


class DeviceNotFoundError(LookupError):
    """No OpenCL device matches the request; the message lists the devices that exist."""


class UnsupportedError(RuntimeError):
    """The device cannot run this request (a dtype it lacks, a missing library)."""


class ResidualShapeError(ValueError):
    """A fused `residual=` whose shape is not the output's (it is added in the store, so it does
    not broadcast; clconv.add does)."""


class KernelBuildError(RuntimeError):
    """An OpenCL program failed to build; carries the build log and the options used."""

    def __init__(self, message: str, *, source: str, options: tuple[str, ...], log: str) -> None:
        super().__init__(f"{message}\nkernel source: {source}\noptions: {' '.join(options)}\n"
                         f"build log:\n{log}")
        self.source = source
        self.options = options
        self.log = log


# OpenCL status codes that mean "not enough memory" (a buffer too large for the device, or the device
# or host ran out while allocating or launching).
_CL_MEMORY_CODES = {-4: "CL_MEM_OBJECT_ALLOCATION_FAILURE", -5: "CL_OUT_OF_RESOURCES",
                    -6: "CL_OUT_OF_HOST_MEMORY", -61: "CL_INVALID_BUFFER_SIZE"}
# pyclblast raises RuntimeError("PyCLBlast: 'CLBlastX...' failed: <status name>: <CL code name>").
_CLBLAST_MEMORY_WORDS = (*_CL_MEMORY_CODES.values(), "TempBufferAllocFailure", "OutOfResources",
                         "OutOfHostMemory", "InvalidBufferSize")


def allocation_failure(err: BaseException) -> str | None:
    """The name of the out-of-memory condition `err` reports (a pyopencl error with one of the codes
    above, or a pyclblast error naming one), else None."""
    if isinstance(err, cl.Error):
        try:
            code = err.code
        except Exception:  # an Error built from a bare message has no code
            return None
        return _CL_MEMORY_CODES.get(code)
    if isinstance(err, RuntimeError) and str(err).startswith("PyCLBlast"):
        text = str(err)
        return next((word for word in _CLBLAST_MEMORY_WORDS if word in text), None)
    return None


def sizes_text(operation: str, dtype: object, workspace: int = 0,
               **shapes: tuple[int, ...]) -> str:
    """'conv2d of input (2, 3, 8, 8) = 1536 bytes, ... of float32, column workspace 0 bytes'."""
    itemsize = np.dtype(dtype).itemsize
    parts = ", ".join(f"{name} {tuple(shape)} = {math.prod(shape) * itemsize} bytes"
                      for name, shape in shapes.items())
    text = f"{operation} of {parts} of {np.dtype(dtype)}"
    return f"{text}, column workspace {workspace} bytes" if workspace else text


@contextmanager
def device_memory_errors(dev: Device, what: str | Callable[[], str]) -> Iterator[None]:
    """Turns the drivers' out-of-memory failures raised inside the block into a MemoryError.

    what: the operation and its sizes ("conv2d of input (64, 3, 224, 224) ..."), or a function
    returning it (called only on failure). The message adds the device's limits and what to do;
    the driver's error stays attached as __cause__. Other errors pass unchanged.
    """
    try:
        yield
    except Exception as err:
        reason = allocation_failure(err)
        if reason is None:
            raise
        text = what() if callable(what) else what
        raise MemoryError(
            f"out of device memory ({reason}) in {text}, on device {dev.name!r} (largest single "
            f"buffer {dev.max_alloc_bytes} bytes, {dev.global_mem_bytes} bytes in all). Use a smaller "
            f"batch or workspace_limit, or free device arrays held elsewhere."
        ) from err
