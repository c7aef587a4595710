"""A torch.compile backend on top of compile(): each graph dynamo captures, its lifted parameters
made constants again and its functional convolutions, batch norms, Linear and LayerNorm raised to
modules (so that they fuse as in an fx trace of the model), runs as a CompiledModel."""

from __future__ import annotations

import operator

import warnings
import weakref
from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..runtime.device import current_device
from .base import FallbackWarning, Unlowerable, bind, pure_call
from .compiled import CompiledModel
from .inplace import writes_input


def _is_state(node: fx.Node, value: Any) -> bool:
    """Whether a placeholder of a dynamo graph is a parameter or buffer of the model (dynamo lifts
    them to graph inputs; its source names them), not a real input."""
    if isinstance(value, nn.Parameter):
        return True
    source = getattr(node.meta.get("grapharg"), "source", None)
    while source is not None:
        # (a module dynamo does not specialise -- so after torch.utils.checkpoint ran in the
        # process -- reaches a buffer through `__dict__['_buffers'][name]`)
        if "ParamBufferSource" in type(source).__name__ or \
                getattr(source, "index", None) in _STATE_DICTS or \
                getattr(source, "member", None) in _STATE_DICTS:
            return True
        source = getattr(source, "base", None)
    return False


_STATE_DICTS = ("_parameters", "_buffers")


def _is_number(node: fx.Node, value: Any) -> bool:
    """Whether a placeholder is a number passed as a 0-d CPU tensor that the graph only reads
    with .item() (dynamo's form of a module's float attribute under dynamic=True)."""
    return (isinstance(value, torch.Tensor) and value.dim() == 0 and value.device.type == "cpu"
            and bool(node.users)
            and all(u.op == "call_method" and u.target == "item" and len(u.args) == 1
                    for u in node.users))


def _size_of(node: fx.Node, placeholders: list[fx.Node]) -> tuple[int, int] | None:
    """(placeholder index, dim) when placeholder `node` is a size of another input (dynamo's
    SymInt input under dynamic=True: `s69`, the size of dim 2 of `skip`), else None."""
    source = getattr(node.meta.get("grapharg"), "source", None)
    if type(source).__name__ != "TensorPropertySource" or \
            getattr(getattr(source, "prop", None), "name", None) != "SIZE" or \
            not isinstance(getattr(source, "idx", None), int):
        return None
    for j, other in enumerate(placeholders):
        if other is not node and getattr(other.meta.get("grapharg"), "source", None) == \
                source.base:
            return j, source.idx
    return None


