"""One launcher per `.cl` kernel: configured (and built) once when a plan is made, then only enqueued.

A launcher takes the `-D` specialisation of its kernel (geometry, dtype, index width, epilogue) at
construction, fetches the built kernel from the device's program cache, and works out what does not
depend on the data (NDRanges, per-item work). Calling it sets the arguments and enqueues: call while
holding `dev.lock` (the kernel object is shared by every plan of the same specialisation). Sizes that
only change the amount of work (the batch, a range of columns, the spatial size of the memory-bound
kernels) are arguments, so that plans for another batch size reuse the same programs; the direct
loops (cl/conv_direct.cl, cl/conv_grouped.cl) take all the sizes as arguments
(`ConvGeometry.size_args`), so that a network's layers of one kernel size and stride share them.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..blas.engine import cpu_shaped
from ..runtime.device import Device
from ..runtime.program import BoundKernel, kernel, precision_defines
from ..runtime.transfer import element_offset
from .activation import ACTIVATION_NAMES, ActivationArg, activation_defines
from .geometry import ConvGeometry, split_sizes

__all__ = ["ACTIVATIONS", "BatchEpilogue", "Col2im", "DirectConv", "Epilogue", "GROUPED_MAX_CIN",
           "Im2col", "PadAdjoint", "Winograd", "epilogue_defines", "fused_conv_args", "kernel_defines",
           "optional_buffer_args", "cpu_work_group"]

ACTIVATIONS = ACTIVATION_NAMES  # the plain names; clconv.ops.activation validates the rest
GROUPED_MAX_CIN = 16  # 'direct' runs cl/conv_grouped.cl up to this many input channels per group
_RUN = 64  # elements each im2col work-item writes at least (when the window has that many)


def epilogue_defines(has_bias: bool, activation: ActivationArg,
                     has_residual: bool = False) -> dict[str, object]:
    """The -D switches of common.cl's epilogue: HAS_BIAS, HAS_RESIDUAL and the activation's (ACT,
    ACT_A, ACT_B; ValueError naming `activation` for a bad one)."""
    defines: dict[str, object] = {}
    if has_bias:
        defines["HAS_BIAS"] = None
    if has_residual:
        defines["HAS_RESIDUAL"] = None
    defines.update(activation_defines(activation))
    return defines


def kernel_defines(geometry: Mapping[str, object], dtype: np.dtype, index_t: str,
                   **extra: object) -> dict[str, object]:
    """Geometry defines + precision + INDEX_T (+ extra)."""
    defines = dict(geometry)
    defines.update(precision_defines(dtype))
    defines["INDEX_T"] = index_t
    defines.update(extra)
    return defines


def optional_buffer_args(a: cla.Array | None, fallback: cla.Array) -> tuple[object, np.int64]:
    """(buffer, element offset) kernel arguments of an optional operand (a bias, a residual): a
    kernel built without HAS_BIAS / HAS_RESIDUAL never reads it, so for None any buffer will do."""
    if a is None:
        return fallback.base_data, np.int64(0)
    return a.base_data, np.int64(element_offset(a))


def fused_conv_args(x_buf: object, x_off: int, w: cla.Array, b: cla.Array | None,
                    residual: cla.Array | None, out: cla.Array) -> tuple[object, ...]:
    """The leading arguments of the convolution kernels with a fused epilogue
    (cl/conv_depthwise.cl, cl/conv_pointwise.cl): the input (buffer, element offset), then the
    weight, bias, residual and output as (buffer, element offset). No residual is a NULL buffer
    (kernels built with RESIDUAL_AT_RUN_TIME test for it; the others never read it)."""
    b_buf, b_off = optional_buffer_args(b, out)
    r_buf, r_off = (None, np.int64(0)) if residual is None else optional_buffer_args(residual, out)
    return (x_buf, np.int64(x_off), w.base_data, np.int64(element_offset(w)), b_buf, b_off, r_buf,
            r_off, out.base_data, np.int64(element_offset(out)))


def _residual_args(residual: cla.Array | None, fallback: cla.Array) -> tuple[object, np.int64]:
    # As _bias_args: without HAS_RESIDUAL the kernel never reads it.
    return optional_buffer_args(residual, fallback)


class Im2col:
    """cl/im2col.cl: the columns of a batch of images (layout of the kernel file)."""

    def __init__(self, dev: Device, geometry: Mapping[str, object], dtype: np.dtype,
                 index_t: str) -> None:
        self.dev = dev
        self.rows = int(geometry["C"]) * int(geometry["KD"]) * int(geometry["KH"]) * \
            int(geometry["KW"])
        self.ow = int(geometry["OW"])
        lines = int(geometry["OD"]) * int(geometry["OH"])
        self.blocks = lines * self.ow
        # Output lines per work-item, for runs of >= _RUN elements (a function of the geometry only,
        # so that every window of a split call shares one build).
        self.per_item = min(lines, -(-_RUN // self.ow))
        # The sizes are arguments (RUNTIME_SIZES): layers of one kernel size and stride share it.
        defines, self.sizes = split_sizes(geometry)
        self.kernel = kernel(dev, "im2col.cl", "im2col", kernel_defines(defines, dtype, index_t))

    def __call__(self, batch: int, x: cla.Array, x_offset: int, col: cla.Array, col_offset: int,
                 l_start: int = 0, ncols: int | None = None, *, ld: int | None = None,
                 batch_stride: int | None = None) -> cl.Event | None:
        """Columns [l_start, l_start + ncols) of `batch` images at x[x_offset:] into col[col_offset:]
        (elements): a (rows x ncols) matrix per image, or, with ld=batch * ncols and
        batch_stride=ncols, one (rows x batch * ncols) matrix (the batch folded into the GEMM's N)."""
        ncols = self.blocks - l_start if ncols is None else ncols
        if ncols <= 0 or batch <= 0:
            return None
        ld = ncols if ld is None else ld
        batch_stride = self.rows * ncols if batch_stride is None else batch_stride
        lines = (l_start + ncols - 1) // self.ow - l_start // self.ow + 1
        return self.kernel(
            self.dev.queue, (self.rows * -(-lines // self.per_item), batch), None, x.base_data,
            np.int64(x_offset), col.base_data, np.int64(col_offset), np.int64(l_start),
            np.int64(ncols), np.int64(ld), np.int64(batch_stride), np.int32(self.per_item),
            *self.sizes)


class Col2im:
    """cl/col2im.cl: sums a batch of images' columns back into the images."""

    def __init__(self, dev: Device, geometry: Mapping[str, object], dtype: np.dtype,
                 index_t: str) -> None:
        self.dev = dev
        self.width, self.height = int(geometry["IW"]), int(geometry["IH"])
        self.planes = int(geometry["C"]) * int(geometry["ID"])
        self.blocks = int(geometry["OD"]) * int(geometry["OH"]) * int(geometry["OW"])
        defines, self.sizes = split_sizes(geometry)  # shared by the layers, as Im2col's
        self.kernel = kernel(dev, "col2im.cl", "col2im", kernel_defines(defines, dtype, index_t))

    def __call__(self, batch: int, col: cla.Array, col_offset: int, x: cla.Array,
                 x_offset: int, l_start: int = 0, ncols: int | None = None,
                 accumulate: bool = False) -> cl.Event:
        """Sums columns [l_start, l_start + ncols) (default: all) of `batch` images, a
        (rows x ncols) matrix each at col[col_offset:], into x[x_offset:] (added to it when
        `accumulate`)."""
        ncols = self.blocks - l_start if ncols is None else ncols
        return self.kernel(self.dev.queue, (self.width, self.height, batch * self.planes), None,
                           col.base_data, np.int64(col_offset), x.base_data, np.int64(x_offset),
                           np.int64(l_start), np.int64(ncols), np.int32(1 if accumulate else 0),
                           *self.sizes)


class _EpilogueKernel:
    """The kernel `SOURCE` of cl/SOURCE.cl, built for a dtype, an index type and an epilogue (bias,
    activation, residual)."""

    SOURCE = ""

    def __init__(self, dev: Device, dtype: np.dtype, index_t: str, has_bias: bool,
                 activation: ActivationArg, has_residual: bool = False) -> None:
        self.dev = dev
        defines = precision_defines(dtype)
        defines.update(epilogue_defines(has_bias, activation, has_residual), INDEX_T=index_t)
        self.kernel = kernel(dev, f"{self.SOURCE}.cl", self.SOURCE, defines)


class Epilogue(_EpilogueKernel):
    """cl/epilogue.cl: y[n, c, :] = act(y[n, c, :] + bias[c] + residual[n, c, :]) in place, on
    (batch, channels, spatial)."""

    SOURCE = "epilogue"

    def __call__(self, y: cla.Array, y_offset: int, bias: cla.Array | None, batch: int,
                 channels: int, spatial: int, residual: cla.Array | None = None,
                 r_offset: int | None = None) -> cl.Event | None:
        """residual: y's shape, from element r_offset (default its own offset) where y_offset is
        in y; only with has_residual."""
        if batch == 0 or channels == 0 or spatial == 0:
            return None
        r_buf, r_off = _residual_args(residual, y)
        return self.kernel(self.dev.queue, (spatial, channels, batch), None, y.base_data,
                           np.int64(y_offset), *optional_buffer_args(bias, y), r_buf,
                           r_off if r_offset is None else np.int64(r_offset), np.int64(spatial))


class BatchEpilogue(_EpilogueKernel):
    """cl/batch_epilogue.cl: a folded GEMM result (channels, images * spatial) into place in
    (images, channels, spatial), with bias and activation."""

    SOURCE = "batch_epilogue"

    def __call__(self, r: cla.Array, r_offset: int, y: cla.Array, y_offset: int,
                 bias: cla.Array | None, images: int, channels: int, spatial: int,
                 residual: cla.Array | None = None, res_offset: int = 0) -> cl.Event:
        """residual: y's shape, its element res_offset where y's is y_offset."""
        return self.kernel(self.dev.queue, (spatial, channels, images), None, r.base_data,
                           np.int64(r_offset), y.base_data, np.int64(y_offset),
                           *optional_buffer_args(bias, y), _residual_args(residual, y)[0],
                           np.int64(res_offset), np.int64(spatial))


class DirectConv:
    """The direct loops (bias and activation fused): cl/conv_grouped.cl when the groups have at most
    GROUPED_MAX_CIN input channels each, else cl/conv_direct.cl. The batch is the NDRange's."""

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, index_t: str,
                 has_bias: bool, activation: ActivationArg, has_residual: bool = False) -> None:
        self.dev = dev
        # The sizes are kernel arguments (RUNTIME_SIZES): layers of one kernel size and stride
        # share the program.
        defines = kernel_defines(geo.shape_defines(), dtype, index_t)
        defines.update(epilogue_defines(has_bias, activation, has_residual))
        od, oh, ow = (1,) * (3 - geo.nd) + geo.out_size
        self.grouped = geo.cin_per_group <= GROUPED_MAX_CIN
        self.extra: tuple[np.int32, ...] = ()
        cob = 1
        if self.grouped:
            extra, self.tiles = _grouped_launch(geo, dev.cl_device.preferred_vector_width_float)
            self.extra = (np.int32(extra.pop("SEGW")), np.int32(extra.pop("ROWS")))
            cob = extra["COB"]
            defines.update(extra)  # channels per group too are arguments (common.cl's CIN_G)
            self.kernel = kernel(dev, "conv_grouped.cl", "conv_grouped", defines)
        else:
            self.tiles = (ow, oh)
            self.kernel = kernel(dev, "conv_direct.cl", "conv_direct", defines)
        self.sizes = geo.size_args()
        self.planes = geo.out_channels // cob * od  # work-items per image and output line
        # On a CPU device a work-item is already a vector loop: work-groups of one (as the packed
        # kernels') keep PoCL from vectorising across them, and one local size means one build
        # of the work-group function however the layers' NDRanges differ.
        self.local = (1, 1, 1) if self.grouped and cpu_shaped(dev) else None
        # A single output position (a squeeze-excitation's 1x1 convolutions at 1x1): PoCL would
        # pick a local size from the channel count, each new one a work-group function built at
        # the first launch (~0.25 s each: an EfficientNet-B0 met ten); two sizes instead.
        self.per_plane = self.local is None and self.tiles == (1, 1) and cpu_shaped(dev)
        self.units = dev.cl_device.max_compute_units
        # This launcher's own kernel object, the sizes set now: a call sets the operands only.
        self.bound = BoundKernel(self.kernel, (None,) * 10 + (*self.extra, *self.sizes),
                                 range(10))

    def __call__(self, batch: int, x: cla.Array, x_offset: int, w: cla.Array, w_offset: int,
                 bias: cla.Array | None, y: cla.Array, y_offset: int,
                 residual: cla.Array | None = None) -> cl.Event | None:
        """residual: y's shape (contiguous, its own offset), with has_residual."""
        if batch == 0:
            return None
        items = batch * self.planes
        local = (1, 1, cpu_work_group(items, self.units)) if self.per_plane else self.local
        return self.bound(self.dev.queue, (*self.tiles, items), local, x.base_data,
                          x_offset, w.base_data, w_offset, *optional_buffer_args(bias, y),
                          *_residual_args(residual, y), y.base_data, y_offset)


def cpu_work_group(items: int, units: int) -> int:
    """The local size of a 1-d run of `items` work-items on a CPU device, where PoCL's own choice
    would follow the item count (each new local size a work-group function built at the first
    launch, ~0.25 s): 16 where that divides the items and leaves >= 4 groups a compute unit
    (fewer groups, less of PoCL's cost per group), else 1 (the work balanced over the units)."""
    return 16 if items % 16 == 0 and items >= 64 * units else 1


def _grouped_launch(geo: ConvGeometry, lanes: int = 8) -> tuple[dict[str, object], tuple[int, int]]:
    """cl/conv_grouped.cl's VW/SEGW/ROWS/COB for `geo` and the first two dims of its NDRange."""
    od, oh, ow = (1,) * (3 - geo.nd) + geo.out_size
    iw = geo.in_size[-1]
    kw, sw, dw, pw = geo.kernel[-1], geo.stride[-1], geo.dilation[-1], geo.pad_lo[-1]
    # The interior [lo, hi) of the kernel's OW_LO/OW_HI: outputs whose vector loads stay inside.
    lo = (pw + sw - 1) // sw
    last = (kw - 1) * dw + (1 if sw == 2 else 0) - pw
    hi = (iw - 1 - last) // sw + 1 if iw - 1 - last >= 0 else 0
    interior = min(max(hi, lo), ow) - lo
    # (16 lanes where the device prefers them, AVX-512: twice the outputs a load and an fma)
    vw = 16 if interior >= 16 and lanes >= 16 else 8 if interior >= 8 else 4 if interior >= 4 else 2
    segw = vw * -(-min(ow, 256) // vw)  # whole lines up to 256 outputs
    rows = min(oh, -(-64 // ow))  # short lines: several per work-item (>= 64 outputs)
    # Output channels per work-item: they share each input vector loaded (8 accumulators at
    # most: with the taps' broadcasts they fit AVX2's 16 vector registers).
    cob = next(c for c in (8, 4, 2, 1) if geo.cout_per_group % c == 0)
    return {"VW": vw, "SEGW": segw, "ROWS": rows, "COB": cob}, (-(-ow // segw), -(-oh // rows))


class Winograd:
    """cl/winograd.cl's three kernels: filter transform, input transform, output transform (bias
    and activation fused)."""

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, index_t: str,
                 has_bias: bool, activation: ActivationArg, has_residual: bool = False) -> None:
        self.dev = dev
        self.geo = geo
        defines = kernel_defines(geo.defines(), dtype, index_t, GROUPS=geo.groups,
                                 COUT=geo.out_channels)
        defines.update(epilogue_defines(has_bias, activation, has_residual))
        self.filter_kernel = kernel(dev, "winograd.cl", "winograd_filter", defines)
        self.input_kernel = kernel(dev, "winograd.cl", "winograd_input", defines)
        self.output_kernel = kernel(dev, "winograd.cl", "winograd_output", defines)

    def filters(self, w: cla.Array, w_offset: int, u: cla.Array, u_offset: int) -> cl.Event:
        return self.filter_kernel(self.dev.queue, (self.geo.cin_per_group, self.geo.out_channels),
                                  None, w.base_data, np.int64(w_offset), u.base_data,
                                  np.int64(u_offset))

    def inputs(self, images: int, x: cla.Array, x_offset: int, v: cla.Array, v_offset: int,
               th0: int, rows: int, tile_cols: int) -> cl.Event:
        tiles = images * rows * tile_cols
        return self.input_kernel(self.dev.queue, (tile_cols, rows, images * self.geo.in_channels),
                                 None, x.base_data, np.int64(x_offset), v.base_data,
                                 np.int64(v_offset), np.int32(th0), np.int32(rows),
                                 np.int64(tiles))

    def outputs(self, images: int, m: cla.Array, m_offset: int, bias: cla.Array | None,
                y: cla.Array, y_offset: int, th0: int, rows: int, tile_cols: int,
                residual: cla.Array | None = None, res_offset: int = 0) -> cl.Event:
        """residual: y's shape, its element res_offset where y's is y_offset."""
        tiles = images * rows * tile_cols
        return self.output_kernel(self.dev.queue, (tile_cols, rows, images * self.geo.out_channels),
                                  None, m.base_data, np.int64(m_offset), *optional_buffer_args(bias, y),
                                  _residual_args(residual, y)[0], np.int64(res_offset),
                                  y.base_data, np.int64(y_offset), np.int32(th0), np.int32(rows),
                                  np.int64(tiles))


class PadAdjoint:
    """cl/pad_adjoint.cl: folds a padded tensor back onto the elements `geo.padding_mode` reads
    each padded position from (the adjoint of non-zero padding)."""

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, index_t: str) -> None:
        self.dev = dev
        lift = 3 - geo.nd
        padded = (1,) * lift + tuple(i + lo + hi for i, lo, hi in
                                     zip(geo.in_size, geo.pad_lo, geo.pad_hi))
        self.kernel = kernel(dev, "pad_adjoint.cl", "pad_adjoint",
                             kernel_defines(geo.defines(), dtype, index_t, QD=padded[0],
                                            QH=padded[1], QW=padded[2]))
        depth, self.height, self.width = (1,) * lift + geo.in_size
        self.planes = geo.in_channels * depth

    def __call__(self, batch: int, padded: cla.Array, padded_offset: int, x: cla.Array,
                 x_offset: int) -> cl.Event:
        return self.kernel(self.dev.queue, (self.width, self.height, batch * self.planes), None,
                           padded.base_data, np.int64(padded_offset), x.base_data,
                           np.int64(x_offset))
