"""Weight-gradient paths without im2col (cl/conv_grad_paths.cl and the wgrad_*.cl kernels).

`grad.WeightGrad` (conv*d_weight) asks `weight_grad_route` at plan time for one of these, and
falls back to its im2col + GEMM code when it returns None (input gradients:
clconv.ops.adjoint_paths):

- `DepthwiseWeightGrad`: the weight gradient of a 2-d depthwise convolution, a reduction over the
  batch and the output rows per (channel, kernel row) with vector accumulators.
- `PackedWeightGrad`: the weight gradient of a dense 1-d / 2-d convolution on clconv's packed GEMM
  (PoCL): one GEMM over K = batch * output positions, both operands written straight into the
  micro-kernel's packed layouts (no im2col buffer, no transposed packing: measured 3.4 of the 3.9
  ms of ResNet-18's 64-channel 3x3 weight gradient on the old path).
- `ImplicitWeightGrad`: the same micro-kernel for layers of many output positions and C_in of a B
  panel or more, with neither operand packed (cl/wgrad_implicit.cl): G read in place, B from a
  channel-blocked copy of x instead of X^T packed (KH*KW times x's size: 9x for 3x3 layers).
- `SplitKWeightGrad`: the weight gradient of unpadded stride-1 1x1 layers on the split-K GEMM.
- `LocalGemmWeightGrad`: the weight gradient of 1x1 stride-1 layers of few positions in all on
  the packed micro-kernel in one launch, each work-item's B panel transposed from x into local
  memory (cl/wgrad_implicit.cl wg_gemm_1x1).
- `StemWeightGrad`: the weight gradient of layers with fewer input channels than a B panel
  (network stems), summed along output rows with vectors of G read in place (cl/wgrad_stem.cl):
  no GEMM operand packed.
"""


from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
from pyopencl import cltypes

from ..blas import packed
from ..blas.engine import cpu_shaped, gemm_engine
from ..runtime.device import Device
from ..runtime.memory import column_buffer
from ..runtime.program import kernel
from ..runtime.transfer import element_offset, index_type
from .adjoint_paths import SOURCE, float_work, is_depthwise_2d
from .geometry import ConvGeometry
from .launch import kernel_defines
from .splitk import reduce_kernel, split_of, splitk_grid

__all__ = [
    "DepthwiseWeightGrad",
    "ImplicitWeightGrad",
    "LocalGemmWeightGrad",
    "PackedWeightGrad",
    "SplitKWeightGrad",
    "StemWeightGrad",
    "weight_grad_route",
]

_SPLITK_MIN_POSITIONS = 256  # SplitKWeightGrad: positions an image (K) of at least one slice
# ImplicitWeightGrad from this many output positions (K) on: below it the scattered stores of its
# tiles cost more than packing X^T saves (measured, ResNet-18's 3x3 layers at batch 1, ms, packed
# -> implicit: K = 3136 1.08 -> 0.72, 784 0.54 -> 0.44 and 0.87 -> 0.68; 196 0.42 -> 0.49 and
# 0.73 -> 0.72; 49 0.41 -> 0.65 and 0.74 -> 1.67)
_IMPLICIT_WG_MIN_POSITIONS = 512

# LocalGemmWeightGrad's B panel (batch * positions x NR values) up to this many bytes
_LOCAL_WG_PANEL_BYTES = 64 * 1024

# StemWeightGrad up to this kernel width (KW + 1 vector registers an output channel of its tile)
_STEM_WG_MAX_KW = 11
# StemWeightGrad's work-items sum whole images while their G rows stay within this (L2: 1 MiB a
# core on the AVX-512 EPYC, 512 KiB on Zen 3), else one image each
_STEM_WG_CHUNK_BYTES = 256 * 1024


