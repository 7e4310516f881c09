"""Networks by name: the architectures attrflow trains itself, and timm or torchvision ones.

A model card's ``architecture`` entry (``{"library", "name", "kwargs", "x_dnn"}``) is all
`build_architecture` needs to rebuild a saved network; `trainable_network` builds the small
networks ``kind: trained`` models and ROAR retraining train; `default_cam_layer` picks the layer
CAM methods use. timm and torchvision are imported only when a network of theirs is built,
because each costs about a second per job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from attrflow.models.checkpoints import ModelLoadError
from attrflow.models.preact_resnet import PreActResNet18
from attrflow.models.small_cnn import SmallCNN, SmallCNNMaxPool
from attrflow.models.xdnn import to_x_dnn

# Architectures `kind: trained` models and ROAR retraining build; keep the schema's `arch` enums in step.
TRAINABLE_NETWORKS: dict[str, type[nn.Module]] = {
    "small_cnn": SmallCNN, "small_cnn_max": SmallCNNMaxPool, "preact_resnet18": PreActResNet18,
}
TRAINED_ARCHS = tuple(TRAINABLE_NETWORKS)


def build_architecture(arch: Mapping[str, Any]) -> nn.Module:
    """A randomly initialised network from a card's ``architecture`` entry.

    ``{"library": "attrflow" | "timm" | "torchvision", "name": ..., "kwargs": {...}, "x_dnn": bool}``;
    for timm and torchvision, ``x_dnn`` means the biases were removed with `to_x_dnn`.
    """
    library, name, kwargs = arch["library"], arch["name"], dict(arch.get("kwargs", {}))
    if library == "attrflow":
        if name not in TRAINABLE_NETWORKS:
            raise ModelLoadError(f"unknown attrflow architecture {name!r}; known: {TRAINED_ARCHS}")
        return TRAINABLE_NETWORKS[name](**kwargs)
    if library == "timm":
        import timm

        net = timm.create_model(name, pretrained=False, **kwargs)
    elif library == "torchvision":
        import torchvision

        net = torchvision.models.get_model(name, weights=None, **kwargs)
    else:
        raise ModelLoadError(f"unknown model library {library!r}; use attrflow, timm or torchvision")
    return to_x_dnn(net) if arch.get("x_dnn") else net


def trainable_network(arch: str, num_classes: int, *, in_channels: int, width: int, x_dnn: bool = False) -> nn.Module:
    """A fresh network of a trainable architecture (random init from the global torch seed).

    Only the small CNN has a bias-free X-variant; PreActResNet-18 normalises with BatchNorm,
    which breaks nonnegative homogeneity, so asking for its X-variant is refused.
    """
    if arch not in TRAINABLE_NETWORKS:
        raise ValueError(f"unknown trainable architecture {arch!r}; known: {list(TRAINED_ARCHS)}")
    if arch in ("small_cnn", "small_cnn_max"):
        return TRAINABLE_NETWORKS[arch](num_classes, in_channels=in_channels, width=width, x_dnn=x_dnn)
    if x_dnn:
        raise ValueError(f"{arch} has BatchNorm layers, which break homogeneity: it has no X-variant")
    return TRAINABLE_NETWORKS[arch](num_classes, in_channels=in_channels, width=width)


def default_cam_layer(net: nn.Module) -> str | None:
    """The layer CAM methods use unless told otherwise.

    The small CNN names its own; ResNets (timm and torchvision alike) use their last stage
    ``layer4``, as Grad-CAM papers do; ViTs the input norm of their last block (see
    `attrflow.models.layers.vit_cam_layer`); anything else uses its last 2-D convolution.
    """
    if isinstance(net, (SmallCNN, PreActResNet18)):
        return net.default_cam_layer
    if isinstance(getattr(net, "layer4", None), nn.Module):
        return "layer4"
    if isinstance(getattr(net, "blocks", None), nn.Sequential) and hasattr(net, "patch_embed"):
        from attrflow.models.layers import vit_cam_layer

        return vit_cam_layer(net)
    convs = [name for name, module in net.named_modules() if isinstance(module, nn.Conv2d)]
    return convs[-1] if convs else None


def checked_cam_layer(net: nn.Module, spec: Mapping[str, Any], model_name: str) -> str | None:
    layer = spec.get("cam_layer") or default_cam_layer(net)
    if layer is not None:
        try:
            net.get_submodule(layer)
        except AttributeError:
            raise ValueError(
                f"model {model_name!r}: cam_layer {layer!r} is not a module of {type(net).__name__}"
            ) from None
    return layer
