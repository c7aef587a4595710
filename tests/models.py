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
from torch import nn

# ResNet-18, MobileNetV2, MobileNetV3-Small, EfficientNet-B0, DenseNet, ConvNeXt and `randomize`
# are the package's (benchmarks.first_use and benchmarks.whole_networks time them at full width);
# re-exported here so that the tests and the benchmarks use one definition.
from clconv.tools.networks import (  # noqa: F401 (re-exported)
    BasicBlock,
    ConvNeXt,
    ConvNeXtBlock,
    DenseBlock,
    DenseLayer,
    DenseNet,
    EfficientNetB0,
    InvertedResidual,
    LayerNorm2d,
    MBV3Block,
    MobileNetV2,
    MobileNetV3Small,
    ResNet,
    SqueezeExcitation,
    conv_bn,
    make_divisible,
    mbconv,
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
