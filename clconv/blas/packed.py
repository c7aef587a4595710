"""clconv's own GEMM engine for CPU-like OpenCL devices (PoCL): packed operands, register tiles.

The design is BLIS's (see cl/gemm_packed.cl): A is packed into MR-row micro-panels [M/MR][K][MR], B
into NR-column micro-panels [N/NR][K][NR], both zero-padded, and one work-item per B panel
multiplies it by the A panels with an MR x NR tile of C held in vector registers over the whole K,
writing C once. CLBlast's kernels are shaped for GPUs (tiles staged in local memory, many work-items
a group), which PoCL runs as loops over work-items; this one is shaped for a CPU core.

Interface: `gemm` mirrors `clconv.blas.clblast.gemm` (row-major, offsets and strides in elements,
strided-batched, alpha/beta) so that callers can swap engines; `pack_a` packs a left operand once
(the filters of a convolution) into a `PackedA` that later calls reuse. Packing scratch is one
grow-only buffer per device, kept between calls (no allocation after the first call of the largest
size).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..runtime.device import Device
from ..runtime.memory import BufferView, ColumnBuffer
from ..runtime.program import kernel, precision_defines

__all__ = [
    "PackedA",
    "Tile",
    "enqueue_gemm",
    "enqueue_pack_a",
    "enqueue_pack_b",
    "gemm",
    "gemm_defines",
    "gemm_scratch_bytes",
    "gflops",
    "grid",
    "k_ranges",
    "k_step_loops",
    "pack_a",
    "pack_a_kernel",
    "PACK_A_K",
    "PACK_A_K_T",
    "pack_a_runs",
    "packed_scratch",
    "release_scratch",
    "scratch_bytes",
    "tail_split",
    "tile_for",
    "tile_for_columns",
]


@dataclass(frozen=True)
class Tile:
    """A register tile: MR rows of A x NR columns of B, vectors of VW lanes (NR % VW == 0)."""

    mr: int
    nr: int
    vw: int

    def defines(self) -> dict[str, object]:
        return {"MR": self.mr, "NR": self.nr, "VW": self.vw}

    def a_panels(self, m: int) -> int:
        return -(-m // self.mr)

    def b_panels(self, n: int) -> int:
        return -(-n // self.nr)

    def packed_a_size(self, m: int, k: int) -> int:
        """Elements of one packed A: ceil(m / MR) * MR * k."""
        return self.a_panels(m) * self.mr * k

    def packed_b_size(self, n: int, k: int) -> int:
        """Elements of one packed B: ceil(n / NR) * NR * k."""
        return self.b_panels(n) * self.nr * k


def vector_width(dev: Device, dtype: np.dtype) -> int:
    """SIMD lanes of `dtype` on `dev` (PoCL: 8 floats / 4 doubles on AVX2, 16 / 8 on AVX-512)."""
    cl_dev = dev.cl_device
    lanes = (cl_dev.preferred_vector_width_double if dtype == np.float64
             else cl_dev.preferred_vector_width_float)
    return lanes if lanes in (2, 4, 8, 16) else 4


#: The accumulators a register tile needs to keep a core's vector FMA pipes busy (FMAs a cycle
#: times their latency), by CPU where it differs from the default, 8 (two FMA pipes of the
#: vector's width, latency 4: Zen 3 with AVX2, Zen 5, Skylake-SP): (vendor, family, vector bits)
#: -> accumulators. Zen 4 runs a 512-bit FMA on its two 256-bit pipes, one a cycle.
FMA_ACCUMULATORS = {("AuthenticAMD", 25, 512): 4}
DEFAULT_FMA_ACCUMULATORS = 8


@lru_cache(maxsize=1)
def _host_cpu() -> tuple[str, int]:
    """(vendor, family) of the host CPU from /proc/cpuinfo, or ('', 0) where there is none."""
    vendor, family = "", 0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == "vendor_id":
                    vendor = value.strip()
                elif name.strip() == "cpu family":
                    family = int(value)
                if vendor and family:
                    break
    except (OSError, ValueError):
        pass
    return vendor, family


def fma_accumulators(dev: Device, dtype: Any) -> int:
    """FMA_ACCUMULATORS' entry for `dev`'s vectors of `dtype` where `dev` is the host CPU, else
    the default."""
    if dev.kind != "cpu":
        return DEFAULT_FMA_ACCUMULATORS
    bits = vector_width(dev, np.dtype(dtype)) * np.dtype(dtype).itemsize * 8
    return FMA_ACCUMULATORS.get((*_host_cpu(), bits), DEFAULT_FMA_ACCUMULATORS)


def tile_for_columns(dev: Device, dtype: Any, m: int, n: int, k: int) -> Tile:
    """`tile_for`'s tile for a GEMM whose columns are taken in panels of n (an image's positions:
    'pointwise', whose last panel of an image ends at n and overlaps its predecessor), or its
    one-vector form, MR x VW, where its MR accumulators keep the core's FMA pipes busy
    (`fma_accumulators`: Zen 4's AVX-512). On Zen 4, 20-call blocks, medians of 11-15, two-vector
    -> one-vector: at 14x14 (196 columns: 208 computed in 16s, 224 in 32s) 64->384 0.086 -> 0.080
    ms, 96->576 0.160 -> 0.142, 576->96 0.154 -> 0.138, 192->64 0.064 -> 0.060, 256->1024 0.563
    -> 0.548; at 56x56 and 28x28 +1-4%; at 7x7 and 112x112 -4% to +2% (2048->512 0.636 -> 0.655,
    160->960 0.134 -> 0.132). Taken for every n, not only where it computes fewer columns: a
    network's 1x1 layers then share one program per epilogue (two tile widths built 2 more
    programs for MobileNetV2, +0.6 s of its first forward with empty caches). With 8
    accumulators needed (AVX2's 6 x 8 on the same cores) the one-vector tile ran 0.77-0.86x:
    latency-bound."""
    del n  # (every n: see above)
    tile = tile_for(dev, dtype, m, 0, k)
    if tile.nr == 2 * tile.vw and tile.mr >= fma_accumulators(dev, dtype):
        return Tile(tile.mr, tile.vw, tile.vw)
    return tile


def tile_for(dev: Device, dtype: Any, m: int, n: int, k: int) -> Tile:
    """The register tile for an (m x k) @ (k x n) GEMM on `dev`.

    Rule: 6 rows x 2 vectors (6x16 for float on AVX2, 6x8 for double): 12 accumulators + 2 B vectors
    + 1 broadcast in the 16 vector registers, BLIS's haswell shape; 4 rows x 3 vectors (4x24, also
    12 accumulators) only when m <= 4, where 6 rows would be mostly padding. Measured on
    PoCL/haswell (2-core Zen 3; micro-kernel on packed operands, interleaved medians of 7, GFLOP/s
    for 6x16 / 4x24 / 8x8 / 6x24): 1024^3 189 / 186 / 162 / 119; (256, 3136, 2304) 188 / 186 / 169 /
    122; (64, 3136, 576) 143 / 145 / 135 / 103; (256, 729, 2400) 171 / 167 / 151 / 90; (64, 3136,
    256) 123 / 123 / 113 / 90: 6x16 and 4x24 tie within noise (4x24 pads no rows for m = 64 but that
    did not show), 8x8 (one vector of B a step) is ~10 % behind, 6x24 (18 accumulators) spills. The
    vector width is the device's preferred one (8 floats / 4 doubles on AVX2, 16 / 8 on AVX-512).
    `n` and `k` are taken for future rules (they do not change the choice today).
    """
    del n, k
    vw = vector_width(dev, np.dtype(dtype))
    return Tile(4, 3 * vw, vw) if m <= 4 else Tile(6, 2 * vw, vw)


@dataclass
class PackedA:
    """A left operand packed for `gemm` (see cl/gemm_packed.cl): `batch` matrices of op(A) (m x k)
    as [ceil(m / MR)][k][MR] each, `stride` elements apart in `data` (stride 0: one matrix for every
    batch entry). Keep it while the source values are unchanged (a plan keeps its packed
    filters)."""

    data: cla.Array
    m: int
    k: int
    batch: int
    stride: int
    tile: Tile

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    @property
    def offset(self) -> int:
        """Element offset of the first packed matrix in `data`'s buffer."""
        return self.data.offset // self.data.dtype.itemsize


