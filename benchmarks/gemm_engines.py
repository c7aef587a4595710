"""The GEMM engines side by side: clconv's packed GEMM vs CLBlast vs numpy (OpenBLAS), in GFLOP/s.

    python -m benchmarks.gemm_engines [--shapes 1024,2048,256x3136x2304] [--repeat 7]
                                      [--dtype float32] [--conv] [--rounds 3]

Per (M, N, K): C = A @ B, row-major, device arrays, the queue finished around each call. Columns:
- packed: clconv.blas.packed.gemm, packing A and B every call (what a generic caller pays);
- packed A: the same with A packed once beforehand (`pack_a`; a convolution packs its filters once,
  and its im2col writes B packed), i.e. the micro-kernel plus packing B;
- clblast: clconv.blas.clblast.gemm (skipped when pyclblast is missing);
- numpy: numpy.matmul in this process, OpenBLAS with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE removed
  from the environment (the script re-executes itself without them, so OpenBLAS picks its kernel
  for the real CPU; the kernel it runs is printed).
--conv adds the two packed convolution paths on the standard layers (algorithm='im2col_packed' and
'implicit', planned) next to
clconv's algorithm='im2col' (when the library imports) and torch (when installed: a subprocess with
--torch-threads threads, alternating with clconv's runs for --rounds rounds).
The variants of one shape run interleaved, --repeat rounds, and the medians are printed: on a
machine shared with other work only ratios within one run mean much.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and any(v in os.environ for v in ("OPENBLAS_CORETYPE",
                                                           "OPENBLAS_L2_SIZE")):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    os.execve(sys.executable, [sys.executable, "-m", "benchmarks.gemm_engines", *sys.argv[1:]],
              env)

import argparse
import ctypes
import glob
import statistics
import time
from typing import Callable

import numpy as np
import pyopencl.array as cla

from benchmarks.fair import command_line
from benchmarks.torch_peer import torch_medians

DEFAULT_SHAPES = "1024,2048,256x3136x2304,64x3136x576,256x729x2400,64x3136x256"
# (N, C_in, H, W, C_out, k, padding): the layers of issue #9's table.
LAYERS = {
    "ResNet-50 3x3 (1,64,56,56)->64 k3 p1": (1, 64, 56, 56, 64, 3, 1),
    "VGG16 conv3_2 (1,256,56,56)->256 k3 p1": (1, 256, 56, 56, 256, 3, 1),
    "AlexNet conv2 (1,96,27,27)->256 k5 p2": (1, 96, 27, 27, 256, 5, 2),
    "ResNet-50 1x1 (1,256,56,56)->64": (1, 256, 56, 56, 64, 1, 0),
    "ResNet-50 res4 b8 (8,256,14,14)->256 k3 p1": (8, 256, 14, 14, 256, 3, 1),
}


def openblas_core() -> str:
    """The OpenBLAS kernel numpy runs (e.g. 'Zen', 'Haswell'), or '?' when it cannot be asked."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                  "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                     "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return "?"


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.split("x")]
    return (parts[0],) * 3 if len(parts) == 1 else tuple(parts)  # type: ignore[return-value]


# OpenBLAS's worker threads spin for ~2**28 cycles (0.1 s) after a call before they sleep: timed
# right after numpy, a PoCL kernel would share the cores with them. Variants named here are followed
# by an untimed pause of that length.
_SPINNING = {"numpy": 0.15}


