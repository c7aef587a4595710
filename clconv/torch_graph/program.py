"""The lowered program and its runtime: Step, RunStats, and Program, what a CompiledModel runs
(inputs uploaded, steps run in order, each intermediate dropped after its last reader, outputs
downloaded; the model's constants uploaded once)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyopencl.array as cla
import torch
from torch import fx

from ..ops.plan import mark_constant
from ..runtime.device import Device
from ..runtime.memory import empty, pool


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
    # a convolution's plan arguments (clconv.ops.conv.cached_conv_plan's after the device) or a
    # Linear's (clconv.ops.prebuild.linear_spec), for the helpers that build its kernels during
    # compile()'s run (clconv.ops.prebuild)
    plan_spec: tuple[Any, ...] | None = None
    # a convolution's (weight, bias or None, activation) as its run passes them, for a step
    # that takes its place (lower_layers' squeeze_excitations)
    conv_operands: tuple[Any, ...] | None = None


@dataclass
class RunStats:
    """What the last call did: uploads and downloads (host <-> device copies made by the runner,
    host fallbacks included), and the device memory its activations took at most."""

    uploads: int = 0
    downloads: int = 0
    peak_bytes: int = 0
    seconds: float = 0.0


class StepError(Exception):
    """A lowered step failed: its op's own error, with the step."""

    def __init__(self, step: Step, error: Exception) -> None:
        super().__init__(str(error))
        self.step = step
        self.error = error


