"""Every model attrflow explains is a `WrappedModel`.

It takes pixel-space images in [0, 1], (N, C, H, W), and returns logits; normalisation lives
inside. It also exposes what methods need to know about the network: the number of classes, the
layer CAM methods use by default, whether it is an X-DNN (bias-free, nonnegatively homogeneous)
and, if so, its homogeneity origin in pixel space. It counts forward and backward samples so
stores can record the cost of each method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class WrappedModel(nn.Module):
    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        cam_layer: str | None = None,
        is_x_dnn: bool = False,
        name: str = "",
    ) -> None:
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)
        self.cam_layer = cam_layer
        self.is_x_dnn = bool(is_x_dnn)
        self.name = name
        channels = len(mean) if mean is not None else 3
        mean_t = torch.tensor(mean if mean is not None else [0.0] * channels, dtype=torch.float32)
        std_t = torch.tensor(std if std is not None else [1.0] * channels, dtype=torch.float32)
        if (std_t <= 0).any():
            raise ValueError(f"model {name!r}: normalisation std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)
        self.forward_samples = 0
        self.backward_samples = 0

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def homogeneity_origin(self) -> torch.Tensor | None:
        """The pixel-space point about which an X-DNN is nonnegatively homogeneous.

        F(origin + a·(x − origin)) = a·F(x) for a ≥ 0: the normalisation mean (0 when the model
        takes raw pixels). None for networks that are not X-DNNs.
        """
        return self.mean if self.is_x_dnn else None

    def cam_module(self) -> nn.Module:
        if self.cam_layer is None:
            raise ValueError(f"model {self.name!r} declares no CAM layer")
        return self.net.get_submodule(self.cam_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        self.forward_samples += n
        logits = self.net((x - self.mean) / self.std)
        if logits.requires_grad:
            logits.register_hook(self._count_backward(n))
        return logits

    def _count_backward(self, n: int):
        def hook(grad: torch.Tensor) -> None:
            self.backward_samples += n

        return hook

    def reset_counters(self) -> None:
        self.forward_samples = 0
        self.backward_samples = 0
