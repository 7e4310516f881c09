"""Attribution attack (Ghorbani et al. 2019; UNI §5.2, Tables 3–4; seed digest B.2).

A norm-bounded perturbation that keeps the predicted label is chosen to change the map as much as
possible; the metric is how much of the map survives. Higher is more robust.

What is attacked (choices the seeds leave open, digest B.2):

* **Objective: Ghorbani's top-k attack.** With B the k most important elements of the original
  map, the attack lowers their share of the map, m(x') = Σ_{i∈B} s_i(x') / Σ_i |s_i(x')|,
  where s is |map| (``order="absolute"``, Ghorbani's saliency magnitudes) or the signed map.
  It is the published objective that targets exactly what `attack_topk` measures.
* **Threat model: one ℓ∞ FGSM step** (S0: ε = 8/255): x' = clip(x − ε · sign(∇_x m), 0, 1) in
  pixel space.
* **Label constraint.** The predicted class of the real model must not change. If it does, the
  step is retried from x with ε/2, ε/4, … (`max_halvings` times); a sample whose label flips at
  every ε tried is NaN with that reason, not scored on the unattacked image (which would read as
  perfectly robust). The curve holds the one ε that was used.
* **Gradient of the objective.** Ghorbani differentiate the map with respect to the input
  (double back-propagation). attrflow's methods detach their input and take gradients without
  ``create_graph`` (``methods/_batching.py``), so the map is not a differentiable function of x
  here, and a private differentiable re-implementation would attack something other than the
  method evaluated. So ∇_x m is *estimated* from calls of the method itself, by SPSA
  (Spall 1992): for S random ±1 directions Δ (constant over `spsa_tile`² pixel tiles, per
  channel, which cuts the dimension the estimate has to cover by tile²),
  ĝ = (1/S) Σ [m(x + cΔ) − m(x − cΔ)] / (2c) · Δ. Cost per sample: 2S + 3 calls of the method
  (S pairs, one probe for a differentiable map, the maps before and after) and at most
  2 + `max_halvings` forward passes for the label check. SPSA is an unbiased estimate of the
  gradient of a smoothed objective but a noisy one: at small S the attack is weaker than a
  white-box FGSM, and robustness reads optimistic. Should ``explain``
  one day return maps that carry a graph to x (a method-level ``create_graph`` path), the exact
  gradient is used instead, automatically.
* **Softplus surrogate, for the gradient only.** The gradient map of a ReLU network is piecewise
  constant in x: its derivative is zero almost everywhere and finite differences only see the
  kinks they happen to cross. As Ghorbani et al. (and Dombrowski et al. 2019) do, the attack
  direction is computed on a copy of the model whose ``nn.ReLU`` modules are replaced by
  Softplus(β) (`softplus_beta`, default 10); the maps before and after the attack, and the label
  check, use the real model. Limits: ``torch.nn.functional.relu`` called inside ``forward``
  cannot be swapped, and max pooling stays piecewise linear. A model with no ``nn.ReLU`` module
  is skipped with a reason (set ``softplus_beta: 0`` to attack the model as it is).

Methods whose maps do not depend on the input (random attribution) are skipped. The two metrics
measure the same attack: its SPSA directions are drawn from the job's seed and the samples' ids
(not from each metric's own generator), and the last attack is kept in memory, so with the same
settings the second metric reuses it instead of paying 2S + 3 method calls per sample again.
Their parameter schemas are the same literal twice, because `attrflow.catalog` reads each
registration from the source without running it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from attrflow.metrics._removal import CONSTANT_MAP, NONFINITE_MAP, with_reasons
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.metrics.stability import cleaned, flat_scores, spearman_rows

TOPK_FRACTION = 1000 / 224**2  # Ghorbani / UNI: the top 1000 pixels of a 224² map
MAPS_IGNORE_INPUT = ("random_attribution",)


@dataclass
class AttackResult:
    before: torch.Tensor  # (n, P) float64 scores of the map at x (real model)
    after: torch.Tensor  # (n, P) at the attacked image
    epsilon_used: np.ndarray  # (n,) NaN where every ε tried flipped the label
    k: int
    reasons: list[str | None]  # per sample, None when both maps can be compared


def topk_size(k: int | None, num_elements: int) -> int:
    """k for a map of `num_elements` elements: as given, or the share 1000 / 224² of them (1000
    pixels of a 224² map; a map that keeps its channels gets that share of its elements)."""
    if k is None:
        return max(1, round(TOPK_FRACTION * num_elements))
    if k < 1 or k > num_elements:
        raise ValueError(f"parameter k must lie in [1, {num_elements}] for these maps, got {k}")
    return int(k)


def topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(n, P) bool: the k highest scores per row; ties keep the row-major order (stable sort)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, True)


def topk_intersection(before: torch.Tensor, after: torch.Tensor, k: int) -> torch.Tensor:
    """(n,) fraction of the k top elements of `before` that are among the k top of `after`."""
    shared = topk_mask(before, k) & topk_mask(after, k)
    return shared.sum(dim=1).double() / k


def topk_mass(scores: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """Ghorbani's top-k objective: the share Σ_{top} s / Σ |s| of each row (0 for a zero map)."""
    total = scores.abs().sum(dim=1)
    share = (scores * top).sum(dim=1) / torch.where(total == 0, torch.ones_like(total), total)
    return torch.where(total == 0, torch.zeros_like(share), share)


