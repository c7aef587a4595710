"""Where clconv keeps what it learns about a device across processes (tuning, algorithm choices)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from . import config

__all__ = ["cache_dir", "write_atomic"]


def cache_dir() -> Path:
    """$CLCONV_CACHE_DIR, else $XDG_CACHE_HOME/clconv, else ~/.cache/clconv (created on demand)."""
    path = config.cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, text: str) -> None:
    """`text` into `path` through a temporary file of this process and thread beside it and a
    rename: a reader (another process too) sees the old file or the new one, never half of
    one, and concurrent writers do not share a temporary file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
