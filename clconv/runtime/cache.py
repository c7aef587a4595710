"""Where clconv keeps what it learns about a device across processes (tuning, algorithm choices)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """$CLCONV_CACHE_DIR, else $XDG_CACHE_HOME/clconv, else ~/.cache/clconv (created on demand)."""
    env = os.environ.get("CLCONV_CACHE_DIR")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "clconv"
    path.mkdir(parents=True, exist_ok=True)
    return path
