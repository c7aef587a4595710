"""algorithm='depthwise': depthwise convolutions (groups == C_in, any channel multiplier C_out /
C_in) by cl/conv_depthwise.cl, a vectorised direct kernel shaped for CPUs (local size 1, a segment
of outputs per work-item in vector registers; see the kernel's banner). Small 2-d zero-padded
planes (up to 64 padded rows: MobileNet's 7x7 to 56x56, ConvNeXt's 7x7 kernels at 56x56) take the
file's second kernel, conv_depthwise_small: whole planes from a private zero-padded copy, no edge
code (`small_plane`; 1.3-2.5x the row segments there). The smallest of them at stride 1 (7x7,
14x14) take its third, conv_depthwise_flat, where it pays: the padded plane's rows flattened into
one line, a 1-d convolution in chunks of up to 8 vectors (`flat_plane`, `flat_pays`; 1.1-1.4x
conv_depthwise_small's rows of one vector, whose taps form one chain of dependent FMAs).

`Depthwise` is one of the forward algorithm classes (registered in clconv.ops.conv_select; constructor and `run` as
clconv.ops.conv_algorithms'): everything is decided and built when it is made (tile, NDRange,
work per work-item, the program), and `run` only enqueues one kernel. 1-d, 2-d and 3-d, every
stride, dilation and padding mode, bias, residual and activation fused. No workspace.
"""

from __future__ import annotations

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

from ..blas.packed import vector_width
from ..runtime.device import Device
from ..runtime.program import BoundKernel, kernel
from ..runtime.transfer import element_offset, index_type
from .activation import ActivationArg
from .geometry import ConvGeometry
from .launch import epilogue_defines, fused_conv_args, kernel_defines

__all__ = ["Depthwise", "depthwise_launch", "depthwise_unsupported", "flat_pays", "flat_plane",
           "interior", "planes_per_item", "small_plane"]

_MAX_NV = 4  # vectors of a segment (accumulators) at most: 4 x 16 floats, a quarter of AVX-512's
_ITEMS_PER_CU = 8  # work-items a compute unit at least (PoCL hands them out dynamically)
_OUTPUTS_PER_ITEM = 4096  # outputs a work-item computes at most when there are enough items


def depthwise_unsupported(geo: ConvGeometry) -> str | None:
    """Why algorithm='depthwise' cannot compute `geo`, or None when it can."""
    if geo.groups != geo.in_channels or geo.in_channels == 0:
        return (f"it needs groups == in_channels (one input channel per group; got groups="
                f"{geo.groups} for {geo.in_channels} input channels)")
    return None


def interior(geo: ConvGeometry) -> tuple[int, int]:
    """[lo, hi): the outputs along W whose vector loads stay inside the stored input line (OW_LO,
    OW_HI of cl/vector.cl; the stride-2 loads read one element past the last they use)."""
    ow, iw = geo.out_size[-1], geo.in_size[-1]
    kw, sw, dw, pw = geo.kernel[-1], geo.stride[-1], geo.dilation[-1], geo.pad_lo[-1]
    lo = (pw + sw - 1) // sw
    last = (kw - 1) * dw + (1 if sw == 2 else 0) - pw
    hi = (iw - 1 - last) // sw + 1 if iw - 1 - last >= 0 else 0
    return lo, min(max(hi, lo), ow)


