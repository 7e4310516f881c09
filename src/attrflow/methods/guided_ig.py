"""Guided Integrated Gradients (Kapishnikov et al., "Guided Integrated Gradients", CVPR 2021).

Instead of the straight line, Guided IG moves, at every step, only the features whose gradient
is smallest in magnitude towards the input, so the path avoids high-gradient regions where
attributions pick up noise. It follows PAIR-code/saliency's ``guided_ig_impl`` (the authors'
reference), with its defaults: B = 200 steps, ``fraction`` 0.25, ``max_dist`` 0.02, black
baseline. For step s = 1..B, with α = s/B and the gradient g = ∇F at the current point:

1. the allowed band is α ± max_dist (clipped to [0, 1]) on the straight line, x_min … x_max;
   the step's goal is an L1 distance to x of L1_total·(1 − α);
2. repeat: features whose own α lag behind the band are pulled up to x_min; if the L1 goal is
   met (``math.isclose``, rel = abs = 1e-9) the step ends; otherwise select the features with
   |g| ≤ the ``fraction``-quantile of |g| (numpy's ``method='lower'``; features already at x_max
   count as +∞ and are never selected) and move them towards x_max — all the way when that is
   not enough to reach the goal (then repeat), or by the fraction γ that reaches it exactly;
3. the attribution gains (Δx) ⊙ g for every move of the step.

At α = 1 the band is {x}, so the path ends at x and Σ maps = F(x) − F(x') up to the Riemann
error of using the step's starting gradient (completeness). max_dist = 0 keeps every feature on
the straight line: Guided IG is then IG with the left Riemann rule; for a linear F it is IG
exactly.

The path is sequential in steps but every image advances together: one forward and backward
pass for the whole batch per step (chunked to ``max_batch``), then the selection loop runs for
all images at once, each image leaving it when its goal is met. Path state and attribution are
kept in float64 as PAIR does (the L1 bookkeeping and the x == x_max tests need it); the model
sees the point in the input's dtype. The state costs about a dozen (n, C·H·W) float64 tensors
(≈ 3.7 GB for n = 256 at 3×224²): pass fewer images per call where that is too much. Two
cases where PAIR stops with an assertion or loops forever end the step instead: a goal already
overshot (possible only when max_dist < 1/B) and nothing left to move.

Completeness is the continuous path's property; the discrete algorithm moves each selected
feature by up to 2·max_dist of its span within ONE step, however many steps there are, so its
Riemann error scales with max_dist and does not vanish as B grows (measured on the embedded
64×64 CNN at PAIR's defaults: |Σ maps − ΔF| / |ΔF| ≈ 1.3 median; ≈ 0.5 at max_dist 0.005).
The stored ``completeness_residual`` reports it per sample.

F is the target LOGIT (the project's convention, Hesse et al., 2021); PAIR's PyTorch example explains the
softmax probability instead.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch

from attrflow.methods._baselines import Baseline, make_baseline
from attrflow.methods._batching import evaluate_outputs, input_gradients, path_diagnostics, validate_batch
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, register_method
from attrflow.params import Doc, Ge, Gt, Le

CLOSE = 1e-9  # PAIR's tolerance for "the step's L1 goal is met"


def _lower_quantile_rank(fraction: float, features: int) -> int:
    """1-based rank that ``np.quantile(a, fraction, method='lower')`` picks among ``features``."""
    return int(math.floor(fraction * (features - 1))) + 1


class _GuidedPath:
    """The path state of a batch of images, flattened to (n, D) float64."""

    def __init__(self, x: torch.Tensor, reference: torch.Tensor) -> None:
        self.end = x.flatten(1).double()
        self.start = reference.flatten(1).double()
        self.span = self.end - self.start
        self.l1_total = self.span.abs().sum(dim=1)
        self.point = self.start.clone()

    def step(
        self, gradient: torch.Tensor, alpha: float, max_dist: float, rank: int
    ) -> torch.Tensor:
        """Advance every image to L1 distance L1_total·(1 − alpha) from x; return Σ Δx ⊙ g."""
        alpha_min = max(alpha - max_dist, 0.0)
        alpha_max = min(alpha + max_dist, 1.0)
        x_min = self.start + alpha_min * self.span
        x_max = self.start + alpha_max * self.span
        l1_goal = self.l1_total * (1.0 - alpha)
        magnitude = gradient.abs()
        moved = torch.zeros_like(self.point)
        active = self.l1_total > 0  # an input equal to its baseline gets no attribution
        moving_span = self.span != 0
        while bool(active.any()):
            before = self.point
            # features whose position lags behind the band jump to its lower edge
            safe_span = torch.where(moving_span, self.span, 1.0)
            own_alpha = torch.where(moving_span, (self.point - self.start) / safe_span, alpha_max)
            lagging = active.unsqueeze(1) & (own_alpha < alpha_min)
            point = torch.where(lagging, x_min, self.point)
            l1_now = (point - self.end).abs().sum(dim=1)
            close = (l1_goal - l1_now).abs() <= torch.clamp(
                CLOSE * torch.maximum(l1_goal.abs(), l1_now.abs()), min=CLOSE
            )
            moving = active & ~close & (l1_now > l1_goal)
            # saturated features (at the band's upper edge) are never selected
            candidate = torch.where(point == x_max, torch.inf, magnitude)
            threshold = candidate.kthvalue(rank, dim=1).values
            selected = (
                moving.unsqueeze(1) & (candidate <= threshold.unsqueeze(1)) & candidate.isfinite()
            )
            room = ((point - x_max).abs() * selected).sum(dim=1)
            has_room = room > 0
            gamma = torch.where(
                has_room, (l1_now - l1_goal) / torch.where(has_room, room, 1.0), torch.inf
            )
            whole = gamma > 1
            towards = point + gamma.clamp(max=1.0).unsqueeze(1) * (x_max - point)
            point = torch.where(
                selected & whole.unsqueeze(1), x_max, torch.where(selected, towards, point)
            )
            moved += point - before
            self.point = point
            active = moving & whole & has_room
        return moved * gradient


@register_method("guided_ig", completeness=True)
def guided_ig(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    steps: Annotated[
        int,
        Ge(1),
        Doc("path steps B, one gradient evaluation each (PAIR x_steps, default 200)"),
    ] = 200,
    fraction: Annotated[
        float,
        Gt(0),
        Le(1),
        Doc("share of features with the smallest |gradient| moved per iteration"),
    ] = 0.25,
    max_dist: Annotated[
        float,
        Ge(0),
        Le(1),
        Doc(
            "how far (in α) a feature may lead or lag the straight line; 0 is IG (left "
            "Riemann), 1 is unbounded Guided IG"
        ),
    ] = 0.02,
    baseline: Annotated[
        Baseline,
        Doc("the path's start x', as for integrated_gradients (PAIR: black)"),
    ] = "black",
    noise_sigma: Annotated[
        float,
        Ge(0),
        Doc("noise std for baseline 'gaussian' (see integrated_gradients)"),
    ] = 0.15,
    blur_sigma: Annotated[
        float,
        Ge(0),
        Doc("blur σ for baseline 'blur' (see integrated_gradients)"),
    ] = 10.0,
    baseline_file: Annotated[
        str | None,
        Doc("image file for baseline 'file' (see integrated_gradients)"),
    ] = None,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """Guided IG of the target logit from ``baseline`` to x (see module doc).

    Diagnostics (n leading): ``baselines``; ``path_alphas`` (n, B + 1) = s/B, the share of the
    L1 distance to x covered at each evaluated point; ``path_logits``, ``path_probs`` there
    (the last, x itself, costs one forward pass); ``output_delta`` F(x) − F(x') and
    ``completeness_residual`` |Σ maps − output_delta|.
    """
    x, target = validate_batch(model, x, target)
    fraction, max_dist = float(fraction), float(max_dist)
    reference = make_baseline(
        model,
        x,
        baseline,
        noise_sigma=noise_sigma,
        blur_sigma=blur_sigma,
        baseline_file=baseline_file,
        generator=generator,
        method="guided_ig",
    )
    path = _GuidedPath(x, reference)
    rank = _lower_quantile_rank(fraction, path.end.shape[1])
    attribution = torch.zeros_like(path.end)
    logits, probs = [], []
    for step in range(steps):
        evaluated = input_gradients(
            model, path.point.to(x.dtype).view_as(x), target, max_batch=max_batch
        )
        logits.append(evaluated.target_logits)
        probs.append(evaluated.target_probs)
        gradient = evaluated.gradient_sums.flatten(1).double()
        attribution += path.step(gradient, (step + 1) / steps, max_dist, rank)
    end = evaluate_outputs(
        model,
        target,
        n_points=1,
        points=lambda sample_idx, point_idx: x[sample_idx],
        max_batch=max_batch,
    )
    path_logits = torch.cat([*logits, end.target_logits], dim=1)
    path_probs = torch.cat([*probs, end.target_probs], dim=1)
    maps = attribution.to(x.dtype).view_as(x)
    alphas = torch.arange(steps + 1, dtype=x.dtype, device=x.device) / steps
    return Attribution(maps=maps, diagnostics=path_diagnostics(maps, reference, alphas, path_logits, path_probs))
