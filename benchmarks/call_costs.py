"""Per-call costs of clconv on small layers, against torch CPU, by the fair method (issue 20).

    python -m benchmarks.call_costs [--rounds 15] [--block 20] [--pause 0.02]
        [--torch-threads 2] [--algorithm auto] [--breakdown] [--same-process] [--device SPEC]

Method: torch and clconv each run in their own warm worker process (torch's OpenMP workers spin
for a few ms after each call and slow a PoCL launch on the same cores, so the two never share a
process); the parent alternates blocks of --block back-to-back calls (as a network calls a layer),
torch's block then clconv's, with a pause of --pause s at each hand-over, --rounds times; a figure
is the median over the rounds of a block's time per call. clconv's device-array blocks finish the
queue after the block (the work counts, not only the enqueueing). Cases:
  1. conv2d (1,16,32,32) x (16,16,3,3) pad 1, on device arrays and with numpy in/out;
  2. a 4-layer small CNN (conv+relu 16->32, conv stride 2, depthwise 3x3, 1x1 32->64) on device
     arrays;
  3. a planned layer met at a new batch size: programs built (must be 0) and its first call
     against a warm call;
  4. import + first call of a known layer in a fresh process (warm driver caches).
--breakdown: where a small call's time goes (host stages of one call, timed with perf_counter
and the calling thread's CPU time around each, medians; a trivial kernel's launch + finish on one
and on two work-groups: PoCL's wake-up of its worker threads; then the CNN's layers by each
algorithm). --same-process: item 5's
A/B, a clconv call right after a torch call in one process, against right after another clconv
call, with and without OMP_WAIT_POLICY=PASSIVE. --algorithm: the small layer's (the CNN: 'auto').
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np

from benchmarks import child_env
from benchmarks.fair import Worker, alternate, command_line, serve
from benchmarks.timing import runs

# The 4-layer CNN: (weight shape, conv2d keywords).
CNN = [((32, 16, 3, 3), {"padding": 1, "activation": "relu"}),
       ((32, 32, 3, 3), {"stride": 2, "padding": 1}),
       ((32, 1, 3, 3), {"padding": 1, "groups": 32}),
       ((64, 32, 1, 1), {})]
SMALL_X, SMALL_W = (1, 16, 32, 32), (16, 16, 3, 3)

def worker(kind: str, threads: int, device: str, algorithm: str) -> None:
    """A warm worker (kind 'torch' or 'clconv', on `device` with `algorithm` for clconv) of the
    small layer and the 4-layer CNN: prints a JSON header line, then answers each request line
    [case, reps] with the seconds per call of a block of `reps` calls (the queue finished once)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SMALL_X).astype(np.float32)
    w = rng.standard_normal(SMALL_W).astype(np.float32)
    b = rng.standard_normal(SMALL_W[0]).astype(np.float32)
    ws = [rng.standard_normal(s).astype(np.float32) for s, _ in CNN]
    bs = [rng.standard_normal(s[0]).astype(np.float32) for s, _ in CNN]
    cases: dict[str, Callable[[], Any]]
    if kind == "torch":
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
        wts, bts = [torch.from_numpy(a) for a in ws], [torch.from_numpy(a) for a in bs]

        def small() -> None:
            F.conv2d(xt, wt, bt, padding=1)

        def cnn() -> None:
            h = xt
            for (_, kw), wi, bi in zip(CNN, wts, bts):
                kw = dict(kw)
                act = kw.pop("activation", None)
                h = F.conv2d(h, wi, bi, **kw)
                if act == "relu":
                    h = F.relu(h)
        cases = {"small": small, "cnn": cnn}

        def finish() -> None:
            pass
        header = {"torch": f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads"}
        torch.set_grad_enabled(False)
    else:
        import pyopencl.array as cla

        import clconv
        from clconv.ops.plan import plans

        dev = clconv.device(device or None)
        dev.__enter__()  # this worker's device for the rest of its life
        q = dev.queue
        xd, wd, bd = (cla.to_device(q, a) for a in (x, w, b))
        wds, bds = [cla.to_device(q, a) for a in ws], [cla.to_device(q, a) for a in bs]

        def small_device() -> None:
            clconv.conv2d(xd, wd, bd, padding=1, algorithm=algorithm)

        def small_numpy() -> None:
            clconv.conv2d(x, w, b, padding=1, algorithm=algorithm)

        def cnn_device() -> None:
            h = xd
            for (_, kw), wi, bi in zip(CNN, wds, bds):
                h = clconv.conv2d(h, wi, bi, **kw)
        cases = {"small": small_device, "small_numpy": small_numpy, "cnn": cnn_device}
        finish = q.finish
        for f in (small_device, cnn_device):
            f()
        finish()
        header = {"device": f"{dev.name} [{dev.platform_name}], {dev.opencl_version}",
                  "algorithms": sorted({p.algorithm for p in plans(dev).entries.values()})}
    for f in cases.values():  # warm: plans, builds, 'auto''s measurements, torch's first calls
        for _ in range(3):
            f()
        finish()
    print(json.dumps(header), flush=True)
    for line in sys.stdin:
        case, reps = json.loads(line)
        f = cases[case]
        t = time.perf_counter()
        for _ in range(reps):
            f()
        finish()
        print(json.dumps((time.perf_counter() - t) / reps), flush=True)


def fair(args: argparse.Namespace) -> None:
    torch_w = Worker.module("benchmarks.call_costs", "torch", args.torch_threads, "",
                            args.algorithm)
    clconv_w = Worker.module("benchmarks.call_costs", "clconv", args.torch_threads,
                             args.device or "", args.algorithm)
    print(f"device: {clconv_w.header['device']}; algorithms run: {clconv_w.header['algorithms']} "
          f"(small layer: algorithm={args.algorithm!r})")
    print(f"{torch_w.header['torch']}")
    print(f"method: torch and clconv in separate warm processes; {args.rounds} rounds of "
          f"alternating blocks of {args.block} back-to-back calls (pause {args.pause}s at each "
          f"hand-over); median per-call time")
    pairs = [("small, device arrays", "small", "small"), ("small, numpy in/out", "small_numpy",
                                                         "small"),
             ("4-layer CNN, device arrays", "cnn", "cnn")]
    blocks = []
    for _, mine, theirs in pairs:
        blocks += [lambda theirs=theirs: torch_w.ask(theirs, args.block),
                   lambda mine=mine: clconv_w.ask(mine, args.block)]
    try:
        per = alternate(args.rounds, args.pause, blocks)
    finally:
        torch_w.close()
        clconv_w.close()
    times: dict[str, list[float]] = {}
    for (label, _, theirs), torch_t, clconv_t in zip(pairs, per[0::2], per[1::2]):
        times.setdefault("torch " + theirs, []).extend(torch_t)
        times[label] = clconv_t
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print("\nper-call time (median ms; clconv / torch, target <= 1.5x):")
    for label, _, theirs in pairs:
        print(f"  {label:28s} {med[label]:7.3f}  torch {med['torch ' + theirs]:7.3f}  "
              f"{med[label] / med['torch ' + theirs]:5.2f}x")


def batch_and_fresh(args: argparse.Namespace) -> None:
    import pyopencl.array as cla

    import clconv
    from clconv.runtime.program import programs

    def median_ms(fn, repeat: int) -> float:
        fn()
        return statistics.median(runs(fn, repeat)) * 1e3

    rng = np.random.default_rng(0)
    with clconv.device(args.device) as dev:
        q = dev.queue
        layer_x1 = cla.to_device(q, rng.standard_normal((1, 32, 28, 28)).astype(np.float32))
        layer_x3 = cla.to_device(q, rng.standard_normal((3, 32, 28, 28)).astype(np.float32))
        lw = cla.to_device(q, rng.standard_normal((32, 32, 3, 3)).astype(np.float32))
        for algorithm in ("im2col", "direct", "auto"):
            for _ in range(3):
                clconv.conv2d(layer_x1, lw, padding=1, algorithm=algorithm)
            q.finish()
            builds = programs(dev).builds
            t0 = time.perf_counter()
            clconv.conv2d(layer_x3, lw, padding=1, algorithm=algorithm)
            q.finish()
            first = (time.perf_counter() - t0) * 1e3
            built = programs(dev).builds - builds

            def warm(algorithm: str = algorithm) -> None:
                clconv.conv2d(layer_x3, lw, padding=1, algorithm=algorithm)
                q.finish()
            warm_ms = median_ms(warm, 20)
            print(f"new batch size (1 -> 3), (N,32,28,28) x (32,32,3,3), {algorithm}: "
                  f"{built} programs built, first call {first:.2f} ms = {first / warm_ms:.2f}x "
                  f"a warm call ({warm_ms:.2f} ms) (target: 0 builds, <= 3x)")
    fresh = []
    call = json.dumps([None, SMALL_X, SMALL_W, "conv2d", {"padding": 1}])
    for _ in range(3):  # benchmarks.first_call: import numpy and clconv, call twice
        out = subprocess.run([sys.executable, "-m", "benchmarks.first_call", call],
                             capture_output=True, text=True, check=True, env=child_env())
        times = json.loads(out.stdout.strip().splitlines()[-1])
        fresh.append(times["import_s"] + times["first_s"])
    print(f"import + first call in a fresh process (warm caches): median "
          f"{statistics.median(fresh) * 1e3:.0f} ms of {['%.0f' % (f * 1e3) for f in fresh]} "
          f"(target < 1000 ms)")


def breakdown(args: argparse.Namespace) -> None:
    """Where a small call's time goes: its host stages and the device's part, medians in us."""
    import pyopencl as cl
    import pyopencl.array as cla

    import clconv
    from clconv.ops.plan import plans
    from clconv.runtime.memory import empty

    def med_us(fn, n: int = 400, finish: bool = True) -> tuple[float, float]:
        """Medians (us) of the wall time and of the calling thread's own CPU time (what the
        host's Python takes from the cores PoCL's workers compute on)."""
        for _ in range(20):
            fn()
        q.finish()
        ts, cpu = [], []
        for _ in range(n):
            t0, c0 = time.perf_counter(), time.thread_time()
            fn()
            if finish:
                q.finish()
            ts.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        q.finish()
        return statistics.median(ts) * 1e6, statistics.median(cpu) * 1e6

    rng = np.random.default_rng(0)
    with clconv.device(args.device) as dev:
        q = dev.queue
        x = cla.to_device(q, rng.standard_normal(SMALL_X).astype(np.float32))
        w = cla.to_device(q, rng.standard_normal(SMALL_W).astype(np.float32))
        b = cla.to_device(q, rng.standard_normal(SMALL_W[0]).astype(np.float32))
        prg = cl.Program(dev.context, "__kernel void nop(__global float *a) { }").build()
        nop = prg.nop
        nop.set_arg(0, x.base_data)
        print(f"device: {dev.name} [{dev.platform_name}]")
        print("where a small call's time goes (medians, us: wall | the calling thread's CPU; "
              "'host' stages without a finish):")
        rows = [
            ("trivial kernel, 1 work-group: launch + finish",
             lambda: cl.enqueue_nd_range_kernel(q, nop, (1,), (1,)), True),
            ("trivial kernel, 2 work-groups: launch + finish",
             lambda: cl.enqueue_nd_range_kernel(q, nop, (2,), (1,)), True),
            ("trivial kernel, 16 work-groups: launch + finish",
             lambda: cl.enqueue_nd_range_kernel(q, nop, (16,), (1,)), True),
            ("trivial kernel in a block of 20 back-to-back, per launch",
             lambda: [cl.enqueue_nd_range_kernel(q, nop, (2,), (1,)) for _ in range(20)], 20),
            ("  the same with a marker after each, per launch",
             lambda: [(cl.enqueue_nd_range_kernel(q, nop, (2,), (1,)), cl.enqueue_marker(q))
                      for _ in range(20)], 20),
            ("pyopencl enqueue of a kernel (set args done), host",
             lambda: cl.enqueue_nd_range_kernel(q, nop, (1,), (1,)), False),
            ("enqueue_marker (an event object), host", lambda: cl.enqueue_marker(q), False),
            ("result array from the memory pool, host",
             lambda: empty(dev, (1, 16, 32, 32), np.dtype(np.float32)), False),
        ]
        for algorithm in ("auto", "implicit", "direct"):
            def call(algorithm=algorithm):
                clconv.conv2d(x, w, b, padding=1, algorithm=algorithm)
            call()
            plan = next(reversed(plans(dev).entries.values()))
            out = empty(dev, plan.batch_shape, plan.work)
            values = {"input": x, "weight": w, "bias": b, "residual": None}
            rows += [
                (f"conv2d [{plan.algorithm}]: whole call + finish", call, True),
                (f"conv2d [{plan.algorithm}]: whole call, host", call, False),
                ("  the plan called on the same device arrays, host",
                 lambda plan=plan: plan(x, w, b), False),
                ("  plan.execute (skeleton + enqueue), host",
                 lambda plan=plan, values=values: plan.execute(values, None, check=False), False),
                ("  algorithm's run (kernel enqueues), host",
                 lambda plan=plan, out=out: plan.impl.run(x, w, b, out), False),
                ("  algorithm's run + finish (device time + launch)",
                 lambda plan=plan, out=out: plan.impl.run(x, w, b, out), True),
            ]
        # The one-kernel ops a network calls between its convolutions, on a small device array:
        # in blocks of 10 back-to-back calls, finished, per call.
        a = cla.to_device(q, rng.standard_normal((1, 16, 32, 32)).astype(np.float32))
        a2 = cla.to_device(q, rng.standard_normal((1, 16, 32, 32)).astype(np.float32))
        rows += [
            (f"{label}, block of 10, per call", lambda fn=fn: [fn() for _ in range(10)], 10)
            for label, fn in [("relu(a)", lambda: clconv.relu(a)),
                              ("relu(a, inplace=True)", lambda: clconv.relu(a, inplace=True)),
                              ("add(a, b)", lambda: clconv.add(a, a2)),
                              ("add(a, b, out=a)", lambda: clconv.add(a, a2, out=a)),
                              ("add(a, 1.0)", lambda: clconv.add(a, 1.0)),
                              ("max_pool2d(a, 2)", lambda: clconv.max_pool2d(a, 2))]]
        for label, fn, finish in rows:  # finish: True, False, or a block's launches (finished)
            per = finish if finish is not True and finish else 1
            wall, cpu = med_us(fn, finish=bool(finish))
            print(f"  {label:58s} {wall / per:8.1f} | {cpu / per:6.1f}")
        print("the 4-layer CNN's layers, one call + finish by each algorithm (medians, us):")
        h = x
        for shape, kw in CNN:
            wl = cla.to_device(q, rng.standard_normal(shape).astype(np.float32))
            cells = []
            for algorithm in ("auto", "direct", "implicit", "depthwise", "pointwise", "splitk"):
                try:
                    chosen = clconv.plan_conv2d(h.shape, shape, False, algorithm=algorithm,
                                                **kw).algorithm
                except ValueError:  # not for this shape
                    continue
                t, _ = med_us(lambda a=algorithm, wl=wl, h=h, kw=kw: clconv.conv2d(
                    h, wl, algorithm=a, **kw), n=100)
                cells.append(f"{algorithm if algorithm != 'auto' else 'auto=' + chosen} {t:.0f}")
            print(f"  {tuple(h.shape)!s:17s} x {shape!s:15s} {kw}: " + ", ".join(cells))
            h = clconv.conv2d(h, wl, **kw)


def same_process_child(threads: int, rounds: int) -> None:
    """In this process: torch and clconv calls alternating (see same_process); prints one JSON
    line {layer: [ms right after a torch call, ms right after a clconv call]}."""
    import pyopencl.array as cla
    import torch
    import torch.nn.functional as F

    import clconv

    torch.set_num_threads(threads)
    torch.set_grad_enabled(False)
    rng = np.random.default_rng(0)
    big = torch.randn(1, 64, 56, 56), torch.randn(64, 64, 3, 3)
    dev = clconv.device(None)
    q = dev.queue
    layers = {"small": (SMALL_X, SMALL_W), "64ch 56x56": ((1, 64, 56, 56), (64, 64, 3, 3))}
    out = {}
    for name, (xs, ws) in layers.items():
        xd = cla.to_device(q, rng.standard_normal(xs).astype(np.float32))
        wd = cla.to_device(q, rng.standard_normal(ws).astype(np.float32))

        def clc(xd: Any = xd, wd: Any = wd) -> float:
            t = time.perf_counter()
            clconv.conv2d(xd, wd, padding=1)
            q.finish()
            return time.perf_counter() - t
        for _ in range(10):
            clc()
            F.conv2d(*big, padding=1)
        after, warm = [], []
        for _ in range(rounds):
            F.conv2d(*big, padding=1)
            after.append(clc())  # right after a torch call: its OpenMP workers may still spin
            time.sleep(0.05)
            clc()
            warm.append(clc())  # right after a clconv call: PoCL awake, torch's workers asleep
        out[name] = [statistics.median(after) * 1e3, statistics.median(warm) * 1e3]
    print(json.dumps(out))


def same_process(args: argparse.Namespace) -> None:
    """Item 5: a clconv call right after a torch call in one process, against right after another
    clconv call (torch idle for 50 ms), with and without OMP_WAIT_POLICY=PASSIVE."""
    print("one process: torch conv (1,64,56,56)x(64,64,3,3), then a clconv call + finish, "
          "against the same call right after another clconv call (torch idle 50 ms); "
          f"torch {args.torch_threads} threads, medians:")
    for policy in (None, "PASSIVE"):
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        if policy is not None:
            env["OMP_WAIT_POLICY"] = policy
        out = subprocess.run([sys.executable, "-m", "benchmarks.call_costs",
                              "--same-process-child", str(args.torch_threads),
                              str(args.rounds * 4)],
                             capture_output=True, text=True, check=True, env=child_env(env))
        for name, (after, warm) in json.loads(out.stdout.strip().splitlines()[-1]).items():
            print(f"  OMP_WAIT_POLICY={policy or '(unset)':8s} {name:11s} right after torch "
                  f"{after:7.3f} ms, after clconv {warm:7.3f} ms ({after / warm:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:  # Worker.module's command line
        return serve(lambda: worker(argv[1], int(argv[2]), argv[3], argv[4]))
    if argv[:1] == ["--same-process-child"]:
        same_process_child(int(argv[1]), int(argv[2]))
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.call_costs",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=20, help="back-to-back calls a block")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds at each hand-over")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--algorithm", default="auto", help="the small layer's (the CNN's: 'auto')")
    parser.add_argument("--breakdown", action="store_true",
                        help="only the breakdown of a small call's time")
    parser.add_argument("--same-process", action="store_true",
                        help="only the one-process A/B (OMP_WAIT_POLICY)")
    args = parser.parse_args(argv)
    print(command_line())
    if args.breakdown:
        breakdown(args)
    elif args.same_process:
        same_process(args)
    else:
        fair(args)
        batch_and_fresh(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
