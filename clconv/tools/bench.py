"""`python -m clconv bench`: clconv's algorithms against their peers on real network layers.

For each layer (the table `LAYERS`, or the user's own `--layer`, 1-d to 3-d: see LAYER_HELP) every
algorithm ('direct', 'im2col', 'auto') and every importable peer runs on the same data (float32, or
`--dtype`):

- numpy: im2col (a strided window view, copied) + `matmul` on the host, in the same dtype;
- torch: `torch.nn.functional.conv1d/2d/3d` on the CPU (when torch is installed);
- torch-cuda: the same on torch's CUDA device (cuDNN), operands already there, synchronised after
  every call (when torch sees a GPU);
- convgemm: CLBlast's own fused convolution `CLBlast{S,D,H}convgemm`, called through ctypes on the
  same device and queue (2-d, groups=1 only; CLBlast has no grouped variant).

Each is timed as the median of a few calls after one warm-up (slow peers get fewer calls), clconv's
with the operands already on the device and the queue finished after every call. Reported: median
ms, GFLOP/s (2 x multiply-adds), the largest |error| against a float64 numpy reference, the speed-up
over the direct loop kernel and the ratio of 'auto' to each peer; the im2col path's memory
redundancy (column buffer / input); and the first call's latency in a fresh process with cold and
with warm kernel caches. Writes <out>.txt (what was printed), <out>.csv, <out>.json and, with
matplotlib, <out>.png; `--json -` prints the JSON on stdout (and the report on stderr).
"""

from __future__ import annotations

import csv
import ctypes
import ctypes.util
import dataclasses
import datetime as _dt
import io
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import numpy as np

__all__ = [
    "LAYERS",
    "PEERS",
    "Layer",
    "main",
    "numpy_conv2d",
    "parse_layer",
    "reference_conv2d",
    "run_bench",
]

HOST_PEERS = ("numpy", "torch", "torch-cuda", "convgemm")


def default_peers() -> tuple[str, ...]:
    """'direct', clconv's other algorithms, 'auto', then the peers outside clconv."""
    from ..ops.conv import ALGORITHMS

    algorithms = [a for a in ALGORITHMS if a not in ("auto", "direct")]
    return ("direct", *algorithms, "auto", *HOST_PEERS)


PEERS = default_peers()
#: clconv's functional op for each number of spatial dims.
CONV_NAMES = {1: "conv1d", 2: "conv2d", 3: "conv3d"}
_SPATIAL_KEYS = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}

LAYER_HELP = """\
a layer to benchmark instead of the built-in table (repeatable), in one of two forms:
  [NAME=]conv2d:N=1,C=64,H=56,W=56,K=64,k=3,s=1,p=1,d=1,g=1
      conv1d takes L, conv2d H and W, conv3d D, H and W (the input's spatial size);
      N batch (default 1), C input channels, K output channels, k kernel, s stride,
      p padding, d dilation, g groups (defaults s=1, p=0, d=1, g=1); k, s, p and d
      take one int or one per spatial dim joined by x (k=3x1, s=2x1)
  [NAME=]N,C,H,W,K,k,s,p[,g]   (the short 2-d form: square kernel, same stride and
      padding in both dims)"""


def _dims(value: int | Sequence[int], nd: int) -> tuple[int, ...]:
    return (int(value),) * nd if isinstance(value, (int, np.integer)) else tuple(value)


