"""A convolution layer as the bench and the demo describe it, and its `--layer` text.

`Layer` holds one convolution's shapes (input (n, c, *size), weight (k_out, c / groups, *kernel))
with its stride, padding, dilation and groups, and derives what a benchmark reports (output size,
FLOPs, im2col's column bytes); `parse_layer` reads the CLI's --layer forms (LAYER_HELP). Kept in
the package (not in benchmarks/) because `clconv demo --layer` takes the same forms.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CONV_NAMES", "LAYER_HELP", "Layer", "parse_layer"]

#: clconv's functional op for each number of spatial dims.
CONV_NAMES = {1: "conv1d", 2: "conv2d", 3: "conv3d"}
_SPATIAL_KEYS = {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")}

LAYER_HELP = """\
a layer to benchmark instead of the built-in table (repeatable), in one of two forms:
  [NAME=]conv2d:N=1,C=64,H=56,W=56,K=64,k=3,s=1,p=1,d=1,g=1
      conv1d takes L, conv2d H and W, conv3d D, H and W (the input's spatial size);
      N batch (default 1), C input channels, K output channels, k kernel, s stride,
      p padding, d dilation, g groups (defaults s=1, p=0, d=1, g=1); k, s, p and d
      take one int or one per spatial dim joined by x (k=3x1, s=2x1)
  [NAME=]N,C,H,W,K,k,s,p[,g]   (the short 2-d form: square kernel, same stride and
      padding in both dims)"""


def _dims(value: int | Sequence[int], nd: int) -> tuple[int, ...]:
    return (int(value),) * nd if isinstance(value, (int, np.integer)) else tuple(value)


@dataclass(frozen=True)
class Layer:
    """One convolution: input (n, c, *size), weight (k_out, c / groups, *kernel).

    `Layer(name, n, c, h, w, k_out, ksize, stride, pad, groups)` is a square 2-d layer;
    `Layer.make` builds any other (1-d to 3-d, per-dim kernel, stride, padding, dilation).
    """

    name: str
    n: int
    c: int
    h: int
    w: int
    k_out: int
    ksize: int | tuple[int, ...]
    stride: int | tuple[int, ...] = 1
    pad: int | tuple[int, ...] = 0
    groups: int = 1
    dilation: int | tuple[int, ...] = 1
    #: the spatial input size when it is not (h, w): (L,) or (D, H, W)
    size_nd: tuple[int, ...] | None = None

    @classmethod
    def make(cls, name: str, n: int, c: int, size: Sequence[int], k_out: int,
             kernel: int | Sequence[int], stride: int | Sequence[int] = 1,
             pad: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1,
             groups: int = 1) -> Layer:
        size = tuple(int(v) for v in size)
        nd = len(size)
        square = nd == 2 and len({*_dims(kernel, 2)}) == 1
        simple = lambda v: v[0] if len(set(v)) == 1 else v
        return cls(name, n, c, size[-2] if nd >= 2 else 1, size[-1], k_out,
                   simple(_dims(kernel, nd)) if square or nd != 2 else _dims(kernel, nd),
                   simple(_dims(stride, nd)), simple(_dims(pad, nd)), groups,
                   simple(_dims(dilation, nd)), None if nd == 2 else size)

    @property
    def nd(self) -> int:
        return 2 if self.size_nd is None else len(self.size_nd)

    @property
    def size(self) -> tuple[int, ...]:
        return (self.h, self.w) if self.size_nd is None else self.size_nd

    @property
    def kernel(self) -> tuple[int, ...]:
        return _dims(self.ksize, self.nd)

    @property
    def strides(self) -> tuple[int, ...]:
        return _dims(self.stride, self.nd)

    @property
    def pads(self) -> tuple[int, ...]:
        return _dims(self.pad, self.nd)

    @property
    def dilations(self) -> tuple[int, ...]:
        return _dims(self.dilation, self.nd)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.n, self.c, *self.size)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.k_out, self.c // self.groups, *self.kernel)

    @property
    def out_size(self) -> tuple[int, ...]:
        return tuple((i + 2 * p - d * (k - 1) - 1) // s + 1 for i, k, s, p, d in
                     zip(self.size, self.kernel, self.strides, self.pads, self.dilations))

    @property
    def out_hw(self) -> tuple[int, ...]:
        """The output's last two spatial sizes (its only one for 1-d)."""
        return self.out_size[-2:]

    @property
    def flops(self) -> int:
        return (2 * self.n * self.k_out * math.prod(self.out_size) * (self.c // self.groups)
                * math.prod(self.kernel))

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.c

    @property
    def pointwise(self) -> bool:
        return (all(k == 1 for k in self.kernel) and all(s == 1 for s in self.strides)
                and all(p == 0 for p in self.pads))

    @property
    def input_bytes(self) -> int:
        """float32 bytes of the input."""
        return 4 * math.prod(self.input_shape)

    @property
    def column_bytes(self) -> int:
        """float32 bytes of the im2col matrix (C * prod(kernel) rows, one column per output)."""
        return 4 * self.n * self.c * math.prod(self.kernel) * math.prod(self.out_size)

    def conv_args(self) -> dict[str, Any]:
        """stride, padding, dilation, groups as keywords of clconv's and torch's convNd."""
        return {"stride": self.strides, "padding": self.pads, "dilation": self.dilations,
                "groups": self.groups}

    @property
    def spec(self) -> str:
        """The layer as --layer text (the short form when it says everything)."""
        if self.nd == 2 and isinstance(self.ksize, int) and isinstance(self.stride, int) and \
                isinstance(self.pad, int) and self.dilation == 1:
            g = f",{self.groups}" if self.groups != 1 else ""
            return (f"{self.n},{self.c},{self.h},{self.w},{self.k_out},{self.ksize},"
                    f"{self.stride},{self.pad}{g}")
        join = lambda v: "x".join(map(str, v)) if len(set(v)) > 1 else str(v[0])
        sizes = ",".join(f"{k}={v}" for k, v in zip(_SPATIAL_KEYS[self.nd], self.size))
        return (f"{CONV_NAMES[self.nd]}:N={self.n},C={self.c},{sizes},K={self.k_out},"
                f"k={join(self.kernel)},s={join(self.strides)},p={join(self.pads)},"
                f"d={join(self.dilations)},g={self.groups}")



_NAMED = re.compile(r"^(?:(?P<name>[^=:]*)=)?(?P<kind>conv[123]d):(?P<body>.*)$", re.DOTALL)


def parse_layer(text: str) -> Layer:
    """--layer text (see LAYER_HELP) -> Layer; ValueError saying what is wrong."""
    m = _NAMED.match(text.strip())
    layer = _parse_keyed(text, m) if m else _parse_short(text)
    if layer.groups < 1:
        raise ValueError(f"--layer {text!r}: groups g={layer.groups} must be at least 1")
    if layer.c % layer.groups or layer.k_out % layer.groups:
        raise ValueError(f"--layer {text!r}: C={layer.c} and K={layer.k_out} must divide by "
                         f"g={layer.groups}")
    if min(layer.out_size) < 1:
        raise ValueError(f"--layer {text!r}: the dilated kernel {layer.kernel} is larger than the "
                         f"padded input {tuple(i + 2 * p for i, p in zip(layer.size, layer.pads))}")
    return layer


def _parse_short(text: str) -> Layer:
    name, _, spec = text.rpartition("=")
    try:
        values = [int(v) for v in spec.split(",")]
    except ValueError:
        values = []
    if len(values) not in (8, 9) or min(values) < 0 or min(values[:7]) < 1:
        raise ValueError(f"--layer wants N,C,H,W,K,k,s,p[,g] (positive ints, p >= 0) or the "
                         f"conv2d:N=..,C=.. form, got {text!r}")
    return Layer(name or f"layer {spec}", *values)


def _parse_keyed(text: str, m: re.Match[str]) -> Layer:
    nd = int(m["kind"][4])
    spatial = _SPATIAL_KEYS[nd]
    values: dict[str, tuple[int, ...]] = {}
    for item in filter(None, (part.strip() for part in m["body"].split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in ("N", "C", "K", "k", "s", "p", "d", "g", *spatial):
            raise ValueError(f"--layer {text!r}: {item!r} is not KEY=VALUE with KEY one of N, C, "
                             f"{', '.join(spatial)}, K, k, s, p, d, g ({m['kind']})")
        try:
            parts = tuple(int(v) for v in value.strip().split("x"))
        except ValueError:
            raise ValueError(f"--layer {text!r}: {key}={value!r} is not an int"
                             + (" or ints joined by x" if key in "kspd" else "")) from None
        if len(parts) not in ((1, nd) if key in ("k", "s", "p", "d") else (1,)):
            raise ValueError(f"--layer {text!r}: {key}={value} must have 1"
                             + (f" or {nd} values" if key in "kspd" else " value"))
        if min(parts) < (0 if key == "p" else 1):
            raise ValueError(f"--layer {text!r}: {key}={value} must be "
                             + ("non-negative" if key == "p" else "positive"))
        if key in values:
            raise ValueError(f"--layer {text!r}: {key} is given twice")
        values[key] = parts
    missing = [k for k in ("C", *spatial, "K", "k") if k not in values]
    if missing:
        raise ValueError(f"--layer {text!r}: missing {', '.join(missing)} ({m['kind']} needs C, "
                         f"{', '.join(spatial)}, K and k)")
    one = lambda key, default: values.get(key, (default,))[0]
    many = lambda key, default: values.get(key, (default,))
    layer = Layer.make("", one("N", 1), one("C", 0), [values[k][0] for k in spatial], one("K", 0),
                       many("k", 1), many("s", 1), many("p", 0), many("d", 1), one("g", 1))
    name = m["name"].strip() if m["name"] else f"layer {layer.spec}"
    return dataclasses.replace(layer, name=name)

