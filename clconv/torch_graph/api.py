"""The entry points: compile() and warmup()."""

from __future__ import annotations

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
    return CompiledModel(model, inputs, device or current_device(), progress)


def warmup(model: nn.Module, example_input: Any, *, device: Device | None = None,
           progress: bool | None = None) -> CompiledModel:
    """compile() and one more call on the example (for services: every plan made and every kernel
    built before the first request)."""
    cm = compile(model, example_input, device=device, progress=progress)
    cm(*(example_input if isinstance(example_input, tuple) else (example_input,)))
    return cm
