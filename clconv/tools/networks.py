"""ResNet-18, MobileNetV2, MobileNetV3-Small, EfficientNet-B0, DenseNet-BC and ConvNeXt written
from their papers' tables in torch (torchvision is not needed and no weights are downloaded), at
any width: benchmarks.first_use and benchmarks.whole_networks time them at full width, the tests
(tests/models.py, which adds the other families) compile them at small widths.

Constructors return an nn.Module in train mode with torch's default initialisation; the defaults
(width 0.25, 10 classes and the like) are the tests' small ones; `resnet18(1.0, 1000)`,
`MobileNetV2(1.0, 1000)`, `MobileNetV3Small(1.0, 1000)`, `EfficientNetB0(1.0, 1000)`,
`DenseNet((6, 12, 24, 16), 32, 64, 4, 1000)` (DenseNet-121) and
`ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), 1000)` (ConvNeXt-T) the papers' networks. Needs torch (clconv's optional dependency): import
this module only where torch is wanted.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BasicBlock", "ConvNeXt", "ConvNeXtBlock", "DenseBlock", "DenseLayer", "DenseNet",
           "EfficientNetB0", "InvertedResidual", "LayerNorm2d", "MBV3Block", "MobileNetV2",
           "MobileNetV3Small", "ResNet", "SqueezeExcitation", "conv_bn", "make_divisible",
           "mbconv", "randomize", "resnet18"]


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


# --- MobileNetV3-Small (Howard et al. 2019, Table 2) -----------------------------------------------

class SqueezeExcitation(nn.Module):
    """avg pool -> 1x1 conv -> act -> 1x1 conv -> gate activation -> x * scale."""

    def __init__(self, c: int, squeeze: int, act: type = nn.ReLU,
                 gate: type = nn.Hardsigmoid) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.act = act()
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))
        return x * s


class MBV3Block(nn.Module):
    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: type,
                 stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(conv_bn(cin, exp, 1, act=act))
        layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act))
        if se:
            layers.append(SqueezeExcitation(exp, make_divisible(exp // 4)))
        layers.append(conv_bn(exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y + x if self.use_res else y


class MobileNetV3Small(nn.Module):
    RE, HS = nn.ReLU, nn.Hardswish
    TABLE = ((3, 16, 16, True, RE, 2), (3, 72, 24, False, RE, 2), (3, 88, 24, False, RE, 1),
             (5, 96, 40, True, HS, 2), (5, 240, 40, True, HS, 1), (5, 240, 40, True, HS, 1),
             (5, 120, 48, True, HS, 1), (5, 144, 48, True, HS, 1), (5, 288, 96, True, HS, 2),
             (5, 576, 96, True, HS, 1), (5, 576, 96, True, HS, 1))  # k, exp, out, SE, NL, s

    def __init__(self, width: float = 0.5, num_classes: int = 10, head: int = 256) -> None:
        super().__init__()
        cin = make_divisible(16 * width)
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.Hardswish)]
        for k, exp, out, se, act, s in self.TABLE:
            e, c = make_divisible(exp * width), make_divisible(out * width)
            layers.append(MBV3Block(cin, k, e, c, se, act, s))
            cin = c
        last = make_divisible(576 * width)
        layers.append(conv_bn(cin, last, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last, head), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


# --- EfficientNet-B0 (Tan & Le 2019, Table 1) ------------------------------------------------------

def mbconv(cin: int, cout: int, k: int, stride: int, expand: int) -> InvertedResidual:
    """EfficientNet's block: MobileNetV2's with a k x k depthwise, SiLU and a squeeze-excitation
    (to cin / 4 channels) after the depthwise (stochastic depth is the identity in eval mode)."""
    return InvertedResidual(cin, cout, stride, expand, k, nn.SiLU,
                            lambda c: SqueezeExcitation(c, max(1, cin // 4), nn.SiLU, nn.Sigmoid))


class EfficientNetB0(nn.Module):
    TABLE = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))  # expand, k, s, c, n

    def __init__(self, width: float = 0.25, num_classes: int = 10) -> None:
        super().__init__()
        cin = make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.SiLU)]
        for e, k, s, c, n in self.TABLE:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(mbconv(cin, cout, k, s if i == 0 else 1, e))
                cin = cout
        last = make_divisible(1280 * width)
        layers.append(conv_bn(cin, last, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --- DenseNet-BC (Huang et al. 2017, Table 1) ------------------------------------------------------

class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, n: int, cin: int, growth: int, bn_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size)
                                    for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    """DenseNet-BC: blocks (6, 12, 24, 16) with growth 32 is DenseNet-121."""

    def __init__(self, blocks: tuple[int, ...] = (2, 3, 4, 3), growth: int = 8, init: int = 16,
                 bn_size: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, init, 7, 2, 3, bias=False), nn.BatchNorm2d(init),
                                   nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        c = init
        for i, n in enumerate(blocks):
            layers.append(DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(blocks) - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1,
                                                                               bias=False),
                           nn.AvgPool2d(2, 2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# --- ConvNeXt (Liu et al. 2022, Table 9: ConvNeXt-T depths (3, 3, 9, 3), dims (96, ..., 768)) -------

class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm (over C of (N, C, H, W)), written as torchvision writes it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dw 7x7 -> (channels-last) LayerNorm -> Linear 4C -> GELU -> Linear C -> layer scale -> + x."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        y = (self.gamma * y).permute(0, 3, 1, 2)
        return x + y  # drop path is the identity in eval mode


class ConvNeXt(nn.Module):
    def __init__(self, depths: tuple[int, ...] = (1, 1, 2, 1),
                 dims: tuple[int, ...] = (16, 32, 64, 128), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        stages: list[nn.Module] = []
        for i, (d, dim) in enumerate(zip(depths, dims)):
            if i:
                stages.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6),
                                            nn.Conv2d(dims[i - 1], dim, 2, 2)))
            stages += [ConvNeXtBlock(dim) for _ in range(d)]
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean([-2, -1])))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, random layer scales (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                if m.running_mean is not None:  # (none without track_running_stats)
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
