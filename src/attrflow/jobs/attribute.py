"""The `attribute` job: one method's maps for one shard of a dataset, on one model."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrflow.data.sample_store import read_samples
from attrflow.explainer import Explainer
from attrflow.jobs.runtime import (
    derive_seed,
    device_description,
    generator_for,
    library_versions,
    model_card_fingerprint,
    peak_memory_bytes,
    resolve_device,
)
from attrflow.methods import MethodNotApplicable
from attrflow.store import write_store

LOG = logging.getLogger("attrflow")


@torch.no_grad()
def choose_targets(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, mode: str, max_batch: int) -> torch.Tensor:
    """The output each map explains: the predicted class or the label; for a regression model
    (one output, its labels are scores) always output 0, whatever the mode."""
    from attrflow.models.wrapper import is_regression

    if is_regression(model):
        return torch.zeros_like(labels)
    if mode == "label":
        return labels
    if mode != "predicted":
        raise ValueError(f"config 'target' must be predicted or label, not {mode!r}")
    preds = [model(chunk).argmax(dim=1) for chunk in images.split(max_batch)]
    return torch.cat(preds) if preds else labels


def attribute_shard(
    *,
    samples_path: str | Path | list[str],
    model_dir: str | Path,
    out_path: str | Path,
    dataset: str,
    model_name: str,
    shard: int,
    method: str,
    entry: dict[str, Any],
    code: str,
    sample_range: list[int],
    device: str,
    seed: int,
    max_batch: int,
    target: str,
    dataset_spec: dict[str, Any] | None = None,
    references_path: str | Path | None = None,
    split: str = "eval",
) -> Path:
    """Maps of samples [start, stop) of `split`: the eval split's shards, or (ROAR) a train split.

    ``samples_path`` may list several evaluation shard stores (a method with `shards_per_job`):
    each one's samples are explained as that shard's own job would (its own random stream and
    batches), so the maps do not depend on how shards are grouped into jobs.

    The result is filed in the results cache under a key of everything it depends on; a job
    whose key is already there (a config that came back) links that result instead of computing.
    """
    from attrflow.cache import ResultCache
    from attrflow.data.sample_store import EvalPart, eval_parts, joined_fingerprint
    from attrflow.models.cards import load_model
    from attrflow.store import content_key, read_attrs

    started = time.perf_counter()
    dev = resolve_device(device)
    start, stop = (int(v) for v in sample_range)
    paths = [samples_path] if isinstance(samples_path, str | Path) else list(samples_path)
    if split == "eval":
        parts = eval_parts(paths, start, stop)
    else:
        if len(paths) != 1:
            raise ValueError(f"the {split} split is read from one store, not {len(paths)}")
        parts = [EvalPart(str(paths[0]), start, stop, None, str(read_attrs(paths[0]).get("fingerprint", "")))]
    fingerprints = [part.fingerprint for part in parts]
    cache = ResultCache.beside(out_path)
    result_key = cache.key(
        "attribution",
        names=[dataset, model_name, method, int(shard), split],
        entry=entry,
        code=code,
        dataset_spec=dataset_spec or {},
        sample_range=[start, stop],
        samples=fingerprints[0] if len(fingerprints) == 1 else fingerprints,
        model=model_card_fingerprint(model_dir),
        references=content_key(references_path) if references_path else None,
        runtime=[device, int(seed), int(max_batch), target],
    )
    if cache.fetch_dir("attributions", result_key, out_path):
        LOG.info("%s shard %d: reused the result computed earlier under the same key %s", method, shard, result_key)
        return Path(out_path)
    model = load_model(model_dir, dev)
    explainer = Explainer.from_entry(entry, model, max_batch=max_batch)
    if explainer.info.references is not None:
        from attrflow.jobs.references import load_references

        if references_path is None:
            raise ValueError(f"method {method!r} needs {explainer.info.references!r} references and none were given")
        references, reference_weights = load_references(references_path, dev)
        explainer = replace(explainer, references=references, reference_weights=reference_weights)

    ids: list[str] = []
    labels: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    diagnostics: list[dict[str, np.ndarray]] = []
    sample_fingerprints: list[str] = []
    not_applicable: MethodNotApplicable | None = None
    passes = {"forward": 0, "backward": 0}  # the method's own passes, not the target choice
    for part in parts:
        samples = read_samples(part.path, split, part.start, part.stop)
        if len(samples) != part.stop - part.start:
            raise ValueError(
                f"{part.path} holds {len(samples)} samples in [{part.start}, {part.stop}); the dataset "
                "is shorter than the plan expects — re-run prepare_dataset"
            )
        # Each evaluation shard keeps its own seed, so grouping shards into jobs changes no
        # number; another split gets its own stream.
        identity = (shard if part.shard is None else part.shard,) if split == "eval" else (split, shard)
        gen = generator_for(dev, derive_seed(seed, dataset, model_name, method, *identity))
        images = torch.from_numpy(samples.images).to(dev)
        part_targets = choose_targets(model, images, torch.from_numpy(samples.labels).to(dev), target, max_batch)
        ids += samples.ids
        labels.append(samples.labels)
        targets.append(part_targets.cpu().numpy().astype(np.int64))
        sample_fingerprints.append(samples.fingerprint())
        if not_applicable is None:
            model.reset_counters()
            try:
                part_maps, part_diagnostics = explainer.explain_all(images, part_targets, generator=gen, progress=True)
            except MethodNotApplicable as why:
                not_applicable = why
            else:
                maps.append(part_maps)
                diagnostics.append(part_diagnostics)
            passes["forward"] += int(model.forward_samples)
            passes["backward"] += int(model.backward_samples)

    attrs: dict[str, Any] = {
        "kind": "attribution",
        "result_key": result_key,
        "method": method,
        **explainer.provenance(),
        "code_fingerprint": code,
        "model": model_name,
        "model_fingerprint": model_card_fingerprint(model_dir),
        "dataset": dataset,
        "dataset_fingerprint": joined_fingerprint(sample_fingerprints),
        "dataset_spec": dataset_spec or {},
        "shard": int(shard),
        "sample_range": [start, stop],
        "split": split,
        "target": target,
        "target_output": "logit",
        "seed": int(seed),
        "device": device_description(dev),
        "dtype": "float32",
        "versions": library_versions(),
    }
    arrays: dict[str, np.ndarray] = {
        "ids": np.asarray(ids, dtype=str),
        "targets": np.concatenate(targets),
        "labels": np.concatenate(labels),
    }
    groups: dict[str, dict[str, np.ndarray]] = {}
    if not_applicable is not None:
        LOG.warning("%s is not applicable to model %s: %s", method, model_name, not_applicable)
        attrs.update(applicable=False, reason=str(not_applicable))
    else:
        all_maps = np.concatenate(maps)
        joined = {k: np.concatenate([d[k] for d in diagnostics]) for k in diagnostics[0]}
        nonfinite = ~np.isfinite(all_maps.reshape(all_maps.shape[0], -1)).all(axis=1)
        if nonfinite.any():
            bad = [ids[i] for i in np.flatnonzero(nonfinite)]
            LOG.warning("%s produced non-finite maps for %d sample(s): %s", method, len(bad), bad[:10])
        joined["nonfinite"] = nonfinite
        arrays["maps"] = all_maps
        groups["diagnostics"] = joined
        attrs.update(applicable=True, reason=None, nonfinite_samples=int(nonfinite.sum()))
    attrs.update(
        wall_time_s=round(time.perf_counter() - started, 3),
        forward_samples=passes["forward"],
        backward_samples=passes["backward"],
        peak_memory_bytes=peak_memory_bytes(dev),
    )
    written = write_store(out_path, arrays, attrs, groups=groups)
    cache.keep_dir("attributions", result_key, written)
    return written
