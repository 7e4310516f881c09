"""Pathway diagnostics of Khakzar et al., CVPR 2021 ("Neural Response Interpretation through the
Lens of Critical Pathways"), for ``pathway_grad`` methods.

* ``pathway_dead_share`` — the share of a selected pathway's neurons that were *originally dead*
  (zero in the unmodified forward pass). Pathways that encode the input should avoid them: a dead
  neuron has zero Shapley value for the response (their Lemma 1); pruning-based selections
  (GreedyPruning, DGR) pick up to ~69 % of them. The method stores the share as it selects the
  pathway (``dead_fraction``, per layer ``dead_fraction_layers``), so this is a diagnostic metric:
  it reads, it does not recompute. Lower is better. The curve is the share per layer.
* ``pathway_jaccard`` — the Jaccard similarity |e₁ ∧ e₂| / |e₁ ∨ e₂| of the pathway indicator
  vectors e of the evaluated method and of a pathway selected by another criterion (NeuronIntGrad
  by default, the reference of their layer-wise figure) at the same layers and sparsity (or
  another), network-wide as the value and per layer as the curve. Both pathways are selected
  again here from the model (selection is deterministic), so it is an explainer metric. It
  describes, it does not rank: its direction says "higher" only because agreement with the
  reference is what the paper reads off the figure.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch

from attrflow.metrics._removal import with_reasons
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc, Ge, Le

PATHWAY_FN = "pathway_grad"


def _who(inputs: MetricInputs) -> str:
    return f"method {inputs.method!r} (fn {inputs.method_fn!r})"


@register_metric("pathway_dead_share", kind="diagnostic", direction="lower")
def pathway_dead_share(inputs: MetricInputs) -> MetricOutput:
    """Share of the pathway's neurons that were dead in the original forward pass (module doc)."""
    share = inputs.diagnostics.get("dead_fraction")
    if share is None:
        return MetricOutput.skipped(
            inputs.n, f"{_who(inputs)} stored no 'dead_fraction' diagnostic: it selects no pathway"
        )
    share = share.double().reshape(-1)
    if share.shape[0] != inputs.n:
        raise ValueError(f"pathway_dead_share: 'dead_fraction' of {_who(inputs)} has {share.shape[0]} values for {inputs.n} samples")
    layers = inputs.diagnostics.get("dead_fraction_layers")
    curves = list(layers.double().cpu().numpy()) if layers is not None else None
    reasons = ["the pathway is empty" if not np.isfinite(v) else None for v in share.tolist()]
    return with_reasons(share.cpu().numpy(), curves, reasons)


def jaccard(first: list[torch.Tensor], second: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Jaccard similarity of two pathways given as per-site boolean masks (n, ...): network-wide
    (n,) and per site (n, sites); NaN where both are empty (the union is empty)."""
    if len(first) != len(second) or any(a.shape != b.shape for a, b in zip(first, second)):
        raise ValueError("jaccard: the two pathways must cover the same sites with the same shapes")
    both = torch.stack([(a & b).flatten(1).sum(dim=1) for a, b in zip(first, second)], dim=1).double()
    either = torch.stack([(a | b).flatten(1).sum(dim=1) for a, b in zip(first, second)], dim=1).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=both.device)
    overall = torch.where(either.sum(dim=1) > 0, both.sum(dim=1) / either.sum(dim=1).clamp(min=1), nan)
    per_site = torch.where(either > 0, both / either.clamp(min=1), nan)
    return overall, per_site


@register_metric("pathway_jaccard", kind="explainer", direction="higher")
def pathway_jaccard(
    inputs: MetricInputs,
    *,
    criterion: Annotated[
        Literal["neuron_mct", "neuron_intgrad"],
        Doc(
            "the criterion of the reference pathway (Khakzar et al., 2021 compare layer-wise "
            "against NeuronIntGrad)"
        ),
    ] = "neuron_intgrad",
    sparsity: Annotated[
        float | None, Ge(0), Le(1), Doc("sparsity of the reference pathway (default: the method's own)")
    ] = None,
    steps: Annotated[
        int, Ge(1), Doc("Riemann steps of a NeuronIntGrad reference (50 in Khakzar et al., 2021)")
    ] = 50,
    max_batch: int = 256,
) -> MetricOutput:
    """Jaccard similarity of the method's pathway with a reference pathway (module doc)."""
    if inputs.method_fn != PATHWAY_FN:
        return MetricOutput.skipped(inputs.n, f"pathway_jaccard applies to {PATHWAY_FN} methods only; {_who(inputs)} is not one")
    from attrflow.methods import get_method
    from attrflow.methods.pathway_grad import evaluation_mode, neuron_intgrad, neuron_mct, pathway_modules, select_pathway

    defaults = {k: v.get("default") for k, v in get_method(PATHWAY_FN).params.items()}
    own = {**defaults, **inputs.method_params}
    modules = pathway_modules(inputs.model, own["layers"])

    def pathway(chosen: str, chosen_sparsity: float, chosen_steps: int) -> list[torch.Tensor]:
        if chosen == "neuron_mct":
            scores = neuron_mct(inputs.model, inputs.images, inputs.targets, modules)
        else:
            scores = neuron_intgrad(
                inputs.model, inputs.images, inputs.targets, modules, steps=chosen_steps, max_batch=max_batch
            )
        return select_pathway(scores, chosen_sparsity)[0]

    with evaluation_mode(inputs.model):
        evaluated = pathway(own["criterion"], float(own["sparsity"]), int(own["steps"]))
        reference = pathway(criterion, float(own["sparsity"] if sparsity is None else sparsity), steps)
    overall, per_site = jaccard(evaluated, reference)
    reasons = ["both pathways are empty" if not np.isfinite(v) else None for v in overall.tolist()]
    return with_reasons(overall.cpu().numpy(), list(per_site.cpu().numpy()), reasons)
