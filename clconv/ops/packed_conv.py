"""Convolutions on the packed GEMM engine (clconv.blas.packed): two paths for CPU-like devices.

- im2col into packed panels (`enqueue_im2col_packed_conv`): cl/im2col_packed.cl writes each
  group's column matrix (C_in/groups * prod(kernel) x images * L) straight in the micro-kernel's
  packed B layout (no separate packing pass), then cl/gemm_packed.cl multiplies the packed filters
  by it, one GEMM strided-batched over the groups, with the bias and activation fused into the store
  of C and the result written directly in NCHW (the images are folded into the GEMM's N: a B panel
  may straddle two images, its columns' output offsets say where each goes). Workspace: the packed
  columns.
- implicit GEMM (configured and run by clconv.ops.conv_algorithms.ImplicitGemm, algorithm=
  'implicit'; `conv_tile` and `implicit_chunk` here): cl/conv_implicit.cl, no column buffer at
  all: each work-item gathers its K x NR panel of the column matrix from the input into local
  memory and runs the same micro-kernel on it, reading the filters where they are (no packing);
  a last panel of at most TAIL_DOT columns runs as dot products along K instead (`narrow_last`).
  Workspace: none (the output only).

Both keep every PyTorch semantic of the other paths (padding modes through common.cl's source_coord,
stride, dilation, groups, 1-d/2-d/3-d through the canonical 3-D defines, NaN/Inf: no fast-math, the
zero padding of the packs never reaches a stored element). The im2col path's filters are packed
by `pack_conv_weights` (a plan keeps the `PackedA` while the weights are unchanged).
Sizes are kernel arguments (the batch, the column range, and through `ConvGeometry.size_args` the
channels, input and output sizes and padding): a program per kernel size, stride, tile and epilogue
serves every layer.
"""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..blas import packed
from ..blas.packed import PackedA, Tile
from ..runtime.device import Device, current_device
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import element_offset, index_type
from .activation import ActivationArg
from .geometry import ConvGeometry

__all__ = [
    "IM2COL_PACKED",
    "IMPLICIT",
    "PANEL_BUDGET",
    "TAIL_DOT",
    "conv_tile",
    "enqueue_im2col_packed_conv",
    "implicit_chunk",
    "narrow_last",
    "pack_conv_weights",
    "workspace_bytes",
]

IM2COL_PACKED = "im2col_packed"
IMPLICIT = "implicit"
_ROWS_PER_ITEM = 64  # rows of the packed column matrix one im2col_packed work-item writes
PANEL_BUDGET = 256 * 1024  # bytes of local memory an implicit-GEMM panel may take (half Zen's L2)
TAIL_DOT = 4  # cl/conv_implicit.cl's: a panel of at most this many columns runs as dot products


