"""Flatten and Sequential (state_dict keys as torch.nn.Sequential's)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np
import pyopencl.array as cla

from ..ops.shape import flatten
from ..runtime.device import Device, current_device
from ..runtime.transfer import ArrayLike, deliver, is_device_array, result_dtype, to_device
from .module import Module, check_state


class Flatten(Module):
    """torch.nn.Flatten(start_dim=1, end_dim=-1): a view of a contiguous device array (no copy)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        self.start_dim, self.end_dim = start_dim, end_dim
        self._shape: tuple[int, ...] | None = None

    def forward(self, input: ArrayLike) -> ArrayLike:
        self._shape = tuple(input.shape) if hasattr(input, "shape") else np.shape(input)
        y = flatten(input, self.start_dim, self.end_dim)
        self._out_shape = tuple(y.shape)
        return y

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output (the latest forward's output shape) reshaped back to its input shape."""
        if self._shape is None:
            raise RuntimeError("Flatten.backward needs a forward call first")
        got = tuple(np.shape(grad_output) if not hasattr(grad_output, "shape")
                    else grad_output.shape)
        want = getattr(self, "_out_shape", None)
        if want is not None and got != want:
            raise ValueError(f"grad_output must have the shape of the latest forward's output "
                             f"{want}, got {got}")
        if isinstance(grad_output, cla.Array):
            g = grad_output
            if not g.flags.c_contiguous:
                g = to_device(g, current_device(), "grad_output", g.dtype)
            return g.reshape(self._shape)
        return np.reshape(np.asarray(grad_output), self._shape)

    def __repr__(self) -> str:
        return f"Flatten(start_dim={self.start_dim}, end_dim={self.end_dim})"


def _layer(layer: Any) -> Module:
    if not isinstance(layer, Module):
        raise TypeError(f"layer must be a clconv.nn layer, got {type(layer).__name__}")
    return layer


class Sequential(Module):
    """torch.nn.Sequential: layers applied in order. Activations stay on the device from one layer
    to the next (a numpy input is uploaded once and the result downloaded once); backward runs the
    layers' backward in reverse. state_dict()/load_state_dict() use torch.nn.Sequential's keys
    ('0.weight', '1.running_mean', ...: a layer's position where it was made, which a slice keeps,
    as torch's: `model[1:]`'s first layer is '1'; `del`, `insert` and `pop` number them again)."""

    def __init__(self, *layers: Module) -> None:
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layer {i} must be a clconv.nn layer, got {type(layer).__name__}")
        self.layers = list(layers)
        self._renumbered()

    def _names(self) -> list[str]:
        """Each layer's key (its position, but in a slice: the position it was sliced from)."""
        keys = getattr(self, "_keys", None)
        return list(keys) if keys is not None and len(keys) == len(self.layers) else \
            [str(i) for i in range(len(self.layers))]

    def _renumbered(self) -> None:
        self._keys = [str(i) for i in range(len(self.layers))]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            part = Sequential(*self.layers[index])
            part._keys = self._names()[index]  # (torch's slice keeps the keys)
            return part
        return self.layers[index]

    def __iter__(self) -> Any:
        return iter(self.layers)

    def __setitem__(self, index: int, layer: Module) -> None:
        self.layers[index] = _layer(layer)

    def __delitem__(self, index: int | slice) -> None:
        del self.layers[index]
        self._renumbered()

    def append(self, layer: Module) -> Sequential:
        """`layer` under the key str(len(self)), as torch's: where a slice holds that key already,
        the layer there is replaced (torch's add_module)."""
        layer, keys, key = _layer(layer), self._names(), str(len(self.layers))
        if key in keys:
            self.layers[keys.index(key)] = layer
        else:
            self.layers.append(layer)
            self._keys = keys + [key]
        return self

    def insert(self, index: int, layer: Module) -> Sequential:
        """`layer` put before position `index` (-len <= index <= len; IndexError otherwise, as
        torch's, where a list would clamp it)."""
        n = len(self.layers)
        if not isinstance(index, numbers.Integral) or isinstance(index, bool):
            raise TypeError(f"index must be an int, got {index!r}")
        if not -n <= index <= n:
            raise IndexError(f"Index out of range: {index} (Sequential of {n} layers)")
        self.layers.insert(int(index), _layer(layer))
        self._renumbered()
        return self

    def extend(self, layers: Any) -> Sequential:
        for layer in [_layer(layer) for layer in layers]:
            self.append(layer)
        return self

    def pop(self, index: int = -1) -> Module:
        layer = self.layers.pop(index)
        self._renumbered()
        return layer

    def named_parameters(self) -> list[tuple[str, cla.Array]]:
        """(key, parameter) pairs under the state_dict's keys ('0.weight', '0.bias', ...)."""
        pairs = []
        for i, layer in zip(self._names(), self.layers):
            if isinstance(layer, Sequential):
                pairs += [(f"{i}.{k}", p) for k, p in layer.named_parameters()]
                continue
            names = [k for k in layer.state_dict() if k in ("weight", "bias")]
            pairs += [(f"{i}.{k}", p) for k, p in zip(names, layer.parameters())]
        return pairs

    def train(self, mode: bool = True) -> Sequential:
        super().train(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    @property
    def device(self) -> Device:
        """The device of the first layer with parameters (the current device if none has)."""
        for layer in self.layers:
            dev = getattr(layer, "device", None)
            if isinstance(dev, Device):
                return dev
        return current_device()

    def parameters(self) -> list[cla.Array]:
        return [p for layer in self.layers for p in layer.parameters()]

    def gradients(self) -> list[cla.Array | None]:
        return [g for layer in self.layers for g in layer.gradients()]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"{i}.{k}": v for i, layer in zip(self._names(), self.layers)
                for k, v in layer.state_dict().items()}

    def grad_dict(self) -> dict[str, np.ndarray | None]:
        return {f"{i}.{k}": v for i, layer in zip(self._names(), self.layers)
                for k, v in layer.grad_dict().items()}

    def load_state_dict(self, state: Any, strict: bool = True) -> tuple[list[str], list[str]]:
        """Loads '<index>.<key>' entries (a torch.nn.Sequential's state_dict() loads as it is);
        strict: missing or unexpected keys are a ValueError, checked before anything changes."""
        check_state(state)
        names = self._names()
        position = {name: i for i, name in enumerate(names)}
        parts: list[dict[str, Any]] = [{} for _ in self.layers]
        unexpected = []
        for key, value in state.items():
            head, _, rest = str(key).partition(".")
            if head in position and rest:
                parts[position[head]][rest] = value
            else:
                unexpected.append(key)
        missing = []
        for name, layer, part in zip(names, self.layers, parts):
            keys = list(layer.state_dict())
            missing += [f"{name}.{k}" for k in keys if k not in part]
            unexpected += [f"{name}.{k}" for k in part if k not in keys]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict for Sequential: missing keys {missing}, unexpected "
                             f"keys {unexpected}")
        # all or nothing, as a single layer's load: a later layer's bad entry puts back what the
        # earlier layers had
        loaded: list[tuple[Module, dict[str, np.ndarray]]] = []
        for i, layer, part in zip(names, self.layers, parts):
            before = layer.state_dict()
            try:
                layer.load_state_dict(part, strict=False)
            except (TypeError, ValueError) as err:
                for done, state_before in reversed(loaded):
                    done.load_state_dict(state_before, strict=False)
                # the layer names its own key ('weight'): the Sequential's is '<i>.weight'
                raise type(err)(str(err).replace("state['", f"state['{i}.")) from None
            loaded.append((layer, before))
        return missing, unexpected

    def forward(self, input: ArrayLike) -> ArrayLike:
        """input -> the last layer's output (numpy for numpy, device array for device array)."""
        dev = self.device
        with dev:
            x = to_device(input, dev, "input", result_dtype(dev, input=input))
            # a layer object at several positions (one ReLU module reused, as torch code does)
            # keeps only its latest forward's saved arrays: each position's are kept here
            shared = _shared_layers(self)
            states = []
            for layer in self.layers:
                x = layer(x)
                if shared:
                    states.append(_forward_state(layer))
            self._states, self._shared = states, shared
            return deliver(x, not is_device_array(input))

    def backward(self, grad_output: ArrayLike) -> ArrayLike:
        """grad_output -> grad_input through every layer in reverse (each fills its gradients)."""
        dev = self.device
        with dev:
            g = to_device(grad_output, dev, "grad_output", result_dtype(dev, grad_output=grad_output))
            shared, states = getattr(self, "_shared", None), getattr(self, "_states", [])
            if shared:
                _check_shared_parameters(shared)
            for i in reversed(range(len(self.layers))):
                if shared and i < len(states):
                    _restore_forward_state(self.layers[i], states[i])
                g = self.layers[i].backward(g)
            return deliver(g, not is_device_array(grad_output))

    def __repr__(self) -> str:
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in zip(self._names(), self.layers))
        return f"Sequential({inner}\n)"


