"""`clconv demo`: why im2col + GEMM instead of loops, answered in numbers on the user's own device.

Runs one layer (default: ResNet-50's 3x3 convolution, 64 -> 64 channels at 56x56) with every
convolution path clconv has, checks that they agree, and times on the device:

- the direct loops (`conv2d(..., algorithm='direct')`), one kernel;
- the im2col + CLBlast GEMM path stage by stage, each stage run alone: im2col (`clconv.im2col`,
  the column matrix), GEMM (CLBlast, the filters times the columns, one call per image batched
  over the groups) and the epilogue (a bias add over the output); then the same three stages
  enqueued back to back, timed as one;
- `conv2d(..., algorithm='im2col')` as one call, which runs those stages (its own kernels);
- clconv's own GEMM engine: `algorithm='im2col_packed'` (im2col into packed panels + the packed
  GEMM) and `algorithm='implicit'` (the column gather fused into the GEMM: no column matrix).

Times are OpenCL profiling events: the work is enqueued on a profiling-enabled queue of the
device's context (`clconv.device(queue)`), with a marker before and after each measured call, and
the time between the markers' ends is the device time of the call (median of --repeat runs). Where
the driver has no profiling, host time around `queue.finish()` is used instead, and said so.
It prints times, speed-ups over the loops, FLOP rates and the memory each path holds on the
device (im2col's column buffer against the input: its redundancy), and draws both into a PNG
(the text and the chart: demo_report.py).
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

from .demo_report import LABELS, plot, report
from .layer_spec import CONV_NAMES, Layer

__all__ = ["LAYER", "StageTimes", "measure", "run_demo"]

LAYER = Layer("ResNet-50 conv2_x 3x3", 1, 64, 56, 56, 64, 3, 1, 1)
_IM2COL_NAMES = {1: "im2col1d", 2: "im2col", 3: "im2col3d"}

@dataclass
class StageTimes:
    """Median device milliseconds per path and stage, and what each algorithm holds on the
    device."""

    layer: Layer
    device: str
    clock: str  # 'OpenCL profiling events' or 'host clock around queue.finish()'
    direct_ms: float
    stages_ms: dict[str, float] = field(default_factory=dict)  # im2col, GEMM, epilogue, each alone
    chained_ms: float | None = None  # the same three stages enqueued back to back, timed as one
    im2col_call_ms: float | None = None  # conv2d(algorithm='im2col') as one call
    # clconv's own GEMM engine: im2col into packed panels + the packed GEMM, and the implicit GEMM
    packed_ms: dict[str, float] = field(default_factory=dict)
    memory: dict[str, dict[str, int]] = field(default_factory=dict)  # algorithm -> part -> bytes
    max_error: float = 0.0  # max |each path - direct|
    scale: float = 1.0  # max |direct output|
    note: str = ""

    def paths(self) -> dict[str, float]:
        """Every whole convolution measured: algorithm -> ms (direct first)."""
        found = {"direct": self.direct_ms}
        if self.im2col_call_ms is not None:
            found["im2col"] = self.im2col_call_ms
        found.update(self.packed_ms)
        return found

    def speedup(self, algorithm: str) -> float:
        """How many times faster than the direct loops (> 1: faster)."""
        return self.direct_ms / self.paths()[algorithm]


class _Clock:
    """Device time of enqueued work: profiling markers on `queue`, else host time + finish()."""

    def __init__(self, queue: cl.CommandQueue) -> None:
        self.queue = queue
        self.profiling = bool(queue.properties & cl.command_queue_properties.PROFILING_ENABLE)
        self.host_fallbacks = 0  # calls whose markers measured nothing (timed on the host)

    def ms(self, fn: Callable[[], Any], repeat: int) -> float:
        fn()  # warm-up: kernel builds, CLBlast's first call, workspace allocation
        self.queue.finish()
        found = self._times(fn, repeat, self.profiling)
        if self.profiling and found <= 0:
            # Some drivers (rusticl) complete markers without timing the work between them.
            self.host_fallbacks += 1
            found = self._times(fn, repeat, False)
        return found

    def _times(self, fn: Callable[[], Any], repeat: int, profiling: bool) -> float:
        times = []
        for _ in range(repeat):
            if profiling:
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


def _plan_memory(plan: Any, layer: Layer, itemsize: int) -> dict[str, int]:
    """The workspace parts a conv plan holds beside its operands, by name."""
    impl = getattr(plan, "impl", None)
    split = getattr(impl, "plan", None)  # the im2col path's ColumnPlan
    if plan.algorithm == "im2col" and split is not None:
        rows = layer.c // layer.groups * math.prod(layer.kernel) * layer.groups
        columns = 0 if layer.pointwise else split.batch_chunk * rows * split.col_chunk * itemsize
        return {"columns": columns, "staged GEMM result": plan.workspace_bytes - columns}
    if plan.algorithm == "im2col_packed":
        return {"packed columns": plan.workspace_bytes}
    return {"workspace": plan.workspace_bytes} if plan.workspace_bytes else {}


def measure(spec: Any = None, layer: Layer = LAYER, repeat: int = 5,
            progress: bool = False) -> StageTimes:
    """Times every path and the im2col stages on `layer` (float32); `progress` draws a progress
    line on stderr while it measures."""
    import clconv

    from ..blas import clblast as gemm
    from ..runtime.progress import Progress

    base = clconv.device(spec)
    dev, clock_name = _profiling_device(base)
    clock = _Clock(dev.queue)
    rng = np.random.default_rng(0)
    fan_in = layer.c // layer.groups * math.prod(layer.kernel)
    x_host = rng.standard_normal(layer.input_shape).astype(np.float32)
    w_host = (rng.standard_normal(layer.weight_shape) / math.sqrt(fan_in)).astype(np.float32)
    b_host = rng.standard_normal(layer.k_out).astype(np.float32)
    conv = getattr(clconv, CONV_NAMES[layer.nd])
    plan_of = getattr(clconv, f"plan_{CONV_NAMES[layer.nd]}")
    args = layer.conv_args()
    k, g, n = layer.k_out, layer.groups, layer.n
    spatial = math.prod(layer.out_size)
    rows = layer.c // g * math.prod(layer.kernel)  # of one group's column matrix
    operands = {"input": x_host.nbytes, "weight": w_host.nbytes, "output": 4 * n * k * spatial}
    memory: dict[str, dict[str, int]] = {"direct": dict(operands)}
    with_gemm = gemm.available()
    bar = Progress(8 if with_gemm else 3, "demo", enabled=progress)
    step = 0

    def timed(what: str, fn: Callable[[], Any]) -> float:
        nonlocal step
        bar.update(step, what)
        step += 1
        return clock.ms(fn, repeat)

    with dev:
        q = dev.queue
        x = cla.to_device(q, x_host)
        w = cla.to_device(q, w_host)
        b = cla.to_device(q, b_host)
        direct = conv(x, w, b, **args, algorithm="direct")
        result = StageTimes(layer, f"{base.name} [{base.platform_name}]", clock_name,
                            timed(LABELS["direct"],
                                  lambda: conv(x, w, b, **args, algorithm="direct")),
                            memory=memory)
        ref = direct.get()
        result.scale = float(np.abs(ref).max()) or 1.0
        for name in ("im2col_packed", "implicit"):
            result.packed_ms[name] = timed(LABELS[name], lambda a=name: conv(x, w, b, **args,
                                                                           algorithm=a))
            got = conv(x, w, b, **args, algorithm=name).get()
            result.max_error = max(result.max_error, float(np.abs(got - ref).max()))
            plan = plan_of(layer.input_shape, layer.weight_shape, **args, algorithm=name)
            memory[name] = dict(operands, **_plan_memory(plan, layer, 4))
            try:  # the filters packed into the micro-kernel's layout, on every run
                from ..ops.geometry import conv_geometry
                from ..ops.packed_conv import pack_conv_weights

                geo = conv_geometry(layer.nd, layer.input_shape, layer.weight_shape,
                                    layer.strides, layer.pads, layer.dilations, layer.groups)
                memory[name]["packed filters"] = pack_conv_weights(dev, geo, w).nbytes
            except Exception:  # noqa: BLE001 - an internal that moved: the chart shows the rest
                pass
        if not with_gemm:
            bar.close()
            result.note = f"no im2col + CLBlast GEMM here: {gemm.missing_reason()}"
            return _finished(result, memory, clock)
        plan = plan_of(layer.input_shape, layer.weight_shape, **args, algorithm="im2col")
        memory["im2col"] = dict(operands, **_plan_memory(plan, layer, 4))
        if not memory["im2col"].get("staged GEMM result"):
            memory["im2col"].pop("staged GEMM result", None)
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

        def run_chained() -> None:
            im2col(x, **unfold, out=cols)
            run_gemm()
            run_epilogue()

        result.stages_ms["im2col"] = timed("im2col stage", lambda: im2col(x, **unfold, out=cols))
        result.stages_ms["GEMM"] = timed("GEMM stage", run_gemm)
        run_gemm()
        run_epilogue()  # y = the stages' output, bias once
        staged = y.get()
        result.stages_ms["epilogue"] = timed("epilogue stage", run_epilogue)
        result.chained_ms = timed("the stages back to back", run_chained)
        result.im2col_call_ms = timed(LABELS["im2col"],
                                      lambda: conv(x, w, b, **args, algorithm="im2col"))
        called = conv(x, w, b, **args, algorithm="im2col").get()
        result.max_error = float(max(result.max_error, np.abs(staged - ref).max(),
                                     np.abs(called - ref).max()))
    bar.close()
    return _finished(result, memory, clock)


def _finished(result: StageTimes, memory: dict[str, dict[str, int]], clock: _Clock) -> StageTimes:
    if clock.host_fallbacks:
        result.clock += (f" (host clock around queue.finish() for {clock.host_fallbacks} "
                         f"measurement(s) whose markers timed nothing)")
    result.memory = {a: memory[a] for a in LABELS if a in memory}  # the report's order
    return result


def _bias_kernel(context: cl.Context) -> Any:
    from pyopencl.elementwise import ElementwiseKernel

    return ElementwiseKernel(context, "float *y, const float *b, long spatial, long channels",
                             "y[i] += b[(i / spatial) % channels]", "clconv_demo_bias")


# --------------------------------------------------------------------------------------------------
# Words and numbers

def run_demo(spec: str | None = None, repeat: int = 5, layer: Layer | None = None,
             out: str | os.PathLike[str] | None = "clconv-demo.png",
             progress: bool = True) -> int:
    """Prints the demo's report and writes its PNG to `out` (None: no PNG; its folder must
    exist); 0 when every algorithm agrees with the loops."""
    from .machine import busy_warning, load_average

    load_start = load_average()
    r = measure(spec, layer or LAYER, repeat, progress=progress)
    print(report(r, repeat))
    busy = busy_warning(load_start, load_average(), "")
    if busy:
        print(busy)
    if out is not None:
        path = Path(out).resolve()
        why = plot(r, path)
        print(f"\nno chart: {why}" if why else f"\nwrote the chart to {path}")
    ok = r.max_error <= 1e-3 * max(r.scale, 1.0)
    if not ok:
        print("ERROR: the algorithms disagree")
    return 0 if ok else 1
