"""The device's measured arithmetic and memory peaks (cl/peak.cl, as clpeak measures them), so that
the bench can say what share of the device a kernel or GEMM reaches.

    python -m clconv.tools.peak [--device SPEC]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import pyopencl as cl

from ..runtime.device import Device, device
from ..runtime.program import kernel, precision_defines

__all__ = ["Peak", "measure_peak"]


@dataclass(frozen=True)
class Peak:
    """GFLOP/s of float32 (and float64, or None) fma chains, and GB/s of a device-to-device copy."""

    gflops32: float
    gflops64: float | None
    gbytes: float


def _best_seconds(run, repeat: int) -> float:
    run()  # build, warm
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return best


def _fma(dev: Device, dtype: np.dtype, repeat: int) -> float:
    vec = max(1, int(dev.cl_device.preferred_vector_width_float if dtype == np.float32 else
                     dev.cl_device.preferred_vector_width_double))
    iters = 4096
    defines = precision_defines(dtype)
    defines.update(VEC=vec, ITERS=iters)
    k = kernel(dev, "peak.cl", "fma_peak", defines)
    items = 256 * max(1, int(dev.cl_device.max_compute_units))
    out = cl.Buffer(dev.context, cl.mem_flags.WRITE_ONLY, items * dtype.itemsize)
    seed = dtype.type(0.999)

    def run() -> None:
        with dev.lock:
            k(dev.queue, (items,), None, out, seed)
        dev.queue.finish()
    seconds = _best_seconds(run, repeat)
    return items * iters * 12 * vec * 2 / seconds / 1e9


def _copy(dev: Device, repeat: int) -> float:
    nbytes = min(256 << 20, dev.max_alloc_bytes // 4)
    vec = 4
    defines = precision_defines(np.dtype(np.float32))
    defines["VEC"] = vec
    k = kernel(dev, "peak.cl", "copy_peak", defines)
    src = cl.Buffer(dev.context, cl.mem_flags.READ_WRITE, nbytes)
    dst = cl.Buffer(dev.context, cl.mem_flags.READ_WRITE, nbytes)
    items = nbytes // (4 * vec)

    def run() -> None:
        with dev.lock:
            k(dev.queue, (items,), None, src, dst)
        dev.queue.finish()
    seconds = _best_seconds(run, repeat)
    return 2 * nbytes / seconds / 1e9


def measure_peak(dev: Device, repeat: int = 10) -> Peak:
    """The peaks of `dev` (best of `repeat` runs each; about a second on a CPU)."""
    f64 = _fma(dev, np.dtype(np.float64), repeat) if dev.fp64 else None
    return Peak(_fma(dev, np.dtype(np.float32), repeat), f64, _copy(dev, repeat))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clconv.tools.peak", description=__doc__)
    parser.add_argument("--device", default=None, help="device spec (default: the default device)")
    args = parser.parse_args(argv)
    dev = device(args.device)
    peak = measure_peak(dev)
    f64 = f"{peak.gflops64:.1f}" if peak.gflops64 is not None else "n/a"
    print(f"{dev.name} [{dev.platform_name}]: float32 fma {peak.gflops32:.1f} GFLOP/s, float64 "
          f"fma {f64} GFLOP/s, copy {peak.gbytes:.1f} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
