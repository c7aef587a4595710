"""Lowering of the ops that move data: reshapes (view, flatten, squeeze, transpose, permute),
slicing and split / chunk, cat and stack, padding (F.pad and the padding modules), interpolation
(F.interpolate, nn.Upsample*), pixel and channel shuffles. The arithmetic ops are
lower_math.py's."""

from __future__ import annotations

import math
from typing import Any

import pyopencl.array as cla
import torch
from torch import fx, nn

from ..runtime.transfer import to_device
from .base import Unlowerable, bind, clconv_op, is_tensor, leaves, shape
from .lowering_base import LoweringBase, reshape_view
from .program import Step


class ShapeRules(LoweringBase):
    """The rules for the ops that move data (mixed into Lowering)."""

    def cat(self, node: fx.Node, tensors: Any, dim: int) -> Step:
        fn = clconv_op("cat")
        shapes = _tensors_of(tensors)
        if shapes is not None and type(dim) is int:  # one node's tuple (torch.split(...)[::-1])
            nd = next((len(sh) for sh in shapes if sh != (0,)), 1)
            d, name = dim % nd, tensors.name
            return self.value(node, lambda env: fn(list(env[name]), dim=d), "clconv.cat",
                              (name,))
        if not isinstance(tensors, (list, tuple)) or not all(is_tensor(t) for t in tensors):
            raise Unlowerable("cat of non-tensors")
        # torch's legacy rule leaves out 1-d empty tensors (clconv.cat too): dim is the others'
        nd = next((len(shape(t)) for t in tensors if shape(t) != (0,)), 1)
        d = dim % nd
        names = tuple(t.name for t in tensors)
        return self.value(node, lambda env: fn([env[n] for n in names], dim=d), "clconv.cat",
                          names)

    def stack(self, node: fx.Node, tensors: Any, dim: int) -> Step:
        """torch.stack: clconv.cat of the tensors each given a unit dim at `dim` (a reshape)."""
        fn = clconv_op("cat")
        shapes = _tensors_of(tensors)
        if shapes is not None and type(dim) is int:  # one node's tuple of tensors
            d, name = dim % (len(shapes[0]) + 1), tensors.name

            def run_tuple(env: dict[str, Any]) -> Any:
                return fn([reshape_view(a, (*a.shape[:d], 1, *a.shape[d:])) for a in env[name]],
                          dim=d)
            return self.value(node, run_tuple, "clconv.cat (stack)", (name,))
        if not isinstance(tensors, (list, tuple)) or not tensors or \
                not all(is_tensor(t) for t in tensors) or type(dim) is not int:
            raise Unlowerable("stack of non-tensors or along a computed dim")
        d = dim % (len(shape(tensors[0])) + 1)
        names = tuple(t.name for t in tensors)

        def run(env: dict[str, Any]) -> Any:
            parts = [env[n] for n in names]
            return fn([reshape_view(a, (*a.shape[:d], 1, *a.shape[d:])) for a in parts], dim=d)
        return self.value(node, run, "clconv.cat (stack)", names)

    def reshape(self, node: fx.Node, x: Any, shape_args: Any) -> Step:
        parts = _size_parts(shape_args)
        xn = x.name
        inputs = (xn, *(p.name for p in parts if isinstance(p, fx.Node)))

        def run(env: dict[str, Any]) -> Any:
            return reshape_view(env[xn], _read_sizes(parts, env))
        return self.value(node, run, "reshape", inputs)

    def flatten(self, node: fx.Node, src: Any, start: int, end: int) -> Step:
        sh = shape(src)
        if sh is None:
            raise Unlowerable("flatten of a non-tensor")
        nd = len(sh)
        s, e = start % nd, end % nd
        x = src.name

        def run(env: dict[str, Any]) -> Any:
            a = env[x]
            sh = a.shape  # (the product, not -1: an empty batch keeps the flattened size)
            return reshape_view(a, (*sh[:s], math.prod(sh[s:e + 1]), *sh[e + 1:]))
        return self.value(node, run, "reshape", (x,))

    def unflatten(self, node: fx.Node, src: Any, dim: Any, sizes: Any) -> Step:
        """torch.unflatten / x.unflatten / nn.Unflatten: a reshape (one size may be -1, the rest
        of that dim on each call)."""
        sh = shape(src)
        if sh is None or self.layout.get(src.name) is not None:
            raise Unlowerable("unflatten of a non-tensor or a permuted view")
        if isinstance(sizes, fx.Node):  # (a size computed in the graph: `y.shape[2:]`)
            parts: Any = sizes
        elif isinstance(sizes, (tuple, list, torch.Size)):
            parts = tuple(sizes)
        else:
            parts = None
        if type(dim) is not int or parts is None or (not isinstance(parts, fx.Node) and not all(
                type(v) is int or isinstance(v, fx.Node) for v in parts)):
            raise Unlowerable("unflatten with these sizes")
        d, x = dim % len(sh), src.name
        nodes = [parts] if isinstance(parts, fx.Node) else \
            [v for v in parts if isinstance(v, fx.Node)]

        def run(env: dict[str, Any]) -> Any:
            a = env[x]
            given = env[parts.name] if isinstance(parts, fx.Node) else \
                [env[v.name] if isinstance(v, fx.Node) else v for v in parts]
            sizes = tuple(int(v) for v in given)
            known = math.prod(v for v in sizes if v != -1)
            new = tuple(a.shape[d] // known if v == -1 else v for v in sizes) if known else sizes
            if math.prod(new) != a.shape[d]:  # torch's check (sizes read on this call)
                raise RuntimeError(f"unflatten: Provided sizes {list(sizes)} don't multiply up "
                                   f"to the size of dim {d} ({a.shape[d]}) in the input tensor")
            return reshape_view(a, (*a.shape[:d], *new, *a.shape[d + 1:]))
        return self.value(node, run, "reshape (unflatten)", (x, *(n.name for n in nodes)))

    def squeeze(self, node: fx.Node, name: str) -> Step:
        """squeeze/unsqueeze as a reshape of the device array (no device work)."""
        x = node.args[0]
        dims = node.args[1:] or tuple(v for k, v in node.kwargs.items() if k == "dim")
        if len(dims) > 1 or any(isinstance(d, fx.Node) for d in dims):
            raise Unlowerable(f"{name} with these arguments")
        dim = dims[0] if dims else None
        xn = x.name

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            sh = list(a.shape)
            if name == "unsqueeze":
                sh.insert(dim % (len(sh) + 1), 1)
            else:
                ds = range(len(sh)) if dim is None else [d % len(sh) for d in
                                                         (dim if isinstance(dim, (tuple, list))
                                                          else (dim,))]
                sh = [s for i, s in enumerate(sh) if not (i in ds and s == 1)]
            return reshape_view(a, tuple(sh))
        return self.value(node, run, name, (xn,))

    def getitem(self, node: fx.Node) -> Step:
        x, index = node.args
        if not is_tensor(x):
            return self.python(node)  # an item of a tuple (of sizes, or of a host result)
        items = index if isinstance(index, tuple) else (index,)
        if sum(i is Ellipsis for i in items) == 1:
            k = items.index(Ellipsis)
            fill = len(shape(x)) - (len(items) - 1 - sum(i is None for i in items))
            items = items[:k] + (slice(None),) * fill + items[k + 1:]
            index = items
        computed: list[fx.Node] = []  # slice bounds computed in the graph (read on each call)
        for i in items:
            if isinstance(i, slice):
                bounds = (i.start, i.stop, i.step)
                computed += [v for v in bounds if isinstance(v, fx.Node)]
                if not all(v is None or type(v) is int or isinstance(v, fx.Node) and
                           not is_tensor(v) for v in bounds):
                    raise Unlowerable("slices whose bounds are not ints")
                if type(i.step) is int and i.step < 1:  # (torch refuses them too)
                    raise Unlowerable("slices with a step below 1")
            elif type(i) is not int and i is not None:
                raise Unlowerable("indexing other than integers, None and basic slices")
        xn, dev = x.name, self.cm.device
        # None (a new unit dim, as in an SE block's `s[:, :, None, None]`) is a reshape after
        # the integers and slices; those select a strided view of the device array, gathered to
        # a contiguous one on the device (nothing to gather when every slice is whole).
        core = tuple(i for i in items if i is not None)
        whole = all(i == slice(None) for i in core)

        def resolved(env: dict[str, Any]) -> tuple[Any, ...]:
            """`core` with the computed bounds' values of this call (a UNet's centre crop
            `skip[:, :, dh:dh + h, dw:dw + w]`, dh and h from the sizes)."""
            if not computed:
                return core
            out = fx.node.map_arg(core, lambda n: int(env[n.name]))
            if any(isinstance(i, slice) and i.step is not None and i.step < 1 for i in out):
                raise ValueError("slice step must be positive")
            return out

        def out_shape(selected: tuple[int, ...]) -> tuple[int, ...]:
            dims, k = [], 0
            for i in items:
                if i is None:
                    dims.append(1)
                elif type(i) is not int:
                    dims.append(selected[k])
                    k += 1
            return (*dims, *selected[k:])

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            if not whole:
                a = to_device(a[_empty_ranges(resolved(env), a.shape)], dev, "input", a.dtype)
            return reshape_view(a, out_shape(a.shape))
        return self.value(node, run, "slice" if not whole else "reshape (new dims)",
                          (xn, *(n.name for n in computed)))

    def pad(self, node: fx.Node) -> Step:
        """F.pad: clconv.pad (every mode; negative amounts crop); all-zero amounts (a U-Net's
        size matching of equal sizes) are nothing. Amounts computed in the graph are read on
        each call."""
        x, pad, mode, value = bind(node, lambda input, pad, mode="constant", value=None:
                                   (input, pad, mode, value))
        if not isinstance(pad, (list, tuple)):
            raise Unlowerable("padding computed in the graph")
        return self._pad_step(node, x, pad, mode, value)

    def pad_module(self, node: fx.Node, m: nn.Module, mode: str) -> Step:
        """nn.ZeroPad*/ConstantPad*/ReflectionPad*/ReplicationPad*/CircularPad*: clconv.pad."""
        value = getattr(m, "value", None) if mode == "constant" else None
        return self._pad_step(node, node.args[0], tuple(m.padding), mode, value)

    def _pad_step(self, node: fx.Node, x: Any, pad: Any, mode: str, value: Any) -> Step:
        xn = self.plain_tensor(x, "padding")
        if isinstance(value, fx.Node):
            raise Unlowerable("a padding value computed in the graph")
        inputs = (xn, *(p.name for p in pad if isinstance(p, fx.Node)))
        pad_op = clconv_op("pad")

        def run(env: dict[str, Any]) -> Any:
            amounts = [int(env[p.name]) if isinstance(p, fx.Node) else int(p) for p in pad]
            if not any(amounts):
                return env[xn]
            return pad_op(env[xn], amounts, mode=mode, value=value)
        label = "pad (all zeros)" if not any(isinstance(p, fx.Node) or p for p in pad) else \
            f"clconv.pad ({mode})"
        return self.value(node, run, label, inputs)

    def interpolate(self, node: fx.Node) -> Step:
        """F.interpolate: clconv.interpolate (nearest, nearest-exact, linear modes, bicubic,
        area). Sizes
        computed in the graph (a U-Net's `size=skip.shape[2:]`) are read on each call."""
        a = bind(node, lambda input, size=None, scale_factor=None, mode="nearest",
                 align_corners=None, recompute_scale_factor=None, antialias=False:
                 (input, size, scale_factor, mode, align_corners, recompute_scale_factor,
                  antialias))
        return self._interpolate_step(node, *a)

    def upsample_module(self, node: fx.Node, m: nn.Module) -> Step:
        """nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d (align_corners=True)."""
        return self._interpolate_step(node, node.args[0], m.size, m.scale_factor, m.mode,
                                      m.align_corners, getattr(m, "recompute_scale_factor", None),
                                      False)

    def _interpolate_step(self, node: fx.Node, x: Any, size: Any, scale_factor: Any, mode: Any,
                          align_corners: Any, recompute: Any, antialias: Any) -> Step:
        xn = self.plain_tensor(x, "interpolation")
        fixed = (scale_factor, mode, align_corners, recompute, antialias)
        if any(isinstance(v, fx.Node) for v in leaves(fixed)):
            raise Unlowerable("interpolation arguments computed in the graph")
        size_nodes = [v.name for v in leaves(size) if isinstance(v, fx.Node)]
        op = clconv_op("interpolate")

        def resolve(v: Any, env: dict[str, Any]) -> Any:
            if isinstance(v, fx.Node):
                v = env[v.name]
            if isinstance(v, (list, tuple)):
                return tuple(int(resolve(e, env)) for e in v)
            return v

        def run(env: dict[str, Any]) -> Any:
            return op(env[xn], resolve(size, env), scale_factor, mode, align_corners, recompute,
                      antialias)
        return self.value(node, run, f"clconv.interpolate ({mode})", (xn, *size_nodes))

    def permuted_copy(self, node: fx.Node, x: Any, perm: tuple[int, ...]) -> Step:
        """A permutation of the dims (other than ConvNeXt's channels-last view): the permuted
        strided view of the device array, gathered to a contiguous one on the device."""
        if not isinstance(x, fx.Node) or self.layout.get(x.name) is not None:
            raise Unlowerable(f"permute {perm} of a channels-last view")
        nd = len(shape(x) or ())
        if any(isinstance(p, fx.Node) for p in perm) or sorted(p % max(nd, 1) for p in perm) \
                != list(range(nd)):
            raise Unlowerable(f"permute {perm}")
        axes = tuple(p % nd for p in perm)
        xn, dev = x.name, self.cm.device
        return self.value(node, lambda env: to_device(env[xn].transpose(axes), dev, "input",
                                                      env[xn].dtype), "permute (copy)", (xn,))

    def cloned(self, node: fx.Node, x: Any) -> Step:
        """x.clone() / torch.clone(x) (any memory_format: the values are the same): a copy on the
        device (not an alias: a later in-place op on either must not reach the other)."""
        xn = self.plain_tensor(x, "clone")
        return self.value(node, lambda env: env[xn].copy(), "clone (device copy)", (xn,))

    def expanded_copy(self, node: fx.Node, x: Any, size_args: Any, like: Any = None) -> Step:
        """x.expand(*sizes) / x.expand_as(like) read by ops that do not broadcast it themselves
        (cat, a convolution): the broadcast view of the device array (stride 0 along the
        expanded dims) gathered to a contiguous one on the device. Sizes (fx nodes among them:
        `x.size(0)`) are read on each call, checked as torch checks them."""
        what = f"Tensor.{node.target}"
        xn, dev = self.plain_tensor(x, what), self.cm.device
        if like is not None:
            ln = self.plain_tensor(like, what)
            inputs: tuple[str, ...] = (xn, ln)

            def sizes_of(env: dict[str, Any]) -> tuple[int, ...]:
                return tuple(env[ln].shape)
        else:
            parts = _size_parts(size_args)
            inputs = (xn, *(p.name for p in parts if isinstance(p, fx.Node)))

            def sizes_of(env: dict[str, Any]) -> tuple[int, ...]:
                return _read_sizes(parts, env)

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            view = broadcast_view(a, sizes_of(env))
            return to_device(view, dev, "input", a.dtype)
        return self.value(node, run, f"{what} (copy)", inputs)

    def pixel_shuffle(self, node: fx.Node, x: Any, factor: Any, inverse: bool) -> Step:
        """F.pixel_shuffle / nn.PixelShuffle (sub-pixel upsampling: (N, C r^2, H, W) -> (N, C,
        H r, W r)) and the unshuffle: clconv.pixel_shuffle / pixel_unshuffle (a permuted copy
        gathered on the device). Sizes are read from the input on each call."""
        name = "pixel_unshuffle" if inverse else "pixel_shuffle"
        if len(shape(x) or ()) < 3 or type(factor) is not int or factor < 1:
            raise Unlowerable(f"{name} of a tensor of fewer than 3 dims")
        xn, op = self.plain_tensor(x, name), clconv_op(name)

        def run(env: dict[str, Any]) -> Any:
            return op(env[xn], factor)
        return self.value(node, run, f"clconv.{name} (permuted copy)", (xn,))

    def unfold(self, node: fx.Node, name: str) -> Step:
        """F.unfold (im2col: (N, C, H, W) -> (N, C kh kw, L)) and F.fold (col2im, its adjoint):
        clconv.unfold / clconv.fold with the same sizes (numbers, not computed in the graph)."""
        if name == "unfold":
            x, *sizes = bind(node, lambda input, kernel_size, dilation=1, padding=0, stride=1: (
                input, kernel_size, dilation, padding, stride))
        else:
            x, *sizes = bind(node, lambda input, output_size, kernel_size, dilation=1, padding=0,
                             stride=1: (input, output_size, kernel_size, dilation, padding, stride))
        if any(isinstance(v, fx.Node) for s in sizes for v in (s if isinstance(s, (tuple, list))
                                                                 else (s,))):
            raise Unlowerable(f"{name} with sizes computed in the graph")
        xn, op = self.plain_tensor(x, name), clconv_op(name)

        def run(env: dict[str, Any]) -> Any:
            return op(env[xn], *sizes)
        return self.value(node, run, f"clconv.{name}", (xn,))

    def channel_shuffle(self, node: fx.Node, x: Any, groups: Any) -> Step:
        """nn.ChannelShuffle / F.channel_shuffle (ShuffleNet): the channels as (groups, C / groups)
        read as (C / groups, groups), a permuted copy gathered on the device."""
        sh = shape(x) or ()
        if type(groups) is not int or groups < 1 or len(sh) < 3 or sh[1] % groups:
            raise Unlowerable(f"channel_shuffle of {len(sh)} dims, {sh[1:2]} channels into "
                              f"{groups!r} groups")
        xn, dev = self.plain_tensor(x, "channel_shuffle"), self.cm.device

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            n, c, rest = a.shape[0], a.shape[1], tuple(a.shape[2:])
            v = reshape_view(a, (n, groups, c // groups, *rest))
            v = v.transpose((0, 2, 1, *range(3, 3 + len(rest))))
            return reshape_view(to_device(v, dev, "input", a.dtype), (n, c, *rest))
        return self.value(node, run, "channel shuffle (permuted copy)", (xn,))

    def transpose(self, node: fx.Node) -> Step:
        """torch.transpose / x.transpose(d0, d1) (ShuffleNet's channel shuffle): a permuted copy."""
        x, d0, d1 = bind(node, lambda input, dim0, dim1: (input, dim0, dim1))
        nd = len(shape(x) or ())
        if not all(type(d) is int for d in (d0, d1)) or nd == 0:
            raise Unlowerable("transpose of dims computed in the graph")
        perm = list(range(nd))
        perm[d0 % nd], perm[d1 % nd] = perm[d1 % nd], perm[d0 % nd]
        return self.permuted_copy(node, x, tuple(perm))

    def pieces(self, node: fx.Node) -> Step:
        """torch.chunk / torch.split (and the methods) of a tensor: a tuple of contiguous device
        arrays (each piece's strided view gathered on the device), sized as torch sizes them from
        the input's shape on each call; the getitems that follow pick them. Sizes computed in the
        graph (ShuffleNet's `torch.split(x, x.size(1) // 2, 1)`) are read on each call."""
        chunking = node.target in ("chunk", torch.chunk)
        name = str(getattr(node.target, "__name__", node.target))
        x, how, dim = bind(node, (lambda input, chunks, dim=0: (input, chunks, dim)) if chunking
                           else (lambda tensor, split_size_or_sections, dim=0:
                                 (tensor, split_size_or_sections, dim)))
        xn = self.plain_tensor(x, name)
        computed = [v for v in leaves(how) if isinstance(v, fx.Node)]
        if type(dim) is not int or any(is_tensor(v) for v in computed) or any(
                type(v) is not int for v in leaves(how) if not isinstance(v, fx.Node)):
            raise Unlowerable(f"torch.{name} along a dim computed in the graph or of sizes that "
                              f"are not ints")
        dev = self.cm.device

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            d = dim % a.ndim
            size = a.shape[d]
            how_now = fx.node.map_arg(how, lambda n: int(env[n.name]))
            if chunking and how_now <= 0:  # (computed sizes: torch's checks of the call)
                raise ValueError(f"chunk expects `chunks` to be greater than 0, got: {how_now}")
            if not chunking and isinstance(how_now, int) and (how_now < 0 or
                                                              how_now == 0 and size):
                raise ValueError(f"split_size can only be 0 if dimension size is 0, and never "
                                 f"negative; got split_size={how_now} for size {size}")
            if chunking:
                step = -(-size // how_now) if size else 0
                sizes = [min(step, size - i) for i in range(0, size, step)] if step else [0]
            elif isinstance(how_now, int):
                sizes = [min(how_now, size - i) for i in range(0, size, how_now)] if size else [0]
            else:
                sizes = list(how_now)
                if sum(sizes) != size or min(sizes, default=0) < 0:
                    raise ValueError(f"split_with_sizes expects non-negative split_sizes that sum "
                                     f"exactly to {size} (input tensor's size at dimension {d}), "
                                     f"but got split_sizes={sizes}")
            out, start = [], 0
            for n in sizes:
                index = (slice(None),) * d + (slice(start, start + n),)
                out.append(to_device(a[index], dev, "input", a.dtype))
                start += n
            return tuple(out)
        return self.value(node, run, f"{name} (copies)", (xn, *(v.name for v in computed)))


def _tensors_of(node: Any) -> list[tuple[int, ...]] | None:
    """The shapes of the tensors of a node whose value is a tuple or list of tensors (a split's
    result, or a slice of it), from fx's ShapeProp; None for anything else."""
    if not isinstance(node, fx.Node):
        return None
    metas = node.meta.get("tensor_meta")
    if not isinstance(metas, (list, tuple)) or not metas or \
            not all(hasattr(m, "shape") for m in metas):
        return None
    return [tuple(m.shape) for m in metas]


def _empty_ranges(index: tuple[Any, ...], sizes: tuple[int, ...]) -> tuple[Any, ...]:
    """`index` (ints and slices, one a dim) with each slice's bounds resolved against its dim and
    a range whose stop lies before its start made empty (`x[:, :, 4:2]`: torch's and Python's
    empty range, where pyopencl's slicing gave elements)."""
    out = []
    for item, size in zip(index, sizes):
        if isinstance(item, slice):
            start, stop, step = item.indices(size)
            item = slice(start, max(start, stop), step)
        out.append(item)
    return (*out, *index[len(out):])


def _size_parts(args: Any) -> Any:
    """A reshape's or expand's size arguments as one sequence (`x.view(n, -1)`, `x.view((n,
    -1))`, `x.view(size)` of a size node: items that are numbers or fx nodes)."""
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size, fx.Node)):
        args = args[0]
    return args if isinstance(args, (tuple, list, torch.Size)) else (args,)


def _read_sizes(parts: Any, env: dict[str, Any]) -> tuple[int, ...]:
    """`_size_parts`' sizes on this call (nodes read from `env`; one node may be a whole size)."""
    sizes = [env[p.name] if isinstance(p, fx.Node) else p for p in parts]
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list, torch.Size)):
        sizes = list(sizes[0])
    return tuple(int(d) for d in sizes)


