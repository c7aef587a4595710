"""A whole torch model on the OpenCL device: `clconv.torch.compile(model, example_input)`.

    cm = clconv.torch.compile(model.eval(), torch.randn(1, 3, 224, 224))
    y = cm(x)                      # torch tensors in and out; cm.fallbacks == [] when all lowered

How (docs/compile.md has the whole story):
1. **Trace** with `torch.fx.symbolic_trace`: its `call_module` nodes keep the nn.Module structure
   (a `Conv2d` node carries its module, hence weights and arguments), which makes the patterns below
   simple to match; the CNNs meant here have no data-dependent control flow, so torch.export's
   ATen-level graph (every op decomposed, many more ops to cover) is not needed. Shapes and dtypes
   of the example input are propagated through the graph (fx's ShapeProp) for the checks below.
2. **Fuse**: a convolution (or transposed convolution) followed by eval-mode BatchNorm gets the
   BatchNorm folded into its weight and bias (clconv.fold_batchnorm: host arithmetic, once, in
   float64); a following residual add (a tensor of the same shape) and activation go into the
   epilogue of the convolution, or of a Linear
   (`clconv.conv2d(..., residual=r, activation=spec)`).
3. **Lower** every other node to a clconv op (pooling, linear, batch_norm, activations, add/mul with
   channel broadcast, cat, flatten/view as a free reshape, mean over the spatial dims as adaptive
   average pooling, ConvNeXt's permute -> LayerNorm -> permute as a channel norm (cl/channel_norm.cl),
   Linear on a channels-last view as a 1x1 convolution, Dropout/Identity as nothing).
4. **Run** with activations as pyopencl arrays on the device: one upload per input, one download per
   output, each intermediate dropped after its last reader (its buffer goes back to the device's
   memory pool, which the next result reuses). Plans come from clconv's per-device plan cache, keyed
   by shape: another batch size makes new plans on first sight, builds no new program.

A node that cannot be lowered (no clconv op, an argument clconv refuses, or an op that fails on the
example input at compile time) runs in torch on the host (download its inputs, upload its result);
compile() warns once with the list (node, op, why), also in `cm.fallbacks`. The result stays right.

Inference only: the model must be in eval mode (BatchNorm's running statistics, no dropout), and no
autograd graph is recorded. Weights are read at compile time; compile again after changing them.
Training keeps `clconv.torch.convert`'s per-module autograd.
"""

from __future__ import annotations

import operator
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pyopencl.array as cla
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

import clconv

from .ops.activation import Activation, normalize_activation
from .ops.fold import fold_batchnorm
from .ops.plan import mark_constant
from .runtime.device import Device, current_device
from .runtime.memory import empty, pool
from .runtime.program import kernel, precision_defines
from .runtime.progress import Progress
from .runtime.transfer import to_device

__all__ = ["CompiledModel", "Fallback", "FallbackWarning", "backend", "compile", "warmup"]


class FallbackWarning(UserWarning):
    """compile() could not lower some nodes; they run in torch on the host (see cm.fallbacks)."""


@dataclass(frozen=True)
class Fallback:
    """A node that runs in torch on the host: its fx name, its op (module type or function) and
    why clconv does not run it."""

    node: str
    op: str
    why: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.why}"


class Unlowerable(Exception):
    """Raised by a lowering rule: the node stays on the host; the message says why."""


# ---------------------------------------------------------------------------------------------------
# Activations: torch's modules and functions -> clconv's activation specs (clconv.ops.activation).

def _act_module(m: nn.Module) -> Any:
    kind = _torch_type(m)
    if kind is nn.ReLU:
        return "relu"
    if kind is nn.ReLU6:
        return "relu6"
    if kind is nn.Hardtanh:
        return ("clamp", float(m.min_val), float(m.max_val))
    if kind is nn.SiLU:
        return "silu"
    if kind is nn.GELU:
        return ("gelu", m.approximate)
    if kind is nn.Sigmoid:
        return "sigmoid"
    if kind is nn.Tanh:
        return "tanh"
    if kind is nn.Hardswish:
        return "hardswish"
    if kind is nn.Hardsigmoid:
        return "hardsigmoid"
    if kind is nn.LeakyReLU:
        return ("leaky_relu", float(m.negative_slope))
    if kind is nn.ELU:
        return ("elu", float(m.alpha))
    return None


def _plain(name: str) -> Callable[..., Any]:
    def spec(input: Any, inplace: bool = False) -> Any:
        return name
    return spec


def _gelu(input: Any, approximate: str = "none") -> Any:
    return ("gelu", approximate)


def _leaky(input: Any, negative_slope: float = 0.01, inplace: bool = False) -> Any:
    return ("leaky_relu", negative_slope)


def _elu(input: Any, alpha: float = 1.0, inplace: bool = False) -> Any:
    return ("elu", alpha)


def _hardtanh(input: Any, min_val: float = -1.0, max_val: float = 1.0,
              inplace: bool = False) -> Any:
    return ("clamp", min_val, max_val)


def _clamp(input: Any, min: Any = None, max: Any = None) -> Any:
    return ("clamp", min, max)


def _unary(name: str) -> Callable[..., Any]:
    def spec(input: Any) -> Any:
        return name
    return spec


#: call_function targets that are activations -> a function of the node's arguments giving the spec.
_ACT_FUNCTIONS: dict[Any, Callable[..., Any]] = {
    F.relu: _plain("relu"), torch.relu: _unary("relu"), torch.relu_: _unary("relu"),
    F.relu6: _plain("relu6"), F.silu: _plain("silu"), F.gelu: _gelu,
    torch.sigmoid: _unary("sigmoid"), F.sigmoid: _unary("sigmoid"), torch.tanh: _unary("tanh"),
    F.tanh: _unary("tanh"), F.hardswish: _plain("hardswish"),
    F.hardsigmoid: _plain("hardsigmoid"), F.leaky_relu: _leaky, F.elu: _elu,
    F.hardtanh: _hardtanh, torch.clamp: _clamp, torch.clip: _clamp,
}
#: call_method names that are activations.
_ACT_METHODS: dict[str, Callable[..., Any]] = {
    "relu": _unary("relu"), "relu_": _unary("relu"), "sigmoid": _unary("sigmoid"),
    "sigmoid_": _unary("sigmoid"), "tanh": _unary("tanh"), "tanh_": _unary("tanh"),
    "clamp": _clamp, "clamp_": _clamp, "clip": _clamp,
}


def _activation_of(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[Activation, fx.Node] | None:
    """(the canonical activation, its input node) when `node` is an activation of one tensor."""
    spec = None
    if node.op == "call_module":
        spec = _act_module(modules[node.target])
        args, kwargs = node.args, node.kwargs
        if spec is None or len(args) != 1 or kwargs:
            return None
    elif node.op == "call_function" and node.target in _ACT_FUNCTIONS:
        args, kwargs = node.args, node.kwargs
        try:
            spec = _ACT_FUNCTIONS[node.target](*args, **kwargs)
        except TypeError:
            return None
    elif node.op == "call_method" and node.target in _ACT_METHODS:
        args, kwargs = node.args, node.kwargs
        try:
            spec = _ACT_METHODS[node.target](*args, **kwargs)
        except TypeError:
            return None
    else:
        return None
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, fx.Node) or any(isinstance(v, fx.Node) for v in
                                         (*args[1:], *kwargs.values())):
        return None
    if isinstance(spec, tuple) and any(isinstance(v, fx.Node) for v in spec):
        return None
    try:
        return normalize_activation(spec), x
    except ValueError:
        return None


