"""ResNet-18 for small images (He et al. 2016, in the form used for CIFAR-10 and by ApproxIFER's
experiments): a 3×3 stem with no max-pool, four stages of two basic blocks (64, 128, 256, 512
channels; the last three halve the resolution), global average pooling and one linear layer.

Any C×H×W input of at least 8×8 works (the pooling adapts): 1×28×28 Fashion-MNIST and 3×32×32
CIFAR alike. 11.2 M parameters with 10 classes; ~0.56 GFLOP per 3×32×32 image.

Not torchvision's resnet18: that one is the ImageNet form (a 7×7 stride-2 stem and a max-pool, which
leave a 28×28 image 7×7 before the first block), and the torchvision wheels built for the pinned
torch are not installable beside its CPU build.
"""

from __future__ import annotations

import torch
from torch import nn

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of the stage's first block)
BLOCKS_PER_STAGE = 2


class BasicBlock(nn.Module):
    """Two 3×3 conv + batch-norm layers with a shortcut (a 1×1 conv where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet18(nn.Module):
    """x (B, C, H, W), or (B, H, W) for one channel, scaled to [0, 1] -> (B, classes) logits."""

    def __init__(self, in_shape: tuple[int, int, int] = (1, 28, 28), classes: int = 10):
        super().__init__()
        c, h, w = in_shape
        if min(h, w) < 8:
            raise ValueError(f"ResNet-18 needs images of at least 8×8, got {h}×{w}")
        self.in_shape, self.classes = tuple(in_shape), classes
        self.stem = nn.Sequential(nn.Conv2d(c, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        blocks, cin = [], 64
        for cout, stride in STAGES:
            for i in range(BLOCKS_PER_STAGE):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.in_shape)
        y = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))
