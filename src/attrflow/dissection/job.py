"""The `dissect` job: Network Dissection (Bau et al., 2017) of one layer of one model on the
evaluation split of one dataset with per-pixel concept labels, as a Parquet table.

One row per (unit, concept): the unit's threshold T_k, the IoU and its pixel sums, whether the
concept is the unit's best and whether the unit detects it (best and IoU > the detector
threshold). Two passes over the data (module doc of `network_dissection`): thresholds first,
then the IoU sums, each in batches of ``max_batch`` images, so memory stays bounded for a
dataset of any size.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from attrflow.dissection.network_dissection import Dissection, IoUAccumulator, ThresholdAccumulator, finish

LOG = logging.getLogger("attrflow")

DISSECTION = pa.schema(
    [
        ("dataset", pa.string()),
        ("model", pa.string()),
        ("layer", pa.string()),  # the config's layer name (e.g. "default", "stage4")
        ("module", pa.string()),  # the module path it resolved to on this model
        ("unit", pa.int64()),  # channel index
        ("concept", pa.string()),  # category:name
        ("category", pa.string()),
        ("iou", pa.float64()),  # null where no image contains the concept
        ("intersection", pa.float64()),  # Σ |M_k ∩ L_c| in pixels, over images containing c
        ("union", pa.float64()),
        ("images_with_concept", pa.int64()),
        ("threshold", pa.float64()),  # T_k
        ("best", pa.bool_()),  # the unit's highest-IoU concept
        ("detector", pa.bool_()),  # best and IoU > iou_threshold
        ("quantile", pa.float64()),
        ("iou_threshold", pa.float64()),
        ("model_fingerprint", pa.string()),
        ("dataset_fingerprint", pa.string()),
    ]
)


class DissectionError(ValueError):
    """The dataset or layer cannot be dissected; the message names it."""


class _LayerOutputs:
    """A forward hook that keeps the layer's output of the last pass."""

    def __init__(self, module: torch.nn.Module, name: str) -> None:
        self.name = name
        self.outputs: list[torch.Tensor] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        self.outputs.append(output.detach() if isinstance(output, torch.Tensor) else output)

    @torch.no_grad()
    def of(self, model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        self.outputs = []
        model(images)
        if len(self.outputs) != 1:
            raise DissectionError(f"layer {self.name!r} ran {len(self.outputs)} times in one forward pass; name a layer that runs once")
        output = self.outputs[0]
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise DissectionError(f"layer {self.name!r} outputs {shape}, not (n, units, h, w) activation maps")
        return output.float()


def dissect_model_layer(
    model: torch.nn.Module,
    images,
    labels,
    concepts: list[str],
    categories: list[str],
    layer: str,
    *,
    quantile: float,
    iou_threshold: float,
    batch: int,
    device: torch.device | str = "cpu",
) -> tuple[Dissection, str]:
    """Dissect ``layer`` of ``model`` on ``images`` (N, C, H, W) with their concept label planes
    ``labels`` (N, G, H, W) (`attrflow.data.concepts`) and vocabulary ``concepts``/``categories``.
    Both arrays are read a batch at a time (numpy arrays or Zarr arrays of a store), so the data
    never has to fit in memory. Returns the dissection and the module path the layer resolved to."""
    from attrflow.models.layers import resolve_layer

    path, module = resolve_layer(model, layer)
    hook = _LayerOutputs(module, layer)
    n = int(images.shape[0])
    if n == 0:
        raise DissectionError("no images to dissect")
    if int(labels.shape[0]) != n:
        raise DissectionError(f"{n} images but concept labels for {labels.shape[0]}")
    try:
        batches = [slice(lo, min(n, lo + batch)) for lo in range(0, n, batch)]

        def activations(rows: slice) -> torch.Tensor:
            return hook.of(model, torch.from_numpy(np.asarray(images[rows], dtype=np.float32)).to(device))

        first = activations(batches[0])
        units, h, w = first.shape[1:]
        thresholds = ThresholdAccumulator(units, n * h * w, quantile)
        thresholds.add(first)
        for rows in batches[1:]:
            thresholds.add(activations(rows))
        iou = IoUAccumulator(thresholds.thresholds(), len(concepts), device=first.device)
        for rows in batches:
            iou.add_labels(activations(rows), torch.from_numpy(np.asarray(labels[rows]).astype(np.int64)))
    finally:
        hook.handle.remove()
    return finish(iou, concepts, categories, iou_threshold), path


def dissection_table(
    result: Dissection, *, dataset: str, model: str, layer: str, module: str, quantile: float,
    model_fingerprint: str = "", dataset_fingerprint: str = "",
) -> pa.Table:  # fmt: skip
    units, concepts = result.iou.shape
    best = result.best_concept
    detector = result.is_detector
    unit = np.repeat(np.arange(units), concepts)
    concept = np.tile(np.arange(concepts), units)
    iou = result.iou.reshape(-1)
    is_best = best[unit] == concept
    columns = {
        "dataset": [dataset] * len(unit),
        "model": [model] * len(unit),
        "layer": [layer] * len(unit),
        "module": [module] * len(unit),
        "unit": unit.astype(np.int64),
        "concept": [result.concepts[c] for c in concept],
        "category": [result.categories[c] for c in concept],
        "iou": pa.array(iou, mask=np.isnan(iou), type=pa.float64()),
        "intersection": result.intersection.reshape(-1),
        "union": result.union.reshape(-1),
        "images_with_concept": result.images_with[concept].astype(np.int64),
        "threshold": result.thresholds[unit],
        "best": is_best,
        "detector": is_best & detector[unit],
        "quantile": np.full(len(unit), float(quantile)),
        "iou_threshold": np.full(len(unit), float(result.iou_threshold)),
        "model_fingerprint": [model_fingerprint] * len(unit),
        "dataset_fingerprint": [dataset_fingerprint] * len(unit),
    }
    return pa.table(columns, schema=DISSECTION)


def dissect_layer(
    *,
    samples_path: str | Path,
    model_dir: str | Path,
    out_path: str | Path,
    dataset: str,
    model: str,
    layer: str,
    quantile: float,
    iou_threshold: float,
    device: str,
    max_batch: int,
    dataset_spec: dict[str, Any] | None = None,
    code: str = "",
) -> Path:
    """Dissect ``layer`` of the stored ``model`` on the evaluation split of ``dataset``.

    ``dataset_spec`` and ``code`` (the job's code fingerprint) reach the job only so that a change
    to either re-runs it; the table records the model and dataset fingerprints.
    """
    import json

    from attrflow.data.concepts import VOCABULARY_ARRAYS
    from attrflow.jobs.runtime import resolve_device
    from attrflow.models.cards import load_model
    from attrflow.report.schema import write_table
    from attrflow.store import open_store, read_attrs

    started = time.perf_counter()
    store = open_store(samples_path)  # verified once; the evaluation split is read batch by batch
    if "concept_labels" not in store:
        raise DissectionError(
            f"dataset {dataset!r} ({samples_path}) has no per-pixel concept labels; Network Dissection "
            "needs a dataset that provides them (the embedded synthetic_shapes and broden do)"
        )
    names, categories, _ = (store[key][:].tolist() for key in VOCABULARY_ARRAYS)
    concepts = [f"{c}:{n}" for c, n in zip(categories, names)]  # as ConceptLabels.concepts
    dev = resolve_device(device)
    net = load_model(model_dir, dev)
    result, module = dissect_model_layer(
        net, store["images"], store["concept_labels"], concepts, categories, layer, quantile=quantile,
        iou_threshold=iou_threshold, batch=max_batch, device=dev,
    )  # fmt: skip
    card = json.loads((Path(model_dir) / "card.json").read_text())
    table = dissection_table(
        result, dataset=dataset, model=model, layer=layer, module=module, quantile=quantile,
        model_fingerprint=str(card.get("fingerprint", "")),
        dataset_fingerprint=str(read_attrs(samples_path).get("fingerprint", "")),
    )  # fmt: skip
    write_table(table, out_path)
    counts = {c: k for c, k in result.detector_counts().items() if k}
    LOG.info(
        "%s / %s / %s (%s): %d units, %d detectors %s; %.1f s",
        dataset, model, layer, module, len(result.thresholds), int(result.is_detector.sum()), counts,
        time.perf_counter() - started,
    )  # fmt: skip
    return Path(out_path)
