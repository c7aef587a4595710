"""The entry points: compile() and warmup()."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from torch import nn

from ..runtime.device import Device, current_device
from .compiled import CompiledModel


def compile(model: nn.Module, example_input: Any, *, device: Device | None = None,
            progress: bool | None = None) -> CompiledModel:
    """`model` (eval mode) traced, fused and lowered to clconv ops on `device` (default: the current
    clconv device); returns a CompiledModel called like the model. `example_input` is a tensor or a
    tuple of tensors (its shapes guide the lowering and it is run once, building the plans).
    progress: a progress line on stderr naming the step whose plans are being made (None: only
    once compiling has taken 2 s; True: always; False: never)."""
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not isinstance(model, nn.Module):
        raise TypeError(f"compile takes a torch.nn.Module, got {type(model).__name__}")
    for i, x in enumerate(inputs):
        if isinstance(x, np.ndarray):  # (the trace's shape propagation runs torch on it)
            raise TypeError(f"compile's example input {i} is a numpy array: pass a torch tensor "
                            f"(torch.from_numpy(x)); the compiled model is then called with "
                            f"tensors or numpy arrays")
        if isinstance(x, (list, tuple, dict)):  # (its tensors would reach no upload)
            raise TypeError(f"compile's example input {i} is a {type(x).__name__}: the compiled "
                            f"model takes tensors and numbers as the forward's arguments, so "
                            f"give each tensor its own argument, or use torch.compile(model, "
                            f"backend=clconv.torch.backend) or clconv.torch.convert(model), which "
                            f"take containers")
    _check_signature(model)
    return CompiledModel(model, inputs, device or current_device(), progress)


def _check_signature(model: nn.Module) -> None:
    """TypeError for a forward taking *args or **kwargs: the program binds its inputs by the
    forward's named arguments (fx traces `*xs` as one input, so `xs[0]` took a tensor's first
    item)."""
    try:  # (the class's: a converted model's forward attribute is its fused forward)
        params = list(inspect.signature(type(model).forward).parameters.values())[1:]
    except (TypeError, ValueError):  # (no signature to read: fx's trace decides)
        return
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            star = "*" if p.kind == p.VAR_POSITIONAL else "**"
            raise TypeError(f"clconv.torch.compile cannot compile {type(model).__name__}: its "
                            f"forward takes {star}{p.name}, and the compiled program binds its "
                            f"inputs by named arguments; name them in the forward, or use "
                            f"torch.compile(model, backend=clconv.torch.backend) or "
                            f"clconv.torch.convert(model)")


def warmup(model: nn.Module, example_input: Any, *, device: Device | None = None,
           progress: bool | None = None) -> CompiledModel:
    """compile() and one more call on the example (for services: every plan made and every kernel
    built before the first request)."""
    cm = compile(model, example_input, device=device, progress=progress)
    cm(*(example_input if isinstance(example_input, tuple) else (example_input,)))
    return cm
