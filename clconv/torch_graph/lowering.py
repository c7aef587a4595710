"""Lowering: the fx graph -> the program's steps. Lowering walks the nodes, fuses groups, sends each
node to its rule (lower_layers.py for layers with weights, lower_math.py for arithmetic, reductions
and pooling, lower_shapes.py for the ops that move data), keeps a node no rule takes on the host,
and says when each value can be dropped."""

from __future__ import annotations

import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..runtime.transfer import to_device
from .activations import activation_of
from .base import Unlowerable, attr, bind, is_tensor, leaves, pure_call, shape, torch_type
from .lower_layers import LayerRules
from .lower_math import MathRules
from .lower_shapes import ShapeRules
from .lowering_base import (
    ADDS,
    MIRRORED,
    MULS,
    NOOP_MODULES,
    PAD_MODULES,
    POOL_MODULES,
    SUBS,
    TRAIN_MODE_MODULES,
    conv_dims,
    reshape_view,
    transposed_dims,
)
from .program import Step, mapped
from .tracing import forward_hooked, untraced



#: torch's max pooling functions that return (values, indices): clconv's op of each.
_POOLS_WITH_INDICES = {getattr(F, f"{kind}_pool{d}d_with_indices"): f"{kind}_pool{d}d"
                       for kind in ("max", "adaptive_max") for d in (1, 2, 3)
                       if hasattr(F, f"{kind}_pool{d}d_with_indices")}

