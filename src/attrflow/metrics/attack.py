"""Attribution attack (Ghorbani, Abid & Zou, AAAI 2019; UNI (Choi et al., 2024) Sec. 5.2, Tables 3–4).

A norm-bounded perturbation that keeps the predicted label is chosen to change the map as much as
possible; the metric is how much of the map survives. Higher is more robust.

What is attacked:

* **Objective: Ghorbani's top-k attack.** With B the k most important elements of the original
  map, the attack lowers their share of the map, m(x') = Σ_{i∈B} s_i(x') / Σ_i |s_i(x')|,
  where s is |map| (``order="absolute"``, Ghorbani's saliency magnitudes) or the signed map.
  It is the published objective that targets exactly what `attack_topk` measures.
* **Threat model: one ℓ∞ FGSM step**, ε = 8/255 as in UNI's Tables 3–4 (which use FGSM only, no
  PGD): x' = clip(x − ε · sign(∇_x m), 0, 1) in pixel space.
* **Label constraint.** The predicted class of the real model must not change. If it does, the
  step is retried from x with ε/2, ε/4, … (`max_halvings` times); a sample whose label flips at
  every ε tried is NaN with that reason, not scored on the unattacked image (which would read as
  perfectly robust).
* **Exact gradient of the objective** (double back-propagation, as Ghorbani et al.): the
  method is re-run inside `attrflow.methods.differentiable_maps`, where every method registered
  ``differentiable=True`` (gradient, Input×Gradient, X-Gradient, IG with any baseline, BlurIG,
  SmoothGrad/SmoothGrad²/VarGrad of those, Expected Gradients, LPI, UNI, DeepLIFT, DeepSHAP,
  GradCAM, GradCAM++, FullGrad) returns maps with a graph to x; path methods recompute their points' gradients
  chunk by chunk with ``create_graph=True`` while back-propagating, so memory stays bounded
  by ``max_batch`` (see `attrflow.methods._batching`); the gradient is taken for
  max(1, ``max_batch`` // 32) samples per call (`gradient_group`). Random draws of the method
  (noise, references, α) are those of the re-run, held fixed; so is UNI's unlearned
  perturbation δ(x) (differentiating through its unlearning and PGD steps would be an unrolled
  third-order problem). Cost per sample for a method of P points: P forward+backward passes for
  each of the three maps (before, attacked, noisy), P × (2 forward + 2 backward + 1 double
  backward) for the gradient, and at most 2 + `max_halvings` + 2 forward passes for the label
  checks (`benchmarks/RESULTS.md` has resnet18 figures).
* **Gradient-free fallback, declared.** Methods that cannot give such maps (occlusion, extremal
  perturbation, IBA, InputIBA, Guided Backprop, Deconvolution (Captum's hooks), AGI, Guided IG,
  pathway gradients) are attacked with an SPSA estimate of ∇_x m (Spall 1992) from
  calls of the method itself: for S random ±1 directions Δ (constant over `spsa_tile`² pixel
  tiles, per channel), ĝ = (1/S) Σ [m(x + cΔ) − m(x − cΔ)] / (2c) · Δ, costing 2S method calls.
  SPSA is much weaker than the exact gradient (on max-pool networks the finite differences cross
  pooling switches); which gradient was used is recorded per sample in the curve (below) and
  logged, never silent.
* **Surrogate model, for the gradient only.** The gradient map of a ReLU network is piecewise
  constant in x: its derivative is zero almost everywhere. As Ghorbani et al. (and Dombrowski
  et al. 2019) do, the attack direction is computed on a surrogate in which every ReLU is
  Softplus(β) (`softplus_beta`; default β = 10, attrflow's choice, as the papers vary β):
  ``nn.ReLU`` modules, ``F.relu``/``torch.relu`` calls and their in-place forms alike (a
  torch-function mode over the model's forward: nothing is copied, nothing missed). Smooth
  activations (GELU, SiLU, Softplus) are
  attacked as they are — the same surrogate call changes nothing there. Max pooling stays
  piecewise linear; its exact gradient (fixed switches) is used. ``softplus_beta: 0`` attacks
  the model itself. The maps before and after, and the label check, use the real model.
* **Checked against random noise.** Every attack also measures the same metric after random
  ±ε sign noise (per element, ℓ∞ norm equal to the ε the attack used for that sample, same label
  check), from the job's seed. An attack that changes the map less than noise (a metric value
  above the noise value) is no attack; the job log counts such samples.

The curve of every ok sample is ``[ε used, metric under random noise, gradient]`` (`CURVE`), with
gradient 1 for the exact double-backprop gradient and 0 for the SPSA fallback; the report reads
the attack's margin over noise as curve[1] − value (positive: the attack beats noise).

Reading the numbers against UNI's Tables 3–4: UNI reports, for ImageNet backbones at 224², the
Spearman ρ between the maps before and after (Table 3, e.g. ResNet-18: UNI .271, IG .088) and
the top-1000 pixel intersection in % (Table 4, e.g. ResNet-18: UNI 37.3, IG 20.0).
`attack_spearman` is that ρ (on |map| by default) and `attack_topk` that intersection as a
fraction (k = 1000 at 224², scaled by area). UNI does not say how the attack direction was
obtained, how ReLUs were handled or how the label constraint was enforced; with the exact
gradient here the values are comparable in kind, not identical — and the noise value next to
each tells how much of the drop any 8/255 perturbation would cause.

Methods whose maps do not depend on the input (random attribution) are skipped. The two metrics
measure the same attack: its random draws come from the job's seed and the samples' ids (not
from each metric's own generator), and the last attack is kept in memory, so with the same
settings the second metric reuses it. Both are one function, `attack_robustness`, registered
once per metric, so their parameters are declared once.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from attrflow.metrics._removal import CONSTANT_MAP, NONFINITE_MAP, with_reasons
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.metrics.stability import cleaned, flat_scores, spearman_rows
from attrflow.params import Doc, Ge, Gt, Le

LOG = logging.getLogger(__name__)

TOPK_FRACTION = 1000 / 224**2  # Ghorbani / UNI: the top 1000 pixels of a 224² map
MAPS_IGNORE_INPUT = ("random_attribution",)
CURVE = ("epsilon_used", "noise_value", "exact_gradient")  # what each ok sample's curve holds
EXACT, SPSA = "exact", "spsa"


@dataclass
class AttackResult:
    before: torch.Tensor  # (n, P) float64 scores of the map at x (real model)
    after: torch.Tensor  # (n, P) at the attacked image
    noise_after: torch.Tensor  # (n, P) after random ±ε sign noise of the same ε
    epsilon_used: np.ndarray  # (n,) NaN where every ε tried flipped the label
    noise_kept: np.ndarray  # (n,) bool: the noise kept the label (else its value is NaN)
    k: int
    gradient: str  # EXACT (double backprop through the method) or SPSA (gradient-free fallback)
    reasons: list[str | None]  # per sample, None when both maps can be compared


def noise_margin(value: float, curve) -> float:  # noqa: ANN001
    """How much further the attack moved the map than random noise of the same ε did: the
    metric under noise (``curve[1]``) minus the metric after the attack (``value``). Positive:
    the attack beats noise; zero or negative: it is no attack on that sample. NaN where either
    is missing (a skipped or NaN score, or noise that flipped the label)."""
    if curve is None or len(curve) < 2:
        return float("nan")
    return float(curve[CURVE.index("noise_value")]) - float(value)


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


_RELU_CALLS = {F.relu, torch.relu, torch.Tensor.relu}
_INPLACE_RELU_CALLS = {F.relu_, torch.relu_, torch.Tensor.relu_}


class SoftplusForReLU(TorchFunctionMode):
    """Within this mode every ReLU — ``nn.ReLU`` (which calls ``F.relu``), ``F.relu``,
    ``torch.relu``, ``Tensor.relu`` and their in-place forms — computes Softplus(β) instead.
    ``replaced`` counts the calls it changed."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = float(beta)
        self.replaced = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        inplace = func in _INPLACE_RELU_CALLS
        if func in _RELU_CALLS or inplace:
            inputs = args[0]
            inplace = inplace or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            self.replaced += 1
            if not inplace:
                return F.softplus(inputs, beta=self.beta)
            # softplus must not save the tensor the in-place copy then overwrites
            return inputs.copy_(F.softplus(inputs.clone(), beta=self.beta))
        return func(*args, **kwargs)


