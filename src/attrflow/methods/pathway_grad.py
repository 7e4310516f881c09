"""Pathway Gradient with NeuronMCT / NeuronIntGrad critical pathways (Khakzar et al., CVPR 2021).

1. **Neuron contributions** to the target logit Φ, for every unit (every element, per sample) of
   the chosen layers' outputs:
   * ``neuron_mct`` (marginal contribution, first-order Taylor): c = |a · ∂Φ/∂a|, one forward
     and one backward pass;
   * ``neuron_intgrad`` (Integrated Gradients on the layer, baseline 0): c = a · ∫₀¹ ∂Φ/∂a' at
     a' = α·a dα, the whole layer scaled at once, as a right Riemann sum of ``steps`` points.
     Per layer its contributions sum to Φ(x) − Φ(a ← 0) (IG's completeness, the paper's reason
     for ranking across layers). Signed, as in the paper's Eq. 4 (the authors' release ranks
     |·|). Cost: ``steps`` passes per layer.
2. **Critical pathway at sparsity κ.** Network-wide (not per layer) per sample: the
   round(κ·N) units of lowest contribution are left out; the rest, c ≥ c_κ, form the pathway
   (ties at the threshold stay in). κ is the fraction of units *removed*, the paper's meaning
   (ResNet-50 0.7, VGG-16 0.9): κ = 0 is the whole network, κ = 1 the empty pathway.
   When more than κ of the units contribute exactly 0 — dead ReLUs, and the 3 in 4 ReLU outputs a
   2×2 max-pool discards — c_κ = 0 and every contributing unit is kept, so the map is the plain
   gradient (the authors' release, which drops c ≤ c_κ, gives the same gradient). On networks
   that pool right after their ReLUs (the small CNN), rank the pooled stage outputs instead
   (``layers: [stage1, stage2, stage3, stage4]``); ``threshold`` = 0 flags the case.
3. **Pathway gradient.** Every unit outside the pathway is replaced by a constant equal to its
   own activation: the forward values and the activation pattern are unchanged, but no
   gradient flows through it. The map is ∇ₓΦ̂ of that locally linear pathway model, signed
   (n, C, H, W); the runner reduces channels. (The authors' release zeroes left-out units
   instead, which changes the forward pass; the paper's definition is followed here.)

Layers: ``layers`` lists `resolve_layer` names (``"default"``, ``"stage1"`` … ``"stage4"``,
module paths) or ``"all_relus"``, every ``nn.ReLU`` module of the network — the paper's hidden
neurons and its default. A module that runs more than once per forward pass (a ReLU shared
within a torchvision ResNet block) contributes one layer of units per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

import torch
from torch import nn

from attrflow.methods._batching import check_max_batch, evaluation_mode, validate_batch
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, MethodNotApplicable, register_method
from attrflow.models.layers import resolve_layer
from attrflow.params import Doc, Ge, Le, MinLen

ALL_RELUS = "all_relus"


@register_method("pathway_grad")
def pathway_grad(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    criterion: Annotated[
        Literal["neuron_mct", "neuron_intgrad"],
        Doc(
            "neuron contribution: |a·∂Φ/∂a| (NeuronMCT) or IG over the layer from 0 "
            "(NeuronIntGrad)"
        ),
    ] = "neuron_mct",
    sparsity: Annotated[
        float,
        Ge(0),
        Le(1),
        Doc(
            "fraction of units left out of the pathway, ranked network-wide (seed: 0.7 for "
            "ResNet-50, 0.9 for VGG-16)"
        ),
    ] = 0.7,
    layers: Annotated[
        list[str],
        MinLen(1),
        Doc(
            "layers whose output units form the neurons: 'all_relus' (every nn.ReLU), "
            "'default', 'stage1'..'stage4' or module paths"
        ),
    ] = ["all_relus"],  # noqa: B006 - never mutated; the registry needs a literal
    steps: Annotated[int, Ge(1), Doc("Riemann steps of NeuronIntGrad (seed: 50)")] = 50,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """∇ₓ of the target logit through the critical pathway only (see module doc).

    Diagnostics: ``kept_fraction`` (n,) the share of units in the pathway, ``threshold``
    (n,) the contribution c_κ at which it was cut, and the pathway diagnostics of Khakzar et
    al., CVPR 2021: ``dead_fraction`` (n,) the share of the pathway's units that were dead
    (exactly zero) in the original forward pass and ``dead_fraction_layers`` (n, sites) the
    same per layer (NaN where the pathway keeps no unit of it).
    """
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    modules = pathway_modules(model, layers)
    maps, kept, thresholds, dead, dead_layers = [], [], [], [], []
    with evaluation_mode(model):
        for start in range(0, x.shape[0], max_batch):
            images, classes = x[start : start + max_batch], target[start : start + max_batch]
            if criterion == "neuron_mct":
                scores = neuron_mct(model, images, classes, modules)
            else:
                scores = neuron_intgrad(model, images, classes, modules, steps=steps, max_batch=max_batch)
            masks, threshold = select_pathway(scores, sparsity)
            activations: list[torch.Tensor] = []
            maps.append(pathway_gradient(model, images, classes, modules, masks, record=activations))
            units = sum(m[0].numel() for m in masks)
            kept.append(sum(m.flatten(1).sum(dim=1) for m in masks).to(x.dtype) / units)
            thresholds.append(threshold)
            overall, per_layer = dead_share(masks, activations)
            dead.append(overall.to(x.dtype))
            dead_layers.append(per_layer.to(x.dtype))
    return Attribution(
        maps=torch.cat(maps),
        diagnostics={
            "kept_fraction": torch.cat(kept),
            "threshold": torch.cat(thresholds),
            "dead_fraction": torch.cat(dead),
            "dead_fraction_layers": torch.cat(dead_layers),
        },
    )


def dead_share(masks: list[torch.Tensor], activations: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of a pathway's units that were originally dead (activation exactly 0), network-wide
    (n,) and per site (n, sites); NaN where the pathway (or its part in a site) is empty."""
    if len(masks) != len(activations) or any(m.shape != a.shape for m, a in zip(masks, activations)):
        raise ValueError("dead_share: one activation tensor per pathway mask, of the same shape")
    kept = torch.stack([m.flatten(1).sum(dim=1) for m in masks], dim=1).double()
    dead = torch.stack([(m & (a == 0)).flatten(1).sum(dim=1) for m, a in zip(masks, activations)], dim=1).double()
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=kept.device)
    overall = torch.where(kept.sum(dim=1) > 0, dead.sum(dim=1) / kept.sum(dim=1).clamp(min=1), nan)
    per_layer = torch.where(kept > 0, dead / kept.clamp(min=1), nan)
    return overall, per_layer


