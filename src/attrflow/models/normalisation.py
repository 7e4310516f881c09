"""Normalisation and wrapping: how a network becomes the `WrappedModel` methods explain.

Every model attrflow explains takes pixel-space images in [0, 1] and normalises inside
(`attrflow.models.wrapper.WrappedModel`). `normalisation_for_training` chooses the statistics of
a network attrflow trains; `wrap_network` wraps any network with its statistics, CAM layer and
X-DNN flag, refusing an X-DNN whose layers break homogeneity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from attrflow.data.sample_store import SampleSet
from attrflow.models.architectures import checked_cam_layer
from attrflow.models.small_cnn import SmallCNN
from attrflow.models.wrapper import WrappedModel
from attrflow.models.xdnn import check_x_dnn


def normalisation_for_training(train: SampleSet, x_dnn: bool) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the training images; 0/1 for X-DNNs.

    An X-DNN takes raw pixels so that its homogeneity origin is the black image, which is where
    X-Gradient's implicit zero baseline lies (Hesse et al., 2021 Sec. 3). The regular network is standardised with
    its training set's statistics, as any practitioner would.
    """
    channels = train.images.shape[1]
    if x_dnn:
        return [0.0] * channels, [1.0] * channels
    mean = train.images.mean(axis=(0, 2, 3), dtype=np.float64)
    std = np.maximum(train.images.std(axis=(0, 2, 3), dtype=np.float64), 1e-6)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def wrap_network(
    name: str, net: nn.Module, spec: Mapping[str, Any], *, num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> WrappedModel:
    """`net` wrapped as config entry `name`: normalised by `mean`/`std` inside, its CAM layer
    (the entry's ``cam_layer`` or `default_cam_layer`) checked to exist, and its X-DNN flag set
    (a bias-free small CNN, or ``x_dnn: true`` in the entry) after checking homogeneity."""
    is_x_dnn = (isinstance(net, SmallCNN) and net.x_dnn) or bool(spec.get("x_dnn"))
    if is_x_dnn and check_x_dnn(net):
        raise ValueError(f"model {name!r} should be an X-DNN but {check_x_dnn(net)} break homogeneity")
    return WrappedModel(
        net,
        num_classes=num_classes,
        mean=list(mean),
        std=list(std),
        cam_layer=checked_cam_layer(net, spec, name),
        is_x_dnn=is_x_dnn,
        name=name,
    )
