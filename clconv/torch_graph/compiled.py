"""CompiledModel: a model traced, lowered and tried on the example until every step runs (a node
whose op fails is unfused, then kept on the host), with compile()'s progress line."""

from __future__ import annotations

import operator
import threading
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..ops import prebuild
from ..runtime.device import Device
from ..runtime.progress import Progress
from ..torch_ops import autocast_dtype, pause_openmp, sample_of, version_of
from .base import Fallback, FallbackWarning
from .lowering import Lowering
from .lowering_base import Options
from .program import Program, Step
from .tracing import trace


class _Zeros:
    """An example input's shape and dtype, kept for a copy of the compiled model."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.shape, self.dtype = shape, dtype


def _compiled_again(model: nn.Module, examples: tuple[Any, ...], dev: Device) -> CompiledModel:
    """A copied or unpickled CompiledModel: `model` compiled on `dev` for inputs of the
    example's shapes and dtypes (zeros)."""
    inputs = tuple(torch.zeros(x.shape, dtype=x.dtype) if isinstance(x, _Zeros) else x
                   for x in examples)
    return CompiledModel(model, inputs, dev, progress=False)


class CompiledModel(Program):
    """A traced, fused and lowered model; call it like the model (torch tensors in and out).

    Attributes: fallbacks (list of Fallback: the nodes that run in torch on the host), steps (the
    lowered program), device, graph_module (the fx trace), peak_bytes (device memory the
    activations of the last call took at most, from the device's memory pool, plus the largest
    column workspace it asked for), weight_bytes (uploaded weights), stats (RunStats of the last
    call)."""

    def __init__(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...],
                 dev: Device, progress: bool | None = None) -> None:
        _check_eval(model)
        super().__init__(trace(model, example_inputs), dev)
        example_inputs = self.bind(example_inputs, {})  # (the forward's defaults given)
        # The trace fixes dims by number (cat's -3, flatten's 1): another rank would be
        # computed along other dims; other sizes of the same rank are fine.
        self._ranks = tuple(x.dim() if isinstance(x, torch.Tensor) else None
                            for x in example_inputs)
        self._examples = tuple(_Zeros(tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor)
                               else x for x in example_inputs)  # (what a copy is compiled with)
        # The weights are folded and uploaded when the program is lowered; every parameter,
        # buffer and submodule of the model is watched (the object, a tensor's in-place version),
        # and a call after one changed (an optimizer step, load_state_dict, a new Parameter or
        # submodule, BatchNorm's statistics) lowers the program again first, as torch would use
        # the new values.
        self._model = model
        self._options = Options()
        self._lowering = threading.Lock()
        self._watched: list[tuple[dict[str, Any], str, Any, int | None]] = []
        self._settings: list[tuple[nn.Module, Callable[[nn.Module], Any], Any]] = []
        self._lower(example_inputs, CompileProgress(progress))
        if self.fallbacks:
            warnings.warn("clconv.torch.compile: these nodes run in torch on the host (each costs "
                          "a download and an upload):\n  " +
                          "\n  ".join(str(f) for f in self.fallbacks), FallbackWarning,
                          stacklevel=3)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """copy.deepcopy and pickle: the model (a copy of it) compiled again on the same device,
        with zeros of the example's shapes and dtypes (a program holds device buffers, kernels
        and plans, none of which can be copied)."""
        return _compiled_again, (self._model, self._examples, self.device)

    def _lower(self, example_inputs: tuple[Any, ...], shown: CompileProgress | None) -> Any:
        """Lower, then run the example: a node whose clconv op fails on it (an argument clconv
        refuses, an op that does not exist yet) is lowered less ambitiously (unfused), or kept on
        the host, and the program made again. Each round fixes one node, so this ends. Returns
        the outputs of the run that succeeded."""
        options = self._options
        self.final = False
        # What the program is lowered from, taken now, kept from the end (other threads' calls
        # meanwhile see a change and wait for this lowering): every parameter, buffer and
        # submodule, and the settings of the modules the program runs (a BatchNorm's eps, an
        # activation's slope, a pool's sizes, train mode), which the lowering writes into steps.
        watched = self._snapshot()
        layers = {id(m): m for n in self.graph_module.graph.nodes if n.op == "call_module"
                  for m in (self.modules.get(str(n.target)),) if m is not None}
        settings = [(m, get, get(m)) for m in layers.values()
                    for get in (_settings_getter(m),) if get is not None]
        self._constants.clear()  # the weights as they are now (kept across the rounds below)
        self.weight_bytes = 0
        helpers, key = self._helpers(example_inputs)  # (starting while the model is lowered)
        try:
            for round_ in range(4 * len(self.nodes) + 1):
                self.steps, self.layout = Lowering(self, options).lower()
                if round_ == 0 and helpers is not None and not helpers.send(
                        self.device, [s.plan_spec for s in self.steps if s.plan_spec]):
                    helpers = None  # (fewer than prebuild.MIN_LAYERS new)
                failed = self.trial(example_inputs, None if shown is None else shown.update)
                if failed is None:
                    break
                step, err = failed
                why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                level = options.fuse_level.get(step.nodes[0], 0)
                if len(step.nodes) > 1 and level < 2:
                    options.fuse_level[step.nodes[0]] = level + 1
                else:
                    options.host[step.nodes[0]] = why.strip()
        finally:
            if helpers is not None:
                helpers.stop()
        if key is not None:
            prebuild.remember(key)
        if shown is not None:
            shown.close(f"{len(self.steps)} steps")
        self.final = True
        self.fallbacks = [Fallback(s.node, s.op, s.why) for s in self.steps if s.host]
        self._watched, self._settings = watched, settings
        outputs, self.trial_outputs = self.trial_outputs, None
        return outputs

    def _helpers(self, example_inputs: tuple[Any, ...]) -> tuple[Any, str | None]:
        """(helper processes to build the lowered convolutions' and Linears' kernels during the
        example run, or None; the network's key, None where helpers do not run here):
        clconv.ops.prebuild, for a first use on a cold cache. None too for a model of fewer than
        MIN_LAYERS such layers, or one compiled in this cache folder before."""
        dev = self.device
        layers = [m for n in self.graph_module.graph.nodes if n.op == "call_module"
                  for m in (self.modules.get(str(n.target)),)
                  if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
        if len(layers) < prebuild.MIN_LAYERS or prebuild.helper_count(dev) == 0:
            return None, None
        key = prebuild.network_key(
            dev, "compile", [(n.op, str(n.target)) for n in self.graph_module.graph.nodes],
            [tuple(p.shape) for p in self.graph_module.parameters()],
            [(tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x)
             for x in example_inputs])
        return (None if prebuild.known(key) else prebuild.Helpers.spawn(dev)), key

    def _snapshot(self) -> list[tuple[dict[str, Any], str, Any, int | bytes | None]]:
        """(table, name, object, _state(object)) of every parameter, buffer and submodule entry of
        the model now."""
        return [(table, name, t, _state(t))
                for m in self._model.modules()
                for table in (m._parameters, m._buffers, m._modules) for name, t in table.items()]

    @property
    def weights_changed(self) -> bool:
        """Whether a parameter, buffer or submodule of the model was replaced, a tensor written
        in place, or a setting of a module the program runs (a number, string, bool or tuple
        attribute: BatchNorm's eps, LeakyReLU's slope, train mode) changed since the program was
        lowered. A write through `.data` bypasses torch's version counter and is not seen:
        change weights in place under torch.no_grad(), as optimizers do. Inference tensors
        (made under torch.inference_mode) have no counter: a sample of their values stands in."""
        for table, name, t, version in self._watched:
            now = table.get(name)
            if now is not t or (version is not None and _state(t) != version):
                return True
        return any(get(m) != settings for m, get, settings in self._settings)

    def _refresh(self) -> None:
        """The trace's references made the model's current ones again: fx's GraphModule holds its
        own references to what get_attr and call_module nodes name (the root's parameters, the
        submodules), which a new Parameter or submodule in the model does not reach."""
        gm = self.graph_module
        for node in gm.graph.nodes:
            if node.op not in ("get_attr", "call_module"):
                continue
            path, _, name = str(node.target).rpartition(".")
            try:
                value = getattr(self._model.get_submodule(path), name)
                owner = gm.get_submodule(path)
            except AttributeError:
                if node.op == "get_attr" and name.startswith("_tensor_constant"):
                    continue  # (a constant of the trace's own)
                # a submodule or attribute the model's forward calls, deleted since: the
                # model's own call raises this (the trace's reference ran the old one)
                raise AttributeError(f"the compiled model calls {node.target!r}, which the "
                                     f"model no longer has (the model's forward raises this "
                                     f"too); compile the model again after changing what its "
                                     f"forward calls") from None
            if node.op == "call_module" and not isinstance(value, nn.Module):
                raise TypeError(f"the compiled model calls {node.target!r}, which is now "
                                f"{type(value).__name__!r}, not a module (the model's forward "
                                f"raises this too)")
            if getattr(owner, name, None) is not value:
                setattr(owner, name, value)
        self.modules = dict(gm.named_modules())

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        """The model's outputs for `inputs` (torch tensors of the example's ranks, any sizes;
        keyword arguments and the forward's defaults as the model binds them). Under
        torch.autocast the model itself runs, in torch (a FallbackWarning): the program computes
        in the example's dtype, not autocast's roundings."""
        if autocast_dtype("cpu") is not None:
            warnings.warn("clconv.torch.compile: called under torch.autocast, whose float16 / "
                          "bfloat16 roundings the compiled program does not make: the model runs "
                          "in torch (clconv.torch.convert runs its convolutions under autocast)",
                          FallbackWarning, stacklevel=2)
            return self._model(*inputs, **kwargs)
        inputs = self.bind(inputs, kwargs)
        for i, ((name, _), x, rank) in enumerate(zip(self._arguments, inputs, self._ranks)):
            # (rank: the example's tensor's; None where the example gave no tensor)
            if rank is not None and not isinstance(x, (torch.Tensor, np.ndarray)):
                raise TypeError(f"the compiled model's input {name!r} was a tensor in the "
                                f"example, and its program reads one: got "
                                f"{type(x).__name__} (compile again with an example that "
                                f"leaves {name!r} to its default to use that)")
            if rank is not None and isinstance(x, torch.Tensor) and x.dim() != rank:
                raise ValueError(f"the compiled model's input {i} was {rank}-d in the example, "
                                 f"got a {x.dim()}-d tensor of shape {tuple(x.shape)}: the "
                                 f"trace fixes dims by number, so compile the model again with "
                                 f"an example of that rank (another batch or spatial size "
                                 f"needs no new compile)")
        if self.weights_changed or self._lowering.locked():
            with self._lowering:  # (threads calling at once: one lowers, the others wait)
                if self.weights_changed:
                    _check_eval(self._model)
                    self._refresh()
                    with torch.no_grad():
                        return self._lower(inputs, None)  # (the run that tried the program)
        pause_openmp(self.device)  # (torch's ops before this call: their idle workers)
        return super().__call__(*inputs)

    def __repr__(self) -> str:
        lowered = sum(not s.host for s in self.steps)
        return (f"<clconv CompiledModel: {lowered} clconv steps, {len(self.fallbacks)} host "
                f"fallbacks, device {self.device.name!r}>")


_SETTING_TYPES = (bool, int, float, str, tuple, type(None))


def _settings_getter(m: nn.Module) -> Callable[[nn.Module], Any] | None:
    """A getter of the public plain attributes of module `m` (numbers, strings, tuples, None),
    train mode included (operator.attrgetter: on MobileNetV2's 141 modules a check took a tenth
    of the time of a scan of their __dict__)."""
    names = [k for k, v in m.__dict__.items() if k[0] != "_" and type(v) in _SETTING_TYPES]
    return operator.attrgetter(*names) if names else None


def _check_eval(model: nn.Module) -> None:
    if model.training:
        raise ValueError("clconv.torch.compile is for inference: call model.eval() first (for "
                         "training, clconv.torch.convert(model) keeps per-module autograd)")


class CompileProgress:
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


def _state(t: Any) -> int | bytes | None:
    """What says whether `t` was written in place since: a tensor's version counter, or for an
    inference tensor (which has none) a sample of its values (clconv.torch_ops.sample_of);
    None for a submodule."""
    if not isinstance(t, torch.Tensor):
        return None
    version = version_of(t)
    return sample_of(t) if version is None else version