def _apply_activation(x: cla.Array, act: Activation) -> cla.Array:
    """A standalone activation by clconv's elementwise ops (H2's clconv.relu, ...)."""
    kind = act.kind
    if kind in ("relu", "relu6", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid"):
        return _op(kind)(x)
    if kind == "gelu":
        return _op("gelu")(x, approximate="none")
    if kind == "gelu_tanh":
        return _op("gelu")(x, approximate="tanh")
    if kind == "leaky_relu":
        return _op("leaky_relu")(x, act.a)
    if kind == "elu":
        return _op("elu")(x, act.a)
    if kind == "clamp":
        lo = None if act.a == -np.inf else act.a
        hi = None if act.b == np.inf else act.b
        return _op("clamp")(x, lo, hi)
    raise Unlowerable(f"no clconv op for activation {act}")


def _spec(act: Activation) -> Any:
    """The user-level spec of an Activation ('relu', ('leaky_relu', 0.1), ...)."""
    if act.kind == "gelu_tanh":
        return ("gelu", "tanh")
    if act.kind in ("leaky_relu", "elu"):
        return (act.kind, act.a)
    if act.kind == "clamp":
        return ("clamp", None if act.a == -np.inf else act.a, None if act.b == np.inf else act.b)
    return act.kind


def _activation_op_name(act: Activation) -> str:
    return {"gelu_tanh": "gelu"}.get(act.kind, act.kind)


def _op(name: str) -> Callable[..., Any]:
    """clconv's public op `name`, or Unlowerable when this clconv has none (ops land over time)."""
    fn = getattr(clconv, name, None)
    if fn is None:
        raise Unlowerable(f"clconv.{name} does not exist in this clconv")
    return fn


# ---------------------------------------------------------------------------------------------------
# Module and function tables.

_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_TRANSPOSED = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ADDS = {operator.add, operator.iadd, torch.add}
_MULS = {operator.mul, operator.imul, torch.mul}
_SUBS = {operator.sub, operator.isub, torch.sub}
_NOOP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                 nn.AlphaDropout)
_POOL_MODULES = {nn.MaxPool1d: "max_pool1d", nn.MaxPool2d: "max_pool2d", nn.MaxPool3d: "max_pool3d",
                 nn.AvgPool1d: "avg_pool1d", nn.AvgPool2d: "avg_pool2d", nn.AvgPool3d: "avg_pool3d",
                 nn.AdaptiveAvgPool1d: "adaptive_avg_pool1d",
                 nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d",
                 nn.AdaptiveAvgPool3d: "adaptive_avg_pool3d",
                 nn.AdaptiveMaxPool1d: "adaptive_max_pool1d",
                 nn.AdaptiveMaxPool2d: "adaptive_max_pool2d",
                 nn.AdaptiveMaxPool3d: "adaptive_max_pool3d"}
#: torch.nn.functional functions clconv has under the same name and arguments.
_MIRRORED = {F.max_pool1d: "max_pool1d", F.max_pool2d: "max_pool2d", F.max_pool3d: "max_pool3d",
             F.avg_pool1d: "avg_pool1d", F.avg_pool2d: "avg_pool2d", F.avg_pool3d: "avg_pool3d",
             F.adaptive_avg_pool1d: "adaptive_avg_pool1d",
             F.adaptive_avg_pool2d: "adaptive_avg_pool2d",
             F.adaptive_avg_pool3d: "adaptive_avg_pool3d",
             F.adaptive_max_pool1d: "adaptive_max_pool1d",
             F.adaptive_max_pool2d: "adaptive_max_pool2d",
             F.adaptive_max_pool3d: "adaptive_max_pool3d"}


def _torch_type(m: nn.Module) -> type:
    """The class the lowering matches: a module of clconv.torch.convert's folded chains is matched
    as the class it had before folding (its weights and arguments are that class's)."""
    return getattr(type(m), "_clconv_base", type(m))


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with clconv.torch's modules (converted convolutions, folded chains) as
    leaves like torch.nn's: their forward runs clconv from Python, which fx cannot trace into."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m).__module__ == "clconv.torch" or super().is_leaf_module(
            m, module_qualified_name)


def _classes() -> tuple[dict[type, int], dict[type, int]]:
    """Conv and transposed-conv types, clconv.torch's subclasses (converted models) included."""
    from . import torch as ct

    convs = dict(_CONVS)
    convs.update({ct.Conv1d: 1, ct.Conv2d: 2, ct.Conv3d: 3})
    transposed = dict(_TRANSPOSED)
    transposed.update({ct.ConvTranspose1d: 1, ct.ConvTranspose2d: 2, ct.ConvTranspose3d: 3})
    return convs, transposed


# ---------------------------------------------------------------------------------------------------
# The compiled program.

@dataclass
class Step:
    """One lowered (or host) computation: reads `inputs` from the environment, produces the value
    of fx node `node`. `nodes` are the fx nodes it covers (a fused group has several)."""

    node: str
    nodes: tuple[str, ...]
    op: str
    inputs: tuple[str, ...]
    run: Callable[[dict[str, Any]], Any]
    host: bool = False
    frees: tuple[str, ...] = ()
    why: str = ""  # for host steps: why clconv does not run it


@dataclass
class RunStats:
    """What the last call did: uploads and downloads (host <-> device copies made by the runner,
    host fallbacks included), and the device memory its activations took at most."""

    uploads: int = 0
    downloads: int = 0
    peak_bytes: int = 0
    seconds: float = 0.0


@dataclass
class _Options:
    fuse_level: dict[str, int] = field(default_factory=dict)  # head node -> 0 all, 1 no add, 2 BN
    host: dict[str, str] = field(default_factory=dict)        # node -> why it stays on the host


