"""Tiny seeded networks and inputs for method tests (CPU, milliseconds per pass).

* `regular_cnn`: conv + bias + BatchNorm (eval, non-trivial running statistics) + ReLU + max
  pool + linear with bias — the kind of network on which I×G is *not* IG.
* `x_cnn`: the same shape with every bias and the BatchNorm removed (ReLU, max pool, global
  average pool, bias-free linear): an X-DNN, nonnegatively homogeneous about its origin.
* `masked_cnn`: a regular CNN that multiplies its input by a fixed mask first, so its output
  cannot depend on the masked-out pixels (for the sensitivity axiom).
"""

from __future__ import annotations

import torch
from torch import nn

from attrflow.models import WrappedModel

CHANNELS, SIZE, CLASSES = 3, 10, 5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _finish(net: nn.Module, dtype: torch.dtype, **wrapper_kwargs) -> WrappedModel:
    model = WrappedModel(net, num_classes=CLASSES, **wrapper_kwargs).to(dtype).eval()
    model.requires_grad_(False)
    return model


def _features(bias: bool, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(CHANNELS, 6, 3, padding=1, bias=bias)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(6))
    layers += [
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, CLASSES, bias=bias),
    ]
    return layers


def regular_cnn(seed: int = 0, dtype: torch.dtype = torch.float32) -> WrappedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(*_features(bias=True, batchnorm=True))
    batchnorm = net[1]
    with torch.no_grad():
        batchnorm.running_mean.uniform_(-0.3, 0.3)
        batchnorm.running_var.uniform_(0.5, 2.0)
        batchnorm.weight.uniform_(0.5, 1.5)
        batchnorm.bias.uniform_(-0.5, 0.5)
        for module in net:
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                module.bias.uniform_(-0.5, 0.5)
    return _finish(net, dtype, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="tiny_cnn")


def x_cnn(
    seed: int = 0, dtype: torch.dtype = torch.float32, *, normalised: bool = True
) -> WrappedModel:
    """Bias-free X-CNN; with ``normalised`` its origin is the ImageNet mean, else 0."""
    torch.manual_seed(seed)
    net = nn.Sequential(*_features(bias=False, batchnorm=False))
    stats = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD) if normalised else {}
    return _finish(net, dtype, is_x_dnn=True, name="tiny_xcnn", **stats)


class _InputMask(nn.Module):
    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.mask


def masked_cnn(
    seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[WrappedModel, torch.Tensor]:
    """A CNN blind to the right half of the image; returns (model, ignored (H, W) bool)."""
    torch.manual_seed(seed)
    ignored = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    ignored[:, SIZE // 2 :] = True
    net = nn.Sequential(
        _InputMask((~ignored).to(torch.float32)), *_features(bias=True, batchnorm=False)
    )
    return _finish(net, dtype, name="tiny_masked_cnn"), ignored


def images(n: int = 4, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, CHANNELS, SIZE, SIZE), generator=generator, dtype=torch.float64).to(dtype)


def targets(n: int = 4) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64) % CLASSES
