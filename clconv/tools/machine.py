"""The machine a measurement ran on: its load average, a warning when other work shared the CPUs,
the CPU's name. Used by the demo and by the benchmarks (benchmarks/) for their headers.
"""

from __future__ import annotations

import os
import platform

__all__ = ["busy_warning", "cpu_name", "load_average"]


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_warning(start: float | None, end: float | None, torch_version: str) -> str:
    """A warning line when other work shared the CPUs during the run, else ''. Before the run
    only others count; at its end the bench's own work (up to every CPU, PoCL's threads) too, so
    more than the CPUs then means others ran beside it."""
    cpus = os.cpu_count() or 1
    if start is None or end is None or (start < 0.5 * cpus and end <= cpus + 0.5):
        return ""
    threads = f"; torch ran with {torch_version.split('(')[1].split(')')[0]}" \
        if torch_version else ""
    return (f"WARNING: the machine was busy (load average {start:.1f} before the run, {end:.1f} "
            f"after, on {cpus} CPUs): other work shared the CPUs, the times are noisy{threads}; "
            f"rerun on an idle machine to compare")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