def conv_tile(dev: Device, geo: ConvGeometry, dtype: object) -> Tile:
    """The register tile of `geo`'s per-group GEMM: (C_out/g) x (C_in/g * k) @ (... x N * L).

    packed.tile_for's, except for float on 16-lane devices (AVX-512: 32 vector registers):
    - K >= 256, where 16 rows pad C_out/g at most 5% more than 6 do: 16 x 16, 16 accumulators, one
      vector of B and 16 broadcasts a k step;
    - K < 256 (the stems), where 8 rows pad no more than 6: 8 x 32, 16 accumulators.
    Measured against 6 x 32 ('implicit', both built in one process, alternating blocks of 5
    calls, medians; 2-core AMD EPYC AVX-512, PoCL 3.1, threads pinned), ResNet-18's 3x3 layers at
    batch 1 with 16 x 16: 1.07-1.08x at 56x56, 1.08-1.12x at 28x28, 1.13-1.16x at 14x14,
    1.12-1.15x at 7x7 (24 x 16 0.93-1.01x: spills; 12 x 32 0.85-0.99x); the stems with 16 x 16
    0.88-0.90x, with 8 x 32 1.03-1.07x (ResNet's 7x7, K = 147) and 1.10-1.14x (MobileNetV2's,
    K = 27; 4 x 32 the same, 8 x 16 0.93-0.96x).

    On 8-lane devices (AVX2: 16 vector registers), 4 x 24 (12 accumulators, as 6 x 16, with 3
    vectors of B a k step) where 4 rows pad C_out/g no more than 6 do. Measured with PoCL
    compiling for haswell on the AVX-512 host (benchmarks/emulate_avx2.sh; 'implicit' alone,
    medians of 9 blocks of 10 calls, alternating runs, ms, 6 x 16 -> 4 x 24): MobileNetV2's
    stem 0.44-0.47 -> 0.31-0.34, ResNet's 7x7 stem 1.99-2.13 -> 1.74-1.82, ResNet's 3x3 layers
    at batch 1 1.37-1.45 -> 1.26-1.31 (@56), 1.38-1.41 -> 1.26-1.27 (@28), 1.45-1.48 -> 1.43-1.46
    (@14); the wider panel halves the gathers' share (on a real Zen 3 the packed GEMM alone
    measured the two tiles even: packed.tile_for).
    """
    m, n, k = geo.cout_per_group, geo.batch * geo.out_spatial, geo.cin_per_group * geo.ksize
    tile = packed.tile_for(dev, dtype, m, n, k)
    if np.dtype(dtype) != np.float32 or tile.vw not in (8, 16):
        return tile
    rows = tile.a_panels(m) * tile.mr  # C_out/g padded to the default tile's rows
    if tile.vw == 8:
        return Tile(4, 24, 8) if -(-m // 4) * 4 <= rows else tile
    if k >= 256 and -(-m // 16) * 16 <= 1.05 * rows:
        return Tile(16, 16, 16)
    if k < 256 and -(-m // 8) * 8 <= rows:
        return Tile(8, 32, 16)
    return tile


def pack_conv_weights(dev: Device, geo: ConvGeometry, w: cla.Array, w_offset: int | None = None,
                      tile: Tile | None = None) -> PackedA:
    """The filters (C_out, C_in/groups, *kernel), contiguous from element `w_offset` (default: the
    array's own offset), packed per group as the GEMM's A: `groups` matrices of (C_out/groups) x
    (C_in/groups * prod(kernel)). Enqueued; returns a PackedA with its own buffer (reuse it while
    the weights are unchanged)."""
    off = element_offset(w) if w_offset is None else w_offset
    m, k = geo.cout_per_group, geo.cin_per_group * geo.ksize
    tile = conv_tile(dev, geo, w.dtype) if tile is None else tile
    return packed.pack_a(dev, m, k, w, off, m * k, geo.groups, tile=tile)


def _columns_bytes(geo: ConvGeometry, tile: Tile, itemsize: int, columns: int) -> int:
    return geo.groups * tile.packed_b_size(columns, geo.cin_per_group * geo.ksize) * itemsize


def workspace_bytes(geo: ConvGeometry, dtype: object, algorithm: str = IM2COL_PACKED,
                    dev: Device | None = None) -> int:
    """Bytes of workspace the path needs for `geo` unsplit: for 'im2col_packed' the packed columns
    of the whole batch, groups * ceil(N * L / NR) * NR * (C_in/groups * prod(kernel)) values (NR
    from `dev`'s tile, default the current device); for 'implicit' 0 (the output is all it
    writes)."""
    if algorithm == IMPLICIT:
        return 0
    if algorithm != IM2COL_PACKED:
        raise ValueError(f"algorithm must be {IM2COL_PACKED!r} or {IMPLICIT!r}, got {algorithm!r}")
    dev = current_device() if dev is None else dev
    itemsize = np.dtype(dtype).itemsize
    return _columns_bytes(geo, conv_tile(dev, geo, dtype), itemsize, geo.batch * geo.out_spatial)


# Columns one launch may take: the kernels count columns (and the GEMM's N) in int.
_MAX_COLUMNS = 2**30


def column_chunks(geo: ConvGeometry, tile: Tile, itemsize: int,
                  limit: int | None) -> list[tuple[int, int]]:
    """(first folded column, columns) per launch: whole images side by side while `limit` bytes of
    packed columns allow (None: no limit), else ranges of one image's positions. Raises
    MemoryError when not even one panel fits."""
    total, l = geo.batch * geo.out_spatial, geo.out_spatial
    panel = _columns_bytes(geo, tile, itemsize, tile.nr)
    if limit is not None and panel > limit:
        raise MemoryError(f"workspace_limit={limit} bytes cannot hold one packed column panel of "
                          f"{panel} bytes")
    cols = _MAX_COLUMNS if limit is None else min(_MAX_COLUMNS, (limit // panel) * tile.nr)
    if total <= cols:
        return [(0, total)]
    if cols >= l:
        step = (cols // l) * l
        return [(c, min(step, total - c)) for c in range(0, total, step)]
    return [(n * l + c, min(cols, l - c)) for n in range(geo.batch) for c in range(0, l, cols)]


def _conv_defines(geo: ConvGeometry, dtype: np.dtype, tile: Tile, *buffers: cl.Buffer) -> dict:
    # The kernels take the sizes as arguments (geo.size_args()): one program per kernel size and
    # stride serves every layer.
    defines = geo.shape_defines()
    defines.update(precision_defines(dtype))
    defines.update(tile.defines(),
                   INDEX_T=index_type(*(b.size // dtype.itemsize for b in buffers)))
    return defines


def _check(geo: ConvGeometry, w_packed: PackedA, dtype: np.dtype) -> None:
    m, k = geo.cout_per_group, geo.cin_per_group * geo.ksize
    if (w_packed.m, w_packed.k, w_packed.batch) != (m, k, geo.groups):
        raise ValueError(f"w_packed holds {w_packed.batch} x ({w_packed.m} x {w_packed.k}) "
                         f"filters, the convolution needs {geo.groups} x ({m} x {k}): pack them "
                         f"with pack_conv_weights for this geometry")
    if w_packed.data.dtype != dtype:
        raise TypeError(f"w_packed is {w_packed.data.dtype}, the output {dtype}")


def enqueue_im2col_packed_conv(dev: Device, geo: ConvGeometry, x: cla.Array, x_off: int,
                               w_packed: PackedA, bias: cla.Array | None, out: cla.Array,
                               out_off: int, activation: ActivationArg = None, *,
                               bias_off: int | None = None,
                               workspace_limit: int | None = None,
                               residual: cla.Array | None = None,
                               residual_off: int | None = None) -> None:
    """out = act(conv(x, w) + bias) by im2col into packed panels + the packed GEMM. Call holding
    dev.lock (or not: the lock is re-entrant and taken here).

    x: the (N, C_in, *in_size) input, contiguous from element x_off; out: (N, C_out, *out_size)
    from element out_off; w_packed: `pack_conv_weights(dev, geo, w)`; bias: (C_out,) from element
    bias_off (default its own offset) or None; activation: any of clconv.ops.activation's (NaN
    kept, as torch); residual: an operand of out's shape (N, C_out, *out_size) from element
    residual_off (default its own offset) or None. Bias, residual and activation are fused into
    the GEMM's store: out = act(conv + bias + residual). Workspace: `workspace_bytes(geo, dtype)` bytes
    of the device's packing scratch; with `workspace_limit` the images (then an image's positions)
    are split into launches whose packed columns fit (results do not depend on the split).
    """
    dtype = np.dtype(out.dtype)
    _check(geo, w_packed, dtype)
    if geo.batch == 0:
        return
    tile = w_packed.tile
    m, k, l = geo.cout_per_group, geo.cin_per_group * geo.ksize, geo.out_spatial
    b_off = 0 if bias is None else (element_offset(bias) if bias_off is None else bias_off)
    r_off = 0 if residual is None else (element_offset(residual) if residual_off is None
                                        else residual_off)
    chunks = column_chunks(geo, tile, dtype.itemsize, workspace_limit)
    most = max(n for _, n in chunks)
    with dev.lock:
        scratch = packed.packed_scratch(dev, geo.groups * tile.packed_b_size(most, k), dtype)
        defines = _conv_defines(geo, dtype, tile, x.base_data, out.base_data)
        defines["ROWS_PER_ITEM"] = _ROWS_PER_ITEM
        im2col = kernel(dev, "im2col_packed.cl", "im2col_packed",
                        {d: v for d, v in defines.items() if d != "MR"})
        for start, ncols in chunks:
            im2col(dev.queue, (tile.b_panels(ncols), -(-k // _ROWS_PER_ITEM), geo.groups),
                   (1, 1, 1), x.base_data, np.int64(x_off), scratch.base_data, np.int64(0),
                   np.int64(start), np.int64(ncols), *geo.size_args())
            # Whole images: column j at (j // L) images + j % L; one image's range: plain columns.
            image, pos = divmod(start, l)
            segment = l if pos == 0 else ncols
            packed.enqueue_gemm(
                dev, tile, m, ncols, k, w_packed.data, w_packed.offset, w_packed.stride, scratch, 0,
                tile.packed_b_size(ncols, k), out,
                out_off + image * geo.out_channels * l + pos, m * l, l, geo.groups,
                segment=segment, segment_stride=geo.out_channels * l, bias=bias,
                bias_offset=b_off, bias_stride=m, activation=activation, residual=residual,
                residual_offset=r_off + image * geo.out_channels * l + pos)


def narrow_last(tile: Tile, n: int) -> bool:
    """Whether the last of n columns' panels has at most TAIL_DOT columns: conv_implicit.cl
    computes it as dot products along K, first in its launch."""
    return tile.nr > TAIL_DOT and 0 < n % tile.nr <= TAIL_DOT


def implicit_chunk(dev: Device, k: int, tile: Tile, itemsize: int) -> int:
    """KC: rows of a B panel held in local memory at once (all K when K x NR fits the budget),
    with the TAIL_DOT columns of a narrow last panel copied out beside it (conv_implicit.cl)."""
    budget = min(PANEL_BUDGET, int(dev.cl_device.local_mem_size))
    return max(1, min(k, budget // ((tile.nr + TAIL_DOT) * itemsize)))
