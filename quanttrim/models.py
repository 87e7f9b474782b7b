"""Small image classifiers for the demo and for experiments: a BN-ResNet and a depthwise MobileNet-style net.

Both are plain Conv2d/BatchNorm2d/Linear trees, so Quant-Trim's ``prepare`` wraps them like any user model and
the ONNX exporter folds BN into the convs (the tensors a backend quantizes).
"""

from __future__ import annotations

import torch
from torch import nn


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet with three stages (widths 16/32/64 by default): ~78k parameters at 1×14×14 input."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, widths: tuple[int, int, int] = (16, 32, 64)
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())
        self.layer1 = _BasicBlock(w1, w1, 1)
        self.layer2 = _BasicBlock(w1, w2, 2)
        self.layer3 = _BasicBlock(w2, w3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _dw_separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU6(),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class SmallMobileNet(nn.Module):
    """Depthwise-separable stack (MobileNet-v1 style, ReLU6): ~53k parameters at 1×14×14 input."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU6(),
            _dw_separable(32, 64, 1),
            _dw_separable(64, 96, 2),
            _dw_separable(96, 128, 2),
            _dw_separable(128, 192, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(192, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class _InvertedResidual(nn.Module):
    """MobileNet-v2 block: 1×1 expand, 3×3 depthwise, 1×1 linear projection; identity shortcut when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.block = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2S2(nn.Module):
    """Depthwise inverted-residual net for 28×28 input (stride-2 stem and first block, expansion 2): ~36k parameters.

    Not the demo's architecture: the Quant-Trim study (examples/quanttrim_study.py) uses it as its depthwise net.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(
            _InvertedResidual(16, 24, 2, 2),
            _InvertedResidual(24, 24, 1, 2),
            _InvertedResidual(24, 32, 1, 2),
            _InvertedResidual(32, 32, 1, 2),
            _InvertedResidual(32, 48, 2, 2),
            _InvertedResidual(48, 48, 1, 2),
        )
        self.head = nn.Sequential(nn.Conv2d(48, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


class ResNetS2(SmallResNet):
    """The BN-ResNet with a stride-2 stem for 28×28 input (widths 16/32/48): the study's residual net."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(num_classes, in_channels, widths=(16, 32, 48))
        self.stem[0] = nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False)


ARCHITECTURES = {
    "resnet": SmallResNet,
    "mobilenet": SmallMobileNet,
    "mobilenetv2-s2": MobileNetV2S2,
    "resnet-s2": ResNetS2,
}


def build_model(arch: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Build one of :data:`ARCHITECTURES` by name."""
    try:
        cls = ARCHITECTURES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}") from None
    return cls(num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
