"""Test networks for clconv.torch.compile, written from their papers' tables (torchvision is not
needed and no weights are downloaded), at small widths so that tests run fast; the layer pattern of
each family (block structure, activations, SE gates, concatenations, layer norms) is the paper's.

Every constructor takes `width` (channel multiplier) and returns an nn.Module in train mode with
torch's default initialisation; `randomize(model, seed)` gives BatchNorm running statistics, affine
parameters and layer scales random values, so that folding is actually tested.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ResNet-18, MobileNetV2 and `randomize` are the package's (benchmarks.first_use and
# benchmarks.whole_networks time them at full width); re-exported here so that the tests and the
# benchmarks use one definition.
from clconv.tools.networks import (  # noqa: F401 (re-exported)
    BasicBlock,
    InvertedResidual,
    MobileNetV2,
    ResNet,
    conv_bn,
    make_divisible,
    randomize,
    resnet18,
)

# --- ResNet / ResNeXt (He et al. 2016, Table 1; Xie et al. 2017, Table 1) ---------------------------

# ResNet and its BasicBlock (ResNet-18) are clconv.tools.networks'; the bottleneck makes ResNet-50.

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1,
                 base_width: int = 64) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def resnet50(width: float = 0.25, num_classes: int = 10, layers: tuple[int, ...] = (3, 4, 6, 3)
             ) -> ResNet:
    return ResNet(Bottleneck, layers, width, num_classes)


def resnext50_32x4d(width: float = 0.25, num_classes: int = 10,
                    layers: tuple[int, ...] = (3, 4, 6, 3), groups: int = 32,
                    base_width: int = 4) -> ResNet:
    return ResNet(Bottleneck, layers, width, num_classes, groups=groups, base_width=base_width)


# --- VGG (Simonyan & Zisserman 2015, Table 1, config A with BN) ------------------------------------

class VGG(nn.Module):
    CFG_A = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, width: float = 0.125, num_classes: int = 10, pool: int = 2,
                 hidden: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for v in self.CFG_A:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                c = int(v * width)
                layers += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(True)]
                cin = c
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(cin * pool * pool, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        x = x.view(x.size(0), -1)
        return self.classifier(x)


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


# --- Temporal convolutional network (Bai et al. 2018, Fig. 1: dilated causal residual blocks) -------

class Chomp1d(nn.Module):
    def __init__(self, chomp: int) -> None:
        super().__init__()
        self.chomp = chomp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :-self.chomp].contiguous()


class TemporalBlock(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, dilation: int, dropout: float = 0.2) -> None:
        super().__init__()
        pad = (k - 1) * dilation
        self.net = nn.Sequential(
            nn.Conv1d(cin, cout, k, padding=pad, dilation=dilation), Chomp1d(pad), nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv1d(cout, cout, k, padding=pad, dilation=dilation), Chomp1d(pad), nn.ReLU(),
            nn.Dropout(dropout))
        self.downsample = nn.Conv1d(cin, cout, 1) if cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(self.net(x) + res)


class TCN(nn.Module):
    def __init__(self, cin: int = 4, channels: tuple[int, ...] = (16, 16, 32, 32), k: int = 3,
                 num_classes: int = 5) -> None:
        super().__init__()
        layers = []
        for i, c in enumerate(channels):
            layers.append(TemporalBlock(cin, c, k, 2 ** i))
            cin = c
        self.network = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.network(x)
        return self.linear(y[:, :, -1])


class DilatedTCN(nn.Module):
    """A non-causal variant (symmetric 'same' padding: no chomp), BN in the blocks, pooled head."""

    def __init__(self, cin: int = 4, channels: int = 16, depth: int = 4,
                 num_classes: int = 5) -> None:
        super().__init__()
        self.inp = conv_bn(cin, channels, 3, nd=1)
        self.blocks = nn.ModuleList()
        for i in range(depth):
            d = 2 ** i
            self.blocks.append(nn.Sequential(
                nn.Conv1d(channels, channels, 3, padding=d, dilation=d, bias=False),
                nn.BatchNorm1d(channels), nn.ReLU(),
                nn.Conv1d(channels, channels, 3, padding=d, dilation=d, bias=False),
                nn.BatchNorm1d(channels)))
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = self.relu(block(x) + x)
        return self.fc(torch.flatten(self.pool(x), 1))


# --- 3-d encoder-decoder (3D U-Net, Cicek et al. 2016, Fig. 1) -------------------------------------

def double_conv3d(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout // 2 if cout > cin else cout, 3, nd=3),
                         conv_bn(cout // 2 if cout > cin else cout, cout, 3, nd=3))


class UNet3d(nn.Module):
    def __init__(self, cin: int = 1, base: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.enc1 = double_conv3d(cin, base)
        self.enc2 = double_conv3d(base, 2 * base)
        self.bottom = double_conv3d(2 * base, 4 * base)
        self.pool = nn.MaxPool3d(2, 2)
        self.up2 = nn.ConvTranspose3d(4 * base, 4 * base, 2, 2)
        self.dec2 = double_conv3d(6 * base, 2 * base)
        self.up1 = nn.ConvTranspose3d(2 * base, 2 * base, 2, 2)
        self.dec1 = double_conv3d(3 * base, base)
        self.out = nn.Conv3d(base, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        b = self.bottom(self.pool(e2))
        d2 = self.dec2(torch.cat([e2, self.up2(b)], dim=1))
        d1 = self.dec1(torch.cat([e1, self.up1(d2)], dim=1))
        return self.out(d1)


# --- DCGAN generator (Radford et al. 2016, Fig. 1) -------------------------------------------------

class DCGANGenerator(nn.Module):
    def __init__(self, nz: int = 16, ngf: int = 8, nc: int = 3, size: int = 32) -> None:
        super().__init__()
        n_up = int(math.log2(size)) - 3  # 4x4 from the latent, then doubling to `size`
        c = ngf * 2 ** n_up
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, c, 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(c), nn.ReLU(True)]
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2),
                       nn.ReLU(True)]
            c //= 2
        layers += [nn.ConvTranspose2d(c, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


#: name -> (constructor, input shape at batch 1) for the tests and the benchmark.
FAMILIES = {
    "resnet18": (lambda: resnet18(0.25), (1, 3, 64, 64)),
    "resnet50": (lambda: resnet50(0.125, layers=(1, 2, 2, 1)), (1, 3, 64, 64)),
    "resnext": (lambda: resnext50_32x4d(0.25, layers=(1, 1, 1, 1), groups=4, base_width=8),
                (1, 3, 64, 64)),
    "vgg": (lambda: VGG(0.125), (1, 3, 64, 64)),
    "mobilenet_v2": (lambda: MobileNetV2(0.25), (1, 3, 64, 64)),
    "mobilenet_v3": (lambda: MobileNetV3Small(0.5), (1, 3, 64, 64)),
    "efficientnet_b0": (lambda: EfficientNetB0(0.25), (1, 3, 64, 64)),
    "densenet": (lambda: DenseNet(), (1, 3, 64, 64)),
    "convnext": (lambda: ConvNeXt(), (1, 3, 64, 64)),
    "tcn": (lambda: TCN(), (1, 4, 64)),
    "dilated_tcn": (lambda: DilatedTCN(), (1, 4, 64)),
    "unet3d": (lambda: UNet3d(), (1, 1, 16, 16, 16)),
    "dcgan": (lambda: DCGANGenerator(), (1, 16, 1, 1)),
}
