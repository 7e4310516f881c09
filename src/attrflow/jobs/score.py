"""The `score` job: every selected metric on one attribution shard of one (dataset, model, method)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from attrflow.data.sample_store import read_samples
from attrflow.explainer import Explainer
from attrflow.jobs.runtime import derive_seed, generator_for, progress, resolve_device
from attrflow.metrics import MetricInputs, MetricOutput, call_metric, get_metric
from attrflow.metrics.base import PeerMaps, peer_parameters
from attrflow.registry import signature_params
from attrflow.report.schema import SCORES, write_table
from attrflow.store import StoreError, open_store

LOG = logging.getLogger("attrflow")
# Samples per metric call: metrics batch their perturbed copies up to `max_batch` inside.
SAMPLES_PER_CALL = 32
# Keys of a metric entry that are not the metric function's parameters.
METRIC_ENTRY_KEYS = ("fn", "samples", "retest")


@dataclass
class ShardMaps:
    """One attribution shard of one (dataset, model, method): its maps and what they are."""

    ids: list[str]
    targets: np.ndarray
    labels: np.ndarray
    maps: np.ndarray | None  # None when the method was not applicable
    diagnostics: dict[str, np.ndarray]
    method_fn: str
    applicable: bool = True
    reason: str | None = None
    claims_completeness: bool = False
    model_fingerprint: str = ""
    dataset_fingerprint: str = ""
    # What the maps are, whatever their path: the key they were computed under.
    result_key: str = ""

    @classmethod
    def read(cls, path: str | Path) -> ShardMaps:
        """The maps of a verified attribution shard store."""
        group = open_store(path)
        attrs: dict[str, Any] = dict(group.attrs)
        applicable = bool(attrs.get("applicable", True))
        return cls(
            ids=group["ids"][:].tolist(),
            targets=group["targets"][:],
            labels=group["labels"][:],
            maps=group["maps"][:] if applicable else None,
            diagnostics=(
                {k: group["diagnostics"][k][:] for k in group["diagnostics"].array_keys()}
                if applicable and "diagnostics" in group
                else {}
            ),
            method_fn=attrs.get("fn", ""),
            applicable=applicable,
            reason=attrs.get("reason"),
            claims_completeness=bool(attrs.get("claims_completeness", False)),
            model_fingerprint=attrs.get("model_fingerprint", ""),
            dataset_fingerprint=attrs.get("dataset_fingerprint", ""),
            result_key=attrs.get("result_key", ""),
        )

    @classmethod
    def read_joined(cls, paths: str | Path | list[str | Path]) -> ShardMaps:
        """The maps of several stores of one entry, in order, as one (a peer entry whose jobs
        group evaluation shards differently from the scored method's)."""
        stores = [cls.read(path) for path in ([paths] if isinstance(paths, str | Path) else paths)]
        if len(stores) == 1:
            return stores[0]
        first = stores[0]
        applicable = all(s.applicable for s in stores)
        return replace(
            first,
            ids=[i for s in stores for i in s.ids],
            targets=np.concatenate([s.targets for s in stores]),
            labels=np.concatenate([s.labels for s in stores]),
            maps=np.concatenate([s.maps for s in stores]) if applicable else None,
            diagnostics=(
                {k: np.concatenate([s.diagnostics[k] for s in stores]) for k in first.diagnostics} if applicable else {}
            ),
            applicable=applicable,
            reason=next((s.reason for s in stores if not s.applicable), None),
            result_key=",".join(s.result_key for s in stores),
        )

    def rows(self, lo: int, hi: int) -> ShardMaps:
        """Samples [lo, hi) of these maps (positions in the store, not dataset indices)."""
        return replace(
            self,
            ids=self.ids[lo:hi],
            targets=self.targets[lo:hi],
            labels=self.labels[lo:hi],
            maps=self.maps[lo:hi] if self.maps is not None else None,
            diagnostics={k: v[lo:hi] for k, v in self.diagnostics.items()},
        )


def score_shard(
    *,
    samples_path: str | Path | list[str],
    model_dir: str | Path,
    maps_path: str | Path,
    out_path: str | Path,
    dataset: str,
    model: str,
    method: str,
    method_entry: dict[str, Any],
    method_code: str,
    metrics: dict[str, dict[str, Any]],
    metrics_code: dict[str, str],
    sample_range: list[int],
    device: str,
    seed: int,
    max_batch: int,
    target: str,
    references_path: str | Path | None = None,
    peer_paths: dict[str, str | Path | list[str]] | None = None,
    peers: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Every selected metric on one attribution shard, into one Parquet file.

    Each metric's rows are memoised under a key of everything they depend on (the metric's
    entry and code, the maps' own result key, the model, the samples, the seed and runtime):
    a job re-run because another metric was added or changed computes only what is new.

    ``samples_path`` may list several evaluation shard stores (a method with `shards_per_job`):
    each one's samples are scored as that shard's own job would (same batches and seeds), so
    the scores do not depend on how shards are grouped into jobs.

    ``peer_paths`` maps a method entry name to its attribution stores holding these samples, for
    metrics whose parameters name another method entry (`peer_parameters`); ``peers`` is that
    entry's planned setting (entry and code), which only makes its changes re-plan this job.
    """
    from attrflow.cache import ResultCache
    from attrflow.data.sample_store import eval_parts
    from attrflow.models.cards import load_model

    dev = resolve_device(device)
    shards = ShardMaps.read(maps_path)
    start, stop = (int(v) for v in sample_range)
    parts = eval_parts(samples_path, start, stop)
    part_samples = [read_samples(part.path, "eval", part.start, part.stop) for part in parts]
    if [i for samples in part_samples for i in samples.ids] != shards.ids:
        raise StoreError(
            f"the sample ids in {samples_path} do not match those in {maps_path}; the dataset changed "
            "since the maps were computed"
        )
    cache = ResultCache.beside(out_path)
    part_keys = [part.fingerprint for part in parts]
    samples_key = part_keys[0] if len(part_keys) == 1 else part_keys
    peer_shards = {name: ShardMaps.read_joined(paths) for name, paths in (peer_paths or {}).items()}
    keys = {
        metric: cache.key(
            "score",
            metric=metric,
            entry=entry,
            code=metrics_code[metric],
            maps=shards.result_key,
            method_code=method_code,
            names=[dataset, model, method],
            samples=samples_key,
            sample_range=[start, stop],
            runtime=[device, seed, max_batch, target],
            # Only metrics that read another entry's maps key on them (others keep their keys).
            **_peer_keys(entry, peer_shards),
        )
        for metric, entry in metrics.items()
    }
    tables: dict[str, pa.Table] = {}
    for metric in metrics:
        cached = cache.read_table("scores", keys[metric])
        if cached is not None:
            tables[metric] = cached
            LOG.info("%s: reused (unchanged since it was computed)", metric)
    todo = [m for m in metrics if m not in tables]
    if todo:
        net = load_model(model_dir, dev)
        references = None
        if references_path is not None:
            from attrflow.jobs.references import load_references

            references = load_references(references_path, dev)
        peer_maps = _peer_maps(peer_shards, dev)
        scored = []  # (context, predictions, first index) per evaluation shard, in order
        at = 0
        for part, samples in zip(parts, part_samples, strict=True):
            part_maps = shards.rows(at, at + len(samples))
            at += len(samples)
            context = _context(net, samples, part_maps, dataset, model, method, method_entry, seed, max_batch, references, dev)
            scored.append((replace(context, peers=peer_maps), predictions_of(net, context.images, max_batch), part.start))
        for metric in todo:
            tables[metric] = pa.concat_tables([
                score_metric(
                    context, metric, metrics[metric], metrics_code[metric], method_code, predictions,
                    names=(dataset, model, method), first_index=first, seed=seed,
                )
                for context, predictions, first in scored
            ])
            cache.write_table("scores", keys[metric], tables[metric])
    table = pa.concat_tables([tables[m] for m in metrics]) if metrics else SCORES.empty_table()
    # The keys the rows were computed under, so `attrflow.clean --cache` keeps their entries.
    table = table.replace_schema_metadata({"attrflow.keys": json.dumps(keys, sort_keys=True)})
    write_table(table, out_path)
    return Path(out_path)


def _peer_keys(entry: dict[str, Any], peer_shards: dict[str, ShardMaps]) -> dict[str, Any]:
    """The result keys of the other entries' maps a metric entry names ({} when it names none)."""
    params = get_metric(entry["fn"]).params
    named = sorted({entry.get(p, params[p].get("default")) for p in peer_parameters(params)})
    if not named:
        return {}
    return {"peers": {name: peer_shards[name].result_key if name in peer_shards else None for name in named}}


def _peer_maps(peer_shards: dict[str, ShardMaps], dev: torch.device) -> dict[str, PeerMaps]:
    return {
        name: PeerMaps(
            ids=shard.ids,
            maps=torch.from_numpy(shard.maps).to(dev),
            diagnostics={k: torch.from_numpy(v).to(dev) for k, v in shard.diagnostics.items()},
            method_fn=shard.method_fn,
        )
        for name, shard in peer_shards.items()
        if shard.applicable
    }


@torch.no_grad()
def predictions_of(net: torch.nn.Module, images: torch.Tensor, max_batch: int) -> np.ndarray:
    """Predicted classes; for a regression model its score rounded to the nearest integer (so a
    row is ``correct`` when the rounded score is the integer label, e.g. the total severity)."""
    from attrflow.models.wrapper import is_regression

    if is_regression(net):
        chunks = [net(chunk)[:, 0].round().long().cpu().numpy() for chunk in images.split(max_batch)]
        return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
    chunks = [net(chunk).argmax(dim=1).cpu().numpy() for chunk in images.split(max_batch)]
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)


def _context(net, samples, shards, dataset, model, method, method_entry, seed, max_batch, references, dev):
    pool, weights = references if references is not None else (None, None)
    return ScoringContext(
        model=net,
        images=torch.from_numpy(samples.images).to(dev),
        maps=torch.from_numpy(shards.maps).to(dev) if shards.maps is not None else None,
        targets=torch.from_numpy(shards.targets).to(dev),
        labels=torch.from_numpy(samples.labels).to(dev),
        masks=torch.from_numpy(samples.masks).to(dev) if samples.masks is not None else None,
        severity=torch.from_numpy(samples.severity).to(dev) if samples.severity is not None else None,
        diagnostics={k: torch.from_numpy(v).to(dev) for k, v in shards.diagnostics.items()},
        ids=samples.ids,
        method=method,
        shards=shards,
        explainer=Explainer.from_entry(
            method_entry, net, references=pool, reference_weights=weights, max_batch=max_batch,
            seed=reexplain_seed(seed, dataset, model, method),
        ),
        max_batch=max_batch,
        seed=derive_seed(seed, dataset, model, method),
    )


def reexplain_seed(seed: int, dataset: str, model: str, method: str) -> int:
    """The seed of the generator explainer metrics re-run a method with (fresh on every call)."""
    return derive_seed(seed, dataset, model, method, "re-explain")


def score_metric(
    context: ScoringContext,
    metric: str,
    entry: dict[str, Any],
    metric_code: str,
    method_code: str,
    predictions: np.ndarray,
    *,
    names: tuple[str, str, str],
    first_index: int,
    seed: int,
) -> pa.Table:
    """One metric's rows for the samples of one shard (a limited metric: the first N of the
    dataset). Metrics that draw randomness are scored a second time with an independent seed
    (`value_retest`), so the report can say how reliable they are."""
    dataset, model, method = names
    info = get_metric(entry["fn"])
    params = {k: v for k, v in entry.items() if k not in METRIC_ENTRY_KEYS}
    limit = entry.get("samples")
    n = len(context.ids) if limit is None else max(0, min(len(context.ids), int(limit) - first_index))
    metric_seed = derive_seed(seed, dataset, model, method, metric)
    if not context.shards.applicable:
        output = MetricOutput.skipped(n, f"method not applicable: {context.shards.reason}")
        retest = None
    else:
        output = score_batches(context, n, info, params, metric_seed, first_index)
        retest = None
        if is_stochastic(info) and entry.get("retest", True):
            retest_context = replace(context, seed=derive_seed(context.seed, "retest"))
            retest = score_batches(retest_context, n, info, params, derive_seed(metric_seed, "retest"), first_index)
    ok = np.array(output.status) == "ok"
    LOG.info("%s: %d ok, mean %.4f", metric, ok.sum(), np.nanmean(output.values[ok]) if ok.any() else float("nan"))
    return _rows(output, retest, predictions, n, names, metric, info, entry, context.shards, method_code, metric_code)


def is_stochastic(info) -> bool:
    """Whether a metric draws random subsets, noise or attacks: it takes a random generator."""
    return "generator" in signature_params(info.fn, positional=1)


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
    shards: ShardMaps
    explainer: Explainer | None  # the method that made the maps, for explainer metrics
    max_batch: int
    seed: int
    peers: dict[str, PeerMaps] = field(default_factory=dict)
    severity: torch.Tensor | None = None  # (n, H, W) per-pixel severity, for regression datasets

    def inputs(self, lo: int, hi: int) -> MetricInputs:
        return MetricInputs(
            model=self.model,
            images=self.images[lo:hi],
            maps=self.maps[lo:hi],
            targets=self.targets[lo:hi],
            labels=self.labels[lo:hi],
            ids=self.ids[lo:hi],
            masks=self.masks[lo:hi] if self.masks is not None else None,
            severity=self.severity[lo:hi] if self.severity is not None else None,
            diagnostics={k: v[lo:hi] for k, v in self.diagnostics.items()},
            method=self.method,
            method_fn=self.shards.method_fn,
            method_claims_completeness=self.shards.claims_completeness,
            explain=self.explainer,
            method_params=dict(self.explainer.params) if self.explainer is not None else {},
            seed=self.seed,
            peers=self.peers,
        )


def score_batches(
    context: ScoringContext, n: int, info, params: dict[str, Any], seed: int, first_index: int = 0
) -> MetricOutput:
    """One metric over the first ``n`` samples of the context, in calls of `SAMPLES_PER_CALL`.

    Each call's generator is seeded by its samples' position in the dataset, so scoring a shard
    gives the values scoring the whole dataset at once would."""
    values, curves, status, reasons = [], [], [], []
    any_curve = False
    device = context.images.device
    nonfinite_maps = context.diagnostics.get("nonfinite")
    with progress(n, info.name) as bar:
        for lo in range(0, n, SAMPLES_PER_CALL):
            hi = min(lo + SAMPLES_PER_CALL, n)
            # Seeded per batch position: the same config gives the same subsets and noise.
            out = call_metric(
                info, context.inputs(lo, hi), params, generator=generator_for(device, seed + first_index + lo),
                max_batch=context.max_batch,
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
            bar.update(hi - lo)
    return MetricOutput(np.concatenate(values) if values else np.zeros(0), curves if any_curve else None, status, reasons)


def _rows(output, retest, predictions, n, names, metric, info, entry, shards, method_code, metric_code) -> pa.Table:
    dataset, model, method = names
    curves = output.curves or [None] * n
    columns = {
        "dataset": [dataset] * n,
        "model": [model] * n,
        "method": [method] * n,
        "metric": [metric] * n,
        "sample_id": list(shards.ids[:n]),
        "target": shards.targets[:n].astype(np.int64),
        "label": shards.labels[:n].astype(np.int64),
        "correct": (predictions[:n] == shards.labels[:n]),
        "value": output.values,
        "value_retest": retest.values if retest is not None else [None] * n,
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
