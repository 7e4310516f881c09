"""Extremal Perturbations (Fong, Patrick & Vedaldi, ICCV 2019), written from the paper.

The preserve game: find the smooth mask m of area a whose region, kept sharp while everything
else is blurred, preserves the target's logit best,

    m_a = argmax_m  Φ(m ⊗ x) − λ_t · ‖vecsort(m) − r_a‖² / |Ω|,

where r_a is the sorted reference mask (a·|Ω| ones after (1 − a)·|Ω| zeros). The ranking term
fixes the area without a tunable sparsity weight: it pushes the a·|Ω| largest mask values to 1
and the rest to 0, and its weight λ_t grows geometrically (×``area_weight_growth`` per
iteration, from ``area_weight``) so that late iterations enforce the constraint.

* **Blur perturbation.** m ⊗ x blurs pixel u with σ(u) = σ_max·(1 − m(u)): a pyramid of
  ``levels`` blurs, σ_l = σ_max·(1 − l/(levels − 1)) (the last level is x itself), with m(u)
  mapped to level m·(levels − 1) and linearly interpolated between neighbouring levels. The blur
  is `_baselines`' scipy Gaussian with reflect padding (the project's choice everywhere: a blur
  removes texture, not the colour at the borders; the authors' code pads with zeros).
* **Smooth masks.** m is generated from parameters m̄ on a grid of stride ``step`` pixels
  (extending ⌈σ/step⌉ cells past the image so borders are as free as the centre): m(u) =
  smax_k g(‖u − u_k‖/σ)·m̄_k, with g(z) = exp(−2·max(z − ½, 0)²) (flat within σ/2, Gaussian
  fall-off) and smax the smooth maximum Σ v·softmax(20·v) over the grid points within 2σ (beyond
  that g < 0.012, whose softmax weight against a nearby value near 1 is below 1e-8). The mask is
  clamped to [0, 1]; parameters start at 1 (the whole image kept) and are clamped to [0, 1] after
  every step.
* **Optimiser and schedule** (the published constants, as in the authors' release): SGD,
  learning rate 0.01, momentum 0.9 with dampening 0.9, 800 iterations, λ from 300 ×1.0035 per
  iteration, horizontal-flip jitter on even iterations, grid stride 7 and σ = 21 at 224 pixels.

Scale ``step`` and ``smooth_sigma`` (and ``max_blur``) with the image: 2, 6 and 6 at 64 pixels.

All images of a chunk of ``max_batch`` are optimised together; their energies are summed, so
each mask's gradient is its own and the masks do not depend on how the batch was chunked.
Nothing is random: the same input gives the same mask. Cost: ``iterations`` forward and
backward passes per image, plus one forward for the diagnostics.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch

from attrflow.methods._baselines import apply_blur, gaussian_blur_matrices
from attrflow.methods._batching import check_max_batch, evaluation_mode, validate_batch
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, register_method
from attrflow.params import Doc, Ge, Gt, Lt

COLDNESS = 20.0  # the smooth max's inverse temperature
SUPPORT = 2.0  # grid points farther than SUPPORT·σ from a pixel are ignored
MOMENTUM = 0.9
DAMPENING = 0.9


@register_method("extremal_perturbation", channel_free=True)
def extremal_perturbation(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    area: Annotated[
        float,
        Gt(0),
        Lt(1),
        Doc("target mask area a as a fraction of the image (Zhang et al., 2021: 0.1)"),
    ] = 0.1,
    iterations: Annotated[
        int,
        Ge(1),
        Doc("optimisation steps (one forward and backward per image each)"),
    ] = 800,
    learning_rate: Annotated[
        float,
        Gt(0),
        Doc("SGD learning rate (momentum 0.9, dampening 0.9)"),
    ] = 0.01,
    area_weight: Annotated[
        float,
        Ge(0),
        Doc("initial weight λ of the ranking area loss"),
    ] = 300.0,
    area_weight_growth: Annotated[
        float,
        Ge(1),
        Doc("factor λ is multiplied by after every iteration"),
    ] = 1.0035,
    max_blur: Annotated[
        float,
        Gt(0),
        Doc("σ_max in pixels of the blur that replaces the unkept region"),
    ] = 20.0,
    levels: Annotated[
        int,
        Ge(2),
        Doc("blur pyramid levels between σ_max and the sharp image"),
    ] = 8,
    step: Annotated[int, Ge(1), Doc("stride in pixels of the mask's parameter grid")] = 7,
    smooth_sigma: Annotated[
        float,
        Gt(0),
        Doc("σ in pixels of the smooth-max kernel that turns parameters into a mask"),
    ] = 21.0,
    jitter: Annotated[
        bool,
        Doc("flip the perturbed image horizontally on every even iteration"),
    ] = True,
    reward: Annotated[
        Literal["logit", "contrastive"],
        Doc(
            "what the kept region preserves: the target logit, or the target logit minus the "
            "largest other logit"
        ),
    ] = "logit",
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """(n, H, W) masks in [0, 1] of area ≈ ``area`` that preserve the target (see module doc).

    Diagnostics: ``mask_area`` (n,) the final masks' mean, ``area_loss`` (n,) their ranking
    loss ‖vecsort(m) − r_a‖²/|Ω|, ``preserved_reward`` (n,) the reward of the final perturbed
    image (no jitter) and ``reward`` (n,) that of the original image, for comparison.
    """
    x, target = validate_batch(model, x, target)
    check_max_batch(max_batch)
    height, width = x.shape[-2:]
    generator = SmoothMaskGenerator(height, width, step, smooth_sigma, device=x.device, dtype=x.dtype)
    reference = _sorted_reference(height * width, area, x)
    sigmas = max_blur * (1.0 - torch.arange(levels, dtype=torch.float64) / (levels - 1))
    rows = gaussian_blur_matrices(sigmas.to(x.device), height, "reflect").to(x.dtype)
    cols = rows if width == height else gaussian_blur_matrices(sigmas.to(x.device), width, "reflect").to(x.dtype)
    masks, diagnostics = [], []
    with evaluation_mode(model):
        for start in range(0, x.shape[0], max_batch):
            images, classes = x[start : start + max_batch], target[start : start + max_batch]
            pyramid = torch.stack([apply_blur(images, rows[l : l + 1], cols[l : l + 1]) for l in range(levels)], dim=1)
            parameters = _optimise(
                model, pyramid, classes, generator, reference,
                iterations=iterations, learning_rate=learning_rate, area_weight=area_weight,
                area_weight_growth=area_weight_growth, jitter=jitter, reward=reward,
            )  # fmt: skip
            with torch.no_grad():
                mask = generator(parameters)
                masks.append(mask)
                diagnostics.append(
                    {
                        "mask_area": mask.flatten(1).mean(dim=1),
                        "area_loss": _area_loss(mask, reference),
                        "preserved_reward": _reward(model(perturb(pyramid, mask)), classes, reward),
                        "reward": _reward(model(images), classes, reward),
                    }
                )
    return Attribution(
        maps=torch.cat(masks),
        diagnostics={key: torch.cat([d[key] for d in diagnostics]) for key in diagnostics[0]},
    )


class SmoothMaskGenerator:
    """Parameters (n, 1, Gh, Gw) on a stride-``step`` grid → smooth masks (n, H, W) in [0, 1].

    A pixel's kernel weights to the (2R + 1)² grid points of its window (R cells, just over
    ``SUPPORT``·σ) depend only on its phase within its grid cell, so they are tabulated once as
    (step², K). The K neighbouring
    parameters of every cell are gathered with `unfold`; each phase's pixels form a strided
    sub-image, so the smooth max runs on (n, step², K, cells) and the phases are interleaved
    back by a reshape — no per-pixel gather, whose backward is a slow scatter.
    """

    def __init__(
        self, height: int, width: int, step: int, sigma: float, *, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.height, self.width, self.step = height, width, step
        self.margin = math.ceil(sigma / step)  # grid cells beyond each image border
        self.cells = (math.ceil(height / step), math.ceil(width / step))  # cells over the image
        self.grid_shape = (self.cells[0] + 2 * self.margin, self.cells[1] + 2 * self.margin)
        self.radius = math.ceil(SUPPORT * sigma / step) + 1  # cells searched around a pixel's cell
        offsets = torch.arange(-self.radius, self.radius + 1, dtype=torch.float64)
        phases = torch.arange(step, dtype=torch.float64)
        # signed distance from a pixel at `phase` within its cell to the grid point `offset` cells
        # away; grid point k sits at the centre of cell k
        along = offsets.view(1, -1) * step + (step - 1) / 2 - phases.view(-1, 1)  # (step, 2R+1)
        distance = torch.sqrt(along.view(step, 1, -1, 1) ** 2 + along.view(1, step, 1, -1) ** 2)
        z = distance / sigma
        kernel = torch.exp(-2.0 * (z - 0.5).clamp_min(0) ** 2) * (z <= SUPPORT)
        # (step², K): phase (row, col) major, neighbours in `unfold`'s (row, col) order. The
        # window's zero-weight entries stay: each adds e⁰ to the smooth max's denominator, which
        # pulls weakly supported pixels towards 0 (dropping them made masks drift to the borders)
        self.weights = kernel.reshape(step * step, -1).to(device=device, dtype=dtype)

    def initial_parameters(self, n: int) -> torch.Tensor:
        """All ones: the optimisation starts from the whole image kept."""
        return torch.ones((n, 1, *self.grid_shape), dtype=self.weights.dtype, device=self.weights.device)

    def __call__(self, parameters: torch.Tensor) -> torch.Tensor:
        n, size, step = parameters.shape[0], 2 * self.radius + 1, self.step
        rows, cols = self.cells
        padded = torch.nn.functional.pad(parameters, [self.radius] * 4)
        window = padded[..., self.margin : self.margin + rows + size - 1, self.margin : self.margin + cols + size - 1]
        neighbours = torch.nn.functional.unfold(window, size)  # (n, K, cells)
        # (n, cells, 1, K) against (step², K): the smooth max runs over the contiguous last dim
        values = neighbours.transpose(1, 2).unsqueeze(2) * self.weights
        pooled = (values * torch.softmax(COLDNESS * values, dim=-1)).sum(dim=-1)  # (n, cells, step²)
        mask = pooled.view(n, rows, cols, step, step).permute(0, 1, 3, 2, 4)
        mask = mask.reshape(n, rows * step, cols * step)[:, : self.height, : self.width]
        return mask.clamp(0.0, 1.0)


def _sorted_reference(pixels: int, area: float, like: torch.Tensor) -> torch.Tensor:
    """r_a: (1 − a)·|Ω| zeros then a·|Ω| ones — what vecsort of an ideal mask of area a is."""
    reference = torch.zeros(pixels, dtype=like.dtype, device=like.device)
    kept = round(area * pixels)
    if kept:
        reference[-kept:] = 1.0
    return reference


def _area_loss(mask: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """‖vecsort(m) − r_a‖² / |Ω| per mask."""
    ranked = mask.flatten(1).sort(dim=1).values
    return ((ranked - reference) ** 2).mean(dim=1)


def perturb(pyramid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """m ⊗ x: per pixel, interpolate the blur pyramid (n, L, C, H, W) at level m·(L − 1)."""
    levels = pyramid.shape[1]
    position = mask.unsqueeze(1) * (levels - 1)  # (n, 1, H, W)
    lower = position.detach().floor().clamp(max=levels - 2).long()
    fraction = (position - lower).unsqueeze(2)  # (n, 1, 1, H, W)
    index = lower.unsqueeze(2).expand(-1, -1, pyramid.shape[2], -1, -1)
    below = pyramid.gather(1, index)
    above = pyramid.gather(1, index + 1)
    return (below + fraction * (above - below)).squeeze(1)


def _reward(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    chosen = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    if kind == "logit":
        return chosen
    others = logits.scatter(1, target.unsqueeze(1), float("-inf"))
    return chosen - others.max(dim=1).values


def _optimise(
    model: torch.nn.Module,
    pyramid: torch.Tensor,
    target: torch.Tensor,
    generator: SmoothMaskGenerator,
    reference: torch.Tensor,
    *,
    iterations: int,
    learning_rate: float,
    area_weight: float,
    area_weight_growth: float,
    jitter: bool,
    reward: str,
) -> torch.Tensor:
    """Run the schedule on one chunk; returns the final mask parameters.

    Gradients are taken with respect to the parameters only (`torch.autograd.grad`), so a
    model whose weights require gradients is neither differentiated nor left with ``.grad``.
    """
    parameters = generator.initial_parameters(pyramid.shape[0]).requires_grad_(True)
    optimiser = torch.optim.SGD([parameters], lr=learning_rate, momentum=MOMENTUM, dampening=DAMPENING)
    weight = float(area_weight)
    with torch.enable_grad():
        for iteration in range(iterations):
            mask = generator(parameters)
            perturbed = perturb(pyramid, mask)
            if jitter and iteration % 2 == 0:
                perturbed = perturbed.flip(-1)
            energy = weight * _area_loss(mask, reference) - _reward(model(perturbed), target, reward)
            (parameters.grad,) = torch.autograd.grad(energy.sum(), parameters)
            optimiser.step()
            with torch.no_grad():
                parameters.clamp_(0.0, 1.0)
            weight *= area_weight_growth
    return parameters.detach()
