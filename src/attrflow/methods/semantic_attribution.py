"""Semantic attribution (Khakzar et al., 2021): which units of a layer carry the decision.

Every neuron i of unit (channel) k at the chosen layer gets its Integrated Gradients
contribution to the target logit f, from a zero activation to its own (Eq. 6 of the paper):

    s_k^i = a_k^i · ∫₀¹ ∂f(α·a)/∂a_k^i dα,

as a right Riemann sum of ``steps`` points with the whole layer scaled at once (the same
integral as NeuronIntGrad of Khakzar et al., CVPR 2021, whose code it shares). Over the layer the
contributions add up to f(x) − f(a ← 0) (IG's completeness at the layer, exact on a network
that is linear after the layer, up to the Riemann error otherwise).

* The **unit contribution** is Σ_i |s_k^i|: "the absolute value is for considering both positive
  and negative contributions".
* The ``top_units`` units of highest contribution are the ones the paper names with their
  Network Dissection (Bau et al., 2017) concept; the report joins them with the dissection table
  of the same (dataset, model, layer) — labelling needs the whole dataset, a map one image.
* The **map** is the top unit's IG map divided by the maximum s_k^i of its neurons (the paper's
  visualisation; by max |s_k^i| when no neuron contributes positively) and upsampled bilinearly
  to the input size: one (H, W) map per sample (channel-free).

Layer: the paper uses the last convolutional layer, attrflow's ``"default"`` (the CAM layer).
The paper gives no step count; 50 (NeuronIntGrad's) is the default. Cost: ``steps`` forward
and backward passes per image.

Diagnostics: ``unit_contributions`` (n, K) Σ_i |s_k^i|; ``top_units`` (n, top_units) their unit
indices, best first; ``top_unit_maps`` (n, top_units, h, w) their normalised IG maps at the
layer's resolution; ``layer_total`` (n,) Σ_k Σ_i s_k^i; ``layer_gap`` (n,) f(x) − f(a ← 0).
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from attrflow.methods._batching import check_max_batch, evaluation_mode, validate_batch
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, MethodNotApplicable, register_method
from attrflow.methods.pathway_grad import ActivationSites, target_logits, neuron_intgrad, pathway_modules
from attrflow.params import Doc, Ge, MinLen


@register_method("semantic_attribution", channel_free=True)
def semantic_attribution(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    layer: Annotated[
        str,
        MinLen(1),
        Doc(
            "the layer whose units are attributed: 'default' (the CAM layer, the last convolution "
            "as in Khakzar et al., 2021), 'stage1'..'stage4' or a module path"
        ),
    ] = "default",
    steps: Annotated[
        int,
        Ge(1),
        Doc("Riemann steps of the per-unit Integrated Gradients (Khakzar et al., 2021 give none)"),
    ] = 50,
    top_units: Annotated[
        int, Ge(1), Doc("how many of the highest-contributing units to record with their maps")
    ] = 3,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """The top unit's normalised, upsampled IG map (module doc); per-unit contributions stored."""
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    modules = pathway_modules(model, [layer])
    with evaluation_mode(model):
        scores = neuron_intgrad(model, x, target, modules, steps=steps, max_batch=max_batch)
        if len(scores) != 1:
            raise MethodNotApplicable(
                f"semantic_attribution: layer {layer!r} runs {len(scores)} times per forward pass; "
                "name a layer that runs once"
            )
        contributions = scores[0]
        if contributions.dim() != 4:
            raise MethodNotApplicable(
                f"semantic_attribution: layer {layer!r} outputs shape {tuple(contributions.shape)}, "
                "not (n, units, h, w)"
            )
        gap = layer_gap(model, x, target, modules)
    unit_totals = contributions.abs().flatten(2).sum(dim=2)
    k = min(top_units, unit_totals.shape[1])
    top = unit_totals.topk(k, dim=1).indices
    picked = contributions.gather(1, top[:, :, None, None].expand(-1, -1, *contributions.shape[2:]))
    normalised = normalise_unit_maps(picked)
    maps = F.interpolate(normalised[:, :1], size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]
    return Attribution(
        maps=maps,
        diagnostics={
            "unit_contributions": unit_totals,
            "top_units": top,
            "top_unit_maps": normalised,
            "layer_total": contributions.flatten(1).sum(dim=1),
            "layer_gap": gap,
        },
    )


def normalise_unit_maps(maps: torch.Tensor) -> torch.Tensor:
    """Each (h, w) map divided by its largest value, or by its largest magnitude when no value is
    positive (an all-zero map stays zero)."""
    flat = maps.flatten(2)
    peak = flat.amax(dim=2)
    magnitude = flat.abs().amax(dim=2)
    scale = torch.where(peak > 0, peak, magnitude)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return maps / scale[:, :, None, None]


@torch.no_grad()
def layer_gap(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, modules) -> torch.Tensor:
    """f(x) − f(a ← 0): the target logit minus its value with the layer's output set to zero."""
    sites = ActivationSites(modules)
    with sites.attached():
        full = target_logits(sites.run(model, x), target)
        sites.transform = lambda index, output: torch.zeros_like(output)
        zeroed = target_logits(sites.run(model, x), target)
    return full - zeroed
