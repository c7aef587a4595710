"""Where clconv keeps what it learns about a device across processes (tuning, algorithm choices)."""

from __future__ import annotations

from pathlib import Path

from . import config

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """$CLCONV_CACHE_DIR, else $XDG_CACHE_HOME/clconv, else ~/.cache/clconv (created on demand)."""
    path = config.cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path
