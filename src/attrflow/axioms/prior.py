"""Deep-image-prior patch decoders: one small random decoder per patch, all run as one network.

The seed parameterises every patch by its own decoder with random weights and a fixed random
code, and optimises the decoder's weights rather than the pixels (Khakzar et al., 2022 Sec. 3.5): unregularised
pixel optimisation gets stuck in adversarial local solutions. The authors' decoder is the
6-scale DIP encoder–decoder producing 86×86 patches for 224×224 inputs. Here it is a smaller
convolutional decoder (three 3×3 convolutions with two bilinear ×2 upsamplings, LeakyReLU, a
1×1 colour head and a sigmoid) whose code grid is a quarter of the patch side, so the patch
scales with the input (25 px at 64×64, 86 px at 224×224) and keeps the prior's smoothness.
Each hidden layer is normalised per decoder and channel over its spatial grid (instance
normalisation): that is what the authors' BatchNorm computes in train mode on a batch of one,
and without it the sigmoid saturates within a few RMSprop steps and the gradients vanish.

Many candidates are optimised at once: ``count`` independent decoders are stacked into grouped
convolutions (``groups=count``), so decoder ``i`` only ever sees its own code and weights, and an
element-wise optimiser (RMSprop) keeps them independent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CODE_CHANNELS = 16
CODE_SCALE = 0.1  # the paper's code: U[0, 1) noise × 0.1, drawn once, never redrawn
UPSAMPLINGS = 2


class PatchPriorBank(nn.Module):
    """``count`` decoders, each mapping its fixed code to a (channels, size, size) patch in [0, 1]."""

    def __init__(self, count: int, size: int, channels: int, width: int, generator: torch.Generator) -> None:
        super().__init__()
        self.count, self.size, self.channels = count, size, channels
        grid = max(2, math.ceil(size / 2**UPSAMPLINGS))
        device = generator.device
        code = torch.rand((1, count * CODE_CHANNELS, grid, grid), generator=generator, device=device)
        self.register_buffer("code", code * CODE_SCALE)
        shapes = [(width, CODE_CHANNELS, 3), (width, width, 3), (width, width, 3), (channels, width, 1)]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for c_out, c_in, k in shapes:
            bound = math.sqrt(6.0 / (c_in * k * k))  # He-uniform, as DIP's default init
            w = (torch.rand((count * c_out, c_in, k, k), generator=generator, device=device) * 2 - 1) * bound
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(count * c_out, device=device)))

    def forward(self) -> torch.Tensor:
        h = self.code
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = F.conv2d(h, w, b, padding=w.shape[-1] // 2, groups=self.count)
            if i == last:
                break
            h = F.leaky_relu(F.instance_norm(h), 0.2)
            if i < UPSAMPLINGS:
                h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = F.interpolate(h, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.sigmoid(h).view(self.count, self.channels, self.size, self.size)