def _same_numbers(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Equal values, NaN equal to NaN (the specialised numbers of a compiled model)."""
    return all(x == y or (x != x and y != y) for x, y in zip(a, b))


#: Compiled models a backend graph keeps for the parameter sets it was called with.
MODELS_KEPT = 4

_FUNCTIONAL_CONVS = {torch.conv1d: nn.Conv1d, torch.conv2d: nn.Conv2d, torch.conv3d: nn.Conv3d}
_FUNCTIONAL_TRANSPOSED = {torch.conv_transpose1d: nn.ConvTranspose1d,
                          torch.conv_transpose2d: nn.ConvTranspose2d,
                          torch.conv_transpose3d: nn.ConvTranspose3d}


def _flat(values: Any) -> list[Any]:
    """The entries of nested tuples / lists of arguments."""
    if isinstance(values, (tuple, list)):
        return [v for x in values for v in _flat(x)]
    return [values]


def _output_size(graph: fx.Graph, x: fx.Node, m: nn.Module, output_padding: Any) -> list[Any]:
    """Nodes of the output size of transposed convolution `m` on `x` with `output_padding`
    (numbers or nodes, one a spatial dim): (in - 1) * stride - 2 * padding + dilation *
    (kernel - 1) + 1 + output_padding."""
    nd = len(m.kernel_size)
    pads = output_padding if isinstance(output_padding, (tuple, list)) else (output_padding,) * nd
    sizes = []
    for d in range(nd):
        size = graph.call_method("size", (x, 2 + d))
        fixed = -m.stride[d] - 2 * m.padding[d] + m.dilation[d] * (m.kernel_size[d] - 1) + 1
        out = graph.call_function(operator.add, (graph.call_function(
            operator.mul, (size, m.stride[d])), fixed))
        sizes.append(graph.call_function(operator.add, (out, pads[d])))
    return sizes


def _raise_to_modules(root: nn.Module, graph: fx.Graph) -> None:
    """Dynamo's graphs call torch.conv2d / F.batch_norm on the lifted parameters; the lowering's
    fusion patterns (BatchNorm folded, epilogues) match modules. Each such call whose tensors are
    constants becomes a call of an equivalent module holding them (no copy), so a dynamo graph
    fuses as an fx trace of the model does."""
    def const(v: Any) -> torch.Tensor | None:
        if v is None:
            return None
        if isinstance(v, fx.Node) and v.op == "get_attr":
            return getattr(root, v.target)
        raise Unlowerable("not a constant")

    def param(t: torch.Tensor | None) -> nn.Parameter | None:
        return None if t is None else nn.Parameter(t, requires_grad=False)

    for k, node in enumerate(list(graph.nodes)):
        if node.op != "call_function":
            continue
        try:
            if node.target in _FUNCTIONAL_CONVS or node.target in _FUNCTIONAL_TRANSPOSED:
                transposed = node.target in _FUNCTIONAL_TRANSPOSED
                if transposed:
                    a = bind(node, lambda input, weight, bias=None, stride=1, padding=0,
                             output_padding=0, groups=1, dilation=1:
                             (input, weight, bias, stride, padding, output_padding, groups,
                              dilation))
                else:
                    a = bind(node, lambda input, weight, bias=None, stride=1, padding=0,
                             dilation=1, groups=1:
                             (input, weight, bias, stride, padding, dilation, groups))
                w, b = const(a[1]), const(a[2])
                kind = (_FUNCTIONAL_TRANSPOSED if transposed else _FUNCTIONAL_CONVS)[node.target]
                nd = w.dim() - 2
                if any(isinstance(v, fx.Node) for v in _flat(a[3:])) and not (
                        transposed and not any(isinstance(v, fx.Node) for v in _flat(a[3:5] +
                                                                                    a[6:]))):
                    continue  # sizes of this call only (dynamic=True), but output_padding's
                if transposed:
                    stride, padding, output_padding, groups, dilation = a[3:]
                    # dynamic=True: a module's `output_size=` reaches the graph as the output
                    # padding it implies, worked out from the input's sizes (nodes); the raised
                    # module is called with that output size again (compile() lowers it)
                    sizes = output_padding if any(isinstance(v, fx.Node) for v in
                                                  _flat(output_padding)) else None
                    m = kind(w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), stride, padding,
                             0 if sizes is not None else output_padding, groups, b is not None,
                             dilation, device="meta")
                else:
                    stride, padding, dilation, groups = a[3:]
                    m = kind(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride,
                             padding, dilation, groups, b is not None, device="meta")
                if len(m.kernel_size) != nd:
                    continue
                m.weight, m.bias = param(w), param(b)
            elif node.target is F.batch_norm:
                a = bind(node, lambda input, running_mean, running_var, weight=None, bias=None,
                         training=False, momentum=0.1, eps=1e-5:
                         (input, running_mean, running_var, weight, bias, training, eps))
                value = a[0].meta.get("example_value") if isinstance(a[0], fx.Node) else None
                dims = getattr(value, "ndim", None)
                if a[5] is not False or dims not in (2, 3, 4, 5):
                    continue
                mean, var, w, b = (const(v) for v in a[1:5])
                if mean is None or var is None or (w is None) != (b is None):
                    continue
                kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d,
                        5: nn.BatchNorm3d}[dims]
                m = kind(mean.shape[0], float(a[6]), affine=w is not None, device="meta").eval()
                m.running_mean, m.running_var = mean, var
                if w is not None:
                    m.weight, m.bias = param(w), param(b)
            elif node.target is F.linear:
                a = bind(node, lambda input, weight, bias=None: (input, weight, bias))
                w, b = const(a[1]), const(a[2])
                m = nn.Linear(w.shape[1], w.shape[0], b is not None, device="meta")
                m.weight, m.bias = param(w), param(b)
            elif node.target is F.layer_norm:
                a = bind(node, lambda input, normalized_shape, weight=None, bias=None, eps=1e-5:
                         (input, normalized_shape, weight, bias, eps))
                w, b = const(a[2]), const(a[3])
                if w is None or b is None:
                    continue
                m = nn.LayerNorm(a[1], float(a[4]), device="meta")
                m.weight, m.bias = param(w), param(b)
            else:
                continue
        except (Unlowerable, TypeError, ValueError, RuntimeError):
            continue  # left as it is (compile() lowers it unfused, or runs it in torch)
        name = f"raised{k}"
        root.add_module(name, m)
        with graph.inserting_before(node):
            kwargs = {}
            if isinstance(m, nn.modules.conv._ConvTransposeNd) and sizes is not None:
                kwargs["output_size"] = _output_size(graph, a[0], m, sizes)
            call = graph.call_module(name, (a[0],), kwargs)
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)


def _constants(graph: fx.Graph) -> dict[fx.Node, Any]:
    """The values of the graph's calls that depend on no input (`torch.linspace(-1, 1, 16)` and
    what is computed from it alone: CoordConv's coordinates at sizes dynamo made constants),
    computed now. compile() traces the graph again with torch.fx, which runs such calls
    concretely; a concrete tensor's method given a traced size (`coords.expand(s77, -1, -1, -1)`)
    then fails, where a constant read from the root is traced."""
    consts: dict[fx.Node, Any] = {}
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method") or not pure_call(node) or \
                not all(n in consts for n in node.all_input_nodes):
            continue
        args = fx.node.map_arg(node.args, consts.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, consts.__getitem__)
        try:
            with torch.no_grad():
                consts[node] = node.target(*args, **kwargs) if node.op == "call_function" \
                    else getattr(args[0], node.target)(*args[1:], **kwargs)
        except Exception:  # noqa: BLE001 - left to the trace (and to torch's own error)
            continue
    return consts


def backend(gm: fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    """A torch.compile backend: `torch.compile(model.eval(), backend=clconv.torch.backend,
    dynamic=False)`, called under torch.no_grad() / torch.inference_mode(), runs each graph dynamo
    captures through compile() (the model's parameters and buffers, which dynamo passes as graph
    inputs, become the program's constants: detached views that share the tensors' version
    counters, so a call after an in-place change lowers the program again, as compile()'s do;
    other tensors -- a new Parameter, another instance of the model -- get a compiled model of
    their own). With grad enabled, or where the graph enables it (an `enable_grad()` block), the
    graph runs in torch (the contract is inference); a graph compile() cannot take runs in torch
    too, with a FallbackWarning saying why. Nodes compile()
    cannot lower fall back one by one as in compile()."""
    if torch.is_grad_enabled():
        return gm.forward
    if any(n.op == "call_function" and n.target is torch._C._set_grad_enabled and
           (not n.args or n.args[0] is not False) for n in gm.graph.nodes):
        # (a `with torch.enable_grad():` block of the forward: dynamo keeps its switches as
        # nodes, which compile() would run as no-ops: torch's result then requires grad)
        return gm.forward
    if writes_input(gm):
        # torch writes the caller's tensor (compile() computes on a copy of its input); running
        # the graph through compile() here also left dynamo's guards for the input's sizes with
        # no source (an IndexError in its guard building)
        warnings.warn("clconv.torch.backend: this graph writes its input in place, so it runs "
                      "in torch (which writes the caller's tensor)", FallbackWarning, stacklevel=2)
        return gm.forward
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        return gm.forward
    state = [i for i, (n, v) in enumerate(zip(placeholders, example_inputs))
             if isinstance(v, torch.Tensor) and _is_state(n, v)]
    # With dynamic=True dynamo passes a module's number attributes (BatchNorm's eps and
    # momentum) as 0-d tensors read by .item(): they are specialised by value, a compiled model
    # for each set of values met
    numbers = [i for i, (n, v) in enumerate(zip(placeholders, example_inputs))
               if i not in state and _is_number(n, v)]
    # and the sizes of the inputs as SymInt inputs (a U-Net's `F.interpolate(x,
    # size=skip.shape[2:])` becomes `torch.Size([s69, s69])`): each is read from its tensor as
    # `skip.size(2)`, as compile() reads sizes, and torch.Size(...) of them is their tuple
    sizes = {i: found for i, n in enumerate(placeholders)
             if i not in state and i not in numbers and isinstance(example_inputs[i], torch.SymInt)
             and (found := _size_of(n, placeholders)) is not None and found[0] not in state}
    inputs = [i for i in range(len(example_inputs))
              if i not in set(state) | set(numbers) | set(sizes)]

    def make(values: Sequence[Any]) -> CompiledModel | None:
        """The graph with `values`' parameters and buffers as its constants, compiled (None, with
        a FallbackWarning, when compile() cannot take it)."""
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        root = nn.Module()
        for k, i in enumerate(state):
            # (as parameters: compile()'s trace keeps what the graph computes from them, a
            # pruned weight's weight_orig * weight_mask, as nodes; two buffers were multiplied
            # once, at the trace, into a constant that their in-place changes did not reach)
            root.register_parameter(f"state{k}", nn.Parameter(values[i].detach(),
                                                              requires_grad=False))
        for i, node in enumerate(placeholders):
            if i in numbers:
                for user in node.users:  # every one an .item() (_is_number)
                    env[user] = values[i].item()
            elif i not in sizes:
                env[node] = (graph.get_attr(f"state{state.index(i)}") if i in state
                             else graph.placeholder(node.name))
        for i, (j, dim) in sizes.items():
            env[placeholders[i]] = graph.call_method("size", (env[placeholders[j]], dim))
        consts = _constants(gm.graph)

        def emit(n: fx.Node) -> Any:
            """n's value in the new graph (a constant tensor as an attribute of the root: a
            parameter, which fx's trace reads as a node, where it would read a buffer's value)."""
            if n not in env:
                value = consts.get(n)
                if isinstance(value, torch.Tensor):
                    name = f"const_{n.name}"
                    root.register_parameter(name, nn.Parameter(value, requires_grad=False))
                    env[n] = graph.get_attr(name)
                else:
                    env[n] = graph.node_copy(n, emit)
            return env[n]
        for node in gm.graph.nodes:
            if node in consts and all(u in consts for u in node.users):
                continue  # (computed into the constants its users are)
            if node.op == "call_function" and node.target is torch.Size and len(node.args) == 1:
                env[node] = tuple(fx.node.map_arg(node.args[0], emit))
            elif node.op != "placeholder":
                emit(node)
        for name, module in gm.named_children():
            root.add_module(name, module)
        _raise_to_modules(root, graph)
        lowered = fx.GraphModule(root, graph, "clconv_backend_graph").eval()
        try:
            return CompiledModel(lowered, tuple(values[i] for i in inputs), current_device())
        except Exception as err:  # noqa: BLE001 - the graph still runs, in torch
            warnings.warn(f"clconv.torch.backend: this graph runs in torch ({type(err).__name__}: "
                          f"{err})", FallbackWarning, stacklevel=3)
            return None

    first = make(example_inputs)
    if first is None:
        return gm.forward
    # Dynamo passes the parameters and buffers on every call and reuses the graph for another
    # model of the same code (a second instance) or after a new Parameter. A compiled model holds
    # the tensors it was made with (in-place changes it sees by their version counters); other
    # tensors get a compiled model of their own, the last MODELS_KEPT kept (weak references: a
    # model that is gone frees its entry).
    def values_of(args: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(args[i].item() for i in numbers)

    kept = [([weakref.ref(example_inputs[i]) for i in state], values_of(example_inputs), first)]

    def run(*args: Any) -> Any:
        if torch.is_grad_enabled():
            return gm.forward(*args)
        values = values_of(args) if numbers else ()
        for refs, known, cm in kept:
            if all(r() is args[i] for r, i in zip(refs, state)) and _same_numbers(known, values):
                break
        else:
            made = make(args)
            if made is None:
                return gm.forward(*args)
            cm = run.compiled_model = made  # type: ignore[attr-defined]
            kept.insert(0, ([weakref.ref(args[i]) for i in state], values, cm))
            del kept[MODELS_KEPT:]
        return cm(*(args[i] for i in inputs))
    run.compiled_model = first  # type: ignore[attr-defined]
    return run
