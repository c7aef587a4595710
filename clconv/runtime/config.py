"""clconv's configuration: every CLCONV_* environment variable, read here and nowhere else.

Each is read when it is used (not at import), so a process may change it between calls; tests do.

| variable | values (default first) | what it sets |
|---|---|---|
| CLCONV_DEVICE | unset, or a device spec ('gpu', 'cpu', '1', '0:0', a name part) | the default device (clconv.device()) |
| CLCONV_AUTO | measure, rule | how algorithm='auto' chooses: the cost model's shortlist measured once per layer and remembered, or the fixed rule alone |
| CLCONV_GEMM | unset, packed, clblast | the GEMM engine of transposed convolutions, gradients and linear: unset = clconv's packed GEMM on PoCL's CPU devices, CLBlast elsewhere |
| CLCONV_TUNING | on, off (a switch, see below) | whether CLBlast gets clconv's tuned parameters (the shipped database or `clconv tune`'s) |
| CLCONV_CACHE_DIR | unset: $XDG_CACHE_HOME/clconv or ~/.cache/clconv | where tuning results and 'auto''s choices are kept |
| CLCONV_VERBOSE | off, on (a switch) | 1: print each kernel build (source, options, seconds) and the compiler's output |
| CLCONV_TORCH_ZERO_COPY | on, off (a switch) | on devices whose memory is the host's, clconv.torch's forward reads its operands from the tensors' memory and writes its result into the returned tensor's (host-pointer buffers, no copies); 0: copies instead |
| CLCONV_TORCH_PAUSE_OPENMP | on, off (a switch) | on CPU devices, clconv.torch releases torch's idle OpenMP workers (the calling thread's team: `omp_pause_resource_all`) before it enqueues work, so that their spinning does not compete with the device's threads for the cores; 0: left as they are |
| CLCONV_PREBUILD | auto, or a count (0: none) | the helper processes that build a converted network's new convolutions' kernels during its first forward (clconv.ops.prebuild): auto = one fewer than the process's cores, at most 3, on CPU devices |

A switch is on as 1, on, yes or true and off as 0, off, no or false (any case), its default when
unset or blank; any other value is a ValueError naming the variable.

One driver variable is set too, when clconv first lists the devices and the user has not set it:
PoCL's POCL_AFFINITY=1 (`pin_pocl_threads`), which pins PoCL's worker thread i to CPU i.
Unpinned, PoCL 3.1 ran a kernel queued behind another (every kernel of a network's forward after
the first) on one of its threads: Linux woke the second worker on the core of the one that had
just finished, so both shared a core. Measured on a 2-core AMD EPYC (PoCL 3.1): a
98-work-group kernel 1.08 ms launched alone, 2.12 ms queued behind another, 1.08 ms queued with
the pinning; ResNet-18's 3x3 layers in blocks of back-to-back calls 1.5-1.7x faster. Set POCL_AFFINITY=0 to keep PoCL's default.
It must be in the environment before PoCL starts (the process's first OpenCL platform query), so
a process that queried platforms before clconv did keeps PoCL's default; it is decided that late
(not at import) so that a Dask worker's DevicePlugin env (POCL_MAX_PTHREAD_COUNT) is seen first.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["POCL_AFFINITY", "pin_pocl_threads", "AUTO_MODES", "DEVICE", "AUTO", "GEMM",
           "GEMM_ENGINES", "TUNING", "CACHE_DIR", "VERBOSE", "TORCH_ZERO_COPY", "PREBUILD",
           "TORCH_PAUSE_OPENMP", "VARIABLES", "torch_pause_openmp",
           "auto_mode", "prebuild_helpers", "torch_zero_copy", "cache_dir", "device_spec",
           "gemm_engine",
           "tuning_enabled", "verbose"]

DEVICE = "CLCONV_DEVICE"
AUTO = "CLCONV_AUTO"
GEMM = "CLCONV_GEMM"
TUNING = "CLCONV_TUNING"
CACHE_DIR = "CLCONV_CACHE_DIR"
VERBOSE = "CLCONV_VERBOSE"
TORCH_ZERO_COPY = "CLCONV_TORCH_ZERO_COPY"
PREBUILD = "CLCONV_PREBUILD"
TORCH_PAUSE_OPENMP = "CLCONV_TORCH_PAUSE_OPENMP"
#: Every variable clconv reads (the table above).
VARIABLES = (DEVICE, AUTO, GEMM, TUNING, CACHE_DIR, VERBOSE, TORCH_ZERO_COPY, TORCH_PAUSE_OPENMP,
             PREBUILD)

AUTO_MODES = ("measure", "rule")
GEMM_ENGINES = ("packed", "clblast")


def _value(name: str) -> str:
    return os.environ.get(name, "").strip()


def device_spec() -> str | None:
    """$CLCONV_DEVICE as set (None when unset or blank)."""
    value = os.environ.get(DEVICE)
    return value if value is not None and value.strip() else None


def auto_mode() -> str:
    """'measure' (the default) or 'rule', from $CLCONV_AUTO (ValueError naming it otherwise)."""
    value = _value(AUTO).lower() or "measure"
    if value not in AUTO_MODES:
        raise ValueError(f"environment variable {AUTO}={os.environ.get(AUTO)!r} must be one of "
                         f"{AUTO_MODES} (how algorithm='auto' chooses)")
    return value


def gemm_engine() -> str | None:
    """'packed', 'clblast' or None (unset: the per-device default), from $CLCONV_GEMM."""
    value = _value(GEMM).lower()
    if value and value not in GEMM_ENGINES:
        raise ValueError(f"environment variable {GEMM}={os.environ.get(GEMM)!r} must be one of "
                         f"{GEMM_ENGINES} (or unset: packed on CPUs, CLBlast elsewhere)")
    return value or None


_ON = ("1", "on", "yes", "true")
_OFF = ("0", "off", "no", "false")


def _switch(name: str, default: bool) -> bool:
    """A switch variable's setting (the module's docstring), `default` when unset or blank."""
    value = _value(name).lower()
    if not value:
        return default
    if value not in _ON + _OFF:
        raise ValueError(f"environment variable {name}={os.environ.get(name)!r} must be one of "
                         f"{_ON} (on) or {_OFF} (off), or unset")
    return value in _ON


def tuning_enabled() -> bool:
    """$CLCONV_TUNING as a switch, on by default."""
    return _switch(TUNING, True)


def tuning_setting() -> str:
    """$CLCONV_TUNING as set, for messages."""
    return os.environ.get(TUNING, "")


def cache_dir() -> Path:
    """$CLCONV_CACHE_DIR, else $XDG_CACHE_HOME/clconv, else ~/.cache/clconv (not created here)."""
    env = os.environ.get(CACHE_DIR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "clconv"


def verbose() -> bool:
    """$CLCONV_VERBOSE as a switch, off by default: kernel builds are reported with their
    compiler output."""
    return _switch(VERBOSE, False)


def torch_zero_copy() -> bool:
    """$CLCONV_TORCH_ZERO_COPY as a switch, on by default (clconv.torch's host-pointer operands
    and results)."""
    return _switch(TORCH_ZERO_COPY, True)


def torch_pause_openmp() -> bool:
    """$CLCONV_TORCH_PAUSE_OPENMP as a switch, on by default (clconv.torch_ops.pause_openmp)."""
    return _switch(TORCH_PAUSE_OPENMP, True)


def prebuild_helpers() -> int | None:
    """$CLCONV_PREBUILD: None for auto (unset, blank or 'auto': clconv.ops.prebuild decides), else
    the helper count, a non-negative integer (ValueError naming the variable otherwise)."""
    value = _value(PREBUILD).lower()
    if value in ("", "auto"):
        return None
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"environment variable {PREBUILD}={os.environ.get(PREBUILD)!r} must be "
                         f"'auto' or a count of helper processes (0: none)")
    return int(value)


POCL_AFFINITY = "POCL_AFFINITY"
_POCL_THREAD_LIMITS = ("POCL_MAX_PTHREAD_COUNT", "POCL_CPU_MAX_CU_COUNT")


def pin_pocl_threads() -> bool:
    """Sets POCL_AFFINITY=1 (see the module's docstring) unless it is set already or pinning
    could fail: PoCL 3.1 pins thread i to CPU i and aborts the process when that fails (a CPU
    outside a container's cpuset), so only a process whose allowed CPUs are exactly 0..n-1 of the
    n online ones gets it; nor where PoCL's threads are limited (POCL_MAX_PTHREAD_COUNT,
    POCL_CPU_MAX_CU_COUNT: processes sharing the cores, as clconv.dask's CPU workers, would all be
    pinned to the first ones). Returns whether it set the variable."""
    if any(name in os.environ for name in (POCL_AFFINITY, *_POCL_THREAD_LIMITS)):
        return False
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):  # not Linux: PoCL pins there only on Linux anyway
        return False
    count = os.cpu_count() or 0
    if count < 2 or allowed != set(range(count)):
        return False
    os.environ[POCL_AFFINITY] = "1"
    return True
