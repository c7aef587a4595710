"""`python -m clconv bench`: clconv's algorithms against their peers on real network layers.

For each layer (the table `LAYERS`, or the user's own `--layer`, 1-d to 3-d: see LAYER_HELP) every
algorithm ('direct', 'im2col', ..., 'auto') and every importable peer (benchmarks.peers: numpy,
torch, torch-cuda, CLBlast's convgemm) runs on the same data (float32, or `--dtype`).

Each is timed alone as the median of a few calls after one warm-up (slow peers get fewer calls),
split over two rounds; clconv's with the operands already on the device and the queue finished
after every call, numpy and torch in a fresh interpreter per round. Reported: median ms, GFLOP/s
(2 x multiply-adds), the largest |error| against the float64 reference (`reference_conv`), the
speed-up over the direct loop kernel and the ratio of 'auto' to each peer; the im2col path's memory
redundancy (column buffer / input); and the first call's latency in a fresh process with cold and
with warm kernel caches. Writes <out>.txt (what was printed), <out>.csv, <out>.json and, with
matplotlib, <out>.png; `--json -` prints the JSON on stdout (and the report on stderr).
`--layers resnet18,mobilenet_v2` runs benchmarks.network_layers instead (torch and clconv each in a
warm process, alternating blocks: the fair method).
"""

from __future__ import annotations

import csv
import datetime as _dt
import functools
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

from clconv.tools.layer_spec import Layer
from clconv.tools.machine import busy_warning, cpu_name, load_average

from . import child_env
from .first_call import measure_latency
from .gemm_tuning import gemm_shapes, measure_gemm_tuning
from .host_peer import time_isolated
from .peers import Isolated, default_peers, numpy_conv, peer_runners, to_host
from .report import Result, render
from .report import plot as plot_chart
from .timing import run_count, runs

__all__ = ["LAYERS", "bench_layer", "main", "reference_conv", "reference_name", "run_bench"]

LAYERS: tuple[Layer, ...] = (
    Layer("AlexNet conv2", 1, 96, 27, 27, 256, 5, 1, 2),
    Layer("VGG16 conv3_2", 1, 256, 56, 56, 256, 3, 1, 1),
    Layer("ResNet-50 3x3", 1, 64, 56, 56, 64, 3, 1, 1),
    Layer("ResNet-50 1x1", 1, 256, 56, 56, 64, 1, 1, 0),
    Layer("ResNet-50 res4 b8", 8, 256, 14, 14, 256, 3, 1, 1),
    Layer("MobileNet depthwise", 1, 32, 112, 112, 32, 3, 1, 1, 32),
)


#: The project's float64 oracle (written for clarity, importing nothing of clconv): in a checkout,
#: beside this package; an installed wheel has no tests/.
_ORACLE = Path(__file__).resolve().parents[1] / "tests" / "reference.py"


@functools.cache
def _oracle() -> Any:
    """tests/reference.py as a module (loaded from its file: tests/ is no package), or None."""
    if not _ORACLE.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_clconv_tests_reference", _ORACLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_name() -> str:
    """Which float64 reference `reference_conv` uses, for the report's header."""
    return ("tests/reference.py (the tests' float64 oracle)" if _oracle() is not None else
            "the numpy peer in float64 (no tests/reference.py beside benchmarks/)")


def reference_conv(x: np.ndarray, w: np.ndarray, layer: Layer) -> np.ndarray:
    """The float64 output (N, K, *out_size) that errors are measured against: the tests' oracle
    (tests/reference.py's conv_nd) in a checkout; where it is missing (an installed wheel), the
    numpy peer computed in float64."""
    oracle = _oracle()
    if oracle is None:
        return numpy_conv(x.astype(np.float64), w.astype(np.float64), layer)
    return oracle.conv_nd(x, w, None, layer.strides, layer.pads, layer.dilations, layer.groups)


