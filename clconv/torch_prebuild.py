"""A converted model's first forward at an input signature: its new convolutions' kernels built
by helper processes while it runs (clconv.ops.prebuild); for the autograd forward (a training
step), its chains' forward and backward kernels, the helpers building on through the backward.

The layers are listed by a shape pass: the fused forward run once more, each chain's plan
arguments recorded instead of planned (clconv.ops.prebuild.recording, `note`) and its result
zeros of its shape, the other ops torch's (`is_recording` in torch_fuse's gates); torch's random
number generator is put back after it. The inference forward's pass runs on the first item of
the batch; the autograd forward's on the whole batch (BatchNorm's batch statistics need more
than one value a channel), with every buffer of the model put back after it (the BatchNorms
outside the chains update theirs). It runs for the first call at each input signature of a
model with MIN_LAYERS or more fused chains whose network (`prebuild.network_key`: its modules,
parameter shapes, the signature and the kind of forward) has not listed its layers in this
cache folder before, and only where helpers run. What it costs: MobileNetV2's inference at
224x224, 9 ms once the weights are folded (65 ms in a fresh process, most of it the BatchNorm
folding that the forward then reuses).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .ops import prebuild
from .runtime.device import current_device

__all__ = ["FirstForward", "first_forward", "signature"]

#: Input signatures a converted model keeps (a model called at many sizes stops listing after).
SIGNATURES_KEPT = 64


def signature(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """What makes another first forward: the arguments' shapes and dtypes (types otherwise)."""
    return tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else type(a)
                 for a in args)


def _first_items(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], int]:
    """(args with every tensor's first item alone, the batch) where every argument is a tensor
    of the same first dim above 1; else (args, 1)."""
    n = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 0
    if n > 1 and all(isinstance(a, torch.Tensor) and a.dim() and a.shape[0] == n for a in args):
        return tuple(a[:1] for a in args), n
    return args, 1


def _scaled(spec: tuple[Any, ...], n: int) -> tuple[Any, ...]:
    """A spec recorded on the first item, at the batch of n items (input and residual dim 0)."""
    if n == 1 or spec[0] in ("chain", "linear"):  # (the autograd pass runs the whole batch)
        return spec
    if spec[0] == "squeeze_excitation":  # (its input batched: the pass's shape)
        return (spec[0], (spec[1][0] * n, *spec[1][1:]), *spec[2:])
    if spec[0] == "pool":
        return (*spec[:3], (spec[3][0] * n, *spec[3][1:]), *spec[4:])
    nd, x_shape = spec[0], spec[1]
    if len(x_shape) != nd + 2:
        return spec
    r_shape = spec[-1]
    return (nd, (x_shape[0] * n, *x_shape[1:]), *spec[2:-1],
            None if r_shape is None else (r_shape[0] * n, *r_shape[1:]))


class FirstForward:
    """A first forward's helpers (or none) and its network's key: `done()` after the forward
    stops them and, where it succeeded, remembers the network (clconv.ops.prebuild.remember)."""

    def __init__(self, key: str, helpers: Any) -> None:
        self.key, self.helpers = key, helpers

    def done(self, ok: bool) -> None:
        if self.helpers is not None:
            self.helpers.stop()
        if ok:
            prebuild.remember(self.key)


def first_forward(fn: Callable[..., Any], model: Any, args: tuple[Any, ...],
                  structure: tuple[Any, ...], training: bool = False) -> FirstForward | None:
    """For the first call of `fn(model, *args)` (a fused inference forward of the model's
    `structure`, or with `training` its autograd one) at this input signature: helpers building
    its new convolutions (training: its chains' forward and backward), or None where none run
    (no helpers here, or this network listed its layers in this cache folder before)."""
    dev = current_device()
    if prebuild.helper_count(dev) == 0:
        return None
    key = prebuild.network_key(dev, structure, signature(args), training,
                               tuple(tuple(p.shape) for p in model.parameters()))
    if prebuild.known(key):
        return None
    helpers = prebuild.Helpers.spawn(dev)  # (starting while the layers are listed)
    # The autograd forward's pass on the whole batch (BatchNorm's batch statistics need more
    # than one value a channel), the buffers its torch ops update (BatchNorms in train mode:
    # outside the chains, or in the inference trace, whose chains then run module by module)
    # put back after it.
    items, n = (args, 1) if training else _first_items(args)
    state = torch.random.get_rng_state()
    buffers = [(b, b.clone()) for b in model.buffers()]
    try:
        with prebuild.recording() as specs, torch.set_grad_enabled(training):
            fn(model, *items)
    except Exception:  # (the forward itself meets it again, with its own message)
        if helpers is not None:
            helpers.stop()
        return None
    finally:
        torch.random.set_rng_state(state)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    if helpers is not None and not helpers.send(dev, [_scaled(s, n) for s in specs]):
        helpers = None
    return FirstForward(key, helpers)
