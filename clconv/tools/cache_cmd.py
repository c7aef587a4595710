"""`clconv cache [--clear]`: what clconv keeps between runs, where, and how big.

The cache folder (`clconv.runtime.cache.cache_dir()`) holds three kinds of entries:
- CLBlast tuning, `clblast-tuning-<device>-<hash>.json`: the GEMM parameters `clconv tune` found;
- 'auto' choices, `algorithms.json`: which algorithm `algorithm='auto'` measured fastest per
  (device, shape, dtype);
- the first-use list, `prebuilt-networks.json`: the networks whose first forward had their
  kernels built by helper processes (clconv.ops.prebuild), which later first forwards leave to
  the driver's cache (clear it with the driver's: helpers then run again).
Compiled kernels are not there: the OpenCL driver caches those itself (PoCL: $POCL_CACHE_DIR or
~/.cache/pocl).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Entry", "entries", "run_cache"]

TUNING_GLOB = "clblast-tuning-*.json"
CHOICES_FILE = "algorithms.json"  # clconv.ops.autotune.CHOICES_FILE (not imported: it loads ops)
NETWORKS_FILE = "prebuilt-networks.json"  # clconv.ops.prebuild.NETWORKS_FILE (likewise)


@dataclass(frozen=True)
class Entry:
    kind: str  # 'tuning' | 'auto' | 'networks' | 'other'
    path: Path
    size: int  # bytes
    detail: str


def _detail(kind: str, path: Path) -> str:
    if kind == "other":  # not clconv's: its contents are not read
        return ""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unreadable"
    if kind == "networks":
        return f"{len(data) if isinstance(data, list) else 0} networks listed"
    if kind == "auto":
        choices = data.get("choices") if isinstance(data, dict) else None
        return f"{len(choices) if isinstance(choices, dict) else 0} remembered choices"
    if kind == "tuning" and isinstance(data, dict):
        device = data.get("device") or data.get("key", {})
        name = device.get("device") if isinstance(device, dict) else device
        return f"CLBlast parameters{f' for {name}' if isinstance(name, str) else ''}"
    return ""


def entries(folder: Path) -> list[Entry]:
    """The files in `folder`, tuning first, then the 'auto' choices, then anything else."""
    found: list[Entry] = []
    if not folder.is_dir():
        return found
    tuning = set(folder.glob(TUNING_GLOB))
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        kind = "tuning" if path in tuning else "auto" if path.name == CHOICES_FILE else \
            "networks" if path.name == NETWORKS_FILE else "other"
        found.append(Entry(kind, path, path.stat().st_size, _detail(kind, path)))
    order = {"tuning": 0, "auto": 1, "networks": 2, "other": 3}
    return sorted(found, key=lambda e: (order[e.kind], e.path.name))


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def run_cache(clear: bool = False) -> int:
    """Prints the cache folder and its entries; with `clear`, removes the tuning, 'auto' and
    first-use entries (other files are listed and left alone). Returns an exit code."""
    from ..runtime import config

    folder = config.cache_dir()  # (listing it does not create it)
    if folder.exists() and not folder.is_dir():
        print(f"clconv cache folder: {folder} is not a folder (set CLCONV_CACHE_DIR to a folder; "
              f"clconv then keeps no tuning or 'auto' choices between runs)", file=sys.stderr)
        return 1
    found = entries(folder)
    print(f"clconv cache folder: {folder}" + ("" if folder.exists() else " (not made yet)"))
    print("  (set CLCONV_CACHE_DIR to move it; compiled kernels are cached by the OpenCL driver, "
          "not here)")
    labels = {"tuning": "CLBlast tuning", "auto": "'auto' choices",
              "networks": "first-use list", "other": "other file"}
    if not found:
        print("  empty: no tuning saved, no 'auto' choice remembered yet")
    for e in found:
        print(f"  {labels[e.kind]:<15} {_size(e.size):>10}  {e.path.name}"
              + (f"  ({e.detail})" if e.detail else ""))
    if found:
        print(f"  total {_size(sum(e.size for e in found))} in {len(found)} file(s)")
    if clear:
        removed = [e for e in found if e.kind in ("tuning", "auto", "networks")]
        for e in removed:
            e.path.unlink(missing_ok=True)
        print(f"removed {len(removed)} file(s), {_size(sum(e.size for e in removed))}"
              + ("; other files left alone" if any(e.kind == "other" for e in found) else ""))
    return 0