def softplus_surrogate(model: nn.Module, beta: float) -> nn.Module | None:
    """A copy of `model` with every ``nn.ReLU`` module replaced by Softplus(β); None if it has none.

    The model itself is left untouched. ReLUs applied functionally (F.relu) cannot be found.
    """
    if not any(isinstance(module, nn.ReLU) for module in model.modules()):
        return None
    smooth = copy.deepcopy(model)
    for parent in list(smooth.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.Softplus(beta=beta))
    return smooth


@torch.no_grad()
def predicted_classes(model: nn.Module, images: torch.Tensor, max_batch: int) -> torch.Tensor:
    parts = [
        model(images[i : i + max_batch]).argmax(dim=1) for i in range(0, images.shape[0], max_batch)
    ]
    return torch.cat(parts)


def fgsm_keeping_label(
    model: nn.Module,
    images: torch.Tensor,
    direction: torch.Tensor,
    epsilon: float,
    max_halvings: int,
    max_batch: int,
) -> tuple[torch.Tensor, np.ndarray]:
    """clip(x + ε·direction, 0, 1) with the largest ε / 2^h (h ≤ max_halvings) that keeps the
    predicted class; returns the attacked images and the ε used per sample (NaN, and the image
    left as it was, where every ε changed the class)."""
    predicted = predicted_classes(model, images, max_batch)
    attacked = images.clone()
    used = np.full(images.shape[0], np.nan)
    pending = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
    for halving in range(max_halvings + 1):
        step = epsilon / 2**halving
        index = pending.nonzero().squeeze(1)
        candidate = (images[index] + step * direction[index]).clamp(0.0, 1.0)
        kept = predicted_classes(model, candidate, max_batch) == predicted[index]
        attacked[index[kept]] = candidate[kept]
        used[index[kept].cpu().numpy()] = step
        pending[index[kept]] = False
        if not bool(pending.any()):
            break
    return attacked, used


