"""Pretrained networks from timm and torchvision, from the local caches only.

`pretrained_network` turns a ``kind: timm`` or ``kind: torchvision`` config entry into a network
and the details its model card records: the class count, the normalisation (for timm, from the
model's pretrained config unless the entry sets it, see `timm_preprocessing`), the architecture
entry that rebuilds it, and where its weights came from. Pretrained weights are read from the
local Hugging Face or torch hub cache and never downloaded; a local checkpoint is read with
`attrflow.models.checkpoints`. timm and torchvision are imported inside the functions that need
them, because each costs about a second per job.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from attrflow.fingerprint import file_sha256
from attrflow.models.checkpoints import ModelLoadError, classifier_outputs, load_weights_into, read_state_dict
from attrflow.models.xdnn import to_x_dnn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pretrained_network(name: str, spec: Mapping[str, Any], kind: str) -> tuple[nn.Module, dict[str, Any]]:
    if "name" not in spec:
        raise ValueError(f"model {name!r}: kind {kind!r} needs 'name' (the {kind} model name)")
    builder = _timm_network if kind == "timm" else _torchvision_network
    net, details = builder(name, spec)
    if spec.get("mean") is not None:
        details["mean"] = list(spec["mean"])
    if spec.get("std") is not None:
        details["std"] = list(spec["std"])
    details["architecture"]["x_dnn"] = bool(spec.get("x_dnn"))
    return net, details


def _timm_network(name: str, spec: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    import timm

    arch_name = spec["name"]
    checkpoint = spec.get("checkpoint")
    pretrained = spec.get("pretrained", checkpoint is None)
    if checkpoint and pretrained:
        raise ValueError(f"model {name!r}: give either checkpoint or pretrained: true, not both")
    if not timm.is_model(arch_name):
        raise ValueError(f"model {name!r}: timm has no model {arch_name!r}")
    kwargs: dict[str, Any] = {}
    if spec.get("num_classes") is not None:
        kwargs["num_classes"] = int(spec["num_classes"])
    if checkpoint:
        state = read_state_dict(checkpoint)
        kwargs.setdefault(
            "num_classes", classifier_outputs(timm.create_model(arch_name, pretrained=False), state)
        )
        net = timm.create_model(arch_name, pretrained=False, **kwargs)
        net = _maybe_x_dnn(net, spec)
        load_weights_into(net, state, checkpoint)
        source = f"checkpoint {checkpoint} (sha256 {file_sha256(Path(checkpoint))})"
    elif pretrained:
        weights = _cached_timm_weights(name, arch_name)
        net = timm.create_model(
            arch_name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, **kwargs
        )
        net = _maybe_x_dnn(net, spec)
        source = f"timm pretrained weights {weights}"
    else:
        net = _maybe_x_dnn(timm.create_model(arch_name, pretrained=False, **kwargs), spec)
        source = "random initialisation"
    kwargs["num_classes"] = int(net.num_classes) if hasattr(net, "num_classes") else kwargs.get("num_classes")
    preprocessing = timm_preprocessing(net, spec)
    return net, {
        "num_classes": kwargs["num_classes"],
        "mean": preprocessing["mean"]["value"],
        "std": preprocessing["std"]["value"],
        "architecture": {"library": "timm", "name": arch_name, "kwargs": kwargs},
        "weights_source": source,
        "preprocessing": preprocessing,
    }


def timm_preprocessing(net: nn.Module, spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Mean, std, input size and interpolation of a timm model, each with where it came from:
    the entry when it sets the key, else the model's pretrained config as timm resolves it
    (`timm.data.resolve_data_config` at the test-time size), else ImageNet's statistics for a model without one."""
    from timm.data import resolve_data_config

    # The test-time size: maps explain inference, and timm's train size is often smaller.
    pretrained_cfg = getattr(net, "pretrained_cfg", None)
    resolved = resolve_data_config({}, model=net, use_test_size=True, verbose=False) if pretrained_cfg else {}
    defaults = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input_size": None, "interpolation": None}
    out: dict[str, dict[str, Any]] = {}
    for key in ("mean", "std", "input_size", "interpolation"):
        if spec.get(key) is not None:
            value, origin = spec[key], "entry"
        elif key in resolved:
            value, origin = resolved[key], "pretrained config"
        else:
            value, origin = defaults[key], "default (ImageNet statistics)" if key in ("mean", "std") else "unknown"
        if key == "input_size" and isinstance(value, (tuple, list)):
            value = int(value[-1])  # timm's (C, H, W); attrflow's inputs are square crops
        out[key] = {"value": list(value) if isinstance(value, (tuple, list)) else value, "from": origin}
    if "crop_pct" in resolved:  # the centre-crop fraction the model was evaluated with (resize = size / crop_pct)
        out["crop_pct"] = {"value": resolved["crop_pct"], "from": "pretrained config"}
    return out


