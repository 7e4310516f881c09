"""The per-sample information bottleneck shared by IBA and InputIBA (Zhang et al., 2021).

A bottleneck replaces a tensor R (a layer's feature map, or the input) by

    Z = λ ⊙ R + (1 − λ) ⊙ ε,    λ = smooth(sigmoid(α)),    ε ~ N(μ, σ²),

and optimises α per image so that the target class survives (cross-entropy) while as little
information as possible passes: loss = CE + β · mean_elements KL[P(Z|R) ‖ Q(Z)], Q = N(μ, σ²)
(Zhang et al., 2021 Eq. 4 with App. A Eq. 7). `fit_bottleneck` runs that optimisation for a batch of images
at once. Adam is elementwise, so optimising every image's α jointly on the sum of their losses is
exactly optimising each one alone; images are grouped so that a group's copies fill one pass of
at most ``max_batch`` inputs (a single image's copies are split over several passes when they do
not fit). Each image draws its noise from its own generator, seeded once from the runtime
generator, so its map does not depend on ``max_batch`` or on the other images of the call.

The output term is cross-entropy on the target class unless an `OutputObjective` replaces it
(Regression IBA's losses, Khakzar et al., 2021). With ``inverse=True`` the fit plays the deletion
game of Inverse IBA (Khakzar et al., 2021 Eq. 4): the model sees the *inverse* bottleneck
Z_inv = λ ε + (1 − λ) R and the output term is maximised, loss = β · KL − L_out(Z_inv), while the
information term keeps measuring the ordinary Z = λ R + (1 − λ) ε, so λ → 1 marks what must be
deleted and the map is still the capacity of λ.

`FeatureBottleneck` is the forward hook that puts a bottleneck into a layer; hooks are removed
by `feature_bottleneck` even when the call raises.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from attrflow.models.layers import prefix_tokens, resolve_layer, tokens_to_grid
from attrflow.params import Doc, Ge, Gt, Le, MinLen

# λ is kept below 1: log(1 − λ)² diverges at λ = 1, which float32 sigmoid reaches for α ≳ 17
# (Adam at lr 1 moves α by up to 1 per step). [an inference: the papers do not say]
MAX_LAMBDA = 1.0 - 1e-6

# Parameters IBA and InputIBA share, declared once (`attrflow.params`).
BottleneckLayer = Annotated[
    str, MinLen(1), Doc("where the feature bottleneck sits: 'stage1'..'stage4', 'default' or a module path")
]
InformationBeta = Annotated[float, Ge(0), Doc("weight β of the information loss (Zhang et al., 2021: 10)")]
AdamSteps = Annotated[int, Ge(1), Doc("Adam steps per image")]
LearningRate = Annotated[float, Gt(0), Doc("Adam's learning rate for the bottleneck's α")]
Copies = Annotated[int, Ge(1), Doc("noisy copies of each image per optimisation step")]
InitialAlpha = Annotated[float, Doc("α at the start (λ = sigmoid(α); 5 gives λ ≈ 0.993)")]
SmoothSigma = Annotated[float, Ge(0), Doc("σ of the Gaussian smoothing of λ; 0: none")]
MinStd = Annotated[float, Gt(0), Doc("floor of the feature statistics' standard deviation")]
ActiveThreshold = Annotated[
    float,
    Ge(0),
    Le(1),
    Doc("elements nonzero in at most this share of the train images are inactive, zeroed in Z"),
]


class LayerStatistics(NamedTuple):
    """Cached per-element statistics of one layer's output over train images, each (C, h, w)."""

    mean: torch.Tensor
    std: torch.Tensor
    nonzero: torch.Tensor  # share of images in which the element is not 0


@dataclass(frozen=True)
class BottleneckSettings:
    beta: float
    steps: int
    lr: float
    copies: int
    initial_alpha: float
    sigma: float


@dataclass
class FittedBottleneck:
    alpha: torch.Tensor  # (n, *shape), the optimised logits of λ
    # (n,) the objective's tracked output (the target probability for CE) under the bottleneck
    # the model saw (Z, or Z_inv when inverse), mean over the last step's copies
    target_probs: torch.Tensor


@dataclass(frozen=True)
class OutputObjective:
    """The output term of the bottleneck loss, evaluated per (image, copy) row.

    ``loss(logits, images)`` gives the (k,) term to minimise for the rows' logits (k, K) and the
    rows' image indices (k,) into the batch; ``tracked(logits, images)`` the (k,) value reported
    per image (mean over copies) as a diagnostic.
    """

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    tracked: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_objective(target: torch.Tensor) -> OutputObjective:
    """IBA's output term: −log softmax(logits)[target]; tracks the target's probability."""

    def log_probs(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits, dim=1).gather(1, target[images].unsqueeze(1)).squeeze(1)

    return OutputObjective(
        loss=lambda logits, images: -log_probs(logits, images),
        tracked=lambda logits, images: log_probs(logits, images).exp(),
    )


