"""algorithm='splitk': dense convolutions with few output positions and a long reduction (ResNet's
512 x 7x7 and 256 x 14x14 3x3 layers at batch 1) as im2col (cl/im2col.cl) + a GEMM split over K as
well as over output channels (cl/gemm_splitk.cl) + a reduction of the K slices that applies the
bias, residual and activation (cl/splitk_reduce.cl). Shaped for CPUs (local size 1).

Why: with N = 49 output positions the implicit GEMM has two column panels, each K x NR values
(4608 x 32 floats = 590 KB for 512 channels, more than a core's L2), re-read for every tile of
output channels. Slicing K keeps each work-item's slice of B in L2 and gives two cores several
work-items. Workspace: the column matrix (C_in * prod(kernel) x L an image) and the partial sums
(nsplit x C_out x L an image), on the device's column buffer. groups == 1 only.
"""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..blas import packed
from ..blas.engine import cpu_shaped
from ..runtime.device import Device
from ..runtime.memory import column_buffer
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import element_offset, index_type
from .activation import ActivationArg
from .geometry import ConvGeometry
from .launch import Im2col, epilogue_defines, kernel_defines
from .pointwise import tile_unsupported

__all__ = ["SplitK", "reduce_kernel", "split_of", "splitk_grid", "splitk_tile",
           "splitk_unsupported"]

_SLICE_BYTES = 192 * 1024  # a work-item's slice of B (K_s x its columns): inside a core's L2
_ITEMS_PER_CU = 4


def splitk_unsupported(geo: ConvGeometry, dtype: object, nr: int) -> str | None:
    """Why algorithm='splitk' cannot compute `geo` in `dtype` with column panels of `nr`, or
    None."""
    if geo.groups != 1:
        return f"it needs groups=1 (got groups={geo.groups})"
    return tile_unsupported(geo, dtype, nr)


def splitk_tile(dev: Device, geo: ConvGeometry, dtype: object) -> packed.Tile:
    """The register tile SplitK runs `geo` with (a float16 plan computes in float32)."""
    work = np.float32 if np.dtype(dtype) == np.float16 else dtype
    return packed.tile_for(dev, work, geo.out_channels, geo.batch * geo.out_spatial,
                           geo.cin_per_group * geo.ksize)


