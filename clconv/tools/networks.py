"""ResNet-18 and MobileNetV2 written from their papers' tables in torch (torchvision is not needed
and no weights are downloaded), at any width: benchmarks.first_use times them at full width, the
tests (tests/models.py, which adds the other families) compile them at small widths.

Constructors return an nn.Module in train mode with torch's default initialisation; the defaults
(width 0.25, 10 classes) are the tests' small ones, `resnet18(1.0, 1000)` and
`MobileNetV2(1.0, 1000)` the papers' networks. Needs torch (clconv's optional dependency): import
this module only where torch is wanted.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "InvertedResidual", "MobileNetV2", "ResNet", "conv_bn", "make_divisible",
           "randomize", "resnet18"]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of `divisor`, not below 90% of v (MobileNet's rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
            act: type | None = nn.ReLU, nd: int = 2) -> nn.Sequential:
    """Convolution ('same' padding for odd k, no bias) + BatchNorm (+ `act`), in 1, 2 or 3-d."""
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1]
    bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[nd - 1]
    layers: list[nn.Module] = [conv(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               bn(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --- ResNet (He et al. 2016, Table 1) --------------------------------------------------------

class BasicBlock(nn.Module):
    """ResNet-18/34's block: two 3x3 convs, a 1x1 projection where the shape changes."""
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1,
                 base_width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet: 7x7/2 stem + 3x3/2 max pool, four stages (64, 128, 256, 512 planes x width), global
    average pool, fc. layers (2, 2, 2, 2) with BasicBlock is ResNet-18, (3, 4, 6, 3) with
    Bottleneck ResNet-50; groups/base_width make ResNeXt (32x4d: groups 32, base_width 4)."""

    def __init__(self, block: type, layers: tuple[int, ...], width: float = 1.0,
                 num_classes: int = 10, groups: int = 1, base_width: int = 64) -> None:
        super().__init__()
        c = int(64 * width)
        self.conv1 = nn.Conv2d(3, c, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        cin = c
        for i, n in enumerate(layers):
            planes = int(64 * width) * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if j == 0 and i > 0 else 1, groups,
                                    base_width))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(width: float = 0.25, num_classes: int = 10) -> ResNet:
    """ResNet-18 (20 convolutions); resnet18(1.0, 1000) is the paper's."""
    return ResNet(BasicBlock, (2, 2, 2, 2), width, num_classes)


# --- MobileNetV2 (Sandler et al. 2018, Table 2) ---------------------------------------------------

class InvertedResidual(nn.Module):
    """1x1 expansion by t (ReLU6), 3x3 depthwise (ReLU6), linear 1x1; residual at stride 1.

    `k`, `act` and `se` (a squeeze-excitation module of the hidden channels, placed after the
    depthwise) make it EfficientNet's MBConv (tests/models.py)."""

    def __init__(self, cin: int, cout: int, stride: int, t: int, k: int = 3,
                 act: type = nn.ReLU6, se: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        hidden = cin * t
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if t != 1:
            layers.append(conv_bn(cin, hidden, 1, act=act))
        layers.append(conv_bn(hidden, hidden, k, stride, groups=hidden, act=act))
        if se is not None:
            layers.append(se(hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (52 convolutions, 17 depthwise); MobileNetV2(1.0, 1000) is the paper's."""

    TABLE = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))  # t, c, n, s

    def __init__(self, width: float = 0.25, num_classes: int = 10) -> None:
        super().__init__()
        cin = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in self.TABLE:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(torch.flatten(x, 1))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, random layer scales (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.2)
            elif isinstance(m, (nn.LayerNorm,)):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if isinstance(getattr(m, "gamma", None), nn.Parameter):
                m.gamma.copy_(torch.rand(m.gamma.shape, generator=g) + 0.5)
    return model
