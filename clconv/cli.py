"""Command line: `python -m clconv info | demo` (and the commands registered below)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import gemm
from .device import default_device_reason, devices
from .errors import DeviceNotFoundError

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="OpenCL platforms and devices, CLBlast, the default device")
    demo = sub.add_parser("demo", help="im2col + GEMM against direct loops on a ResNet-50 layer")
    demo.add_argument("--device", default=None, help="device spec (default: CLCONV_DEVICE, GPU, CPU)")
    demo.add_argument("--repeat", type=int, default=5, help="timed runs per algorithm (median)")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            return info()
        if args.command == "demo":
            from .demo import run_demo
            return run_demo(args.device, args.repeat)
    except DeviceNotFoundError as err:
        print(f"clconv: {err}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2
