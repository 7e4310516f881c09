"""Integrated Gradients (Sundararajan et al. 2017; UNI (Choi et al., 2024) Eq. 1, Hesse et al., 2021 Eq. 2) with exact quadrature rules.

IG_i = (x_i − x'_i) ∫_0^1 ∂F(x' + α(x − x'))/∂x_i dα, with F the target LOGIT (Hesse et al., 2021). The integral
is replaced by Σ_k w_k ∇F(x' + α_k(x − x')) for one of four rules over ``steps`` = B:

* ``right``: α_k = k/B, k = 1..B, w_k = 1/B (UNI's (Choi et al., 2024) convention: baseline excluded, input included);
* ``left``: α_k = k/B, k = 0..B−1, w_k = 1/B;
* ``trapezoid``: α_k = k/B, k = 0..B, w_k = 1/B with both ends halved — B intervals, B + 1
  gradient evaluations, the mean of the left and right sums. (Captum's ``riemann_trapezoid`` with
  n steps uses n points α = k/(n−1) but weights 1/n, so its weights sum to (n−1)/n; ours with B
  steps equals Captum's with n = B + 1 times (B + 1)/B.)
* ``gausslegendre``: B Gauss–Legendre nodes and weights mapped from [−1, 1] to [0, 1].

The rule is stored with the result because the completeness gap depends on it.
Every (sample, step) point is evaluated in chunks of at most ``max_batch`` model inputs.

Baselines are built by `attrflow.methods._baselines` (black, white, uniform and Gaussian noise,
blurred input, mean colour, homogeneity origin, or an image file). The papers name the static
baselines but give no parameters (UNI (Choi et al., 2024) Sec. 3.1); the defaults here — noise σ = 0.15 (SmoothGrad's
15 % of the [0, 1] range, the field's usual noise level) and blur σ = 10 pixels — are ours.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch

from attrflow.methods._baselines import BASELINES, Baseline, make_baseline
from attrflow.methods._batching import (
    PointBuilder,
    accumulate_gradients,
    evaluate_outputs,
    path_diagnostics,
    validate_batch,
)
from attrflow.methods.base import DEFAULT_MAX_BATCH, Attribution, register_method
from attrflow.params import Doc, Ge

__all__ = [
    "BASELINES",
    "RULES",
    "integrated_gradients",
    "make_baseline",
    "quadrature",
    "straight_line_attribution",
]

RULES = ("left", "right", "trapezoid", "gausslegendre")


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes α_k in [0, 1] (ascending) and weights w_k of ``rule`` with ``steps`` ≥ 1 steps, float64."""
    k = np.arange(steps + 1, dtype=np.float64)
    if rule == "right":
        return k[1:] / steps, np.full(steps, 1.0 / steps)
    if rule == "left":
        return k[:-1] / steps, np.full(steps, 1.0 / steps)
    if rule == "trapezoid":
        weights = np.full(steps + 1, 1.0 / steps)
        weights[[0, -1]] /= 2
        return k / steps, weights
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1.0), 0.5 * weights
    raise ValueError(f"parameter rule must be one of {', '.join(RULES)}; got {rule!r}")


