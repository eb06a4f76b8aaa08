"""The torch modules behind the built-in models (``optiloop.models`` builds them by name)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear -> ReLU (-> Dropout) per hidden size, then a Linear head."""

    def __repr__(self) -> str:  # keeps doctest output short and stable
        return "MLP(...)"


class CNN(nn.Module):
    """Conv(3x3) -> BatchNorm -> ReLU per channel size, max-pooling between blocks, global
    average pooling, Linear head. Rows of ``side * side`` pixels become (N, 1, side, side)."""

    def __init__(self, in_features: int, out_features: int, channels: Sequence[int],
                 dropout: float):
        super().__init__()
        self.side = math.isqrt(in_features)
        blocks: list[nn.Module] = []
        width, size = 1, self.side
        for i, c in enumerate(channels):
            blocks += [nn.Conv2d(width, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            if i < len(channels) - 1 and size >= 4:  # 8x8 -> 4x4 -> 2x2: stop before 1x1
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            width = c
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(width, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # -1, not len(x): an exported graph (ONNX) keeps its batch dimension free
        return self.head(self.features(x.reshape(-1, 1, self.side, self.side)))
