"""The model directory: ``model.safetensors`` and the ``card.json`` that describes it.

`model_card` records what a prepared model is (architecture, normalisation, CAM layer, X-DNN
flag, dataset, accuracy); `save_model` writes the weights and the card, the card last and with
the weights' SHA-256; `load_model` rebuilds the architecture from the card and refuses weights
whose SHA-256 differs from the card's fingerprint, so a corrupted or swapped file is reported,
never used.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from attrflow.fingerprint import file_sha256
from attrflow.models.architectures import build_architecture
from attrflow.models.checkpoints import ModelLoadError, load_weights_into
from attrflow.models.wrapper import WrappedModel
from attrflow.store import read_attrs

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = "attrflow-model/1"


def model_card(
    name: str,
    spec: Mapping[str, Any],
    model: WrappedModel,
    architecture: dict[str, Any],
    accuracy: float | None,
    dataset_store: Path | None,
) -> dict[str, Any]:
    """The card of a prepared model: what rebuilds it (`architecture`), how it is used (classes,
    normalisation, CAM layer, X-DNN flag), which dataset it belongs to and its accuracy there.
    `save_model` adds the weights' fingerprint and the library versions."""
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