@dataclass(frozen=True)
class Layer:
    """One convolution: input (n, c, *size), weight (k_out, c / groups, *kernel).

    `Layer(name, n, c, h, w, k_out, ksize, stride, pad, groups)` is a square 2-d layer;
    `Layer.make` builds any other (1-d to 3-d, per-dim kernel, stride, padding, dilation).
    """

    name: str
    n: int
    c: int
    h: int
    w: int
    k_out: int
    ksize: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    pad: int | tuple[int, ...] = 0
    groups: int = 1
    dilation: int | tuple[int, ...] = 1
    #: the spatial input size when it is not (h, w): (L,) or (D, H, W)
    size_nd: tuple[int, ...] | None = None

    @classmethod
    def make(cls, name: str, n: int, c: int, size: Sequence[int], k_out: int,
             kernel: int | Sequence[int], stride: int | Sequence[int] = 1,
             pad: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
             groups: int = 1) -> Layer:
        size = tuple(int(v) for v in size)
        nd = len(size)
        square = nd == 2 and len({*_dims(kernel, 2)}) == 1
        simple = lambda v: v[0] if len(set(v)) == 1 else v
        return cls(name, n, c, size[-2] if nd >= 2 else 1, size[-1], k_out,
                   simple(_dims(kernel, nd)) if square or nd != 2 else _dims(kernel, nd),
                   simple(_dims(stride, nd)), simple(_dims(pad, nd)), groups,
                   simple(_dims(dilation, nd)), None if nd == 2 else size)

    @property
    def nd(self) -> int:
        return 2 if self.size_nd is None else len(self.size_nd)

    @property
    def size(self) -> tuple[int, ...]:
        return (self.h, self.w) if self.size_nd is None else self.size_nd

    @property
    def kernel(self) -> tuple[int, ...]:
        return _dims(self.ksize, self.nd)

    @property
    def strides(self) -> tuple[int, ...]:
        return _dims(self.stride, self.nd)

    @property
    def pads(self) -> tuple[int, ...]:
        return _dims(self.pad, self.nd)

    @property
    def dilations(self) -> tuple[int, ...]:
        return _dims(self.dilation, self.nd)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n, self.c, *self.size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.k_out, self.c // self.groups, *self.kernel)

    @property
    def out_size(self) -> tuple[int, ...]:
        return tuple((i + 2 * p - d * (k - 1) - 1) // s + 1 for i, k, s, p, d in
                     zip(self.size, self.kernel, self.strides, self.pads, self.dilations))

    @property
    def out_hw(self) -> tuple[int, ...]:
        """The output's last two spatial sizes (its only one for 1-d)."""
        return self.out_size[-2:]

    @property
    def flops(self) -> int:
        return (2 * self.n * self.k_out * math.prod(self.out_size) * (self.c // self.groups)
                * math.prod(self.kernel))

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.c

    @property
    def pointwise(self) -> bool:
        return (all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides)
                and all(p == 0 for p in self.pads))

    @property
    def input_bytes(self) -> int:
        """float32 bytes of the input."""
        return 4 * math.prod(self.input_shape)

    @property
    def column_bytes(self) -> int:
        """float32 bytes of the im2col matrix (C * prod(kernel) rows, one column per output)."""
        return 4 * self.n * self.c * math.prod(self.kernel) * math.prod(self.out_size)

    def conv_args(self) -> dict[str, Any]:
        """stride, padding, dilation, groups as keywords of clconv's and torch's convNd."""
        return dict(stride=self.strides, padding=self.pads, dilation=self.dilations,
                    groups=self.groups)

    @property
    def spec(self) -> str:
        """The layer as --layer text (the short form when it says everything)."""
        if self.nd == 2 and isinstance(self.ksize, int) and isinstance(self.stride, int) and \
                isinstance(self.pad, int) and self.dilation == 1:
            g = f",{self.groups}" if self.groups != 1 else ""
            return (f"{self.n},{self.c},{self.h},{self.w},{self.k_out},{self.ksize},"
                    f"{self.stride},{self.pad}{g}")
        join = lambda v: "x".join(map(str, v)) if len(set(v)) > 1 else str(v[0])
        sizes = ",".join(f"{k}={v}" for k, v in zip(_SPATIAL_KEYS[self.nd], self.size))
        return (f"{CONV_NAMES[self.nd]}:N={self.n},C={self.c},{sizes},K={self.k_out},"
                f"k={join(self.kernel)},s={join(self.strides)},p={join(self.pads)},"
                f"d={join(self.dilations)},g={self.groups}")


LAYERS: tuple[Layer, ...] = (
    Layer("AlexNet conv2", 1, 96, 27, 27, 256, 5, 1, 2),
    Layer("VGG16 conv3_2", 1, 256, 56, 56, 256, 3, 1, 1),
    Layer("ResNet-50 3x3", 1, 64, 56, 56, 64, 3, 1, 1),
    Layer("ResNet-50 1x1", 1, 256, 56, 56, 64, 1, 1, 0),
    Layer("ResNet-50 res4 b8", 8, 256, 14, 14, 256, 3, 1, 1),
    Layer("MobileNet depthwise", 1, 32, 112, 112, 32, 3, 1, 1, 32),
)

_NAMED = re.compile(r"^(?:(?P<name>[^=:]*)=)?(?P<kind>conv[123]d):(?P<body>.*)$", re.DOTALL)


def parse_layer(text: str) -> Layer:
    """--layer text (see LAYER_HELP) -> Layer; ValueError saying what is wrong."""
    m = _NAMED.match(text.strip())
    layer = _parse_keyed(text, m) if m else _parse_short(text)
    if layer.groups < 1:
        raise ValueError(f"--layer {text!r}: groups g={layer.groups} must be at least 1")
    if layer.c % layer.groups or layer.k_out % layer.groups:
        raise ValueError(f"--layer {text!r}: C={layer.c} and K={layer.k_out} must divide by "
                         f"g={layer.groups}")
    if min(layer.out_size) < 1:
        raise ValueError(f"--layer {text!r}: the dilated kernel {layer.kernel} is larger than the "
                         f"padded input {tuple(i + 2 * p for i, p in zip(layer.size, layer.pads))}")
    return layer


