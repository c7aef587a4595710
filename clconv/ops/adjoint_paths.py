"""Input-gradient and transposed-convolution paths without col2im (cl/conv_grad_paths.cl).

`transpose.Adjoint` (conv*d_input and conv_transpose*d) asks `adjoint_route` at plan time for one
of these, and falls back to its GEMM + col2im code when it returns None (weight gradients:
clconv.ops.weight_grad_paths, which shares this module's `float_work`, `is_depthwise_2d` and
`SOURCE`):

- `ForwardAdjoint`: the adjoint of a stride-1 convolution (zeros padding, padding <= dilation *
  (k - 1) on both sides) IS a forward convolution of y with the filters transposed per group
  (C_in, C_out/groups, *k) and flipped, padded by dilation * (k - 1) - padding: it runs on the
  forward 'auto' machinery (packed implicit GEMM, 1x1 GEMM, depthwise kernel, ...), bias,
  activation and residual included. One small kernel flips the filters per call, except where
  the forward kernel reads them flipped itself (split-K's FLIP_KS, the 1x1 GEMM's transposed
  weight, the depthwise kernel's FLIP_TAPS).
- `DepthwiseAdjoint`: the adjoint of a strided 2-d depthwise convolution, a direct gather kernel.
- `StridedPointwiseAdjoint`: the adjoint of a strided 1x1 convolution (ResNet's downsampling):
  the 1x1 GEMM reading the weight transposed on y's grid, then the phase-wise col2im.
- `PhaseCol2im`: col2im for `transpose.Adjoint`'s GEMM path (strided adjoints, small grids) when a
  whole image's columns are in the buffer: a gather per output with the taps of each row / column
  phase known at compile time (ResNet-18's 7x7 stem: 12 ms -> see the bench; 3x3 s2 @56: 3 ms).
"""


from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl.array as cla
from pyopencl import cltypes

from ..blas import packed
from ..blas.engine import cpu_shaped
from ..runtime.device import Device
from ..runtime.memory import column_buffer, empty
from ..runtime.program import kernel
from ..runtime.transfer import element_offset, index_type
from .activation import ActivationArg, normalize_activation
from .autotune import estimate, few_positions, pass_seconds
from .conv_algorithms import ImplicitGemm
from .conv_select import applicable_algorithms, configure, rule_choice
from .depthwise import Depthwise, planes_per_item
from .geometry import ConvGeometry, conv_geometry
from .launch import Epilogue, epilogue_defines, kernel_defines, optional_buffer_args
from .plan import derived, is_constant
from .pointwise import Pointwise, pointwise_unsupported
from .splitk import SplitK

__all__ = [
    "SOURCE",
    "DepthwiseAdjoint",
    "ForwardAdjoint",
    "PhaseCol2im",
    "StridedPointwiseAdjoint",
    "adjoint_route",
    "float_work",
    "forward_geometry",
    "is_depthwise_2d",
    "phase_col2im",
]

SOURCE = "conv_grad_paths.cl"  # the kernels of both gradient-path modules
_MIN_FORWARD_SPATIAL = 28 * 28  # ForwardAdjoint for dense grids of at least this many positions


def float_work(dtype: np.dtype) -> bool:
    """Whether the gradient paths take `dtype` (their direct kernels accumulate in REAL: float32
    and float64 work only, not float16)."""
    return np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64))

def forward_geometry(geo: ConvGeometry) -> ConvGeometry | None:
    """The forward convolution that the adjoint of the stride-1 convolution `geo` is (its input: y
    (N, C_out, *out_size), its output (N, C_in, *in_size)), or None when `geo` is not such one."""
    if geo.padding_mode != "zeros" or any(s != 1 for s in geo.stride) or geo.batch == 0:
        return None
    span = tuple(d * (k - 1) for d, k in zip(geo.dilation, geo.kernel))
    if any(not 0 <= p <= e for p, e in zip(geo.pad_lo + geo.pad_hi, span + span)):
        return None
    return ConvGeometry(geo.nd, geo.batch, geo.out_channels, geo.in_channels, geo.groups,
                        geo.out_size, geo.kernel, geo.stride, geo.dilation,
                        tuple(e - p for e, p in zip(span, geo.pad_lo)),
                        tuple(e - p for e, p in zip(span, geo.pad_hi)), geo.in_size)

