"""The fair method's machinery (issue 20), shared by benchmarks.network_layers, gradients,
whole_networks and call_costs.

Each side (torch, clconv, or a path of one) runs in its own warm worker process (torch's OpenMP
workers spin for a few ms after each call and would slow a PoCL launch on the same cores, so the
two never share a process). A worker prints one JSON header line once warm, then answers each
request line with one JSON line (a block's time per call, or what the benchmark asks for). The
parent alternates blocks among the workers with a pause at each hand-over, several rounds, and
takes the median over the rounds. Also here: the two networks' distinct convolutions
(network_layers, gradients), the header's command line and the geometric-mean summary.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# (name, (C_in, H, W, C_out, k, stride, padding, groups)): N is filled in from --batch; or
# (name, (N, C_in, ..., groups)), 9 numbers, for a layer whose set fixes its batch (`batched`).
Layer = tuple[str, tuple[int, ...]]


def resnet18() -> list[Layer]:
    """ResNet-18's distinct convolutions at 224x224 (torchvision's layout)."""
    layers = [("r18.conv1 3-64 7x7 s2", (3, 224, 224, 64, 7, 2, 3, 1))]
    size, cin = 56, 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        if stride == 2:
            layers.append((f"r18.{cin}-{cout} 3x3 s2 @{size}", (cin, size, size, cout, 3, 2, 1, 1)))
            layers.append((f"r18.ds {cin}-{cout} 1x1 s2 @{size}",
                           (cin, size, size, cout, 1, 2, 0, 1)))
            size //= 2
        layers.append((f"r18.{cout} 3x3 @{size}", (cout, size, size, cout, 3, 1, 1, 1)))
        cin = cout
    return layers


def mobilenet_v2() -> list[Layer]:
    """MobileNetV2's distinct convolutions at 224x224 (torchvision's inverted residuals)."""
    layers = [("mb2.stem 3-32 3x3 s2", (3, 224, 224, 32, 3, 2, 1, 1))]
    size, cin = 112, 32
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            if t != 1:
                layers.append((f"mb2.pw {cin}-{hidden} @{size}",
                               (cin, size, size, hidden, 1, 1, 0, 1)))
            layers.append((f"mb2.dw {hidden} s{stride} @{size}",
                           (hidden, size, size, hidden, 3, stride, 1, hidden)))
            size = size // stride
            layers.append((f"mb2.pw {hidden}-{c} @{size}", (hidden, size, size, c, 1, 1, 0, 1)))
            cin = c
    layers.append((f"mb2.pw {cin}-1280 @{size}", (cin, size, size, 1280, 1, 1, 0, 1)))
    return layers


def resnet50() -> list[Layer]:
    """ResNet-50's distinct convolutions at 224x224 (torchvision's v1.5 bottlenecks: the stride on
    the 3x3), its stem ResNet-18's."""
    layers: list[Layer] = []
    size, cin = 56, 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            out = size // s
            convs = [(f"r50.{cin}-{planes} 1x1 @{size}", (cin, size, size, planes, 1, 1, 0, 1)),
                     (f"r50.{planes} 3x3{f' s{s}' if s > 1 else ''} @{size}",
                      (planes, size, size, planes, 3, s, 1, 1)),
                     (f"r50.{planes}-{4 * planes} 1x1 @{out}",
                      (planes, out, out, 4 * planes, 1, 1, 0, 1))]
            if i == 0:
                convs.append((f"r50.ds {cin}-{4 * planes} 1x1{f' s{s}' if s > 1 else ''} @{size}",
                              (cin, size, size, 4 * planes, 1, s, 0, 1)))
            for name, dims in convs:  # (each convolution once, under its first name)
                if all(dims != other for _, other in layers):
                    layers.append((name, dims))
            size, cin = out, 4 * planes
    return layers