def _parse_short(text: str) -> Layer:
    name, _, spec = text.rpartition("=")
    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        values = []
    if len(values) not in (8, 9) or min(values) < 0 or min(values[:7]) < 1:
        raise ValueError(f"--layer wants N,C,H,W,K,k,s,p[,g] (positive ints, p >= 0) or the "
                         f"conv2d:N=..,C=.. form, got {text!r}")
    return Layer(name or f"layer {spec}", *values)


def _parse_keyed(text: str, m: re.Match[str]) -> Layer:
    nd = int(m["kind"][4])
    spatial = _SPATIAL_KEYS[nd]
    values: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (part.strip() for part in m["body"].split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in ("N", "C", "K", "k", "s", "p", "d", "g", *spatial):
            raise ValueError(f"--layer {text!r}: {item!r} is not KEY=VALUE with KEY one of N, C, "
                             f"{', '.join(spatial)}, K, k, s, p, d, g ({m['kind']})")
        try:
            parts = tuple(int(v) for v in value.strip().split("x"))
        except ValueError:
            raise ValueError(f"--layer {text!r}: {key}={value!r} is not an int"
                             + (" or ints joined by x" if key in "kspd" else "")) from None
        if len(parts) not in ((1, nd) if key in ("k", "s", "p", "d") else (1,)):
            raise ValueError(f"--layer {text!r}: {key}={value} must have 1"
                             + (f" or {nd} values" if key in "kspd" else " value"))
        if min(parts) < (0 if key == "p" else 1):
            raise ValueError(f"--layer {text!r}: {key}={value} must be "
                             + ("non-negative" if key == "p" else "positive"))
        if key in values:
            raise ValueError(f"--layer {text!r}: {key} is given twice")
        values[key] = parts
    missing = [k for k in ("C", *spatial, "K", "k") if k not in values]
    if missing:
        raise ValueError(f"--layer {text!r}: missing {', '.join(missing)} ({m['kind']} needs C, "
                         f"{', '.join(spatial)}, K and k)")
    one = lambda key, default: values.get(key, (default,))[0]
    many = lambda key, default: values.get(key, (default,))
    layer = Layer.make("", one("N", 1), one("C", 0), [values[k][0] for k in spatial], one("K", 0),
                       many("k", 1), many("s", 1), many("p", 0), many("d", 1), one("g", 1))
    name = m["name"].strip() if m["name"] else f"layer {layer.spec}"
    return dataclasses.replace(layer, name=name)


# --------------------------------------------------------------------------------------------------
# Host convolutions (the float64 reference and the numpy peer)

def _columns(x: np.ndarray, layer: Layer) -> np.ndarray:
    """(N, prod(out), C*prod(kernel)) im2col of x (a copy), in x's dtype."""
    nd = layer.nd
    pads = ((0, 0), (0, 0), *((p, p) for p in layer.pads))
    xp = np.pad(x, pads) if any(layer.pads) else x
    span = tuple(d * (k - 1) + 1 for k, d in zip(layer.kernel, layer.dilations))
    axes = tuple(range(2, 2 + nd))
    win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=axes)
    win = win[(slice(None), slice(None), *(slice(None, None, s) for s in layer.strides),
               *(slice(None, None, d) for d in layer.dilations))]
    win = win[(slice(None), slice(None), *(slice(0, o) for o in layer.out_size))]
    order = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    return win.transpose(order).reshape(layer.n, math.prod(layer.out_size),
                                        layer.c * math.prod(layer.kernel))


def _conv_by_columns(x: np.ndarray, w: np.ndarray, layer: Layer) -> np.ndarray:
    g, cg, kg = layer.groups, layer.c // layer.groups, layer.k_out // layer.groups
    cols = _columns(x, layer)  # (N, L, C*kk), rows of one group contiguous in the last axis
    kk = math.prod(layer.kernel)
    out = np.empty((layer.n, layer.k_out, math.prod(layer.out_size)), x.dtype)
    for gi in range(g):
        wg = w[gi * kg:(gi + 1) * kg].reshape(kg, cg * kk)
        out[:, gi * kg:(gi + 1) * kg] = wg @ cols[:, :, gi * cg * kk:(gi + 1) * cg * kk].transpose(0, 2, 1)
    return out.reshape(layer.n, layer.k_out, *layer.out_size)


def reference_conv2d(x: np.ndarray, w: np.ndarray, layer: Layer) -> np.ndarray:
    """The float64 reference: im2col + matmul in float64 (any nd, despite the name)."""
    return _conv_by_columns(x.astype(np.float64), w.astype(np.float64), layer)


def numpy_conv2d(x: np.ndarray, w: np.ndarray, layer: Layer) -> np.ndarray:
    """The numpy peer: the same im2col + matmul in x's dtype (any nd, despite the name)."""
    return _conv_by_columns(x, w, layer)