def layer_statistics(
    references: Any, model: nn.Module, layer: str, method: str
) -> tuple[str, nn.Module, LayerStatistics]:
    """(module path, module, statistics) for ``layer``; errors list the layers that have them."""
    path, module = resolve_layer(model, layer)
    if not isinstance(references, Mapping):
        raise ValueError(
            f"{method}: parameter references must map layer names to feature statistics (the "
            f"workflow's feature_stats references); got {type(references).__name__}"
        )
    stats = references.get(layer, references.get(path))
    if stats is None:
        raise ValueError(
            f"{method}: no feature statistics for layer {layer!r} ({path!r}); the cached "
            f"feature_stats hold {', '.join(sorted(references))}"
        )
    return path, module, LayerStatistics(*stats)


def gaussian_smoothing(lam: torch.Tensor, sigma: float) -> torch.Tensor:
    """Depthwise Gaussian blur of (n, C, h, w) with kernel 2·round(2σ) + 1 (IBA's smoothing of λ).

    Reflection padding as in the IBA code; maps too small to reflect (side ≤ radius) are padded
    by replication instead.
    """
    radius = int(round(2 * sigma))
    if sigma <= 0 or radius == 0:
        return lam
    offsets = torch.arange(-radius, radius + 1, device=lam.device, dtype=lam.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = lam.shape[1]
    mode = "reflect" if min(lam.shape[-2:]) > radius else "replicate"
    padded = F.pad(lam, (radius, radius, radius, radius), mode=mode)
    rows = F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)


def bottleneck_lambda(alpha: torch.Tensor, sigma: float) -> torch.Tensor:
    return gaussian_smoothing(torch.sigmoid(alpha), sigma).clamp(max=MAX_LAMBDA)


