"""Building, saving and loading every kind of model a config can name.

`prepare_model` turns a config entry into a `WrappedModel` and a model card: a small CNN trained
here (`kind: trained`), a timm model or a torchvision model (pretrained weights from the local
cache only, or a local checkpoint). `save_model` writes the workflow's on-disk format,
``model.safetensors`` + ``card.json``; `load_model` rebuilds the architecture from the card and
refuses weights whose SHA-256 differs from the card's fingerprint, so a corrupted or swapped
file is reported, never used.

Weights are only ever read with safetensors or ``torch.load(weights_only=True)``: a checkpoint
that needs pickled code to load is refused, never executed. timm and torchvision are imported
inside the functions that need them, because each costs about a second per job.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import re
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from attrflow.data.sample_store import SampleSet, read_samples
from attrflow.fingerprint import file_sha256
from attrflow.models.checkpoint_check import CHECKPOINT_SUFFIXES, STATE_DICT_KEYS
from attrflow.models.preact_resnet import PreActResNet18
from attrflow.models.small_cnn import SmallCNN, SmallCNNMaxPool
from attrflow.models.training import evaluate_accuracy, reproducible_torch, train_classifier
from attrflow.models.wrapper import WrappedModel
from attrflow.models.xdnn import check_x_dnn, homogeneity_residual, to_x_dnn
from attrflow.store import read_attrs

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = "attrflow-model/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRAINED_DEFAULTS = {
    "arch": "small_cnn",
    "epochs": 8,
    "batch_size": 64,
    "lr": 3e-3,
    "width": 32,
    "x_dnn": False,
}
# Architectures `kind: trained` models and ROAR retraining build; keep the schema's `arch` enums in step.
TRAINABLE_NETWORKS: dict[str, type[nn.Module]] = {
    "small_cnn": SmallCNN, "small_cnn_max": SmallCNNMaxPool, "preact_resnet18": PreActResNet18,
}
TRAINED_ARCHS = tuple(TRAINABLE_NETWORKS)
EVAL_BATCH = 64
HOMOGENEITY_PROBE = 16  # eval samples on which the card records the X-DNN homogeneity residual

_COMMON_KEYS = {"kind", "dataset", "cam_layer"}
SPEC_KEYS = {
    "trained": _COMMON_KEYS | set(TRAINED_DEFAULTS),
    "timm": _COMMON_KEYS
    | {"name", "checkpoint", "pretrained", "num_classes", "mean", "std", "x_dnn", "input_size", "interpolation"},
    "torchvision": _COMMON_KEYS | {"name", "weights", "checkpoint", "num_classes", "mean", "std", "x_dnn"},
}


class ModelLoadError(RuntimeError):
    """A model cannot be built or its weights cannot be read; the message names the culprit."""


# --------------------------------------------------------------------------------------------
# Checkpoints


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, without ever executing pickled code.

    ``.safetensors`` is read with safetensors; ``.pt/.pth/.bin/.ckpt`` with
    ``torch.load(weights_only=True)``. A raw state dict or one nested under ``state_dict``,
    ``model`` or ``model_state_dict`` is accepted; a ``module.`` prefix (DataParallel) is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise ModelLoadError(
            f"checkpoint {path}: unknown format {path.suffix!r}; use one of {CHECKPOINT_SUFFIXES}"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(path, device="cpu")
        except Exception as err:  # safetensors raises its own error types for a bad header
            raise ModelLoadError(f"checkpoint {path} is not a readable safetensors file: {err}") from err
    else:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ModelLoadError(
                f"refusing checkpoint {path}: it holds pickled objects beyond plain tensors, which "
                f"could run code when loaded (torch.load(weights_only=True) rejected it: "
                f"{_unpickling_culprit(err)}). Convert it to .safetensors in a trusted environment."
            ) from err
        except Exception as err:
            raise ModelLoadError(f"checkpoint {path} is unreadable: {err}") from err
    return _unwrap_state_dict(loaded, path)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _unpickling_culprit(err: Exception) -> str:
    """What torch's weights-only unpickler refused, from its message: the sentence naming the
    object (``Unsupported global: GLOBAL module.Class ...`` or ``... GLOBAL posix.system whose
    module posix is blocked``), without the terminal colour codes torch puts into the text and
    without its advice to load the file unsafely."""
    text = " ".join(_ANSI.sub("", str(err)).split())
    for sentence in re.split(r"(?<=\.) ", text):
        if "GLOBAL" in sentence:
            return sentence.removeprefix("WeightsUnpickler error:").strip().rstrip(".")
    return text


def _unwrap_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in STATE_DICT_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping):
        raise ModelLoadError(f"checkpoint {path} holds a {type(loaded).__name__}, not a state dict")
    not_tensors = [str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelLoadError(f"checkpoint {path}: entries {_listing(not_tensors)} are not tensors")
    state = {str(k): v for k, v in loaded.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights_into(net: nn.Module, state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Load `state` into `net` strictly; on any mismatch raise naming `source` and the keys."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_listing(mismatched)}")
    if problems:
        raise ModelLoadError(f"weights in {source} do not fit {type(net).__name__}: " + "; ".join(problems))
    net.load_state_dict(state, strict=True)


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return f"[{shown}{f', … ({len(items) - limit} more)' if len(items) > limit else ''}]"


# --------------------------------------------------------------------------------------------
# Architectures


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


def _checked_cam_layer(net: nn.Module, spec: Mapping[str, Any], model_name: str) -> str | None:
    layer = spec.get("cam_layer") or default_cam_layer(net)
    if layer is not None:
        try:
            net.get_submodule(layer)
        except AttributeError:
            raise ValueError(
                f"model {model_name!r}: cam_layer {layer!r} is not a module of {type(net).__name__}"
            ) from None
    return layer


# --------------------------------------------------------------------------------------------
# prepare_model


def prepare_model(
    name: str,
    spec: Mapping[str, Any],
    *,
    dataset_store: Path | None,
    seed: int = 0,
    threads: int | None = None,
    log: TextIO | None = None,
    device: str | torch.device = "cpu",
) -> tuple[WrappedModel, dict[str, Any]]:
    """Build (and for ``kind: trained``, train) the model of config entry `name`.

    `dataset_store` is the ``samples.zarr`` of the entry's ``dataset``: the training data for
    trained models, and where the card's ``test_accuracy`` is measured (its eval split) for all
    kinds; null when no dataset is given. The card returned here lacks the fields `save_model`
    adds (fingerprint, versions).
    """
    log = log if log is not None else sys.stderr
    kind = spec.get("kind")
    if kind not in SPEC_KEYS:
        raise ValueError(f"model {name!r}: unknown kind {kind!r}; use one of {sorted(SPEC_KEYS)}")
    unknown = sorted(set(spec) - SPEC_KEYS[kind])
    if unknown:
        raise ValueError(
            f"model {name!r}: unknown key(s) {unknown} for kind {kind!r}; allowed: {sorted(SPEC_KEYS[kind])}"
        )
    if spec.get("dataset") and dataset_store is None:
        raise ValueError(f"model {name!r} names dataset {spec['dataset']!r} but no dataset store was given")
    with reproducible_torch(seed, threads):
        if kind == "trained":
            model, card = _prepare_trained(name, spec, dataset_store, seed, threads, log, device)
        else:
            model, card = _prepare_library_model(name, spec, kind, dataset_store, log, device)
        _add_homogeneity(card, model, dataset_store)
    model.eval().reset_counters()
    return model, card


def _prepare_library_model(
    name: str,
    spec: Mapping[str, Any],
    kind: str,
    dataset_store: Path | None,
    log: TextIO,
    device: str | torch.device,
) -> tuple[WrappedModel, dict[str, Any]]:
    net, details = _pretrained_network(name, spec, kind)
    model = _wrap(
        name, net, spec, num_classes=details["num_classes"], mean=details["mean"], std=details["std"]
    )
    model.to(device)
    accuracy = None
    if dataset_store is not None:
        evaluation = read_samples(dataset_store, "eval")
        _check_labels(name, evaluation, model.num_classes, dataset_store)
        accuracy = evaluate_accuracy(model, evaluation, EVAL_BATCH)
        print(f"model {name}: accuracy {accuracy:.4f} on {dataset_store} (eval split)", file=log, flush=True)
    card = _card(name, spec, model, details["architecture"], accuracy, dataset_store)
    card["weights_source"] = details["weights_source"]
    card["preprocessing"] = details.get("preprocessing")  # timm: which mean/std/size/interpolation, from where
    _note_crop_mismatch(name, card["preprocessing"], dataset_store, log)
    return model, card


def _note_crop_mismatch(
    name: str, preprocessing: Mapping[str, Any] | None, dataset_store: Path | None, log: TextIO
) -> None:
    """Say so in the job log when a timm model expects another input size than the dataset's crop."""
    if not preprocessing or dataset_store is None:
        return
    size = preprocessing.get("input_size", {}).get("value")
    crop = read_attrs(dataset_store).get("preprocessing", {}).get("center_crop")
    if size and crop and int(size) != int(crop):
        print(
            f"model {name}: expects {size}×{size} inputs ({preprocessing['input_size']['from']}) but the dataset's "
            f"crop is {crop}; set crop: {size} on the dataset entry for the model's own resolution",
            file=log, flush=True,
        )