# --------------------------------------------------------------------------------------------------
# CLBlast's convgemm through ctypes

_CROSS_CORRELATION = 151  # CLBlastKernelModeCrossCorrelation in clblast_c.h


def _convgemm_function(prefix: str = "S") -> Callable[..., int] | str:
    """CLBlast{S,D,H}convgemm from the libclblast pyclblast uses, or why it is unavailable."""
    from ..blas import clblast as gemm

    if not gemm.available():
        return "pyclblast/CLBlast not installed"
    for name in ("libclblast.so.1", ctypes.util.find_library("clblast") or "libclblast.so"):
        try:
            fn = getattr(ctypes.CDLL(name), f"CLBlast{prefix}convgemm")
            break
        except (OSError, AttributeError):
            fn = None
    if fn is None:
        return f"libclblast has no CLBlast{prefix}convgemm (CLBlast < 1.5)"
    size = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int] + [size] * 13 + [ctypes.c_void_p, size] * 3 + [
        ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def _convgemm_runner(dev: Any, layer: Layer, x: Any, w: Any, y: Any) -> Callable[[], None] | str:
    if layer.groups != 1:
        return "no grouped convolution in CLBlast"
    if layer.nd != 2:
        return "CLBlast's convgemm is 2-d only"
    prefix = {"float32": "S", "float64": "D", "float16": "H"}[np.dtype(x.dtype).name]
    fn = _convgemm_function(prefix)
    if isinstance(fn, str):
        return fn
    queue_ptr = ctypes.c_void_p(dev.queue.int_ptr)

    def run() -> None:
        status = fn(_CROSS_CORRELATION, layer.c, layer.h, layer.w, *layer.kernel, *layer.pads,
                    *layer.strides, *layer.dilations, layer.k_out, layer.n,
                    x.base_data.int_ptr, 0, w.base_data.int_ptr, 0, y.base_data.int_ptr, 0,
                    ctypes.byref(queue_ptr), None)
        if status != 0:
            raise RuntimeError(f"CLBlast{prefix}convgemm failed with status {status}")
        dev.queue.finish()

    return run


# --------------------------------------------------------------------------------------------------
# Timing

@dataclass
class Result:
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


def _time(fn: Callable[[], Any], repeat: int, budget_s: float) -> tuple[Any, float, list[float]]:
    """(warm-up result, warm-up seconds, timed seconds) with fewer runs when a call is slow."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = _runs(fn, 1)  # the run count follows a warm call, not the first (builds, measuring)
    return out, first, times + _runs(fn, _run_count(times[0], repeat, budget_s) - 1)


def _run_count(first: float, repeat: int, budget_s: float) -> int:
    return max(2, min(repeat, int(budget_s / max(first, 1e-6))))


def _runs(fn: Callable[[], Any], count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


class _Isolated:
    """A host peer (numpy, torch) timed in a fresh interpreter: thread pools of different
    libraries (OpenBLAS, torch's OpenMP, PoCL's workers) that spin-wait in one process were
    measured to slow each other down by up to 40x on 2 cores."""

    def __init__(self, peer: str) -> None:
        self.peer = peer


def _child_env() -> dict[str, str]:
    """The environment of the bench's fresh interpreters: this clconv first on PYTHONPATH (the
    folder that holds the package, never the package folder itself, whose torch.py would shadow
    torch)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


_HOST_SNIPPET = r"""
import json, sys
import numpy as np
from clconv.tools.bench import CONV_NAMES, _time, numpy_conv2d, parse_layer
folder, peer, spec, repeat, budget = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
layer = parse_layer(spec)
x, w = np.load(folder + "/x.npy"), np.load(folder + "/w.npy")
if peer == "torch":
    import torch
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    conv = getattr(torch.nn.functional, CONV_NAMES[layer.nd])
    def run():
        with torch.no_grad():
            return conv(xt, wt, **layer.conv_args()).numpy()
else:
    def run():
        return numpy_conv2d(x, w, layer)
out, first, times = _time(run, repeat, budget)
np.save(folder + "/y.npy", out)
print(json.dumps({"first": first, "times": times}))
"""


def _time_isolated(peer: str, layer: Layer, x: np.ndarray, w: np.ndarray, repeat: int,
                   budget_s: float) -> tuple[np.ndarray, float, list[float]]:
    env = _child_env()
    with tempfile.TemporaryDirectory(prefix="clconv-bench-") as folder:
        np.save(os.path.join(folder, "x.npy"), x)
        np.save(os.path.join(folder, "w.npy"), w)
        done = subprocess.run([sys.executable, "-c", _HOST_SNIPPET, folder, peer, layer.spec,
                               str(repeat), str(budget_s)], env=env, capture_output=True,
                              text=True, timeout=1800, check=False)
        if done.returncode != 0:
            raise RuntimeError((done.stderr.strip().splitlines() or ["failed"])[-1])
        data = json.loads(done.stdout.strip().splitlines()[-1])
        return np.load(os.path.join(folder, "y.npy")), data["first"], data["times"]