def medians(variants: dict[str, Callable[[], None]], repeat: int, finish: Callable[[], None]
            ) -> dict[str, float]:
    """Median seconds per variant, the variants interleaved round by round after one warm-up."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()
    finish()
    for _ in range(repeat):
        for name, fn in variants.items():
            finish()
            t0 = time.perf_counter()
            fn()
            finish()
            times[name].append(time.perf_counter() - t0)
            time.sleep(_SPINNING.get(name, 0.0))
    return {name: statistics.median(ts) for name, ts in times.items()}


def gemm_variants(dev, shape: tuple[int, int, int], da: cla.Array, db: cla.Array, dc: cla.Array,
                  pa, clblast, a: np.ndarray, b: np.ndarray) -> dict[str, Callable[[], None]]:
    """The calls of one GEMM shape: packed (packing both), packed A (prepacked), numpy, CLBlast."""
    from clconv.blas import packed

    m, n, k = shape
    variants: dict[str, Callable[[], None]] = {
        "packed": lambda: packed.gemm(dev, m, n, k, da, 0, 0, db, 0, 0, dc, 0, 0),
        "packed A": lambda: packed.gemm(dev, m, n, k, None, 0, 0, db, 0, 0, dc, 0, 0, packed_a=pa),
        "numpy": lambda: np.matmul(a, b),
    }
    if clblast is not None:
        def run_clblast() -> None:
            with dev.lock:
                clblast.gemm(dev, m, n, k, da, 0, 0, db, 0, 0, dc, 0, 0)
        variants["clblast"] = run_clblast
    return variants


def bench_gemm(dev, shapes: list[tuple[int, int, int]], dtype: np.dtype, repeat: int,
               peak: float | None = None) -> None:
    from clconv.blas import packed

    try:
        from clconv.blas import clblast
        has_clblast = clblast.available()
    except ImportError:
        has_clblast = False
    q = dev.queue
    rng = np.random.default_rng(0)
    print(f"{'M x N x K':>20} {'tile':>5} {'packed':>8} {'packed A':>9} {'clblast':>8} {'numpy':>8}"
          f" {'packed A/numpy':>15} {'packed A % peak':>16} {'clblast % peak':>15}   "
          f"(GFLOP/s, medians of {repeat})")
    for m, n, k in shapes:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        da, db = cla.to_device(q, a), cla.to_device(q, b)
        dc = cla.empty(q, (m, n), dtype)
        pa = packed.pack_a(dev, m, k, da, 0, n_hint=n)
        variants = gemm_variants(dev, (m, n, k), da, db, dc, pa,
                                 clblast if has_clblast else None, a, b)
        got = medians(variants, repeat, q.finish)
        flops = 2.0 * m * n * k
        rate = {name: flops / t / 1e9 for name, t in got.items()}
        shape = f"{m} x {n} x {k}"
        print(f"{shape:>20} {pa.tile.mr}x{pa.tile.nr:<3} {rate['packed']:8.1f} "
              f"{rate['packed A']:9.1f} "
              f"{rate.get('clblast', float('nan')):8.1f} {rate['numpy']:8.1f} "
              f"{rate['packed A'] / rate['numpy']:15.2f} "
              f"{100 * rate['packed A'] / peak if peak else float('nan'):15.0f}% "
              f"{100 * rate.get('clblast', float('nan')) / peak if peak else float('nan'):14.0f}%",
              flush=True)


def torch_rates(layers: dict[str, tuple[int, ...]], repeat: int, threads: int) -> dict[str, float]:
    """GFLOP/s of torch.nn.functional.conv2d per layer ((N, C, H, W, K, k, padding); a fresh
    process), {} without torch."""
    shapes = [(n, c, h, w, co, k, 1, p, 1) for n, c, h, w, co, k, p in layers.values()]
    medians = torch_medians(shapes, repeat, threads)
    if medians is None:
        return {}
    return {name: 2 * n * co * (h + 2 * p - k + 1) * (w + 2 * p - k + 1) * c * k * k / t / 1e9
            for (name, (n, c, h, w, co, k, p)), t in zip(layers.items(), medians)}


def conv_variants(x: cla.Array, wt: cla.Array, b: cla.Array, out: cla.Array, padding: int,
                  im2col: Callable | None) -> dict[str, Callable[[], None]]:
    """The calls of one layer, bias + ReLU fused: the two packed paths as plans (built beforehand:
    a call packs the filters and enqueues, as a user's planned call does) and
    clconv.conv2d('im2col')."""
    import clconv

    variants: dict[str, Callable[[], None]] = {}
    for algorithm in ("im2col_packed", "implicit"):
        plan = clconv.plan_conv2d(x.shape, wt.shape, True, padding=padding, algorithm=algorithm,
                                  activation="relu", dtype=x.dtype)
        variants[algorithm] = lambda plan=plan: plan(x, wt, b, out=out)
    if im2col is not None:
        variants["im2col"] = lambda: im2col(x, wt, b, padding=padding, algorithm="im2col",
                                            activation="relu")
    return variants


def bench_conv(dev, dtype: np.dtype, repeat: int, torch_threads: int, rounds: int) -> None:
    """The layers' GFLOP/s: `rounds` rounds of (torch in a subprocess, then clconv's variants
    interleaved), each round's median per variant, and the median over the rounds printed."""
    from clconv.ops.geometry import conv_geometry

    try:
        import clconv
        im2col: Callable | None = clconv.conv2d
    except ImportError:  # the engine's modules import on their own: bench what does
        im2col = None
    q = dev.queue
    rng = np.random.default_rng(0)
    setups = {}
    for name, (n, c, h, w, co, k, p) in LAYERS.items():
        geo = conv_geometry(2, (n, c, h, w), (co, c, k, k), 1, p, 1, 1)
        x = cla.to_device(q, rng.standard_normal(geo.input_shape).astype(dtype))
        wt = cla.to_device(q, rng.standard_normal(geo.weight_shape).astype(dtype))
        b = cla.to_device(q, rng.standard_normal(co).astype(dtype))
        out = cla.empty(q, geo.output_shape, dtype)
        setups[name] = geo, conv_variants(x, wt, b, out, p, im2col)
    rates: dict[str, dict[str, list[float]]] = {name: {} for name in LAYERS}
    for _ in range(rounds):
        for name, rate in torch_rates(LAYERS, repeat, torch_threads).items():
            rates[name].setdefault("torch", []).append(rate)
        for name, (geo, variants) in setups.items():
            for v, t in medians(variants, repeat, q.finish).items():
                rates[name].setdefault(v, []).append(geo.flops / t / 1e9)
    has_torch = any("torch" in r for r in rates.values())
    print(f"\n{'layer':>44} {'im2col_packed':>13} {'implicit':>9} {'im2col':>7} {'torch':>7}"
          f" {'implicit/torch':>14}   (GFLOP/s with bias + ReLU; medians over {rounds} rounds of "
          f"{repeat}; torch conv2d + bias, {torch_threads} threads"
          f"{'' if has_torch else ': not installed'})")
    nan = float("nan")
    for name, r in rates.items():
        med = {v: statistics.median(values) for v, values in r.items()}
        print(f"{name:>44} {med['im2col_packed']:13.1f} {med['implicit']:9.1f} "
              f"{med.get('im2col', nan):7.1f} {med.get('torch', nan):7.1f} "
              f"{med['implicit'] / med.get('torch', nan):14.2f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gemm_engines",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES,
                        help="comma-separated S (S^3) or MxNxK (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--conv", action="store_true", help="also the packed convolution paths")
    parser.add_argument("--no-gemm", action="store_true", help="only the convolution paths")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of torch then clconv for the layers (default: %(default)s)")
    args = parser.parse_args(argv)
    from clconv.runtime.device import current_device

    dev = current_device()
    dtype = np.dtype(args.dtype)
    print(command_line())
    print(f"device: {dev.name} ({dev.platform_name}, {dev.cl_device.platform.version})")
    print(f"numpy {np.__version__}, OpenBLAS core {openblas_core()}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, dtype {dtype}")
    from clconv.tools.peak import measure_peak

    peak = measure_peak(dev)
    peak_flops = peak.gflops32 if dtype == np.float32 else peak.gflops64
    print(f"measured peak (clconv.tools.peak): float32 fma {peak.gflops32:.1f} GFLOP/s, float64 "
          f"{peak.gflops64 or float('nan'):.1f} GFLOP/s, copy {peak.gbytes:.1f} GB/s")
    if not args.no_gemm:
        bench_gemm(dev, [parse_shape(s) for s in args.shapes.split(",")], dtype, args.repeat,
                   peak_flops)
    if args.conv or args.no_gemm:
        bench_conv(dev, dtype, args.repeat, args.torch_threads, args.rounds)


if __name__ == "__main__":
    main()
