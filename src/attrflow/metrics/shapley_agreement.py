"""Agreement of a map with exact Shapley values of a grid of super-pixels.

The exact Shapley values (`attrflow.methods.shapley.exact_shapley`) of the same (dataset, model,
samples) are a ground truth for "which region matters how much" under removal to a baseline.
These metrics pool the scored method's map over the same grid cells (the sum over each cell's
pixels, channels summed first) and compare the g² pooled scores with the g² Shapley values:

* ``shapley_spearman``: Spearman's rank correlation (scipy.stats.spearmanr), in [−1, 1];
* ``shapley_topk``: the overlap |top-k(pooled) ∩ top-k(φ)| / k of the k highest cells.

Higher is better for both. ``order: absolute`` ranks magnitudes instead of signed values.

**Where the Shapley values come from.** The metric does not recompute them (65,536 forward
passes per image on a 4×4 grid): parameter ``reference`` names the method ENTRY of the config
whose stored maps hold them (a ``fn: exact_shapley`` entry). The workflow makes that entry's
attribution shards an input of every score job whose metrics name it, and its parameters and
code part of the job's parameters, so the values are computed once per (dataset, model) and a
change to them re-scores exactly the agreement metrics. Samples the reference was not computed
on (an entry with fewer ``samples``, or limited to other ``models``) are skipped with a reason;
a map whose pooled cells are all equal (no ranking, Spearman undefined) gets NaN with a reason.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from scipy.stats import spearmanr

from attrflow.methods.superpixels import grid_segments, pool_segments
from attrflow.metrics._removal import checked_maps
from attrflow.metrics.base import NAN, OK, SKIPPED, MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc, Ge, MethodEntry

# The parameters both agreement metrics take, declared once (`attrflow.params`).
Reference = Annotated[
    str,
    MethodEntry(),
    Doc("the method entry (fn exact_shapley) whose stored maps hold the exact Shapley values"),
]
CellOrder = Annotated[
    Literal["signed", "absolute"],
    Doc("rank the cells by their signed pooled map and Shapley values, or by their magnitudes"),
]

NO_REFERENCE = "no exact Shapley values of {reference!r} for this sample (model or sample not covered)"
CONSTANT = "the pooled map is constant over the grid cells: it ranks no cell above another"


def _pooled_pairs(inputs: MetricInputs, reference: str, order: str, metric: str):
    """Per sample: (pooled map (g²,), Shapley values (g²,)) in float64 numpy, or None."""
    peer = inputs.peers.get(reference)
    if peer is None:
        # The entry does not run on this model (its `models:`), or not on these samples' shard:
        # the config check has made sure it exists.
        return [None] * inputs.n
    values = peer.diagnostics.get("shapley_values")
    if values is None:
        raise ValueError(
            f"{metric}: method entry {reference!r} (fn {peer.method_fn!r}) stored no "
            f"'shapley_values'; parameter reference must name an entry with fn exact_shapley"
        )
    side = int(values.shape[-1])
    maps = checked_maps(inputs, metric)
    cells = grid_segments(maps.shape[1], maps.shape[2], side, device=maps.device)
    pooled = pool_segments(maps.double(), cells.expand(maps.shape[0], -1, -1), side * side)
    if order == "absolute":
        pooled = pooled.abs()
    out = []
    for i, row in enumerate(peer.rows(inputs.ids)):
        if row is None:
            out.append(None)
            continue
        phi = values[row].reshape(-1).double()
        if order == "absolute":
            phi = phi.abs()
        out.append((pooled[i].cpu().numpy(), phi.cpu().numpy()))
    return out


def _output(scores: list[float | None], reasons: list[str | None]) -> MetricOutput:
    values = np.array([np.nan if v is None else v for v in scores], dtype=np.float64)
    status, why = [], []
    for value, reason in zip(values, reasons, strict=True):
        if reason is not None and reason.startswith("no exact Shapley"):
            status.append(SKIPPED)
            why.append(reason)
        elif reason is not None or not np.isfinite(value):
            status.append(NAN)
            why.append(reason or "value is not finite")
        else:
            status.append(OK)
            why.append(None)
    return MetricOutput(values, None, status, why)


@register_metric("shapley_spearman", kind="map", direction="higher")
def shapley_spearman(
    inputs: MetricInputs, *, reference: Reference = "exact_shapley", order: CellOrder = "signed"
) -> MetricOutput:
    """Spearman's ρ between the map pooled over the grid cells and the cells' exact Shapley values."""
    scores: list[float | None] = []
    reasons: list[str | None] = []
    for pair in _pooled_pairs(inputs, reference, order, "shapley_spearman"):
        if pair is None:
            scores.append(None)
            reasons.append(NO_REFERENCE.format(reference=reference))
        elif np.ptp(pair[0]) == 0:
            scores.append(None)
            reasons.append(CONSTANT)
        else:
            scores.append(float(spearmanr(pair[0], pair[1]).statistic))
            reasons.append(None)
    return _output(scores, reasons)


@register_metric("shapley_topk", kind="map", direction="higher")
def shapley_topk(
    inputs: MetricInputs,
    *,
    reference: Reference = "exact_shapley",
    top_k: Annotated[
        int, Ge(1), Doc("k: how many of the highest cells to compare (at most the grid's cell count)")
    ] = 4,
    order: CellOrder = "signed",
) -> MetricOutput:
    """|top-k cells of the pooled map ∩ top-k cells by exact Shapley value| / k.

    Ties are broken by cell order (row-major), the same way for both rankings."""
    scores: list[float | None] = []
    reasons: list[str | None] = []
    for pair in _pooled_pairs(inputs, reference, order, "shapley_topk"):
        if pair is None:
            scores.append(None)
            reasons.append(NO_REFERENCE.format(reference=reference))
            continue
        pooled, phi = pair
        if top_k > pooled.shape[0]:
            raise ValueError(
                f"shapley_topk: parameter top_k {top_k} exceeds the {pooled.shape[0]} grid cells of {reference!r}"
            )
        if np.ptp(pooled) == 0:
            scores.append(None)
            reasons.append(CONSTANT)
            continue
        ours = set(np.argsort(-pooled, kind="stable")[:top_k].tolist())
        truth = set(np.argsort(-phi, kind="stable")[:top_k].tolist())
        scores.append(len(ours & truth) / top_k)
        reasons.append(None)
    return _output(scores, reasons)
