"""The `score` job: every selected metric for one (dataset, model, method)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from attrflow.data.sample_store import read_samples
from attrflow.jobs.attribute import method_params
from attrflow.jobs.runtime import derive_seed, generator_for, resolve_device
from attrflow.metrics import MetricInputs, MetricOutput, call_metric, get_metric
from attrflow.report.schema import SCORES, write_table
from attrflow.store import StoreError, open_store

LOG = logging.getLogger("attrflow")
# Samples per metric call: metrics batch their perturbed copies up to `max_batch` inside.
SAMPLES_PER_CALL = 32
# Keys of a metric entry that are not the metric function's parameters.
METRIC_ENTRY_KEYS = ("fn", "samples")


class ShardMaps:
    """All shards of one (dataset, model, method), verified and concatenated."""

    def __init__(self, paths: list[str]) -> None:
        self.attrs: list[dict[str, Any]] = []
        ids, targets, maps, diags = [], [], [], {}
        self.applicable, self.reason = True, None
        for path in paths:
            group = open_store(path)
            attrs = dict(group.attrs)
            self.attrs.append(attrs)
            ids.extend(group["ids"][:].tolist())
            targets.append(group["targets"][:])
            if not attrs.get("applicable", True):
                self.applicable, self.reason = False, attrs.get("reason")
                continue
            maps.append(group["maps"][:])
            if "diagnostics" in group:
                for key in group["diagnostics"].array_keys():
                    diags.setdefault(key, []).append(group["diagnostics"][key][:])
        self.ids = ids
        self.targets = np.concatenate(targets) if targets else np.zeros(0, np.int64)
        self.maps = np.concatenate(maps) if self.applicable and maps else None
        self.diagnostics = {k: np.concatenate(v) for k, v in diags.items()} if self.applicable else {}
        first = self.attrs[0] if self.attrs else {}
        self.method_fn = first.get("fn", "")
        self.claims_completeness = bool(first.get("claims_completeness", False))
        self.model_fingerprint = first.get("model_fingerprint", "")
        self.dataset_fingerprint = "+".join(a.get("dataset_fingerprint", "") for a in self.attrs)


def score_method(
    *,
    samples_path: str | Path,
    model_dir: str | Path,
    map_paths: list[str],
    out_paths: dict[str, str],
    dataset: str,
    model: str,
    method: str,
    method_entry: dict[str, Any],
    method_code: str,
    metrics: dict[str, dict[str, Any]],
    metrics_code: dict[str, str],
    device: str,
    seed: int,
    max_batch: int,
    target: str,
    references_path: str | Path | None = None,
) -> None:
    from attrflow.models.loading import load_model

    dev = resolve_device(device)
    shards = ShardMaps(map_paths)
    samples = read_samples(samples_path, "eval", 0, len(shards.ids))
    if samples.ids != shards.ids:
        raise StoreError(
            f"the sample ids in {samples_path} do not match those in the attribution shards of "
            f"{dataset}/{model}/{method}; the dataset changed since the maps were computed"
        )
    net = load_model(model_dir, dev)
    images = torch.from_numpy(samples.images).to(dev)
    labels = torch.from_numpy(samples.labels).to(dev)
    masks = torch.from_numpy(samples.masks).to(dev) if samples.masks is not None else None
    targets = torch.from_numpy(shards.targets).to(dev)
    maps = torch.from_numpy(shards.maps).to(dev) if shards.maps is not None else None
    diags = {k: torch.from_numpy(v).to(dev) for k, v in shards.diagnostics.items()}
    references = None
    if references_path is not None:
        from attrflow.jobs.references import load_references

        references = load_references(references_path, dev)
    context = ScoringContext(
        model=net,
        images=images,
        maps=maps,
        targets=targets,
        labels=labels,
        masks=masks,
        diagnostics=diags,
        ids=samples.ids,
        method=method,
        method_entry=method_entry,
        shards=shards,
        explain=_explainer(method_entry, net, max_batch, derive_seed(seed, dataset, model, method, "re-explain"), references),
        max_batch=max_batch,
        seed=derive_seed(seed, dataset, model, method),
    )
    for metric, path in out_paths.items():
        if metric not in metrics:  # the metric's `methods:` leaves this method out: no rows
            write_table(SCORES.empty_table(), path)
            LOG.info("%s: not selected for method %s", metric, method)
    for metric, entry in metrics.items():
        info = get_metric(entry["fn"])
        params = {k: v for k, v in entry.items() if k not in METRIC_ENTRY_KEYS}
        # A limited metric scores the first N samples only (a prefix, like a limited method).
        n = min(len(shards.ids), entry.get("samples") or len(shards.ids))
        if not shards.applicable:
            output = MetricOutput.skipped(n, f"method not applicable: {shards.reason}")
        else:
            output = _score_batches(context, n, info, params, derive_seed(seed, dataset, model, method, metric))
        table = _rows(output, n, dataset, model, method, metric, info, entry, shards, method_code, metrics_code[metric])
        write_table(table, out_paths[metric])
        ok = np.array(output.status) == "ok"
        LOG.info("%s: %d ok, mean %.4f", metric, ok.sum(), np.nanmean(output.values[ok]) if ok.any() else float("nan"))


@dataclass(frozen=True)
class ScoringContext:
    """What every metric of one score job reads: the samples, their maps and the model."""

    model: torch.nn.Module
    images: torch.Tensor
    maps: torch.Tensor | None
    targets: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    diagnostics: dict[str, torch.Tensor]
    ids: list[str]
    method: str
    method_entry: dict[str, Any]
    shards: ShardMaps
    explain: Callable[..., torch.Tensor]
    max_batch: int
    seed: int

    def inputs(self, lo: int, hi: int) -> MetricInputs:
        return MetricInputs(
            model=self.model,
            images=self.images[lo:hi],
            maps=self.maps[lo:hi],
            targets=self.targets[lo:hi],
            labels=self.labels[lo:hi],
            ids=self.ids[lo:hi],
            masks=self.masks[lo:hi] if self.masks is not None else None,
            diagnostics={k: v[lo:hi] for k, v in self.diagnostics.items()},
            method=self.method,
            method_fn=self.shards.method_fn,
            method_claims_completeness=self.shards.claims_completeness,
            explain=self.explain,
            method_params=method_params(self.method_entry),
            seed=self.seed,
        )


def _score_batches(context: ScoringContext, n: int, info, params: dict[str, Any], seed: int) -> MetricOutput:
    """One metric over the first ``n`` samples, in calls of `SAMPLES_PER_CALL`."""
    values, curves, status, reasons = [], [], [], []
    any_curve = False
    device = context.images.device
    nonfinite_maps = context.diagnostics.get("nonfinite")
    for lo in range(0, n, SAMPLES_PER_CALL):
        hi = min(lo + SAMPLES_PER_CALL, n)
        # Seeded per batch position: the same config gives the same subsets and noise.
        out = call_metric(
            info, context.inputs(lo, hi), params, generator=generator_for(device, seed + lo), max_batch=context.max_batch
        )
        if nonfinite_maps is not None:
            for i, bad in enumerate(nonfinite_maps[lo:hi].tolist()):
                if bad:
                    out.values[i] = np.nan
                    out.status[i], out.reasons[i] = "nan", "the method produced a non-finite map"
        values.append(out.values)
        status.extend(out.status)
        reasons.extend(out.reasons)
        if out.curves is not None:
            any_curve = True
            curves.extend(out.curves)
        else:
            curves.extend([None] * (hi - lo))
    return MetricOutput(np.concatenate(values) if values else np.zeros(0), curves if any_curve else None, status, reasons)


def _explainer(method_entry, net, max_batch, seed, references=None):
    """Re-runs the method, for explainer metrics (attack robustness, sanity checks, …).

    `explain(x, target, model=None, **overrides)` returns maps reduced like the stored ones;
    `model` swaps the network (e.g. a randomised copy) and `overrides` replace method
    parameters (e.g. `steps` for Riemann-step stability).
    """
    from attrflow.methods import call_method, get_method, reduce_channels

    info = get_method(method_entry["fn"])
    params = method_params(method_entry)
    keep = bool(method_entry.get("keep_channels", False))

    def explain(x: torch.Tensor, target: torch.Tensor, model=None, **overrides) -> torch.Tensor:
        gen = generator_for(x.device, seed)
        chosen = {**params, **overrides}
        pool, weights = references if references is not None else (None, None)
        maps = call_method(
            info, model or net, x, target, chosen, generator=gen, max_batch=max_batch,
            references=pool, reference_weights=weights,
        ).maps
        return maps if keep else reduce_channels(maps)

    return explain


def _rows(output, n, dataset, model, method, metric, info, entry, shards, method_code, metric_code) -> pa.Table:
    curves = output.curves or [None] * n
    columns = {
        "dataset": [dataset] * n,
        "model": [model] * n,
        "method": [method] * n,
        "metric": [metric] * n,
        "sample_id": list(shards.ids[:n]),
        "target": shards.targets[:n].astype(np.int64),
        "value": output.values,
        "curve": [None if c is None else np.asarray(c, dtype=np.float64).tolist() for c in curves],
        "status": list(output.status),
        "reason": list(output.reasons),
        "direction": [info.direction] * n,
        "method_fn": [shards.method_fn] * n,
        "metric_fn": [entry["fn"]] * n,
        "method_fingerprint": [method_code] * n,
        "metric_fingerprint": [metric_code] * n,
        "model_fingerprint": [shards.model_fingerprint] * n,
        "dataset_fingerprint": [shards.dataset_fingerprint] * n,
    }
    return pa.table(columns, schema=SCORES)
