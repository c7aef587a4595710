"""ResNet-18 and MobileNetV2 written with clconv's functional API, as a user following the README
would write them: BatchNorm folded into each convolution once (clconv.fold_batchnorm), the
weights uploaded once, the activation and the residual add fused into the convolutions
(`activation=`, `residual=`), every value a device array from the input's upload to the logits'
download. benchmarks.whole_networks times it as its 'functional' path (issue 20: whole networks
through the functional API); tests/test_bench.py checks it against torch.

    fn = functional_forward("resnet18", model)   # model: clconv.tools.networks.resnet18(...)
    logits = fn(x)                               # x: a CPU tensor (N, 3, H, W) -> a CPU tensor
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["functional_forward"]


def functional_forward(name: str, model: Any) -> Callable[[Any], Any]:
    """The eval-mode forward of clconv.tools.networks' `name` ('resnet18' or 'mobilenet_v2')
    model through clconv's functional ops on the current device."""
    import clconv

    dev = clconv.current_device()
    q = dev.queue
    import pyopencl.array as cla
    import torch

    def upload(a: np.ndarray) -> Any:
        return cla.to_device(q, np.ascontiguousarray(a, np.float32))

    def host(t: Any) -> np.ndarray | None:
        return None if t is None else t.detach().cpu().numpy()

    def folded(conv: Any, bn: Any) -> dict[str, Any]:
        """conv2d's arguments for conv -> bn: the folded weight and bias on the device."""
        w, b = clconv.fold_batchnorm(host(conv.weight), host(conv.bias), host(bn.running_mean),
                                     host(bn.running_var), host(bn.weight), host(bn.bias),
                                     bn.eps)
        return {"weight": upload(w), "bias": upload(b), "stride": conv.stride,
                "padding": conv.padding, "groups": conv.groups}

    def conv(x: Any, layer: dict[str, Any], **kw: Any) -> Any:
        return clconv.conv2d(x, layer["weight"], layer["bias"], stride=layer["stride"],
                             padding=layer["padding"], groups=layer["groups"], **kw)

    if name not in ("resnet18", "mobilenet_v2"):
        raise ValueError(f"no functional forward for {name!r}: 'resnet18' or 'mobilenet_v2'")
    head = model.fc if name == "resnet18" else model.classifier[1]
    fc = (upload(host(head.weight)), upload(host(head.bias)))

    if name == "resnet18":
        stem = folded(model.conv1, model.bn1)
        blocks = [(folded(b.conv1, b.bn1), folded(b.conv2, b.bn2),
                   None if b.downsample is None else folded(*b.downsample))
                  for stage in (model.layer1, model.layer2, model.layer3, model.layer4)
                  for b in stage]

        def features(x: Any) -> Any:
            y = clconv.max_pool2d(conv(x, stem, activation="relu"), 3, 2, 1)
            for first, second, down in blocks:
                h = conv(y, first, activation="relu")
                y = conv(h, second, activation="relu",
                         residual=y if down is None else conv(y, down))
            return y
    else:
        stem, *inverted, last = model.features
        # Each inverted residual: its conv -> bn (-> ReLU6) triples, then the linear 1x1 + bn.
        layers = []
        for block in inverted:
            mods = list(block.conv)
            steps = [(folded(s[0], s[1]), "relu6") for s in mods[:-2]]
            steps.append((folded(mods[-2], mods[-1]), None))
            layers.append((steps, block.use_res))
        stem_l, last_l = folded(stem[0], stem[1]), folded(last[0], last[1])

        def features(x: Any) -> Any:
            y = conv(x, stem_l, activation="relu6")
            for steps, use_res in layers:
                h = y
                for i, (layer, act) in enumerate(steps):
                    final = i == len(steps) - 1
                    h = conv(h, layer, activation=act,
                             residual=y if final and use_res else None)
                y = h
            return conv(y, last_l, activation="relu6")

    def forward(x: Any) -> Any:
        y = features(upload(x.numpy()))
        y = clconv.flatten(clconv.adaptive_avg_pool2d(y, 1), 1)
        return torch.from_numpy(clconv.linear(y, *fc).get())
    return forward