class Program:
    """The traced graph of a model and the steps lowered from it, run on `device` (CompiledModel
    is this, made by compile()). `final` is False while compile() still tries the program on the
    example (a step may then refuse what it would do in torch later)."""

    def __init__(self, graph_module: fx.GraphModule, dev: Device) -> None:
        self.device = dev
        self.graph_module = graph_module
        self.modules = dict(graph_module.named_modules())
        self.nodes = list(graph_module.graph.nodes)
        self.placeholders = [n.name for n in self.nodes if n.op == "placeholder"]
        # (the forward's argument names, and the defaults fx keeps on their placeholders)
        self._arguments = [(str(n.target), n.args) for n in self.nodes if n.op == "placeholder"]
        self.output_arg = next(n for n in self.nodes if n.op == "output").args[0]
        self.steps: list[Step] = []
        self.layout: dict[str, tuple[int, ...] | None] = {}  # node -> logical permutation
        self.stats = RunStats()
        self.final = False
        self._constants: dict[Any, cla.Array] = {}
        self.weight_bytes = 0
        self.trial_outputs: Any = None

    def bind(self, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """The inputs of a call as the forward binds them: positional ones, then keyword ones by
        the forward's argument names, then the defaults of its signature; TypeError as Python
        gives for a missing, repeated or unknown argument."""
        names = [name for name, _ in self._arguments]
        if len(inputs) > len(names):
            raise TypeError(f"the compiled model takes {len(names)} input(s) "
                            f"({', '.join(names)}), got {len(inputs)}")
        if len(inputs) == len(names) and not kwargs:
            return inputs
        kwargs = dict(kwargs)
        repeated = [n for n in names[:len(inputs)] if n in kwargs]
        if repeated:
            raise TypeError(f"the compiled model got multiple values for argument {repeated[0]!r}")
        values = list(inputs)
        for name, default in self._arguments[len(inputs):]:
            if name in kwargs:
                values.append(kwargs.pop(name))
            elif default:
                values.append(default[0])
            else:
                raise TypeError(f"the compiled model is missing its input {name!r} (an argument "
                                f"of the forward without a default)")
        if kwargs:
            raise TypeError(f"the compiled model got unexpected keyword argument(s) "
                            f"{', '.join(map(repr, kwargs))} (its inputs: {', '.join(names)})")
        return tuple(values)

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        """The model's outputs for `inputs` (torch tensors, as the model takes them; keyword
        arguments and the forward's defaults as it binds them)."""
        inputs = self.bind(inputs, kwargs)
        try:
            return self._run(inputs)
        except StepError as err:  # the op's own error (e.g. a shape it refuses), as raised
            raise err.error from None

    def trial(self, inputs: tuple[torch.Tensor, ...],
              on_step: Callable[[int, int, Step], None] | None = None
              ) -> tuple[Step, Exception] | None:
        """Runs the program on the example (making every step's plans: validation, algorithm
        choice, kernel builds); (step, error) of the first lowered step that fails, else None
        with the outputs in `trial_outputs`. on_step(i, total, step) is called before each
        step."""
        try:
            self.trial_outputs = self._run(inputs, on_step)
        except StepError as err:
            return err.step, err.error
        return None

    @property
    def peak_bytes(self) -> int:
        return self.stats.peak_bytes

    def _run(self, inputs: tuple[Any, ...],
             on_step: Callable[[int, int, Step], None] | None = None) -> Any:
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
            if getattr(dev, "workspace", None) is not None:
                dev.workspace.largest_request = 0
            for name, x in zip(self.placeholders, inputs):
                env[name] = self.upload(x) if isinstance(x, torch.Tensor) else x
            for i, step in enumerate(self.steps):
                if on_step is not None:
                    on_step(i, len(self.steps), step)
                try:
                    env[step.node] = step.run(env)
                except Exception as err:
                    if step.host:
                        raise
                    raise StepError(step, err) from err
                peak = max(peak, mem.active_bytes - base)
                for name in step.frees:
                    del env[name]
            result = self._outputs(self.output_arg, env)
        # (the column buffer this run asked for: the device's may be larger from earlier calls)
        workspace = dev.workspace.largest_request \
            if getattr(dev, "workspace", None) is not None else 0
        stats.peak_bytes = peak + workspace
        stats.seconds = time.perf_counter() - start
        return result

    def _outputs(self, arg: Any, env: dict[str, Any]) -> Any:
        """The model's outputs: device arrays downloaded (in tuples too), in plain lists and
        dicts as the model returns them (fx keeps its own immutable ones)."""
        def value(n: fx.Node) -> Any:
            lay = self.layout.get(n.name)
            return mapped(env[n.name], lambda v: self.download(v, lay))
        return mapped(fx.node.map_arg(arg, value), lambda v: v)

    def upload(self, x: torch.Tensor) -> cla.Array:
        """Host tensor `x` on the device (counted in stats.uploads)."""
        host = x.detach().contiguous().numpy()
        out = empty(self.device, host.shape, host.dtype)
        if host.size:
            out.set(host)
        self.stats.uploads += 1
        return out

    def download(self, a: cla.Array, perm: tuple[int, ...] | None = None) -> torch.Tensor:
        """Device array `a` as a contiguous host tensor, permuted by `perm` (a channels-last view's
        logical order: copied so, as outputs are contiguous and a host node may `view` the
        value of a `.contiguous()`); counted in stats.downloads."""
        self.stats.downloads += 1
        t = torch.from_numpy(a.get()) if a.size else torch.empty(a.shape,
                                                                  dtype=_torch_dtype(a.dtype))
        return t.permute(*perm).contiguous() if perm is not None else t

    def write_back(self, a: cla.Array, t: torch.Tensor, perm: tuple[int, ...] | None) -> None:
        """Host tensor `t` (a `download(a, perm)` that torch then wrote) into `a` itself."""
        if perm is not None:
            t = t.permute(*np.argsort(perm).tolist())
        if a.size:
            a.set(np.ascontiguousarray(t.detach().numpy()))
            self.stats.uploads += 1

    def constant(self, key: Any, t: torch.Tensor) -> cla.Array:
        """`t` on the device, uploaded once (weights, folded weights, constants of the graph).
        Marked constant (never written again: the model owns it), so that plans keep what they
        derive from it, such as packed filters (clconv.ops.plan.mark_constant)."""
        found = self._constants.get(key)
        if found is None:
            # (ascontiguousarray makes a 0-d array 1-d: the tensor's shape is kept)
            host = np.ascontiguousarray(t.detach().cpu().numpy()).reshape(tuple(t.shape))
            found = mark_constant(cla.to_device(self.device.queue, host))
            self._constants[key] = found
            self.weight_bytes += found.nbytes
        return found

    def summary(self) -> str:
        """One line per step: the node it produces, its op, host or device."""
        return "\n".join(f"{'host  ' if s.host else 'device'} {s.node:<24} {s.op}"
                         for s in self.steps)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def mapped(v: Any, download: Callable[[cla.Array], Any]) -> Any:
    """`v` with every device array in it replaced by download(array), through tuples (named
    ones and torch's named results keep their type), lists and dicts (plain ones: fx's immutable
    containers become what a model returns)."""
    if isinstance(v, cla.Array):
        return download(v)
    if isinstance(v, dict):
        return {k: mapped(x, download) for k, x in v.items()}
    if isinstance(v, list):
        return [mapped(x, download) for x in v]
    if isinstance(v, tuple):
        items = [mapped(x, download) for x in v]
        if type(v) is tuple:
            return tuple(items)
        return type(v)(*items) if hasattr(v, "_fields") else type(v)(items)
    return v
