"""DiffID (Local Path Integration, the LPI supplement (Yang et al., 2023) Sec. 1–2).

The seed says only that DiffID "measures the difference in accuracy" between removing the least
and the most salient pixels without retraining, and reports "the AUC of the fractional output
changes" (higher is better). The definition comes from the LPI authors' evaluator
(ypeiyu/LPI, ``evaluator.DiffID``), which we follow:

* rank pixels by the saliency |A| summed over channels (``order: absolute``);
* for each ratio r in 0.1, 0.2, …, 0.9 remove k = ⌊r·H·W⌋ pixels twice:
  **deletion** removes the k *most* salient, **insertion** the k *least* salient (keeping the
  top 1 − r);
* a removed pixel takes the **mean of the preserved elements**: one scalar per perturbed copy,
  averaged over the preserved pixels and all their channels *in the model's normalised space*
  (``fill: preserved_mean``; we map that scalar back to pixel space through the model's
  normalisation, so the network sees exactly the authors' value);
* the score of a copy is the **fractional logit** F_y(x̃) / F_y(x) of the explained class
  (``score: logit_ratio``), or top-1 correctness (``score: accuracy``);
* DiffID(r) = insertion(r) − deletion(r) is the curve, and the value is its trapezoid area
  over r ("AUC"), so with the default ratios it spans r ∈ [0.1, 0.9].

Ambiguities and where we differ, documented:

* the authors order the C·H·W elements (each pixel's value repeated over its channels) and cut
  at ⌊r·C·H·W⌋ elements, which can split one pixel's channels at the cut; we remove whole pixels
  (⌊r·H·W⌋), like every removal metric here. When the stored maps are channel-summed (the
  default store), |Σ_c A_c| stands in for Σ_c |A_c|; maps kept with channels use Σ_c |A_c|;
* "AUC" is not defined further in the supplement: trapezoid over the ratios is our reading
  (a mean over the ratios is the same number up to the factor and the end-point weights);
* the fractional logit is only meaningful for a positive clean logit (with a negative one,
  "the output fell" reads as a ratio above 1). Samples whose target logit is not positive are
  NaN with that reason under ``logit_ratio``; ``accuracy`` has no such restriction;
* the authors explain and score the ground-truth label; we score the explained target;
* a constant map (no ranking) or a map with non-finite values is NaN with a reason.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

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
    rank_pixels,
    target_outputs,
    trapezoid_auc,
    with_reasons,
)
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc, Gt, Lt, MinLen

NONPOSITIVE_LOGIT = "the target logit of the clean image is not positive: a fractional logit is meaningless"
SCORES = {"logit_ratio": "logit", "accuracy": "top1"}


def removal_counts(ratios: list[float], num_pixels: int) -> torch.Tensor:
    """⌊r·HW⌋ pixels per ratio (tolerant to float rounding, so 0.29·100 is 29, not 28).

    The signature declares two or more ratios in (0, 1); that they increase it cannot say."""
    if any(b <= a for a, b in zip(ratios, ratios[1:])):
        raise ValueError(f"diffid: ratios must increase strictly, got {ratios}")
    return torch.tensor([math.floor(r * num_pixels + 1e-9) for r in ratios])


def saliency_scores(inputs: MetricInputs, order: str) -> torch.Tensor:
    """(n, H, W): Σ_c |A_c| (or |A| of channel-summed maps) for "absolute", the map for "signed"."""
    checked_maps(inputs, "diffid")
    if order == "absolute":
        return inputs.maps.abs().sum(dim=1) if inputs.maps.dim() == 4 else inputs.maps.abs()
    if order == "signed":
        return inputs.maps2d
    raise ValueError(f"diffid: unknown order {order!r}; use 'absolute' or 'signed'")


def _normalisation(model: torch.nn.Module, channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, 1, 1) mean and std the model normalises with (0 and 1 when it has none)."""
    mean = getattr(model, "mean", None)
    std = getattr(model, "std", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(std, torch.Tensor):
        return like.new_zeros(1, channels, 1, 1), like.new_ones(1, channels, 1, 1)
    return mean.to(like).reshape(1, -1, 1, 1), std.to(like).reshape(1, -1, 1, 1)


def preserved_means(
    images: torch.Tensor,
    model: torch.nn.Module,
    orders: list[torch.Tensor],
    counts: torch.Tensor,
) -> torch.Tensor:
    """(n, len(orders)·R, C) pixel-space fill colours: the normalised-space mean of the elements
    each copy preserves, mapped back through the model's normalisation.

    Copy j·R + r removes the first counts[r] pixels of ``orders[j]`` ((n, HW) pixel orders);
    prefix sums along each order give every copy's removed sum without building its mask.
    """
    n, c, h, w = images.shape
    mean, std = _normalisation(model, c, images)
    per_pixel = ((images - mean) / std).double().sum(dim=1).reshape(n, -1)  # Σ_c z, (n, HW)
    total = per_pixel.sum(dim=1, keepdim=True)
    colours = []
    for order in orders:
        prefix = torch.nn.functional.pad(per_pixel.gather(1, order).cumsum(dim=1), (1, 0))
        removed = prefix[:, counts.to(images.device)]  # (n, R)
        kept = (h * w - counts.to(images.device)).double() * c
        scalar = (total - removed) / kept
        colours.append(mean.reshape(1, 1, c) + std.reshape(1, 1, c) * scalar[..., None].to(images))
    return torch.cat(colours, dim=1)


@register_metric("diffid", kind="map", direction="higher")
def diffid(
    inputs: MetricInputs,
    *,
    ratios: Annotated[
        list[Annotated[float, Gt(0), Lt(1)]],
        MinLen(2),
        Doc("removed fractions r of the pixels, increasing; the area runs over them"),
    ] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],  # noqa: B006 (never mutated)
    score: Annotated[
        Literal["logit_ratio", "accuracy"],
        Doc("the fractional target logit, or top-1 correctness"),
    ] = "logit_ratio",
    fill: Annotated[
        Literal["preserved_mean", "black", "blur", "mean"],
        Doc("what removed pixels show: the mean of the kept ones (the LPI evaluator's), or a shared canvas"),
    ] = "preserved_mean",
    blur_kernel: BlurKernel = 29,
    blur_sigma: BlurSigma = 15.0,
    order: Annotated[
        Literal["absolute", "signed"], Doc("rank by saliency magnitude (LPI) or by the signed map")
    ] = "absolute",
    max_batch: int = 256,
) -> MetricOutput:
    """Area over the removed ratio r of insertion(r) − deletion(r): the fractional target logit
    (or top-1 correctness, `score`) when the least vs. the most salient ⌊r·HW⌋ pixels are
    replaced by `fill` (higher is better).

    `fill` ``preserved_mean`` is the LPI evaluator's replacement; ``black``, ``blur`` (with
    `blur_kernel` / `blur_sigma`) and ``mean`` are the shared canvases. `order` ranks by
    saliency magnitude (LPI) or by the signed map.
    """
    saliency = saliency_scores(inputs, order)
    finite = torch.isfinite(saliency).flatten(1).all(dim=1)
    saliency = torch.where(torch.isfinite(saliency), saliency, torch.zeros_like(saliency))
    flat = constant_maps(saliency)
    h, w = saliency.shape[1:]
    counts = removal_counts(list(ratios), h * w).to(saliency.device)
    steps = counts.shape[0]
    # variant v < R: insertion (remove the least salient); v >= R: deletion (the most salient)
    least_first = pixel_positions(saliency, descending=False)
    most_first = pixel_positions(saliency, descending=True)

    def replace_mask(sample: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        deleting = (variant >= steps).unsqueeze(1)
        positions = torch.where(deleting, most_first[sample], least_first[sample])
        return (positions < counts[variant % steps].unsqueeze(1)).view(-1, h, w)

    if fill == "preserved_mean":
        orders = [rank_pixels(saliency, descending=False), rank_pixels(saliency, descending=True)]
        colours = preserved_means(inputs.images, inputs.model, orders, counts)

        def canvas(sample: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
            return colours[sample, variant][:, :, None, None]

    else:
        canvas = fill_image(inputs.images, fill, blur_kernel=blur_kernel, blur_sigma=blur_sigma)

    output = SCORES[score]
    outputs = masked_outputs(
        inputs.model,
        inputs.images,
        canvas,
        inputs.targets,
        replace_mask,
        2 * steps,
        output=output,
        max_batch=max_batch,
    )
    reasons: list[str | None] = [
        NONFINITE_MAP if not ok else CONSTANT_MAP if same else None
        for ok, same in zip(finite.tolist(), flat.tolist())
    ]
    if output == "logit":
        clean = target_outputs(inputs.model, inputs.images, inputs.targets, "logit", max_batch)
        outputs = outputs / clean[:, None]
        reasons = [r or (NONPOSITIVE_LOGIT if c <= 0 else None) for r, c in zip(reasons, clean.tolist())]
    curves = outputs[:, :steps] - outputs[:, steps:]
    ratio_axis = torch.tensor(list(ratios), dtype=torch.float64)
    values = trapezoid_auc(curves, ratio_axis).cpu().numpy()
    return with_reasons(values, list(curves.cpu().numpy()), reasons)