def _prepare_trained(
    name: str,
    spec: Mapping[str, Any],
    dataset_store: Path | None,
    seed: int,
    threads: int | None,
    log: TextIO,
    device: str | torch.device,
) -> tuple[WrappedModel, dict[str, Any]]:
    settings = {**TRAINED_DEFAULTS, **spec}
    if settings["arch"] not in TRAINED_ARCHS:
        raise ValueError(f"model {name!r}: unknown arch {settings['arch']!r}; known: {list(TRAINED_ARCHS)}")
    if dataset_store is None:
        raise ValueError(f"model {name!r}: kind 'trained' needs a dataset to train on (key 'dataset')")
    if read_attrs(dataset_store).get("task") == "regression":  # its labels are scores: one output
        from attrflow.models.regression import prepare_trained_regressor

        return prepare_trained_regressor(name, dict(spec), dataset_store, seed, threads, log, device)
    train = read_samples(dataset_store, "train")
    evaluation = read_samples(dataset_store, "eval")
    num_classes = _num_classes(dataset_store, train, evaluation)
    x_dnn = bool(settings["x_dnn"])
    torch.manual_seed(seed)
    net = trainable_network(
        settings["arch"], num_classes, in_channels=train.images.shape[1], width=int(settings["width"]), x_dnn=x_dnn
    )
    mean, std = _normalisation_for_training(train, x_dnn)
    model = _wrap(name, net, spec, num_classes=num_classes, mean=mean, std=std)
    print(
        f"model {name}: training {'X-' if x_dnn else ''}{settings['arch']} on {len(train)} samples of {dataset_store}",
        file=log,
        flush=True,
    )
    metrics = train_classifier(
        model,
        train,
        evaluation,
        epochs=int(settings["epochs"]),
        batch_size=int(settings["batch_size"]),
        lr=float(settings["lr"]),
        seed=seed,
        threads=threads,
        log=log,
        device=device,
    )
    architecture = {
        "library": "attrflow",
        "name": settings["arch"],
        "kwargs": net.architecture_kwargs(),
        "x_dnn": x_dnn,
    }
    card = _card(name, spec, model, architecture, metrics["test_accuracy"], dataset_store)
    card["training"] = metrics
    card["weights_source"] = f"trained here (seed {seed})"
    return model, card