def pathway_modules(model: nn.Module, layers: list[str]) -> list[nn.Module]:
    """The modules whose outputs hold the neurons, in ``layers`` order, each once."""
    if isinstance(layers, str) or not layers:
        raise ValueError(f"parameter layers must be a non-empty list of layer names; got {layers!r}")
    net = getattr(model, "net", model)
    modules: list[nn.Module] = []
    for layer in layers:
        if layer == ALL_RELUS:
            found = [m for m in net.modules() if isinstance(m, nn.ReLU)]
            if not found:
                raise MethodNotApplicable(
                    f"pathway_grad: model {getattr(model, 'name', '')!r} has no nn.ReLU module for "
                    f"layers [{ALL_RELUS!r}]; name its layers instead"
                )
        else:
            found = [resolve_layer(model, layer)[1]]
        modules += [m for m in found if all(m is not seen for seen in modules)]
    return modules


class ActivationSites:
    """Forward hooks on the pathway modules that number their outputs (one site per call, in
    call order) and apply ``transform(site, output)`` to each. The hooks live only inside
    `attached`, so they are removed even when a pass raises."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.outputs: list[torch.Tensor] = []
        self.transform = lambda site, output: output

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"pathway_grad: layer {type(module).__name__} returns {type(output).__name__}, not a tensor")
        output = self.transform(len(self.outputs), output)
        self.outputs.append(output)
        return output

    @contextmanager
    def attached(self) -> Iterator[ActivationSites]:
        handles = [m.register_forward_hook(self._hook) for m in self.modules]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def run(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        self.outputs = []
        logits = model(images)
        if not self.outputs:
            raise ValueError("pathway_grad: none of the chosen layers ran in the forward pass")
        return logits


def target_logits(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, target.unsqueeze(1)).squeeze(1)


def neuron_mct(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, modules: list[nn.Module]
) -> list[torch.Tensor]:
    """|a · ∂Φ/∂a| for every site's output units (one forward and one backward)."""
    sites = ActivationSites(modules)
    with sites.attached(), torch.enable_grad():
        logits = sites.run(model, x.detach().requires_grad_(True))
        grads = torch.autograd.grad(target_logits(logits, target).sum(), sites.outputs)
    return [(a.detach() * g).abs() for a, g in zip(sites.outputs, grads)]


