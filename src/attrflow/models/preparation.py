"""Preparing the model a config entry names: train it here, or load it from timm or torchvision.

`prepare_model` turns a config entry into a `WrappedModel` and its model card: a small network
trained here (`kind: trained`, see `attrflow.models.training`), or a timm or torchvision model
(`attrflow.models.hub`: pretrained weights from the local cache only, or a local checkpoint).
The card records the accuracy on the entry's dataset and, for X-DNNs, how exactly the network
is homogeneous; `attrflow.models.cards.save_model` writes both to disk.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import torch

from attrflow.data.sample_store import SampleSet, read_samples
from attrflow.models.architectures import TRAINED_ARCHS, trainable_network
from attrflow.models.cards import model_card
from attrflow.models.hub import pretrained_network
from attrflow.models.normalisation import normalisation_for_training, wrap_network
from attrflow.models.training import evaluate_accuracy, reproducible_torch, train_classifier
from attrflow.models.wrapper import WrappedModel
from attrflow.models.xdnn import homogeneity_residual
from attrflow.store import read_attrs

TRAINED_DEFAULTS = {
    "arch": "small_cnn",
    "epochs": 8,
    "batch_size": 64,
    "lr": 3e-3,
    "width": 32,
    "x_dnn": False,
}
EVAL_BATCH = 64
HOMOGENEITY_PROBE = 16  # eval samples on which the card records the X-DNN homogeneity residual

_COMMON_KEYS = {"kind", "dataset", "cam_layer"}
SPEC_KEYS = {
    "trained": _COMMON_KEYS | set(TRAINED_DEFAULTS),
    "timm": _COMMON_KEYS
    | {"name", "checkpoint", "pretrained", "num_classes", "mean", "std", "x_dnn", "input_size", "interpolation"},
    "torchvision": _COMMON_KEYS | {"name", "weights", "checkpoint", "num_classes", "mean", "std", "x_dnn"},
}


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
    net, details = pretrained_network(name, spec, kind)
    model = wrap_network(
        name, net, spec, num_classes=details["num_classes"], mean=details["mean"], std=details["std"]
    )
    model.to(device)
    accuracy = None
    if dataset_store is not None:
        evaluation = read_samples(dataset_store, "eval")
        _check_labels(name, evaluation, model.num_classes, dataset_store)
        accuracy = evaluate_accuracy(model, evaluation, EVAL_BATCH)
        print(f"model {name}: accuracy {accuracy:.4f} on {dataset_store} (eval split)", file=log, flush=True)
    card = model_card(name, spec, model, details["architecture"], accuracy, dataset_store)
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
    num_classes = dataset_num_classes(dataset_store, train, evaluation)
    x_dnn = bool(settings["x_dnn"])
    torch.manual_seed(seed)
    net = trainable_network(
        settings["arch"], num_classes, in_channels=train.images.shape[1], width=int(settings["width"]), x_dnn=x_dnn
    )
    mean, std = normalisation_for_training(train, x_dnn)
    model = wrap_network(name, net, spec, num_classes=num_classes, mean=mean, std=std)
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
    card = model_card(name, spec, model, architecture, metrics["test_accuracy"], dataset_store)
    card["training"] = metrics
    card["weights_source"] = f"trained here (seed {seed})"
    return model, card


def dataset_num_classes(dataset_store: Path, *splits: SampleSet) -> int:
    """Classes of a dataset store: its declared ``num_classes``, checked against the labels of
    `splits`, or one more than the largest label when it declares none."""
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
