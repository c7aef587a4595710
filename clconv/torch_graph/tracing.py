"""Tracing: the model as an fx graph (torch.fx.symbolic_trace's call_module nodes, clconv.torch's
modules kept as leaves), with the example input's shapes and dtypes on its nodes (fx's
ShapeProp)."""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp


class Tracer(fx.Tracer):
    """torch.fx's tracer, with clconv.torch's modules (converted convolutions, folded chains) as
    leaves like torch.nn's: their forward runs clconv from Python, which fx cannot trace into."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m).__module__ == "clconv.torch" or super().is_leaf_module(
            m, module_qualified_name)


def trace(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> fx.GraphModule:
    """`model`'s fx trace, its nodes annotated with the shapes and dtypes of `example_inputs`."""
    gm = fx.GraphModule(model, Tracer().trace(model), type(model).__name__)
    with torch.no_grad():
        ShapeProp(gm).propagate(*example_inputs)
    return gm