def _peer_runners(dev: Any, layer: Layer, x: np.ndarray, w: np.ndarray, peers: Sequence[str],
                  isolate: bool = True) -> dict[str, Callable[[], Any] | _Isolated | str]:
    """peer -> a function computing the layer's output as numpy, or why it cannot run."""
    import pyopencl.array as cla

    from ..ops import conv as ops

    conv = getattr(ops, CONV_NAMES[layer.nd])
    runners: dict[str, Callable[[], np.ndarray] | str] = {}
    xd = cla.to_device(dev.queue, x)
    wd = cla.to_device(dev.queue, w)
    from ..ops.conv import ALGORITHMS

    for peer in peers:
        if peer in ALGORITHMS:
            def run(a: str = peer) -> Any:
                with dev:
                    y = conv(xd, wd, **layer.conv_args(), algorithm=a)
                dev.queue.finish()
                return y
            runners[peer] = run
        elif peer == "numpy" and isolate:
            runners[peer] = _Isolated(peer)
        elif peer == "numpy":
            runners[peer] = lambda: numpy_conv2d(x, w, layer)
        elif peer == "torch":
            try:
                import torch
            except ImportError:
                runners[peer] = "torch not installed"
                continue
            if isolate:
                runners[peer] = _Isolated(peer)
                continue
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            torch_conv = getattr(torch.nn.functional, CONV_NAMES[layer.nd])

            def run_torch(xt: Any = xt, wt: Any = wt, torch_conv: Any = torch_conv) -> np.ndarray:
                with torch.no_grad():
                    return torch_conv(xt, wt, **layer.conv_args()).numpy()
            runners[peer] = run_torch
        elif peer == "torch-cuda":
            try:
                import torch
            except ImportError:
                runners[peer] = "torch not installed"
                continue
            if not torch.cuda.is_available():
                runners[peer] = "torch sees no CUDA device"
                continue
            xc, wc = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
            cuda_conv = getattr(torch.nn.functional, CONV_NAMES[layer.nd])

            def run_cuda(xc: Any = xc, wc: Any = wc, cuda_conv: Any = cuda_conv) -> Any:
                with torch.no_grad():
                    y = cuda_conv(xc, wc, **layer.conv_args())
                torch.cuda.synchronize()
                return y
            runners[peer] = run_cuda
        elif peer == "convgemm":
            yd = cla.empty(dev.queue, (layer.n, layer.k_out, *layer.out_size), x.dtype)
            fn = _convgemm_runner(dev, layer, xd, wd, yd)
            runners[peer] = fn if isinstance(fn, str) else (lambda fn=fn, yd=yd: (fn(), yd)[1])
    return runners


def _to_host(y: Any) -> np.ndarray:
    if hasattr(y, "cpu") and hasattr(y, "numpy"):  # a torch tensor, possibly on the GPU
        return y.cpu().numpy()
    return y.get() if hasattr(y, "get") and not isinstance(y, np.ndarray) else np.asarray(y)


def _auto_choice(dev: Any, layer: Layer, dtype: Any = np.float32) -> str:
    """'chose im2col': what algorithm='auto' settled on for the layer ('' if it cannot be told)."""
    try:
        from ..ops.conv import choose_algorithm
        from ..ops.geometry import conv_geometry

        geo = conv_geometry(layer.nd, layer.input_shape, layer.weight_shape, layer.strides,
                            layer.pads, layer.dilations, layer.groups)
        return f"chose {choose_algorithm(dev, geo, 'auto', dtype)}"
    except Exception:  # the conv module's internals are not part of the bench's contract
        return ""