def is_depthwise_2d(geo: ConvGeometry) -> bool:
    """Whether `geo` is a zero-padded 2-d depthwise convolution of a non-empty batch."""
    return (geo.nd == 2 and geo.groups > 1 and geo.groups == geo.in_channels
            and geo.padding_mode == "zeros" and geo.batch > 0)

def adjoint_route(dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool, limit: int,
                  activation: ActivationArg = None,
                  has_residual: bool = False
                  ) -> ForwardAdjoint | DepthwiseAdjoint | StridedPointwiseAdjoint | None:
    """The fast path for `transpose.Adjoint(geo)`, or None (then GEMM + col2im)."""
    if not float_work(dtype) or 0 in geo.in_size:  # (an empty output: nothing runs)
        return None
    fgeo = forward_geometry(geo)
    # Flipping the filters costs a pass over them per call, and the forward kernels with it do
    # no better than GEMM + col2im on small grids for k > 1 (measured: 256ch 3x3 @14 0.84x, @7
    # 1.04x, from @28 up faster); 1x1 (a transpose: MobileNetV2's 1.0-2.5x at every size) and
    # depthwise filters (tiny) always, and where 'implicit' or 'splitk' go first, which read the
    # filters flipped themselves ('implicit' against GEMM + col2im, 2-core Zen 4, ms: ResNet-18's
    # 256 @14 1.28-1.31 against 1.40-1.57 at batch 1, 9.05-9.21 against 11.5-12.0 at batch 8;
    # 512 @7 at batch 8 9.20-10.03 against 12.3-12.9).
    if fgeo is not None and (geo.in_spatial >= _MIN_FORWARD_SPATIAL or geo.ksize == 1 or
                             geo.groups == geo.in_channels or _splitk_first(dev, fgeo, dtype)
                             or _implicit_first(dev, fgeo, dtype)):
        try:
            return ForwardAdjoint(dev, geo, fgeo, dtype, has_bias, limit, activation,
                                  has_residual)
        except MemoryError:  # no forward algorithm fits workspace_limit: GEMM + col2im's ranges
            pass
    if is_depthwise_2d(geo) and max(geo.stride) <= 4:
        return DepthwiseAdjoint(dev, geo, dtype, has_bias, activation, has_residual)
    if StridedPointwiseAdjoint.applies(dev, geo, dtype, limit):
        return StridedPointwiseAdjoint(dev, geo, dtype, has_bias, activation, has_residual)
    return None

def _splitk_first(dev: Device, fgeo: ConvGeometry, dtype: np.dtype) -> bool:
    """Whether 'splitk' goes first for the forward convolution `fgeo`: its GEMM reads the filters
    flipped itself, so the adjoint costs no pass over them (2.4 M values at 512 channels: ~1 ms on
    PoCL, as much as GEMM + col2im's lead over the forward path with that pass). Where 'auto''s
    rule ranks it first, and over a few output positions (ResNet's 512 x 7x7 3x3 layers at batch
    1) where the rule's 'implicit' leads it by less than that pass."""
    if fgeo.groups != 1 or not cpu_shaped(dev):
        return False
    ranked = applicable_algorithms(dev, fgeo, dtype)  # the rule's ranking (rule_choice: first)
    if ranked[0] == "splitk":
        return True
    if ranked[0] != "implicit" or "splitk" not in ranked or not few_positions(fgeo):
        return False
    flip = pass_seconds(int(np.prod(fgeo.weight_shape)), dtype)
    return estimate(dev, fgeo, dtype, "splitk") <= estimate(dev, fgeo, dtype, "implicit") + flip

def _depthwise_first(dev: Device, fgeo: ConvGeometry, dtype: np.dtype) -> bool:
    """Whether 'auto''s rule ranks 'depthwise' first for the depthwise forward convolution `fgeo`
    (channel multiplier 1: the adjoint's flipped filters are the layer's own, taps reversed), whose
    kernel then reads the taps backwards itself (-D FLIP_TAPS): MobileNetV2's transposed depthwise
    layers paid a launch over the filters per call, a third of the convolution's time at 14x14."""
    return (fgeo.groups == fgeo.in_channels == fgeo.out_channels
            and rule_choice(dev, fgeo, dtype) == "depthwise")

