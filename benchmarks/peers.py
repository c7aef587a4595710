"""The bench's peers: what runs each layer besides clconv's algorithms, and how each is called.

- numpy: im2col (a strided window view, copied) + `matmul` on the host, in the operands' dtype;
- torch: `torch.nn.functional.conv1d/2d/3d` on the CPU (when torch is installed);
- torch-cuda: the same on torch's CUDA device (cuDNN), operands already there, synchronised after
  every call (when torch sees a GPU);
- convgemm: CLBlast's own fused convolution `CLBlast{S,D,H}convgemm`, called through ctypes on the
  same device and queue (2-d, groups=1 only; CLBlast has no grouped variant).

numpy and torch run in a fresh interpreter (`Isolated`, benchmarks.host_peer) unless asked not to.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from clconv.tools.layer_spec import CONV_NAMES, Layer

__all__ = ["HOST_PEERS", "Isolated", "default_peers", "numpy_conv", "peer_runners", "to_host"]

HOST_PEERS = ("numpy", "torch", "torch-cuda", "convgemm")


def default_peers() -> tuple[str, ...]:
    """'direct', clconv's other algorithms, 'auto', then the peers outside clconv."""
    from clconv.ops.conv_select import ALGORITHMS

    algorithms = [a for a in ALGORITHMS if a not in ("auto", "direct")]
    return ("direct", *algorithms, "auto", *HOST_PEERS)


# The numpy peer

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



def numpy_conv(x: np.ndarray, w: np.ndarray, layer: Layer) -> np.ndarray:
    """The numpy peer: im2col + matmul in x's dtype (1-d to 3-d, any groups)."""
    return _conv_by_columns(x, w, layer)


# CLBlast's convgemm through ctypes

_CROSS_CORRELATION = 151  # CLBlastKernelModeCrossCorrelation in clblast_c.h


def _convgemm_function(prefix: str = "S") -> Callable[..., int] | str:
    """CLBlast{S,D,H}convgemm from the libclblast pyclblast uses, or why it is unavailable."""
    from clconv.blas import clblast as gemm

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


class Isolated:
    """A host peer (numpy, torch) timed in a fresh interpreter: thread pools of different
    libraries (OpenBLAS, torch's OpenMP, PoCL's workers) that spin-wait in one process were
    measured to slow each other down by up to 40x on 2 cores."""

    def __init__(self, peer: str) -> None:
        self.peer = peer


def peer_runners(dev: Any, layer: Layer, x: np.ndarray, w: np.ndarray, peers: Sequence[str],
                 isolate: bool = True) -> dict[str, Callable[[], Any] | Isolated | str]:
    """peer -> a function computing the layer's output as numpy, or why it cannot run."""
    import pyopencl.array as cla

    from clconv.ops import conv as ops

    conv = getattr(ops, CONV_NAMES[layer.nd])
    runners: dict[str, Callable[[], np.ndarray] | str] = {}
    xd = cla.to_device(dev.queue, x)
    wd = cla.to_device(dev.queue, w)
    from clconv.ops.conv_select import ALGORITHMS

    for peer in peers:
        if peer in ALGORITHMS:
            def run(a: str = peer) -> Any:
                with dev:
                    y = conv(xd, wd, **layer.conv_args(), algorithm=a)
                dev.queue.finish()
                return y
            runners[peer] = run
        elif peer == "numpy" and isolate:
            runners[peer] = Isolated(peer)
        elif peer == "numpy":
            runners[peer] = lambda: numpy_conv(x, w, layer)
        elif peer == "torch":
            try:
                import torch
            except ImportError:
                runners[peer] = "torch not installed"
                continue
            if isolate:
                runners[peer] = Isolated(peer)
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


def to_host(y: Any) -> np.ndarray:
    if hasattr(y, "cpu") and hasattr(y, "numpy"):  # a torch tensor, possibly on the GPU
        return y.cpu().numpy()
    return y.get() if hasattr(y, "get") and not isinstance(y, np.ndarray) else np.asarray(y)
