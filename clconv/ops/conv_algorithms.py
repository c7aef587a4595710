"""The forward convolution algorithms, each configured once for a geometry and then only run.

- `Direct`: loops, no GEMM (cl/conv_grouped.cl for groups of <= GROUPED_MAX_CIN input channels,
  e.g. depthwise; cl/conv_direct.cl otherwise). Bias and activation fused. No workspace.
- `Im2col`: cl/im2col.cl writes the column buffer, CLBlast's GEMM multiplies the filters
  (C_out/groups x C_in/groups * k) by it. When the workspace limit has room (`plan_columns`) a
  chunk's images lie side by side, (C_in * k) x (images * L), so that one GEMM (strided-batched over
  the groups) covers the chunk (the batch folded into the GEMM's N: measured 1.4-1.8x faster on PoCL
  than one strided-batched GEMM over the images), and cl/batch_epilogue.cl moves the staged
  (C_out, images * L) result into place with the bias and activation. Otherwise each chunk's GEMM
  writes the output directly (batched over the images or the groups) and cl/epilogue.cl adds bias
  and activation in place. 1x1 stride-1 unpadded convolutions use the input as the column matrix.
- `ImplicitGemm` ('implicit'): clconv's own packed GEMM micro-kernel (clconv.blas.packed) with
  the column panels gathered from the input into local memory and the filters read where they
  are: no column buffer, no packing pass. The fastest on
  CPUs (PoCL) by far; the kernel is shaped for CPUs (one work-item per tile, local size 1).
- `PackedIm2colGemm` ('im2col_packed'): im2col writing the packed panel layout, then the packed
  GEMM: the im2col design on clconv's engine instead of CLBlast's.
- `Winograd`: 2-d 3x3 stride-1 undilated convolutions by F(2x2, 3x3) (cl/winograd.cl): filter and
  input transforms, 16 * groups GEMMs in one strided-batched CLBlast call, output transform with bias
  and activation fused. Opt-in: an Inf/NaN input spreads over its tile.

Each class takes (dev, geo, dtype, has_bias, activation, limit, has_residual=False) (the residual,
an operand of the output's shape, is added in the same store as the bias, before the activation;
`run(x, w, b, out, residual=None)`) and raises MemoryError when its
workspace cannot fit in `limit` bytes; `run(x, w, b, out)` enqueues on contiguous device arrays
(offsets honoured) and takes dev.lock itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..blas import clblast as gemm
from ..runtime.device import Device
from ..runtime.memory import column_buffer
from ..runtime.transfer import element_offset, index_type
from .geometry import ConvGeometry
from ..blas import packed
from ..runtime.program import BoundKernel, kernel
from . import packed_conv
from .activation import ActivationArg
from .launch import (BatchEpilogue, DirectConv, Epilogue, Im2col, Winograd, epilogue_defines,
                     kernel_defines)

__all__ = ["ColumnPlan", "Direct", "Im2colGemm", "ImplicitGemm", "PackedIm2colGemm", "WinogradGemm",
           "WinogradPlan", "plan_columns",
           "plan_winograd", "winograd_tiles", "winograd_unsupported"]


def _offset(a: cla.Array | None) -> int:
    """Element offset of an optional operand (0 for None)."""
    return 0 if a is None else element_offset(a)


def _index_t(geo: ConvGeometry, workspace_elements: int = 0) -> str:
    """INDEX_T for every buffer a plan of `geo` touches: input, output, weight, workspace."""
    weight = geo.out_channels * geo.cin_per_group * geo.ksize
    return index_type(geo.batch * geo.in_channels * geo.in_spatial,
                      geo.batch * geo.out_channels * geo.out_spatial, weight, workspace_elements)


class Direct:
    """The direct loops for the whole batch (see the module doc)."""

    name = "direct"
    workspace_bytes = 0

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg, limit: int, has_residual: bool = False) -> None:
        self.dev, self.geo = dev, geo
        self.index_t = _index_t(geo)
        self.launch = DirectConv(dev, geo, dtype, self.index_t, has_bias, activation, has_residual)

    def run(self, x: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None = None) -> cl.Event | None:
        with self.dev.lock:
            return self.launch(self.geo.batch, x, element_offset(x), w, element_offset(w), b, out,
                               element_offset(out), residual)


@dataclass(frozen=True)
class ColumnPlan:
    """How the im2col path splits a call: `batch_chunk` images at a time and, within an image,
    `col_chunk` output positions at a time; `nbytes` is the column buffer that takes. `folded`:
    the chunk's images lie side by side in one column matrix (the batch folded into the GEMM's N)
    and the buffer also stages the GEMM's (C_out, batch_chunk * L) result."""

    batch_chunk: int
    col_chunk: int
    nbytes: int
    folded: bool = False


