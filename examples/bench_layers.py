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
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fairbench import Layer, Worker, alternate, command_line, print_geometric_means, select_layers

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
    print(json.dumps({}), flush=True)
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

    named: list[Layer] = select_layers(args.net, args.only)
    layers = [(args.batch, *d) for _, d in named]
    algorithms = args.algorithms.split(",")
    print(command_line())
    torch_w = Worker.script(_WORKER, "torch", args.torch_threads, json.dumps(layers))
    fresh = None if args.keep_choices else tempfile.mkdtemp(prefix="clconv-bench-")
    clconv_w = Worker.script(_WORKER, "clconv", args.torch_threads, json.dumps(layers),
                             cache_dir=fresh)
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
            torch_w.ask(i, "", 1)
            blocks = [lambda i=i: torch_w.ask(i, "", args.block)]
            blocks += [lambda i=i, a=a: clconv_w.ask(i, a, args.block) for a in algorithms]
            per = alternate(args.rounds, args.pause, blocks)
            times: dict[str, list[float]] = {"torch": per[0]}
            for a, ts in zip(algorithms, per[1:]):
                times[a] = [t for t in ts if t is not None]  # None: not for this layer
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
    print_geometric_means(ratios)


if __name__ == "__main__":
    main()