def _normalisation_for_training(train: SampleSet, x_dnn: bool) -> tuple[list[float], list[float]]:
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


def _num_classes(dataset_store: Path, *splits: SampleSet) -> int:
    declared = read_attrs(dataset_store).get("num_classes")
    observed = max(int(s.labels.max()) for s in splits if len(s)) + 1
    if declared is None:
        return observed
    if observed > int(declared):
        raise ValueError(f"{dataset_store}: labels go up to {observed - 1} but num_classes is {declared}")
    return int(declared)


def _check_labels(name: str, samples: SampleSet, num_classes: int, store: Path) -> None:
    if len(samples) and int(samples.labels.max()) >= num_classes:
        raise ValueError(
            f"model {name!r} has {num_classes} classes but the labels of {store} go up to "
            f"{int(samples.labels.max())}: the model and dataset do not belong together"
        )


def _wrap(name: str, net: nn.Module, spec: Mapping[str, Any], *, num_classes: int, mean, std) -> WrappedModel:
    is_x_dnn = (isinstance(net, SmallCNN) and net.x_dnn) or bool(spec.get("x_dnn"))
    if is_x_dnn and check_x_dnn(net):
        raise ValueError(f"model {name!r} should be an X-DNN but {check_x_dnn(net)} break homogeneity")
    return WrappedModel(
        net,
        num_classes=num_classes,
        mean=list(mean),
        std=list(std),
        cam_layer=_checked_cam_layer(net, spec, name),
        is_x_dnn=is_x_dnn,
        name=name,
    )