def efficientnet_b0() -> list[Layer]:
    """EfficientNet-B0's distinct convolutions at 224x224 (Tan & Le 2019, Table 1: MBConv blocks
    with 3x3 and 5x5 depthwise layers; the squeeze-excitation's 1x1 layers on 1x1 are left out)."""
    layers = [("eb0.stem 3-32 3x3 s2", (3, 224, 224, 32, 3, 2, 1, 1))]
    size, cin = 112, 32
    for t, k, s, c, n in ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)):
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            convs = []
            if t != 1:
                convs.append((f"eb0.pw {cin}-{hidden} @{size}",
                              (cin, size, size, hidden, 1, 1, 0, 1)))
            convs.append((f"eb0.dw {hidden} {k}x{k} s{stride} @{size}",
                          (hidden, size, size, hidden, k, stride, k // 2, hidden)))
            out = size // stride
            convs.append((f"eb0.pw {hidden}-{c} @{out}", (hidden, out, out, c, 1, 1, 0, 1)))
            for name, dims in convs:  # (each convolution once, under its first name)
                if all(dims != other for _, other in layers):
                    layers.append((name, dims))
            size, cin = out, c
    layers.append((f"eb0.pw {cin}-1280 @{size}", (cin, size, size, 1280, 1, 1, 0, 1)))
    return layers


def classic() -> list[Layer]:
    """The classic bench's six layers (benchmarks.bench.LAYERS: AlexNet, VGG16, ResNet-50, a
    MobileNet depthwise layer), each at its own batch size, whatever --batch says."""
    from .bench import LAYERS

    return [(f"classic.{layer.name}", (layer.n, layer.c, layer.h, layer.w, layer.k_out,
                                       layer.ksize, layer.stride, layer.pad, layer.groups))
            for layer in LAYERS]


def traced(net: str, prefix: str) -> list[Layer]:
    """The distinct convolutions of benchmarks.whole_networks' `net` (clconv.tools.networks, full
    width) as its forward calls them on one 224x224 image, named `prefix`.kind: each Conv2d's
    input size and arguments, and each Linear on a channels-last (N, H, W, C) input (ConvNeXt's
    blocks) as the 1x1 convolution `convert` runs it as. Left out: layers on one position (the
    squeeze-excitation blocks' 1x1 layers, which run as blocks) and the classifier."""
    import torch
    from torch import nn

    from .whole_networks import build

    model = build(net)
    found: list[Layer] = []

    def name_of(c: int, h: int, co: int, k: int, s: int, g: int) -> str:
        at = f" s{s}" if s > 1 else ""
        if g > 1 and g == c == co:
            return f"{prefix}.dw {c} {k}x{k}{at} @{h}"
        if not found and c == 3:
            return f"{prefix}.stem {c}-{co} {k}x{k}{at}"
        groups = f" g{g}" if g > 1 else ""
        if k == 1:
            return f"{prefix}.pw {c}-{co}{at}{groups} @{h}"
        return f"{prefix}.{c}-{co} {k}x{k}{at}{groups} @{h}"

    def note(dims: tuple[int, ...]) -> None:
        c, h, w, co, k, s, p, g = dims
        if h * w > 1 and all(dims != other for _, other in found):
            found.append((name_of(c, h, co, k, s, g), dims))

    def conv_hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if len(set(m.kernel_size)) == len(set(m.stride)) == len(set(m.padding)) == 1 and \
                m.dilation == (1, 1):  # (square, as the sets' layers are)
            _, c, h, w = inputs[0].shape
            note((c, h, w, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
                  m.groups))

    def linear_hook(m: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if inputs[0].dim() == 4:  # (N, H, W, C): channels-last
            _, h, w, c = inputs[0].shape
            note((c, h, w, m.out_features, 1, 1, 0, 1))

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules()
             if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules()
              if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 224, 224))
    for hook in hooks:
        hook.remove()
    return found


NETS = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2, "resnet50": resnet50,
        "efficientnet_b0": efficientnet_b0, "classic": classic,
        "mobilenet_v3_small": lambda: traced("mobilenet_v3_small", "mb3s"),
        "densenet121": lambda: traced("densenet121", "d121"),
        "convnext_t": lambda: traced("convnext_t", "cnx")}


def batched(named: Sequence[Layer], batch: int) -> list[tuple[int, ...]]:
    """(N, C_in, H, W, C_out, k, stride, padding, groups) of each layer: N = `batch` unless the
    layer's set fixes it."""
    return [tuple(dims) if len(dims) == 9 else (batch, *dims) for _, dims in named]


def select_layers(nets: str, only: str = "") -> list[Layer]:
    """The distinct layers of the comma-separated `nets` (first name wins), keeping those whose
    name contains one of the comma-separated words of `only` (all when empty)."""
    named: list[Layer] = []
    for net in nets.split(","):
        for name, dims in NETS[net]():
            if all(name != other for other, _ in named):
                named.append((name, dims))
    if only:
        words = only.split(",")
        named = [(n, d) for n, d in named if any(w in n for w in words)]
    return named


def command_line(relative: bool = False) -> str:
    """The header's first line: the interpreter (its name, or its relative path) and argv, with
    `-m module` for a module run that way."""
    exe = os.path.relpath(sys.executable) if relative else os.path.basename(sys.executable)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = ["-m", spec.name] if spec is not None else sys.argv[:1]
    return "command: " + " ".join([exe, *program, *sys.argv[1:]])


def _worker_env(kind: str, threads: int, cache_dir: str | None) -> dict[str, str]:
    """A worker's environment: torch's thread count, or clconv's cache folder (Worker.module)."""
    from . import child_env

    env = child_env()
    if kind == "torch":
        env["OMP_NUM_THREADS"] = str(threads)
    elif cache_dir is not None:
        env["CLCONV_CACHE_DIR"] = cache_dir
    return env


def serve(run: Callable[[], object]) -> int:
    """A worker's main: `run()`, ended quietly when the terminal's Ctrl-C (which reaches the whole
    process group, the parent and its workers) interrupts it (status 130), or when its parent
    has gone and its answer finds no reader (status 1): the parent alone reports."""
    try:
        run()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the exit's flush)
        return 1
    return 0


class Worker:
    """A warm process answering one JSON line per request line; `header` is its first line."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)
        self.header = self.read()

    @classmethod
    def module(cls, name: str, kind: str, threads: int, *args: str,
               cache_dir: str | None = None) -> Worker:
        """`python -m name --worker kind threads *args`: a torch worker with
        OMP_NUM_THREADS=threads, a clconv one with its cache in `cache_dir` (when given: 'auto'
        measures as on a new machine); this clconv and these benchmarks on PYTHONPATH."""
        return cls([sys.executable, "-m", name, "--worker", kind, str(threads), *args],
                   _worker_env(kind, threads, cache_dir))

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("a benchmark worker exited early (see its error above)")
        return json.loads(line)

    def ask(self, *cmd: object) -> Any:
        """Sends `cmd` as one JSON list; returns the worker's answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def alternate(rounds: int, pause: float, blocks: Sequence[Callable[[], T]]) -> list[list[T]]:
    """`rounds` rounds of running each of `blocks` in turn, sleeping `pause` s after each (the
    hand-over): per block, its results in round order."""
    results: list[list[T]] = [[] for _ in blocks]
    for _ in range(rounds):
        for block, out in zip(blocks, results):
            out.append(block())
            time.sleep(pause)
    return results


def print_geometric_means(ratios: dict[str, list[float]]) -> None:
    """One line per key with ratios: their geometric mean, count, min and max (torch / clconv)."""
    for key, r in ratios.items():
        if r:
            geo = math.exp(sum(math.log(v) for v in r) / len(r))
            print(f"geometric mean torch/clconv ({key}): {geo:.2f}x over {len(r)} layers "
                  f"(min {min(r):.2f}x, max {max(r):.2f}x)")
