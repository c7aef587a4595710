"""torch.nn.functional.interpolate on the device: `interpolate(...)` and its `InterpolatePlan`
(cl/interpolate.cl: 'nearest', 'nearest-exact', 'linear', 'bilinear', 'trilinear', 'bicubic', with
torch's index arithmetic), and 'area', which is adaptive average pooling (as in torch).

The output size and the per-dim scales follow torch: `size`, or `scale_factor` (output size
floor(in * scale_factor); the kernels then use 1 / scale_factor unless recompute_scale_factor=True,
which uses in / out); align_corners (linear modes and bicubic, default False). antialias=True
('bilinear' and 'bicubic' of 4-d inputs, torch's rule) is torch's separable resampling with a
filter widened by the downscaling factor (PIL's; the cubic's A = -0.5): per dim, weights worked
out on the host as torch does in its type (`antialias_weights`), and a launch of
cl/interpolate.cl's resample_aa, the width first, then the height.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyopencl as cl
import pyopencl.array as cla
from pyopencl import cltypes

from ..runtime.device import Device, current_device
from ..runtime.memory import empty
from ..runtime.program import kernel, precision_defines
from ..runtime.transfer import ArrayLike, element_offset, index_type, result_dtype, to_device
from .pad import GatherPlan
from .plan import cached_plan, shape_ints, shape_of

__all__ = ["InterpolatePlan", "interpolate"]

#: mode -> (cl/interpolate.cl MODE, the input's ndim it needs or None for any of 3-5)
_MODES = {"nearest": (0, None), "nearest-exact": (1, None), "linear": (2, 3),
          "bilinear": (2, 4), "trilinear": (2, 5), "bicubic": (3, 4)}
#: The modes that interpolate between neighbours (align_corners applies; torch's opmath scale).
_SMOOTH = ("linear", "bilinear", "trilinear", "bicubic")


def _per_dim(value: Any, nd: int, name: str, kind: type) -> tuple[Any, ...]:
    if isinstance(value, (tuple, list)):
        if len(value) != nd:
            raise ValueError(f"interpolate: {name} must have {nd} entries for a {nd}-d spatial "
                             f"input, got {value!r}")
        items = tuple(value)
    else:
        items = (value,) * nd
    for v in items:
        if isinstance(v, bool) or not isinstance(v, kind):
            raise TypeError(f"interpolate: {name} must be {'ints' if kind is numbers.Integral else 'numbers'}"
                            f", got {value!r}")
    return items


def output_geometry(shape: tuple[int, ...], size: Any, scale_factor: Any, mode: str,
                    align_corners: bool | None, recompute_scale_factor: bool | None,
                    antialias: bool = False, real: Any = np.float32
                    ) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """(output shape, the scale per spatial dim the kernel uses, worked out in `real` as torch
    does: its opmath type for the linear modes, float for the nearest ones), or torch's error."""
    if mode not in _MODES and mode != "area":
        raise ValueError(f"interpolate: mode must be one of {(*_MODES, 'area')}, got {mode!r}")
    if antialias and not (mode in ("bilinear", "bicubic") and len(shape) == 4):
        raise ValueError(f"interpolate: antialias=True is restricted to the bilinear and bicubic "
                         f"modes and needs a 4-d input (torch's rule), got mode {mode!r} and a "
                         f"{len(shape)}-d input")
    if len(shape) not in (3, 4, 5):
        raise ValueError(f"interpolate: input must be 3-d, 4-d or 5-d (N, C, *spatial), got "
                         f"shape {shape}")
    need = _MODES.get(mode, (None, None))[1]
    if need is not None and len(shape) != need:
        raise ValueError(f"interpolate: mode {mode!r} needs a {need}-d input, got {len(shape)}-d")
    linear = mode in _SMOOTH
    if align_corners is not None and not isinstance(align_corners, (bool, np.bool_)):
        raise TypeError(f"interpolate: align_corners must be a bool or None, got "
                        f"{align_corners!r}")
    if align_corners is not None and not linear:
        raise ValueError("interpolate: align_corners can only be set with the linear modes "
                         "(linear, bilinear, trilinear) and bicubic")
    nd = len(shape) - 2
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size and scale_factor")
    spatial = shape[2:]
    scales: tuple[float, ...] | None = None
    if size is not None:
        if recompute_scale_factor:
            raise ValueError("interpolate: recompute_scale_factor is not meaningful with an "
                             "explicit size")
        out = tuple(int(v) for v in _per_dim(size, nd, "size", numbers.Integral))
    else:
        factors = tuple(float(v) for v in _per_dim(scale_factor, nd, "scale_factor", numbers.Real))
        if not all(math.isfinite(f) for f in factors):
            raise ValueError(f"interpolate: scale_factor must be finite, got {scale_factor!r}")
        out = tuple(math.floor(float(i) * f) for i, f in zip(spatial, factors))
        if not recompute_scale_factor:
            scales = factors
    # ('area' is adaptive average pooling, which gives an empty output where a size rounds to 0)
    if mode != "area" and shape[1] == 0:  # (torch: "Non-empty 4D data tensor expected")
        raise ValueError(f"interpolate: mode {mode!r} needs an input with channels, got shape "
                         f"{tuple(shape)}")
    if any(i <= 0 for i in spatial) or any(o < 0 or (o == 0 and mode != "area") for o in out):
        raise ValueError(f"interpolate: input and output sizes must be greater than 0, got input "
                         f"{tuple(spatial)} and output {out}")
    kernel_scales = []
    for d in range(nd):
        i, o = spatial[d], out[d]
        if linear and align_corners:
            s = real(i - 1) / real(o - 1) if o > 1 else real(0)
        elif scales is not None and scales[d] > 0:
            s = real(1.0 / scales[d])
        else:
            s = real(i) / real(o) if o else real(0)  # (o == 0: an empty 'area' output)
        kernel_scales.append(float(s))
    return (*shape[:2], *out), tuple(kernel_scales)