def gemm_defines(tile: Tile, dtype: Any) -> dict[str, object]:
    """The defines of cl/gemm_packed.cl's programs for `tile` and `dtype`: the bias and the
    residual are read when their buffers are not NULL (BIAS_AT_RUN_TIME, RESIDUAL_AT_RUN_TIME),
    so that pack_b and the GEMM with or without them share one program (the activation, where
    there is one, makes another)."""
    defines = precision_defines(np.dtype(dtype))
    defines.update(tile.defines())
    defines.update(BIAS_AT_RUN_TIME=None, RESIDUAL_AT_RUN_TIME=None)
    return defines


# Per-device packing scratch: a ColumnBuffer of its own (separate from the im2col column buffer,
# so that a GEMM can read that buffer while packing), dropped with its Device.
_SCRATCH: weakref.WeakKeyDictionary[Device, ColumnBuffer] = weakref.WeakKeyDictionary()


def packed_scratch(dev: Device, elements: int, dtype: Any) -> cla.Array:
    """A device array of `elements` values on the device's packing scratch (grow-only, kept between
    calls; separate from the im2col column buffer so that a GEMM can read that buffer while
    packing).
    Call holding dev.lock, and enqueue every reader before the lock is released: the next call
    reuses the buffer (the queue is in order, so its writes run after those reads)."""
    holder = _SCRATCH.get(dev)
    if holder is None:
        holder = _SCRATCH[dev] = ColumnBuffer()
    dtype = np.dtype(dtype)
    return BufferView(holder.get(dev, elements * dtype.itemsize), dtype, max(elements, 1))


