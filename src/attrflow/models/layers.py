"""Naming the internal layers that layer-level methods (CAMs, IBA, PathwayGrad) hook into.

A method's ``layer`` parameter is one of:

* ``"default"`` — the model's CAM layer (its last stage for ResNets, ``features.3`` for the small
  CNN, the last 2-D convolution otherwise; a model entry may override it with ``cam_layer``);
* ``"stage1"`` … ``"stage4"`` — the end of the network's four stages, model-independent names so
  one config entry (``gradcampp_layer2``) means the same depth on every model. Seed 004's layer
  study uses ResNet-50's ``layer1`` … ``layer4``; the small CNN's four blocks, a ViT's blocks at
  the quarter points and, for any other CNN, the last convolution of each quarter of its
  convolutions are the analogues;
* any module path of the wrapped network (``"layer3.1.conv2"``), for full control.

ViT blocks output tokens (n, prefix + h·w, d); `tokens_to_grid` turns them into (n, d, h, w) so
CAMs and bottlenecks see a spatial map.
"""

from __future__ import annotations

import math

import torch
from torch import nn

STAGES = ("stage1", "stage2", "stage3", "stage4")


def stage_layers(net: nn.Module) -> list[str]:
    """Module paths of the four stage ends of ``net`` (the unwrapped network)."""
    from attrflow.models.small_cnn import SmallCNN

    if isinstance(net, SmallCNN):
        return [f"features.{i}" for i in range(len(net.features))][-4:]
    if all(isinstance(getattr(net, f"layer{i}", None), nn.Module) for i in range(1, 5)):
        return [f"layer{i}" for i in range(1, 5)]
    blocks = getattr(net, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) >= 4:
        n = len(blocks)
        # The last block's output reaches the head through the class token only (its patch tokens
        # get no gradient), so stage 4 is the last block's input norm, as CAM practice for ViTs has it.
        return [f"blocks.{math.ceil(n * q / 4) - 1}" for q in range(1, 4)] + [vit_cam_layer(net)]
    convs = [name for name, module in net.named_modules() if isinstance(module, nn.Conv2d)]
    if len(convs) < 4:
        raise ValueError(
            f"{type(net).__name__} has {len(convs)} 2-D convolutions; stage layers need at least 4 "
            f"(name a module path instead)"
        )
    return [convs[math.ceil(len(convs) * q / 4) - 1] for q in range(1, 5)]


def vit_cam_layer(net: nn.Module) -> str:
    """A ViT's CAM layer: the input norm of its last block (the last place patch tokens matter)."""
    return f"blocks.{len(net.blocks) - 1}.norm1"


def resolve_layer(model: nn.Module, layer: str) -> tuple[str, nn.Module]:
    """(module path, module) of ``layer`` in a `WrappedModel` (or a bare network)."""
    net = getattr(model, "net", model)
    if layer == "default":
        path = getattr(model, "cam_layer", None)
        if path is None:
            raise ValueError(f"model {getattr(model, 'name', '')!r} declares no default (CAM) layer")
    elif layer in STAGES:
        path = stage_layers(net)[STAGES.index(layer)]
    else:
        path = layer
    try:
        return path, net.get_submodule(path)
    except AttributeError:
        children = ", ".join(name for name, _ in net.named_children())
        raise ValueError(
            f"layer {layer!r} ({path!r}) is not a module of {type(net).__name__}; use 'default', "
            f"{', '.join(STAGES)} or a module path (its top-level modules: {children})"
        ) from None


def prefix_tokens(net: nn.Module) -> int:
    """How many class/register tokens precede the patch tokens (timm's ``num_prefix_tokens``)."""
    return int(getattr(net, "num_prefix_tokens", 1 if getattr(net, "cls_token", None) is not None else 0))


def tokens_to_grid(tokens: torch.Tensor, num_prefix: int) -> torch.Tensor:
    """(n, prefix + h·w, d) ViT tokens → (n, d, h, w) on the square patch grid; 4-D passes through."""
    if tokens.dim() == 4:
        return tokens
    if tokens.dim() != 3:
        raise ValueError(f"expected (n, tokens, dim) activations, got shape {tuple(tokens.shape)}")
    patches = tokens[:, num_prefix:, :]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)
