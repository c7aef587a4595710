"""Convolutions: validate -> choose an algorithm -> enqueue.

Algorithms (same semantics, same results within rounding):
- 'im2col': the cl/im2col.cl kernel writes the column buffer, CLBlast's GEMM multiplies the filters
  (C_out/groups x C_in/groups*k) by it. When the workspace limit has room (`plan_columns`), a
  chunk's images lie side by side, (C_in*k) x (images*L), so that one GEMM (strided-batched over
  the groups) covers the chunk (the batch folded into the GEMM's N: the whole path measured
  1.4-1.8x faster on PoCL than one strided-batched GEMM over the images), and
  cl/batch_epilogue.cl moves the staged (C_out, images*L) result into place with the bias and
  activation. Otherwise each chunk's GEMM writes the output directly (batched over the images or
  the groups) and cl/epilogue.cl adds bias and activation in place. 1x1 stride-1 unpadded
  convolutions use the input as the column matrix (no im2col; folding measured no gain there).
- 'direct': loops, no GEMM. Groups with few input channels each (C_in/groups <= GROUPED_MAX_CIN,
  e.g. depthwise) run cl/conv_grouped.cl (a vector of adjacent outputs per work-item, taps
  unrolled); the others cl/conv_direct.cl (one work-item per output element). Bias/ReLU fused.
- 'winograd': 2-d 3x3 stride-1 undilated convolutions by Winograd's F(2x2, 3x3) (cl/winograd.cl):
  input and filter transforms, 16 * groups GEMMs in one strided-batched CLBlast call, output
  transform with bias and activation fused. 2.25x fewer multiplies; see cl/winograd.cl for its
  rounding and for how an Inf/NaN input spreads.
- 'auto': measured on first sight of a (device, shape, dtype) and remembered (clconv.autotune), or
  the fixed `rule_choice` with CLCONV_AUTO=rule; it chooses between 'im2col' and 'direct' only, the
  two that keep PyTorch's Inf/NaN semantics ('winograd' is opt-in).

The column buffer is bounded by `workspace_limit` bytes (default: `default_workspace_limit`): the
batch is processed in chunks, and an image whose columns alone exceed the limit in ranges of output
positions; Winograd's transformed tiles likewise, by images and then by rows of tiles. Results do
not depend on the split.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyopencl.array as cla

from . import autotune
from ..blas import clblast as gemm
from ..runtime.transfer import (ArrayLike, check_fits, deliver, element_offset, empty, index_type,
                     is_device_array, result_dtype, to_device)
from ..runtime.device import Device, current_device
from ..runtime.errors import UnsupportedError, device_memory_errors, sizes_text
from .unfold import enqueue_im2col
from .precision import check_precision, compute_dtype, load, store
from .geometry import ConvGeometry, IntOrTuple, PaddingArg, conv_geometry
from ..runtime.program import kernel, precision_defines
from ..runtime.memory import column_buffer, default_workspace_limit

__all__ = ["ALGORITHMS", "ACTIVATIONS", "conv1d", "conv2d", "conv3d", "choose_algorithm",
           "rule_choice", "applicable_algorithms", "winograd_unsupported", "warmup",
           "workspace_size", "ColumnPlan", "plan_columns", "WinogradPlan", "plan_winograd",
           "require_gemm", "resolve_workspace_limit"]

ALGORITHMS = ("auto", "im2col", "direct", "winograd")
GROUPED_MAX_CIN = 16  # 'direct' runs cl/conv_grouped.cl up to this many input channels per group
ACTIVATIONS = (None, "relu")


def conv1d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None) -> ArrayLike:
    """1-d convolution: input (N, C_in, L) or (C_in, L), weight (C_out, C_in/groups, k) -> (N, C_out,
    L_out). Arguments as `conv2d`."""
    return convolution(1, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       algorithm, activation, workspace_limit)


def conv2d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None) -> ArrayLike:
    """2-d convolution (cross-correlation) with torch.nn.functional.conv2d's semantics.

    input (N, C_in, H, W) or unbatched (C_in, H, W); weight (C_out, C_in/groups, kh, kw); bias
    (C_out,) or None. stride, dilation: int or pair (>= 1); padding: int or pair (>= 0), 'valid' or
    'same' (stride 1; an odd total padding puts the extra element at the end, as PyTorch does).
    padding_mode: 'zeros' | 'reflect' | 'replicate' | 'circular' (as torch.nn.Conv2d's).
    algorithm: 'auto' | 'im2col' | 'direct' | 'winograd' (3x3 stride-1 only; see the module doc).
    activation: None or 'relu', fused into the last kernel.
    workspace_limit: bytes the column buffer (or Winograd's transforms) may take (None: the
    device's default, `clconv.runtime.memory.default_workspace_limit`). A limit above the device's
    largest single allocation (`Device.max_alloc_bytes`) is capped to it: the workspace is one
    buffer, and the driver refuses a bigger one.
    numpy in -> numpy out; pyopencl Array in -> pyopencl Array out on the current device, nothing
    copied to the host. Returns (N, C_out, H_out, W_out).
    """
    return convolution(2, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       algorithm, activation, workspace_limit)


def conv3d(input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None) -> ArrayLike:
    """3-d convolution: input (N, C_in, D, H, W) or unbatched, weight (C_out, C_in/groups, kd, kh,
    kw) -> (N, C_out, D_out, H_out, W_out). Arguments as `conv2d`."""
    return convolution(3, input, weight, bias, stride, padding, dilation, groups, padding_mode,
                       algorithm, activation, workspace_limit)


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


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


def applicable_algorithms(dev: Device, geo: ConvGeometry, dtype: Any = np.float32) -> list[str]:
    """The algorithms algorithm='auto' may pick for `geo` on `dev` (what it measures), rule's first.

    'winograd' is never among them: its transforms mix the inputs of a whole tile, so one Inf or NaN
    input turns neighbouring outputs into NaN where PyTorch keeps them finite. It is opt-in.
    """
    found = ["direct"]
    if gemm.available():
        found.append("im2col")
    first = rule_choice(dev, geo, dtype)
    return [first] + [a for a in found if a != first]


def rule_choice(dev: Device, geo: ConvGeometry, dtype: Any = np.float32) -> str:
    """The fixed rule for algorithm='auto' (used with CLCONV_AUTO=rule, and before measuring):

    'direct' when CLBlast is not installed, or when the groups have few input channels each
    (C_in/groups <= GROUPED_MAX_CIN: depthwise and narrow grouped convolutions, where a GEMM per
    group has a handful of rows and cl/conv_grouped.cl wins); 'im2col' otherwise. Never 'winograd'
    (see `applicable_algorithms`), although it measured 1.4-2.3x faster than untuned im2col on
    ResNet-50's 3x3 layers on PoCL: ask for it by name where inputs are known to be finite.
    """
    if not gemm.available():
        return "direct"
    if geo.groups > 1 and geo.cin_per_group <= GROUPED_MAX_CIN:
        return "direct"
    return "im2col"


def choose_algorithm(dev: Device, geo: ConvGeometry, algorithm: str,
                     dtype: Any = np.float32) -> str:
    """The algorithm that runs for `algorithm`, without measuring anything.

    An explicit name is checked ('winograd' raises ValueError for shapes it cannot compute) and
    returned. 'auto' gives the remembered choice for (device, geometry, dtype) if there is one
    (see clconv.autotune), else `rule_choice` (`convolution` then measures, unless
    CLCONV_AUTO=rule).
    """
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm == "winograd":
        why = winograd_unsupported(geo, dtype)
        if why is not None:
            raise ValueError(f"algorithm='winograd' cannot compute this convolution: {why}; use "
                             f"algorithm='auto', 'im2col' or 'direct'")
    if algorithm != "auto":
        return algorithm
    remembered = autotune.lookup(dev, geo, dtype)
    if remembered is not None and remembered in applicable_algorithms(dev, geo, dtype):
        return remembered
    return rule_choice(dev, geo, dtype)


def _needs_measuring(dev: Device, geo: ConvGeometry, algorithm: str, dtype: Any) -> bool:
    return (algorithm == "auto" and autotune.mode() == "measure"
            and autotune.lookup(dev, geo, dtype) is None
            and len(applicable_algorithms(dev, geo, dtype)) > 1)


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


def resolve_workspace_limit(dev: Device, workspace_limit: int | None) -> int:
    """The workspace bound in bytes: the default, or the caller's limit capped at the device's
    largest single allocation (the workspace is one buffer; a bigger one the driver refuses)."""
    if workspace_limit is None:
        return default_workspace_limit(dev)
    if isinstance(workspace_limit, bool) or not isinstance(workspace_limit, numbers.Integral):
        raise TypeError(f"workspace_limit must be an int number of bytes, got {workspace_limit!r}")
    if workspace_limit < 1:
        raise ValueError(f"workspace_limit must be positive, got {workspace_limit}")
    return min(int(workspace_limit), dev.max_alloc_bytes)


def require_gemm(what: str) -> None:
    """Raises UnsupportedError, saying how to install pyclblast, when `what` (an operation that
    runs CLBlast's GEMM) cannot run because pyclblast is missing. Call before any upload or
    allocation."""
    if not gemm.available():
        raise UnsupportedError(f"{what} needs CLBlast's GEMM. {gemm.missing_reason()}")


def workspace_size(input: Any, weight: Any, stride: IntOrTuple = 1, padding: PaddingArg = 0,
                   dilation: IntOrTuple = 1, groups: int = 1, *, algorithm: str = "auto",
                   padding_mode: str = "zeros", dtype: Any = np.float32) -> int:
    """Bytes of workspace a convolution needs unsplit (0 for the direct and 1x1 paths): the im2col
    column buffer, or Winograd's transforms. (Given more, the im2col path folds the batch into the
    GEMM, which also stages the (C_out, N * L) GEMM result there: (C_in * k + C_out) * L values an
    image; the default limit usually allows it.)

    input/weight: arrays or shapes ((N, C_in, *spatial), (C_out, C_in/groups, *kernel)); the
    dimensionality follows the weight. A call with a smaller `workspace_limit` splits to fit it.
    """
    def dims(v: Any) -> tuple[int, ...]:
        is_shape = isinstance(v, (tuple, list)) and all(isinstance(d, numbers.Integral) for d in v)
        return tuple(int(d) for d in v) if is_shape else _shape(v)

    x_shape, w_shape = dims(input), dims(weight)
    nd = len(w_shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"weight must have 3, 4 or 5 dims, got shape {w_shape}")
    if len(x_shape) == nd + 1:
        x_shape = (1, *x_shape)
    geo = conv_geometry(nd, x_shape, w_shape, stride, padding, dilation, groups, padding_mode)
    dt = np.dtype(getattr(input, "dtype", dtype))
    algo = choose_algorithm(current_device(), geo, algorithm, dt)
    if algo == "winograd":
        return plan_winograd(geo, dt.itemsize, 2**62).nbytes
    if algo != "im2col" or geo.is_pointwise:
        return 0
    return geo.batch * geo.column_rows * geo.out_spatial * dt.itemsize


def convolution(nd: int, input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None,
                stride: IntOrTuple, padding: PaddingArg, dilation: IntOrTuple, groups: int,
                padding_mode: str, algorithm: str, activation: str | None = None,
                workspace_limit: int | None = None) -> ArrayLike:
    """N-d convolution (nd in 1, 2, 3); see conv2d."""
    dev = current_device()
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    limit = resolve_workspace_limit(dev, workspace_limit)
    dtype = result_dtype(dev, input=input, weight=weight, bias=bias)
    x_shape = _shape(input)
    unbatched = len(x_shape) == nd + 1
    geo = conv_geometry(nd, (1, *x_shape) if unbatched else x_shape, _shape(weight), stride,
                        padding, dilation, groups, padding_mode)
    if bias is not None and _shape(bias) != (geo.out_channels,):
        raise ValueError(f"bias must have shape ({geo.out_channels},) (one per output channel), got "
                         f"{_shape(bias)}")
    algo = choose_algorithm(dev, geo, algorithm, dtype)
    if algo != "direct":
        require_gemm(f"conv{nd}d with algorithm={algo!r}")
    check_precision(dev, dtype)
    # float16 is stored as such but computed in float32 (CLBlast's half GEMM accumulates in half);
    # `load`/`store` are the identity for float32 and float64.
    work = compute_dtype(dtype)
    for what, shape in (("output", geo.output_shape), ("input", geo.input_shape),
                        ("weight", geo.weight_shape)):
        check_fits(dev, what, shape, work)
    plan = plan_workspace(geo, algo, work.itemsize, limit)
    with device_memory_errors(dev, lambda: sizes_text(
            f"conv{nd}d ({algo})", dtype, plan.nbytes if plan else 0, input=geo.input_shape,
            weight=geo.weight_shape, output=geo.output_shape)):
        out = empty(dev, geo.output_shape, work)
        if out.size:
            x = load(dev, input, "input", dtype)
            w = load(dev, weight, "weight", dtype)
            b = None if bias is None else load(dev, bias, "bias", dtype)
            if _needs_measuring(dev, geo, algorithm, dtype):  # once per (device, shape, dtype)
                algo = autotune.measure(
                    dev, geo, dtype, applicable_algorithms(dev, geo, dtype),
                    lambda a: run_algorithm(dev, geo, a, x, w, b, out, activation, limit))
                plan = plan_workspace(geo, algo, work.itemsize, limit)
            run_algorithm(dev, geo, algo, x, w, b, out, activation, limit, plan)
        out = store(dev, out, dtype)
        return deliver(out[0] if unbatched else out, not is_device_array(input))


def warmup(input_shape: Sequence[int], weight_shape: Sequence[int], bias: bool = True,
           stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
           groups: int = 1, *, padding_mode: str = "zeros", algorithm: str = "auto",
           activation: str | None = None, workspace_limit: int | None = None,
           dtype: Any = np.float32) -> str:
    """Builds the kernels of a convolution and makes algorithm='auto''s choice ahead of time.

    input_shape (N, C_in, *spatial) or unbatched, weight_shape (C_out, C_in/groups, *kernel): the
    dimensionality follows the weight; the other arguments as `conv2d`. Runs the convolution once on
    the current device with random data (measuring the algorithms first when 'auto' has no choice
    for this shape yet, see clconv.autotune), so that the first real call neither builds nor
    measures. Returns the algorithm that calls with these arguments will run.
    """
    dev = current_device()
    x_shape, w_shape = tuple(int(d) for d in input_shape), tuple(int(d) for d in weight_shape)
    nd = len(w_shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(f"weight_shape must have 3, 4 or 5 dims, got {w_shape}")
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)

    def upload(shape: tuple[int, ...]) -> cla.Array:
        return cla.to_device(dev.queue, rng.standard_normal(shape).astype(dt))

    x, w = upload(x_shape), upload(w_shape)
    b = upload((w_shape[0],)) if bias else None
    convolution(nd, x, w, b, stride, padding, dilation, groups, padding_mode, algorithm,
                activation, workspace_limit)
    dev.queue.finish()
    unbatched = len(x_shape) == nd + 1
    geo = conv_geometry(nd, (1, *x_shape) if unbatched else x_shape, w_shape, stride, padding,
                        dilation, groups, padding_mode)
    return choose_algorithm(dev, geo, algorithm, dt)


def plan_workspace(geo: ConvGeometry, algorithm: str, itemsize: int,
                   limit: int) -> ColumnPlan | WinogradPlan | None:
    """The split of `algorithm`'s workspace for `geo` (None for 'direct', which needs none)."""
    if algorithm == "im2col":
        return plan_columns(geo, itemsize, limit)
    if algorithm == "winograd":
        return plan_winograd(geo, itemsize, limit)
    return None


def run_algorithm(dev: Device, geo: ConvGeometry, algorithm: str, x: cla.Array, w: cla.Array,
                  b: cla.Array | None, out: cla.Array, activation: str | None = None,
                  limit: int | None = None, plan: ColumnPlan | WinogradPlan | None = None) -> None:
    """Enqueues the convolution `geo` of contiguous device arrays with the named algorithm
    ('im2col', 'direct' or 'winograd'), its workspace bounded by `limit` bytes (or split as
    `plan`)."""
    if plan is None and algorithm != "direct":
        limit = default_workspace_limit(dev) if limit is None else limit
        plan = plan_workspace(geo, algorithm, out.dtype.itemsize, limit)
    if algorithm == "im2col":
        assert isinstance(plan, ColumnPlan)
        run_im2col(dev, geo, plan, x, w, b, out, activation)
    elif algorithm == "winograd":
        assert isinstance(plan, WinogradPlan)
        run_winograd(dev, geo, plan, x, w, b, out, activation)
    elif algorithm == "direct":
        run_direct(dev, geo, x, w, b, out, activation)
    else:
        raise ValueError(f"algorithm must be 'im2col', 'direct' or 'winograd', got {algorithm!r}")


def _grouped_launch(geo: ConvGeometry) -> tuple[dict[str, object], tuple[int, int, int]]:
    """cl/conv_grouped.cl's VW/SEGW/ROWS for `geo` and its NDRange."""
    od, oh, ow = (1,) * (3 - geo.nd) + geo.out_size
    iw = geo.in_size[-1]
    kw, sw, dw, pw = geo.kernel[-1], geo.stride[-1], geo.dilation[-1], geo.pad_lo[-1]
    # The interior [lo, hi) of the kernel's OW_LO/OW_HI: outputs whose vector loads stay inside.
    lo = (pw + sw - 1) // sw
    last = (kw - 1) * dw + (1 if sw == 2 else 0) - pw
    hi = (iw - 1 - last) // sw + 1 if iw - 1 - last >= 0 else 0
    interior = min(max(hi, lo), ow) - lo
    vw = 8 if interior >= 8 else 4 if interior >= 4 else 2
    segw = vw * -(-min(ow, 256) // vw)  # whole lines up to 256 outputs
    rows = min(oh, -(-64 // ow))  # short lines: several per work-item (>= 64 outputs)
    global_size = (-(-ow // segw), -(-oh // rows), geo.batch * geo.out_channels * od)
    return {"VW": vw, "SEGW": segw, "ROWS": rows}, global_size


def run_direct(dev: Device, geo: ConvGeometry, x: cla.Array, w: cla.Array, b: cla.Array | None,
               out: cla.Array, activation: str | None = None) -> None:
    """Enqueues the direct loops for the whole batch (bias and activation fused): cl/conv_grouped.cl
    when the groups have at most GROUPED_MAX_CIN input channels each, else cl/conv_direct.cl."""
    defines = geo.defines()
    # The weight counts too: a huge filter bank can meet a small input (padding) and output.
    defines.update(precision_defines(out.dtype), GROUPS=geo.groups, COUT=geo.out_channels,
                   INDEX_T=index_type(element_offset(x) + x.size, element_offset(out) + out.size,
                                      element_offset(w) + w.size))
    if b is not None:
        defines["HAS_BIAS"] = None
    if activation == "relu":
        defines["RELU"] = None
    od, oh, ow = (1,) * (3 - geo.nd) + geo.out_size
    if geo.cin_per_group <= GROUPED_MAX_CIN:
        extra, global_size = _grouped_launch(geo)
        defines.update(extra)
        source, name = "conv_grouped.cl", "conv_grouped"
    else:
        global_size = (ow, oh, geo.batch * geo.out_channels * od)
        source, name = "conv_direct.cl", "conv_direct"
    bias_buf, bias_off = (b.base_data, element_offset(b)) if b is not None else (out.base_data, 0)
    with dev.lock:
        kernel(dev, source, name, defines)(
            dev.queue, global_size, None,
            x.base_data, np.int64(element_offset(x)), w.base_data, np.int64(element_offset(w)),
            bias_buf, np.int64(bias_off), out.base_data, np.int64(element_offset(out)))


def run_im2col(dev: Device, geo: ConvGeometry, plan: ColumnPlan, x: cla.Array, w: cla.Array,
               b: cla.Array | None, out: cla.Array, activation: str | None = None) -> None:
    """Enqueues im2col + GEMM (+ epilogue) for the whole batch, split as `plan` says."""
    m, k, l = geo.cout_per_group, geo.cin_per_group * geo.ksize, geo.out_spatial
    rows, groups = geo.column_rows, geo.groups
    x_image, out_image = geo.in_channels * geo.in_spatial, geo.out_channels * l
    x_off, w_off, out_off = element_offset(x), element_offset(w), element_offset(out)
    folded = plan.folded and not geo.is_pointwise
    defines = geo.defines()
    with dev.lock:
        for n0 in range(0, geo.batch, plan.batch_chunk):
            nb = min(plan.batch_chunk, geo.batch - n0)
            if folded:
                # The chunk's columns side by side, (rows, nb * l); one GEMM per group (batched over
                # the groups) into the (C_out, nb * l) result staged after them; then into place.
                n = nb * l
                buf = column_buffer(dev, (rows * n + geo.out_channels * n,), out.dtype)
                enqueue_im2col(dev, defines, nb, x, x_off + n0 * x_image, buf, 0, 0, l,
                               ld=n, batch_stride=l)
                gemm.gemm(dev, m, n, k, w, w_off, m * k, buf, 0, k * n, buf, rows * n, m * n,
                          groups)
                enqueue_batch_epilogue(dev, buf, rows * n, out, out_off + n0 * out_image, b, nb,
                                       geo.out_channels, l, activation)
                continue
            for l0 in range(0, l, plan.col_chunk):
                lc = min(plan.col_chunk, l - l0)
                c_off = out_off + n0 * out_image + l0
                if geo.is_pointwise:  # the input already is the column matrix (ld = l)
                    col, col_off, ldb, col_image = x, x_off + n0 * x_image + l0, l, x_image
                else:
                    col = column_buffer(dev, (nb * rows * lc,), out.dtype)
                    col_off, ldb, col_image = 0, lc, rows * lc
                    enqueue_im2col(dev, defines, nb, x, x_off + n0 * x_image, col, 0, l0, lc)
                if nb == 1:
                    # One GEMM, batched over the groups.
                    gemm.gemm(dev, m, lc, k, w, w_off, m * k, col, col_off, k * ldb,
                              out, c_off, m * l, groups, ldb=ldb, ldc=l)
                elif groups <= nb:
                    # One batched GEMM per group; the filters are shared by the batch (A stride 0).
                    for g in range(groups):
                        gemm.gemm(dev, m, lc, k, w, w_off + g * m * k, 0,
                                  col, col_off + g * k * ldb, col_image,
                                  out, c_off + g * m * l, out_image, nb, ldb=ldb, ldc=l)
                else:
                    # More groups than images: one batched GEMM per image, over the groups.
                    for i in range(nb):
                        gemm.gemm(dev, m, lc, k, w, w_off, m * k,
                                  col, col_off + i * col_image, k * ldb,
                                  out, c_off + i * out_image, m * l, groups, ldb=ldb, ldc=l)
        if not folded and (b is not None or activation is not None):
            enqueue_epilogue(dev, out, b, geo.batch, geo.out_channels, l, activation)


def run_winograd(dev: Device, geo: ConvGeometry, plan: WinogradPlan, x: cla.Array, w: cla.Array,
                 b: cla.Array | None, out: cla.Array, activation: str | None = None) -> None:
    """Enqueues Winograd F(2x2, 3x3) (cl/winograd.cl + one strided-batched GEMM per chunk) for the
    whole batch, split as `plan` says. `geo` must pass `winograd_unsupported`."""
    why = winograd_unsupported(geo, out.dtype)
    if why is not None:
        raise ValueError(f"algorithm='winograd' cannot compute this convolution: {why}")
    th, tw = winograd_tiles(geo)
    cin_g, cout_g, cout = geo.cin_per_group, geo.cout_per_group, geo.out_channels
    x_image, out_image = geo.in_channels * geo.in_spatial, cout * geo.out_spatial
    x_off, w_off, out_off = element_offset(x), element_offset(w), element_offset(out)
    space = plan.nbytes // out.dtype.itemsize
    defines = geo.defines()
    defines.update(precision_defines(out.dtype), GROUPS=geo.groups, COUT=cout,
                   INDEX_T=index_type(x_off + x.size, out_off + out.size, space))
    if b is not None:
        defines["HAS_BIAS"] = None
    if activation == "relu":
        defines["RELU"] = None
    bias_buf, bias_off = (b.base_data, element_offset(b)) if b is not None else (out.base_data, 0)
    u_off = 0
    v_off = 16 * cout * cin_g  # U[16][C_out][C_in/groups] first, then each chunk's V and M
    with dev.lock:
        ws = column_buffer(dev, (space,), out.dtype)
        kernel(dev, "winograd.cl", "winograd_filter", defines)(
            dev.queue, (cin_g, cout), None, w.base_data, np.int64(w_off), ws.base_data,
            np.int64(u_off))
        for n0 in range(0, geo.batch, plan.batch_chunk):
            nb = min(plan.batch_chunk, geo.batch - n0)
            for th0 in range(0, th, plan.row_chunk):
                nth = min(plan.row_chunk, th - th0)
                tiles = nb * nth * tw
                m_off = v_off + 16 * geo.in_channels * tiles
                kernel(dev, "winograd.cl", "winograd_input", defines)(
                    dev.queue, (tw, nth, nb * geo.in_channels), None,
                    x.base_data, np.int64(x_off + n0 * x_image), ws.base_data, np.int64(v_off),
                    np.int32(th0), np.int32(nth), np.int64(tiles))
                # M[e, g] (C_out/groups x tiles) = U[e, g] @ V[e, g] for the 16 * groups (e, g).
                gemm.gemm(dev, cout_g, tiles, cin_g, ws, u_off, cout_g * cin_g, ws, v_off,
                          cin_g * tiles, ws, m_off, cout_g * tiles, 16 * geo.groups)
                kernel(dev, "winograd.cl", "winograd_output", defines)(
                    dev.queue, (tw, nth, nb * cout), None, ws.base_data, np.int64(m_off),
                    bias_buf, np.int64(bias_off), out.base_data,
                    np.int64(out_off + n0 * out_image), np.int32(th0), np.int32(nth),
                    np.int64(tiles))


def enqueue_batch_epilogue(dev: Device, r: cla.Array, r_offset: int, out: cla.Array,
                           out_offset: int, b: cla.Array | None, images: int, channels: int,
                           spatial: int, activation: str | None = None) -> None:
    """out[i, c, :] = act(r[c, i * spatial:(i + 1) * spatial] + b[c]) for i < images: a folded
    GEMM result (channels, images * spatial) into place (cl/batch_epilogue.cl). Offsets in
    elements. Call holding dev.lock."""
    defines = precision_defines(out.dtype)
    defines.update(CHANNELS=channels, SPATIAL=spatial,
                   INDEX_T=index_type(r_offset + images * channels * spatial,
                                      out_offset + images * channels * spatial))
    if b is not None:
        defines["HAS_BIAS"] = None
    if activation == "relu":
        defines["RELU"] = None
    bias_buf, bias_off = (b.base_data, element_offset(b)) if b is not None else (out.base_data, 0)
    kernel(dev, "batch_epilogue.cl", "batch_epilogue", defines)(
        dev.queue, (spatial, channels, images), None, r.base_data, np.int64(r_offset),
        out.base_data, np.int64(out_offset), bias_buf, np.int64(bias_off))


def enqueue_epilogue(dev: Device, out: cla.Array, b: cla.Array | None, batch: int, channels: int,
                     spatial: int, activation: str | None = None) -> None:
    """out[n, c, :] = act(out[n, c, :] + b[c]) on a (batch, channels, spatial) tensor, in place.
    Call holding dev.lock."""
    defines = precision_defines(out.dtype)
    defines.update(CHANNELS=channels, SPATIAL=spatial,
                   INDEX_T=index_type(element_offset(out) + out.size))
    if b is not None:
        defines["HAS_BIAS"] = None
    if activation == "relu":
        defines["RELU"] = None
    bias_buf, bias_off = (b.base_data, element_offset(b)) if b is not None else (out.base_data, 0)
    kernel(dev, "epilogue.cl", "epilogue", defines)(
        dev.queue, (spatial, channels, batch), None, out.base_data, np.int64(element_offset(out)),
        bias_buf, np.int64(bias_off))


def enqueue_bias(dev: Device, out: cla.Array, b: cla.Array, batch: int, channels: int,
                 spatial: int) -> None:
    """out[n, c, :] += b[c] (the epilogue without activation). Call holding dev.lock."""
    enqueue_epilogue(dev, out, b, batch, channels, spatial)