def scratch_bytes(dev: Device) -> int:
    """Bytes the device's packing scratch holds now (0 before the first call)."""
    holder = _SCRATCH.get(dev)
    return 0 if holder is None else holder.nbytes


def gemm_scratch_bytes(dev: Device, dtype: Any, m: int, n: int, k: int, batch: int = 1) -> int:
    """Bytes of the packing scratch one `gemm` call of these sizes needs (A and B packed for each
    of the `batch` products: neither shared nor pre-packed). 0 when there is nothing to multiply."""
    if 0 in (m, n, k, batch):
        return 0
    tile = tile_for(dev, dtype, m, n, k)
    return batch * (tile.packed_a_size(m, k) + tile.packed_b_size(n, k)) * np.dtype(dtype).itemsize


def release_scratch(dev: Device) -> int:
    """Frees the packing scratch (the next call allocates it again); returns the bytes it held."""
    with dev.lock:
        holder = _SCRATCH.pop(dev, None)
        return 0 if holder is None else holder.nbytes


PACK_K = 8  # k each pack_b work-item copies (PACK_K of cl/gemm_packed.cl)
PACK_A_K = 32  # k each pack_a work-item copies (PACK_A_K of cl/pack_a.cl) ...
PACK_A_K_T = 8  # ... and of a transposed A (PACK_A_K_T)


