"""The ROAR jobs: train-split maps, one retrain per (method, fraction, arm, repeat), the report.

Test-split maps are the `attribute` rule's shards (the same maps every other metric reads); the
train split is explained once per (dataset, model, method) by `attribute_train_split`, in the
same store layout. A retrain builds its masked train and test sets in memory (they are cheap to
rebuild and would cost a copy of the dataset per method, fraction and arm on disk), trains, and
writes one small JSON result. A method that does not apply to the model (X-Gradient on a network
with biases) yields a result marked ``skipped`` rather than a retrain on meaningless maps.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attrflow.data.sample_store import SampleSet, read_samples
from attrflow.store import open_store, read_attrs

LOG = logging.getLogger("attrflow")


def attribute_train_split(*, samples_path: str | Path, dataset: str, **job: Any) -> Path:
    """Maps of the whole train split of `dataset`, as one store shaped like an attribution shard."""
    from attrflow.jobs.attribute import attribute_shard

    count = int(read_attrs(samples_path).get("n_train", 0))
    if count == 0:
        raise ValueError(f"{samples_path} has no train split: ROAR retrains on it (dataset {dataset!r})")
    return attribute_shard(
        samples_path=samples_path, dataset=dataset, shard=0, sample_range=[0, count], split="train", **job
    )


def read_maps(paths: Sequence[str | Path], ids: Sequence[str]) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Concatenated maps of attribution stores, checked against the sample `ids` they explain.

    Returns (maps, attrs of the first store); maps is None when the method was not applicable.
    The stores may cover a prefix of `ids` (a method limited to its first N samples).
    """
    maps, seen, first = [], [], None
    for path in paths:
        root = open_store(path)
        attrs = dict(root.attrs)
        first = first or attrs
        if not attrs.get("applicable", True):
            return None, attrs
        maps.append(np.asarray(root["maps"][:]))
        seen.extend(str(i) for i in root["ids"][:])
    if first is None:
        raise ValueError("no attribution stores given")
    if list(ids[: len(seen)]) != seen:
        raise ValueError(
            f"the maps in {paths[0]} … explain other samples than the sample store holds "
            f"(first ids {seen[:3]} vs {list(ids[:3])}); re-run the attribution jobs"
        )
    return np.concatenate(maps), first


def retrain_job(
    *,
    samples_path: str | Path,
    out_path: str | Path,
    dataset: str,
    repeat: int,
    recipe: dict[str, Any],
    code: str,
    device: str,
    threads: int,
    model: str | None = None,
    method: str | None = None,
    fraction: float = 0.0,
    arm: str | None = None,
    order: str = "signed",
    train_maps_path: str | Path | None = None,
    test_maps_paths: Sequence[str | Path] = (),
    method_entry: dict[str, Any] | None = None,
    method_code: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Mask (unless `method` is None: the no-removal run), retrain, write the JSON result.

    Extra keywords (the dataset spec the rule's params carry so that a changed dataset re-runs
    the job) are accepted and unused.
    """
    from attrflow.jobs.runtime import device_description, library_versions, resolve_device
    from attrflow.models.preparation import dataset_num_classes
    from attrflow.roar.masking import channel_means, remove_pixels, removal_masks, removed_count
    from attrflow.roar.retrain import Recipe, retrain

    started = time.perf_counter()
    train = read_samples(samples_path, "train")
    test = read_samples(samples_path, "eval")
    result: dict[str, Any] = {
        "dataset": dataset,
        "model": model,
        "method": method,
        "method_fn": (method_entry or {}).get("fn"),
        "method_entry": method_entry,
        "method_fingerprint": method_code,
        "fraction": float(fraction),
        "arm": arm,
        "repeat": int(repeat),
        "recipe": recipe,
        "order": order,
        "fill": "per-channel mean of the train split",
        "retrain_fingerprint": code,
        "dataset_fingerprint": read_attrs(samples_path).get("fingerprint"),
        "model_fingerprint": None,
    }
    num_classes = dataset_num_classes(Path(samples_path), train, test)
    if method is not None:
        train_maps, train_attrs = read_maps([train_maps_path], train.ids)
        test_maps, _ = read_maps(test_maps_paths, test.ids)
        result["model_fingerprint"] = train_attrs.get("model_fingerprint")
        if train_maps is None or test_maps is None:
            reason = train_attrs.get("reason") or "method not applicable"
            LOG.warning("%s on %s: not applicable (%s); no retrain", method, model, reason)
            return _write_result(out_path, {**result, "status": "skipped", "reason": reason, "accuracy": None})
        test = _prefix(test, len(test_maps))
        fill = channel_means(train.images)
        train = remove_pixels(train, removal_masks(train_maps, fraction, arm, order=order, ids=train.ids), fill)
        test = remove_pixels(test, removal_masks(test_maps, fraction, arm, order=order, ids=test.ids), fill)
        result["fill_value"] = [float(v) for v in fill]
    height, width = train.images.shape[2:]
    run_name = f"{dataset}/{model}/{method}/fraction {fraction}/{arm}/repeat {repeat}" if method else f"{dataset}/no removal/repeat {repeat}"
    dev = resolve_device(device)
    metrics = retrain(
        train, test, Recipe.from_params(recipe), num_classes=num_classes, run_name=run_name, threads=threads, device=dev
    )
    LOG.info("%s: test accuracy %.4f", run_name, metrics["test_accuracy"])
    result.update(
        status="ok",
        reason=None,
        accuracy=float(metrics["test_accuracy"]),
        removed_pixels_per_image=removed_count(fraction, height * width),
        pixels_per_image=int(height * width),
        n_train=len(train),
        n_test=len(test),
        training={k: v for k, v in metrics.items() if k != "test_accuracy"},
        device=device_description(dev),
        versions=library_versions(),
        wall_time_s=round(time.perf_counter() - started, 3),
    )
    return _write_result(out_path, result)


def _prefix(samples: SampleSet, count: int) -> SampleSet:
    if count == len(samples):
        return samples
    masks = samples.masks[:count] if samples.masks is not None else None
    return SampleSet(samples.images[:count], samples.labels[:count], samples.ids[:count], masks)


def _write_result(out_path: str | Path, result: dict[str, Any]) -> dict[str, Any]:
    """Write the result JSON under a temporary name and move it into place (atomic publish)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, out)
    return result
