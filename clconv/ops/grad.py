"""Gradients of the convolutions, equal to torch.nn.grad's conv{1,2,3}d_input / conv{1,2,3}d_weight.

- conv*d_input: the gradient w.r.t. the input is the adjoint of the convolution applied to
  grad_output: GEMM with the transposed filters, then col2im (`transpose.Adjoint`, the same
  code as the transposed convolutions).
- conv*d_weight: im2col of the input, then per group grad_W_g += grad_out_g (C_out/g x L) @
  cols_g^T (L x C_in/g * K). CLBlast's batched GEMM writes one matrix per image, so the images'
  products land in a partial buffer (batch, C_out, C_in/g * K) and one more GEMM with a row of ones
  sums them (2 + groups GEMM calls per batch chunk instead of one per image and group). The columns
  and partials stay within `workspace_limit` (`plan_weight_grad`): batch chunks, else one image at a
  time straight into the weight, else ranges of an image's output positions, each range's product
  added to the weight (GEMM beta = 1).
- `enqueue_bias_grad`: the bias gradient (sum of grad_output over batch and space) the same way.

Beyond torch.nn.grad: a keyword `padding_mode` ('zeros' | 'reflect' | 'replicate' | 'circular') for
the gradients of convolutions with non-zero padding, and padding='same' / 'valid' as conv2d accepts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..blas import clblast, packed
from ..blas.engine import gemm_engine
from ..runtime.device import Device, current_device
from ..runtime.memory import column_buffer, resolve_workspace_limit
from ..runtime.transfer import ArrayLike, element_offset, index_type, result_dtype
from .conv_algorithms import ColumnPlan
from .dims import per_dimensions
from .geometry import ConvGeometry, IntOrTuple, PaddingArg, conv_geometry
from .weight_grad_paths import weight_grad_route
from .launch import Im2col
from .precision import plan_dtype
from .plan import Plan, cached_plan, shape_ints, shape_of
from .transpose import Adjoint

__all__ = ["InputGradPlan", "WeightGradPlan", "cached_grad_plan", "conv1d_input", "conv1d_weight", "conv2d_input",
           "conv2d_weight", "conv3d_input", "conv3d_weight", "enqueue_bias_grad", "plan_conv_input",
           "plan_conv_weight", "plan_weight_grad", "WeightGrad"]


def _size_arg(value: Any, nd: int, name: str, layout: str) -> tuple[int, ...]:
    """A shape argument (tuple, list or torch.Size of ints >= 0, `shape_ints`) with nd + 2
    entries."""
    size = shape_ints(value, name)
    if len(size) != nd + 2:
        raise ValueError(f"{name} must have {nd + 2} entries {layout} for a {nd}-d convolution, "
                         f"got {size}")
    return size


def _check_grad_output(geo: ConvGeometry, grad_shape: Sequence[int], what: str) -> None:
    shape = tuple(grad_shape)
    if shape != geo.output_shape:
        raise ValueError(f"grad_output must have the convolution's output shape {geo.output_shape} "
                         f"(for {what}), got {shape}")


def _input_grad(nd: int, input_size: Sequence[int], weight: ArrayLike, grad_output: ArrayLike,
                stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                groups: int = 1, *, padding_mode: str = "zeros",
                workspace_limit: int | None = None, out: ArrayLike | None = None) -> ArrayLike:
    """conv{nd}d_input (the template of the public functions at the end of the module)."""
    dev = current_device()
    dtype = result_dtype(dev, weight=weight, grad_output=grad_output)
    size = _size_arg(input_size, nd, "input_size", "(N, C_in, *spatial)")
    plan = cached_grad_plan(dev, "input_grad", nd,
                            (size, shape_of(weight), shape_of(grad_output)), dtype,
                            (stride, padding, dilation, groups, padding_mode), workspace_limit)
    return plan.execute({"weight": weight, "grad_output": grad_output}, out, check=False)


def _weight_grad(nd: int, input: ArrayLike, weight_size: Sequence[int], grad_output: ArrayLike,
                 stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                 groups: int = 1, *, padding_mode: str = "zeros",
                 workspace_limit: int | None = None, out: ArrayLike | None = None) -> ArrayLike:
    """conv{nd}d_weight (the template of the public functions at the end of the module)."""
    dev = current_device()
    dtype = result_dtype(dev, input=input, grad_output=grad_output)
    size = _size_arg(weight_size, nd, "weight_size", "(C_out, C_in/groups, *kernel)")
    plan = cached_grad_plan(dev, "weight_grad", nd,
                            (shape_of(input), size, shape_of(grad_output)), dtype,
                            (stride, padding, dilation, groups, padding_mode), workspace_limit)
    return plan.execute({"input": input, "grad_output": grad_output}, out, check=False)


def cached_grad_plan(dev: Device, kind: str, nd: int, shapes: tuple, dtype: np.dtype,
                     conv_args: tuple, workspace_limit: int | None = None) -> Any:
    """The functional API's gradient plan (made on first use): `kind` 'input_grad' (shapes:
    input_size, weight, grad_output) or 'weight_grad' (input, weight_size, grad_output),
    `conv_args` (stride, padding, dilation, groups, padding_mode)."""
    plan_class = InputGradPlan if kind == "input_grad" else WeightGradPlan
    return cached_plan(dev, (kind, nd, *shapes, dtype, *conv_args, workspace_limit),
                       lambda: plan_class(dev, nd, *shapes, *conv_args, dtype, workspace_limit))


def plan_conv_input(nd: int, input_size: Sequence[int], weight_shape: Sequence[int],
                    stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                    groups: int = 1, *, padding_mode: str = "zeros",
                    workspace_limit: int | None = None, dtype: Any = np.float32) -> InputGradPlan:
    """A plan for conv{nd}d_input on the current device: `plan(weight, grad_output, out=None)`."""
    size = _size_arg(input_size, nd, "input_size", "(N, C_in, *spatial)")
    w_shape = shape_ints(weight_shape, "weight_shape")
    geo = conv_geometry(nd, size, w_shape, stride, padding, dilation, groups, padding_mode)
    return InputGradPlan(current_device(), nd, size, w_shape, geo.output_shape, stride, padding,
                         dilation, groups, padding_mode, plan_dtype(dtype), workspace_limit)


def plan_conv_weight(nd: int, input_shape: Sequence[int], weight_size: Sequence[int],
                     stride: IntOrTuple = 1, padding: PaddingArg = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, *, padding_mode: str = "zeros",
                     workspace_limit: int | None = None, dtype: Any = np.float32) -> WeightGradPlan:
    """A plan for conv{nd}d_weight on the current device: `plan(input, grad_output, out=None)`."""
    size = _size_arg(weight_size, nd, "weight_size", "(C_out, C_in/groups, *kernel)")
    x_shape = shape_ints(input_shape, "input_shape")
    geo = conv_geometry(nd, x_shape, size, stride, padding, dilation, groups, padding_mode) \
        if len(x_shape) == nd + 2 else None
    g_shape = geo.output_shape if geo is not None else ()
    return WeightGradPlan(current_device(), nd, x_shape, size, g_shape, stride, padding, dilation,
                          groups, padding_mode, plan_dtype(dtype), workspace_limit)


class InputGradPlan(Plan):
    """conv*d_input, planned: the adjoint of the convolution (clconv.ops.transpose.Adjoint)."""

    result_follows = "grad_output"

    def __init__(self, dev: Device, nd: int, input_size: tuple[int, ...],
                 weight_shape: tuple[int, ...], grad_shape: tuple[int, ...], stride: IntOrTuple,
                 padding: PaddingArg, dilation: IntOrTuple, groups: int, padding_mode: str,
                 dtype: np.dtype, workspace_limit: int | None = None,
                 geometry: ConvGeometry | None = None) -> None:
        if gemm_engine(dev) is clblast:
            clblast.require(f"conv{nd}d_input")
        limit = resolve_workspace_limit(dev, workspace_limit)
        size = tuple(input_size)
        if len(weight_shape) == nd + 2 and isinstance(groups, int) and groups > 0 \
                and len(size) == nd + 2 and size[1] != weight_shape[1] * groups:
            raise ValueError(f"input_size has {size[1]} channels but weight {weight_shape} with "
                             f"groups={groups} expects {weight_shape[1] * groups} (channel mismatch)")
        geo = geometry or conv_geometry(nd, size, weight_shape, stride, padding, dilation, groups,
                                        padding_mode)
        _check_grad_output(geo, grad_shape, f"input_size {size} and weight {weight_shape}")
        self._prepare(dev, dtype, {"weight": tuple(weight_shape), "grad_output": geo.output_shape},
                      geo.input_shape, geo.input_shape,
                      {"grad_output": geo.output_shape, "weight": geo.weight_shape,
                       "output": geo.input_shape})
        self.geometry = geo
        self.adjoint = Adjoint(dev, geo, self.work, False, limit)
        self.workspace_bytes = self.adjoint.workspace_bytes
        self.label = f"conv{nd}d_input"
        self.needs_gemm = self.adjoint.gemm is clblast

    def __call__(self, weight: ArrayLike, grad_output: ArrayLike, *,
                 out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"weight": weight, "grad_output": grad_output}, out)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        self.adjoint.run(arrays["grad_output"], arrays["weight"], None, out)


class WeightGradPlan(Plan):
    """conv*d_weight, planned (see `WeightGrad`)."""

    def __init__(self, dev: Device, nd: int, input_shape: tuple[int, ...],
                 weight_size: tuple[int, ...], grad_shape: tuple[int, ...], stride: IntOrTuple,
                 padding: PaddingArg, dilation: IntOrTuple, groups: int, padding_mode: str,
                 dtype: np.dtype, workspace_limit: int | None = None,
                 geometry: ConvGeometry | None = None) -> None:
        limit = resolve_workspace_limit(dev, workspace_limit)
        if gemm_engine(dev) is clblast:
            clblast.require(f"conv{nd}d_weight")
        if len(input_shape) != nd + 2:
            raise ValueError(f"input must be batched, (N, C_in, *spatial) with {nd + 2} dims, for "
                             f"the weight gradient of a {nd}-d convolution, got shape "
                             f"{tuple(input_shape)}")
        geo = geometry or conv_geometry(nd, input_shape, weight_size, stride, padding, dilation,
                                        groups, padding_mode)
        _check_grad_output(geo, grad_shape, f"input {tuple(input_shape)} and weight_size "
                                            f"{tuple(weight_size)}")
        self._prepare(dev, dtype, {"input": geo.input_shape, "grad_output": geo.output_shape},
                      tuple(weight_size), tuple(weight_size),
                      {"input": geo.input_shape, "grad_output": geo.output_shape,
                       "output": tuple(weight_size)})
        self.geometry = geo
        self.impl = WeightGrad(dev, geo, self.work, limit)
        self.workspace_bytes = self.impl.workspace_bytes
        self.label = f"conv{nd}d_weight"
        self.needs_gemm = self.impl.gemm is clblast

    def __call__(self, input: ArrayLike, grad_output: ArrayLike, *,
                 out: ArrayLike | None = None) -> ArrayLike:
        return self.execute({"input": input, "grad_output": grad_output}, out)

    def enqueue(self, arrays: dict[str, cla.Array | None], out: cla.Array) -> None:
        self.impl.run(arrays["input"], arrays["grad_output"], out)


def _ones(dev: Device, n: int, dtype: np.dtype) -> cla.Array:
    """A device vector of at least n ones (grow-only, one per device and dtype). Hold dev.lock."""
    key = ("ones", np.dtype(dtype).str)
    ones = dev.constants.get(key)
    if ones is None or ones.size < n:
        ones = cla.empty(dev.queue, (max(n, 256),), dtype)
        ones.fill(1)
        dev.constants[key] = ones
    return ones


def plan_weight_grad(geo: ConvGeometry, itemsize: int, limit: int,
                     gemm_scratch: Callable[[int, int], int] | None = None) -> ColumnPlan:
    """How `WeightGrad` splits its workspace to fit in `limit` bytes.

    `batch_chunk` images at a time when at least two fit with their columns and partial weights
    (nbytes = batch_chunk * (columns + weight)); else one image at a time, its product written
    straight into the weight (no partial: nbytes = its columns, 0 for a 1x1 convolution, whose
    columns are the input); else, within an image, `col_chunk` output positions at a time.
    `gemm_scratch(images, columns)`: bytes of the GEMM engine's own buffer for such a chunk (the
    packed GEMM packs its operands into a scratch of its own; CLBlast's temporaries are its own
    business): the chunks are also chosen so that it stays within the limit, down to the packing
    of one column (a register tile's padding, a few hundred bytes), its floor. Raises MemoryError,
    naming the sizes, when not even one column (C_in * prod(kernel) values) fits.
    """
    scratch = gemm_scratch or (lambda images, columns: 0)
    bound = max(limit, scratch(1, 1))  # the packing of one column: the least any split needs
    wsize = geo.out_channels * geo.cin_per_group * geo.ksize  # one partial weight
    columns = 0 if geo.is_pointwise else geo.column_rows * geo.out_spatial  # one image's
    per_image = (columns + wsize) * itemsize
    l = geo.out_spatial
    nb = _largest(2, min(geo.batch, limit // per_image), lambda nb: scratch(nb, l) <= bound)
    if nb >= 2:
        return ColumnPlan(nb, l, nb * per_image)
    if columns * itemsize <= limit and scratch(1, l) <= bound:
        return ColumnPlan(1, l, columns * itemsize)
    column = 0 if geo.is_pointwise else geo.column_rows * itemsize
    if column > limit:
        raise MemoryError(f"workspace_limit={limit} bytes cannot hold even one column of the "
                          f"im2col matrix ({geo.column_rows} values = {column} bytes) of the "
                          f"weight gradient of input {geo.input_shape} (one image's columns: "
                          f"{columns * itemsize} bytes); raise workspace_limit")
    cols = _largest(1, l if not column else limit // column,
                    lambda cols: scratch(1, cols) <= bound)
    return ColumnPlan(1, cols, cols * column)


def _largest(low: int, high: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [low, high] with fits(n) (fits monotone: true up to some n), else low - 1."""
    if high < low or not fits(low):
        return low - 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


class WeightGrad:
    """out (C_out, C_in/groups, *kernel) = sum over the batch of grad_W for the convolution `geo`
    of x (N, C_in, *in_size) with output gradient g (N, C_out, *out_size), configured once.

    im2col of the input, then per group grad_W_g += grad_out_g (C_out/g x L) @ cols_g^T. The
    images' products land in a partial buffer (batch, C_out, C_in/g * K) and one more GEMM with a
    row of ones sums them; the columns and partials stay within `limit` (`plan_weight_grad`);
    every product after the first adds to out (GEMM beta = 1). N = 0 gives zeros."""

    def __init__(self, dev: Device, geo: ConvGeometry, dtype: np.dtype, limit: int) -> None:
        self.dev, self.geo, self.dtype = dev, geo, np.dtype(dtype)
        self.gemm = gemm_engine(dev)
        self.plan = plan_weight_grad(geo, self.dtype.itemsize, limit,
                                     self._gemm_scratch if self.gemm is packed else None) \
            if geo.batch else None
        self.workspace_bytes = self.plan.nbytes if self.plan else 0
        index_t = index_type(geo.batch * geo.in_channels * geo.in_spatial,
                             geo.batch * geo.out_channels * geo.out_spatial,
                             self.workspace_bytes // self.dtype.itemsize)
        # A direct kernel instead of im2col + GEMM (depthwise), if any.
        self.route = weight_grad_route(dev, geo, self.dtype, limit)
        if self.route is not None:
            self.workspace_bytes = self.route.workspace_bytes
            self.im2col = None
            return
        self.im2col = None if geo.is_pointwise or not geo.batch else \
            Im2col(dev, geo.defines(), dtype, index_t)

    def _gemm_scratch(self, images: int, columns: int) -> int:
        """Packing scratch of `run`'s GEMMs for a chunk of `images` images (columns: the image's
        positions) or of one image's `columns` positions."""
        geo, dev, dtype = self.geo, self.dev, self.dtype
        mg, kg = geo.cout_per_group, geo.cin_per_group * geo.ksize
        if images == 1:
            return packed.gemm_scratch_bytes(dev, dtype, mg, kg, columns, geo.groups)
        products = packed.gemm_scratch_bytes(dev, dtype, mg, kg, columns,
                                             images if geo.groups <= images else geo.groups)
        wsize = geo.out_channels * kg
        return max(products, packed.gemm_scratch_bytes(dev, dtype, 1, wsize, images))

    def run(self, x: cla.Array, g: cla.Array, out: cla.Array) -> None:
        geo, plan, dev = self.geo, self.plan, self.dev
        if plan is None:
            with dev.lock:  # pyopencl's fill kernel is shared per context
                out.fill(0)
            return
        if self.route is not None:
            self.route.run(x, g, out)
            return
        gemm = self.gemm
        mg, kg, l = geo.cout_per_group, geo.cin_per_group * geo.ksize, geo.out_spatial
        wsize = geo.out_channels * kg  # elements of the weight (and of one image's partial)
        rows = geo.column_rows
        col_image = rows * l
        x_image, g_image = geo.in_channels * geo.in_spatial, geo.out_channels * l
        x_off, g_off, out_off = element_offset(x), element_offset(g), element_offset(out)
        pointwise = geo.is_pointwise  # the input already is the column matrix
        col_stride = x_image if pointwise else col_image
        per_image = (0 if pointwise else col_image) + wsize
        with dev.lock:
            for n0 in range(0, geo.batch, plan.batch_chunk):
                nb = min(plan.batch_chunk, geo.batch - n0)
                g0 = g_off + n0 * g_image
                if nb == 1:
                    # One image: each range of its output positions adds g_grp[:, l0:l0 + lc]
                    # (lda = l) @ cols_grp^T to the weight, in one GEMM batched over the groups.
                    for l0 in range(0, l, plan.col_chunk):
                        lc = min(plan.col_chunk, l - l0)
                        beta = 0.0 if n0 == 0 and l0 == 0 else 1.0
                        if pointwise:
                            col, col_off, ldb = x, x_off + n0 * x_image + l0, l
                        else:
                            col, col_off, ldb = column_buffer(dev, (rows * lc,), self.dtype), 0, lc
                            self.im2col(1, x, x_off + n0 * x_image, col, 0, l0, lc)
                        gemm.gemm(dev, mg, kg, lc, g, g0 + l0, mg * l, col, col_off, kg * ldb,
                                  out, out_off, mg * kg, geo.groups, b_transposed=True, beta=beta,
                                  lda=l, ldb=ldb)
                    continue
                beta = 1.0 if n0 > 0 else 0.0
                work = column_buffer(dev, (nb * per_image,), self.dtype)
                if pointwise:
                    col, col_off, part_off = x, x_off + n0 * x_image, 0
                else:
                    col, col_off, part_off = work, 0, nb * col_image
                    self.im2col(nb, x, x_off + n0 * x_image, col, col_off)
                if geo.groups <= nb:
                    for grp in range(geo.groups):  # batched over the images of the chunk
                        gemm.gemm(dev, mg, kg, l, g, g0 + grp * mg * l, g_image, col,
                                  col_off + grp * kg * l, col_stride,
                                  work, part_off + grp * mg * kg, wsize, nb, b_transposed=True)
                else:
                    for i in range(nb):  # batched over the groups of one image
                        gemm.gemm(dev, mg, kg, l, g, g0 + i * g_image, mg * l, col,
                                  col_off + i * col_stride, kg * l,
                                  work, part_off + i * wsize, mg * kg, geo.groups,
                                  b_transposed=True)
                # out (1 x wsize) = ones (1 x nb) @ partials (nb x wsize)  (+ out after chunk 1)
                gemm.gemm(dev, 1, wsize, nb, _ones(dev, nb, self.dtype), 0, 0, work, part_off, 0,
                          out, out_off, 0, beta=beta)


def enqueue_bias_grad(dev: Device, g: cla.Array, out: cla.Array, batch: int, channels: int,
                      spatial: int) -> None:
    """out (channels,) = sum of g (batch, channels, spatial) over batch and space (zeros for an
    empty batch). Contiguous operands of one dtype."""
    if batch == 0 or spatial == 0:
        with dev.lock:  # pyopencl's fill kernel is shared per context
            out.fill(0)
        return
    g_off, out_off = element_offset(g), element_offset(out)
    gemm = gemm_engine(dev)
    with dev.lock:
        ones = _ones(dev, max(batch, spatial), out.dtype)
        if batch == 1:
            gemm.gemm(dev, channels, 1, spatial, g, g_off, 0, ones, 0, 0, out, out_off, 0)
            return
        # partials (batch, channels) = g_n (channels x spatial) @ ones (spatial), then summed.
        partial = column_buffer(dev, (batch * channels,), out.dtype)
        gemm.gemm(dev, channels, 1, spatial, g, g_off, channels * spatial, ones, 0, 0, partial, 0,
                  channels, batch)
        gemm.gemm(dev, 1, channels, batch, ones, 0, 0, partial, 0, 0, out, out_off, 0)


# The public per-dimension functions (clconv.ops.dims): one template each, nd bound.

conv1d_input, conv2d_input, conv3d_input = per_dimensions(
    _input_grad, ("conv1d_input", "conv2d_input", "conv3d_input"),
    ("""Gradient of conv1d w.r.t. its input (N, C_in, L); arguments as `conv2d_input`.""",
     """Gradient of conv2d w.r.t. its input, as torch.nn.grad.conv2d_input.

    input_size: the input's shape (N, C_in, H, W); weight (C_out, C_in/groups, kh, kw); grad_output
    (N, C_out, H_out, W_out), exactly the output shape of that convolution. Convolution arguments as
    `clconv.conv2d`. Returns (N, C_in, H, W): numpy for a numpy grad_output, else a pyopencl Array.
    """,
     """Gradient of conv3d w.r.t. its input (N, C_in, D, H, W); arguments as `conv2d_input`."""),
    batched=("grad_output",), sizes=("input_size",))

conv1d_weight, conv2d_weight, conv3d_weight = per_dimensions(
    _weight_grad, ("conv1d_weight", "conv2d_weight", "conv3d_weight"),
    ("""Gradient of conv1d w.r.t. its weight (C_out, C_in/groups, k); as `conv2d_weight`.""",
     """Gradient of conv2d w.r.t. its weight, as torch.nn.grad.conv2d_weight.

    input (N, C_in, H, W); weight_size: the weight's shape (C_out, C_in/groups, kh, kw); grad_output
    (N, C_out, H_out, W_out), exactly the output shape of that convolution. Summed over the batch
    (zeros for N = 0). workspace_limit: bytes the column buffer (and the per-image partial sums)
    may take, as for `clconv.conv2d` (None: the device's default; capped at its largest
    allocation), and on the packed GEMM its packing scratch too (down to one column's packing);
    the work is split to fit, and a limit that cannot hold one column of the im2col matrix is a
    MemoryError. Returns weight_size: numpy for a numpy input, else a pyopencl Array.
    """,
     """Gradient of conv3d w.r.t. its weight (C_out, C_in/groups, kd, kh, kw); as `conv2d_weight`."""),
    batched=("input", "grad_output"), reduce="sum")

plan_conv1d_input, plan_conv2d_input, plan_conv3d_input = per_dimensions(
    plan_conv_input, ("plan_conv1d_input", "plan_conv2d_input", "plan_conv3d_input"),
    ("""A plan for `conv1d_input`; see `plan_conv2d_input`.""",
     """A plan for `conv2d_input` on the current device: input_size (N, C_in, H, W), weight_shape,
    then stride, padding, dilation, groups and keywords padding_mode, workspace_limit, dtype;
    `plan(weight, grad_output, out=None)` enqueues.""",
     """A plan for `conv3d_input`; see `plan_conv2d_input`."""))

plan_conv1d_weight, plan_conv2d_weight, plan_conv3d_weight = per_dimensions(
    plan_conv_weight, ("plan_conv1d_weight", "plan_conv2d_weight", "plan_conv3d_weight"),
    ("""A plan for `conv1d_weight`; see `plan_conv2d_weight`.""",
     """A plan for `conv2d_weight` on the current device: input_shape (N, C_in, H, W), weight_size,
    then stride, padding, dilation, groups and keywords padding_mode, workspace_limit, dtype;
    `plan(input, grad_output, out=None)` enqueues.""",
     """A plan for `conv3d_weight`; see `plan_conv2d_weight`."""))
