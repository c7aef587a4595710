"""Lowering of the layers with weights: fusion groups (a convolution or Linear with the BatchNorm,
residual add and activation after it; an add/mul with its activation), convolutions and Linear
with their epilogues, BatchNorm, functional convolutions and batch norms, and LayerNorm over
channels (the channel norm)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..ops.activation import Activation
from ..ops.fold import fold_batchnorm, fold_overflowed, foldable
from ..runtime.errors import ResidualShapeError
from ..torch_ops import module_padding
from .activations import activation_of, activation_spec
from ..ops.prebuild import linear_spec, squeeze_excitation_spec
from ..ops.squeeze_excitation import squeeze_excitation_fits
from .base import Unlowerable, attr, bind, clconv_op, is_tensor, leaves, meta, shape, torch_type
from .channel_norm import channel_norm
from .lowering_base import (ADDS, BATCHNORMS, PAD_MODULES, LoweringBase, conv_dims,
                            transposed_dims)
from .program import Step


class LayerRules(LoweringBase):
    """The rules for layers with weights (mixed into Lowering)."""

    # -- fusion groups ------------------------------------------------------------------------

    def _sole_user(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def _head_kind(self, node: fx.Node) -> str | None:
        kind = self.module_kind(node)
        if kind is None and self.binary_name(node) is not None:
            return "binary"
        return kind

    def _foldable_bn(self, node: fx.Node, prev: fx.Node, channels: int) -> bool:
        """Whether BatchNorm `node` after convolution `prev` folds into it: over the conv's
        channels, which a batched output has at dim 1 (torch's BatchNorm1d reads an unbatched
        Conv1d's (C, L) as (N, C))."""
        m, conv = self.module(node), self.module(prev)
        out = shape(prev)
        batched = out is not None and len(out) == len(conv.kernel_size) + 2
        if not (isinstance(m, BATCHNORMS) and torch_type(m) in BATCHNORMS
                and node.args == (prev,) and not node.kwargs and m.running_mean is not None
                and not m.training
                and m.num_features == channels and batched):
            return False
        # A scale that is not finite, or folded weights past the dtype's range (float16): the
        # BatchNorm runs on its own after the convolution (clconv.batch_norm), as torch's.
        transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
        try:
            folded = _fold(conv.weight, conv.bias, m, transposed, getattr(conv, "groups", 1))
        except Unlowerable:
            return False
        originals = (conv.weight, conv.bias, m.running_mean, m.running_var, m.weight, m.bias)
        if fold_overflowed([None if t is None else t.detach().cpu().numpy() for t in originals],
                           [t.numpy() for t in folded]):
            return False
        self.bn_folds[node.name] = folded  # (what `fused` folds in)
        return True

    def _residual_of(self, node: fx.Node, prev: fx.Node) -> fx.Node | None:
        """The other operand when `node` is `prev + other` (same shape, same layout)."""
        if not ((node.op == "call_function" and node.target in ADDS) or
                (node.op == "call_method" and node.target in ("add", "add_"))):
            return None
        if len(node.args) != 2 or node.kwargs:
            return None
        a, b = node.args
        other = b if a is prev else a if b is prev else None
        if other is None or other is prev or not is_tensor(other):
            return None
        if shape(other) != shape(prev) or meta(other).dtype != meta(prev).dtype:
            return None
        if other.op == "get_attr":
            return None
        return other

    def _foldable_pad(self, node: fx.Node, level: int) -> tuple[fx.Node, tuple, str] | None:
        """(the padded tensor, (lo, hi) pairs, padding_mode) when convolution `node`'s input is a
        padding the convolution can do itself (asymmetric pairs: clconv.conv's ONNX-style
        padding), so that no padded copy is made: F.pad or a padding module of constant amounts
        >= 0 over spatial dims only, read by this convolution alone; zeros (constant 0) added to
        the convolution's own zero padding, or reflect / replicate / circular where the
        convolution pads nothing itself (TF ports' ZeroPad2d((0, 1, 0, 1)) before a stride-2
        convolution, CycleGAN's ReflectionPad2d(3) before a 7x7)."""
        m = self.module(node)
        x = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if level > 0 or not isinstance(x, fx.Node) or x.name in self.options.host or \
                len(x.users) != 1 or self.module_kind(node) != "conv":
            return None
        pm = self.module(x)
        if pm is not None and torch_type(pm) in PAD_MODULES and len(x.args) == 1 and \
                not x.kwargs:
            src, pad, mode = x.args[0], tuple(pm.padding), PAD_MODULES[torch_type(pm)]
            value = getattr(pm, "value", 0) if mode == "constant" else None
        elif x.op == "call_function" and x.target is F.pad:
            try:
                src, pad, mode, value = bind(x, lambda input, pad, mode="constant", value=None:
                                             (input, pad, mode, value))
            except Unlowerable:
                return None
        else:
            return None
        nd = len(m.kernel_size)
        if not isinstance(src, fx.Node) or self.layout.get(src.name) is not None or \
                not isinstance(pad, (tuple, list)) or len(pad) % 2 or len(pad) > 2 * nd or \
                not all(type(p) is int and p >= 0 for p in pad):
            return None
        pairs = [(0, 0)] * nd  # F.pad's amounts run from the last dim
        for i in range(len(pad) // 2):
            pairs[nd - 1 - i] = (pad[2 * i], pad[2 * i + 1])
        own = module_padding(m)
        if own == "valid":
            own = (0,) * nd
        if isinstance(own, str):  # 'same'
            return None
        if mode == "constant":
            if value not in (None, 0) or m.padding_mode != "zeros":
                return None
            pairs = [(lo + p, hi + p) for (lo, hi), p in zip(pairs, own)]
            return src, tuple(pairs), "zeros"
        if mode not in ("reflect", "replicate", "circular") or any(own):
            return None
        return src, tuple(pairs), mode

    def find_groups(self) -> None:
        """Fills self.groups and self.absorbed: the nodes that run as one fused step (a padding
        folded into the convolution after it is absorbed too: self.pad_folds)."""
        grouped: set[str] = set()
        for node in self.cm.nodes:
            kind = self._head_kind(node)
            if kind is None or node.name in self.options.host or node.name in grouped:
                continue
            level = self.options.fuse_level.get(node.name, 0)
            fold = self._foldable_pad(node, level) if kind == "conv" else None
            if fold is not None:
                self.pad_folds[node.name] = fold
                self.absorbed.add(node.args[0].name)
            group = [node]
            cur = node
            nxt = self._sole_user(cur)
            if kind == "binary":
                # add/mul + activation: clconv.add(a, b, activation=...)
                if level < 2 and nxt is not None and nxt.name not in self.options.host:
                    act = activation_of(nxt, self.modules)
                    if act is not None and act[1] is cur:
                        group.append(nxt)
                        self.groups[nxt.name] = group
                        self.absorbed.add(node.name)
                        grouped.update((node.name, nxt.name))
                continue
            m = self.module(node)
            channels = m.out_features if kind == "linear" else m.out_channels
            if nxt is not None and kind != "linear" and nxt.name not in self.options.host and \
                    self._foldable_bn(nxt, cur, channels):
                group.append(nxt)
                cur = nxt
                nxt = self._sole_user(cur)
            if level < 2 and nxt is not None and nxt.name not in self.options.host:
                residual = self._residual_of(nxt, cur) if level < 1 else None
                if residual is not None:
                    group.append(nxt)
                    cur = nxt
                    nxt = self._sole_user(cur)
                if nxt is not None and nxt.name not in self.options.host:
                    act = activation_of(nxt, self.modules)
                    if act is not None and act[1] is cur:
                        group.append(nxt)
            if len(group) > 1 or fold is not None:
                self.groups[group[-1].name] = group
                self.absorbed.update(n.name for n in group[:-1])
                grouped.update(n.name for n in group)

    # -- convolutions and Linear, with their epilogues ---------------------------------------

    def fused(self, group: list[fx.Node]) -> Step:
        """A convolution, transposed convolution or Linear (group[0]) with the rest of its group:
        BatchNorm folded into its weights, a residual add and an activation in its epilogue."""
        head = group[0]
        m = self.modules[head.target]
        cm = self.cm
        kind = self.module_kind(head)
        # A transposed convolution's output_size (a U-Net's `up(x, output_size=skip.size())`):
        # its output_padding worked out on each call, as torch's module does.
        output_size = head.args[1] if len(head.args) == 2 else head.kwargs.get("output_size")
        if len(head.args) + len(head.kwargs) != 1 and not (
                kind == "transposed" and output_size is not None and
                len(head.args) + len(head.kwargs) == 2):
            raise Unlowerable("extra arguments")
        size_nodes = [v for v in _nested(output_size) if isinstance(v, fx.Node)]
        if any(is_tensor(v) for v in size_nodes):
            raise Unlowerable("an output_size that is a tensor")
        x = head.args[0]
        pad_fold = self.pad_folds.get(head.name)
        if pad_fold is not None:  # the padding before it, done by the convolution
            x = pad_fold[0]
        layout = self.layout.get(x.name)
        weight = m.weight.detach()
        bias = m.bias.detach() if m.bias is not None else None
        ops = [type(m).__name__]
        residual: fx.Node | None = None
        act: Activation | None = None
        for i, node in enumerate(group[1:], 1):
            mod = self.module(node)
            if mod is not None and isinstance(mod, BATCHNORMS):
                # (the conv's own weight and bias folded: made when the fold was checked)
                weight, bias = self.bn_folds.pop(node.name, None) or _fold(
                    weight, bias, mod, transposed=kind == "transposed",
                    groups=getattr(m, "groups", 1))
                ops.append("BN folded")
            elif residual is None and act is None and \
                    self._residual_of(node, group[i - 1]) is not None:
                residual = self._residual_of(node, group[i - 1])
                ops.append("+ residual")
            else:
                act = activation_of(node, self.modules)[0]
                ops.append(str(act))
        key = (head.target, tuple(n.name for n in group))
        b = cm.constant(key + ("b",), bias) if bias is not None else None
        extra: dict[str, Any] = {}
        if act is not None:
            extra["activation"] = activation_spec(act)
        r = residual.name if residual is not None else None
        if r is not None and self.layout.get(r) != layout:
            raise Unlowerable("residual in another layout")
        xn = x.name
        inputs = ((xn,) if r is None else (xn, r)) + tuple(v.name for v in size_nodes)
        args: tuple[Any, ...] = ()
        if kind == "linear" and layout is not None:
            # Linear over the channels of a channels-last view: a 1x1 convolution of the stored
            # channels-first data.
            nd = len(layout) - 2
            fn = clconv_op(f"conv{nd}d")
            w = cm.constant(key + ("w1x1",), weight.reshape(*weight.shape, *(1,) * nd))
            op = f"clconv.conv{nd}d (Linear as 1x1) [{', '.join(ops)}]"
        elif kind == "linear":
            fn = clconv_op("linear")
            w = cm.constant(key + ("w",), weight)
            op = f"clconv.linear [{', '.join(ops)}]"
        else:
            if layout is not None:
                raise Unlowerable("convolution of a permuted view")
            nd = conv_dims(m) if kind == "conv" else transposed_dims(m)
            w = cm.constant(key + ("w",), weight)
            if kind == "conv":
                fn = clconv_op(f"conv{nd}d")
                args = (m.stride, module_padding(m), m.dilation, m.groups)
                extra["padding_mode"] = m.padding_mode
                if pad_fold is not None:
                    args = (m.stride, pad_fold[1], m.dilation, m.groups)
                    extra["padding_mode"] = pad_fold[2]
                    ops.insert(0, f"{pad_fold[2]} padding {pad_fold[1]} folded")
            else:
                if m.padding_mode != "zeros":
                    raise Unlowerable("transposed convolution with padding_mode != 'zeros'")
                fn = clconv_op(f"conv_transpose{nd}d")
                args = (m.stride, m.padding, m.output_padding, m.groups, m.dilation)
            op = f"clconv.{fn.__name__} [{', '.join(ops)}]"

        def run(env: dict[str, Any]) -> Any:
            kw = dict(extra)
            if r is not None:
                kw["residual"] = env[r]
            a = args
            if output_size is not None:
                sizes = fx.node.map_arg(output_size, lambda n: env[n.name])
                padding = m._output_padding(torch.empty(env[xn].shape, device="meta"),
                                            [int(v) for v in sizes], m.stride, m.padding,
                                            m.kernel_size, len(m.kernel_size), m.dilation)
                a = (m.stride, m.padding, tuple(int(v) for v in padding), m.groups, m.dilation)
            try:
                return fn(env[xn], w, b, *a, **kw)
            except ResidualShapeError:
                if layout is not None:
                    raise
            # The example's residual had the output's shape and this call's broadcasts against
            # it (torch's add): the sum and the activation as clconv.add after the layer
            spec = kw.pop("activation", None)
            res = kw.pop("residual")
            return clconv_op("add")(fn(env[xn], w, b, *a, **kw), res, activation=spec)
        last = group[-1]
        self.layout[last.name] = layout
        nodes = tuple(n.name for n in group)
        if pad_fold is not None:
            nodes += (head.args[0].name,)
        spec = None  # (the plans built ahead: not the transposed convolutions')
        r_shape = None if r is None else shape(residual)
        if kind == "linear" and layout is None and shape(x) is not None and \
                (r is None or r_shape is not None):
            spec = linear_spec(shape(x), tuple(w.shape), None if b is None else tuple(b.shape),
                               np.dtype(w.dtype), extra.get("activation"), r_shape)
        elif kind == "conv" and shape(x) is not None and (r is None or r_shape is not None):
            spec = (nd, shape(x), tuple(w.shape), None if b is None else tuple(b.shape),
                    np.dtype(w.dtype), *args, extra["padding_mode"], "auto",
                    extra.get("activation"), None, r_shape)
        plain = kind == "conv" and layout is None and r is None and pad_fold is None and \
            output_size is None
        return Step(last.name, nodes, op, inputs, run, plan_spec=spec,
                    conv_operands=(w, b, extra.get("activation")) if plain else None)

    def squeeze_excitations(self, steps: list[Step]) -> list[Step]:
        """Each squeeze-excitation block among the steps, adaptive_avg_pool(x, 1) -> a 1x1
        convolution (its activation fused) -> another -> x * gate, each value read only by the
        next, as one clconv.squeeze_excitation step (one launch, not four)."""
        readers: dict[str, list[int]] = {}
        for i, step in enumerate(steps):
            for name in step.inputs:
                readers.setdefault(name, []).append(i)
        outputs: set[str] = set()
        fx.node.map_arg(self.cm.output_arg, lambda n: outputs.add(n.name))
        nodes = {n.name: n for n in self.cm.nodes}
        at = {step.node: i for i, step in enumerate(steps)}

        def only_reader(step: Step) -> Step | None:
            found = readers.get(step.node, [])
            return steps[found[0]] if len(found) == 1 and step.node not in outputs else None

        def pointwise(step: Step | None, source: Step) -> bool:
            spec = step.plan_spec if step is not None else None
            return step is not None and step.conv_operands is not None and spec is not None and \
                step.inputs == (source.node,) and all(k == 1 for k in spec[2][2:]) and \
                all(s == 1 for s in spec[5]) and all(p == 0 for p in spec[6]) and \
                spec[8] == 1 and spec[13] is None

        replaced: dict[int, Step | None] = {}
        for pool in steps:
            if not pool.op.startswith("clconv.adaptive_avg_pool") or len(pool.inputs) != 1:
                continue
            x = pool.inputs[0]
            x_shape, s_shape = shape(nodes.get(x)), shape(nodes.get(pool.node))
            if self.layout.get(x) is not None or x_shape is None or s_shape is None or \
                    len(x_shape) < 3 or \
                    s_shape != x_shape[:2] + (1,) * (len(x_shape) - 2):
                continue
            fc1 = only_reader(pool)
            fc2 = only_reader(fc1) if pointwise(fc1, pool) else None
            mul = only_reader(fc2) if fc2 is not None and pointwise(fc2, fc1) else None
            if mul is None or not mul.op.startswith("clconv.mul") or len(mul.nodes) != 1 or \
                    set(mul.inputs) != {x, fc2.node} or shape(nodes.get(mul.node)) != x_shape:
                continue
            (w1, b1, act1), (w2, b2, act2) = fc1.conv_operands, fc2.conv_operands
            # (a gate of one channel broadcast over the channels is no such block)
            if w1.shape[1] != x_shape[1] or tuple(w2.shape[:2]) != (x_shape[1], w1.shape[0]) or \
                    w1.dtype != w2.dtype or not squeeze_excitation_fits(
                    self.cm.device, x_shape[1], w1.shape[0], np.dtype(w1.dtype).itemsize):
                continue
            fn = clconv_op("squeeze_excitation")

            def run(env: dict[str, Any], x: str = x, w1: Any = w1, b1: Any = b1, w2: Any = w2,
                    b2: Any = b2, act1: Any = act1, act2: Any = act2) -> Any:
                return fn(env[x], w1, b1, w2, b2, activation=act1, gate=act2)
            self.layout[mul.node] = None
            for step in (pool, fc1, fc2):
                replaced[at[step.node]] = None
            shapes = (tuple(w1.shape), None if b1 is None else tuple(b1.shape),
                      tuple(w2.shape), None if b2 is None else tuple(b2.shape))
            replaced[at[mul.node]] = Step(
                mul.node, pool.nodes + fc1.nodes + fc2.nodes + mul.nodes,
                f"clconv.squeeze_excitation [{act1}, {act2}]", (x,), run,
                plan_spec=squeeze_excitation_spec(x_shape, *shapes, act1, act2, w1.dtype))
        return [replaced.get(i, step) for i, step in enumerate(steps)
                if replaced.get(i, step) is not None]

    # -- normalizations and functional layers -------------------------------------------------

    def batch_norm(self, node: fx.Node, m: nn.Module) -> Step:
        if m.running_mean is None:
            raise Unlowerable("BatchNorm without running statistics uses batch statistics")
        if len(node.args) != 1 or node.kwargs:
            raise Unlowerable("unexpected BatchNorm arguments")
        fn = clconv_op("batch_norm")
        cm = self.cm
        rm = cm.constant((node.target, "running_mean"), m.running_mean)
        rv = cm.constant((node.target, "running_var"), m.running_var)
        w = cm.constant((node.target, "weight"), m.weight) if m.weight is not None else None
        b = cm.constant((node.target, "bias"), m.bias) if m.bias is not None else None
        eps = float(m.eps)
        x = node.args[0].name
        return self.value(node, lambda env: fn(env[x], rm, rv, w, b, eps=eps),
                          "clconv.batch_norm", (x,))

    def instance_norm(self, node: fx.Node, m: nn.Module) -> Step:
        """nn.InstanceNorm1d/2d/3d in eval mode: with running statistics (track_running_stats)
        the batch_norm on them, as torch uses them in eval; else clconv.group_norm with one
        channel a group (each instance's own statistics)."""
        if len(node.args) != 1 or node.kwargs:
            raise Unlowerable("unexpected InstanceNorm arguments")
        nd = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}[type(m)]
        if len(shape(node.args[0]) or ()) != nd + 2:
            raise Unlowerable("InstanceNorm of an unbatched input")
        if m.track_running_stats and m.running_mean is not None:
            return self.batch_norm(node, m)
        return self._group_norm_step(node, node.args[0], m.num_features, m.weight, m.bias,
                                     m.eps, node.target)

    def group_norm(self, node: fx.Node, m: nn.Module) -> Step:
        """nn.GroupNorm: clconv.group_norm with the affine weight and bias as constants."""
        if len(node.args) != 1 or node.kwargs:
            raise Unlowerable("unexpected GroupNorm arguments")
        return self._group_norm_step(node, node.args[0], m.num_groups, m.weight, m.bias,
                                     m.eps, node.target)

    def functional_group_norm(self, node: fx.Node) -> Step:
        """F.group_norm(x, num_groups, weight, bias, eps) with module parameters."""
        x, groups, w, b, eps = bind(node, lambda input, num_groups, weight=None, bias=None,
                                    eps=1e-5: (input, num_groups, weight, bias, eps))
        if isinstance(groups, fx.Node) or isinstance(eps, fx.Node):
            raise Unlowerable("group_norm arguments computed in the graph")
        return self._group_norm_step(node, x, groups, self._const_arg(w, "weight"),
                                     self._const_arg(b, "bias"), eps, node.name)

    def _group_norm_step(self, node: fx.Node, x: Any, groups: int, weight: Any, bias: Any,
                         eps: float, key: Any) -> Step:
        xn = self.plain_tensor(x, "group_norm")
        fn = clconv_op("group_norm")
        cm = self.cm
        w = cm.constant((key, "weight"), weight) if weight is not None else None
        b = cm.constant((key, "bias"), bias) if bias is not None else None
        eps = float(eps)
        return self.value(node, lambda env: fn(env[xn], groups, w, b, eps=eps),
                          "clconv.group_norm", (xn,))

    def _const_arg(self, v: Any, what: str) -> Any:
        """A functional op's weight-like argument as a tensor (get_attr) or None; Unlowerable
        when the graph computes it."""
        if isinstance(v, fx.Node):
            if v.op == "get_attr":
                return attr(self.cm.graph_module, v.target)
            folded = self.folded(v)  # computed from constants alone (a pruned weight)
            if not isinstance(folded, torch.Tensor):
                raise Unlowerable(f"{what} computed in the graph")
            return folded
        return v

    def functional_instance_norm(self, node: fx.Node) -> Step:
        """F.instance_norm (what torch.compile's graphs hold for nn.InstanceNorm*d): each
        instance's own statistics as clconv.group_norm with one channel a group, or (eval with
        track_running_stats) the running statistics as clconv.batch_norm."""
        x, rm, rv, w, b, own, eps = bind(
            node, lambda input, running_mean=None, running_var=None, weight=None, bias=None,
            use_input_stats=True, momentum=0.1, eps=1e-5: (input, running_mean, running_var,
                                                           weight, bias, use_input_stats, eps))
        dims = shape(x) if isinstance(x, fx.Node) else None
        if dims is None or len(dims) < 3 or isinstance(own, fx.Node) or isinstance(eps, fx.Node):
            raise Unlowerable("instance_norm of an unbatched input or computed arguments")
        w, b = self._const_arg(w, "weight"), self._const_arg(b, "bias")
        if own:
            if rm is not None or rv is not None:  # (torch updates them in this call)
                raise Unlowerable("instance_norm updating running statistics")
            return self._group_norm_step(node, x, int(dims[1]), w, b, eps, node.name)
        rm, rv = self._const_arg(rm, "running_mean"), self._const_arg(rv, "running_var")
        if rm is None or rv is None:
            raise Unlowerable("instance_norm without statistics")
        return self._batch_norm_step(node, self.plain_tensor(x, "instance_norm"), rm, rv, w, b,
                                     eps, "F.instance_norm")

    def functional_batch_norm(self, node: fx.Node) -> Step:
        """F.batch_norm(x, running_mean, running_var, weight, bias, training=False, ...) with
        module buffers (e.g. timm's BatchNormAct2d): clconv.batch_norm with constants."""
        x, rm, rv, w, b, training, eps = bind(
            node, lambda input, running_mean, running_var, weight=None, bias=None,
            training=False, momentum=0.1, eps=1e-5: (input, running_mean, running_var, weight,
                                                      bias, training, eps))
        if training is not False:
            raise Unlowerable("batch_norm with batch statistics (training=True)")
        rm, rv, w, b = (self._const_arg(v, n) for v, n in ((rm, "running_mean"),
                                                            (rv, "running_var"),
                                                            (w, "weight"), (b, "bias")))
        if rm is None or rv is None:
            raise Unlowerable("batch_norm without running statistics")
        return self._batch_norm_step(node, x.name, rm, rv, w, b, eps, "F.batch_norm")

    def _batch_norm_step(self, node: fx.Node, xn: str, mean: Any, var: Any, weight: Any,
                         bias: Any, eps: float, what: str) -> Step:
        """clconv.batch_norm of the value `xn` with these tensors as the graph's constants."""
        fn = clconv_op("batch_norm")
        cm = self.cm
        key = (what, node.name)
        rm, rv = cm.constant(key + ("mean",), mean), cm.constant(key + ("var",), var)
        w = cm.constant(key + ("w",), weight) if weight is not None else None
        b = cm.constant(key + ("b",), bias) if bias is not None else None
        eps = float(eps)
        return self.value(node, lambda env: fn(env[xn], rm, rv, w, b, eps=eps),
                          "clconv.batch_norm", (xn,))

    def functional_layer(self, node: fx.Node) -> Step:
        """F.conv1d/2d/3d and F.linear whose weight and bias are parameters (get_attr)."""
        t, cm = node.target, self.cm
        if t is F.linear:
            x, w, b = bind(node, lambda input, weight, bias=None: (input, weight, bias))
            rest: tuple[Any, ...] = ()
            fn = clconv_op("linear")
        else:
            x, w, b, *rest = bind(node, lambda input, weight, bias=None, stride=1, padding=0,
                                  dilation=1, groups=1: (input, weight, bias, stride, padding,
                                                         dilation, groups))
            fn = clconv_op(t.__name__)
        if any(isinstance(v, fx.Node) for v in rest):
            raise Unlowerable("arguments computed in the graph")
        w, b = self._const_arg(w, "weight"), self._const_arg(b, "bias")
        key = ("F", node.name)
        wd = cm.constant(key + ("w",), w)
        bd = cm.constant(key + ("b",), b) if b is not None else None
        xn = x.name
        return self.value(node, lambda env: fn(env[xn], wd, bd, *rest),
                          f"clconv.{fn.__name__}", (xn,))

    def channel_layer_norm(self, node: fx.Node, x: fx.Node, normalized_shape: Any, weight: Any,
                           bias: Any, eps: float, layout: tuple[int, ...] | None) -> Step:
        """LayerNorm over the channels (the last dim of a channels-last view, or the features of
        an (N, C) tensor): the channel norm of the stored channels-first data."""
        sh = shape(x)
        ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if ns != (sh[-1],):
            raise Unlowerable(f"layer_norm over {ns} of a channels-last view")
        cm = self.cm
        w = cm.constant(("ln", id(weight)), weight) if weight is not None else None
        b = cm.constant(("ln", id(bias)), bias) if bias is not None else None
        xn = x.name
        return self.value(node, lambda env: channel_norm(env[xn], w, b, float(eps)),
                          "channel_norm", (xn,), layout)

    def trailing_layer_norm(self, node: fx.Node, x: Any, normalized_shape: Any, weight: Any,
                            bias: Any, eps: Any) -> Step:
        """LayerNorm over the last dims of a channels-first tensor (nn.LayerNorm([C, H, W]), or
        over (H, W)): clconv.layer_norm (group_norm with one group over a (rows, 1, size) view,
        then the elementwise weight and bias by clconv.mul / add)."""
        sh = shape(x)
        computed = [v for v in leaves(normalized_shape) if isinstance(v, fx.Node)]
        if isinstance(eps, fx.Node) or any(is_tensor(v) for v in computed):
            raise Unlowerable("layer_norm arguments computed in the graph")
        if computed:  # F.layer_norm(x, x.shape[1:]): the sizes read on each call
            ns = None
        else:
            ns = (normalized_shape,) if isinstance(normalized_shape, int) else \
                tuple(normalized_shape) if isinstance(normalized_shape,
                                                      (tuple, list, torch.Size)) else None
            if sh is None or not ns or len(ns) > len(sh) or tuple(sh[len(sh) - len(ns):]) != ns:
                raise Unlowerable(f"layer_norm over {ns} of a tensor of shape {sh}")
        xn = self.plain_tensor(x, "layer_norm")
        cm = self.cm
        w = cm.constant(("ln", node.name, "weight"), weight) if weight is not None else None
        b = cm.constant(("ln", node.name, "bias"), bias) if bias is not None else None
        eps = float(eps)
        layer_norm = clconv_op("layer_norm")

        def run(env: dict[str, Any]) -> Any:
            if ns is not None:
                return layer_norm(env[xn], ns, w, b, eps)
            now = fx.node.map_arg(normalized_shape, lambda n: env[n.name])
            return layer_norm(env[xn], (int(now),) if isinstance(now, int) else
                              tuple(int(v) for v in leaves(now)), w, b, eps)
        return self.value(node, run, "clconv.layer_norm", (xn, *(v.name for v in computed)))

    def local_response_norm(self, node: fx.Node, x: Any, size: Any, alpha: Any, beta: Any,
                            k: Any) -> Step:
        """nn.LocalResponseNorm / F.local_response_norm (AlexNet, GoogLeNet v1): one pass of
        clconv.local_response_norm."""
        if any(isinstance(v, fx.Node) for v in (size, alpha, beta, k)):
            raise Unlowerable("local_response_norm arguments computed in the graph")
        xn = self.plain_tensor(x, "local_response_norm")
        fn = clconv_op("local_response_norm")
        return self.value(node, lambda env: fn(env[xn], size, alpha, beta, k),
                          "clconv.local_response_norm", (xn,))


def _fold(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module, transposed: bool,
          groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm `bn` folded into the convolution before it: clconv.fold_batchnorm
    (float64 on the host, in the weight's dtype) on the modules' tensors."""
    def host(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().numpy()

    if not foldable(host(bn.running_var), host(bn.weight), float(bn.eps)):
        raise Unlowerable("a BatchNorm whose scale gamma / sqrt(running_var + eps) is not "
                          "finite cannot be folded into the convolution")
    w, b = fold_batchnorm(host(weight), host(bias), host(bn.running_mean), host(bn.running_var),
                          host(bn.weight), host(bn.bias), float(bn.eps), transposed=transposed,
                          groups=groups if transposed else 1)
    return torch.from_numpy(w), torch.from_numpy(b)


def _nested(v: Any) -> list[Any]:
    """The items of nested lists/tuples (v itself when it is neither)."""
    if isinstance(v, (list, tuple)):
        return [leaf for e in v for leaf in _nested(e)]
    return [v]
