"""Deletion and insertion curves (Zhang et al., 2021 Sec. 4.4.2, App. D.3).

*Deletion* removes the highest-ranked pixels first, replacing them with a fill (black in
Zhang et al., 2021), and watches the target output fall: a faithful map makes it fall fast, so a lower area
is better. *Insertion* starts from the fill canvas (a Gaussian-blurred copy, 29 taps, σ = 15, in
Zhang et al., 2021: "insert pixel on black canvas generates stronger adversarial effect") and puts the
highest-ranked pixels back first: a faithful map makes the output rise fast, so a higher area is
better.

Zhang et al., 2021 moves 10 pixels per step. By default we move equal *fractions* of the image instead
(`steps`, 20 by default), so that curves and areas compare across image sizes and cost the same
on 64² and 224² inputs; `pixels_per_step` restores the paper's protocol (ceil(HW/p) + 1 points,
5 018 forward passes per 224² image for p = 10). Either way the curve holds the output before
the first and after the last step, and the value is its trapezoid area over the fraction of
pixels moved, in [0, 1], so it is in the units of the output (softmax probability by default;
the papers do not say which output they used).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch

from attrflow.metrics._removal import (
    NONFINITE_MAP,
    BlurKernel,
    BlurSigma,
    Fill,
    TargetOutput,
    checked_maps,
    fill_image,
    masked_outputs,
    pixel_positions,
    ranking_scores,
    step_counts,
    trapezoid_auc,
    with_reasons,
)
from attrflow.metrics.base import MetricInputs, MetricOutput, register_metric
from attrflow.params import Doc, Ge


def removal_curve(
    inputs: MetricInputs,
    *,
    metric: str,
    insert: bool,
    steps: Annotated[int, Ge(1), Doc("equal pixel-fraction steps; the curve has steps + 1 points")] = 20,
    pixels_per_step: Annotated[
        int | None, Ge(1), Doc("pixels moved per step, overriding steps (Zhang et al., 2021: 10)")
    ] = None,
    fill: Fill = "black",
    blur_kernel: BlurKernel = 29,
    blur_sigma: BlurSigma = 15.0,
    output: TargetOutput = "prob",
    order: Annotated[
        Literal["signed", "absolute"],
        Doc("rank pixels by the signed map, highest first, or by its magnitude"),
    ] = "signed",
    max_batch: int = 256,
) -> MetricOutput:
    """Area under the target output as the top-ranked pixels are replaced by the fill
    (``insert=False``, deletion) or put back onto the fill canvas (``insert=True``, insertion).

    Ties go to the lower row-major pixel index.
    """
    maps = checked_maps(inputs, metric)
    broken = ~torch.isfinite(maps).flatten(1).all(dim=1)
    scores = ranking_scores(torch.where(torch.isfinite(maps), maps, torch.zeros_like(maps)), order)
    positions = pixel_positions(scores)  # (n, HW): 0 = the most important pixel
    h, w = maps.shape[1:]
    counts = step_counts(h * w, steps, pixels_per_step).to(maps.device)
    canvas = fill_image(inputs.images, fill, blur_kernel=blur_kernel, blur_sigma=blur_sigma)

    def replace_mask(sample: torch.Tensor, variant: torch.Tensor) -> torch.Tensor:
        moved = positions[sample] < counts[variant].unsqueeze(1)  # the first counts[v] pixels
        return (~moved if insert else moved).view(-1, h, w)

    curves = masked_outputs(
        inputs.model,
        inputs.images,
        canvas,
        inputs.targets,
        replace_mask,
        counts.shape[0],
        output=output,
        max_batch=max_batch,
    )
    values = trapezoid_auc(curves, counts.double() / (h * w)).cpu().numpy()
    reasons = [NONFINITE_MAP if bad else None for bad in broken.tolist()]
    return with_reasons(values, list(curves.cpu().numpy()), reasons)


# Deletion and insertion are one curve read in opposite directions; insertion starts from a
# blurred canvas by default (Zhang et al., 2021), deletion from black.
REGISTERED = {
    "deletion": dict(
        direction="lower",
        bind={"metric": "deletion", "insert": False},
        doc="Area under the target output as the top-ranked pixels are replaced by the fill (lower "
        "is better).",
    ),
    "insertion": dict(
        direction="higher",
        bind={"metric": "insertion", "insert": True},
        defaults={"fill": "blur"},
        doc="Area under the target output as the top-ranked pixels are put back onto the canvas "
        "(higher is better); the canvas is a blurred copy (29 taps, σ = 15) by default, as in "
        "Zhang et al., 2021.",
    ),
}
for _name, _registration in REGISTERED.items():
    register_metric(_name, kind="map", **_registration)(removal_curve)
