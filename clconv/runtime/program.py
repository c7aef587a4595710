"""Finding the kernel sources, specialising them with -D defines, building and caching programs.

Programs are built once per (device, source file, options) and kept for the process; PoCL and the
other drivers keep their own on-disk binary caches, so later processes build fast too.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np
import pyopencl as cl

from .device import Device
from .errors import KernelBuildError

__all__ = ["kernel_dir", "kernel", "precision_defines"]

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


@lru_cache(maxsize=1)
def kernel_dir() -> Path:
    """The folder of the .cl sources: inside the installed package (wheels map the repository's
    top-level cl/ to clconv/cl), else the source checkout's cl/ (editable installs)."""
    here = Path(__file__).resolve().parent.parent  # the clconv package folder
    for candidate in (here / "cl", here.parent / "cl"):
        if (candidate / "common.cl").is_file():
            return candidate
    raise FileNotFoundError(f"clconv's OpenCL sources (common.cl) are in neither {here / 'cl'} "
                            f"nor {here.parent / 'cl'}; the installation is incomplete")


@lru_cache(maxsize=None)
def _source(name: str) -> str:
    """A kernel file with its #include "x.cl" lines replaced by the files (each included once).

    Inlining on the host keeps the driver's binary cache keyed on the full text, so editing an
    included file can never serve a stale binary.
    """
    seen: set[str] = set()

    def expand(file: str) -> str:
        if file in seen:
            return ""
        seen.add(file)
        text = (kernel_dir() / file).read_text()
        return _INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(name)


_CL_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double",
             np.dtype(np.float16): "half"}


def precision_defines(dtype: np.dtype) -> dict[str, object]:
    """REAL/ACC/extension defines for a floating dtype (half accumulates in float)."""
    dtype = np.dtype(dtype)
    defines: dict[str, object] = {"REAL": _CL_TYPES[dtype]}
    if dtype == np.float64:
        defines["USE_FP64"] = 1
    elif dtype == np.float16:
        defines.update(USE_FP16=1, ACC="float")
    return defines


def _options(defines: Mapping[str, object]) -> tuple[str, ...]:
    return tuple(f"-D{k}" if v is None else f"-D{k}={v}" for k, v in sorted(defines.items()))


def kernel(dev: Device, source: str, name: str, defines: Mapping[str, object]) -> cl.Kernel:
    """The kernel `name` of cl/`source` built for `dev` with `defines`, from the cache if built.

    The returned kernel object is shared: set its arguments and enqueue it while holding `dev.lock`.
    """
    options = _options(defines)
    key = ("kernel", source, name, options)
    cached = dev.cache.get(key)
    if cached is not None:
        return cached
    with dev.lock:
        cached = dev.cache.get(key)
        if cached is None:
            cached = cl.Kernel(_program(dev, source, options), name)
            dev.cache[key] = cached
    return cached


def _program(dev: Device, source: str, options: tuple[str, ...]) -> cl.Program:
    """The built program (call holding dev.lock). A compile error is remembered, so that a caller
    retrying the same request gets the same KernelBuildError at once instead of a new build."""
    key = ("program", source, options)
    prg = dev.cache.get(key)
    if isinstance(prg, KernelBuildError):
        raise KernelBuildError(prg.args[0].split("\n", 1)[0], source=prg.source,
                               options=prg.options, log=prg.log)
    if prg is None:
        prg = cl.Program(dev.context, _source(source))
        try:
            prg.build(options=list(options), devices=[dev.cl_device])
        except cl.Error as err:
            try:
                log = prg.get_build_info(dev.cl_device, cl.program_build_info.LOG)
            except cl.Error:
                log = str(err)
            error = KernelBuildError(f"building {source} failed on {dev.name!r}",
                                     source=str(kernel_dir() / source), options=options, log=log)
            if getattr(err, "code", None) == cl.status_code.BUILD_PROGRAM_FAILURE:
                dev.cache[key] = error  # deterministic: the same text and options fail again
            raise error from err
        dev.cache[key] = prg
    return prg