def _lifted_taps(geo: ConvGeometry) -> tuple[tuple[int, ...], ...]:
    """((kh, kw), (sh, sw), (dh, dw)) of a 1-d / 2-d layer, a 1-d one's lifted to 2-d (the row
    kernels of ImplicitWeightGrad and StemWeightGrad)."""
    lift = (1,) * (2 - geo.nd)
    return tuple(lift + t for t in (geo.kernel, geo.stride, geo.dilation))

def weight_grad_route(dev: Device, geo: ConvGeometry, dtype: np.dtype, limit: int
                      ) -> DepthwiseWeightGrad | SplitKWeightGrad | LocalGemmWeightGrad | \
        StemWeightGrad | ImplicitWeightGrad | PackedWeightGrad | None:
    """The fast path for `grad.WeightGrad(geo)`, or None (then im2col + GEMM)."""
    if not float_work(dtype):
        return None
    # One work-item of the depthwise kernel loops over the whole batch's output positions (times
    # the kernel's width): on a driver that silently ends long loops (Device.loop_limit: Mesa's
    # llvmpipe) such layers keep the GEMM path, which splits its K under the limit.
    limit_loops = getattr(dev, "loop_limit", None)
    if is_depthwise_2d(geo) and (limit_loops is None or
                                  2 * geo.batch * geo.out_spatial * geo.kernel[-1] < limit_loops):
        return DepthwiseWeightGrad(dev, geo, dtype)
    if LocalGemmWeightGrad.applies(dev, geo, dtype):
        return LocalGemmWeightGrad(dev, geo, dtype)
    if SplitKWeightGrad.applies(dev, geo, dtype) and \
            SplitKWeightGrad.workspace(dev, geo, dtype) <= limit:
        return SplitKWeightGrad(dev, geo, dtype)
    if StemWeightGrad.applies(dev, geo, dtype) and \
            StemWeightGrad.workspace(dev, geo, dtype) <= limit:
        return StemWeightGrad(dev, geo, dtype)
    if ImplicitWeightGrad.applies(dev, geo, dtype) and \
            ImplicitWeightGrad.workspace(dev, geo, dtype) <= limit:
        return ImplicitWeightGrad(dev, geo, dtype)
    # 1x1 stride-1 layers too: their old GEMM packs x transposed (MobileNetV2's: 1.0-1.45x).
    if (geo.groups == 1 and geo.nd <= 2 and geo.padding_mode == "zeros" and geo.batch > 0
            and gemm_engine(dev) is packed
            and PackedWeightGrad.workspace(dev, geo, dtype) <= limit
            and geo.batch * geo.out_spatial < 2**31 // max(geo.column_rows, geo.out_channels)):
        return PackedWeightGrad(dev, geo, dtype)
    return None

class DepthwiseWeightGrad:
    """out (C*m, 1, kh, kw) = the weight gradient of the 2-d depthwise convolution `geo` of x
    (N, C, H, W) with output gradient g (N, C*m, OH, OW), summed over the batch."""

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype) -> None:
        self.dev, self.geo = dev, geo
        self.workspace_bytes = 0
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                             geo.batch * geo.out_channels * geo.out_spatial)
        vw = 8 if geo.out_size[1] >= 16 else 4
        self.kernel = kernel(dev, SOURCE, "dw_weight_grad",
                             kernel_defines(geo.shape_defines(), dtype, index_t, VW=vw))
        self.size_args = geo.size_args()

    def run(self, x: cla.Array, g: cla.Array, out: cla.Array) -> None:
        geo, dev = self.geo, self.dev
        with dev.lock:
            self.kernel(dev.queue, (geo.out_channels, geo.kernel[0]), (1, 1), x.base_data,
                        np.int64(element_offset(x)), g.base_data, np.int64(element_offset(g)),
                        out.base_data, np.int64(element_offset(out)), np.int32(geo.batch),
                        *self.size_args)

_PACK_RUN = 256  # K rows each packing work-item writes (RUN of cl/conv_grad_paths.cl)


