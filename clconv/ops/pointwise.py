"""algorithm='pointwise': 1x1 convolutions (no padding; 1-d, 2-d or 3-d) as a plain GEMM on the
input by cl/conv_pointwise.cl: each image's (C_in, L) input is the B matrix, the (C_out, C_in)
weight the A matrix, read where they are (no gather, no packing pass), on gemm_packed.cl's register
tile with the bias, residual and activation fused into the store. Shaped for CPUs (local size 1).
Strided ones (ResNet's downsampling) first gather the subsampled input into the column buffer
(conv_pointwise.cl's subsample, one launch; workspace N x C_in x L values), then run the same
GEMM on it.

An image's last column panel of at most TAIL_DOT positions (MobileNetV2's 7x7 layers: 49 = 3 x 16
+ 1; 14x14: 196 = 12 x 16 + 4) runs as dot products along K (its columns copied into local
memory), not as a whole panel that overlaps its predecessor: the 1x1 layers at 7x7 10-22% faster
(docs/performance.md).

`Pointwise` is one of the forward algorithm classes (registered in clconv.ops.conv_select; constructor and `run` as
clconv.ops.conv_algorithms'): the tile, the work split and the program are fixed when it is made,
and `run` is one enqueue. Work is spread over output channels as well as column panels when the
panels alone are too few for the device's cores (batch 1 at 7x7 or 14x14).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
from pyopencl import cltypes

from ..blas import packed
from ..blas.engine import cpu_shaped
from ..runtime.device import Device
from ..runtime.errors import UnsupportedError
from ..runtime.memory import column_buffer
from ..runtime.program import BoundKernel, kernel
from ..runtime.transfer import element_offset, index_type
from .activation import ActivationArg
from .geometry import ConvGeometry
from .launch import epilogue_defines, fused_conv_args, kernel_defines

__all__ = ["Pointwise", "TAIL_DOT", "pointwise_unsupported", "tile_unsupported"]

#: Columns of a narrow last panel computed as dot products along K (cl/conv_pointwise.cl's
#: TAIL_DOT).
TAIL_DOT = 4


def pointwise_unsupported(geo: ConvGeometry, dtype: Any, nr: int) -> str | None:
    """Why algorithm='pointwise' cannot compute `geo` in `dtype` with column panels of `nr`, or
    None when it can."""
    if geo.ksize != 1:
        return f"it needs a 1x1 kernel (the weight's is {'x'.join(map(str, geo.kernel))})"
    if any(geo.pad_lo) or any(geo.pad_hi):
        return "it needs padding 0"
    return tile_unsupported(geo, dtype, nr)


def tile_unsupported(geo: ConvGeometry, dtype: Any, nr: int) -> str | None:
    """Why the register tile of 'pointwise' and 'splitk' (float32 or float64, `nr` output
    positions wide) cannot compute `geo` in `dtype`, or None when it can."""
    if np.dtype(dtype) not in (np.float32, np.float64):
        return f"it computes float32 and float64 (got {np.dtype(dtype)})"
    if geo.out_spatial < nr:
        return (f"it needs at least {nr} output positions an image (the register tile's width; "
                f"got {geo.out_spatial})")
    return None


class Pointwise:
    """The 1x1 GEMM for the whole batch (see the module doc). Raises ValueError when
    `pointwise_unsupported` says why it cannot compute `geo`."""

    name = "pointwise"
    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg, limit: int, has_residual: bool = False,
                 weight_transposed: bool = False) -> None:
        """weight_transposed: `run`'s weight is the transpose of `geo`'s per group, (C_in,
        C_out / groups) (a 1x1 layer's own weight, whose adjoint `geo` is), read in place."""
        dtype = np.dtype(dtype)
        m, l = geo.cout_per_group, geo.out_spatial
        self.tile = packed.tile_for_columns(dev, np.float32 if dtype == np.float16 else dtype,
                                            m, l, geo.cin_per_group)
        why = pointwise_unsupported(geo, dtype, self.tile.nr)
        if why is not None:
            raise ValueError(f"algorithm='pointwise' cannot compute this convolution: {why}; use "
                             f"algorithm='auto' or 'implicit'")
        self.dev, self.geo = dev, geo
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                             geo.batch * geo.out_channels * l, geo.out_channels * geo.cin_per_group)
        # The residual read when its buffer is not NULL: layers with and without one share the
        # program (as 'implicit').
        defines = kernel_defines(geo.shape_defines(), dtype, index_t, **self.tile.defines(),
                                 RESIDUAL_AT_RUN_TIME=None)
        defines.update(epilogue_defines(has_bias, activation))
        gemm_defines = dict(defines, A_TRANSPOSED=None) if weight_transposed else defines
        self.kernel = kernel(dev, "conv_pointwise.cl", "conv_pointwise", gemm_defines)
        # A strided 1x1 convolution reads a subsampled input: conv_pointwise.cl's subsample
        # gathers it into the column buffer first ((N, C_in, L): L = the output positions), and
        # the GEMM runs on that as on a stride-1 input of the output's size.
        self.strided = set(geo.stride) != {1}
        self.workspace_bytes = 0
        self.sizes = geo.size_args()
        if self.strided:
            self.workspace_bytes = self.workspace_for(dev, geo, dtype)
            if self.workspace_bytes > limit:
                raise MemoryError(f"workspace_limit={limit} bytes cannot hold algorithm="
                                  f"'pointwise''s subsampled input ({self.workspace_bytes} bytes)")
            self.copy = kernel(dev, "conv_pointwise.cl", "subsample", defines)
            out3 = (1,) * (3 - geo.nd) + tuple(geo.out_size)
            nrows = geo.batch * geo.in_channels * out3[0] * out3[1]
            rows = max(1, min(nrows, 4096 // max(out3[2], 1)))  # >= 4096 values a work-item
            self.copy_args = (np.int64(nrows), np.int32(rows), *geo.size_args())
            self.copy_range = (-(-nrows // rows),)
            self.sizes = (cltypes.make_int4(geo.in_channels, *out3),
                          cltypes.make_int4(geo.out_channels, *out3),
                          cltypes.make_int4(geo.groups, 0, 0, 0))
            self.dtype = dtype
        # Panels of one image and group, times the batch and groups; A tiles split over work-items
        # when those are too few to keep every compute unit busy (packed.grid).
        mgroups, per_group = packed.grid(dev, self.tile, m, l, geo.batch * geo.groups)
        if not cpu_shaped(dev):
            # One tile a work-item off PoCL (this kernel is shaped for PoCL anyway).
            mgroups, per_group = self.tile.a_panels(m), 1
        if len(packed.k_ranges(dev, self.tile, geo.cin_per_group)) > 1:
            # Mesa's llvmpipe ends every loop of a work-item once 65535 iterations have run in
            # all (Device.loop_limit), silently: a K loop past it gave wrong sums (what made the
            # line above: "wrong from the third A tile on" was the cap). The packed paths take K
            # in several launches there; this one cannot (its overlapping last column panels
            # would add a partial sum twice), so it refuses.
            raise UnsupportedError(
                f"algorithm='pointwise' cannot compute this convolution on {dev.name}: its K "
                f"(C_in/groups = {geo.cin_per_group}) needs more loop iterations a work-item than "
                f"this driver runs before it silently stops a loop (Device.loop_limit = "
                f"{dev.loop_limit}); use algorithm='auto' or 'implicit'")
        self.global_size = (self.tile.b_panels(l), mgroups, geo.batch * geo.groups)
        # A last panel of at most TAIL_DOT columns as dot products along K (the kernel's rule),
        # its columns copied into local memory: TAIL_DOT * C_in/groups values (not with the
        # transposed weight, whose rows are not contiguous in k). 49 positions at 7x7 computed
        # as 48 + 1, not 64; 196 at 14x14 as 192 + 4, not 208.
        itemsize = np.dtype(np.float32 if dtype == np.float16 else dtype).itemsize
        tail_bytes = TAIL_DOT * geo.cin_per_group * itemsize
        self.narrow = not weight_transposed and 0 < l % self.tile.nr <= TAIL_DOT and \
            self.tile.nr > TAIL_DOT and l > self.tile.nr and \
            tail_bytes <= dev.cl_device.local_mem_size // 2
        fixed = (np.int32(per_group), cl.LocalMemory(tail_bytes if self.narrow else itemsize),
                 np.int32(self.narrow), *self.sizes)
        # This plan's own kernel object with what never changes set now: a run sets the
        # operands' buffers and offsets only (pyopencl's invoker of the shared kernel sets all
        # 19 each call).
        self.bound = BoundKernel(self.kernel, (None,) * 10 + fixed, range(10))
        self.empty = geo.batch == 0 or m == 0

    @staticmethod
    def workspace_for(dev: Device, geo: ConvGeometry, dtype: Any) -> int:
        """Bytes of column buffer a plan of `geo` takes: the subsampled input of a strided 1x1
        convolution (N x C_in x L values), else 0."""
        if set(geo.stride) == {1}:
            return 0
        return geo.batch * geo.in_channels * geo.out_spatial * np.dtype(dtype).itemsize

    def run(self, x: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None = None) -> cl.Event | None:
        """Enqueues the convolution; returns its last kernel's event (None when empty)."""
        if self.empty:
            return None
        with self.dev.lock:
            x_buf, x_off = x.base_data, element_offset(x)
            if self.strided:
                col = column_buffer(self.dev, (self.workspace_bytes // self.dtype.itemsize,),
                                    self.dtype)
                self.copy(self.dev.queue, self.copy_range, (1,), x_buf, np.int64(x_off),
                          col.base_data, *self.copy_args)
                x_buf, x_off = col.base_data, 0
            return self.bound(self.dev.queue, self.global_size, (1, 1, 1),
                              *fused_conv_args(x_buf, x_off, w, b, residual, out))
