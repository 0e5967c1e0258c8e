"""Networks with the two LLP outputs: class logits and an L2-normalised embedding."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn

from llp_kernels import normalize_rows

from .torchvision_fallback import torchvision


class TwoHeadNet(nn.Module):
    """A trunk, a classification head and an embedding head (paper fig. 1).

    forward(x) -> (embedding [B, embed_dim] with unit rows, logits [B, num_classes]).
    """

    def __init__(self, trunk: nn.Module, features: int, num_classes: int, embed_dim: int = 128):
        super().__init__()
        self.trunk = trunk
        self.classifier = nn.Linear(features, num_classes)
        self.embedding = nn.Linear(features, embed_dim)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        h = self.trunk(x)
        return normalize_rows(self.embedding(h)), self.classifier(h)


def small_convnet(num_classes: int, embed_dim: int = 128, width: int = 32, channels: int = 1) -> TwoHeadNet:
    """For small images (8x8 digits; a few dozen pixels): three 3x3 conv blocks, global
    average pooling."""
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    trunk = nn.Sequential(*block(channels, width), *block(width, 2 * width), nn.MaxPool2d(2),
                          *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return TwoHeadNet(trunk, 4 * width, num_classes, embed_dim)


def mlp(in_features: int, num_classes: int, embed_dim: int = 128, width: int = 512) -> TwoHeadNet:
    """For precomputed feature vectors [B, in_features]: two hidden layers with batch norm."""
    trunk = nn.Sequential(nn.Linear(in_features, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(),
                          nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU())
    return TwoHeadNet(trunk, width, num_classes, embed_dim)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18Trunk(nn.Module):
    """ResNet-18 up to global average pooling: [B, 3, H, W] -> [B, 512]. Parameter names
    follow torchvision's resnet18, so its weights load into ``trunk``. ``small_images``
    swaps the 7x7/2 stem and max-pool for one 3x3/1 convolution (images of 32-64 px)."""

    def __init__(self, small_images: bool = False):
        super().__init__()
        if small_images:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        widths = [64, 128, 256, 512]
        for i, width in enumerate(widths):
            cin = widths[max(i - 1, 0)]
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, width, stride),
                                                         BasicBlock(width, width, 1)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


def resnet18_trunk(small_images: bool) -> nn.Module:
    """ResNet-18 up to global average pooling, [B, 3, H, W] -> [B, 512]: torchvision's
    ``resnet18`` when it imports, else ``ResNet18Trunk``; with ``small_images`` (under
    96 px) a 3x3/1 stem and no max-pool."""
    tv = torchvision()
    if tv is None:
        return ResNet18Trunk(small_images)
    trunk = tv.models.resnet18(weights=None)
    trunk.fc = nn.Identity()
    if small_images:
        trunk.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        trunk.maxpool = nn.Identity()
    return trunk


def resnet18(num_classes: int, embed_dim: int = 128, image_size: int = 224) -> TwoHeadNet:
    """ResNet-18 (torchvision's when it imports, else ``ResNet18Trunk``) with both heads."""
    return TwoHeadNet(resnet18_trunk(small_images=image_size < 96), 512, num_classes, embed_dim)


ARCHS = ("auto", "resnet18", "convnet")


def build_model(kind: str, input_shape: tuple, num_classes: int, arch: str = "auto") -> TwoHeadNet:
    """The network for a data kind: digits -> small conv net, features -> MLP, images ->
    ResNet-18; ``arch`` "convnet" or "resnet18" chooses for images."""
    if kind == "features":
        return mlp(input_shape[0], num_classes)
    if arch == "convnet" or (arch == "auto" and kind == "digits"):
        return small_convnet(num_classes, channels=input_shape[0])
    return resnet18(num_classes, image_size=input_shape[-1])


def parameter_groups(model: nn.Module, weight_decay: float):
    """Weight decay on weights only: not on biases or normalisation parameters."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_norm = isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))
            (no_decay if is_norm or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
