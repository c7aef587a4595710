"""Cost of the fused epilogue: conv + bias + residual + activation in one kernel store, against the
same convolution alone and against doing bias, residual and activation after it.

    python -m benchmarks.epilogue [--input 4,64,28,28] [--cout 64] [--kernel 3]
        [--algorithm auto] [--activation relu] [--dtype float32] [--blocks 5] [--repeat 10]
        [--device SPEC]

Three variants of one layer (a ResNet basic block's 3x3 convolution, padding 1), each a plan made
once, on device arrays, every call finished with queue.finish():
  plain    y = conv(x, w)                                   (no bias, no activation)
  fused    y = act(conv(x, w) + b + r)                      (one plan: bias, residual, act in the store)
  after    y = conv(x, w); y += b; y += r; y = act(y)       (three more passes over y, as without
                                                             fusion: elementwise kernels)
timed in interleaved blocks (each block runs every variant `repeat` times; a noisy spell hits all
alike), reported as the median over all calls, with the ratios to plain. The target of issue 17:
fused <= 1.1 x plain. Prints the command, the device and the figures; checks fused == after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from benchmarks.fair import command_line


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.epilogue",
                                description=__doc__.splitlines()[0])
    p.add_argument("--input", type=_ints, default=(4, 64, 28, 28), help="N,C,H,W")
    p.add_argument("--cout", type=int, default=64)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--algorithm", default="auto")
    p.add_argument("--activation", default="relu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)

    import pyopencl.array as cla
    from pyopencl.elementwise import ElementwiseKernel

    import clconv
    from clconv.ops.activation import normalize_activation

    print(command_line())
    dev = clconv.device(args.device) if args.device else clconv.current_device()
    print(f"device: {dev.name} [{dev.platform_name}], {dev.cl_device.max_compute_units} compute "
          f"units")
    act = normalize_activation(args.activation)
    dtype = np.dtype(args.dtype)
    ctype = "double" if dtype == np.float64 else "float"
    n, c, h, w_ = args.input
    k = args.kernel
    rng = np.random.default_rng(0)
    with dev:
        q = dev.queue
        x = cla.to_device(q, rng.standard_normal((n, c, h, w_)).astype(dtype))
        w = cla.to_device(q, (rng.standard_normal((args.cout, c, k, k)) / (c * k * k) ** 0.5)
                          .astype(dtype))
        b = cla.to_device(q, rng.standard_normal(args.cout).astype(dtype))
        kw = {"padding": k // 2, "algorithm": args.algorithm, "dtype": dtype}
        plain = clconv.plan_conv2d(x.shape, w.shape, False, **kw)
        out_shape = plain.geometry.output_shape
        r = cla.to_device(q, rng.standard_normal(out_shape).astype(dtype))
        fused = clconv.plan_conv2d(x.shape, w.shape, True, activation=args.activation,
                                   residual=True, **kw)
        # The unfused tail: three elementwise passes (bias, residual, activation), as a framework
        # without fusion runs them. The activation is common.cl's formula through the same table.
        spatial = int(np.prod(out_shape[2:]))
        bias_add = ElementwiseKernel(dev.context, f"{ctype} *y, const {ctype} *b, long s, long c",
                                     "y[i] += b[(i / s) % c]", "bench_bias")
        res_add = ElementwiseKernel(dev.context, f"{ctype} *y, const {ctype} *r",
                                    "y[i] += r[i]", "bench_residual")
        relu = ElementwiseKernel(dev.context, f"{ctype} *y", "y[i] = (y[i] < 0) ? 0 : y[i]",
                                 "bench_relu")
        if act is None or act.kind != "relu":
            print("note: the 'after' variant applies relu (its activation pass costs the same "
                  "memory traffic); its result is compared only for relu")

        def run_plain() -> None:
            plain(x, w)
            q.finish()

        def run_fused() -> None:
            fused(x, w, b, residual=r)
            q.finish()

        def run_after() -> cla.Array:
            y = plain(x, w)
            bias_add(y, b, np.int64(spatial), np.int64(args.cout), queue=q)
            res_add(y, r, queue=q)
            relu(y, queue=q)
            q.finish()
            return y

        variants = {"plain": run_plain, "fused": run_fused, "after": run_after}
        for fn in variants.values():  # warm-up: builds, pools
            fn()
        if act is not None and act.kind == "relu":
            diff = float(np.max(np.abs(fused(x, w, b, residual=r).get() - run_after().get())))
            print(f"max |fused - after| = {diff:.3g}")
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.blocks):
            for name, fn in variants.items():
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    flops = 2 * np.prod(out_shape) * c * k * k
    print(f"layer: conv2d {tuple(x.shape)} x {tuple(w.shape)} pad {k // 2} -> {out_shape}, "
          f"{args.dtype}, algorithm {plain.algorithm} (fused plan: {fused.algorithm}), "
          f"activation {act}")
    print(f"{args.blocks} interleaved blocks x {args.repeat} calls each; medians:")
    for name, ms in med.items():
        print(f"  {name:6s} {ms:9.3f} ms  {flops / ms / 1e6:7.1f} GFLOP/s  "
              f"{ms / med['plain']:5.3f} x plain")
    verdict = "meets" if med["fused"] <= 1.1 * med["plain"] else "misses"
    print(f"fused / plain = {med['fused'] / med['plain']:.3f} ({verdict} the <= 1.1 target); "
          f"after / plain = {med['after'] / med['plain']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
