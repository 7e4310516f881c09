"""Inverse IBA, Regression IBA and Multi-layer IBA (Khakzar et al., MICCAI 2021, Sec. 2.1–2.3).

All three reuse the per-sample feature bottleneck of `attrflow.methods.iba` (Schulz et al., 2020):
the same Z = λ R + (1 − λ) ε at a layer, the same cached feature statistics, the same Adam
optimisation of λ's logits and the same map (the bottleneck's capacity in bits per input pixel).
What changes is the output term of the loss.

*Inverse IBA* (`inverse_iba`). IBA is a preservation game: it keeps the smallest information
that keeps the target, so it finds regions *sufficient* for the prediction and ignores other
predictive regions. Inverse IBA plays the deletion game instead (their Eq. 4):

    L_inv = β · L_I − L_CE(Z_inv),    Z_inv = λ ε + (1 − λ) R,

the information term L_I = mean KL[P(Z|R) ‖ Q(Z)] still pushes λ → 0, while maximising the
cross-entropy of the *inverse* bottleneck pushes λ → 1 on every feature whose deletion hurts the
target, so λ ends up high on *all* predictive regions. (With Z instead of Z_inv both terms push
λ → 0 and the map is empty, as the paper notes.) The map is the capacity of λ, as for IBA.

*Regression IBA* (`regression_iba`). For a model whose output Φ is a score (e.g. a total
severity), the cross-entropy is replaced by one of three terms on the explained output Φ = the
``target`` output (output 0 of a regression model):

* ``loss="mse"``: (Φ(Z) − y)², y = ``target_score``. The paper notes that a small y finds the
  regions informative for a *small* score;
* ``loss="maximisation"`` (regression maximisation): the term Φ(Z)² is maximised, i.e.
  −Φ(Z)² is minimised; it favours regions that raise the score. The paper writes L_RM = Φ(Z)²;
  minimising it would agree with L_I (noise everywhere) and give an empty map, and the authors'
  code negates it, so the sign here is theirs;
* ``loss="deviation"``: (Φ(Z) − Φ(X))², the deviation from the score of the clean image X (the
  paper's print reads "(Φ(Z) − X)²"; "we subtract the score of the noisy feature map from the
  score of the original image" and the authors' code both mean Φ(X)). Like classification IBA it
  finds regions *sufficient* for the prediction.

``inverse=True`` applies Inverse IBA to any of the three: the model sees Z_inv and the term is
maximised (β · L_I − L(Z_inv)), finding all regions whose deletion changes the score.

*Multi-layer IBA* (`multi_layer_iba`, their Eq. 5). IBA at early layers is crisp but its
variational prior overestimates information; at deep layers it is reliable but coarse. Multi-
layer IBA computes IBA at several layers, binarises each map with a threshold 𝒯 and intersects:
𝒯(IBA_L1) ∩ 𝒯(IBA_L2) ∩ … The paper gives no threshold. Each layer's map is in bits per pixel
but early layers overestimate, so one absolute threshold would mean different things per layer;
here 𝒯 keeps the pixels at or above ``threshold`` × that map's maximum (and with some
information), 0.5 by default (half the peak, our choice). The map is the binary intersection
(1 inside, 0 outside), as Eq. 5 defines it.

Defaults and their source:

* placement ``layer="stage2"`` and ``steps=10``, ``lr=1.0``, ``copies=10``, ``initial_alpha=5``,
  ``sigma=1``, ``min_std=0.01``, ``active_threshold=0.01`` — IBA's (`attrflow.methods.iba`);
* Inverse IBA ``beta=30`` — the paper states no β; the authors' released code for this paper
  runs IBA at β = 10 and the inverse mask at β = 30 (``reverse_mask_beta=30``). Maximising the
  output term rewards opening λ more than minimising it does (a deleted feature can raise the
  CE far above its clean value, by more than the ln-probability a kept one can save), so the
  information term needs a stronger weight to keep λ closed on what does not matter. Measured
  on the embedded small CNN (6 test shapes, stage2): under Z_inv the target's probability falls
  to 0.60 at β = 30 (0.17 at β = 10, 0.97 at β = 100, where almost nothing is marked), with the
  same share of the map's mass on the object (0.36) at 10 and 30;
* Regression IBA ``beta=10`` (IBA's; the code's default for the regression losses too), and
  ``loss="deviation"``, the variant the paper shows on its regression model (Fig. 3a);
* Multi-layer IBA ``layers=[stage1, stage2, stage3]`` — the paper's DenseBlock 1, 2, 3 of a
  DenseNet-121 (the first three of four stages), ``beta=10``. On the embedded small CNN the
  intersection at threshold 0.5 keeps 0.2–2.6 % of the pixels (6 test shapes), 42 % of them on
  the object (IBA at stage2: 38 % of its mass); lower the threshold for larger regions.

Cost: one forward per image per layer to record R (plus one for Φ(X) with ``deviation``), then
``steps`` × ``copies`` forward + backward passes per image per layer.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch

from attrflow.methods._batching import check_max_batch, evaluation_mode, validate_batch
from attrflow.methods._bottleneck import (
    ActiveThreshold,
    AdamSteps,
    BottleneckLayer,
    Copies,
    InformationBeta,
    InitialAlpha,
    LearningRate,
    MinStd,
    SmoothSigma,
    BottleneckSettings,
    FeatureBottleneck,
    FeatureFit,
    OutputObjective,
    draw_seeds,
    fit_feature_bottleneck,
    information_map,
    layer_statistics,
)
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, MethodNotApplicable, register_method
from attrflow.models.wrapper import is_regression
from attrflow.params import Doc, Ge, Le, MinLen

REGRESSION_LOSSES = ("mse", "maximisation", "deviation")


def _fit_layer(
    method: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    layer: str,
    settings: BottleneckSettings,
    min_std: float,
    active_threshold: float,
    references,
    generator: torch.Generator | None,
    max_batch: int,
    objective: OutputObjective | None = None,
    inverse: Annotated[bool, Doc("play the deletion game on the inverse mask (Inverse IBA)")] = False,
) -> FeatureFit:
    """One layer's fitted bottleneck, in eval mode, with the hook removed afterwards."""
    _, module, stats = layer_statistics(references, model, layer, method)
    stats = type(stats)(*(t.to(device=x.device, dtype=x.dtype) for t in stats))
    hook = FeatureBottleneck(getattr(model, "net", model), stats, min_std, active_threshold)
    with evaluation_mode(model):
        return fit_feature_bottleneck(
            model, x, target, module=module, hook=hook, settings=settings,
            seeds=draw_seeds(x.shape[0], generator), max_batch=max_batch,
            objective=objective, inverse=inverse,
        )


