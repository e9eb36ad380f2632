"""Small convolutional networks with the structures an optimizer must handle.

Both nets contain Conv+BN+ReLU, a residual Add, a Concat of two branches and a depthwise
Conv; ``ConvBnReluNet`` adds a squeeze-excite block and a pooled Gemm head, ``DigitsResNet``
(the bundled ``examples/digits_cnn.onnx``) flattens a 4x4 map straight into its Gemm head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tests.zoo.export import export_onnx, randomize_norms, seeded


def conv_bn_relu(
    c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """Two 3x3 Conv+BN with an identity shortcut: ``relu(x + bn(conv(relu(bn(conv(x))))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(self.conv1(x))))


class TwoBranch(nn.Module):
    """A 1x1 branch and a depthwise 3x3 -> pointwise branch, concatenated (2x channels out)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pointwise = conv_bn_relu(channels, channels, 1)
        self.depthwise = nn.Sequential(
            conv_bn_relu(channels, channels, 3, groups=channels),
            conv_bn_relu(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.pointwise(x), self.depthwise(x)], dim=1)


class SqueezeExcite(nn.Module):
    """GlobalAvgPool -> Conv -> ReLU -> Conv -> Sigmoid, multiplied back onto the input."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // reduction, 1)
        self.expand = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = nn.functional.adaptive_avg_pool2d(x, 1)
        scale = torch.sigmoid(self.expand(torch.relu(self.reduce(scale))))
        return x * scale


class ConvBnReluNet(nn.Module):
    """Input 1x3x32x32 -> ``num_classes`` logits; BN running statistics randomized by ``seed``."""

    def __init__(self, num_classes: int = 10, width: int = 16, *, seed: int = 0) -> None:
        super().__init__()
        with seeded(seed):
            self.stem = conv_bn_relu(3, width)
            self.res = ResidualBlock(width)
            self.branches = TwoBranch(width)
            self.down = conv_bn_relu(2 * width, 2 * width, stride=2)
            self.se = SqueezeExcite(2 * width)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2 * width, num_classes)
        randomize_norms(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.down(self.branches(self.res(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


class DigitsResNet(nn.Module):
    """Input Nx1x8x8 digit images in [0, 1] -> 10 logits; channels ``width`` and ``2 * width``."""

    def __init__(self, width: int = 32, num_classes: int = 10, *, seed: int = 0) -> None:
        super().__init__()
        with seeded(seed):
            self.stem = conv_bn_relu(1, width)
            self.res = ResidualBlock(width)
            self.branches = TwoBranch(width)
            self.down = conv_bn_relu(2 * width, 2 * width, stride=2)
            self.fc = nn.Linear(2 * width * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.branches(self.res(self.stem(x))))
        return self.fc(torch.flatten(x, 1))


def make_convbnrelu_onnx(path: str | Path, seed: int = 0) -> Path:
    """Export an untrained ``ConvBnReluNet`` (input "input" 1x3x32x32, output "logits")."""
    model = ConvBnReluNet(seed=seed)
    return export_onnx(
        model,
        (torch.zeros(1, 3, 32, 32),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )


def make_digits_cnn_onnx(path: str | Path, seed: int = 0) -> Path:
    """Export an untrained ``DigitsResNet`` with randomized norms (input "input" Nx1x8x8)."""
    model = randomize_norms(DigitsResNet(seed=seed), seed)
    return export_onnx(
        model,
        (torch.zeros(1, 1, 8, 8),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