def _auto_choice(dev: Any, layer: Layer, dtype: Any = np.float32) -> str:
    """'chose im2col': what algorithm='auto' settled on for the layer ('' if it cannot be told)."""
    try:
        from clconv.ops.conv_select import choose_algorithm
        from clconv.ops.geometry import conv_geometry

        geo = conv_geometry(layer.nd, layer.input_shape, layer.weight_shape, layer.strides,
                            layer.pads, layer.dilations, layer.groups)
        return f"chose {choose_algorithm(dev, geo, 'auto', dtype)}"
    except Exception:  # noqa: BLE001 - the conv module's internals are no part of the contract
        return ""


def bench_layer(dev: Any, layer: Layer, peers: Sequence[str], repeat: int, budget_s: float,
                on_peer: Callable[[str], None] = lambda peer: None, rounds: int = 2,
                isolate: bool = True, dtype: Any = np.float32) -> list[Result]:
    """Times every peer on `layer` with operands of `dtype`. clconv's own peers run in this process
    in `rounds` rounds
    (each peer warmed up once, then its runs split over the rounds, so that a burst of load on a
    shared machine lands on several peers rather than on one); numpy and torch run in a fresh
    interpreter per round (see `Isolated`). The median of all of a peer's runs is reported."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(layer.input_shape).astype(dtype)
    w = (rng.standard_normal(layer.weight_shape)
         / math.sqrt(layer.c // layer.groups * math.prod(layer.kernel))).astype(dtype)
    ref = reference_conv(x, w, layer)
    scale = float(np.abs(ref).max()) or 1.0
    outcome: dict[str, Any] = {}  # peer -> note (str) or [run, out, first, planned runs, times]
    runners = peer_runners(dev, layer, x, w, peers, isolate)

    def failed(err: Exception) -> str:
        first_line = (str(err).splitlines() or [""])[0][:120]
        return f"{type(err).__name__}: {first_line}"

    for peer, run in runners.items():
        on_peer(peer)
        # The direct kernel takes seconds on big layers: it gets half the time and 2-3 runs.
        budget = budget_s / (2 if peer == "direct" else 1)
        try:
            if isinstance(run, str):
                outcome[peer] = run
            elif isinstance(run, Isolated):  # a fresh interpreter per round
                out, first, times = time_isolated(peer, layer, x, w, -(-repeat // rounds),
                                                   budget / rounds)
                outcome[peer] = [run, out, first, len(times) * rounds, times]
            else:
                t0 = time.perf_counter()
                out = run()
                first = time.perf_counter() - t0
                times = runs(run, 1)
                planned = run_count(times[0], repeat, budget)
                times += runs(run, -(-planned // rounds) - 1)
                outcome[peer] = [run, out, first, planned, times]
        except Exception as err:  # noqa: BLE001 - an algorithm that does not apply, a driver
            outcome[peer] = failed(err)
    for _ in range(rounds - 1):
        for peer, state in outcome.items():
            if isinstance(state, list) and state[0] is not None:
                run, _, _, planned, times = state
                todo = min(-(-planned // rounds), planned - len(times))
                try:
                    if isinstance(run, Isolated):
                        times.extend(time_isolated(peer, layer, x, w, max(todo, 2),
                                                    budget_s / rounds)[2])
                    else:
                        times.extend(runs(run, max(todo, 0)))
                except Exception as err:  # noqa: BLE001 - as in the first round
                    outcome[peer] = failed(err)
    results = []
    for peer, state in outcome.items():
        if isinstance(state, str):
            results.append(Result(layer.name, layer.spec, peer, None, None, None, None, 0, None,
                                  state))
            continue
        _, out, first, _, times = state
        err = float(np.abs(to_host(out).astype(np.float64) - ref).max())
        med = statistics.median(times)
        note = _auto_choice(dev, layer, dtype) if peer == "auto" else ""
        results.append(Result(layer.name, layer.spec, peer, med * 1e3, layer.flops / med / 1e9,
                              err, err / scale, len(times), first * 1e3, note))
    return results



def run_bench(spec: str | None = None, layers: Sequence[Layer] = LAYERS,
              peers: Sequence[str] | None = None, repeat: int = 5, budget_s: float = 3.0,
              out: str | None = "bench-out/bench", latency: bool = True, plot: bool = True,
              progress: bool = True, command: str | None = None,
              stream: TextIO | None = None, gemm_tuning: bool = False,
              dtype: Any = np.float32, json_out: str | None = None,
              prog: str = "python -m clconv", first_use: bool = False) -> int:
    """Runs the benchmark and writes <out>.txt/.csv/.json/.png; returns an exit code.

    dtype: the operands' dtype (float16/float64 where the device has them; ValueError otherwise).
    json_out: also write the JSON there; '-' writes it to stdout, and the report to stderr.
    first_use: also time whole networks' first forward, cold and warm (benchmarks.first_use).
    """
    from clconv.blas import clblast as gemm
    from clconv.blas import tuning
    from clconv.runtime.cache import cache_dir
    from clconv.runtime.device import device
    from clconv.runtime.progress import Progress

    stream = stream or (sys.stderr if json_out == "-" else sys.stdout)
    dtype = np.dtype(dtype)
    peers = list(peers) if peers is not None else list(default_peers())
    known = default_peers()
    unknown = [p for p in peers if p not in known]
    if unknown:
        raise ValueError(f"unknown peers {unknown}; known: {known}")
    dev = device(spec)
    if dtype not in (np.float32, np.float64, np.float16):
        raise ValueError(f"dtype must be float32, float64 or float16, got {dtype}")
    if (dtype == np.float64 and not dev.fp64) or (dtype == np.float16 and not dev.fp16):
        raise ValueError(f"device {dev.name!r} has no {dtype.name} (cl_khr_fp"
                         f"{dtype.itemsize * 8}); use --dtype float32")
    if command is None:  # the environment variables that change what runs come first, as typed
        settings = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
                    if k.startswith(("CLCONV_", "POCL_", "CLBLAST_"))]
        command = " ".join([*settings, prog, *map(shlex.quote, sys.argv[1:])])
    load_start = load_average()
    bar = Progress(len(layers) * len(peers) + (2 if latency else 0) + (1 if gemm_tuning else 0)
                   + (4 if first_use else 0),
                   "bench", enabled=progress)
    results: list[Result] = []
    done = 0
    for layer in layers:
        def on_peer(peer: str, layer: Layer = layer) -> None:
            nonlocal done
            bar.update(done, f"{layer.name}: {peer}")
            done += 1
        results.extend(bench_layer(dev, layer, peers, repeat, budget_s, on_peer, dtype=dtype))
    lat = None
    if latency:
        lat_layer = next((lay for lay in layers if lay.name == "ResNet-50 3x3"), layers[0])
        lat = {"layer": f"{lat_layer.name} ({lat_layer.spec})"}
        for kind in ("cold", "warm"):
            bar.update(done, f"first-call latency, {kind} caches")
            lat[kind] = measure_latency(str(dev.index), lat_layer, kind == "cold")
            done += 1
    if first_use:
        from . import first_use as fu

        lat = lat or {}
        lat["networks"] = []
        env = child_env()
        env["CLCONV_DEVICE"] = str(dev.index)
        for net in fu.NETWORKS:
            folder = None
            for kind in fu.MODES:  # cold first: warm reuses the caches it filled
                bar.update(done, f"first forward of {net}, {kind} caches")
                try:
                    r = fu.measure(net, kind, folder, env=env)
                    folder = r["folder"]
                except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                    r = {"net": net, "mode": kind, "error": str(err).strip().splitlines()[-1]}
                lat["networks"].append(r)
                done += 1
    gemm_result = None
    if gemm_tuning:
        bar.update(done, "CLBlast GEMM, tuned vs untuned")
        shapes = gemm_shapes(layers)
        gemm_result = measure_gemm_tuning(str(dev.index), [sh for _, sh in shapes])
        gemm_result["shapes"] = shapes
        done += 1
    bar.close()
    state = tuning.tuning_state(dev)
    torch_version = ""
    try:
        import torch
        torch_version = f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
    except ImportError:
        pass
    busy = busy_warning(load_start, load_average(), torch_version)  # a header line
    import pyopencl as cl

    header = [
        f"$ {command}",
        f"date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"device: {dev.name} [{dev.platform_name}, {dev.opencl_version}, driver {dev.driver_version}]",
        (f"host: {platform.machine()} {cpu_name()}, {os.cpu_count()} CPUs, Python "
         f"{platform.python_version()}, numpy {np.__version__}, {torch_version}pyopencl "
         f"{cl.VERSION_TEXT}, CLBlast {tuning.clblast_version()}"),
        (f"CLBlast tuning: {state.source.split(' (')[0] if state else 'not loaded (no GEMM ran)'}"
         + (f", {len(state.applied)} kernel settings applied" if state and state.applied else "")
         + (f", {len(state.errors)} rejected (see `{prog} tune --show`)"
            if state and state.errors else "")),
        f"CLBlast available: {'yes' if gemm.available() else 'no: ' + str(gemm.missing_reason())}",
        f"clconv cache (tuning file, 'auto' choices): {cache_dir()}",
        ("method: each algorithm and peer timed alone (not --layers' fair method): one warm-up "
         f"call, then up to {repeat} calls within {budget_s:g} s split over 2 rounds, median; "
         "clconv's algorithms in this process on device arrays, the queue finished after each "
         "call; numpy and torch in a fresh interpreter per round on host arrays"),
        f"reference (errors): {reference_name()}",
        *([busy] if busy else []),
    ]
    text = render(results, layers, peers, header, lat, gemm_result, dtype)
    stream.write(text)
    layers_json = [dict(asdict(lay), spec=lay.spec, nd=lay.nd, input_shape=lay.input_shape,
                        weight_shape=lay.weight_shape, out_size=lay.out_size, flops=lay.flops,
                        input_bytes=lay.input_bytes, column_bytes=lay.column_bytes)
                   for lay in layers]
    data = {"command": command, "header": header, "dtype": dtype.name, "layers": layers_json,
            "results": [asdict(r) for r in results], "latency": lat, "gemm_tuning": gemm_result}
    if json_out == "-":
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
    elif json_out:
        Path(json_out).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    if out:
        prefix = Path(out)
        prefix.parent.mkdir(exist_ok=True)  # its last folder only (cli.output_prefix checks)
        Path(f"{prefix}.txt").write_text(text, encoding="utf-8")
        with open(f"{prefix}.csv", "w", newline="", encoding="utf-8") as f:
            fields = list(asdict(results[0]).keys()) if results else []
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for r in results:
                writer.writerow(asdict(r))
        Path(f"{prefix}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        written = [f"{prefix}.txt", f"{prefix}.csv", f"{prefix}.json"]
        if plot:
            why = plot_chart(results, layers, peers, Path(f"{prefix}.png"),
                        f"clconv bench on {dev.name} ({header[1]})")
            if why:
                stream.write(f"no plot: {why}\n")
            else:
                written.append(f"{prefix}.png")
        if json_out and json_out != "-":
            written.append(json_out)
        stream.write("wrote " + ", ".join(written) + "\n")
    elif json_out and json_out != "-":
        stream.write(f"wrote {json_out}\n")
    return 0


def main(args: Any) -> int:
    """Entry point for the CLI (the argparse namespace of cli.py: --layer already parsed into
    Layers, --peers into a list)."""
    layers = list(args.layer) if args.layer else list(LAYERS)
    peers = list(args.peers) if args.peers else list(default_peers())
    return run_bench(args.device, layers, peers, args.repeat, args.time_per_peer,
                     None if args.out == "-" else args.out, not args.no_latency, not args.no_plot,
                     not args.no_progress, gemm_tuning=not args.no_gemm, dtype=args.dtype,
                     json_out=args.json, prog=getattr(args, "prog", "python -m clconv"),
                     first_use=getattr(args, "first_use", False))