class CompiledModel:
    """A traced, fused and lowered model; call it like the model (torch tensors in and out).

    Attributes: fallbacks (list of Fallback: the nodes that run in torch on the host), steps (the
    lowered program), device, graph_module (the fx trace), peak_bytes (device memory the
    activations of the last call took at most, from the device's memory pool, plus the column
    workspace), weight_bytes (uploaded weights), stats (RunStats of the last call)."""

    def __init__(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...],
                 dev: Device, progress: bool | None = None) -> None:
        if model.training:
            raise ValueError("clconv.torch.compile is for inference: call model.eval() first (for "
                             "training, clconv.torch.convert(model) keeps per-module autograd)")
        self.device = dev
        self.graph_module = fx.GraphModule(model, _Tracer().trace(model), type(model).__name__)
        with torch.no_grad():
            ShapeProp(self.graph_module).propagate(*example_inputs)
        self.modules = dict(self.graph_module.named_modules())
        self.nodes = list(self.graph_module.graph.nodes)
        self.placeholders = [n.name for n in self.nodes if n.op == "placeholder"]
        outputs = [n for n in self.nodes if n.op == "output"]
        self._output_arg = outputs[0].args[0]
        self.stats = RunStats()
        self._compiled = False  # True once the program is final (after the trial runs)
        self._constants: dict[Any, cla.Array] = {}
        self.weight_bytes = 0
        options = _Options()
        # Lower, then run the example: a node whose clconv op fails on it (an argument clconv
        # refuses, an op that does not exist yet) is lowered less ambitiously (unfused), or kept on
        # the host, and the program made again. Each round fixes one node, so this ends.
        shown = _CompileProgress(progress)
        for _ in range(4 * len(self.nodes) + 1):
            self.steps, self.layout = _Lowering(self, options).lower()
            failed = self._trial(example_inputs, shown)
            if failed is None:
                break
            step, err = failed
            why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
            level = options.fuse_level.get(step.nodes[0], 0)
            if len(step.nodes) > 1 and level < 2:
                options.fuse_level[step.nodes[0]] = level + 1
            else:
                options.host[step.nodes[0]] = why
        shown.close(f"{len(self.steps)} steps")
        self._compiled = True
        self.fallbacks = [Fallback(s.node, s.op, s.why) for s in self.steps if s.host]
        if self.fallbacks:
            warnings.warn("clconv.torch.compile: these nodes run in torch on the host (each costs "
                          "a download and an upload):\n  " +
                          "\n  ".join(str(f) for f in self.fallbacks), FallbackWarning,
                          stacklevel=3)

    # -- running ------------------------------------------------------------------------------

    def _trial(self, inputs: tuple[torch.Tensor, ...],
               shown: _CompileProgress | None = None) -> tuple[Step, Exception] | None:
        """Runs the program on the example (making every step's plans: validation, algorithm
        choice, kernel builds); (step, error) of the first lowered step that fails."""
        try:
            self._run(inputs, shown)
        except _StepError as err:
            return err.step, err.error
        return None

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """The model's outputs for `inputs` (torch tensors, as the model takes them)."""
        try:
            return self._run(inputs)
        except _StepError as err:  # the op's own error (e.g. a shape it refuses), as raised
            raise err.error from None

    @property
    def peak_bytes(self) -> int:
        return self.stats.peak_bytes

    def _run(self, inputs: tuple[Any, ...], shown: _CompileProgress | None = None) -> Any:
        if len(inputs) != len(self.placeholders):
            raise TypeError(f"the compiled model takes {len(self.placeholders)} input(s), got "
                            f"{len(inputs)}")
        dev = self.device
        stats = self.stats = RunStats()
        mem = pool(dev)
        start = time.perf_counter()
        env: dict[str, Any] = {}
        with dev:
            base = mem.active_bytes
            peak = 0
            for name, x in zip(self.placeholders, inputs):
                env[name] = self._upload(x) if isinstance(x, torch.Tensor) else x
            for i, step in enumerate(self.steps):
                if shown is not None:
                    shown.update(i, len(self.steps), step)
                try:
                    env[step.node] = step.run(env)
                except Exception as err:
                    if step.host:
                        raise
                    raise _StepError(step, err) from err
                peak = max(peak, mem.active_bytes - base)
                for name in step.frees:
                    del env[name]
            result = self._outputs(self._output_arg, env)
        workspace = dev.workspace.nbytes if getattr(dev, "workspace", None) is not None else 0
        stats.peak_bytes = peak + workspace
        stats.seconds = time.perf_counter() - start
        return result

    def _outputs(self, arg: Any, env: dict[str, Any]) -> Any:
        def value(n: fx.Node) -> Any:
            v = env[n.name]
            if isinstance(v, cla.Array):
                return self._download(v, self.layout.get(n.name))
            return v
        return fx.node.map_arg(arg, value)

    def _upload(self, x: torch.Tensor) -> cla.Array:
        host = x.detach().contiguous().numpy()
        out = empty(self.device, host.shape, host.dtype)
        if host.size:
            out.set(host)
        self.stats.uploads += 1
        return out

    def _download(self, a: cla.Array, perm: tuple[int, ...] | None = None) -> torch.Tensor:
        self.stats.downloads += 1
        t = torch.from_numpy(a.get()) if a.size else torch.empty(a.shape,
                                                                  dtype=_torch_dtype(a.dtype))
        return t.permute(*perm) if perm is not None else t

    def constant(self, key: Any, t: torch.Tensor) -> cla.Array:
        """`t` on the device, uploaded once (weights, folded weights, constants of the graph).
        Marked constant (never written again: the model owns it), so that plans keep what they
        derive from it, such as packed filters (clconv.ops.plan.mark_constant)."""
        found = self._constants.get(key)
        if found is None:
            host = np.ascontiguousarray(t.detach().cpu().numpy())
            found = mark_constant(cla.to_device(self.device.queue, host))
            self._constants[key] = found
            self.weight_bytes += found.nbytes
        return found

    def __repr__(self) -> str:
        lowered = sum(not s.host for s in self.steps)
        return (f"<clconv CompiledModel: {lowered} clconv steps, {len(self.fallbacks)} host "
                f"fallbacks, device {self.device.name!r}>")

    def summary(self) -> str:
        """One line per step: the node it produces, its op, host or device."""
        return "\n".join(f"{'host  ' if s.host else 'device'} {s.node:<24} {s.op}"
                         for s in self.steps)


class _CompileProgress:
    """compile()'s progress line (clconv.runtime.progress on stderr): the step whose plans are being
    made (algorithm choice, measured by algorithm='auto' on first sight of a layer shape, and
    kernel builds take the time). progress=None shows it only once compile() has run for
    `AFTER` seconds (small models compile silently), True from the start, False never."""

    AFTER = 2.0

    def __init__(self, progress: bool | None) -> None:
        self.mode = progress
        self.bar = Progress(1, "clconv.torch.compile", enabled=progress is True)

    def update(self, done: int, total: int, step: Step) -> None:
        bar = self.bar
        if self.mode is None and not bar.enabled:
            bar.enabled = time.perf_counter() - bar.start >= self.AFTER
        bar.total = max(float(total), 1.0)
        note = f"{step.node}: {step.op}"
        bar.update(done, note if len(note) <= 70 else note[:67] + "...")

    def close(self, note: str) -> None:
        self.bar.close(note)


class _StepError(Exception):
    def __init__(self, step: Step, error: Exception) -> None:
        super().__init__(str(error))
        self.step = step
        self.error = error


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def _meta(node: Any) -> Any:
    return node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None


def _shape(node: Any) -> tuple[int, ...] | None:
    m = _meta(node)
    return tuple(m.shape) if m is not None and hasattr(m, "shape") else None


def _is_tensor(node: Any) -> bool:
    return isinstance(node, fx.Node) and _shape(node) is not None


# ---------------------------------------------------------------------------------------------------
# Lowering: fx graph -> steps.

