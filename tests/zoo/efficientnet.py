"""EfficientNet-Lite0 written in plain torch (TensorFlow's edge variant of EfficientNet-B0).

Lite drops squeeze-excite, uses ReLU6 and keeps the stem (32) and head (1280) widths fixed:
MBConv blocks are MobileNetV2's inverted residuals with 3x3 or 5x5 depthwise kernels.
About 4.7 M parameters and 0.4 G multiply-accumulates at 224x224. No pretrained weights ship
on PyPI: `benchmarks.efficientnet_lite` sizes the BatchNorm statistics on real photos.
"""

from __future__ import annotations

from torch import nn

from tests.zoo.mobilenet import ConvBNReLU6, InvertedResidual, PooledClassifierNet

# expansion t, kernel k, output channels c, repeats n, first stride s (EfficientNet-B0's table)
_MBCONV_SETTING = (
    (1, 3, 16, 1, 1),
    (6, 3, 24, 2, 2),
    (6, 5, 40, 2, 2),
    (6, 3, 80, 3, 2),
    (6, 5, 112, 3, 1),
    (6, 5, 192, 4, 2),
    (6, 3, 320, 1, 1),
)


class EfficientNetLite0(PooledClassifierNet):
    """Nx3xHxW in, ``num_classes`` logits out."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        channels = 32
        features: list[nn.Module] = [ConvBNReLU6(3, channels, stride=2)]
        for t, k, c, n, s in _MBCONV_SETTING:
            for i in range(n):
                features.append(InvertedResidual(channels, c, s if i == 0 else 1, t, kernel=k))
                channels = c
        features.append(ConvBNReLU6(channels, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(1280, num_classes))
        self._init_weights()
