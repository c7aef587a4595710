"""`clconv demo`: why im2col + GEMM instead of loops, answered in numbers on the user's own device.

Runs one layer (default: ResNet-50's 3x3 convolution, 64 -> 64 channels at 56x56) with the direct
loop kernel and with im2col + CLBlast GEMM, checks that they agree, and times on the device:

- the direct loops (`conv2d(..., algorithm='direct')`), one kernel;
- the im2col path stage by stage, each stage run alone: im2col (`clconv.im2col`, the column
  matrix), GEMM (CLBlast, the filters times the columns, one call per image batched over the
  groups) and the epilogue (a bias add over the output, one pass as clconv's epilogue kernel does);
- `conv2d(..., algorithm='im2col')` as one call, which runs the same stages (its own kernels).

Times are OpenCL profiling events: the work is enqueued on a profiling-enabled queue of the
device's context (`clconv.device(queue)`), with a marker before and after each measured call, and
the time between the markers' ends is the device time of the call (median of --repeat runs). Where
the driver has no profiling, host time around `queue.finish()` is used instead, and said so.
It prints times, GFLOP/s, the memory each algorithm needs (im2col's column buffer against the
input: its redundancy) and draws both into a PNG.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from .bench import CONV_NAMES, Layer

__all__ = ["LAYER", "StageTimes", "measure", "plot", "run_demo"]

LAYER = Layer("ResNet-50 conv2_x 3x3", 1, 64, 56, 56, 64, 3, 1, 1)
_IM2COL_NAMES = {1: "im2col1d", 2: "im2col", 3: "im2col3d"}


@dataclass
class StageTimes:
    """Median device milliseconds per stage and what each algorithm holds on the device."""

    layer: Layer
    device: str
    clock: str  # 'OpenCL profiling events' or 'host clock around queue.finish()'
    direct_ms: float
    stages_ms: dict[str, float] = field(default_factory=dict)  # im2col, GEMM, epilogue
    im2col_call_ms: float | None = None  # conv2d(algorithm='im2col') as one call
    # clconv's own GEMM engine: im2col into packed panels + the packed GEMM, and the implicit GEMM
    packed_ms: dict[str, float] = field(default_factory=dict)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)  # algorithm -> part -> bytes
    max_error: float = 0.0  # max |stages - direct| and |im2col call - direct|
    scale: float = 1.0  # max |direct output|
    note: str = ""


class _Clock:
    """Device time of enqueued work: profiling markers on `queue`, else host time + finish()."""

    def __init__(self, queue: cl.CommandQueue) -> None:
        self.queue = queue
        self.profiling = bool(queue.properties & cl.command_queue_properties.PROFILING_ENABLE)

    def ms(self, fn: Callable[[], Any], repeat: int) -> float:
        fn()  # warm-up: kernel builds, CLBlast's first call, workspace allocation
        self.queue.finish()
        times = []
        for _ in range(repeat):
            if self.profiling:
                start = cl.enqueue_marker(self.queue)
                fn()
                end = cl.enqueue_marker(self.queue)
                end.wait()
                times.append((end.profile.end - start.profile.end) * 1e-6)
            else:
                t0 = time.perf_counter()
                fn()
                self.queue.finish()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def _profiling_device(dev: Any) -> tuple[Any, str]:
    """A clconv device on a profiling queue of `dev`'s context (and the clock's name), or `dev`
    itself when the driver or this clconv cannot do that."""
    import clconv

    try:
        queue = cl.CommandQueue(dev.context, dev.cl_device,
                                properties=cl.command_queue_properties.PROFILING_ENABLE)
        return clconv.device(queue), "OpenCL profiling events"
    except (cl.Error, TypeError, ValueError):
        return dev, "host clock around queue.finish() (no profiling queue here)"


def measure(spec: Any = None, layer: Layer = LAYER, repeat: int = 5) -> StageTimes:
    """Times the direct loops, the im2col stages and the im2col call on `layer` (float32)."""
    import clconv

    from ..blas import clblast as gemm

    base = clconv.device(spec)
    dev, clock_name = _profiling_device(base)
    clock = _Clock(dev.queue)
    rng = np.random.default_rng(0)
    fan_in = layer.c // layer.groups * math.prod(layer.kernel)
    x_host = rng.standard_normal(layer.input_shape).astype(np.float32)
    w_host = (rng.standard_normal(layer.weight_shape) / math.sqrt(fan_in)).astype(np.float32)
    b_host = rng.standard_normal(layer.k_out).astype(np.float32)
    conv = getattr(clconv, CONV_NAMES[layer.nd])
    args = layer.conv_args()
    k, g, n = layer.k_out, layer.groups, layer.n
    spatial = math.prod(layer.out_size)
    rows = layer.c // g * math.prod(layer.kernel)  # of one group's column matrix
    memory = {
        "direct": {"input": x_host.nbytes, "weight": w_host.nbytes, "output": 4 * n * k * spatial},
    }
    # The column matrix the im2col stage writes (clconv's im2col path skips it for 1x1 stride-1
    # layers, which multiply the input itself).
    memory["im2col"] = dict(memory["direct"], columns=0 if layer.pointwise else layer.column_bytes)
    with dev:
        q = dev.queue
        x = cla.to_device(q, x_host)
        w = cla.to_device(q, w_host)
        b = cla.to_device(q, b_host)
        direct = conv(x, w, b, **args, algorithm="direct")
        result = StageTimes(layer, f"{base.name} [{base.platform_name}]", clock_name,
                            clock.ms(lambda: conv(x, w, b, **args, algorithm="direct"), repeat),
                            memory=memory)
        ref = direct.get()
        result.scale = float(np.abs(ref).max()) or 1.0
        from ..ops.packed_conv import IM2COL_PACKED, IMPLICIT, workspace_bytes
        from ..ops.geometry import conv_geometry

        geo = conv_geometry(layer.nd, layer.input_shape, layer.weight_shape, layer.strides,
                            layer.pads, layer.dilations, layer.groups)
        for name in (IM2COL_PACKED, IMPLICIT):
            result.packed_ms[name] = clock.ms(lambda a=name: conv(x, w, b, **args, algorithm=a),
                                              repeat)
            got = conv(x, w, b, **args, algorithm=name).get()
            result.max_error = max(result.max_error, float(np.abs(got - ref).max()))
            memory[name] = dict(memory["direct"], **(
                {"packed columns": workspace_bytes(geo, np.float32, name, dev)}
                if name == IM2COL_PACKED else {}))
        if not gemm.available():
            result.note = f"no im2col + GEMM here: {gemm.missing_reason()}"
            return result
        im2col = getattr(clconv, _IM2COL_NAMES[layer.nd])
        unfold = dict(kernel_size=layer.kernel, dilation=layer.dilations, padding=layer.pads,
                      stride=layer.strides)
        cols = im2col(x, **unfold)  # (N, C * prod(kernel), spatial)
        y = cla.empty(q, (n, k, *layer.out_size), np.float32)
        kg = k // g

        def run_gemm() -> None:
            with dev.lock:
                for i in range(n):  # per image: groups batched, each group's filters x columns
                    gemm.gemm(dev, kg, spatial, rows, w, 0, kg * rows, cols,
                              i * layer.c * math.prod(layer.kernel) * spatial, rows * spatial,
                              y, i * k * spatial, kg * spatial, g)

        bias_add = _bias_kernel(dev.context)

        def run_epilogue() -> None:
            with dev.lock:
                bias_add(y, b, np.int64(spatial), np.int64(k), queue=q)

        result.stages_ms["im2col"] = clock.ms(lambda: im2col(x, **unfold), repeat)
        result.stages_ms["GEMM"] = clock.ms(run_gemm, repeat)
        run_gemm()
        run_epilogue()  # y = the stages' output, bias once
        staged = y.get()
        result.stages_ms["epilogue"] = clock.ms(run_epilogue, repeat)
        result.im2col_call_ms = clock.ms(lambda: conv(x, w, b, **args, algorithm="im2col"),
                                         repeat)
        called = conv(x, w, b, **args, algorithm="im2col").get()
        result.max_error = float(max(result.max_error, np.abs(staged - ref).max(),
                                     np.abs(called - ref).max()))
    return result


def _bias_kernel(context: cl.Context) -> Any:
    from pyopencl.elementwise import ElementwiseKernel

    return ElementwiseKernel(context, "float *y, const float *b, long spatial, long channels",
                             "y[i] += b[(i / spatial) % channels]", "clconv_demo_bias")


def report(r: StageTimes, repeat: int) -> str:
    lay = r.layer
    gflop = lay.flops / 1e9
    lines = [f"clconv demo: {lay.name} ({lay.spec}): input {lay.input_shape}, weight "
             f"{lay.weight_shape}, {gflop:.3f} GFLOP per call",
             f"device: {r.device}; times: {r.clock}, median of {repeat} runs", ""]
    rows = [("direct loops", r.direct_ms)]
    rows += [(f"  im2col stage: {name}", ms) for name, ms in r.stages_ms.items()]
    if r.stages_ms:
        rows.append(("im2col + GEMM, sum of the stages", sum(r.stages_ms.values())))
    if r.im2col_call_ms is not None:
        rows.append(("im2col + GEMM, as one conv call", r.im2col_call_ms))
    names = {"im2col_packed": "im2col + clconv's packed GEMM", "implicit": "implicit GEMM (clconv's)"}
    rows += [(names.get(a, a), ms) for a, ms in r.packed_ms.items()]
    lines.append(f"{'':<36} {'ms':>9} {'GFLOP/s':>9}")
    for name, ms in rows:
        rate = "" if name.startswith("  ") else f"{gflop / ms * 1e3:>9.1f}"
        lines.append(f"{name:<36} {ms:>9.2f} {rate}")
    if r.note:
        lines.append(r.note)
    if r.im2col_call_ms is not None:
        speedup = r.direct_ms / r.im2col_call_ms
        lines.append("")
        lines.append(f"im2col + GEMM is {speedup:.1f}x the direct loops "
                     f"({'faster' if speedup >= 1 else 'slower'}) on this device; the GEMM is "
                     f"{100 * r.stages_ms['GEMM'] / sum(r.stages_ms.values()):.0f}% of its stages.")
        lines.append(f"results agree: max |each algorithm - direct| = {r.max_error:.2e} (output "
                     f"max {r.scale:.2f})")
    if r.packed_ms:
        best = min(r.packed_ms, key=r.packed_ms.__getitem__)
        lines.append(f"on clconv's own GEMM engine ({names[best]}) the same layer is "
                     f"{r.direct_ms / r.packed_ms[best]:.1f}x the direct loops: the GEMM shaped "
                     f"for this device's registers and caches (docs/why-im2col.md)")
    mem_in = r.memory["direct"]["input"]
    cols = r.memory.get("im2col", {}).get("columns", 0)
    lines.append("")
    lines.append("memory on the device (MiB):")
    for algo, parts in r.memory.items():
        listed = ", ".join(f"{p} {v / 2**20:.2f}" for p, v in parts.items())
        lines.append(f"  {algo:<13} {sum(parts.values()) / 2**20:>7.2f}  ({listed})")
    if cols:
        lines.append(f"the column buffer is {cols / mem_in:.1f}x the input: each input value is "
                     f"copied up to {math.prod(lay.kernel)} times (once per kernel tap).")
    else:
        lines.append("this layer needs no column buffer (1x1, stride 1: the input is the matrix).")
    return "\n".join(lines)


def plot(r: StageTimes, path: Path) -> str | None:
    """Stage times next to the loops, and memory per algorithm, as a PNG; None, or why not."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install 'clconv[plot]')"
    colours = {"direct loops": "#999999", "im2col": "#4c72b0", "GEMM": "#dd8452",
               "epilogue": "#55a868", "one call": "#8172b3"}
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.2),
                                     gridspec_kw={"width_ratios": [1.6, 1]})
    labels = ["direct loops"]
    ax_t.barh(0, r.direct_ms, color=colours["direct loops"])
    ax_t.text(r.direct_ms, 0, f" {r.direct_ms:.2f} ms", va="center", fontsize=8)
    if r.stages_ms:
        left = 0.0
        for name, ms in r.stages_ms.items():
            ax_t.barh(1, ms, left=left, color=colours[name], label=name)
            left += ms
        ax_t.text(left, 1, f" {left:.2f} ms", va="center", fontsize=8)
        labels.append("im2col + GEMM\n(stages, each alone)")
    if r.im2col_call_ms is not None:
        ax_t.barh(2, r.im2col_call_ms, color=colours["one call"])
        ax_t.text(r.im2col_call_ms, 2, f" {r.im2col_call_ms:.2f} ms", va="center", fontsize=8)
        labels.append("im2col + GEMM\n(one conv call)")
    ax_t.set_yticks(range(len(labels)))
    ax_t.set_yticklabels(labels, fontsize=8)
    ax_t.invert_yaxis()
    ax_t.set_xlabel(f"device time, ms (lower is better; {r.clock})", fontsize=8)
    ax_t.set_xlim(0, max(r.direct_ms, r.im2col_call_ms or 0,
                         sum(r.stages_ms.values())) * 1.25)
    if r.stages_ms:
        ax_t.legend(fontsize=8, loc="lower right")
    ax_t.set_title("time", fontsize=9)

    parts = ("input", "weight", "output", "columns")
    part_colours = {"input": "#4c72b0", "weight": "#c44e52", "output": "#55a868",
                    "columns": "#dd8452"}
    for i, (algo, sizes) in enumerate(r.memory.items()):
        bottom = 0.0
        for part in parts:
            mib = sizes.get(part, 0) / 2**20
            if mib:
                ax_m.bar(i, mib, bottom=bottom, color=part_colours[part],
                         label=part if i == len(r.memory) - 1 or part != "columns" else None)
                bottom += mib
        ax_m.text(i, bottom, f"{bottom:.2f} MiB", ha="center", va="bottom", fontsize=8)
    ax_m.set_xticks(range(len(r.memory)))
    ax_m.set_xticklabels(["direct loops" if a == "direct" else "im2col + GEMM"
                          for a in r.memory], fontsize=8)
    handles, names = ax_m.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax_m.legend(unique.values(), unique.keys(), fontsize=8)
    ax_m.set_ylabel("MiB on the device", fontsize=8)
    ax_m.set_title("memory", fontsize=9)
    fig.suptitle(f"{r.layer.name} ({r.layer.spec}) on {r.device}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def run_demo(spec: str | None = None, repeat: int = 5, layer: Layer | None = None,
             out: str | os.PathLike[str] | None = "clconv-demo.png") -> int:
    """Prints the demo's report and writes its PNG to `out` (None: no PNG); 0 when the two
    algorithms agree."""
    r = measure(spec, layer or LAYER, repeat)
    print(report(r, repeat))
    if out is not None:
        path = Path(out).resolve()
        why = plot(r, path)
        print(f"\nno chart: {why}" if why else f"\nwrote the chart to {path}")
    ok = r.max_error <= 1e-3 * max(r.scale, 1.0)
    if not ok:
        print("ERROR: the two algorithms disagree")
    return 0 if ok else 1
