"""Per-call overhead of clconv on small layers, against torch CPU: the targets of plans.

    .venv/bin/python examples/bench_overhead.py [--repeat 200] [--device SPEC]

Measures, in one interleaved run (medians of `--repeat` calls, each clconv call finished with
queue.finish() so that it counts the work and not only the enqueueing):
  1. conv2d (1,16,32,32) x (16,16,3,3) pad 1 on device arrays, and with numpy in/out;
  2. a 4-layer small CNN (conv+relu, conv stride 2, depthwise, 1x1) on device arrays;
  3. a planned layer met at a new batch size: programs built (must be 0) and its first call
     against a warm call;
  4. import + first call of a known layer in a fresh process (warm driver caches).
Prints the command, the device and the figures, and the ratios to torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def median_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def interleaved(fns: dict, repeat: int) -> dict:
    """Median ms of each function, timed in alternation so that a noisy spell hits all alike."""
    for fn in fns.values():
        fn()
    times: dict = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


_FRESH = r"""
import time
t0 = time.perf_counter()
import numpy as np, clconv
x = np.random.default_rng(0).standard_normal((1, 16, 32, 32)).astype(np.float32)
w = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype(np.float32)
clconv.conv2d(x, w, padding=1)
print(time.perf_counter() - t0)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    import pyopencl.array as cla

    import clconv
    from clconv.runtime.program import programs

    dev = clconv.device(args.device)
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    print(f"device: {dev.name} [{dev.platform_name}], {dev.opencl_version}")
    try:
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(os.cpu_count() or 1)
        print(f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads")
    except ImportError:
        torch = None
        print("torch: not importable, ratios skipped")
    rng = np.random.default_rng(0)
    q = dev.queue
    results = {}
    with dev:
        x = rng.standard_normal((1, 16, 32, 32)).astype(np.float32)
        w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
        b = rng.standard_normal(16).astype(np.float32)
        xd, wd, bd = (cla.to_device(q, a) for a in (x, w, b))

        def small_device():
            clconv.conv2d(xd, wd, bd, padding=1)
            q.finish()

        def small_numpy():
            clconv.conv2d(x, w, b, padding=1)

        # the 4-layer CNN: conv3x3+relu 16->32, conv3x3 s2 32->32, depthwise 3x3, 1x1 32->64
        ws = [rng.standard_normal(s).astype(np.float32) for s in
              [(32, 16, 3, 3), (32, 32, 3, 3), (32, 1, 3, 3), (64, 32, 1, 1)]]
        bs = [rng.standard_normal(s[0]).astype(np.float32) for s in
              [(32,), (32,), (32,), (64,)]]
        wds = [cla.to_device(q, a) for a in ws]
        bds = [cla.to_device(q, a) for a in bs]

        def cnn_device():
            h = clconv.conv2d(xd, wds[0], bds[0], padding=1, activation="relu")
            h = clconv.conv2d(h, wds[1], bds[1], stride=2, padding=1)
            h = clconv.conv2d(h, wds[2], bds[2], padding=1, groups=32)
            clconv.conv2d(h, wds[3], bds[3])
            q.finish()

        fns = {"small, device arrays": small_device, "small, numpy in/out": small_numpy,
               "4-layer CNN, device arrays": cnn_device}
        if torch is not None:
            xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
            wts = [torch.from_numpy(a) for a in ws]
            bts = [torch.from_numpy(a) for a in bs]

            def small_torch():
                with torch.no_grad():
                    F.conv2d(xt, wt, bt, padding=1)

            def cnn_torch():
                with torch.no_grad():
                    h = F.relu(F.conv2d(xt, wts[0], bts[0], padding=1))
                    h = F.conv2d(h, wts[1], bts[1], stride=2, padding=1)
                    h = F.conv2d(h, wts[2], bts[2], padding=1, groups=32)
                    F.conv2d(h, wts[3], bts[3])

            fns.update({"small, torch": small_torch, "4-layer CNN, torch": cnn_torch})
        results = interleaved(fns, args.repeat)
        print("\nper-call time (median ms):")
        for k, v in results.items():
            print(f"  {k:32s} {v:8.3f}")
        if torch is not None:
            print("ratios to torch CPU (target <= 2x device, <= 3x numpy, CNN <= 2x):")
            print(f"  small, device arrays  {results['small, device arrays'] / results['small, torch']:.2f}x")
            print(f"  small, numpy in/out   {results['small, numpy in/out'] / results['small, torch']:.2f}x")
            print(f"  4-layer CNN, device   {results['4-layer CNN, device arrays'] / results['4-layer CNN, torch']:.2f}x")

        # a planned layer at a new batch size
        layer_x1 = cla.to_device(q, rng.standard_normal((1, 32, 28, 28)).astype(np.float32))
        layer_x3 = cla.to_device(q, rng.standard_normal((3, 32, 28, 28)).astype(np.float32))
        lw = cla.to_device(q, rng.standard_normal((32, 32, 3, 3)).astype(np.float32))
        for algorithm in ("im2col", "direct", "auto"):
            for _ in range(3):
                clconv.conv2d(layer_x1, lw, padding=1, algorithm=algorithm)
            q.finish()
            builds = programs(dev).builds
            t0 = time.perf_counter()
            clconv.conv2d(layer_x3, lw, padding=1, algorithm=algorithm)
            q.finish()
            first = (time.perf_counter() - t0) * 1e3
            built = programs(dev).builds - builds

            def warm():
                clconv.conv2d(layer_x3, lw, padding=1, algorithm=algorithm)
                q.finish()
            warm_ms = median_ms(warm, 20)
            print(f"new batch size (1 -> 3), (N,32,28,28) x (32,32,3,3), {algorithm}: "
                  f"{built} programs built, first call {first:.2f} ms = {first / warm_ms:.2f}x "
                  f"a warm call ({warm_ms:.2f} ms) (target: 0 builds, <= 3x)")

    fresh = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True,
                             check=True)
        fresh.append(float(out.stdout.strip().splitlines()[-1]))
    print(f"import + first call in a fresh process (warm caches): median "
          f"{statistics.median(fresh) * 1e3:.0f} ms of {['%.0f' % (f * 1e3) for f in fresh]} "
          f"(target < 1000 ms)")


if __name__ == "__main__":
    main()