def pack_a_runs(k: int, transposed: bool) -> int:
    """cl/pack_a.cl's NDRange along k: its work-items for a k-long A (or A^T)."""
    return -(-k // (PACK_A_K_T if transposed else PACK_A_K))


def pack_a_kernel(dev: Device, dtype: Any) -> cl.Kernel:
    """cl/pack_a.cl's pack_a for `dtype`: one program for every tile (MR is its last argument)."""
    return kernel(dev, "pack_a.cl", "pack_a", precision_defines(np.dtype(dtype)))


def enqueue_pack_a(dev: Device, tile: Tile, m: int, k: int, a: cla.Array, a_offset: int,
                   a_stride: int, batch: int, lda: int, transposed: bool, out: cla.Array,
                   out_offset: int, out_stride: int) -> None:
    """Packs `batch` matrices op(A) (m x k) into `out` (cl/pack_a.cl). Call holding dev.lock."""
    if m == 0 or k == 0 or batch == 0:
        return
    pack_a_kernel(dev, a.dtype)(
        dev.queue, (pack_a_runs(k, transposed), tile.a_panels(m), batch), (1, 1, 1), np.int32(m),
        np.int32(k), a.base_data, np.int64(a_offset), np.int64(a_stride), np.int64(lda),
        np.int32(transposed), out.base_data, np.int64(out_offset), np.int64(out_stride),
        np.int32(tile.mr))


def enqueue_pack_b(dev: Device, tile: Tile, n: int, k: int, b: cla.Array, b_offset: int,
                   b_stride: int, batch: int, ldb: int, transposed: bool, out: cla.Array,
                   out_offset: int, out_stride: int) -> None:
    """Packs `batch` matrices op(B) (k x n) into `out` (cl/gemm_packed.cl pack_b). Call holding
    dev.lock."""
    if n == 0 or k == 0 or batch == 0:
        return
    kernel(dev, "gemm_packed.cl", "pack_b", gemm_defines(tile, b.dtype))(
        dev.queue, (-(-k // PACK_K), tile.b_panels(n), batch), (1, 1, 1), np.int32(n),
        np.int32(k), b.base_data, np.int64(b_offset), np.int64(b_stride), np.int64(ldb),
        np.int32(transposed), out.base_data, np.int64(out_offset), np.int64(out_stride))


def grid(dev: Device, tile: Tile, m: int, n: int, batch: int) -> tuple[int, int]:
    """(mgroups, panels_per_group): how the A panels are split between work-items of one B panel.

    Each work-item walks every A panel of its group with its B panel held in L2, so groups are split
    only when there are too few B panels (times batch) to keep every core busy: at least 4
    work-items a compute unit (PoCL hands work-groups to its threads dynamically; 4 evens out the
    tail).
    """
    mpanels = tile.a_panels(m)
    if dev.loop_limit is not None:
        # A driver that caps a work-item's loop iterations (Device.loop_limit): one A panel each,
        # so that the K loop alone counts (k_ranges splits it).
        return mpanels, 1
    items = tile.b_panels(n) * batch
    want = 4 * max(1, dev.cl_device.max_compute_units)
    mgroups = min(mpanels, max(1, -(-want // max(items, 1))))
    per_group = -(-mpanels // mgroups)
    return -(-mpanels // per_group), per_group


def tail_split(dev: Device, tile: Tile, m: int, n: int, batch: int,
               mgroups: int, narrow_first: bool = False) -> tuple[int, int, int]:
    """(split_at, tail_groups, tail_per): column panel split_at runs as tail_groups work-items
    (tail_per A panels apiece), the others as one each (TASK_PANELS in cl/gemm_packed.cl); the
    launch has b_panels(n) + tail_groups - 1 work-items in dim 0.

    Why: PoCL's pthread driver deals a launch's work-groups out in guided chunks: the first
    thread takes ceil(count / threads) of them, the next ceil(rest / threads), and so on. With P
    equal panels on cu cores the first thread so runs ceil(P / cu), a whole panel more than the
    others where cu does not divide P (ResNet's 256 @14 layer at batch 1: 13 panels of 16
    columns, 7 against 6; its time went with ceil(P / 2): 1.04 / 1.23 / 1.37 / 1.58 ms for 10 /
    12 / 13 / 16 panels of the same layer at other widths). Splitting panel P // cu in two puts
    P // cu panels and a half in that first chunk. Only where `grid` left the A panels whole
    (mgroups 1) and batch is 1; otherwise (P, 1, mpanels): nothing split.

    `narrow_first`: the launch runs its last column panel first, and it costs next to nothing
    (cl/conv_implicit.cl's narrow panels, dot products along K): the P - 1 full panels are the
    count to share (256 @14: 12 full and 4 columns; the first chunk takes the narrow one and 6)."""
    panels, mpanels = tile.b_panels(n), tile.a_panels(m)
    cu = max(1, dev.cl_device.max_compute_units)
    full = panels - 1 if narrow_first else panels
    if (mgroups != 1 or batch != 1 or full % cu == 0 or panels < cu or mpanels < 2
            or dev.loop_limit is not None):
        return panels, 1, mpanels
    per = -(-mpanels // 2)
    return panels // cu, -(-mpanels // per), per


# Loop iterations of one k step of the micro-kernel (TILE_MULTIPLY) counted as if no loop were
# unrolled (each loop of t trips t + 1: the exit is a pass too), doubled: llvmpipe measured 27 for
# the 6x16 float tile (58 here). _LAUNCH_LOOPS: the loops outside the K loop (the columns' decode,
# the stores, a partial sums' reload), with room to spare.
_LAUNCH_LOOPS = 8192


def k_step_loops(tile: Tile) -> int:
    nv = tile.nr // tile.vw
    return 2 * (1 + (nv + 1) + (tile.mr + 1) + tile.mr * (nv + 1))


def k_ranges(dev: Device, tile: Tile, k: int, row_loops: int = 0, launch_loops: int = 0,
             most: int | None = None) -> list[tuple[int, int]]:
    """[k_begin, k_end) of the launches that together sum a packed GEMM's K on `dev`: [(0, k)],
    unless the driver caps a work-item's loop iterations (Device.loop_limit: Mesa llvmpipe stops
    every loop after 65535 in all, silently), then ranges short enough that one A panel's K loop
    (k_step_loops, plus `row_loops` a k row: a kernel's own gathering, plus `launch_loops` and
    _LAUNCH_LOOPS once) stays under the cap; `most`: at most that many rows a range. The launches
    after the first add to the partial sums (beta = 1) and only the last applies the epilogue."""
    limit = dev.loop_limit
    if limit is None or k == 0:
        return [(0, k)]
    rows = max(1, (limit - _LAUNCH_LOOPS - launch_loops) // (k_step_loops(tile) + row_loops))
    rows = rows if most is None else max(1, min(rows, most))
    return [(k0, min(k, k0 + rows)) for k0 in range(0, k, rows)]


def enqueue_gemm(dev: Device, tile: Tile, m: int, n: int, k: int, ap: cla.Array, ap_offset: int,
                 ap_stride: int, bp: cla.Array, bp_offset: int, bp_stride: int, c: cla.Array,
                 c_offset: int, c_stride: int, ldc: int, batch: int = 1, *,
                 alpha: float = 1.0, beta: float = 0.0, segment: int | None = None,
                 segment_stride: int = 0, bias: cla.Array | None = None, bias_offset: int = 0,
                 bias_stride: int = 0, activation: Any = None,
                 residual: cla.Array | None = None, residual_offset: int = 0,
                 a_ld: int = 0) -> None:
    """The micro-kernel on packed operands (cl/gemm_packed.cl gemm_packed). Call holding dev.lock.
    a_ld > 0: A[z] is not packed but stored transposed (k x m, leading dim a_ld) at ap_offset +
    z * ap_stride, m a multiple of the tile's MR.

    C[z] (m x n at c_offset + z * c_stride, row i at i * ldc) = alpha * A[z] @ B[z] + beta * C[z],
    then + bias[bias_offset + z * bias_stride + i] (when `bias`), + the residual's element (when
    `residual`: laid out as C, its element residual_offset where C's is c_offset) and the
    activation (any of clconv.ops.activation's; ValueError naming it otherwise). Column j of C lies
    at (j // segment) * segment_stride + j % segment (default segment = n: a plain matrix); a
    convolution folds its images into N that way and writes NCHW directly.
    """
    # clconv.ops.activation is a leaf module (no clconv imports): the activation's -D switches.
    from ..ops.activation import activation_defines

    if m == 0 or n == 0 or batch == 0:
        return
    _check_sizes(m, n, k)
    plain = gemm_defines(tile, c.dtype)
    defines = dict(plain)
    defines.update(activation_defines(activation))
    mgroups, per_group = grid(dev, tile, m, n, batch)
    real = np.float64 if c.dtype == np.float64 else np.float32
    # No bias or residual: NULL buffers (the program tests them at run time).
    bias_buf = bias.base_data if bias is not None else None
    res_buf, res_off = (residual.base_data, residual_offset) if residual is not None else \
        (None, 0)
    ranges = k_ranges(dev, tile, k)
    for i, (k0, k1) in enumerate(ranges):
        # K in pieces (a loop-capped driver only): partial sums through C, the epilogue last.
        last = i == len(ranges) - 1
        kernel(dev, "gemm_packed.cl", "gemm_packed", defines if last else plain)(
            dev.queue, (tile.b_panels(n), mgroups, batch), (1, 1, 1), np.int32(m), np.int32(n),
            np.int32(k), np.int32(k0), np.int32(k1), np.int32(per_group), ap.base_data,
            np.int64(ap_offset), np.int64(ap_stride), bp.base_data, np.int64(bp_offset),
            np.int64(bp_stride), c.base_data, np.int64(c_offset), np.int64(c_stride),
            np.int64(ldc), np.int64(n if segment is None else segment),
            np.int64(segment_stride), real(alpha), real(beta if i == 0 else 1.0),
            bias_buf if last else None, np.int64(bias_offset), np.int64(bias_stride),
            res_buf if last else None, np.int64(res_off), np.int64(a_ld))


def _check_dtype(dtype: np.dtype) -> None:
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"the packed GEMM computes float32 and float64, got {dtype}")


def _check_sizes(m: int, n: int, k: int) -> None:
    # The kernels count rows, columns and K in int (offsets are 64-bit).
    if max(m, n, k) >= 2**31:
        raise ValueError(f"the packed GEMM takes M, N, K below 2**31, got {(m, n, k)}: split it")


def pack_a(dev: Device, m: int, k: int, a: cla.Array, a_offset: int, a_stride: int = 0,
           batch: int = 1, lda: int | None = None, transposed: bool = False,
           tile: Tile | None = None, n_hint: int = 0) -> PackedA:
    """Packs op(A) (m x k; `batch` matrices `a_stride` elements apart, a_stride 0: one shared
    matrix) into a new device buffer, for `gemm(..., packed_a=...)`. lda: A's leading dim (default
    k, or m when `transposed`: A^T is stored k x m). tile: default `tile_for(dev, dtype, m, n_hint,
    k)` (pass the tile or n the GEMMs will use, so that they agree). Enqueued on dev.queue."""
    dtype = np.dtype(a.dtype)
    _check_dtype(dtype)
    _check_sizes(m, 0, k)
    tile = tile_for(dev, dtype, m, n_hint, k) if tile is None else tile
    lda = (m if transposed else k) if lda is None else lda
    shared = a_stride == 0 or batch <= 1
    count = 1 if shared else batch
    size = tile.packed_a_size(m, k)
    data = cla.empty(dev.queue, (max(count * size, 1),), dtype)
    with dev.lock:
        enqueue_pack_a(dev, tile, m, k, a, a_offset, a_stride, count, lda, transposed, data, 0,
                       size)
    return PackedA(data, m, k, batch, 0 if shared else size, tile)


def gemm(dev: Device, m: int, n: int, k: int,
         a: cla.Array | None, a_offset: int, a_stride: int,
         b: cla.Array, b_offset: int, b_stride: int,
         c: cla.Array, c_offset: int, c_stride: int,
         batch: int = 1, *, a_transposed: bool = False, b_transposed: bool = False,
         alpha: float = 1.0, beta: float = 0.0, lda: int | None = None, ldb: int | None = None,
         ldc: int | None = None, packed_a: PackedA | None = None) -> None:
    """C[i] = alpha * op(A[i]) @ op(B[i]) + beta * C[i] for i < batch, enqueued on dev.queue.

    As `clconv.blas.clblast.gemm`: op(A) m x k, op(B) k x n, C m x n, row-major; lda/ldb/ldc default
    to the dense leading dims; matrix i at `offset + i * stride` (stride 0: one matrix for all).
    `packed_a` (from `pack_a` with the same m, k and batch) replaces a, a_offset, a_stride, lda and
    a_transposed: A is not packed again. B (and A unless packed) are packed into the device's
    packing scratch first. beta == 0 does not read C (NaN there stays out, as BLAS). k == 0 gives
    beta * C. Call while holding dev.lock (or not: it takes the re-entrant lock itself).
    """
    dtype = np.dtype(c.dtype)
    _check_dtype(dtype)
    operands = [("b", b), ("a", a if packed_a is None else packed_a.data)]
    for name, x in operands:
        if np.dtype(x.dtype) != dtype:
            raise TypeError(f"{name} is {np.dtype(x.dtype)} but c is {dtype}: the packed GEMM "
                            f"takes one dtype")
    if m == 0 or n == 0 or batch == 0:
        return
    _check_sizes(m, n, k)
    if packed_a is not None:
        if (packed_a.m, packed_a.k) != (m, k) or (packed_a.stride and packed_a.batch != batch):
            raise ValueError(f"packed_a holds {packed_a.batch} x ({packed_a.m} x {packed_a.k}), "
                             f"the GEMM needs {batch} x ({m} x {k})")
        tile = packed_a.tile
    else:
        tile = tile_for(dev, dtype, m, n, k)
    ldb = (k if b_transposed else n) if ldb is None else ldb
    ldc = n if ldc is None else ldc
    a_ld = 0  # A packed (enqueue_gemm's a_ld)
    with dev.lock:
        if k == 0:
            # No products: C = beta * C; the micro-kernel with K = 0 gives exactly that.
            ap, ap_off, ap_stride = c, 0, 0
            bp, bp_off, bp_stride = c, 0, 0
        else:
            b_shared = b_stride == 0 and batch > 1
            b_count = 1 if b_shared else batch
            b_size = tile.packed_b_size(n, k)
            # A stored transposed with whole panels: its k steps are MR adjacent values already,
            # so the micro-kernel reads it in place (no packing pass over the filters of an
            # adjoint, 0.68 of 1.25 ms at 512 x 2304, measured)
            in_place = packed_a is None and a_transposed and m % tile.mr == 0
            if packed_a is None and not in_place:
                a_shared = a_stride == 0 and batch > 1
                a_count = 1 if a_shared else batch
                a_size = tile.packed_a_size(m, k)
            else:
                a_count = a_size = 0
            scratch = packed_scratch(dev, a_count * a_size + b_count * b_size, dtype)
            if in_place:
                a_ld = m if lda is None else lda
                ap, ap_off, ap_stride = a, a_offset, a_stride
            elif packed_a is None:
                lda_ = (m if a_transposed else k) if lda is None else lda
                enqueue_pack_a(dev, tile, m, k, a, a_offset, a_stride, a_count, lda_, a_transposed,
                               scratch, 0, a_size)
                ap, ap_off, ap_stride = scratch, 0, 0 if a_count == 1 else a_size
            else:
                ap, ap_off, ap_stride = packed_a.data, packed_a.offset, packed_a.stride
            bp_off = a_count * a_size
            enqueue_pack_b(dev, tile, n, k, b, b_offset, b_stride, b_count, ldb, b_transposed,
                           scratch, bp_off, b_size)
            bp, bp_stride = scratch, 0 if b_count == 1 else b_size
        enqueue_gemm(dev, tile, m, n, k, ap, ap_off, ap_stride, bp, bp_off, bp_stride, c,
                     c_offset, c_stride, ldc, batch, alpha=alpha, beta=beta, a_ld=a_ld)


def gflops(m: int, n: int, k: int, seconds: float, batch: int = 1) -> float:
    """2 * m * n * k * batch / seconds, in GFLOP/s."""
    return 2.0 * m * n * k * batch / seconds / 1e9 if seconds > 0 else math.inf
