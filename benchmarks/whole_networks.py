"""Whole networks: torch CPU vs clconv.torch.convert vs clconv.torch.compile vs the network
written with clconv's functional API (benchmarks.functional_networks) for inference, or torch vs
convert on a training step (--train).

    python -m benchmarks.whole_networks [--models resnet18,mobilenet_v2] [--batch 1,8]
        [--size 224] [--blocks 5] [--reps 3] [--pause 0.5] [--threads 2] [--device SPEC]
        [--train]

Each (network, batch, path) runs in its own child process, warmed up first (compile(), kernel
builds, 'auto''s measuring and a few calls happen before any timing). The parent then asks the
children in turn for a block of `--reps` back-to-back calls, `--blocks` times, with a `--pause`
between blocks, so that the three paths are interleaved and a noisy spell on the machine hits all
alike. Printed: the command, the device, torch's thread count, the median ms per call of each path
and the ratio to torch (> 1: faster than torch). Every path takes a CPU tensor and returns one. The networks are clconv.tools.networks' ResNet-18
and MobileNetV2 (the four paths), MobileNetV3-Small, EfficientNet-B0, DenseNet-121 and ConvNeXt-T
(torch, convert, compile) at full width (random weights, randomised BatchNorm statistics), eval
mode.
--train times a training step instead (train mode: BatchNorm on batch statistics; zero_grad,
forward, cross-entropy against random labels, backward, SGD with momentum), torch against
convert (whose convolutions run forward and backward on the device; compile is inference only).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from benchmarks import child_env, write_json
from benchmarks.fair import Worker, alternate, command_line

PATHS = ("torch", "convert", "compile", "functional")
#: the networks benchmarks.functional_networks writes with clconv's functional API (the others
#: run the first three paths)
FUNCTIONAL = ("resnet18", "mobilenet_v2")


def build(name: str):
    from clconv.tools import networks

    makers = {"resnet18": lambda: networks.resnet18(1.0, num_classes=1000),
              "mobilenet_v2": lambda: networks.MobileNetV2(1.0, num_classes=1000),
              "mobilenet_v3_small": lambda: networks.MobileNetV3Small(1.0, num_classes=1000),
              "efficientnet_b0": lambda: networks.EfficientNetB0(1.0, num_classes=1000),
              "densenet121": lambda: networks.DenseNet((6, 12, 24, 16), 32, 64, 4, 1000),
              "convnext_t": lambda: networks.ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), 1000)}
    if name not in makers:
        raise SystemExit(f"--models: unknown network {name!r}; choose from {sorted(makers)}")
    import torch

    torch.manual_seed(0)
    return networks.randomize(makers[name]()).eval()


def child(args: argparse.Namespace) -> None:
    """Builds one path, warms it up, then answers each 'go' line with a block of call times."""
    import torch

    torch.set_num_threads(args.threads)
    import clconv
    import clconv.torch as ct

    dev = clconv.device(args.device) if args.device else clconv.current_device()
    model = build(args.model)
    x = torch.randn(int(args.batch), 3, args.size, args.size)
    with dev, torch.set_grad_enabled(args.train):
        if args.path == "torch":
            fn = model
        elif args.path == "convert":
            fn = ct.convert(model)
        elif args.path == "functional":
            from benchmarks.functional_networks import functional_forward

            fn = functional_forward(args.model, model)
        else:
            fn = ct.compile(model, x)
        if args.train:
            fn = training_step(fn.train(), x.shape[0])
        for _ in range(2):
            fn(x)
        print(json.dumps({"ready": True, "device": dev.name,
                          "fallbacks": len(getattr(fn, "fallbacks", []))}), flush=True)
        for line in sys.stdin:
            if json.loads(line) != ["go"]:
                break
            times = []
            for _ in range(args.reps):
                t0 = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - t0)
            print(json.dumps({"times": times}), flush=True)


def training_step(model, batch: int):
    """A function of x running one SGD step of `model` (train mode) on x and random labels."""
    import torch
    import torch.nn.functional as F

    labels = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step(x):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels).backward()
        opt.step()
    return step


def parent(args: argparse.Namespace) -> None:
    print(command_line(relative=True))
    env = child_env()
    results = []
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            workers: dict[str, Worker] = {}
            paths = PATHS[:2] if args.train else PATHS if name in FUNCTIONAL else PATHS[:3]
            for path in paths:
                cmd = [sys.executable, "-m", "benchmarks.whole_networks", "--child", "--model",
                       name, "--path", path,
                       "--batch", str(batch), "--size", str(args.size), "--reps", str(args.reps),
                       "--threads", str(args.threads)]
                if args.device:
                    cmd += ["--device", args.device]
                if args.train:
                    cmd += ["--train"]
                # Warm up one at a time: builds and measuring do not overlap the others' timing.
                try:
                    workers[path] = Worker(cmd, env)
                except RuntimeError:
                    raise SystemExit(f"the {path} child for {name} batch {batch} failed") from None
            info = {p: w.header for p, w in workers.items()}
            per = alternate(args.blocks, args.pause,
                            [lambda w=w: w.ask("go")["times"] for w in workers.values()])
            times = {p: [t for block in blocks for t in block] for p, blocks in zip(paths, per)}
            for w in workers.values():
                w.close()
            med = {p: statistics.median(t) * 1e3 for p, t in times.items()}
            if args.train:
                row = {"model": name, "batch": batch, "size": args.size, "training_step": True,
                       **{f"{p}_ms": med[p] for p in paths},
                       "convert_speedup": med["torch"] / med["convert"]}
                results.append(row)
                print(f"device: {info['convert']['device']}; torch threads: {args.threads}")
                print(f"{name:>13} batch {batch:>2} {args.size}x{args.size} training step: torch "
                      f"{med['torch']:8.1f} ms | convert {med['convert']:8.1f} ms "
                      f"({row['convert_speedup']:.2f}x) [{args.blocks} blocks x {args.reps} "
                      f"calls, medians]", flush=True)
                continue
            row = {"model": name, "batch": batch, "size": args.size,
                   **{f"{p}_ms": med[p] for p in paths},
                   **{f"{p}_speedup": med["torch"] / med[p] for p in paths[1:]},
                   "compile_fallbacks": info["compile"]["fallbacks"]}
            results.append(row)
            print(f"device: {info['compile']['device']}; torch threads: {args.threads}")
            figures = " | ".join(f"{p} {med[p]:8.1f} ms ({row[p + '_speedup']:.2f}x)"
                                 for p in paths[1:])
            print(f"{name:>18} batch {batch:>2} {args.size}x{args.size}: torch {med['torch']:8.1f} "
                  f"ms | {figures} [{args.blocks} blocks x {args.reps} calls, medians; "
                  f"fallbacks {row['compile_fallbacks']}]", flush=True)
    write_json(args.json, results)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.whole_networks",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3, help="back-to-back calls per block")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between blocks")
    ap.add_argument("--threads", type=int, default=2, help="torch's intra-op threads")
    ap.add_argument("--device", help="clconv device spec")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--train", action="store_true",
                    help="time a training step (torch vs convert) instead of inference")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        ap.error(f"--json: the folder of {args.json!r} does not exist")
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
