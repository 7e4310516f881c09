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
    from attrflow.methods.references import build_feature_statistics, build_references
    from attrflow.models.cards import load_model

    dev = resolve_device(device)
    train = read_samples(samples_path, "train")
    model = load_model(model_dir, dev)
    kind_seed = derive_seed(seed, dataset, model_name, kind)
    arrays: dict[str, np.ndarray] = {}
    groups: dict[str, dict[str, np.ndarray]] | None = None
    if kind == "feature_stats":  # one group per layer name: mean, std, nonzero (C, h, w)
        groups, attrs = build_feature_statistics(model, train, seed=kind_seed, max_batch=max_batch, **params)
        LOG.info("feature statistics for %s/%s at %s", dataset, model_name, attrs["layers"])
    else:
        images, weights, attrs = build_references(kind, model, train, seed=kind_seed, max_batch=max_batch, **params)
        arrays = {"images": np.asarray(images, np.float32), "weights": np.asarray(weights, np.float64)}
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
    return write_store(out_path, arrays, meta, groups=groups)


def load_references(path: str | Path, device: Any) -> tuple[Any, Any]:
    """(images, weights) of a verified reference store, as tensors on `device`.

    A ``feature_stats`` store gives (statistics, None) instead: a mapping from each layer name
    and its module path to a `LayerStatistics` (mean, std, nonzero) of (C, h, w) tensors.
    """
    import torch

    group = open_store(path)
    if group.attrs.get("references") == "feature_stats":
        from attrflow.methods.references import LayerStatistics

        statistics: dict[str, Any] = {}
        for name, module_path in group.attrs["layers"].items():
            layer = group[name]
            statistics[name] = LayerStatistics(
                *(torch.from_numpy(layer[key][:]).to(device) for key in LayerStatistics._fields)
            )
            statistics.setdefault(module_path, statistics[name])
        return statistics, None
    images = torch.from_numpy(group["images"][:]).to(device)
    weights = torch.from_numpy(group["weights"][:]).to(device=device, dtype=images.dtype)
    return images, weights
