"""Oclgrind's side of the sanitize tests: is this process under Oclgrind, with which checks, what
did it report, and which cl/ file did each kernel launch come from.

Oclgrind (https://github.com/jrprice/Oclgrind) is an OpenCL device simulator: it interprets each
work-item and reports every out-of-bounds or unallocated access and, with --data-races, every pair
of work-items that touch one address without synchronisation. Its `oclgrind` command starts the
program with its runtime preloaded (LD_PRELOAD) and its options as OCLGRIND_* variables; it writes
its diagnostics to file descriptor 2.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Any

import pytest

#: What `make sanitize` asks of Oclgrind (its options become these variables): --data-races,
#: --check-api, and kernels built with -cl-opt-disable, because Oclgrind 21.10's interpreter lacks
#: LLVM intrinsics that the optimiser introduces (`if (i < 0) i = -i;`, reflect padding in
#: cl/common.cl, becomes llvm.abs.i32: "Undefined external function", the kernel cannot be
#: created); unoptimised code also keeps every access the source makes.
REQUIRED = {"OCLGRIND_DATA_RACES": "1", "OCLGRIND_CHECK_API": "1",
            "OCLGRIND_BUILD_OPTIONS": "-cl-opt-disable"}

#: How Oclgrind starts a diagnostic (invalid access, race, API error, fatal error, ...).
_DIAGNOSTIC = re.compile(r"^(Invalid |Uninitialized |Read-write data race|Write-write data race|"
                         r"Work-group divergence|Oclgrind |OCLGRIND|.*\bdata race\b|Kernel: )",
                         re.MULTILINE)

#: --check-api reports info queries that a 1.2 device answers with CL_INVALID_VALUE (pyopencl and
#: clconv ask for optional OpenCL 2.x/3.0 properties and handle the error): not a problem.
#: Nor is clCreateKernel of '_source': pyopencl's Kernel(program, name) reads program._source (the
#: text it keeps for capture_call); on a Program wrapper without it (kernel.program, as
#: clconv.runtime.program.BoundKernel passes) Program.__getattr__ tries it as a kernel name, and
#: pyopencl handles the failure.
_BENIGN_API = re.compile(r"Oclgrind - OpenCL runtime error detected\n\s*(Function: clGet\w*Info\n"
                         r"\s*Error:\s+CL_INVALID_VALUE\n\s*For argument 'param_name'|"
                         r"Function: clCreateKernel\n\s*Error:\s+CL_INVALID_KERNEL_NAME\n"
                         r"\s*Kernel '_source' not found)\n?")


def under_oclgrind() -> bool:
    """True when this process runs inside `oclgrind` (its runtime is preloaded)."""
    return "liboclgrind" in os.environ.get("LD_PRELOAD", "")


def missing_options() -> list[str]:
    """The REQUIRED settings this Oclgrind run lacks, as `VARIABLE=value`."""
    return [f"{k}={v}" for k, v in REQUIRED.items() if v not in os.environ.get(k, "").split()]


def diagnostics(text: str) -> list[str]:
    """The first line of each Oclgrind diagnostic in captured stderr text (benign API errors left
    out)."""
    text = _BENIGN_API.sub("", text)
    return [(m.group(0) + text[m.end():].split("\n", 1)[0]).strip()
            for m in _DIAGNOSTIC.finditer(text) if not m.group(0).startswith("Kernel")]


def without_benign(text: str) -> str:
    """Captured stderr text without the benign API errors (for failure reports)."""
    return _BENIGN_API.sub("", text).strip()


def Stderr() -> Any:  # used as a class: `with Stderr() as err`
    """Captures file descriptor 2 (where Oclgrind writes) while active; `.text` afterwards."""
    from clconv.runtime.program import CapturedStderr  # clconv imported lazily, as below

    return CapturedStderr()


# ---------------------------------------------------------------------------
# kernel launches per cl/ file
# ---------------------------------------------------------------------------

_KERNEL_DEF = re.compile(r"__kernel\s+void\s+(\w+)\s*\(")


def kernel_files() -> dict[str, list[str]]:
    """Every cl/*.cl file and the kernels it defines (include-only files define none)."""
    from clconv.runtime.program import kernel_dir

    return {p.name: _KERNEL_DEF.findall(p.read_text()) for p in sorted(kernel_dir().glob("*.cl"))}


def not_applicable(dev: Any) -> dict[str, str]:
    """Kernel files that cannot run on `dev`, and why."""
    reasons = {}
    if not dev.fp16:
        reasons["fp16_probe.cl"] = ("the device has no cl_khr_fp16 (Oclgrind 21.10 aborts on half "
                                    "arithmetic); the probe runs only where float16 is offered")
    return reasons


class LaunchCounter:
    """Counts kernel launches per cl/ file (clconv has no launch hook: pyopencl's Kernel.__call__,
    clconv's BoundKernel, which enqueues its own kernel object directly, and the CLBlast GEMM are
    wrapped through `install`'s MonkeyPatch)."""

    def __init__(self, files: dict[str, list[str]]) -> None:
        self.by_name: dict[str, list[str]] = {}
        for file, names in files.items():
            for name in names:
                self.by_name.setdefault(name, []).append(file)
        self.counts: Counter[str] = Counter()
        self._program_file: dict[int, str] = {}

    def _file(self, k: Any) -> str:
        name = k.function_name
        files = self.by_name.get(name, [])
        if len(files) == 1:
            return files[0]
        if not files:
            # pyopencl's own kernels (fill, copy, ...): not clconv's. (Their programs, wrapped
            # again by get_info, would look up `_source` as a kernel name: an API error.)
            return f"pyopencl ({name})"
        # A name in several files: the program's source says which file it was built from.
        import pyopencl as cl

        from clconv.runtime.program import kernel_dir

        prg = k.get_info(cl.kernel_info.PROGRAM)
        if prg.int_ptr not in self._program_file:
            source = prg.get_info(cl.program_info.SOURCE)
            match = [f for f in files if (kernel_dir() / f).read_text().split("__kernel", 1)[-1]
                     .split("{", 1)[0] in source]
            self._program_file[prg.int_ptr] = match[0] if match else f"(unknown: {name})"
        return self._program_file[prg.int_ptr]

    def install(self, mp: pytest.MonkeyPatch) -> None:
        """Wraps the three ways a kernel is launched; `mp.undo()` unwraps them."""
        import pyopencl as cl

        from clconv.blas import clblast
        from clconv.runtime.program import BoundKernel

        counts, file_of = self.counts, self._file
        kernel_call, gemm, bound_call = cl.Kernel.__call__, clblast.gemm, BoundKernel.__call__

        def counted(k: Any, *args: Any, **kwargs: Any) -> Any:
            counts[file_of(k)] += 1
            return kernel_call(k, *args, **kwargs)

        def counted_gemm(*args: Any, **kwargs: Any) -> Any:
            counts["CLBlast (xgemm)"] += 1
            return gemm(*args, **kwargs)

        def counted_bound(bk: Any, *args: Any, **kwargs: Any) -> Any:
            if bk.shared is None:  # else it calls the shared kernel, counted above
                counts[file_of(bk.kernel)] += 1
            return bound_call(bk, *args, **kwargs)

        mp.setattr(cl.Kernel, "__call__", counted)
        mp.setattr(clblast, "gemm", counted_gemm)
        mp.setattr(BoundKernel, "__call__", counted_bound)

    def table(self, files: dict[str, list[str]], na: dict[str, str],
              whole: bool) -> tuple[list[str], list[str]]:
        """(lines of the launches-per-file table, kernel files with no launch and no reason);
        `whole`: every test ran (else a file without a launch is not judged)."""
        lines, uncovered = ["launches checked per kernel file:"], []
        for file, names in files.items():
            n = self.counts.get(file, 0)
            if not names:
                note = "include-only (no __kernel): checked through the files that include it"
            elif n:
                note = f"kernels: {', '.join(names)}"
            elif file in na:
                note = f"not run: {na[file]}"
            else:
                note = ("NOT COVERED: add a test to tests/sanitize/" if whole else
                        "none in this part of the tests")
                uncovered += [file] if whole else []
            lines.append(f"  {file:22} {n:5}  {note}")
        for other in sorted(set(self.counts) - set(files)):
            note = "  (CLBlast's own kernels, checked by Oclgrind too)" if other.startswith(
                "CLBlast") else ""
            lines.append(f"  {other:22} {self.counts[other]:5}{note}")
        return lines, uncovered
