"""A host peer (numpy or torch) timed on one layer in a fresh interpreter.

    python -m benchmarks.host_peer FOLDER PEER SPEC REPEAT BUDGET_S

reads FOLDER/x.npy and FOLDER/w.npy, times PEER ('numpy' or 'torch') on the layer SPEC (--layer
text) as benchmarks.timing does, writes the output to FOLDER/y.npy and prints one JSON line
{"first": s, "times": [s, ...]}. The bench runs host peers this way (`time_isolated`) because the
thread pools of different libraries (OpenBLAS, torch's OpenMP, PoCL's workers) spin-wait and slow
each other down when they share a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from clconv.tools.layer_spec import CONV_NAMES, Layer, parse_layer

from . import child_env
from .peers import numpy_conv
from .timing import time_calls

__all__ = ["main", "time_isolated"]


def time_isolated(peer: str, layer: Layer, x: np.ndarray, w: np.ndarray, repeat: int,
                  budget_s: float) -> tuple[np.ndarray, float, list[float]]:
    """(output, first call's seconds, timed calls' seconds) of `peer` on x (N, C, *size) and
    w (K, C / groups, *kernel), measured in a fresh interpreter; RuntimeError when it failed."""
    with tempfile.TemporaryDirectory(prefix="clconv-bench-") as folder:
        np.save(os.path.join(folder, "x.npy"), x)
        np.save(os.path.join(folder, "w.npy"), w)
        done = subprocess.run([sys.executable, "-m", "benchmarks.host_peer", folder, peer,
                               layer.spec, str(repeat), str(budget_s)], env=child_env(),
                              capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            raise RuntimeError((done.stderr.strip().splitlines() or ["failed"])[-1])
        data = json.loads(done.stdout.strip().splitlines()[-1])
        return np.load(os.path.join(folder, "y.npy")), data["first"], data["times"]


def main(argv: Sequence[str] | None = None) -> int:
    """The fresh interpreter's side (see the module's docstring)."""
    folder, peer, spec, repeat, budget = argv if argv is not None else sys.argv[1:]
    layer = parse_layer(spec)
    x, w = np.load(os.path.join(folder, "x.npy")), np.load(os.path.join(folder, "w.npy"))
    if peer == "torch":
        import torch

        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        conv = getattr(torch.nn.functional, CONV_NAMES[layer.nd])

        def run() -> np.ndarray:
            with torch.no_grad():
                return conv(xt, wt, **layer.conv_args()).numpy()
    elif peer == "numpy":
        def run() -> np.ndarray:
            return numpy_conv(x, w, layer)
    else:
        raise SystemExit(f"host_peer: PEER must be numpy or torch, got {peer!r}")
    out, first, times = time_calls(run, int(repeat), float(budget))
    np.save(os.path.join(folder, "y.npy"), out)
    print(json.dumps({"first": first, "times": times}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
