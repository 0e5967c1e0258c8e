"""Networks with the two LLP outputs: class logits and an L2-normalised embedding."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn


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
        return nn.functional.normalize(self.embedding(h), dim=1), self.classifier(h)


def small_convnet(num_classes: int, embed_dim: int = 128, width: int = 32) -> TwoHeadNet:
    """For 8x8 single-channel images: three 3x3 conv blocks, global average pooling."""
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
    trunk = nn.Sequential(*block(1, width), *block(width, 2 * width), nn.MaxPool2d(2),
                          *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return TwoHeadNet(trunk, 4 * width, num_classes, embed_dim)


def parameter_groups(model: nn.Module, weight_decay: float):
    """Weight decay on weights only: not on biases or normalisation parameters."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_norm = isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm))
            (no_decay if is_norm or name == "bias" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