_UNSET = object()
#: Ops whose value depends on more than their operands (random numbers) or that write.
class Lowering(LayerRules, MathRules, ShapeRules):
    """One lowering of a Program's graph with the given Options: lower() gives the steps and the
    layout of each value."""

    def lower(self) -> tuple[list[Step], dict[str, tuple[int, ...] | None]]:
        self._folded: dict[str, Any] = {}
        for node in self.cm.nodes:  # (before the groups: no fused step absorbs such a module)
            m = self.modules.get(str(node.target)) if node.op == "call_module" else None
            if m is not None and forward_hooked(m):
                self.options.host[node.name] = ("forward hooks: torch calls the module, and its "
                                                "hooks with it")
        self.find_groups()
        steps: list[Step] = []
        for node in self.cm.nodes:
            if node.op in ("placeholder", "output") or node.name in self.absorbed:
                continue
            group = self.groups.get(node.name)
            try:
                if node.name in self.options.host:
                    raise Unlowerable(self.options.host[node.name])
                step = self._group(group) if group else self._single(node)
            except Unlowerable as why:
                if group:  # each node of the group on its own (the absorbed ones too)
                    steps.extend(self._ungrouped(group, str(why)))
                    continue
                step = self._host(node, str(why))
            steps.append(step)
        # Constants no step reads (lowered ops took them as constants of their own) are dropped.
        read = {name for step in steps for name in step.inputs}
        fx.node.map_arg(self.cm.output_arg, lambda n: read.add(n.name))
        steps = [s for s in steps if s.op != "constant" or s.node in read]
        steps = self.squeeze_excitations(steps)
        self._frees(steps)
        return steps, self.layout

    def _ungrouped(self, group: list[fx.Node], why: str) -> list[Step]:
        """The steps of a group that cannot run fused (its head takes arguments the fused step
        does not, e.g. a transposed convolution's output_size): a folded padding, the head on the
        host, and each later node lowered alone."""
        head = group[0]
        fold = self.pad_folds.pop(head.name, None)
        members = ([head.args[0]] if fold is not None else []) + group
        steps = []
        for n in members:
            try:
                if n is head:
                    raise Unlowerable(why)
                steps.append(self._single(n))
            except Unlowerable as reason:
                steps.append(self._host(n, str(reason)))
        return steps

    def _group(self, group: list[fx.Node]) -> Step:
        head = group[0]
        if self.module_kind(head) is not None:
            return self.fused(group)
        # add/mul + activation
        act = activation_of(group[1], self.modules)
        step = self.binary(head, self.binary_name(head), *head.args, act=act[0])
        self.layout[group[1].name] = self.layout[head.name]
        return Step(group[1].name, (head.name, group[1].name), step.op, step.inputs, step.run)

    def _frees(self, steps: list[Step]) -> None:
        last: dict[str, int] = {}
        for i, step in enumerate(steps):
            for name in step.inputs:
                last[name] = i
        keep: set[str] = set()
        fx.node.map_arg(self.cm.output_arg, lambda n: keep.add(n.name))
        frees: dict[int, list[str]] = {}
        for name, i in last.items():
            if name not in keep:
                frees.setdefault(i, []).append(name)
        produced = {s.node for s in steps}
        for i, step in enumerate(steps):
            # A value nobody reads (e.g. a dead node) is dropped right after it is made.
            dead = [] if step.node in last or step.node in keep else [step.node]
            step.frees = tuple(n for n in frees.get(i, []) if n in produced or
                               n in self.cm.placeholders) + tuple(dead)

    def _host(self, node: fx.Node, why: str) -> Step:
        """The node run by torch on the host: inputs downloaded, result uploaded."""
        cm = self.cm
        inputs = tuple(n.name for n in node.all_input_nodes)
        layouts = {n.name: self.layout.get(n.name) for n in node.all_input_nodes}
        modules = self.modules
        if node.op == "call_module":
            op, fn = type(modules[node.target]).__name__, modules[node.target]
        elif node.op == "call_function":
            op = getattr(node.target, "__name__", str(node.target))
            fn = node.target
        elif node.op == "call_method":
            op, fn = f"Tensor.{node.target}", None
        else:
            op, fn = node.op, None
        args, kwargs, target = node.args, node.kwargs, node.target

        def run(env: dict[str, Any]) -> Any:
            copies: list[tuple[torch.Tensor, int, Any, Any]] = []

            def value(n: fx.Node) -> Any:
                lay = layouts[n.name]  # (a tuple's pieces too: a slice of chunk's pieces)

                def download(v: Any) -> torch.Tensor:
                    t = cm.download(v, lay)
                    copies.append((t, t._version, v, lay))
                    return t
                return mapped(env[n.name], download)
            # Outside inference mode (the caller's, if any): inference tensors keep no version
            # counter, and the write-back below needs one.
            with torch.inference_mode(False), torch.no_grad():
                a = fx.node.map_arg(args, value)
                k = fx.node.map_arg(kwargs, value)
                if fn is not None:
                    out = fn(*a, **k)
                elif node.op == "call_method":
                    out = getattr(a[0], target)(*a[1:], **k)
                else:
                    raise RuntimeError(f"cannot run {node.op} node {node.name}")
            for t, version, array, lay in copies:
                if t._version != version:
                    # torch wrote an input in place (code fx could not trace, or out=): the
                    # device value is written back, so that every later reader sees the write
                    cm.write_back(array, t, lay)
            def upload(v: Any) -> Any:
                return cm.upload(v) if isinstance(v, torch.Tensor) else v
            if isinstance(out, tuple) and type(out) is not tuple:
                # torch's named results (sort's values/indices: torch.return_types, and
                # namedtuples) keep their type, so that later nodes' .values reach their fields
                items = [fx.node.map_aggregate(v, upload) for v in out]
                kind = type(out)
                return kind._make(items) if hasattr(kind, "_make") else kind(items)
            return fx.node.map_aggregate(out, upload)

        self.layout[node.name] = None
        return Step(node.name, (node.name,), op, inputs, run, host=True, why=why)

    def folded(self, node: fx.Node) -> Any:
        """The value of `node` computed now by torch where it depends on constants alone (the
        model's parameters and buffers: a pruned weight's weight_orig * weight_mask, a scaled
        weight, the old weight_norm's g * v / |v|) through ops that give the same value each
        time (no random op, no in-place write), else None. The program is lowered again when
        one of those tensors changes (CompiledModel.weights_changed), so that the value is
        never stale."""
        found = self._folded.get(node.name, _UNSET)
        if found is not _UNSET:
            return found
        value = None
        if node.op == "get_attr":
            value = attr(self.cm.graph_module, node.target)
        elif node.op in ("call_function", "call_method") and node.all_input_nodes and \
                pure_call(node):
            inputs = {n.name: self.folded(n) for n in node.all_input_nodes}
            if all(v is not None for v in inputs.values()):
                args = fx.node.map_arg(node.args, lambda n: inputs[n.name])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: inputs[n.name])
                try:
                    with torch.no_grad():
                        value = node.target(*args, **kwargs) if node.op == "call_function" \
                            else getattr(args[0], node.target)(*args[1:], **kwargs)
                except Exception:  # noqa: BLE001 - not foldable: lowered as it is
                    value = None
        self._folded[node.name] = value
        return value

    def _single(self, node: fx.Node) -> Step:
        cm = self.cm
        tensor_inputs = [n for n in node.all_input_nodes if is_tensor(n)]
        if node.op in ("call_function", "call_method") and tensor_inputs and \
                all(n.op == "get_attr" or n.op in ("call_function", "call_method")
                    for n in node.all_input_nodes):
            t = self.folded(node)
            if isinstance(t, torch.Tensor):  # a constant (kept while what it reads is)
                key = ("folded", node.name)
                return self.value(node, lambda env: cm.constant(key, t), "constant (folded)",
                                  ())
            if t is not None and all(type(v) in (int, float, bool) for v in leaves(t)):
                # a number of constants (a standardised weight's fan-in, `w[0].numel()`)
                return self.value(node, lambda env: t, "constant (folded)", ())
        if node.op == "get_attr":
            t = attr(self.cm.graph_module, node.target)
            if isinstance(t, torch.Tensor):
                # uploaded on first use (a constant that lowered ops take as such is never read)
                key = ("attr", node.target)
                return self.value(node, lambda env: cm.constant(key, t), "constant", ())
            return self.value(node, lambda env: t, "constant", ())
        if not is_tensor(node) and not tensor_inputs and node.op != "call_module":
            return self.python(node)
        if not is_tensor(node):
            return self._metadata(node)
        layouts = {self.layout.get(n.name) for n in tensor_inputs}
        if any(p is not None for p in layouts):
            return self._permuted(node)
        act = activation_of(node, self.modules)
        if act is not None:
            return self.activation(node, act[0], act[1])
        m = self.module(node)
        if m is not None:
            return self._module(node, m)
        if node.op == "call_function":
            return self._function(node)
        if node.op == "call_method":
            return self._method(node)
        raise Unlowerable(f"no lowering for {node.op}")

    def _metadata(self, node: fx.Node) -> Step:
        """x.size(...), x.shape, x.dim(): read from the device array's shape (a channels-last
        view's in its logical order)."""
        def logical(x: str) -> Callable[[dict[str, Any]], torch.Size]:
            perm = self.layout.get(x)
            if perm is None:
                return lambda env: torch.Size(env[x].shape)
            return lambda env: torch.Size(tuple(env[x].shape[p] for p in perm))

        if node.op == "call_method" and node.target in ("size", "dim") and len(node.args) >= 1:
            x = node.args[0].name
            rest = node.args[1:]
            size = logical(x)
            if node.target == "dim":
                return self.value(node, lambda env: len(env[x].shape), "dim", (x,))
            if rest:
                d = rest[0]
                return self.value(node, lambda env: int(size(env)[d]), "size", (x,))
            return self.value(node, size, "size", (x,))
        if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
            x = node.args[0].name
            return self.value(node, logical(x), "shape", (x,))
        if node.op == "call_function" and node.target in _POOLS_WITH_INDICES:
            name = _POOLS_WITH_INDICES[node.target]
            if name.startswith("adaptive"):
                x, kwargs = bind(node, lambda input, output_size, return_indices=False:
                                 (input, {"output_size": output_size}))
            else:
                x, kwargs = bind(node, lambda input, kernel_size, stride=None, padding=0,
                                 dilation=1, ceil_mode=False, return_indices=False:
                                 (input, {"kernel_size": kernel_size, "stride": stride,
                                          "padding": padding, "dilation": dilation,
                                          "ceil_mode": ceil_mode}))
            return self.pool_with_indices(node, name, x, kwargs)
        m = self.module(node) if node.op == "call_module" else None
        if m is not None and type(m) in POOL_MODULES:
            return self.pool(node, m)
        if (node.op == "call_method" and node.target in ("chunk", "split")) or (
                node.op == "call_function" and node.target in (torch.chunk, torch.split)):
            return self.pieces(node)
        if (node.op == "call_method" and node.target in ("max", "min")) or (
                node.op == "call_function" and node.target in (torch.max, torch.min)):
            name = node.target if isinstance(node.target, str) else node.target.__name__
            if any(self.layout.get(n.name) is not None for n in node.all_input_nodes):
                # its dim is in the view's logical order, amax's in the stored one
                raise Unlowerable(f"{name} of a permuted (channels-last) view")
            return self.max_values(node, name)  # torch.max(x, dim): (values, indices)
        raise Unlowerable(f"non-tensor {node.op} "
                          f"{getattr(node.target, '__qualname__', None) or node.target}")

    # -- modules, functions and methods -------------------------------------------------------

    def _module(self, node: fx.Node, m: nn.Module) -> Step:
        why = untraced(self.cm.graph_module).get(node.target)
        if why is not None:
            raise Unlowerable(f"torch.fx cannot trace its forward ({why})")
        kind = torch_type(m)
        if m.training and isinstance(m, TRAIN_MODE_MODULES):
            raise Unlowerable(f"{type(m).__name__} in train mode")
        if isinstance(m, NOOP_MODULES) and kind in NOOP_MODULES:
            return self.alias(node, node.args[0], kind.__name__)
        if conv_dims(m) is not None or transposed_dims(m) is not None or kind is nn.Linear:
            return self.fused([node])
        if kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            return self.batch_norm(node, m)
        if kind is nn.GroupNorm:
            return self.group_norm(node, m)
        if kind in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
            return self.instance_norm(node, m)
        if kind in (nn.PixelShuffle, nn.PixelUnshuffle) and len(node.args) == 1:
            inverse = kind is nn.PixelUnshuffle
            return self.pixel_shuffle(node, node.args[0], m.downscale_factor if inverse else
                                      m.upscale_factor, inverse)
        if kind in (nn.Softmax, nn.LogSoftmax):
            return self.softmax(node, node.args[0], m.dim, kind is nn.LogSoftmax)
        if kind is nn.GLU and len(node.args) == 1 and not node.kwargs:
            return self.glu(node, node.args[0], m.dim)
        if kind is nn.Softmax2d and len(node.args) == 1 and not node.kwargs:
            return self.softmax(node, node.args[0], -3, False)  # over the channels
        if kind is nn.ChannelShuffle and len(node.args) == 1 and not node.kwargs:
            return self.channel_shuffle(node, node.args[0], m.groups)
        if kind is nn.PReLU and len(node.args) == 1 and not node.kwargs:
            return self.binary(node, "prelu", node.args[0], m.weight.detach())
        if kind in POOL_MODULES:
            return self.pool(node, m)
        if kind is nn.Flatten:
            return self.flatten(node, node.args[0], m.start_dim, m.end_dim)
        if kind is nn.Unflatten:
            return self.unflatten(node, node.args[0], m.dim, m.unflattened_size)
        if kind in PAD_MODULES:
            return self.pad_module(node, m, PAD_MODULES[kind])
        if kind in (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d):
            return self.upsample_module(node, m)
        if kind is nn.LayerNorm and len(shape(node.args[0]) or ()) == 2:
            # over the features of (N, C) (ConvNeXt's head): the channel norm with no spatial dims
            return self.channel_layer_norm(node, node.args[0], m.normalized_shape, m.weight,
                                           m.bias, m.eps, None)
        if kind is nn.LocalResponseNorm and len(node.args) == 1 and not node.kwargs:
            return self.local_response_norm(node, node.args[0], m.size, m.alpha, m.beta, m.k)
        if kind is nn.LayerNorm and len(node.args) == 1 and not node.kwargs:
            return self.trailing_layer_norm(node, node.args[0], m.normalized_shape, m.weight,
                                            m.bias, m.eps)
        raise Unlowerable(f"no clconv lowering for {kind.__name__}")

    def _function(self, node: fx.Node) -> Step:
        t = node.target
        if t in ADDS or t in MULS or t in SUBS:
            name = "add" if t in ADDS else "mul" if t in MULS else "sub"
            if t in (torch.add, torch.sub):
                return self.binary(node, name, *node.args[:2],
                                   alpha=self.add_alpha(node, f"torch.{name}"))
            if node.kwargs or len(node.args) != 2:
                raise Unlowerable(f"torch.{name} with keywords")
            return self.binary(node, name, *node.args[:2])
        if t in (torch.maximum, torch.minimum):
            if len(node.args) != 2 or node.kwargs:
                raise Unlowerable(f"torch.{t.__name__} with keywords")
            return self.binary(node, t.__name__, *node.args)
        if t in (torch.max, torch.min) and len(node.args) == 2 and not node.kwargs and \
                is_tensor(node.args[1]):  # torch.max(a, b): the elementwise maximum
            return self.binary(node, "maximum" if t is torch.max else "minimum", *node.args)
        if t is torch.reciprocal and len(node.args) == 1 and not node.kwargs:
            return self.binary(node, "div", 1.0, node.args[0])
        if t in (torch.matmul, operator.matmul, torch.mm, torch.bmm):
            if len(node.args) != 2 or node.kwargs:
                raise Unlowerable(f"{getattr(t, '__name__', t)} with keywords")
            return self.matmul(node, *node.args)
        if t in (F.unfold, F.fold):
            return self.unfold(node, t.__name__)
        if t in (torch.clamp, torch.clip):  # (number bounds are an activation)
            return self.clamp_tensors(node)
        if t in (F.channel_shuffle, torch.channel_shuffle, torch.native_channel_shuffle):
            return self.channel_shuffle(node, *bind(node, lambda input, groups: (input, groups)))
        if t is torch.flatten:
            a = bind(node, lambda input, start_dim=0, end_dim=-1: (input, start_dim, end_dim))
            return self.flatten(node, *a)
        if t is torch.unflatten:
            return self.unflatten(node, *bind(node, lambda input, dim, sizes: (input, dim, sizes)))
        if t in (torch.cat, torch.concat):
            a = bind(node, lambda tensors, dim=0: (tensors, dim))
            return self.cat(node, *a)
        if t is torch.stack:
            return self.stack(node, *bind(node, lambda tensors, dim=0: (tensors, dim)))
        if t in MIRRORED:
            return self.mirrored(node, MIRRORED[t])
        if t in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout):
            return self._eval_identity(node, "dropout", lambda input, p=0.5, training=True,
                                       inplace=False: (input, training))
        if t is torch.mean:
            return self.mean(node)
        if t is torch.sum:
            return self.mean(node, "sum")
        if t in (torch.amax, torch.amin):
            return self.extreme(node, t is torch.amin)
        if t in (torch.max, torch.min) and len(node.args) == 1 and not node.kwargs:
            return self.extreme(node, t is torch.min)  # torch.max(x): over every element
        if t in (torch.var, torch.std):
            return self.variance(node, t.__name__)
        if t is F.normalize:
            return self.normalize(node)
        if t is torch.clone:
            return self.cloned(node, node.args[0])
        if t is F.glu:
            return self.glu(node, *bind(node, lambda input, dim=-1: (input, dim)))
        if t in (torch.zeros_like, torch.ones_like, torch.full_like):
            return self.filled_like(node, {torch.zeros_like: 0.0, torch.ones_like: 1.0}.get(t))
        if t in (torch.sqrt, torch.square, torch.pow, operator.pow):
            return self.power(node, {torch.sqrt: "sqrt", torch.square: "square"}.get(t, "pow"))
        if t in (F.pixel_shuffle, F.pixel_unshuffle):
            inverse = t is F.pixel_unshuffle
            x, r = bind(node, (lambda input, downscale_factor: (input, downscale_factor))
                        if inverse else (lambda input, upscale_factor: (input, upscale_factor)))
            return self.pixel_shuffle(node, x, r, inverse)
        if t in (operator.truediv, operator.itruediv, torch.div, torch.true_divide):
            return self.divide(node, *node.args[:2])
        if t in (operator.floordiv, torch.floor_divide) and len(node.args) == 2 and \
                not node.kwargs and any(is_tensor(v) for v in node.args):
            return self.binary(node, "div", *node.args, rounding_mode="floor")  # torch's `//`
        if t in (operator.neg, torch.neg):
            return self.binary(node, "mul", node.args[0], -1.0)
        if t is F.interpolate:
            return self.interpolate(node)
        if t is F.group_norm:
            return self.functional_group_norm(node)
        if t in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax):
            if t in (F.softmax, F.log_softmax):
                a = bind(node, lambda input, dim=None, _stacklevel=3, dtype=None: (
                    input, dim, dtype))
            else:  # torch.softmax(input, dim, dtype=None): dtype is the third positional
                a = bind(node, lambda input, dim, dtype=None: (input, dim, dtype))
            return self.softmax(node, a[0], a[1], t in (F.log_softmax, torch.log_softmax), a[2])
        if t is F.prelu and len(node.args) == 2 and not node.kwargs:
            return self.binary(node, "prelu", *node.args)
        if t is F.batch_norm:
            return self.functional_batch_norm(node)
        if t is F.pad or t is torch._C._nn.pad:  # (the second: torch.compile's graphs)
            return self.pad(node)
        if t is F.instance_norm:
            return self.functional_instance_norm(node)
        if t in (F.conv1d, F.conv2d, F.conv3d, F.linear):
            return self.functional_layer(node)
        if getattr(t, "__name__", "") == "stochastic_depth":
            # torchvision.ops.stochastic_depth (fx-wrapped): the identity when not training
            return self._eval_identity(node, "stochastic_depth",
                                       lambda input, p, mode, training=True: (input, training))
        if t is operator.getitem:
            return self.getitem(node)
        if t is getattr and node.args[1] == "values" and isinstance(node.args[0], fx.Node):
            src = node.args[0].name  # torch.max(x, dim).values: the (values, None) pair's first
            return self.value(node, lambda env: env[src][0], "max values", (src,))
        if t is torch.reshape:
            return self.reshape(node, node.args[0], node.args[1:])
        if t is torch.permute:
            return self._permute(node)
        if t is torch.transpose:
            return self.transpose(node)
        if t in (torch.squeeze, torch.unsqueeze):
            return self.squeeze(node, t.__name__)
        if t is F.local_response_norm:
            return self.local_response_norm(node, *bind(
                node, lambda input, size, alpha=1e-4, beta=0.75, k=1.0: (input, size, alpha,
                                                                          beta, k)))
        if t is F.layer_norm:
            x, ns, w, b, eps = bind(node, lambda input, normalized_shape, weight=None, bias=None,
                                    eps=1e-5: (input, normalized_shape, weight, bias, eps))
            return self.trailing_layer_norm(node, x, ns, self._const_arg(w, "weight"),
                                            self._const_arg(b, "bias"), eps)
        raise Unlowerable(f"no clconv lowering for {getattr(t, '__module__', '')}."
                          f"{getattr(t, '__name__', t)}")

    def _eval_identity(self, node: fx.Node, name: str, signature: Callable[..., Any]) -> Step:
        """A dropout-like op (`signature` gives its input and `training` argument): the identity
        when not training."""
        x, training = bind(node, signature)
        if training is False:
            return self.alias(node, x, f"{name} (eval)")
        raise Unlowerable(f"{name} in training mode")

    def _method(self, node: fx.Node) -> Step:
        t = node.target
        if t in ("add", "add_", "sub", "sub_"):
            return self.binary(node, t.rstrip("_"), *node.args[:2],
                               alpha=self.add_alpha(node, f"Tensor.{t}"))
        if t in ("mul", "mul_"):
            if len(node.args) != 2 or node.kwargs:
                raise Unlowerable(f"Tensor.{t} with keywords")
            return self.binary(node, t.rstrip("_"), *node.args)
        if t in ("maximum", "minimum"):
            if len(node.args) != 2 or node.kwargs:
                raise Unlowerable(f"Tensor.{t} with keywords")
            return self.binary(node, t, *node.args)
        if t in ("max", "min") and len(node.args) == 2 and not node.kwargs and \
                is_tensor(node.args[1]):  # x.max(other): the elementwise maximum
            return self.binary(node, "maximum" if t == "max" else "minimum", *node.args)
        if t == "reciprocal" and len(node.args) == 1 and not node.kwargs:
            return self.binary(node, "div", 1.0, node.args[0])
        if t in ("matmul", "mm", "bmm", "__matmul__"):
            if len(node.args) != 2 or node.kwargs:
                raise Unlowerable(f"Tensor.{t} with keywords")
            return self.matmul(node, *node.args)
        if t in ("clamp", "clip"):
            return self.clamp_tensors(node)
        if t in ("view", "reshape"):
            return self.reshape(node, node.args[0], node.args[1:])
        if t in ("view_as", "reshape_as") and len(node.args) == 2 and is_tensor(node.args[1]):
            xn, other = node.args[0].name, node.args[1].name
            return self.value(node, lambda env: reshape_view(env[xn], tuple(env[other].shape)),
                              f"{t} (reshape)", (xn, other))
        if t in ("softmax", "log_softmax"):
            a = bind(node, lambda self, dim, dtype=None: (self, dim, dtype))
            return self.softmax(node, a[0], a[1], t == "log_softmax", a[2])
        if t == "flatten":
            a = bind(node, lambda self, start_dim=0, end_dim=-1: (self, start_dim, end_dim))
            return self.flatten(node, *a)
        if t == "unflatten":
            return self.unflatten(node, *bind(node, lambda self, dim, sizes: (self, dim, sizes)))
        if t == "mean":
            return self.mean(node)
        if t == "sum":
            return self.mean(node, "sum")
        if t in ("amax", "amin"):
            return self.extreme(node, t == "amin")
        if t in ("max", "min") and len(node.args) == 1 and not node.kwargs:
            return self.extreme(node, t == "min")  # x.max(): over every element
        if t in ("var", "std"):
            return self.variance(node, t)
        if t in ("sqrt", "square", "pow"):
            return self.power(node, t)
        if t in ("div", "div_", "true_divide"):
            return self.divide(node, *node.args[:2])
        if t == "neg":
            return self.binary(node, "mul", node.args[0], -1.0)
        if t in ("float", "double", "half", "to", "type_as"):
            return self.same_dtype(node, t)
        if t in ("squeeze", "unsqueeze"):
            return self.squeeze(node, t)
        if t in ("expand_as", "expand"):
            # x.expand_as(y) feeding only add/mul whose other operand is y: their broadcasting
            # expands it, no copy, at every call's sizes. (Beside a number or a smaller tensor
            # the result would keep x's shape; sizes given to expand() need not be the other
            # operand's at another call: a copy then, checked as torch checks them.)
            like = node.args[1] if t == "expand_as" and len(node.args) == 2 else None

            def broadcast_by(u: fx.Node) -> bool:
                return self.binary_name(u) is not None and isinstance(like, fx.Node) and any(
                    a is like for a in (*u.args, *u.kwargs.values()))
            if node.users and all(broadcast_by(u) for u in node.users):
                return self.alias(node, node.args[0], f"{t} (broadcast by its users)")
            if t == "expand_as":
                return self.expanded_copy(node, node.args[0], (), like=node.args[1])
            return self.expanded_copy(node, node.args[0], node.args[1:])
        if t in ("contiguous",):
            return self.alias(node, node.args[0], "contiguous")
        if t == "clone":
            return self.cloned(node, node.args[0])
        if t == "transpose":
            return self.transpose(node)
        if t == "permute":
            return self._permute(node)
        raise Unlowerable(f"no clconv lowering for Tensor.{t}")

    # -- channels-last views (ConvNeXt's permute -> LayerNorm/Linear -> permute) ----------------

    def _permute(self, node: fx.Node) -> Step:
        x = node.args[0]
        perm = node.args[1:]
        if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
            perm = perm[0]
        perm = tuple(perm)
        nd = len(shape(x) or ())
        to_last = (0, *range(2, nd), 1)
        if self.layout.get(x.name) is None and perm == to_last and nd >= 3:
            # The data stays channels-first; the value is marked as viewed channels-last.
            return self.alias(node, x, "permute (view)", layout=to_last)
        return self.permuted_copy(node, x, perm)

    def _reshape_permuted(self, node: fx.Node, layout: tuple[int, ...]) -> Step:
        """view / reshape / flatten of a channels-last view (ConvNeXt-style heads that flatten
        the (N, H, W, C) value): the value gathered into its logical order on the device, then
        reshaped as a contiguous one would be."""
        x = node.args[0]
        if node.target in (torch.flatten, "flatten"):
            step = self.flatten(node, *bind(node, lambda input, start_dim=0, end_dim=-1: (
                input, start_dim, end_dim)))
        else:
            step = self.reshape(node, x, node.args[1:])
        reshape, xn, dev = step.run, x.name, self.cm.device

        def run(env: dict[str, Any]) -> Any:
            a = env[xn]
            logical = to_device(a.transpose(layout), dev, "input", a.dtype)  # (a gather)
            return reshape({**env, xn: logical})
        return Step(step.node, step.nodes, f"{step.op} (of a channels-last view, gathered)",
                    step.inputs, run)

    def _permuted(self, node: fx.Node) -> Step:
        """A node reading channels-last views (logical (N, *spatial, C), stored (N, C,
        *spatial))."""
        layout = next(p for p in (self.layout.get(n.name) for n in node.all_input_nodes)
                      if p is not None)
        nd = len(layout)
        back = (0, nd - 1, *range(1, nd - 1))
        m = self.module(node)
        if node.op == "call_method" and node.target == "permute":
            perm = node.args[1:]
            if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
                perm = perm[0]
            if tuple(perm) == back:
                return self.alias(node, node.args[0], "permute (view)")
            raise Unlowerable(f"permute {tuple(perm)} of a channels-last view")
        if node.op == "call_function" and node.target is torch.permute:
            if tuple(node.args[1]) == back:
                return self.alias(node, node.args[0], "permute (view)")
            raise Unlowerable("permute of a channels-last view")
        if m is not None and type(m) is nn.LayerNorm:
            return self.channel_layer_norm(node, node.args[0], m.normalized_shape, m.weight,
                                           m.bias, m.eps, layout)
        if node.op == "call_function" and node.target is F.layer_norm:
            a = bind(node, lambda input, normalized_shape, weight=None, bias=None, eps=1e-5:
                     (input, normalized_shape, weight, bias, eps))
            w, b = (attr(self.cm.graph_module, v.target) if isinstance(v, fx.Node) and
                    v.op == "get_attr" else v for v in a[2:4])
            if any(isinstance(v, fx.Node) for v in (w, b)):
                raise Unlowerable("layer_norm weights computed in the graph")
            return self.channel_layer_norm(node, a[0], a[1], w, b, a[4], layout)
        if m is not None and type(m) is nn.Linear:
            return self.fused([node])
        if m is not None and type(m) in NOOP_MODULES:
            if m.training and isinstance(m, TRAIN_MODE_MODULES):
                raise Unlowerable(f"{type(m).__name__} in train mode")
            return self.alias(node, node.args[0], type(m).__name__, layout)
        act = activation_of(node, self.modules)
        if act is not None:
            return self.activation(node, act[0], act[1], layout)
        if (node.op == "call_function" and node.target in ADDS | MULS) or \
                (node.op == "call_method" and node.target in ("add", "add_", "mul", "mul_")):
            name = "add" if node.target in ADDS or node.target in ("add", "add_") else "mul"
            if name == "mul" and (node.kwargs or len(node.args) != 2):
                raise Unlowerable("mul with keywords on a permuted (channels-last) view")
            alpha = self.add_alpha(node, "add") if name == "add" else 1
            return self.binary(node, name, *node.args[:2], alpha=alpha)
        if node.op == "call_method" and node.target == "contiguous":
            return self.alias(node, node.args[0], "contiguous", layout)
        if (node.op == "call_method" and node.target in ("view", "reshape", "flatten")) or (
                node.op == "call_function" and node.target in (torch.flatten, torch.reshape)):
            return self._reshape_permuted(node, layout)
        raise Unlowerable(f"{node.op} {getattr(node.target, '__name__', node.target)} on a "
                          f"permuted (channels-last) view")