def softplus_surrogate(model: nn.Module, beta: float) -> nn.Module:
    """The model with every ReLU computed as Softplus(β) (`SoftplusForReLU`), for the attack
    direction only. A shallow copy: parameters, buffers and submodules are shared, nothing is
    duplicated, and the model itself is untouched. β = 0 returns the model itself."""
    if beta == 0:
        return model
    smooth = copy.copy(model)
    plain_forward = type(model).forward.__get__(smooth)

    def forward(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with SoftplusForReLU(beta):
            return plain_forward(*args, **kwargs)

    smooth.forward = forward
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


def random_sign_noise(
    model: nn.Module,
    images: torch.Tensor,
    epsilon: np.ndarray,
    generator: torch.Generator,
    max_batch: int,
) -> tuple[torch.Tensor, np.ndarray]:
    """clip(x + ε_i·r, 0, 1) with r uniform on {−1, 1} per element and ε_i per sample (the ε the
    attack used); returns the noisy images and whether each kept the predicted class (False
    where ε_i is NaN)."""
    signs = torch.randint(0, 2, images.shape, generator=generator, device=generator.device)
    signs = (2 * signs - 1).to(device=images.device, dtype=images.dtype)
    valid = ~np.isnan(epsilon)
    scale = torch.as_tensor(np.where(valid, epsilon, 0.0), dtype=images.dtype, device=images.device)
    noisy = (images + scale.view(-1, 1, 1, 1) * signs).clamp(0.0, 1.0)
    predicted = predicted_classes(model, images, max_batch)
    kept = (predicted_classes(model, noisy, max_batch) == predicted).cpu().numpy()
    return noisy, kept & valid


def _rademacher_directions(
    shape: torch.Size, tile: int, generator: torch.Generator, like: torch.Tensor
) -> torch.Tensor:
    """±1 directions of `shape` (n, C, H, W), constant over tile × tile pixel blocks."""
    n, c, h, w = shape
    coarse = (-(-h // tile), -(-w // tile))
    signs = torch.randint(0, 2, (n, c, *coarse), generator=generator, device=generator.device)
    signs = (2 * signs - 1).to(device=like.device, dtype=like.dtype)
    return signs.repeat_interleave(tile, dim=2).repeat_interleave(tile, dim=3)[:, :, :h, :w]


def gradient_group(max_batch: int) -> int:
    """Samples whose exact objective gradient is taken in one call of the method: a path method
    holds inputs-sized tensors for all its points of a call (`attrflow.methods._batching`)."""
    return max(1, max_batch // 32)


def exact_objective_gradient(
    explain, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, top: torch.Tensor,
    order: str, group: int,
) -> torch.Tensor | None:
    """∇_x of the top-k mass of the map, by double back-propagation through the method inside
    `differentiable_maps`, `group` samples per call; None when the method cannot give maps with
    a graph to x. (n, C, H, W)."""
    from attrflow.methods import MapsNotDifferentiable, differentiable_maps

    parts = []
    for start in range(0, images.shape[0], group):
        stop = start + group
        with differentiable_maps(), torch.enable_grad():
            probe = images[start:stop].detach().clone().requires_grad_(True)
            try:
                maps = explain(probe, targets[start:stop], model=model)
            except MapsNotDifferentiable:
                return None
            if not maps.requires_grad:
                return None
            mass = topk_mass(flat_scores(maps, order), top[start:stop])
            (gradient,) = torch.autograd.grad(mass.sum(), probe, allow_unused=True)
        parts.append(torch.zeros_like(probe) if gradient is None else gradient.detach())
        del maps, mass, probe
    return torch.cat(parts)


def spsa_objective_gradient(
    explain, model: nn.Module, images: torch.Tensor, targets: torch.Tensor, top: torch.Tensor,
    order: str, *, samples: int, step: float, tile: int, generator: torch.Generator,
) -> torch.Tensor:
    """The SPSA estimate of ∇_x of the top-k mass from calls of the method (module doc)."""
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
    group: int = 8,
) -> tuple[torch.Tensor, str]:
    """∇_x of the top-k mass of the map `explain` computes with `model`, and how it was got:
    exact (EXACT) when the method gives maps with a graph to x, else the SPSA estimate (SPSA)."""
    exact = exact_objective_gradient(explain, model, images, targets, top, order, group)
    if exact is not None:
        return exact, EXACT
    estimate = spsa_objective_gradient(
        explain, model, images, targets, top, order,
        samples=samples, step=step, tile=tile, generator=generator,
    )  # fmt: skip
    return estimate, SPSA


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


def attack_generator(inputs: MetricInputs, purpose: str = "spsa") -> torch.Generator:
    """Random draws of the attack (SPSA directions, or the random-noise check with ``purpose``
    "noise"): from the job's seed and the samples' ids, so both attack metrics (whose own
    generators differ) attack alike, whichever runs first."""
    import hashlib

    salt = "" if purpose == "spsa" else f"\0{purpose}"
    text = f"{inputs.seed}\0{inputs.method}\0" + "\0".join(inputs.ids) + salt
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
    surrogate = softplus_surrogate(model, settings.softplus_beta)
    try:
        before, finite_before = cleaned(
            flat_scores(inputs.explain(images, targets), settings.order)
        )
        k = topk_size(settings.k, before.shape[1])
        top = topk_mask(before, k)
        gradient, kind = objective_gradient(
            inputs.explain, surrogate, images, targets, top, settings.order,
            samples=settings.spsa_samples, step=settings.spsa_step, tile=settings.spsa_tile,
            generator=generator, group=gradient_group(max_batch),
        )  # fmt: skip
        # Lower the top-k share: step against its gradient.
        attacked, used = fgsm_keeping_label(
            model, images, -torch.sign(gradient), settings.epsilon, settings.max_halvings, max_batch
        )
        after, finite_after = cleaned(
            flat_scores(inputs.explain(attacked, targets), settings.order)
        )
        noisy, noise_kept = random_sign_noise(
            model, images, used, attack_generator(inputs, "noise"), max_batch
        )
        noise_after, finite_noise = cleaned(
            flat_scores(inputs.explain(noisy, targets), settings.order)
        )
    except MethodNotApplicable as err:
        return f"{metric}: {who} cannot be re-run here: {err}"
    if kind == SPSA:
        LOG.warning(
            "attribution attack: %s gives no maps differentiable in x; attacked with the "
            "gradient-free SPSA estimate (%d directions), recorded as exact_gradient = 0 in the "
            "curve", who, settings.spsa_samples,
        )  # fmt: skip
    smallest = settings.epsilon / 2**settings.max_halvings
    tried = f"{settings.epsilon:.4g} down to {smallest:.4g}"
    constant = (before.amax(dim=1) == before.amin(dim=1)).tolist()
    flags = zip(finite_before.tolist(), constant, finite_after.tolist(), used)
    reasons = [_sample_reason(*flag, tried) for flag in flags]
    noise_kept = noise_kept & finite_noise.cpu().numpy()
    return AttackResult(before, after, noise_after, used, noise_kept, k, kind, reasons)


def _scored(
    result: AttackResult,
    values: torch.Tensor,
    noise_values: torch.Tensor,
    undefined: list[str | None],
    metric: str,
) -> MetricOutput:
    """Per-sample values with the attack's reasons (else `undefined`); curve: `CURVE`."""
    reasons = [r if r is not None else u for r, u in zip(result.reasons, undefined)]
    noise = np.where(result.noise_kept, noise_values.cpu().numpy(), np.nan)
    exact = 1.0 if result.gradient == EXACT else 0.0
    curves = [np.array([e, v, exact]) for e, v in zip(result.epsilon_used, noise)]
    out = with_reasons(values.cpu().numpy(), curves, reasons)
    ok = np.array(out.status) == "ok"
    weaker = ok & np.isfinite(noise) & (out.values > noise)
    if weaker.any():
        LOG.warning(
            "%s: the attack changed the map less than random ±ε noise on %d of %d samples "
            "(mean %.4g vs noise %.4g): it is not an attack there",
            metric, int(weaker.sum()), int(ok.sum()), float(np.mean(out.values[ok])),
            float(np.nanmean(noise[ok])),
        )  # fmt: skip
    return out


def attack_robustness(
    inputs: MetricInputs,
    *,
    metric: str,
    epsilon: Annotated[
        float,
        Gt(0),
        Le(1),
        Doc("ℓ∞ budget in pixel space [0, 1] (UNI (Choi et al., 2024): 8/255)"),
    ] = 8 / 255,
    k: Annotated[
        int | None,
        Ge(1),
        Doc("size of the top-k set; null: 1000 at 224², scaled by the map's area"),
    ] = None,
    order: Annotated[
        Literal["absolute", "signed"],
        Doc("rank map elements by magnitude (Ghorbani) or by signed value"),
    ] = "absolute",
    softplus_beta: Annotated[
        float,
        Ge(0),
        Doc(
            "β of the Softplus replacing every ReLU (modules and functional) for the attack "
            "direction; 0: attack the model itself"
        ),
    ] = 10.0,
    spsa_samples: Annotated[
        int,
        Ge(1),
        Doc(
            "random ±1 directions of the SPSA gradient, used only for methods without "
            "differentiable maps (2 method calls each)"
        ),
    ] = 16,
    spsa_step: Annotated[
        float,
        Gt(0),
        Doc("finite-difference step c of SPSA, pixel space (default 1/255)"),
    ] = 1 / 255,
    spsa_tile: Annotated[
        int,
        Ge(1),
        Doc("SPSA directions are constant over tile × tile pixels"),
    ] = 4,
    max_halvings: Annotated[
        int,
        Ge(0),
        Doc("how often ε is halved while the attack changes the predicted label"),
    ] = 3,
    generator: torch.Generator | None = None,
    max_batch: int = 256,
) -> MetricOutput:
    """How much of the map survives the top-k FGSM attack, as ``metric`` measures it: Spearman ρ
    (``attack_spearman``) or the top-k intersection (``attack_topk``). See the module doc."""
    settings = AttackSettings(
        epsilon, k, order, softplus_beta, spsa_samples, spsa_step, spsa_tile, max_halvings
    )
    result = attack(inputs, metric, settings, generator, max_batch)
    if isinstance(result, str):
        return MetricOutput.skipped(inputs.n, result)
    if metric == "attack_spearman":
        rho, constant_after = spearman_rows(result.before, result.after)
        rho_noise, _ = spearman_rows(result.before, result.noise_after)
        undefined = "the attacked map is constant: Spearman ρ is undefined"
        reasons = [undefined if c else None for c in constant_after.tolist()]
        return _scored(result, rho, rho_noise, reasons, metric)
    shared = topk_intersection(result.before, result.after, result.k)
    noise = topk_intersection(result.before, result.noise_after, result.k)
    return _scored(result, shared, noise, [None] * inputs.n, metric)


# Both metrics run the same attack and read its result differently: one function, registered twice.
REGISTERED = {
    "attack_spearman": """Spearman ρ between the map before and after the top-k FGSM attack (UNI
    Table 3; higher is more robust). Ranks use `order` (magnitudes by default, as Ghorbani); ties
    get average ranks. Curve: [ε used, ρ under random ±ε noise, 1 exact gradient / 0 SPSA].""",
    "attack_topk": """Top-k intersection: the fraction of the k most important map elements before
    the attack that are still among the k most important after it (UNI Table 4 in %, here in
    [0, 1]; higher is more robust). k = 1000 at 224² scaled by the map's area (``k: null``); ties
    at the k-th place keep the row-major order. Curve: [ε used, intersection under random ±ε
    noise, 1 exact gradient / 0 SPSA].""",
}
for _name, _doc in REGISTERED.items():
    register_metric(_name, kind="explainer", direction="higher", bind={"metric": _name}, doc=_doc)(
        attack_robustness
    )