@register_method("integrated_gradients", completeness=True, differentiable=True)
def integrated_gradients(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    baseline: Annotated[
        Baseline,
        Doc(
            "reference x': black (0), white (1), uniform noise U[0,1), clip(x + N(0, "
            "noise_sigma²)), x blurred with blur_sigma, each image's mean colour, the X-DNN's"
            " homogeneity origin, or the image in baseline_file"
        ),
    ] = "black",
    steps: Annotated[
        int,
        Ge(1),
        Doc("quadrature steps B (gradient evaluations; trapezoid uses B + 1)"),
    ] = 32,
    rule: Annotated[
        Literal["left", "right", "trapezoid", "gausslegendre"],
        Doc("quadrature rule; right is UNI's (Choi et al., 2024) Riemann sum over k = 1..B"),
    ] = "right",
    noise_sigma: Annotated[
        float,
        Ge(0),
        Doc(
            "std of the Gaussian noise added to x for baseline 'gaussian' (pixel units; the "
            "result is clipped to [0, 1])"
        ),
    ] = 0.15,
    blur_sigma: Annotated[
        float,
        Ge(0),
        Doc(
            "Gaussian blur σ in pixels for baseline 'blur' (taps to ⌊4σ+0.5⌋, reflect "
            "padding)"
        ),
    ] = 10.0,
    baseline_file: Annotated[
        str | None,
        Doc(
            "for baseline 'file': a .npy or .safetensors (C, H, W) or (1, C, H, W) pixel-"
            "space image shared by every sample"
        ),
    ] = None,
    generator: torch.Generator | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """IG of the target logit along the straight line from ``baseline`` to x.

    Noise baselines draw from ``generator`` (the global RNG when None), all samples at once.
    Diagnostics (n leading): ``baselines`` (n, C, H, W); ``path_alphas``, ``path_logits``,
    ``path_probs`` (n, P) at every evaluated point in ascending α, always including α = 0 and
    α = 1 (a missing endpoint costs one forward pass, no backward); ``output_delta``
    F(x) − F(x') and ``completeness_residual`` |Σ maps − output_delta|.
    """
    x, target = validate_batch(model, x, target)
    quadrature(rule, steps)  # bad steps/rule fail before any baseline is drawn or file read
    reference = make_baseline(
        model,
        x,
        baseline,
        noise_sigma=noise_sigma,
        blur_sigma=blur_sigma,
        baseline_file=baseline_file,
        generator=generator,
    )
    return straight_line_attribution(
        model, x, target, reference, steps=steps, rule=rule, max_batch=max_batch
    )


def straight_line_attribution(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    reference: torch.Tensor,
    *,
    steps: int,
    rule: str,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Attribution:
    """IG from the given per-sample ``reference`` (n, C, H, W) to x, with IG's diagnostics.

    The shared core of every straight-line path method: ``x`` and ``target`` must already be
    validated (`validate_batch`); ``reference`` is used as given.
    """
    if reference.shape != x.shape:
        raise ValueError(
            f"parameter reference must have the inputs' shape {tuple(x.shape)}; "
            f"got {tuple(reference.shape)}"
        )
    alphas_np, weights_np = quadrature(rule, steps)
    delta = x - reference
    weights = torch.as_tensor(weights_np, dtype=x.dtype, device=x.device)

    def along_path(alphas: np.ndarray) -> PointBuilder:
        alpha_t = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)

        def point(sample_idx: torch.Tensor, point_idx: torch.Tensor) -> torch.Tensor:
            return reference[sample_idx] + alpha_t[point_idx].view(-1, 1, 1, 1) * delta[sample_idx]

        return point

    def weigh(
        grads: torch.Tensor, sample_idx: torch.Tensor, point_idx: torch.Tensor
    ) -> torch.Tensor:
        return grads * weights[point_idx].view(-1, 1, 1, 1)

    path = accumulate_gradients(
        model,
        target,
        n_points=len(alphas_np),
        points=along_path(alphas_np),
        weigh=weigh,
        max_batch=max_batch,
    )
    maps = delta * path.gradient_sums

    # The rule may skip α = 0 or α = 1; evaluate them (forward only) so that the stored path
    # always spans F(x') .. F(x) and completeness can be checked from the store alone.
    ends = np.array([a for a in (0.0, 1.0) if a not in alphas_np], dtype=np.float64)
    path_logits, path_probs = path.target_logits, path.target_probs
    if len(ends):
        end_outputs = evaluate_outputs(
            model, target, n_points=len(ends), points=along_path(ends), max_batch=max_batch
        )
        path_logits = torch.cat([path_logits, end_outputs.target_logits], dim=1)
        path_probs = torch.cat([path_probs, end_outputs.target_probs], dim=1)
    all_alphas = np.concatenate([alphas_np, ends])
    order = torch.as_tensor(np.argsort(all_alphas, kind="stable"), device=x.device)
    path_logits, path_probs = path_logits[:, order], path_probs[:, order]
    path_alphas = torch.as_tensor(all_alphas, dtype=x.dtype, device=x.device)[order]
    return Attribution(maps=maps, diagnostics=path_diagnostics(maps, reference, path_alphas, path_logits, path_probs))