def _implicit_first(dev: Device, fgeo: ConvGeometry, dtype: np.dtype) -> bool:
    """Whether 'auto''s rule ranks 'implicit' first for the forward convolution `fgeo`, whose
    kernel then reads the layer's filters as the flipped ones itself (cl/conv_implicit.cl's
    A_FLIPPED): the flip pass cost ResNet-18's 3x3 layers ~10% of their input gradient."""
    return fgeo.ksize > 1 and rule_choice(dev, fgeo, dtype) == "implicit"


def _pointwise_first(dev: Device, fgeo: ConvGeometry, dtype: np.dtype) -> bool:
    """Whether 'auto''s rule ranks 'pointwise' first for the stride-1 1x1 forward convolution
    `fgeo`, where it can read the layer's weight transposed (float32 / float64, no loop cap)."""
    return (fgeo.ksize == 1 and cpu_shaped(dev) and float_work(dtype)
            and getattr(dev, "loop_limit", None) is None
            and rule_choice(dev, fgeo, dtype) == "pointwise")

class ForwardAdjoint:
    """out (N, C_in, *in_size) = the adjoint of the stride-1 convolution `geo` applied to y, as the
    forward convolution `fgeo` (`forward_geometry`) with the flipped, per-group transposed filters
    (+ bias, residual, activation: the forward algorithm's epilogue)."""

    def __init__(self, dev: Device, geo: ConvGeometry, fgeo: ConvGeometry, dtype: np.dtype,
                 has_bias: bool, limit: int, activation: ActivationArg = None,
                 has_residual: bool = False) -> None:
        self.dev, self.geo = dev, geo
        act = normalize_activation(activation)
        self.impl: Any
        # flipped: the plan's flipped filters, or None where the GEMM reads w flipped itself
        # (cl/gemm_splitk.cl's FLIP_KS: no flip pass)
        self.flipped: cla.Array | None = None
        self.borders: ExactBorders | None = None
        depthwise = _depthwise_first(dev, fgeo, dtype)
        flip_free = (depthwise or _splitk_first(dev, fgeo, dtype)
                     or _pointwise_first(dev, fgeo, dtype))
        implicit = not flip_free and _implicit_first(dev, fgeo, dtype)
        if implicit:  # the kernel reads the layer's filters as the flipped ones (-D A_FLIPPED)
            flip_free = True
            self.impl = ImplicitGemm(dev, fgeo, dtype, has_bias, act, limit, has_residual,
                                     flipped=True)
        elif depthwise:  # the kernel reads each filter's taps backwards
            self.impl = Depthwise(dev, fgeo, dtype, has_bias, act, limit, has_residual,
                                  flipped=True)
        elif flip_free and fgeo.ksize == 1:
            # the 1x1 GEMM reads the layer's weight as its transpose (no flip pass: MobileNetV2's
            # 320 -> 1280 at 7x7 spent 0.24 ms transposing against the GEMM's 0.16)
            self.impl = Pointwise(dev, fgeo, dtype, has_bias, act, limit, has_residual,
                                  weight_transposed=True)
        elif flip_free:
            try:
                self.impl = SplitK(dev, fgeo, dtype, has_bias, act, limit, has_residual,
                                   flipped=True)
            except MemoryError:  # its columns and partial sums do not fit: 'auto''s others
                flip_free = False
                self.impl = configure(dev, fgeo, "auto", dtype, dtype, has_bias, act, limit,
                                      has_residual)
        else:
            self.impl = configure(dev, fgeo, "auto", dtype, dtype, has_bias, act, limit,
                                  has_residual)
        self.algorithm = self.impl.name
        self.workspace_bytes = self.impl.workspace_bytes
        if any(fgeo.pad_lo + fgeo.pad_hi) and not depthwise:  # (that kernel adds no 0 * w)
            self.borders = ExactBorders(dev, fgeo, dtype, has_bias, act, has_residual)
        if flip_free:
            return
        self.flipped = empty(dev, fgeo.weight_shape, dtype)
        self.flip = kernel(dev, SOURCE, "flip_transpose",
                           kernel_defines({}, dtype, index_type(
                               geo.out_channels * geo.cin_per_group * geo.ksize)))
        self.flip_range = (geo.in_channels,)
        self.flip_args = (np.int32(geo.cout_per_group), np.int32(geo.cin_per_group),
                          np.int32(geo.ksize))

    def run(self, y: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None = None) -> None:
        dev = self.dev
        if self.flipped is None:  # the kernel reads w flipped
            self.impl.run(y, w, b, out, residual=residual)
            if self._borders_needed(w):
                with dev.lock:
                    self.borders.run(y, w, b, out, residual)
            return
        with dev.lock:  # the flipped filters are the plan's: flip and convolve back to back
            self.flip(dev.queue, self.flip_range, None, w.base_data,
                      np.int64(element_offset(w)), self.flipped.base_data,
                      np.int64(element_offset(self.flipped)), *self.flip_args)
            if residual is None:
                self.impl.run(y, self.flipped, b, out)
            else:
                self.impl.run(y, self.flipped, b, out, residual=residual)
            if self._borders_needed(w):
                self.borders.run(y, w, b, out, residual)

    def _borders_needed(self, w: cla.Array) -> bool:
        """Whether ExactBorders runs after the convolution: not for a weight declared constant
        (a compiled model's) whose values were found finite once (a host read, kept with it)."""
        return self.borders is not None and not (is_constant(w) and derived(
            w, "all finite", lambda: bool(np.isfinite(w.get()).all())))


