"""A small four-block CNN that the workflow trains itself, and its bias-free X-variant.

The embedded default must train in a minute or two on a laptop CPU, so the network is tiny:
four conv blocks (width, 2·width, 4·width, 4·width channels), 2×2 max-pooling after the first
three, global average pooling and one linear layer. On 64×64 inputs the last block sees 8×8
feature maps (4×4 on 32×32), which is the resolution CAM methods upsample from.

The regular variant uses conv biases and BatchNorm, as a practitioner would. The X-variant
(`x_dnn=True`, Hesse et al., 2021 Def. 3.5) has the same topology with every bias and every BatchNorm removed,
so that only linear maps, ReLU, max- and average-pooling remain: F(a·x) = a·F(x) for a ≥ 0 and
F(0) = 0 (Hesse et al., 2021 Assumption 3.7, Cor. 3.10). It is meant to take raw pixels (wrapper mean 0, std 1),
which puts its homogeneity origin at the black image.

`SmallCNNMaxPool` (arch ``small_cnn_max``) replaces the global *average* pooling by a global
*max*: a logit then reads the strongest response of each channel anywhere in the image, not the
sum over locations. It exists for the saturation axiom (Khakzar et al., CVPR 2022, Sec. 3.3), whose
two features must each give alone what both give together. On the average-pooled CNN the two
patches' contributions add up (its last block sees ~38 px, two 32 px patches: a pair changes
a patch's effect by only −5 % to −17 %, saturation needs −100 %), so saturation cannot be
synthesised there — it stays as the documented negative case; under a max the second patch of
the same class adds nothing once the first one has set the maxima.
"""

from __future__ import annotations

import torch
from torch import nn

POOLED_BLOCKS = 3  # blocks followed by 2×2 max-pooling; the last block keeps its resolution


class SmallCNN(nn.Module):
    default_cam_layer = "features.3"

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32, x_dnn: bool = False) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or width < 1:
            raise ValueError(
                f"SmallCNN needs positive num_classes, in_channels and width, got "
                f"{num_classes}, {in_channels}, {width}"
            )
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = width
        self.x_dnn = x_dnn
        channels = [in_channels, width, 2 * width, 4 * width, 4 * width]
        self.features = nn.Sequential(
            *(
                _block(channels[i], channels[i + 1], pool=i < POOLED_BLOCKS, x_dnn=x_dnn)
                for i in range(len(channels) - 1)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels[-1], num_classes, bias=not x_dnn)
        self._initialise()

    def _initialise(self) -> None:
        """He init, with first-layer filters that start blind to flat colour.

        He init keeps the activation scale through ReLU layers, which matters without BatchNorm.
        The first convolution's filters are then made zero-sum over each 3×3 window (and rescaled
        to the He standard deviation): raw pixels are all positive and dominated by each
        image's colours, so random filters of a bias-free network respond to colour and barely
        to edges, and training sat on a chance-level plateau for hundreds of steps; zero-sum
        filters respond to edges and texture from the first step. It is an initialisation only:
        the network's function class, and its homogeneity, are unchanged. Both variants use it
        so that they differ only in bias and BatchNorm.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        first = self.features[0][0].weight
        with torch.no_grad():
            he_std = first.std()
            first -= first.mean(dim=(2, 3), keepdim=True)
            first *= he_std / first.std()

    def architecture_kwargs(self) -> dict[str, int | bool]:
        """The constructor arguments, for rebuilding the network from a model card."""
        return {
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "width": self.width,
            "x_dnn": self.x_dnn,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.pool(self.features(x))))


def _block(c_in: int, c_out: int, *, pool: bool, x_dnn: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not x_dnn)]
    if not x_dnn:
        layers.append(nn.BatchNorm2d(c_out))
    # Not in-place: Captum's guided backprop / DeepLift hook every ReLU module, and in-place
    # activations break full backward hooks.
    layers.append(nn.ReLU())
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallCNNMaxPool(SmallCNN):
    """The small CNN with global max pooling: its head can saturate (see the module docstring)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 32, x_dnn: bool = False) -> None:
        super().__init__(num_classes, in_channels=in_channels, width=width, x_dnn=x_dnn)
        self.pool = nn.AdaptiveMaxPool2d(1)