class SplitKWeightGrad:
    """out (C_out, C_in, 1, ...) = the weight gradient of an unpadded stride-1 1x1 convolution
    `geo` (dense): the sum over images of G_n (C_out x L) @ X_n^T (L x C_in), L positions, on
    cl/gemm_splitk.cl: G's rows read where they are (no packing pass over the output gradient,
    the large operand of MobileNetV2's expansions), X transposed first (`transpose_rows`), the
    long K (positions) cut into slices whose partial sums splitk_reduce adds, images included.
    Workspace: X^T and the partial sums."""

    @staticmethod
    def tile(dev: Device, dtype: np.dtype) -> packed.Tile:
        # 12 rows x one vector: C_in (the columns) may be as narrow as one vector.
        vw = packed.vector_width(dev, np.dtype(dtype))
        return packed.Tile(12, vw, vw)

    @staticmethod
    def applies(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> bool:
        """1x1, stride 1, unpadded, groups 1, on a CPU-shaped device, C_in at least one vector
        (the GEMM's columns), positions of one image past one K slice's minimum."""
        return (geo.is_pointwise and geo.groups == 1 and geo.batch > 0 and cpu_shaped(dev)
                and float_work(dtype) and geo.out_spatial >= _SPLITK_MIN_POSITIONS
                and geo.in_channels >= SplitKWeightGrad.tile(dev, dtype).nr
                and geo.batch * geo.out_spatial * max(geo.in_channels, geo.out_channels) < 2**31)

    @staticmethod
    def _split(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> tuple[int, int]:
        tile = SplitKWeightGrad.tile(dev, dtype)
        return split_of(geo.out_spatial, tile.b_panels(geo.in_channels) * tile.nr,
                        np.dtype(dtype).itemsize)

    @staticmethod
    def workspace(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> int:
        nsplit, _ = SplitKWeightGrad._split(dev, geo, dtype)
        return geo.batch * (geo.out_spatial * geo.in_channels + nsplit * geo.out_channels *
                            geo.in_channels) * np.dtype(dtype).itemsize

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype) -> None:
        self.dev, self.geo, self.dtype = dev, geo, np.dtype(dtype)
        self.m, self.k, self.l = geo.out_channels, geo.out_spatial, geo.in_channels
        tile = self.tile(dev, dtype)
        self.nsplit, self.kc = self._split(dev, geo, dtype)
        self.b_elems = geo.batch * self.k * self.l
        self.workspace_bytes = self.workspace(dev, geo, dtype)
        self.col_panels, self.per_group, self.gemm_range = splitk_grid(
            dev, tile, self.m, self.l, self.kc, self.nsplit, geo.batch, self.dtype.itemsize)
        index_t = index_type(geo.batch * self.k * max(self.l, self.m),
                             self.workspace_bytes // self.dtype.itemsize)
        self.transpose = kernel(dev, SOURCE, "transpose_rows", kernel_defines({}, dtype, index_t))
        self.t_range = (-(-self.k // 16), -(-self.l // 16), geo.batch)
        self.gemm = kernel(dev, "gemm_splitk.cl", "gemm_splitk",
                           kernel_defines({}, dtype, index_t, **tile.defines()))
        self.reduce = reduce_kernel(dev, self.dtype, False, None)

    def run(self, x: cla.Array, g: cla.Array, out: cla.Array) -> None:
        dev, geo = self.dev, self.geo
        m, k, l = self.m, self.k, self.l
        with dev.lock:
            work = column_buffer(dev, (self.workspace_bytes // self.dtype.itemsize,), self.dtype)
            w_off = element_offset(work)
            self.transpose(dev.queue, self.t_range, (1, 1, 1), x.base_data,
                           np.int64(element_offset(x)), work.base_data, np.int64(w_off),
                           np.int32(l), np.int64(k))
            self.gemm(dev.queue, self.gemm_range, (1, 1, 1), g.base_data,
                      np.int64(element_offset(g)), np.int64(m * k), work.base_data,
                      np.int64(w_off), np.int64(k * l), work.base_data,
                      np.int64(w_off + self.b_elems), np.int32(m), np.int32(k), np.int32(l),
                      np.int32(self.kc), np.int32(self.nsplit), np.int32(self.per_group),
                      np.int32(self.col_panels))
            # every image's K slices summed into the one weight gradient
            self.reduce(dev.queue, (l, m, 1), None, work.base_data,
                        np.int64(w_off + self.b_elems), np.int32(geo.batch * self.nsplit),
                        out.base_data, np.int64(element_offset(out)), out.base_data, np.int64(0),
                        None, np.int64(0))


class PackedWeightGrad:
    """out (C_out, C_in, *k) = the weight gradient of the dense convolution `geo` of x (N, C_in,
    *in_size) with output gradient g (N, C_out, *out_size): G (C_out x N*L) @ X^T (N*L x C_in*K)
    on clconv's packed micro-kernel, operands packed from x and g directly (cl/conv_grad_paths.cl
    wg_pack_g / wg_pack_x) into the device's column buffer (`workspace` bytes)."""

    @staticmethod
    def workspace(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> int:
        m, n, k = geo.out_channels, geo.column_rows, geo.batch * geo.out_spatial
        tile = packed.tile_for(dev, dtype, m, n, k)
        return (tile.packed_a_size(m, k) + tile.packed_b_size(n, k)) * np.dtype(dtype).itemsize

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype) -> None:
        self.dev, self.geo, self.dtype = dev, geo, np.dtype(dtype)
        self.m, self.n, self.k = geo.out_channels, geo.column_rows, geo.batch * geo.out_spatial
        self.tile = packed.tile_for(dev, dtype, self.m, self.n, self.k)
        self.a_size = self.tile.packed_a_size(self.m, self.k)
        self.b_size = self.tile.packed_b_size(self.n, self.k)
        self.workspace_bytes = (self.a_size + self.b_size) * self.dtype.itemsize
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                             geo.batch * geo.out_channels * geo.out_spatial)
        defines = kernel_defines(geo.shape_defines(), dtype, index_t, MR=self.tile.mr,
                                 NR=self.tile.nr, RUN=_PACK_RUN)
        self.pack_g = kernel(dev, SOURCE, "wg_pack_g", defines)
        self.pack_x = kernel(dev, SOURCE, "wg_pack_x", defines)
        self.size_args = geo.size_args()
        self.runs = -(-self.k // _PACK_RUN)

    def run(self, x: cla.Array, g: cla.Array, out: cla.Array) -> None:
        dev, geo, tile = self.dev, self.geo, self.tile
        with dev.lock:
            work = column_buffer(dev, (self.a_size + self.b_size,), self.dtype)
            w_off = element_offset(work)
            self.pack_g(dev.queue, (self.runs, tile.a_panels(self.m)), (1, 1), g.base_data,
                        np.int64(element_offset(g)), work.base_data, np.int64(w_off),
                        np.int32(self.m), np.int32(geo.out_spatial), np.int32(self.k))
            self.pack_x(dev.queue, (self.runs, tile.b_panels(self.n)), (1, 1), x.base_data,
                        np.int64(element_offset(x)), work.base_data,
                        np.int64(w_off + self.a_size), np.int32(self.n), np.int32(self.k),
                        *self.size_args)
            packed.enqueue_gemm(dev, tile, self.m, self.n, self.k, work, w_off, 0, work,
                                w_off + self.a_size, 0, out, element_offset(out), 0, self.n)


class ImplicitWeightGrad:
    """out (C_out, C_in, *k) = the weight gradient of the dense 1-d / 2-d convolution `geo` as
    `PackedWeightGrad` computes it (the same micro-kernel, the same order of sums), with neither
    operand packed (cl/wgrad_implicit.cl): G's rows read where they are, X^T's B panels read from
    a channel-blocked, zero-padded copy of x, about x's size (X^T is KH*KW times it). For C_in of
    at least one B panel (NR) that pads at most a quarter, K (batch * output positions) of
    _IMPLICIT_WG_MIN_POSITIONS or more; drivers without a loop cap (the K loop is one launch).
    Workspace: the copy of x."""

    @staticmethod
    def _layout(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> tuple[packed.Tile, int, int, int]:
        """(tile, cp_count, hp, wp): the GEMM's tile, channel blocks and padded rows / columns."""
        m, n, k = geo.out_channels, geo.column_rows, geo.batch * geo.out_spatial
        tile = packed.tile_for(dev, dtype, m, n, k)
        oh, ow = (1,) * (2 - geo.nd) + geo.out_size
        (kh, kw), (sh, sw), (dh, dw) = _lifted_taps(geo)
        return (tile, tile.b_panels(geo.in_channels), (oh - 1) * sh + (kh - 1) * dh + 1,
                (ow - 1) * sw + (kw - 1) * dw + 1)

    @staticmethod
    def applies(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> bool:
        if not (geo.groups == 1 and geo.nd <= 2 and geo.padding_mode == "zeros" and geo.batch > 0
                and float_work(dtype) and gemm_engine(dev) is packed
                and getattr(dev, "loop_limit", None) is None):
            return False
        tile, cp_count, hp, wp = ImplicitWeightGrad._layout(dev, geo, dtype)
        padded = cp_count * tile.nr
        return (geo.in_channels >= tile.nr and 4 * padded <= 5 * geo.in_channels
                and geo.batch * geo.out_spatial >= _IMPLICIT_WG_MIN_POSITIONS
                and geo.batch * geo.out_channels * geo.out_spatial < 2**31
                and geo.batch * padded * hp * wp < 2**31)

    @staticmethod
    def workspace(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> int:
        tile, cp_count, hp, wp = ImplicitWeightGrad._layout(dev, geo, dtype)
        return geo.batch * cp_count * hp * wp * tile.nr * np.dtype(dtype).itemsize

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype) -> None:
        self.dev, self.geo, self.dtype = dev, geo, np.dtype(dtype)
        self.tile, self.cp_count, self.hp, self.wp = self._layout(dev, geo, dtype)
        self.workspace_bytes = self.workspace(dev, geo, dtype)
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                             geo.batch * geo.out_channels * geo.out_spatial)
        # No geometry defines: one program for every layer of a tile and dtype.
        defines = kernel_defines({}, dtype, index_t, **packed.gemm_defines(self.tile, dtype))
        self.pack_xp = kernel(dev, "wgrad_implicit.cl", "wg_pack_xp", defines)
        self.gemm = kernel(dev, "wgrad_implicit.cl", "wg_gemm_xp", defines)
        self.size_args = geo.size_args()
        (kh, kw), (sh, sw), (dh, dw) = _lifted_taps(geo)
        self.taps = cltypes.make_int4(kh, kw, sh, sw)
        self.dil = cltypes.make_int2(dh, dw)
        b_panels = geo.ksize * self.cp_count
        mgroups, self.per_group = packed.grid(dev, self.tile, geo.out_channels,
                                              b_panels * self.tile.nr, 1)
        self.gemm_range = (b_panels, mgroups)

    def run(self, x: cla.Array, g: cla.Array, out: cla.Array) -> None:
        dev, geo = self.dev, self.geo
        with dev.lock:
            work = column_buffer(dev, (self.workspace_bytes // self.dtype.itemsize,), self.dtype)
            xp_off = np.int64(element_offset(work))
            self.pack_xp(dev.queue, (self.hp, geo.batch * self.cp_count), (1, 1), x.base_data,
                         np.int64(element_offset(x)), work.base_data, xp_off,
                         np.int32(self.hp), np.int32(self.wp), np.int32(self.cp_count),
                         *self.size_args)
            self.gemm(dev.queue, self.gemm_range, (1, 1), g.base_data,
                      np.int64(element_offset(g)), work.base_data, xp_off, out.base_data,
                      np.int64(element_offset(out)), np.int32(geo.batch), np.int32(self.hp),
                      np.int32(self.wp), np.int32(self.cp_count), np.int32(self.per_group),
                      self.taps, self.dil, *self.size_args)


class LocalGemmWeightGrad:
    """out (C_out, C_in, 1, ...) = the weight gradient of a 1x1, stride-1, unpadded convolution
    `geo` (dense) on the packed micro-kernel in one launch (cl/wgrad_implicit.cl wg_gemm_1x1):
    each work-item copies its block of NR input channels transposed into local memory (the B
    panel, batch * L rows of NR values: ImplicitWeightGrad's channel-blocked copy, made by the
    work-item that reads it) and multiplies G's rows, read where they are, by it. For panels of
    at most _LOCAL_WG_PANEL_BYTES (batch * L * NR values), ahead of the split-K GEMM and in place
    of the sums along the positions that ran MobileNetV2's 14x14 layers. Measured against the
    path each layer had (2-core Zen 4, alternating blocks of 10 calls, medians of 11, ms):
    MobileNetV2's 1x1 layers at 7x7, batch 1, packed GEMM 0.18-0.31 -> 0.11-0.25 (1.24-1.68x), at
    batch 8 1.10-1.38x; at 14x14, batch 1, the row sums 0.87-1.21x (two of six slower: 192 -> 64
    0.074 -> 0.086), batch 2 1.35-1.61x; 16x16 layers at batch 1 against split-K 1.22-1.63x but
    32 -> 192 (one channel block) 0.84x. With AVX2's tiles (benchmarks/emulate_avx2.sh) 1.01-1.62x
    on all of those. Larger panels (batch 4 and 8 at 14x14) measured 0.91-1.79x against
    ImplicitWeightGrad: left to it. No workspace."""

    workspace_bytes = 0

    @staticmethod
    def applies(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> bool:
        if not (geo.groups == 1 and geo.ksize == 1 and set(geo.stride) == {1}
                and not any(geo.pad_lo) and not any(geo.pad_hi) and geo.batch > 0
                and geo.padding_mode == "zeros" and float_work(dtype)
                and gemm_engine(dev) is packed and getattr(dev, "loop_limit", None) is None):
            return False
        tile = LocalGemmWeightGrad._tile(dev, geo, dtype)
        rows = geo.batch * geo.out_spatial
        return (rows * tile.nr * np.dtype(dtype).itemsize <= _LOCAL_WG_PANEL_BYTES
                and rows * tile.nr * np.dtype(dtype).itemsize <= dev.cl_device.local_mem_size
                and geo.batch * max(geo.in_channels, geo.out_channels) * rows < 2**31)

    @staticmethod
    def _tile(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> packed.Tile:
        return packed.tile_for(dev, dtype, geo.out_channels, geo.in_channels,
                               geo.batch * geo.out_spatial)

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype) -> None:
        self.dev, self.geo, self.dtype = dev, geo, np.dtype(dtype)
        self.tile = self._tile(dev, geo, dtype)
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                             geo.batch * geo.out_channels * geo.out_spatial)
        self.kernel = kernel(dev, "wgrad_implicit.cl", "wg_gemm_1x1",
                             kernel_defines({}, dtype, index_t,
                                            **packed.gemm_defines(self.tile, dtype)))
        blocks = self.tile.b_panels(geo.in_channels)
        mgroups, per_group = packed.grid(dev, self.tile, geo.out_channels,
                                         blocks * self.tile.nr, 1)
        self.range = (blocks, mgroups)
        rows = geo.batch * geo.out_spatial
        self.args = (np.int32(geo.batch), np.int32(geo.in_channels),
                     np.int32(geo.out_channels), np.int32(geo.out_spatial), np.int32(per_group),
                     cl.LocalMemory(rows * self.tile.nr * self.dtype.itemsize))

    def run(self, x: cla.Array, g: cla.Array, out: cla.Array) -> None:
        dev = self.dev
        with dev.lock:
            self.kernel(dev.queue, self.range, (1, 1), g.base_data, np.int64(element_offset(g)),
                        x.base_data, np.int64(element_offset(x)), out.base_data,
                        np.int64(element_offset(out)), *self.args)


class StemWeightGrad:
    """out (C_out, C_in, *k) = the weight gradient of a dense 1-d / 2-d zero-padded convolution
    `geo` with few input channels (network stems), summed along output rows (cl/wgrad_stem.cl):
    VW output columns of G a vector, read in place, times the taps' inputs from a phase-split copy
    of x (x's size, in the workspace). A work-item holds CO_T output channels x the KW taps of one
    (ci, kh) in vector accumulators over a chunk of images (`chunk`: their G rows stay in L2; with
    several chunks, a dW each in the workspace, added by splitk_reduce). No GEMM operand is packed
    (ResNet-18's 3 -> 64 7x7 stem: packing X^T and G took 0.87 of the packed path's 1.75 ms).
    For C_in below one B panel of the packed GEMM (NR: there ImplicitWeightGrad's channel blocks
    would be mostly padding), output rows of at least one vector, KW <= _STEM_WG_MAX_KW, drivers
    without a loop cap (one work-item sums whole output planes). Unpadded stride-1 1x1 layers keep
    SplitKWeightGrad where it applies (measured faster: MobileNetV2's 16 -> 96 at 112x112, batch
    8, 1.8 against 4.9 ms)."""

    @staticmethod
    def _layout(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> tuple[int, int, int, int]:
        """(vw, hp, wq, sw): the vector width, the copy's rows and columns a phase, the phases."""
        (kh, kw), (sh, sw), (dh, dw) = _lifted_taps(geo)
        oh, ow = (1,) * (2 - geo.nd) + geo.out_size
        return (packed.vector_width(dev, np.dtype(dtype)), (oh - 1) * sh + (kh - 1) * dh + 1,
                ow + (kw - 1) * dw // sw, sw)

    @staticmethod
    def applies(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> bool:
        if not (geo.groups == 1 and geo.nd <= 2 and geo.padding_mode == "zeros" and geo.batch > 0
                and float_work(dtype) and gemm_engine(dev) is packed
                and getattr(dev, "loop_limit", None) is None
                and geo.kernel[-1] <= _STEM_WG_MAX_KW):
            return False
        vw, hp, wq, sw = StemWeightGrad._layout(dev, geo, dtype)
        nr = packed.tile_for(dev, dtype, geo.out_channels, geo.column_rows,
                             geo.batch * geo.out_spatial).nr
        return (geo.in_channels < nr and geo.out_size[-1] >= vw
                and geo.batch * geo.out_channels * geo.out_spatial < 2**31
                and geo.batch * geo.in_channels * sw * hp * wq < 2**31)

    @staticmethod
    def chunk(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> int:
        """Images a work-item sums: as many as keep its G rows (CO_T channels an image) within
        _STEM_WG_CHUNK_BYTES, at least one."""
        co_t = min(StemWeightGrad.channels_per_item(dev, dtype, geo.kernel[-1]),
                   geo.out_channels)
        per_image = co_t * geo.out_spatial * np.dtype(dtype).itemsize
        return max(1, min(geo.batch, _STEM_WG_CHUNK_BYTES // per_image))

    @staticmethod
    def workspace(dev: Device, geo: ConvGeometry, dtype: np.dtype) -> int:
        """The copy of x, and with more than one chunk of images a dW per chunk."""
        vw, hp, wq, sw = StemWeightGrad._layout(dev, geo, dtype)
        chunks = -(-geo.batch // StemWeightGrad.chunk(dev, geo, dtype))
        partials = geo.out_channels * geo.column_rows * chunks if chunks > 1 else 0
        return (geo.batch * geo.in_channels * sw * hp * wq + partials) * np.dtype(dtype).itemsize

    @staticmethod
    def channels_per_item(dev: Device, dtype: np.dtype, kw: int) -> int:
        """CO_T: the output channels a work-item's tile holds. Its CO_T * KW accumulators, CO_T
        vectors of G and one of x stay within the vector registers (32 with AVX-512's 64-byte
        vectors, else 16)."""
        vw = packed.vector_width(dev, np.dtype(dtype))
        registers = 32 if vw * np.dtype(dtype).itemsize >= 64 else 16
        return max(1, (registers - 1) // (kw + 1))

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype) -> None:
        self.dev, self.geo, self.dtype = dev, geo, np.dtype(dtype)
        self.vw, self.hp, self.wq, _ = self._layout(dev, geo, dtype)
        self.workspace_bytes = self.workspace(dev, geo, dtype)
        (kh, kw), (sh, sw), (dh, dw) = _lifted_taps(geo)
        co_t = min(self.channels_per_item(dev, dtype, kw), geo.out_channels)
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                             geo.batch * geo.out_channels * geo.out_spatial)
        # KW and CO_T bound the tile's loops; every other size is an argument.
        defines = kernel_defines({}, dtype, index_t, VW=self.vw, KW=kw, CO_T=co_t)
        self.phase_x = kernel(dev, "wgrad_stem.cl", "wg_phase_x", defines)
        self.sum_rows = kernel(dev, "wgrad_stem.cl", "wg_stem", defines)
        self.size_args = geo.size_args()
        self.sw = np.int32(sw)
        self.taps = cltypes.make_int4(kh, sh, sw, dh)
        self.dil_w = np.int32(dw)
        self.chunk = self.chunk(dev, geo, dtype)
        self.chunks = -(-geo.batch // self.chunk)
        self.range = (geo.in_channels * kh, -(-geo.out_channels // co_t), self.chunks)
        self.xq_size = geo.batch * geo.in_channels * sw * self.hp * self.wq
        self.dw_size = geo.out_channels * geo.column_rows
        if self.chunks > 1:
            self.reduce = reduce_kernel(dev, self.dtype, False, None)

    def run(self, x: cla.Array, g: cla.Array, out: cla.Array) -> None:
        dev, geo = self.dev, self.geo
        with dev.lock:
            work = column_buffer(dev, (self.workspace_bytes // self.dtype.itemsize,), self.dtype)
            xq_off = np.int64(element_offset(work))
            self.phase_x(dev.queue, (self.hp, geo.batch * geo.in_channels), (1, 1), x.base_data,
                         np.int64(element_offset(x)), work.base_data, xq_off, np.int32(self.hp),
                         np.int32(self.wq), self.sw, *self.size_args)
            if self.chunks == 1:
                dw_buf, dw_off = out.base_data, np.int64(element_offset(out))
            else:  # a dW per chunk after the copy of x, added up below
                dw_buf, dw_off = work.base_data, xq_off + self.xq_size
            self.sum_rows(dev.queue, self.range, (1, 1, 1), g.base_data,
                          np.int64(element_offset(g)), work.base_data, xq_off, dw_buf, dw_off,
                          np.int32(geo.batch), np.int32(self.chunk), np.int64(self.dw_size),
                          np.int32(self.hp), np.int32(self.wq), self.taps, self.dil_w,
                          *self.size_args)
            if self.chunks > 1:
                self.reduce(dev.queue, (geo.column_rows, geo.out_channels, 1), None, dw_buf,
                            dw_off, np.int32(self.chunks), out.base_data,
                            np.int64(element_offset(out)), out.base_data, np.int64(0), None,
                            np.int64(0))
