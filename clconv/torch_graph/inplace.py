"""In-place writes in a traced graph, made explicit before the lowering.

fx records `y.mul_(2)`, `F.relu(y, inplace=True)`, `nn.ReLU(inplace=True)(y)`, `out += idt`
(tracing.InplaceTracer) or `torch.add(a, b, out=y)` as a node whose value is the written tensor;
but the code after it may read that tensor through the node that made it (`y`, or another name
bound to it), and fx then points there. torch reads the written memory; the lowering, which
follows values, would read the value before the write. So
every later reader of a written tensor is pointed at the write (`redirect_inplace_writes`). What
values cannot express is refused with a TypeError naming the node: a write into a tensor that
shares memory with another one (a view, or the input of a view taken before the write), and a
write into a parameter or buffer (torch would change the module for the next call). A write into
the model's input gives the right outputs but leaves the caller's tensor as it was.
"""

from __future__ import annotations

import inspect
import operator
from typing import Any

import torch
from torch import fx, nn

from .base import is_tensor

__all__ = ["redirect_inplace_writes", "writes_input"]

#: Python's augmented assignments (tracing.InplaceTracer traces `a += b` as operator.iadd(a, b)).
_AUGMENTED = {operator.iadd, operator.isub, operator.imul, operator.itruediv,
              operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior,
              operator.ixor, operator.ilshift, operator.irshift, operator.imatmul}
#: Ops whose result shares memory with their first argument (or is that tensor).
_VIEW_METHODS = {"view", "view_as", "reshape", "reshape_as", "transpose", "permute", "flatten",
                 "unflatten", "squeeze", "unsqueeze", "expand", "expand_as", "narrow", "t",
                 "contiguous", "detach", "split", "chunk", "unbind", "select", "as_strided",
                 "unfold", "diagonal", "movedim", "moveaxis", "swapaxes", "swapdims", "to",
                 "type_as", "float", "double", "half", "real", "imag", "__getitem__"}
_VIEW_FUNCTIONS = {operator.getitem, torch.flatten, torch.reshape, torch.transpose, torch.permute,
                   torch.squeeze, torch.unsqueeze, torch.narrow, torch.split, torch.chunk,
                   torch.unbind, torch.select, torch.t, torch.movedim, torch.detach,
                   torch.swapaxes, torch.diagonal}
#: Modules that return their input itself (in eval mode) or a view of it.
_VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                 nn.Dropout3d, nn.AlphaDropout)


def _written(gm: fx.GraphModule, node: fx.Node, known: bool = True) -> fx.Node | None:
    """The node whose tensor `node` writes in place, or None. known=False: before ShapeProp
    (an augmented assignment of any value counts)."""
    out = node.kwargs.get("out")
    if node.op in ("call_function", "call_method") and isinstance(out, fx.Node):
        return out  # torch.add(a, b, out=y) writes y
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    target = node.target
    if node.op == "call_method":
        inplace = target.endswith("_") and not target.startswith("_")
    elif node.op == "call_function":
        name = getattr(target, "__name__", "")
        # (`n += 1` of a number makes a new number: only a tensor's is a write)
        inplace = (target in _AUGMENTED and (is_tensor(node.args[0]) or not known)) or (
            name.endswith("_") and not name.startswith("_")) or _inplace_argument(target, node)
    elif node.op == "call_module":
        inplace = getattr(gm.get_submodule(target), "inplace", False) is True
    else:
        inplace = False
    return node.args[0] if inplace else None


def _inplace_argument(fn: Any, node: fx.Node) -> bool:
    """Whether the call passes inplace=True (by keyword or by position, as F.relu(x, True))."""
    if node.kwargs.get("inplace") is True:
        return True
    try:
        bound = inspect.signature(fn).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):  # builtins without a signature, or another calling form
        return False
    return bound.arguments.get("inplace") is True


def writes_input(gm: fx.GraphModule) -> bool:
    """Whether some node of gm (not yet shape-propagated) may write a placeholder in place."""
    return any(getattr(_written(gm, n, known=False), "op", None) == "placeholder"
               for n in gm.graph.nodes)


def _is_view(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), _VIEW_MODULES)
    return False


def redirect_inplace_writes(gm: fx.GraphModule) -> int:
    """Points every reader of a tensor written in place, after the write, at the write's node
    (recompiling gm when it changed anything); returns the number of writes. TypeError for the
    writes values cannot express (see the module's doc)."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    writes = 0
    for node in list(gm.graph.nodes):
        written = _written(gm, node)
        if written is None:
            continue
        writes += 1
        where = f"{node.format_node()} (in {type(gm).__name__}'s forward)"
        if written.op == "get_attr":
            raise TypeError(f"clconv.torch.compile: {where} writes in place into a parameter or "
                            f"buffer, which would change the model for its next call; use "
                            f"clconv.torch.convert(model), which runs such code in torch")
        # The tensor's own memory may be another's: the written node a view of some base that
        # something else reads, or a view of the written node taken before the write.
        shared = (_is_view(gm, written)
                  and any(u is not written for u in _base(written).users)) or any(
            _is_view(gm, u) and order[u] < order[node] for u in written.users)
        if shared:
            raise TypeError(f"clconv.torch.compile: {where} writes in place into a tensor that "
                            f"shares its memory with another (a view): compile follows values, "
                            f"not memory. Write it out of place (y = y * 2, F.relu(y)) or use "
                            f"clconv.torch.convert(model)")
        for user in list(written.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(written, node)
    if writes:
        gm.graph.lint()
        gm.recompile()
    return writes


def _base(view: fx.Node) -> fx.Node:
    """The tensor a view node was taken of (its first argument)."""
    arg = view.args[0] if view.args else None
    return arg if isinstance(arg, fx.Node) else view
