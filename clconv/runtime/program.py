"""Finding the kernel sources, specialising them with -D defines, building and caching programs.

Programs are built once per (device, source file, options) and kept for the process; PoCL and the
other drivers keep their own on-disk binary caches, so later processes build fast too.
"""

from __future__ import annotations

import os
import re
import struct
import time
import warnings
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyopencl as cl
from pyopencl import cltypes

from . import config
from .device import Device
from .errors import KernelBuildError

__all__ = ["BoundKernel", "ProgramCache", "kernel", "kernel_dir", "options", "precision_defines",
           "programs"]

_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)
_AGAIN = "// clconv: include again"


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
    """A kernel file with its #include "x.cl" lines replaced by the files (each included once,
    but a file marked `// clconv: include again`, whose text depends on the defines before it:
    activation.cl).

    Inlining on the host keeps the driver's binary cache keyed on the full text, so editing an
    included file can never serve a stale binary.
    """
    seen: set[str] = set()

    def expand(file: str) -> str:
        if file in seen:
            return ""
        text = (kernel_dir() / file).read_text()
        if _AGAIN not in text:
            seen.add(file)
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


def options(defines: Mapping[str, object]) -> tuple[str, ...]:
    """The build options for `defines` ({name: value or None}), in a canonical order."""
    return tuple(f"-D{k}" if v is None else f"-D{k}={v}" for k, v in sorted(defines.items()))


class ProgramCache:
    """A device's built programs and their kernels, least recently used first out.

    Bounded (`MAX_PROGRAMS`): a long-running process that meets many shapes keeps the most recent
    builds; an evicted program is rebuilt on its next use (fast: the driver's disk cache has it).
    A compile error is remembered too, so that retrying the same request fails at once.
    `builds` counts the programs built (what a test counts to show that a call built nothing),
    `build_seconds` their total build time (what benchmarks.first_use reports).
    """

    MAX_PROGRAMS = 256

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple[str, tuple[str, ...]], cl.Program | KernelBuildError] = \
            OrderedDict()
        self.kernels: dict[tuple[str, tuple[str, ...], str], cl.Kernel] = {}
        self.logs: OrderedDict[tuple[str, tuple[str, ...]], str] = OrderedDict()
        self.builds = 0
        self.build_seconds = 0.0

    def evict(self) -> None:
        while len(self.entries) > self.MAX_PROGRAMS:
            (source, opts), _ = self.entries.popitem(last=False)
            self.logs.pop((source, opts), None)
            for key in [k for k in self.kernels if k[0] == source and k[1] == opts]:
                del self.kernels[key]
        while len(self.logs) > self.MAX_PROGRAMS:
            self.logs.popitem(last=False)


def programs(dev: Device) -> ProgramCache:
    """The device's ProgramCache (made on first use)."""
    return dev.slot("programs", ProgramCache)


def kernel(dev: Device, source: str, name: str, defines: Mapping[str, object]) -> cl.Kernel:
    """The kernel `name` of cl/`source` built for `dev` with `defines`, from the cache if built.

    The returned kernel object is shared: set its arguments and enqueue it while holding `dev.lock`.
    Plans call this once, when they are made, and keep the kernel.
    """
    opts = options(defines)
    cache = programs(dev)
    found = cache.kernels.get((source, opts, name))
    if found is not None:
        return found
    with dev.lock:
        found = cache.kernels.get((source, opts, name))
        if found is None:
            found = cl.Kernel(_program(dev, cache, source, opts), name)
            _type_scalar_arguments(found)
            cache.kernels[(source, opts, name)] = found
    return found


# OpenCL scalar (and vector) argument types -> numpy dtypes, for set_scalar_arg_dtypes.
_ARG_DTYPES: dict[str, object] = {
    "char": np.int8, "uchar": np.uint8, "short": np.int16, "ushort": np.uint16, "int": np.int32,
    "uint": np.uint32, "long": np.int64, "ulong": np.uint64, "half": np.float16,
    "float": np.float32, "double": np.float64, "int2": cltypes.int2, "int4": cltypes.int4,
}


def _scalar_dtypes(knl: cl.Kernel) -> list[object] | None:
    """The kernel's argument types as set_scalar_arg_dtypes takes them (None for a buffer, local
    memory or image), or None when the driver gives no argument info or a type is not in the
    table."""
    try:
        dtypes: list[object] = []
        for i in range(knl.num_args):
            if knl.get_arg_info(i, cl.kernel_arg_info.ADDRESS_QUALIFIER) != \
                    cl.kernel_arg_address_qualifier.PRIVATE:
                dtypes.append(None)
                continue
            type_name = knl.get_arg_info(i, cl.kernel_arg_info.TYPE_NAME).strip()
            dtypes.append(None if type_name.endswith("*") else _ARG_DTYPES[type_name])
        return dtypes
    except (cl.Error, KeyError):
        return None