def split_of(k: int, columns: int, itemsize: int) -> tuple[int, int]:
    """(nsplit, kc): K cut into nsplit slices of kc rows (the last may be shorter), a slice of
    `columns` columns (kc x columns values) at most _SLICE_BYTES, or 256 rows at least."""
    most = max(256, _SLICE_BYTES // (columns * itemsize))
    nsplit = max(1, -(-k // most))
    kc = -(-k // nsplit)
    return -(-k // kc), kc


def reduce_kernel(dev: Device, dtype: np.dtype, has_bias: bool,
                  activation: ActivationArg) -> cl.Kernel:
    """cl/splitk_reduce.cl built with the epilogue's defines; it reads the residual where its
    buffer is not NULL (layers with and without one share the program)."""
    defines = precision_defines(dtype)
    defines.update(epilogue_defines(has_bias, activation), RESIDUAL_AT_RUN_TIME=None)
    return kernel(dev, "splitk_reduce.cl", "splitk_reduce", defines)


def splitk_grid(dev: Device, tile: packed.Tile, m: int, l: int, kc: int, nsplit: int, batch: int,
                itemsize: int) -> tuple[int, int, tuple[int, int, int]]:
    """(col_panels, panels_per_group, NDRange) of cl/gemm_splitk.cl for `batch` products of an
    M x K by a K x L matrix cut into `nsplit` K slices of `kc` rows."""
    # A work-item walks all of an image's column panels while their K slice fits the slice
    # budget (A is then read once); the rest of the parallelism comes from the K slices and
    # from splitting the tiles of A (packed.grid, counting one "panel" a slice).
    panels = tile.b_panels(l)
    col_panels = max(1, min(panels, _SLICE_BYTES // max(1, kc * tile.nr * itemsize)))
    if not cpu_shaped(dev):
        # Mesa's llvmpipe (rusticl) returned wrong sums when one work-item walked several
        # tiles over a long K slice (reproduced: 7 column panels of 8, K slice of 400; right
        # with 300; as in clconv.ops.pointwise); one tile a work-item there.
        col_panels = 1
    groups = -(-panels // col_panels)
    want = _ITEMS_PER_CU * max(1, dev.cl_device.max_compute_units)
    items = groups * batch * nsplit
    mpanels = tile.a_panels(m)
    mgroups = min(mpanels, max(1, -(-want // max(items, 1))))  # (an empty batch: no items)
    per_group = -(-mpanels // mgroups) if cpu_shaped(dev) else 1
    return col_panels, per_group, (groups, -(-mpanels // per_group), batch * nsplit)


class SplitK:
    """im2col + split-K GEMM + reduction for the whole batch (see the module doc). Raises ValueError
    when `splitk_unsupported` says why not, MemoryError when the workspace exceeds `limit`."""

    name = "splitk"

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg, limit: int, has_residual: bool = False, *,
                 flipped: bool = False) -> None:
        """flipped: `run`'s weight is the (C_in, C_out, *kernel) weight of the stride-1
        convolution whose adjoint `geo` is (clconv.ops.adjoint_paths.forward_geometry), read flipped
        and transposed by the GEMM itself (cl/gemm_splitk.cl's FLIP_KS) instead of `geo`'s own."""
        dtype = np.dtype(dtype)
        self.flipped = flipped
        m, k, l = geo.out_channels, geo.cin_per_group * geo.ksize, geo.out_spatial
        self.tile = splitk_tile(dev, geo, dtype)
        why = splitk_unsupported(geo, dtype, self.tile.nr)
        if why is not None:
            raise ValueError(f"algorithm='splitk' cannot compute this convolution: {why}; use "
                             f"algorithm='auto' or 'implicit'")
        self.dev, self.geo, self.dtype = dev, geo, dtype
        self.m, self.k, self.l = m, k, l
        self.nsplit, self.kc = split_of(k, self.tile.b_panels(l) * self.tile.nr, dtype.itemsize)
        if flipped:  # K slices of whole filters (the kernel reads each one's taps backwards)
            self.kc = -(-self.kc // geo.ksize) * geo.ksize
            self.nsplit = -(-k // self.kc)
        self.col_elems = geo.batch * k * l
        self.p_elems = geo.batch * self.nsplit * m * l
        self.workspace_bytes = (self.col_elems + self.p_elems) * dtype.itemsize
        if self.workspace_bytes > limit:
            raise MemoryError(f"workspace_limit={limit} bytes cannot hold algorithm='splitk''s "
                              f"columns and partial sums ({self.workspace_bytes} bytes)")
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial, geo.batch * m * l,
                             m * k, self.col_elems + self.p_elems)
        self.im2col = Im2col(dev, geo.defines(), dtype, index_t)
        gemm_defines = kernel_defines({}, dtype, index_t, **self.tile.defines())
        if flipped:
            gemm_defines["FLIP_KS"] = geo.ksize
        self.gemm = kernel(dev, "gemm_splitk.cl", "gemm_splitk", gemm_defines)
        self.reduce = reduce_kernel(dev, dtype, has_bias, activation)
        self.col_panels, self.per_group, self.gemm_range = splitk_grid(
            dev, self.tile, m, l, self.kc, self.nsplit, geo.batch, dtype.itemsize)

    @staticmethod
    def workspace_for(dev: Device, geo: ConvGeometry, dtype: object) -> int:
        """Bytes of column buffer a plan of `geo` takes: the columns and the partial sums."""
        dtype = np.dtype(dtype)
        m, k, l = geo.out_channels, geo.cin_per_group * geo.ksize, geo.out_spatial
        tile = splitk_tile(dev, geo, dtype)
        nsplit, _ = split_of(k, tile.b_panels(l) * tile.nr, dtype.itemsize)
        return geo.batch * (k * l + nsplit * m * l) * dtype.itemsize

    def run(self, x: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None = None) -> cl.Event | None:
        """Enqueues the convolution; returns its last kernel's event (None when empty)."""
        geo, dev = self.geo, self.dev
        if geo.batch == 0:
            return None
        b_buf, b_off = (out.base_data, 0) if b is None else (b.base_data, element_offset(b))
        r_buf, r_off = (None, 0) if residual is None else \
            (residual.base_data, element_offset(residual))
        m, k, l = self.m, self.k, self.l
        with dev.lock:
            ws = column_buffer(dev, (self.col_elems + self.p_elems,), self.dtype)
            self.im2col(geo.batch, x, element_offset(x), ws, 0)
            self.gemm(dev.queue, self.gemm_range, (1, 1, 1), w.base_data,
                      np.int64(element_offset(w)), np.int64(0), ws.base_data, np.int64(0), np.int64(k * l),
                      ws.base_data, np.int64(self.col_elems), np.int32(m), np.int32(k),
                      np.int32(l), np.int32(self.kc), np.int32(self.nsplit),
                      np.int32(self.per_group), np.int32(self.col_panels))
            return self.reduce(dev.queue, (l, m, geo.batch), None, ws.base_data,
                               np.int64(self.col_elems), np.int32(self.nsplit), out.base_data,
                               np.int64(element_offset(out)), b_buf, np.int64(b_off), r_buf,
                               np.int64(r_off))