def _leaves(layer: Module) -> list[Module]:
    return [leaf for inner in layer.layers for leaf in _leaves(inner)] \
        if isinstance(layer, Sequential) else [layer]


def _shared_layers(model: Sequential) -> list[Module]:
    """The layer objects found at more than one position of `model` (nested Sequentials
    included)."""
    count: dict[int, int] = {}
    leaves = _leaves(model)
    for leaf in leaves:
        count[id(leaf)] = count.get(id(leaf), 0) + 1
    return list({id(leaf): leaf for leaf in leaves if count[id(leaf)] > 1}.values())


def _forward_state(layer: Module) -> Any:
    """What `layer`'s backward reads of its latest forward (its attributes, and a Sequential's
    layers'), put back before that position's backward."""
    inner = [_forward_state(x) for x in layer.layers] if isinstance(layer, Sequential) else None
    return dict(vars(layer)), inner


def _restore_forward_state(layer: Module, state: Any) -> None:
    attrs, inner = state
    vars(layer).update(attrs)
    if inner is not None:
        for x, s in zip(layer.layers, inner):
            _restore_forward_state(x, s)


def _check_shared_parameters(shared: list[Module]) -> None:
    """ValueError for a layer with parameters at several positions: torch sums its gradients
    over the uses, and a clconv.nn layer holds one backward's."""
    for layer in shared:
        if layer.parameters():
            raise ValueError(f"Sequential.backward: one {type(layer).__name__} object is used at "
                             f"several positions; its gradients would be the sum over the uses, "
                             f"and a clconv.nn layer keeps one backward's: give each position "
                             f"its own layer (layers without parameters can be shared)")