def _type_scalar_arguments(knl: cl.Kernel) -> None:
    """Declares the kernel's scalar argument types to pyopencl (from the driver's argument info,
    which the build asks for with -cl-kernel-arg-info), so that a launch packs its scalars in one
    go: measured on PoCL, a launch with 2 scalars costs ~19 us untyped and ~8 us typed, three int4
    size arguments add ~27 us untyped and nothing measurable typed. A driver without the argument
    info (or a type not in the table) leaves the kernel untyped, as pyopencl's default."""
    try:
        dtypes = []
        for i in range(knl.num_args):
            if knl.get_arg_info(i, cl.kernel_arg_info.ADDRESS_QUALIFIER) != \
                    cl.kernel_arg_address_qualifier.PRIVATE:
                dtypes.append(None)  # a buffer, local memory or image
                continue
            type_name = knl.get_arg_info(i, cl.kernel_arg_info.TYPE_NAME).strip()
            if type_name.endswith("*"):
                dtypes.append(None)
                continue
            dtypes.append(_ARG_DTYPES[type_name])
        knl.set_scalar_arg_dtypes(dtypes)
    except (cl.Error, KeyError):
        return


def _program(dev: Device, cache: ProgramCache, source: str, opts: tuple[str, ...]) -> cl.Program:
    """The built program (call holding dev.lock)."""
    key = (source, opts)
    prg = cache.entries.get(key)
    if isinstance(prg, KernelBuildError):
        raise KernelBuildError(prg.args[0].split("\n", 1)[0], source=prg.source,
                               options=prg.options, log=prg.log)
    if prg is not None:
        cache.entries.move_to_end(key)
        return prg
    prg = cl.Program(dev.context, _source(source))
    start = time.perf_counter()
    try:
        cache.builds += 1
        _build(prg, dev, source, opts)
    except cl.Error as err:
        try:
            with warnings.catch_warnings():  # (pyopencl's note on caching: the build failed)
                warnings.simplefilter("ignore", UserWarning)
                log = prg.get_build_info(dev.cl_device, cl.program_build_info.LOG) or ""
        except cl.Error:
            log = ""
        # pyopencl's cached-build path can raise with an empty driver log: the error text then
        # carries the compiler's messages.
        log = "\n".join(t for t in (log, cache.logs.pop(key, ""), str(err)) if t.strip())
        error = KernelBuildError(f"building {source} failed on {dev.name!r}",
                                 source=str(kernel_dir() / source), options=opts, log=log)
        if getattr(err, "code", None) == cl.status_code.BUILD_PROGRAM_FAILURE:
            cache.entries[key] = error  # deterministic: the same text and options fail again
            cache.evict()
        raise error from err
    finally:
        cache.build_seconds += time.perf_counter() - start
    cache.entries[key] = prg
    cache.evict()
    return prg


_GENERATED = re.compile(r"^\d+ (warning|error)s? generated\.\s*$", re.M)


class CapturedStderr:
    """`with CapturedStderr() as err:` sends what reaches file descriptor 2 (where C code such as
    a driver's compiler writes, beneath Python's sys.stderr) to a temporary file; `err.text` holds
    it afterwards."""

    text = ""

    def __enter__(self) -> CapturedStderr:
        import sys
        import tempfile

        sys.stderr.flush()
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        import sys

        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode("utf-8", "replace")
        self._file.close()


class QuietBuild:
    """`with QuietBuild(prg, dev, source, options): prg.build(...)` keeps compiler output off the
    user's terminal (use holding dev.lock).

    pyopencl turns a non-empty build log into a CompilerWarning and PoCL's clang writes "1 warning
    generated." to file descriptor 2 itself; both are held back. `output` keeps what reached fd 2
    (for KernelBuildError.log); any other text there (another thread's) is written back.
    CLCONV_VERBOSE=1 prints each build's time and the driver's log to stderr.
    """

    def __init__(self, prg: cl.Program, dev: Device, source: str,
                 options: tuple[str, ...]) -> None:
        self.prg, self.dev, self.source, self.options = prg, dev, source, options
        self.output = ""

    def __enter__(self) -> QuietBuild:
        import time
        import warnings

        self._t0 = time.perf_counter()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", cl.CompilerWarning)
        self._captured = CapturedStderr().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        import sys
        import time

        self._captured.__exit__(*exc)
        self._warnings.__exit__(*exc)
        self.output = self._captured.text
        verbose = config.verbose()
        shown = self.output if verbose else _GENERATED.sub("", self.output)
        if shown.strip():
            sys.stderr.write(shown.rstrip() + "\n")
        if verbose:
            try:
                log = self.prg.get_build_info(self.dev.cl_device, cl.program_build_info.LOG) or ""
            except cl.Error:
                log = ""
            print(f"clconv: built {self.source} {' '.join(self.options)} for {self.dev.name!r} in "
                  f"{(time.perf_counter() - self._t0) * 1e3:.0f} ms"
                  + (f"\n{log.strip()}" if log.strip() else ""), file=sys.stderr)