def _bits(fit: FeatureFit) -> torch.Tensor:
    return fit.capacity.detach().flatten(1).sum(dim=1) / math.log(2)


# ---------------------------------------------------------------------------------------------
# Inverse IBA


@register_method("inverse_iba", channel_free=True, references="feature_stats")
def inverse_iba(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    layer: BottleneckLayer = "stage2",
    beta: Annotated[
        float, Ge(0), Doc("weight β of the information loss (not stated by Khakzar et al., 2021; the authors' code: 30)")
    ] = 30.0,
    steps: AdamSteps = 10,
    lr: LearningRate = 1.0,
    copies: Copies = 10,
    initial_alpha: InitialAlpha = 5.0,
    sigma: SmoothSigma = 1.0,
    min_std: MinStd = 0.01,
    active_threshold: ActiveThreshold = 0.01,
    references=None,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """Inverse IBA (Khakzar et al., 2021 Eq. 4): the deletion game; λ high on *all* predictive
    features. Diagnostics: ``information_bits`` (n,) and ``deleted_target_prob`` (n,), the
    target's probability when the model sees the inverse bottleneck Z_inv (low: the marked
    features carried the prediction)."""
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    if is_regression(model):
        raise MethodNotApplicable(
            "inverse_iba maximises a cross-entropy and the model is a regression model; use "
            "regression_iba with inverse: true"
        )
    settings = BottleneckSettings(beta, steps, lr, copies, initial_alpha, sigma)
    fit = _fit_layer(
        "inverse_iba", model, x, target, layer=layer, settings=settings, min_std=min_std,
        active_threshold=active_threshold, references=references, generator=generator,
        max_batch=max_batch, inverse=True,
    )
    maps = information_map(fit.capacity.detach(), (x.shape[-2], x.shape[-1]))
    return Attribution(maps, {"information_bits": _bits(fit), "deleted_target_prob": fit.target_probs})


# ---------------------------------------------------------------------------------------------
# Regression IBA


def regression_objective(
    loss: str, target: torch.Tensor, *, target_score: float, clean_scores: torch.Tensor | None
) -> OutputObjective:
    """The output term of Regression IBA for the explained output Φ = logits[:, target].

    ``mse``: (Φ − target_score)²; ``maximisation``: −Φ² (the squared score is maximised);
    ``deviation``: (Φ − Φ(X))², with ``clean_scores`` (n,) = Φ(X) per image. Tracks Φ.
    """
    if loss not in REGRESSION_LOSSES:
        raise ValueError(f"regression_iba: parameter loss must be one of {REGRESSION_LOSSES}, not {loss!r}")
    if loss == "deviation" and clean_scores is None:
        raise ValueError("regression_iba: the deviation loss needs the clean scores Φ(X)")
    if not math.isfinite(float(target_score)):
        raise ValueError(f"regression_iba: parameter target_score must be finite; got {target_score!r}")

    def score(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, target[images].unsqueeze(1)).squeeze(1)

    def term(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        phi = score(logits, images)
        if loss == "mse":
            return (phi - target_score) ** 2
        if loss == "maximisation":
            return -(phi**2)
        assert clean_scores is not None
        return (phi - clean_scores[images]) ** 2

    return OutputObjective(loss=term, tracked=score)


@torch.no_grad()
def _clean_scores(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, max_batch: int) -> torch.Tensor:
    parts = [model(chunk) for chunk in x.split(max_batch)]
    return torch.cat(parts).gather(1, target.unsqueeze(1)).squeeze(1)


@register_method("regression_iba", channel_free=True, references="feature_stats")
def regression_iba(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    loss: Annotated[
        Literal["mse", "maximisation", "deviation"],
        Doc("the output term replacing cross-entropy: squared error to target_score, maximised output, or deviation from the clean output"),
    ] = "deviation",
    inverse: Annotated[bool, Doc("play the deletion game on the inverse mask (Inverse IBA)")] = False,
    target_score: Annotated[
        float,
        Doc("y of the mse loss: the score the bottleneck should keep the output at"),
    ] = 0.0,
    layer: BottleneckLayer = "stage2",
    beta: InformationBeta = 10.0,
    steps: AdamSteps = 10,
    lr: LearningRate = 1.0,
    copies: Copies = 10,
    initial_alpha: InitialAlpha = 5.0,
    sigma: SmoothSigma = 1.0,
    min_std: MinStd = 0.01,
    active_threshold: ActiveThreshold = 0.01,
    references=None,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """Regression IBA (Khakzar et al., 2021 Sec. 2.2): IBA with a regression output term.

    Explains output ``target`` as a score (output 0 of a regression model; on a classifier, the
    target's logit). ``target_score`` is read by ``loss="mse"`` only. Diagnostics:
    ``information_bits`` (n,), ``clean_score`` (n,) Φ(X), and ``bottleneck_score`` (n,), Φ under
    the bottleneck the model saw (Z, or Z_inv with ``inverse``), mean over the last step's copies.
    """
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    settings = BottleneckSettings(beta, steps, lr, copies, initial_alpha, sigma)
    with evaluation_mode(model):
        clean = _clean_scores(model, x, target, max_batch)
    objective = regression_objective(loss, target, target_score=target_score, clean_scores=clean)
    fit = _fit_layer(
        "regression_iba", model, x, target, layer=layer, settings=settings, min_std=min_std,
        active_threshold=active_threshold, references=references, generator=generator,
        max_batch=max_batch, objective=objective, inverse=bool(inverse),
    )
    maps = information_map(fit.capacity.detach(), (x.shape[-2], x.shape[-1]))
    return Attribution(
        maps,
        {"information_bits": _bits(fit), "clean_score": clean, "bottleneck_score": fit.target_probs},
    )


# ---------------------------------------------------------------------------------------------
# Multi-layer IBA


def intersect_thresholded(maps: list[torch.Tensor], threshold: float) -> torch.Tensor:
    """𝒯(M_1) ∩ … ∩ 𝒯(M_L) for maps (n, H, W): 𝒯(M) = {M ≥ threshold · max M} ∩ {M > 0}.

    Returns the intersection as a float map of 0 and 1 (n, H, W).
    """
    if not maps:
        raise ValueError("multi_layer_iba: parameter layers names no layer")
    if not 0.0 <= threshold <= 1.0 or not math.isfinite(threshold):
        raise ValueError(f"multi_layer_iba: parameter threshold must lie in [0, 1]; got {threshold!r}")
    selected = torch.ones_like(maps[0], dtype=torch.bool)
    for layer_map in maps:
        peak = layer_map.flatten(1).amax(dim=1).view(-1, 1, 1)
        selected &= (layer_map >= threshold * peak) & (layer_map > 0)
    return selected.to(maps[0].dtype)


@register_method("multi_layer_iba", channel_free=True, references="feature_stats")
def multi_layer_iba(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    layers: Annotated[
        list[Annotated[str, MinLen(1)]], MinLen(1), Doc("the layers whose binarised IBA maps are intersected")
    ] = ["stage1", "stage2", "stage3"],  # noqa: B006 - never mutated
    threshold: Annotated[
        float,
        Ge(0),
        Le(1),
        Doc("each layer's map is binarised at threshold × its maximum"),
    ] = 0.5,
    beta: InformationBeta = 10.0,
    steps: AdamSteps = 10,
    lr: LearningRate = 1.0,
    copies: Copies = 10,
    initial_alpha: InitialAlpha = 5.0,
    sigma: SmoothSigma = 1.0,
    min_std: MinStd = 0.01,
    active_threshold: ActiveThreshold = 0.01,
    references=None,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """Multi-layer IBA (Khakzar et al., 2021 Eq. 5): IBA at each of ``layers``, each map
    binarised at ``threshold`` × its maximum, intersected. The map is 1 on the intersection, 0
    elsewhere. Classification models use IBA's cross-entropy; a regression model's IBA uses the
    deviation loss of `regression_iba`. Diagnostics: ``layer_information_bits`` (n, L) and
    ``selected_fraction`` (n,), the share of pixels in the intersection."""
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    if isinstance(layers, str) or not list(layers):
        raise ValueError(f"multi_layer_iba: parameter layers must be a non-empty list of layer names; got {layers!r}")
    if not 0.0 <= threshold <= 1.0 or not math.isfinite(threshold):
        raise ValueError(f"multi_layer_iba: parameter threshold must lie in [0, 1]; got {threshold!r}")
    settings = BottleneckSettings(beta, steps, lr, copies, initial_alpha, sigma)
    objective = None
    if is_regression(model):
        with evaluation_mode(model):
            clean = _clean_scores(model, x, target, max_batch)
        objective = regression_objective("deviation", target, target_score=0.0, clean_scores=clean)
    layer_maps, layer_bits = [], []
    for layer in layers:
        fit = _fit_layer(
            "multi_layer_iba", model, x, target, layer=layer, settings=settings, min_std=min_std,
            active_threshold=active_threshold, references=references, generator=generator,
            max_batch=max_batch, objective=objective,
        )
        layer_maps.append(information_map(fit.capacity.detach(), (x.shape[-2], x.shape[-1])))
        layer_bits.append(_bits(fit))
    maps = intersect_thresholded(layer_maps, threshold)
    return Attribution(
        maps,
        {"layer_information_bits": torch.stack(layer_bits, dim=1), "selected_fraction": maps.flatten(1).mean(dim=1)},
    )
