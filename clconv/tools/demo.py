"""The main job: why im2col + GEMM instead of loops, answered in numbers on the user's own device.

Runs one realistic layer (ResNet-50's 3x3 convolution, 64 -> 64 channels at 56x56) with the direct loop
kernel and with im2col + CLBlast GEMM, checks that they agree, and prints times, GFLOP/s, the speed
ratio, and the column buffer's size against the input's (im2col's memory redundancy).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pyopencl.array as cla

from ..ops.conv import conv2d
from ..runtime.device import device
from ..ops.geometry import conv_geometry

LAYER = dict(name="ResNet-50 conv2_x 3x3", n=1, c_in=64, size=56, c_out=64, k=3, stride=1, padding=1)


def _time(fn, queue, repeat: int) -> tuple[float, float]:
    """(first call seconds, median of `repeat` later calls), each call finished on the device."""
    t0 = time.perf_counter()
    fn()
    queue.finish()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        queue.finish()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def run_demo(spec: str | None = None, repeat: int = 5) -> int:
    dev = device(spec)
    L = LAYER
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal((L["n"], L["c_in"], L["size"], L["size"])).astype(np.float32)
    w_host = (rng.standard_normal((L["c_out"], L["c_in"], L["k"], L["k"])) /
              np.sqrt(L["c_in"] * L["k"] ** 2)).astype(np.float32)
    geo = conv_geometry(2, x_host.shape, w_host.shape, L["stride"], L["padding"], 1, 1)
    print(f"clconv demo: {L['name']}: input {x_host.shape}, weight {w_host.shape}, "
          f"stride {L['stride']}, padding {L['padding']}")
    print(f"device: {dev.name} [{dev.platform_name}, {dev.opencl_version}]")
    with dev:
        x = cla.to_device(dev.queue, x_host)
        w = cla.to_device(dev.queue, w_host)
        results, rows = {}, []
        for algorithm in ("direct", "im2col"):
            def run(a: str = algorithm) -> cla.Array:
                return conv2d(x, w, padding=L["padding"], algorithm=a)

            first, median = _time(run, dev.queue, repeat)
            results[algorithm] = run().get()
            rows.append((algorithm, first, median, geo.flops / median / 1e9))
    err = float(np.abs(results["im2col"] - results["direct"]).max())
    scale = float(np.abs(results["direct"]).max())
    print(f"\n{'algorithm':<10} {'first call':>11} {'median':>10} {'GFLOP/s':>9}   "
          f"({geo.flops / 1e9:.3f} GFLOP per call, median of {repeat})")
    for name, first, median, gflops in rows:
        print(f"{name:<10} {first * 1e3:>9.1f}ms {median * 1e3:>8.2f}ms {gflops:>9.1f}")
    speedup = rows[0][2] / rows[1][2]
    print(f"\nim2col + GEMM is {speedup:.1f}x the direct loops "
          f"({'faster' if speedup >= 1 else 'SLOWER'}) on this device.")
    print(f"results agree: max |im2col - direct| = {err:.2e} (output max {scale:.2f})")
    in_bytes, col_bytes = x_host.nbytes, geo.column_rows * geo.out_spatial * 4 * geo.batch
    print(f"memory: the column buffer holds {col_bytes / 2**20:.2f} MiB for a "
          f"{in_bytes / 2**20:.2f} MiB input: {col_bytes / in_bytes:.1f}x redundancy "
          f"(each pixel copied up to {L['k'] ** 2} times).")
    ok = err <= 1e-3 * max(scale, 1.0)
    if not ok:
        print("ERROR: the two algorithms disagree")
    return 0 if ok else 1