def _card(
    name: str,
    spec: Mapping[str, Any],
    model: WrappedModel,
    architecture: dict[str, Any],
    accuracy: float | None,
    dataset_store: Path | None,
) -> dict[str, Any]:
    dataset_fingerprint = read_attrs(dataset_store).get("fingerprint") if dataset_store is not None else None
    return {
        "format": CARD_FORMAT,
        "name": name,
        "kind": spec["kind"],
        "architecture": architecture,
        "num_classes": model.num_classes,
        "mean": model.mean.flatten().tolist(),
        "std": model.std.flatten().tolist(),
        "cam_layer": model.cam_layer,
        "is_x_dnn": model.is_x_dnn,
        "dataset": spec.get("dataset"),
        "dataset_fingerprint": dataset_fingerprint,
        "test_accuracy": accuracy,
        "parameter_count": sum(p.numel() for p in model.net.parameters()),
        "spec": {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in spec.items()},
        "training": None,
    }


def _add_homogeneity(card: dict[str, Any], model: WrappedModel, dataset_store: Path | None) -> None:
    """Record how exactly an X-DNN is homogeneous, measured on real inputs when there are some."""
    if not model.is_x_dnn:
        card["homogeneity_residual"] = None
        return
    if dataset_store is not None:
        probe = torch.from_numpy(read_samples(dataset_store, "eval", 0, HOMOGENEITY_PROBE).images)
    else:
        probe = torch.rand(2, len(card["mean"]), 64, 64, generator=torch.Generator().manual_seed(0))
    model.eval()
    card["homogeneity_residual"] = homogeneity_residual(model, probe.to(model.device), 2.0)


# --------------------------------------------------------------------------------------------
# timm and torchvision


def _pretrained_network(name: str, spec: Mapping[str, Any], kind: str) -> tuple[nn.Module, dict[str, Any]]:
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
    preprocessing = _timm_preprocessing(net, spec)
    return net, {
        "num_classes": kwargs["num_classes"],
        "mean": preprocessing["mean"]["value"],
        "std": preprocessing["std"]["value"],
        "architecture": {"library": "timm", "name": arch_name, "kwargs": kwargs},
        "weights_source": source,
        "preprocessing": preprocessing,
    }