def _cached_timm_weights(name: str, arch_name: str) -> Path:
    """The locally cached pretrained weight file of a timm model; never downloads.

    timm looks on the Hugging Face hub first and at a release URL second; both caches are
    searched here so that an offline machine fails at once with advice instead of hanging.
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch_name)
    candidates: list[Path] = []
    if cfg is not None and cfg.hf_hub_id:
        import huggingface_hub
        from huggingface_hub import constants

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
            found = huggingface_hub.try_to_load_from_cache(
                repo, filename, cache_dir=constants.HF_HUB_CACHE, revision=revision or None
            )
            if isinstance(found, str):
                return Path(found)
        candidates.append(Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}")
    if cfg is not None and cfg.url:
        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if local.is_file():
            return local
        candidates.append(local)
    raise ModelLoadError(
        f"model {name!r}: pretrained weights for timm model {arch_name!r} are not in the local cache "
        f"(looked in {', '.join(map(str, candidates)) or 'no known location'}) and attrflow never downloads. "
        f"Download them once on a connected machine, or set 'checkpoint:' to a local .safetensors/.pt file."
    )


def _torchvision_network(name: str, spec: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    import torchvision

    arch_name = spec["name"]
    if arch_name not in torchvision.models.list_models():
        raise ValueError(f"model {name!r}: torchvision has no model {arch_name!r}")
    checkpoint, weights_name = spec.get("checkpoint"), spec.get("weights")
    if checkpoint and weights_name:
        raise ValueError(f"model {name!r}: give either checkpoint or weights, not both")
    kwargs: dict[str, Any] = {}
    if spec.get("num_classes") is not None:
        kwargs["num_classes"] = int(spec["num_classes"])
    if weights_name:
        # Published weights carry biases: an X-variant drops them after loading (as Hesse et al., 2021,
        # xvgg16(pretrained=True) does), whereas a user checkpoint was trained bias-free.
        net = _maybe_x_dnn(_torchvision_pretrained(name, arch_name, weights_name, kwargs), spec)
        source = f"torchvision weights {arch_name}.{weights_name}"
    elif checkpoint:
        state = read_state_dict(checkpoint)
        if "num_classes" not in kwargs:
            kwargs["num_classes"] = classifier_outputs(
                torchvision.models.get_model(arch_name, weights=None), state
            )
        net = _maybe_x_dnn(torchvision.models.get_model(arch_name, weights=None, **kwargs), spec)
        load_weights_into(net, state, checkpoint)
        source = f"checkpoint {checkpoint} (sha256 {file_sha256(Path(checkpoint))})"
    else:
        net = _maybe_x_dnn(torchvision.models.get_model(arch_name, weights=None, **kwargs), spec)
        source = "random initialisation"
    kwargs.setdefault("num_classes", 1000)  # every torchvision classifier's default
    return net, {
        "num_classes": kwargs["num_classes"],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "architecture": {"library": "torchvision", "name": arch_name, "kwargs": kwargs},
        "weights_source": source,
    }


def _torchvision_pretrained(
    name: str, arch_name: str, weights_name: str, kwargs: dict[str, Any]
) -> nn.Module:
    """A torchvision model with weights from the local torch hub cache; never downloads."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch_name)
    if weights_name not in enum.__members__:
        raise ValueError(
            f"model {name!r}: torchvision {arch_name} has no weights {weights_name!r}; "
            f"known: {list(enum.__members__)}"
        )
    weights = enum[weights_name]
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if not path.is_file():
        raise ModelLoadError(
            f"model {name!r}: torchvision weights {arch_name}.{weights_name} are not in the local cache "
            f"({path}) and attrflow never downloads. Download them once on a connected machine, "
            f"or set 'checkpoint:' to a local .safetensors/.pt file."
        )
    categories = len(weights.meta["categories"])
    if kwargs.setdefault("num_classes", categories) != categories:
        raise ValueError(
            f"model {name!r}: weights {weights_name} have {categories} classes, "
            f"not num_classes={kwargs['num_classes']}"
        )
    net = torchvision.models.get_model(arch_name, weights=None, **kwargs)
    load_weights_into(net, read_state_dict(path), path)
    return net


def _maybe_x_dnn(net: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    return to_x_dnn(net) if spec.get("x_dnn") else net
