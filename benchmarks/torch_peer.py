"""torch CPU's conv2d on a few layers, timed in a fresh process (so that torch's OpenMP threads do
not share a process with PoCL's), for benchmarks.algorithms and benchmarks.gemm_engines.

    python -m benchmarks.torch_peer THREADS REPEAT '[[N, C, H, W, K, k, s, p, g], ...]'

per layer: one untimed call, then the median seconds of REPEAT calls of
`torch.nn.functional.conv2d(x, w, b, s, p, 1, g)`; prints them as one JSON list.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["main", "torch_medians"]


def torch_medians(layers: Sequence[Sequence[int]], repeat: int,
                  threads: int) -> list[float] | None:
    """Median seconds per layer ((N, C, H, W, K, k, s, p, g) each) of torch's conv2d with bias on
    `threads` threads, in a fresh process; None when torch is missing or the process failed."""
    from . import child_env

    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.torch_peer", str(threads),
                               str(repeat), json.dumps([list(lay) for lay in layers])],
                              capture_output=True, text=True, timeout=600, check=False,
                              env=child_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """The fresh process's side (see the module's docstring)."""
    import torch

    threads, repeat, layers = argv if argv is not None else sys.argv[1:]
    torch.set_num_threads(int(threads))
    medians = []
    for n, c, h, w, co, k, s, p, g in json.loads(layers):
        x, wt, b = torch.randn(n, c, h, w), torch.randn(co, c // g, k, k), torch.randn(co)
        torch.nn.functional.conv2d(x, wt, b, s, p, 1, g)
        times = []
        for _ in range(int(repeat)):
            t = time.perf_counter()
            torch.nn.functional.conv2d(x, wt, b, s, p, 1, g)
            times.append(time.perf_counter() - t)
        medians.append(statistics.median(times))
    print(json.dumps(medians))
    return 0


if __name__ == "__main__":
    sys.exit(main())