def neuron_intgrad(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    modules: list[nn.Module],
    *,
    steps: int,
    max_batch: int,
) -> list[torch.Tensor]:
    """a · (1/steps) Σ_k ∂Φ/∂a' at a' = (k/steps)·a, site by site (baseline 0 at the site).

    Each pass scales one site's output and takes the gradient there; the (sample, step) grid is
    flattened sample-major and cut into chunks of at most ``max_batch`` inputs.
    """
    sites = ActivationSites(modules)
    with sites.attached(), torch.no_grad():
        sites.run(model, x)
        activations = [a.detach() for a in sites.outputs]
    n = x.shape[0]
    alphas = torch.arange(1, steps + 1, dtype=x.dtype, device=x.device) / steps
    flat_sample = torch.arange(n, device=x.device).repeat_interleave(steps)
    flat_alpha = alphas.repeat(n)
    scores = []
    for site, activation in enumerate(activations):
        gradient_sum = torch.zeros_like(activation)
        for start in range(0, n * steps, max_batch):
            samples = flat_sample[start : start + max_batch]
            scale = flat_alpha[start : start + max_batch]
            scaled = (activation[samples] * scale.view(-1, *[1] * (activation.dim() - 1))).requires_grad_(True)
            sites.transform = lambda index, output, site=site, scaled=scaled: scaled if index == site else output
            with sites.attached(), torch.enable_grad():
                logits = sites.run(model, x[samples])
                (grad,) = torch.autograd.grad(target_logits(logits, target[samples]).sum(), scaled)
            _add_per_sample(gradient_sum, grad, samples)
        scores.append(activation * gradient_sum / steps)
    return scores


def _add_per_sample(sums: torch.Tensor, values: torch.Tensor, samples: torch.Tensor) -> None:
    """sums[s] += Σ of the rows of ``values`` that belong to sample s. A chunk's samples are
    ascending and contiguous, so each is one slice: a deterministic sum (no atomics)."""
    owners, counts = torch.unique_consecutive(samples, return_counts=True)
    for owner, rows in zip(owners.tolist(), values.split(counts.tolist())):
        sums[owner] += rows.sum(dim=0)


def select_pathway(
    scores: list[torch.Tensor], sparsity: float
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per sample, keep the units with c ≥ c_κ, where c_κ is the (round(κ·N) + 1)-th smallest
    contribution over all sites. Returns boolean masks shaped like ``scores`` and c_κ (n,)
    (+inf where κ·N rounds to N: nothing is kept)."""
    flat = torch.cat([s.flatten(1) for s in scores], dim=1)
    total = flat.shape[1]
    dropped = round(sparsity * total)
    if dropped >= total:
        threshold = torch.full((flat.shape[0],), float("inf"), dtype=flat.dtype, device=flat.device)
    else:
        threshold = flat.kthvalue(dropped + 1, dim=1).values
    masks = [s >= threshold.view(-1, *[1] * (s.dim() - 1)) for s in scores]
    return masks, threshold


def pathway_gradient(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    modules: list[nn.Module],
    masks: list[torch.Tensor],
    record: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """∇ₓ of the target logit with every unit outside ``masks`` frozen at its own value.

    e·a + (1 − e)·detach(a) equals a in the forward pass and passes gradient only where e = 1.
    The forward values are the original activations: ``record``, when given, receives them.
    """
    sites = ActivationSites(modules)

    def freeze_outside(site: int, output: torch.Tensor) -> torch.Tensor:
        if site >= len(masks) or masks[site].shape != output.shape:
            raise ValueError("pathway_grad: the chosen layers ran differently than when the pathway was selected")
        keep = masks[site].to(output.dtype)
        return keep * output + (1 - keep) * output.detach()

    sites.transform = freeze_outside
    inputs = x.detach().requires_grad_(True)
    with sites.attached(), torch.enable_grad():
        logits = sites.run(model, inputs)
        (grad,) = torch.autograd.grad(target_logits(logits, target).sum(), inputs)
    if record is not None:
        record.extend(output.detach() for output in sites.outputs)
    return grad
