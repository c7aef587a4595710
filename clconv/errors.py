"""The exceptions clconv raises on purpose (besides ValueError/TypeError for bad arguments)."""

from __future__ import annotations


class DeviceNotFoundError(LookupError):
    """No OpenCL device matches the request; the message lists the devices that exist."""


class UnsupportedError(RuntimeError):
    """The device cannot run this request (a dtype it lacks, a missing library)."""


class KernelBuildError(RuntimeError):
    """An OpenCL program failed to build; carries the build log and the options used."""

    def __init__(self, message: str, *, source: str, options: tuple[str, ...], log: str) -> None:
        super().__init__(f"{message}\nkernel source: {source}\noptions: {' '.join(options)}\n"
                         f"build log:\n{log}")
        self.source = source
        self.options = options
        self.log = log
