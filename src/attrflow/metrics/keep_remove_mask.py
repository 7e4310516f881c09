"""KPM, KNM, KAM, RAM (and RPM, RNM): keep/remove-mask curves of Hesse et al., 2021 Sec. 4.2, App. B.2,
after Lundberg et al. 2020, as the authors' code computes them
(visinf/fast-axiomatic-attribution, ``imagenet/attribution_metrics.py``).

For each fraction p of 16 geometric fractions from 0.01 to 1 (``np.geomspace(0.01, 1, 16)``), a
subset of pixels keeps its values and **every other pixel shows a blurred copy of the image**
(Gaussian, 51 × 51 taps, σ = 41, reflect padding). The pixels are ranked by an *order* of the
map — ``positive`` (A), ``negative`` (−A) or ``absolute`` (|A|) — and only pixels whose ordered
value is strictly positive are eligible; ``n_eligible`` is their count and k = min(⌊p·H·W⌋,
n_eligible):

* **keep**: the k *largest* eligible pixels are kept;
* **remove**: the k *smallest* eligible pixels are kept, i.e. the most important ones are the
  ones blurred away.

Ineligible pixels are never kept: for KPM the negative and zero features are masked from the
start, for KNM the positive ones ("all negative and positive features are masked out by default,
respectively"). The score at each p is the **target logit** for the signed orders and **top-1
correctness** (is the argmax the target?) for the absolute order, and the value is the trapezoid
area over p on the geometric grid (``np.trapz(scores, p)``), so it spans p ∈ [0.01, 1].

=======  ========  =======  =========  ==========
name     order     subset   score      direction
=======  ========  =======  =========  ==========
kpm      positive  keep     logit      higher
knm      negative  keep     logit      lower
kam      absolute  keep     top-1      higher
ram      absolute  remove   top-1      lower
rpm      positive  remove   logit      lower
rnm      negative  remove   logit      higher
=======  ========  =======  =========  ==========

The paper describes KPM as masking "an increasing fraction … ordered by least positive to most
positive"; the code's abscissa is the fraction *kept*, which is the same curve read from the
other end. We follow the code.

**The blur's σ.** Hesse et al., 2021 states σ = 41, and that is our default (a standard Gaussian
exp(−t²/2σ²)). The authors' kernel is exp(−((t − μ)/(2σ))²), a Gaussian of effective σ·√2 ≈ 58,
nearly a box filter on 51 taps (edge weight 0.91 of the centre). ``sigma_convention:
authors_code`` reproduces it exactly, for comparisons with Hesse et al., 2021, Table 3.

Other choices, where the code leaves room:

* maps with channels are summed per pixel (the code averages; the order is the same);
* ties keep the row-major pixel order (the code's ``torch.topk`` leaves them unspecified);
* the code explains and scores the ground-truth label, so "top-1 accuracy" is against the label
  and the target at once; we score against the explained target by default and offer
  ``accuracy_against: label``;
* a map that is constant in its order (all equal, e.g. all zero) ranks nothing: NaN with a
  reason, as is a map with non-finite values. A map that merely has no eligible pixel (KPM of an
  all-negative map) is scored: every p then shows the fully blurred image, as in the code;
* on images smaller than the kernel the blur's support is truncated (see `gaussian_blur`).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
import torch

from attrflow.metrics._removal import (
    CONSTANT_MAP,
    NONFINITE_MAP,
    BlurKernel,
    BlurSigma,
    checked_maps,
    constant_maps,
    fill_image,
    masked_outputs,
    pixel_positions,
    trapezoid_auc,
    with_reasons,
)
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc, Ge, Gt, Lt

SIGMA_CONVENTIONS = ("standard", "authors_code")
KEEP_ORDERS = ("positive", "negative", "absolute")
# metric → (order, keep the top of the order? (else its bottom), score per copy)
VARIANTS = {
    "kpm": ("positive", True, "logit"),
    "knm": ("negative", True, "logit"),
    "rpm": ("positive", False, "logit"),
    "rnm": ("negative", False, "logit"),
    "kam": ("absolute", True, "top1"),
    "ram": ("absolute", False, "top1"),
}


def blur_sigma_for(sigma: float, convention: str) -> float:
    """The σ of a standard Gaussian exp(−t²/2σ²) equal to the kernel a `convention` names.

    ``authors_code``: exp(−(t/(2σ))²) = exp(−t²/(2·(σ√2)²)), so σ·√2.
    """
    if convention == "standard":
        return float(sigma)
    if convention == "authors_code":
        return float(sigma) * math.sqrt(2.0)
    raise ValueError(f"unknown sigma_convention {convention!r}; use one of {SIGMA_CONVENTIONS}")


def keep_fractions(count: int, smallest: float) -> torch.Tensor:
    """The geometric fraction grid, float64: ``np.geomspace(smallest, 1, count)``, ends exact.

    ``count`` ≥ 2 and 0 < ``smallest`` < 1, as `keep_remove_curve`'s signature declares."""
    return torch.from_numpy(np.geomspace(smallest, 1.0, count))


