"""clconv's benchmarks: tools that measure the library, shipped beside it but not part of it.

`python -m clconv bench` runs `benchmarks.bench` (the classic layers against numpy, torch and
CLBlast's convgemm) or, with `--layers resnet18,mobilenet_v2`, `benchmarks.network_layers` (every
distinct convolution of the networks against torch by the fair method of `benchmarks.fair`). The
other modules run on their own with `python -m benchmarks.<name> --help`:

- `bench`: the bench's driver (every algorithm and peer per layer, report files), with `peers`
  (numpy, torch, torch-cuda, CLBlast convgemm), `host_peer` and `timing` (how a peer is timed),
  `first_call` (a fresh process's first call), `gemm_tuning` (CLBlast tuned vs untuned),
  `first_use` (a network's first forward) and `report` (text and chart);
- `fair`: the fair method (warm worker processes, alternating blocks, geometric means), used by
  `network_layers` (ResNet-18 / MobileNetV2 convolutions vs torch), `gradients` (their gradients
  and transposed convolutions vs torch's backward), `whole_networks` (torch vs
  `clconv.torch.convert` and `compile`) and `call_costs` (per-call costs of small layers);
- `epilogue` (fused epilogues), `gemm_engines` (GEMM engines), `algorithms` (every algorithm per
  layer), both with `torch_peer` (torch's conv2d in a fresh process), and `dask_scaling`
  (`clconv.dask`).

Keep this file free of imports beyond the standard library: `benchmarks.first_call` times the
import of numpy and clconv in a fresh process that imports this package first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["child_env", "write_json"]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default os.environ) for a benchmark's fresh interpreter: the folders that
    hold this clconv and this benchmarks package first on PYTHONPATH (the folders above the
    packages, never the clconv package folder itself, whose torch.py would shadow torch)."""
    import clconv

    roots = [str(Path(m.__file__).resolve().parents[1]) for m in (clconv, sys.modules[__name__])]
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in (*roots, env.get("PYTHONPATH"))
                                                      if p))
    return env


def write_json(path: str | None, figures: Any) -> None:
    """Writes a benchmark's figures to `path` as indented JSON (nothing when `path` is None: no
    --json given)."""
    import json  # here, not at the top: see the module's docstring

    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)
