"""Gradients and transposed convolutions of every distinct ResNet-18 / MobileNetV2 convolution
(224x224), clconv against torch CPU's autograd backward of the same convolution, fair method.

    python -m benchmarks.gradients [--net resnet18,mobilenet_v2] [--batch 1]
        [--ops input,weight,transpose] [--rounds 5] [--block 3] [--torch-threads 2] [--only dw]

Per layer (a forward conv2d x (N, C_in, H, W), W (C_out, C_in/g, k, k) -> y) and op:
  input     clconv.plan_conv2d_input(...)(W, gy)         vs torch.autograd.grad(y, x, gy) (x alone
            requires grad, so torch's convolution_backward computes only the input gradient)
  weight    clconv.plan_conv2d_weight(...)(x, gy)        vs torch.autograd.grad(y, W, gy) (W alone)
  transpose clconv.plan_conv_transpose2d(gy -> x's shape, the adjoint of the layer) vs
            torch.nn.functional.conv_transpose2d of the same arguments
torch's graph is built once (retain_graph=True): only the backward is timed.
Method (issue 20, as benchmarks.network_layers): torch and clconv each in its own warm worker
process (torch with --torch-threads threads, OMP_NUM_THREADS set), per layer and op --rounds
rounds of alternating blocks of --block back-to-back calls, torch's then clconv's, a pause at each
hand-over; a figure is the median over the rounds of a block's time per call; clconv's calls take
device arrays and finish the queue after the block; ratio = torch / clconv (> 1: clconv faster).
Each op's first call (plans, builds, 'auto''s measurements) is untimed. Families are named in the
layer names (3x3 s1/s2, 1x1 s1/s2 'pw'/'ds', 'dw' depthwise, 'stem').
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

from benchmarks.fair import (Worker, alternate, batched, command_line, print_geometric_means,
                             select_layers, serve)


def _out_pad(h: int, k: int, s: int, p: int, oh: int) -> int:
    """The output_padding that makes the transposed convolution of an oh-sized input h-sized."""
    return h - ((oh - 1) * s - 2 * p + (k - 1) + 1)


def worker(kind: str, threads: int, layers: list[list[int]]) -> None:
    """A warm worker (kind 'torch' or 'clconv') over `layers` ((N, C, H, W, K, k, s, p, g) each):
    prints a JSON header line, then answers each request line [i, op, reps] (op: input, weight,
    transpose) with the seconds per call of a block of `reps` calls, after one untimed call."""
    cache: dict[tuple[int, str], Callable[[], Any]] = {}
    make: Callable[[int, str], Callable[[], Any]]
    if kind == "torch":
        import torch

        torch.set_num_threads(threads)

        def make(i: int, op: str) -> Callable[[], Any]:
            n, c, h, w, co, k, s, p, g = layers[i]
            x = torch.randn(n, c, h, w, requires_grad=(op == "input"))
            wt = torch.randn(co, c // g, k, k, requires_grad=(op == "weight"))
            y = torch.nn.functional.conv2d(x, wt, None, s, p, 1, g)
            gy = torch.randn(y.shape)
            if op == "input":
                return lambda: torch.autograd.grad(y, x, gy, retain_graph=True)
            if op == "weight":
                return lambda: torch.autograd.grad(y, wt, gy, retain_graph=True)
            op_ = _out_pad(h, k, s, p, y.shape[-1])
            wd = wt.detach()
            return lambda: torch.nn.functional.conv_transpose2d(gy, wd, None, s, p, op_, g)

        def finish() -> None:
            pass
        header = {}
    else:
        import numpy as np
        import pyopencl.array as cla

        import clconv

        dev = clconv.current_device()
        q = dev.queue
        rng = np.random.default_rng(0)

        def arr(shape: tuple[int, ...]) -> Any:
            return cla.to_device(q, rng.standard_normal(shape).astype(np.float32))

        def make(i: int, op: str) -> Callable[[], Any]:
            n, c, h, w, co, k, s, p, g = layers[i]
            oh = (h + 2 * p - k) // s + 1
            x, wt, gy = arr((n, c, h, w)), arr((co, c // g, k, k)), arr((n, co, oh, oh))
            if op == "input":
                pl = clconv.plan_conv2d_input((n, c, h, w), (co, c // g, k, k), s, p, 1, g)
                return lambda: pl(wt, gy)
            if op == "weight":
                pl = clconv.plan_conv2d_weight((n, c, h, w), (co, c // g, k, k), s, p, 1, g)
                return lambda: pl(x, gy)
            pl = clconv.plan_conv_transpose2d((n, co, oh, oh), (co, c // g, k, k), False, s, p,
                                              _out_pad(h, k, s, p, oh), g)
            return lambda: pl(gy, wt)
        finish = q.finish  # clconv's blocks count the work, not only the enqueueing
        header = {"device": f"{dev.name} ({dev.platform_name} {dev.driver_version})"}

    def block(i: int, op: str, reps: int) -> float:
        if (i, op) not in cache:
            cache[i, op] = make(i, op)
        f = cache[i, op]
        t = time.perf_counter()
        for _ in range(reps):
            f()
        finish()
        return (time.perf_counter() - t) / reps
    print(json.dumps(header), flush=True)
    for line in sys.stdin:
        i, op, reps = json.loads(line)
        block(i, op, 1)  # the first call (plans, builds, measurements) untimed
        print(json.dumps(block(i, op, reps)), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # Worker.module's command line
        return serve(lambda: worker(argv[1], int(argv[2]), json.loads(argv[3])))
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gradients",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="resnet18,mobilenet_v2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--ops", default="input,weight,transpose")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=3, help="back-to-back calls a block")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds at each hand-over")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--only", default="", help="keep layers whose name contains one of these")
    args = parser.parse_args(argv)

    named = select_layers(args.net, args.only)
    layers = batched(named, args.batch)
    ops = args.ops.split(",")
    print(command_line())
    fresh = tempfile.mkdtemp(prefix="clconv-bench-grad-")
    torch_w = Worker.module("benchmarks.gradients", "torch", args.torch_threads,
                            json.dumps(layers))
    clconv_w = Worker.module("benchmarks.gradients", "clconv", args.torch_threads,
                             json.dumps(layers), cache_dir=fresh)
    print(f"device: {clconv_w.header['device']}; batch {args.batch}; fresh 'auto' choices")
    print(f"method: torch autograd backward ({args.torch_threads} threads) and clconv in separate "
          f"warm processes; per layer and op {args.rounds} rounds of alternating blocks of "
          f"{args.block} back-to-back calls (pause {args.pause}s at each hand-over); median "
          f"per-call time; ratio = torch / clconv")
    ratios: dict[str, list[float]] = {op: [] for op in ops}
    try:
        for i, (name, _) in enumerate(named):
            cells = []
            for op in ops:
                tt, tc = alternate(args.rounds, args.pause,
                                   [lambda i=i, op=op: torch_w.ask(i, op, args.block),
                                    lambda i=i, op=op: clconv_w.ask(i, op, args.block)])
                a, b = statistics.median(tt), statistics.median(tc)
                ratios[op].append(a / b)
                cells.append(f"{op} {a * 1e3:7.2f}/{b * 1e3:7.2f} ms {a / b:4.2f}x")
            print(f"{name:<28} " + " | ".join(cells), flush=True)
    finally:
        torch_w.close()
        clconv_w.close()
        shutil.rmtree(fresh, ignore_errors=True)
    print_geometric_means(ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