def _rademacher_directions(
    shape: torch.Size, tile: int, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """±1 directions of `shape` (n, C, H, W), constant over tile × tile pixel blocks."""
    n, c, h, w = shape
    coarse = (-(-h // tile), -(-w // tile))
    signs = torch.randint(0, 2, (n, c, *coarse), generator=generator, device=generator.device)
    signs = (2 * signs - 1).to(device=like.device, dtype=like.dtype)
    return signs.repeat_interleave(tile, dim=2).repeat_interleave(tile, dim=3)[:, :, :h, :w]


def objective_gradient(
    explain,
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    top: torch.Tensor,
    order: str,
    *,
    samples: int,
    step: float,
    tile: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """∇_x of the top-k mass of the map `explain` computes with `model`: exact when its maps carry
    a graph to x, else the SPSA estimate (see the module docstring). (n, C, H, W)."""
    with torch.enable_grad():
        probe = images.detach().clone().requires_grad_(True)
        maps = explain(probe, targets, model=model)
        if maps.requires_grad:
            mass = topk_mass(flat_scores(maps, order), top)
            (gradient,) = torch.autograd.grad(mass.sum(), probe)
            return gradient.detach()
    n = images.shape[0]
    estimate = torch.zeros_like(images)
    for _ in range(samples):
        direction = _rademacher_directions(images.shape, tile, generator, images)
        both = torch.cat([images + step * direction, images - step * direction])
        masses = topk_mass(
            flat_scores(explain(both, torch.cat([targets, targets]), model=model), order),
            top.repeat(2, 1),
        )
        slope = (masses[:n] - masses[n:]) / (2 * step)
        estimate += slope.to(images.dtype).view(-1, 1, 1, 1) * direction
    return estimate / samples


@dataclass(frozen=True)
class AttackSettings:
    """The parameters both attack metrics share (see their schema for meanings)."""

    epsilon: float
    k: int | None
    order: str
    softplus_beta: float
    spsa_samples: int
    spsa_step: float
    spsa_tile: int
    max_halvings: int

    def check(self, metric: str) -> None:
        problems = {
            "epsilon": not 0 < self.epsilon <= 1,
            "k": self.k is not None and self.k < 1,
            "order": self.order not in ("absolute", "signed"),
            "softplus_beta": self.softplus_beta < 0,
            "spsa_samples": self.spsa_samples < 1,
            "spsa_step": self.spsa_step <= 0,
            "spsa_tile": self.spsa_tile < 1,
            "max_halvings": self.max_halvings < 0,
        }
        bad = [f"{name}={getattr(self, name)!r}" for name, wrong in problems.items() if wrong]
        if bad:
            raise ValueError(f"{metric}: parameter(s) out of range: {', '.join(bad)}")


def _sample_reason(
    finite_before: bool, constant: bool, finite_after: bool, epsilon_used: float, tried: str
) -> str | None:
    if not finite_before:
        return NONFINITE_MAP
    if constant:
        return CONSTANT_MAP
    if not finite_after:
        return "the attacked map has non-finite values"
    if np.isnan(epsilon_used):
        return f"the predicted label changes at every epsilon tried ({tried})"
    return None


# The most recent attack, keyed by everything it depends on: attack_spearman and attack_topk of
# one score job measure the same attacked maps. One entry only: memory stays bounded.
_LAST_ATTACK: dict[tuple, AttackResult | str] = {}


def attack(
    inputs: MetricInputs,
    metric: str,
    settings: AttackSettings,
    generator: torch.Generator | None,
    max_batch: int,
) -> AttackResult | str:
    """Run the top-k FGSM attack on every sample (or reuse the identical last one); a string is
    the reason to skip them all. ``generator`` is unused: see `attack_generator`."""
    who = f"method {inputs.method!r} (fn {inputs.method_fn!r})"
    if inputs.explain is None:
        raise ValueError(f"{metric}: no explain callable was given for {who}")
    settings.check(metric)
    key = (
        id(inputs.model), inputs.method, inputs.method_fn, tuple(inputs.ids), inputs.seed, settings,
        inputs.images.data_ptr(), tuple(inputs.images.shape), max_batch,
    )  # fmt: skip
    if key not in _LAST_ATTACK:
        _LAST_ATTACK.clear()
        _LAST_ATTACK[key] = _run_attack(inputs, settings, attack_generator(inputs), max_batch)
    result = _LAST_ATTACK[key]
    # skip reasons name the metric that asked
    return result.replace("{metric}", metric) if isinstance(result, str) else result


def attack_generator(inputs: MetricInputs) -> torch.Generator:
    """SPSA's random directions: from the job's seed and the samples' ids, so both attack
    metrics (whose own generators differ) attack alike, whichever runs first."""
    import hashlib

    text = f"{inputs.seed}\0{inputs.method}\0" + "\0".join(inputs.ids)
    digest = hashlib.sha256(text.encode()).digest()
    device = inputs.images.device
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:7], "big"))


def _run_attack(
    inputs: MetricInputs, settings: AttackSettings, generator: torch.Generator, max_batch: int
) -> AttackResult | str:
    from attrflow.methods import MethodNotApplicable

    metric = "{metric}"
    who = f"method {inputs.method!r} (fn {inputs.method_fn!r})"
    if inputs.method_fn in MAPS_IGNORE_INPUT:
        return f"{metric}: the maps of {who} do not depend on the input: nothing to attack"
    model, images, targets = inputs.model, inputs.images, inputs.targets
    beta = settings.softplus_beta
    surrogate = softplus_surrogate(model, beta) if beta > 0 else model
    if surrogate is None:
        return (
            f"{metric}: model {getattr(model, 'name', '')!r} has no nn.ReLU module to replace by "
            "a softplus surrogate (set softplus_beta: 0 to attack the model as it is)"
        )
    try:
        before, finite_before = cleaned(
            flat_scores(inputs.explain(images, targets), settings.order)
        )
        k = topk_size(settings.k, before.shape[1])
        top = topk_mask(before, k)
        gradient = objective_gradient(
            inputs.explain, surrogate, images, targets, top, settings.order,
            samples=settings.spsa_samples, step=settings.spsa_step, tile=settings.spsa_tile,
            generator=generator,
        )  # fmt: skip
        # Lower the top-k share: step against its gradient.
        attacked, used = fgsm_keeping_label(
            model, images, -torch.sign(gradient), settings.epsilon, settings.max_halvings, max_batch
        )
        after, finite_after = cleaned(
            flat_scores(inputs.explain(attacked, targets), settings.order)
        )
    except MethodNotApplicable as err:
        return f"{metric}: {who} cannot be re-run here: {err}"
    smallest = settings.epsilon / 2**settings.max_halvings
    tried = f"{settings.epsilon:.4g} down to {smallest:.4g}"
    constant = (before.amax(dim=1) == before.amin(dim=1)).tolist()
    flags = zip(finite_before.tolist(), constant, finite_after.tolist(), used)
    reasons = [_sample_reason(*flag, tried) for flag in flags]
    return AttackResult(before, after, used, k, reasons)


def _scored(
    result: AttackResult, values: torch.Tensor, undefined: list[str | None]
) -> MetricOutput:
    """Per-sample values with the attack's reasons (else `undefined`); curve: the ε used."""
    reasons = [r if r is not None else u for r, u in zip(result.reasons, undefined)]
    curves = [np.array([e]) for e in result.epsilon_used]
    return with_reasons(values.cpu().numpy(), curves, reasons)


# One parameter schema for every registration below (read as a literal by attrflow.catalog).
ATTACK_PARAMS = {
    "epsilon": {
        "type": "number",
        "exclusiveMinimum": 0,
        "maximum": 1,
        "default": 0.03137254901960784,
        "description": "ℓ∞ budget in pixel space [0, 1] (S0: 8/255)",
    },
    "k": {
        "type": ["integer", "null"],
        "minimum": 1,
        "default": None,
        "description": "size of the top-k set; null: 1000 at 224², scaled by the map's area",
    },
    "order": {
        "enum": ["absolute", "signed"],
        "default": "absolute",
        "description": "rank map elements by magnitude (Ghorbani) or by signed value",
    },
    "softplus_beta": {
        "type": "number",
        "minimum": 0,
        "default": 10.0,
        "description": "β of the Softplus replacing nn.ReLU for the attack direction; "
        "0: no surrogate",
    },
    "spsa_samples": {
        "type": "integer",
        "minimum": 1,
        "default": 16,
        "description": "random ±1 directions of the SPSA gradient (2 method calls each)",
    },
    "spsa_step": {
        "type": "number",
        "exclusiveMinimum": 0,
        "default": 0.00392156862745098,
        "description": "finite-difference step c of SPSA, pixel space (default 1/255)",
    },
    "spsa_tile": {
        "type": "integer",
        "minimum": 1,
        "default": 4,
        "description": "SPSA directions are constant over tile × tile pixels",
    },
    "max_halvings": {
        "type": "integer",
        "minimum": 0,
        "default": 3,
        "description": "how often ε is halved while the attack changes the predicted label",
    },
}


@register_metric(
    "attack_spearman",
    kind="explainer",
    direction="higher",
    params=ATTACK_PARAMS,
)
def attack_spearman(
    inputs: MetricInputs,
    *,
    epsilon: float = 0.03137254901960784,
    k: int | None = None,
    order: str = "absolute",
    softplus_beta: float = 10.0,
    spsa_samples: int = 16,
    spsa_step: float = 0.00392156862745098,
    spsa_tile: int = 4,
    max_halvings: int = 3,
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> MetricOutput:
    """Spearman ρ between the map before and after the top-k FGSM attack (UNI Table 3; higher is
    more robust). Ranks use `order` (magnitudes by default, as Ghorbani); ties get average ranks.
    Curve: the ε used. See the module docstring for the attack."""
    settings = AttackSettings(
        epsilon, k, order, softplus_beta, spsa_samples, spsa_step, spsa_tile, max_halvings
    )
    result = attack(inputs, "attack_spearman", settings, generator, max_batch)
    if isinstance(result, str):
        return MetricOutput.skipped(inputs.n, result)
    rho, constant_after = spearman_rows(result.before, result.after)
    undefined = "the attacked map is constant: Spearman ρ is undefined"
    return _scored(result, rho, [undefined if c else None for c in constant_after.tolist()])


@register_metric(
    "attack_topk",
    kind="explainer",
    direction="higher",
    params=ATTACK_PARAMS,
)
def attack_topk(
    inputs: MetricInputs,
    *,
    epsilon: float = 0.03137254901960784,
    k: int | None = None,
    order: str = "absolute",
    softplus_beta: float = 10.0,
    spsa_samples: int = 16,
    spsa_step: float = 0.00392156862745098,
    spsa_tile: int = 4,
    max_halvings: int = 3,
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> MetricOutput:
    """Top-k intersection: the fraction of the k most important map elements before the attack
    that are still among the k most important after it (UNI Table 4 in %, here in [0, 1]; higher
    is more robust). k = 1000 at 224² scaled by the map's area (``k: null``); ties at the k-th
    place keep the row-major order. Curve: the ε used. See the module docstring."""
    settings = AttackSettings(
        epsilon, k, order, softplus_beta, spsa_samples, spsa_step, spsa_tile, max_halvings
    )
    result = attack(inputs, "attack_topk", settings, generator, max_batch)
    if isinstance(result, str):
        return MetricOutput.skipped(inputs.n, result)
    shared = topk_intersection(result.before, result.after, result.k)
    return _scored(result, shared, [None] * inputs.n)
