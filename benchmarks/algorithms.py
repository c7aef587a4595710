"""Every convolution algorithm side by side on a few standard layers, torch's CPU conv as a peer.

    python -m benchmarks.algorithms [--layers res4_b8,dw112] [--repeat 7]
                                    [--algorithms im2col,direct,winograd,auto]

Per layer and algorithm: the median wall time of --repeat calls on device arrays (after one untimed
call that builds the kernels; 'auto' measures on that call if it has no choice yet), GFLOP/s
(2 * multiply-adds / median), and the process CPU time per call (PoCL's worker threads included: a
steadier figure than wall time on a shared machine). torch runs in a subprocess with
torch.set_num_threads(--torch-threads) so that its thread pool and PoCL's do not compete. Prints the
command, the device and what 'auto' chose. Machines shared with other work make every figure noisy:
compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from benchmarks.fair import command_line
from benchmarks.torch_peer import torch_medians

# (N, C_in, H, W, C_out, k, stride, padding, groups)
LAYERS = {
    "res2_b1": (1, 64, 56, 56, 64, 3, 1, 1, 1),        # ResNet-50 res2 3x3
    "res3_b1": (1, 128, 28, 28, 128, 3, 1, 1, 1),      # ResNet-50 res3 3x3
    "res4_b8": (8, 256, 14, 14, 256, 3, 1, 1, 1),      # ResNet-50 res4 3x3, batch 8
    "res5_b8": (8, 512, 7, 7, 512, 3, 1, 1, 1),        # ResNet-50 res5 3x3, batch 8
    "pw_b8": (8, 256, 14, 14, 1024, 1, 1, 0, 1),       # ResNet-50 res4 1x1 expand, batch 8
    "stem": (1, 3, 224, 224, 64, 7, 2, 3, 1),          # ResNet-50 conv1
    "dw112": (1, 32, 112, 112, 32, 3, 1, 1, 32),       # MobileNet depthwise
    "dw112s2": (1, 64, 112, 112, 64, 3, 2, 1, 64),     # MobileNet depthwise, stride 2
    "dw14_b8": (8, 512, 14, 14, 512, 3, 1, 1, 512),    # MobileNet depthwise 14x14, batch 8
}


def _torch(layer: tuple[int, ...], repeat: int, threads: int) -> float | None:
    """Median seconds of torch.nn.functional.conv2d on the CPU, in a fresh process (None: no
    torch or it failed)."""
    medians = torch_medians([layer], repeat, threads)
    return medians[0] if medians else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.algorithms",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=",".join(LAYERS))
    parser.add_argument("--algorithms", default="im2col,direct,winograd,auto")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    import pyopencl.array as cla

    import clconv
    from clconv.ops.geometry import conv_geometry

    dev = clconv.current_device()
    print(command_line())
    print(f"device: {dev.name} ({dev.platform_name} {dev.driver_version}); "
          f"CLCONV_AUTO={os.environ.get('CLCONV_AUTO', '')!r}; median of {args.repeat}")
    rng = np.random.default_rng(0)
    figures: dict[str, dict[str, object]] = {}
    for name in args.layers.split(","):
        n, c, h, w, co, k, s, p, g = layer = LAYERS[name]
        geo = conv_geometry(2, (n, c, h, w), (co, c // g, k, k), s, p, 1, g)
        x, wt, b = (cla.to_device(dev.queue, rng.standard_normal(shape).astype(np.float32))
                    for shape in ((n, c, h, w), (co, c // g, k, k), (co,)))
        row: dict[str, object] = {}
        cells = []
        for algorithm in args.algorithms.split(","):
            def call(x=x, wt=wt, b=b, s=s, p=p, g=g, algorithm=algorithm) -> None:
                clconv.conv2d(x, wt, b, s, p, 1, g, algorithm=algorithm)
                dev.queue.finish()

            try:
                call()
            except ValueError:  # e.g. winograd on a strided layer
                cells.append(f"{algorithm}: n/a")
                continue
            walls, cpus = [], []
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                call()
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            wall, cpu = statistics.median(walls), statistics.median(cpus)
            row[algorithm] = {"s": wall, "cpu_s": cpu, "gflops": geo.flops / wall / 1e9}
            cells.append(f"{algorithm}: {geo.flops / wall / 1e9:6.2f} GF/s ({wall * 1e3:7.2f} ms, "
                         f"cpu {cpu * 1e3:7.2f} ms)")
        if "auto" in args.algorithms.split(","):
            chosen = clconv.ops.conv_select.choose_algorithm(dev, geo, "auto", np.float32)
            row["auto_chose"] = chosen
            cells.append(f"auto chose {chosen}")
        if not args.no_torch:
            t = _torch(layer, args.repeat, args.torch_threads)
            if t is not None:
                row["torch"] = {"s": t, "gflops": geo.flops / t / 1e9}
                cells.append(f"torch: {geo.flops / t / 1e9:6.2f} GF/s ({t * 1e3:7.2f} ms)")
        figures[name] = row
        print(f"{name:<8} {geo.flops / 1e9:6.3f} GFLOP | " + " | ".join(cells), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