def bench_layer(dev: Any, layer: Layer, peers: Sequence[str], repeat: int, budget_s: float,
                on_peer: Callable[[str], None] = lambda peer: None, rounds: int = 2,
                isolate: bool = True, dtype: Any = np.float32) -> list[Result]:
    """Times every peer on `layer` with operands of `dtype`. clconv's own peers run in this process
    in `rounds` rounds
    (each peer warmed up once, then its runs split over the rounds, so that a burst of load on a
    shared machine lands on several peers rather than on one); numpy and torch run in a fresh
    interpreter per round (see `_Isolated`). The median of all of a peer's runs is reported."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(layer.input_shape).astype(dtype)
    w = (rng.standard_normal(layer.weight_shape)
         / math.sqrt(layer.c // layer.groups * math.prod(layer.kernel))).astype(dtype)
    ref = reference_conv2d(x, w, layer)
    scale = float(np.abs(ref).max()) or 1.0
    outcome: dict[str, Any] = {}  # peer -> note (str) or [run, out, first, planned runs, times]
    runners = _peer_runners(dev, layer, x, w, peers, isolate)

    def failed(err: Exception) -> str:
        first_line = (str(err).splitlines() or [""])[0][:120]
        return f"{type(err).__name__}: {first_line}"

    for peer, run in runners.items():
        on_peer(peer)
        # The direct kernel takes seconds on big layers: it gets half the time and 2-3 runs.
        budget = budget_s / (2 if peer == "direct" else 1)
        try:
            if isinstance(run, str):
                outcome[peer] = run
            elif isinstance(run, _Isolated):  # a fresh interpreter per round
                out, first, times = _time_isolated(peer, layer, x, w, -(-repeat // rounds),
                                                   budget / rounds)
                outcome[peer] = [run, out, first, len(times) * rounds, times]
            else:
                t0 = time.perf_counter()
                out = run()
                first = time.perf_counter() - t0
                times = _runs(run, 1)
                planned = _run_count(times[0], repeat, budget)
                times += _runs(run, -(-planned // rounds) - 1)
                outcome[peer] = [run, out, first, planned, times]
        except Exception as err:  # an algorithm that does not apply here, a driver failure
            outcome[peer] = failed(err)
    for _ in range(rounds - 1):
        for peer, state in outcome.items():
            if isinstance(state, list) and state[0] is not None:
                run, _, _, planned, times = state
                todo = min(-(-planned // rounds), planned - len(times))
                try:
                    if isinstance(run, _Isolated):
                        times.extend(_time_isolated(peer, layer, x, w, max(todo, 2),
                                                    budget_s / rounds)[2])
                    else:
                        times.extend(_runs(run, max(todo, 0)))
                except Exception as err:
                    outcome[peer] = failed(err)
    results = []
    for peer, state in outcome.items():
        if isinstance(state, str):
            results.append(Result(layer.name, layer.spec, peer, None, None, None, None, 0, None,
                                  state))
            continue
        _, out, first, _, times = state
        err = float(np.abs(_to_host(out).astype(np.float64) - ref).max())
        med = statistics.median(times)
        note = _auto_choice(dev, layer, dtype) if peer == "auto" else ""
        results.append(Result(layer.name, layer.spec, peer, med * 1e3, layer.flops / med / 1e9,
                              err, err / scale, len(times), first * 1e3, note))
    return results


# --------------------------------------------------------------------------------------------------
# First-call latency in a fresh process

_LATENCY_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, clconv
t1 = time.perf_counter()
spec, x_shape, w_shape, name, kwargs = json.loads(sys.argv[1])
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
"""


def measure_latency(spec: str, layer: Layer, cold: bool) -> dict[str, Any]:
    """First and second call of the layer's conv (numpy float32 in/out, algorithm 'auto') in a
    fresh interpreter.

    cold: the kernel caches start empty (XDG_CACHE_HOME and POCL_CACHE_DIR in a new temporary
    folder, so PoCL's and pyopencl's binary caches are empty; CUDA_CACHE_DISABLE=1 for NVIDIA);
    the tuning file and clconv's remembered algorithm choices are read from the usual place either
    way. warm: the normal caches, after one run to fill them."""
    from ..runtime.cache import cache_dir

    args = [sys.executable, "-c", _LATENCY_SNIPPET,
            json.dumps([spec, layer.input_shape, layer.weight_shape, CONV_NAMES[layer.nd],
                        layer.conv_args()])]
    env = _child_env()
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


# --------------------------------------------------------------------------------------------------
# CLBlast GEMM alone, tuned against untuned

