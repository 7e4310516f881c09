"""The `prepare_references` job: a method's reference set for one (dataset, model), cached."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from attrflow.data.sample_store import read_samples
from attrflow.jobs.runtime import derive_seed, library_versions, resolve_device
from attrflow.store import open_store, write_store

LOG = logging.getLogger("attrflow")


def prepare_reference_store(
    *,
    samples_path: str | Path,
    model_dir: str | Path,
    out_path: str | Path,
    dataset: str,
    model_name: str,
    kind: str,
    params: dict[str, Any],
    code: str,
    device: str,
    seed: int,
    max_batch: int,
) -> Path:
    from attrflow.methods.references import build_references
    from attrflow.models.loading import load_model

    dev = resolve_device(device)
    train = read_samples(samples_path, "train")
    model = load_model(model_dir, dev)
    images, weights, attrs = build_references(
        kind, model, train, seed=derive_seed(seed, dataset, model_name, kind), max_batch=max_batch, **params
    )
    LOG.info("%s references for %s/%s: %d images", kind, dataset, model_name, len(images))
    meta = {
        "kind": "references",
        "references": kind,
        "params": params,
        "code_fingerprint": code,
        "dataset": dataset,
        "model": model_name,
        "seed": int(seed),
        "versions": library_versions(),
        **attrs,
    }
    return write_store(out_path, {"images": np.asarray(images, np.float32), "weights": np.asarray(weights, np.float64)}, meta)


def load_references(path: str | Path, device: Any) -> tuple[Any, Any]:
    """(images, weights) of a verified reference store, as tensors on `device`."""
    import torch

    group = open_store(path)
    images = torch.from_numpy(group["images"][:]).to(device)
    weights = torch.from_numpy(group["weights"][:]).to(device=device, dtype=images.dtype)
    return images, weights