def depthwise_launch(geo: ConvGeometry, vw: int, compute_units: int) -> dict[str, int]:
    """The tile and work split of cl/conv_depthwise.cl for `geo` with vectors of up to `vw` lanes:
    VW (halved while wider than the row's interior), NV (vectors a segment), segments (a row's),
    rows and planes (per work-item) and the NDRange's row blocks and plane blocks.

    Segments of at most _MAX_NV vectors tile the interior (`interior`; the last one overlaps its
    predecessor), or the whole row when the interior is narrower than two lanes (the kernel's
    span path). A work-item walks its segment column over all rows of as many planes as keep it
    under _OUTPUTS_PER_ITEM outputs, unless that leaves fewer than _ITEMS_PER_CU work-items a
    compute unit: then planes, then rows are split.
    """
    od, oh, ow = (1,) * (3 - geo.nd) + geo.out_size
    lo, hi = interior(geo)
    width = hi - lo
    if width >= 2:
        # The fewest vector operations a row (+ half a one per segment for its set-up), lanes
        # computed twice by the overlapping last segment included.
        best = None
        for lanes in (vw, vw // 2, vw // 4, vw // 8):
            for n in range(1, _MAX_NV + 1):
                if lanes >= 2 and n * lanes <= width:
                    segs = -(-width // (n * lanes))
                    cost = segs * n * max(1.0, 2 * lanes / vw) + segs / 2
                    if best is None or cost < best[0]:
                        best = (cost, lanes, n, segs)
        if best is None:  # narrower than the narrowest vector
            best = (0, 2, 1, -(-width // 2))
        _, vw, nv, segments = best
    else:  # the span path over the whole row (the kernel's test: interior < SEG)
        vw, nv = 4, 1
        segments = -(-ow // vw)
    nplanes = geo.batch * geo.out_channels * od
    want = _ITEMS_PER_CU * max(1, compute_units)
    seg_outputs = nv * vw * oh  # outputs of one segment column of a plane
    planes = max(1, min(_OUTPUTS_PER_ITEM // max(seg_outputs, 1),
                        (segments * nplanes) // want if segments * nplanes >= want else 1))
    rows = oh
    items = segments * -(-nplanes // planes)
    if items < want:  # few, large planes: split the rows too
        blocks = min(oh, -(-want // max(items, 1)))
        rows = -(-oh // blocks)
    return {"VW": vw, "NV": nv, "segments": segments, "rows": rows,
            "row_blocks": -(-oh // max(rows, 1)), "planes": planes,
            "plane_blocks": -(-nplanes // planes), "nplanes": nplanes}


def planes_per_item(nplanes: int, plane_outputs: int, compute_units: int) -> int:
    """Whole planes (of `nplanes`, `plane_outputs` outputs each) a work-item walks: as many as keep
    it under _OUTPUTS_PER_ITEM outputs while leaving _ITEMS_PER_CU work-items a compute unit
    (PoCL's cost per work-item dominates small planes)."""
    want = _ITEMS_PER_CU * max(1, compute_units)
    return max(1, min(_OUTPUTS_PER_ITEM // max(plane_outputs, 1), nplanes // want))


def _row_width(vw: int, ow: int) -> int:
    """conv_depthwise_small's lanes a vector for rows of `ow` outputs: `vw` halved (down to 4)
    while a row fits in half of it."""
    while vw > 4 and vw // 2 >= ow:
        vw //= 2
    return vw


_PLANE_ROWS = (8, 16, 32, 64)  # the small-plane kernel's buffer heights (programs shared by bucket)


def small_plane(geo: ConvGeometry, vw: int, compute_units: int) -> dict[str, int] | None:
    """The launch of cl/conv_depthwise.cl's conv_depthwise_small for `geo` (whole planes from a
    private zero-padded copy), or None where it does not apply: 2-d, zero padding, stride 1 or 2,
    a row of at most _MAX_NV vectors of `vw` lanes whose padded input fits the buffer's width,
    and at most 64 padded rows. VW is halved while a row fits in fewer lanes."""
    if geo.nd != 2 or geo.padding_mode != "zeros" or geo.batch == 0:
        return None
    iw, (oh, ow) = geo.in_size[-1], geo.out_size
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    (ph, pw) = geo.pad_lo
    if sw not in (1, 2) or ow == 0 or oh == 0:
        return None
    vw = _row_width(vw, ow)
    nv = -(-ow // vw)
    if nv > _MAX_NV:
        return None
    seg = nv * vw
    span = 2 * seg + (kw - 1) * dw if sw == 2 else (seg - 1) * sw + 1 + (kw - 1) * dw
    need = (oh - 1) * sh + (kh - 1) * dh + 1
    rows = next((r for r in _PLANE_ROWS if r >= need), None)
    if pw + iw > span or rows is None or ph >= rows:
        return None
    nplanes = geo.batch * geo.out_channels
    planes = planes_per_item(nplanes, seg * oh, compute_units)
    return {"VW": vw, "NV": nv, "PLANE_ROWS": rows, "segments": 1, "rows": oh, "row_blocks": 1,
            "planes": planes, "plane_blocks": -(-nplanes // planes), "nplanes": nplanes}


_FLAT_NV = 8  # conv_depthwise_flat's vectors a chunk at most (accumulators: AVX2 has 16 registers)
_FLAT_MAX_LEN = 512  # its buffers' elements at most: 14x14 with 5x5 taps (measured: larger lose)


def flat_plane(geo: ConvGeometry, vw: int, compute_units: int) -> dict[str, int] | None:
    """The launch of cl/conv_depthwise.cl's conv_depthwise_flat for `geo` (the padded plane's rows
    flattened: a 1-d convolution in chunks of NV vectors of `vw` lanes), or None where it does not
    fit: 2-d, zero padding, stride 1, and buffers of at most _FLAT_MAX_LEN elements (FLAT_LEN, a
    power of two, the kernel's bound). Whether it pays: `flat_pays`."""
    if geo.nd != 2 or geo.padding_mode != "zeros" or geo.batch == 0 or geo.stride != (1, 1):
        return None
    (oh, ow), (kh, kw), (dh, dw) = geo.out_size, geo.kernel, geo.dilation
    if oh == 0 or ow == 0:
        return None
    pitch = ow + (kw - 1) * dw
    vectors = -(-((oh - 1) * pitch + ow) // vw)  # of the flat outputs
    chunks = -(-vectors // _FLAT_NV)
    nv = -(-vectors // chunks)
    need = max(chunks * nv * vw + (kh - 1) * dh * pitch + (kw - 1) * dw,
               (oh - 1) * pitch + -(-ow // vw) * vw)
    length = 64
    while length < need:
        length *= 2
    if length > _FLAT_MAX_LEN:
        return None
    nplanes = geo.batch * geo.out_channels
    planes = planes_per_item(nplanes, oh * ow, compute_units)
    return {"VW": vw, "NV": nv, "FLAT_LEN": length, "lanes": chunks * nv * vw, "segments": 1,
            "rows": oh, "row_blocks": 1, "planes": planes, "plane_blocks": -(-nplanes // planes),
            "nplanes": nplanes}


def flat_pays(geo: ConvGeometry, vw: int, flat: dict[str, int]) -> bool:
    """Whether conv_depthwise_flat (launch `flat`) beats conv_depthwise_small on `geo`: where the
    latter's row is one vector, whose KH * KW taps are then one chain of dependent FMAs, and the
    flat line computes at most 1.5x its lanes (1x for filters under 25 taps, whose short chains
    the rows overlap well). Measured on Zen 4, both ways at 16 and 8 lanes (AVX2 emulated), in
    ms a call: 5x5 at 14x14 1.29-1.31x with one 16-lane vector a row but 0.84-0.92x against two
    8-lane ones; 5x5 at 7x7 (80 lanes against 56) 1.36x / 1.03-1.16x; 7x7 at 7x7 (96 against
    56) 1.07x / 0.84-0.90x; 3x3 at 14x14 (equal lanes) 1.14-1.23x; 3x3 at 7x7 (64 against 56)
    0.95-0.96x."""
    oh, ow = geo.out_size
    row_vw = _row_width(vw, ow)  # conv_depthwise_small's vectors
    if ow > row_vw:
        return False
    ratio = 1.5 if geo.kernel[0] * geo.kernel[1] >= 25 else 1.0
    return flat["lanes"] <= ratio * oh * row_vw


class Depthwise:
    """The depthwise kernel for the whole batch (see the module doc). Raises ValueError when `geo`
    is not depthwise (`depthwise_unsupported`)."""

    name = "depthwise"
    workspace_bytes = 0

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg, limit: int, has_residual: bool = False,
                 flipped: bool = False) -> None:
        """flipped: `run`'s weight is read with every filter's taps reversed (all spatial dims
        flipped): the adjoint of a stride-1 depthwise convolution with that convolution's own
        weight (clconv.ops.adjoint_paths.ForwardAdjoint), without a flip pass."""
        why = depthwise_unsupported(geo)
        if why is not None:
            raise ValueError(f"algorithm='depthwise' cannot compute this convolution: {why}; use "
                             f"algorithm='auto' or 'direct'")
        self.dev, self.geo, self.flipped = dev, geo, flipped
        dtype = np.dtype(dtype)
        # Half accumulates in float: its vectors are as wide as float's.
        vw = vector_width(dev, np.dtype(np.float32) if dtype == np.float16 else dtype)
        launch = depthwise_launch(geo, vw, dev.cl_device.max_compute_units)
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                             geo.batch * geo.out_channels * geo.out_spatial,
                             geo.out_channels * geo.ksize)
        defines = kernel_defines(geo.shape_defines(), dtype, index_t, VW=launch["VW"],
                                 NV=launch["NV"])
        defines.update(epilogue_defines(has_bias, activation, has_residual))
        if flipped:
            defines["FLIP_TAPS"] = None
        units = dev.cl_device.max_compute_units
        flat = flat_plane(geo, vw, units)
        if flat is not None and not flat_pays(geo, vw, flat):
            flat = None
        small = None if flat is not None else small_plane(geo, vw, units)
        if flat is not None:  # the padded plane's rows as one line
            launch = flat
            defines.update(VW=flat["VW"], NV=flat["NV"], FLAT_LEN=flat["FLAT_LEN"])
            self.kernel = kernel(dev, "conv_depthwise.cl", "conv_depthwise_flat", defines)
        elif small is not None:  # whole planes from a private zero-padded copy
            launch = small
            defines.update(VW=small["VW"], NV=small["NV"], PLANE_ROWS=small["PLANE_ROWS"])
            self.kernel = kernel(dev, "conv_depthwise.cl", "conv_depthwise_small", defines)
        else:
            self.kernel = kernel(dev, "conv_depthwise.cl", "conv_depthwise", defines)
        self.global_size = (launch["segments"], launch["row_blocks"], launch["plane_blocks"])
        tail = (np.int32(launch["rows"]), np.int32(launch["planes"]),
                np.int64(launch["nplanes"]), *geo.size_args())
        # This plan's own kernel object with the sizes set now: a run sets the operands'
        # buffers and offsets only (the shared kernel's invoker set all of them each call).
        self.bound = BoundKernel(self.kernel, (None,) * 10 + tail, range(10))
        self.empty = launch["nplanes"] == 0 or geo.out_spatial == 0

    def run(self, x: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None = None) -> cl.Event | None:
        """Enqueues the convolution; returns its kernel's event (None when empty)."""
        if self.empty:
            return None
        args = fused_conv_args(x.base_data, element_offset(x), w, b, residual, out)
        with self.dev.lock:
            return self.bound(self.dev.queue, self.global_size, (1, 1, 1), *args)