def _aa_filter(mode: str, x: Any, real: Any) -> Any:
    """torch's aa_filter of `mode` at x (in `real`): the triangle, or Keys' cubic with A = -0.5."""
    x = abs(real(x))
    if mode == "bilinear":
        return real(1.0 - float(x)) if x < 1 else real(0)
    a = real(-0.5)
    if x < 1:
        return ((a + real(2)) * x - (a + real(3))) * x * x + real(1)
    if x < 2:
        return ((a * x - real(5) * a) * x + real(8) * a) * x - real(4) * a
    return real(0)


def antialias_weights(mode: str, in_size: int, out_size: int, scale: float, real: Any
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, count, weights (out_size, taps)) of F.interpolate(antialias=True) along one dim
    with torch's `scale` (area_pixel_compute_scale), as torch's _compute_weights_aa works them
    out: C++'s promotions (a product with 0.5 in double, then `real`), truncating casts, the
    weights summed and normalised in `real`."""
    real = np.dtype(real).type
    s = real(scale)
    interp = 2 if mode == "bilinear" else 4
    support = real(interp * 0.5 * float(s)) if s >= 1 else real(interp * 0.5)
    taps = int(math.ceil(float(support))) * 2 + 1
    invscale = real(1.0 / float(s)) if s >= 1 else real(1)
    first = np.zeros(out_size, np.int32)
    count = np.zeros(out_size, np.int32)
    weights = np.zeros((out_size, taps), real)
    for i in range(out_size):
        center = real(float(s) * (i + 0.5))
        lo = max(int(float(center - support) + 0.5), 0)
        n = min(int(float(center + support) + 0.5), in_size) - lo
        w = [_aa_filter(mode, real(float(real(j + lo) - center) + 0.5) * float(invscale), real)
             for j in range(max(n, 0))]
        total = real(0)
        for v in w:
            total = real(total + v)
        if total != 0:
            w = [real(v / total) for v in w]
        if n <= 0 or lo >= in_size:  # (torch reads the first tap anyway, with a weight of 0)
            lo, n, w = min(lo, in_size - 1), 1, [real(0)]
        first[i], count[i] = lo, n
        weights[i, :len(w)] = w
    return first, count, weights


class InterpolatePlan(GatherPlan):
    """F.interpolate for one input shape, dtype and set of arguments (cl/interpolate.cl)."""

    def __init__(self, dev: Device, input_shape: Sequence[int], size: Any, scale_factor: Any,
                 mode: str, align_corners: bool | None, recompute_scale_factor: bool | None,
                 dtype: np.dtype, antialias: bool = False) -> None:
        shape = shape_ints(input_shape, "input_shape")
        # (torch's index arithmetic: double for double tensors but in the 2-d nearest modes)
        double = np.dtype(dtype) == np.float64 and (mode in _SMOOTH or len(shape) != 4)
        out_shape, scales = output_geometry(shape, size, scale_factor, mode, align_corners,
                                            recompute_scale_factor, antialias,
                                            real=np.float64 if double else np.float32)
        if mode == "area":
            raise ValueError("interpolate: mode 'area' is adaptive_avg_pool (clconv.interpolate "
                             "runs it as that); InterpolatePlan does the other modes")
        self._prepare(dev, dtype, {"input": shape}, out_shape, out_shape,
                      {"input": shape, "output": out_shape})
        self.label = f"interpolate ({mode})"
        nd = len(shape) - 2
        lift = 3 - nd
        self.planes = shape[0] * shape[1]
        self.out_dims = (1,) * lift + out_shape[2:]
        self.sizes = (cltypes.make_int4(0, *((1,) * lift + shape[2:])),
                      cltypes.make_int4(0, *self.out_dims),
                      (cltypes.make_double4 if double else cltypes.make_float4)(
                          0, *((1.0,) * lift + scales)))
        defines = precision_defines(self.work)
        # (antialiased: the width's pass result (N, C, H, W_out) is indexed too)
        between = math.prod(shape[:-1]) * out_shape[-1]
        defines.update(MODE=_MODES[mode][0], NSPATIAL=nd, INDEX_T=index_type(
            math.prod(shape), math.prod(out_shape), *((between,) if antialias else ())))
        if align_corners and mode in _SMOOTH:
            defines["ALIGN_CORNERS"] = None
        self.antialias = bool(antialias)
        self.kernel = None if self.antialias else kernel(dev, "interpolate.cl", "interpolate",
                                                         defines)
        if self.antialias:
            # The width, then the height, each a dim whose size changes (torch's order); the
            # weights in the work type, uploaded once.
            self._resample = kernel(dev, "interpolate.cl", "resample_aa", defines)
            self._passes = []
            n, c, h, w = shape
            oh, ow = out_shape[2:]
            for dim, (size_in, size_out) in ((3, (w, ow)), (2, (h, oh))):
                if size_in == size_out:
                    continue
                first, count, weights = antialias_weights(
                    mode, size_in, size_out, scales[dim - 2],
                    np.float64 if double else np.float32)
                src = (n, c, h, w if dim == 3 else ow)
                dst = src[:dim] + (size_out,) + src[dim + 1:]
                inner = math.prod(src[dim + 1:])
                self._passes.append((dst, to_device(first, dev, "first", np.int32),
                                     to_device(count, dev, "count", np.int32),
                                     to_device(weights.astype(self.work), dev, "weights",
                                               self.work),
                                     np.int32(weights.shape[1]), np.int32(size_in),
                                     np.int32(size_out), np.int64(inner)))

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> cl.Event | None:
        if not self.antialias:
            return super().enqueue(arrays, out)
        x = arrays["input"]
        assert x is not None
        if out.size == 0:
            return None
        dev = self.device
        with dev.lock:
            if not self._passes:  # (torch copies where no size changes)
                return cl.enqueue_copy(dev.queue, out.base_data, x.base_data,
                                       byte_count=out.nbytes, src_offset=x.offset,
                                       dst_offset=out.offset)
            src, event = x, None
            for i, (shape, first, count, weights, *sizes) in enumerate(self._passes):
                dst = out if i == len(self._passes) - 1 else empty(dev, shape, self.work)
                event = self._resample(dev.queue, (math.prod(shape),), None, src.base_data,
                                       np.int64(element_offset(src)), dst.base_data,
                                       np.int64(element_offset(dst)), first.base_data,
                                       count.base_data, weights.base_data, *sizes)
                src = dst
            return event


def interpolate(input: ArrayLike, size: Any = None, scale_factor: Any = None,
                mode: str = "nearest", align_corners: bool | None = None,
                recompute_scale_factor: bool | None = None, antialias: bool = False, *,
                out: ArrayLike | None = None) -> ArrayLike:
    """torch.nn.functional.interpolate of an (N, C, *spatial) array (1-3 spatial dims): `size`
    or `scale_factor` (an int/float or one per dim), mode 'nearest', 'nearest-exact', 'linear'
    (3-d input), 'bilinear' (4-d), 'trilinear' (5-d), 'bicubic' (4-d; torch's Keys kernel, A =
    -0.75, edges clamped) (align_corners as torch's, default False) or 'area' (adaptive average
    pooling); antialias=True ('bilinear' and 'bicubic' of a 4-d input) filters as torch's
    antialiased resampling (a downscale averages over its whole footprint). Returns numpy for a
    numpy input, else a device array."""
    shape = shape_of(input)
    out_shape, _ = output_geometry(shape, size, scale_factor, mode, align_corners,
                                   recompute_scale_factor, antialias)
    if mode == "area":
        from .pool import adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d

        pool = (adaptive_avg_pool1d, adaptive_avg_pool2d, adaptive_avg_pool3d)[len(shape) - 3]
        return pool(input, out_shape[2:]) if out is None else pool(input, out_shape[2:], out=out)
    dev = current_device()
    dtype = result_dtype(dev, input=input)
    key = ("interpolate", shape, out_shape, mode, bool(align_corners),
           None if size is not None or recompute_scale_factor else
           _per_dim(scale_factor, len(shape) - 2, "scale_factor", numbers.Real), dtype,
           bool(antialias))
    plan = cached_plan(dev, key, lambda: InterpolatePlan(dev, shape, size, scale_factor, mode,
                                                         align_corners, recompute_scale_factor,
                                                         dtype, antialias))
    return plan.execute({"input": input}, out)