class _Lowering:
    def __init__(self, cm: CompiledModel, options: _Options) -> None:
        self.cm = cm
        self.options = options
        self.modules = cm.modules
        self.convs, self.transposed = _classes()
        self.layout: dict[str, tuple[int, ...] | None] = {}  # node -> logical permutation
        self.absorbed: set[str] = set()
        self.groups: dict[str, list[fx.Node]] = {}  # last node -> the fused group

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def _module_kind(self, node: fx.Node) -> str | None:
        m = self.module(node)
        if m is None:
            return None
        if _torch_type(m) in self.convs:
            return "conv"
        if _torch_type(m) in self.transposed:
            return "transposed"
        if type(m) is nn.Linear:
            return "linear"
        return None

    # -- fusion groups ------------------------------------------------------------------------

    def _sole_user(self, node: fx.Node) -> fx.Node | None:
        users = list(node.users)
        return users[0] if len(users) == 1 else None

    def _head_kind(self, node: fx.Node) -> str | None:
        kind = self._module_kind(node)
        if kind is None and self._binary_name(node) is not None:
            return "binary"
        return kind

    def _binary_name(self, node: fx.Node) -> str | None:
        """'add' / 'mul' when `node` is a two-operand add or mul (no alpha, no keywords)."""
        if node.kwargs or len(node.args) != 2:
            return None
        if node.op == "call_function" and node.target in _ADDS | _MULS:
            return "add" if node.target in _ADDS else "mul"
        if node.op == "call_method" and node.target in ("add", "add_", "mul", "mul_"):
            return node.target.rstrip("_")
        return None

    def _foldable_bn(self, node: fx.Node, prev: fx.Node, channels: int) -> bool:
        m = self.module(node)
        return (isinstance(m, _BATCHNORMS) and
                _torch_type(m) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
                and node.args == (prev,) and not node.kwargs and m.running_mean is not None
                and m.num_features == channels)

    def _residual_of(self, node: fx.Node, prev: fx.Node) -> fx.Node | None:
        """The other operand when `node` is `prev + other` (same shape, same layout)."""
        if not ((node.op == "call_function" and node.target in _ADDS) or
                (node.op == "call_method" and node.target in ("add", "add_"))):
            return None
        if len(node.args) != 2 or node.kwargs:
            return None
        a, b = node.args
        other = b if a is prev else a if b is prev else None
        if other is None or other is prev or not _is_tensor(other):
            return None
        if _shape(other) != _shape(prev) or _meta(other).dtype != _meta(prev).dtype:
            return None
        if other.op == "get_attr":
            return None
        return other

    def _find_groups(self) -> None:
        grouped: set[str] = set()
        for node in self.cm.nodes:
            kind = self._head_kind(node)
            if kind is None or node.name in self.options.host or node.name in grouped:
                continue
            level = self.options.fuse_level.get(node.name, 0)
            group = [node]
            cur = node
            nxt = self._sole_user(cur)
            if kind == "binary":
                # add/mul + activation: clconv.add(a, b, activation=...)
                if level < 2 and nxt is not None and nxt.name not in self.options.host:
                    act = _activation_of(nxt, self.modules)
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
                    act = _activation_of(nxt, self.modules)
                    if act is not None and act[1] is cur:
                        group.append(nxt)
            if len(group) > 1:
                self.groups[group[-1].name] = group
                self.absorbed.update(n.name for n in group[:-1])
                grouped.update(n.name for n in group)

    # -- lowering -----------------------------------------------------------------------------

    def lower(self) -> tuple[list[Step], dict[str, tuple[int, ...] | None]]:
        self._find_groups()
        steps: list[Step] = []
        for node in self.cm.nodes:
            if node.op in ("placeholder", "output") or node.name in self.absorbed:
                continue
            group = self.groups.get(node.name)
            try:
                if node.name in self.options.host:
                    raise Unlowerable(self.options.host[node.name])
                step = self._fused(group) if group else self._single(node)
            except Unlowerable as why:
                step = self._host(node, str(why))
            steps.append(step)
        # Constants no step reads (lowered ops took them as constants of their own) are dropped.
        read = {name for step in steps for name in step.inputs}
        fx.node.map_arg(self.cm._output_arg, lambda n: read.add(n.name))
        steps = [s for s in steps if s.op != "constant" or s.node in read]
        self._frees(steps)
        return steps, self.layout

    def _frees(self, steps: list[Step]) -> None:
        last: dict[str, int] = {}
        for i, step in enumerate(steps):
            for name in step.inputs:
                last[name] = i
        keep: set[str] = set()
        fx.node.map_arg(self.cm._output_arg, lambda n: keep.add(n.name))
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
            def value(n: fx.Node) -> Any:
                v = env[n.name]
                return cm._download(v, layouts[n.name]) if isinstance(v, cla.Array) else v
            a = fx.node.map_arg(args, value)
            k = fx.node.map_arg(kwargs, value)
            with torch.no_grad():
                if fn is not None:
                    out = fn(*a, **k)
                elif node.op == "call_method":
                    out = getattr(a[0], target)(*a[1:], **k)
                else:
                    raise RuntimeError(f"cannot run {node.op} node {node.name}")
            return fx.node.map_aggregate(
                out, lambda v: cm._upload(v) if isinstance(v, torch.Tensor) else v)

        self.layout[node.name] = None
        return Step(node.name, (node.name,), op, inputs, run, host=True, why=why)

    def _value(self, node: fx.Node, run: Callable[[dict[str, Any]], Any], op: str,
               inputs: tuple[str, ...], layout: tuple[int, ...] | None = None) -> Step:
        self.layout[node.name] = layout
        return Step(node.name, (node.name,), op, inputs, run)

    def _alias(self, node: fx.Node, src: fx.Node, op: str,
               layout: tuple[int, ...] | None = None) -> Step:
        name = src.name
        return self._value(node, lambda env: env[name], op, (name,), layout)

    def _single(self, node: fx.Node) -> Step:
        cm = self.cm
        tensor_inputs = [n for n in node.all_input_nodes if _is_tensor(n)]
        if node.op == "get_attr":
            t = _attr(self.cm.graph_module, node.target)
            if isinstance(t, torch.Tensor):
                # uploaded on first use (a constant that lowered ops take as such is never read)
                key = ("attr", node.target)
                return self._value(node, lambda env: cm.constant(key, t), "constant", ())
            return self._value(node, lambda env: t, "constant", ())
        if not _is_tensor(node) and not tensor_inputs and node.op != "call_module":
            return self._python(node)
        if not _is_tensor(node):
            return self._metadata(node)
        layouts = {self.layout.get(n.name) for n in tensor_inputs}
        if any(p is not None for p in layouts):
            return self._permuted(node)
        m = self.module(node)
        if m is not None:
            return self._module(node, m)
        if node.op == "call_function":
            return self._function(node)
        if node.op == "call_method":
            return self._method(node)
        raise Unlowerable(f"no lowering for {node.op}")

    def _python(self, node: fx.Node) -> Step:
        """A node on Python values only (sizes, shapes): evaluated as Python, no device work."""
        args, kwargs, target, op = node.args, node.kwargs, node.target, node.op

        def run(env: dict[str, Any]) -> Any:
            a = fx.node.map_arg(args, lambda n: env[n.name])
            k = fx.node.map_arg(kwargs, lambda n: env[n.name])
            if op == "call_method":
                return getattr(a[0], target)(*a[1:], **k)
            return target(*a, **k)
        return self._value(node, run, f"python {getattr(target, '__name__', target)}",
                           tuple(n.name for n in node.all_input_nodes))

    def _metadata(self, node: fx.Node) -> Step:
        """x.size(...), x.shape, x.dim(): read from the device array's shape."""
        if node.op == "call_method" and node.target in ("size", "dim") and len(node.args) >= 1:
            x = node.args[0].name
            rest = node.args[1:]
            if self.layout.get(x) is not None:
                raise Unlowerable("size of a permuted view")
            if node.target == "dim":
                return self._value(node, lambda env: len(env[x].shape), "dim", (x,))
            if rest:
                d = rest[0]
                return self._value(node, lambda env: int(env[x].shape[d]), "size", (x,))
            return self._value(node, lambda env: torch.Size(env[x].shape), "size", (x,))
        if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
            x = node.args[0].name
            if self.layout.get(x) is not None:
                raise Unlowerable("shape of a permuted view")
            return self._value(node, lambda env: torch.Size(env[x].shape), "shape", (x,))
        raise Unlowerable(f"non-tensor {node.op} {node.target}")

    # -- modules ------------------------------------------------------------------------------

    def _module(self, node: fx.Node, m: nn.Module) -> Step:
        kind = _torch_type(m)
        if isinstance(m, _NOOP_MODULES) and kind in _NOOP_MODULES:
            return self._alias(node, node.args[0], kind.__name__)
        if kind in self.convs or kind in self.transposed or kind is nn.Linear:
            return self._fused([node])
        if kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
            return self._batch_norm(node, m)
        act = _activation_of(node, self.modules)
        if act is not None:
            return self._activation(node, act[0], act[1])
        if kind in _POOL_MODULES:
            return self._pool(node, m)
        if kind is nn.Flatten:
            return self._flatten(node, node.args[0], m.start_dim, m.end_dim)
        if kind is nn.LayerNorm and len(_shape(node.args[0]) or ()) == 2:
            # over the features of (N, C) (ConvNeXt's head): the channel norm with no spatial dims
            return self._channel_norm(node, node.args[0], m.normalized_shape, m.weight, m.bias,
                                      m.eps, None)
        if kind is nn.LayerNorm:
            raise Unlowerable("LayerNorm over the last dims of a channels-first tensor (clconv "
                              "lowers LayerNorm over C of a permuted channels-last view)")
        raise Unlowerable(f"no clconv lowering for {kind.__name__}")

    def _batch_norm(self, node: fx.Node, m: nn.Module) -> Step:
        if m.running_mean is None:
            raise Unlowerable("BatchNorm without running statistics uses batch statistics")
        if len(node.args) != 1 or node.kwargs:
            raise Unlowerable("unexpected BatchNorm arguments")
        fn = _op("batch_norm")
        cm = self.cm
        rm = cm.constant((node.target, "running_mean"), m.running_mean)
        rv = cm.constant((node.target, "running_var"), m.running_var)
        w = cm.constant((node.target, "weight"), m.weight) if m.weight is not None else None
        b = cm.constant((node.target, "bias"), m.bias) if m.bias is not None else None
        eps = float(m.eps)
        x = node.args[0].name
        return self._value(node, lambda env: fn(env[x], rm, rv, w, b, eps=eps),
                           "clconv.batch_norm", (x,))

    def _const_arg(self, v: Any, what: str) -> Any:
        """A functional op's weight-like argument as a tensor (get_attr) or None; Unlowerable
        when the graph computes it."""
        if isinstance(v, fx.Node):
            if v.op != "get_attr":
                raise Unlowerable(f"{what} computed in the graph")
            return _attr(self.cm.graph_module, v.target)
        return v

    def _pad(self, node: fx.Node) -> Step:
        """F.pad whose padding is all zeros (a U-Net's size matching of equal sizes): nothing.
        Padding found non-zero on the example keeps the node on the host (reported); found
        non-zero only on a later call, it is computed by torch that time, with a warning."""
        x, pad, mode, value = _bind(node, lambda input, pad, mode="constant", value=None:
                                    (input, pad, mode, value))
        if not isinstance(pad, (list, tuple)):
            raise Unlowerable("padding computed in the graph")
        xn, cm = x.name, self.cm
        inputs = (xn, *(p.name for p in pad if isinstance(p, fx.Node)))
        warned: list[bool] = []

        def run(env: dict[str, Any]) -> Any:
            amounts = [int(env[p.name]) if isinstance(p, fx.Node) else int(p) for p in pad]
            if not any(amounts):
                return env[xn]
            if not cm._compiled:
                raise Unlowerable(f"non-zero padding {amounts} (clconv has no pad op)")
            if not warned:
                warned.append(True)
                warnings.warn(f"clconv.torch.compile: {node.name} (F.pad) pads {amounts} on this "
                              f"call; it runs in torch on the host", FallbackWarning,
                              stacklevel=4)
            y = F.pad(cm._download(env[xn]), amounts, mode=mode, value=value)
            return cm._upload(y)
        return self._value(node, run, "pad (all zeros)", inputs)

    def _functional_batch_norm(self, node: fx.Node) -> Step:
        """F.batch_norm(x, running_mean, running_var, weight, bias, training=False, ...) with
        module buffers (e.g. timm's BatchNormAct2d): clconv.batch_norm with constants."""
        x, rm, rv, w, b, training, eps = _bind(
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
        fn = _op("batch_norm")
        cm = self.cm
        key = ("F.batch_norm", node.name)
        rm, rv = cm.constant(key + ("mean",), rm), cm.constant(key + ("var",), rv)
        w = cm.constant(key + ("w",), w) if w is not None else None
        b = cm.constant(key + ("b",), b) if b is not None else None
        xn, eps = x.name, float(eps)
        return self._value(node, lambda env: fn(env[xn], rm, rv, w, b, eps=eps),
                           "clconv.batch_norm", (xn,))

    def _functional_layer(self, node: fx.Node) -> Step:
        """F.conv1d/2d/3d and F.linear whose weight and bias are parameters (get_attr)."""
        t, cm = node.target, self.cm
        if t is F.linear:
            x, w, b = _bind(node, lambda input, weight, bias=None: (input, weight, bias))
            rest: tuple[Any, ...] = ()
            fn = _op("linear")
        else:
            x, w, b, *rest = _bind(node, lambda input, weight, bias=None, stride=1, padding=0,
                                   dilation=1, groups=1: (input, weight, bias, stride, padding,
                                                          dilation, groups))
            fn = _op(t.__name__)
        if any(isinstance(v, fx.Node) for v in rest):
            raise Unlowerable("arguments computed in the graph")
        w, b = self._const_arg(w, "weight"), self._const_arg(b, "bias")
        key = ("F", node.name)
        wd = cm.constant(key + ("w",), w)
        bd = cm.constant(key + ("b",), b) if b is not None else None
        xn = x.name
        return self._value(node, lambda env: fn(env[xn], wd, bd, *rest),
                           f"clconv.{fn.__name__}", (xn,))

    def _activation(self, node: fx.Node, act: Activation, src: fx.Node,
                    layout: tuple[int, ...] | None = None) -> Step:
        _op(_activation_op_name(act))  # Unlowerable now when clconv lacks it
        x = src.name
        return self._value(node, lambda env: _apply_activation(env[x], act),
                           f"clconv.{_activation_op_name(act)}", (x,), layout)

    def _pool(self, node: fx.Node, m: nn.Module) -> Step:
        name = _POOL_MODULES[type(m)]
        fn = _op(name)
        if getattr(m, "return_indices", False):
            raise Unlowerable("return_indices=True")
        if name.startswith("adaptive"):
            kwargs: dict[str, Any] = {"output_size": m.output_size}
        elif name.startswith("max"):
            kwargs = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                      "dilation": m.dilation, "ceil_mode": m.ceil_mode}
        else:
            kwargs = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding,
                      "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad}
            if getattr(m, "divisor_override", None) is not None:
                kwargs["divisor_override"] = m.divisor_override
        x = node.args[0].name
        return self._value(node, lambda env: fn(env[x], **kwargs), f"clconv.{name}", (x,))

    def _flatten(self, node: fx.Node, src: Any, start: int, end: int) -> Step:
        shape = _shape(src)
        if shape is None:
            raise Unlowerable("flatten of a non-tensor")
        nd = len(shape)
        s, e = start % nd, end % nd
        x = src.name

        def run(env: dict[str, Any]) -> Any:
            a = env[x]
            sh = a.shape
            return _reshape(a, (*sh[:s], -1, *sh[e + 1:]))
        return self._value(node, run, "reshape", (x,))

    # -- functions and methods ----------------------------------------------------------------

    def _function(self, node: fx.Node) -> Step:
        t = node.target
        act = _activation_of(node, self.modules)
        if act is not None:
            return self._activation(node, act[0], act[1])
        if t in _ADDS or t in _MULS or t in _SUBS:
            if t in (torch.add, torch.sub) and ("alpha" in node.kwargs or len(node.args) > 2):
                raise Unlowerable(f"torch.{t.__name__} with alpha")
            name = "add" if t in _ADDS else "mul" if t in _MULS else "sub"
            return self._binary(node, name, *node.args[:2])
        if t is torch.flatten:
            a = _bind(node, lambda input, start_dim=0, end_dim=-1: (input, start_dim, end_dim))
            return self._flatten(node, *a)
        if t in (torch.cat, torch.concat):
            a = _bind(node, lambda tensors, dim=0: (tensors, dim))
            return self._cat(node, *a)
        if t in _MIRRORED:
            return self._mirrored(node, _MIRRORED[t])
        if t in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout):
            a = _bind(node, lambda input, p=0.5, training=True, inplace=False: (input, training))
            if a[1] is False:
                return self._alias(node, a[0], "dropout (eval)")
            raise Unlowerable("dropout in training mode")
        if t is torch.mean:
            return self._mean(node, *_bind(node, _mean_args))
        if t is F.batch_norm:
            return self._functional_batch_norm(node)
        if t is F.pad:
            return self._pad(node)
        if t in (F.conv1d, F.conv2d, F.conv3d, F.linear):
            return self._functional_layer(node)
        if getattr(t, "__name__", "") == "stochastic_depth":
            # torchvision.ops.stochastic_depth (fx-wrapped): the identity when not training
            a = _bind(node, lambda input, p, mode, training=True: (input, training))
            if a[1] is False:
                return self._alias(node, a[0], "stochastic_depth (eval)")
            raise Unlowerable("stochastic_depth in training mode")
        if t is operator.getitem:
            return self._getitem(node)
        if t is torch.reshape:
            return self._reshape(node, node.args[0], node.args[1:])
        if t is torch.permute:
            return self._permute(node)
        if t in (torch.squeeze, torch.unsqueeze):
            return self._squeeze(node, t.__name__)
        if t is F.layer_norm:
            raise Unlowerable("layer_norm over the last dims of a channels-first tensor")
        raise Unlowerable(f"no clconv lowering for {getattr(t, '__module__', '')}."
                          f"{getattr(t, '__name__', t)}")

    def _method(self, node: fx.Node) -> Step:
        t = node.target
        act = _activation_of(node, self.modules)
        if act is not None:
            return self._activation(node, act[0], act[1])
        if t in ("add", "add_", "mul", "mul_", "sub", "sub_"):
            if len(node.args) != 2 or node.kwargs:
                raise Unlowerable(f"Tensor.{t} with alpha or keywords")
            return self._binary(node, t.rstrip("_"), *node.args)
        if t in ("view", "reshape"):
            return self._reshape(node, node.args[0], node.args[1:])
        if t == "flatten":
            a = _bind(node, lambda self, start_dim=0, end_dim=-1: (self, start_dim, end_dim))
            return self._flatten(node, *a)
        if t == "mean":
            return self._mean(node, *_bind(node, _mean_args))
        if t in ("squeeze", "unsqueeze"):
            return self._squeeze(node, t)
        if t in ("expand_as", "expand"):
            # x.expand_as(y) feeding only add/mul: their broadcasting expands it, no copy.
            if all(self._binary_name(u) is not None for u in node.users):
                return self._alias(node, node.args[0], f"{t} (broadcast by its users)")
            raise Unlowerable(f"Tensor.{t} feeding other ops than add/mul")
        if t in ("contiguous",):
            return self._alias(node, node.args[0], "contiguous")
        if t == "permute":
            return self._permute(node)
        raise Unlowerable(f"no clconv lowering for Tensor.{t}")

    def _binary(self, node: fx.Node, name: str, a: Any, b: Any,
                act: Activation | None = None) -> Step:
        """clconv.add / clconv.mul (numpy broadcasting, as torch's), optionally with a fused
        activation. Constants (get_attr tensors, Python numbers) are uploaded once."""
        # x - c (a constant) is x + (-c): the same IEEE result; tensor - tensor has no clconv op.
        negate = name == "sub"
        if negate and isinstance(b, fx.Node) and b.op != "get_attr":
            raise Unlowerable("subtraction of a tensor computed in the graph")
        fn = _op("add" if negate else name)
        cm = self.cm
        out = _shape(node)
        meta = _meta(node)
        layouts = [self.layout.get(v.name) for v in (a, b) if isinstance(v, fx.Node) and
                   v.op != "get_attr"]
        layout = next((p for p in layouts if p is not None), None)
        operands: list[tuple[str, Any]] = []
        for i, v in enumerate((a, b)):
            if isinstance(v, fx.Node) and v.op == "get_attr":
                v = _attr(cm.graph_module, v.target)
            if isinstance(v, fx.Node):
                if not _is_tensor(v):
                    raise Unlowerable(f"{name} with an operand computed as a Python value")
                if self.layout.get(v.name) != layout:
                    raise Unlowerable(f"{name} of tensors in different layouts")
                if layout is not None and _shape(v) != out:
                    raise Unlowerable(f"{name} broadcasting a channels-last view")
                operands.append(("node", v.name))
                continue
            if isinstance(v, bool) or not isinstance(v, (torch.Tensor, int, float)):
                raise Unlowerable(f"{name} with an operand of type {type(v).__name__}")
            t = torch.as_tensor(v, dtype=meta.dtype)
            if negate:
                t = -t
            if t.numel() == 1:
                t = t.reshape(1)
            elif layout is not None:
                # On a channels-last view only a per-channel constant (a layer scale) is lowered:
                # it becomes (1, C, 1, ...) against the stored channels-first data.
                c = _channel_vector(t, out, layout)
                if c is None:
                    raise Unlowerable(f"{name} broadcasting a constant of shape "
                                      f"{tuple(t.shape)} against a channels-last view")
                t = c.reshape(1, -1, *(1,) * (len(out) - 2))
            operands.append(("const", cm.constant(("const", node.name, i), t)))
        spec = _spec(act) if act is not None else None
        (ka, va), (kb, vb) = operands
        inputs = tuple(v for k, v in operands if k == "node")

        def run(env: dict[str, Any]) -> Any:
            x = env[va] if ka == "node" else va
            y = env[vb] if kb == "node" else vb
            return fn(x, y, activation=spec) if spec is not None else fn(x, y)
        op = f"clconv.{name}" + (f" + {act}" if act is not None else "")
        return self._value(node, run, op, inputs, layout)

    def _cat(self, node: fx.Node, tensors: Any, dim: int) -> Step:
        fn = _op("cat")
        if not isinstance(tensors, (list, tuple)) or not all(_is_tensor(t) for t in tensors):
            raise Unlowerable("cat of non-tensors")
        nd = len(_shape(tensors[0]))
        d = dim % nd
        names = tuple(t.name for t in tensors)
        return self._value(node, lambda env: fn([env[n] for n in names], dim=d), "clconv.cat",
                           names)

    def _mirrored(self, node: fx.Node, name: str) -> Step:
        fn = _op(name)
        x = node.args[0] if node.args else node.kwargs.get("input")
        if not isinstance(x, fx.Node):
            raise Unlowerable("unexpected arguments")
        args, kwargs = node.args[1:], {k: v for k, v in node.kwargs.items() if k != "input"}
        if any(isinstance(v, fx.Node) for v in (*args, *kwargs.values())):
            raise Unlowerable("arguments computed in the graph")
        # fx records torch's dispatch flag return_indices=False; clconv's pools return values only
        if kwargs.pop("return_indices", False) or (name.startswith("max") and len(args) >= 6
                                                    and args[5]):
            raise Unlowerable("return_indices=True")
        xn = x.name
        return self._value(node, lambda env: fn(env[xn], *args, **kwargs), f"clconv.{name}",
                           (xn,))

    def _mean(self, node: fx.Node, x: Any, dim: Any, keepdim: bool) -> Step:
        shape = _shape(x)
        if shape is None or dim is None:
            raise Unlowerable("mean over every dim")
        nd = len(shape)
        dims = sorted({d % nd for d in ((dim,) if isinstance(dim, int) else dim)})
        if dims != list(range(2, nd)) or nd - 2 not in (1, 2, 3):
            raise Unlowerable(f"mean over dims {dim} (clconv lowers the mean over every spatial dim)")
        name = f"adaptive_avg_pool{nd - 2}d"
        fn = _op(name)
        xn = x.name

        def run(env: dict[str, Any]) -> Any:
            y = fn(env[xn], 1)
            return y if keepdim else _reshape(y, y.shape[:2])
        return self._value(node, run, f"clconv.{name}", (xn,))

    def _reshape(self, node: fx.Node, x: Any, shape_args: Any) -> Step:
        if len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list, fx.Node)):
            shape_args = shape_args[0]
        parts = shape_args if isinstance(shape_args, (tuple, list)) else (shape_args,)
        xn = x.name
        inputs = (xn, *(p.name for p in parts if isinstance(p, fx.Node)))

        def run(env: dict[str, Any]) -> Any:
            sh = [env[p.name] if isinstance(p, fx.Node) else p for p in parts]
            if len(sh) == 1 and isinstance(sh[0], (tuple, list, torch.Size)):
                sh = list(sh[0])
            return _reshape(env[xn], tuple(int(d) for d in sh))
        return self._value(node, run, "reshape", inputs)

    def _squeeze(self, node: fx.Node, name: str) -> Step:
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
            return _reshape(a, tuple(sh))
        return self._value(node, run, name, (xn,))

    def _getitem(self, node: fx.Node) -> Step:
        x, index = node.args
        if not _is_tensor(x):
            return self._python(node)  # an item of a tuple (of sizes, or of a host result)
        items = index if isinstance(index, tuple) else (index,)
        if sum(i is Ellipsis for i in items) == 1:
            k = items.index(Ellipsis)
            fill = len(_shape(x)) - (len(items) - 1 - sum(i is None for i in items))
            items = items[:k] + (slice(None),) * fill + items[k + 1:]
            index = items
        for i in items:
            if isinstance(i, slice):
                if not all(v is None or type(v) is int for v in (i.start, i.stop, i.step)):
                    raise Unlowerable("slices computed in the graph")
                if i.step not in (None, 1):
                    raise Unlowerable("slices with a step")
            elif type(i) is not int:
                raise Unlowerable("indexing other than integers and basic slices")
        xn, dev = x.name, self.cm.device
        # A strided view of the device array, gathered to a contiguous one on the device.
        return self._value(node, lambda env: to_device(env[xn][index], dev, "input",
                                                       env[xn].dtype), "slice", (xn,))

    # -- channels-last views (ConvNeXt's permute -> LayerNorm/Linear -> permute) ----------------

    def _permute(self, node: fx.Node) -> Step:
        x = node.args[0]
        perm = node.args[1:]
        if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
            perm = perm[0]
        perm = tuple(perm)
        nd = len(_shape(x) or ())
        to_last = (0, *range(2, nd), 1)
        if self.layout.get(x.name) is None and perm == to_last and nd >= 3:
            # The data stays channels-first; the value is marked as viewed channels-last.
            return self._alias(node, x, "permute (view)", layout=to_last)
        raise Unlowerable(f"permute {perm}")

    def _permuted(self, node: fx.Node) -> Step:
        """A node reading channels-last views (logical (N, *spatial, C), stored (N, C, *spatial))."""
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
                return self._alias(node, node.args[0], "permute (view)")
            raise Unlowerable(f"permute {tuple(perm)} of a channels-last view")
        if node.op == "call_function" and node.target is torch.permute:
            if tuple(node.args[1]) == back:
                return self._alias(node, node.args[0], "permute (view)")
            raise Unlowerable("permute of a channels-last view")
        if m is not None and type(m) is nn.LayerNorm:
            return self._channel_norm(node, node.args[0], m.normalized_shape, m.weight, m.bias,
                                      m.eps, layout)
        if node.op == "call_function" and node.target is F.layer_norm:
            a = _bind(node, lambda input, normalized_shape, weight=None, bias=None, eps=1e-5:
                      (input, normalized_shape, weight, bias, eps))
            w, b = (_attr(self.cm.graph_module, v.target) if isinstance(v, fx.Node) and
                    v.op == "get_attr" else v for v in a[2:4])
            if any(isinstance(v, fx.Node) for v in (w, b)):
                raise Unlowerable("layer_norm weights computed in the graph")
            return self._channel_norm(node, a[0], a[1], w, b, a[4], layout)
        if m is not None and type(m) is nn.Linear:
            return self._fused([node])
        if m is not None and type(m) in _NOOP_MODULES:
            return self._alias(node, node.args[0], type(m).__name__, layout)
        act = _activation_of(node, self.modules)
        if act is not None:
            return self._activation(node, act[0], act[1], layout)
        if (node.op == "call_function" and node.target in _ADDS | _MULS) or \
                (node.op == "call_method" and node.target in ("add", "add_", "mul", "mul_")):
            name = "add" if node.target in _ADDS or node.target in ("add", "add_") else "mul"
            return self._binary(node, name, *node.args[:2])
        if node.op == "call_method" and node.target == "contiguous":
            return self._alias(node, node.args[0], "contiguous", layout)
        raise Unlowerable(f"{node.op} {getattr(node.target, '__name__', node.target)} on a "
                          f"permuted (channels-last) view")

    def _channel_norm(self, node: fx.Node, x: fx.Node, normalized_shape: Any, weight: Any,
                      bias: Any, eps: float, layout: tuple[int, ...]) -> Step:
        shape = _shape(x)
        ns = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if ns != (shape[-1],):
            raise Unlowerable(f"layer_norm over {ns} of a channels-last view")
        if (weight is None) != (bias is None):
            raise Unlowerable("layer_norm with only one of weight and bias")
        cm = self.cm
        w = cm.constant(("ln", id(weight)), weight) if weight is not None else None
        b = cm.constant(("ln", id(bias)), bias) if bias is not None else None
        xn = x.name
        return self._value(node, lambda env: channel_norm(env[xn], w, b, float(eps)),
                           "channel_norm", (xn,), layout)

    # -- convolutions and Linear, with their epilogues ---------------------------------------

    def _fused(self, group: list[fx.Node]) -> Step:
        head = group[0]
        if self._module_kind(head) is None:  # add/mul + activation
            act = _activation_of(group[1], self.modules)
            step = self._binary(head, self._binary_name(head), *head.args, act=act[0])
            self.layout[group[1].name] = self.layout[head.name]
            return Step(group[1].name, (head.name, group[1].name), step.op, step.inputs, step.run)
        m = self.modules[head.target]
        cm = self.cm
        if len(head.args) != 1 or head.kwargs:
            raise Unlowerable("extra arguments (output_size=...)")
        x = head.args[0]
        layout = self.layout.get(x.name)
        weight = m.weight.detach()
        bias = m.bias.detach() if m.bias is not None else None
        ops = [type(m).__name__]
        residual: fx.Node | None = None
        act: Activation | None = None
        kind = self._module_kind(head)
        for node in group[1:]:
            mod = self.module(node)
            if mod is not None and isinstance(mod, _BATCHNORMS):
                weight, bias = _fold(weight, bias, mod, transposed=kind == "transposed",
                                     groups=getattr(m, "groups", 1))
                ops.append("BN folded")
            elif residual is None and act is None and self._residual_of(node, group[
                    group.index(node) - 1]) is not None:
                residual = self._residual_of(node, group[group.index(node) - 1])
                ops.append("+ residual")
            else:
                act = _activation_of(node, self.modules)[0]
                ops.append(str(act))
        key = (head.target, tuple(n.name for n in group))
        b = cm.constant(key + ("b",), bias) if bias is not None else None
        extra: dict[str, Any] = {}
        if act is not None:
            extra["activation"] = _spec(act)
        r = residual.name if residual is not None else None
        if r is not None and self.layout.get(r) != layout:
            raise Unlowerable("residual in another layout")
        xn = x.name
        inputs = (xn,) if r is None else (xn, r)
        if kind == "linear" and layout is not None:
            # Linear over the channels of a channels-last view: a 1x1 convolution of the stored
            # channels-first data.
            nd = len(layout) - 2
            fn = _op(f"conv{nd}d")
            wk = cm.constant(key + ("w1x1",), weight.reshape(*weight.shape, *(1,) * nd))

            def run(env: dict[str, Any]) -> Any:
                kw = dict(extra)
                if r is not None:
                    kw["residual"] = env[r]
                return fn(env[xn], wk, b, **kw)
            op = f"clconv.conv{nd}d (Linear as 1x1) [{', '.join(ops)}]"
        elif kind == "linear":
            fn = _op("linear")
            w = cm.constant(key + ("w",), weight)

            def run(env: dict[str, Any]) -> Any:
                kw = dict(extra)
                if r is not None:
                    kw["residual"] = env[r]
                return fn(env[xn], w, b, **kw)
            op = f"clconv.linear [{', '.join(ops)}]"
        else:
            if layout is not None:
                raise Unlowerable("convolution of a permuted view")
            nd = (self.convs if kind == "conv" else self.transposed)[_torch_type(m)]
            w = cm.constant(key + ("w",), weight)
            if kind == "conv":
                fn = _op(f"conv{nd}d")
                args: tuple[Any, ...] = (m.stride, m.padding, m.dilation, m.groups)
                extra["padding_mode"] = m.padding_mode
            else:
                if m.padding_mode != "zeros":
                    raise Unlowerable("transposed convolution with padding_mode != 'zeros'")
                fn = _op(f"conv_transpose{nd}d")
                args = (m.stride, m.padding, m.output_padding, m.groups, m.dilation)

            def run(env: dict[str, Any]) -> Any:
                kw = dict(extra)
                if r is not None:
                    kw["residual"] = env[r]
                return fn(env[xn], w, b, *args, **kw)
            op = f"clconv.{fn.__name__} [{', '.join(ops)}]"
        last = group[-1]
        self.layout[last.name] = layout
        return Step(last.name, tuple(n.name for n in group), op, inputs, run)


