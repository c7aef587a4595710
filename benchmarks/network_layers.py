"""Every distinct convolution of ResNet-18, MobileNetV2, ResNet-50 or EfficientNet-B0 (224x224,
batch 1 by default; benchmarks.fair's sets say what they leave out), or the classic bench's six
layers (`classic`, each at its own batch size), clconv against torch CPU by the fair method, with
per-layer ratios and their geometric mean.

    python -m clconv bench --layers resnet18,mobilenet_v2,classic [--batch 1] [--algorithms auto]
        [--rounds 5] [--block 5] [--pause 0.02] [--torch-threads 2] [--only dw]
    python -m benchmarks.network_layers [--net resnet18,mobilenet_v2] [the same options]
        [--stat median|min] [--keep-choices]

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
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, Callable

from .fair import (NETS, Worker, alternate, batched, command_line, print_geometric_means,
                   select_layers, serve)

__all__ = ["main", "run", "run_from_cli", "worker"]


def run(nets: str = "resnet18,mobilenet_v2", batch: int = 1, algorithms: Sequence[str] = ("auto",),
        rounds: int = 5, block: int = 5, pause: float = 0.02, torch_threads: int = 2,
        stat: str = "median", only: str = "", keep_choices: bool = False,
        command: str | None = None, device: str | None = None) -> int:
    """Prints the header (command, device, method), one line per layer (torch's ms, each
    algorithm's ms and torch/clconv ratio) and the geometric means; returns an exit code.

    nets: comma-separated names of benchmarks.fair.NETS; device: a clconv device spec for the
    clconv worker (default: CLCONV_DEVICE's, else clconv's default)."""
    unknown = [n for n in nets.split(",") if n not in NETS]
    if unknown:
        raise ValueError(f"unknown layer set(s) {unknown}; known: {sorted(NETS)}")
    named = select_layers(nets, only)
    if not named:
        raise ValueError(f"no layer of {nets} has a name containing one of {only!r}")
    layers = batched(named, batch)
    print(command or command_line())
    fresh = None if keep_choices else tempfile.mkdtemp(prefix="clconv-bench-")
    ratios: dict[str, list[float]] = {a: [] for a in algorithms}
    pick = statistics.median if stat == "median" else min
    workers: list[Worker] = []  # (closed however the run ends: a Ctrl-C during a start too)
    try:
        torch_w = Worker.module("benchmarks.network_layers", "torch", torch_threads,
                                json.dumps(layers), "")
        workers.append(torch_w)
        clconv_w = Worker.module("benchmarks.network_layers", "clconv", torch_threads,
                                 json.dumps(layers), device or "", cache_dir=fresh)
        workers.append(clconv_w)
        print(f"device: {clconv_w.header['device']}; "
              f"CLCONV_AUTO={os.environ.get('CLCONV_AUTO', '')!r}; "
              f"{'remembered' if fresh is None else 'fresh'} 'auto' choices; torch "
              f"{torch_w.header['torch']}")
        print(f"method: the fair method: torch ({torch_threads} threads) and clconv in separate "
              f"warm processes; per layer {rounds} rounds of alternating blocks of {block} "
              f"back-to-back calls (pause {pause}s at each hand-over); {stat} per-call time over "
              f"the rounds; clconv on device arrays, the queue finished after each block; "
              f"ratio = torch / clconv (> 1: clconv faster)", flush=True)
        for i, (name, _) in enumerate(named):
            torch_w.ask(i, "", 1)
            blocks = [lambda i=i: torch_w.ask(i, "", block)]
            blocks += [lambda i=i, a=a: clconv_w.ask(i, a, block) for a in algorithms]
            per = alternate(rounds, pause, blocks)
            t_torch = pick(per[0])
            cells = [f"torch {t_torch * 1e3:7.3f} ms"]
            for a, ts in zip(algorithms, per[1:]):
                ts = [t for t in ts if t is not None]  # None: the algorithm refuses this layer
                if not ts:
                    cells.append(f"{a}: n/a")
                    continue
                t = pick(ts)
                ratios[a].append(t_torch / t)
                label = f"auto[{clconv_w.ask('chosen', i)}]" if a == "auto" else a
                cells.append(f"{label} {t * 1e3:7.3f} ms ({t_torch / t:4.2f}x)")
            print(f"{name:<28} " + " | ".join(cells), flush=True)
    finally:
        for w in workers:
            w.close()
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
    print_geometric_means(ratios)
    return 0


def run_from_cli(args: argparse.Namespace) -> int:
    """`python -m clconv bench --layers ...` (cli.py's parsed options)."""
    command = "command: " + " ".join([getattr(args, "prog", "python -m clconv"),
                                      *map(shlex.quote, getattr(args, "argv", sys.argv[1:]))])
    return run(args.layers, args.batch, args.algorithms, args.rounds, args.block, args.pause,
               args.torch_threads, only=args.only or "", command=command, device=args.device)


def worker(kind: str, threads: int, layers: list[list[int]], device: str = "") -> None:
    """A warm worker (kind 'torch' or 'clconv') over `layers` ((N, C, H, W, K, k, s, p, g) each):
    prints a JSON header line, then answers each request line [i, algorithm, reps] with the
    seconds per call of a block of `reps` calls of layer i (after one untimed call; null where
    the algorithm refuses the layer), and ['chosen', i] with the algorithm 'auto' runs there."""
    block: Callable[[int, str, int], Any]
    if kind == "torch":
        import torch

        torch.set_num_threads(threads)
        ops = []
        for n, c, h, w, co, k, s, p, g in layers:
            x, wt, b = torch.randn(n, c, h, w), torch.randn(co, c // g, k, k), torch.randn(co)
            ops.append(lambda x=x, wt=wt, b=b, s=s, p=p, g=g:
                       torch.nn.functional.conv2d(x, wt, b, s, p, 1, g))

        def block(i: int, algo: str, reps: int) -> float:
            t = time.perf_counter()
            for _ in range(reps):
                ops[i]()
            return (time.perf_counter() - t) / reps
        print(json.dumps({"torch": f"{torch.__version__} ({threads} threads)"}), flush=True)
    else:
        import numpy as np
        import pyopencl.array as cla

        import clconv

        dev = clconv.device(device) if device else clconv.current_device()
        q = dev.queue
        rng = np.random.default_rng(0)
        data = []
        for n, c, h, w, co, k, s, p, g in layers:
            shapes = ((n, c, h, w), (co, c // g, k, k), (co,))
            data.append(tuple(cla.to_device(q, rng.standard_normal(sh).astype(np.float32))
                              for sh in shapes))
        plans: dict[tuple[int, str], Any] = {}

        def plan(i: int, algo: str) -> Any:
            if (i, algo) not in plans:
                n, c, h, w, co, k, s, p, g = layers[i]
                try:
                    with dev:
                        plans[i, algo] = clconv.plan_conv2d((n, c, h, w), (co, c // g, k, k),
                                                            True, s, p, 1, g, algorithm=algo)
                except ValueError:
                    plans[i, algo] = None
            return plans[i, algo]

        def block(i: int, algo: str, reps: int) -> float | None:
            pl = plan(i, algo)
            if pl is None:
                return None
            x, wt, b = data[i]
            t = time.perf_counter()
            for _ in range(reps):
                pl(x, wt, b)
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # Worker.module's command line
        kind, threads, layers, device = argv[1:5]
        return serve(lambda: worker(kind, int(threads), json.loads(layers), device))
    parser = argparse.ArgumentParser(prog="python -m benchmarks.network_layers",
                                     description=__doc__.splitlines()[0])
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
    parser.add_argument("--device", default=None, help="clconv device spec")
    args = parser.parse_args(argv)
    try:
        return run(args.net, args.batch, args.algorithms.split(","), args.rounds, args.block,
                   args.pause, args.torch_threads, args.stat, args.only, args.keep_choices,
                   device=args.device)
    except ValueError as err:
        parser.error(str(err))
        return 2  # not reached


if __name__ == "__main__":
    sys.exit(main())
