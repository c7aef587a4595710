"""Command line: `python -m clconv info | demo | tune | bench`."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..blas import clblast as gemm
from ..runtime.device import default_device_reason, devices
from ..runtime.errors import DeviceNotFoundError

__all__ = ["main", "info"]


def info() -> int:
    """Prints platforms, devices, capabilities, CLBlast's presence and the default device."""
    import pyopencl as cl

    try:
        platforms = cl.get_platforms()
    except cl.Error:
        platforms = []
    print(f"pyopencl {cl.VERSION_TEXT}")
    if not platforms:
        print("no OpenCL platform found")
    devs = devices()
    for p_index, platform in enumerate(platforms):
        print(f"platform {p_index}: {platform.name.strip()} ({platform.version.strip()}), "
              f"vendor {platform.vendor.strip()}")
        for d in (d for d in devs if d.platform_index == p_index):
            state = "usable" if d.usable else f"UNUSABLE: {d.unusable_reason}"
            print(f"  device {d.index} ({d.platform_index}:{d.device_index}) {d.kind}: {d.name}")
            print(f"    {d.opencl_version}, driver {d.driver_version}")
            print(f"    fp64 {'yes' if d.fp64 else 'no'}, fp16 {'yes' if d.fp16 else 'no'}, "
                  f"global memory {d.global_mem_bytes / 2**30:.2f} GiB, "
                  f"max allocation {d.max_alloc_bytes / 2**30:.2f} GiB")
            print(f"    {state}")
    reason = gemm.missing_reason()
    print("CLBlast (pyclblast): " + ("found" if reason is None else f"NOT FOUND: {reason}"))
    try:
        dev, why = default_device_reason()
        print(f"default device: {dev.index} {dev.name} [{dev.platform_name}], because: {why}")
    except DeviceNotFoundError as err:
        print(f"default device: none: {err}")
        return 1
    return 0


def _tune(args: argparse.Namespace) -> int:
    from ..blas import tuning
    from ..runtime.device import device

    dev = device(args.device)
    if args.show:
        entry, source = tuning.find_entry(dev)
        print(f"device: {dev.name} [{dev.platform_name}], driver {dev.driver_version}, CLBlast "
              f"{tuning.clblast_version()}")
        print(f"tuning: {source}" + ("" if tuning.enabled() else
                                     f" (but {tuning.ENV_VAR}=off disables loading)"))
        for precision, kernels in (entry or {}).get("parameters", {}).items():
            for kernel, params in kernels.items():
                values = " ".join(f"{k}={v}" for k, v in sorted(params.items()))
                print(f"  {kernel}/{precision}: {values}")
        return 0
    if not gemm.available():
        print(f"clconv: {gemm.missing_reason()}", file=sys.stderr)
        return 2
    precisions = ([int(p) for p in args.precision.split(",")] if args.precision else None)
    kernels = [k.strip() for k in args.kernels.split(",")] if args.kernels else None
    command = "python -m clconv " + " ".join(sys.argv[1:]) if sys.argv[1:] else None
    try:
        entry = tuning.tune(dev, args.budget, precisions, kernels, progress=not args.no_progress,
                            command=command)
    except (FileNotFoundError, ValueError) as err:
        print(f"clconv: {err}", file=sys.stderr)
        return 2
    return 0 if entry["parameters"] or entry["measured"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="OpenCL platforms and devices, CLBlast, the default device")
    demo = sub.add_parser("demo", help="im2col + GEMM against direct loops on a ResNet-50 layer")
    demo.add_argument("--device", default=None, help="device spec (default: CLCONV_DEVICE, GPU, CPU)")
    demo.add_argument("--repeat", type=int, default=5, help="timed runs per algorithm (median)")
    tune = sub.add_parser("tune", help="search CLBlast's GEMM kernel parameters for a device and "
                                       "save them (loaded on the device's first GEMM)")
    tune.add_argument("--device", default=None, help="device spec (default: CLCONV_DEVICE, GPU, CPU)")
    tune.add_argument("--budget", type=float, default=600.0,
                      help="seconds to spend in CLBlast's tuners, all kernels and precisions "
                           "together (default 600)")
    tune.add_argument("--precision", default=None,
                      help="comma-separated CLBlast precisions: 32 (float32), 64, 16 (default: 32 "
                           "and whichever of 64/16 the device has)")
    tune.add_argument("--kernels", default=None,
                      help="comma-separated subset of Xgemm,XgemmDirect,Copy,Pad,Transpose,"
                           "Padtranspose,GemmRoutine (default: all of these; GemmRoutine, the "
                           "direct/tiled GEMM threshold, is timed in-process after the tuners, "
                           "outside the budget); Xconvgemm (CLBlast's convolution, a bench peer) "
                           "only when named")
    tune.add_argument("--show", action="store_true",
                      help="only print which tuning the device would load, and from where")
    tune.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench = sub.add_parser("bench", help="algorithms and peers (numpy, torch, CLBlast convgemm) on "
                                         "network layers: GFLOP/s, error, memory, latency")
    bench.add_argument("--device", default=None, help="device spec (default: CLCONV_DEVICE, GPU, CPU)")
    bench.add_argument("--layer", action="append", default=[], metavar="N,C,H,W,K,k,s,p[,g]",
                       help="benchmark this layer instead of the built-in table (repeatable; "
                            "'name=N,C,...' names it)")
    bench.add_argument("--peers", default=None,
                       help="comma-separated subset of clconv's algorithms (direct, im2col, ..., "
                            "auto) and numpy, torch, convgemm (default: all)")
    bench.add_argument("--repeat", type=int, default=5, help="most timed runs per peer (median)")
    bench.add_argument("--time-per-peer", type=float, default=3.0,
                       help="seconds of timed runs per peer and layer before the run count is cut "
                            "(at least 2 runs)")
    bench.add_argument("--out", default="bench-out/bench",
                       help="output prefix for .txt/.csv/.json/.png ('-': print only)")
    bench.add_argument("--no-latency", action="store_true",
                       help="skip the first-call latency runs (fresh processes, cold and warm)")
    bench.add_argument("--no-gemm", action="store_true",
                       help="skip timing CLBlast's GEMM alone, tuned vs untuned (fresh processes)")
    bench.add_argument("--no-plot", action="store_true", help="no PNG chart")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            return info()
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(args.device, args.repeat)
        if args.command == "tune":
            return _tune(args)
        if args.command == "bench":
            from .bench import main as bench_main
            return bench_main(args)
    except DeviceNotFoundError as err:
        print(f"clconv: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2
