"""CLBlast tuning data: what a tuning result is valid for, the user's files and the shipped database.

Parameters are data (a `{kernel: {NAME: value}}` dict per precision), exactly CLBlast's database
names: Xgemm, XgemmDirect, Copy, Pad, Transpose, Padtranspose, GemmRoutine. `find_entry` picks the
user's file for the device (`python -m clconv tune` writes it), else the closest shipped entry in
`clconv/blas/tuning_db/` (same device, else the same platform and code-generation target). Nothing
here runs CLBlast: applying the parameters is clconv.blas.clblast's, searching them
clconv.blas.tuning's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..runtime import config
from ..runtime.cache import cache_dir, write_atomic
from ..runtime.device import Device

__all__ = ["ENV_VAR", "FORMAT", "KERNELS", "PRECISION_NAMES", "enabled", "clblast_version",
           "device_key", "user_path", "load_entry", "save_user", "merge_entries", "shipped_entries",
           "find_entry", "match_score"]

ENV_VAR = config.TUNING
FORMAT = 1
#: CLBlast's database kernels the conv path uses, with the parameter names CLBlast 1.5 expects.
KERNELS: dict[str, tuple[str, ...]] = {
    "Xgemm": ("GEMMK", "KREG", "KWG", "KWI", "MDIMA", "MDIMC", "MWG", "NDIMB", "NDIMC", "NWG", "SA",
              "SB", "STRM", "STRN", "VWM", "VWN"),
    "XgemmDirect": ("KWID", "MDIMAD", "MDIMCD", "NDIMBD", "NDIMCD", "PADA", "PADB", "VWMD", "VWND",
                    "WGD"),
    "Copy": ("COPY_DIMX", "COPY_DIMY", "COPY_VW", "COPY_WPT"),
    "Pad": ("PAD_DIMX", "PAD_DIMY", "PAD_WPTX", "PAD_WPTY"),
    "Transpose": ("TRA_DIM", "TRA_PAD", "TRA_SHUFFLE", "TRA_WPT"),
    "Padtranspose": ("PADTRA_PAD", "PADTRA_TILE", "PADTRA_WPT"),
    "GemmRoutine": ("XGEMM_MIN_INDIRECT_SIZE",),
    # CLBlast's fused convolution (CLBlastSconvgemm): not used by clconv, only by `bench`'s peer.
    "Xconvgemm": ("KWID", "MDIMAD", "MDIMCD", "NDIMBD", "NDIMCD", "PADA", "PADB", "VWMD", "VWND",
                  "WGD"),
}
PRECISION_NAMES = {16: "float16", 32: "float32", 64: "float64"}
_DB_DIR = Path(__file__).resolve().parent / "tuning_db"


def enabled() -> bool:
    """False when CLCONV_TUNING is 'off' (or 0/no/false): CLBlast then runs on its own defaults."""
    return config.tuning_enabled()


# --------------------------------------------------------------------------------------------------
# Keys and files

def clblast_version() -> str:
    """The version of the libclblast that pyclblast loads ('1.5.3'), or 'unknown'.

    CLBlast has no version call; the shared library's file name carries it (libclblast.so.1.5.3).
    """
    if True:  # when pyclblast is loaded, the library is mapped: read which file it is
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    if "libclblast" in line:
                        found = _version_from_path(line.split()[-1])
                        if found:
                            return found
        except OSError:
            pass
    import ctypes.util

    name = ctypes.util.find_library("clblast")
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                   "/usr/lib", "/usr/local/lib"):
        if name and os.path.exists(os.path.join(folder, name)):
            found = _version_from_path(os.path.join(folder, name))
            if found:
                return found
    return "unknown"


def _version_from_path(path: str) -> str | None:
    match = re.search(r"libclblast\.so\.(\d+\.\d+\.\d+)", os.path.realpath(path))
    return match.group(1) if match else None


def device_key(dev: Device) -> dict[str, str]:
    """What a tuning result is valid for: platform, device, its OpenCL version string (PoCL puts
    its code-generation target there), driver version, CLBlast version."""
    return {"platform": dev.platform_name, "device": dev.name, "device_version": dev.opencl_version,
            "driver_version": dev.driver_version, "clblast_version": clblast_version()}


def user_path(dev: Device) -> Path:
    """cache_dir()/clblast-tuning-<device>-<hash of the key>.json."""
    key = device_key(dev)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", dev.name).strip("-")[:40] or "device"
    return cache_dir() / f"clblast-tuning-{slug}-{digest}.json"


def _check_entry(entry: Any, where: str) -> dict[str, Any]:
    """entry, if it is a tuning entry of this FORMAT with well-formed parameters; else ValueError."""
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        raise ValueError(f"{where}: not a clconv tuning entry of format {FORMAT}")
    if not isinstance(entry.get("key"), dict) or not isinstance(entry.get("parameters"), dict):
        raise ValueError(f"{where}: a tuning entry needs 'key' and 'parameters'")
    for precision, kernels in entry["parameters"].items():
        if not str(precision).isdigit() or not isinstance(kernels, dict):
            raise ValueError(f"{where}: parameters must be {{precision: {{kernel: {{...}}}}}}")
        for kernel, params in kernels.items():
            names = KERNELS.get(kernel)
            if names is None or not isinstance(params, dict):
                raise ValueError(f"{where}: unknown kernel {kernel!r}")
            if set(params) != set(names) or not all(isinstance(v, int) for v in params.values()):
                raise ValueError(f"{where}: {kernel} needs the integer parameters {names}, got "
                                 f"{sorted(params)}")
    return entry


def load_entry(path: Path) -> dict[str, Any]:
    """A saved tuning entry (raises ValueError/OSError if unreadable or malformed)."""
    with open(path, encoding="utf-8") as f:
        return _check_entry(json.load(f), str(path))


def merge_entries(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """new, keeping old's result for any (precision, kernel) that new did not measure, or measured
    at the same size but slower (a short re-run never undoes a longer one)."""
    merged = json.loads(json.dumps(new))
    if not old:
        return merged
    for precision, kernels in old.get("parameters", {}).items():
        for kernel, params in kernels.items():
            old_m = old.get("measured", {}).get(precision, {}).get(kernel)
            new_m = merged.get("measured", {}).get(precision, {}).get(kernel)
            untouched = new_m is None and kernel not in merged["parameters"].get(precision, {})
            old_faster = (old_m is not None and new_m is not None and "time_ms" in new_m
                          and old_m.get("size") == new_m.get("size")
                          and old_m.get("time_ms", float("inf")) < new_m["time_ms"])
            if untouched or old_faster:
                merged["parameters"].setdefault(precision, {})[kernel] = params
                if old_m is not None:
                    merged.setdefault("measured", {}).setdefault(precision, {})[kernel] = old_m
    return merged


def save_user(dev: Device, entry: Mapping[str, Any], path: Path | None = None) -> Path:
    """Writes `entry` (merged with what is already saved for the device) atomically; returns the
    path."""
    path = path or user_path(dev)
    old = None
    if path.exists():
        try:
            old = load_entry(path)
        except (OSError, ValueError):
            old = None
    merged = _check_entry(merge_entries(old, entry), "new tuning entry")
    write_atomic(path, json.dumps(merged, indent=1, sort_keys=True) + "\n")
    return path


def shipped_entries(folder: Path | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(file name, entry) for every entry of the shipped database (files `{"entries": [...]}`)."""
    folder = folder or _DB_DIR
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for i, entry in enumerate(data.get("entries", [])):
            found.append((path.name, _check_entry(entry, f"{path.name} entry {i}")))
    return found