class ExactBorders:
    """The NaN outputs of a flipped-filter forward convolution `fgeo` (ForwardAdjoint) whose
    window reaches the zero padding, recomputed with only the taps that exist
    (cl/adjoint_borders.cl): there the forward kernel added 0 * w, NaN for an Inf or NaN weight,
    where torch's adjoint adds nothing (0 for a finite one: only NaN values can be wrong). With
    finite weights one launch that reads the border outputs."""

    _ITEMS = 16  # work-items (channel blocks): the borders read in parallel, little per launch

    def __init__(self, dev: Device, fgeo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: Any, has_residual: bool) -> None:
        self.dev = dev
        d = fgeo.defines()
        self.kernel = kernel(dev, "adjoint_borders.cl", "adjoint_exact_borders",
                             kernel_defines({}, dtype, "int",
                                            **epilogue_defines(has_bias, activation,
                                                               has_residual)))
        channels = -(-fgeo.out_channels // self._ITEMS)
        self.global_size = (-(-fgeo.out_channels // channels),)
        int4 = cltypes.make_int4
        self.sizes = (int4(fgeo.in_channels, d["ID"], d["IH"], d["IW"]),
                      int4(fgeo.out_channels, d["OD"], d["OH"], d["OW"]),
                      int4(fgeo.groups, d["KD"], d["KH"], d["KW"]),
                      int4(0, d["DD"], d["DH"], d["DW"]), int4(0, d["PD"], d["PH"], d["PW"]),
                      np.int32(fgeo.batch), np.int32(channels))

    def run(self, y: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None) -> None:
        """Enqueues the recomputation (call holding dev.lock, after the forward convolution);
        w: the layer's weight (C_out, C_in / groups, *k), as the adjoint plan takes it."""
        b_buf, b_off = optional_buffer_args(b, out)
        r_buf, r_off = optional_buffer_args(residual, out)
        self.kernel(self.dev.queue, self.global_size, (1,), y.base_data,
                    np.int64(element_offset(y)), w.base_data, np.int64(element_offset(w)), b_buf,
                    b_off, r_buf, r_off, out.base_data, np.int64(element_offset(out)),
                    *self.sizes)

class DepthwiseAdjoint:
    """out (N, C, H, W) = the adjoint of the 2-d depthwise convolution `geo` (weight (C*m, 1, kh,
    kw)) applied to y (N, C*m, OH, OW), + bias, residual, activation (cl/epilogue.cl)."""

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg = None, has_residual: bool = False) -> None:
        self.dev, self.geo = dev, geo
        self.workspace_bytes = 0
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                             geo.batch * geo.out_channels * geo.out_spatial)
        d = geo.defines()  # the padding fixed: the phases' taps are then compile-time
        defines = kernel_defines(geo.shape_defines(), dtype, index_t, PH=d["PH"], PW=d["PW"])
        small = small_adjoint_buffer(geo)
        if small is not None:  # whole planes from a zero-bordered private copy
            defines.update(ADJ_ROWS=small[0], ADJ_COLS=small[1])
        self.small = small is not None
        self.kernel = kernel(dev, SOURCE, "dw_adjoint", defines)
        nplanes = geo.batch * geo.in_channels
        planes = planes_per_item(nplanes, geo.in_spatial, dev.cl_device.max_compute_units)
        self.global_size = (-(-nplanes // planes),)
        self.size_args = (*geo.size_args(), np.int32(planes), np.int64(nplanes))
        act = normalize_activation(activation)
        self.epilogue = (Epilogue(dev, dtype, index_t, has_bias, act, has_residual)
                         if has_bias or has_residual or act is not None else None)

    def run(self, y: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None = None) -> None:
        geo, dev = self.geo, self.dev
        with dev.lock:
            self.kernel(dev.queue, self.global_size, (1,),
                        y.base_data, np.int64(element_offset(y)), w.base_data,
                        np.int64(element_offset(w)), out.base_data,
                        np.int64(element_offset(out)), *self.size_args)
            if self.epilogue is not None:
                self.epilogue(out, element_offset(out), b, geo.batch, geo.in_channels,
                              geo.in_spatial, residual)

_ADJ_ROWS = (8, 16, 32, 64)  # dw_adjoint's buffer heights and widths (-D ADJ_ROWS: buckets
_ADJ_COLS = (16, 32, 64)     # that layers share)
_ADJ_AVW = 4  # (cl/conv_grad_paths.cl's AVW)


def small_adjoint_buffer(geo: ConvGeometry) -> tuple[int, int] | None:
    """(ADJ_ROWS, ADJ_COLS) of cl/conv_grad_paths.cl's dw_adjoint on small planes for the depthwise
    adjoint `geo` (a 2-d zero-padded depthwise convolution, stride along W 1 or 2), or None where
    its output gradient's plane and every phase's reads do not fit the largest buffer (64 x 64).
    The margins are the kernel's ADJ_TOP / ADJ_LEFT; the reads reach the last vector's end."""
    (ih, iw), (oh, ow) = geo.in_size, geo.out_size
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    ph, pw = geo.pad_lo
    if geo.nd != 2 or sw > 2 or 0 in (ih, iw, oh, ow):
        return None
    top, left = max(0, -((ph - (kh - 1) * dh) // sh)), max(0, -((pw - (kw - 1) * dw) // sw))
    last = (-(-iw // sw) - 1) // _ADJ_AVW * _ADJ_AVW  # the row's last vector start (column i)
    rows = max(top + oh, top + (ih - 1) // sh + (sh - 1 + ph) // sh + 1)
    cols = max(left + ow, left + last + _ADJ_AVW + (sw - 1 + pw) // sw)
    r = next((b for b in _ADJ_ROWS if b >= rows), None)
    c = next((b for b in _ADJ_COLS if b >= cols), None)
    return None if r is None or c is None else (r, c)


class StridedPointwiseAdjoint:
    """out (N, C_in, *in_size) = the adjoint of the strided 1x1 convolution `geo` (ResNet's
    downsampling) applied to y: the 1x1 GEMM on y's grid reading the layer's weight transposed
    (conv_pointwise.cl's A_TRANSPOSED) into (N, C_in, L) columns, then `PhaseCol2im` spreads them
    onto the stride grid (zeros between); bias, residual and activation in one pass after
    (cl/epilogue.cl). Two launches where the GEMM path takes four (A and B packed, the GEMM,
    col2im). On CPU-shaped devices without a loop cap, for L of at least the 1x1 GEMM's tile
    width. Workspace: the columns."""

    @staticmethod
    def geometry(geo: ConvGeometry) -> ConvGeometry:
        """The stride-1 1x1 convolution C_out -> C_in on y's grid whose weight is `geo`'s
        transposed per group."""
        return conv_geometry(geo.nd, geo.output_shape, (geo.in_channels, geo.cout_per_group) +
                             (1,) * geo.nd, 1, 0, 1, geo.groups)

    @staticmethod
    def applies(dev: Device, geo: ConvGeometry, dtype: np.dtype, limit: int) -> bool:
        if not (geo.ksize == 1 and set(geo.stride) != {1} and geo.padding_mode == "zeros"
                and geo.nd <= 2 and max(geo.stride) <= 4 and geo.batch > 0
                and float_work(dtype) and cpu_shaped(dev)
                and getattr(dev, "loop_limit", None) is None):
            return False
        pgeo = StridedPointwiseAdjoint.geometry(geo)
        nr = packed.tile_for_columns(dev, dtype, pgeo.cout_per_group, pgeo.out_spatial,
                                     pgeo.cin_per_group).nr
        return (pointwise_unsupported(pgeo, dtype, nr) is None
                and StridedPointwiseAdjoint.workspace(geo, dtype) <= limit)

    @staticmethod
    def workspace(geo: ConvGeometry, dtype: np.dtype) -> int:
        return geo.batch * geo.in_channels * geo.out_spatial * np.dtype(dtype).itemsize

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, has_bias: bool,
                 activation: ActivationArg = None, has_residual: bool = False) -> None:
        self.dev, self.geo, self.dtype = dev, geo, np.dtype(dtype)
        self.workspace_bytes = self.workspace(geo, dtype)
        self.columns = (geo.batch, geo.in_channels) + tuple(geo.out_size)
        self.gemm = Pointwise(dev, self.geometry(geo), dtype, False, None, self.workspace_bytes,
                              weight_transposed=True)
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                             self.workspace_bytes // self.dtype.itemsize)
        self.col2im = PhaseCol2im(dev, geo, self.dtype, index_t)
        tail = has_bias or has_residual or normalize_activation(activation) is not None
        self.epilogue = Epilogue(dev, dtype, index_type(geo.batch * geo.in_channels *
                                                        geo.in_spatial), has_bias, activation,
                                 has_residual) if tail else None

    def run(self, y: cla.Array, w: cla.Array, b: cla.Array | None, out: cla.Array,
            residual: cla.Array | None = None) -> None:
        dev, geo = self.dev, self.geo
        with dev.lock:  # the columns are the device's column buffer: GEMM and col2im together
            cols = column_buffer(dev, self.columns, self.dtype)
            self.gemm.run(y, w, None, cols)
            self.col2im(geo.batch, cols, element_offset(cols), out, element_offset(out))
            if self.epilogue is not None:
                self.epilogue(out, element_offset(out), b, geo.batch, geo.in_channels,
                              geo.in_spatial, residual)

def phase_col2im(dev: Device, geo: ConvGeometry, dtype: np.dtype, index_t: str) -> PhaseCol2im | None:
    """A `PhaseCol2im` for the 1-d / 2-d zero-padded adjoint `geo` (strides <= 4), else None."""
    if geo.nd > 2 or geo.padding_mode != "zeros" or max(geo.stride) > 4 or not float_work(dtype):
        return None
    return PhaseCol2im(dev, geo, dtype, index_t)


class PhaseCol2im:
    """cl/conv_grad_paths.cl col2im_phase, called as `launch.Col2im` is (whole images' columns
    only: l_start 0, all columns, no accumulation)."""

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, index_t: str) -> None:
        self.dev, self.geo = dev, geo
        d = geo.defines()
        self.kernel = kernel(dev, SOURCE, "col2im_phase",
                             kernel_defines(geo.shape_defines(), dtype, index_t, PH=d["PH"],
                                            PW=d["PW"]))
        self.size_args = geo.size_args()

    def __call__(self, batch: int, col: cla.Array, col_offset: int, x: cla.Array, x_offset: int,
                 l_start: int = 0, ncols: int | None = None, accumulate: bool = False) -> None:
        if l_start != 0 or accumulate or (ncols is not None and ncols != self.geo.out_spatial):
            raise ValueError("PhaseCol2im sums whole images' columns only")
        if batch <= 0:
            return
        self.kernel(self.dev.queue, (batch * self.geo.in_channels,), (1,), col.base_data,
                    np.int64(col_offset), x.base_data, np.int64(x_offset), *self.size_args)
