"""Every model attrflow explains is a `WrappedModel`.

It takes pixel-space images in [0, 1], (N, C, H, W), and returns logits; normalisation lives
inside. It also exposes what methods need to know about the network: the number of classes, the
layer CAM methods use by default, whether it is an X-DNN (bias-free, nonnegatively homogeneous)
and, if so, its homogeneity origin in pixel space. It counts forward and backward samples so
stores can record the cost of each method.

A network with convolutions runs channels-last (its ``Conv2d`` weights are stored in that
layout when it is wrapped; values and results are unchanged up to float rounding): on a CPU its
forward passes are about twice as fast (benchmarks/RESULTS.md). Inputs and input gradients keep
the ordinary NCHW layout.

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


def _functorch_wrapped(x: torch.Tensor) -> bool:
    return torch._C._functorch.is_functorch_wrapped_tensor(x)


class _ChannelsLast(torch.autograd.Function):
    """The input in channels-last layout; its gradient comes back in the ordinary (NCHW) one, so
    maps, gradients and everything derived from them keep the layout callers expect."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


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
        # Channels-last: oneDNN's convolutions and max-pooling run 1.4-2.6x faster per image in
        # that layout on a CPU (max-pooling in NCHW took half of a forward pass of the embedded
        # CNN; benchmarks/RESULTS.md), and the training loop uses it already. Values are the same
        # function of the input up to float rounding; only the layout of conv weights changes.
        convolutions = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        self.channels_last = bool(convolutions)
        for conv in convolutions:  # not `net.to(...)`: that would touch lazy modules' parameters
            conv.to(memory_format=torch.channels_last)
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
        normalised = (x - self.mean) / self.std
        # Not inside torch.func transforms (UNI vmaps over samples): vmap cannot batch a
        # channels-last copy, and the convolutions accept either layout.
        if self.channels_last and normalised.dim() == 4 and not _functorch_wrapped(normalised):
            normalised = _ChannelsLast.apply(normalised)
        logits = self.net(normalised)
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