def _timm_preprocessing(net: nn.Module, spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
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


def classifier_outputs(default_net: nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """Classes a checkpoint was trained for: the output size of its classifier.

    The classifier is the network's last linear layer, or its last convolution when it has no
    linear layer (SqueezeNet's 1×1 convolution head).
    """
    for kind in (nn.Linear, nn.Conv2d):
        layers = [name for name, module in default_net.named_modules() if isinstance(module, kind)]
        if layers and f"{layers[-1]}.weight" in state:
            return int(state[f"{layers[-1]}.weight"].shape[0])
    return int(getattr(default_net, "num_classes", 1000))


# --------------------------------------------------------------------------------------------
# On-disk format


def save_model(model: WrappedModel, card: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``card.json`` into `out_dir`; returns the card's path.

    Both files are written under temporary names and moved into place, the card last, so a
    card on disk always describes complete weights; the card's ``fingerprint`` (SHA-256 of the
    weights file) lets `load_model` detect a weights file that does not belong to it.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Clone: safetensors refuses tensors that share storage (tied weights).
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.net.state_dict().items()}
    tmp_weights = out / f".{WEIGHTS_FILE}.tmp-{os.getpid()}"
    tmp_card = out / f".{CARD_FILE}.tmp-{os.getpid()}"
    save_file(state, tmp_weights, metadata={"attrflow_model": str(card.get("name", model.name))})
    full_card = {
        **card,
        "format": CARD_FORMAT,
        "fingerprint": file_sha256(tmp_weights),
        "weights_file": WEIGHTS_FILE,
        "parameter_count": sum(p.numel() for p in model.net.parameters()),
        "versions": library_versions(),
    }
    tmp_card.write_text(json.dumps(full_card, indent=1, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp_weights, out / WEIGHTS_FILE)
    os.replace(tmp_card, out / CARD_FILE)
    return out / CARD_FILE


def read_card(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        raise ModelLoadError(f"model card {path} does not exist: run prepare_model for this model first")
    try:
        card = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"model card {path} is not valid JSON: {err}") from err
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ModelLoadError(f"model card {path} is not an {CARD_FORMAT} card")
    return card


def load_model(model_dir: str | os.PathLike, device: str | torch.device = "cpu") -> WrappedModel:
    """Rebuild a saved model in eval mode with frozen parameters, after checking its fingerprint."""
    from safetensors.torch import load_file

    card = read_card(model_dir)
    weights = Path(model_dir) / card.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise ModelLoadError(f"weights file {weights} does not exist")
    actual = file_sha256(weights)
    if actual != card.get("fingerprint"):
        raise ModelLoadError(
            f"weights file {weights} is corrupted or was replaced: its SHA-256 {actual[:16]}… differs "
            f"from the fingerprint {str(card.get('fingerprint'))[:16]}… in {Path(model_dir) / CARD_FILE}. "
            f"Delete {model_dir} and re-run prepare_model."
        )
    net = build_architecture(card["architecture"])
    try:
        state = load_file(weights, device="cpu")
    except Exception as err:
        raise ModelLoadError(f"weights file {weights} is unreadable: {err}") from err
    load_weights_into(net, state, weights)
    model = WrappedModel(
        net,
        num_classes=card["num_classes"],
        mean=card["mean"],
        std=card["std"],
        cam_layer=card["cam_layer"],
        is_x_dnn=card["is_x_dnn"],
        name=card["name"],
        task=card.get("task", "classification"),  # regression models: attrflow.models.regression
    )
    model.eval().requires_grad_(False)
    return model.to(device)


def library_versions() -> dict[str, str | None]:
    # torch's own version string keeps the build tag (+cpu, +cu130), which decides the kernels used.
    versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("attrflow", "torchvision", "timm", "safetensors", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    if versions["attrflow"] is None:
        from attrflow import __version__

        versions["attrflow"] = __version__
    return versions