def _build(prg: cl.Program, dev: Device, source: str, opts: tuple[str, ...]) -> None:
    """prg.build() for `dev` under QuietBuild (call holding dev.lock). Kept in programs(dev).logs:
    the driver's log after a successful build, what reached fd 2 after a failed one (the caller
    adds the driver's log to the KernelBuildError itself)."""
    quiet = QuietBuild(prg, dev, source, opts)
    ok = False
    try:
        with quiet:
            # -cl-kernel-arg-info: the argument types for _type_scalar_arguments (not part of the
            # cache key: it changes no code)
            prg.build(options=[*opts, "-cl-kernel-arg-info"], devices=[dev.cl_device])
        ok = True
    finally:
        text = quiet.output
        if ok:
            try:
                text = prg.get_build_info(dev.cl_device, cl.program_build_info.LOG) or ""
            except cl.Error:
                text = ""
        if text.strip():
            cache = programs(dev)
            cache.logs[(source, opts)] = text
            cache.evict()


# struct formats of the scalar types a bound kernel's changing arguments may have.
_STRUCT = {np.dtype(t): "=" + c for t, c in ((np.int8, "b"), (np.uint8, "B"), (np.int16, "h"),
                                              (np.uint16, "H"), (np.int32, "i"), (np.uint32, "I"),
                                              (np.int64, "q"), (np.uint64, "Q"),
                                              (np.float16, "e"), (np.float32, "f"),
                                              (np.float64, "d"))}


def _struct_args_miscounted(knl: cl.Kernel, dtypes: Sequence[object]) -> bool:
    """Whether `knl` has a struct argument (an int4) on a driver that counts such arguments
    wrongly (PoCL <= 0.14, Apple's CPU: pyopencl.characterize.has_struct_arg_count_bug), whose
    launch needs pyopencl's own invoker and its workaround."""
    if not any(getattr(np.dtype(d), "fields", None) for d in dtypes if d is not None):
        return False
    context = knl.context
    devices = tuple(d.int_ptr for d in context.devices)  # (device ids live as long as the process)
    found = _MISCOUNTING.get(devices)
    if found is None:  # (the check parses the driver's version: ~0.15 ms)
        from pyopencl.characterize import has_struct_arg_count_bug

        found = _MISCOUNTING[devices] = any(has_struct_arg_count_bug(d, context)
                                            for d in context.devices)
    return found


_MISCOUNTING: dict[tuple[int, ...], bool] = {}


class BoundKernel:
    """A plan's own object of a built kernel whose arguments that never change are set once, when
    the plan is made; a run sets only the others (the operands' buffers and offsets) and enqueues.

    The kernels `kernel` returns are shared by every plan of one specialisation, so each launch
    sets all their arguments (~5-8 us for a 19-argument kernel on PoCL, typed); a bound one sets
    the few that change (~0.1 us each) and enqueues (~1 us). A new object of a built kernel is
    cheap (clCreateKernel on the cached program). As the shared ones, call it holding `dev.lock`
    (a plan may run in several threads).

    args: every argument, in order, with None at the `changing` positions (given per call, in
    that order, to `__call__`).
    """

    def __init__(self, shared: cl.Kernel, args: Sequence[object],
                 changing: Sequence[int]) -> None:
        self.changing = tuple(changing)
        self.shared: Any = shared
        self.args = list(args)
        if not isinstance(shared, cl.Kernel):  # a wrapper (the tests' launch spies): call it
            return
        self.kernel = cl.Kernel(shared.program, shared.function_name)
        dtypes = _scalar_dtypes(self.kernel)
        setter = getattr(self.kernel, "_set_arg_buf", None)  # pyopencl's own invokers use it
        formats = None if dtypes is None else [
            None if dtypes[i] is None else _STRUCT.get(np.dtype(dtypes[i])) for i in self.changing]
        if dtypes is None or setter is None or any(
                f is None and dtypes[i] is not None for f, i in zip(formats or [], self.changing)) \
                or _struct_args_miscounted(self.kernel, dtypes):
            return  # no argument info, or an unusual type: the shared kernel's full launch
        self.shared = None
        # Every argument set once, scalars packed as the kernel declares them (what pyopencl's
        # set_scalar_arg_dtypes would generate an invoker for: ~0.2 ms a kernel object, the
        # largest part of a new batch size's plan).
        for i, (a, dt) in enumerate(zip(args, dtypes)):
            if dt is None:
                self.kernel.set_arg(i, a)  # a buffer (None: a NULL one)
            else:
                setter(i, np.asarray(0 if a is None else a, dtype=dt).tobytes())
        self._set_buf, self._set_arg = setter, self.kernel.set_arg
        self._setters = tuple(zip(self.changing, formats))

    def __call__(self, queue: cl.CommandQueue, global_size: tuple[int, ...],
                 local_size: tuple[int, ...] | None, *values: object) -> cl.Event:
        """Sets the changing arguments to `values` (in `changing`'s order) and enqueues."""
        if self.shared is not None:
            for i, v in zip(self.changing, values):
                self.args[i] = v
            return self.shared(queue, global_size, local_size, *self.args)
        pack, set_buf, set_arg = struct.pack, self._set_buf, self._set_arg
        for (i, fmt), v in zip(self._setters, values):
            if fmt is None:
                set_arg(i, v)  # a buffer
            else:
                set_buf(i, pack(fmt, v))
        return cl.enqueue_nd_range_kernel(queue, self.kernel, global_size, local_size)
