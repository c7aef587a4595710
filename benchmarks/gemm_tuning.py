"""CLBlast's SGEMM alone, untuned (CLCONV_TUNING=off) against tuned, in fresh processes.

    python -m benchmarks.gemm_tuning SPEC '[[M, N, K, BATCH], ...]' REPEAT

times each (batched) GEMM on the device SPEC after one warm-up call (the median of REPEAT calls,
the queue finished after each) and prints one JSON line {"ms": [...], "tuning": source}.
`measure_gemm_tuning` runs it with tuning off and on, as `python -m clconv bench` does.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from clconv.tools.layer_spec import Layer

from . import child_env
from .timing import runs

__all__ = ["gemm_shapes", "main", "measure_gemm_tuning"]


def gemm_shapes(layers: Sequence[Layer]) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(label, (m, n, k, batch)) of the GEMMs the im2col path runs on `layers`, after 1024^3."""
    shapes = [("square 1024", (1024, 1024, 1024, 1))]
    for lay in layers:
        m, k = lay.k_out // lay.groups, lay.c // lay.groups * math.prod(lay.kernel)
        batch = lay.n if lay.groups <= lay.n else lay.groups * lay.n
        shapes.append((lay.name, (m, math.prod(lay.out_size), k, batch)))
    return shapes


def measure_gemm_tuning(spec: str, shapes: Sequence[tuple[int, int, int, int]], repeat: int = 3,
                        rounds: int = 2) -> dict[str, Any]:
    """Median ms per shape with CLCONV_TUNING=off and on, each in fresh processes, alternating
    `rounds` times (so that a load change on a shared machine hits both); medians over rounds."""
    env = child_env()
    runs: dict[str, list[list[float]]] = {"off": [], "on": []}
    sources: dict[str, str] = {}
    for _ in range(rounds):
        for mode in ("off", "on"):
            done = subprocess.run([sys.executable, "-m", "benchmarks.gemm_tuning", spec,
                                   json.dumps([list(s) for s in shapes]), str(repeat)],
                                  env=dict(env, CLCONV_TUNING=mode), capture_output=True,
                                  text=True, timeout=1800, check=False)
            if done.returncode != 0:
                return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
            data = json.loads(done.stdout.strip().splitlines()[-1])
            runs[mode].append(data["ms"])
            sources[mode] = data["tuning"]
    return {mode: [statistics.median(r[i] for r in runs[mode]) for i in range(len(shapes))]
            for mode in runs} | {"tuning": sources}


def main(argv: Sequence[str] | None = None) -> int:
    """The fresh process's side (see the module's docstring)."""
    import numpy as np
    import pyopencl.array as cla

    import clconv
    from clconv.blas import clblast as gemm
    from clconv.blas import tuning

    spec, shapes_json, repeat_text = argv if argv is not None else sys.argv[1:]
    dev = clconv.device(spec)
    shapes, repeat = json.loads(shapes_json), int(repeat_text)
    ms = []
    with dev.lock:
        for m, n, k, batch in shapes:
            rng = np.random.default_rng(0)
            a = cla.to_device(dev.queue, rng.standard_normal(m * k).astype(np.float32))
            b = cla.to_device(dev.queue, rng.standard_normal(batch * k * n).astype(np.float32))
            c = cla.empty(dev.queue, batch * m * n, np.float32)

            def run(m: int = m, n: int = n, k: int = k, batch: int = batch, a: Any = a,
                    b: Any = b, c: Any = c) -> None:
                gemm.gemm(dev, m, n, k, a, 0, 0, b, 0, k * n, c, 0, m * n, batch)
                dev.queue.finish()
            run()
            ms.append(statistics.median(runs(run, repeat)) * 1e3)
    state = tuning.tuning_state(dev)
    print(json.dumps({"ms": ms, "tuning": state.source if state else "none"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
