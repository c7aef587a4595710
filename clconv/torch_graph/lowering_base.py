"""What the lowering rules share: the module and function tables they match, the options
compile() lowers with, and LoweringBase (the graph being lowered, the layout of each value, and
the making of a Step)."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import pyopencl.array as cla
import torch
import torch.nn.functional as F
from torch import fx, nn

from .base import Unlowerable, is_tensor, torch_type
from .program import Program, Step

_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}
_TRANSPOSED = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ADDS = {operator.add, operator.iadd, torch.add}
MULS = {operator.mul, operator.imul, torch.mul}
SUBS = {operator.sub, operator.isub, torch.sub}
NOOP_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                nn.AlphaDropout)
#: Modules whose forward depends on train mode (batch statistics, dropout): one in train mode in an
#: eval model (Monte Carlo dropout, a BatchNorm left training) runs in torch on the host.
TRAIN_MODE_MODULES = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                      nn.modules.instancenorm._InstanceNorm)
#: clconv's pooling ops: torch has each under the same name (and arguments) in
#: torch.nn.functional, and as a module (MaxPool2d, AdaptiveAvgPool2d, ...).
_POOLS = [f"{kind}_pool{d}d" for kind in ("max", "avg", "adaptive_avg", "adaptive_max")
          for d in (1, 2, 3)]
POOL_MODULES = {getattr(nn, "".join(p.title() for p in name[:-2].split("_")) + name[-2:]): name
                for name in _POOLS}
MIRRORED = {getattr(F, name): name for name in _POOLS}
#: The padding modules (those this torch has: ZeroPad1d/3d and CircularPad* came in 2.1) and
#: their F.pad mode.
PAD_MODULES = {getattr(nn, f"{kind}Pad{d}d"): mode
               for kind, mode in (("Zero", "constant"), ("Constant", "constant"),
                                  ("Reflection", "reflect"), ("Replication", "replicate"),
                                  ("Circular", "circular"))
               for d in (1, 2, 3) if hasattr(nn, f"{kind}Pad{d}d")}


def _dims(kind: type, table: dict[type, int]) -> int | None:
    """The spatial dims of convolution class `kind` in `table`; clconv.torch's converted
    convolutions (its subclasses of torch's) count as the torch class they subclass."""
    if kind in table:
        return table[kind]
    if kind.__module__ == "clconv.torch":
        return next((table[b] for b in kind.__mro__[1:] if b in table), None)
    return None


def conv_dims(m: nn.Module) -> int | None:
    """1, 2 or 3 when `m` is a convolution (torch's or clconv.torch's), else None."""
    return _dims(torch_type(m), _CONVS)


def transposed_dims(m: nn.Module) -> int | None:
    """1, 2 or 3 when `m` is a transposed convolution (torch's or clconv.torch's), else None."""
    return _dims(torch_type(m), _TRANSPOSED)


@dataclass
class Options:
    """How compile() lowers this round: what it learnt from the trial runs on the example."""

    fuse_level: dict[str, int] = field(default_factory=dict)  # head node -> 0 all, 1 no add, 2 BN
    host: dict[str, str] = field(default_factory=dict)        # node -> why it stays on the host


def reshape_view(a: cla.Array, shape: tuple[int, ...]) -> cla.Array:
    """A reshaped view of a contiguous device array (no device work)."""
    if not a.flags.c_contiguous:
        raise ValueError("reshape of a non-contiguous device array")
    return a.reshape(tuple(shape))  # (a tuple: pyopencl's reshape() of no sizes fails for 0-d)


class LoweringBase:
    """The state of one lowering of `program`'s graph: each value's layout (None, or the logical
    permutation of a channels-last view of channels-first data), the fused groups (last node ->
    the group) and the nodes they absorb."""

    def __init__(self, program: Program, options: Options) -> None:
        self.cm = program
        self.options = options
        self.modules = program.modules
        self.layout: dict[str, tuple[int, ...] | None] = {}
        self.absorbed: set[str] = set()
        self.groups: dict[str, list[fx.Node]] = {}
        # convolution -> (padded input, (lo, hi) pairs, padding_mode): its padding node folded
        self.pad_folds: dict[str, tuple[fx.Node, tuple, str]] = {}
        # BatchNorm node -> its convolution's folded (weight, bias), made when the fold was checked
        # (a host fold of ResNet-18's 3x3 layers takes ~8 ms: done once a lowering)
        self.bn_folds: dict[str, tuple[Any, Any]] = {}

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def module_kind(self, node: fx.Node) -> str | None:
        """'conv', 'transposed' or 'linear' for the modules that take an epilogue, else None."""
        m = self.module(node)
        if m is None:
            return None
        if conv_dims(m) is not None:
            return "conv"
        if transposed_dims(m) is not None:
            return "transposed"
        if type(m) is nn.Linear:
            return "linear"
        return None

    def plain_tensor(self, x: Any, what: str) -> str:
        """The name of `x`, a tensor of the graph stored and viewed channels-first (what the ops
        without a channels-last form take); Unlowerable naming `what` otherwise."""
        if not isinstance(x, fx.Node) or not is_tensor(x):
            raise Unlowerable(f"{what} of a value that is not a tensor of the graph")
        if self.layout.get(x.name) is not None:
            raise Unlowerable(f"{what} of a channels-last view")
        return x.name

    @staticmethod
    def add_alpha(node: fx.Node, what: str) -> Any:
        """torch.add/sub's (or Tensor.add/sub's) `alpha` of `node` (1 without one), a number;
        Unlowerable for any other keyword or a computed alpha."""
        kwargs = dict(node.kwargs)
        alpha = kwargs.pop("alpha", node.args[2] if len(node.args) > 2 else 1)
        if kwargs or len(node.args) > 3 or isinstance(alpha, fx.Node) \
                or isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise Unlowerable(f"{what} with keywords {sorted(node.kwargs)} or a computed alpha")
        return alpha

    def binary_name(self, node: fx.Node) -> str | None:
        """'add' / 'mul' when `node` is a two-operand add or mul (no alpha, no keywords)."""
        if node.kwargs or len(node.args) != 2:
            return None
        if node.op == "call_function" and node.target in ADDS | MULS:
            return "add" if node.target in ADDS else "mul"
        if node.op == "call_method" and node.target in ("add", "add_", "mul", "mul_"):
            return node.target.rstrip("_")
        return None

    def value(self, node: fx.Node, run: Callable[[dict[str, Any]], Any], op: str,
              inputs: tuple[str, ...], layout: tuple[int, ...] | None = None) -> Step:
        """The step computing `node` by `run`, its result in `layout`."""
        self.layout[node.name] = layout
        return Step(node.name, (node.name,), op, inputs, run)

    def alias(self, node: fx.Node, src: fx.Node, op: str,
              layout: tuple[int, ...] | None = None) -> Step:
        """`node` is `src`'s value (no device work)."""
        name = src.name
        return self.value(node, lambda env: env[name], op, (name,), layout)

    def python(self, node: fx.Node) -> Step:
        """A node on Python values only (sizes, shapes): evaluated as Python, no device work."""
        args, kwargs, target, op = node.args, node.kwargs, node.target, node.op

        def run(env: dict[str, Any]) -> Any:
            a = fx.node.map_arg(args, lambda n: env[n.name])
            k = fx.node.map_arg(kwargs, lambda n: env[n.name])
            if op == "call_method":
                return getattr(a[0], target)(*a[1:], **k)
            return target(*a, **k)
        return self.value(node, run, f"python {getattr(target, '__name__', target)}",
                          tuple(n.name for n in node.all_input_nodes))