def plan_columns(geo: ConvGeometry, itemsize: int, limit: int) -> ColumnPlan:
    """The largest split of the column matrix whose buffer fits in `limit` bytes.

    Images are folded into the GEMM's N when the limit leaves room for that (columns plus the staged
    result, (C_in * prod(kernel) + C_out) * L values an image) for at least as many images at once
    as without folding; else each chunk's images get one strided-batched GEMM. Raises MemoryError
    when not even one column (C_in * prod(kernel) values) fits.
    """
    if geo.is_pointwise:  # the input is the column matrix: no buffer (folding measured no gain)
        return ColumnPlan(max(geo.batch, 1), geo.out_spatial, 0)
    column = geo.column_rows * itemsize
    image = column * geo.out_spatial
    folded = image + geo.out_channels * geo.out_spatial * itemsize  # + its staged GEMM result
    nb_folded = min(geo.batch, limit // folded)
    if nb_folded >= 2 and nb_folded >= min(geo.batch, limit // image):
        return ColumnPlan(nb_folded, geo.out_spatial, nb_folded * folded, folded=True)
    if image <= limit:
        nb = max(1, min(geo.batch, limit // image))
        return ColumnPlan(nb, geo.out_spatial, nb * image)
    if column > limit:
        raise MemoryError(f"workspace_limit={limit} bytes cannot hold even one column of the im2col "
                          f"matrix ({geo.column_rows} values = {column} bytes)")
    cols = limit // column
    return ColumnPlan(1, cols, cols * column)


class Im2colGemm:
    """im2col + CLBlast GEMM (+ epilogue) for the whole batch, split as `plan_columns` says."""

    name = "im2col"

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg, limit: int, has_residual: bool = False) -> None:
        gemm.require("algorithm='im2col'")
        self.dev, self.geo = dev, geo
        self.plan = plan_columns(geo, np.dtype(dtype).itemsize, limit)
        self.workspace_bytes = self.plan.nbytes
        self.folded = self.plan.folded and not geo.is_pointwise
        self.index_t = _index_t(geo, self.plan.nbytes // np.dtype(dtype).itemsize)
        self.dtype = np.dtype(dtype)
        self.im2col = None if geo.is_pointwise else Im2col(dev, geo.defines(), dtype, self.index_t)
        self.has_tail = has_bias or activation is not None or has_residual
        # Both epilogues are built even if this batch size needs one: whether a chunk is folded
        # depends on the batch, and a plan for another batch size of the layer must build nothing.
        self.batch_epilogue = (None if geo.is_pointwise else
                               BatchEpilogue(dev, dtype, self.index_t, has_bias, activation,
                                             has_residual))
        self.epilogue = (Epilogue(dev, dtype, self.index_t, has_bias, activation, has_residual)
                         if self.has_tail else None)

    def run(self, x: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None = None) -> None:
        geo, plan, dev = self.geo, self.plan, self.dev
        m, k, l = geo.cout_per_group, geo.cin_per_group * geo.ksize, geo.out_spatial
        rows, groups = geo.column_rows, geo.groups
        x_image, out_image = geo.in_channels * geo.in_spatial, geo.out_channels * l
        x_off, w_off, out_off = element_offset(x), element_offset(w), element_offset(out)
        with dev.lock:
            for n0 in range(0, geo.batch, plan.batch_chunk):
                nb = min(plan.batch_chunk, geo.batch - n0)
                if self.folded:
                    # The chunk's columns side by side, (rows, nb * l); one GEMM per group (batched
                    # over the groups) into the (C_out, nb * l) result staged after them.
                    n = nb * l
                    buf = column_buffer(dev, (rows * n + geo.out_channels * n,), self.dtype)
                    self.im2col(nb, x, x_off + n0 * x_image, buf, 0, 0, l, ld=n, batch_stride=l)
                    gemm.gemm(dev, m, n, k, w, w_off, m * k, buf, 0, k * n, buf, rows * n, m * n,
                              groups)
                    self.batch_epilogue(buf, rows * n, out, out_off + n0 * out_image, b, nb,
                                        geo.out_channels, l, residual,
                                        _offset(residual) + n0 * out_image)
                    continue
                for l0 in range(0, l, plan.col_chunk):
                    lc = min(plan.col_chunk, l - l0)
                    c_off = out_off + n0 * out_image + l0
                    if geo.is_pointwise:  # the input already is the column matrix (ld = l)
                        col, col_off, ldb, col_image = x, x_off + n0 * x_image + l0, l, x_image
                    else:
                        col = column_buffer(dev, (nb * rows * lc,), self.dtype)
                        col_off, ldb, col_image = 0, lc, rows * lc
                        self.im2col(nb, x, x_off + n0 * x_image, col, 0, l0, lc)
                    if nb == 1:  # one GEMM, batched over the groups
                        gemm.gemm(dev, m, lc, k, w, w_off, m * k, col, col_off, k * ldb,
                                  out, c_off, m * l, groups, ldb=ldb, ldc=l)
                    elif groups <= nb:
                        # One batched GEMM per group; the filters are shared by the batch.
                        for g in range(groups):
                            gemm.gemm(dev, m, lc, k, w, w_off + g * m * k, 0,
                                      col, col_off + g * k * ldb, col_image,
                                      out, c_off + g * m * l, out_image, nb, ldb=ldb, ldc=l)
                    else:  # more groups than images: one batched GEMM per image, over the groups
                        for i in range(nb):
                            gemm.gemm(dev, m, lc, k, w, w_off, m * k,
                                      col, col_off + i * col_image, k * ldb,
                                      out, c_off + i * out_image, m * l, groups, ldb=ldb, ldc=l)
            if self.epilogue is not None and not self.folded:
                self.epilogue(out, out_off, b, geo.batch, geo.out_channels, l, residual)


def winograd_unsupported(geo: ConvGeometry, dtype: Any = np.float32) -> str | None:
    """Why algorithm='winograd' cannot compute `geo`, or None when it can."""
    if geo.nd != 2:
        return f"it is implemented for 2-d convolutions only (this one is {geo.nd}-d)"
    if geo.kernel != (3, 3):
        return f"it needs a 3x3 kernel (the weight's is {'x'.join(map(str, geo.kernel))})"
    if geo.stride != (1, 1):
        return f"it needs stride 1 (got stride={geo.stride})"
    if geo.dilation != (1, 1):
        return f"it needs dilation 1 (got dilation={geo.dilation})"
    if np.dtype(dtype) == np.float16:
        return "its transformed tiles would be rounded to float16; use float32"
    return None


@dataclass(frozen=True)
class WinogradPlan:
    """How the Winograd path splits a call: `batch_chunk` images at a time and, within an image,
    `row_chunk` rows of 2x2 tiles at a time; `nbytes` is the workspace (filter transform U, input
    transform V and GEMM result M) that takes."""

    batch_chunk: int
    row_chunk: int
    nbytes: int


def winograd_tiles(geo: ConvGeometry) -> tuple[int, int]:
    """Rows and columns of 2x2 output tiles: (ceil(OH / 2), ceil(OW / 2))."""
    return (geo.out_size[0] + 1) // 2, (geo.out_size[1] + 1) // 2


def plan_winograd(geo: ConvGeometry, itemsize: int, limit: int) -> WinogradPlan:
    """The largest split of the Winograd workspace that fits in `limit` bytes.

    Raises MemoryError when not even one row of tiles fits beside the filter transform.
    """
    th, tw = winograd_tiles(geo)
    filters = 16 * geo.out_channels * geo.cin_per_group * itemsize
    tile = 16 * (geo.in_channels + geo.out_channels) * itemsize  # its V and M columns
    image = tile * th * tw
    if filters + image <= limit:
        nb = max(1, min(geo.batch, (limit - filters) // image))
        return WinogradPlan(nb, th, filters + nb * image)
    if filters + tile * tw > limit:
        raise MemoryError(f"workspace_limit={limit} bytes cannot hold the Winograd filter transform "
                          f"({filters} bytes) and one row of transformed tiles ({tile * tw} bytes)")
    rows = (limit - filters) // (tile * tw)
    return WinogradPlan(1, rows, filters + rows * tile * tw)


class WinogradGemm:
    """Winograd F(2x2, 3x3) (cl/winograd.cl + one strided-batched GEMM per chunk), split as
    `plan_winograd` says. `geo` must pass `winograd_unsupported`."""

    name = "winograd"

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg, limit: int, has_residual: bool = False) -> None:
        why = winograd_unsupported(geo, dtype)
        if why is not None:
            raise ValueError(f"algorithm='winograd' cannot compute this convolution: {why}; use "
                             f"algorithm='auto', 'im2col' or 'direct'")
        gemm.require("algorithm='winograd'")
        self.dev, self.geo, self.dtype = dev, geo, np.dtype(dtype)
        self.plan = plan_winograd(geo, self.dtype.itemsize, limit)
        self.workspace_bytes = self.plan.nbytes
        self.index_t = _index_t(geo, self.plan.nbytes // self.dtype.itemsize)
        self.launch = Winograd(dev, geo, dtype, self.index_t, has_bias, activation, has_residual)

    def run(self, x: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None = None) -> None:
        geo, plan, dev = self.geo, self.plan, self.dev
        th, tw = winograd_tiles(geo)
        cin_g, cout_g, cout = geo.cin_per_group, geo.cout_per_group, geo.out_channels
        x_image, out_image = geo.in_channels * geo.in_spatial, cout * geo.out_spatial
        x_off, w_off, out_off = element_offset(x), element_offset(w), element_offset(out)
        u_off = 0
        v_off = 16 * cout * cin_g  # U[16][C_out][C_in/groups] first, then each chunk's V and M
        with dev.lock:
            ws = column_buffer(dev, (plan.nbytes // self.dtype.itemsize,), self.dtype)
            self.launch.filters(w, w_off, ws, u_off)
            for n0 in range(0, geo.batch, plan.batch_chunk):
                nb = min(plan.batch_chunk, geo.batch - n0)
                for th0 in range(0, th, plan.row_chunk):
                    nth = min(plan.row_chunk, th - th0)
                    tiles = nb * nth * tw
                    m_off = v_off + 16 * geo.in_channels * tiles
                    self.launch.inputs(nb, x, x_off + n0 * x_image, ws, v_off, th0, nth, tw)
                    # M[e, g] (C_out/groups x tiles) = U[e, g] @ V[e, g] for the 16 * groups (e, g).
                    gemm.gemm(dev, cout_g, tiles, cin_g, ws, u_off, cout_g * cin_g, ws, v_off,
                              cin_g * tiles, ws, m_off, cout_g * tiles, 16 * geo.groups)
                    self.launch.outputs(nb, ws, m_off, b, out, out_off + n0 * out_image, th0, nth,
                                        tw, residual, _offset(residual) + n0 * out_image)


class _PackedGemmConv:
    """Shared by the two paths on clconv's packed GEMM engine (clconv.ops.packed_conv): for
    'im2col_packed' the filters are packed per group into the micro-kernel's A layout on each
    run, or once by `prepare` (a plan whose weights are constant passes that); 'implicit' reads
    them as given."""

    name = ""

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg, limit: int, has_residual: bool = False) -> None:
        self.dev, self.geo, self.dtype = dev, geo, np.dtype(dtype)
        self.activation = activation
        self.has_residual = has_residual
        self.limit = limit
        self.tile = packed_conv.conv_tile(dev, geo, self.dtype)

    def prepare(self, w: cla.Array) -> Any:
        """The packed filters of the contiguous device weight `w` (a PackedA)."""
        return packed_conv.pack_conv_weights(self.dev, self.geo, w, element_offset(w), self.tile)

    def run(self, x: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            prepared: Any = None, residual: cla.Array | None = None) -> None:
        packed_w = self.prepare(w) if prepared is None else prepared
        self._enqueue(x, packed_w, b, out, residual)

    def _enqueue(self, x: cla.Array, packed_w: Any, b: cla.Array | None, out: cla.Array,
                 residual: cla.Array | None = None) -> None:
        raise NotImplementedError


class ImplicitGemm(_PackedGemmConv):
    """The fused implicit-GEMM convolution (cl/conv_implicit.cl): no column buffer, each work-item
    gathers its column panel from the input into local memory and runs the packed micro-kernel
    (6x16 float8 tiles on AVX2) on it, reading the filters where they are (no packing pass);
    bias and activation fused into the store.

    Configured once: the kernel, the NDRanges and the local panel, so that a run is one enqueue
    (a few where the driver caps a work-item's loops) under one hold of dev.lock."""

    name = "implicit"
    workspace_bytes = 0
    prepare = None  # the filters are read as given: nothing to pack, even for constant weights

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg, limit: int, has_residual: bool = False,
                 flipped: bool = False) -> None:
        """flipped: `run`'s w is the filters of the stride-1 layer whose adjoint `geo` is
        (clconv.ops.adjoint_paths.forward_geometry), read in place as this convolution's flipped,
        per-group transposed ones (-D A_FLIPPED)."""
        super().__init__(dev, geo, dtype, has_bias, activation, limit, has_residual)
        tile, itemsize = self.tile, self.dtype.itemsize
        self.m, self.k = geo.cout_per_group, geo.cin_per_group * geo.ksize
        kc = packed_conv.implicit_chunk(dev, self.k, tile, itemsize)
        # Sizes and the chunk are arguments: one program per kernel size, stride and epilogue;
        # the residual is read when its buffer is not NULL (RESIDUAL_AT_RUN_TIME), so that a
        # layer with a residual add shares the program of one without.
        flip = {"A_FLIPPED": None} if flipped else {}
        defines = kernel_defines(geo.shape_defines(), self.dtype, _index_t(geo), **tile.defines(),
                                 RESIDUAL_AT_RUN_TIME=None, **flip)
        defines.update(epilogue_defines(has_bias, activation))
        self.conv = kernel(dev, "conv_implicit.cl", "conv_implicit", defines)
        self.panel = cl.LocalMemory(kc * tile.nr * itemsize)
        self.tail = cl.LocalMemory(kc * packed_conv.TAIL_DOT * itemsize)  # a narrow panel's columns
        self.tail_args = (np.int32(kc), *geo.size_args())
        self.launches = []
        for start, count in packed_conv.column_chunks(geo, tile, itemsize, None):
            mgroups, per_group = packed.grid(dev, tile, self.m, count, geo.groups)
            split = packed.tail_split(dev, tile, self.m, count, geo.groups, mgroups,
                                      packed_conv.narrow_last(tile, count) and not flipped)
            tasks = tile.b_panels(count) + split[1] - 1
            self.launches.append(((tasks, mgroups, geo.groups), np.int64(start),
                                  np.int64(count), np.int32(per_group),
                                  *(np.int32(v) for v in split)))
        # K's ranges [k_begin, k_end): all of K at once, except where the driver caps a
        # work-item's loop iterations (packed.k_ranges; counting the gather's loops a row and a
        # kernel offset), there at most a KC chunk a launch; launched in order after each other.
        nr = tile.nr
        self.k_ranges = packed.k_ranges(dev, tile, self.k, row_loops=2 * (4 * nr + 2),
                                        launch_loops=2 * geo.ksize * (3 * nr + 2), most=kc)
        # The plan's own kernel objects with what never changes set now (clconv.runtime.program.
        # BoundKernel): a run sets only the operands' buffers and offsets. A group's filters are
        # m * k values after the previous group's.
        self.bound_convs = [(global_size, BoundKernel(self.conv, (
            None, None, None, None, np.int64(self.m * self.k), None, None, start, count,
            per_group, *split, None, None, None, None, self.panel, self.tail, self.tail_args[0],
            np.int32(k0), np.int32(k1), *self.tail_args[1:]),
            (0, 1, 2, 3, 5, 6, 13, 14, 15, 16))) for global_size, start, count, per_group, *split
            in self.launches for k0, k1 in self.k_ranges]

    def run(self, x: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            prepared: Any = None, residual: cla.Array | None = None) -> cl.Event | None:
        """Enqueues the convolution (`prepared` is not used: nothing is packed); returns the last
        event."""
        geo, dev = self.geo, self.dev
        if geo.batch == 0:
            return None
        q = dev.queue
        bias_buf, b_off = (b.base_data, np.int64(element_offset(b))) if b is not None else \
            (out.base_data, np.int64(0))
        # The residual is laid out as the output: the kernel reads it at res_off + the element's
        # offset from out_off; a NULL buffer for none.
        res_buf, res_off = (residual.base_data, np.int64(element_offset(residual))) \
            if residual is not None else (None, np.int64(0))
        x_buf, x_off = x.base_data, element_offset(x)
        w_buf, w_off = w.base_data, element_offset(w)
        out_buf, out_off = out.base_data, element_offset(out)
        event = None
        with dev.lock:
            for global_size, conv in self.bound_convs:
                event = conv(q, global_size, (1, 1, 1), x_buf, x_off, w_buf, w_off, out_buf,
                             out_off, bias_buf, b_off, res_buf, res_off)
        return event


class PackedIm2colGemm(_PackedGemmConv):
    """im2col written straight in the packed GEMM's panel layout (cl/im2col_packed.cl), then the
    packed micro-kernel (cl/gemm_packed.cl), the batch folded into N, bias and activation fused,
    NCHW written directly. Workspace: the packed columns, split to fit the limit."""

    name = "im2col_packed"

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg, limit: int, has_residual: bool = False) -> None:
        super().__init__(dev, geo, dtype, has_bias, activation, limit, has_residual)
        whole = packed_conv.workspace_bytes(geo, self.dtype, packed_conv.IM2COL_PACKED, dev)
        self.workspace_bytes = min(whole, limit)
        # MemoryError if not even one panel fits
        packed_conv.column_chunks(geo, self.tile, self.dtype.itemsize, limit)

    def _enqueue(self, x: cla.Array, packed_w: Any, b: cla.Array | None, out: cla.Array,
                 residual: cla.Array | None = None) -> None:
        packed_conv.enqueue_im2col_packed_conv(self.dev, self.geo, x, element_offset(x), packed_w,
                                               b, out, element_offset(out), self.activation,
                                               workspace_limit=self.limit, residual=residual)
