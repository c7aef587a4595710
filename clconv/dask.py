"""Convolutions of `dask.array` arrays: chunked n-d data across threads, processes and machines.

    import dask.array as da, clconv.dask
    x = da.from_zarr(...)                            # (N, C, D, H, W), any chunks
    y = clconv.dask.conv3d(x, w, b, padding=1)       # lazy dask array, exactly conv3d's result
    y.to_zarr(...)                                   # or y.compute()

Optional: `pip install clconv[dask]`; `import clconv` never imports this module.

How the graph is made (`conv1d/2d/3d(input, weight, bias, stride, padding, dilation, groups, *,
padding_mode, algorithm, activation, workspace_limit)`, `conv_transpose1d/2d/3d(input, weight,
bias, stride, padding, output_padding, groups, dilation)`: those of the functional ops, less
`residual`, `out` and `layout` (and the transposed ones' `activation`); weight and bias are
numpy arrays, CPU torch tensors or pyopencl arrays (copied to the host once)):
- the channel axis is made one chunk; chunks along the batch map block by block;
- a spatial axis of one chunk (and symmetric padding) is convolved by clconv itself, padding and
  `padding_mode` included; an axis cut into chunks gives output blocks aligned with the input's
  chunks (output j starts at padded position j * stride, so block boundaries sit on the stride) and
  each block is computed from its whole receptive field: the input range it needs, halo included,
  gathered from as many neighbouring chunks as it spans (so a chunk may be smaller than the halo),
  with the padding of the *image's* edges made there by index mapping (zeros, reflect = numpy's
  'reflect', replicate = 'edge', circular = 'wrap'), then a 'valid' convolution. Every output is
  thus computed from exactly the values the whole-array call uses: results equal that call within
  rounding (bitwise where the same algorithm runs on the same device).
- transposed convolutions: output blocks follow the input chunks times the stride; each block takes
  the input range that reaches it, runs an unpadded transposed convolution, keeps its part and adds
  the bias (positions no input reaches, from output_padding, get the bias alone).
- the weight and bias are one key each in the graph (sent to each worker once, not with every task).
- tasks call clconv's functional ops on the worker's current device: the default device, i.e.
  `CLCONV_DEVICE` of that worker process; `DevicePlugin` sets it per worker, round-robin over the
  machine's devices. Tasks are pure functions of their inputs, so a worker that dies has its tasks
  rerun by Dask elsewhere with the same result.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from itertools import product
from typing import Any

import dask.array as da
import numpy as np
import pyopencl.array as cla
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .ops import conv as _conv
from .ops import transpose as _transpose
from .ops.activation import normalize_activation
from .ops.conv_select import ALGORITHMS, algorithm_unsupported
from .ops.dims import per_dimensions
from .ops.geometry import IntOrTuple, PaddingArg, as_tuple, conv_geometry
from .runtime.device import ENV_VAR, Device, current_device, devices
from .runtime.interop import host_operand

try:  # distributed is part of the extra, but the threaded scheduler needs none of it
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - exercised only without distributed
    _WorkerPlugin = object  # type: ignore[assignment,misc]

__all__ = [
    "DevicePlugin",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
]

_CONV = {1: _conv.conv1d, 2: _conv.conv2d, 3: _conv.conv3d}
_TRANSPOSE = {1: _transpose.conv_transpose1d, 2: _transpose.conv_transpose2d,
              3: _transpose.conv_transpose3d}
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


# -- public API: conv1d/2d/3d and conv_transpose1d/2d/3d are made at the end of the module ------


class DevicePlugin(_WorkerPlugin):  # type: ignore[misc,valid-type]
    """A `distributed` worker plugin giving each worker process its own device.

        client.register_plugin(clconv.dask.DevicePlugin("gpu"))   # one worker per GPU

    devices: which devices to deal out: None (every usable device of the worker's machine), a
    kind ('gpu', 'cpu', 'accelerator'), or a list of specs as `clconv.device` takes them. Worker i
    of a machine gets candidate i mod len(candidates), and the plugin sets `CLCONV_DEVICE` (to
    'P:D') in the worker's process, which every clconv call there then uses. i is the trailing
    number of the worker's name (LocalCluster's 0, 1, ...; `dask worker --nworkers` names them
    NAME-0, NAME-1, ...), else of its address (its port), else its process id: name workers with
    trailing numbers for an even deal. env: extra environment variables set in the worker before
    its first OpenCL call (e.g. {'POCL_MAX_PTHREAD_COUNT': '1'}).
    """

    name = "clconv-device"

    def __init__(self, devices: str | Sequence[str | int] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.devices = devices
        self.env = dict(env or {})
        self.chosen: str | None = None

    def setup(self, worker: Any) -> None:
        os.environ.update(self.env)
        candidates = _candidates(self.devices)
        number = _worker_number(worker)
        dev = candidates[number % len(candidates)]
        self.chosen = f"{dev.platform_index}:{dev.device_index}"
        os.environ[ENV_VAR] = self.chosen


# -- forward convolutions ------------------------------------------------------------------------
def _convolution(nd: int, input: da.Array, weight: Any, bias: Any = None, stride: IntOrTuple = 1,
                 padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1, *,
                 padding_mode: str = "zeros", algorithm: str = "auto",
                 activation: str | None = None, workspace_limit: int | None = None) -> da.Array:
    """conv{nd}d of a dask array (the template of the public functions at the end)."""
    x, unbatched = _check_input(input, nd, f"conv{nd}d")
    w, b = _operands(x, weight, bias)
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    normalize_activation(activation)  # ValueError naming it for a bad one, before any work
    # The whole-array call's validation and sizes: the same errors as clconv.conv{nd}d.
    geo = conv_geometry(nd, x.shape, w.shape, stride, padding, dilation, groups, padding_mode)
    if b is not None and b.shape != (geo.out_channels,):
        raise ValueError(f"bias must have shape ({geo.out_channels},) (one per output channel), "
                         f"got {b.shape}")
    x = x.rechunk({1: -1}) if x.numblocks[1] > 1 else x
    spatial = x.chunks[2:]
    native = all(len(c) == 1 for c in spatial) and geo.pad_lo == geo.pad_hi
    common = dict(stride=geo.stride, dilation=geo.dilation, groups=geo.groups,
                  algorithm=algorithm, activation=activation, workspace_limit=workspace_limit)
    if native:  # no spatial cut: clconv pads and convolves each batch block itself
        kwargs = dict(common, padding=geo.pad_lo, padding_mode=geo.padding_mode)
        plans = [[((0, 0), None)] for _ in range(nd)]
        out_chunks = [(o,) for o in geo.out_size]
    else:  # 'valid' convolutions of gathered receptive fields, padded at the image's edges
        kwargs = dict(common, padding=0, padding_mode="zeros")
        plans, out_chunks = [], []
        for d in range(nd):
            p, c = _forward_axis(spatial[d], geo.in_size[d], geo.kernel[d], geo.stride[d],
                                 geo.dilation[d], geo.pad_lo[d], geo.out_size[d], geo.padding_mode)
            plans.append(p)
            out_chunks.append(c)
    if algorithm != "auto":  # (each block is a convolution of its own sizes: refused now)
        _check_blocks(nd, x, w, geo, algorithm, None if native else out_chunks)
    args = tuple(sorted(kwargs.items()))
    y = _build(f"clconv-conv{nd}d", x, w, b, plans, out_chunks, geo.out_channels,
               lambda blocks: (_conv_block, nd, args))
    return y[0] if unbatched else y


def _check_blocks(nd: int, x: da.Array, w: Any, geo: Any, algorithm: str,
                  out_chunks: list[tuple[int, ...]] | None) -> None:
    """ValueError, when the graph is built, where the named algorithm cannot compute a block's
    convolution (the whole array's with `out_chunks` None: no spatial cut; else each distinct
    block's 'valid' convolution of its receptive field) on the current device: at compute()
    its message named a block's sizes, not the chunking."""
    batch = max(x.chunks[0])
    # (the whole array's first: what no chunking changes is not put down to the chunking)
    blocks = [(geo, False)]
    if out_chunks is not None:
        reach = [d * (k - 1) + 1 for d, k in zip(geo.dilation, geo.kernel)]
        blocks += [(conv_geometry(nd, (batch, x.shape[1], *(
            (o - 1) * s + r for o, s, r in zip(outs, geo.stride, reach))), w.shape, geo.stride,
            0, geo.dilation, geo.groups), True) for outs in product(*map(set, out_chunks))]
    for block, cut in blocks:
        why = algorithm_unsupported(current_device(), block, algorithm, x.dtype)
        if why is not None:
            where = "" if not cut else \
                f" (a block of output size {block.out_size} of this spatial chunking)"
            raise ValueError(f"algorithm={algorithm!r} cannot compute this convolution"
                             f"{where}: {why}; " + ("rechunk the spatial dims (chunks={2: -1, "
                             "...}) or use algorithm='auto'" if cut else "use algorithm='auto'"))


def _forward_axis(chunks: Sequence[int], n: int, k: int, s: int, dl: int, lo: int, o: int,
                  mode: str) -> tuple[list[tuple[tuple[int, int], Any]], tuple[int, ...]]:
    """Output blocks of one spatial axis and, for each, the source chunks it reads and the input
    indices (-1: a zero) that make its padded receptive field."""
    reach = dl * (k - 1) + 1
    bounds = np.cumsum((0, *chunks))
    cuts = sorted({0, o, *(min(o, max(0, -(-(int(c) + lo) // s))) for c in bounds[1:-1])})
    plans, sizes = [], []
    for j0, j1 in zip(cuts[:-1], cuts[1:]):
        pos = np.arange(j0 * s, (j1 - 1) * s + reach) - lo  # input coordinates, padding outside
        plans.append(_source(bounds, _pad_index(pos, n, mode)))
        sizes.append(j1 - j0)
    return plans, tuple(sizes)


def _pad_index(pos: np.ndarray, n: int, mode: str) -> np.ndarray:
    """The input index each (possibly out-of-range) position reads under padding_mode; -1 = 0."""
    if mode == "zeros":
        return np.where((pos >= 0) & (pos < n), pos, -1)
    if mode == "reflect":  # torch's reflect (numpy 'reflect'): the edge is not repeated
        period = 2 * (n - 1)
        if period == 0:
            return np.zeros_like(pos)
        r = np.mod(pos, period)
        return np.where(r < n, r, period - r)
    if mode == "replicate":
        return np.clip(pos, 0, n - 1)
    return np.mod(pos, n)  # circular


def _source(bounds: np.ndarray, idx: np.ndarray) -> tuple[tuple[int, int], Any]:
    """(first, last + 1) source chunk and how to index their concatenation: a slice (start, stop)
    when idx is a run of consecutive indices, else (local indices, mask of zeros or None)."""
    valid = idx >= 0
    if not valid.any():  # all padding: read chunk 0 and zero it
        return (0, 1), (np.zeros(len(idx), np.int64), ~valid)
    lo_i, hi_i = int(idx[valid].min()), int(idx[valid].max())
    first = int(np.searchsorted(bounds, lo_i, side="right")) - 1
    last = int(np.searchsorted(bounds, hi_i, side="right")) - 1
    base = int(bounds[first])
    if valid.all() and (len(idx) == 1 or (np.diff(idx) == 1).all()):
        return (first, last + 1), (int(idx[0]) - base, int(idx[-1]) + 1 - base)
    return (first, last + 1), (np.where(valid, idx - base, 0), None if valid.all() else ~valid)


# -- transposed convolutions -----------------------------------------------------------------------
def _transposed(nd: int, input: da.Array, weight: Any, bias: Any = None, stride: IntOrTuple = 1,
                padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1,
                dilation: IntOrTuple = 1) -> da.Array:
    """conv_transpose{nd}d of a dask array (the template of the public functions at the end)."""
    x, unbatched = _check_input(input, nd, f"conv_transpose{nd}d")
    w, b = _operands(x, weight, bias)
    geo = _transpose.transpose_geometry(nd, x.shape, w.shape, stride, padding, output_padding,
                                        groups, dilation)
    c_out = geo.in_channels  # geo is the forward convolution this op is the adjoint of
    if b is not None and b.shape != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},) (one per output channel), got {b.shape}")
    pad = as_tuple(padding, nd, "padding", 0)
    x = x.rechunk({1: -1}) if x.numblocks[1] > 1 else x
    spatial = x.chunks[2:]
    if all(len(c) == 1 for c in spatial):
        kwargs = dict(stride=geo.stride, padding=pad, dilation=geo.dilation, groups=geo.groups,
                      output_padding=as_tuple(output_padding, nd, "output_padding", 0))
        plans = [[((0, 0), None)] for _ in range(nd)]
        out_chunks = [(o,) for o in geo.in_size]
        args = tuple(sorted(kwargs.items()))

        def task(blocks: tuple[int, ...]) -> tuple[Any, ...]:
            return (_transpose_block, nd, args, None, None)
    else:
        plans, out_chunks, crops = [], [], []
        for d in range(nd):
            p, c, crop = _transpose_axis(spatial[d], geo.out_size[d], geo.kernel[d], geo.stride[d],
                                         geo.dilation[d], pad[d], geo.in_size[d])
            plans.append(p)
            out_chunks.append(c)
            crops.append(crop)
        kwargs = dict(stride=geo.stride, padding=0, dilation=geo.dilation, groups=geo.groups)
        args = tuple(sorted(kwargs.items()))

        def task(blocks: tuple[int, ...]) -> tuple[Any, ...]:
            return (_transpose_block, nd, args, tuple(crops[d][i] for d, i in enumerate(blocks)),
                    tuple(out_chunks[d][i] for d, i in enumerate(blocks)))
    y = _build(f"clconv-conv_transpose{nd}d", x, w, b, plans, out_chunks, c_out, task)
    return y[0] if unbatched else y


def _transpose_axis(chunks: Sequence[int], n: int, k: int, s: int, dl: int, p: int,
                    o: int) -> tuple[list[Any], tuple[int, ...], list[Any]]:
    """Output blocks of one axis of a transposed convolution: their source input range and where
    the unpadded local result lands (local start, local stop, block offset), or None when no
    input reaches the block."""
    if o == 0:  # an empty output axis (torch's empty result): one block of size 0
        return [((0, 1), (0, 1))], (0,), [None]
    bounds = np.cumsum((0, *chunks))
    cuts = sorted({0, o, *(min(o, max(0, int(c) * s - p)) for c in bounds[1:-1])})
    plans, sizes, crops = [], [], []
    for j0, j1 in zip(cuts[:-1], cuts[1:]):
        # inputs i reach outputs i*s - p + t*dl, t in [0, k): those that land in [j0, j1)
        i0 = max(0, -(-(j0 + p - dl * (k - 1)) // s))
        i1 = min(n - 1, (j1 - 1 + p) // s)
        if i0 > i1:
            plans.append(((0, 1), (0, 1)))
            crops.append(None)
        else:
            plans.append(_source(bounds, np.arange(i0, i1 + 1)))
            full = (i1 - i0) * s + dl * (k - 1) + 1  # the unpadded local output's length
            origin = i0 * s - p                       # its first position in the global output
            lo, hi = max(j0, origin), min(j1, origin + full)
            crops.append((lo - origin, hi - origin, lo - j0))
        sizes.append(j1 - j0)
    return plans, tuple(sizes), crops


# -- graph -----------------------------------------------------------------------------------------
def _check_input(x: Any, nd: int, name: str) -> tuple[da.Array, bool]:
    if not isinstance(x, da.Array):
        raise TypeError(f"clconv.dask.{name} takes a dask.array.Array input, got "
                        f"{type(x).__name__}; wrap numpy data with dask.array.from_array(x, "
                        f"chunks=...) or call clconv.{name}")
    if any(math.isnan(c) for cs in x.chunks for c in cs):
        raise ValueError(f"{name}: the input's chunk sizes are unknown; call "
                         f"x.compute_chunk_sizes() first")
    if x.ndim not in (nd + 1, nd + 2):
        raise ValueError(f"input must be {nd + 1}-d (unbatched) or {nd + 2}-d (N, C, *spatial) "
                         f"for {name}, got shape {x.shape}")
    unbatched = x.ndim == nd + 1
    return (x[None] if unbatched else x), unbatched


def _operands(x: da.Array, weight: Any, bias: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The weight and bias as numpy arrays (torch CPU tensors as views, pyopencl arrays copied;
    the functional ops' TypeError for lists, scalars and tensors that require grad)."""
    def host(a: Any, name: str) -> np.ndarray:
        a = host_operand(a, name)
        return a.get() if isinstance(a, cla.Array) else np.asarray(a)

    w = host(weight, "weight")
    b = None if bias is None else host(bias, "bias")
    named = {"input": np.dtype(x.dtype), "weight": w.dtype}
    if b is not None:
        named["bias"] = b.dtype
    for name, dt in named.items():
        if dt not in _FLOATS:
            raise TypeError(f"{name} has dtype {dt}; clconv computes in float16, float32 or "
                            f"float64 (convert with .astype(np.float32))")
    if len(set(named.values())) > 1:
        listed = ", ".join(f"{n}: {d}" for n, d in named.items())
        raise TypeError(f"mixed dtypes ({listed}); all operands must have the same dtype")
    return w, b


def _build(prefix: str, x: da.Array, w: np.ndarray, b: np.ndarray | None,
           plans: list[list[tuple[tuple[int, int], Any]]], out_chunks: list[tuple[int, ...]],
           c_out: int, task: Callable[[tuple[int, ...]], tuple[Any, ...]]) -> da.Array:
    """The output array: one task per (batch chunk, output block), reading the source chunks of
    its plan and the single weight / bias keys; task(blocks) gives the block's function and its
    trailing arguments."""
    token = tokenize(x.name, w, b, plans, out_chunks, [task(bl) for bl in
                                                         product(*(range(len(p)) for p in plans))])
    name = f"{prefix}-{token}"
    w_key = f"clconv-weight-{tokenize(w)}"
    layer: dict[Any, Any] = {w_key: w}
    b_key = None
    if b is not None:
        b_key = f"clconv-bias-{tokenize(b)}"
        layer[b_key] = b
    nd = len(plans)
    for bi in range(x.numblocks[0]):
        for blocks in product(*(range(len(p)) for p in plans)):
            entries = [plans[d][blocks[d]] for d in range(nd)]
            ranges = [range(*e[0]) if e[1] is not None else range(1) for e in entries]
            sources = _nested(x.name, bi, ranges)
            index = tuple(e[1] for e in entries)
            fn, *extra = task(blocks)
            layer[(name, bi, 0, *blocks)] = (fn, sources, index, w_key, b_key, *extra)
    chunks = (x.chunks[0], (c_out,), *out_chunks)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[x])
    return da.Array(graph, name, chunks, meta=np.empty((0,) * x.ndim, x.dtype))


def _nested(xname: str, bi: int, ranges: list[range]) -> Any:
    """Nested lists of source keys (one level per spatial dim) for np.block."""
    if all(len(r) == 1 for r in ranges):  # one chunk: the key itself, no copy by np.block
        return (xname, bi, 0, *(r[0] for r in ranges))

    def level(prefix: tuple[int, ...], d: int) -> Any:
        if d == len(ranges):
            return (xname, bi, 0, *prefix)
        return [level((*prefix, c), d + 1) for c in ranges[d]]
    return level((), 0)


def _assemble(sources: Any, index: tuple[Any, ...]) -> np.ndarray:
    """The block's input: the source chunks joined, then each axis sliced or index-mapped."""
    a = np.block(sources) if isinstance(sources, list) else sources
    for d, spec in enumerate(index):
        axis = 2 + d
        if spec is None:
            continue
        if isinstance(spec[0], int):
            a = a[(slice(None),) * axis + (slice(spec[0], spec[1]),)]
        else:
            local, zeros = spec
            a = np.take(a, local, axis=axis)
            if zeros is not None:
                a[(slice(None),) * axis + (zeros,)] = 0
    return a


def _conv_block(sources: Any, index: tuple[Any, ...], w: np.ndarray, b: np.ndarray | None,
                nd: int, kwargs: tuple[tuple[str, Any], ...]) -> np.ndarray:
    """One output block of a forward convolution (runs in a worker, on its current device)."""
    return _CONV[nd](_assemble(sources, index), w, b, **dict(kwargs))


def _transpose_block(sources: Any, index: tuple[Any, ...], w: np.ndarray, b: np.ndarray | None,
                     nd: int, kwargs: tuple[tuple[str, Any], ...], crops: tuple[Any, ...] | None,
                     sizes: tuple[int, ...] | None) -> np.ndarray:
    """One output block of a transposed convolution. crops None: the whole axes, clconv's own call;
    else per axis (local start, local stop, offset in the block) of the unpadded local result
    (None: no input reaches the block, which holds the bias alone)."""
    x = _assemble(sources, index)
    if crops is None:
        return _TRANSPOSE[nd](x, w, b, **dict(kwargs))
    groups = dict(kwargs)["groups"]
    out = np.zeros((x.shape[0], w.shape[1] * groups, *sizes), x.dtype)
    if all(c is not None for c in crops):
        local = _TRANSPOSE[nd](x, w, None, **dict(kwargs))
        keep = tuple(slice(c[0], c[1]) for c in crops)
        into = tuple(slice(c[2], c[2] + c[1] - c[0]) for c in crops)
        out[(slice(None), slice(None), *into)] = local[(slice(None), slice(None), *keep)]
    if b is not None:
        out += b.reshape(-1, *(1,) * nd)
    return out


def _worker_number(worker: Any) -> int:
    """Which worker of its machine this is (see DevicePlugin): the trailing number of the worker's
    name (LocalCluster's 0, 1, ...; `--nworkers`' NAME-0, NAME-1, ...), else of its address (the
    port, when the name is the address), else the worker's process id. Nothing is shared between
    workers, so two processes never wait on each other or on a file."""
    for text in (getattr(worker, "name", None), getattr(worker, "address", None)):
        found = re.search(r"(\d+)$", "" if text is None else str(text))  # LocalCluster's name 0
        if found:
            return int(found.group(1))
    return os.getpid()


def _candidates(spec: str | Sequence[str | int] | None) -> list[Device]:
    from .runtime.device import device

    if spec is None:
        found = [d for d in devices() if d.usable]
    elif isinstance(spec, str) and spec in ("gpu", "cpu", "accelerator"):
        found = [d for d in devices() if d.kind == spec and d.usable]
    else:
        found = [device(s) for s in ([spec] if isinstance(spec, (str, int)) else spec)]
    if not found:
        raise LookupError(f"DevicePlugin({spec!r}): no usable OpenCL device on this worker's "
                          f"machine")
    return found


conv1d, conv2d, conv3d = per_dimensions(
    _convolution, ("conv1d", "conv2d", "conv3d"),
    ("""`clconv.conv1d` of a dask array (N, C_in, L) or (C_in, L) -> lazy (N, C_out, L_out).""",
     """`clconv.conv2d` of a dask array: input (N, C_in, H, W) or (C_in, H, W), any chunks; weight
    (C_out, C_in/groups, kh, kw) and bias (C_out,) numpy. Returns a lazy (N, C_out, H_out, W_out)
    dask array, chunked like the input along the batch and (divided by the stride) along space,
    with C_out in one chunk; see the module doc.""",
     """`clconv.conv3d` of a dask array (N, C_in, D, H, W) or unbatched; as `conv2d`."""))

conv_transpose1d, conv_transpose2d, conv_transpose3d = per_dimensions(
    _transposed, ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d"),
    ("""`clconv.conv_transpose1d` of a dask array; as `conv_transpose2d`.""",
     """`clconv.conv_transpose2d` of a dask array (N, C_in, H, W) or unbatched; weight (C_in,
    C_out/groups, kh, kw) numpy. Returns a lazy (N, C_out, H_out, W_out) dask array whose spatial
    chunks are the input's times the stride.""",
     """`clconv.conv_transpose3d` of a dask array; as `conv_transpose2d`."""))
