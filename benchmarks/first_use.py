"""What a new user waits: the first forward pass of a whole network, in a fresh process, with empty
(cold) or filled (warm) caches.

    python -m benchmarks.first_use                     # ResNet-18 and MobileNetV2, cold and warm
    python -m benchmarks.first_use --nets resnet18 --modes cold --json out.json
    python -m benchmarks.first_use --paths convert compile   # also the compiled path

Each measurement runs in a new Python process whose caches all live in one temporary folder:
clconv's (CLCONV_CACHE_DIR: the algorithm choices), PoCL's (POCL_CACHE_DIR: compiled kernels) and
pyopencl's (XDG_CACHE_HOME; PYOPENCL_NO_CACHE=1 besides). 'cold' starts from an empty folder (a new
machine, CI, a container); 'warm' runs a second process on the folder the cold one filled. The
networks (clconv.tools.networks) are built from their papers' tables in torch (ResNet-18: He et
al. 2015, table 1; MobileNetV2: Sandler et al. 2018, table 2), randomly initialised, in eval mode,
batch 1 at 224x224, converted by `clconv.torch.convert` (--paths convert, the default; needs torch)
or compiled by `clconv.torch.compile` (--paths compile: the first forward's time then includes
compile(), which runs the example once). Reported per run: the first and second forward (s), the first one's CPU time (all the process's threads: a figure that other work on a
shared machine inflates less than the wall time; the helper processes' is not in it), torch's
own forward (s), the programs clconv built and their build time (PoCL also compiles a kernel on
its first launch, in its own threads: that is in the forward's time, not the build time), and
the helper processes a first forward may start (clconv.ops.prebuild; CLCONV_PREBUILD=0 for
none: they build the network's kernels alongside, and only where its caches are cold).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import benchmarks

__all__ = ["NETWORKS", "PATHS", "measure", "mobilenet_v2", "resnet18", "run_child"]

NETWORKS = ("resnet18", "mobilenet_v2")
#: Also offered (--nets): squeeze-excitation networks, DenseNet-121 and ConvNeXt-T
MORE_NETWORKS = ("mobilenet_v3_small", "efficientnet_b0", "densenet121", "convnext_t")
MODES = ("cold", "warm")
PATHS = ("convert", "compile")


def resnet18() -> Any:
    """ResNet-18 (He et al. 2015, table 1): 7x7/2 stem, 3x3/2 max pool, four stages of two basic
    blocks (64, 128, 256, 512 channels; 1x1/2 projections), average pool, 1000-way fc. 20 convs."""
    from clconv.tools.networks import resnet18 as build

    return build(1.0, num_classes=1000)


def mobilenet_v2() -> Any:
    """MobileNetV2 (Sandler et al. 2018, table 2): 3x3/2 stem of 32, inverted residual blocks
    (t, c, n, s) as the table, 1x1 to 1280, average pool, 1000-way fc; ReLU6. 52 convs."""
    from clconv.tools.networks import MobileNetV2

    return MobileNetV2(1.0, num_classes=1000)


def mobilenet_v3_small() -> Any:
    """MobileNetV3-Small (Howard et al. 2019, table 2): hardswish, squeeze-excitation blocks
    with hardsigmoid gates. 52 convs."""
    from clconv.tools.networks import MobileNetV3Small

    return MobileNetV3Small(1.0, num_classes=1000)


def efficientnet_b0() -> Any:
    """EfficientNet-B0 (Tan and Le 2019, table 1): MBConv blocks with SiLU and
    squeeze-excitation (sigmoid gates). 81 convs."""
    from clconv.tools.networks import EfficientNetB0

    return EfficientNetB0(1.0, num_classes=1000)


def densenet121() -> Any:
    """DenseNet-121 (Huang et al. 2017, table 1): dense blocks of 6, 12, 24, 16 layers (growth
    32, pre-activation BatchNorm -> ReLU -> 1x1 -> 3x3), transitions halving the channels. 120
    convs."""
    from clconv.tools.networks import DenseNet

    return DenseNet((6, 12, 24, 16), 32, 64, 4, 1000)


def convnext_t() -> Any:
    """ConvNeXt-T (Liu et al. 2022): stages of 3, 3, 9, 3 blocks (96-768 channels; 7x7
    depthwise, channels-last LayerNorm, 4x Linear MLP with GELU, layer scale)."""
    from clconv.tools.networks import ConvNeXt

    return ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), 1000)


def run_child(net: str, path: str = "convert") -> dict[str, Any]:
    """In this process: build `net`, convert (or compile) it, time torch's forward and clconv's
    first two."""
    import numpy as np
    import torch

    import clconv
    import clconv.torch as ct
    from clconv.runtime.program import programs

    torch.manual_seed(0)
    model = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2,
             "mobilenet_v3_small": mobilenet_v3_small,
             "efficientnet_b0": efficientnet_b0, "densenet121": densenet121,
             "convnext_t": convnext_t}[net]().eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        model(x)  # torch's own warm-up (its first call allocates)
        start = time.perf_counter()
        ref = model(x)
        torch_s = time.perf_counter() - start
        dev = clconv.current_device()
        start, cpu = time.perf_counter(), time.process_time()
        if path == "compile":
            converted = ct.compile(model, x, progress=False)
        else:
            converted = ct.convert(model)
        y = converted(x)
        first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
        cache = programs(dev)
        builds, build_s = cache.builds, cache.build_seconds
        start = time.perf_counter()
        converted(x)
        second = time.perf_counter() - start
    from clconv.ops.prebuild import helper_count

    err = float((y - ref).abs().max() / max(float(ref.abs().max()), 1e-30))
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return {"net": net, "path": path, "convs": convs, "first_s": first, "first_cpu_s": first_cpu,
            "second_s": second, "torch_s": torch_s,
            "programs": builds, "build_s": build_s, "device": dev.name,
            "helpers": helper_count(dev),
            "max_rel_err": err, "finite": bool(np.isfinite(y.numpy()).all())}


def measure(net: str, mode: str = "cold", folder: str | None = None,
            env: dict[str, str] | None = None, timeout: float = 900,
            path: str = "convert") -> dict[str, Any]:
    """One fresh process measuring `net` with its caches in `folder` (a new temporary one for
    'cold'; 'warm' needs the folder a cold run filled). Returns run_child's dict plus the mode and
    the process's wall time."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if folder is None:
        if mode == "warm":
            raise ValueError("mode='warm' needs the folder of a cold run")
        folder = tempfile.mkdtemp(prefix="clconv-first-use-")
    child_env = benchmarks.child_env(env)  # this clconv and these benchmarks importable
    child_env.update(CLCONV_CACHE_DIR=os.path.join(folder, "clconv"),
                     POCL_CACHE_DIR=os.path.join(folder, "pocl"),
                     XDG_CACHE_HOME=os.path.join(folder, "xdg"), PYOPENCL_NO_CACHE="1")
    child_env.pop("CLCONV_AUTO", None)  # what a user gets: 'auto' as shipped
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.first_use", "--child", net,
                           "--path", path],
                          check=False, env=child_env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"first_use child for {net} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(mode=mode, process_s=wall, folder=folder)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.first_use",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", choices=NETWORKS + MORE_NETWORKS,
                        default=list(NETWORKS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["convert"])
    parser.add_argument("--path", choices=PATHS, default="convert", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.path)))
        return 0
    results = []
    for path in args.paths:
        for net in args.nets:
            folder = None
            for mode in ("cold", "warm"):
                if mode not in args.modes and not (mode == "cold" and "warm" in args.modes):
                    continue
                r = measure(net, mode, folder, path=path)
                folder = r["folder"]
                if mode in args.modes:
                    results.append(r)
                    print(f"{net:13s} {path:8s} {mode:5s} first {r['first_s']:7.2f} s (CPU "
                          f"{r['first_cpu_s']:6.2f} s)  second "
                          f"{r['second_s'] * 1e3:7.1f} ms  torch {r['torch_s'] * 1e3:6.1f} ms  "
                          f"programs {r['programs']:3d} built in {r['build_s']:6.2f} s  "
                          f"helpers {r.get('helpers', 0)}  ({r['convs']} convs, max rel err "
                          f"{r['max_rel_err']:.1e})", flush=True)
    benchmarks.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
