"""PreActResNet-18 for 32×32 inputs: the network the LPI paper's supplement (Yang et al., 2023) retrains for ROAR.

He et al. 2016, "Identity Mappings in Deep Residual Networks": each residual block applies
BatchNorm and ReLU *before* its convolutions (BN-ReLU-conv-BN-ReLU-conv), and the skip path stays
an identity except where the shape changes, where a strided 1×1 convolution of the pre-activated
input projects it. The CIFAR stem is a single 3×3 convolution with stride 1 (no 7×7 conv or
max-pool: a 32×32 image is already small); four stages of two blocks (width, 2·, 4·, 8·width
channels, strides 1, 2, 2, 2) end in a final BN-ReLU, global average pooling and a linear layer.

Stages are named ``layer1`` … ``layer4`` as in torchvision's ResNets, so the CAM layer
(``layer4``) and the ``stage1`` … ``stage4`` layer names resolve the same way on both. Every ReLU
is its own, non-in-place module: Captum's guided backprop and DeepLift hook ReLU modules.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCKS_PER_STAGE = (2, 2, 2, 2)
STAGE_STRIDES = (1, 2, 2, 2)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3-BN-ReLU-conv3×3 plus the (projected when reshaped) input."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        reshaped = stride != 1 or c_in != c_out
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if reshaped else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        # He et al. project the pre-activated input, so the projection sees normalised features.
        skip = self.shortcut(activated) if self.shortcut is not None else x
        out = self.conv1(activated)
        out = self.conv2(self.relu2(self.bn2(out)))
        return out + skip


class PreActResNet18(nn.Module):
    default_cam_layer = "layer4"

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or width < 1:
            raise ValueError(
                f"PreActResNet18 needs positive num_classes, in_channels and width, got "
                f"{num_classes}, {in_channels}, {width}"
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        c_in = width
        for index, (blocks, stride) in enumerate(zip(BLOCKS_PER_STAGE, STAGE_STRIDES), start=1):
            c_out = width * 2 ** (index - 1)
            stage = [PreActBlock(c_in, c_out, stride)]
            stage += [PreActBlock(c_out, c_out, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*stage))
            c_in = c_out
        self.bn = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def architecture_kwargs(self) -> dict[str, int]:
        """The constructor arguments, for rebuilding the network from a model card."""
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "width": self.width}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(self.flatten(self.pool(self.relu(self.bn(out)))))
