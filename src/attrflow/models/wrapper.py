"""Every model attrflow explains is a `WrappedModel`.

It takes pixel-space images in [0, 1], (N, C, H, W), and returns logits; normalisation lives
inside. It also exposes what methods need to know about the network: the number of classes, the
layer CAM methods use by default, whether it is an X-DNN (bias-free, nonnegatively homogeneous)
and, if so, its homogeneity origin in pixel space. It counts forward and backward samples so
stores can record the cost of each method.

A model's ``task`` is ``"classification"`` (logits over ``num_classes`` classes) or
``"regression"`` (one output, a score such as a total severity; see
`attrflow.models.regression`). A regression model has ``num_classes == 1``: methods explain
output 0, and whatever needs a class probability must refuse it (`is_regression`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

TASKS = ("classification", "regression")


def is_regression(model: nn.Module) -> bool:
    """Whether `model` (a `WrappedModel`, or anything with a ``task``) predicts a score."""
    return getattr(model, "task", "classification") == "regression"


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
        task: str = "classification",
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"model {name!r}: task must be one of {TASKS}, not {task!r}")
        if task == "regression" and int(num_classes) != 1:
            raise ValueError(f"model {name!r}: a regression model has one output, not {num_classes}")
        self.task = task
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