def _mean_args(input: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Any:
    if dtype is not None:
        raise Unlowerable("mean with dtype=")
    return input, dim, keepdim


def _bind(node: fx.Node, signature: Callable[..., Any]) -> Any:
    try:
        return signature(*node.args, **node.kwargs)
    except TypeError as err:
        raise Unlowerable(f"unexpected arguments ({err})") from None


def _attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _channel_vector(t: torch.Tensor, out: tuple[int, ...],
                    layout: tuple[int, ...] | None) -> torch.Tensor | None:
    """`t` as a (C,) vector when, broadcast against a result of logical shape `out`, it varies only
    along the channels (dim 1, or the last dim of a channels-last view); else None."""
    c_dim = len(out) - 1 if layout is not None else 1
    c = out[c_dim]
    shape = (1,) * (len(out) - t.dim()) + tuple(t.shape)
    if len(shape) != len(out):
        return None
    if all(s == 1 for i, s in enumerate(shape) if i != c_dim) and shape[c_dim] in (1, c):
        return t.reshape(-1).expand(c).contiguous() if shape[c_dim] == 1 else t.reshape(c)
    return None


def _fold(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.Module, transposed: bool,
          groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm `bn` folded into the convolution before it: clconv.fold_batchnorm
    (float64 on the host, in the weight's dtype) on the modules' tensors."""
    def host(t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().numpy()

    w, b = fold_batchnorm(host(weight), host(bias), host(bn.running_mean), host(bn.running_var),
                          host(bn.weight), host(bn.bias), float(bn.eps), transposed=transposed,
                          groups=groups if transposed else 1)
    return torch.from_numpy(w), torch.from_numpy(b)


def _reshape(a: cla.Array, shape: tuple[int, ...]) -> cla.Array:
    """A reshaped view of a contiguous device array (no device work)."""
    if not a.flags.c_contiguous:
        raise ValueError("reshape of a non-contiguous device array")
    return a.reshape(*shape)


# ---------------------------------------------------------------------------------------------------
# The channel norm (cl/channel_norm.cl).

def channel_norm(x: cla.Array, weight: cla.Array | None, bias: cla.Array | None,
                 eps: float) -> cla.Array:
    """LayerNorm over dim 1 of a contiguous (N, C, *spatial) device array (ConvNeXt's channels-first
    LayerNorm), on the current device; weight and bias (C,) or both None."""
    dev = current_device()
    x = to_device(x, dev, "input", x.dtype)
    if x.offset:  # the kernel indexes from the buffer's start: a view into a larger buffer is copied
        x = x.copy()
    n, c = x.shape[0], x.shape[1]
    spatial = int(np.prod(x.shape[2:], dtype=np.int64))
    out = empty(dev, x.shape, x.dtype)
    positions = n * spatial
    if positions == 0:
        return out
    defines = precision_defines(x.dtype)
    defines["HAS_AFFINE"] = int(weight is not None)
    k = kernel(dev, "channel_norm.cl", "channel_norm", defines)
    dummy = x.base_data
    with dev.lock:
        k(dev.queue, (positions,), None, x.base_data, out.data,
          weight.data if weight is not None else dummy, bias.data if bias is not None else dummy,
          np.int64(c), np.int64(spatial), np.int64(positions), np.float32(eps))
    return out


# ---------------------------------------------------------------------------------------------------
# Entry points.

def compile(model: nn.Module, example_input: Any, *, device: Device | None = None,
            progress: bool | None = None) -> CompiledModel:
    """`model` (eval mode) traced, fused and lowered to clconv ops on `device` (default: the current
    clconv device); returns a CompiledModel called like the model. `example_input` is a tensor or a
    tuple of tensors (its shapes guide the lowering and it is run once, building the plans).
    progress: a progress line on stderr naming the step whose plans are being made (None: only
    once compiling has taken 2 s; True: always; False: never)."""
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    return CompiledModel(model, inputs, device or current_device(), progress)


def warmup(model: nn.Module, example_input: Any, *, device: Device | None = None,
           progress: bool | None = None) -> CompiledModel:
    """compile() and one more call on the example (for services: every plan made and every kernel
    built before the first request)."""
    cm = compile(model, example_input, device=device, progress=progress)
    cm(*(example_input if isinstance(example_input, tuple) else (example_input,)))
    return cm



# ---------------------------------------------------------------------------------------------------
# A torch.compile backend on top of compile().

def _is_state(node: fx.Node, value: Any) -> bool:
    """Whether a placeholder of a dynamo graph is a parameter or buffer of the model (dynamo lifts
    them to graph inputs; its source names them), not a real input."""
    if isinstance(value, nn.Parameter):
        return True
    source = getattr(node.meta.get("grapharg"), "source", None)
    while source is not None:
        if "ParamBufferSource" in type(source).__name__:
            return True
        source = getattr(source, "base", None)
    return False


_FUNCTIONAL_CONVS = {torch.conv1d: nn.Conv1d, torch.conv2d: nn.Conv2d, torch.conv3d: nn.Conv3d}
_FUNCTIONAL_TRANSPOSED = {torch.conv_transpose1d: nn.ConvTranspose1d,
                          torch.conv_transpose2d: nn.ConvTranspose2d,
                          torch.conv_transpose3d: nn.ConvTranspose3d}


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
                    a = _bind(node, lambda input, weight, bias=None, stride=1, padding=0,
                              output_padding=0, groups=1, dilation=1:
                              (input, weight, bias, stride, padding, output_padding, groups,
                               dilation))
                else:
                    a = _bind(node, lambda input, weight, bias=None, stride=1, padding=0,
                              dilation=1, groups=1:
                              (input, weight, bias, stride, padding, dilation, groups))
                w, b = const(a[1]), const(a[2])
                kind = (_FUNCTIONAL_TRANSPOSED if transposed else _FUNCTIONAL_CONVS)[node.target]
                nd = w.dim() - 2
                if transposed:
                    stride, padding, output_padding, groups, dilation = a[3:]
                    m = kind(w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), stride, padding,
                             output_padding, groups, b is not None, dilation, device="meta")
                else:
                    stride, padding, dilation, groups = a[3:]
                    m = kind(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride,
                             padding, dilation, groups, b is not None, device="meta")
                if len(m.kernel_size) != nd:
                    continue
                m.weight, m.bias = param(w), param(b)
            elif node.target is F.batch_norm:
                a = _bind(node, lambda input, running_mean, running_var, weight=None, bias=None,
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
                a = _bind(node, lambda input, weight, bias=None: (input, weight, bias))
                w, b = const(a[1]), const(a[2])
                m = nn.Linear(w.shape[1], w.shape[0], b is not None, device="meta")
                m.weight, m.bias = param(w), param(b)
            elif node.target is F.layer_norm:
                a = _bind(node, lambda input, normalized_shape, weight=None, bias=None, eps=1e-5:
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
            call = graph.call_module(name, (a[0],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)


def backend(gm: fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    """A torch.compile backend: `torch.compile(model.eval(), backend=clconv.torch.backend,
    dynamic=False)`, called under torch.no_grad() / torch.inference_mode(), runs each graph dynamo
    captures through compile() (the model's parameters and buffers, which dynamo passes as graph
    inputs, become constants read now: compile again after changing them). With grad enabled the
    graph runs in torch (the contract is inference); a graph compile() cannot take (symbolic sizes
    of dynamic=True, say) runs in torch too, with a FallbackWarning saying why. Nodes compile()
    cannot lower fall back one by one as in compile()."""
    if torch.is_grad_enabled():
        return gm.forward
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(example_inputs):
        return gm.forward
    state = [i for i, (n, v) in enumerate(zip(placeholders, example_inputs))
             if isinstance(v, torch.Tensor) and _is_state(n, v)]
    inputs = [i for i in range(len(example_inputs)) if i not in set(state)]
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    root = nn.Module()
    for k, i in enumerate(state):
        root.register_buffer(f"state{k}", example_inputs[i].detach(), persistent=False)
    for i, node in enumerate(placeholders):
        env[node] = (graph.get_attr(f"state{state.index(i)}") if i in state
                     else graph.placeholder(node.name))
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            env[node] = graph.node_copy(node, lambda n: env[n])
    for name, module in gm.named_children():
        root.add_module(name, module)
    _raise_to_modules(root, graph)
    lowered = fx.GraphModule(root, graph, "clconv_backend_graph").eval()
    try:
        cm = CompiledModel(lowered, tuple(example_inputs[i] for i in inputs), current_device())
    except Exception as err:  # noqa: BLE001 - the graph still runs, in torch
        warnings.warn(f"clconv.torch.backend: this graph runs in torch ({type(err).__name__}: "
                      f"{err})", FallbackWarning, stacklevel=2)
        return gm.forward

    def run(*args: Any) -> Any:
        if torch.is_grad_enabled():
            return gm.forward(*args)
        return cm(*(args[i] for i in inputs))
    run.compiled_model = cm  # type: ignore[attr-defined]
    return run
