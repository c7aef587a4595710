"""The bench's report: one Result per (layer, peer), rendered as text (time, accuracy, memory,
CLBlast tuning, first-call latency) and drawn as a bar chart of GFLOP/s."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clconv.tools.layer_spec import Layer

__all__ = ["Result", "plot", "render"]


@dataclass
class Result:
    """One peer on one layer: median ms and GFLOP/s of its timed runs, its largest absolute and
    relative error against the float64 reference, its first call's ms; None and a note saying
    why when it did not run."""

    layer: str
    spec: str
    peer: str
    ms: float | None
    gflops: float | None
    max_err: float | None
    rel_err: float | None
    runs: int
    first_ms: float | None
    note: str = ""


def _fmt(v: float | None, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def _by(results: list[Result]) -> dict[tuple[str, str], Result]:
    return {(r.layer, r.peer): r for r in results}


def render(results: list[Result], layers: Sequence[Layer], peers: Sequence[str],
           header: list[str], latency: dict[str, Any] | None,
           gemm_tuning: dict[str, Any] | None = None, dtype: Any = np.float32) -> str:
    """The report's text: `header`'s lines, then the tables of results, memory, GEMM tuning and
    first-call latency (the parts that were measured)."""
    out = io.StringIO()
    dtype = np.dtype(dtype)
    scale = dtype.itemsize / 4  # Layer's byte counts are float32's
    for line in header:
        print(line, file=out)
    table = _by(results)
    print(f"\n## Time and accuracy ({dtype.name}; median of the runs shown; error = "
          "max |y - y_ref| "
          "against float64)\n", file=out)
    pw = max([14, *(len(p) for p in peers)])  # the peer column fits the longest name
    print(f"{'layer':<20} {'algorithm/peer':<{pw}} {'median ms':>10} {'GFLOP/s':>8} {'runs':>4} "
          f"{'max err':>9} {'vs direct':>9} {'auto/this':>9}", file=out)
    for layer in layers:
        direct = table.get((layer.name, "direct"))
        auto = table.get((layer.name, "auto"))
        label = layer.name if layer.spec in layer.name else f"{layer.name} ({layer.spec})"
        print(f"{label}: {layer.flops / 1e9:.3g} GFLOP", file=out)
        for peer in peers:
            r = table.get((layer.name, peer))
            if r is None:
                continue
            if r.ms is None:
                print(f"{'':<20} {peer:<{pw}} {'n/a: ' + r.note}", file=out)
                continue
            vs_direct = direct.ms / r.ms if direct and direct.ms else None
            auto_ratio = r.ms / auto.ms if auto and auto.ms and peer != "auto" else None
            print(f"{'':<20} {peer:<{pw}} {r.ms:>10.2f} {r.gflops:>8.1f} {r.runs:>4} "
                  f"{r.max_err:>9.1e} {_fmt(vs_direct, '>8.1f')}x "
                  f"{_fmt(auto_ratio, '>8.2f')}{'x' if auto_ratio else ' '} {r.note}".rstrip(),
                  file=out)
    print("\n'vs direct': how many times faster than the direct loop kernel; 'auto/this': how many "
          "times faster 'auto' is than this row (> 1: clconv wins).", file=out)
    print(f"\n## Memory: im2col's redundancy ({dtype.name} column matrix vs the input)\n",
          file=out)
    print(f"{'layer':<20} {'input MiB':>9} {'columns MiB':>11} {'ratio':>6}   note", file=out)
    for layer in layers:
        note = ""
        auto = table.get((layer.name, "auto"))
        if layer.pointwise:
            note = "1x1, stride 1, no padding: clconv multiplies the input itself, no column buffer"
        elif auto is not None and auto.note.startswith("chose") and "im2col" not in auto.note:
            note = f"'auto' {auto.note} here: no column buffer"
        print(f"{layer.name:<20} {layer.input_bytes * scale / 2**20:>9.2f} "
              f"{layer.column_bytes * scale / 2**20:>11.2f} "
              f"{layer.column_bytes / layer.input_bytes:>5.1f}x"
              f"   {note}", file=out)
    if gemm_tuning:
        print("\n## CLBlast SGEMM alone: untuned (CLCONV_TUNING=off) vs tuned, fresh processes\n",
              file=out)
        if "error" in gemm_tuning:
            print(f"failed: {gemm_tuning['error']}", file=out)
        else:
            print(f"{'GEMM of':<20} {'m x n x k (x batch)':<22} {'untuned':>14} {'tuned':>14} "
                  f"{'speed-up':>8}", file=out)
            for (label, (m, n, k, b)), off, on in zip(gemm_tuning["shapes"], gemm_tuning["off"],
                                                     gemm_tuning["on"]):
                flop = 2 * m * n * k * b / 1e9
                dims = f"{m}x{n}x{k}" + (f" x{b}" if b > 1 else "")
                print(f"{label:<20} {dims:<22} {flop / off * 1e3:>7.1f} GFLOP/s "
                      f"{flop / on * 1e3:>7.1f} GFLOP/s {off / on:>7.2f}x", file=out)
            print(f"tuned = {gemm_tuning['tuning']['on']}", file=out)
    for r in (latency or {}).get("networks", []):
        if r is (latency or {})["networks"][0]:
            print("\n## A network's first forward in a fresh process (batch 1, 224x224, "
                  "clconv.torch.convert, algorithm 'auto')\n", file=out)
        if "error" in r:
            print(f"{r['net']:<13} {r['mode']:<5} failed: {r['error']}", file=out)
            continue
        print(f"{r['net']:<13} {r['mode']:<5} first {r['first_s']:7.2f} s, second "
              f"{r['second_s'] * 1e3:7.1f} ms (torch {r['torch_s'] * 1e3:6.1f} ms), "
              f"{r['programs']} programs built in {r['build_s']:.2f} s", file=out)
        if r is latency["networks"][-1]:
            print("cold: empty clconv, PoCL and pyopencl caches (a new machine, CI, a container); "
                  "warm: a second process on the caches the cold one filled.", file=out)
    if latency and "layer" in latency:
        print("\n## First call in a fresh process (numpy in/out, algorithm 'auto', layer "
              f"{latency['layer']})\n", file=out)
        for kind in ("cold", "warm"):
            v = latency.get(kind, {})
            if "error" in v:
                print(f"{kind:<5} failed: {v['error']}", file=out)
            elif v:
                print(f"{kind:<5} import {v['import_s'] * 1e3:7.0f} ms, first call "
                      f"{v['first_s'] * 1e3:8.0f} ms, second call {v['second_s'] * 1e3:6.1f} ms",
                      file=out)
        print("cold: empty PoCL/pyopencl kernel caches (fresh XDG_CACHE_HOME and POCL_CACHE_DIR); "
              "warm: the caches a previous run left.", file=out)
    return out.getvalue()


def plot(results: list[Result], layers: Sequence[Layer], peers: Sequence[str], path: Path,
          title: str) -> str | None:
    """A grouped bar chart of GFLOP/s per layer and peer; None, or why it was not drawn."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install 'clconv[plot]')"
    table = _by(results)
    shown = [p for p in peers if any(table.get((lay.name, p)) and table[(lay.name, p)].gflops
                                     for lay in layers)]
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(layers) + 2), 5.5))
    width = 0.8 / max(len(shown), 1)
    for i, peer in enumerate(shown):
        values = [(table.get((lay.name, peer)).gflops or 0) if table.get((lay.name, peer)) else 0
                  for lay in layers]
        xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(layers))]
        bars = ax.bar(xs, values, width, label=peer)
        for bar, v in zip(bars, values):
            if v:
                ax.annotate(f"{v:.0f}" if v >= 10 else f"{v:.1f}", (bar.get_x() + width / 2, v),
                            ha="center", va="bottom", fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("GFLOP/s (log scale; higher is better)")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([lay.name.replace(" ", "\n", 1) for lay in layers], fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, ncol=min(len(shown), 8), loc="upper center",
              bbox_to_anchor=(0.5, -0.14), frameon=False)
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