def gaussian_capacity(standardised: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """KL[N(λ r, (1 − λ)²) ‖ N(0, 1)] in nats per element, r = (R − μ) / σ (IBA's capacity)."""
    mean_z = lam * standardised
    log_var_z = 2 * torch.log1p(-lam)
    return -0.5 * (1 + log_var_z - mean_z**2 - torch.exp(log_var_z))


def draw_seeds(n: int, generator: torch.Generator | None) -> list[int]:
    """One noise seed per image, drawn once from the runtime generator."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, 2**62, (n,), generator=generator, device=device).tolist()


def fit_bottleneck(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    shape: tuple[int, ...],
    capacity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    settings: BottleneckSettings,
    seeds: list[int],
    max_batch: int,
    objective: OutputObjective | None = None,
    inverse: bool = False,
) -> FittedBottleneck:
    """Optimise α (n, *shape) per image with Adam on L_out + β · mean KL (CE by default).

    ``capacity(λ, images)`` gives the KL (k, *shape) of those images (indices into x) under λ;
    ``forward(λ_rows, noise_rows, images)`` runs the model with the bottleneck applied to one row
    per (image, copy) and returns the logits. Noise is standard normal; ``forward`` scales it.
    ``inverse``: the model sees 1 − λ and L_out is maximised (Inverse IBA, module docstring).
    """
    objective = objective if objective is not None else cross_entropy_objective(target)
    n, copies = x.shape[0], settings.copies
    alphas = torch.full((n, *shape), float(settings.initial_alpha), device=x.device, dtype=x.dtype)
    probs = torch.empty(n, device=x.device, dtype=x.dtype)
    group_size = max(1, max_batch // copies)
    for lo in range(0, n, group_size):
        images = torch.arange(lo, min(lo + group_size, n), device=x.device)
        alpha = alphas[images].clone().requires_grad_(True)
        optimiser = torch.optim.Adam([alpha], lr=settings.lr)
        generators = [_generator(seeds[i], x.device) for i in images.tolist()]
        for _ in range(settings.steps):
            noise = torch.stack(
                [torch.randn((copies, *shape), generator=g, device=x.device, dtype=x.dtype) for g in generators]
            )
            gradient = torch.zeros_like(alpha)
            step_probs = torch.empty(len(images), copies, device=x.device, dtype=x.dtype)
            for start in range(0, len(images) * copies, max_batch):
                rows = torch.arange(start, min(start + max_batch, len(images) * copies), device=x.device)
                image, copy = rows // copies, rows % copies
                lam = bottleneck_lambda(alpha, settings.sigma)
                shown = 1 - lam[image] if inverse else lam[image]
                logits = forward(shown, noise[image, copy], images[image])
                output_loss = objective.loss(logits, images[image]).sum() / copies
                gradient += torch.autograd.grad(-output_loss if inverse else output_loss, alpha)[0]
                step_probs[image, copy] = objective.tracked(logits.detach(), images[image])
            kl = capacity(bottleneck_lambda(alpha, settings.sigma), images)
            information = settings.beta * kl.flatten(1).mean(dim=1).sum()
            if information.requires_grad:
                gradient += torch.autograd.grad(information, alpha)[0]
            optimiser.zero_grad(set_to_none=True)
            alpha.grad = gradient
            optimiser.step()
        alphas[images] = alpha.detach()
        probs[images] = step_probs.mean(dim=1)
    return FittedBottleneck(alphas, probs)


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))


class FeatureBottleneck:
    """Forward hook on a layer: records its output, or replaces it by the bottleneck's Z.

    With ``rows`` unset the hook records the output (as a (k, C, h, w) grid) in ``recorded``;
    with ``rows = (λ, noise)`` it returns Z = (λ R + (1 − λ)(μ + σ ξ)) ⊙ active, as the IBA code
    does (inactive elements, nonzero in too few train images, are set to 0). ViT token outputs
    are turned into their patch grid and back; prefix tokens pass unchanged.
    """

    def __init__(self, net: nn.Module, stats: LayerStatistics, min_std: float, active_threshold: float) -> None:
        self.mean = stats.mean
        self.std = stats.std.clamp(min=min_std)
        self.active = (stats.nonzero > active_threshold).to(stats.mean.dtype)
        self.prefix = prefix_tokens(net)
        self.rows: tuple[torch.Tensor, torch.Tensor] | None = None
        self.recorded: torch.Tensor | None = None

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4):
            raise ValueError(
                f"the bottleneck layer outputs {type(output).__name__} "
                f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}; it needs a "
                "(n, C, h, w) feature map or (n, tokens, d) tokens"
            )
        grid = tokens_to_grid(output, self.prefix)
        if grid.shape[1:] != self.mean.shape:
            raise ValueError(
                f"the bottleneck layer outputs {tuple(grid.shape[1:])} per image but its cached "
                f"feature statistics are {tuple(self.mean.shape)} (computed at another input size?)"
            )
        if self.rows is None:
            self.recorded = grid.detach()
            return None
        lam, noise = self.rows
        z = (lam * grid + (1 - lam) * (self.mean + self.std * noise)) * self.active
        if output.dim() == 4:
            return z
        tokens = z.flatten(2).transpose(1, 2)
        return torch.cat([output[:, : self.prefix], tokens], dim=1)


@contextmanager
def feature_bottleneck(module: nn.Module, hook: FeatureBottleneck) -> Iterator[FeatureBottleneck]:
    handle = module.register_forward_hook(hook)
    try:
        yield hook
    finally:
        handle.remove()


@dataclass
class FeatureFit:
    """A fitted feature bottleneck: λ* (n, C, h, w), its capacity in nats, and Z*'s pieces."""

    lam: torch.Tensor
    capacity: torch.Tensor
    features: torch.Tensor
    target_probs: torch.Tensor


def fit_feature_bottleneck(
    model: nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    module: nn.Module,
    hook: FeatureBottleneck,
    settings: BottleneckSettings,
    seeds: list[int],
    max_batch: int,
    objective: OutputObjective | None = None,
    inverse: bool = False,
) -> FeatureFit:
    """IBA at one layer: record R once per image, then fit λ with R's bottleneck in the net.

    ``objective`` replaces the cross-entropy term; ``inverse`` plays Inverse IBA's deletion game
    (`fit_bottleneck`).
    """
    with feature_bottleneck(module, hook), torch.no_grad():
        recorded = []
        for chunk in x.split(max_batch):
            model(chunk)
            assert hook.recorded is not None
            recorded.append(hook.recorded)
            hook.recorded = None
    features = torch.cat(recorded)
    standardised = hook.standardise(features)

    def capacity(lam: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return gaussian_capacity(standardised[images], lam) * hook.active

    def forward(lam: torch.Tensor, noise: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        hook.rows = (lam, noise)
        try:
            return model(x[images])
        finally:
            hook.rows = None

    with feature_bottleneck(module, hook), torch.enable_grad():
        fitted = fit_bottleneck(
            model, x, target, shape=tuple(features.shape[1:]), capacity=capacity, forward=forward,
            settings=settings, seeds=seeds, max_batch=max_batch, objective=objective, inverse=inverse,
        )
    lam = bottleneck_lambda(fitted.alpha, settings.sigma)
    all_images = torch.arange(x.shape[0], device=x.device)
    return FeatureFit(lam, capacity(lam, all_images), features, fitted.target_probs)


def information_map(capacity: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Σ_channels capacity in bits, scaled by (h·w)/(H·W) and bilinearly resized to (H, W).

    The scaling keeps the map in bits per input pixel, so its sum ≈ the layer's total capacity
    (IBA's saliency map; Khakzar et al., MICCAI 2021: "bits/pixel, comparable across inputs").
    """
    bits = capacity.sum(dim=1, keepdim=True) / math.log(2)
    h, w = bits.shape[-2:]
    scaled = bits * (h * w) / (size[0] * size[1])
    return F.interpolate(scaled, size=size, mode="bilinear", align_corners=False).squeeze(1)