def match_score(key: Mapping[str, str], entry_key: Mapping[str, str]) -> int:
    """0 = not for this device; more is closer. The platform must match, and the device name or,
    failing that, the device's OpenCL version string (PoCL: 'OpenCL 3.0 PoCL HSTR:
    pthread-x86_64-pc-linux-gnu-skylake-avx512', i.e. the same code generator for the same CPU
    family), else (score 1) any PoCL CPU target: the nearest entry of the platform family. Same
    driver and CLBlast versions count extra."""
    if entry_key.get("platform") != key["platform"]:
        return 0
    if entry_key.get("device") == key["device"]:
        score = 4
    elif entry_key.get("device_version") == key["device_version"] and "HSTR" in key["device_version"]:
        score = 2
    elif "HSTR" in key["device_version"] and "HSTR" in entry_key.get("device_version", ""):
        # The nearest of the same platform family: PoCL on another CPU target (the AVX-512
        # machine's parameters ran CLBlast's GEMM 2.2x faster than its defaults on an AVX2 one).
        return 1
    else:
        return 0
    score += entry_key.get("driver_version") == key["driver_version"]
    score += entry_key.get("clblast_version") == key["clblast_version"]
    return score


def find_entry(dev: Device, folder: Path | None = None) -> tuple[dict[str, Any] | None, str]:
    """The tuning entry to use on `dev` and where it came from: the user's file for this exact
    key, else the best-matching shipped entry, else (None, why not)."""
    path = user_path(dev)
    if path.exists():
        try:
            return load_entry(path), f"user tuning {path}"
        except (OSError, ValueError) as err:
            user_error = f"ignored unreadable {path}: {err}; "
    else:
        user_error = ""
    key = device_key(dev)
    best, best_score, best_name = None, 0, ""
    for name, entry in shipped_entries(folder):
        score = match_score(key, entry["key"])
        if score > best_score:
            best, best_score, best_name = entry, score, name
    if best is None:
        return None, f"{user_error}no tuning for this device (run `python -m clconv tune`)"
    how = ("same device" if best_score >= 4 else "same code generator" if best_score >= 2 else
           f"nearest entry of the same platform: no tuning for {key['device_version']!r}; "
           f"`python -m clconv tune` makes one")
    return best, (f"{user_error}shipped tuning {best_name} ({how}: {best['key'].get('device')!r}, "
                  f"driver {best['key'].get('driver_version')}, CLBlast "
                  f"{best['key'].get('clblast_version')})")