def ordered_scores(maps2d: torch.Tensor, order: str) -> torch.Tensor:
    """The value each order ranks by: A, −A or |A|."""
    if order == "positive":
        return maps2d
    if order == "negative":
        return -maps2d
    if order == "absolute":
        return maps2d.abs()
    raise ValueError(f"unknown order {order!r}; use one of {KEEP_ORDERS}")


def kept_counts(eligible: torch.Tensor, fractions: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """(n, P) long: k = min(⌊p·HW⌋, eligible pixels) for every sample and fraction."""
    wanted = torch.floor(fractions.to(eligible.device) * num_pixels).long()
    return torch.minimum(wanted[None, :], eligible[:, None])


def keep_remove_curve(
    inputs: MetricInputs,
    *,
    metric: str,
    fractions: Annotated[int, Ge(2), Doc("points of the geometric grid of kept fractions")] = 16,
    min_fraction: Annotated[float, Gt(0), Lt(1), Doc("the grid's smallest kept fraction")] = 0.01,
    blur_kernel: BlurKernel = 51,
    blur_sigma: BlurSigma = 41.0,
    sigma_convention: Annotated[
        Literal["standard", "authors_code"],
        Doc("standard Gaussian σ, or the Hesse et al., 2021 code's kernel (σ·√2)"),
    ] = "standard",
    accuracy_against: Annotated[
        Literal["target", "label"],
        Doc("the class top-1 correctness is judged against: the explained target or the label"),
    ] = "target",
    max_batch: int = 256,
) -> MetricOutput:
    """The keep/remove-mask curve and its area for ``metric`` (a key of `VARIANTS`).

    `fractions` geometric points from `min_fraction` to 1; the blur has `blur_kernel` taps and
    σ = `blur_sigma` under `sigma_convention` (``authors_code``: the Hesse et al., 2021 code's σ·√2).
    """
    order, keep, score = VARIANTS[metric]
    maps = checked_maps(inputs, metric)
    finite = torch.isfinite(maps).flatten(1).all(dim=1)
    scores = ordered_scores(torch.where(torch.isfinite(maps), maps, torch.zeros_like(maps)), order)
    flat = constant_maps(scores)
    h, w = maps.shape[1:]
    p = keep_fractions(fractions, min_fraction)
    eligible = scores > 0
    counts = kept_counts(eligible.flatten(1).sum(dim=1), p, h * w)  # (n, P)
    # Rank so that the pixels to keep come first: the largest eligible values for "keep", the
    # smallest for "remove"; ineligible pixels sit at -inf, behind every eligible one.
    priority = torch.where(eligible, scores if keep else -scores, torch.full_like(scores, -math.inf))
    positions = pixel_positions(priority)  # (n, HW): 0 = kept first
    canvas = fill_image(
        inputs.images,
        "blur",
        blur_kernel=blur_kernel,
        blur_sigma=blur_sigma_for(blur_sigma, sigma_convention),
    )

    def replace_mask(sample: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        kept = positions[sample] < counts[sample, variant].unsqueeze(1)
        return (~kept).view(-1, h, w)

    against = inputs.labels if score == "top1" and accuracy_against == "label" else inputs.targets
    curves = masked_outputs(
        inputs.model,
        inputs.images,
        canvas,
        against,
        replace_mask,
        p.shape[0],
        output=score,
        max_batch=max_batch,
    )
    values = trapezoid_auc(curves, p).cpu().numpy()
    reasons = [
        NONFINITE_MAP if not ok else CONSTANT_MAP if same else None
        for ok, same in zip(finite.tolist(), flat.tolist())
    ]
    return with_reasons(values, list(curves.cpu().numpy()), reasons)


# One function, registered once per variant: (direction, description). The signed orders score
# the target logit and have no `accuracy_against`; the absolute ones score top-1 correctness.
REGISTERED = {
    "kpm": ("higher", "Keep Positive Mask: area of the target logit over the fraction p of pixels "
            "kept, keeping the most positive pixels first and blurring the rest, negatives from the "
            "start (higher is better)."),
    "knm": ("lower", "Keep Negative Mask: area of the target logit over the fraction kept, keeping "
            "the most negative pixels first, positives blurred from the start (lower is better)."),
    "rpm": ("lower", "Remove Positive Mask: area of the target logit when the *least* positive "
            "pixels are the ones kept, so the most positive are blurred away (lower is better)."),
    "rnm": ("higher", "Remove Negative Mask: area of the target logit when the least negative "
            "pixels are kept, so the most negative are blurred away (higher is better)."),
    "kam": ("higher", "Keep Absolute Mask: area of top-1 correctness over the fraction kept, "
            "keeping the largest |A| first (higher is better)."),
    "ram": ("lower", "Remove Absolute Mask: area of top-1 correctness over the fraction kept when "
            "the smallest |A| are the ones kept, so the most important are blurred away (lower is "
            "better)."),
}  # fmt: skip
for _name, (_direction, _doc) in REGISTERED.items():
    _bind = {"metric": _name}
    if VARIANTS[_name][2] != "top1":  # only top-1 correctness has a class to be judged against
        _bind["accuracy_against"] = "target"
    register_metric(_name, kind="map", direction=_direction, bind=_bind, doc=_doc)(keep_remove_curve)
