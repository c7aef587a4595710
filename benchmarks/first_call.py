"""A layer's first call in a fresh process, with cold or warm kernel caches.

    python -m benchmarks.first_call '[SPEC, X_SHAPE, W_SHAPE, "conv2d", {CONV KEYWORDS}]'

imports numpy and clconv, calls the conv (numpy float32 in/out, algorithm 'auto') twice on the
device SPEC and prints one JSON line {"import_s", "first_s", "second_s"}. `measure_latency` runs it
as the bench does. Only the standard library is imported at the top (here and in benchmarks'
__init__), so that import_s is the import of numpy and clconv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clconv.tools.layer_spec import Layer

__all__ = ["main", "measure_latency"]


def measure_latency(spec: str, layer: Layer, cold: bool) -> dict[str, Any]:
    """First and second call of the layer's conv (numpy float32 in/out, algorithm 'auto') in a
    fresh interpreter: {"import_s", "first_s", "second_s"} in seconds, or {"error": why}.

    cold: the kernel caches start empty (XDG_CACHE_HOME and POCL_CACHE_DIR in a new temporary
    folder, so PoCL's and pyopencl's binary caches are empty; CUDA_CACHE_DISABLE=1 for NVIDIA);
    the tuning file and clconv's remembered algorithm choices are read from the usual place either
    way. warm: the normal caches, after one run to fill them."""
    from clconv.runtime.cache import cache_dir
    from clconv.tools.layer_spec import CONV_NAMES

    from . import child_env

    args = [sys.executable, "-m", "benchmarks.first_call",
            json.dumps([spec, layer.input_shape, layer.weight_shape, CONV_NAMES[layer.nd],
                        layer.conv_args()])]
    env = child_env()
    env["CLCONV_CACHE_DIR"] = str(cache_dir())
    with tempfile.TemporaryDirectory(prefix="clconv-cold-") as tmp:
        if cold:
            env.update(XDG_CACHE_HOME=tmp, POCL_CACHE_DIR=os.path.join(tmp, "pocl"),
                       CUDA_CACHE_DISABLE="1")
        runs = 1 if cold else 2  # warm: the first run fills the caches, the second is measured
        for _ in range(runs):
            done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600,
                                  check=False)
        if done.returncode != 0:
            return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
        return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """The fresh process's side (see the module's docstring)."""
    t0 = time.perf_counter()
    import numpy as np

    import clconv

    t1 = time.perf_counter()
    spec, x_shape, w_shape, name, kwargs = json.loads((argv or sys.argv[1:])[0])
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    wt = np.random.default_rng(1).standard_normal(w_shape).astype(np.float32)
    conv = getattr(clconv, name)
    with clconv.device(spec):
        t2 = time.perf_counter()
        conv(x, wt, **kwargs)
        t3 = time.perf_counter()
        conv(x, wt, **kwargs)
        t4 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "first_s": t3 - t2, "second_s": t4 - t3}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