_GEMM_SNIPPET = r"""
import json, statistics, sys, time
import numpy as np, pyopencl.array as cla, clconv
from clconv.blas import clblast as gemm
from clconv.blas import tuning
dev = clconv.device(sys.argv[1])
shapes, repeat = json.loads(sys.argv[2]), int(sys.argv[3])
ms = []
with dev.lock:
    for m, n, k, batch in shapes:
        rng = np.random.default_rng(0)
        a = cla.to_device(dev.queue, rng.standard_normal(m * k).astype(np.float32))
        b = cla.to_device(dev.queue, rng.standard_normal(batch * k * n).astype(np.float32))
        c = cla.empty(dev.queue, batch * m * n, np.float32)
        def run():
            gemm.gemm(dev, m, n, k, a, 0, 0, b, 0, k * n, c, 0, m * n, batch)
            dev.queue.finish()
        run()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        ms.append(statistics.median(times) * 1e3)
state = tuning.tuning_state(dev)
print(json.dumps({"ms": ms, "tuning": state.source if state else "none"}))
"""


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
    env = _child_env()
    runs: dict[str, list[list[float]]] = {"off": [], "on": []}
    sources: dict[str, str] = {}
    for _ in range(rounds):
        for mode in ("off", "on"):
            done = subprocess.run([sys.executable, "-c", _GEMM_SNIPPET, spec,
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


# --------------------------------------------------------------------------------------------------
# Report

def _fmt(v: float | None, spec: str, missing: str = "-") -> str:
    return missing if v is None else format(v, spec)


def _by(results: list[Result]) -> dict[tuple[str, str], Result]:
    return {(r.layer, r.peer): r for r in results}


def render(results: list[Result], layers: Sequence[Layer], peers: Sequence[str],
           header: list[str], latency: dict[str, Any] | None,
           gemm_tuning: dict[str, Any] | None = None, dtype: Any = np.float32) -> str:
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


def _plot(results: list[Result], layers: Sequence[Layer], peers: Sequence[str], path: Path,
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


def run_bench(spec: str | None = None, layers: Sequence[Layer] = LAYERS,
              peers: Sequence[str] | None = None, repeat: int = 5, budget_s: float = 3.0,
              out: str | None = "bench-out/bench", latency: bool = True, plot: bool = True,
              progress: bool = True, command: str | None = None,
              stream: TextIO | None = None, gemm_tuning: bool = False,
              dtype: Any = np.float32, json_out: str | None = None,
              prog: str = "python -m clconv", first_use: bool = False) -> int:
    """Runs the benchmark and writes <out>.txt/.csv/.json/.png; returns an exit code.

    dtype: the operands' dtype (float16/float64 where the device has them; ValueError otherwise).
    json_out: also write the JSON there; '-' writes it to stdout, and the report to stderr.
    first_use: also time whole networks' first forward, cold and warm (clconv.tools.first_use).
    """
    from ..blas import clblast as gemm
    from ..blas import tuning
    from ..runtime.cache import cache_dir
    from ..runtime.device import device
    from ..runtime.progress import Progress

    stream = stream or (sys.stderr if json_out == "-" else sys.stdout)
    dtype = np.dtype(dtype)
    peers = list(peers) if peers is not None else list(default_peers())
    known = default_peers()
    unknown = [p for p in peers if p not in known]
    if unknown:
        raise ValueError(f"unknown peers {unknown}; known: {known}")
    dev = device(spec)
    if dtype not in (np.float32, np.float64, np.float16):
        raise ValueError(f"dtype must be float32, float64 or float16, got {dtype}")
    if (dtype == np.float64 and not dev.fp64) or (dtype == np.float16 and not dev.fp16):
        raise ValueError(f"device {dev.name!r} has no {dtype.name} (cl_khr_fp"
                         f"{dtype.itemsize * 8}); use --dtype float32")
    if command is None:  # the environment variables that change what runs come first, as typed
        settings = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
                    if k.startswith(("CLCONV_", "POCL_", "CLBLAST_"))]
        command = " ".join([*settings, prog, *map(shlex.quote, sys.argv[1:])])
    load_start = _load()
    bar = Progress(len(layers) * len(peers) + (2 if latency else 0) + (1 if gemm_tuning else 0)
                   + (4 if first_use else 0),
                   "bench", enabled=progress)
    results: list[Result] = []
    done = 0
    for layer in layers:
        def on_peer(peer: str, layer: Layer = layer) -> None:
            nonlocal done
            bar.update(done, f"{layer.name}: {peer}")
            done += 1
        results.extend(bench_layer(dev, layer, peers, repeat, budget_s, on_peer, dtype=dtype))
    lat = None
    if latency:
        lat_layer = next((lay for lay in layers if lay.name == "ResNet-50 3x3"), layers[0])
        lat = {"layer": f"{lat_layer.name} ({lat_layer.spec})"}
        for kind in ("cold", "warm"):
            bar.update(done, f"first-call latency, {kind} caches")
            lat[kind] = measure_latency(str(dev.index), lat_layer, kind == "cold")
            done += 1
    if first_use:
        from . import first_use as fu

        lat = lat or {}
        lat["networks"] = []
        env = _child_env()
        env["CLCONV_DEVICE"] = str(dev.index)
        for net in fu.NETWORKS:
            folder = None
            for kind in fu.MODES:  # cold first: warm reuses the caches it filled
                bar.update(done, f"first forward of {net}, {kind} caches")
                try:
                    r = fu.measure(net, kind, folder, env=env)
                    folder = r["folder"]
                except (RuntimeError, OSError, subprocess.SubprocessError) as err:
                    r = {"net": net, "mode": kind, "error": str(err).strip().splitlines()[-1]}
                lat["networks"].append(r)
                done += 1
    gemm_result = None
    if gemm_tuning:
        bar.update(done, "CLBlast GEMM, tuned vs untuned")
        shapes = gemm_shapes(layers)
        gemm_result = measure_gemm_tuning(str(dev.index), [sh for _, sh in shapes])
        gemm_result["shapes"] = shapes
        done += 1
    bar.close()
    state = tuning.tuning_state(dev)
    torch_version = ""
    try:
        import torch
        torch_version = f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
    except ImportError:
        pass
    busy = _busy_warning(load_start, _load(), torch_version)  # a header line
    import pyopencl as cl

    header = [
        f"$ {command}",
        f"date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"device: {dev.name} [{dev.platform_name}, {dev.opencl_version}, driver {dev.driver_version}]",
        (f"host: {platform.machine()} {_cpu_name()}, {os.cpu_count()} CPUs, Python "
         f"{platform.python_version()}, numpy {np.__version__}, {torch_version}pyopencl "
         f"{cl.VERSION_TEXT}, CLBlast {tuning.clblast_version()}"),
        (f"CLBlast tuning: {state.source.split(' (')[0] if state else 'not loaded (no GEMM ran)'}"
         + (f", {len(state.applied)} kernel settings applied" if state and state.applied else "")
         + (f", {len(state.errors)} rejected (see `{prog} tune --show`)"
            if state and state.errors else "")),
        f"CLBlast available: {'yes' if gemm.available() else 'no: ' + str(gemm.missing_reason())}",
        f"clconv cache (tuning file, 'auto' choices): {cache_dir()}",
        ("clconv's algorithms run on device arrays, the queue finished after each call; numpy and "
         "torch run in fresh interpreters on host arrays"),
        *([busy] if busy else []),
    ]
    text = render(results, layers, peers, header, lat, gemm_result, dtype)
    stream.write(text)
    layers_json = [dict(asdict(lay), spec=lay.spec, nd=lay.nd, input_shape=lay.input_shape,
                        weight_shape=lay.weight_shape, out_size=lay.out_size, flops=lay.flops,
                        input_bytes=lay.input_bytes, column_bytes=lay.column_bytes)
                   for lay in layers]
    data = {"command": command, "header": header, "dtype": dtype.name, "layers": layers_json,
            "results": [asdict(r) for r in results], "latency": lat, "gemm_tuning": gemm_result}
    if json_out == "-":
        sys.stdout.write(json.dumps(data, indent=1) + "\n")
    elif json_out:
        Path(json_out).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    if out:
        prefix = Path(out)
        prefix.parent.mkdir(exist_ok=True)  # its last folder only (cli.output_prefix checks)
        Path(f"{prefix}.txt").write_text(text, encoding="utf-8")
        with open(f"{prefix}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(asdict(results[0]).keys()) if results else [])
            writer.writeheader()
            for r in results:
                writer.writerow(asdict(r))
        Path(f"{prefix}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        written = [f"{prefix}.txt", f"{prefix}.csv", f"{prefix}.json"]
        if plot:
            why = _plot(results, layers, peers, Path(f"{prefix}.png"),
                        f"clconv bench on {dev.name} ({header[1]})")
            if why:
                stream.write(f"no plot: {why}\n")
            else:
                written.append(f"{prefix}.png")
        if json_out and json_out != "-":
            written.append(json_out)
        stream.write("wrote " + ", ".join(written) + "\n")
    elif json_out and json_out != "-":
        stream.write(f"wrote {json_out}\n")
    return 0


def _load() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _busy_warning(start: float | None, end: float | None, torch_version: str) -> str:
    """A warning line when other work shared the CPUs during the run, else ''. Before the run
    only others count; at its end the bench's own work (up to every CPU, PoCL's threads) too, so
    more than the CPUs then means others ran beside it."""
    cpus = os.cpu_count() or 1
    if start is None or end is None or (start < 0.5 * cpus and end <= cpus + 0.5):
        return ""
    threads = f"; torch ran with {torch_version.split('(')[1].split(')')[0]}" \
        if torch_version else ""
    return (f"WARNING: the machine was busy (load average {start:.1f} before the run, {end:.1f} "
            f"after, on {cpus} CPUs): other work shared the CPUs, the times are noisy{threads}; "
            f"rerun on an idle machine to compare")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(args: Any) -> int:
    """Entry point for the CLI (the argparse namespace of cli.py: --layer already parsed into
    Layers, --peers into a list)."""
    layers = list(args.layer) if args.layer else list(LAYERS)
    peers = list(args.peers) if args.peers else list(default_peers())
    return run_bench(args.device, layers, peers, args.repeat, args.time_per_peer,
                     None if args.out == "-" else args.out, not args.no_latency, not args.no_plot,
                     not args.no_progress, gemm_tuning=not args.no_gemm, dtype=args.dtype,
                     json_out=args.json, prog=getattr(args, "prog", "python -m clconv"),
                     first_use=getattr(args, "first_use", False))
