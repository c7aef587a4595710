"""clconv's configuration: every CLCONV_* environment variable, read here and nowhere else.

Each is read when it is used (not at import), so a process may change it between calls; tests do.

| variable | values (default first) | what it sets |
|---|---|---|
| CLCONV_DEVICE | unset, or a device spec ('gpu', 'cpu', '1', '0:0', a name part) | the default device (clconv.device()) |
| CLCONV_AUTO | measure, rule | how algorithm='auto' chooses: the cost model's shortlist measured once per layer and remembered, or the fixed rule alone |
| CLCONV_GEMM | unset, packed, clblast | the GEMM engine of transposed convolutions, gradients and linear: unset = clconv's packed GEMM on PoCL's CPU devices, CLBlast elsewhere |
| CLCONV_TUNING | on, off (0, no, false) | whether CLBlast gets clconv's tuned parameters (the shipped database or `clconv tune`'s) |
| CLCONV_CACHE_DIR | unset: $XDG_CACHE_HOME/clconv or ~/.cache/clconv | where tuning results and 'auto''s choices are kept |
| CLCONV_VERBOSE | unset, 1 | 1: print each kernel build (source, options, seconds) and the compiler's output |
| CLCONV_TORCH_ZERO_COPY | unset, 1 | 1: clconv.torch passes forward operands as host-pointer buffers on devices whose memory is the host's (opt-in: not faster in the measurements of docs/compile.md) |
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["AUTO_MODES", "DEVICE", "AUTO", "GEMM", "GEMM_ENGINES", "TUNING", "CACHE_DIR", "VERBOSE",
           "TORCH_ZERO_COPY", "VARIABLES", "auto_mode", "torch_zero_copy", "cache_dir", "device_spec", "gemm_engine", "tuning_enabled",
           "verbose"]

DEVICE = "CLCONV_DEVICE"
AUTO = "CLCONV_AUTO"
GEMM = "CLCONV_GEMM"
TUNING = "CLCONV_TUNING"
CACHE_DIR = "CLCONV_CACHE_DIR"
VERBOSE = "CLCONV_VERBOSE"
TORCH_ZERO_COPY = "CLCONV_TORCH_ZERO_COPY"
#: Every variable clconv reads (the table above).
VARIABLES = (DEVICE, AUTO, GEMM, TUNING, CACHE_DIR, VERBOSE, TORCH_ZERO_COPY)

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


def tuning_enabled() -> bool:
    """False when $CLCONV_TUNING is off, 0, no or false."""
    return _value(TUNING).lower() not in ("off", "0", "no", "false")


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
    """$CLCONV_VERBOSE == '1': kernel builds are reported with their compiler output."""
    return _value(VERBOSE) == "1"


def torch_zero_copy() -> bool:
    """$CLCONV_TORCH_ZERO_COPY == '1' (clconv.torch's opt-in host-pointer operands)."""
    return _value(TORCH_ZERO_COPY) == "1"
