"""BatchNorm's kernels at the shapes ResNet-18 and MobileNetV2 train them (batch 1, 224x224):
the batch statistics, the normalisation and the gradient (per-channel sums, then the input
gradient, the ReLU's gradient taken inside), clconv alone (no torch in the process).

    python -m benchmarks.batch_norm [--batch 1] [--calls 30]

Per shape (N, C, H, W): each op's median time per call over --calls calls, the queue finished
after each call (so a figure includes one launch and wait: the floor of a small layer), on device
arrays (clconv.ops.channels' enqueue functions and BatchNormPlan, as clconv.torch's training
chains call them). Printed: the command, the device, the per-channel work-group size the device
gets, and the times in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.fair import command_line

SHAPES = ((64, 112), (64, 56), (128, 28), (256, 14), (512, 7), (32, 112), (96, 112), (144, 56),
          (192, 28), (384, 14), (960, 7))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    import pyopencl.array as cla

    import clconv
    from clconv.ops.activation import normalize_activation
    from clconv.ops.channels import (BatchNormPlan, enqueue_batch_norm_backward,
                                     enqueue_channel_stats, reduction_group)

    relu = normalize_activation("relu")

    dev = clconv.current_device()
    q = dev.queue
    print(command_line())
    print(f"device: {dev.name}; float32; calls finished one by one, medians in ms")

    def timed(f) -> float:
        f()
        q.finish()
        times = []
        for _ in range(args.calls):
            t = time.perf_counter()
            f()
            q.finish()
            times.append(time.perf_counter() - t)
        return 1e3 * statistics.median(times)

    rng = np.random.default_rng(0)
    for c, h in SHAPES:
        shape, inner = (args.batch, c, h, h), h * h
        x, g, y = (cla.to_device(q, rng.standard_normal(shape).astype(np.float32))
                   for _ in range(3))
        w = cla.to_device(q, rng.random(c).astype(np.float32) + 0.5)
        stats = enqueue_channel_stats(dev, x, c, inner, None, None, 0.0)
        norm = BatchNormPlan(dev, shape, True, True, 1e-5, np.float32, "relu")
        out = cla.empty_like(x)
        t_stats = timed(lambda: enqueue_channel_stats(dev, x, c, inner, None, None, 0.0))
        t_norm = timed(lambda: norm.enqueue({"input": x, "running_mean": stats[0],
                                              "running_var": stats[1], "weight": w, "bias": w},
                                             out))
        t_grad = timed(lambda: enqueue_batch_norm_backward(
            dev, g, x, stats[0], stats[1], w, 1e-5, True, c, inner, activation=relu, output=y))
        print(f"{args.batch}x{c}x{h}x{h} (work-group {reduction_group(dev, inner)}): statistics "
              f"{t_stats:.3f}  normalise+relu {t_norm:.3f}  gradient {t_grad:.3f}")


if __name__ == "__main__":
    main()