def broadcast_view(a: cla.Array, sizes: tuple[int, ...]) -> cla.Array:
    """`a` (C-contiguous) viewed as torch's a.expand(*sizes): new leading dims and its size-1
    dims along stride 0, -1 keeping a size; RuntimeError with torch's words where torch refuses."""
    extra = len(sizes) - a.ndim
    if extra < 0:
        raise RuntimeError(f"expand: the number of sizes provided ({len(sizes)}) must be greater "
                           f"or equal to the number of dimensions in the tensor ({a.ndim})")
    shape, strides = [], []
    for i, want in enumerate(sizes):
        if i < extra:
            if want < 0:
                raise RuntimeError(f"expand: -1 is not allowed in a leading, non-existing "
                                   f"dimension {i}")
            shape.append(want)
            strides.append(0)
            continue
        have, stride = a.shape[i - extra], a.strides[i - extra]
        if want == -1 or want == have:
            shape.append(have)
            strides.append(stride)
        elif have == 1 and want >= 0:
            shape.append(want)
            strides.append(0)
        else:
            raise RuntimeError(f"The expanded size of the tensor ({want}) must match the existing "
                               f"size ({have}) at non-singleton dimension {i}.  Target sizes: "
                               f"{list(sizes)}.  Tensor sizes: {list(a.shape)}")
    return cla.Array(a.queue, tuple(shape), a.dtype, strides=tuple(strides), data=a.base_data,
                     offset=a.offset)
