"""Every distinct convolution of ResNet-18 and MobileNetV2 (224x224, batch 1 by default), clconv
against torch CPU by the fair method, with per-layer ratios and their geometric mean.

    PYTHONPATH=. python examples/bench_layers.py [--net resnet18,mobilenet_v2] [--batch 1]
        [--algorithms auto,depthwise] [--rounds 5] [--block 5] [--torch-threads 2] [--only dw]

Method (issue 20): torch and clconv each run in their own warm worker process (torch with
--torch-threads threads; its OpenMP workers spin after each call and would slow a PoCL launch on
the same cores, so the two never share a process); for each layer the parent alternates blocks of
--block back-to-back calls (as a network calls a layer), torch's block then clconv's (one block per
algorithm), with a short pause at each hand-over, --rounds times; a figure is the median over the
rounds of a block's time per call (--stat min: the fastest round, steadier where other work
shares the machine; torch's OpenMP threads suffer most from it). clconv's calls take device
arrays and finish the queue after the block. The ratio is torch's time / clconv's (> 1: clconv
faster). Other work on the machine makes absolute figures noisy; the interleaving keeps the ratios
comparable within one run.
--only keeps the layers whose name contains one of the comma-separated words. clconv runs with a
fresh cache folder (CLCONV_CACHE_DIR) unless --keep-choices, so that 'auto' measures its choices as
on a new machine (kernel binaries come from the driver's own cache either way).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# (name, (N, C_in, H, W, C_out, k, stride, padding, groups)); N is filled in from --batch.
Layer = tuple[str, tuple[int, ...]]


def resnet18() -> list[Layer]:
    """ResNet-18's distinct convolutions at 224x224 (torchvision's layout)."""
    layers = [("r18.conv1 3-64 7x7 s2", (3, 224, 224, 64, 7, 2, 3, 1))]
    size, cin = 56, 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        if stride == 2:
            layers.append((f"r18.{cin}-{cout} 3x3 s2 @{size}", (cin, size, size, cout, 3, 2, 1, 1)))
            layers.append((f"r18.ds {cin}-{cout} 1x1 s2 @{size}",
                           (cin, size, size, cout, 1, 2, 0, 1)))
            size //= 2
        layers.append((f"r18.{cout} 3x3 @{size}", (cout, size, size, cout, 3, 1, 1, 1)))
        cin = cout
    return layers


def mobilenet_v2() -> list[Layer]:
    """MobileNetV2's distinct convolutions at 224x224 (torchvision's inverted residuals)."""
    layers = [("mb2.stem 3-32 3x3 s2", (3, 224, 224, 32, 3, 2, 1, 1))]
    size, cin = 112, 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            if t != 1:
                layers.append((f"mb2.pw {cin}-{hidden} @{size}",
                               (cin, size, size, hidden, 1, 1, 0, 1)))
            layers.append((f"mb2.dw {hidden} s{stride} @{size}",
                           (hidden, size, size, hidden, 3, stride, 1, hidden)))
            size = size // stride
            layers.append((f"mb2.pw {hidden}-{c} @{size}", (hidden, size, size, c, 1, 1, 0, 1)))
            cin = c
    layers.append((f"mb2.pw {cin}-1280 @{size}", (cin, size, size, 1280, 1, 1, 0, 1)))
    return layers


NETS = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}

_WORKER = r"""
import sys, time, json
kind, threads = sys.argv[1], int(sys.argv[2])
layers = json.loads(sys.argv[3])
if kind == "torch":
    import torch
    torch.set_num_threads(threads)
    ops = []
    for n, c, h, w, co, k, s, p, g in layers:
        x = torch.randn(n, c, h, w); wt = torch.randn(co, c // g, k, k); b = torch.randn(co)
        ops.append(lambda x=x, wt=wt, b=b, s=s, p=p, g=g:
                   torch.nn.functional.conv2d(x, wt, b, s, p, 1, g))
    def block(i, algo, reps):
        t = time.perf_counter()
        for _ in range(reps): ops[i]()
        return (time.perf_counter() - t) / reps
else:
    import numpy as np, pyopencl.array as cla, clconv
    dev = clconv.current_device(); q = dev.queue
    rng = np.random.default_rng(0)
    data = []
    for n, c, h, w, co, k, s, p, g in layers:
        shapes = ((n, c, h, w), (co, c // g, k, k), (co,))
        data.append(tuple(cla.to_device(q, rng.standard_normal(sh).astype(np.float32))
                          for sh in shapes))
    plans = {}
    def plan(i, algo):
        key = (i, algo)
        if key not in plans:
            n, c, h, w, co, k, s, p, g = layers[i]
            try:
                plans[key] = clconv.plan_conv2d((n, c, h, w), (co, c // g, k, k), True, s, p, 1, g,
                                                algorithm=algo)
            except ValueError:
                plans[key] = None
        return plans[key]
    def block(i, algo, reps):
        pl = plan(i, algo)
        if pl is None:
            return None
        x, wt, b = data[i]
        t = time.perf_counter()
        for _ in range(reps): pl(x, wt, b)
        q.finish()
        return (time.perf_counter() - t) / reps
    print(json.dumps({"device": f"{dev.name} ({dev.platform_name} {dev.driver_version})"}),
          flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd[0] == "chosen":
        pl = plan(cmd[1], "auto")
        print(json.dumps(pl.algorithm if pl is not None else None), flush=True)
        continue
    i, algo, reps = cmd
    block(i, algo, 1)  # the layer's first call (plans, builds, 'auto''s measurement) untimed
    print(json.dumps(block(i, algo, reps)), flush=True)
"""


class Worker:
    """A warm process running blocks of one layer's calls on request (torch or clconv)."""

    def __init__(self, kind: str, threads: int, layers: list[tuple[int, ...]],
                 cache_dir: str | None = None) -> None:
        env = dict(os.environ)
        if kind == "torch":
            env["OMP_NUM_THREADS"] = str(threads)
        elif cache_dir is not None:
            env["CLCONV_CACHE_DIR"] = cache_dir
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, kind, str(threads),
                                      json.dumps(layers)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        self.header = json.loads(self.proc.stdout.readline()) if kind == "clconv" else {}

    def ask(self, *cmd: object) -> object:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", default="resnet18,mobilenet_v2")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--algorithms", default="auto", help="clconv algorithms, comma-separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=5, help="back-to-back calls a block")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds at each hand-over")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="per-call figure over the rounds: the median (the fair method's) or "
                             "the minimum (steadier on a machine shared with other work)")
    parser.add_argument("--only", default="", help="keep layers whose name contains one of these")
    parser.add_argument("--keep-choices", action="store_true",
                        help="use the clconv cache's remembered 'auto' choices (default: a fresh "
                             "cache folder, so that 'auto' measures as on a new machine)")
    args = parser.parse_args(argv)

    named: list[Layer] = []
    for net in args.net.split(","):
        for name, dims in NETS[net]():
            if all(name != other for other, _ in named):
                named.append((name, dims))
    if args.only:
        words = args.only.split(",")
        named = [(n, d) for n, d in named if any(w in n for w in words)]
    layers = [(args.batch, *d) for _, d in named]
    algorithms = args.algorithms.split(",")
    print("command:", " ".join([os.path.basename(sys.executable)] + sys.argv))
    torch_w = Worker("torch", args.torch_threads, layers)
    fresh = None if args.keep_choices else tempfile.mkdtemp(prefix="clconv-bench-")
    clconv_w = Worker("clconv", args.torch_threads, layers, fresh)
    print(f"device: {clconv_w.header['device']}; CLCONV_AUTO={os.environ.get('CLCONV_AUTO', '')!r}"
          f"; {'remembered' if fresh is None else 'fresh'} 'auto' choices")
    print(f"method: torch ({args.torch_threads} threads) and clconv in separate warm processes; "
          f"per layer {args.rounds} rounds of alternating blocks of {args.block} back-to-back "
          f"calls "
          f"(pause {args.pause}s at each hand-over); {args.stat} per-call time over the rounds; "
          f"ratio = torch / clconv")
    ratios: dict[str, list[float]] = {a: [] for a in algorithms}
    try:
        for i, (name, _) in enumerate(named):
            times: dict[str, list[float]] = {"torch": [], **{a: [] for a in algorithms}}
            torch_w.ask(i, "", 1)
            for _ in range(args.rounds):
                times["torch"].append(torch_w.ask(i, "", args.block))
                time.sleep(args.pause)
                for a in algorithms:
                    t = clconv_w.ask(i, a, args.block)
                    if t is not None:
                        times[a].append(t)
                    time.sleep(args.pause)
            stat = statistics.median if args.stat == "median" else min
            t_torch = stat(times["torch"])
            cells = [f"torch {t_torch * 1e3:7.3f} ms"]
            for a in algorithms:
                if not times[a]:
                    cells.append(f"{a}: n/a")
                    continue
                t = stat(times[a])
                ratios[a].append(t_torch / t)
                label = a
                if a == "auto":
                    label = f"auto[{clconv_w.ask('chosen', i)}]"
                cells.append(f"{label} {t * 1e3:7.3f} ms ({t_torch / t:4.2f}x)")
            print(f"{name:<28} " + " | ".join(cells), flush=True)
    finally:
        torch_w.close()
        clconv_w.close()
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
    for a, r in ratios.items():
        if r:
            geo = math.exp(sum(math.log(v) for v in r) / len(r))
            print(f"geometric mean torch/clconv ({a}): {geo:.2f}x over {len(r)} layers "
                  f"(min {min(r):.2f}x, max {max(r):.2f}x)")


if __name__ == "__main__":
    main()
